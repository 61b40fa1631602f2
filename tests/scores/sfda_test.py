"""Tests for SFDA against a float64 NumPy version of the published algorithm."""

import math

import numpy as np
import pytest
from scipy import linalg
from scipy import special

from model_search import scores
from model_search.scores import sfda
import score_data


def _data(seed=0, n=120, d=20, c=4, scale=1.0, sep=1.0, unbalanced=False,
          dead=0, offset=0.0):
  """Gaussian classes with decaying, rotated variances; optional dead units."""
  rng = np.random.default_rng(seed)
  # Class c has weight proportional to 0.6^c when unbalanced.
  y = score_data.class_labels(rng, n, c, 0.6**np.arange(c) if unbalanced else None)
  spectrum = np.geomspace(1.0, 0.03, d)
  x = (sep * rng.normal(size=(c, d))[y] + rng.normal(size=(n, d))) * spectrum
  x = x @ np.linalg.qr(rng.normal(size=(d, d)))[0]
  if dead:  # ReLU-like features: some units never fire.
    x = np.maximum(x + 0.3 * scale, 0.0)
    x[:, :dead] = 0.0
  return (scale * x + offset).astype(np.float32), y


def _numpy_fit(x, y, k, shrinkage=None, dim=None):
  """One regularised Fisher discriminant, as the paper describes it.

  `dim` is the D of mu = tr(S_w) / D (default: x's own).

  Returns (p(c | x) [N, K], the shrinkage, class means [K, D]).
  """
  n, d = x.shape
  dim = dim or d
  priors = np.bincount(y, minlength=k) / n
  means = np.stack([x[y == c].mean(axis=0) for c in range(k)])
  s_w = sum(priors[c] * np.cov(x[y == c].T, bias=True).reshape(d, d)
            for c in range(k))
  if shrinkage is None:
    # Largest eigenvalue of S_w by 3 power-iteration double steps from S_w 1.
    v = s_w.sum(axis=1)
    for _ in range(3):
      u = s_w @ v / np.linalg.norm(s_w @ v)
      v = s_w @ u / np.linalg.norm(s_w @ u)
    shrinkage = max(math.exp(-5.0 * (v @ s_w @ u)), 1e-10)
  shrink = lambda s: (1 - shrinkage) * s + shrinkage * np.trace(s) / dim * np.eye(d)
  a = shrink(s_w)
  s_b = shrink(np.cov(x.T, bias=True).reshape(d, d)) - a
  # The Fisher space: generalised eigenvectors, V^T A V = I.
  _, vecs = linalg.eigh(s_b, a)
  proj = vecs @ vecs.T
  logits = (x @ proj @ means.T - 0.5 * np.sum(means @ proj * means, axis=1) +
            np.log(priors))
  return special.softmax(logits, axis=1), shrinkage, means


def _numpy_sfda(f, y, *, statistic="prob", shrinkage=None):
  """SFDA (Shao et al. 2022) in float64: fit, ConfMix, fit again.

  Returns (score, shrinkage, first-pass score).
  """
  x = f.astype(np.float64)
  d = x.shape[1]
  # Constant columns (dead units) are dropped, keeping mu = tr(S_w) / D: A is
  # lambda mu I there and they add the same to every class's logit. Exact, and
  # it spares the literal D x D eigensolver a singular S_w (condition number
  # ~1 / lambda = 1e10, which costs it ~1e-6 relative).
  x = x[:, ~np.all(x == x[0], axis=0)]
  _, y = np.unique(y, return_inverse=True)
  k, n = y.max() + 1, len(y)
  p, shrinkage, means = _numpy_fit(x, y, k, shrinkage, d)
  q = special.softmax(p, axis=1)[np.arange(n), y][:, None]
  outer = (means.sum(axis=0) - means) / (k - 1)
  mixed = q * x + (1 - q) * outer[y]
  p2, _, _ = _numpy_fit(mixed, y, k, shrinkage, d)
  stat = np.log if statistic == "log_prob" else (lambda v: v)
  return (np.mean(stat(p2[np.arange(n), y])), shrinkage,
          np.mean(stat(p[np.arange(n), y])))


