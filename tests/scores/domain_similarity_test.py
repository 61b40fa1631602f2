"""Tests for domain similarity: EMD against SciPy references, hand-worked cases, invariances."""

import math

import numpy as np
import pytest
from scipy import optimize
from scipy import stats

from model_search import scores
from model_search.scores import domain_similarity as ds


def _domain(rng, n, d, k, shift=0.0, probs=None):
  """n examples of k classes (all present) around random centres."""
  y = rng.choice(k, size=n, p=probs)
  y[:k] = np.arange(k)
  centres = rng.normal(size=(k, d)) * 3.0 + shift
  return (centres[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _numpy_class_means(x, y):
  """Loop-per-class reference for the class means and fractions."""
  x = np.asarray(x, np.float64)
  classes = sorted(set(y.tolist()))
  means = np.stack([x[y == c].mean(axis=0) for c in classes])
  weights = np.array([np.mean(y == c) for c in classes])
  return means, weights


def test_class_means():
  x = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [10.0, 0.0]])
  means, weights = ds.class_means(x, np.array([7, 7, 7, 2]))
  # Classes in label order: 2 (one example), then 7.
  np.testing.assert_allclose(means, [[10.0, 0.0], [2.0, 3.0]])
  np.testing.assert_allclose(weights, [0.25, 0.75])
  rng = np.random.default_rng(0)
  x, y = _domain(rng, 300, 5, 9, probs=rng.dirichlet(np.ones(9)))
  means, weights = ds.class_means(x, y + 4)  # Absent ids 0..3 are ignored.
  ref_means, ref_weights = _numpy_class_means(x, y)
  np.testing.assert_allclose(means, ref_means, rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(weights, ref_weights, rtol=1e-12)
  assert means.dtype == weights.dtype == np.float64


@pytest.mark.parametrize("ks, kt, seed", [
    (1, 1, 0), (1, 7, 1), (5, 3, 2), (13, 29, 3), (60, 17, 4), (300, 120, 5),
])
def test_1d_matches_scipy_wasserstein(ks, kt, seed):
  # In 1-D with |x - y| as ground distance, EMD is the 1-Wasserstein distance.
  rng = np.random.default_rng(seed)
  gs, gt = rng.normal(size=ks) * 2.0, rng.normal(size=kt) + 0.5
  ws, wt = rng.dirichlet(np.ones(ks)), rng.dirichlet(0.5 * np.ones(kt))
  expected = stats.wasserstein_distance(gs, gt, ws, wt)
  got = ds.emd(gs[:, None], ws, gt[:, None], wt)
  assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_1d_features_match_scipy_wasserstein():
  # End to end from raw features with unequal class counts and sizes.
  rng = np.random.default_rng(6)
  xs, ys = _domain(rng, 500, 1, 23, probs=rng.dirichlet(np.ones(23)))
  xt, yt = _domain(rng, 90, 1, 6, shift=1.0)
  ms, ws = _numpy_class_means(xs, ys)
  mt, wt = _numpy_class_means(xt, yt)
  expected = stats.wasserstein_distance(ms[:, 0], mt[:, 0], ws, wt)
  assert ds.domain_similarity(xs, ys, xt, yt) == pytest.approx(
      math.exp(-0.01 * expected), rel=1e-9)
  result = ds.score(scores.ScoreInputs(xt, yt, xt, yt, num_classes=6,
                                       source_features=xs, source_labels=ys))
  assert result["emd"] == pytest.approx(expected, rel=1e-6)  # float32 inputs.


def test_1d_at_scale():
  # 1000 x 400 classes, the size the LP is built for (about a second).
  rng = np.random.default_rng(7)
  gs, gt = rng.normal(size=1000), rng.normal(size=400) * 0.5 + 0.3
  ws, wt = rng.dirichlet(np.ones(1000)), rng.dirichlet(np.ones(400))
  expected = stats.wasserstein_distance(gs, gt, ws, wt)
  assert ds.emd(gs[:, None], ws, gt[:, None], wt) == pytest.approx(
      expected, rel=1e-8)


@pytest.mark.parametrize("n, d, seed", [(2, 3, 0), (8, 16, 1), (40, 4, 2),
                                        (120, 64, 3)])
def test_uniform_equal_sizes_match_assignment(n, d, seed):
  # n points on each side with weights 1/n: the optimal flow is a permutation
  # (Birkhoff), so EMD = (optimal assignment cost) / n.
  rng = np.random.default_rng(seed)
  gs, gt = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.3
  cost = np.sqrt(((gs[:, None, :] - gt[None, :, :])**2).sum(-1))
  rows, cols = optimize.linear_sum_assignment(cost)
  expected = cost[rows, cols].sum() / n
  w = np.full(n, 1.0 / n)
  assert ds.emd(gs, w, gt, w) == pytest.approx(expected, rel=1e-9)
  # Counts instead of fractions: weights are normalised.
  assert ds.emd(gs, np.ones(n), gt, 3 * np.ones(n)) == pytest.approx(
      expected, rel=1e-9)


def test_hand_worked_2x2():
  # Source (0,0), (4,0) with weights 1/2, 1/2; target (0,3), (4,3) with 1/4,
  # 3/4. d = [[3, 5], [5, 3]]. Feasible flows are f11 = a, f12 = 1/2 - a,
  # f21 = 1/4 - a, f22 = 1/4 + a (0 <= a <= 1/4), costing 9/2 - 4a: the
  # optimum a = 1/4 costs 3 * 3/4 + 5 * 1/4 = 7/2.
  gs, ws = np.array([[0.0, 0.0], [4.0, 0.0]]), np.array([0.5, 0.5])
  gt, wt = np.array([[0.0, 3.0], [4.0, 3.0]]), np.array([0.25, 0.75])
  assert ds.emd(gs, ws, gt, wt) == pytest.approx(3.5, rel=1e-12)
  assert ds.emd(gt, wt, gs, ws) == pytest.approx(3.5, rel=1e-12)  # Symmetric.
  # The same through features: two examples per source class, one target
  # example at (0, 3) and three at (4, 3).
  xs = np.array([[-1.0, 0.0], [1.0, 0.0], [4.0, -2.0], [4.0, 2.0]])
  xt = np.array([[0.0, 3.0], [4.0, 3.0], [4.0, 3.0], [4.0, 3.0]])
  sim = ds.domain_similarity(xs, np.array([0, 0, 1, 1]), xt,
                             np.array([0, 1, 1, 1]))
  assert sim == pytest.approx(math.exp(-0.035), rel=1e-12)
  assert ds.domain_similarity(xs, np.array([0, 0, 1, 1]), xt,
                              np.array([0, 1, 1, 1]), gamma=2.0) == (
                                  pytest.approx(math.exp(-7.0), rel=1e-10))


def test_single_class_side_is_weighted_mean_distance():
  # One source point: all its mass goes to every target point by weight.
  rng = np.random.default_rng(8)
  gs, gt = rng.normal(size=(1, 5)), rng.normal(size=(9, 5))
  wt = rng.dirichlet(np.ones(9))
  expected = wt @ np.linalg.norm(gt - gs, axis=1)
  assert ds.emd(gs, [1.0], gt, wt) == pytest.approx(expected, rel=1e-10)
  assert ds.emd(gt, wt, gs, [2.0]) == pytest.approx(expected, rel=1e-10)


def test_identical_domains():
  rng = np.random.default_rng(9)
  x, y = _domain(rng, 200, 32, 10, shift=50.0)
  assert ds.emd(*ds.class_means(x, y), *ds.class_means(x, y)) == 0.0
  assert ds.domain_similarity(x, y, x, y) == 1.0
  # Same class means and fractions from a reordered copy with renamed classes.
  rows = rng.permutation(200)
  assert ds.domain_similarity(x, y, x[rows], (y[rows] + 3) * 2) == (
      pytest.approx(1.0, abs=1e-12))


def test_invariances():
  rng = np.random.default_rng(10)
  xs, ys = _domain(rng, 400, 12, 15, probs=rng.dirichlet(np.ones(15)))
  xt, yt = _domain(rng, 150, 12, 6, shift=0.5)
  xs, xt = xs.astype(np.float64), xt.astype(np.float64)

  def emd(xs, ys, xt, yt):
    return ds.emd(*ds.class_means(xs, ys), *ds.class_means(xt, yt))

  base = emd(xs, ys, xt, yt)
  assert base > 1.0
  # Relabelling classes on either side, reordering examples.
  assert emd(xs, rng.permutation(15)[ys], xt, yt) == pytest.approx(base,
                                                                    rel=1e-9)
  assert emd(xs, ys, xt, rng.permutation(10)[yt]) == pytest.approx(base,
                                                                   rel=1e-9)
  rows = rng.permutation(150)
  assert emd(xs, ys, xt[rows], yt[rows]) == pytest.approx(base, rel=1e-9)
  # Joint translation and rotation of all features.
  shift = rng.normal(size=12) * 100.0
  assert emd(xs + shift, ys, xt + shift, yt) == pytest.approx(base, rel=1e-9)
  rot, _ = np.linalg.qr(rng.normal(size=(12, 12)))
  assert emd(xs @ rot, ys, xt @ rot, yt) == pytest.approx(base, rel=1e-9)
  # Scaling all features by s scales EMD by s; the similarity is not invariant.
  for s in (1e-3, 0.5, 7.0):
    assert emd(s * xs, ys, s * xt, yt) == pytest.approx(s * base, rel=1e-9)
  assert ds.domain_similarity(7.0 * xs, ys, 7.0 * xt, yt) < (
      ds.domain_similarity(xs, ys, xt, yt))
  # Symmetric in source and target.
  assert emd(xt, yt, xs, ys) == pytest.approx(base, rel=1e-9)
  # A translation of one side only moves the target away: EMD grows.
  assert emd(xs, ys, xt + 10.0, yt) > base


def test_zero_weight_points_are_ignored():
  rng = np.random.default_rng(11)
  gs, gt = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
  ws, wt = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(4))
  base = ds.emd(gs, ws, gt, wt)
  padded = np.concatenate([gs, [[100.0, 0.0, 0.0]]])
  assert ds.emd(padded, np.append(ws, 0.0), gt, wt) == pytest.approx(base,
                                                                     rel=1e-12)


