"""Feature statistics of a representation: sparsity, variance spectrum, separability.

The project description names "`feature_metrics` (Ueno & Kondo sparsity and
variance metrics)". We could not find that paper's definitions through the
reference search available to us, so every metric below is our own, clearly
defined choice, in the spirit of the description (a sparsity statistic and
variance-based statistics of the features), not a reproduction of the paper:

* zero_fraction: the fraction of activations x_ij with
  |x_ij| <= zero_tol * RMS(x), the RMS over all N x D entries (scale-free
  "near zero"; exact zeros of ReLU features always count). 1.0 for all-zero
  features.
* hoyer_sparsity: the mean over examples of Hoyer's sparsity (Hoyer, "Non-
  negative Matrix Factorization with Sparseness Constraints", JMLR 2004),
  (sqrt(D) - ||x||_1 / ||x||_2) / (sqrt(D) - 1), in [0, 1]: 1 for a single
  non-zero coordinate, 0 for equal magnitudes. An all-zero row and D = 1 count
  as 1 (maximally sparse).
* mean_variance: the mean over dimensions of the per-dimension variance
  (ddof 0). Depends on the feature scale: a diagnostic only.
* top_k_variance_ratio: the fraction of the total variance explained by the
  top `top_k` principal components.
* effective_rank: exp of the entropy of the normalised PCA spectrum (Roy &
  Vetterli, "The effective rank", EUSIPCO 2007), in [1, min(N - 1, D)].
* separability: tr(S_B) / tr(S_T), the between-class scatter over the total
  scatter (S_T = S_B + S_W, so it is in [0, 1]; tr S_B / tr S_W =
  separability / (1 - separability) is the trace form of Fisher's criterion).
  It is the fraction of the feature variance that the target classes explain.

`score` returns separability as 'score': it is the only one of these that
looks at the labels, and a larger share of variance between the target
classes (relative to within them) means the classes are easier to separate
with a linear head, so higher = predicted better. It is invariant to feature
scale, shift and rotation, so models with different feature scales compare
fairly. The unsupervised statistics are returned as diagnostics: whether more
sparsity or a flatter spectrum helps transfer is not settled, so none of them
is given a direction.

Documented values for constant features (total variance 0, or below 1e-10 of
the features' mean square, i.e. float32 rounding residue): separability 0.0,
top_k_variance_ratio 1.0, effective_rank 0.0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common

# Full float32 matmuls on every backend.
_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("num_classes", "top_k"))
def _feature_metrics(x, codes, *, num_classes: int, top_k: int, zero_tol):
  """All metrics (a dict of scalars) and a finiteness flag; codes in 0..K-1."""
  finite = jnp.all(jnp.isfinite(x))
  n, d = x.shape
  # Sparsity, on the raw activations.
  rms = jnp.sqrt(jnp.mean(x * x))
  zero_fraction = jnp.mean(jnp.abs(x) <= zero_tol * rms)
  l1 = jnp.sum(jnp.abs(x), axis=1)
  l2 = jnp.sqrt(jnp.sum(x * x, axis=1))
  root_d = jnp.sqrt(jnp.float32(d))
  if d == 1:
    hoyer = jnp.ones((n,))
  else:
    ratio = l1 / jnp.where(l2 > 0, l2, 1.0)
    hoyer = jnp.where(l2 > 0, (root_d - ratio) / (root_d - 1.0), 1.0)
  hoyer = jnp.clip(hoyer, 0.0, 1.0)  # Rounding can step just outside.

  # Variance spectrum: eigenvalues of the covariance from the smaller Gram.
  xc = x - jnp.mean(x, axis=0, keepdims=True)
  var = jnp.mean(xc * xc, axis=0)
  total = jnp.sum(var)
  gram = (jnp.matmul(xc, xc.T, precision=_HIGHEST) if n <= d else
          jnp.matmul(xc.T, xc, precision=_HIGHEST))
  eig = jnp.maximum(jnp.linalg.eigvalsh(gram), 0.0)[::-1] / n  # Descending.
  # Constant features leave rounding residue ~1e-7 |x| after centring: total
  # variance below 1e-10 of the mean square counts as none.
  has_var = total > 1e-10 * jnp.sum(jnp.mean(x * x, axis=0))
  eig_sum = jnp.sum(eig)
  p = eig / jnp.where(eig_sum > 0, eig_sum, 1.0)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)),
                               0.0))
  effective_rank = jnp.where(has_var & (eig_sum > 0), jnp.exp(entropy), 0.0)
  top = jnp.sum(p[:top_k])
  top_ratio = jnp.where(has_var & (eig_sum > 0), jnp.minimum(top, 1.0), 1.0)

  # Between-class scatter: sum_c n_c / n ||mu_c - mu||^2 (from centred x).
  onehot = jax.nn.one_hot(codes, num_classes, dtype=jnp.float32)
  counts = jnp.sum(onehot, axis=0)
  means = jnp.matmul(onehot.T, xc, precision=_HIGHEST) / counts[:, None]
  between = jnp.sum(counts * jnp.sum(means * means, axis=1)) / n
  separability = jnp.where(has_var,
                           jnp.clip(between / jnp.where(has_var, total, 1.0),
                                    0.0, 1.0), 0.0)
  metrics = {
      "separability": separability,
      "zero_fraction": zero_fraction,
      "hoyer_sparsity": jnp.mean(hoyer),
      "mean_variance": jnp.mean(var),
      "top_k_variance_ratio": top_ratio,
      "effective_rank": effective_rank,
  }
  return metrics, finite


def feature_metrics(features, labels, *, zero_tol: float = 1e-3,
                    top_k: int = 10) -> dict[str, float]:
  """Sparsity, variance-spectrum and class-separability statistics.

  The definitions are in the module docstring (our documented choices).
  Jittable core (`_feature_metrics`); this wrapper maps the labels present to
  0..K-1 on the host, so K (a shape) is static.

  Args:
    features: [N, D] float features.
    labels: [N] int class indices (0..C-1; the classes present are used).
    zero_tol: an activation is near zero when |x| <= zero_tol * RMS(x).
    top_k: number of principal components for top_k_variance_ratio.

  Returns:
    {'separability', 'zero_fraction', 'hoyer_sparsity', 'mean_variance',
     'top_k_variance_ratio', 'effective_rank'}: floats.

  Raises:
    ValueError: for bad shapes, non-integer or negative labels, fewer than two
      classes present, non-finite features or bad options.
  """
  x = jnp.asarray(features)
  y = np.asarray(labels)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"feature_metrics: features must be a non-empty [N, D] "
                     f"array, got shape {x.shape}")
  if not (jnp.issubdtype(x.dtype, jnp.floating) or
          jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"feature_metrics: features must be numeric, got "
                     f"{x.dtype}")
  n = x.shape[0]
  if y.shape != (n,):
    raise ValueError(f"feature_metrics: labels must have shape [N] = ({n},) "
                     f"to match the features, got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"feature_metrics: labels must be integers, got "
                     f"{y.dtype}")
  if y.min() < 0:
    raise ValueError(f"feature_metrics: labels must be class indices in "
                     f"0..C-1, got {sorted(set(y[y < 0].tolist()))[:10]}")
  if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or (
      top_k < 1):
    raise ValueError(f"feature_metrics: top_k must be a positive int, got "
                     f"{top_k!r}")
  if not (isinstance(zero_tol, (int, float, np.floating)) and
          0 <= zero_tol < np.inf):
    raise ValueError(f"feature_metrics: zero_tol must be a number >= 0, got "
                     f"{zero_tol!r}")
  classes, codes = np.unique(y, return_inverse=True)
  if classes.size < 2:
    raise ValueError(f"feature_metrics: labels contain only class(es) "
                     f"{classes.tolist()}; at least 2 classes must be present")
  metrics, finite = _feature_metrics(
      x.astype(jnp.float32), jnp.asarray(codes.reshape(-1), jnp.int32),
      num_classes=int(classes.size), top_k=int(top_k),
      zero_tol=float(zero_tol))
  if not bool(finite):
    raise ValueError("feature_metrics: features contain NaN or inf (after "
                     "conversion to float32)")
  return {k: float(v) for k, v in metrics.items()}


def score(inputs: common.ScoreInputs, *, zero_tol: float = 1e-3,
          top_k: int = 10) -> dict[str, float]:
  """Feature statistics of the train split; 'score' is the separability.

  Args:
    inputs: the (model, task) features and labels.
    zero_tol: relative threshold for near-zero activations.
    top_k: principal components for top_k_variance_ratio.

  Returns:
    {'score': separability tr(S_B) / tr(S_T) in [0, 1], higher = better} and
    the other metrics of `feature_metrics` as diagnostics.
  """
  metrics = feature_metrics(inputs.train_features, inputs.train_labels,
                            zero_tol=zero_tol, top_k=top_k)
  return {"score": metrics["separability"], **metrics}
