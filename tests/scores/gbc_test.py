"""Tests for GBC against a float64 NumPy reference, closed forms and invariances."""

import numpy as np
import pytest

from model_search import scores
from model_search.scores import gbc
import score_data


def _data(seed=0, n=150, d=12, c=4, spread=1.0):
  rng = np.random.default_rng(seed)
  y = score_data.class_labels(rng, n, c, np.arange(1, c + 1))  # Unbalanced.
  # Per-dimension scales spread out the PCA spectrum, so the top components
  # are well defined.
  scales = np.geomspace(3.0, 0.3, d)
  x = (rng.normal(size=(c, d))[y] + spread * rng.normal(size=(n, d))) * scales
  return x.astype(np.float32), y


def _numpy_gbc(x, y, pca_dim=None, gaussian_type="diagonal", floor=1e-4):
  """Reference from the paper's formulas, float64, one class pair at a time."""
  z = x.astype(np.float64)
  if pca_dim is not None:
    z = z - z.mean(axis=0)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    z = u[:, :pca_dim] * s[:pca_dim]
  classes = np.unique(y)
  stats = []
  for c in classes:
    zc = z[y == c]
    var = np.maximum(zc.var(axis=0), floor)
    if gaussian_type == "spherical":
      var = np.full(z.shape[1], var.mean())
    stats.append((zc.mean(axis=0), var))
  total = 0.0
  for i, (mi, vi) in enumerate(stats):
    for j, (mj, vj) in enumerate(stats):
      if i == j:
        continue
      v = (vi + vj) / 2
      # Diagonal covariances: the determinants are products of variances.
      d_b = (np.sum((mi - mj)**2 / v) / 8 +
             0.5 * (np.sum(np.log(v)) - 0.5 * np.sum(np.log(vi)) -
                    0.5 * np.sum(np.log(vj))))
      total += np.exp(-d_b)
  return -total


@pytest.mark.parametrize("n,d,c,pca_dim", [(60, 5, 2, None), (150, 12, 4, 6),
                                           (200, 30, 7, 64), (40, 100, 3, 8)])
@pytest.mark.parametrize("gaussian_type", ["diagonal", "spherical"])
def test_matches_numpy_reference(n, d, c, pca_dim, gaussian_type):
  x, y = _data(seed=n + d + c, n=n, d=d, c=c, spread=2.0)
  k = None if pca_dim is None else min(pca_dim, n, d)
  expected = _numpy_gbc(x, y, k, gaussian_type)
  got = gbc.gbc(x, y, pca_dim=pca_dim, gaussian_type=gaussian_type)
  assert -c * (c - 1) <= got <= 0
  assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("n,d", [(50, 20), (20, 50)])  # Both Gram forms.
def test_pca_project_matches_numpy_svd(n, d):
  x, _ = _data(seed=n, n=n, d=d)
  x64 = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
  u, s, _ = np.linalg.svd(x64, full_matrices=False)
  expected = u[:, :5] * s[:5]
  got = np.asarray(gbc.pca_project(x, 5))
  assert got.shape == (n, 5)
  # Components are defined up to sign.
  signs = np.sign(np.sum(got * expected, axis=0))
  np.testing.assert_allclose(got * signs, expected, rtol=0,
                             atol=1e-4 * np.abs(expected).max())


def test_hand_worked_1d():
  # Class 0 = {0, 2}: mean 1, variance 1. Class 1 = {4, 6}: mean 5, var 1.
  # D_B = (5 - 1)^2 / (8 * 1) = 2, both orders: GBC = -2 exp(-2).
  x = np.array([[0.0], [2.0], [4.0], [6.0]], np.float32)
  y = np.array([0, 0, 1, 1])
  assert gbc.gbc(x, y, pca_dim=None) == pytest.approx(-2 * np.exp(-2), rel=1e-6)
  # Class 1 = {3, 7}: var 4, average variance 2.5:
  # D_B = 16 / (8 * 2.5) + 1/2 log(2.5 / sqrt(1 * 4)) = 0.8 + 1/2 log(1.25).
  x2 = np.array([[0.0], [2.0], [3.0], [7.0]], np.float32)
  d_b = 0.8 + 0.5 * np.log(1.25)
  assert gbc.gbc(x2, y, pca_dim=None) == pytest.approx(-2 * np.exp(-d_b),
                                                       rel=1e-6)
  # In 1-D, PCA only centres (and maybe flips the sign): same value.
  assert gbc.gbc(x2, y, pca_dim=1) == pytest.approx(-2 * np.exp(-d_b), rel=1e-5)
  # Spherical with k = 2 dimensions: variances (1, 4) and (4, 1) average to
  # 2.5 each, so the log-determinant term is 0 and D_B = |dmu|^2 / 20.
  x3 = np.array([[0, 0], [2, 4], [10, 10], [14, 12]], np.float32)
  dmu2 = 11.0**2 + 9.0**2
  assert gbc.gbc(x3, y, pca_dim=None, gaussian_type="spherical") == (
      pytest.approx(-2 * np.exp(-dmu2 / 20), rel=1e-5))


