"""Tests for TransRate against a float64 d x d NumPy reference and closed forms."""

import numpy as np
import pytest

from model_search import scores
from model_search.scores import transrate
import score_data


def _data(seed=0, n=120, d=16, c=4, spread=1.0):
  rng = np.random.default_rng(seed)
  # Unbalanced classes: class c has weight proportional to c + 1.
  y = score_data.class_labels(rng, n, c, np.arange(1, c + 1))
  x = 2.0 * rng.normal(size=(c, d))[y] + spread * rng.normal(size=(n, d))
  return x.astype(np.float32), y


def _numpy_transrate(x, y, eps=1e-4, class_weights="uniform"):
  """Reference in the paper's d x d form, float64: R(Z) - weighted R(Z_c)."""
  z = x.astype(np.float64)
  z = z - z.mean(axis=0)
  n, d = z.shape

  def rate(block):
    m = block.shape[0]
    return 0.5 * np.linalg.slogdet(np.eye(d) + block.T @ block / (m * eps))[1]

  classes = np.unique(y)
  class_rates = np.array([rate(z[y == c]) for c in classes])
  counts = np.array([np.sum(y == c) for c in classes])
  if class_weights == "uniform":
    class_rate = class_rates.mean()
  else:
    class_rate = np.sum(class_rates * counts) / n
  return rate(z) - class_rate, rate(z), class_rate


@pytest.mark.parametrize("n,d,c", [(40, 8, 2), (120, 16, 4), (60, 150, 5),
                                   (300, 12, 9)])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_matches_numpy_reference(n, d, c, method):
  x, y = _data(seed=n + d + c, n=n, d=d, c=c)
  # The float32 Gram matrix rounds its small eigenvalues: ~1e-5 relative
  # error in the rates, against ~1e-7 from the singular values.
  tol = 1e-4 if method == "gram" else 2e-6
  for class_weights in ("uniform", "proportional"):
    expected, rate, class_rate = _numpy_transrate(x, y,
                                                  class_weights=class_weights)
    got_rate, got_class_rate = transrate.transrate_parts(
        x, y, class_weights=class_weights, method=method)
    assert got_rate == pytest.approx(rate, rel=tol)
    assert got_class_rate == pytest.approx(class_rate, rel=tol)
    got = transrate.transrate(x, y, class_weights=class_weights,
                              method=method)
    # The difference of two rates of similar size: an absolute tolerance too.
    assert got == pytest.approx(expected, rel=5 * tol, abs=5 * tol * rate)


def test_failed_cholesky_falls_back_to_svd():
  # Top feature variance / eps ~ 1e10: I + a K is not numerically positive
  # definite in float32, so the Gram Cholesky of the class blocks fails.
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(60, 32)) * np.geomspace(1e3, 1e-3, 32)).astype(
      np.float32)
  y = np.repeat([0, 1, 2], 20)
  z, _ = transrate._center(x)
  idx = np.arange(60).reshape(3, 20)
  counts = np.full(3, 20)
  assert np.all(np.isnan(transrate._block_rates(z, idx, counts, 1e-4,
                                                method="gram")))
  got = transrate.transrate(x, y)
  assert np.isfinite(got)
  assert got == transrate.transrate(x, y, method="svd")
  expected, rate, _ = _numpy_transrate(x, y)
  assert got == pytest.approx(expected, rel=1e-4, abs=1e-5 * rate)


@pytest.mark.parametrize("eps", [1e-4, 1e-2, 1.0])
def test_eps_and_classes_of_many_sizes(eps):
  # Class sizes 1..40 fall in many padded blocks (several SVD batches).
  rng = np.random.default_rng(1)
  sizes = [1, 2, 3, 5, 8, 16, 17, 23, 33, 40]
  y = np.repeat(np.arange(len(sizes)), sizes)
  x = (rng.normal(size=(len(sizes), 24))[y] +
       rng.normal(size=(len(y), 24))).astype(np.float32)
  expected = _numpy_transrate(x, y, eps=eps)[0]
  assert transrate.transrate(x, y, eps) == pytest.approx(expected, rel=1e-5)


