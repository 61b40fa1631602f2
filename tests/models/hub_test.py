"""Tests for hub.load: SavedModels written here, run as JAX functions via tf2jax."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub

from model_search.models import export
from model_search.models import hub
from model_search.models import nets

MIXER = dict(patch=8, hidden=16, tokens_mlp=8, channels_mlp=24, depth=1)


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


def _images(n, size, seed=0):
  return np.random.default_rng(seed).random((n, size, size, 3)).astype(
      np.float32)


@pytest.fixture(scope="module")
def flax_export(tmp_path_factory):
  """A Mixer with random params (smooth: good for finite differences)."""
  net = nets.get_net("mixer", 4, **MIXER)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[0]) + 0.1)
      .astype(np.float32), shapes)
  path = export.export_savedmodel(
      "mixer", MIXER, params, tmp_path_factory.mktemp("hub") / "mixer",
      metadata={"name": "tiny_mixer", "value_range": [-1.0, 1.0]})
  return net, params, path, hub.load(path)


class FourDim(tf.Module):
  """Hand-written feature extractor: fixed 16x16 input, [N, 1, 1, 6] output."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(1)
    self.conv = tf.Variable(rng.standard_normal((3, 3, 3, 5)).astype(
        np.float32), name="conv/kernel")
    self.dense = tf.Variable(rng.standard_normal((5, 6)).astype(np.float32),
                             name="dense/kernel")

  @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
  def __call__(self, images):
    x = tf.tanh(tf.nn.conv2d(images, self.conv, 2, "SAME"))
    x = tf.reduce_mean(x, [1, 2], keepdims=True)
    return tf.tanh(tf.einsum("nhwc,cd->nhwd", x, self.dense))


@pytest.fixture(scope="module")
def four_dim_export(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hub") / "four_dim")
  module = FourDim()
  tf.saved_model.save(module, path)
  return module, path, hub.load(path)


def test_exported_flax_net_matches_tf_and_flax(flax_export):
  net, params, path, model = flax_export
  x = _images(5, 32)
  loaded = tf.saved_model.load(path)
  features = model.apply(model.params, x)
  logits = model.logits(model.params, x)
  assert features.shape == (5, 16) and logits.shape == (5, 4)
  assert _rel_err(features, loaded(x).numpy()) < 1e-5
  assert _rel_err(logits, loaded.logits(x).numpy()) < 1e-5
  flax_features, flax_logits = jax.jit(net.apply)(params, x)
  assert _rel_err(features, flax_features) < 1e-5
  assert _rel_err(logits, flax_logits) < 1e-5
  # Params are keyed by the Flax paths.
  flat = export._flatten(params)  # pylint: disable=protected-access
  assert set(model.params) == set(flat)


def test_exported_flax_net_attributes(flax_export):
  _, params, path, model = flax_export
  assert model.name == "tiny_mixer"
  assert model.input_size == 32
  assert model.feature_dim == 16
  assert model.num_source_classes == 4
  assert model.value_range == (-1.0, 1.0)
  assert model.metadata["architecture"] == "mixer"
  assert model.metadata["num_params"] == nets.count_params(params)
  assert model.handle == path


def test_jit_and_gradients(flax_export):
  _, _, _, model = flax_export
  x = _images(3, 32, seed=1)
  np.testing.assert_allclose(jax.jit(model.apply)(model.params, x),
                             model.apply(model.params, x), rtol=1e-6,
                             atol=1e-6)

  def loss(p):
    return jnp.mean(jnp.tanh(model.logits(p, x))) + jnp.mean(
        model.apply(p, x) ** 2)

  grads = jax.jit(jax.grad(loss))(model.params)
  assert set(grads) == set(model.params)
  for k, g in grads.items():
    assert np.isfinite(np.asarray(g)).all(), k
  assert max(float(jnp.abs(g).max()) for g in grads.values()) > 0

  # Central finite difference on the entry with the largest gradient in an
  # early layer (the loss is smooth: LayerNorm, GELU, tanh).
  name = "block0/token_mlp_in/kernel"
  idx = np.unravel_index(np.argmax(np.abs(grads[name])), grads[name].shape)
  eps = 1e-2

  def shifted(delta):
    p = dict(model.params)
    p[name] = p[name].at[idx].add(delta)
    return float(loss(p))

  fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
  np.testing.assert_allclose(fd, float(grads[name][idx]), rtol=2e-2)


def test_jvp_vjp(flax_export):
  _, _, _, model = flax_export
  x = _images(2, 32, seed=2)

  def f(p):
    return model.apply(p, x)

  rng = np.random.default_rng(3)
  tangent = {k: jnp.asarray(rng.standard_normal(v.shape), v.dtype)
             for k, v in model.params.items()}
  out, jvp_out = jax.jvp(f, (model.params,), (tangent,))
  assert out.shape == jvp_out.shape == (2, 16)
  cotangent = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
  out2, vjp_fn = jax.vjp(f, model.params)
  (vjp_out,) = vjp_fn(cotangent)
  np.testing.assert_allclose(out, out2, rtol=1e-6)
  # <u, J t> == <J^T u, t>.
  lhs = float(jnp.vdot(cotangent, jvp_out))
  rhs = float(sum(jnp.vdot(vjp_out[k], tangent[k]) for k in tangent))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)


