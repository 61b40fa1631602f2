"""Load a TF-Hub handle, local SavedModel or registered Python model as JAX functions + params.

`load(handle)` accepts a TF2 SavedModel directory (local or any filesystem
tf.io.gfile reads), a legacy TF1 Hub format module, a hub URL (resolved,
i.e. downloaded and cached, with `tensorflow_hub.resolve`), or a handle given
to `register` (Flax and other Python models, built with `from_flax`). The
graph of the chosen function is converted to JAX once (tf2jax);
`HubModel.apply` / `.apply_train` / `.logits` are then pure functions of an
explicit params dict, so they jit, and jax.grad, jax.jvp and jax.vjp work with
respect to the params (as LGC, fine-tuning and the training-time predictor
need).

Security note: loading a SavedModel deserialises and runs its TensorFlow
graph. Only load handles from sources you trust.

Which function gives the features, in order of preference (`load`'s
`signature` and `output_key` pin one instead):
  1. a `__call__` tf.function taking one image tensor [N, H, W, 3] (other
     arguments must be Python literals, e.g. training=False; a concrete
     function with training=False is preferred);
  2. the signatures 'image_feature_vector', 'default', 'serving_default'
     (output 'default', 'pre_logits', 'feature_vector' or 'features', or the
     only output).
Logits: a `logits` tf.function, else the signatures 'logits' or
'image_classification' (output 'logits' or 'default', or the only output).

Training mode (`apply_train`: batch norm on batch statistics, and the params
after the graph's state updates, i.e. batch-norm moving mean/variance):
  * TF2 SavedModels: the `__call__` concrete function traced with
    training=True. Keras SavedModels call each layer as a nested function,
    and tf2jax loses variable assignments made inside nested functions, so
    Grappler's function inlining first lifts them into the top-level graph.
  * TF1 Hub format: the MetaGraph with tag set {"train"}, same signature and
    output. The signature functions tensorflow_hub builds are pruned to what
    the outputs need, which drops the UPDATE_OPS collection; the outputs are
    re-pruned with those updates as control dependencies.
The training graph is loaded and converted on the first call of apply_train
(a second restore from disk), so loading for feature extraction costs nothing
extra. A model without one gets its inference function, params unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_hub

from model_search.models import tf_functions

METADATA_FILE = "model_search.json"  # In the SavedModel's assets/.
FEATURE_SIGNATURES = tf_functions.FEATURE_SIGNATURES
FEATURE_KEYS = tf_functions.FEATURE_KEYS
LOGITS_SIGNATURES = tf_functions.LOGITS_SIGNATURES
LOGITS_KEYS = tf_functions.LOGITS_KEYS
TRAIN_TAGS = tf_functions.TRAIN_TAGS
# Used only to measure the feature dim of models whose input size is free.
_PROBE_SIZE = 224

Params = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class HubModel:
  """A hub model as JAX functions of an explicit params dict.

  Attributes:
    name: metadata 'name', else the last component of the handle.
    apply: `apply(params, images) -> features [N, D]`, images float32
      [N, H, W, 3] in `value_range`; inference mode; jitted; 4-D
      [N, 1, 1, D] outputs are squeezed to [N, D].
    params: {TF variable name: array}, shared by apply, apply_train and
      logits (each uses its own subset; the gradient w.r.t. an unused entry is
      zero). Registered Python models may use any pytree.
    logits: `logits(params, images) -> [N, C_s]`, or None when the model has
      no source head.
    input_size: the square input resolution, from the function's input
      signature when fixed, else metadata 'input_size', else the size `load`
      was told to expect, else None.
    value_range: the pixel range the model expects (metadata, else (0, 1)).
    feature_dim: D.
    metadata: the contents of assets/model_search.json, or {}.
    handle: the handle the model was loaded from.
    num_source_classes: C_s, or None without logits.
    apply_train: `apply_train(params, images, rng=None) -> (features [N, D],
      new_params)`: training mode (batch statistics) and params with the
      state updates applied, same keys as `params`; `rng` (a PRNG key) feeds
      random ops such as dropout. When `has_training_mode` is False, the
      inference features and `params` unchanged. None only for HubModels
      built by hand.
    has_training_mode: whether the model has a training-mode function (a TF1
      'train' MetaGraph, a TF2 `__call__` traced with training=True, or an
      `apply_train_fn` given to `from_flax`).
  """
  name: str
  apply: Callable[[Params, jax.Array], jax.Array]
  params: dict[str, jax.Array]
  logits: Callable[[Params, jax.Array], jax.Array] | None = None
  input_size: int | None = None
  value_range: tuple[float, float] = (0.0, 1.0)
  feature_dim: int | None = None
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
  handle: str = ""
  num_source_classes: int | None = None
  apply_train: Callable[..., tuple[jax.Array, Any]] | None = None
  has_training_mode: bool = False


_REGISTRY: dict[str, Callable[[], HubModel]] = {}


def register(handle: str, factory: Callable[[], HubModel]) -> None:
  """Makes `load(handle)` return `factory()`: Flax and other Python models.

  Args:
    handle: any string, e.g. 'flax:my_net'; a later registration of the same
      handle replaces the earlier one.
    factory: builds the HubModel (e.g. with `from_flax`), called on each load.
  """
  if not callable(factory):
    raise TypeError(f"register({handle!r}, ...): the factory must be callable, "
                    f"got {type(factory).__name__}")
  _REGISTRY[handle] = factory


def _inference_as_train(apply):
  """apply_train for a model without a training mode: inference, same params."""

  def apply_train(params, images, rng=None):
    del rng  # Inference has no random ops.
    return apply(params, images), params

  return apply_train


def from_flax(apply_fn: Callable[[Any, jax.Array], jax.Array], params: Any, *, name: str,
              input_size: int | None, value_range: tuple[float, float] = (0.0, 1.0),
              logits_fn: Callable[[Any, jax.Array], jax.Array] | None = None,
              apply_train_fn: Callable[..., tuple[jax.Array, Any]] | None = None,
              ) -> HubModel:
  """A HubModel from plain JAX / Flax functions (e.g. `register`'s factories).

  Args:
    apply_fn: `apply_fn(params, images) -> features [N, D]` (or [N, 1, 1, D]),
      inference mode.
    params: the params pytree all functions take.
    name: the model's name.
    input_size: the square input resolution, or None when free.
    value_range: the pixel range the model expects.
    logits_fn: `logits_fn(params, images) -> [N, C_s]`, or None.
    apply_train_fn: `apply_train_fn(params, images[, rng=key]) -> (features,
      new_params)` in training mode (e.g. a Flax apply with
      mutable=['batch_stats']), or None: inference features, params unchanged.

  Returns:
    A HubModel; feature_dim and num_source_classes are measured with
    jax.eval_shape at input_size (224 when free).
  """
  where = f"Model {name!r}"
  apply = jax.jit(lambda p, x: tf_functions.squeeze(where, apply_fn(p, x)))
  size = input_size or _PROBE_SIZE
  probe = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  feature_dim = int(jax.eval_shape(apply, params, probe).shape[-1])
  logits = jax.jit(logits_fn) if logits_fn is not None else None
  num_source_classes = (int(jax.eval_shape(logits, params, probe).shape[-1])
                        if logits is not None else None)
  if apply_train_fn is None:
    apply_train = _inference_as_train(apply)
  else:

    def train(p, x, rng=None):
      # apply_train_fn need not take rng: it gets one only when the caller passes one.
      out, new = apply_train_fn(p, x) if rng is None else apply_train_fn(p, x, rng=rng)
      return tf_functions.squeeze(where, out), new

    apply_train = jax.jit(train)
  return HubModel(
      name=name, apply=apply, params=params, logits=logits, input_size=input_size,
      value_range=tuple(value_range), feature_dim=feature_dim,
      num_source_classes=num_source_classes, apply_train=apply_train,
      has_training_mode=apply_train_fn is not None)


def _merge_params(handle: str, *dicts) -> dict[str, jax.Array]:
  """Union of tf2jax param dicts; a name must mean the same array in each."""
  merged: dict[str, Any] = {}
  for d in dicts:
    for k, v in d.items():
      v = np.asarray(v)  # Drop tf2jax's Variable subclass.
      if k in merged and (merged[k].shape != v.shape or
                          not np.array_equal(merged[k], v)):
        raise ValueError(
            f"SavedModel {handle!r}: two different variables are both named "
            f"{k!r}; give its variables unique names")
      merged[k] = v
  return {k: jnp.asarray(v) for k, v in merged.items()}


def _last_dim(output_spec, key) -> int | None:
  spec = output_spec[key] if key is not None else output_spec
  shape = getattr(spec, "shape", None)
  if shape is None or shape.rank is None or shape[-1] is None:
    return None
  return int(shape[-1])


def _read_metadata(path: str) -> dict[str, Any]:
  file = os.path.join(path, "assets", METADATA_FILE)
  if not tf.io.gfile.exists(file):
    return {}
  with tf.io.gfile.GFile(file) as f:
    return json.load(f)


def _resolve(handle: str) -> str:
  """Local or gfile path of a handle; URLs go through tensorflow_hub.resolve."""
  if re.match(r"^https?://", handle):
    try:
      return tensorflow_hub.resolve(handle)
    except Exception as e:  # Network, HTTP and archive errors all land here.
      raise ValueError(f"Could not resolve hub handle {handle!r}: "
                       f"{type(e).__name__}: {e}") from e
  return handle


def _load_registered(handle: str, *, signature, output_key, input_size) -> HubModel:
  model = _REGISTRY[handle]()
  if not isinstance(model, HubModel):
    raise TypeError(f"The factory registered for {handle!r} returned "
                    f"{type(model).__name__}, not a HubModel")
  if signature is not None or output_key is not None:
    raise ValueError(f"Model {handle!r} is a registered Python model: it has no "
                     f"signatures or output keys (asked: signature={signature!r}, "
                     f"output_key={output_key!r})")
  if input_size is not None and model.input_size not in (None, input_size):
    raise ValueError(f"Model {handle!r} expects {input_size}x{input_size} images (the "
                     f"registry's input_size) but takes {model.input_size}x"
                     f"{model.input_size}")
  return model if model.handle else dataclasses.replace(model, handle=handle)


def load(handle: str | os.PathLike, *, signature: str | None = None,
         output_key: str | None = None, input_size: int | None = None) -> HubModel:
  """Loads a hub URL, SavedModel directory or registered model as JAX functions + params.

  Loading runs the SavedModel's TensorFlow graph: only load trusted handles.

  Args:
    handle: a TF2 SavedModel directory, a TF1 Hub format module directory, a
      hub URL (http(s)://, resolved with tensorflow_hub.resolve), or a handle
      given to `register`.
    signature: the signature giving the features (e.g. 'default' for the VTAB
      TF1 modules), or None for the preference order in the module docstring.
    output_key: the output of that function giving the features (e.g.
      'pre_logits'), or None for the preference order.
    input_size: the square size the caller (the registry) expects, or None.
      Sets `input_size` of a model whose input size is free.

  Returns:
    A HubModel; see its docstring.

  Raises:
    FileNotFoundError: the directory does not exist.
    ValueError: the handle cannot be resolved, is not a SavedModel, has no
      function mapping one image batch [N, H, W, 3] to features, lacks the
      signature or output asked for, or its signature fixes an input size
      other than `input_size`.
  """
  handle = os.fspath(handle)
  if handle in _REGISTRY:
    return _load_registered(handle, signature=signature, output_key=output_key,
                            input_size=input_size)
  path = _resolve(handle)
  if not tf.io.gfile.isdir(path):
    hint = (f" (registered Python models: {', '.join(sorted(_REGISTRY))})"
            if _REGISTRY else "")
    raise FileNotFoundError(f"No SavedModel at {handle!r}: not a directory{hint}")
  if not any(tf.io.gfile.exists(os.path.join(path, f))
             for f in ("saved_model.pb", "saved_model.pbtxt")):
    raise ValueError(f"{handle!r} is not a SavedModel: it has neither "
                     "saved_model.pb nor saved_model.pbtxt")
  metadata = _read_metadata(path)
  name = metadata.get("name") or os.path.basename(handle.rstrip("/"))
  obj = tensorflow_hub.load(path)

  label = f"{name!r} ({handle})"  # Names the model and where it came from.
  features = tf_functions.feature_candidate(obj, label, signature, output_key)
  h, w = features.image_spec.shape[1], features.image_spec.shape[2]
  if input_size is not None and any(d not in (None, input_size) for d in (h, w)):
    raise ValueError(f"Model {label} expects {input_size}x{input_size} images "
                     f"(the registry's input_size) but its {features.where} takes "
                     f"{tf_functions.describe_size(h, w)} images")
  apply, params_f = tf_functions.convert(features, name)
  head = tf_functions.find(obj, "logits", LOGITS_SIGNATURES, LOGITS_KEYS)
  logits, params_l = tf_functions.convert(head, name) if head is not None else (None, {})
  params = _merge_params(handle, params_f, params_l)

  if features.signature is None:  # `__call__`: a training=True trace?
    has_train = tf_functions.function_candidate(
        obj, "__call__", () if features.output_key is None else (features.output_key,),
        exact=True, training=True) is not None
    find = functools.partial(tf_functions.tf2_training, path, features.output_key)
  else:  # A TF1 'train' MetaGraph with the same signature and output?
    sig = tf_functions.tf1_signature_def(tf_functions.read_saved_model(path), TRAIN_TAGS,
                                         features.signature)
    has_train = sig is not None and features.output_key in sig.outputs
    find = functools.partial(tf_functions.tf1_training, path, features.signature, sig,
                             features.output_key)
  apply_train = (tf_functions.training_apply(name, find) if has_train
                 else _inference_as_train(apply))

  input_size = h if (h is not None and h == w) else metadata.get("input_size", input_size)
  feature_dim = _last_dim(features.output_spec, features.output_key)
  if feature_dim is None:
    size = input_size or _PROBE_SIZE
    probe = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    feature_dim = int(jax.eval_shape(apply, params, probe).shape[-1])
  num_source_classes = (_last_dim(head.output_spec, head.output_key)
                        if head is not None else None)

  return HubModel(
      name=name, apply=apply, params=params, logits=logits,
      input_size=input_size,
      value_range=tuple(metadata.get("value_range", (0.0, 1.0))),
      feature_dim=feature_dim, metadata=metadata, handle=handle,
      num_source_classes=num_source_classes, apply_train=apply_train,
      has_training_mode=has_train)


def load_entry(entry) -> HubModel:
  """`load` with what a registry entry (models/zoo.py ModelEntry) says of the model: its handle,
  signature, output key and expected input size."""
  return load(entry.handle, signature=getattr(entry, "signature", None),
              output_key=getattr(entry, "output_key", None),
              input_size=getattr(entry, "input_size", None))