def test_hand_worked_case():
  # d=2, class 0 = {(a, 0), (-a, 0)}, class 1 = {(0, b), (0, -b)}, mean 0.
  # Z^T Z = diag(2a^2, 2b^2), n = 4:
  #   R(Z) = 1/2 [log(1 + a^2 / (2 eps)) + log(1 + b^2 / (2 eps))];
  #   R(Z_0) = 1/2 log(1 + a^2 / eps), R(Z_1) = 1/2 log(1 + b^2 / eps).
  a, b, eps = 1.0, 3.0, 0.5
  x = np.array([[a, 0], [-a, 0], [0, b], [0, -b]], np.float32)
  y = np.array([0, 0, 1, 1])
  rate = 0.5 * (np.log1p(a**2 / (2 * eps)) + np.log1p(b**2 / (2 * eps)))
  r0, r1 = 0.5 * np.log1p(a**2 / eps), 0.5 * np.log1p(b**2 / eps)
  assert transrate.transrate(x, y, eps) == pytest.approx(
      rate - (r0 + r1) / 2, rel=1e-6)
  # Proportional weights are equal here (2 examples each).
  assert transrate.transrate(x, y, eps, class_weights="proportional") == (
      pytest.approx(rate - (r0 + r1) / 2, rel=1e-6))
  # a = b = 1, eps = 1: log(1.5) - 1/2 log(2).
  x1 = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)
  assert transrate.transrate(x1, y, 1.0) == pytest.approx(
      np.log(1.5) - 0.5 * np.log(2.0), rel=1e-6)


def test_invariances():
  x, y = _data(seed=3)
  base = transrate.transrate(x, y)
  # Label permutation and example order.
  perm = np.random.default_rng(0).permutation(4)
  assert transrate.transrate(x, perm[y]) == pytest.approx(base, rel=1e-5)
  rows = np.random.default_rng(1).permutation(len(y))
  assert transrate.transrate(x[rows], y[rows]) == pytest.approx(base, rel=1e-5)
  # A shift (features are centred) and a rotation (only singular values count).
  q = np.linalg.qr(np.random.default_rng(2).normal(size=(16, 16)))[0]
  assert transrate.transrate(x + 100.0, y) == pytest.approx(base, rel=1e-4)
  assert transrate.transrate((x @ q).astype(np.float32), y) == pytest.approx(
      base, rel=1e-5)
  # Not scale invariant: scaling features by s equals dividing eps by s^2.
  scaled = transrate.transrate(10.0 * x, y)
  assert abs(scaled - base) > 1.0
  assert scaled == pytest.approx(transrate.transrate(x, y, 1e-6), rel=1e-5)


def test_more_label_information_scores_higher():
  x, y = _data(seed=4, spread=0.3)
  shuffled = np.random.default_rng(0).permutation(y)
  assert transrate.transrate(x, y) > transrate.transrate(x, shuffled) + 1.0


def test_degenerate_inputs():
  x, y = _data(seed=5, n=30, d=5, c=3)
  # Constant features: every coding rate is 0 (documented value).
  const = np.full_like(x, 7.0)
  assert transrate.transrate(const, y) == pytest.approx(0.0, abs=1e-6)
  # A class with a single example is fine and matches the reference.
  y1 = y.copy()
  y1[:] = np.where(y1 == 2, 1, y1)
  y1[0] = 2
  assert transrate.transrate(x, y1) == pytest.approx(
      _numpy_transrate(x, y1)[0], rel=1e-5)
  with pytest.raises(ValueError, match="at least 2 classes"):
    transrate.transrate(x, np.zeros(30, int))
  with pytest.raises(ValueError, match=r"0\.\.C-1"):
    transrate.transrate(x, np.where(y == 0, -1, y))
  with pytest.raises(ValueError, match="must be integers"):
    transrate.transrate(x, y.astype(float))
  with pytest.raises(ValueError, match="shape"):
    transrate.transrate(x, y[:-1])
  with pytest.raises(ValueError, match="NaN or inf"):
    transrate.transrate(np.where(x > 1, np.nan, x), y)
  with pytest.raises(ValueError, match="eps must be a positive"):
    transrate.transrate(x, y, 0.0)
  with pytest.raises(ValueError, match="proportional, uniform"):
    transrate.transrate(x, y, class_weights="balanced")
  with pytest.raises(ValueError, match="gram, svd"):
    transrate.transrate(x, y, method="eigh")


def test_score_plugin():
  x, y = _data(seed=6)
  xv, yv = _data(seed=7, n=20)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=4)
  result = scores.compute({"transrate": {}}, inputs)["transrate"]
  assert set(result) == {"score", "rate", "class_rate"}
  assert result["score"] == pytest.approx(transrate.transrate(x, y), rel=1e-6)
  assert result["score"] == pytest.approx(
      result["rate"] - result["class_rate"], rel=1e-6)
  assert scores.get("transrate").score(inputs, eps=1e-2)["score"] == (
      pytest.approx(transrate.transrate(x, y, 1e-2), rel=1e-6))
