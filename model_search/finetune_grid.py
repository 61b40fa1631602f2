"""The fine-tuning grid: runs split across processes, resumable, failures recorded, gathered.

The paper's ground truth is a grid of runs, one per (model, task, repeat, learning rate). This
module runs this process's share of it (`jax.process_index()`-th of every
`jax.process_count()`, models outer, so each process loads each model once) and writes one
result per run, atomically:

  WORKDIR/finetune/MODEL/TASK/runs/rREPEAT_lrLR.json     a run: val/test accuracy, losses
  WORKDIR/checkpoints/finetune/MODEL/TASK/rREPEAT_lrLR/  orbax checkpoints while it trains
  WORKDIR/finetune/events/process_I.jsonl                what process I started and finished
  WORKDIR/finetune/metrics/process_I.jsonl               losses, steps/s, accuracies (JSONL)
  WORKDIR/tensorboard/finetune/MODEL/TASK/rREPEAT_lrLR/  the same as TensorBoard scalars

A run checkpoints every `finetune.checkpoint_every` steps; a killed process, restarted, resumes
each unfinished run from its last checkpoint with the same data order, so it ends with exactly
the metrics of an uninterrupted run. A run that fails (NaN or infinite loss, out of memory, a
dataset that cannot be read, any other error) is recorded with its reason and the grid goes on.
Finished and failed runs are skipped on a rerun (`finetune.retry_failed` retries failures).

When every process is done (a barrier across processes), process 0 gathers: it checks that
every run of the grid is present exactly once and valid, writes the protocol's ground truth per
(model, task) to WORKDIR/finetune/MODEL/TASK.json (`finetune.summarize`), the whole table to
WORKDIR/finetune/table.csv, and a failure record for each (model, task) without ground truth.
The checkpoints and logs themselves are `model_search.finetune_records`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import time
import traceback
from typing import Any, Sequence

from absl import logging
from etils import epath
import jax
import numpy as np

from model_search import finetune
from model_search import finetune_records as records
from model_search import sharding as sharding_lib
from model_search import workdir as wd
from model_search.data import pipeline
from model_search.models import hub

_VERSION = "finetune-v2"
# Fields of config.finetune that change where and how fast runs happen, not their results.
_NOT_IN_FINGERPRINT = ("checkpoint_every", "log_every", "keep_checkpoints", "retry_failed",
                       "num_devices", "fsdp_regex", "fsdp_min_size", "eval_batch_size")


@dataclasses.dataclass(frozen=True)
class Item:
  """One run of the grid."""
  model: str
  task: str
  repeat: int
  learning_rate: float

  @property
  def run_name(self) -> str:
    return f"r{self.repeat}_lr{self.learning_rate:g}"

  @property
  def name(self) -> str:
    return f"{self.model}/{self.task}/{self.run_name}"


def grid(model_names: Sequence[str], task_names: Sequence[str], repeats: int,
         learning_rates: Sequence[float]) -> list[Item]:
  """Every run, models outer, then tasks, repeats, learning rates."""
  return [Item(m, t, r, float(lr)) for m in model_names for t in task_names
          for r in range(repeats) for lr in learning_rates]


def share(items: Sequence[Item], process_index: int, process_count: int) -> list[Item]:
  """Process `process_index`'s items: every `process_count`-th, from its index."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in 0..{process_count - 1}")
  return list(items[process_index::process_count])


def run_path(workdir, item: Item) -> epath.Path:
  return (epath.Path(workdir) / "finetune" / item.model / item.task / "runs" /
          f"{item.run_name}.json")


def checkpoint_dir(workdir, item: Item) -> epath.Path:
  return (epath.Path(workdir) / "checkpoints" / "finetune" / item.model / item.task /
          item.run_name)


def run_seed(seed: int, repeat: int) -> int:
  return seed + 7919 * repeat


