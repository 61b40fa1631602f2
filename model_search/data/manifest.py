"""Split manifests: which TFDS examples (and labels) form each split of a task, as JSON.

  python -m model_search.data.manifest --tasks=natural --data_dir=DATA_DIR --out=/tmp/manifests

writes `OUT/TASK/SPLIT.json` for every selected task and split (default: train800, val200,
train800val200, test), each holding the TFDS builder and version, the split string, the number of
examples, and, in TFDS read order, every example's `tfds_id` and label. Anyone can check that a
study used the exact VTAB-1k examples, or reuse them elsewhere. Images are not decoded (the label
functions only need the non-image features), so even the 73 728-example dSprites test split takes
seconds.
"""

from __future__ import annotations

from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
import numpy as np
import tensorflow as tf
import tqdm

from model_search import workdir as wd
from model_search.data import mini
from model_search.data import pipeline
from model_search.data import task as task_lib
from model_search.data import vtab

SUITES = {"vtab": vtab, "mini": mini}
DEFAULT_SPLITS = ("train800", "val200", "train800val200", "test")


def split_manifest(task: task_lib.Task, split_name: str, *,
                   data_dir: str | None = None) -> dict[str, Any]:
  """The examples of one split of a task, in TFDS read order.

  Args:
    task: a Task.
    split_name: one of the task's split names (e.g. 'train800').
    data_dir: TFDS data directory; None means TFDS's default.

  Returns:
    {'task', 'tfds_name', 'tfds_version', 'split_name', 'split', 'num_examples',
     'tfds_ids': [str], 'labels': [int]}.
  """
  split = task.split(split_name)
  builder = pipeline.builder(task, data_dir)
  ds = pipeline.dataset(task, split_name, data_dir, with_ids=True, decode_images=False)
  ids, labels = [], []
  for batch in ds.batch(4096).as_numpy_iterator():
    ids.extend(x.decode() for x in batch["tfds_id"])
    labels.append(batch["label"])
  labels = np.concatenate(labels).astype(int).tolist() if labels else []
  return {"task": task.name, "tfds_name": task.tfds_name,
          "tfds_version": str(builder.info.version), "split_name": split_name,
          "split": split, "num_examples": len(ids), "tfds_ids": ids, "labels": labels}


def write(tasks: Sequence[task_lib.Task], out_dir: str, *,
          splits: Sequence[str] = DEFAULT_SPLITS, data_dir: str | None = None) -> list[str]:
  """Writes `out_dir/TASK/SPLIT.json` for every task and split, atomically.

  Returns:
    The paths written.
  """
  for task in tasks:  # Validate every split name before reading anything.
    for s in splits:
      task.split(s)
  paths = []
  for task, s in tqdm.tqdm([(t, s) for t in tasks for s in splits], desc="manifests",
                           unit="split"):
    path = epath.Path(out_dir) / task.name / f"{s}.json"
    wd.write_json(path, split_manifest(task, s, data_dir=data_dir))
    paths.append(str(path))
  return paths


def select(suite: str, spec: str) -> list[task_lib.Task]:
  """Tasks of a suite from 'all', a group, or names joined by '+'."""
  if suite not in SUITES:
    raise ValueError(f"Unknown suite {suite!r}; known suites: {', '.join(sorted(SUITES))}")
  module = SUITES[suite]
  return [module.get_task(n) for n in module.select_tasks(spec)]


_SUITE = flags.DEFINE_enum("suite", "vtab", sorted(SUITES), "Which task suite.")
_TASKS = flags.DEFINE_string(
    "tasks", "all", "'all', a group (natural, specialized, structured) or names joined by '+'.")
_SPLITS = flags.DEFINE_list("splits", list(DEFAULT_SPLITS), "Split names to list.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (local or gs://).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tf.config.set_visible_devices([], "GPU")
  if not _OUT.value:
    raise app.UsageError("--out is required: the directory the manifests are written to.")
  tasks = select(_SUITE.value, _TASKS.value)
  for path in write(tasks, _OUT.value, splits=_SPLITS.value, data_dir=_DATA_DIR.value):
    print(path)


if __name__ == "__main__":
  app.run(main)
