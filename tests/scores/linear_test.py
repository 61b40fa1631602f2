"""Tests for the linear-probe score: a NumPy SGD reference, sklearn ridge, invariances."""

import jax
import numpy as np
import pytest
from sklearn import linear_model

from model_search import scores
from model_search.scores import linear


def _blobs(seed=0, n=120, m=60, d=6, c=3, spread=1.0, offset=0.0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d)) * 2.0
  y, yv = rng.integers(0, c, n), rng.integers(0, c, m)
  x = centers[y] + spread * rng.normal(size=(n, d)) + offset
  xv = centers[yv] + spread * rng.normal(size=(m, d)) + offset
  return x.astype(np.float32), y, xv.astype(np.float32), yv


def _numpy_sgd(x, y, idx, *, num_classes, lr, momentum, weight_decay):
  """Reference: momentum SGD on softmax cross-entropy, in float64 NumPy."""
  x = x.astype(np.float64)
  w = np.zeros((x.shape[1], num_classes))
  b = np.zeros(num_classes)
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  for batch in idx:
    xb, yb = x[batch], np.eye(num_classes)[y[batch]]
    logits = xb @ w + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    gw = xb.T @ (p - yb) / len(batch) + weight_decay * w
    gb = (p - yb).mean(axis=0)
    vw, vb = gw + momentum * vw, gb + momentum * vb
    w, b = w - lr * vw, b - lr * vb
  return w, b


def _numpy_standardize(x, *others, dtype=np.float32):
  x64 = x.astype(np.float64)
  mean, std = x64.mean(0), x64.std(0)
  std[std == 0] = 1.0
  return [((a.astype(np.float64) - mean) / std).astype(dtype)
          for a in (x, *others)]


def test_separable_data_scores_one():
  # Well separated blobs, features far from zero and with large scale: the
  # train-statistics standardisation makes the default learning rates work.
  x, y, xv, yv = _blobs(n=80, m=40, spread=0.05, offset=300.0)
  result = linear.linear(x * 1e3, y, xv * 1e3, yv, num_classes=3)
  assert result["score"] == 1.0
  np.testing.assert_array_equal(result["per_seed"], np.ones(5))
  assert result["best_lr_counts"].sum() == 5
  assert result["val_accuracy"].shape == (2, 5)


def test_batch_indices():
  idx = np.asarray(linear.sample_batch_indices(3, num_examples=50, steps=20,
                                               batch_size=70))
  assert idx.shape == (20, 70)
  assert idx.min() >= 0 and idx.max() < 50
  np.testing.assert_array_equal(
      idx, linear.sample_batch_indices(3, num_examples=50, steps=20,
                                       batch_size=70))
  other = linear.sample_batch_indices(4, num_examples=50, steps=20,
                                      batch_size=70)
  assert not np.array_equal(idx, other)
  # With replacement and uniform: all examples are drawn, about equally often.
  counts = np.bincount(idx.ravel(), minlength=50)
  assert counts.min() > 0 and counts.max() < 3 * counts.mean()


