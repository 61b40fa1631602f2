"""k-nearest-neighbour accuracy on frozen features, as a transferability score.

Distances are computed a block of test rows at a time, so memory is
O(block_size x N) however large the test set.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from model_search.scores import common

METRICS = ("cosine", "euclidean")
# Full float32 matmuls: TF32 / bf16 passes (the GPU / TPU default) would reorder
# near neighbours.
_HIGHEST = jax.lax.Precision.HIGHEST


def _block_predictions(train_x, train_y, block_x, *, k: int):
  """Predicted labels [b] for test rows [b, D'] (prepared by _knn_correct)."""
  # Similarity, higher = nearer: one matmul for both metrics.
  sim = jnp.matmul(block_x, train_x.T, precision=_HIGHEST)  # [b, N]
  # top_k orders equal values by lower index, so ties between equally distant
  # training points go to the earlier one.
  _, idx = jax.lax.top_k(sim, k)  # [b, k], nearest first.
  labels = train_y[idx]  # [b, k]
  if k == 1:
    return labels[:, 0]
  # votes[i, j]: how many of row i's k neighbours share neighbour j's label.
  votes = jnp.sum(labels[:, :, None] == labels[:, None, :], axis=2)
  # The first (nearest) neighbour whose label has the most votes: majority
  # vote, ties broken by the nearest neighbour among the tied classes.
  winner = jnp.argmax(votes == votes.max(axis=1, keepdims=True), axis=1)
  return jnp.take_along_axis(labels, winner[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("k", "metric", "block_size"))
def _knn_correct(train_x, train_y, test_x, test_y, *, k, metric, block_size):
  """Number of correctly classified test rows, one block at a time."""
  if metric == "cosine":
    # Unit rows: the similarity a.b is the cosine; distance is 1 - cosine.
    normalize = lambda x: x / jnp.maximum(
        jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    train_x, test_x = normalize(train_x), normalize(test_x)
  else:
    # ||a - b||^2 = ||a||^2 - 2 a.b + ||b||^2. ||a||^2 is the same for every
    # neighbour of a, so the ranking is that of the similarity
    # a.b - ||b||^2 / 2 = [a, 1] . [b, -||b||^2 / 2]. Distances do not change
    # under a shift; centring on the train mean first keeps this form from
    # cancelling digits when features sit far from the origin.
    mean = jnp.mean(train_x, axis=0)
    train_x, test_x = train_x - mean, test_x - mean
    half_sq = -0.5 * jnp.sum(train_x * train_x, axis=1, keepdims=True)
    train_x = jnp.concatenate([train_x, half_sq], axis=1)
    test_x = jnp.concatenate([test_x, jnp.ones_like(test_x[:, :1])], axis=1)
  m = test_x.shape[0]
  num_blocks = -(-m // block_size)
  pad = num_blocks * block_size - m
  blocks_x = jnp.pad(test_x, ((0, pad), (0, 0))).reshape(
      num_blocks, block_size, -1)
  blocks_y = jnp.pad(test_y, (0, pad), constant_values=-1).reshape(
      num_blocks, block_size)

  def block_correct(args):
    bx, by = args
    pred = _block_predictions(train_x, train_y, bx, k=k)
    return jnp.sum((pred == by) & (by >= 0))  # Padding rows have label -1.

  return jnp.sum(jax.lax.map(block_correct, (blocks_x, blocks_y)))


def knn_accuracy(train_x, train_y, test_x, test_y, *, k: int = 1,
                 metric: str = "euclidean", block_size: int = 1024) -> float:
  """Accuracy of a k-nearest-neighbour classifier.

  For k > 1 the prediction is the majority label among the k nearest training
  points; a tie between classes goes to the class of the nearest neighbour
  among the tied classes. Equally distant training points are ordered by
  index (the earlier one counts as nearer).

  Args:
    train_x: [N, D] float training features.
    train_y: [N] int training labels.
    test_x: [M, D] float test features (same D).
    test_y: [M] int test labels.
    k: number of neighbours, 1 <= k <= N.
    metric: 'euclidean' (Euclidean distance, ranked via
      ||a||^2 - 2 a.b + ||b||^2) or 'cosine' (1 - cosine similarity; zero
      vectors have similarity 0 to everything).
    block_size: number of test rows whose distances are held at once.

  Returns:
    The fraction of test rows whose predicted label equals test_y, in [0, 1].
  """
  if metric not in METRICS:
    raise ValueError(f"Unknown kNN metric {metric!r}; valid metrics: "
                     f"{', '.join(METRICS)}")
  train_x = jnp.asarray(train_x, jnp.float32)
  test_x = jnp.asarray(test_x, jnp.float32)
  train_y = jnp.asarray(train_y, jnp.int32)
  test_y = jnp.asarray(test_y, jnp.int32)
  if train_x.ndim != 2 or test_x.ndim != 2 or (
      train_x.shape[1] != test_x.shape[1]):
    raise ValueError(f"train_x and test_x must be [N, D] and [M, D], got "
                     f"{train_x.shape} and {test_x.shape}")
  if train_y.shape != train_x.shape[:1] or test_y.shape != test_x.shape[:1]:
    raise ValueError(f"Labels must match the rows: train_y {train_y.shape} vs "
                     f"train_x {train_x.shape}, test_y {test_y.shape} vs "
                     f"test_x {test_x.shape}")
  n, m = train_x.shape[0], test_x.shape[0]
  if not 1 <= k <= n:
    raise ValueError(f"k must be in 1..{n} (the number of training points), "
                     f"got {k}")
  if block_size < 1:
    raise ValueError(f"block_size must be >= 1, got {block_size}")
  if m == 0:
    raise ValueError("test_x is empty")
  # No point in padding a small test set up to a large block.
  block_size = min(int(block_size), m)
  correct = _knn_correct(train_x, train_y, test_x, test_y, k=int(k),
                         metric=metric, block_size=block_size)
  return float(correct) / m


def score(inputs: common.ScoreInputs, *, k: int = 1,
          metric: str = "euclidean",
          block_size: int = 1024) -> dict[str, float]:
  """kNN accuracy on the validation split, neighbours from the train split.

  Args:
    inputs: the (model, task) features and labels.
    k: number of neighbours.
    metric: 'euclidean' or 'cosine'.
    block_size: number of val rows whose distances are held at once.

  Returns:
    {'score': validation accuracy in [0, 1]}.
  """
  acc = knn_accuracy(inputs.train_features, inputs.train_labels,
                     inputs.val_features, inputs.val_labels, k=k,
                     metric=metric, block_size=block_size)
  return {"score": acc}
