"""Tests for hub.load: SavedModels written here, run as JAX functions via tf2jax."""

import json
import os
import warnings

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


# --- Batch norm: training mode, both formats ------------------------------------------------

BN_SIZE = 8  # Fixed input size of the batch-norm models.


def _bn_stats(rng, n):
  """Non-trivial batch-norm state, so inference and training outputs differ."""
  return dict(gamma=1 + 0.5 * rng.standard_normal(n), beta=0.3 * rng.standard_normal(n),
              moving_mean=rng.standard_normal(n), moving_variance=rng.uniform(0.5, 2.0, n))


def _keras_bn_net():
  """tf-keras conv -> BatchNormalization -> ReLU -> mean pool: [N, 8, 8, 3] -> [N, 4]."""
  import tf_keras  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(11)
  net = tf_keras.Sequential([
      tf_keras.layers.Conv2D(4, 3, padding="same", use_bias=False),
      tf_keras.layers.BatchNormalization(momentum=0.9),
      tf_keras.layers.ReLU(),
      tf_keras.layers.GlobalAveragePooling2D()])
  net.build((None, BN_SIZE, BN_SIZE, 3))
  conv, bn = net.layers[:2]
  conv.kernel.assign(rng.standard_normal(conv.kernel.shape).astype(np.float32))
  for k, v in _bn_stats(rng, 4).items():
    getattr(bn, k).assign(v.astype(np.float32))
  return net


class BNModule(tf.Module):
  """The same net under a tf.function traced in both modes: one flat graph per mode."""

  def __init__(self):
    super().__init__()
    self.net = _keras_bn_net()

  @tf.function
  def __call__(self, images, training=False):
    return self.net(images, training=training)


@pytest.fixture(scope="module", params=["keras", "module"])
def tf2_bn(request, tmp_path_factory):
  """A TF2 SavedModel with batch norm: a Keras model (each layer a nested function)
  or a tf.Module (layers inlined in `__call__`)."""
  path = str(tmp_path_factory.mktemp("hub") / f"tf2_bn_{request.param}")
  if request.param == "keras":
    tf.saved_model.save(_keras_bn_net(), path)
  else:
    module = BNModule()
    spec = tf.TensorSpec([None, BN_SIZE, BN_SIZE, 3], tf.float32)
    for training in (False, True):
      module.__call__.get_concrete_function(spec, training=training)
    tf.saved_model.save(module, path)
  return path, hub.load(path)


def _tf1_bn_graph(training, values):
  """TF1 graph: conv -> batch_normalization (UPDATE_OPS when training) -> ReLU -> pool.

  Returns (graph, images, pre_logits [N, 1, 1, 4], logits [N, 3]).
  """
  # tf.compat.v1.layers is gone with Keras 3; tf-keras keeps the same TF1 layers.
  # pylint: disable-next=import-outside-toplevel
  from tf_keras.api._v1.keras.__internal__.legacy import layers
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    images = v1.placeholder(tf.float32, [None, BN_SIZE, BN_SIZE, 3], name="images")
    # TF1 Hub modules are built with resource variables (hub.create_module_spec).
    with v1.variable_scope("module", use_resource=True):
      kernel = v1.get_variable("conv/kernel", initializer=values["kernel"])
      x = tf.nn.conv2d(images, kernel, 1, "SAME")
      init = {f"{k}_initializer": v1.constant_initializer(values[k])
              for k in ("gamma", "beta", "moving_mean", "moving_variance")}
      with warnings.catch_warnings():  # The TF1 layer is deprecated: that is the point.
        warnings.simplefilter("ignore", UserWarning)
        x = layers.batch_normalization(x, training=training, momentum=0.9, name="bn", **init)
      pre_logits = tf.reduce_mean(tf.nn.relu(x), [1, 2], keepdims=True)
      head = v1.get_variable("head/kernel", initializer=values["head"])
      logits = tf.matmul(tf.squeeze(pre_logits, [1, 2]), head)
  return graph, images, pre_logits, logits


