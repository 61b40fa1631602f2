"""Tests for training_time: predicted curves against real optax training, the NTK against
jax.jacrev, the sketch, SGD's expected loss against Monte Carlo, subset-and-correct."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model_search import training_time as tt

N, D, K = 32, 6, 3


def _linear_data(seed=0, n=N, d=D, k=K):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  w_true = rng.normal(size=(d, k))
  y = (x @ w_true + 0.7 * rng.normal(size=(n, k))).astype(np.float32)
  params = {"w": jnp.asarray(0.1 * rng.normal(size=(d, k)), jnp.float32),
            "b": jnp.zeros((k,), jnp.float32)}
  return x, y, params


def _linear(params, x):
  return x @ params["w"] + params["b"]


def _linear_nobias(params, x):
  return x @ params["w"]


def _mlp_params(seed=0, d_in=5, hidden=7, k=K):
  rng = np.random.default_rng(seed)
  init = lambda *s: jnp.asarray(rng.normal(size=s) / math.sqrt(s[0]), jnp.float32)
  return {"body": {"kernel": init(d_in, hidden), "bias": jnp.zeros((hidden,))},
          "head": {"kernel": init(hidden, k), "bias": jnp.zeros((k,))}}


def _mlp(params, x):
  h = jnp.tanh(x @ params["body"]["kernel"] + params["body"]["bias"])
  return h @ params["head"]["kernel"] + params["head"]["bias"]


def _mse(apply_fn, x, y):
  return lambda p: 0.5 * jnp.mean(jnp.sum((apply_fn(p, x) - y) ** 2, axis=1))


def _train_full_batch(apply_fn, params, x, y, lr, momentum, steps):
  loss = _mse(apply_fn, x, y)
  opt = optax.sgd(lr, momentum=momentum)

  def step(carry, _):
    p, state = carry
    updates, state = opt.update(jax.grad(loss)(p), state)
    p = optax.apply_updates(p, updates)
    return (p, state), loss(p)

  _, losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return np.concatenate([[float(loss(params))], np.asarray(losses, np.float64)])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("apply_fn", [_linear, _linear_nobias])
@pytest.mark.parametrize("kernel", ["full", "kronecker"])
def test_linear_model_gd_curve_equals_optax_training(momentum, apply_fn, kernel):
  x, y, params = _linear_data()
  if apply_fn is _linear_nobias:
    params = {"w": params["w"]}
  spectrum = tt.compute_spectrum(apply_fn, params, x, y, kernel=kernel)
  lr = 0.5 * spectrum.max_stable_learning_rate(momentum)
  predicted = tt.loss_curve(spectrum, learning_rate=lr, steps=60, momentum=momentum)
  actual = _train_full_batch(apply_fn, params, x, y, lr, momentum, 60)
  np.testing.assert_allclose(predicted, actual, rtol=2e-5)
  # The same through the one-call API.
  np.testing.assert_allclose(
      tt.predict_loss_curve(apply_fn, params, x, y, learning_rate=lr, steps=60,
                            momentum=momentum, kernel=kernel), predicted, rtol=1e-12)


@pytest.mark.parametrize("kernel", ["full", "kronecker"])
def test_accuracy_curve_equals_the_trained_linear_model(kernel):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(N, D)).astype(np.float32)
  y = np.eye(K, dtype=np.float32)[rng.integers(0, K, size=N)]
  _, _, params = _linear_data()
  spectrum = tt.compute_spectrum(_linear, params, x, y, kernel=kernel)
  lr = 0.3 * spectrum.max_stable_learning_rate(0.9)
  opt = optax.sgd(lr, momentum=0.9)
  loss = _mse(_linear, x, y)
  p, state, actual = params, opt.init(params), []
  for _ in range(41):
    actual.append(float(np.mean(np.argmax(_linear(p, x), 1) == np.argmax(y, 1))))
    updates, state = opt.update(jax.grad(loss)(p), state)
    p = optax.apply_updates(p, updates)
  predicted = tt.accuracy_curve(spectrum, y, learning_rate=lr, steps=40, momentum=0.9)
  # Equal (a near-tie argmax may flip one example under other float rounding).
  np.testing.assert_allclose(predicted, actual, atol=1.01 / N)
  assert np.mean(predicted == np.asarray(actual)) >= 0.9
  assert predicted[-1] > predicted[0]  # The test sees learning.
  every = tt.accuracy_curve(spectrum, y, learning_rate=lr, steps=40, momentum=0.9, every=7)
  np.testing.assert_array_equal(every, predicted[[0, 7, 14, 21, 28, 35, 40]])
  # A subset spectrum predicts its own examples, picked by example_index.
  sub = tt.compute_spectrum(_linear, params, x, y, kernel=kernel, subset_size=12)
  assert len(tt.accuracy_curve(sub, y, learning_rate=lr, steps=3)) == 4
  with pytest.raises(ValueError, match="targets must be"):
    tt.accuracy_curve(spectrum, y[:, :2], learning_rate=lr, steps=3)


def test_linearised_mlp_curve_equals_training_the_linearised_model():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(12, 5)).astype(np.float32)
  y = np.eye(K, dtype=np.float32)[np.arange(12) % K]
  params = _mlp_params()
  f0, jvp = jax.linearize(lambda p: _mlp(p, x), params)
  linear = lambda p, _: f0 + jvp(jax.tree_util.tree_map(jnp.subtract, p, params))
  spectrum = tt.compute_spectrum(_mlp, params, x, y)
  lr = 0.4 * spectrum.max_stable_learning_rate(0.5)
  predicted = tt.loss_curve(spectrum, learning_rate=lr, steps=40, momentum=0.5)
  actual = _train_full_batch(linear, params, x, y, lr, 0.5, 40)
  np.testing.assert_allclose(predicted, actual, rtol=1e-4)


def _mlp_jacobian_gram(params, x, select_head=False):
  jac = jax.jacrev(lambda p: _mlp(p, x))(params)  # leaves [N, K, *shape]
  if select_head:
    jac = {"head": jac["head"]}
  rows = jnp.concatenate([jnp.reshape(j, (x.shape[0] * K, -1))
                          for j in jax.tree_util.tree_leaves(jac)], axis=1)
  rows = np.asarray(rows, np.float64)
  return rows @ rows.T


@pytest.mark.parametrize("select", [None, r"^head/"])
def test_exact_kernel_equals_jacrev_gram(select):
  x = np.random.default_rng(2).normal(size=(10, 5)).astype(np.float32)
  params = _mlp_params()
  theta = tt.empirical_ntk(_mlp, params, x, select=select, chunk_size=3)
  expected = _mlp_jacobian_gram(params, x, select_head=select is not None)
  assert theta.shape == (10 * K, 10 * K)
  np.testing.assert_allclose(theta, expected, atol=1e-5 * np.abs(expected).max())


def test_sketched_kernel_converges_to_exact():
  x = np.random.default_rng(3).normal(size=(8, 5)).astype(np.float32)
  params = _mlp_params(hidden=64)  # P = 5*64 + 64 + 64*3 + 3 = 579.
  exact = tt.empirical_ntk(_mlp, params, x)
  errors = []
  for d in (16, 64, 256, 1024, 4096):
    trials = [tt.empirical_ntk(_mlp, params, x, projection_dim=d, seed=s) for s in range(3)]
    errors.append(np.mean([np.linalg.norm(t - exact) / np.linalg.norm(exact) for t in trials]))
  assert all(b < a for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.06 and errors[-1] < errors[0] / 8, errors
  # And the curve predicted from the sketch approaches the exact one.
  y = np.eye(K, dtype=np.float32)[np.arange(8) % K]
  lr = 0.5 * tt.compute_spectrum(_mlp, params, x, y).max_stable_learning_rate()
  kw = dict(learning_rate=lr, steps=50)
  exact_curve = tt.predict_loss_curve(_mlp, params, x, y, **kw)
  gaps = [np.max(np.abs(tt.predict_loss_curve(_mlp, params, x, y, projection_dim=d, **kw)
                        - exact_curve)) / exact_curve[0] for d in (64, 4096)]
  assert gaps[1] < 0.02 and gaps[1] < gaps[0], gaps


def _sgd_runs(x, y, params, lr, batch, momentum, steps, runs, replace, seed=0):
  """Losses [runs, steps + 1] of optax SGD on the linear model, one batch draw per step."""
  loss = _mse(_linear, x, y)
  opt = optax.sgd(lr, momentum=momentum)
  n = x.shape[0]

  def run(key):
    def step(carry, key):
      p, state = carry
      idx = jax.random.choice(key, n, (batch,), replace=replace)
      grads = jax.grad(_mse(_linear, x[idx], y[idx]))(p)
      updates, state = opt.update(grads, state)
      p = optax.apply_updates(p, updates)
      return (p, state), loss(p)
    _, losses = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
    return jnp.concatenate([loss(params)[None], losses])

  keys = jax.random.split(jax.random.key(seed), runs)
  return np.asarray(jax.jit(jax.vmap(run))(keys), np.float64)


# Stable settings where the noise dominates late: stationary expected loss ~1.2-1.3 against
# the full-batch floor 0.82.
@pytest.mark.parametrize("sampling,momentum,rate", [("with_replacement", 0.0, 0.3),
                                                    ("without_replacement", 0.0, 0.3),
                                                    ("without_replacement", 0.6, 0.1)])
def test_sgd_expected_loss_matches_monte_carlo(sampling, momentum, rate):
  x, y, params = _linear_data()
  x, y = jnp.asarray(x), jnp.asarray(y)
  spectrum = tt.compute_spectrum(_linear, params, x, y)
  batch, steps, runs = 4, 40, 400
  lr = rate * spectrum.max_stable_learning_rate(momentum)
  predicted = tt.loss_curve(spectrum, learning_rate=lr, steps=steps, batch_size=batch,
                            momentum=momentum, sampling=sampling, noise="exact")
  losses = _sgd_runs(x, y, params, lr, batch, momentum, steps, runs,
                     replace=sampling == "with_replacement")
  mean, se = losses.mean(0), losses.std(0) / math.sqrt(runs)
  assert np.all(np.abs(mean - predicted) <= 4 * se + 1e-5 * predicted), (
      np.max(np.abs(mean - predicted) / np.maximum(se, 1e-12)))
  # The noise term matters here: the full-batch curve is many standard errors away.
  full = tt.loss_curve(spectrum, learning_rate=lr, steps=steps, momentum=momentum)
  assert np.max((mean - full)[1:] / se[1:]) > 10


def test_diagonal_noise_approximation_is_close_to_exact():
  x, y, params = _linear_data()
  spectrum = tt.compute_spectrum(_linear, params, x, y)
  for momentum, rate in ((0.0, 0.3), (0.6, 0.1)):
    kw = dict(learning_rate=rate * spectrum.max_stable_learning_rate(momentum), steps=40,
              batch_size=4, momentum=momentum)
    exact = tt.loss_curve(spectrum, noise="exact", **kw)
    diagonal = tt.loss_curve(spectrum, noise="diagonal", **kw)
    # Measured: 0.15% at most on this problem, for either momentum.
    np.testing.assert_allclose(diagonal, exact, rtol=0.01)


@pytest.mark.parametrize("noise", ["exact", "diagonal"])
def test_learning_rate_schedule(noise):
  """A constant schedule is the constant rate; a schedule's SGD curve equals Monte Carlo."""
  x, y, params = _linear_data()
  spectrum = tt.compute_spectrum(_linear, params, x, y)
  lr = 0.2 * spectrum.max_stable_learning_rate(0.5)
  kw = dict(steps=30, batch_size=4, momentum=0.5, noise=noise)
  np.testing.assert_array_equal(tt.loss_curve(spectrum, learning_rate=lr, **kw),
                                tt.loss_curve(spectrum, learning_rate=np.full(30, lr), **kw))
  schedule = np.where(np.arange(30) < 10, lr, 0.1 * lr)
  a = tt.loss_curve(spectrum, learning_rate=schedule, **kw)
  b = tt.loss_curve(spectrum, learning_rate=schedule[::-1].copy(), **kw)
  assert not np.allclose(a, b)  # Each step uses its own rate.
  # The same curve twice (the diagonal noise matrix comes from the cache the second time).
  np.testing.assert_array_equal(a, tt.loss_curve(spectrum, learning_rate=schedule, **kw))
  with pytest.raises(ValueError, match=r"one learning rate per step, shape \[steps=30\]"):
    tt.loss_curve(spectrum, learning_rate=schedule[:5], **kw)
  pred = tt.predict_steps(spectrum, spectrum.floor * 1.1, learning_rate=np.where(
      np.arange(30) < 3, 2 * spectrum.max_stable_learning_rate(0.5), lr), steps=30,
                          momentum=0.5)
  assert pred.steps == math.inf and "(the schedule peak)" in pred.reason


