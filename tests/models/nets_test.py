"""Tests for the mini zoo's Flax nets: shapes, feature dims, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model_search.models import nets

# Tiny configs with hand-computed feature-extractor parameter counts.
# cnn widths (4, 8): convs 3*3*3*4+4, 3*3*4*4+4, 3*3*4*8+8, 3*3*8*8+8
#   = 112 + 148 + 296 + 584 = 1140; proj 8*6+6 = 54.
# resnet widths (4, 8), blocks (1, 1): stem 3*3*3*4 = 108 (no bias);
#   stage0 block: norm1 2*4 + conv1 3*3*4*4 + norm2 2*4 + conv2 3*3*4*4 = 304;
#   stage1 block: norm1 2*4 + proj 4*8 + conv1 3*3*4*8 + norm2 2*8
#   + conv2 3*3*8*8 = 920; final norm 2*8 = 16; total 1348.
# mixer patch 8 (16 tokens), hidden 6, tokens_mlp 5, channels_mlp 7, depth 1:
#   stem 8*8*3*6+6 = 1158; block: token_norm 12, token_mlp_in 16*5+5 = 85,
#   token_mlp_out 5*16+16 = 96, channel_norm 12, channel_mlp_in 6*7+7 = 49,
#   channel_mlp_out 7*6+6 = 48 -> 302; final norm 12; total 1472.
TINY = [
    ("cnn", dict(widths=(4, 8)), 1140, 8),
    ("cnn", dict(widths=(4, 8), feature_dim=6), 1140 + 54, 6),
    ("cnn", dict(widths=(4, 8), downsample="stride", stem_stride=1), 1140, 8),
    ("resnet", dict(widths=(4, 8), blocks=(1, 1)), 1348, 8),
    ("mixer", dict(patch=8, hidden=6, tokens_mlp=5, channels_mlp=7, depth=1),
     1472, 6),
]


def _init(arch, kwargs, num_classes=3, size=32):
  net = nets.get_net(arch, num_classes, **kwargs)
  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  # Compiling `init` costs seconds on CPU; tracing it is enough for shapes.
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(0)
  return net, jax.tree.map(
      lambda s: (rng.standard_normal(s.shape) / np.sqrt(s.shape[0])).astype(
          np.float32), shapes)


@pytest.mark.parametrize("arch,kwargs,num_params,dim", TINY)
def test_shapes_and_param_counts(arch, kwargs, num_params, dim):
  net, variables = _init(arch, kwargs, num_classes=3)
  x = jax.random.uniform(jax.random.PRNGKey(1), (5, 32, 32, 3))
  features, logits = jax.jit(net.apply)(variables, x)
  assert features.shape == (5, dim)
  assert logits.shape == (5, 3)
  assert nets.feature_dim(arch, **kwargs) == dim
  assert nets.count_params(variables) == num_params
  assert nets.count_params(variables["params"]) == num_params  # Unboxed too.
  head = variables["params"]["head"]
  assert head["kernel"].shape == (dim, 3) and head["bias"].shape == (3,)


@pytest.mark.parametrize("arch", sorted(nets.NETS))
def test_default_configs(arch):
  net, variables = _init(arch, {}, num_classes=10)
  features, logits = jax.jit(net.apply)(variables, jnp.ones((2, 32, 32, 3)))
  assert features.shape == (2, nets.feature_dim(arch))
  assert logits.shape == (2, 10)
  assert np.isfinite(np.asarray(features)).all()


def test_logits_are_dense_head_of_features():
  net, variables = _init("resnet", dict(widths=(4, 8), blocks=(1, 1)))
  x = jax.random.uniform(jax.random.PRNGKey(2), (3, 32, 32, 3))
  features, logits = jax.jit(net.apply)(variables, x)
  head = variables["params"]["head"]
  np.testing.assert_allclose(logits, features @ head["kernel"] + head["bias"],
                             rtol=1e-5, atol=1e-6)


def test_training_step_reduces_loss():
  net, variables = _init("mixer", dict(patch=8, hidden=8, tokens_mlp=8,
                                       channels_mlp=8, depth=1))
  x = jax.random.uniform(jax.random.PRNGKey(3), (8, 32, 32, 3))
  y = jnp.arange(8) % 3

  def loss(v):
    logits = net.apply(v, x)[1]
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])

  l0, g = jax.jit(jax.value_and_grad(loss))(variables)
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g))
  v1 = jax.tree.map(lambda p, d: p - 0.1 * d, variables, g)
  assert jax.jit(loss)(v1) < l0


def test_num_groups():
  assert nets.num_groups(16) == 8
  assert nets.num_groups(12) == 6
  assert nets.num_groups(7) == 7
  assert nets.num_groups(3) == 3
  assert nets.num_groups(11) == 1


def test_errors():
  with pytest.raises(ValueError, match="valid names: cnn, mixer, resnet"):
    nets.get_net("vit", 10)
  with pytest.raises(ValueError, match="valid options"):
    nets.get_net("cnn", 10, depth=3)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  net = nets.get_net("cnn", 10, downsample="avg")
  with pytest.raises(ValueError, match="'max', 'stride'"):
    jax.eval_shape(net.init, jax.random.PRNGKey(0), x)
  net = nets.get_net("mixer", 10, patch=5)
  with pytest.raises(ValueError, match="not divisible"):
    jax.eval_shape(net.init, jax.random.PRNGKey(0), x)


def test_gelu_is_tanh_approximation():
  x = jnp.linspace(-6.0, 6.0, 101)
  np.testing.assert_allclose(nets.gelu(x), jax.nn.gelu(x, approximate=True),
                             rtol=1e-6, atol=1e-6)
