"""Tests for PARC against scipy's Spearman rho on NumPy dissimilarity matrices."""

import math

import jax
import numpy as np
import pytest
import scipy.stats
from sklearn import decomposition
from sklearn import preprocessing

from model_search import scores
from model_search.scores import parc
import score_data


def _data(seed=0, n=120, d=40, c=4, noise=2.0, unbalanced=False):
  rng = np.random.default_rng(seed)
  # Class c has weight proportional to 0.6^c when unbalanced.
  y = score_data.class_labels(rng, n, c, 0.6**np.arange(c) if unbalanced else None)
  # Decaying feature scales and an offset, as real features have.
  x = (rng.normal(size=(c, d))[y] + noise * rng.normal(size=(n, d)))
  x = x * np.geomspace(1.0, 0.05, d) + 3.0
  return x.astype(np.float32), y


def _numpy_parc(f, y, num_components=32):
  """Bolya et al. eq. 3 in float64, with sklearn and scipy.

  PCA (exact) with u-based signs, StandardScaler, D = 1 - corrcoef of rows,
  Spearman's rho of the upper triangles, times 100. The label dissimilarity
  1 - corrcoef(one-hot) is 0 within a class and C / (C - 1) across; it is
  written exactly (corrcoef's round-off would break its ties).
  """
  f = f.astype(np.float64)
  if num_components is not None:
    k = min(num_components, *f.shape)
    f = decomposition.PCA(k, svd_solver="full").fit_transform(f)
    top = np.argmax(np.abs(f), axis=0)
    f = f * np.sign(f[top, np.arange(k)])
  f = preprocessing.StandardScaler().fit_transform(f)
  rdm_f = 1 - np.corrcoef(f)
  c = y.max() + 1
  rdm_y = (y[:, None] != y[None, :]) * c / (c - 1)
  upper = np.triu_indices(len(y), 1)
  return 100 * scipy.stats.spearmanr(rdm_f[upper], rdm_y[upper])[0]


@pytest.mark.parametrize("n,d,c,unbalanced,num_components", [
    (120, 40, 4, False, 32),  # N > D > f.
    (60, 200, 3, True, 32),  # N < D.
    (150, 16, 6, True, 32),  # D < f: all components.
    (25, 40, 3, False, 32),  # N < f: the last component has no variance.
    (100, 30, 5, True, 8),
    (90, 30, 3, False, None),  # No PCA: standardised raw features.
])
def test_matches_numpy_reference(n, d, c, unbalanced, num_components):
  x, y = _data(seed=n + d, n=n, d=d, c=c, unbalanced=unbalanced)
  expected = _numpy_parc(x, y, num_components)
  got = parc.parc(x, y, num_components=num_components)
  assert got == pytest.approx(expected, rel=1e-4)
  assert -100 <= got <= 100


def test_massive_activation_dimension():
  # One feature 100x the others: the later components have ~1e-4 of the top
  # variance but full weight after standardisation. Needs the SVD.
  x, y = _data(seed=3, n=150, d=60, c=5)
  x[:, 7] *= 100.0
  assert parc.parc(x, y) == pytest.approx(_numpy_parc(x, y), rel=1e-4)


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16])
def test_ranks_with_ties_match_scipy(chunk):
  # The rank machinery on its own, with many exact ties (small integers) and
  # a 0/1 label: scipy's average ranks and Pearson's r of them.
  rng = np.random.default_rng(1)
  values = rng.integers(0, 12, 500).astype(np.float32)
  label = rng.random(500) < 0.3
  order = np.argsort(values, kind="stable")
  pieces = jax.jit(parc._tie_pieces, static_argnames="chunk")(
      values[order], label[order], chunk=chunk)
  got = parc._rho(pieces, 500, int(label.sum()))
  assert got == pytest.approx(scipy.stats.spearmanr(values, label)[0],
                              rel=1e-12)
  # The hand-worked case: the 0s tied at the bottom, the 1s tied at the top:
  # rho = 1; 6 values (0, 0, 0, 1, 1, 1) against themselves.
  v = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], np.float32)
  assert parc._rho(parc._tie_pieces(v, v > 0, chunk), 6, 3) == 1.0


def test_hand_worked():
  # Perfect separation without ties: same-class pairs hold ranks 1..M0,
  # different-class ones M0+1..M, and rho = sqrt(3 M0 M1 / (M^2 - 1)) < 1.
  protos = np.array([[1.0, 0.0, 2.0, 0.5], [0.0, 1.0, -1.0, 3.0]])
  y = np.array([0, 0, 0, 1, 1, 1, 1])
  rng = np.random.default_rng(0)
  # Small noise: no ties, even at float32 resolution, but still separated.
  x = protos[y] + 0.05 * rng.normal(size=(7, 4))
  m0, m1 = 3 + 6, 12
  m = m0 + m1
  expected = 100 * math.sqrt(3 * m0 * m1 / (m * m - 1))
  assert parc.parc(x, y, num_components=None) == pytest.approx(expected,
                                                               rel=1e-6)
  assert _numpy_parc(x, y, None) == pytest.approx(expected, rel=1e-12)


