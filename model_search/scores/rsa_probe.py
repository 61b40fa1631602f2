"""The task probe of RSA (`rsa.py`): a small CNN trained on the target task, cached per process.

Dwivedi & Roig compare a model's representation dissimilarities with those of a small network
trained on the new task. `ProbeNet` is that network here; `train_probe` trains it from a seed
(one jitted `lax.scan`), `cached_probe` keeps trained probes in a process-wide LRU (the same
task is scored for many models). The choices are documented in `rsa.py`'s module docstring.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import math
import threading
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# Trained probes kept per process (see rsa.py's module doc).
PROBE_CACHE_SIZE = 8
# Full float32 patch extraction (a convolution) on GPU / TPU.
_HIGHEST = jax.lax.Precision.HIGHEST
# Images resized and probe outputs computed this many at a time.
_CHUNK = 256


def _max_pool2(x):
  """2x2 max-pool, stride 2, dropping an odd last row / column (reshape, fast on CPU)."""
  n, h, w, c = x.shape
  if h < 2 or w < 2:
    return x
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class ProbeNet(nn.Module):
  """The task probe: conv3x3-relu-maxpool stages, global average pool, linear head.

  Each conv is `conv_general_dilated_patches` (SAME padding) followed by a
  Dense layer: the same function as nn.Conv, with gradients XLA:CPU computes
  several times faster.

  Attributes:
    num_classes: size of the logits head.
    widths: channels of each stage.
    stem_stride: stride of the first conv; 2 trains ~4x faster at a quarter
      of the resolution.
  """
  num_classes: int
  widths: Sequence[int] = (16, 32, 64)
  stem_stride: int = 1

  @nn.compact
  def __call__(self, x):
    for i, width in enumerate(self.widths):
      stride = self.stem_stride if i == 0 else 1
      patches = jax.lax.conv_general_dilated_patches(
          x, (3, 3), (stride, stride), "SAME",
          dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=_HIGHEST)
      x = _max_pool2(nn.relu(nn.Dense(width, name=f"conv{i}")(patches)))
    features = jnp.mean(x, axis=(1, 2))
    return features, nn.Dense(self.num_classes, name="head")(features)


def _check_images(images, name: str) -> np.ndarray:
  x = np.asarray(images)
  if x.ndim != 4 or 0 in x.shape:
    raise ValueError(f"{name} must be a non-empty [N, H, W, C] array, got shape "
                     f"{x.shape}")
  if not (np.issubdtype(x.dtype, np.floating) or
          np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{name} must be numeric (uint8 or float), got dtype "
                     f"{x.dtype}")
  if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contain NaN or inf")
  return x


@functools.partial(jax.jit, static_argnames=("size",))
def _resize(x, *, size: int):
  x = x.astype(jnp.float32)
  return jax.image.resize(x, (x.shape[0], size, size, x.shape[3]),
                          method="linear", antialias=True)


def _chunked(fn, x: np.ndarray, chunk: int = _CHUNK):
  """fn over fixed-size chunks of x's rows (the last one padded: one compile)."""
  n = x.shape[0]
  if n <= chunk:
    return [fn(x)]
  outs = []
  for start in range(0, n, chunk):
    part = x[start:start + chunk]
    pad = chunk - part.shape[0]
    if pad:
      part = np.concatenate([part, np.zeros((pad,) + part.shape[1:],
                                            part.dtype)])
    out = fn(part)
    outs.append(jax.tree_util.tree_map(lambda a, k=chunk - pad: a[:k], out))
  return outs


def prepare_images(images, image_size: int = 32) -> np.ndarray:
  """Resizes images to the probe's input size (bilinear, antialiased), as float32.

  Args:
    images: [N, H, W, C] uint8 or float images, any value range.
    image_size: output height and width.

  Returns:
    [N, image_size, image_size, C] float32, same value range (not standardised).
  """
  x = _check_images(images, "images")
  if isinstance(image_size, bool) or not isinstance(image_size, int) or (
      image_size < 1):
    raise ValueError(f"image_size must be a positive int, got {image_size!r}")
  if x.shape[1] == x.shape[2] == image_size:
    return x.astype(np.float32)
  return np.concatenate([np.asarray(a) for a in _chunked(
      functools.partial(_resize, size=image_size), x)])


@dataclasses.dataclass(frozen=True, eq=False)
class Probe:
  """A trained task probe.

  Attributes:
    module: the ProbeNet.
    params: its trained parameters.
    mean: [C] per-channel mean of the resized training images.
    std: [C] per-channel standard deviation (1 where it was 0).
    image_size: the size images are resized to.
  """
  module: ProbeNet
  params: Any
  mean: np.ndarray
  std: np.ndarray
  image_size: int

  def apply(self, images) -> tuple[np.ndarray, np.ndarray]:
    """(penultimate features [N, widths[-1]], logits [N, num_classes]) on raw images."""
    x = prepare_images(images, self.image_size)
    if x.shape[-1] != self.mean.shape[0]:
      raise ValueError(f"images have {x.shape[-1]} channels but the probe was "
                       f"trained on {self.mean.shape[0]}")
    x = ((x - self.mean) / self.std).astype(np.float32)
    fn = _apply_fn(self.module)
    outs = _chunked(lambda part: fn(self.params, part), x)
    return (np.concatenate([np.asarray(f) for f, _ in outs]),
            np.concatenate([np.asarray(l) for _, l in outs]))

  def features(self, images) -> np.ndarray:
    """The probe's penultimate (pooled) features [N, widths[-1]]."""
    return self.apply(images)[0]

  def accuracy(self, images, labels) -> float:
    """Top-1 accuracy of the probe's head on (images, labels)."""
    logits = self.apply(images)[1]
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


