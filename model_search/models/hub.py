"""Load a TF-Hub handle or local SavedModel as a JAX function plus params (via tf2jax).

`load(handle)` accepts a TF2 SavedModel directory (local or any filesystem
tf.io.gfile reads), a legacy TF1 Hub format module, or a hub URL (resolved,
i.e. downloaded and cached, with `tensorflow_hub.resolve`). The graph of the
chosen function is converted to JAX once; `HubModel.apply` / `.logits` are
then pure functions of an explicit params dict, so they jit, and jax.grad,
jax.jvp and jax.vjp work with respect to the params (as LGC and the
training-time predictor need).

Security note: loading a SavedModel deserialises and runs its TensorFlow
graph. Only load handles from sources you trust.

Which function gives the features, in order of preference:
  1. a `__call__` tf.function taking one image tensor [N, H, W, 3] (other
     arguments must be Python literals, e.g. training=False; a concrete
     function with training=False is preferred);
  2. the signatures 'image_feature_vector', 'default', 'serving_default'
     (output 'default', 'pre_logits', 'feature_vector' or 'features', or the
     only output).
Logits: a `logits` tf.function, else the signatures 'logits' or
'image_classification' (output 'logits' or 'default', or the only output).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_hub
import tf2jax

METADATA_FILE = "model_search.json"  # In the SavedModel's assets/.
FEATURE_SIGNATURES = ("image_feature_vector", "default", "serving_default")
FEATURE_KEYS = ("default", "pre_logits", "feature_vector", "features")
LOGITS_SIGNATURES = ("logits", "image_classification")
LOGITS_KEYS = ("logits", "default")
# Used only to measure the feature dim of models whose input size is free.
_PROBE_SIZE = 224

Params = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class HubModel:
  """A hub model as JAX functions of an explicit params dict.

  Attributes:
    name: metadata 'name', else the last component of the handle.
    apply: `apply(params, images) -> features [N, D]`, images float32
      [N, H, W, 3] in `value_range`; jitted; 4-D [N, 1, 1, D] outputs are
      squeezed to [N, D].
    params: {TF variable name: array}, shared by apply and logits (each uses
      its own subset; the gradient w.r.t. an unused entry is zero).
    logits: `logits(params, images) -> [N, C_s]`, or None when the model has
      no source head.
    input_size: the square input resolution, from the function's input
      signature when fixed, else metadata 'input_size', else None.
    value_range: the pixel range the model expects (metadata, else (0, 1)).
    feature_dim: D.
    metadata: the contents of assets/model_search.json, or {}.
    handle: the handle the model was loaded from.
    num_source_classes: C_s, or None without logits.
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


@dataclasses.dataclass
class _Candidate:
  """A TF function that maps one image tensor to an output (or output dict)."""
  where: str  # For messages: "`__call__`", "signature 'default'".
  fn: Any  # Has get_concrete_function(*args, **kwargs).
  args: tuple  # Structured inputs: one image TensorSpec, other literals.
  kwargs: dict
  slot: tuple[str, Any]  # ('arg', index) or ('kwarg', name) of the image.
  output_key: str | None  # Key into a dict output, None for a tensor.
  image_spec: tf.TensorSpec
  output_spec: Any


class _SignatureFn:
  """Lets tf2jax.convert (which wants a tf.function) take a ConcreteFunction."""

  def __init__(self, concrete_fn):
    self._concrete_fn = concrete_fn

  def get_concrete_function(self, *args, **kwargs):
    del args, kwargs
    return self._concrete_fn


class _DropNoFullargspec(logging.Filter):

  def filter(self, record):
    return "No fullargspec" not in record.getMessage()


@contextlib.contextmanager
def _quiet_tf2jax():
  """Hides tf2jax's warning that signature functions have no Python argspec."""
  log = logging.getLogger("absl")
  f = _DropNoFullargspec()
  log.addFilter(f)
  try:
    yield
  finally:
    log.removeFilter(f)


def _image_slot(args, kwargs) -> tuple[tuple[str, Any], tf.TensorSpec] | None:
  """The position of the single image TensorSpec in (args, kwargs), if any."""
  slots = [(("arg", i), s) for i, s in enumerate(args)
           if isinstance(s, tf.TensorSpec)]
  slots += [(("kwarg", k), s) for k, s in kwargs.items()
            if isinstance(s, tf.TensorSpec)]
  if len(slots) != 1:
    return None
  slot, spec = slots[0]
  shape = spec.shape
  if (shape.rank != 4 or shape[-1] not in (3, None) or
      not spec.dtype.is_floating):
    return None
  # Nested structures (lists of tensors, ...) are not images.
  if any(tf.nest.is_nested(a) for a in list(args) + list(kwargs.values())):
    return None
  return slot, spec


def _output_key(output_spec, keys) -> tuple[bool, str | None]:
  """(usable, key): a tensor output, or a dict with one of keys / one entry."""
  if isinstance(output_spec, Mapping):
    for k in keys:
      if k in output_spec:
        return True, k
    if len(output_spec) == 1:
      return True, next(iter(output_spec))
    return False, None
  return isinstance(output_spec, (tf.TensorSpec, tf.Tensor)), None


