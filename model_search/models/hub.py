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

import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
from typing import Any, Callable, Mapping

from google.protobuf import text_format
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
# Grappler function inlining, as TensorFlow's own graph converters run it; no public API.
from tensorflow.python.framework import convert_to_constants
import tensorflow_hub
import tf2jax

METADATA_FILE = "model_search.json"  # In the SavedModel's assets/.
FEATURE_SIGNATURES = ("image_feature_vector", "default", "serving_default")
FEATURE_KEYS = ("default", "pre_logits", "feature_vector", "features")
LOGITS_SIGNATURES = ("logits", "image_classification")
LOGITS_KEYS = ("logits", "default")
TRAIN_TAGS = frozenset({"train"})  # The TF1 Hub format's training MetaGraph.
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


def _squeeze(where: str, out: jax.Array) -> jax.Array:
  """[N, 1, 1, D] -> [N, D], as the VTAB reference does; other ranks as they are."""
  if out.ndim == 4:
    if out.shape[1:3] != (1, 1):
      raise ValueError(f"{where} returns a 4-D output of shape {out.shape}; "
                       "only [N, 1, 1, D] can be squeezed")
    out = jnp.squeeze(out, axis=(1, 2))
  return out


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
  apply = jax.jit(lambda p, x: _squeeze(where, apply_fn(p, x)))
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
      return _squeeze(where, out), new

    apply_train = jax.jit(train)
  return HubModel(
      name=name, apply=apply, params=params, logits=logits, input_size=input_size,
      value_range=tuple(value_range), feature_dim=feature_dim,
      num_source_classes=num_source_classes, apply_train=apply_train,
      has_training_mode=apply_train_fn is not None)


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
  concrete_fn: Any = None  # The traced function itself.
  signature: str | None = None  # The signature's name; None for tf.functions.
  owner: Any = None  # The loaded object: functions hold its variables weakly.


class _SignatureFn:
  """Lets tf2jax.convert (which wants a tf.function) take a ConcreteFunction."""

  def __init__(self, concrete_fn):
    self._concrete_fn = concrete_fn

  def get_concrete_function(self, *args, **kwargs):
    del args, kwargs
    return self._concrete_fn


class _GraphDefOverride:
  """A ConcreteFunction (and its graph) as tf2jax sees it, with another GraphDef.

  tf2jax.convert reads the GraphDef, inputs, captures, variables and
  structures of `get_concrete_function(...)`, and the Python argspec of the
  tf.function; everything but the GraphDef comes from the originals.
  """

  def __init__(self, fn, concrete_fn, graph_def):
    self._fn, self._concrete_fn, self._graph_def = fn, concrete_fn, graph_def

  @property
  def function_spec(self):
    return self._fn.function_spec  # AttributeError: tf2jax uses kwargs only.

  def get_concrete_function(self, *args, **kwargs):
    del args, kwargs
    return self

  @property
  def graph(self):
    return self

  def as_graph_def(self):
    return self._graph_def

  def __getattr__(self, name):
    if name.startswith("__"):  # copy / pickle probes, before __init__ ran.
      raise AttributeError(name)
    # Graph attributes (_functions) and ConcreteFunction ones never clash.
    if hasattr(self._concrete_fn, name):
      return getattr(self._concrete_fn, name)
    return getattr(self._concrete_fn.graph, name)


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


def _output_key(output_spec, keys, exact=False) -> tuple[bool, str | None]:
  """(usable, key): a tensor output, or a dict with one of keys / one entry.

  With exact, only `keys` count: no single-entry fallback, and a tensor
  output only when no key was asked for.
  """
  if isinstance(output_spec, Mapping):
    for k in keys:
      if k in output_spec:
        return True, k
    if not exact and len(output_spec) == 1:
      return True, next(iter(output_spec))
    return False, None
  if exact and keys:
    return False, None
  return isinstance(output_spec, (tf.TensorSpec, tf.Tensor)), None


def _function_candidate(obj, attr: str, keys, *, exact=False,
                        training: bool | None = None) -> _Candidate | None:
  """A candidate from a restored tf.function (`__call__`, `logits`).

  training=None prefers a trace without a literal True (inference mode);
  training=True takes only a trace with one (training=True, positional or
  keyword).
  """
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
    ok, key = _output_key(cf.structured_outputs, keys, exact)
    if image is None or not ok:
      continue
    literal_true = (any(a is True for a in args) or
                    kwargs.get("training", False) is True)
    if training is not None and literal_true != training:
      continue
    found.append((literal_true, _Candidate(
        where=f"`{attr}`", fn=fn, args=tuple(args), kwargs=dict(kwargs),
        slot=image[0], output_key=key, image_spec=image[1],
        output_spec=cf.structured_outputs, concrete_fn=cf)))
  if not found:
    return None
  found.sort(key=lambda t: t[0])
  return found[0][1]


