"""Tests for the mean silhouette coefficient against sklearn and a NumPy loop."""

import numpy as np
import pytest
from sklearn import metrics

from model_search import scores
from model_search.scores import msc
import score_data


def _data(seed=0, n=150, d=8, c=4, spread=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  y = score_data.class_labels(rng, n, c, np.arange(1, c + 1))  # Unbalanced.
  x = 2.0 * rng.normal(size=(c, d))[y] + spread * rng.normal(size=(n, d))
  return (x + offset).astype(np.float32), y


def _numpy_silhouette(x, y):
  """Rousseeuw's definition, one example at a time, float64."""
  x = x.astype(np.float64)
  dist = np.sqrt(((x[:, None, :] - x[None, :, :])**2).sum(-1))
  classes = np.unique(y)
  s = np.zeros(len(y))
  for i in range(len(y)):
    own = y == y[i]
    if own.sum() == 1:
      continue  # s(i) = 0 for a singleton.
    a = dist[i, own].sum() / (own.sum() - 1)
    b = min(dist[i, y == c].mean() for c in classes if c != y[i])
    if max(a, b) > 0:
      s[i] = (b - a) / max(a, b)
  return s.mean()


@pytest.mark.parametrize("n,d,c", [(30, 3, 2), (150, 8, 4), (200, 40, 9),
                                   (90, 200, 3)])
def test_matches_sklearn_and_numpy(n, d, c):
  x, y = _data(seed=n + d + c, n=n, d=d, c=c)
  expected = metrics.silhouette_score(x.astype(np.float64), y)
  assert _numpy_silhouette(x, y) == pytest.approx(expected, abs=1e-12)
  assert msc.msc(x, y) == pytest.approx(expected, abs=2e-6)


@pytest.mark.parametrize("block_size", [1, 7, 64, 5000])
def test_block_size_does_not_change_the_answer(block_size):
  x, y = _data(seed=1, n=100)
  expected = metrics.silhouette_score(x.astype(np.float64), y)
  assert msc.msc(x, y, block_size=block_size) == pytest.approx(expected,
                                                               abs=2e-6)


def test_far_from_origin():
  # Centring first keeps the ||a||^2 - 2ab + ||b||^2 expansion accurate.
  x, y = _data(seed=2, n=80, spread=0.5, offset=1e3)
  expected = metrics.silhouette_score(x.astype(np.float64), y)
  assert msc.msc(x, y) == pytest.approx(expected, abs=1e-4)


def test_hand_worked_1d():
  # Class 0 = {0, 1}, class 1 = {4, 6}.
  # x=0: a = 1, b = (4 + 6) / 2 = 5, s = 4/5.  x=1: a = 1, b = 4, s = 3/4.
  # x=4: a = 2, b = (4 + 3) / 2 = 3.5, s = 1.5/3.5.  x=6: a = 2, b = 5.5,
  # s = 3.5/5.5.
  x = np.array([[0.0], [1.0], [4.0], [6.0]], np.float32)
  y = np.array([0, 0, 1, 1])
  expected = (4 / 5 + 3 / 4 + 1.5 / 3.5 + 3.5 / 5.5) / 4
  assert msc.msc(x, y) == pytest.approx(expected, rel=1e-6)
  # Swapping one point into the other class makes it negative for that point.
  y2 = np.array([0, 1, 1, 1])  # 0 alone: s = 0; 1 is nearer to 0 than 4, 6.
  assert msc.msc(x, y2) == pytest.approx(
      metrics.silhouette_score(x.astype(np.float64), y2), abs=1e-6)


def test_invariances():
  x, y = _data(seed=3)
  base = msc.msc(x, y)
  perm = np.random.default_rng(0).permutation(4)
  assert msc.msc(x, perm[y]) == pytest.approx(base, abs=1e-6)
  rows = np.random.default_rng(1).permutation(len(y))
  assert msc.msc(x[rows], y[rows]) == pytest.approx(base, abs=1e-6)
  # Euclidean distances: invariant to scale, shift and rotation.
  q = np.linalg.qr(np.random.default_rng(2).normal(size=(8, 8)))[0]
  assert msc.msc(5.0 * x + 3.0, y) == pytest.approx(base, abs=1e-5)
  assert msc.msc((x @ q).astype(np.float32), y) == pytest.approx(base,
                                                                 abs=1e-5)
  # Scaling one dimension is not an isometry: the value changes.
  stretched = x * np.array([100.0] + [1.0] * 7, np.float32)
  assert abs(msc.msc(stretched, y) - base) > 1e-3


def test_degenerate_inputs():
  x, y = _data(seed=5, n=40, d=4, c=3)
  # Constant features: all distances zero, s(i) = 0 (as sklearn).
  const = np.full_like(x, 2.0)
  assert msc.msc(const, y) == 0.0
  assert metrics.silhouette_score(const.astype(np.float64), y) == 0.0
  # A singleton class: s = 0 there, as sklearn.
  y1 = np.where(y == 2, 1, y)
  y1[0] = 2
  assert msc.msc(x, y1) == pytest.approx(
      metrics.silhouette_score(x.astype(np.float64), y1), abs=2e-6)
  with pytest.raises(ValueError, match="2..N-1"):
    msc.msc(x, np.zeros(40, int))
  with pytest.raises(ValueError, match="2..N-1"):
    msc.msc(x[:3], np.array([0, 1, 2]))
  with pytest.raises(ValueError, match=r"0\.\.C-1"):
    msc.msc(x, np.where(y == 1, -1, y))
  with pytest.raises(ValueError, match="must be integers"):
    msc.msc(x, y.astype(float))
  with pytest.raises(ValueError, match="shape"):
    msc.msc(x, y[:10])
  with pytest.raises(ValueError, match="NaN or inf"):
    msc.msc(np.where(x > 1, np.nan, x), y)
  with pytest.raises(ValueError, match="block_size must be"):
    msc.msc(x, y, block_size=0)


def test_score_plugin():
  x, y = _data(seed=6)
  xv, yv = _data(seed=7, n=20)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=4)
  result = scores.compute({"msc": {"block_size": 32}}, inputs)["msc"]
  assert set(result) == {"score"}
  assert result["score"] == pytest.approx(msc.msc(x, y), abs=1e-6)