def _function_candidate(obj, attr: str, keys) -> _Candidate | None:
  """A candidate from a restored tf.function (`__call__`, `logits`)."""
  fn = getattr(obj, attr, None)
  concrete = list(getattr(fn, "concrete_functions", ()) or ())
  found = []
  for cf in concrete:
    args, kwargs = cf.structured_input_signature
    if getattr(fn, "input_signature", None) is not None:
      # Its specs may differ in name from the concrete function's; only the
      # declared ones bind.
      args, kwargs = tuple(fn.input_signature), {}
    image = _image_slot(args, kwargs)
    ok, key = _output_key(cf.structured_outputs, keys)
    if image is None or not ok:
      continue
    training = kwargs.get("training", False)
    # Prefer inference mode: training=False (positional or keyword).
    literal_true = any(a is True for a in args) or training is True
    found.append((literal_true, _Candidate(
        where=f"`{attr}`", fn=fn, args=tuple(args), kwargs=dict(kwargs),
        slot=image[0], output_key=key, image_spec=image[1],
        output_spec=cf.structured_outputs)))
  if not found:
    return None
  found.sort(key=lambda t: t[0])
  return found[0][1]


def _signature_candidate(obj, name: str, keys) -> _Candidate | None:
  cf = getattr(obj, "signatures", {}).get(name)
  if cf is None:
    return None
  args, kwargs = cf.structured_input_signature
  image = _image_slot(args, kwargs)
  ok, key = _output_key(cf.structured_outputs, keys)
  if image is None or not ok or args:
    return None
  return _Candidate(
      where=f"signature {name!r}", fn=_SignatureFn(cf), args=(),
      kwargs=dict(kwargs), slot=image[0], output_key=key, image_spec=image[1],
      output_spec=cf.structured_outputs)


def _find(obj, attr: str, signatures, keys) -> _Candidate | None:
  candidate = _function_candidate(obj, attr, keys)
  for name in signatures:
    if candidate is not None:
      break
    candidate = _signature_candidate(obj, name, keys)
  return candidate


def _convert(candidate: _Candidate):
  """tf2jax-converts a candidate; returns (jax fn(params, images), params)."""
  with _quiet_tf2jax():
    jax_fn, params = tf2jax.convert(candidate.fn, *candidate.args,
                                    **candidate.kwargs)
  names = tuple(params)
  kind, where = candidate.slot
  dtype = candidate.image_spec.dtype.as_numpy_dtype

  def fn(all_params: Params, images: jax.Array) -> jax.Array:
    args, kwargs = list(candidate.args), dict(candidate.kwargs)
    images = jnp.asarray(images, dtype)
    if kind == "arg":
      args[where] = images
    else:
      kwargs[where] = images
    # tf2jax wants exactly its own variables.
    out, _ = jax_fn({k: all_params[k] for k in names}, *args, **kwargs)
    if candidate.output_key is not None:
      out = out[candidate.output_key]
    if out.ndim == 4:
      if out.shape[1:3] != (1, 1):
        raise ValueError(f"{candidate.where} returns a 4-D output of shape "
                         f"{out.shape}; only [N, 1, 1, D] can be squeezed")
      out = jnp.squeeze(out, axis=(1, 2))
    return out

  return jax.jit(fn), params


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


def load(handle: str | os.PathLike) -> HubModel:
  """Loads a hub URL or SavedModel directory as JAX functions + params.

  Loading runs the SavedModel's TensorFlow graph: only load trusted handles.

  Args:
    handle: a TF2 SavedModel directory, a TF1 Hub format module directory, or
      a hub URL (http(s)://, resolved with tensorflow_hub.resolve).

  Returns:
    A HubModel; see its docstring.

  Raises:
    FileNotFoundError: the directory does not exist.
    ValueError: the handle cannot be resolved, is not a SavedModel, or has no
      function mapping one image batch [N, H, W, 3] to features.
  """
  handle = os.fspath(handle)
  path = _resolve(handle)
  if not tf.io.gfile.isdir(path):
    raise FileNotFoundError(f"No SavedModel at {handle!r}: not a directory")
  if not any(tf.io.gfile.exists(os.path.join(path, f))
             for f in ("saved_model.pb", "saved_model.pbtxt")):
    raise ValueError(f"{handle!r} is not a SavedModel: it has neither "
                     "saved_model.pb nor saved_model.pbtxt")
  obj = tensorflow_hub.load(path)

  features = _find(obj, "__call__", FEATURE_SIGNATURES, FEATURE_KEYS)
  if features is None:
    found = sorted(getattr(obj, "signatures", {}) or {})
    raise ValueError(
        f"SavedModel {handle!r} has no usable feature function: looked for a "
        "`__call__` tf.function taking one float image tensor [N, H, W, 3] "
        f"and for the signatures {', '.join(FEATURE_SIGNATURES)} (with output "
        f"{' / '.join(FEATURE_KEYS)} or a single output); found signatures: "
        f"{found or 'none'}")
  apply, params_f = _convert(features)
  head = _find(obj, "logits", LOGITS_SIGNATURES, LOGITS_KEYS)
  logits, params_l = _convert(head) if head is not None else (None, {})
  params = _merge_params(handle, params_f, params_l)
  metadata = _read_metadata(path)

  h, w = features.image_spec.shape[1], features.image_spec.shape[2]
  input_size = h if (h is not None and h == w) else metadata.get("input_size")

  feature_dim = _last_dim(features.output_spec, features.output_key)
  if feature_dim is None:
    size = input_size or _PROBE_SIZE
    probe = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    feature_dim = int(jax.eval_shape(apply, params, probe).shape[-1])
  num_source_classes = (_last_dim(head.output_spec, head.output_key)
                        if head is not None else None)

  name = metadata.get("name") or os.path.basename(handle.rstrip("/"))
  return HubModel(
      name=name, apply=apply, params=params, logits=logits,
      input_size=input_size,
      value_range=tuple(metadata.get("value_range", (0.0, 1.0))),
      feature_dim=feature_dim, metadata=metadata, handle=handle,
      num_source_classes=num_source_classes)