def test_exact_noise_recursion_stays_symmetric_on_an_ill_conditioned_kernel():
  """A dominant direction and eigenvalues over 8 decades, lr 0.3 x the limit, B = 4: the
  antisymmetric rounding error of the second moments used to grow to -1e32 here."""
  rng = np.random.default_rng(0)
  phi = rng.normal(size=(40, 60)) * np.logspace(0, -4, 60) + 3.0
  r0 = 0.1 * rng.normal(size=(40, 3)) - np.eye(3)[rng.integers(0, 3, 40)]
  spectrum = tt.spectrum_from_kernel(np.kron(phi @ phi.T, np.eye(3)), r0)
  kw = dict(learning_rate=0.3 * spectrum.max_stable_learning_rate(0.9), steps=400,
            batch_size=4, momentum=0.9)
  exact = tt.loss_curve(spectrum, noise="exact", **kw)
  assert np.all(np.isfinite(exact)) and np.all(exact >= 0)
  # Measured: 5e-6 apart; the diagonal recursion never had the problem.
  np.testing.assert_allclose(exact, tt.loss_curve(spectrum, noise="diagonal", **kw), rtol=1e-4)


def test_full_batch_without_replacement_equals_gd():
  x, y, params = _linear_data()
  spectrum = tt.compute_spectrum(_linear, params, x, y)
  kw = dict(learning_rate=0.2, steps=20, momentum=0.3)
  np.testing.assert_allclose(tt.loss_curve(spectrum, batch_size=N, **kw),
                             tt.loss_curve(spectrum, **kw))