def _protocol(config) -> dict[str, Any]:
  ft = config.finetune.to_dict()
  return {k: v for k, v in sorted(ft.items()) if k not in _NOT_IN_FINGERPRINT}


def add_run_options(finetune_config, *, checkpoint_every: int, log_every: int) -> None:
  """Adds to `config.finetune` the fields of how runs execute, with their defaults.

  None of them is part of a result's fingerprint except accumulation_steps.

  Args:
    finetune_config: the config's `finetune` ConfigDict (changed in place).
    checkpoint_every: orbax checkpoint every this many steps (0: none).
    log_every: fetch, check and log the losses every this many steps.
  """
  # Micro-batches per step (batch_size / accumulation_steps each): the same step as one batch
  # for models without batch norm; lets batch 512 fit small devices.
  finetune_config.accumulation_steps = 1
  # Devices per run: 0 = all of this process's devices, data parallel. fsdp_regex: shard the
  # parameters whose path matches it (and that have >= fsdp_min_size entries) over them too.
  finetune_config.num_devices = 0
  finetune_config.fsdp_regex = ""
  finetune_config.fsdp_min_size = 2**16
  # Batch norm in training mode (batch statistics) while training, moving averages at eval.
  finetune_config.train_mode = True
  finetune_config.checkpoint_every = checkpoint_every
  finetune_config.log_every = log_every
  finetune_config.keep_checkpoints = False
  # Rerun runs recorded as failed (NaN loss, out of memory, missing data) instead of skipping.
  finetune_config.retry_failed = False


def run_fingerprint(config, entry, task, item: Item) -> str:
  return wd.fingerprint(_VERSION, entry.to_json(), task.name, task.tfds_name,
                        {k: task.split(k) for k in ("train800", "val200", "test")},
                        _protocol(config), config.seed, item.repeat, item.learning_rate)


def task_fingerprint(config, entry, task) -> str:
  return wd.fingerprint(_VERSION, entry.to_json(), task.name, task.tfds_name,
                        {k: task.split(k) for k in ("train800", "val200", "test")},
                        _protocol(config), config.seed)


def load(config, workdir, entry, task) -> dict[str, Any] | None:
  """The ground truth of (entry, task), or None if absent or unusable."""
  return wd.read_json(wd.finetune_path(workdir, entry.name, task.name),
                      fingerprint_=task_fingerprint(config, entry, task),
                      required=("test_accuracy", "val_accuracy", "learning_rate"))


def load_run(config, workdir, entry, task, item: Item) -> dict[str, Any] | None:
  """A finished (or failed) run, or None if absent or unusable."""
  return wd.read_json(run_path(workdir, item),
                      fingerprint_=run_fingerprint(config, entry, task, item),
                      required=("val_accuracy", "test_accuracy", "failure"))


# ----------------------------------------------------------------------------
# Running this process's runs.


def classify_failure(error: BaseException) -> str:
  """A one-line reason: 'non-finite loss', 'out of memory', 'dataset unavailable' or 'error'."""
  text = f"{type(error).__name__}: {error}".strip()
  first = text.splitlines()[0][:300]
  if isinstance(error, finetune.NonFiniteLoss):
    return f"non-finite loss: {error}"
  if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in (
      text.lower()):
    return f"out of memory: {first}"
  if isinstance(error, _DatasetUnavailable):
    return f"dataset unavailable: {error}"
  return f"error: {first}"


class _DatasetUnavailable(RuntimeError):
  pass


