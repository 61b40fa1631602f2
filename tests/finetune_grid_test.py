"""The fine-tuning grid: split across processes, killed and resumed, failures recorded."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import grid_driver
from model_search import finetune
from model_search import finetune_grid
from model_search import finetune_records
from model_search.data import pipeline
from model_search.models import hub

REPO = pathlib.Path(__file__).resolve().parents[1]
DRIVER = str(REPO / "tests" / "grid_driver.py")
MODELS, TASKS, REPEATS, LRS = ("net_a", "net_b"), ("mini_digits", "mini_count"), 2, (0.1, 0.01)


def _env(devices):
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
          "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def _runs(workdir):
  """Every run file and ground truth of a workdir, where-and-how-long fields left out."""
  out = {}
  for path in sorted((pathlib.Path(workdir) / "finetune").rglob("*.json")):
    data = json.loads(path.read_text())
    data.pop("execution", None)
    out[str(path.relative_to(workdir))] = data
  return out


def _done_events(workdir):
  events = []
  for path in sorted((pathlib.Path(workdir) / "finetune" / "events").glob("*.jsonl")):
    events += [e for e in finetune_records.read_jsonl(path) if e["event"] == "done"]
  return events


def test_share_gives_every_item_to_exactly_one_process():
  items = finetune_grid.grid(MODELS, TASKS, REPEATS, LRS)
  assert len(items) == len(set(items)) == 16
  assert items[0] == finetune_grid.Item("net_a", "mini_digits", 0, 0.1)
  for count in (1, 2, 3, 5):
    shares = [finetune_grid.share(items, i, count) for i in range(count)]
    assert sorted(sum(shares, []), key=items.index) == items
  with pytest.raises(ValueError, match="not in 0..1"):
    finetune_grid.share(items, 2, 2)


def test_two_processes_run_every_item_exactly_once(tmp_path):
  """jax.distributed over localhost (CPU collectives): the grid split, gathered by process 0."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen(
      [sys.executable, DRIVER, f"--workdir={tmp_path}", f"--process_id={i}",
       "--num_processes=2", f"--port={port}"], env=_env(2), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
    assert f"grid_driver: done {i}" in out
  items = finetune_grid.grid(MODELS, TASKS, REPEATS, LRS)
  done = _done_events(tmp_path)
  assert sorted(e["item"] for e in done) == sorted(i.name for i in items)  # Exactly once each.
  for pid in (0, 1):
    assert {e["item"] for e in done if e["process_index"] == pid} == {
        i.name for i in finetune_grid.share(items, pid, 2)}
  table = pd.read_csv(tmp_path / "finetune" / "table.csv")
  assert sorted(zip(table.model, table.task)) == sorted((m, t) for m in MODELS for t in TASKS)
  assert (table.runs == REPEATS * len(LRS)).all() and (table.failed_runs == 0).all()
  assert table.test_accuracy.between(0, 1).all()
  for m in MODELS:
    for t in TASKS:
      gt = json.loads((tmp_path / "finetune" / m / f"{t}.json").read_text())
      assert [len(r["runs"]) for r in gt["repeats"]] == [len(LRS)] * REPEATS
  # Each process logged its own runs' metrics.
  for pid in (0, 1):
    metrics = finetune_records.read_jsonl(tmp_path / "finetune" / "metrics" / f"process_{pid}.jsonl")
    assert {m["item"] for m in metrics} == {i.name for i in finetune_grid.share(items, pid, 2)}
  assert not list((tmp_path / "checkpoints").rglob("*.json"))  # Deleted when a run ends.


