"""Label-Feature Correlation (LFC): how well the feature Gram matrix matches the labels.

Deshpande et al., "A linearized framework and a new benchmark for model
selection for fine-tuning" (arXiv:2102.00084), Sec. 3. Linearised fine-tuning
is governed by a kernel between training examples; LFC takes the kernel of the
frozen features, K = F F^T, and scores a model by the Pearson correlation
between the entries of K and of the label-similarity matrix
Y_ij = +1 if y_i == y_j else -1 (the paper's rho(Theta, Y), its eq. 8, with the
feature kernel in place of the gradient kernel; `lgc.py` has the gradient one):

  LFC = <K - mean(K), Y - mean(Y)>_F / (||K - mean(K)||_F ||Y - mean(Y)||_F),

the means and norms taken over all N^2 entries, diagonal included.

Conventions. The features enter raw: no centring, no per-dimension
standardisation, no row normalisation, as the paper writes K = F F^T and as the
public re-implementations (e.g. in transferability benchmarks) compute it. The
Pearson correlation removes the mean and the scale of the entries of K, so LFC
is invariant to scaling and rotating the features, but not to shifting them
(a shift changes K by more than a constant). Some public re-implementations
divide by np.linalg.norm(M, ord=2), the *spectral* norm of each matrix; that is
not a correlation (it need not lie in [-1, 1]), so here the norms are
Frobenius, as the Pearson correlation requires.

Nothing N x N is formed. Write f_i = mu + g_i with mu the mean feature and
a_i = mu . g_i (so sum_i a_i = 0 and sum_i g_i = 0). Then the centred kernel is
exactly K - mean(K) = a 1^T + 1 a^T + G with G = g g^T, whose cross terms vanish
in the norm, and Y - mean(Y) is a function of the class counts n_c:

  <K - mean(K), Y> = 2 sum_c (2 n_c mu . t_c + ||t_c||^2),  t_c = sum_{i in c} g_i
  ||K - mean(K)||_F^2 = 2 N ||a||^2 + ||g^T g||_F^2
  ||Y - mean(Y)||_F^2 = 4 N^2 q (1 - q),  q = sum_c (n_c / N)^2.

Every term is a sum of non-negative parts, so float32 loses no digits to
cancellation even when the features sit far from the origin. Memory is O(N D)
plus a min(N, D)^2 Gram for ||g^T g||_F.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common

# Full float32 matmuls: TF32 / bf16 passes (the GPU / TPU default) would cost
# about three digits of the correlation.
_HIGHEST = jax.lax.Precision.HIGHEST
# Below this ratio ||F - mean(F)||_F / ||F||_F the rows differ only by float32
# rounding, K is constant up to noise and the correlation would be noise.
CONSTANT_RTOL = 1e-5


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _lfc_terms(features, labels, *, num_classes: int):
  """(LFC, relative spread of the rows) for validated [N, M] features."""
  f = features.astype(jnp.float32)
  n = f.shape[0]
  # Pearson is scale-invariant; unit RMS keeps ||g^T g||_F^2 (fourth powers of
  # the features) far from float32 overflow.
  rms = jnp.sqrt(jnp.mean(f * f))
  f = f / jnp.where(rms > 0, rms, 1.0)
  mu = jnp.mean(f, axis=0)
  g = f - mu
  spread = jnp.sqrt(jnp.sum(g * g)) / jnp.maximum(jnp.sqrt(jnp.sum(f * f)),
                                                  jnp.finfo(jnp.float32).tiny)
  a = jnp.matmul(g, mu, precision=_HIGHEST)  # [N]
  # ||g g^T||_F = ||g^T g||_F: take the smaller of the two Grams.
  if n <= g.shape[1]:
    gram = jnp.matmul(g, g.T, precision=_HIGHEST)
  else:
    gram = jnp.matmul(g.T, g, precision=_HIGHEST)
  k_norm_sq = 2.0 * n * jnp.sum(a * a) + jnp.sum(gram * gram)
  t = jax.ops.segment_sum(g, labels, num_segments=num_classes)  # [C, M]
  counts = jax.ops.segment_sum(jnp.ones((n,), jnp.float32), labels,
                               num_segments=num_classes)
  numerator = 2.0 * jnp.sum(2.0 * counts * jnp.matmul(t, mu, precision=_HIGHEST)
                            + jnp.sum(t * t, axis=1))
  q = jnp.sum((counts / n)**2)
  y_norm = 2.0 * n * jnp.sqrt(q * (1.0 - q))
  rho = numerator / (jnp.sqrt(k_norm_sq) * y_norm)
  return jnp.clip(rho, -1.0, 1.0), spread


def check_labels(labels, num_rows: int, *, num_classes: int | None = None,
                 what: str = "features") -> tuple[np.ndarray, int]:
  """Validates [N] labels against N rows; returns (int32 labels, num_classes).

  Args:
    labels: [N] integer class labels.
    num_rows: N, the rows of the matrix the labels describe.
    num_classes: the number of classes C (labels must be in 0..C-1); default
      max(labels) + 1.
    what: what the rows are, for messages.

  Raises:
    ValueError: for non-integer or mis-shaped labels, labels outside 0..C-1,
      or fewer than 2 classes present (the label matrix Y is then constant and
      its correlation with anything undefined).
  """
  y = np.asarray(labels)
  if y.ndim != 1 or y.shape[0] != num_rows:
    raise ValueError(f"labels must be [N] with N = {num_rows} (the rows of the "
                     f"{what}), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {y.dtype}")
  if num_classes is None:
    num_classes = int(y.max()) + 1 if y.size else 0
  bad = (y < 0) | (y >= num_classes)
  if np.any(bad):
    raise ValueError(f"labels contain {sorted(set(y[bad].tolist()))[:10]} "
                     f"outside 0..{num_classes - 1} (num_classes={num_classes})")
  present = np.unique(y)
  if present.size < 2:
    raise ValueError(f"labels contain only class(es) {present.tolist()}; at "
                     "least 2 classes must be present for the label-similarity "
                     "matrix to vary")
  return y.astype(np.int32), int(num_classes)


def kernel_label_correlation(features, labels, *, num_classes: int | None = None,
                             what: str = "features") -> float:
  """Pearson correlation between the entries of F F^T and of Y (see module doc).

  Shared by LFC (F = features) and LGC (F = per-example gradients, so that
  F F^T is the gradient Gram matrix).

  Args:
    features: [N, M] float rows F; the kernel is F F^T.
    labels: [N] int labels in 0..C-1.
    num_classes: C; default max(labels) + 1.
    what: what the rows are, for messages.

  Returns:
    The correlation, a float in [-1, 1].

  Raises:
    ValueError: for bad shapes or labels, fewer than 2 classes present,
      non-finite rows, or rows that are all equal (F F^T is then constant).
  """
  f = jnp.asarray(features)
  if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
    raise ValueError(f"{what} must be [N, M] with N >= 2 and M >= 1, got shape "
                     f"{f.shape}")
  if not jnp.issubdtype(f.dtype, jnp.floating):
    f = f.astype(jnp.float32)
  y, num_classes = check_labels(labels, f.shape[0], num_classes=num_classes,
                                what=what)
  rho, spread = _lfc_terms(f, jnp.asarray(y), num_classes=num_classes)
  rho, spread = float(rho), float(spread)
  if not np.isfinite(spread):
    raise ValueError(f"{what} contain non-finite values")
  if spread <= CONSTANT_RTOL:
    raise ValueError(
        f"{what} are (numerically) the same for every example "
        f"(||F - mean(F)||_F / ||F||_F = {spread:.3g}), so the kernel F F^T is "
        "constant and its correlation with the labels is undefined")
  return rho


def lfc(features, labels, *, num_classes: int | None = None) -> float:
  """Label-Feature Correlation (Deshpande et al. 2021, Sec. 3, eq. 8 with K = F F^T).

  Args:
    features: [N, D] float32 features (raw: not centred or normalised).
    labels: [N] int labels in 0..C-1.
    num_classes: C; default max(labels) + 1. Only bounds-checks the labels:
      empty classes do not change the score.

  Returns:
    The Pearson correlation between the entries of F F^T and of
    Y (Y_ij = +1 for equal labels, -1 otherwise), in [-1, 1]; higher means the
    features' similarities follow the classes more closely.

  Raises:
    ValueError: for bad shapes or labels, a single class present, or features
      that are the same for every example.
  """
  return kernel_label_correlation(features, labels, num_classes=num_classes,
                                  what="features")


def score(inputs: common.ScoreInputs) -> dict[str, float]:
  """LFC of the train features and labels (the paper uses the target train set).

  Args:
    inputs: the (model, task) features and labels.

  Returns:
    {'score': LFC in [-1, 1]}, higher = better.
  """
  return {"score": lfc(inputs.train_features, inputs.train_labels,
                       num_classes=inputs.num_classes)}