def _load_splits(study, entry, model, task, raw) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """train800, val200 and test of `task` as the model's input; raises _DatasetUnavailable."""
  size = entry.input_size or model.input_size
  if task.image_size is None and size is None:
    raise ValueError(f"Model {entry.name!r} declares no input size and task {task.name!r} has "
                     "images of many sizes; set input_size in the model's entry.")
  splits = {}
  try:
    for s in ("train800", "val200", "test"):
      if task.image_size is None:  # Images of many sizes: resize while reading.
        splits[s] = pipeline.load_resized(task, s, image_size=size,
                                          value_range=model.value_range,
                                          data_dir=study.data_dir)
        continue
      if (task.name, s) not in raw:
        raw[task.name, s] = pipeline.load_split(task, s, data_dir=study.data_dir)
      images, labels = raw[task.name, s]
      splits[s] = (pipeline.to_model_input(images, image_size=size or images.shape[1],
                                           value_range=model.value_range), labels)
  except Exception as e:  # TFDS / TF / IO errors: the data is not there or not readable.
    raise _DatasetUnavailable(f"{task.name} ({task.tfds_name}) split {s!r} could not be read "
                              f"from {study.data_dir!r}: {type(e).__name__}: {e}") from e
  return splits


def make_tuner(config, model, head_classes: int) -> finetune.Finetuner:
  """The `Finetuner` of config.finetune for `model`, with a head of `head_classes` outputs."""
  ft = config.finetune
  mesh = sharding_lib.make_mesh(num_devices=ft.get("num_devices") or None)
  return finetune.Finetuner(
      model, head_classes=head_classes, momentum=ft.momentum, steps=ft.steps,
      decay_at=ft.decay_at, warmup_steps=ft.warmup_steps, eval_batch_size=ft.eval_batch_size,
      grad_clip_norm=ft.grad_clip_norm or None,
      accumulation_steps=ft.get("accumulation_steps", 1), mesh=mesh,
      fsdp_regex=ft.get("fsdp_regex") or None, fsdp_min_size=ft.get("fsdp_min_size", 2**16),
      train_mode=ft.get("train_mode", True))


def train_item(config, workdir, tuner: finetune.Finetuner, item: Item, splits, *,
               num_classes: int, fingerprint: str = "",
               metrics: records.Jsonl | None = None) -> dict[str, Any]:
  """Trains and evaluates one run, checkpointing and resuming; returns its result fields."""
  ft = config.finetune
  x_train, y_train = splits["train800"]
  seed = run_seed(config.seed, item.repeat)
  indices = finetune.batch_indices(len(x_train), steps=ft.steps, batch_size=ft.batch_size,
                                   seed=seed)
  every_ckpt = int(ft.get("checkpoint_every", 0) or 0)
  log_every = int(ft.get("log_every", 0) or 0)
  every = math.gcd(every_ckpt, log_every) if every_ckpt and log_every else (every_ckpt or
                                                                           log_every)
  ckpt = (records.Checkpointer(checkpoint_dir(workdir, item), fingerprint=fingerprint)
          if every_ckpt else None)
  state, start, losses = None, 0, None
  if ckpt is not None:
    restored = ckpt.restore(tuner.abstract_state())
    if restored is not None:
      start, state, losses = restored
      logging.info("finetune %s: resuming from its checkpoint at step %d", item.name, start)
  # Each process logs the runs it trains.
  board = records.TensorBoard(epath.Path(workdir) / "tensorboard" / "finetune" / item.model /
                       item.task / item.run_name)
  clock = {"time": time.perf_counter(), "step": start}

  def callback(step, state, losses_so_far):
    now = time.perf_counter()
    rate = (step - clock["step"]) / max(now - clock["time"], 1e-9)
    clock.update(time=now, step=step)
    if metrics is not None:
      metrics.write(event="train", item=item.name, step=step, loss=float(losses_so_far[-1]),
                    steps_per_sec=rate)
    board.scalars(step, loss=float(losses_so_far[-1]), steps_per_sec=rate)
    if ckpt is not None and step % every_ckpt == 0 and step < ft.steps:
      ckpt.save(step, state, losses_so_far)

  start_time = time.perf_counter()
  try:
    params, losses = tuner.train(item.learning_rate, x_train, y_train, num_classes, indices,
                                 seed=seed, state=state, start_step=start, losses=losses,
                                 every=every, callback=callback)
    train_secs = time.perf_counter() - start_time  # Compile and checkpoints included.
    val = tuner.accuracy(params, *splits["val200"], num_classes)
    test = tuner.accuracy(params, *splits["test"], num_classes)
    board.scalars(ft.steps, val_accuracy=val, test_accuracy=test)
  finally:
    board.close()
  if metrics is not None:
    metrics.write(event="eval", item=item.name, step=ft.steps, val_accuracy=val,
                  test_accuracy=test)
  result = {"val_accuracy": float(val), "test_accuracy": float(test),
            "final_loss": float(losses[-1]), "loss_curve": [float(v) for v in losses],
            "failure": None, "seed": seed,
            "execution": {"resumed_from_step": start,
                          "secs_this_process": time.perf_counter() - start_time,
                          "train_seconds": train_secs, "train_steps": ft.steps - start}}
  if ckpt is not None:
    if ft.get("keep_checkpoints"):
      ckpt.close()
    else:
      ckpt.delete()
  return result