def test_translating_one_side_gives_the_shift_length():
  # W1(mu, mu + v) = ||v||: the flow i -> i costs ||v||, and the 1-Lipschitz
  # test function x . v / ||v|| shows nothing cheaper exists.
  rng = np.random.default_rng(12)
  xt, yt = _domain(rng, 100, 4, 5)
  xt = xt.astype(np.float64)
  for length in (0.1, 1.0, 30.0):
    v = rng.normal(size=4)
    v *= length / np.linalg.norm(v)
    got = ds.score(scores.ScoreInputs(xt, yt, xt, yt, num_classes=5,
                                      source_features=xt + v,
                                      source_labels=yt))
    assert got["emd"] == pytest.approx(length, rel=1e-5)  # float32 inputs.


def test_ranking_is_the_same_for_any_gamma():
  rng = np.random.default_rng(13)
  xt, yt = _domain(rng, 100, 4, 5)
  sources = [_domain(rng, 200, 4, 8, shift=s) for s in (0.0, 1.0, 3.0, 6.0)]
  emds = [ds.emd(*ds.class_means(xs, ys), *ds.class_means(xt, yt))
          for xs, ys in sources]
  assert len(set(emds)) == len(emds)
  for gamma in (1e-3, 0.01, 1.0):
    sims = [ds.domain_similarity(xs, ys, xt, yt, gamma=gamma)
            for xs, ys in sources]
    np.testing.assert_allclose(sims, np.exp(-gamma * np.array(emds)),
                               rtol=1e-12)
    assert np.argsort(sims).tolist() == np.argsort(emds)[::-1].tolist()


