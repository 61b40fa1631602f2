"""The model-search study on VTAB-1k (Renggli et al., "Which Model to Transfer?").

  python -m model_search.main --config=configs/vtab.py:models=/path/to/models.json \
      --workdir=/tmp/vtab --config.data_dir=/path/to/tensorflow_datasets

Needs the VTAB-1k datasets prepared in `config.data_dir` (README, "Preparing VTAB-1k"; nothing is
downloaded at run time). Features and scores take minutes per model on an accelerator;
fine-tuning with the paper's protocol (2500 steps at batch 512 for each of two learning rates)
is hours per (model, task) pair: run it on a TPU or GPU VM.

Variants (`--config=configs/vtab.py:ARG`, combined with commas):
  tasks=GROUP       natural | specialized | structured | all (default), or names joined by '+'
                    (`tasks=cifar100+dtd+clevr_count`).
  pool=NAME         the pools to report: all, expert, imagenet, resnet50, dim2048, or several
                    joined by '+' (default: all five).
  zoo=NAME          tfhub (default: the paper's 46 TF-Hub models, with public BiT experts
                    standing in for its JFT experts), tfhub_set_b (the other stand-in set), or
                    mini (the offline mini zoo: 32x32 inputs, built into the cache like
                    configs/mini.py), to try the VTAB data path without hub models.
  only=A+B          only these models of the zoo (`only=resnet_v2_50+vtab_sup_100`).
  models=FILE.json  your own models instead: a JSON list of ModelEntry records (`name`, `handle`
                    (a hub URL or a SavedModel directory), and the metadata the strategies and
                    pools use: imagenet_accuracy, upstream_size, num_params, feature_dim, expert).
Hub handles are fetched (and cached by tensorflow_hub, see TFHUB_CACHE_DIR) when first loaded.
"""

import json

import ml_collections

from model_search import finetune_grid
from model_search import training_time_stage
from model_search import study
from model_search.data import vtab
from model_search.models import mini_zoo


def _parse(arg):
  opts = {}
  for part in filter(None, (arg or "").split(",")):
    key, _, value = part.partition("=")
    opts[key] = value if value else True
  valid = {"tasks", "pool", "models", "zoo", "only"}
  unknown = set(opts) - valid
  if unknown:
    raise ValueError(f"Unknown config argument(s) {sorted(unknown)} for configs/vtab.py; "
                     f"valid arguments: {', '.join(sorted(valid))}")
  zoos = ("tfhub", "tfhub_set_b", "mini")
  if opts.get("zoo") not in (None,) + zoos:
    raise ValueError(f"Unknown zoo {opts['zoo']!r} for configs/vtab.py; valid zoos: "
                     f"{', '.join(zoos)}")
  return opts


def _models(path):
  """ModelEntry fields by name, from a JSON list of records (or a name -> fields dict)."""
  with open(path) as f:
    records = json.load(f)
  if isinstance(records, dict):
    records = [{"name": k, **v} for k, v in records.items()]
  models = {}
  for r in records:
    if "name" not in r or "handle" not in r:
      raise ValueError(f"{path}: every model needs 'name' and 'handle'; got {sorted(r)}")
    models[r["name"]] = {k: v for k, v in r.items() if k != "name"}
  return models


def get_config(arg=None):
  opts = _parse(arg)
  config = ml_collections.ConfigDict()

  config.stages = ("zoo", "features", "scores", "training_time", "finetune", "select",
                   "report")
  config.seed = 0
  # TFDS data directory holding the prepared VTAB-1k datasets (local or gs://); '' means
  # ~/.cache/model_search/tfds. Mini-zoo models and other caches go to cache_dir.
  config.data_dir = ""
  config.cache_dir = ""

  config.suite = "vtab"
  config.tasks = tuple(vtab.select_tasks(opts.get("tasks")))

  # Models: the paper's TF-Hub zoo, the mini zoo, or a JSON file of your own (collection 'user').
  only = tuple(opts["only"].split("+")) if opts.get("only") else ()
  if opts.get("models"):
    config.collection = "user"
    config.models = _models(opts["models"])
  elif opts.get("zoo") == "mini":
    config.collection = "mini"
    config.zoo = mini_zoo.get_zoo_config()
    if only:
      config.zoo.models = only
  else:
    config.collection = opts.get("zoo") or "tfhub"
    # () means all 46.
    config.hub_models = only
  # The VTAB reference resizes every image to 224x224 for hub modules; a model entry's own
  # input_size wins.
  config.default_input_size = 224

  config.features = ml_collections.ConfigDict()
  config.features.batch_size = 256
  config.features.splits = ("train800", "val200")

  config.scores = ml_collections.ConfigDict()
  config.scores.linear = {"steps": 2500, "batch_size": 512}  # The paper's protocol.
  config.scores.knn = {"k": 1}
  # The feature-based scores of the literature. Left out by default: `hscore` (with n = 1000 <=
  # d it returns C-1 for any features), `nleep` (a 5C-component GMM: minutes per item), the
  # gradient score `lgc` (loads the model and its images; add {'select': REGEX}), `rsa` (trains
  # a probe CNN per task and input size) and `domain_similarity` (needs each model's upstream
  # data, which only the mini zoo has here).
  for name in ("logme", "regularized_hscore", "leep", "nce", "transrate", "gbc", "lfc", "msc"):
    config.scores[name] = {}

  # Ground truth, the VTAB-1k protocol of the paper: the whole network plus a zero-initialised
  # linear head, SGD with momentum 0.9, batch 512, 2500 steps, decay x0.1 at 30/60/90 %; each
  # learning rate trained on train800 and picked on val200; the test accuracy of the pick.
  config.finetune = ml_collections.ConfigDict()
  config.finetune.learning_rates = (0.1, 0.01)
  config.finetune.momentum = 0.9
  config.finetune.batch_size = 512
  config.finetune.steps = 2500
  config.finetune.grad_clip_norm = 0.0  # The reference does not clip.
  config.finetune.decay_at = (0.3, 0.6, 0.9)
  config.finetune.warmup_steps = 0
  config.finetune.repeats = 5  # The paper: median over 5 repeats.
  config.finetune.eval_batch_size = 500
  # How runs execute: devices, FSDP, accumulation, checkpoints, logging (finetune_grid).
  finetune_grid.add_run_options(config.finetune, checkpoint_every=250, log_every=50)

  # Each fine-tuning run's loss curve, and its steps and seconds to reach fractions of the
  # initial loss, predicted from the linearised model before training (training_time_stage).
  config.training_time = training_time_stage.default_config()
  config.distributed = study.distributed_config()  # launch/*.sh set its fields.

  config.select = ml_collections.ConfigDict()
  pools = ("all", "expert", "imagenet", "resnet50", "dim2048")
  config.select.pools = tuple(opts["pool"].split("+")) if opts.get("pool") else pools
  config.select.custom_pools = ml_collections.ConfigDict()
  config.select.budgets = ()  # () means 1..pool size.
  return config