def test_kronecker_kernel_equals_full_for_a_linear_model_under_sgd():
  x, y, params = _linear_data()
  full = tt.compute_spectrum(_linear, params, x, y)
  kron = tt.compute_spectrum(_linear, params, x, y, kernel="kronecker")
  assert kron.eigenvalues.shape == (N,) and kron.residual_projections.shape == (N, K)
  kw = dict(learning_rate=0.3, steps=30, batch_size=5, noise="exact")
  np.testing.assert_allclose(tt.loss_curve(kron, **kw), tt.loss_curve(full, **kw), rtol=1e-9)


def test_subset_correction_is_exact_for_a_replicated_training_set():
  # The corrected spectrum of n examples is the spectrum of those examples repeated N / n
  # times: every curve on the replicated set must come out the same.
  x, y, params = _linear_data(n=8)
  copies = 4
  sub = tt.correct_for_subset(tt.compute_spectrum(_linear, params, x, y), 8 * copies)
  full = tt.compute_spectrum(_linear, params, np.tile(x, (copies, 1)), np.tile(y, (copies, 1)))
  assert sub.num_examples == full.num_examples == 32 and sub.subset_size == 8
  top = np.sum(sub.eigenvalues > 0)
  np.testing.assert_allclose(sub.eigenvalues[:top], full.eigenvalues[:top], rtol=1e-5)
  for kw in (dict(), dict(momentum=0.7), dict(batch_size=3, sampling="with_replacement"),
             dict(batch_size=3, momentum=0.5), dict(batch_size=6, noise="diagonal")):
    lr = 0.3 * full.max_stable_learning_rate(kw.get("momentum", 0.0))
    np.testing.assert_allclose(tt.loss_curve(sub, learning_rate=lr, steps=30, **kw),
                               tt.loss_curve(full, learning_rate=lr, steps=30, **kw),
                               rtol=1e-5, err_msg=str(kw))


