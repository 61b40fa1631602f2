"""MSC: mean silhouette coefficient of the features, with the labels as clusters.

Meiseles & Rokach, "Source Model Selection for Deep Learning in the Time Series
Domain" (IEEE Access 2020), rank source models by the mean silhouette
coefficient (Rousseeuw 1987) of the target examples' representations, the
target classes taken as the clusters. For example i of class c:

  a(i) = mean Euclidean distance from i to the other examples of class c,
  b(i) = min over classes c' != c of the mean distance from i to class c',
  s(i) = (b(i) - a(i)) / max(a(i), b(i)),

and MSC = mean_i s(i), in [-1, 1]; higher = tighter, better separated classes =
predicted better transfer. As in sklearn.metrics.silhouette_score: s(i) = 0
for an example alone in its class, and 0 when a(i) = b(i) = 0 (all its
distances are zero, e.g. constant features).

Distances are computed a block of rows at a time, ||x_i||^2 - 2 x_i.x_j +
||x_j||^2 on features centred first (Euclidean distances do not change under a
shift; centring keeps the expansion from cancelling digits), with an exact zero
for the distance of a point to itself. Per-class distance sums are one matmul
of the block's distances with the one-hot labels, so memory is
O(block_size x N + N x C).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common

# Full float32 matmuls: TF32 / bf16 passes would distort small distances.
_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("num_classes", "block_size"))
def _silhouette_sum(x, codes, *, num_classes: int, block_size: int):
  """(sum of s(i) over all rows, whether x is all finite), codes in 0..K-1."""
  finite = jnp.all(jnp.isfinite(x))
  x = x - jnp.mean(x, axis=0, keepdims=True)
  n = x.shape[0]
  sq = jnp.sum(x * x, axis=1)
  onehot = jax.nn.one_hot(codes, num_classes, dtype=jnp.float32)  # [N, K]
  counts = jnp.sum(onehot, axis=0)  # [K]
  num_blocks = -(-n // block_size)
  pad = num_blocks * block_size - n
  rows = jnp.arange(num_blocks * block_size).reshape(num_blocks, block_size)
  blocks_c = jnp.pad(codes, (0, pad)).reshape(num_blocks, block_size)

  def block_sum(args):
    idx, bc = args  # [b] row indices (>= n: padding), [b] their classes.
    valid = idx < n
    bx = x[jnp.minimum(idx, n - 1)]
    d2 = (sq[jnp.minimum(idx, n - 1)][:, None] + sq[None, :] -
          2.0 * jnp.matmul(bx, x.T, precision=_HIGHEST))
    dist = jnp.sqrt(jnp.maximum(d2, 0.0))
    dist = jnp.where(idx[:, None] == jnp.arange(n)[None, :], 0.0, dist)
    sums = jnp.matmul(dist, onehot, precision=_HIGHEST)  # [b, K]
    own = jax.nn.one_hot(bc, num_classes, dtype=bool)
    own_count = counts[bc]
    a = jnp.sum(jnp.where(own, sums, 0.0), axis=1) / jnp.maximum(
        own_count - 1.0, 1.0)
    # Classes present have count >= 1; the own class is excluded from b.
    b = jnp.min(jnp.where(own, jnp.inf, sums / counts[None, :]), axis=1)
    denom = jnp.maximum(a, b)
    s = jnp.where((own_count > 1) & (denom > 0),
                  (b - a) / jnp.where(denom > 0, denom, 1.0), 0.0)
    return jnp.sum(jnp.where(valid, s, 0.0))

  total = jnp.sum(jax.lax.map(block_sum, (rows, blocks_c)))
  return total, finite


def msc(features, labels, *, block_size: int = 1024) -> float:
  """Mean silhouette coefficient of features clustered by labels (Euclidean).

  Matches sklearn.metrics.silhouette_score(features, labels) (up to float32
  rounding). Jittable core (`_silhouette_sum`); this wrapper maps the labels
  present to 0..K-1 on the host, so K (a shape) is static.

  Args:
    features: [N, D] float features.
    labels: [N] int class indices (0..C-1; the classes present are the
      clusters).
    block_size: number of rows whose distances to all N rows are held at once.

  Returns:
    The mean silhouette in [-1, 1], a float.

  Raises:
    ValueError: for bad shapes, non-integer or negative labels, non-finite
      features, a bad block_size, or a number of classes present outside
      2..N-1 (where the silhouette is undefined, as in sklearn).
  """
  x = jnp.asarray(features)
  y = np.asarray(labels)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"msc: features must be a non-empty [N, D] array, got "
                     f"shape {x.shape}")
  if not (jnp.issubdtype(x.dtype, jnp.floating) or
          jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"msc: features must be numeric, got {x.dtype}")
  n = x.shape[0]
  if y.shape != (n,):
    raise ValueError(f"msc: labels must have shape [N] = ({n},) to match the "
                     f"features, got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"msc: labels must be integers, got {y.dtype}")
  if y.min() < 0:
    raise ValueError(f"msc: labels must be class indices in 0..C-1, got "
                     f"{sorted(set(y[y < 0].tolist()))[:10]}")
  if isinstance(block_size, bool) or not isinstance(
      block_size, (int, np.integer)) or block_size < 1:
    raise ValueError(f"msc: block_size must be a positive int, got "
                     f"{block_size!r}")
  classes, codes = np.unique(y, return_inverse=True)
  if not 2 <= classes.size <= n - 1:
    raise ValueError(f"msc: the silhouette needs 2..N-1 = 2..{n - 1} classes "
                     f"present, got {classes.size} (classes "
                     f"{classes.tolist()[:10]})")
  total, finite = _silhouette_sum(
      x.astype(jnp.float32), jnp.asarray(codes.reshape(-1), jnp.int32),
      num_classes=int(classes.size), block_size=int(min(block_size, n)))
  if not bool(finite):
    raise ValueError("msc: features contain NaN or inf (after conversion to "
                     "float32)")
  return float(total) / n


def score(inputs: common.ScoreInputs, *,
          block_size: int = 1024) -> dict[str, float]:
  """MSC on the train split (the paper scores the target training data).

  Args:
    inputs: the (model, task) features and labels.
    block_size: rows whose distances are held at once.

  Returns:
    {'score': mean silhouette coefficient in [-1, 1], higher = better}.
  """
  return {"score": msc(inputs.train_features, inputs.train_labels,
                       block_size=block_size)}
