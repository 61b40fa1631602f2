"""Tests for 1x1 convolutions as matrix products: same values and gradients, no 1x1 conv left."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_search.models import cpu_convs

DN = ("NHWC", "HWIO", "NHWC")


def _net(params, x):
  """1x1 (stride 1 and 2), 3x3 and grouped convs, one inside a nested jit."""
  y = jax.lax.conv_general_dilated(x, params["a"], (1, 1), "SAME", dimension_numbers=DN)
  y = jax.nn.relu(y)
  y = jax.jit(lambda y, k: jax.lax.conv_general_dilated(
      y, k, (2, 2), "VALID", dimension_numbers=DN))(y, params["b"])
  y = jax.lax.conv_general_dilated(y, params["c"], (1, 1), "SAME", dimension_numbers=DN)
  y = jax.lax.conv_general_dilated(y, params["g"], (1, 1), "SAME", dimension_numbers=DN,
                                   feature_group_count=2)
  return {"out": jnp.mean(y, axis=(1, 2)), "map": y}


def _params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"a": (1, 1, 3, 8), "b": (1, 1, 8, 6), "c": (3, 3, 6, 6), "g": (1, 1, 3, 4)}
  return {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}


def _convs(fn, *args):
  jaxpr = jax.make_jaxpr(fn)(*args)
  found = []

  def walk(j):
    for eqn in j.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        found.append(tuple(eqn.invars[1].aval.shape))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        walk(sub)
  walk(jaxpr.jaxpr)
  return sorted(found)


@pytest.mark.parametrize("hw", [(9, 9), (10, 7)])
def test_same_values_and_gradients(hw):
  params = _params()
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3,) + hw + (3,)), jnp.float32)
  fast = cpu_convs.dot_1x1_convs(_net)
  want, got = _net(params, x), jax.jit(fast)(params, x)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda p: jnp.sum(f(p, x)["out"] ** 2)
  g_want, g_got = jax.grad(loss(_net))(params), jax.grad(loss(fast))(params)
  for k in params:
    np.testing.assert_allclose(g_got[k], g_want[k], rtol=1e-4, atol=1e-5)


def test_only_eligible_convs_are_replaced():
  params, x = _params(), jnp.zeros((2, 8, 8, 3), jnp.float32)
  assert _convs(_net, params, x) == [(1, 1, 3, 4), (1, 1, 3, 8), (1, 1, 8, 6), (3, 3, 6, 6)]
  # The 3x3 and the grouped 1x1 stay convolutions; the plain 1x1s (also the nested, strided
  # one) become dots.
  assert _convs(cpu_convs.dot_1x1_convs(_net), params, x) == [(1, 1, 3, 4), (3, 3, 6, 6)]


def test_on_cpu_rewrites_on_the_cpu_backend():
  assert jax.default_backend() == "cpu"
  params, x = _params(), jnp.zeros((1, 4, 4, 3), jnp.float32)
  assert len(_convs(cpu_convs.on_cpu(_net), params, x)) == 2
