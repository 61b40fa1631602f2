"""Published VTAB fine-tune accuracies of the VTAB hub models, as ground truth without training.

The table is the VTAB reference's results table (google-research/task_adaptation,
`docs/data/results.csv`; Zhai et al. 2019, arXiv:1910.04867), reshaped to one row per
(model, task, train_examples) and shipped as package data (`data/vtab_published_results.csv`,
a copy of `shared/reference/vtab_published_results.csv`). Columns: model (the VTAB paper's
name), hub_handle, architecture, task, train_examples ('1000' = VTAB-1k, 'full' = the task's
whole train split) and test_accuracy_percent.

It covers the VTAB paper's 16 "algorithms": the 15 TF-Hub models `https://tfhub.dev/vtab/NAME/1`,
which are registry entries (`models/zoo.py`, names `vtab_*`) and are matched to the rows by hub
handle, plus From-Scratch (no handle). From-Scratch is not a pre-trained model, so it is never
a pool member: nobody selects "train from scratch" from a model pool. It is kept as a reference
(`FROM_SCRATCH`, with `include_from_scratch=True`), e.g. a row of the report's accuracy table.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.resources
import io
import math
import os
from typing import Sequence

from model_search.data import vtab
from model_search.models import zoo
from model_search.models.zoo import ModelEntry

CSV_NAME = "vtab_published_results.csv"
COLUMNS = ("model", "hub_handle", "architecture", "task", "train_examples",
           "test_accuracy_percent")
# '1000': VTAB-1k (train800val200); 'full': the whole train split of the task.
TRAIN_EXAMPLES = ("1000", "full")
# The key of the From-Scratch reference in `load_accuracies(include_from_scratch=True)`, and
# the only row of the table allowed to have no hub handle (the paper's "From-Scratch").
FROM_SCRATCH = "from_scratch"
_FROM_SCRATCH_PAPER_NAME = "From-Scratch"


@dataclasses.dataclass(frozen=True)
class Row:
  """One validated row: `name` is the registry name (or FROM_SCRATCH), accuracy in [0, 1]."""
  name: str
  paper_name: str
  handle: str
  task: str
  train_examples: str
  accuracy: float


def _train_key(train_examples: int | str) -> str:
  key = str(train_examples) if not isinstance(train_examples, bool) else ""
  if key not in TRAIN_EXAMPLES:
    raise ValueError(f"Unknown train_examples {train_examples!r}; the published table has "
                     f"{', '.join(TRAIN_EXAMPLES)} (1000 is VTAB-1k).")
  return key


def _read_text(path: str | os.PathLike[str] | None) -> tuple[str, str]:
  if path is not None:
    with open(path, newline="") as f:
      return f.read(), os.fspath(path)
  resource = importlib.resources.files("model_search.data").joinpath(CSV_NAME)
  return resource.read_text(), f"model_search/data/{CSV_NAME}"


def read_rows(path: str | os.PathLike[str] | None = None) -> list[Row]:
  """Reads and validates the published table.

  Checks: the columns; every handle is a registry entry's (only From-Scratch has none); one
  handle per model name; every task is a VTAB-1k task; train_examples in TRAIN_EXAMPLES;
  accuracies are numbers in [0, 100] percent; no (model, task, train_examples) twice; and,
  per train_examples, every model has every task of the table.

  Args:
    path: a CSV file of the same shape; None reads the packaged table.

  Returns:
    The rows in file order, accuracies as fractions in [0, 1].
  """
  text, where = _read_text(path)
  reader = csv.DictReader(io.StringIO(text))
  if tuple(reader.fieldnames or ()) != COLUMNS:
    raise ValueError(f"{where}: columns {reader.fieldnames}; expected {', '.join(COLUMNS)}")
  by_handle = {e.handle: e for e in zoo.entries("tfhub") + zoo.entries("tfhub_set_b")}
  handle_of, rows, seen = {}, [], set()
  for line, r in enumerate(reader, start=2):
    at = f"{where}, line {line}"
    model, handle, task = r["model"], r["hub_handle"].strip(), r["task"]
    if handle_of.setdefault(model, handle) != handle:
      raise ValueError(f"{at}: model {model!r} has handle {handle!r} here but "
                       f"{handle_of[model]!r} above; one handle per model.")
    if not handle:
      if model != _FROM_SCRATCH_PAPER_NAME:
        raise ValueError(f"{at}: model {model!r} has no hub_handle; only "
                         f"{_FROM_SCRATCH_PAPER_NAME!r} (no pre-training) may have none.")
      name = FROM_SCRATCH
    elif handle in by_handle:
      name = by_handle[handle].name
    else:
      raise ValueError(f"{at}: hub_handle {handle!r} of model {model!r} is not in the model "
                       "registry (models/zoo.py); known VTAB handles: "
                       f"{', '.join(sorted(h for h in by_handle if '/vtab/' in h))}")
    if task not in vtab.TASKS:
      raise ValueError(f"{at}: unknown task {task!r}; known VTAB-1k tasks: "
                       f"{', '.join(sorted(vtab.TASKS))}")
    train = r["train_examples"]
    if train not in TRAIN_EXAMPLES:
      raise ValueError(f"{at}: train_examples {train!r}; valid values: "
                       f"{', '.join(TRAIN_EXAMPLES)}")
    try:
      percent = float(r["test_accuracy_percent"])
    except ValueError:
      raise ValueError(f"{at}: test_accuracy_percent {r['test_accuracy_percent']!r} is not a "
                       "number.") from None
    if math.isnan(percent) or not 0.0 <= percent <= 100.0:
      raise ValueError(f"{at}: test_accuracy_percent {percent} is not a percentage in "
                       "[0, 100].")
    key = (name, task, train)
    if key in seen:
      raise ValueError(f"{at}: duplicate row for model {model!r}, task {task!r}, "
                       f"train_examples {train}.")
    seen.add(key)
    rows.append(Row(name, model, handle, task, train, percent / 100.0))
  for train in TRAIN_EXAMPLES:
    names = {r.name for r in rows if r.train_examples == train}
    tasks = {r.task for r in rows if r.train_examples == train}
    holes = sorted(f"{m}/{t}" for m in names for t in tasks if (m, t, train) not in seen)
    if holes:
      raise ValueError(f"{where}: train_examples {train} has no row for {', '.join(holes)}; "
                       "every model needs every task.")
  return rows


def _by_task(rows: Sequence[Row], train_examples: int | str, include_from_scratch: bool
             ) -> dict[str, dict[str, float]]:
  train = _train_key(train_examples)
  out: dict[str, dict[str, float]] = {}
  for r in rows:
    if r.train_examples == train and (include_from_scratch or r.name != FROM_SCRATCH):
      out.setdefault(r.task, {})[r.name] = r.accuracy
  return out


def load_accuracies(train_examples: int | str = 1000, *, include_from_scratch: bool = False,
                    path: str | os.PathLike[str] | None = None
                    ) -> dict[str, dict[str, float]]:
  """The published test accuracies of the VTAB hub models.

  Args:
    train_examples: 1000 (VTAB-1k, the default) or 'full' (the task's whole train split).
    include_from_scratch: also return the From-Scratch reference, under FROM_SCRATCH.
    path: a CSV file of the table's shape; None reads the packaged table.

  Returns:
    task -> registry model name (e.g. 'vtab_sup_100') -> test accuracy in [0, 1], tasks and
    models in file order.
  """
  _train_key(train_examples)  # A bad value fails before the file is read.
  return _by_task(read_rows(path), train_examples, include_from_scratch)


def entries(path: str | os.PathLike[str] | None = None) -> list[ModelEntry]:
  """The registry entries of the published pre-trained models (From-Scratch has none).

  Args:
    path: a CSV file of the table's shape; None reads the packaged table.

  Returns:
    The ModelEntry records, in registry order (for the packaged table: the 15 VTAB models).
  """
  names = {r.name for r in read_rows(path) if r.name != FROM_SCRATCH}
  return [e for e in zoo.entries("tfhub") if e.name in names]


def accuracies_for(model_entries: Sequence[ModelEntry], tasks: Sequence[str],
                   train_examples: int | str = 1000, *,
                   path: str | os.PathLike[str] | None = None
                   ) -> dict[str, dict[str, float]]:
  """The published accuracies of a study's models on its tasks, keyed by the entries' names.

  Entries are matched to the table by hub handle, so user entries of the VTAB hub models
  (collection 'user', any name) get their published results too.

  Args:
    model_entries: the study's models; each must be a published VTAB hub model.
    tasks: VTAB-1k task names.
    train_examples: 1000 (VTAB-1k) or 'full'.
    path: a CSV file of the table's shape; None reads the packaged table.

  Returns:
    task -> entry name -> test accuracy in [0, 1], in the order of `tasks` and the entries.
  """
  _train_key(train_examples)
  rows = read_rows(path)
  table = _by_task(rows, train_examples, include_from_scratch=False)
  registry_name = {r.handle: r.name for r in rows if r.name != FROM_SCRATCH}
  unpublished = [e.name for e in model_entries if e.handle not in registry_name]
  if unpublished:
    raise ValueError(
        f"No published accuracies for model(s) {', '.join(unpublished)}: the published table "
        "has the VTAB hub models only (handles "
        f"{', '.join(sorted(registry_name))}). Use ground_truth='finetune' for other models.")
  untabled = [t for t in tasks if t not in table]
  if untabled:
    raise ValueError(f"No published accuracies for task(s) {', '.join(untabled)}; published "
                     f"tasks: {', '.join(table)}")
  return {t: {e.name: table[t][registry_name[e.handle]] for e in model_entries} for t in tasks}