def test_label_rounding_artefact_of_the_reference():
  # The reference's 1 - corrcoef(one-hot) has same-class entries 0 or ~1e-16
  # depending on the class; ranked apart, they change rho. PARC uses the exact
  # values; the artefact's size is why the reference's numbers differ.
  x, y = _data(seed=4, n=100, d=30, c=5)
  rdm = 1 - np.corrcoef(np.eye(5)[y])
  upper = np.triu_indices(100, 1)
  assert len(np.unique(rdm[upper][y[upper[0]] == y[upper[1]]])) > 1
  assert parc.parc(x, y) == pytest.approx(_numpy_parc(x, y), rel=1e-4)


def test_invariances():
  x, y = _data(seed=5, n=100, d=30, c=4, unbalanced=True)
  base = parc.parc(x, y)
  perm = np.array([3, 1, 0, 2])
  assert parc.parc(x, perm[y]) == base  # Only same / different class counts.
  assert parc.parc(x, 5 * y) == base
  rows = np.random.default_rng(1).permutation(len(y))
  assert parc.parc(x[rows], y[rows]) == pytest.approx(base, rel=1e-5)
  # Shift, global scale and rotation of the features.
  rot = np.linalg.qr(np.random.default_rng(2).normal(size=(30, 30)))[0]
  # (Float32 rounding of the transformed features costs ~1e-5.)
  for z in (x - 10.0, 1e3 * x, x @ rot.astype(np.float32)):
    assert parc.parc(z, y) == pytest.approx(base, rel=1e-4)
  # Scaling single features changes the principal components ...
  scale = np.geomspace(0.2, 5.0, 30).astype(np.float32)
  assert abs(parc.parc(x * scale, y) - base) > 0.1
  # ... but not the standardised raw features.
  raw = parc.parc(x, y, num_components=None)
  assert parc.parc(x * scale, y, num_components=None) == pytest.approx(
      raw, rel=1e-5)


def test_informative_features_score_higher():
  x, y = _data(seed=6, n=120, d=40, c=4, noise=0.5)
  noise = np.random.default_rng(7).normal(size=x.shape).astype(np.float32)
  assert parc.parc(x, y) > 20
  assert abs(parc.parc(noise, y)) < 5


def test_class_with_one_example():
  x, y = _data(seed=8, n=60, d=20, c=3)
  y[y == 2] = 1
  y[0] = 2  # Class 2 has a single example: it is in different-class pairs.
  assert parc.parc(x, y) == pytest.approx(_numpy_parc(x, y), rel=1e-4)


def test_row_with_zero_spread_has_correlation_zero():
  # Integer features whose columns sum to exactly 0, and a zero row: that row
  # is exactly 0 after standardising, so its correlations are undefined (NaN
  # in np.corrcoef); PARC takes them as 0.
  rng = np.random.default_rng(12)
  rows = rng.integers(-5, 6, size=(39, 8)).astype(np.float32)
  x = np.concatenate([np.zeros((1, 8), np.float32), rows,
                      -rows.sum(axis=0, keepdims=True)])
  y = rng.integers(0, 3, 41)
  f = preprocessing.StandardScaler().fit_transform(x.astype(np.float64))
  with np.errstate(invalid="ignore", divide="ignore"):
    corr = np.corrcoef(f)
  assert np.isnan(corr[0, 1])
  rdm_f = 1 - np.nan_to_num(corr, nan=0.0)
  rdm_y = (y[:, None] != y[None, :]).astype(float)
  upper = np.triu_indices(41, 1)
  expected = 100 * scipy.stats.spearmanr(rdm_f[upper], rdm_y[upper])[0]
  got = parc.parc(x, y, num_components=None)
  assert got == pytest.approx(expected, rel=1e-4)


def test_degenerate_inputs_raise():
  x, y = _data(seed=9, n=30, d=6, c=3)
  with pytest.raises(ValueError, match="at least 2 classes"):
    parc.parc(x, np.zeros(30, int))
  with pytest.raises(ValueError, match="no same-class pairs"):
    parc.parc(x[:3], np.arange(3))
  with pytest.raises(ValueError, match="constant"):
    parc.parc(np.ones_like(x), y)
  with pytest.raises(ValueError, match="at least 2 dimensions"):
    parc.parc(x[:, :1], y)
  with pytest.raises(ValueError, match="same feature correlation"):
    # Two equal columns: every standardised row is constant.
    t = np.arange(30.0)[:, None] ** 2
    parc.parc(np.concatenate([t, t], axis=1), y, num_components=None)
  with pytest.raises(ValueError, match=r"outside 0\.\.1"):
    parc.parc(x, y, num_classes=2)
  with pytest.raises(ValueError, match=">= 0"):
    parc.parc(x, y - 1)
  with pytest.raises(ValueError, match="NaN or inf"):
    parc.parc(np.where(np.arange(6) == 3, np.inf, x), y)
  with pytest.raises(ValueError, match="num_components"):
    parc.parc(x, y, num_components=1)
  with pytest.raises(ValueError, match="must be"):
    parc.parc(x, y[:-1])


def test_score_plugin():
  x, y = _data(seed=10)
  xv, yv = _data(seed=11, n=30)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=4)
  result = scores.compute({"parc": {}, "parc_f8": {
      "type": "parc", "num_components": 8}}, inputs)
  assert result["parc"] == {"score": parc.parc(x, y)}
  assert result["parc_f8"]["score"] == parc.parc(x, y, num_components=8)
