"""function_space.simulate against real optax training of linear and linearised models."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model_search import finetune
from model_search import function_space as fs
from model_search import training_time as tt

N, D, K = 48, 12, 5


def _data(seed=0):
  rng = np.random.default_rng(seed)
  phi = rng.normal(size=(N, D)).astype(np.float32)
  labels = rng.integers(0, K, size=N)
  return phi, labels


def _train_head(phi, labels, indices, lrs, *, momentum, clip, loss):
  """optax training of a zero-initialised linear head (kernel + bias) on fixed features."""
  params = {"w": jnp.zeros((D, K)), "b": jnp.zeros((K,))}
  sgd = optax.sgd(lambda t: jnp.asarray(lrs)[t], momentum=momentum or None)
  tx = optax.chain(optax.clip_by_global_norm(clip), sgd) if clip else sgd
  state = tx.init(params)
  x, y = jnp.asarray(phi), jnp.asarray(labels)

  def loss_fn(p, idx):
    f = x[idx] @ p["w"] + p["b"]
    if loss == "mse":
      return 0.5 * jnp.mean(jnp.sum((f - jax.nn.one_hot(y[idx], K)) ** 2, axis=1))
    return optax.softmax_cross_entropy_with_integer_labels(f, y[idx]).mean()

  batch, full = [], [float(loss_fn(params, jnp.arange(N)))]
  for idx in indices:
    value, g = jax.value_and_grad(loss_fn)(params, jnp.asarray(idx))
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    batch.append(float(value))
    full.append(float(loss_fn(params, jnp.arange(N))))
  acc = float(np.mean(np.argmax(phi @ np.asarray(params["w"]) + np.asarray(params["b"]), 1)
                      == labels))
  return np.array(batch), np.array(full), acc


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("momentum,clip", [(0.0, None), (0.9, None), (0.9, 0.5)])
def test_linear_head_replay_equals_optax_training(loss, momentum, clip):
  phi, labels = _data()
  steps = 40
  indices = finetune.batch_indices(N, steps=steps, batch_size=16, seed=3)
  lrs = np.asarray([finetune.lr_schedule(0.05, t, steps=steps, decay_at=(0.5, 0.8),
                                         warmup_steps=3) for t in range(steps)], np.float32)
  batch, full, acc = _train_head(phi, labels, indices, lrs, momentum=momentum, clip=clip,
                                 loss=loss)
  run = fs.simulate(fs.feature_kernel(phi), np.zeros((N, K)), labels, indices,
                    learning_rate=lrs, momentum=momentum, loss=loss, grad_clip_norm=clip)
  np.testing.assert_allclose(run.batch_loss, batch, rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(run.train_loss, full, rtol=2e-5, atol=1e-6)
  assert run.train_accuracy[-1] == pytest.approx(acc)
  if clip:  # The clip is active in this setting: the test covers it.
    assert np.any(run.grad_norm > clip)


def test_linearised_mlp_full_kernel_equals_jvp_training():
  """A nonlinear net, linearised at random weights: the 'full' kernel path."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(24, 6)).astype(np.float32)
  labels = rng.integers(0, 3, size=24)
  keys = jax.random.split(jax.random.key(0), 2)
  p0 = {"w1": jax.random.normal(keys[0], (6, 16)) / 3, "w2": jax.random.normal(keys[1], (16, 3)) / 4}

  def net(p, xb):
    return jnp.tanh(xb @ p["w1"]) @ p["w2"]

  def lin(p, xb):
    delta = jax.tree.map(jnp.subtract, p, p0)
    out, tangent = jax.jvp(lambda q: net(q, xb), (p0,), (delta,))
    return out + tangent

  indices = finetune.batch_indices(24, steps=30, batch_size=8, seed=0)
  tx = optax.chain(optax.clip_by_global_norm(0.3), optax.sgd(0.2, momentum=0.9))
  params, state, batch = p0, tx.init(p0), []
  for idx in indices:
    value, g = jax.value_and_grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        lin(p, x[idx]), labels[idx]).mean())(params)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    batch.append(float(value))
  theta = tt.empirical_ntk(net, p0, x)
  run = fs.simulate(theta, np.asarray(net(p0, x)), labels, indices, learning_rate=0.2,
                    momentum=0.9, kernel="full", grad_clip_norm=0.3)
  np.testing.assert_allclose(run.batch_loss, batch, rtol=1e-4, atol=1e-5)
  final = optax.softmax_cross_entropy_with_integer_labels(lin(params, x), labels).mean()
  assert run.train_loss[-1] == pytest.approx(float(final), rel=1e-4)


def test_full_batch_mse_equals_closed_form_curve():
  phi, labels = _data(2)
  theta = fs.feature_kernel(phi)
  y = np.eye(K)[labels]
  spectrum = tt.spectrum_from_kernel(theta, -y, kernel="kronecker")
  indices = np.tile(np.arange(N), (25, 1))
  lrs = np.where(np.arange(25) < 12, 0.02, 0.002)
  run = fs.simulate(theta, np.zeros((N, K)), labels, indices, learning_rate=lrs,
                    momentum=0.9, loss="mse")
  curve = tt.loss_curve(spectrum, learning_rate=lrs, steps=25, momentum=0.9)
  np.testing.assert_allclose(run.train_loss, curve, rtol=1e-4)


def test_feature_kernel_is_the_zero_head_ntk():
  phi, _ = _data()
  params = {"w": jnp.zeros((D, K)), "b": jnp.zeros((K,))}
  theta = tt.empirical_ntk(lambda p, f: f @ p["w"] + p["b"], params, phi)
  expected = np.kron(fs.feature_kernel(phi), np.eye(K))
  np.testing.assert_allclose(theta, expected, rtol=1e-5, atol=1e-4)


def test_bad_inputs_name_the_problem():
  phi, labels = _data()
  theta = fs.feature_kernel(phi)
  idx = np.zeros((3, 4), int)
  with pytest.raises(ValueError, match="loss"):
    fs.simulate(theta, np.zeros((N, K)), labels, idx, learning_rate=0.1, loss="hinge")
  with pytest.raises(ValueError, match=r"theta \[240, 240\]"):
    fs.simulate(theta, np.zeros((N, K)), labels, idx, learning_rate=0.1, kernel="full")
  with pytest.raises(ValueError, match="labels must be in 0..4"):
    fs.simulate(theta, np.zeros((N, K)), labels + 5, idx, learning_rate=0.1)
  with pytest.raises(ValueError, match="indices"):
    fs.simulate(theta, np.zeros((N, K)), labels, idx + N, learning_rate=0.1)
  with pytest.raises(ValueError, match=r"\[T=3\]"):
    fs.simulate(theta, np.zeros((N, K)), labels, idx, learning_rate=[0.1, 0.1])
  with pytest.raises(ValueError, match="grad_clip_norm"):
    fs.simulate(theta, np.zeros((N, K)), labels, idx, learning_rate=0.1, grad_clip_norm=0.0)