def _anisotropic_data(seed, n, d=8, k=2, noise=0.3):
  """i.i.d. rows with feature scales 1, 1/2, ..., 1/d: curves that take many steps."""
  rng = np.random.default_rng(seed)
  scale = 1.0 / np.arange(1, d + 1)
  x = (rng.normal(size=(n, d)) * scale).astype(np.float32)
  w = rng.normal(size=(d, k)) / np.sqrt(scale)[:, None]
  y = (x @ w + noise * rng.normal(size=(n, k))).astype(np.float32)
  return x, y, {"w": jnp.zeros((d, k)), "b": jnp.zeros((k,))}


def test_subset_and_correct_is_close_to_the_full_kernel():
  n_full, n_sub = 1024, 256
  x, y, params = _anisotropic_data(5, n_full)
  full = tt.compute_spectrum(_linear, params, x, y, chunk_size=256)
  lr = 0.5 * full.max_stable_learning_rate()
  kw = dict(learning_rate=lr, steps=300)
  sgd = dict(batch_size=16, noise="diagonal")
  curves = [tt.loss_curve(full, **kw), tt.loss_curve(full, **sgd, **kw)]
  errors = []
  for seed in range(4):
    sub = tt.compute_spectrum(_linear, params, x, y, subset_size=n_sub, seed=seed,
                              chunk_size=256)
    assert sub.num_examples == n_full and sub.subset_size == n_sub
    # lambda_max scales with N; measured within 3-14% of the full kernel's.
    assert abs(sub.eigenvalues[0] / full.eigenvalues[0] - 1) < 0.2
    for ref, kw2 in zip(curves, (dict(), sgd)):
      errors.append(np.max(np.abs(tt.loss_curve(sub, **kw, **kw2) / ref - 1)))
  # Measured: the worst relative error along a curve is 7-14% for n = N / 4, mostly
  # the floor (a subset's training loss is optimistic) and the sampled top eigenvalue.
  assert max(errors) < 0.2 and np.mean(errors) < 0.15, errors