@functools.lru_cache(maxsize=16)
def _apply_fn(module: ProbeNet):
  return jax.jit(module.apply)


@functools.lru_cache(maxsize=16)
def _train_fn(module: ProbeNet, learning_rate: float):
  """The jitted training loop: one lax.scan step per row of the batch schedule."""
  tx = optax.adam(learning_rate)

  def loss_fn(params, x, y):
    _, logits = module.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def train(params, images, labels, schedule):
    def step(carry, idx):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params, images[idx],
                                                labels[idx])
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)),
                                       schedule)
    return params, losses

  return jax.jit(train)


def _check_int(name: str, value, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value < minimum):
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
  return int(value)


def train_probe(images, labels, num_classes: int, *, steps: int = 500,
                batch_size: int = 64, learning_rate: float = 3e-3,
                seed: int = 0, image_size: int = 32,
                widths: Sequence[int] = (16, 32, 64),
                stem_stride: int = 1) -> Probe:
  """Trains the task probe from scratch, deterministically from `seed`.

  Args:
    images: [N, H, W, C] uint8 or float training images (any value range:
      they are standardised per channel after resizing).
    labels: [N] int labels in 0..num_classes-1.
    num_classes: size of the probe's head.
    steps: Adam steps.
    batch_size: examples per step (at most N: larger values use N). Batches
      walk through successive seeded permutations of the N examples.
    learning_rate: Adam's learning rate.
    seed: fixes the initialisation and the batch order.
    image_size: images are resized to image_size x image_size first.
    widths: channels of the probe's conv stages.
    stem_stride: stride of the probe's first conv (see ProbeNet).

  Returns:
    The trained Probe.
  """
  steps = _check_int("steps", steps, 1)
  batch_size = _check_int("batch_size", batch_size, 1)
  seed = _check_int("seed", seed, 0)
  num_classes = _check_int("num_classes", num_classes, 2)
  stem_stride = _check_int("stem_stride", stem_stride, 1)
  if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
    raise ValueError(f"widths must be a sequence of ints, got {widths!r}")
  widths = tuple(_check_int("widths entries", w, 1) for w in widths)
  if not widths:
    raise ValueError("widths must name at least one conv stage")
  if not (isinstance(learning_rate, (int, float)) and learning_rate > 0 and
          math.isfinite(learning_rate)):
    raise ValueError(f"learning_rate must be a positive float, got "
                     f"{learning_rate!r}")
  x = prepare_images(images, image_size)
  y = np.asarray(labels)
  if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be [{x.shape[0]}] integers (one per image), "
                     f"got shape {y.shape} and dtype {y.dtype}")
  if y.min() < 0 or y.max() >= num_classes:
    bad = sorted(set(y[(y < 0) | (y >= num_classes)].tolist()))
    raise ValueError(f"labels contain {bad[:10]} outside 0..{num_classes - 1} "
                     f"(num_classes={num_classes})")
  mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
  std = x.std(axis=(0, 1, 2), dtype=np.float64)
  std = np.where(std > 0, std, 1.0)
  x = ((x - mean) / std).astype(np.float32)

  n = x.shape[0]
  batch_size = min(batch_size, n)
  init_key, data_key = jax.random.split(jax.random.PRNGKey(seed))
  epochs = -(-steps * batch_size // n)
  perms = jax.vmap(lambda k: jax.random.permutation(k, n))(
      jax.random.split(data_key, epochs))
  schedule = perms.reshape(-1)[:steps * batch_size].reshape(steps, batch_size)

  module = ProbeNet(num_classes=num_classes, widths=widths,
                    stem_stride=stem_stride)
  params = module.init(init_key, jnp.zeros((1,) + x.shape[1:], jnp.float32))
  params, _ = _train_fn(module, float(learning_rate))(
      params, jnp.asarray(x), jnp.asarray(y, jnp.int32), schedule)
  return Probe(module=module, params=params, mean=mean.astype(np.float32),
               std=std.astype(np.float32), image_size=image_size)


# ----------------------------------------------------------------------------
# The per-process probe cache.

_cache: collections.OrderedDict[str, tuple[Probe, float]] = (
    collections.OrderedDict())
_cache_lock = threading.Lock()


def clear_probe_cache() -> None:
  """Forgets every cached probe."""
  with _cache_lock:
    _cache.clear()


def _probe_key(images, labels, num_classes: int, options: dict) -> str:
  x = np.ascontiguousarray(images)
  y = np.ascontiguousarray(np.asarray(labels, np.int64))
  h = hashlib.blake2b(digest_size=20)
  h.update(repr((x.shape, x.dtype.str, y.shape, num_classes,
                 sorted(options.items()))).encode())
  h.update(memoryview(x).cast("B"))
  h.update(memoryview(y).cast("B"))
  return h.hexdigest()


def cached_probe(images, labels, num_classes: int,
                 **options) -> tuple[Probe, float]:
  """`train_probe` through the process-wide LRU (see the module doc).

  Args:
    images, labels, num_classes, **options: as for `train_probe`.

  Returns:
    (the probe, its accuracy on the training images).
  """
  key = _probe_key(images, labels, num_classes, options)
  with _cache_lock:
    if key in _cache:
      _cache.move_to_end(key)
      return _cache[key]
  probe = train_probe(images, labels, num_classes, **options)
  entry = (probe, probe.accuracy(images, labels))
  with _cache_lock:
    _cache[key] = entry
    while len(_cache) > PROBE_CACHE_SIZE:
      _cache.popitem(last=False)
  return entry