def test_degenerate_inputs():
  rng = np.random.default_rng(15)
  xs, ys = _domain(rng, 40, 3, 4)
  xt, yt = _domain(rng, 30, 3, 3)
  # A target class with a single example is fine: its mean is that example.
  yt1 = yt.copy()
  yt1[5] = 9
  ms, ws = _numpy_class_means(xs, ys)
  mt, wt = _numpy_class_means(xt, yt1)
  assert mt.shape[0] == 4 and wt[-1] == pytest.approx(1 / 30)
  assert ds.domain_similarity(xs, ys, xt, yt1) == pytest.approx(
      math.exp(-0.01 * ds.emd(ms, ws, mt, wt)), rel=1e-9)
  # Single-class and single-example domains are defined.
  assert ds.domain_similarity(xs, np.zeros(40, int), xt[:1], yt[:1]) > 0
  with pytest.raises(ValueError, match="NaN or inf"):
    ds.domain_similarity(np.where(xs > 1, np.nan, xs), ys, xt, yt)
  with pytest.raises(ValueError, match="NaN or inf"):
    ds.domain_similarity(xs, ys, np.where(xt > 1, np.inf, xt), yt)
  with pytest.raises(ValueError, match=r"labels must be \[N\] with N = 30"):
    ds.domain_similarity(xs, ys, xt, yt[:-1])
  with pytest.raises(ValueError, match="integers"):
    ds.domain_similarity(xs, ys.astype(float), xt, yt)
  with pytest.raises(ValueError, match=">= 0"):
    ds.domain_similarity(xs, ys - 1, xt, yt)
  # Fewer than 1 class: an empty domain.
  with pytest.raises(ValueError, match="non-empty"):
    ds.domain_similarity(xs, ys, xt[:0], yt[:0])
  with pytest.raises(ValueError, match="non-empty"):
    ds.emd(np.zeros((0, 3)), np.zeros(0), xt, np.ones(30))
  with pytest.raises(ValueError, match="non-empty"):
    ds.class_means(xs[:, 0], ys)
  with pytest.raises(ValueError, match="dimension 3 but target points have 2"):
    ds.domain_similarity(xs, ys, xt[:, :2], yt)
  # Weights of emd.
  g = rng.normal(size=(3, 2))
  with pytest.raises(ValueError, match=r"source_weights must be \[K\]"):
    ds.emd(g, np.ones(2), g, np.ones(3))
  for bad in (np.array([1.0, -1.0, 1.0]), np.zeros(3),
              np.array([1.0, np.nan, 1.0])):
    with pytest.raises(ValueError, match="non-negative and not all 0"):
      ds.emd(g, np.ones(3), g, bad)
  for gamma in (0.0, -1.0, float("inf"), float("nan"), True, "0.01"):
    with pytest.raises(ValueError, match="gamma must be a finite number > 0"):
      ds.domain_similarity(xs, ys, xt, yt, gamma=gamma)