def run_stage(study) -> None:
  """Runs this process's unfinished runs, waits for every process, then gathers (process 0)."""
  config, workdir = study.config, study.workdir
  ft = config.finetune
  by_name = {e.name: e for e in study.entries}
  task_by_name = {t.name: t for t in study.tasks}
  items = grid(study.model_names, [t.name for t in study.tasks], ft.repeats, ft.learning_rates)
  pid, count = jax.process_index(), jax.process_count()
  mine = share(items, pid, count)
  retry = bool(ft.get("retry_failed", False))

  def done(item):
    run = load_run(config, workdir, by_name[item.model], task_by_name[item.task], item)
    return run is not None and (run["failure"] is None or not retry)

  todo = [item for item in mine if not done(item)]
  logging.info("finetune: process %d of %d has %d runs, %d to do.", pid, count, len(mine),
               len(todo))
  events = records.jsonl(epath.Path(workdir) / "finetune" / "events" / f"process_{pid}.jsonl")
  metrics = records.jsonl(epath.Path(workdir) / "finetune" / "metrics" / f"process_{pid}.jsonl")
  head_classes = max(t.num_classes for t in study.tasks)
  raw: dict[tuple[str, str], Any] = {}
  tuner, current, splits_cache, splits_failures = None, None, {}, {}
  for i, item in enumerate(todo):
    entry, task = by_name[item.model], task_by_name[item.task]
    result = {"model": item.model, "task": item.task, "repeat": item.repeat,
              "learning_rate": item.learning_rate,
              "fingerprint": run_fingerprint(config, entry, task, item)}
    events.write(event="start", item=item.name, process_index=pid)
    logging.info("finetune [%d/%d] %s", i + 1, len(todo), item.name)
    try:
      if current != item.model:
        tuner, current, splits_cache = None, None, {}
        model = hub.load_entry(entry)
        tuner, current = make_tuner(config, model, head_classes), item.model
      if item.task not in splits_cache:
        try:
          splits_cache[item.task] = _load_splits(study, entry, tuner.model, task, raw)
        except _DatasetUnavailable as e:  # Every run of this task fails alike.
          splits_cache[item.task], splits_failures[item.task] = None, str(e)
      if splits_cache[item.task] is None:
        raise _DatasetUnavailable(splits_failures[item.task])
      result.update(train_item(config, workdir, tuner, item, splits_cache[item.task],
                               num_classes=task.num_classes,
                               fingerprint=result["fingerprint"], metrics=metrics))
    except Exception as e:  # pylint: disable=broad-except
      reason = classify_failure(e)
      logging.error("finetune %s failed: %s\n%s", item.name, reason, traceback.format_exc())
      result.update({"val_accuracy": None, "test_accuracy": None, "failure": reason})
    result.setdefault("execution", {})["process_index"] = pid
    wd.write_json(run_path(workdir, item), result)
    events.write(event="failed" if result["failure"] else "done", item=item.name,
                 process_index=pid, failure=result["failure"])
  if count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("model_search_finetune_grid")
  if pid == 0:
    gather(study, items)
  if count > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("model_search_finetune_gathered")


