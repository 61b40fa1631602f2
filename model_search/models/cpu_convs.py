"""1x1 convolutions as matrix products, for XLA:CPU.

XLA:CPU runs a 1x1 convolution through its generic convolution kernel, which on large feature
maps is slow and keeps one core busy: a ResNet-50 bottleneck's 56x56x256 -> 64 projection runs at
53 GFLOP/s there and at 326 GFLOP/s as the same product written as a dot (2-core CPU, measured
in benchmarks/RESULTS.md). ResNets, Inceptions and MobileNets spend much of their time in such
layers. `dot_1x1_convs(fn)` traces `fn` to a jaxpr and evaluates it with every 1x1, ungrouped,
undilated, unpadded NHWC convolution replaced by a strided slice and a `dot_general`: the same
function (up to float32 summation order), differentiable, jittable. On GPU and TPU the vendor
convolution kernels are better, so callers apply it on CPU only (`on_cpu`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
from jax import lax
from jax.extend import core as jex_core


def _is_nhwc_1x1(params: dict[str, Any], kernel_shape) -> bool:
  dn = params["dimension_numbers"]
  # NHWC input/output, HWIO kernel, as tf2jax and Flax emit them.
  nhwc = (tuple(dn.lhs_spec) == (0, 3, 1, 2) and tuple(dn.rhs_spec) == (3, 2, 0, 1)
          and tuple(dn.out_spec) == (0, 3, 1, 2))
  return (nhwc and tuple(kernel_shape[:2]) == (1, 1)
          and all(tuple(p) == (0, 0) for p in params["padding"])
          and tuple(params["lhs_dilation"]) == (1, 1)
          and tuple(params["rhs_dilation"]) == (1, 1)
          and params["feature_group_count"] == 1 and params["batch_group_count"] == 1)


def _conv_1x1(x, kernel, params):
  """The 1x1 convolution of NHWC `x` with HWIO `kernel` as a slice and a dot."""
  sh, sw = params["window_strides"]
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw, :]
  out = lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())),
                        precision=params.get("precision"),
                        preferred_element_type=params.get("preferred_element_type"))
  return out.astype(x.dtype) if params.get("preferred_element_type") is None else out


def _eval(jaxpr: jex_core.Jaxpr, consts, *args):
  env = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    if name == "conv_general_dilated" and _is_nhwc_1x1(eqn.params, invals[1].shape):
      outvals = [_conv_1x1(invals[0], invals[1], eqn.params)]
    elif name in ("pjit", "jit"):  # Nested jit: rewrite inside too.
      closed = eqn.params["jaxpr"]
      outvals = _eval(closed.jaxpr, closed.consts, *invals)
    else:
      with eqn.ctx.manager:
        outvals = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(eqn.params))
      if not eqn.primitive.multiple_results:
        outvals = [outvals]
    for v, val in zip(eqn.outvars, outvals):
      env[v] = val
  return [read(v) for v in jaxpr.outvars]


def dot_1x1_convs(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`fn` with its 1x1 convolutions computed as matrix products (see the module docstring).

  Args:
    fn: a JAX-traceable function of arrays / pytrees of arrays.

  Returns:
    A function with the same signature and outputs; traced anew for each input shape.
  """
  @functools.wraps(fn)
  def wrapped(*args):
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
    flat = jax.tree_util.tree_leaves(args)
    out = _eval(closed.jaxpr, closed.consts, *flat)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), out)
  return wrapped


def on_cpu(fn: Callable[..., Any]) -> Callable[..., Any]:
  """`dot_1x1_convs(fn)` when JAX's default backend is the CPU, else `fn` itself."""
  return dot_1x1_convs(fn) if jax.default_backend() == "cpu" else fn