@pytest.fixture(scope="module")
def tf1_bn(tmp_path_factory):
  """Legacy TF1 Hub format with batch norm: MetaGraphs for tags [] and ["train"]."""
  path = str(tmp_path_factory.mktemp("hub") / "tf1_bn")
  rng = np.random.default_rng(12)
  values = {k: v.astype(np.float32) for k, v in _bn_stats(rng, 4).items()}
  values["kernel"] = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
  values["head"] = rng.standard_normal((4, 3)).astype(np.float32)
  builder = tf.compat.v1.saved_model.Builder(path)
  predict = tf.compat.v1.saved_model.predict_signature_def
  for tags in ([], ["train"]):
    graph, images, pre_logits, logits = _tf1_bn_graph(bool(tags), values)
    with graph.as_default(), tf.compat.v1.Session() as sess:
      signatures = {
          "default": predict({"images": images},
                             {"default": logits, "pre_logits": pre_logits}),
          "image_feature_vector": predict({"images": images},
                                          {"default": tf.squeeze(pre_logits, [1, 2])}),
      }
      sess.run(tf.compat.v1.global_variables_initializer())
      if tags:
        builder.add_meta_graph(tags, signature_def_map=signatures)
      else:
        builder.add_meta_graph_and_variables(sess, tags, signature_def_map=signatures)
  builder.save()
  # tensorflow_hub 0.16 cannot write TF1 modules; it only checks this file exists.
  with open(os.path.join(path, "tfhub_module.pb"), "wb") as f:
    f.write(b"\x08\x03")
  return path, hub.load(path, signature="default", output_key="pre_logits")


def _tf1_run(path, tags, x):
  """Runs a TF1 module's 'default' signature (and UPDATE_OPS) in a Session.

  Returns (outputs, variables after the run).
  """
  v1 = tf.compat.v1
  with tf.Graph().as_default() as graph, v1.Session() as sess:
    meta = v1.saved_model.loader.load(sess, tags, path)
    sig = meta.signature_def["default"]
    fetches = {k: graph.get_tensor_by_name(v.name) for k, v in sig.outputs.items()}
    feed = {graph.get_tensor_by_name(sig.inputs["images"].name): x}
    updates = graph.get_collection(v1.GraphKeys.UPDATE_OPS)
    outputs = sess.run({"out": fetches, "updates": updates}, feed)["out"]
    variables = sess.run({v.op.name: v for v in v1.global_variables()})
  return outputs, variables


def _tf2_run(path, x):
  """The restored TF2 object in both modes; returns (inference, training, variables)."""
  restored = tf.saved_model.load(path)
  inference = restored(tf.constant(x), training=False).numpy()
  training = restored(tf.constant(x), training=True).numpy()  # Updates its variables.
  variables = {v.name.split(":")[0]: v.numpy()
               for cf in restored.__call__.concrete_functions for v in cf.variables}
  return inference, training, variables


def _check_moving_stats(model, new_params, expected):
  """new_params == TF's variables after one step; the moving statistics moved."""
  assert set(new_params) == set(model.params)
  moved = [k for k in model.params if "moving" in k]
  assert len(moved) == 2
  for k in model.params:
    assert _rel_err(new_params[k], expected[k]) < 1e-5, k
  for k in moved:
    assert _rel_err(new_params[k], model.params[k]) > 1e-2, k


def test_tf2_batch_norm_both_modes_match_tf(tf2_bn):
  path, model = tf2_bn
  x = _images(6, BN_SIZE, seed=13)
  inference, training, variables = _tf2_run(path, x)
  assert model.has_training_mode
  features = model.apply(model.params, x)
  train_features, new_params = model.apply_train(model.params, x)
  assert features.shape == train_features.shape == (6, 4)
  assert _rel_err(features, inference) < 1e-5
  assert _rel_err(train_features, training) < 1e-5
  assert _rel_err(train_features, features) > 1e-2  # Batch statistics differ.
  _check_moving_stats(model, new_params, variables)