def test_matches_numpy_reference():
  x, y, xv, yv = _blobs(seed=1, spread=2.0)
  lr, seed, steps, batch, mom, wd = 0.05, 7, 300, 16, 0.9, 1e-3
  xs, xvs = _numpy_standardize(x, xv)
  idx = np.asarray(linear.sample_batch_indices(
      seed, num_examples=len(y), steps=steps, batch_size=batch))
  w_ref, b_ref = _numpy_sgd(xs, y, idx, num_classes=3, lr=lr, momentum=mom,
                            weight_decay=wd)
  acc_ref = np.mean(np.argmax(xvs @ w_ref + b_ref, axis=1) == yv)

  runs = linear.fit_sgd(xs, y, xvs, yv, num_classes=3, learning_rates=(lr,),
                        seeds=(seed,), steps=steps, batch_size=batch,
                        momentum=mom, weight_decay=wd)
  assert runs.weights.shape == (1, 1, 6, 3)
  np.testing.assert_allclose(runs.weights[0, 0], w_ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(runs.biases[0, 0], b_ref, rtol=1e-4, atol=1e-4)
  assert float(runs.val_accuracy[0, 0]) == pytest.approx(acc_ref)

  # End to end, standardisation included.
  result = linear.linear(x, y, xv, yv, num_classes=3, learning_rates=(lr,),
                         seeds=(seed,), steps=steps, batch_size=batch,
                         momentum=mom, weight_decay=wd)
  assert result["score"] == pytest.approx(acc_ref)


def test_grid_equals_single_runs():
  x, y, xv, yv = _blobs(seed=2, spread=2.5)
  lrs, seeds = (0.3, 0.01), (0, 5, 9)
  kw = dict(num_classes=3, steps=100, batch_size=32)
  grid = linear.fit_sgd(x, y, xv, yv, learning_rates=lrs, seeds=seeds, **kw)
  assert grid.weights.shape == (2, 3, 6, 3)
  for i, lr in enumerate(lrs):
    for j, seed in enumerate(seeds):
      one = linear.fit_sgd(x, y, xv, yv, learning_rates=(lr,), seeds=(seed,),
                           **kw)
      # Batched and single runs may sum in different orders (on GPU, say).
      np.testing.assert_allclose(grid.weights[i, j], one.weights[0, 0],
                                 rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(grid.biases[i, j], one.biases[0, 0],
                                 rtol=1e-4, atol=1e-5)
      assert grid.val_accuracy[i, j] == one.val_accuracy[0, 0]


def test_aggregation_is_median_over_seeds_of_best_lr():
  x, y, xv, yv = _blobs(seed=3, spread=3.0)
  kw = dict(num_classes=3, steps=60, batch_size=8, learning_rates=(1.0, 0.001),
            seeds=(0, 1, 2))
  result = linear.linear(x, y, xv, yv, **kw)
  acc = result["val_accuracy"]
  np.testing.assert_allclose(result["per_seed"], acc.max(axis=0))
  assert result["score"] == pytest.approx(np.median(acc.max(axis=0)))
  np.testing.assert_array_equal(
      result["best_lr_counts"], np.bincount(acc.argmax(0), minlength=2))


def test_invariant_to_label_permutation_and_feature_scale():
  x, y, xv, yv = _blobs(seed=4, n=150, m=80, d=8, c=4, spread=2.5)
  kw = dict(num_classes=4, steps=200, batch_size=32)
  base = linear.linear(x, y, xv, yv, **kw)
  perm = np.array([2, 0, 3, 1])
  permuted = linear.linear(x, perm[y], xv, perm[yv], **kw)
  np.testing.assert_allclose(permuted["val_accuracy"], base["val_accuracy"])
  # Standardisation makes per-dimension scale and shift irrelevant (up to
  # float32 rounding: allow one validation example).
  scale = np.logspace(-3, 3, 8).astype(np.float32)
  scaled = linear.linear(x * scale + 10, y, xv * scale + 10, yv, **kw)
  np.testing.assert_allclose(scaled["val_accuracy"], base["val_accuracy"],
                             atol=1.01 / len(yv))


@pytest.mark.parametrize("n,d", [(40, 100), (200, 10)])
def test_ridge_matches_sklearn(n, d):
  x, y, xv, yv = _blobs(seed=5, n=n, m=50, d=d, c=4, spread=3.0)
  l2_regs = (1e-3, 0.5, 30.0, 1e4)
  sol = linear.fit_ridge(x, y, num_classes=4, l2_regs=l2_regs)
  # In float64: small l2 with N < D is ill-conditioned, float32 inputs would
  # not pin the solution down to the tolerance.
  xs, xvs = _numpy_standardize(x, xv, dtype=np.float64)
  targets = 2.0 * np.eye(4)[y] - 1.0
  accs = []
  for r, l2 in enumerate(l2_regs):
    ref = linear_model.Ridge(alpha=l2, fit_intercept=True, solver="svd").fit(
        xs, targets)
    np.testing.assert_allclose(sol.weights[r], ref.coef_.T, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(sol.biases[r], ref.intercept_, atol=1e-5)
    # Independent normal-equations solution too.
    xc = xs - xs.mean(0)
    w = np.linalg.solve(xc.T @ xc + l2 * np.eye(d), xc.T @ targets)
    np.testing.assert_allclose(sol.weights[r], w, rtol=1e-4, atol=1e-6)
    accs.append(np.mean(ref.predict(xvs).argmax(1) == yv))
  result = linear.ridge(x, y, xv, yv, num_classes=4, l2_regs=l2_regs)
  np.testing.assert_allclose(result["val_accuracy"], accs)
  assert result["score"] == pytest.approx(max(accs))
  assert result["best_l2"] == l2_regs[int(np.argmax(accs))]


def test_ridge_separable_and_errors():
  x, y, xv, yv = _blobs(n=60, m=30, spread=0.05)
  assert linear.ridge(x, y, xv, yv, num_classes=3)["score"] == 1.0
  with pytest.raises(ValueError, match="positive"):
    linear.ridge(x, y, xv, yv, num_classes=3, l2_regs=(0.0,))


def test_score_plugin():
  x, y, xv, yv = _blobs(seed=6, spread=2.0)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=3)
  sgd = linear.score(inputs, steps=50, seeds=[0, 1, 2])
  assert all(isinstance(v, float) for v in sgd.values())
  assert {"score", "val_acc/lr=0.1", "best_lr_count/lr=0.01",
          "val_acc/seed_min", "val_acc/seed_max"} <= set(sgd)
  assert sgd["best_lr_count/lr=0.1"] + sgd["best_lr_count/lr=0.01"] == 3
  expected = linear.linear(x, y, xv, yv, num_classes=3, steps=50,
                           seeds=(0, 1, 2))["score"]
  assert sgd["score"] == expected

  ridge = linear.score(inputs, method="ridge", l2_regs=[1.0, 10.0])
  assert set(ridge) == {"score", "best_l2", "val_acc/l2=1", "val_acc/l2=10"}
  with pytest.raises(ValueError, match="ridge, sgd"):
    linear.score(inputs, method="lbfgs")
  with pytest.raises(ValueError, match="'sgd' only"):
    linear.score(inputs, method="ridge", steps=10)
  with pytest.raises(ValueError, match="'ridge' only"):
    linear.score(inputs, l2_regs=[1.0])


@pytest.mark.parametrize("weight_decay,momentum,n,batch_size",
                         [(0.0, 0.9, 120, 32), (1e-2, 0.9, 120, 32), (0.0, 0.0, 120, 32),
                          (1e-2, 0.9, 20, 64)])  # The last: most draws are repeats.
def test_kernel_form_has_the_same_iterates(weight_decay, momentum, n, batch_size):
  """W = X^T A: the kernel form trains the same classifiers as SGD on W (Renggli's runs)."""
  rng = np.random.default_rng(3)
  d, c = 200, 5
  x = rng.standard_normal((n, d)).astype(np.float32)
  y = rng.integers(0, c, n)
  x[:, :4] += y[:, None]
  xv = rng.standard_normal((40, d)).astype(np.float32)
  yv = rng.integers(0, c, 40)
  kwargs = dict(num_classes=c, steps=60, batch_size=batch_size, seeds=(0, 1), momentum=momentum,
                weight_decay=weight_decay)
  primal = linear.fit_sgd(x, y, xv, yv, form="primal", **kwargs)
  kernel = linear.fit_sgd(x, y, xv, yv, form="kernel", **kwargs)
  scale = np.abs(np.asarray(primal.weights)).max()
  np.testing.assert_allclose(kernel.weights, primal.weights, atol=1e-5 * scale)
  np.testing.assert_allclose(kernel.biases, primal.biases, atol=1e-5)
  np.testing.assert_array_equal(kernel.val_accuracy, primal.val_accuracy)
  auto = linear.fit_sgd(x, y, xv, yv, **kwargs)  # N <= D: the kernel form.
  np.testing.assert_array_equal(auto.weights, kernel.weights)
  with pytest.raises(ValueError, match="Unknown form 'dual'; valid forms: auto, primal"):
    linear.fit_sgd(x, y, xv, yv, form="dual", **kwargs)


@pytest.mark.parametrize("num_examples,batch_size", [(800, 512), (5, 64), (300, 1)])
def test_distinct_rows_are_the_batch_multiset(num_examples, batch_size):
  """The kernel form's batches: the distinct examples of each draw, weighted by multiplicity."""
  steps, seeds = 7, (3, 4)
  rows, weights = linear._batches(seeds, num_examples, steps, batch_size)
  idxs = [np.asarray(linear.sample_batch_indices(seed, num_examples=num_examples, steps=steps,
                                                 batch_size=batch_size)) for seed in seeds]
  assert rows.shape[-1] == max(len(np.unique(batch)) for idx in idxs for batch in idx)
  for idx, seed_rows, seed_weights in zip(idxs, np.asarray(rows), np.asarray(weights)):
    for batch, r, w in zip(idx, seed_rows, seed_weights):
      expected = np.bincount(batch, minlength=num_examples) / batch_size
      got = np.zeros(num_examples)
      np.add.at(got, r, w)
      np.testing.assert_allclose(got, expected, atol=1e-7)
      distinct = np.unique(batch)
      np.testing.assert_array_equal(r[: len(distinct)], distinct)
      assert np.all(w[len(distinct):] == 0)