def test_steps_to_loss_hand_cases():
  curve = np.array([4.0, 3.0, 2.0, 2.0, 1.0])
  assert tt.steps_to_loss(curve, 4.0) == 0.0
  assert tt.steps_to_loss(curve, 2.5) == 2.0
  assert tt.steps_to_loss(curve, 2.0) == 2.0
  assert tt.steps_to_loss(curve, 1.0) == 4.0
  assert tt.steps_to_loss(curve, 0.5) == math.inf
  assert tt.steps_to_loss([np.nan, np.inf, 1.0], 1.0) == 2.0
  with pytest.raises(ValueError, match="non-empty 1-D"):
    tt.steps_to_loss([], 1.0)


def test_hand_built_spectrum_closed_form():
  # One direction, lambda = 4 on N = 2 examples: mu = 2; lr = 0.25 -> factor 1/2 per step.
  spectrum = tt.Spectrum(np.array([4.0, 0.0]), np.array([2.0, 1.0]), 2)
  curve = tt.loss_curve(spectrum, learning_rate=0.25, steps=3)
  floor = 0.5 / 2 * 1.0
  np.testing.assert_allclose(curve, floor + 0.5 / 2 * 4.0 * 0.25 ** np.arange(4))
  assert spectrum.floor == floor
  assert spectrum.max_stable_learning_rate() == 1.0
  assert spectrum.max_stable_learning_rate(0.5) == 1.5
  pred = tt.predict_steps(spectrum, floor + 0.1, learning_rate=0.25, steps=10)
  assert pred.steps == 2.0 and pred.reason == ""  # 0.25 + 1 * 1/16 <= 0.35 at t = 2.


