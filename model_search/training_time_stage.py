"""The `training_time` stage: each fine-tuning run's loss curve and time, predicted untrained.

For every (model, task) and every run of the `finetune` grid (repeat x learning rate), the
run is replayed on the model linearised at the fine-tuning's starting point
(`model_search.function_space`): the same loss (softmax cross-entropy), the same batches
(`finetune.batch_indices` with the run's seed), learning-rate schedule, momentum and gradient
clipping. The fine-tuning starts from a zero head, where the network's NTK is exactly
(Phi Phi^T + 1) (x) I_C on the backbone's features Phi (the backbone's Jacobian is zero
while the head is), so the prediction needs only the cached train800 features: the
linearised model is a linear probe, and how far the real fine-tuning (whose backbone moves
once the head is non-zero) departs from it is what the report measures. A model whose
fine-tuning runs batch norm in training mode is linearised in that mode: its features come
from the batches of each repeat's first epoch (batch statistics), not from the cache.

From each predicted batch-loss curve (what `finetune` records), smoothed by a running mean
of `smooth` steps, come the steps to reach each threshold (a fraction of the initial loss
ln C), and the wall time at the step speed measured here on a few real training steps of the
model (`speed_steps`), before any fine-tuning. The report puts these next to the actual runs.

  WORKDIR/training_time/MODEL/TASK.json    per run: predicted curves, steps and seconds

Config (`config.training_time`): thresholds, smooth, speed_steps, curve_every (the stored
curves keep every curve_every-th step).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from model_search import features
from model_search import finetune
from model_search import finetune_grid
from model_search import function_space
from model_search import workdir as wd
from model_search.data import pipeline
from model_search.models import hub

_VERSION = "training-time-v1"


def default_config():
  """The stage's options (`config.training_time`)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict()
  # Targets: these fractions of the initial training loss (ln C at the zero head).
  c.thresholds = (0.75, 0.5, 0.25)
  # Running mean over this many steps of every batch-loss curve (predicted and actual)
  # before it is compared with a threshold: a single batch's loss is noisy.
  c.smooth = 10
  # Real training steps timed per model (after one compiling call) for the step speed.
  c.speed_steps = 5
  # The stored curves keep every this-many-th step.
  c.curve_every = 1
  return c


def path(workdir, model: str, task: str) -> epath.Path:
  return epath.Path(workdir) / "training_time" / model / f"{task}.json"


def _fingerprint(config, entry, task) -> str:
  return wd.fingerprint(_VERSION, finetune_grid.task_fingerprint(config, entry, task),
                        features.feature_fingerprint(entry, task, "train800"),
                        config.training_time.to_dict())


def load(config, workdir, entry, task) -> dict[str, Any] | None:
  return wd.read_json(path(workdir, entry.name, task.name),
                      fingerprint_=_fingerprint(config, entry, task),
                      required=("runs", "initial_loss", "step_seconds"))


def smoothed(curve, window: int) -> np.ndarray:
  """Trailing running mean: entry t is the mean of curve[max(0, t - window + 1) : t + 1]."""
  c = np.asarray(curve, np.float64)
  if window <= 1 or c.size == 0:
    return c
  sums = np.cumsum(np.concatenate([[0.0], c]))
  t = np.arange(1, c.size + 1)
  lo = np.maximum(0, t - window)
  return (sums[t] - sums[lo]) / (t - lo)


def steps_to(curve, target: float, window: int) -> float:
  """Steps (1-based: after step t) until the smoothed batch-loss curve is <= target; inf
  when it never is."""
  hits = np.flatnonzero(smoothed(curve, window) <= target)
  return float(hits[0] + 1) if hits.size else math.inf


def learning_rates(config, base_lr: float) -> np.ndarray:
  """[steps] the learning rate of each step of a run (`finetune.lr_schedule`, vmapped)."""
  ft = config.finetune
  schedule = functools.partial(finetune.lr_schedule, base_lr, steps=ft.steps,
                               decay_at=tuple(ft.decay_at), warmup_steps=ft.warmup_steps)
  return np.asarray(jax.vmap(schedule)(jnp.arange(ft.steps)), np.float32)


def _train_images(study, entry, model, task):
  size = entry.input_size or model.input_size
  if task.image_size is None:
    return pipeline.load_resized(task, "train800", image_size=size,
                                 value_range=model.value_range, data_dir=study.data_dir)
  images, labels = pipeline.load_split(task, "train800", data_dir=study.data_dir)
  return pipeline.to_model_input(images, image_size=size or images.shape[1],
                                 value_range=model.value_range), labels


