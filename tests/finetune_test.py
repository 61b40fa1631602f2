"""Tests for the fine-tuning protocol against a NumPy reference of SGD with momentum."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_search import finetune
from model_search import sharding
from model_search.models import hub


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


def _tuner(model, **kw):
  defaults = dict(head_classes=3, momentum=0.9, steps=12, decay_at=(0.3, 0.6, 0.9),
                  warmup_steps=0, eval_batch_size=16)
  return finetune.Finetuner(model, **{**defaults, **kw})


@pytest.mark.parametrize("clip", [None, 0.05])
def test_training_matches_numpy_reference(clip):
  rng = np.random.RandomState(1)
  x = rng.rand(40, 2, 2, 3).astype(np.float32)
  y = rng.randint(0, 3, 40)
  model = _linear_model(12, 5)
  steps = 12
  tuner = _tuner(model, steps=steps, grad_clip_norm=clip)
  assert tuner.num_devices == 4  # tests/conftest.py: four fake CPU devices.
  idx = finetune.batch_indices(40, steps=steps, batch_size=8, seed=3)
  for lr in (0.5, 0.05):
    params, losses = tuner.train(lr, x, y, 3, idx)
    ref_losses, (w1, w2, b) = _reference_sgd(
        np.asarray(model.params["w"]), x, y, 3, lr=lr, steps=steps, indices=idx, momentum=0.9,
        decay_at=(0.3, 0.6, 0.9), clip=clip)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(params["backbone"]["w"]), w1, atol=1e-4)
    np.testing.assert_allclose(np.asarray(params["head"]["kernel"]), w2, atol=1e-4)
    np.testing.assert_allclose(np.asarray(params["head"]["bias"]), b, atol=1e-4)
  # The accuracy counts every example once, padded batches included (40 = 2 x 16 + 8).
  acc = tuner.accuracy(params, x, y, 3)
  w1, w2, b = (np.asarray(params["backbone"]["w"]), np.asarray(params["head"]["kernel"]),
               np.asarray(params["head"]["bias"]))
  expected = ((x.reshape(40, -1) @ w1 @ w2 + b).argmax(1) == y).mean()
  assert acc == pytest.approx(expected)


def test_padded_head_equals_exact_head():
  rng = np.random.RandomState(2)
  x = rng.rand(32, 2, 2, 3).astype(np.float32)
  y = rng.randint(0, 4, 32)
  model = _linear_model(12, 6)
  idx = finetune.batch_indices(32, steps=10, batch_size=8, seed=0)
  kw = dict(momentum=0.9, steps=10, decay_at=(0.5,), warmup_steps=2, eval_batch_size=32)
  exact = finetune.Finetuner(model, head_classes=4, **kw)
  padded = finetune.Finetuner(model, head_classes=11, **kw)
  p1, l1 = exact.train(0.3, x, y, 4, idx)
  p2, l2 = padded.train(0.3, x, y, 4, idx)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(p2["head"]["kernel"])[:, 4:], 0.0)
  np.testing.assert_allclose(exact.accuracy(p1, x, y, 4), padded.accuracy(p2, x, y, 4))
  with pytest.raises(ValueError, match="head_classes"):
    exact.class_mask(5)


class _Cnn(nn.Module):
  """Conv + (optional) batch norm + mean pool: a small model with real convolutions."""
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    return x.mean(axis=(1, 2))


def _cnn_model(batch_norm=False):
  net = _Cnn(batch_norm=batch_norm)
  variables = net.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  def train_fn(v, x):
    out, new = net.apply(v, x, train=True, mutable=["batch_stats"])
    return out, {**v, **new}
  return hub.from_flax(net.apply, variables, name="cnn", input_size=8,
                       apply_train_fn=train_fn if batch_norm else None)


def _images(n, seed=0, classes=3):
  rng = np.random.RandomState(seed)
  return rng.rand(n, 8, 8, 3).astype(np.float32), rng.randint(0, classes, n)


def test_four_devices_give_the_losses_of_one():
  x, y = _images(64)
  model = _cnn_model()
  idx = finetune.batch_indices(64, steps=6, batch_size=16, seed=1)
  runs = {}
  for devices in (1, 4):
    tuner = _tuner(model, steps=6, mesh=sharding.make_mesh(num_devices=devices))
    params, losses = tuner.train(0.1, x, y, 3, idx)
    runs[devices] = (losses, params, tuner.accuracy(params, x, y, 3))
    state = tuner.init_state()
    assert len(jax.tree.leaves(state.params)[0].sharding.device_set) == devices
  np.testing.assert_allclose(runs[4][0], runs[1][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(runs[4][1]), jax.tree.leaves(runs[1][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  assert runs[4][2] == runs[1][2]


def test_fsdp_shards_matching_parameters_and_trains_alike():
  x, y = _images(64)
  model = _cnn_model()
  idx = finetune.batch_indices(64, steps=4, batch_size=16, seed=2)
  plain = _tuner(model, steps=4)
  fsdp = _tuner(model, steps=4, fsdp_regex=r"Conv_1/kernel", fsdp_min_size=1)
  state = fsdp.init_state()
  kernel = state.params["backbone"]["params"]["Conv_1"]["kernel"]  # [3, 3, 8, 16]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "data")
  assert kernel.addressable_shards[0].data.shape == (3, 3, 8, 4)
  trace = state.opt_state[0].trace["backbone"]["params"]["Conv_1"]["kernel"]
  assert trace.sharding.spec == kernel.sharding.spec  # Momentum lives with its parameter.
  other = state.params["backbone"]["params"]["Conv_0"]["kernel"]
  assert other.sharding.spec == jax.sharding.PartitionSpec()
  _, l1 = plain.train(0.1, x, y, 3, idx)
  _, l2 = fsdp.train(0.1, x, y, 3, idx)
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  with pytest.raises(ValueError, match="not a valid regular expression"):
    _tuner(model, fsdp_regex="(")


def test_gradient_accumulation_of_4_x_128_equals_one_batch_of_512():
  x, y = _images(600, seed=3)
  model = _cnn_model()
  idx = finetune.batch_indices(600, steps=3, batch_size=512, seed=0)
  one = _tuner(model, steps=3)
  acc = _tuner(model, steps=3, accumulation_steps=4)
  p1, l1 = one.train(0.1, x, y, 3, idx)
  p4, l4 = acc.train(0.1, x, y, 3, idx)
  np.testing.assert_allclose(l4, l1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p4), jax.tree.leaves(p1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="divisible by devices x accumulation_steps = 4 x 4"):
    acc.train(0.1, x, y, 3, idx[:, :24])


def test_batch_norm_trains_on_batch_statistics_and_evaluates_on_moving_averages():
  x, y = _images(32, seed=4)
  model = _cnn_model(batch_norm=True)
  assert model.has_training_mode
  idx = finetune.batch_indices(32, steps=1, batch_size=16, seed=0)
  tuner = _tuner(model, steps=1)
  params, losses = tuner.train(0.0, x, y, 3, idx)  # lr 0: only the statistics move.
  net = _Cnn(batch_norm=True)
  feats, new = net.apply(model.params, x[idx[0]], train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(losses[0], np.log(3), rtol=1e-6)  # Zero head: uniform.
  for a, b in zip(jax.tree.leaves(params["backbone"]["batch_stats"]),
                  jax.tree.leaves(new["batch_stats"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
  before = jax.tree.leaves(model.params["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(before, jax.tree.leaves(new["batch_stats"])))
  # Weights unchanged at lr 0 (moving averages excepted).
  for a, b in zip(jax.tree.leaves(params["backbone"]["params"]),
                  jax.tree.leaves(model.params["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_non_finite_loss_names_its_step():
  x, y = _images(32)
  x[5] = np.nan
  model = _cnn_model()
  idx = finetune.batch_indices(32, steps=4, batch_size=8, seed=0)
  tuner = _tuner(model, steps=4)
  first = int(np.flatnonzero((idx == 5).any(axis=1))[0])
  with pytest.raises(finetune.NonFiniteLoss, match=f"at step {first}") as e:
    tuner.train(0.1, x, y, 3, idx, every=1)
  assert e.value.step == first


def test_resuming_from_a_state_continues_the_same_run():
  x, y = _images(64)
  model = _cnn_model()
  idx = finetune.batch_indices(64, steps=6, batch_size=16, seed=1)
  tuner = _tuner(model, steps=6)
  saved = {}

  def keep(step, state, losses):
    if step == 3:
      saved.update(state=jax.tree.map(np.asarray, state), losses=losses.copy())

  p_full, l_full = tuner.train(0.1, x, y, 3, idx, every=3, callback=keep)
  state = jax.device_put(finetune.TrainState(*saved["state"]), tuner.state_shardings)
  p_res, l_res = tuner.train(0.1, x, y, 3, idx, state=state, start_step=3,
                             losses=saved["losses"])
  np.testing.assert_array_equal(l_res, l_full)
  for a, b in zip(jax.tree.leaves(p_res), jax.tree.leaves(p_full)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


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


def _run(repeat, lr, val, test, failure=None):
  return {"repeat": repeat, "learning_rate": lr, "seed": repeat, "failure": failure,
          "val_accuracy": None if failure else val, "test_accuracy": None if failure else test}


def test_summarize_picks_by_val_ties_to_first_rate_and_takes_the_median_over_repeats():
  # repeat 0: val tie -> lr 0.1 (test 0.5); repeat 1: lr 0.01 wins (test 0.9);
  # repeat 2: lr 0.1 wins (test 0.7). Median of (0.5, 0.9, 0.7) = 0.7. Input order shuffled.
  runs = [_run(1, 0.01, 0.3, 0.9), _run(0, 0.01, 0.6, 0.8), _run(2, 0.1, 0.9, 0.7),
          _run(0, 0.1, 0.6, 0.5), _run(1, 0.1, 0.1, 0.2), _run(2, 0.01, 0.4, 1.0)]
  out = finetune.summarize(runs, (0.1, 0.01), 3)
  assert [r["learning_rate"] for r in out["repeats"]] == [0.1, 0.01, 0.1]
  assert [r["test_accuracy"] for r in out["repeats"]] == [0.5, 0.9, 0.7]
  assert out["test_accuracy"] == pytest.approx(0.7) and out["val_accuracy"] == pytest.approx(0.6)
  assert out["learning_rate"] == 0.1 and out["failed_repeats"] == []


def test_summarize_skips_failed_runs_and_repeats():
  runs = [_run(0, 0.1, 0, 0, failure="non-finite loss: at step 3"), _run(0, 0.01, 0.9, 0.6),
          _run(1, 0.1, 0, 0, failure="out of memory: x"),
          _run(1, 0.01, 0, 0, failure="out of memory: x")]
  out = finetune.summarize(runs, (0.1, 0.01), 2)
  assert out["learning_rate"] == 0.01 and out["test_accuracy"] == 0.6
  assert out["failed_repeats"] == [{"repeat": 1, "failures": ["out of memory: x"] * 2}]
  none = finetune.summarize(runs[2:], (0.1, 0.01), 2)
  assert none["test_accuracy"] is None and len(none["failed_repeats"]) == 2
