"""Tests for LogME against a float64 NumPy fixed point and the exact evidence."""

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats

from model_search import scores
from model_search.scores import logme
import score_data

_EPS = 1e-5


def _data(seed=0, n=60, d=20, c=4, noise=1.0, unbalanced=False):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d))
  # Class c has weight proportional to 2^-c when unbalanced.
  y = score_data.class_labels(rng, n, c, 0.5**np.arange(c) if unbalanced else None)
  x = centers[y] + noise * rng.normal(size=(n, d))
  return x.astype(np.float32), y


def _numpy_logme(f, y, *, max_iter=11, tol=1e-3, full_log_det=True):
  """The JMLR fixed point in float64, in weight space: m and residual explicit.

  Returns (mean evidence / N, per-class alpha, beta, number of updates).
  """
  f = f.astype(np.float64)
  n, d = f.shape
  _, s, vt = np.linalg.svd(f, full_matrices=True)
  sigma = np.zeros(d)  # All D eigenvalues of F^T F.
  sigma[:s.size] = s**2
  v = vt.T
  evidences, alphas, betas, iterations = [], [], [], []
  for c in np.unique(y):
    t_y = (y == c).astype(np.float64)
    fty = v.T @ (f.T @ t_y)
    alpha = beta = 1.0
    for it in range(1, max_iter + 1):
      t = alpha / beta
      # m = beta A^-1 F^T y, A = alpha I + beta F^T F.
      m = v @ (beta * fty / (alpha + beta * sigma))
      gamma = np.sum(beta * sigma / (alpha + beta * sigma))
      m2, res2 = m @ m, np.sum((f @ m - t_y)**2)
      alpha, beta = gamma / (m2 + _EPS), (n - gamma) / (res2 + _EPS)
      if abs(alpha / beta - t) / t <= tol:
        break
    terms = sigma if full_log_det else sigma[:min(n, d)]
    log_det = np.sum(np.log(alpha + beta * terms))
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2 -
                beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    evidences.append(evidence / n)
    alphas.append(alpha)
    betas.append(beta)
    iterations.append(it)
  return np.mean(evidences), np.array(alphas), np.array(betas), iterations


def _log_marginal(f, t_y, log_alpha, log_beta):
  """log N(y; 0, I / beta + F F^T / alpha): the evidence with w integrated out."""
  n = f.shape[0]
  cov = np.eye(n) / np.exp(log_beta) + f @ f.T / np.exp(log_alpha)
  return stats.multivariate_normal(np.zeros(n), cov).logpdf(t_y)


@pytest.mark.parametrize("n,d,c,unbalanced", [
    (60, 20, 4, False),  # N > D: covariance form.
    (40, 100, 5, False),  # N < D: Gram form.
    (48, 48, 3, True),  # N = D.
    (150, 30, 6, True),
    (30, 200, 2, True),
])
def test_matches_numpy_reference(n, d, c, unbalanced):
  x, y = _data(seed=n + d, n=n, d=d, c=c, unbalanced=unbalanced)
  expected, alphas, betas, iterations = _numpy_logme(x, y)
  out = logme.logme_per_class(x, y)
  assert logme.logme(x, y) == pytest.approx(expected, rel=1e-4)
  np.testing.assert_allclose(out["alpha"], alphas, rtol=1e-3)
  np.testing.assert_allclose(out["beta"], betas, rtol=1e-3)
  # The same stopping rule: the same number of updates per class.
  assert out["iterations"].tolist() == iterations
  # thuml/LogME's log |A| over min(N, D) eigenvalues only.
  reference, *_ = _numpy_logme(x, y, full_log_det=False)
  assert logme.logme(x, y, full_log_det=False) == pytest.approx(reference,
                                                                rel=1e-4)
  if n >= d:
    assert reference == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n,d", [(30, 5), (25, 60)])