def test_killed_run_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path, monkeypatch):
  reference = tmp_path / "reference"
  monkeypatch.setattr(finetune_grid, "_load_splits",
                      lambda study, entry, model, task, raw: grid_driver.fake_splits(task.name))
  finetune_grid.run_stage(grid_driver.make_study(reference))

  workdir = tmp_path / "killed"
  cmd = [sys.executable, DRIVER, f"--workdir={workdir}"]
  proc = subprocess.Popen(cmd + ["--sleep_per_step=0.1"], env=_env(4),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
      if list((workdir / "checkpoints").glob("*/*/*/*/4")):  # A checkpoint after step 4.
        break
      time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  runs_before = list((workdir / "finetune").rglob("runs/*.json"))
  assert len(runs_before) < 16
  out = subprocess.run(cmd, env=_env(4), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  resumed = [json.loads(p.read_text())["execution"]["resumed_from_step"]
             for p in (workdir / "finetune").rglob("runs/*.json")]
  assert max(resumed) >= 4  # At least one run continued from its checkpoint...
  assert _runs(workdir) == _runs(reference)  # ...and every metric equals the uninterrupted run.


def _nan_model():
  def apply(params, x):
    return x.reshape(x.shape[0], -1)[:, :4] * params["w"]
  return hub.from_flax(apply, {"w": jnp.full((4,), jnp.nan)}, name="net_nan", input_size=8)


def test_failures_are_recorded_with_their_reason_and_the_grid_goes_on(tmp_path, monkeypatch):
  hub.register("test:net_nan", _nan_model)
  fake = {t: grid_driver.fake_splits(t) for t in TASKS}

  def load_split(task, split, data_dir=None):
    if task.name == "mini_count":
      raise FileNotFoundError(f"no prepared data for {task.tfds_name} in {data_dir}")
    x, y = fake[task.name][split]
    return (x * 255).astype(np.uint8), y

  monkeypatch.setattr(pipeline, "load_split", load_split)
  monkeypatch.setattr(pipeline, "to_model_input",
                      lambda images, image_size, value_range: images.astype(np.float32) / 255)
  train = finetune.Finetuner.train

  def oom_for_net_a_at_lr_001(self, learning_rate, *args, **kwargs):
    if self.model.name == "net_a" and learning_rate == 0.01:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB")
    return train(self, learning_rate, *args, **kwargs)

  monkeypatch.setattr(finetune.Finetuner, "train", oom_for_net_a_at_lr_001)
  study = grid_driver.make_study(tmp_path, models=("net_a", "net_nan"))
  finetune_grid.run_stage(study)

  def run(model, task, r, lr):
    return json.loads(finetune_grid.run_path(
        tmp_path, finetune_grid.Item(model, task, r, lr)).read_text())

  assert run("net_a", "mini_digits", 0, 0.01)["failure"].startswith("out of memory: ")
  assert run("net_nan", "mini_digits", 1, 0.1)["failure"].startswith("non-finite loss: ")
  assert "at step 0" in run("net_nan", "mini_digits", 1, 0.1)["failure"]
  missing = run("net_a", "mini_count", 0, 0.1)["failure"]
  assert missing.startswith("dataset unavailable: mini_count") and "FileNotFoundError" in missing
  # The grid went on: net_a on mini_digits has ground truth from its lr-0.1 runs.
  gt = json.loads((tmp_path / "finetune" / "net_a" / "mini_digits.json").read_text())
  assert gt["learning_rate"] == 0.1 and 0 <= gt["test_accuracy"] <= 1
  assert all(r["runs"][1]["failure"].startswith("out of memory") for r in gt["repeats"])
  for m, t in (("net_nan", "mini_digits"), ("net_a", "mini_count"), ("net_nan", "mini_count")):
    assert not (tmp_path / "finetune" / m / f"{t}.json").exists()  # Missing, never zero.
    assert json.loads((tmp_path / "failures" / "finetune" / m / f"{t}.json").read_text())[
        "failure"]
  table = pd.read_csv(tmp_path / "finetune" / "table.csv").set_index(["model", "task"])
  assert table.loc[("net_a", "mini_digits"), "failed_runs"] == 2
  assert np.isnan(table.loc[("net_nan", "mini_digits"), "test_accuracy"])
  # A rerun skips recorded failures; retry_failed runs them again.
  before = {p: os.stat(p).st_mtime_ns for p in (tmp_path / "finetune").rglob("runs/*.json")}
  finetune_grid.run_stage(study)
  assert {p: os.stat(p).st_mtime_ns for p in before} == before
  with study.config.unlocked():
    study.config.finetune.retry_failed = True
  finetune_grid.run_stage(study)
  assert run("net_a", "mini_digits", 0, 0.1)["failure"] is None
  retried = tmp_path / "finetune" / "net_a" / "mini_digits" / "runs" / "r0_lr0.01.json"
  assert os.stat(retried).st_mtime_ns != before[retried]


def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path):
  model = hub.from_flax(lambda p, x: x.reshape(x.shape[0], -1) @ p["w"],
                        {"w": jnp.ones((192, 4)) * 0.01}, name="lin", input_size=8)
  tuner = finetune.Finetuner(model, head_classes=3, momentum=0.9, steps=4, decay_at=(),
                             warmup_steps=0, eval_batch_size=8)
  state = tuner.init_state()
  old = finetune_records.Checkpointer(tmp_path / "ckpt", fingerprint="config-a")
  old.save(2, state, np.array([1.0, 0.5], np.float32))
  step, restored, losses = old.restore(tuner.abstract_state())
  assert step == 2 and losses.tolist() == [1.0, 0.5]
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  old.close()
  new = finetune_records.Checkpointer(tmp_path / "ckpt", fingerprint="config-b")
  assert new.restore(tuner.abstract_state()) is None
  assert new.latest_step() is None  # Deleted, not kept around.