def test_tf1_batch_norm_both_modes_match_tf(tf1_bn):
  path, model = tf1_bn
  x = _images(6, BN_SIZE, seed=14)
  inference, _ = _tf1_run(path, [], x)
  training, variables = _tf1_run(path, ["train"], x)
  assert model.has_training_mode
  features = model.apply(model.params, x)
  train_features, new_params = model.apply_train(model.params, x)
  # pre_logits is [N, 1, 1, 4]: squeezed in both modes.
  assert features.shape == train_features.shape == (6, 4)
  assert _rel_err(features, inference["pre_logits"][:, 0, 0]) < 1e-5
  assert _rel_err(train_features, training["pre_logits"][:, 0, 0]) < 1e-5
  assert _rel_err(train_features, features) > 1e-2
  _check_moving_stats(model, new_params, variables)
  # The params dict serves both modes: the training graph's names are the inference graph's.
  assert sorted(model.params) == sorted(variables)
  # Closed form: a second step on the same batch (momentum 0.9) moves each statistic m
  # from m1 = 0.9 m0 + 0.1 b to m2 = 0.9 m1 + 0.1 b = 1.9 m1 - 0.9 m0.
  _, twice = model.apply_train(new_params, x)
  for k in ("module/bn/moving_mean", "module/bn/moving_variance"):
    expected = 1.9 * np.asarray(new_params[k]) - 0.9 * np.asarray(model.params[k])
    np.testing.assert_allclose(twice[k], expected, rtol=1e-5, atol=1e-6)


def test_tf1_default_preference_and_logits(tf1_bn):
  path, _ = tf1_bn
  model = hub.load(path)
  x = _images(3, BN_SIZE, seed=15)
  inference, _ = _tf1_run(path, [], x)
  # 'image_feature_vector' comes first; it has a training version too.
  assert model.has_training_mode and model.feature_dim == 4
  assert _rel_err(model.apply(model.params, x), inference["pre_logits"][:, 0, 0]) < 1e-5
  assert model.logits is None  # No 'logits' / 'image_classification' signature.
  logits = hub.load(path, signature="default", output_key="default")
  assert logits.feature_dim == 3
  assert _rel_err(logits.apply(logits.params, x), inference["default"]) < 1e-5


def _check_jvp_vjp(f, params, seed):
  """<u, J v> == <J^T u, v> for random v (params) and u (outputs)."""
  rng = np.random.default_rng(seed)
  tangent = {k: jnp.asarray(rng.standard_normal(v.shape), v.dtype) for k, v in params.items()}
  out, jvp_out = jax.jvp(f, (params,), (tangent,))
  cotangent = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
  _, vjp_fn = jax.vjp(f, params)
  (vjp_out,) = vjp_fn(cotangent)
  lhs = float(jnp.vdot(cotangent, jvp_out))
  rhs = float(sum(jnp.vdot(vjp_out[k], tangent[k]) for k in tangent))
  assert abs(lhs) > 1e-3
  np.testing.assert_allclose(lhs, rhs, rtol=1e-4)
  return vjp_out


def _check_jvp_vjp_both_modes(model):
  x = _images(4, BN_SIZE, seed=16)
  _check_jvp_vjp(lambda p: model.apply(p, x), model.params, 17)
  grads = _check_jvp_vjp(lambda p: model.apply_train(p, x)[0], model.params, 18)
  # Training-mode features do not depend on the moving statistics.
  for k in model.params:
    if "moving" in k:
      assert float(jnp.abs(grads[k]).max()) == 0.0, k


def test_tf1_jvp_vjp_both_modes(tf1_bn):
  _check_jvp_vjp_both_modes(tf1_bn[1])


def test_tf2_jvp_vjp_both_modes(tf2_bn):
  _check_jvp_vjp_both_modes(tf2_bn[1])