def step_seconds(config, tuner: finetune.Finetuner, images, labels, num_classes) -> float:
  """Seconds per real training step of `tuner` at the configured batch (compile excluded)."""
  ft = config.finetune
  n = max(int(config.training_time.speed_steps), 1)
  idx = finetune.batch_indices(len(images), steps=n + 1, batch_size=ft.batch_size, seed=0)
  lr = float(ft.learning_rates[0])
  tuner.train(lr, images, labels, num_classes, idx[:1])  # Compiles.
  start = time.perf_counter()
  tuner.train(lr, images, labels, num_classes, idx[1:])
  return (time.perf_counter() - start) / n


def _finite_or_none(x: float):
  return x if math.isfinite(x) else None


def first_epoch(num_examples: int, indices) -> list[np.ndarray]:
  """The batches of a run's first epoch, each example once (the last batch may be short)."""
  b = indices.shape[1]
  order = np.asarray(indices).reshape(-1)[:num_examples]
  return [order[s:s + b] for s in range(0, num_examples, b)]


def predict(config, train_features, train_labels, num_classes: int) -> dict[str, Any]:
  """Every run of the grid for one (model, task), replayed on the linearised model.

  Args:
    config: the study's config (its finetune protocol and training_time options).
    train_features: [N, D] the backbone's features of train800; or a function
      `(repeat, indices [T, B]) -> [N, D]` for features that depend on the run's batches
      (training mode: batch statistics).
    train_labels: [N] int labels.
    num_classes: C.
  """
  ft, tc = config.finetune, config.training_time
  n = len(train_labels)
  fixed = None if callable(train_features) else function_space.feature_kernel(train_features)
  f0 = np.zeros((n, num_classes), np.float32)
  loss0 = math.log(num_classes)
  every = max(int(tc.curve_every), 1)
  runs, schedules = [], {lr: learning_rates(config, lr) for lr in ft.learning_rates}
  for repeat in range(ft.repeats):
    seed = finetune_grid.run_seed(config.seed, repeat)
    indices = finetune.batch_indices(n, steps=ft.steps, batch_size=ft.batch_size, seed=seed)
    theta = (fixed if fixed is not None
             else function_space.feature_kernel(train_features(repeat, indices)))
    for base_lr in ft.learning_rates:
      run = function_space.simulate(
          theta, f0, train_labels, indices, learning_rate=schedules[base_lr],
          momentum=ft.momentum, loss="cross_entropy", grad_clip_norm=ft.grad_clip_norm or None)
      steps = {f"{t:g}": _finite_or_none(steps_to(run.batch_loss, t * loss0, tc.smooth))
               for t in tc.thresholds}
      runs.append({"repeat": repeat, "learning_rate": float(base_lr), "seed": seed,
                   "steps_to_threshold": steps,
                   "batch_loss": run.batch_loss[::every].tolist(),
                   "train_loss": run.train_loss[::every].tolist(),
                   "train_accuracy": run.train_accuracy[::every].tolist(),
                   "final_train_loss": float(run.train_loss[-1]),
                   "final_train_accuracy": float(run.train_accuracy[-1])})
  return {"initial_loss": loss0, "num_examples": n, "runs": runs, "curve_every": every}


def _check_config(config) -> None:
  tc = config.training_time
  bad = [t for t in tc.thresholds if not 0 < t < 1]
  if bad or not tc.thresholds:
    raise ValueError(f"config.training_time.thresholds must be fractions of the initial loss "
                     f"in (0, 1), got {tuple(tc.thresholds)}")
  if int(tc.smooth) < 1:
    raise ValueError(f"config.training_time.smooth must be >= 1 step, got {tc.smooth}")


