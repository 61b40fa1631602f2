"""Tests for LGC: the W h(x) identity with LFC, a NumPy gradient Gram, the sketch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from model_search import scores
from model_search.scores import lfc
from model_search.scores import gradient_kernel
from model_search.scores import kernel_statistics
from model_search.scores import lgc

N, D_IN, D_HID, D_OUT, C = 40, 5, 7, 4, 3


def _data(seed=0, n=N, c=C):
  rng = np.random.default_rng(seed)
  y = np.arange(n) % c
  rng.shuffle(y)
  x = rng.normal(size=(c, D_IN))[y] + rng.normal(size=(n, D_IN))
  return x.astype(np.float32), y


def _mlp_params(seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  init = lambda *shape: jnp.asarray(scale * rng.normal(size=shape), jnp.float32)
  return {"body": {"kernel": init(D_IN, D_HID), "bias": init(D_HID)},
          "head": {"kernel": init(D_HID, D_OUT), "bias": init(D_OUT)}}


def _hidden(params, x):
  return jnp.tanh(x @ params["body"]["kernel"] + params["body"]["bias"])


def _mlp(params, x):
  return _hidden(params, x) @ params["head"]["kernel"] + params["head"]["bias"]


def _pearson_with_labels(gram, y):
  sim = np.where(y[:, None] == y[None, :], 1.0, -1.0)
  return np.corrcoef(np.asarray(gram, np.float64).ravel(), sim.ravel())[0, 1]


def _numpy_gram(params, x, directions):
  """The K-direction gradient Gram of _mlp, with hand-written float64 backprop.

  For <u, f> with f = W2^T tanh(W1^T x + b1) + b2 (row-vector convention):
  d/dW2 = h u^T, d/db2 = u, delta = (W2 u) * (1 - h^2), d/dW1 = x delta^T,
  d/db1 = delta.
  """
  w1, b1 = (np.asarray(params["body"][k], np.float64) for k in ("kernel", "bias"))
  w2 = np.asarray(params["head"]["kernel"], np.float64)
  x = np.asarray(x, np.float64)
  u = np.asarray(directions, np.float64)
  h = np.tanh(x @ w1 + b1)  # [N, H]
  gram = np.zeros((x.shape[0], x.shape[0]))
  for u_k in u:
    delta = (w2 @ u_k)[None, :] * (1 - h**2)  # [N, H]
    grads = np.concatenate([
        (x[:, :, None] * delta[:, None, :]).reshape(len(x), -1),  # W1
        delta,  # b1
        (h[:, :, None] * u_k[None, None, :]).reshape(len(x), -1),  # W2
        np.repeat(u_k[None, :], len(x), axis=0),  # b2
    ], axis=1)
    gram += grads @ grads.T
  return gram / len(u)


def test_param_paths_and_select():
  params = _mlp_params()
  assert lgc.param_paths(params) == ["body/bias", "body/kernel", "head/bias",
                                     "head/kernel"]
  assert lgc.select_params(params, r"^head/") == ["head/bias", "head/kernel"]
  assert lgc.select_params(params, "kernel") == ["body/kernel", "head/kernel"]
  assert lgc.select_params(params, None) == lgc.param_paths(params)
  nested = {"blocks": [{"w": jnp.ones(2)}, {"w": jnp.ones(2)}],
            "step": jnp.array(3)}
  assert lgc.param_paths(nested) == ["blocks/0/w", "blocks/1/w", "step"]
  # Integer leaves are never differentiated.
  assert lgc.select_params(nested, None) == ["blocks/0/w", "blocks/1/w"]
  # A flat dict of '/'-joined paths (as hub.load returns) maps to itself.
  flat = {"a/kernel": jnp.ones(2), "b/bias": jnp.ones(1)}
  assert lgc.param_paths(flat) == ["a/kernel", "b/bias"]


def test_select_errors_list_the_paths():
  params = _mlp_params()
  x, y = _data()
  with pytest.raises(ValueError, match=r"matches none.*body/bias.*head/kernel"):
    lgc.lgc(_mlp, params, x, y, select="^backbone/")
  with pytest.raises(ValueError, match="not a valid regex"):
    lgc.lgc(_mlp, params, x, y, select="head/(kernel")
  with pytest.raises(ValueError, match="matches none"):
    lgc.select_params({"step": jnp.array(3)}, None)


def test_exact_gram_matches_numpy_backprop():
  params = _mlp_params(1)
  x, _ = _data(1)
  k = 3
  directions = lgc.output_directions(D_OUT, k, seed=5)
  np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0,
                             rtol=1e-6)
  phi = lgc.gradient_features(_mlp, params, x, num_directions=k, seed=5,
                              chunk_size=7)  # 40 = 5 * 7 + 5: a padded chunk.
  assert phi.shape == (N, k * (D_IN * D_HID + D_HID + D_HID * D_OUT + D_OUT))
  expected = _numpy_gram(params, x, directions)
  got = np.asarray(phi, np.float64) @ np.asarray(phi, np.float64).T
  np.testing.assert_allclose(got, expected, rtol=1e-5,
                             atol=1e-5 * np.abs(expected).max())
  # The reference's backprop agrees with central finite differences of <u, f>.
  w1 = np.asarray(params["body"]["kernel"], np.float64)
  u = np.asarray(directions[0], np.float64)

  def proj_out(w, i):
    h = np.tanh(x[i].astype(np.float64) @ w + np.asarray(params["body"]["bias"]))
    return (h @ np.asarray(params["head"]["kernel"], np.float64)) @ u

  eps = 1e-6
  fd = np.zeros((2, w1.size))
  for i in range(2):
    for j in range(w1.size):
      step = np.zeros(w1.size)
      step[j] = eps
      step = step.reshape(w1.shape)
      fd[i, j] = (proj_out(w1 + step, i) - proj_out(w1 - step, i)) / (2 * eps)
  h = np.tanh(x[:2].astype(np.float64) @ w1 + np.asarray(params["body"]["bias"]))
  delta = (np.asarray(params["head"]["kernel"], np.float64) @ u) * (1 - h**2)
  analytic = (x[:2, :, None].astype(np.float64) * delta[:, None, :]).reshape(2, -1)
  np.testing.assert_allclose(fd, analytic, rtol=1e-6, atol=1e-8)
  # And LGC is the Pearson correlation of that Gram with Y.
  y = np.arange(N) % C
  assert lgc.lgc(_mlp, params, x, y, num_directions=k, seed=5) == pytest.approx(
      _pearson_with_labels(expected, y), abs=1e-6)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_last_linear_layer_gives_lfc_of_its_inputs(k):
  # f = W h + b with only W selected: g_i^(k) = u_k h_i^T and ||u_k|| = 1, so
  # Theta = H H^T exactly and LGC = LFC(h). Selecting b too adds 1 to Theta.
  params = _mlp_params(2)
  x, y = _data(2)
  expected = lfc.lfc(_hidden(params, x), y)
  got = lgc.lgc(_mlp, params, x, y, select=r"^head/kernel$", num_directions=k)
  assert got == pytest.approx(expected, abs=1e-6)
  with_bias = lgc.lgc(_mlp, params, x, y, select=r"^head/", num_directions=k)
  assert with_bias == pytest.approx(expected, abs=1e-6)


def test_invariances():
  params = _mlp_params(3)
  x, y = _data(3)
  base = lgc.lgc(_mlp, params, x, y)
  perm = np.array([2, 0, 1])
  assert lgc.lgc(_mlp, params, x, perm[y]) == pytest.approx(base, abs=1e-6)
  rows = np.random.default_rng(0).permutation(N)
  assert lgc.lgc(_mlp, params, x[rows], y[rows]) == pytest.approx(base,
                                                                   abs=1e-6)
  assert lgc.lgc(_mlp, params, x, y, chunk_size=40) == pytest.approx(base,
                                                                    abs=1e-6)
  # A different seed draws different directions: a different, close estimate.
  other = lgc.lgc(_mlp, params, x, y, seed=1)
  assert other != base and other == pytest.approx(base, abs=0.1)


def test_sketch_converges_to_exact():
  params = _mlp_params(4)
  x, y = _data(4)
  dims = (32, 512, 8192)
  gram_err = {d: [] for d in dims}
  lgc_err = {d: [] for d in dims}
  for seed in range(4):
    phi = lgc.gradient_features(_mlp, params, x, seed=seed)
    gram = np.asarray(phi) @ np.asarray(phi).T
    # lgc() is this correlation of these rows (checked elsewhere).
    exact = lfc.kernel_label_correlation(phi, y)
    for d in dims:
      z = lgc.gradient_features(_mlp, params, x, projection_dim=d, seed=seed)
      assert z.shape == (N, d + 1)
      lgc_err[d].append(abs(lfc.kernel_label_correlation(z, y) - exact))
      z = np.asarray(z)
      gram_err[d].append(np.linalg.norm(z @ z.T - gram) / np.linalg.norm(gram))
  rms = lambda v: float(np.sqrt(np.mean(np.square(v))))
  gram_rms = [rms(gram_err[d]) for d in dims]
  # CountSketch: error ~ 1/sqrt(d), so a factor ~4 per 16x in d.
  assert gram_rms[0] > 2 * gram_rms[1] > 4 * gram_rms[2]
  assert gram_rms[2] < 0.06
  assert rms(lgc_err[dims[-1]]) < rms(lgc_err[dims[0]])
  assert rms(lgc_err[dims[-1]]) < 5e-3


def _conv_net(params, x):
  y = jax.lax.conv_general_dilated(x, params["conv"]["kernel"], (1, 1), "SAME",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = jnp.maximum(y + params["conv"]["bias"], 0.0)
  y = jnp.mean(y, axis=(1, 2))
  return jnp.tanh(y @ params["dense"]["kernel"])


def _flat_mlp(params, x):
  x = x.reshape(x.shape[0], -1)
  return jnp.tanh(x @ params["fc1"]["kernel"]) @ params["fc2"]["kernel"]


def test_sketch_ranks_a_zoo_like_the_exact_path():
  rng = np.random.default_rng(5)
  n, c = 48, 4
  y = np.arange(n) % c
  patterns = rng.normal(size=(c, 6, 6, 3))
  images = (patterns[y] + 1.5 * rng.normal(size=(n, 6, 6, 3))).astype(
      np.float32)
  zoo = []
  for i, scale in enumerate((0.3, 1.0, 3.0)):
    r = np.random.default_rng(10 + i)
    conv = {"conv": {"kernel": scale * r.normal(size=(3, 3, 3, 8)),
                     "bias": 0.1 * r.normal(size=8)},
            "dense": {"kernel": r.normal(size=(8, 5)) / np.sqrt(8)}}
    zoo.append((_conv_net, jax.tree_util.tree_map(jnp.float32, conv)))
    mlp = {"fc1": {"kernel": scale * r.normal(size=(108, 12)) / np.sqrt(108)},
           "fc2": {"kernel": r.normal(size=(12, 5))}}
    zoo.append((_flat_mlp, jax.tree_util.tree_map(jnp.float32, mlp)))
  exact = [lgc.lgc(f, p, images, y) for f, p in zoo]
  sketched = [lgc.lgc(f, p, images, y, projection_dim=2048) for f, p in zoo]
  assert np.ptp(exact) > 0.05  # The zoo is not a tie.
  assert stats.spearmanr(exact, sketched)[0] >= 0.9
  np.testing.assert_allclose(sketched, exact, atol=0.02)


def test_degenerate_inputs():
  params = _mlp_params(6)
  x, y = _data(6)
  with pytest.raises(ValueError, match="at least 2 classes"):
    lgc.lgc(_mlp, params, x, np.zeros(N, int))
  with pytest.raises(ValueError, match="labels must be"):
    lgc.lgc(_mlp, params, x, y[:-1])
  with pytest.raises(ValueError, match="outside"):
    lgc.lgc(_mlp, params, x, y, num_classes=2)
  # A parameter the output does not depend on has zero gradients everywhere.
  unused = dict(params, unused={"kernel": jnp.ones(3)})
  with pytest.raises(ValueError, match="same for every example"):
    lgc.lgc(_mlp, unused, x, y, select="^unused/")
  # Selecting only the output bias: g_i = u_k for every example.
  with pytest.raises(ValueError, match="same for every example"):
    lgc.lgc(_mlp, params, x, y, select=r"^head/bias$")
  for bad in (0, -3, 1.5, True):
    with pytest.raises(ValueError, match="projection_dim"):
      lgc.lgc(_mlp, params, x, y, projection_dim=bad)
  with pytest.raises(ValueError, match="num_directions"):
    lgc.lgc(_mlp, params, x, y, num_directions=0)
  with pytest.raises(ValueError, match="one row per image"):
    lgc.lgc(lambda p, x: jnp.sum(_mlp(p, x)), params, x, y)


def test_score_plugin():
  params = _mlp_params(7)
  x, y = _data(7)
  feats = np.asarray(_hidden(params, x))
  inputs = scores.ScoreInputs(feats, y, feats[:10], y[:10], num_classes=C,
                              apply_fn=_mlp, params=params, train_images=x)
  result = lgc.score(inputs, select="^head/kernel$")
  assert result["score"] == pytest.approx(lfc.lfc(feats, y), abs=1e-6)
  assert result["exact"] == 1.0 and result["projection_dim"] == 0.0
  assert result["num_selected_params"] == D_HID * D_OUT
  assert result["num_selected_leaves"] == 1.0
  sketched = lgc.score(inputs, projection_dim=256)
  assert sketched["exact"] == 0.0 and sketched["projection_dim"] == 256.0
  assert sketched["num_selected_params"] == sum(
      np.size(v) for v in jax.tree_util.tree_leaves(params))
  out = scores.compute({"lgc": {"select": "^head/kernel$"}}, inputs)
  assert out["lgc"]["score"] == result["score"]
  with pytest.raises(ValueError, match="projection_dim"):
    lgc.score(inputs, projection_dim="fast")
  bare = scores.ScoreInputs(feats, y, feats[:10], y[:10], num_classes=C)
  with pytest.raises(ValueError, match="needs apply_fn, params, train_images"):
    lgc.score(bare)


def _exact_statistics(phi, y):
  """The pieces of the correlation (lfc.py's decomposition) from explicit rows, float64."""
  phi = np.asarray(phi, np.float64)
  mu = phi.mean(0)
  g = phi - mu
  a = g @ mu
  counts = np.bincount(y)
  t = np.stack([g[y == c].sum(0) for c in range(counts.size)])
  gram = g @ g.T
  return {"nc_mu_t": float(np.sum(counts * (t @ mu))), "class_sq": float(np.sum(t * t)),
          "a_sq": float(a @ a), "centred_sq": float(np.sum(g * g)),
          "mean_sq": float(mu @ mu), "frobenius": float(np.sum(gram * gram))}


def _wide_mlp(seed=0, n=160, c=5):
  """An MLP with K P = 8 x 20,544 gradient coordinates, many more than small sketches."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % c
  rng.shuffle(y)
  x = (0.7 * rng.normal(size=(c, 64))[y] + rng.normal(size=(n, 64))).astype(np.float32)
  params = {"body": {"kernel": jnp.asarray(rng.normal(size=(64, 256)) / 8, jnp.float32),
                     "bias": jnp.zeros(256)},
            "head": {"kernel": jnp.asarray(rng.normal(size=(256, 16)) / 16, jnp.float32)}}

  def apply(p, x):
    return jnp.tanh(x @ p["body"]["kernel"] + p["body"]["bias"]) @ p["head"]["kernel"]

  return apply, params, x, y


@pytest.mark.parametrize("method", ["sketch", "matrix_free"])
def test_statistics_paths_compute_the_class_terms_exactly(method):
  """Only ||G||_F^2 (and for matrix-free, tr G) is estimated; the rest is exact."""
  params = _mlp_params(8)
  x, y = _data(8)
  phi = lgc.gradient_features(_mlp, params, x)
  want = _exact_statistics(phi, y)
  prep = gradient_kernel.prepare(_mlp, params, x, select=None, num_directions=8, seed=0,  # pylint: disable=protected-access
                      chunk_size=7)  # Chunks that split classes.
  if method == "sketch":
    got = kernel_statistics.sketch_statistics(prep, y.astype(np.int64), 16)  # pylint: disable=protected-access
    assert got["centred_sq"] == pytest.approx(want["centred_sq"], rel=1e-5)
  else:
    got = kernel_statistics.matrix_free_statistics(prep, y.astype(np.int64), 12, 0)  # pylint: disable=protected-access
  for key in ("nc_mu_t", "class_sq", "a_sq", "mean_sq"):
    assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key


def test_sketch_path_is_within_one_percent_and_converges():
  apply, params, x, y = _wide_mlp()
  exact = lgc.lgc(apply, params, x, y)
  errors = {}
  for d in (1024, 65536):
    values = [lgc.lgc(apply, params, x, y, projection_dim=d, seed=s) for s in range(2)]
    errors[d] = np.abs(np.array(values) - exact) / abs(exact)
  assert np.max(errors[65536]) < 0.01
  assert np.mean(errors[65536]) < np.mean(errors[1024])


def test_sketch_frobenius_estimate_is_unbiased():
  """Averaged over sketches, the debiased ||G||_F^2 matches the exact one (the raw sketch
  overestimates it by about (sum_i ||g_i||^2)^2 / d)."""
  params = _mlp_params(9)
  x, y = _data(9)
  want = _exact_statistics(lgc.gradient_features(_mlp, params, x), y)["frobenius"]
  got = []
  for seed in range(24):
    prep = gradient_kernel.prepare(_mlp, params, x, select=None, num_directions=8, seed=seed,  # pylint: disable=protected-access
                        chunk_size=16)
    got.append(kernel_statistics.sketch_statistics(prep, y.astype(np.int64), 64)["frobenius"])  # pylint: disable=protected-access
  got = np.array(got)
  assert abs(got.mean() - want) < 3 * got.std() / np.sqrt(len(got)) + 1e-3 * want


def test_matrix_free_is_exact_when_the_probes_span_the_kernel():
  """Hutch++ takes the part of tr(G^2) in the span of G Z exactly: with only the head
  selected, G is h h^T centred (rank <= 7), so 8 range probes make it exact."""
  params = _mlp_params(10)
  x, y = _data(10)
  exact = lgc.lgc(_mlp, params, x, y, select="^head/kernel$")
  free = lgc.lgc(_mlp, params, x, y, select="^head/kernel$", method="matrix_free",
                 num_probes=24)
  assert free == pytest.approx(exact, rel=1e-4)


def test_matrix_free_converges_with_probes():
  apply, params, x, y = _wide_mlp(1)
  exact = lgc.lgc(apply, params, x, y)
  err = lambda p: np.mean([abs(lgc.lgc(apply, params, x, y, method="matrix_free",
                                       num_probes=p, seed=s) - exact) for s in range(2)])
  few, many = err(6), err(96)
  assert many < few and many < 0.02 * abs(exact)


def test_method_option_errors():
  params = _mlp_params(11)
  x, y = _data(11)
  with pytest.raises(ValueError, match="Unknown method 'fast'.*exact, sketch, matrix_free"):
    lgc.lgc(_mlp, params, x, y, method="fast")
  with pytest.raises(ValueError, match="needs projection_dim"):
    lgc.lgc(_mlp, params, x, y, method="sketch")
  with pytest.raises(ValueError, match="only used by method='sketch'"):
    lgc.lgc(_mlp, params, x, y, method="matrix_free", projection_dim=64)
  with pytest.raises(ValueError, match="num_probes"):
    lgc.lgc(_mlp, params, x, y, method="matrix_free", num_probes=0)
  for method, extra in (("sketch", {"projection_dim": 64}), ("matrix_free", {})):
    with pytest.raises(ValueError, match="same for every example"):
      lgc.lgc(_mlp, params, x, y, select=r"^head/bias$", method=method, **extra)
