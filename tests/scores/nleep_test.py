"""Tests for NLEEP: sklearn PCA + GMM then a NumPy LEEP, closed forms, invariances."""

import numpy as np
import pytest
from scipy import stats
from sklearn import decomposition
from sklearn import mixture
import threadpoolctl

from model_search import scores
from model_search.scores import leep
from model_search.scores import nleep


@pytest.fixture(autouse=True)
def _one_thread():
  # These fits are tiny: BLAS / OpenMP threads only add synchronisation, which
  # on a busy 2-core machine made the file 5x slower.
  with threadpoolctl.threadpool_limits(1):
    yield


def _blobs(seed=0, n=200, d=12, c=4, spread=1.0, balanced=True):
  rng = np.random.default_rng(seed)
  prior = np.ones(c) / c if balanced else rng.dirichlet(np.ones(c))
  y = rng.choice(c, size=n, p=prior)
  centers = rng.normal(size=(c, d)) * 2.0
  x = centers[y] + spread * rng.normal(size=(n, d))
  return x.astype(np.float32), y


def _numpy_leep(probs, y):
  """Nguyen et al. eq. (1)-(2) in float64 (as in leep_test)."""
  probs = np.asarray(probs, np.float64)
  joint = np.zeros((y.max() + 1, probs.shape[1]))
  np.add.at(joint, y, probs / len(y))
  p_z = joint.sum(axis=0)
  cond = np.divide(joint, p_z, out=np.zeros_like(joint), where=p_z > 0)
  return np.mean(np.log(np.sum(probs * cond[y], axis=1)))


def _sklearn_posteriors(x, k, *, variance=0.8, covariance_type="full", seed=0):
  """The documented pipeline written out: centre, scale, PCA, GMM posteriors."""
  x = np.asarray(x, np.float64)
  x = x - x.mean(axis=0)
  x = x / np.sqrt(np.mean(x**2))
  reduced = decomposition.PCA(variance, svd_solver="full").fit_transform(x)
  gmm = mixture.GaussianMixture(k, covariance_type=covariance_type,
                                random_state=seed).fit(reduced)
  return gmm.predict_proba(reduced)


@pytest.mark.parametrize("n, d, c, covariance_type, balanced", [
    (200, 12, 4, "full", True),
    (300, 20, 3, "diag", False),
    (240, 8, 6, "full", False),
])
def test_equals_leep_on_gmm_posteriors(n, d, c, covariance_type, balanced):
  x, y = _blobs(seed=n, n=n, d=d, c=c, spread=2.0, balanced=balanced)
  k = 5 * len(np.unique(y))
  got = nleep.nleep(x, y, covariance_type=covariance_type)
  post = nleep.gmm_posteriors(x, num_components=k,
                              covariance_type=covariance_type)
  assert post.probs.shape == (n, k)
  assert got == pytest.approx(leep.leep(post.probs, y), rel=1e-6)
  reference = _sklearn_posteriors(x, k, covariance_type=covariance_type)
  np.testing.assert_allclose(post.probs, reference, atol=1e-6)
  assert got == pytest.approx(_numpy_leep(reference, y), rel=1e-5)
  assert got < 0


def test_closed_forms():
  x, y = _blobs(seed=1, n=150, spread=2.0)
  # One component: θ(x) = 1 for all x, so P(y | z) = P(y) and NLEEP = -H(Y).
  assert nleep.nleep(x, y, num_components=1) == pytest.approx(
      -stats.entropy(np.bincount(y)), rel=1e-5)
  # Far-apart blobs, one component per class: hard, pure posteriors, NLEEP = 0.
  x, y = _blobs(seed=2, n=150, c=3, spread=0.01)
  assert nleep.nleep(x, y, num_components=3) == pytest.approx(0.0, abs=1e-5)
  # A single class: LEEP of anything is 0.
  assert nleep.nleep(x, np.zeros(150, int)) == pytest.approx(0.0, abs=1e-6)


def test_default_components_are_five_per_class_below_n():
  assert nleep.default_num_components(10, 1000) == 50
  assert nleep.default_num_components(100, 1000) == 500
  assert nleep.default_num_components(397, 1000) == 794  # 2 per class.
  assert nleep.default_num_components(10, 50) == 40  # 5 x 10 is not < 50.
  with pytest.raises(ValueError, match="fewer classes than examples"):
    nleep.default_num_components(50, 50)
  # Counted over the classes present; absent class indices do not add any.
  x, y = _blobs(seed=3, n=100, c=3)
  assert nleep.score(scores.ScoreInputs(
      x, y * 2, x[:10], y[:10], num_classes=6))["num_components"] == 15


