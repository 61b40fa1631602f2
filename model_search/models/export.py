"""Export Flax nets from `nets.py` as hub-format TF2 SavedModels, via a TensorFlow mirror.

jax2tf is not used: it emits XlaCallModule ops that tf2jax cannot convert
back. Instead each architecture has a hand-written TensorFlow twin (plain
tf.nn ops over tf.Variables named by the Flax parameter paths) that reproduces
the Flax computation op for op: same padding, same GroupNorm / LayerNorm
statistics (E[x^2] - E[x]^2, clipped at 0, epsilon `nets.NORM_EPSILON`), same
tanh-GELU. Flax -> mirror -> SavedModel -> `hub.load` (tf2jax) is then exact up
to float rounding, and `hub.load` returns params keyed by the Flax paths
('stage0_conv0/kernel', 'block1/token_mlp_in/bias', ...).

The SavedModel has `__call__(images) -> features [N, D]`,
`logits(images) -> [N, C]`, the signatures 'serving_default' (outputs
'default' and 'pre_logits', both the features) and 'logits' (output
'logits'), and `assets/model_search.json` with metadata.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Mapping

import jax
import numpy as np
import tensorflow as tf

from model_search.models import nets

METADATA_FILE = "model_search.json"  # Inside the SavedModel's assets/.


def _named_leaves(params: Any) -> dict[str, Any]:
  """{'/'-joined Flax path: leaf} for a params pytree."""
  params = nets._unbox(params)  # pylint: disable=protected-access
  return {"/".join(str(getattr(k, "key", k)) for k in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


def _flatten(params: Any) -> dict[str, np.ndarray]:
  """{'/'-joined Flax path: float32 array} for a params pytree."""
  return {k: np.asarray(v, np.float32)
          for k, v in _named_leaves(params).items()}


def _build_net(arch: str, arch_kwargs: Mapping[str, Any],
               flat: Mapping[str, np.ndarray]):
  """The Flax module; num_classes defaults to the head's width."""
  kwargs = dict(arch_kwargs)
  num_classes = kwargs.pop("num_classes", None)
  if num_classes is None:
    if "head/kernel" not in flat:
      raise ValueError("params have no 'head/kernel' and arch_kwargs no "
                       "'num_classes'; cannot tell the number of classes")
    num_classes = flat["head/kernel"].shape[-1]
  return nets.get_net(arch, int(num_classes), **kwargs)


def _check_params(net, flat: Mapping[str, np.ndarray], input_size: int,
                  description: str):
  """Raises ValueError unless flat has exactly the names and shapes of net."""
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, input_size, input_size, 3),
                                               np.float32))
  expected = {k: tuple(v.shape) for k, v in _named_leaves(shapes).items()}
  got = {k: tuple(v.shape) for k, v in flat.items()}
  if expected != got:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(f"{k}: {got[k]} != {expected[k]}"
                   for k in set(got) & set(expected) if got[k] != expected[k])
    raise ValueError(
        f"params do not match {description}; missing: {missing}, "
        f"unexpected: {extra}, wrong shapes (got != expected): {wrong}")


# TensorFlow twins of the Flax layers. `v` maps Flax path -> tf.Variable.


def _conv(x, v, name, stride=1, padding="SAME", bias=True):
  y = tf.nn.conv2d(x, v[f"{name}/kernel"], strides=stride, padding=padding)
  return y + v[f"{name}/bias"] if bias else y


def _dense(x, v, name):
  """Dense on the last axis; reshapes to 2-D so the graph is a plain MatMul."""
  kernel = v[f"{name}/kernel"]
  if x.shape.rank == 2:
    return tf.matmul(x, kernel) + v[f"{name}/bias"]
  inner = list(x.shape[1:-1])
  y = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), kernel) + v[f"{name}/bias"]
  return tf.reshape(y, [-1] + inner + [kernel.shape[-1]])


def _normalize(x, mean_axes, scale, bias):
  """Flax's fast-variance norm: (x - mu) * (rsqrt(var + eps) * scale) + bias."""
  mu = tf.reduce_mean(x, mean_axes, keepdims=True)
  mu2 = tf.reduce_mean(tf.square(x), mean_axes, keepdims=True)
  var = tf.maximum(0.0, mu2 - tf.square(mu))
  return (x - mu) * (tf.math.rsqrt(var + nets.NORM_EPSILON) * scale) + bias


