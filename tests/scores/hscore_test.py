"""Tests for the H-score and the regularised (Ledoit-Wolf) H-score."""

import numpy as np
import pytest
from sklearn import covariance

from model_search import scores
from model_search.scores import hscore
from model_search.scores import regularized_hscore
import score_data


def _data(seed=0, n=80, d=10, c=4, noise=1.0, unbalanced=False):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d))
  # Class c has weight proportional to 2^-c when unbalanced.
  y = score_data.class_labels(rng, n, c, 0.5**np.arange(c) if unbalanced else None)
  # Uneven feature scales and a mean far from 0, as real features have.
  scale = np.geomspace(0.1, 3.0, d)
  x = (centers[y] + noise * rng.normal(size=(n, d))) * scale + 5.0
  return x.astype(np.float32), y


def _class_means(f, y):
  """[N, D]: each row replaced by the mean of its class, E[f | y]."""
  g = np.zeros_like(f)
  for c in np.unique(y):
    g[y == c] = f[y == c].mean(axis=0)
  return g


def _numpy_hscore(f, y):
  """Bao et al.'s H-score in float64: tr(cov(f)^+ cov(E[f | y]))."""
  f = f.astype(np.float64)
  cov_f = np.atleast_2d(np.cov(f, rowvar=False))
  cov_g = np.atleast_2d(np.cov(_class_means(f, y), rowvar=False))
  return np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ cov_g)


def _numpy_ledoit_wolf(f):
  """Ledoit & Wolf (2004) shrinkage towards mu I, from its definition.

  S = X^T X / N of the centred X, mu = tr(S) / D, and the shrinkage
  min(b^2, d^2) / d^2 with d^2 = ||S - mu I||_F^2 / D and
  b^2 = sum_k ||x_k x_k^T - S||_F^2 / (N^2 D).
  """
  x = f.astype(np.float64) - f.mean(axis=0)
  n, d = x.shape
  s = x.T @ x / n
  mu = np.trace(s) / d
  d2 = np.sum((s - mu * np.eye(d))**2) / d
  b2 = sum(np.sum((np.outer(row, row) - s)**2) for row in x) / (n**2 * d)
  shrinkage = 0.0 if d == 1 or d2 == 0 else min(b2, d2) / d2
  return (1 - shrinkage) * s + shrinkage * mu * np.eye(d), shrinkage


def _numpy_regularized_hscore(f, y):
  """Ibrahim et al.: tr(cov_a(f)^+ (1 - a) cov(E[f | y])), tllib's normalisation.

  cov_a is Ledoit-Wolf (biased S), cov(E[f | y]) is np.cov's (divides by N - 1).
  """
  f = f.astype(np.float64)
  f = f - f.mean(axis=0)
  cov_a, a = _numpy_ledoit_wolf(f)
  cov_g = np.atleast_2d(np.cov(_class_means(f, y), rowvar=False))
  return np.trace(np.linalg.pinv(cov_a, rcond=1e-15) @ ((1 - a) * cov_g))


CASES = [
    (80, 10, 4, False),  # N > D: covariance form.
    (200, 30, 7, True),
    (60, 60, 3, True),  # N = D.
    (40, 100, 5, False),  # N < D: Gram form.
    (30, 70, 2, True),
]


@pytest.mark.parametrize("n,d,c,unbalanced", CASES)
def test_hscore_matches_numpy(n, d, c, unbalanced):
  x, y = _data(seed=n + d, n=n, d=d, c=c, unbalanced=unbalanced)
  expected = _numpy_hscore(x, y)
  assert hscore.hscore(x, y) == pytest.approx(expected, rel=1e-4)
  if n - 1 <= d:  # The degenerate case: C - 1.
    assert expected == pytest.approx(c - 1, rel=1e-9)


@pytest.mark.parametrize("n,d,c,unbalanced", CASES)
def test_regularized_hscore_matches_numpy(n, d, c, unbalanced):
  x, y = _data(seed=n + d, n=n, d=d, c=c, unbalanced=unbalanced)
  expected = _numpy_regularized_hscore(x, y)
  got, shrinkage = regularized_hscore.regularized_hscore_and_shrinkage(x, y)
  assert got == pytest.approx(expected, rel=1e-4)
  assert shrinkage == pytest.approx(_numpy_ledoit_wolf(x)[1], rel=1e-4)


