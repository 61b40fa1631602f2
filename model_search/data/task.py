"""The Task record shared by VTAB-1k and the offline mini suite."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

GROUPS = ("natural", "specialized", "structured")
SPLIT_NAMES = ("train800", "val200", "train800val200", "test")


@dataclasses.dataclass(frozen=True)
class Task:
  """A downstream classification task read through TFDS.

  Attributes:
    name: short task name (e.g. 'caltech101', 'mini_digits').
    tfds_name: the TFDS builder string, with config and version where needed.
    num_classes: number of labels; labels are ints in 0..num_classes-1.
    group: one of 'natural', 'specialized', 'structured'.
    splits: maps each of SPLIT_NAMES (and optionally more) to a TFDS split string.
    preprocess: maps one TFDS example (a dict of tf tensors, as tfds.load yields
      it) to {'image': uint8 [H, W, 3], 'label': int64}; usable inside
      tf.data.Dataset.map.
    image_size: the (height, width) of the stored images when fixed, else None.
    split_sizes: split name -> the number of examples the task's definition
      expects there (checked against a prepared dataset); may be partial.
    prepare_hint: how to prepare the TFDS dataset, for error messages.
  """
  name: str
  tfds_name: str
  num_classes: int
  group: str
  splits: Mapping[str, str]
  preprocess: Callable[[Mapping[str, Any]], Mapping[str, Any]]
  image_size: tuple[int, int] | None = None
  split_sizes: Mapping[str, int] = dataclasses.field(default_factory=dict)
  prepare_hint: str = ""

  def __post_init__(self):
    if self.group not in GROUPS:
      raise ValueError(f"Task {self.name!r}: unknown group {self.group!r}; "
                       f"valid groups: {', '.join(GROUPS)}")
    missing = [s for s in SPLIT_NAMES if s not in self.splits]
    if missing:
      raise ValueError(f"Task {self.name!r} lacks splits {missing}; "
                       f"every task defines {', '.join(SPLIT_NAMES)}")

  def split(self, split_name: str) -> str:
    """Returns the TFDS split string for one of this task's split names."""
    try:
      return self.splits[split_name]
    except KeyError:
      raise ValueError(
          f"Unknown split {split_name!r} for task {self.name!r}; "
          f"valid splits: {', '.join(sorted(self.splits))}") from None


def lookup(tasks: Mapping[str, Task], name: str, suite: str) -> Task:
  """`tasks[name]`, or an error naming the suite's tasks."""
  try:
    return tasks[name]
  except KeyError:
    raise ValueError(f"Unknown task {name!r}; known {suite} tasks: "
                     f"{', '.join(sorted(tasks))}") from None


def names(tasks: Mapping[str, Task], group: str | None = None) -> list[str]:
  """The names of `tasks` in order, optionally only those of one group."""
  if group is None:
    return list(tasks)
  if group not in GROUPS:
    raise ValueError(f"Unknown group {group!r}; valid groups: {', '.join(GROUPS)}")
  return [name for name, t in tasks.items() if t.group == group]


def select(tasks: Mapping[str, Task], spec: str | None, suite: str) -> list[str]:
  """Task names from 'all' (or empty), a group, or names joined by '+' (validated)."""
  if not spec or spec == "all":
    return names(tasks)
  if spec in GROUPS:
    return names(tasks, spec)
  chosen = spec.split("+")
  for name in chosen:
    lookup(tasks, name, suite)
  return chosen