def test_learning_rate_above_stability_limit_diverges_with_reason():
  x, y, params = _linear_data()
  spectrum = tt.compute_spectrum(_linear, params, x, y)
  for momentum in (0.0, 0.5):
    limit = spectrum.max_stable_learning_rate(momentum)
    assert limit == pytest.approx(2 * (1 + momentum) * N / spectrum.eigenvalues[0])
    pred = tt.predict_steps(spectrum, spectrum.floor * 1.1, learning_rate=1.01 * limit,
                            steps=100, momentum=momentum)
    assert pred.steps == math.inf and "diverges" in pred.reason
    curve = tt.loss_curve(spectrum, learning_rate=1.01 * limit, steps=2000, momentum=momentum)
    assert curve[-1] > 1e3 * curve[0]
    ok = tt.predict_steps(spectrum, spectrum.floor * 1.1, learning_rate=0.99 * limit,
                          steps=5000, momentum=momentum)
    assert math.isfinite(ok.steps)
  # SGD at a rate that full-batch GD tolerates but small batches do not.
  limit = spectrum.max_stable_learning_rate()
  pred = tt.predict_steps(spectrum, spectrum.floor * 1.1, learning_rate=0.9 * limit,
                          steps=200, batch_size=1)
  assert pred.steps == math.inf and "grows" in pred.reason


def test_target_below_null_space_floor_is_inf_with_reason():
  x, y, params = _linear_data()  # P = 21 parameters < N K = 96: a null space.
  spectrum = tt.compute_spectrum(_linear, params, x, y)
  assert np.sum(spectrum.eigenvalues > 0) == (D + 1) * K
  # The floor is the least-squares residual: 0.5 / N ||(I - X (X^T X)^+ X^T) Y||^2.
  xb = np.concatenate([x, np.ones((N, 1), np.float32)], axis=1).astype(np.float64)
  resid = y - xb @ np.linalg.lstsq(xb, y.astype(np.float64), rcond=None)[0]
  assert spectrum.floor == pytest.approx(0.5 / N * np.sum(resid ** 2), rel=1e-4)
  pred = tt.predict_steps(spectrum, 0.99 * spectrum.floor, learning_rate=0.1, steps=100)
  assert pred.steps == math.inf and "below the floor" in pred.reason
  assert pred.floor == spectrum.floor
  slow = tt.predict_steps(spectrum, 1.0001 * spectrum.floor, learning_rate=1e-3, steps=10)
  assert slow.steps == math.inf and "not reached within 10 steps" in slow.reason


def test_clear_errors():
  x, y, params = _linear_data()
  spectrum = tt.compute_spectrum(_linear, params, x, y)
  with pytest.raises(ValueError, match="Unknown kernel 'diag'; choose one of 'full'"):
    tt.compute_spectrum(_linear, params, x, y, kernel="diag")
  with pytest.raises(ValueError, match="momentum must be in"):
    tt.loss_curve(spectrum, learning_rate=0.1, steps=3, momentum=1.0)
  with pytest.raises(ValueError, match="learning_rate must be"):
    tt.loss_curve(spectrum, learning_rate=-0.1, steps=3)
  with pytest.raises(ValueError, match="Unknown noise"):
    tt.loss_curve(spectrum, learning_rate=0.1, steps=3, batch_size=2, noise="fast")
  with pytest.raises(ValueError, match="eigenvector_blocks"):
    tt.loss_curve(spectrum._replace(eigenvector_blocks=None), learning_rate=0.1, steps=3,
                  batch_size=2)
  with pytest.raises(ValueError, match="without replacement"):
    tt.loss_curve(spectrum, learning_rate=0.1, steps=3, batch_size=N + 1)
  with pytest.raises(ValueError, match="targets must be"):
    tt.compute_spectrum(_linear, params, x, y[:5])
  with pytest.raises(ValueError, match="outputs"):
    tt.compute_spectrum(_linear, params, x, y[:, :2])
  with pytest.raises(ValueError, match="projection_dim"):
    tt.compute_spectrum(_linear, params, x, y, max_jacobian_bytes=100)
  with pytest.raises(ValueError, match="matches none"):
    tt.compute_spectrum(_linear, params, x, y, select="^nothing$")