@pytest.mark.parametrize("n,d", [(80, 10), (30, 70), (500, 3), (50, 1)])
def test_ledoit_wolf_matches_sklearn(n, d):
  x, _ = _data(seed=d, n=n, d=d)
  cov, shrinkage = regularized_hscore.ledoit_wolf(x)
  expected_cov, expected = covariance.ledoit_wolf(x.astype(np.float64))
  assert shrinkage == pytest.approx(expected, rel=1e-4, abs=1e-7)
  np.testing.assert_allclose(cov, expected_cov, rtol=1e-4,
                             atol=1e-5 * np.abs(expected_cov).max())
  # And sklearn agrees with the definition the test's reference uses.
  assert _numpy_ledoit_wolf(x)[1] == pytest.approx(expected, rel=1e-6)
  # Nearly isotropic data, where ||S||^2 - D mu^2 would cancel.
  iso = np.random.default_rng(1).normal(size=(5000, 4)).astype(np.float32)
  assert regularized_hscore.ledoit_wolf(iso)[1] == pytest.approx(
      covariance.ledoit_wolf(iso.astype(np.float64))[1], rel=1e-3)


def test_hand_worked_1d():
  # x = [0, 2, 1, 3], classes {0, 2} and {1, 3}: class means 1 and 2, overall
  # 1.5. var(f) = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25 and
  # var(E[f | y]) = 0.25 (both biased), so H = 0.25 / 1.25 = 0.2.
  x = np.array([[0.0], [2.0], [1.0], [3.0]], np.float32)
  y = np.array([0, 0, 1, 1])
  assert hscore.hscore(x, y) == pytest.approx(0.2, rel=1e-6)
  # One feature: no shrinkage. tllib divides cov(E[f | y]) by N - 1 but the
  # Ledoit-Wolf covariance by N: H_a = (1 / 3) / 1.25 = 4/3 * 0.2.
  h, shrinkage = regularized_hscore.regularized_hscore_and_shrinkage(x, y)
  assert shrinkage == 0.0
  assert h == pytest.approx(4 / 15, rel=1e-6)
  # Features that are the one-hot labels explain everything: H = C - 1.
  labels = np.random.default_rng(0).integers(0, 4, 50)
  labels[:4] = np.arange(4)
  assert hscore.hscore(np.eye(4)[labels], labels) == pytest.approx(3.0,
                                                                   rel=1e-5)


def test_hscore_is_degenerate_when_n_minus_1_le_d():
  # VTAB-1k in small: 40 examples, 100 dimensions. Random features and
  # informative ones get the same H-score, C - 1 = 4 ...
  x, y = _data(seed=1, n=40, d=100, c=5, noise=0.1)
  rng = np.random.default_rng(2)
  random = rng.normal(size=(40, 100)).astype(np.float32)
  for features in (x, random):
    h, rank = hscore.hscore_and_rank(features, y)
    assert h == pytest.approx(4.0, rel=1e-4)
    assert rank == 39
  assert hscore.score(scores.ScoreInputs(random, y, random, y, 5))["rank"] == 39
  # ... while the regularised H-score tells them apart.
  assert (regularized_hscore.regularized_hscore(x, y) >
          regularized_hscore.regularized_hscore(random, y) + 1.0)
  # With enough examples the plain H-score ranks them too.
  x, y = _data(seed=3, n=400, d=20, c=5, noise=0.3)
  random = rng.normal(size=(400, 20)).astype(np.float32)
  assert hscore.hscore(x, y) > hscore.hscore(random, y) + 1.0