class Dropout(tf.Module):
  """Dropout in training mode only: apply_train needs a PRNG key."""

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(np.ones((3, 64), np.float32), name="w")

  @tf.function
  def __call__(self, images, training=False):
    x = tf.matmul(tf.reduce_mean(images, [1, 2]), self.w)
    return tf.nn.dropout(x, 0.5) if training else x


def test_training_mode_random_ops_take_rng(tmp_path):
  module = Dropout()
  for training in (False, True):
    module.__call__.get_concrete_function(tf.TensorSpec([None, 4, 4, 3], tf.float32),
                                          training=training)
  path = str(tmp_path / "dropout")
  tf.saved_model.save(module, path)
  model = hub.load(path)
  x = _images(2, 4, seed=21)
  assert model.has_training_mode
  features = np.asarray(model.apply(model.params, x))
  a, _ = model.apply_train(model.params, x, rng=jax.random.PRNGKey(0))
  b, _ = model.apply_train(model.params, x, rng=jax.random.PRNGKey(1))
  a, b = np.asarray(a), np.asarray(b)
  kept = a != 0
  assert 0 < kept.mean() < 1 and not np.array_equal(kept, b != 0)
  np.testing.assert_allclose(a[kept], 2 * features[kept], rtol=1e-6)  # Scaled by 1 / 0.5.
  with pytest.raises(ValueError, match="dropout.*random ops.*rng=key"):
    model.apply_train(model.params, x)


def test_models_without_training_mode(four_dim_export, flax_export):
  for model in (four_dim_export[2], flax_export[3]):
    size = model.input_size
    x = _images(2, size, seed=19)
    assert not model.has_training_mode
    features, params = model.apply_train(model.params, x)
    np.testing.assert_allclose(features, model.apply(model.params, x), rtol=1e-6)
    assert params is model.params


# --- Choosing the function; input sizes ----------------------------------------------------


def test_unknown_signature_or_output(tf1_bn):
  path, _ = tf1_bn
  with pytest.raises(ValueError, match=r"tf1_bn.*no signature 'nope'.*"
                     r"default, image_feature_vector"):
    hub.load(path, signature="nope")
  with pytest.raises(ValueError, match=r"tf1_bn.*signature 'default' has no output 'nope'.*"
                     r"default, pre_logits"):
    hub.load(path, signature="default", output_key="nope")
  with pytest.raises(ValueError, match=r"tf1_bn.*no feature function with output 'nope'.*"
                     r"signature 'image_feature_vector': default; "
                     r"signature 'default': default, pre_logits"):
    hub.load(path, output_key="nope")


def test_ambiguous_signature_outputs(tf1_bn):
  path, _ = tf1_bn
  model = hub.load(path, signature="image_feature_vector")  # A single output: no key needed.
  assert model.feature_dim == 4
  # 'default' has an output named 'default', so the preference order picks it.
  assert hub.load(path, signature="default").feature_dim == 3


def test_input_size_mismatch_at_load(tf1_bn, four_dim_export):
  path, _ = tf1_bn
  with pytest.raises(ValueError, match=r"expects 224x224 images.*signature 'default' "
                     r"takes 8x8 images"):
    hub.load(path, signature="default", input_size=224)
  assert hub.load(path, input_size=BN_SIZE).input_size == BN_SIZE
  with pytest.raises(ValueError, match=r"four_dim.*expects 32x32.*`__call__` takes 16x16"):
    hub.load(four_dim_export[1], input_size=32)


def test_input_size_free_takes_the_expected_size(tmp_path):
  kernel = tf.Variable(np.ones((3, 2), np.float32), name="w")
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)

  @tf.function(input_signature=[spec])
  def serve(images):
    return {"features": tf.matmul(tf.reduce_mean(images, [1, 2]), kernel)}

  module = tf.Module()
  module.kernel = kernel
  path = str(tmp_path / "free")
  tf.saved_model.save(module, path, signatures={"serving_default": serve})
  assert hub.load(path).input_size is None
  assert hub.load(path, input_size=40).input_size == 40