def test_deterministic_for_a_seed():
  x, y = _blobs(seed=4, n=200, spread=3.0)
  a = nleep.gmm_posteriors(x, num_components=20, seed=7)
  b = nleep.gmm_posteriors(x, num_components=20, seed=7)
  np.testing.assert_array_equal(a.probs, b.probs)
  assert nleep.nleep(x, y, seed=7) == nleep.nleep(x, y, seed=7)
  # Another seed is another k-means start (same-seed equality is the contract;
  # here the starts happen to give different mixtures).
  c = nleep.gmm_posteriors(x, num_components=20, seed=8)
  assert not np.array_equal(a.probs, c.probs)


def test_invariances():
  x, y = _blobs(seed=5, n=120, d=10, spread=2.0)
  base = nleep.nleep(x, y, num_components=8)
  rng = np.random.default_rng(0)
  # The GMM never sees the labels: renaming classes changes nothing.
  assert nleep.nleep(x, rng.permutation(4)[y], num_components=8) == (
      pytest.approx(base, rel=1e-6))
  # Global scale and shift (scaled out before PCA), and rotations (PCA finds
  # the same subspace; component signs do not matter to a GMM). Rounding may
  # move EM a little, hence the tolerance.
  for transformed in (x * 1e3, x * 1e-3, x + 100.0,
                      x @ np.linalg.qr(rng.normal(size=(10, 10)))[0]):
    assert nleep.nleep(transformed, y, num_components=8) == pytest.approx(
        base, rel=1e-3)
  # Not invariant to per-dimension scaling: PCA keeps the stretched direction.
  stretched = x * np.array([100.0] + [1.0] * 9, np.float32)
  assert nleep.gmm_posteriors(stretched, num_components=8).pca_dim == 1
  assert nleep.gmm_posteriors(x, num_components=8).pca_dim > 1


def test_pca_variance_controls_the_dimension():
  x, y = _blobs(seed=6, n=120, d=16, spread=2.0)
  dims = [nleep.gmm_posteriors(x, num_components=4, pca_variance=v).pca_dim
          for v in (0.3, 0.8, 0.99, 1.0)]
  assert dims == sorted(dims) and dims[-1] == 16 and dims[0] < dims[1]


def test_degenerate_inputs():
  x, y = _blobs(seed=7, n=60, d=5, c=3)
  with pytest.raises(ValueError, match="constant"):
    nleep.nleep(np.ones((60, 5), np.float32) * 3.7, y)
  with pytest.raises(ValueError, match="constant"):
    nleep.nleep(np.zeros((60, 5)), y)
  # A class with one example is fine.
  y1 = y.copy()
  y1[0] = 3
  assert np.isfinite(nleep.nleep(x, y1))
  # A few constant columns are fine too.
  x2 = np.concatenate([x, np.full((60, 2), 5.0, np.float32)], axis=1)
  assert np.isfinite(nleep.nleep(x2, y))
  with pytest.raises(ValueError, match=r"num_components must be an int in 1\.\.59"):
    nleep.nleep(x, y, num_components=60)
  with pytest.raises(ValueError, match="num_components"):
    nleep.nleep(x, y, num_components=2.5)
  with pytest.raises(ValueError, match=r"pca_variance must be a fraction in \(0, 1\]"):
    nleep.nleep(x, y, pca_variance=0.0)
  with pytest.raises(ValueError, match="pca_variance"):
    nleep.nleep(x, y, pca_variance=1.5)
  with pytest.raises(ValueError, match="diag, full, spherical, tied"):
    nleep.nleep(x, y, covariance_type="diagonal")
  with pytest.raises(ValueError, match="fewer classes than examples"):
    nleep.nleep(x[:3], np.array([0, 1, 2]))  # Three classes, three examples.
  with pytest.raises(ValueError, match=">= 0"):
    nleep.nleep(x, y - 1)
  with pytest.raises(ValueError, match="60 entries"):
    nleep.nleep(x, y[:-1])
  with pytest.raises(ValueError, match="finite"):
    nleep.nleep(np.where(x > 1, np.inf, x), y)


def test_score_plugin():
  x, y = _blobs(seed=8, n=150, spread=2.0)
  inputs = scores.ScoreInputs(x, y, x[:20], y[:20], num_classes=4)
  result = scores.compute({"nleep": {}, "nleep_diag": {
      "type": "nleep", "covariance_type": "diag", "seed": 1}}, inputs)
  assert set(result["nleep"]) == {"score", "pca_dim", "num_components",
                                  "gmm_iterations", "gmm_converged"}
  assert result["nleep"]["score"] == pytest.approx(nleep.nleep(x, y), rel=1e-7)
  assert result["nleep"]["num_components"] == 20
  assert result["nleep_diag"]["score"] == pytest.approx(
      nleep.nleep(x, y, covariance_type="diag", seed=1), rel=1e-7)