def run_stage(study) -> None:
  """Predicts this process's (model, task) items; needs the features stage's train800."""
  config, workdir = study.config, study.workdir
  _check_config(config)
  by_name = {e.name: e for e in study.entries}
  task_by_name = {t.name: t for t in study.tasks}
  todo = [(m, t) for m, t in study.items()
          if load(config, workdir, by_name[m], task_by_name[t]) is None]
  head_classes = max(t.num_classes for t in study.tasks)
  tuner, current, speed = None, None, {}
  for m, t in tqdm.tqdm(todo, desc="training_time", unit="item"):
    entry, task = by_name[m], task_by_name[t]
    train = features.load(workdir, entry, task, "train800")
    if train is None:
      raise ValueError(f"No valid train800 features for model {m!r} on task {t!r}; run the "
                       "'features' stage before 'training_time'.")
    if current != m:
      tuner = finetune_grid.make_tuner(config, hub.load_entry(entry), head_classes)
      current = m
    # The step speed is measured once per model and input size (the head is the grid's
    # widest); the images are read only for it and for training-mode features.
    key, speed_secs = (m, entry.input_size or tuner.model.input_size or t), 0.0
    images = None
    if tuner.uses_train_mode or key not in speed:
      images, labels = _train_images(study, entry, tuner.model, task)
      if not np.array_equal(labels, train["labels"]):
        raise ValueError(f"The train800 labels of {t!r} differ between the features cache "
                         "and the data; delete the stale features.")
    start = time.perf_counter()
    if tuner.uses_train_mode:
      # Batch norm in training mode: the run's steps see batch statistics, not the upstream
      # moving averages of the cached features; each repeat's first epoch gives them.
      phi = lambda repeat, indices: tuner.train_features(  # pylint: disable=g-long-lambda
          images, first_epoch(len(images), indices),
          seed=finetune_grid.run_seed(config.seed, repeat))
    else:
      phi = train["features"]
    out = predict(config, phi, train["labels"], task.num_classes)
    out["features"] = "training mode" if tuner.uses_train_mode else "inference"
    secs = time.perf_counter() - start
    if key not in speed:
      start = time.perf_counter()
      speed[key] = step_seconds(config, tuner, images, train["labels"], task.num_classes)
      speed_secs = time.perf_counter() - start
    for run in out["runs"]:
      run["predicted_seconds"] = {k: None if v is None else v * speed[key]
                                  for k, v in run["steps_to_threshold"].items()}
    wd.write_json(path(workdir, m, t), {
        "model": m, "task": t, **out, "step_seconds": speed[key],
        # The replay's cost; the features (shared with the scores) and the speed measurement
        # (speed_seconds: compile + speed_steps steps, on a model's first task) are not in it.
        "prediction_seconds": secs, "speed_seconds": speed_secs,
        "thresholds": list(config.training_time.thresholds),
        "smooth": int(config.training_time.smooth),
        "fingerprint": _fingerprint(config, entry, task)})
  logging.info("training_time: %d items predicted.", len(todo))


def collect(study) -> list[dict[str, Any]]:
  """One record per run with a prediction, joined with its actual run where there is one
  (the input of `report_training_time.write`)."""
  config, workdir = study.config, study.workdir
  by_name = {e.name: e for e in study.entries}
  records = []
  for task in study.tasks:
    for m in study.model_names:
      pred = load(config, workdir, by_name[m], task)
      if pred is None:
        continue
      for run in pred["runs"]:
        item = finetune_grid.Item(m, task.name, run["repeat"], run["learning_rate"])
        actual = finetune_grid.load_run(config, workdir, by_name[m], task, item)
        curve = None if actual is None or actual["failure"] else actual.get("loss_curve")
        execution = (actual or {}).get("execution") or {}
        train_secs = execution.get("train_seconds")
        train_steps = execution.get("train_steps")
        records.append({
            "model": m, "task": task.name, "repeat": run["repeat"],
            "learning_rate": run["learning_rate"], "initial_loss": pred["initial_loss"],
            "thresholds": pred["thresholds"], "smooth": pred["smooth"],
            "curve_every": pred["curve_every"], "step_seconds": pred["step_seconds"],
            # The item's replay cost, shared among its runs.
            "prediction_seconds": pred["prediction_seconds"] / len(pred["runs"]),
            "speed_seconds": pred.get("speed_seconds", 0.0) / len(pred["runs"]),
            "predicted_batch_loss": run["batch_loss"],
            "predicted_steps": run["steps_to_threshold"],
            "actual_batch_loss": curve,
            "actual_steps": None if curve is None else {
                f"{t:g}": _finite_or_none(steps_to(curve, t * pred["initial_loss"],
                                                   pred["smooth"]))
                for t in pred["thresholds"]},
            "actual_train_seconds": train_secs if curve is not None else None,
            "actual_step_seconds": (train_secs / train_steps if curve and train_secs
                                    and train_steps else None)})
  return records