def test_solver_failure_is_raised_with_its_message(monkeypatch):
  def failing(*args, **kwargs):
    del args, kwargs
    return optimize.OptimizeResult(status=4, x=None,
                                   message="Numerical difficulties")
  monkeypatch.setattr(ds.optimize, "linprog", failing)
  g = np.eye(2)
  with pytest.raises(ValueError, match="status 4: Numerical difficulties"):
    ds.emd(g, [0.5, 0.5], g, [0.5, 0.5])


def test_score_plugin():
  rng = np.random.default_rng(14)
  xs, ys = _domain(rng, 300, 6, 20)
  xt, yt = _domain(rng, 80, 6, 5, shift=0.5)
  xv, yv = _domain(rng, 20, 6, 5)
  inputs = scores.ScoreInputs(xt, yt, xv, yv, num_classes=5,
                              source_features=xs, source_labels=ys)
  assert scores.required_fields({"domain_similarity": {}}) == {
      "source_features", "source_labels"}
  out = scores.compute({"domain_similarity": {}}, inputs)["domain_similarity"]
  assert set(out) == {"score", "emd", "num_source_classes",
                      "num_target_classes"}
  ms, ws = _numpy_class_means(xs, ys)
  mt, wt = _numpy_class_means(xt, yt)  # The train split is the target.
  expected = ds.emd(ms, ws, mt, wt)
  assert out["emd"] == pytest.approx(expected, rel=1e-6)
  assert out["score"] == pytest.approx(math.exp(-0.01 * expected), rel=1e-6)
  assert out["num_source_classes"] == 20 and out["num_target_classes"] == 5
  assert out["score"] == ds.domain_similarity(xs, ys, xt, yt)
  # Options pass through.
  out = scores.compute({"d": {"type": "domain_similarity", "gamma": 1.0}},
                       inputs)["d"]
  assert out["score"] == pytest.approx(math.exp(-expected), rel=1e-6)
  # Missing source fields, and a dimension mismatch caught by ScoreInputs.
  with pytest.raises(ValueError, match="'domain_similarity' needs "
                     "source_features, source_labels"):
    ds.score(scores.ScoreInputs(xt, yt, xv, yv, num_classes=5))
  with pytest.raises(ValueError, match="source_features have dimension 5"):
    scores.ScoreInputs(xt, yt, xv, yv, num_classes=5,
                       source_features=xs[:, :5], source_labels=ys)