def _concrete_candidate(cf, where: str, keys, exact=False,
                        signature: str | None = None) -> _Candidate | None:
  """A candidate from a keyword-only ConcreteFunction (a signature)."""
  args, kwargs = cf.structured_input_signature
  image = _image_slot(args, kwargs)
  ok, key = _output_key(cf.structured_outputs, keys, exact)
  if image is None or not ok or args:
    return None
  return _Candidate(
      where=where, fn=_SignatureFn(cf), args=(), kwargs=dict(kwargs),
      slot=image[0], output_key=key, image_spec=image[1],
      output_spec=cf.structured_outputs, concrete_fn=cf, signature=signature)


def _signature_candidate(obj, name: str, keys, exact=False) -> _Candidate | None:
  cf = (getattr(obj, "signatures", {}) or {}).get(name)
  if cf is None:
    return None
  return _concrete_candidate(cf, f"signature {name!r}", keys, exact, name)


def _find(obj, attr: str, signatures, keys, exact=False) -> _Candidate | None:
  candidate = _function_candidate(obj, attr, keys, exact=exact)
  for name in signatures:
    if candidate is not None:
      break
    candidate = _signature_candidate(obj, name, keys, exact)
  return candidate


def _describe(structure) -> str:
  """An input or output structure for messages: its keys, or what it is."""
  if isinstance(structure, Mapping):
    return ", ".join(sorted(map(str, structure))) or "none"
  return "one tensor" if isinstance(structure, (tf.TensorSpec, tf.Tensor)) else repr(structure)


def _feature_candidate(obj, model: str, signature: str | None,
                       output_key: str | None) -> _Candidate:
  """The feature function: the preference order, or the one asked for.

  `model` names the model in messages, e.g. "'resnet' (/path/to/resnet)".
  """
  keys = FEATURE_KEYS if output_key is None else (output_key,)
  exact = output_key is not None
  signatures = getattr(obj, "signatures", {}) or {}
  if signature is not None:
    if signature not in signatures:
      raise ValueError(f"Model {model} has no signature {signature!r}; its signatures: "
                       f"{', '.join(sorted(signatures)) or 'none'}")
    candidate = _signature_candidate(obj, signature, keys, exact)
    if candidate is None:
      cf = signatures[signature]
      args, kwargs = cf.structured_input_signature
      if args or _image_slot(args, kwargs) is None:
        problem = (f"does not take one float image tensor [N, H, W, 3]; its inputs: "
                   f"{_describe(kwargs) if not args else args}")
      elif output_key is not None:
        problem = (f"has no output {output_key!r}; its outputs: "
                   f"{_describe(cf.structured_outputs)}")
      else:
        problem = (f"has none of the outputs {', '.join(FEATURE_KEYS)} and more than one "
                   f"output; its outputs: {_describe(cf.structured_outputs)}; pass output_key")
      raise ValueError(f"Model {model}: signature {signature!r} {problem}")
    return candidate
  candidate = _find(obj, "__call__", FEATURE_SIGNATURES, keys, exact)
  if candidate is not None:
    return candidate
  if output_key is not None:
    seen = [f"`__call__`: {_describe(cf.structured_outputs)}" for cf in
            list(getattr(getattr(obj, "__call__", None), "concrete_functions", ()) or ())[:1]]
    seen += [f"signature {n!r}: {_describe(signatures[n].structured_outputs)}"
             for n in FEATURE_SIGNATURES if n in signatures]
    raise ValueError(f"Model {model} has no feature function with output {output_key!r}; "
                     f"outputs found: {'; '.join(seen) or 'none'}")
  raise ValueError(
      f"SavedModel {model} has no usable feature function: looked for a "
      "`__call__` tf.function taking one float image tensor [N, H, W, 3] "
      f"and for the signatures {', '.join(FEATURE_SIGNATURES)} (with output "
      f"{' / '.join(FEATURE_KEYS)} or a single output); found signatures: "
      f"{sorted(signatures) or 'none'}")


def _size(h, w) -> str:
  return f"{h or 'any'}x{w or 'any'}"


