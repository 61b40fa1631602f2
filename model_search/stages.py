"""The stages `main` runs, in the order of config.stages; each reads and writes the workdir.

zoo -> features -> scores -> training_time -> finetune -> select -> report. Every stage skips
the items whose result file is present and valid, so a killed run resumes where it stopped.
"""

from __future__ import annotations

from typing import Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import tqdm

from model_search import features
from model_search import finetune_grid
from model_search import published
from model_search import regret
from model_search import report
from model_search import report_training_time
from model_search import scores as scores_lib
from model_search import study as study_lib
from model_search import training_time_stage
from model_search import workdir as wd
from model_search.data import mini
from model_search.data import pipeline
from model_search.models import hub
from model_search.models import mini_zoo
from model_search.models import pools
from model_search.scores.common import ScoreInputs

_SCORES_VERSION = "scores-v2"


def zoo(study) -> None:
  """Builds (pre-trains and exports) the mini zoo's models not cached yet; records the models."""
  if jax.process_count() > 1:
    # The mini suite's data and the mini zoo are generated into shared folders: process 0
    # makes them while the others wait, then everyone finds them made.
    if jax.process_index() == 0:
      if study.config.suite == "mini":
        mini.prepare([t.name for t in study.tasks], data_dir=study.data_dir)
      if study.config.collection == "mini":
        mini_zoo.build(study.config.zoo, study.cache_dir / "zoo", study.data_dir)
    multihost_utils.sync_global_devices("model_search_zoo_built")
  if study.config.collection == "mini":
    entries = mini_zoo.build(study.config.zoo, study.cache_dir / "zoo", study.data_dir)
  else:
    entries = study.entries  # Listed in the config; nothing to build.
  study._entries = entries  # pylint: disable=protected-access
  if jax.process_index() == 0:
    wd.write_json(study.workdir / "models.json", [e.to_json() for e in entries])


def _score_fingerprint(study, entry, task) -> str:
  parts = [_SCORES_VERSION, study.config.scores.to_dict(),
           [features.feature_fingerprint(entry, task, s) for s in ("train800", "val200")]]
  if scores_lib.required_fields(study.config.scores.to_dict()) & {"source_features"}:
    parts.append(("source_examples", _source_examples(study)))
  return wd.fingerprint(*parts)


def load_scores(study, entry, task):
  return wd.read_json(wd.scores_path(study.workdir, entry.name, task.name),
                      fingerprint_=_score_fingerprint(study, entry, task), required=("scores",))


# Upstream examples whose features the source-domain scores (domain_similarity) compare
# with the task's: the first N of the upstream train split (config.features.source_examples).
_SOURCE_EXAMPLES = 5000


def _source_examples(study) -> int:
  return int(study.config.features.get("source_examples", _SOURCE_EXAMPLES))


def _check_source_data(entry) -> None:
  up = entry.upstream_dataset
  if up not in mini.UPSTREAM:
    raise ValueError(
        f"A configured score needs source features (features of the model's upstream "
        f"training data), but model {entry.name!r} was pre-trained on {up!r}, which "
        f"model_search cannot load; source data is available for the mini suite's upstream "
        f"tasks ({', '.join(sorted(mini.UPSTREAM))}). Leave such scores (e.g. "
        "domain_similarity) out of configs for this collection.")


def _source_inputs(study, entry, model) -> dict:
  """Features and labels of (the first examples of) the model's upstream training data."""
  _check_source_data(entry)
  mini.prepare(entry.upstream_dataset, data_dir=study.data_dir)  # A no-op once prepared.
  images, labels, _ = mini_zoo.load_upstream(entry.upstream_dataset, "train", study.data_dir,
                                             limit=_source_examples(study))
  extractor = features.Extractor(model, image_size=entry.input_size,
                                 batch_size=study.config.features.batch_size)
  return {"source_features": extractor(images)["features"],
          "source_labels": labels.astype("int32")}


def _model_inputs(study, entry, task, needed, loaded) -> dict:
  """apply_fn, params, images and source features for scores that need them (`REQUIRES`)."""
  if not needed & {"apply_fn", "params", "train_images", "val_images", "source_features",
                   "source_labels"}:
    return {}
  if loaded.get("name") != entry.name:
    loaded.clear()
    loaded.update(name=entry.name, model=hub.load_entry(entry))
  model = loaded["model"]
  if needed & {"source_features", "source_labels"} and "source" not in loaded:
    loaded["source"] = _source_inputs(study, entry, model)
  out = dict(loaded.get("source", {}))
  if not needed & {"apply_fn", "params", "train_images", "val_images"}:
    return out
  size = entry.input_size or model.input_size
  out.update(apply_fn=model.apply, params=model.params)
  for split, field in (("train800", "train_images"), ("val200", "val_images")):
    if field in needed:
      if size is None and task.image_size is None:
        raise ValueError(f"Model {entry.name!r} declares no input size and task "
                         f"{task.name!r} has images of many sizes; set input_size.")
      out[field], _ = pipeline.load_resized(task, split, image_size=size or task.image_size,
                                            value_range=model.value_range,
                                            data_dir=study.data_dir)
  return out