def test_bounds_overlapping_and_separated():
  rng = np.random.default_rng(0)
  y = np.repeat(np.arange(5), 100)
  # Identical class distributions: D_B near 0, GBC near -C (C - 1) = -20.
  same = rng.normal(size=(500, 8)).astype(np.float32)
  assert -20 < gbc.gbc(same, y) < -20 * 0.8
  # Far apart classes: GBC near 0.
  far = (100.0 * np.eye(8)[y] + 0.01 * rng.normal(size=(500, 8)))
  assert gbc.gbc(far.astype(np.float32), y) == pytest.approx(0.0, abs=1e-6)


def test_invariances():
  x, y = _data(seed=3, spread=2.0)
  base = gbc.gbc(x, y)
  perm = np.random.default_rng(0).permutation(4)
  assert gbc.gbc(x, perm[y]) == pytest.approx(base, rel=1e-5)
  rows = np.random.default_rng(1).permutation(len(y))
  assert gbc.gbc(x[rows], y[rows]) == pytest.approx(base, rel=1e-4)
  # Scale and shift invariant (while variances stay above the floor).
  assert gbc.gbc(10.0 * x + 5.0, y) == pytest.approx(base, rel=1e-4)
  # With PCA of all components, a rotation only changes component signs.
  q = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 12)))[0]
  xq = (x @ q).astype(np.float32)
  assert gbc.gbc(xq, y) == pytest.approx(base, rel=1e-4)
  # Diagonal Gaussians without PCA are not rotation invariant.
  raw = gbc.gbc(x, y, pca_dim=None)
  assert abs(gbc.gbc(xq, y, pca_dim=None) - raw) > 1e-3 * abs(raw)


def test_degenerate_inputs():
  x, y = _data(seed=5, n=40, d=6, c=3)
  # Constant features: every pair overlaps fully, GBC = -C (C - 1).
  assert gbc.gbc(np.full_like(x, 3.0), y) == pytest.approx(-6.0, rel=1e-6)
  # A one-example class gets the variance floor and matches the reference.
  y1 = np.where(y == 2, 1, y)
  y1[0] = 2
  assert gbc.gbc(x, y1, pca_dim=None) == pytest.approx(
      _numpy_gbc(x, y1), rel=1e-4, abs=1e-6)
  with pytest.raises(ValueError, match="at least 2 classes"):
    gbc.gbc(x, np.ones(40, int))
  with pytest.raises(ValueError, match=r"0\.\.C-1"):
    gbc.gbc(x, np.where(y == 0, -3, y))
  with pytest.raises(ValueError, match="must be integers"):
    gbc.gbc(x, y.astype(np.float32))
  with pytest.raises(ValueError, match="shape"):
    gbc.gbc(x[:, 0], y)
  with pytest.raises(ValueError, match="NaN or inf"):
    gbc.gbc(np.where(x > 1, np.inf, x), y)
  with pytest.raises(ValueError, match="diagonal, spherical"):
    gbc.gbc(x, y, gaussian_type="full")
  with pytest.raises(ValueError, match="pca_dim must be"):
    gbc.gbc(x, y, pca_dim=0)
  with pytest.raises(ValueError, match="min_variance must be"):
    gbc.gbc(x, y, min_variance=0.0)


def test_score_plugin():
  x, y = _data(seed=6)
  xv, yv = _data(seed=7, n=20)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=4)
  result = scores.compute({"gbc": {"pca_dim": 8}}, inputs)["gbc"]
  assert set(result) == {"score", "max_pair_coefficient", "log_overlap"}
  assert result["score"] == pytest.approx(gbc.gbc(x, y, pca_dim=8), rel=1e-6)
  assert 0.0 <= result["max_pair_coefficient"] <= 1.0
  assert result["log_overlap"] == pytest.approx(np.log(-result["score"]),
                                                rel=1e-5)


def test_log_overlap_orders_underflowed_scores():
  # Classes so far apart that every exp(-D_B) underflows in float32: GBC is
  # 0.0 for both models, log_overlap still says which separates more.
  y = np.repeat([0, 1], 20)
  noise = np.random.default_rng(0).normal(size=(40, 3))
  near = (30.0 * y[:, None] + noise).astype(np.float32)
  far = (60.0 * y[:, None] + noise).astype(np.float32)
  results = []
  for x in (near, far):
    inputs = scores.ScoreInputs(x, y, x, y, num_classes=2)
    results.append(gbc.score(inputs, pca_dim=None))
  assert results[0]["score"] == results[1]["score"] == 0.0
  assert not np.signbit(results[0]["score"])  # 0.0, not -0.0.
  assert results[1]["log_overlap"] < results[0]["log_overlap"] < -103
  # D_B ~ 3 * 30^2 / 8: exp(-D_B) is still a normal float64.
  assert results[0]["log_overlap"] == pytest.approx(
      np.log(-_numpy_gbc(near, y)), rel=1e-4)