def test_invariances():
  x, y = _data(seed=4, n=120, d=8, c=4)
  h, reg = hscore.hscore(x, y), regularized_hscore.regularized_hscore(x, y)
  perm = np.array([3, 1, 0, 2])
  assert hscore.hscore(x, perm[y]) == pytest.approx(h, rel=1e-5)
  assert regularized_hscore.regularized_hscore(x, perm[y]) == pytest.approx(
      reg, rel=1e-5)
  rng = np.random.default_rng(5)
  # The H-score is invariant to any invertible affine map ...
  a = rng.normal(size=(8, 8)).astype(np.float32)
  assert hscore.hscore(x @ a - 3.0, y) == pytest.approx(h, rel=1e-3)
  # ... the regularised one to rotations, a global scale and shifts only.
  q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  moved = 7.0 * x @ q.astype(np.float32) + 2.0
  assert regularized_hscore.regularized_hscore(moved, y) == pytest.approx(
      reg, rel=1e-4)
  assert abs(regularized_hscore.regularized_hscore(x @ a, y) - reg) > 1e-2
  # Gram form (N < D): the same invariances.
  x, y = _data(seed=6, n=30, d=50, c=3)
  reg = regularized_hscore.regularized_hscore(x, y)
  q, _ = np.linalg.qr(rng.normal(size=(50, 50)))
  assert regularized_hscore.regularized_hscore(
      0.1 * x @ q.astype(np.float32), y) == pytest.approx(reg, rel=1e-4)
  assert regularized_hscore.regularized_hscore(x, (y + 1) % 3) == (
      pytest.approx(reg, rel=1e-5))


@pytest.mark.parametrize("fn", [hscore.hscore,
                                regularized_hscore.regularized_hscore])
def test_degenerate_inputs(fn):
  x, y = _data(seed=7, n=40, d=6, c=3)
  with pytest.raises(ValueError, match="at least 2 classes"):
    fn(x, np.full(40, 2))
  with pytest.raises(ValueError, match=r"outside 0\.\.2"):
    fn(x, y + 1, num_classes=3)
  with pytest.raises(ValueError, match=">= 0"):
    fn(x, y - 1)
  with pytest.raises(ValueError, match="integers"):
    fn(x, y.astype(np.float32))
  with pytest.raises(ValueError, match=r"\[N\]"):
    fn(x, y[:5])
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    fn(x[:, 0], y)
  with pytest.raises(ValueError, match="NaN or inf"):
    fn(np.where(x > 6, np.inf, x), y)
  with pytest.raises(ValueError, match="rtol"):
    fn(x, y, rtol=-1.0)
  # Constant features carry no information: 0, also where float32 centring
  # would leave round-off (0.1 is not a float32 number).
  assert fn(np.full_like(x, 0.1), y) == 0.0
  assert fn(np.zeros_like(x), y) == 0.0
  reference = (_numpy_hscore if fn is hscore.hscore else
               _numpy_regularized_hscore)
  # A constant column adds nothing to the H-score; in the regularised one it
  # lowers mu = tr(S) / D, so the shrinkage target changes.
  with_const = np.concatenate([x, np.full((40, 1), 0.1, np.float32)], axis=1)
  assert fn(with_const, y) == pytest.approx(reference(with_const, y), rel=1e-4)
  if fn is hscore.hscore:
    assert fn(with_const, y) == pytest.approx(fn(x, y), rel=1e-4)
  # A class with one example is fine; absent classes contribute nothing.
  single = y.copy()
  single[0] = 3
  assert fn(x, single) == pytest.approx(reference(x, single), rel=1e-4)
  assert fn(x, y, num_classes=9) == pytest.approx(fn(x, y), rel=1e-6)
  assert fn(x, 2 * y) == pytest.approx(fn(x, y), rel=1e-6)


def test_score_plugins():
  x, y = _data(seed=8, n=60, d=12, c=4)
  inputs = scores.ScoreInputs(x, y, x[:10], y[:10], num_classes=6)
  result = hscore.score(inputs)
  assert set(result) == {"score", "rank"}
  assert result["score"] == pytest.approx(hscore.hscore(x, y), rel=1e-6)
  assert result["rank"] == 12
  result = regularized_hscore.score(inputs)
  assert set(result) == {"score", "shrinkage"}
  h, shrinkage = regularized_hscore.regularized_hscore_and_shrinkage(x, y)
  assert result == pytest.approx({"score": h, "shrinkage": shrinkage})
  assert 0 < shrinkage < 1
  assert scores.get("regularized_hscore") is regularized_hscore
  assert {"hscore", "regularized_hscore"} <= set(scores.available())