def test_hand_written_module(four_dim_export):
  module, _, model = four_dim_export
  x = _images(4, 16, seed=4)
  expected = module(x).numpy()
  assert expected.shape == (4, 1, 1, 6)
  features = model.apply(model.params, x)
  assert features.shape == (4, 6)  # Squeezed.
  assert _rel_err(features, expected[:, 0, 0]) < 1e-5
  assert model.input_size == 16
  assert model.feature_dim == 6
  assert model.logits is None and model.num_source_classes is None
  assert model.metadata == {} and model.value_range == (0.0, 1.0)
  assert model.name == "four_dim"
  assert sorted(model.params) == ["conv/kernel", "dense/kernel"]
  g = jax.grad(lambda p: jnp.sum(model.apply(p, x)))(model.params)
  assert all(float(jnp.abs(v).sum()) > 0 for v in g.values())


def test_signature_only_and_metadata_input_size(tmp_path):
  """No __call__, a free input size: signature outputs, size from metadata."""
  kernel = tf.Variable(np.random.default_rng(5).standard_normal((3, 7)).astype(
      np.float32), name="w")
  spec = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")

  @tf.function(input_signature=[spec])
  def serve(images):
    features = tf.matmul(tf.reduce_mean(images, [1, 2]), kernel)
    return {"feature_vector": features, "other": features[:, :2]}

  module = tf.Module()
  module.kernel = kernel
  path = str(tmp_path / "sig")
  tf.saved_model.save(module, path, signatures={
      "serving_default": serve.get_concrete_function()})
  with open(os.path.join(path, "assets", hub.METADATA_FILE), "w") as f:
    json.dump({"input_size": 20}, f)
  model = hub.load(path)
  assert model.input_size == 20
  assert model.feature_dim == 7
  x = _images(3, 20, seed=6)
  assert _rel_err(model.apply(model.params, x),
                  serve(tf.constant(x))["feature_vector"].numpy()) < 1e-5


def test_tf1_hub_format(tmp_path):
  """Legacy TF1 Hub format: 'image_feature_vector', 'image_classification'."""
  path = str(tmp_path / "tf1")
  rng = np.random.default_rng(7)
  w_np = rng.standard_normal((3, 5)).astype(np.float32)
  h_np = rng.standard_normal((5, 2)).astype(np.float32)
  with tf.Graph().as_default():
    images = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3])
    w = tf.compat.v1.get_variable("module/w", initializer=w_np,
                                  use_resource=True)
    h = tf.compat.v1.get_variable("module/head", initializer=h_np,
                                  use_resource=True)
    pooled = tf.matmul(tf.reduce_mean(images, [1, 2]), w)
    features = tf.reshape(pooled, [-1, 1, 1, 5])
    logits = tf.matmul(pooled, h)
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      builder = tf.compat.v1.saved_model.Builder(path)
      predict = tf.compat.v1.saved_model.predict_signature_def
      builder.add_meta_graph_and_variables(sess, [], signature_def_map={
          "image_feature_vector": predict({"images": images},
                                          {"default": features}),
          "image_classification": predict({"images": images},
                                          {"default": logits}),
      })
      builder.save()
  with open(os.path.join(path, "tfhub_module.pb"), "wb") as f:
    f.write(b"\x08\x03")
  model = hub.load(path)
  x = _images(4, 8, seed=8)
  expected = x.mean(axis=(1, 2)) @ w_np
  assert _rel_err(model.apply(model.params, x), expected) < 1e-5
  assert _rel_err(model.logits(model.params, x), expected @ h_np) < 1e-5
  assert model.input_size == 8 and model.feature_dim == 5
  assert model.num_source_classes == 2


def test_missing_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    hub.load(str(tmp_path / "nope"))


def test_not_a_saved_model(tmp_path):
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(ValueError, match="is not a SavedModel"):
    hub.load(str(tmp_path))


def test_saved_model_without_usable_function(tmp_path):
  module = tf.Module()
  module.v = tf.Variable(2.0)
  module.double = tf.function(lambda x: x * module.v,
                              input_signature=[tf.TensorSpec([], tf.float32)])
  path = str(tmp_path / "scalar")
  tf.saved_model.save(module, path, signatures={
      "serving_default": module.double.get_concrete_function()})
  with pytest.raises(ValueError, match="scalar.*no usable feature function"):
    hub.load(path)


def test_unresolvable_url(monkeypatch):
  def fail(handle):
    raise OSError(f"cannot reach {handle}")

  monkeypatch.setattr(tensorflow_hub, "resolve", fail)
  handle = "https://tfhub.dev/google/nothing/1"
  with pytest.raises(ValueError, match="Could not resolve hub handle"):
    hub.load(handle)