def scores(study) -> None:
  """Computes the configured task-aware scores on cached train800/val200 features (and, for
  scores that ask for it, the model and its images)."""
  by_name = {e.name: e for e in study.entries}
  task_by_name = {t.name: t for t in study.tasks}
  score_configs = study.config.scores.to_dict()
  needed = scores_lib.required_fields(score_configs)
  if needed & {"source_features", "source_labels"}:
    for entry in study.entries:  # Before any work: every model needs its upstream data.
      _check_source_data(entry)
  loaded = {}
  for m, t in tqdm.tqdm(study.items(), desc="scores", unit="item"):
    entry, task = by_name[m], task_by_name[t]
    if load_scores(study, entry, task) is not None:
      continue
    train = features.load(study.workdir, entry, task, "train800")
    val = features.load(study.workdir, entry, task, "val200")
    if train is None or val is None:
      raise ValueError(f"No valid features for model {m!r} on task {t!r}; run the 'features' "
                       "stage before 'scores'.")
    inputs = ScoreInputs(
        train_features=train["features"], train_labels=train["labels"],
        val_features=val["features"], val_labels=val["labels"], num_classes=task.num_classes,
        source_probs=train.get("source_probs"), val_source_probs=val.get("source_probs"),
        model_name=m, task_name=t, **_model_inputs(study, entry, task, needed, loaded))
    values = scores_lib.compute(score_configs, inputs)
    wd.write_json(wd.scores_path(study.workdir, m, t),
                  {"model": m, "task": t, "scores": values,
                   "fingerprint": _score_fingerprint(study, entry, task)})


def _ground_truth(study, missing: list[str]) -> dict[str, dict[str, float]]:
  """task -> model -> test accuracy: published (config.ground_truth) or the finetune stage's."""
  if study_lib.ground_truth_of(study.config) == "published":
    return published.accuracies_for(study.entries, [t.name for t in study.tasks],
                                    study_lib.train_examples(study.config))
  by_name = {e.name: e for e in study.entries}
  accuracies = {}
  for t in study.tasks:
    accuracies[t.name] = {}
    for m in study.model_names:
      ft = finetune_grid.load(study.config, study.workdir, by_name[m], t)
      if ft is None:
        missing.append(f"finetune {m}/{t.name}")
      else:
        accuracies[t.name][m] = ft["test_accuracy"]
  return accuracies


def _gather(study):
  """Ground truth and scores of the whole grid; missing items are left out.

  Scores are read only when config.scores names some: a config without scores (e.g.
  configs/vtab_published.py by default) leaves the workdir's scores/ files alone.
  """
  by_name = {e.name: e for e in study.entries}
  missing = []
  accuracies = _ground_truth(study, missing)
  all_scores = {t.name: {} for t in study.tasks}
  if study.config.scores.to_dict():
    for t in study.tasks:
      for m in study.model_names:
        sc = load_scores(study, by_name[m], t)
        if sc is None:
          missing.append(f"scores {m}/{t.name}")
          continue
        for score_name, values in sc["scores"].items():
          all_scores[t.name].setdefault(score_name, {})[m] = values["score"]
  if missing:
    logging.warning("select: %d results missing (reported as missing): %s", len(missing),
                    ", ".join(missing[:10]))
  return accuracies, all_scores


def select(study) -> None:
  """Runs every strategy for every pool, task and budget; writes select/table.csv."""
  if jax.process_index() != 0:
    return
  config = study.config
  accuracies, all_scores = _gather(study)
  custom = config.select.custom_pools.to_dict()
  pool_members = {p: pools.members(p, study.entries, custom) for p in config.select.pools}
  for p, names in pool_members.items():
    if not names:
      raise ValueError(f"Pool {p!r} has no models among {study.model_names}.")
  table = regret.evaluate_selections(
      study.entries, all_scores, accuracies, {t.name: t.group for t in study.tasks},
      pool_members, budgets=list(config.select.budgets) or None)
  wd.write_text(study.workdir / "select" / "table.csv", table.to_csv(index=False))
  wd.write_json(study.workdir / "select" / "pools.json", pool_members)


def report_stage(study) -> None:
  """Regret tables, figures and the Markdown summary from the select stage's table."""
  if jax.process_index() != 0:
    return
  path = study.workdir / "select" / "table.csv"
  if not path.exists():
    raise ValueError(f"No selection table at {path}; run the 'select' stage before 'report'.")
  accuracies, all_scores = _gather(study)
  pools_path = study.workdir / "select" / "pools.json"
  pool_members = wd.read_json(pools_path) if pools_path.exists() else None
  title = f"model_search: {study.config.suite} suite, {len(study.model_names)} models"
  if study_lib.ground_truth_of(study.config) == "published":
    train = study_lib.train_examples(study.config)
    title += f", published {'VTAB-1k' if train == '1000' else 'full-data'} ground truth"
    if (study.config.get("published") or {}).get("include_from_scratch", False):
      # A reference row of the accuracy table, never a pool member (see published.py).
      scratch = published.load_accuracies(train, include_from_scratch=True)
      accuracies = {t: {**acc, published.FROM_SCRATCH: scratch[t][published.FROM_SCRATCH]}
                    for t, acc in accuracies.items()}
  sections = []
  if study.config.get("training_time"):  # Predictions present in the workdir, if any.
    records = training_time_stage.collect(study)
    if records:
      sections.append(report_training_time.write(records, wd.report_dir(study.workdir)))
  summary = report.write_report(
      report.read_table(str(path)), str(wd.report_dir(study.workdir)), accuracies=accuracies,
      entries=study.entries, task_groups={t.name: t.group for t in study.tasks},
      scores=all_scores, pools=pool_members, title=title, sections=sections)
  logging.info("report: %s", summary)


STAGES: dict[str, Callable] = {
    "zoo": zoo,
    "features": features.run_stage,
    "scores": scores,
    "training_time": training_time_stage.run_stage,
    "finetune": finetune_grid.run_stage,
    "select": select,
    "report": report_stage,
}


def validate(stage_names) -> None:
  unknown = [s for s in stage_names if s not in STAGES]
  if unknown:
    raise ValueError(f"Unknown stage(s) {unknown}; valid stages, in order: {', '.join(STAGES)}")
