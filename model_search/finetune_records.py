"""What a fine-tuning run writes while it trains, besides its result (`finetune_grid`).

  orbax checkpoints of its TrainState and losses    `Checkpointer`
  per-process JSONL events and metrics               `jsonl`, `read_jsonl`
  TensorBoard scalars                                `TensorBoard`
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from model_search import finetune
from model_search import workdir as wd

# ----------------------------------------------------------------------------
# Logs: JSONL per process (appended; one line per event, flushed), TensorBoard per run.


class Jsonl:
  """A JSONL log, appended one flushed line per record."""

  def __init__(self, path: epath.Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    self._path = path

  def write(self, **record) -> None:
    line = json.dumps({"time": time.time(), **record}, allow_nan=True) + "\n"
    with open(os.fspath(self._path), "a") as f:  # Local workdirs; gs:// goes through epath.
      f.write(line)
      f.flush()


class _JsonlGcs(Jsonl):
  """Object stores cannot append: the whole file is rewritten (small: one line per event)."""

  def __init__(self, path: epath.Path):
    super().__init__(path)
    self._lines: list[str] = []

  def write(self, **record) -> None:
    self._lines.append(json.dumps({"time": time.time(), **record}, allow_nan=True))
    wd.write_text(self._path, "\n".join(self._lines) + "\n")


def jsonl(path: epath.Path) -> Jsonl:
  """A JSONL log at path (rewritten whole on object stores, which cannot append)."""
  return _JsonlGcs(path) if "://" in os.fspath(path) else Jsonl(path)


def read_jsonl(path) -> list[dict[str, Any]]:
  """The records of a JSONL log ([] when it does not exist)."""
  path = epath.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class TensorBoard:
  """TensorBoard scalars of one run (tf.summary; TensorFlow is already a dependency)."""

  def __init__(self, logdir: epath.Path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self._writer = tf.summary.create_file_writer(os.fspath(logdir))

  def scalars(self, step: int, **values: float) -> None:
    with self._writer.as_default():
      for name, value in values.items():
        self._tf.summary.scalar(name, value, step=step)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


# ----------------------------------------------------------------------------
# Checkpoints.


class Checkpointer:
  """orbax checkpoints of one run: the TrainState and the losses so far, every N steps.

  Each process checkpoints its own runs on its own devices, so the manager is told that only
  this process takes part (no barriers with the others), and the state is saved as host
  arrays: orbax refuses to write process-local jax.Arrays in a multi-process job.
  """

  def __init__(self, directory: epath.Path, fingerprint: str = ""):
    self.fingerprint = fingerprint
    directory = epath.Path(directory)
    pid = jax.process_index()
    directory.mkdir(parents=True, exist_ok=True)  # orbax will not with active_processes set.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=False, enable_async_checkpointing=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=pid, active_processes={pid}))
    self.directory = directory
    self._manager = ocp.CheckpointManager(os.fspath(directory), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: finetune.TrainState, losses: np.ndarray) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(jax.device_get(state)),
        meta=ocp.args.JsonSave({"step": int(step), "losses": [float(v) for v in losses],
                                "fingerprint": self.fingerprint})))
    self._manager.wait_until_finished()

  def restore(self, abstract_state: finetune.TrainState):
    """(step, state, losses) of the latest checkpoint, or None when there is none.

    A checkpoint of another run (another config or model version: its fingerprint differs)
    is deleted, and the run starts afresh.
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    if meta["meta"].get("fingerprint") != self.fingerprint:
      logging.warning("Discarding the checkpoint in %s: made by another config or model "
                      "version.", self.directory)
      self.delete()
      self.__init__(self.directory, self.fingerprint)
      return None
    target = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_state)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
    state = jax.device_put(finetune.TrainState(*out["state"]), shardings)
    return step, state, np.asarray(out["meta"]["losses"], np.float32)

  def delete(self) -> None:
    self._manager.close()
    if self.directory.exists():
      self.directory.rmtree()

  def close(self) -> None:
    self._manager.close()