def _check_images(model: str, where: str, spec: tf.TensorShape, images) -> None:
  """A clear error for images the function's input signature would reject."""
  shape = tuple(np.shape(images))
  if spec.is_compatible_with(shape):
    return
  size = (f" {_size(spec[1], spec[2])} images" if spec.rank == 4 else " images")
  got = f"{shape[1]}x{shape[2]} (shape {shape})" if len(shape) == 4 else f"shape {shape}"
  raise ValueError(f"Model {model!r} ({where}) takes{size} {spec.as_list()}; got {got}")


def _subset(model: str, params: Params, names) -> dict[str, jax.Array]:
  """The entries a tf2jax function takes (it wants exactly its own variables)."""
  missing = [k for k in names if k not in params]
  if missing:
    raise ValueError(f"Model {model!r}: params lack {', '.join(missing[:5])}"
                     f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of the "
                     f"function's {len(names)} variables)")
  return {k: params[k] for k in names}


def _converted_call(model: str, candidate: _Candidate, jax_fn, names):
  """call(params, images, rng) -> (output, new_params) of a tf2jax function."""
  # Only plain values in the closure: no TensorFlow object outlives the conversion.
  kind, slot = candidate.slot
  where, output_key = candidate.where, candidate.output_key
  spec = candidate.image_spec.shape
  dtype = candidate.image_spec.dtype.as_numpy_dtype
  literal_args, literal_kwargs = tuple(candidate.args), dict(candidate.kwargs)

  def call(all_params: Params, images: jax.Array, rng=None):
    _check_images(model, where, spec, images)
    args, kwargs = list(literal_args), dict(literal_kwargs)
    images = jnp.asarray(images, dtype)
    if kind == "arg":
      args[slot] = images
    else:
      kwargs[slot] = images
    try:
      out, new = jax_fn(_subset(model, all_params, names), *args, rng=rng, **kwargs)
    except ValueError as e:
      if rng is None and "PRNG key required" in str(e):
        raise ValueError(f"Model {model!r} ({where}) has random ops (e.g. dropout): "
                         "pass a PRNG key, apply_train(params, images, rng=key)") from e
      raise
    if output_key is not None:
      out = out[output_key]
    return _squeeze(where, out), new

  return call


def _convert(candidate: _Candidate, model: str):
  """tf2jax-converts a candidate; returns (jax fn(params, images), params)."""
  with _quiet_tf2jax():
    jax_fn, params = tf2jax.convert(candidate.fn, *candidate.args,
                                    **candidate.kwargs)
  call = _converted_call(model, candidate, jax_fn, tuple(params))
  return jax.jit(lambda p, x: call(p, x)[0]), params


def _bypass_resource_identities(graph_def):
  """Points each resource input past Identity ops to the variable it aliases.

  Inlining routes a function's inputs through Identity ops, and tf2jax
  credits an assignment to the op that feeds the variable handle: through an
  Identity the update would be lost.
  """
  out = type(graph_def)()
  out.CopyFrom(graph_def)
  nodes = {n.name: n for n in out.node}
  resource = tf.resource.as_datatype_enum

  def source(inp: str) -> str:
    node = nodes.get(inp.split(":")[0])
    while (node is not None and node.op == "Identity" and
           node.attr["T"].type == resource):
      inp = node.input[0]
      node = nodes.get(inp.split(":")[0])
    return inp

  for node in out.node:
    for i, inp in enumerate(node.input):
      if not inp.startswith("^"):
        node.input[i] = source(inp)
  return out


def _convert_training(candidate: _Candidate):
  """tf2jax-converts a training-mode candidate with its state updates kept."""
  cf = candidate.concrete_fn
  graph_def = cf.graph.as_graph_def()
  if graph_def.library.function:
    # Keep control flow functional (If/While), as tf2jax converts it.
    graph_def = _bypass_resource_identities(
        convert_to_constants._run_inline_graph_optimization(  # pylint: disable=protected-access
            cf, lower_control_flow=False, aggressive_inlining=True))
  fn = _GraphDefOverride(candidate.fn, cf, graph_def)
  with _quiet_tf2jax():
    jax_fn, params = tf2jax.convert(fn, *candidate.args, **candidate.kwargs)
  return jax_fn, tuple(params)


def _tf2_training(path: str, output_key: str | None) -> _Candidate | None:
  """The `__call__` trace with training=True of a TF2 SavedModel, if any."""
  obj = tensorflow_hub.load(path)
  keys = () if output_key is None else (output_key,)
  candidate = _function_candidate(obj, "__call__", keys, exact=True, training=True)
  return candidate and dataclasses.replace(candidate, owner=obj)


