"""Find a SavedModel's image functions and convert them to JAX with tf2jax (used by models/hub.py).

A candidate is a TF function taking one float image tensor [N, H, W, 3]: a restored `__call__`
tf.function trace or a signature. `feature_candidate` picks the features function in the
preference order of hub.py's docstring (or the signature / output a caller names), `convert`
turns a candidate into a jitted JAX function of an explicit params dict, and the training-mode
helpers rebuild the TF2 training=True trace (Keras graphs inlined so that batch-norm updates
survive) or the TF1 {"train"} MetaGraph with its UPDATE_OPS for `HubModel.apply_train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
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

FEATURE_SIGNATURES = ("image_feature_vector", "default", "serving_default")
FEATURE_KEYS = ("default", "pre_logits", "feature_vector", "features")
LOGITS_SIGNATURES = ("logits", "image_classification")
LOGITS_KEYS = ("logits", "default")
TRAIN_TAGS = frozenset({"train"})  # The TF1 Hub format's training MetaGraph.

Params = Mapping[str, jax.Array]


def squeeze(where: str, out: jax.Array) -> jax.Array:
  """[N, 1, 1, D] -> [N, D], as the VTAB reference does; other ranks as they are."""
  if out.ndim == 4:
    if out.shape[1:3] != (1, 1):
      raise ValueError(f"{where} returns a 4-D output of shape {out.shape}; "
                       "only [N, 1, 1, D] can be squeezed")
    out = jnp.squeeze(out, axis=(1, 2))
  return out


@dataclasses.dataclass
class Candidate:
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


def function_candidate(obj, attr: str, keys, *, exact=False,
                        training: bool | None = None) -> Candidate | None:
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
    found.append((literal_true, Candidate(
        where=f"`{attr}`", fn=fn, args=tuple(args), kwargs=dict(kwargs),
        slot=image[0], output_key=key, image_spec=image[1],
        output_spec=cf.structured_outputs, concrete_fn=cf)))
  if not found:
    return None
  found.sort(key=lambda t: t[0])
  return found[0][1]


def _concrete_candidate(cf, where: str, keys, exact=False,
                        signature: str | None = None) -> Candidate | None:
  """A candidate from a keyword-only ConcreteFunction (a signature)."""
  args, kwargs = cf.structured_input_signature
  image = _image_slot(args, kwargs)
  ok, key = _output_key(cf.structured_outputs, keys, exact)
  if image is None or not ok or args:
    return None
  return Candidate(
      where=where, fn=_SignatureFn(cf), args=(), kwargs=dict(kwargs),
      slot=image[0], output_key=key, image_spec=image[1],
      output_spec=cf.structured_outputs, concrete_fn=cf, signature=signature)


def _signature_candidate(obj, name: str, keys, exact=False) -> Candidate | None:
  cf = (getattr(obj, "signatures", {}) or {}).get(name)
  if cf is None:
    return None
  return _concrete_candidate(cf, f"signature {name!r}", keys, exact, name)


def find(obj, attr: str, signatures, keys, exact=False) -> Candidate | None:
  candidate = function_candidate(obj, attr, keys, exact=exact)
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


def feature_candidate(obj, model: str, signature: str | None,
                       output_key: str | None) -> Candidate:
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
  candidate = find(obj, "__call__", FEATURE_SIGNATURES, keys, exact)
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


def describe_size(h, w) -> str:
  return f"{h or 'any'}x{w or 'any'}"


def _check_images(model: str, where: str, spec: tf.TensorShape, images) -> None:
  """A clear error for images the function's input signature would reject."""
  shape = tuple(np.shape(images))
  if spec.is_compatible_with(shape):
    return
  size = (f" {describe_size(spec[1], spec[2])} images" if spec.rank == 4 else " images")
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


def _converted_call(model: str, candidate: Candidate, jax_fn, names):
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
    return squeeze(where, out), new

  return call


def convert(candidate: Candidate, model: str):
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


def _convert_training(candidate: Candidate):
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


def tf2_training(path: str, output_key: str | None) -> Candidate | None:
  """The `__call__` trace with training=True of a TF2 SavedModel, if any."""
  obj = tensorflow_hub.load(path)
  keys = () if output_key is None else (output_key,)
  candidate = function_candidate(obj, "__call__", keys, exact=True, training=True)
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


def tf1_training(path: str, signature: str, signature_def,
                  output_key: str | None) -> Candidate | None:
  """The signature of the TF1 'train' MetaGraph, with its UPDATE_OPS."""
  obj = tensorflow_hub.load(path, tags=set(TRAIN_TAGS))
  fn = _prune_with_updates(obj, signature_def)
  keys = () if output_key is None else (output_key,)
  candidate = _concrete_candidate(fn, f"signature {signature!r} (tags {{'train'}})", keys,
                                  exact=True, signature=signature)
  return candidate and dataclasses.replace(candidate, owner=obj)


def training_apply(model: str, find: Callable[[], Candidate | None]):
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


def read_saved_model(path: str) -> saved_model_pb2.SavedModel:
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


def tf1_signature_def(proto, tags, signature: str):
  """The SignatureDef of a TF1 SavedModel's MetaGraph with these tags, or None."""
  metas = list(proto.meta_graphs)
  # tf.saved_model.load's rule: one MetaGraph with an object graph is TF2.
  if len(metas) == 1 and metas[0].HasField("object_graph_def"):
    return None
  for meta in metas:
    if set(meta.meta_info_def.tags) == set(tags):
      return meta.signature_def.get(signature)
  return None
