"""Synthetic labels shared by the score tests (imported from tests/scores, on pytest's path)."""

import numpy as np


def class_labels(rng: np.random.Generator, n: int, c: int, weights=None) -> np.ndarray:
  """[n] int labels in 0..c-1 with every class present (the first c are 0..c-1).

  Class k is drawn with probability proportional to weights[k]; weights=None draws uniformly
  with rng.integers.
  """
  if weights is None:
    y = rng.integers(0, c, n)
  else:
    w = np.asarray(weights, np.float64)
    y = rng.choice(c, size=n, p=w / w.sum())
  y[:c] = np.arange(c)
  return y