def _prune_with_updates(obj, signature_def):
  """A TF1 signature's function whose outputs wait for the graph's UPDATE_OPS."""
  g = obj.graph
  inputs = {k: g.get_tensor_by_name(v.name) for k, v in sorted(signature_def.inputs.items())}
  outputs = {k: g.get_tensor_by_name(v.name) for k, v in signature_def.outputs.items()}
  updates = g.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
  with g.as_default(), tf.control_dependencies(updates):
    # tf2jax runs what the outputs depend on: these identities pull in the updates.
    outputs = {k: tf.identity(t) for k, t in outputs.items()}
  spec = ((), {k: tf.TensorSpec.from_tensor(t, name=k) for k, t in inputs.items()})
  return obj.prune(feeds=list(inputs.values()), fetches=outputs, input_signature=spec)


def _tf1_training(path: str, signature: str, signature_def,
                  output_key: str | None) -> _Candidate | None:
  """The signature of the TF1 'train' MetaGraph, with its UPDATE_OPS."""
  obj = tensorflow_hub.load(path, tags=set(TRAIN_TAGS))
  fn = _prune_with_updates(obj, signature_def)
  keys = () if output_key is None else (output_key,)
  candidate = _concrete_candidate(fn, f"signature {signature!r} (tags {{'train'}})", keys,
                                  exact=True, signature=signature)
  return candidate and dataclasses.replace(candidate, owner=obj)


def _training_apply(model: str, find: Callable[[], _Candidate | None]):
  """apply_train converting `find()`'s function on first use."""

  @functools.cache
  def build():
    candidate = find()
    if candidate is None:
      raise ValueError(f"Model {model!r}: its training-mode function was found at load but "
                       "not on reloading the SavedModel; did it change on disk?")
    jax_fn, names = _convert_training(candidate)
    return _converted_call(model, candidate, jax_fn, names)

  def apply_train(params: Params, images: jax.Array, rng=None):
    out, new = build()(params, images, rng)
    return out, {**params, **new}

  return jax.jit(apply_train)


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


def _read_saved_model(path: str) -> saved_model_pb2.SavedModel:
  """The SavedModel proto: its MetaGraphs' tag sets and signature defs."""
  proto = saved_model_pb2.SavedModel()
  pb = os.path.join(path, "saved_model.pb")
  if tf.io.gfile.exists(pb):
    with tf.io.gfile.GFile(pb, "rb") as f:
      proto.ParseFromString(f.read())
  else:
    with tf.io.gfile.GFile(os.path.join(path, "saved_model.pbtxt")) as f:
      text_format.Parse(f.read(), proto)
  return proto


def _tf1_signature_def(proto, tags, signature: str):
  """The SignatureDef of a TF1 SavedModel's MetaGraph with these tags, or None."""
  metas = list(proto.meta_graphs)
  # tf.saved_model.load's rule: one MetaGraph with an object graph is TF2.
  if len(metas) == 1 and metas[0].HasField("object_graph_def"):
    return None
  for meta in metas:
    if set(meta.meta_info_def.tags) == set(tags):
      return meta.signature_def.get(signature)
  return None


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
  features = _feature_candidate(obj, label, signature, output_key)
  h, w = features.image_spec.shape[1], features.image_spec.shape[2]
  if input_size is not None and any(d not in (None, input_size) for d in (h, w)):
    raise ValueError(f"Model {label} expects {input_size}x{input_size} images "
                     f"(the registry's input_size) but its {features.where} takes "
                     f"{_size(h, w)} images")
  apply, params_f = _convert(features, name)
  head = _find(obj, "logits", LOGITS_SIGNATURES, LOGITS_KEYS)
  logits, params_l = _convert(head, name) if head is not None else (None, {})
  params = _merge_params(handle, params_f, params_l)

  if features.signature is None:  # `__call__`: a training=True trace?
    has_train = _function_candidate(
        obj, "__call__", () if features.output_key is None else (features.output_key,),
        exact=True, training=True) is not None
    find = functools.partial(_tf2_training, path, features.output_key)
  else:  # A TF1 'train' MetaGraph with the same signature and output?
    sig = _tf1_signature_def(_read_saved_model(path), TRAIN_TAGS, features.signature)
    has_train = sig is not None and features.output_key in sig.outputs
    find = functools.partial(_tf1_training, path, features.signature, sig,
                             features.output_key)
  apply_train = (_training_apply(name, find) if has_train else _inference_as_train(apply))

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
