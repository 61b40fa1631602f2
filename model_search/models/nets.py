"""The mini zoo's Flax architectures: small CNN, pre-activation ResNet and MLP-Mixer.

Every net takes float32 images [N, 32, 32, 3] in [0, 1] (other square sizes
work too; the Mixer needs a size divisible by its patch) and returns
`(features [N, D], logits [N, num_classes])`, where `features` are the
pre-logits (after global pooling and the final norm) and `logits` come from a
Dense layer named 'head'. There is no BatchNorm (GroupNorm / LayerNorm only),
so training and inference are the same function and a net exported to a
SavedModel (`model_search.models.export`) needs no mutable state.

Parameter names are chosen by hand ('stage0_conv1', 'block1/token_mlp_in', ...)
because `export.tf_mirror` rebuilds each net from them and `hub.load` returns
params keyed by the same '/'-joined paths.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Shared with export.py so that the TensorFlow mirror normalises identically.
NORM_EPSILON = 1e-6
MAX_GROUPS = 8


def num_groups(channels: int, max_groups: int = MAX_GROUPS) -> int:
  """The largest GroupNorm group count <= max_groups dividing channels."""
  for g in range(min(max_groups, channels), 0, -1):
    if channels % g == 0:
      return g
  return 1


def gelu(x):
  """tanh-approximated GELU, written out so the TF mirror copies it exactly."""
  return x * (0.5 * (1.0 + jnp.tanh(np.float32(np.sqrt(2.0 / np.pi)) *
                                    (x + np.float32(0.044715) * (x * x * x)))))


class CNN(nn.Module):
  """A VGG-style CNN.

  Each stage is conv3x3-relu, conv3x3-relu, then a 2x2 max-pool
  (`downsample='max'`) or a stride-2 second conv (`downsample='stride'`).
  The very first conv has stride `stem_stride`.
  Features are the global average pool of the last stage, optionally followed
  by a Dense projection + relu to `feature_dim`.

  Attributes:
    num_classes: size of the logits head.
    widths: channels of each stage.
    feature_dim: if set, width of a Dense + relu projection after pooling.
    downsample: 'max' or 'stride'.
    stem_stride: stride of the very first conv. The default 2 makes the net
      ~3x cheaper on CPU (a full-resolution first stage dominates the cost);
      1 keeps the first stage at the input resolution.
  """
  num_classes: int
  widths: Sequence[int] = (32, 64, 128)
  feature_dim: int | None = None
  downsample: str = "max"
  stem_stride: int = 2

  @nn.compact
  def __call__(self, x):
    if self.downsample not in ("max", "stride"):
      raise ValueError(f"Unknown downsample {self.downsample!r}; "
                       "valid choices: 'max', 'stride'")
    for i, width in enumerate(self.widths):
      s0 = self.stem_stride if i == 0 else 1
      x = nn.relu(nn.Conv(width, (3, 3), strides=(s0, s0),
                          name=f"stage{i}_conv0")(x))
      stride = 2 if self.downsample == "stride" else 1
      x = nn.relu(nn.Conv(width, (3, 3), strides=(stride, stride),
                          name=f"stage{i}_conv1")(x))
      if self.downsample == "max":
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    x = jnp.mean(x, axis=(1, 2))
    if self.feature_dim is not None:
      x = nn.relu(nn.Dense(self.feature_dim, name="proj")(x))
    return x, nn.Dense(self.num_classes, name="head")(x)


class _PreActBlock(nn.Module):
  """Pre-activation residual block (He et al. 2016, "Identity Mappings")."""
  width: int
  stride: int

  @nn.compact
  def __call__(self, x):
    y = nn.relu(nn.GroupNorm(num_groups(x.shape[-1]), epsilon=NORM_EPSILON,
                             name="norm1")(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.width:
      # Projection of the pre-activated input, as in ResNet v2.
      shortcut = nn.Conv(self.width, (1, 1), strides=self.stride,
                         use_bias=False, name="proj")(y)
    y = nn.Conv(self.width, (3, 3), strides=self.stride, use_bias=False,
                name="conv1")(y)
    y = nn.relu(nn.GroupNorm(num_groups(self.width), epsilon=NORM_EPSILON,
                             name="norm2")(y))
    y = nn.Conv(self.width, (3, 3), use_bias=False, name="conv2")(y)
    return y + shortcut


class ResNet(nn.Module):
  """A small pre-activation ResNet with GroupNorm.

  Stem conv3x3 (stride `stem_stride`), then one stage per width with
  `blocks[i]` residual blocks; every stage after the first halves the
  resolution in its first block (stride-2 convs). Features are GroupNorm +
  relu of the last stage, globally averaged.

  Attributes:
    num_classes: size of the logits head.
    widths: channels of each stage.
    blocks: residual blocks per stage (same length as widths).
    stem_stride: stride of the stem conv (default 2, ~3x cheaper on CPU than
      1; see CNN).
  """
  num_classes: int
  widths: Sequence[int] = (32, 64, 128)
  blocks: Sequence[int] = (1, 1, 1)
  stem_stride: int = 2

  @nn.compact
  def __call__(self, x):
    if len(self.widths) != len(self.blocks):
      raise ValueError(f"widths {tuple(self.widths)} and blocks "
                       f"{tuple(self.blocks)} must have the same length")
    x = nn.Conv(self.widths[0], (3, 3), strides=(self.stem_stride,) * 2,
                use_bias=False, name="stem")(x)
    for i, (width, n) in enumerate(zip(self.widths, self.blocks)):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = _PreActBlock(width, stride, name=f"stage{i}_block{j}")(x)
    x = nn.relu(nn.GroupNorm(num_groups(x.shape[-1]), epsilon=NORM_EPSILON,
                             name="norm")(x))
    x = jnp.mean(x, axis=(1, 2))
    return x, nn.Dense(self.num_classes, name="head")(x)


class _MixerBlock(nn.Module):
  """Token mixing then channel mixing, each LayerNorm -> MLP -> residual."""
  tokens_mlp: int
  channels_mlp: int

  @nn.compact
  def __call__(self, x):  # x: [N, T, C]
    num_tokens, channels = x.shape[1], x.shape[2]
    y = nn.LayerNorm(epsilon=NORM_EPSILON, name="token_norm")(x)
    y = jnp.swapaxes(y, 1, 2)
    y = gelu(nn.Dense(self.tokens_mlp, name="token_mlp_in")(y))
    y = nn.Dense(num_tokens, name="token_mlp_out")(y)
    x = x + jnp.swapaxes(y, 1, 2)
    y = nn.LayerNorm(epsilon=NORM_EPSILON, name="channel_norm")(x)
    y = gelu(nn.Dense(self.channels_mlp, name="channel_mlp_in")(y))
    y = nn.Dense(channels, name="channel_mlp_out")(y)
    return x + y


class Mixer(nn.Module):
  """A small MLP-Mixer (Tolstikhin et al. 2021) with LayerNorm and tanh-GELU.

  Non-overlapping patch x patch patches are embedded to `hidden` channels by a
  strided conv; `depth` Mixer blocks follow; features are the final LayerNorm
  averaged over tokens. (Chosen over a ViT: no attention, so the TF mirror is
  a handful of matmuls, and the token MLP makes it a genuinely different
  family from the convnets.)

  Attributes:
    num_classes: size of the logits head.
    patch: patch size; the input size must be divisible by it.
    hidden: channels per token (= feature dim).
    tokens_mlp: hidden width of the token-mixing MLP.
    channels_mlp: hidden width of the channel-mixing MLP.
    depth: number of Mixer blocks.
  """
  num_classes: int
  patch: int = 4
  hidden: int = 64
  tokens_mlp: int = 64
  channels_mlp: int = 128
  depth: int = 2

  @nn.compact
  def __call__(self, x):
    if x.shape[1] % self.patch or x.shape[2] % self.patch:
      raise ValueError(f"Input size {x.shape[1:3]} is not divisible by the "
                       f"patch size {self.patch}")
    x = nn.Conv(self.hidden, (self.patch, self.patch),
                strides=(self.patch, self.patch), padding="VALID",
                name="stem")(x)
    x = x.reshape(x.shape[0], -1, self.hidden)
    for i in range(self.depth):
      x = _MixerBlock(self.tokens_mlp, self.channels_mlp, name=f"block{i}")(x)
    x = nn.LayerNorm(epsilon=NORM_EPSILON, name="norm")(x)
    x = jnp.mean(x, axis=1)
    return x, nn.Dense(self.num_classes, name="head")(x)


NETS = {"cnn": CNN, "resnet": ResNet, "mixer": Mixer}


def get_net(arch: str, num_classes: int, **kwargs) -> nn.Module:
  """Builds a net by family name.

  Args:
    arch: 'cnn', 'resnet' or 'mixer'.
    num_classes: size of the logits head.
    **kwargs: the family's other attributes (widths, blocks, patch, ...).

  Returns:
    The (unbound) Flax module.
  """
  if arch not in NETS:
    raise ValueError(f"Unknown architecture {arch!r}; "
                     f"valid names: {', '.join(sorted(NETS))}")
  cls = NETS[arch]
  fields = set(cls.__dataclass_fields__) - {"parent", "name"}
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"Unknown options {sorted(unknown)} for {arch!r}; "
                     f"valid options: {', '.join(sorted(fields))}")
  return cls(num_classes=num_classes, **kwargs)


def _unbox(params: Any) -> Any:
  """Accepts either the `init` output ({'params': ...}) or the params dict."""
  if isinstance(params, dict) and set(params) == {"params"}:
    return params["params"]
  if hasattr(params, "keys") and list(params.keys()) == ["params"]:
    return params["params"]
  return params


def count_params(params: Any) -> int:
  """Counts the feature extractor's parameters (everything but 'head').

  Args:
    params: the variables returned by `module.init` or their 'params' entry.

  Returns:
    The number of scalar parameters outside the 'head' layer.
  """
  params = _unbox(params)
  return int(sum(np.size(leaf) for key, sub in params.items() if key != "head"
                 for leaf in jax.tree_util.tree_leaves(sub)))


def feature_dim(arch: str, **kwargs) -> int:
  """The feature (pre-logits) dimension of a net, without building it.

  Args:
    arch: 'cnn', 'resnet' or 'mixer'.
    **kwargs: the family's options, as for `get_net` (num_classes optional).

  Returns:
    D, the width of the features the net returns.
  """
  kwargs = dict(kwargs)
  kwargs.pop("num_classes", None)
  net = get_net(arch, 1, **kwargs)
  if arch == "cnn":
    return net.feature_dim or net.widths[-1]
  if arch == "resnet":
    return net.widths[-1]
  return net.hidden
