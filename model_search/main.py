"""Runs a model_search study: `python -m model_search.main --config=configs/mini.py --workdir=DIR`."""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from jax.experimental import multihost_utils
from ml_collections import config_flags
import tensorflow as tf

from model_search import stages
from model_search import study as study_lib
from model_search import workdir as wd

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:ARG]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where results are written (local or gs://).")
flags.mark_flags_as_required(["config", "workdir"])


def run(config, workdir: str) -> None:
  """Validates the config, then runs its stages in order."""
  stages.validate(config.stages)
  study = study_lib.from_config(config, workdir)
  wd.ensure_writable(study.workdir)
  if jax.process_index() == 0:
    wd.write_text(study.workdir / "config.json", config.to_json_best_effort(indent=1))
  for name in config.stages:
    start = time.perf_counter()
    logging.info("stage %s: start", name)
    stages.STAGES[name](study)
    if jax.process_count() > 1:  # A stage reads what every process wrote in the one before.
      multihost_utils.sync_global_devices(f"model_search_stage_{name}")
    logging.info("stage %s: done in %.1fs", name, time.perf_counter() - start)


def initialize_distributed(config) -> None:
  """jax.distributed.initialize() when config.distributed.initialize is set.

  Empty / negative fields are left to JAX, which detects them on TPU pods and under SLURM.
  """
  dist = config.get("distributed")
  if not dist or not dist.get("initialize"):
    return
  kwargs = {}
  if dist.get("coordinator_address"):
    kwargs["coordinator_address"] = dist.coordinator_address
  if dist.get("num_processes", -1) >= 0:
    kwargs["num_processes"] = dist.num_processes
  if dist.get("process_id", -1) >= 0:
    kwargs["process_id"] = dist.process_id
  # Collectives between CPU processes (the barriers between stages, CPU-only clusters).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  tf.config.set_visible_devices([], "GPU")  # TensorFlow reads data only; JAX owns the devices.
  initialize_distributed(_CONFIG.value)
  logging.info("JAX %s: %d process(es), devices %s", jax.__version__, jax.process_count(),
               jax.devices())
  logging.info("Config:\n%s", _CONFIG.value)
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
