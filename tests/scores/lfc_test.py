"""Tests for LFC against the N x N Pearson correlation in NumPy and hand-worked cases."""

import numpy as np
import pytest

from model_search import scores
from model_search.scores import lfc


def _numpy_lfc(features, labels):
  """The paper's formula on explicit N x N matrices, in float64."""
  f = np.asarray(features, np.float64)
  kernel = f @ f.T
  y = np.asarray(labels)
  sim = np.where(y[:, None] == y[None, :], 1.0, -1.0)
  return np.corrcoef(kernel.ravel(), sim.ravel())[0, 1]


def _random_data(seed, n, d, c, offset=0.0, probs=None):
  rng = np.random.default_rng(seed)
  y = rng.choice(c, size=n, p=probs)
  y[:c] = np.arange(c)  # Every class present.
  centers = rng.normal(size=(c, d))
  x = centers[y] + rng.normal(size=(n, d)) + offset
  return x.astype(np.float32), y


@pytest.mark.parametrize("n,d,c,offset,probs", [
    (20, 3, 2, 0.0, None),
    (64, 16, 4, 0.0, None),
    (100, 200, 10, 0.0, None),
    (150, 8, 3, 5.0, None),  # Far from the origin: K is mostly its mean.
    (120, 32, 3, 1.0, [0.8, 0.15, 0.05]),  # Unbalanced.
    (90, 5, 6, -2.0, [0.5, 0.3, 0.1, 0.05, 0.03, 0.02]),
])
def test_matches_numpy_reference(n, d, c, offset, probs):
  x, y = _random_data(n + d + c, n, d, c, offset, probs)
  expected = _numpy_lfc(x, y)
  assert lfc.lfc(x, y) == pytest.approx(expected, rel=2e-5, abs=1e-6)


def test_hand_worked_cases():
  # K = f f^T with f = [1, 1, -1, -1] is +1 within and -1 across {0,1}|{2,3}:
  # exactly Y, so the correlation is 1 ...
  f = np.array([[1.0], [1.0], [-1.0], [-1.0]])
  assert lfc.lfc(f, np.array([0, 0, 1, 1])) == pytest.approx(1.0, abs=1e-6)
  # ... and K = s s^T, Y = t t^T with s . t = 0 for labels 0,1,0,1: 0.
  assert lfc.lfc(f, np.array([0, 1, 0, 1])) == pytest.approx(0.0, abs=1e-6)
  # f = [1, 2, 3], labels [0, 0, 1]: sum K = 36, sum K*Y = 0, sum K^2 = 196,
  # sum Y = 1, so cov = 0 - 36 * 1 / 9 = -4, var K = 196 - 36^2 / 9 = 52,
  # var Y = 9 - 1 / 9 = 80 / 9 and rho = -4 / sqrt(52 * 80 / 9) = -3/sqrt(260).
  f = np.array([[1.0], [2.0], [3.0]])
  assert lfc.lfc(f, np.array([0, 0, 1])) == pytest.approx(
      -3 / np.sqrt(260), rel=1e-5)


def test_invariances():
  x, y = _random_data(1, 80, 12, 4, offset=0.5)
  base = lfc.lfc(x, y)
  rng = np.random.default_rng(0)
  perm = rng.permutation(4)
  assert lfc.lfc(x, perm[y]) == pytest.approx(base, abs=1e-6)
  rows = rng.permutation(80)
  assert lfc.lfc(x[rows], y[rows]) == pytest.approx(base, abs=1e-6)
  # Unused class ids change nothing.
  assert lfc.lfc(x, y + 3, num_classes=10) == pytest.approx(base, abs=1e-6)
  # K scales by s^2 under scaling and is unchanged by rotations.
  assert lfc.lfc(7.3 * x, y) == pytest.approx(base, abs=1e-6)
  assert lfc.lfc(1e-3 * x, y) == pytest.approx(base, abs=1e-6)
  rot, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  assert lfc.lfc(x @ rot, y) == pytest.approx(base, abs=1e-5)
  # Not a shift: the features enter raw, and a shift changes K non-uniformly.
  shifted = lfc.lfc(x + 3.0, y)
  assert abs(shifted - base) > 1e-2
  assert shifted == pytest.approx(_numpy_lfc(x + 3.0, y), rel=2e-5)


def test_better_separated_features_score_higher():
  rng = np.random.default_rng(2)
  y = np.repeat(np.arange(5), 20)
  centers = rng.normal(size=(5, 8))
  noise = rng.normal(size=(100, 8))
  values = [lfc.lfc(s * centers[y] + noise, y) for s in (0.0, 0.5, 2.0, 8.0)]
  assert values == sorted(values)
  assert abs(values[0]) < 0.1


def test_degenerate_inputs():
  x, y = _random_data(3, 30, 4, 3)
  with pytest.raises(ValueError, match="at least 2 classes"):
    lfc.lfc(x, np.zeros(30, int))
  # A class with a single example is fine: Y still varies.
  y1 = np.zeros(30, int)
  y1[7] = 1
  assert lfc.lfc(x, y1) == pytest.approx(_numpy_lfc(x, y1), rel=2e-5)
  # Constant features: K is constant, the correlation undefined.
  for const in (np.zeros((30, 4)), np.full((30, 4), 1000.0)):
    with pytest.raises(ValueError, match="same for every example"):
      lfc.lfc(const, y)
  with pytest.raises(ValueError, match=r"outside 0\.\.2"):
    lfc.lfc(x, np.where(y == 0, 3, y), num_classes=3)
  with pytest.raises(ValueError, match="outside"):
    lfc.lfc(x, y - 1)
  with pytest.raises(ValueError, match="integers"):
    lfc.lfc(x, y.astype(float))
  with pytest.raises(ValueError, match="labels must be"):
    lfc.lfc(x, y[:-1])
  with pytest.raises(ValueError, match="must be"):
    lfc.lfc(x[:, 0], y)
  with pytest.raises(ValueError, match="non-finite"):
    lfc.lfc(np.where(x > 1, np.inf, x), y)


def test_score_plugin():
  x, y = _random_data(4, 60, 6, 3)
  xv, yv = _random_data(5, 20, 6, 3)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=5)
  result = lfc.score(inputs)
  assert set(result) == {"score"}
  assert result["score"] == pytest.approx(_numpy_lfc(x, y), rel=2e-5)
  out = scores.compute({"lfc": {}}, inputs)
  assert out["lfc"]["score"] == result["score"]
