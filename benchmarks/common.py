"""Helpers shared by the benchmarks."""

from __future__ import annotations

import time

from etils import epath
import jax
import jax.numpy as jnp


def best_time(fn, repeats: int) -> float:
  """Best wall time of fn() over repeats."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def matmul_peak_flops() -> float:
  """Measured float32 matmul FLOP/s of the default device (8192^2 on GPU)."""
  n = 8192 if jax.default_backend() == "gpu" else 2048
  a = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  secs = best_time(lambda: f(a).block_until_ready(), 5)
  return 2 * n ** 3 / secs


def mini_zoo(cache_dir: str = ""):
  """The mini zoo's entries by name (built into the cache when absent) and the TFDS data dir.

  Args:
    cache_dir: the model_search cache; '' for the default (~/.cache/model_search).
  """
  from model_search import study as study_lib  # pylint: disable=g-import-not-at-top
  from model_search.models import mini_zoo as zoo  # pylint: disable=g-import-not-at-top
  cache = epath.Path(cache_dir).expanduser() if cache_dir else study_lib.default_cache_dir()
  data_dir = str(cache / "tfds")
  entries = zoo.build(zoo.get_zoo_config(), cache / "zoo", data_dir)
  return {e.name: e for e in entries}, data_dir
