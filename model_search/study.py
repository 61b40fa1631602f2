"""The study a config describes: its tasks, its models, its (model, task) grid and its folders."""

from __future__ import annotations

import dataclasses
import os

import jax
from etils import epath
import ml_collections

from model_search.data import mini
from model_search.data import vtab
from model_search.data.task import Task
from model_search import published
from model_search import scores as scores_lib
from model_search.models import mini_zoo
from model_search.models import pools
from model_search.models import zoo
from model_search.models.zoo import ModelEntry

# Task suites: config.suite -> the module with get_task(name).
SUITES = {"mini": mini, "vtab": vtab}
# 'mini': the project's mini zoo (config.zoo); 'user': the models listed in config.models;
# 'tfhub' / 'tfhub_set_b': the paper's 46 TF-Hub models (models/zoo.py), optionally only
# config.hub_models.
COLLECTIONS = ("mini", "user", "tfhub", "tfhub_set_b")
# config.ground_truth: 'finetune' (the default: the finetune stage's results in the workdir) or
# 'published' (the VTAB reference's accuracies of the VTAB hub models, model_search/published.py;
# config.published.train_examples picks VTAB-1k (1000) or full-data results).
GROUND_TRUTHS = ("finetune", "published")


def default_cache_dir() -> epath.Path:
  return epath.Path(os.environ.get("MODEL_SEARCH_CACHE", "~/.cache/model_search")).expanduser()


@dataclasses.dataclass
class Study:
  """Resolved paths, tasks and models of one run."""
  config: object
  workdir: epath.Path
  data_dir: str
  cache_dir: epath.Path
  tasks: list[Task]
  _entries: list[ModelEntry] | None = None

  @property
  def model_names(self) -> list[str]:
    if self.config.collection == "mini":
      return list(self.config.zoo.models)
    return [e.name for e in self.entries]

  @property
  def entries(self) -> list[ModelEntry]:
    """The models' entries; for the mini zoo they exist once the zoo stage has built it."""
    if self._entries is None:
      if self.config.collection == "mini":
        self._entries = mini_zoo.entries(self.config.zoo, self.cache_dir / "zoo")
      elif self.config.collection == "user":
        self._entries = user_entries(self.config)
      else:
        self._entries = hub_entries(self.config)
    return self._entries

  def items(self) -> list[tuple[str, str]]:
    """This process's share of the (model, task) grid, models outer."""
    grid = [(m, t.name) for m in self.model_names for t in self.tasks]
    return grid[jax.process_index()::jax.process_count()]

  def all_items(self) -> list[tuple[str, str]]:
    return [(m, t.name) for m in self.model_names for t in self.tasks]


def distributed_config():
  """config.distributed: jax.distributed.initialize() before anything touches the devices.

  Empty address / -1 ids are left to JAX, which detects them on TPU pods and under SLURM
  (`main.initialize_distributed`).
  """
  config = ml_collections.ConfigDict()
  config.initialize = False
  config.coordinator_address = ""
  config.num_processes = -1
  config.process_id = -1
  return config


def from_config(config, workdir) -> Study:
  """Resolves and validates everything a config names, before any work is done."""
  if config.suite not in SUITES:
    raise ValueError(f"Unknown suite {config.suite!r}; known suites: {', '.join(SUITES)}")
  if config.collection not in COLLECTIONS:
    raise ValueError(f"Unknown model collection {config.collection!r}; "
                     f"known collections: {', '.join(COLLECTIONS)}")
  ground_truth = ground_truth_of(config)
  if ground_truth not in GROUND_TRUTHS:
    raise ValueError(f"Unknown ground truth {ground_truth!r}; valid values of "
                     f"config.ground_truth: {', '.join(GROUND_TRUTHS)}")
  tasks = [SUITES[config.suite].get_task(name) for name in config.tasks]
  if not tasks:
    raise ValueError("config.tasks is empty; name at least one task.")
  if ground_truth == "published" and (config.suite != "vtab" or config.collection == "mini"):
    raise ValueError(f"config.ground_truth is 'published', which has results of the VTAB hub "
                     f"models on VTAB-1k only; this config has suite {config.suite!r} and "
                     f"collection {config.collection!r}. Use suite 'vtab' with the VTAB models "
                     "(configs/vtab_published.py), or ground_truth 'finetune'.")
  if config.collection == "mini":
    mini_zoo.validate(config.zoo)
  elif config.collection == "user":
    entries = user_entries(config)  # Validates config.models.
  else:
    entries = hub_entries(config)  # Validates config.hub_models.
  if ground_truth == "published":  # Every model and task has a published result.
    published.accuracies_for(entries, [t.name for t in tasks], train_examples(config))
  scores_lib.validate(config.scores.to_dict())
  custom = config.select.custom_pools.to_dict()
  unknown = [p for p in config.select.pools if p not in pools.POOLS and p not in custom]
  if unknown:
    raise ValueError(f"Unknown pool(s) {unknown}; known pools: "
                     f"{', '.join(sorted(set(pools.POOLS) | set(custom)))}")
  cache_dir = epath.Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
  data_dir = str(epath.Path(config.data_dir).expanduser()) if config.data_dir else str(
      cache_dir / "tfds")
  return Study(config=config, workdir=epath.Path(workdir), data_dir=data_dir,
               cache_dir=cache_dir, tasks=tasks)


def ground_truth_of(config) -> str:
  """config.ground_truth, 'finetune' where the config does not say."""
  return config.get("ground_truth", "finetune")


def train_examples(config) -> str:
  """The published results' training-set size: config.published.train_examples (default 1000)."""
  return str((config.get("published") or {}).get("train_examples", 1000))


def user_entries(config) -> list[ModelEntry]:
  """The ModelEntry records of `config.models` (collection 'user'), in config order.

  `config.models` maps a model name to ModelEntry fields: at least `handle` (a hub URL or a
  SavedModel directory), plus any metadata the strategies and pools use (imagenet_accuracy,
  upstream_size, num_params, feature_dim, expert, ...). `input_size` defaults to
  `config.default_input_size` (224, the VTAB reference's resize) where the entry has none.
  """
  models = config.get("models")
  if not models:
    raise ValueError("config.collection is 'user' but config.models is empty; list models as "
                     "{name: {'handle': URL or SavedModel dir, ...ModelEntry fields}}.")
  default_size = config.get("default_input_size")
  entries = []
  for name, fields in models.items():
    fields = fields.to_dict() if hasattr(fields, "to_dict") else dict(fields)
    if "handle" not in fields:
      raise ValueError(f"Model {name!r} in config.models has no 'handle' (a hub URL or a "
                       "SavedModel directory).")
    fields.setdefault("input_size", default_size)
    entries.append(ModelEntry.from_json({"name": name, "collection": "user", **fields}))
  return entries


def hub_entries(config) -> list[ModelEntry]:
  """The registry's TF-Hub entries of config.collection, only config.hub_models if given."""
  entries = zoo.entries(config.collection)
  wanted = tuple(config.get("hub_models") or ())
  if not wanted:
    return entries
  by_name = {e.name: e for e in entries}
  unknown = [n for n in wanted if n not in by_name]
  if unknown:
    raise ValueError(f"Unknown model(s) {unknown} in config.hub_models; models of collection "
                     f"{config.collection!r}: {', '.join(sorted(by_name))}")
  return [by_name[n] for n in wanted]