def test_fixed_point_reaches_the_maximum_evidence(n, d):
  x, y = _data(seed=3, n=n, d=d, c=3, noise=0.5)
  # Float32 round-off keeps t from settling much below 1e-5.
  out = logme.logme_per_class(x, y, max_iter=200, tol=1e-5)
  assert out["converged"].all()
  f = x.astype(np.float64)
  for c in range(3):
    t_y = (y == c).astype(np.float64)
    alpha, beta = float(out["alpha"][c]), float(out["beta"][c])
    # MacKay's conditions hold at the returned (alpha, beta).
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ t_y)
    gamma = d - alpha * np.trace(np.linalg.inv(a))
    assert alpha == pytest.approx(gamma / (m @ m + _EPS), rel=1e-3)
    assert beta == pytest.approx((n - gamma) / (np.sum((f @ m - t_y)**2) +
                                                _EPS), rel=1e-3)
    # They are the stationarity conditions of the exact log marginal
    # likelihood minus (alpha + beta) eps / 2 (the eps of the updates acts as
    # an exponential prior): a direct maximisation finds the same point ...
    penalised = lambda p: -(_log_marginal(f, t_y, *p) - _EPS / 2 *
                            (np.exp(p[0]) + np.exp(p[1])))
    best = optimize.minimize(penalised, x0=[0.0, 0.0], method="Nelder-Mead",
                             options=dict(xatol=1e-7, fatol=1e-9, maxiter=4000))
    assert best.success
    np.testing.assert_allclose(best.x, np.log([alpha, beta]), atol=1e-3)
    # ... and the evidence is the marginal likelihood there.
    assert out["evidence"][c] == pytest.approx(
        _log_marginal(f, t_y, *best.x) / n, rel=1e-4)
  # The reference's 11 updates at tol 1e-3 land close to the converged value.
  assert logme.logme(x, y) == pytest.approx(np.mean(out["evidence"]),
                                            rel=1e-3)


def test_max_iter_and_tol_stop_the_iteration():
  x, y = _data(seed=4, n=40, d=10, c=3, noise=3.0)
  one = logme.logme_per_class(x, y, max_iter=1)
  assert (one["iterations"] == 1).all()
  assert logme.logme(x, y, max_iter=1) == pytest.approx(
      _numpy_logme(x, y, max_iter=1)[0], rel=1e-4)
  loose = logme.logme_per_class(x, y, tol=np.inf)  # Any change will do.
  assert (loose["iterations"] == 1).all() and loose["converged"].all()


def test_hand_worked_identity_features():
  # F = c I_N: y ~ N(0, v I) with v = 1/beta + c^2/alpha, maximised at
  # v = ||y||^2 / N = n_c / N, where log p(y) / N = -(log(2 pi n_c / N) + 1) / 2.
  # The fixed point reaches it in one update (t stays 1 for c = 1).
  y = np.array([0, 0, 0, 1, 1, 2])
  n = len(y)
  expected = np.mean([-(math.log(2 * math.pi * k / n) + 1) / 2
                      for k in (3, 2, 1)])
  eye = np.eye(n, dtype=np.float32)
  assert logme.logme(eye, y) == pytest.approx(expected, rel=1e-5)
  assert logme.logme(3.0 * eye, y) == pytest.approx(expected, rel=1e-5)
  # Zero columns leave the marginal likelihood, hence LogME, unchanged (now in
  # the Gram form, D > N) ...
  padded = np.concatenate([eye, np.zeros((n, 4), np.float32)], axis=1)
  assert logme.logme(padded, y) == pytest.approx(expected, rel=1e-5)
  # ... but not with thuml/LogME's log |A|, off by (D - N) / (2 N) log alpha.
  out = logme.logme_per_class(padded, y, full_log_det=False)
  assert np.mean(out["evidence"]) == pytest.approx(
      expected + 4 / (2 * n) * np.mean(np.log(out["alpha"])), rel=1e-5)