CASES = [
    # n, d, c, scale, unbalanced, dead units.
    (120, 20, 4, 0.3, False, 0),  # N > D, moderate shrinkage.
    (120, 20, 4, 3.0, True, 0),  # Shrinkage at its floor 1e-10.
    (120, 20, 4, 4.0, True, 4),  # Floor, dead units: S_w singular.
    (40, 60, 3, 0.05, True, 0),  # N < D, strong shrinkage.
    (40, 60, 3, 1.0, False, 0),  # N < D, small shrinkage: near-separable.
    (60, 60, 5, 0.5, True, 0),  # N = D.
]


@pytest.mark.parametrize("n,d,c,scale,unbalanced,dead", CASES)
def test_matches_numpy_reference(n, d, c, scale, unbalanced, dead):
  x, y = _data(seed=n + d + c, n=n, d=d, c=c, scale=scale, sep=0.5,
               unbalanced=unbalanced, dead=dead, offset=2.0)
  expected, shrinkage, first = _numpy_sfda(x, y)
  got = sfda.sfda_details(x, y)
  assert got["score"] == pytest.approx(expected, rel=1e-7)
  assert got["first_pass"] == pytest.approx(first, rel=1e-7)
  assert got["shrinkage"] == pytest.approx(shrinkage, rel=1e-7)
  assert 0 < got["score"] <= 1
  log_expected = _numpy_sfda(x, y, statistic="log_prob")[0]
  assert sfda.sfda(x, y, statistic="log_prob") == pytest.approx(
      log_expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n,d,c,scale,unbalanced,dead", [CASES[0], CASES[3]])
def test_float32_matches_when_well_conditioned(n, d, c, scale, unbalanced,
                                               dead):
  x, y = _data(seed=n + d + c, n=n, d=d, c=c, scale=scale, sep=0.5,
               unbalanced=unbalanced, dead=dead, offset=2.0)
  expected = _numpy_sfda(x, y)[0]
  assert sfda.sfda(x, y, dtype="float32") == pytest.approx(expected, rel=1e-4)


def test_hand_worked_1d():
  # x = 0, 2 (class 0) and 4, 6 (class 1). In 1-D the shrinkage target mu I
  # equals S_w, so A = S_w = 1 (pooled variance) whatever the shrinkage, and
  # log p(1 | x) / p(0 | x) = x (m1 - m0) - (m1^2 - m0^2) / 2 = 4 x - 12.
  x = np.array([[0.0], [2.0], [4.0], [6.0]])
  y = np.array([0, 0, 1, 1])
  sigmoid = lambda t: 1 / (1 + np.exp(-t))
  p = sigmoid(np.array([12.0, 4.0, 4.0, 12.0]))  # p(y_i | x_i).
  assert sfda.sfda_details(x, y)["first_pass"] == pytest.approx(
      p.mean(), rel=1e-12)
  # Softened: q = e^p / (e^p + e^(1 - p)). Class 0 mixes towards the other
  # mean 5, class 1 towards 1; the problem stays symmetric about x = 3.
  q = sigmoid(2 * p - 1)
  mixed = q * x[:, 0] + (1 - q) * np.array([5.0, 5.0, 1.0, 1.0])
  m0, m1 = mixed[:2].mean(), mixed[2:].mean()
  var = np.mean((mixed - np.array([m0, m0, m1, m1]))**2)
  margin = (mixed * (m1 - m0) - (m1**2 - m0**2) / 2) / var
  p2 = sigmoid(np.where(y == 1, margin, -margin))
  assert sfda.sfda(x, y) == pytest.approx(p2.mean(), rel=1e-12)
  assert sfda.sfda(x, y, statistic="log_prob") == pytest.approx(
      np.log(p2).mean(), rel=1e-12)


def test_degenerate_when_n_minus_c_below_d():
  # 30 examples, 100 dimensions, features of unit scale: the shrinkage sits at
  # its floor and the discriminant separates any labels, even random ones.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 100)).astype(np.float32)
  y = np.arange(30) % 3
  details = sfda.sfda_details(x, y)
  assert details["shrinkage"] == 1e-10
  assert details["score"] == pytest.approx(1.0, abs=1e-6)
  # Shrunk to a small scale, lambda is large and the score drops.
  assert sfda.sfda(0.01 * x, y) < 0.9


def test_invariances():
  x, y = _data(seed=5, scale=0.5, sep=0.5, unbalanced=True)
  base = sfda.sfda_details(x, y)
  # Relabelling the classes, reordering the examples, shifting the features.
  perm = np.array([2, 0, 3, 1])
  assert sfda.sfda(x, perm[y]) == pytest.approx(base["score"], rel=1e-10)
  rows = np.random.default_rng(1).permutation(len(y))
  assert sfda.sfda(x[rows], y[rows]) == pytest.approx(base["score"], rel=1e-10)
  assert sfda.sfda(x + 7.0, y) == pytest.approx(base["score"], rel=1e-6)
  # Absent labels are dropped: classes are those present, in order.
  assert sfda.sfda(x, 3 * y + 1) == pytest.approx(base["score"], rel=1e-10)
  # With a fixed shrinkage: rotations and a global scale change nothing ...
  fixed = dict(shrinkage=0.05)
  ref = sfda.sfda(x, y, **fixed)
  rot = np.linalg.qr(np.random.default_rng(2).normal(size=(20, 20)))[0]
  assert sfda.sfda(x @ rot, y, **fixed) == pytest.approx(ref, rel=1e-8)
  assert sfda.sfda(10 * x, y, **fixed) == pytest.approx(ref, rel=1e-8)
  # ... while the adaptive shrinkage depends on the scale.
  assert abs(sfda.sfda(10 * x, y) - base["score"]) > 1e-3


def test_class_with_one_example():
  x, y = _data(seed=6, scale=0.5, c=3)
  y[y == 2] = 1
  y[2] = 2  # Class 2 has exactly one example (its covariance is 0).
  assert np.sum(y == 2) == 1
  expected = _numpy_sfda(x, y)[0]
  got = sfda.sfda(x, y)
  assert math.isfinite(got)
  assert got == pytest.approx(expected, rel=1e-7)


def test_power_iteration_fallback_when_row_sums_vanish():
  # Two exactly anti-correlated features: S_w = v [[1, -1], [-1, 1]], so the
  # reference's start vector S_w 1 is 0 (it gives NaN). The fallback starts
  # from the first column, an eigenvector with eigenvalue 2 v.
  rng = np.random.default_rng(7)
  t = rng.normal(size=40)
  y = np.arange(40) % 2
  x = np.stack([t, -t], axis=1) + 3.0 * y[:, None]
  details = sfda.sfda_details(x, y)
  assert math.isfinite(details["score"])
  v = np.average([np.var(t[y == c]) for c in (0, 1)], weights=np.bincount(y))
  assert details["top_eigenvalue"] == pytest.approx(2 * v, rel=1e-9)


def test_degenerate_inputs_raise():
  x, y = _data(seed=8, n=30, d=5, c=3)
  with pytest.raises(ValueError, match="at least 2 classes"):
    sfda.sfda(x, np.zeros(30, int))
  with pytest.raises(ValueError, match="constant within every class"):
    sfda.sfda(np.ones_like(x), y)
  with pytest.raises(ValueError, match="constant within every class"):
    sfda.sfda(np.eye(3)[y], y)  # Perfectly separated but no spread.
  with pytest.raises(ValueError, match=r"outside 0\.\.1"):
    sfda.sfda(x, y, num_classes=2)
  with pytest.raises(ValueError, match=">= 0"):
    sfda.sfda(x, y - 1)
  with pytest.raises(ValueError, match="NaN or inf"):
    sfda.sfda(np.where(np.arange(5) == 2, np.nan, x), y)
  with pytest.raises(ValueError, match="must be"):
    sfda.sfda(x[:, :, None], y)
  with pytest.raises(ValueError, match="log_prob, prob"):
    sfda.sfda(x, y, statistic="mean")
  with pytest.raises(ValueError, match="float32, float64"):
    sfda.sfda(x, y, dtype="bfloat16")
  with pytest.raises(ValueError, match=r"shrinkage must be in \(0, 1\]"):
    sfda.sfda(x, y, shrinkage=0.0)
  with pytest.raises(ValueError, match="power_iterations"):
    sfda.sfda(x, y, power_iterations=0)


def test_score_plugin():
  x, y = _data(seed=9, scale=0.5)
  xv, yv = _data(seed=10, n=40, scale=0.5)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=4)
  result = scores.compute({"sfda": {}, "sfda_log": {
      "type": "sfda", "statistic": "log_prob"}}, inputs)
  assert set(result["sfda"]) == {"score", "first_pass", "shrinkage",
                                 "top_eigenvalue"}
  assert result["sfda"]["score"] == sfda.sfda(x, y)
  assert result["sfda_log"]["score"] == sfda.sfda(x, y, statistic="log_prob")