def _group_norm(x, v, name):
  _, h, w, c = x.shape
  g = nets.num_groups(c)
  xg = tf.reshape(x, [-1, h, w, g, c // g])
  y = _normalize(xg, [1, 2, 4], tf.reshape(v[f"{name}/scale"], [g, c // g]),
                 tf.reshape(v[f"{name}/bias"], [g, c // g]))
  return tf.reshape(y, [-1, h, w, c])


def _layer_norm(x, v, name):
  return _normalize(x, [-1], v[f"{name}/scale"], v[f"{name}/bias"])


def _gelu(x):
  """Same formula and constants as `nets.gelu`."""
  c = np.float32(np.sqrt(2.0 / np.pi))
  cubic = np.float32(0.044715) * (x * x * x)
  return x * (0.5 * (1.0 + tf.tanh(c * (x + cubic))))


def _cnn_features(net: nets.CNN, v, x):
  for i, _ in enumerate(net.widths):
    s0 = net.stem_stride if i == 0 else 1
    x = tf.nn.relu(_conv(x, v, f"stage{i}_conv0", stride=s0))
    s1 = 2 if net.downsample == "stride" else 1
    x = tf.nn.relu(_conv(x, v, f"stage{i}_conv1", stride=s1))
    if net.downsample == "max":
      x = tf.nn.max_pool2d(x, 2, 2, "VALID")
  x = tf.reduce_mean(x, [1, 2])
  if net.feature_dim is not None:
    x = tf.nn.relu(_dense(x, v, "proj"))
  return x


def _resnet_features(net: nets.ResNet, v, x):
  x = _conv(x, v, "stem", stride=net.stem_stride, bias=False)
  for i, (width, n) in enumerate(zip(net.widths, net.blocks)):
    for j in range(n):
      name = f"stage{i}_block{j}"
      stride = 2 if (i > 0 and j == 0) else 1
      y = tf.nn.relu(_group_norm(x, v, f"{name}/norm1"))
      shortcut = x
      if stride != 1 or x.shape[-1] != width:
        shortcut = _conv(y, v, f"{name}/proj", stride=stride, bias=False)
      y = _conv(y, v, f"{name}/conv1", stride=stride, bias=False)
      y = tf.nn.relu(_group_norm(y, v, f"{name}/norm2"))
      y = _conv(y, v, f"{name}/conv2", bias=False)
      x = y + shortcut
  x = tf.nn.relu(_group_norm(x, v, "norm"))
  return tf.reduce_mean(x, [1, 2])


def _mixer_features(net: nets.Mixer, v, x):
  x = _conv(x, v, "stem", stride=net.patch, padding="VALID")
  x = tf.reshape(x, [-1, x.shape[1] * x.shape[2], net.hidden])
  for i in range(net.depth):
    name = f"block{i}"
    y = tf.transpose(_layer_norm(x, v, f"{name}/token_norm"), [0, 2, 1])
    y = _gelu(_dense(y, v, f"{name}/token_mlp_in"))
    y = _dense(y, v, f"{name}/token_mlp_out")
    x = x + tf.transpose(y, [0, 2, 1])
    y = _gelu(_dense(_layer_norm(x, v, f"{name}/channel_norm"), v,
                     f"{name}/channel_mlp_in"))
    x = x + _dense(y, v, f"{name}/channel_mlp_out")
  x = _layer_norm(x, v, "norm")
  return tf.reduce_mean(x, [1])


_FEATURES: dict[str, Callable[..., tf.Tensor]] = {
    "cnn": _cnn_features,
    "resnet": _resnet_features,
    "mixer": _mixer_features,
}


def tf_mirror(arch: str, arch_kwargs: Mapping[str, Any], params: Any, *,
              input_size: int = 32) -> tf.Module:
  """Builds the TensorFlow twin of a Flax net, holding a copy of its params.

  Args:
    arch: 'cnn', 'resnet' or 'mixer' (see `nets.get_net`).
    arch_kwargs: the options the Flax net was built with; 'num_classes' may be
      left out (it is read from the head).
    params: the Flax params ({'params': ...} or the inner dict).
    input_size: the square input resolution of the exported functions.

  Returns:
    A tf.Module with tf.functions `__call__(images) -> features [N, D]` and
    `logits(images) -> [N, C]`, both for images float32
    [None, input_size, input_size, 3]; `module.variables_by_name` maps each
    Flax path to its tf.Variable.
  """
  if arch not in _FEATURES:
    raise ValueError(f"Unknown architecture {arch!r}; "
                     f"valid names: {', '.join(sorted(_FEATURES))}")
  flat = _flatten(params)
  net = _build_net(arch, arch_kwargs, flat)
  _check_params(net, flat, input_size, f"{arch} {dict(arch_kwargs)}")
  features_fn = _FEATURES[arch]
  spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32,
                       name="images")

  class Mirror(tf.Module):
    """TensorFlow twin of a Flax net (see `tf_mirror`)."""

    def __init__(self):
      super().__init__(name=f"{arch}_mirror")
      # Unique names: tf2jax keys its params by variable name.
      self.variables_by_name = {
          k: tf.Variable(a, name=k, trainable=True) for k, a in flat.items()}

    @tf.function(input_signature=[spec])
    def __call__(self, images):
      return features_fn(net, self.variables_by_name, images)

    @tf.function(input_signature=[spec])
    def logits(self, images):
      features = features_fn(net, self.variables_by_name, images)
      return _dense(features, self.variables_by_name, "head")

  return Mirror()


def _is_saved_model(path: str) -> bool:
  return any(os.path.exists(os.path.join(path, f))
             for f in ("saved_model.pb", "saved_model.pbtxt"))


def export_savedmodel(arch: str, arch_kwargs: Mapping[str, Any], params: Any,
                      path: str | os.PathLike, *, input_size: int = 32,
                      metadata: Mapping[str, Any] | None = None,
                      overwrite: bool = False) -> str:
  """Writes a Flax net as a hub-format TF2 SavedModel, atomically.

  The SavedModel is written to a hidden temp dir next to `path` and renamed
  into place, so `path` is either absent or complete. `assets/model_search.json`
  holds {architecture, arch_kwargs, input_size, value_range, feature_dim,
  num_classes, num_params} updated with `metadata` (its keys win).

  Args:
    arch: 'cnn', 'resnet' or 'mixer'.
    arch_kwargs: the options the Flax net was built with.
    params: the trained Flax params.
    path: the SavedModel directory to create (a local path).
    input_size: the square input resolution of the exported signatures.
    metadata: extra JSON-able metadata.
    overwrite: replace an existing SavedModel or non-empty dir at `path`.

  Returns:
    The absolute path of the SavedModel.

  Raises:
    FileExistsError: `path` holds a SavedModel or other files and not
      `overwrite`.
    TypeError: metadata is not JSON-able.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    if _is_saved_model(path):
      raise FileExistsError(f"{path} already holds a SavedModel; pass "
                            "overwrite=True to replace it")
    if not os.path.isdir(path) or os.listdir(path):
      raise FileExistsError(f"{path} exists and is not an empty directory; "
                            "pass overwrite=True to replace it")

  module = tf_mirror(arch, arch_kwargs, params, input_size=input_size)
  flat = _flatten(params)
  info = {
      "architecture": arch,
      "arch_kwargs": {k: list(v) if isinstance(v, tuple) else v
                      for k, v in arch_kwargs.items()},
      "input_size": input_size,
      "value_range": [0.0, 1.0],
      "feature_dim": int(nets.feature_dim(arch, **arch_kwargs)),
      "num_classes": int(flat["head/kernel"].shape[-1]),
      "num_params": nets.count_params(params),
  }
  info.update(metadata or {})
  text = json.dumps(info, indent=2, sort_keys=True)  # Fail before writing.

  spec = tf.TensorSpec([None, input_size, input_size, 3], tf.float32,
                       name="images")

  @tf.function(input_signature=[spec])
  def serving_default(images):
    features = module(images)
    return {"default": features, "pre_logits": features}

  @tf.function(input_signature=[spec])
  def logits(images):
    return {"logits": module.logits(images)}

  parent, base = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent)
  try:
    tf.saved_model.save(module, tmp, signatures={
        "serving_default": serving_default.get_concrete_function(),
        "logits": logits.get_concrete_function(),
    })
    os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
    with open(os.path.join(tmp, "assets", METADATA_FILE), "w") as f:
      f.write(text)
    if os.path.exists(path):
      old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent)
      os.rename(path, os.path.join(old, base))
      os.rename(tmp, path)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return path