def test_invariances():
  x, y = _data(seed=5, n=50, d=12, c=4)
  base = logme.logme(x, y)
  perm = np.array([2, 0, 3, 1])
  assert logme.logme(x, perm[y]) == pytest.approx(base, rel=1e-6)
  rows = np.random.default_rng(0).permutation(len(y))
  assert logme.logme(x[rows], y[rows]) == pytest.approx(base, rel=1e-5)
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(12, 12)))
  assert logme.logme(x @ q.astype(np.float32), y) == pytest.approx(base,
                                                                   rel=1e-4)
  # A global scale is absorbed by alpha (up to the eps of the updates).
  assert logme.logme(10.0 * x, y) == pytest.approx(base, rel=1e-4)
  zeros = np.zeros((50, 30), np.float32)  # N < D now: the Gram form.
  assert logme.logme(np.concatenate([x, zeros], 1), y) == pytest.approx(
      base, rel=1e-4)
  # The prior is isotropic, so scaling single dimensions does change LogME.
  scale = np.geomspace(0.01, 100.0, 12).astype(np.float32)
  assert abs(logme.logme(x * scale, y) - base) > 1e-2


def test_separable_features_beat_random_ones():
  rng = np.random.default_rng(6)
  y = rng.integers(0, 5, 200)
  separable = np.eye(5)[y] + 0.05 * rng.normal(size=(200, 5))
  random = rng.normal(size=(200, 5))
  assert logme.logme(separable, y) > logme.logme(random, y) + 1.0
  # The same with many more dimensions than examples (the Gram form).
  embed = rng.normal(size=(5, 400))
  wide_sep = np.eye(5)[y] @ embed + 0.05 * rng.normal(size=(200, 400))
  wide_random = rng.normal(size=(200, 400))
  assert logme.logme(wide_sep, y) > logme.logme(wide_random, y) + 1.0


def test_degenerate_inputs():
  x, y = _data(seed=7, n=30, d=6, c=3)
  with pytest.raises(ValueError, match="at least 2 classes"):
    logme.logme(x, np.zeros(30, int))
  with pytest.raises(ValueError, match="all zero"):
    logme.logme(np.zeros_like(x), y)
  with pytest.raises(ValueError, match=r"outside 0\.\.2"):
    logme.logme(x, y + 1, num_classes=3)
  with pytest.raises(ValueError, match=">= 0"):
    logme.logme(x, y - 1)
  with pytest.raises(ValueError, match="integers"):
    logme.logme(x, y.astype(float))
  with pytest.raises(ValueError, match=r"\[N\]"):
    logme.logme(x, y[:-1])
  with pytest.raises(ValueError, match="NaN or inf"):
    logme.logme(np.where(x > 1, np.nan, x), y)
  with pytest.raises(ValueError, match="max_iter"):
    logme.logme(x, y, max_iter=0)
  with pytest.raises(ValueError, match="tol"):
    logme.logme(x, y, tol=0.0)
  # A class with a single example and constant (rank-one) features are fine.
  single = y.copy()
  single[0] = 3
  assert logme.logme(x, single) == pytest.approx(_numpy_logme(x, single)[0],
                                                 rel=1e-4)
  constant = np.full_like(x, 0.3)
  assert logme.logme(constant, y) == pytest.approx(
      _numpy_logme(constant, y)[0], rel=1e-4)
  # Absent classes are left out of the mean.
  assert logme.logme(x, y, num_classes=7) == pytest.approx(logme.logme(x, y),
                                                           rel=1e-6)
  with pytest.raises(ValueError, match="not finite"):
    logme.logme(x * 1e25, y)


def test_score_plugin():
  x, y = _data(seed=8, n=40, d=8, c=3)
  inputs = scores.ScoreInputs(x, y, x[:10], y[:10], num_classes=5)
  result = logme.score(inputs)
  assert set(result) == {"score", "iterations", "converged"}
  assert result["score"] == pytest.approx(logme.logme(x, y), rel=1e-6)
  assert 1 <= result["iterations"] <= 11 and 0 <= result["converged"] <= 1
  assert scores.get("logme") is logme