def _check_wrong_image_size(model):
  for fn in (model.apply, model.apply_train):
    with pytest.raises(ValueError, match=rf"Model '{model.name}'.*takes 8x8 images.*got 10x10"):
      fn(model.params, _images(2, 10))


def test_tf1_wrong_image_size_at_call(tf1_bn):
  _check_wrong_image_size(tf1_bn[1])


def test_tf2_wrong_image_size_at_call(tf2_bn):
  _check_wrong_image_size(tf2_bn[1])


# --- Registered Python (Flax) models -------------------------------------------------------


def _flax_bn_model(name="tiny_bn"):
  """A Flax conv + BatchNorm net through from_flax, with a training mode."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x, train):
      x = nn.Conv(5, (3, 3))(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
      return jnp.mean(nn.relu(x), axis=(1, 2), keepdims=True)  # [N, 1, 1, 5].

  net = Net()
  variables = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 3)), train=False)

  def apply_train(v, x):
    out, updates = net.apply(v, x, train=True, mutable=["batch_stats"])
    return out, {**v, **updates}

  return net, hub.from_flax(
      lambda v, x: net.apply(v, x, train=False), variables, name=name, input_size=12,
      value_range=(-1.0, 1.0), logits_fn=lambda v, x: net.apply(v, x, train=False)[:, 0, 0, :2],
      apply_train_fn=apply_train)


def test_from_flax():
  net, model = _flax_bn_model()
  x = _images(3, 12, seed=20)
  assert model.name == "tiny_bn" and model.input_size == 12
  assert model.feature_dim == 5 and model.num_source_classes == 2
  assert model.value_range == (-1.0, 1.0) and model.has_training_mode
  features = model.apply(model.params, x)
  assert features.shape == (3, 5)  # Squeezed.
  np.testing.assert_allclose(features, net.apply(model.params, x, train=False)[:, 0, 0],
                             rtol=1e-6)
  train_features, new = model.apply_train(model.params, x)
  assert train_features.shape == (3, 5)
  stats = new["batch_stats"]["BatchNorm_0"]["mean"]
  assert float(jnp.abs(stats - model.params["batch_stats"]["BatchNorm_0"]["mean"]).max()) > 0
  plain = hub.from_flax(lambda v, x: net.apply(v, x, train=False), model.params, name="p",
                        input_size=None)
  assert not plain.has_training_mode and plain.logits is None
  assert plain.apply_train(plain.params, x)[1] is plain.params


def test_register(monkeypatch, tmp_path):
  monkeypatch.setattr(hub, "_REGISTRY", {})
  calls = []

  def factory():
    calls.append(1)
    return _flax_bn_model()[1]

  hub.register("flax:tiny_bn", factory)
  model = hub.load("flax:tiny_bn")
  assert calls == [1] and model.handle == "flax:tiny_bn" and model.name == "tiny_bn"
  assert hub.load("flax:tiny_bn", input_size=12).feature_dim == 5
  with pytest.raises(ValueError, match=r"flax:tiny_bn.*expects 224x224.*takes 12x12"):
    hub.load("flax:tiny_bn", input_size=224)
  with pytest.raises(ValueError, match=r"flax:tiny_bn.*no signatures"):
    hub.load("flax:tiny_bn", signature="default")
  # Unknown handles take the normal path, whose error lists the registered ones.
  with pytest.raises(FileNotFoundError, match=r"flax:nope.*registered.*flax:tiny_bn"):
    hub.load("flax:nope")
  hub.register("flax:bad", lambda: "not a model")
  with pytest.raises(TypeError, match="flax:bad.*not a HubModel"):
    hub.load("flax:bad")
  with pytest.raises(TypeError, match="callable"):
    hub.register("flax:x", None)
