"""Helpers shared by the benchmarks."""

from __future__ import annotations

import time

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
