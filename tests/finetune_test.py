"""Tests for the fine-tuning protocol against a NumPy reference of SGD with momentum."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from model_search import finetune


def _linear_model(in_dim, feat_dim, seed=0):
  w = np.random.RandomState(seed).randn(in_dim, feat_dim).astype(np.float32) * 0.3
  return types.SimpleNamespace(
      apply=lambda p, x: x.reshape(x.shape[0], -1) @ p["w"], params={"w": jnp.asarray(w)},
      feature_dim=feat_dim, input_size=2, value_range=(0.0, 1.0), logits=None)


def _reference_sgd(w1, x, y, num_classes, *, lr, steps, indices, momentum, decay_at,
                   clip=None):
  """Softmax regression on x @ w1 with a zero head, every parameter trained; NumPy float64."""
  w1 = w1.astype(np.float64)
  w2 = np.zeros((w1.shape[1], num_classes))
  b = np.zeros(num_classes)
  vel = [np.zeros_like(w1), np.zeros_like(w2), np.zeros_like(b)]
  bounds = [int(round(f * steps)) for f in decay_at]
  losses = []
  for t in range(steps):
    xb, yb = x[indices[t]].reshape(len(indices[t]), -1).astype(np.float64), y[indices[t]]
    f = xb @ w1
    z = f @ w2 + b
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    losses.append(-np.log(p[np.arange(len(yb)), yb]).mean())
    g = p.copy()
    g[np.arange(len(yb)), yb] -= 1
    g /= len(yb)
    grads = [xb.T @ (g @ w2.T), f.T @ g, g.sum(0)]
    if clip is not None:
      norm = np.sqrt(sum((gr**2).sum() for gr in grads))
      grads = [gr * min(1.0, clip / norm) for gr in grads]
    lr_t = lr * 0.1 ** sum(t >= bd for bd in bounds)
    for i, (param, grad) in enumerate(zip([w1, w2, b], grads)):
      vel[i] = momentum * vel[i] + grad
      param -= lr_t * vel[i]
  return np.array(losses), (w1, w2, b)


@pytest.mark.parametrize("clip", [None, 0.05])
def test_training_matches_numpy_reference(clip):
  rng = np.random.RandomState(1)
  x = rng.rand(40, 2, 2, 3).astype(np.float32)
  y = rng.randint(0, 3, 40)
  model = _linear_model(12, 5)
  steps, lrs = 12, (0.5, 0.05)
  tuner = finetune.Finetuner(model, head_classes=3, momentum=0.9, steps=steps,
                             decay_at=(0.3, 0.6, 0.9), warmup_steps=0, eval_batch_size=16,
                             grad_clip_norm=clip)
  idx = finetune.batch_indices(40, steps=steps, batch_size=8, seed=3)
  params, losses = tuner.train(lrs, x, y, 3, idx)
  for i, lr in enumerate(lrs):
    ref_losses, (w1, w2, b) = _reference_sgd(
        np.asarray(model.params["w"]), x, y, 3, lr=lr, steps=steps, indices=idx, momentum=0.9,
        decay_at=(0.3, 0.6, 0.9), clip=clip)
    np.testing.assert_allclose(np.asarray(losses[i]), ref_losses, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(params["backbone"]["w"][i]), w1, atol=1e-4)
    np.testing.assert_allclose(np.asarray(params["head"]["kernel"][i]), w2, atol=1e-4)
    np.testing.assert_allclose(np.asarray(params["head"]["bias"][i]), b, atol=1e-4)
  # The accuracy counts every example once, padded batches included (40 = 2 x 16 + 8).
  acc = tuner.accuracy(params, x, y, 3)
  w1, w2, b = (np.asarray(params["backbone"]["w"][0]), np.asarray(params["head"]["kernel"][0]),
               np.asarray(params["head"]["bias"][0]))
  expected = ((x.reshape(40, -1) @ w1 @ w2 + b).argmax(1) == y).mean()
  assert acc[0] == pytest.approx(expected)


def test_padded_head_equals_exact_head():
  rng = np.random.RandomState(2)
  x = rng.rand(32, 2, 2, 3).astype(np.float32)
  y = rng.randint(0, 4, 32)
  model = _linear_model(12, 6)
  idx = finetune.batch_indices(32, steps=10, batch_size=8, seed=0)
  kw = dict(momentum=0.9, steps=10, decay_at=(0.5,), warmup_steps=2, eval_batch_size=32)
  exact = finetune.Finetuner(model, head_classes=4, **kw)
  padded = finetune.Finetuner(model, head_classes=11, **kw)
  p1, l1 = exact.train((0.3,), x, y, 4, idx)
  p2, l2 = padded.train((0.3,), x, y, 4, idx)
  np.testing.assert_allclose(np.asarray(l1), np.asarray(l2), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(p2["head"]["kernel"])[:, :, 4:], 0.0)
  np.testing.assert_allclose(exact.accuracy(p1, x, y, 4), padded.accuracy(p2, x, y, 4))
  with pytest.raises(ValueError, match="head_classes"):
    exact.class_mask(5)


def test_lr_schedule_hand_values():
  kw = dict(steps=100, decay_at=(0.3, 0.6, 0.9), warmup_steps=0)
  got = [float(finetune.lr_schedule(1.0, t, **kw)) for t in (0, 29, 30, 59, 60, 89, 90, 99)]
  np.testing.assert_allclose(got, [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  warm = [float(finetune.lr_schedule(2.0, t, steps=100, decay_at=(), warmup_steps=4))
          for t in (0, 1, 3, 50)]
  np.testing.assert_allclose(warm, [0.5, 1.0, 2.0, 2.0], rtol=1e-6)


def test_batch_indices_are_shuffled_epochs():
  idx = finetune.batch_indices(10, steps=7, batch_size=4, seed=0)
  assert idx.shape == (7, 4)
  flat = idx.reshape(-1)
  assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
  np.testing.assert_array_equal(idx, finetune.batch_indices(10, steps=7, batch_size=4, seed=0))


class _FakeTuner:
  """Returns preset accuracies per call: val then test for each repeat."""

  def __init__(self, accs, losses):
    self.accs, self.losses = list(accs), losses

  def train(self, lrs, *args):
    return None, self.losses

  def accuracy(self, *args):
    return np.asarray(self.accs.pop(0))


def test_pick_by_val_ties_to_first_rate_and_median_over_repeats():
  splits = {s: (np.zeros((8, 2, 2, 3)), np.zeros(8, int)) for s in ("train800", "val200", "test")}
  losses = np.ones((2, 3))
  # repeat 0: val tie -> lr 0.1 (test 0.5); repeat 1: lr 0.01 wins (test 0.9);
  # repeat 2: lr 0.1 wins (test 0.7). Median of (0.5, 0.9, 0.7) = 0.7.
  tuner = _FakeTuner([[0.6, 0.6], [0.5, 0.8], [0.1, 0.3], [0.2, 0.9], [0.9, 0.4], [0.7, 1.0]],
                     losses)
  out = finetune.finetune_task(tuner, splits, num_classes=2, learning_rates=(0.1, 0.01),
                               steps=3, batch_size=4, repeats=3, seed=0)
  assert [r["learning_rate"] for r in out["repeats"]] == [0.1, 0.01, 0.1]
  assert [r["test_accuracy"] for r in out["repeats"]] == [0.5, 0.9, 0.7]
  assert out["test_accuracy"] == pytest.approx(0.7)
  assert out["learning_rate"] == 0.1


def test_diverged_rate_is_recorded_and_skipped():
  splits = {s: (np.zeros((8, 2, 2, 3)), np.zeros(8, int)) for s in ("train800", "val200", "test")}
  losses = np.array([[1.0, np.nan], [1.0, 0.5]])
  tuner = _FakeTuner([[0.9, 0.4], [0.9, 0.6]], losses)
  out = finetune.finetune_task(tuner, splits, num_classes=2, learning_rates=(0.1, 0.01),
                               steps=2, batch_size=4, repeats=1, seed=0)
  runs = out["repeats"][0]["runs"]
  assert runs[0]["failure"] == "non-finite training loss" and runs[0]["val_accuracy"] is None
  assert out["learning_rate"] == 0.01 and out["test_accuracy"] == 0.6
  tuner = _FakeTuner([[0.9, 0.4], [0.9, 0.6]], np.full((2, 2), np.nan))
  with pytest.raises(FloatingPointError, match="diverged"):
    finetune.finetune_task(tuner, splits, num_classes=2, learning_rates=(0.1, 0.01),
                           steps=2, batch_size=4, repeats=1, seed=0)