def _write_json_if_changed(path: epath.Path, obj: dict[str, Any]) -> None:
  """Rewrites a result only when its content changes (a rerun leaves finished files alone)."""
  try:
    if path.exists() and json.loads(path.read_text()) == json.loads(json.dumps(obj)):
      return
  except ValueError:
    pass  # Corrupt: rewrite.
  wd.write_json(path, obj)


def gather(study, items: Sequence[Item] | None = None) -> list[dict[str, Any]]:
  """Checks the grid is complete, writes ground truth per (model, task) and the table.

  Raises:
    RuntimeError: when runs of the grid are missing (a process did not finish its share).
  """
  config, workdir = study.config, study.workdir
  ft = config.finetune
  by_name = {e.name: e for e in study.entries}
  task_by_name = {t.name: t for t in study.tasks}
  if items is None:
    items = grid(study.model_names, [t.name for t in study.tasks], ft.repeats,
                 ft.learning_rates)
  runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
  missing = []
  for item in items:
    run = load_run(config, workdir, by_name[item.model], task_by_name[item.task], item)
    if run is None:
      missing.append(item.name)
      continue
    # The protocol's fields only: where and how long it ran is not part of the result.
    run = {k: v for k, v in run.items() if k not in ("execution", "fingerprint")}
    runs.setdefault((item.model, item.task), []).append(run)
  # Exactly once: one file per run by construction; anything else in a runs folder is stale.
  expected = {run_path(workdir, item) for item in items}
  for model, task in {(i.model, i.task) for i in items}:
    folder = epath.Path(workdir) / "finetune" / model / task / "runs"
    if folder.exists():
      extra = [p for p in folder.glob("*.json") if p not in expected]
      if extra:
        logging.warning("finetune: %s has runs outside this grid (ignored): %s", folder,
                        ", ".join(p.name for p in extra))
  if missing:
    raise RuntimeError(f"finetune: {len(missing)} run(s) of the grid have no result: "
                       f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}")
  rows = []
  for (model, task_name), task_runs in runs.items():
    entry, task = by_name[model], task_by_name[task_name]
    summary = finetune.summarize(task_runs, ft.learning_rates, ft.repeats)
    failures = sorted({r["failure"] for r in task_runs if r["failure"]})
    out = {"model": model, "task": task_name, "fingerprint": task_fingerprint(config, entry, task),
           **summary}
    if summary["test_accuracy"] is None:
      _write_json_if_changed(wd.failure_path(workdir, "finetune", model, task_name),
                             {**out, "failure": "; ".join(failures)})
      wd.finetune_path(workdir, model, task_name).unlink(missing_ok=True)
    else:
      _write_json_if_changed(wd.finetune_path(workdir, model, task_name), out)
      wd.failure_path(workdir, "finetune", model, task_name).unlink(missing_ok=True)
    rows.append({"model": model, "task": task_name, "test_accuracy": summary["test_accuracy"],
                 "val_accuracy": summary["val_accuracy"],
                 "learning_rate": summary["learning_rate"], "runs": len(task_runs),
                 "failed_runs": sum(r["failure"] is not None for r in task_runs),
                 "failures": "; ".join(failures)})
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["model", "task", "test_accuracy", "val_accuracy",
                                           "learning_rate", "runs", "failed_runs", "failures"])
  writer.writeheader()
  writer.writerows(rows)
  wd.write_text(epath.Path(workdir) / "finetune" / "table.csv", buf.getvalue())
  failed = [r for r in rows if r["test_accuracy"] is None]
  logging.info("finetune: gathered %d runs into %d (model, task) results; %d without ground "
               "truth.", len(items), len(rows), len(failed))
  return rows
