"""PARC: how well the features' example similarities follow the labels'.

Bolya et al., "Scalable Diverse Model Selection for Accessible Transfer
Learning" (NeurIPS 2021), the PARC definition. With F the features reduced by
PCA to f = 32 dimensions (the paper's default) and standardised, Y the one-hot
labels, and the "representation dissimilarity matrices" D_F = 1 - corrcoef(F)
and D_Y = 1 - corrcoef(Y) (Pearson correlations between examples, i.e. rows):

  PARC = 100 * spearman({D_F[i, j] : i < j}, {D_Y[i, j] : i < j}).

Conventions, checked against the authors' code (dbolya/parc `methods.py`:
`PARC`, `feature_reduce`; the same code is in TMoE-Lab/SFDA):

* Same: features are centred and projected on their top f principal
  components, each then standardised to unit variance (sklearn's
  StandardScaler); Pearson correlation of rows; upper-triangle entries;
  Spearman's rho with average ranks for ties (scipy.stats.spearmanr); the
  result times 100, as the authors report it. `num_components=None` skips the
  PCA (the reference's `n_dims=None`): the raw features are standardised.
* Same value, computed exactly: a one-hot row correlates 1 with its own class
  and -1 / (C - 1) with any other, so D_Y is 0 for same-class pairs and
  C / (C - 1) otherwise, and PARC is the rank correlation of D_F with the
  different-class indicator (the number of classes does not matter).
  Departure: the reference computes D_Y in floating point, where same-class
  entries come out as 0 or ~1e-16 depending on the class, which spearmanr then
  ranks apart; that artefact moved PARC by 2% to 38% relative on random data.
* Departure: exact PCA (an SVD). The reference uses sklearn's randomized PCA
  (`iterated_power=1`, `random_state=1919`), a rough approximation of the top
  components when the spectrum is flat: on synthetic VTAB-sized features
  (N = 1000, D = 2048, C = 10, weak class means in unit noise) it gave 5.4
  where the exact PCA gives 12.2.
* Departure: the sign of each component (which the row-centring of corrcoef
  sees) makes the entry of largest magnitude of its example-space vector
  positive (sklearn's u-based `svd_flip`, what the reference's randomized PCA
  did for N >= D in older sklearn; sklearn >= 1.5 decides on the feature-space
  vector, 12.0 instead of 12.2 in the example above). It depends only on the
  example-space vectors, so PARC is invariant to rotations of the features.
* f is capped at min(N, D); components of zero variance (singular values at or
  below max(N, D) * eps(float32) of the largest) are set to exactly 0, as
  StandardScaler leaves a constant column, rather than round-off scaled up to
  unit variance. An example whose standardised row is constant (correlation
  undefined: NaN in np.corrcoef) is given correlation 0 with every other.

Invariances: label permutation, example order, feature shifts, a global scale
and rotations of the features. Not invariant to scaling single features (it
changes the principal components), except with `num_components=None`.

Computation: float32 JAX. The PCA is an SVD of the centred features rather than
an eigendecomposition of their Gram matrix: whitening gives every component
equal weight, and components with variance below ~1e-4 of the top (e.g. ViT
features with a few massive activations) lose their digits in a float32 Gram
matrix (1e-3 relative error in PARC measured) but not in the SVD (~1e-7). The
N(N-1)/2 pair values are ranked with one argsort; the rank sums are integers,
summed exactly in int32 chunks and combined in Python. Ties between
mathematically equal correlations (duplicate examples) may be broken by float32
round-off, which XLA does not make identical across entries of a matmul; the
effect on rho is of the order of the number of such pairs over M. The score
uses the training split only, as the paper's probe set.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common

_HIGHEST = jax.lax.Precision.HIGHEST
# Centred doubled ranks are split as hi * 2^12 + lo, 0 <= lo < 2^12, so that
# chunk sums of each part fit in int32.
_LO_BITS = 12


def _centre(x):
  """Centred columns; exactly constant columns come out exactly zero."""
  constant = jnp.all(x == x[:1], axis=0)
  return jnp.where(constant, 0.0, x - jnp.mean(x, axis=0))


def _standardised(x, num_components: int | None):
  """[N, k] features whose row correlations PARC compares (scale irrelevant)."""
  n, d = x.shape
  xc = _centre(x)
  if num_components is None:
    std = jnp.sqrt(jnp.mean(xc * xc, axis=0))
    return jnp.where(std > 0, xc / jnp.where(std > 0, std, 1.0), 0.0)
  # PCA scores are U S; standardising each column leaves sqrt(N) U.
  u, s, _ = jnp.linalg.svd(xc, full_matrices=False)
  u, s = u[:, :num_components], s[:num_components]
  keep = s > max(n, d) * jnp.finfo(x.dtype).eps * s[0]
  top = jnp.argmax(jnp.abs(u), axis=0)  # First index of the largest |u|.
  sign = jnp.sign(u[top, jnp.arange(u.shape[1])])
  return jnp.where(keep, u * sign, 0.0)


def _tie_pieces(v, b, chunk: int):
  """Integer pieces of Spearman's rho between sorted values and a 0/1 label.

  Args:
    v: [M] sorted values (ascending).
    b: [M] bool, the label of each value.
    chunk: the chunk length of the partial sums (static).

  Returns:
    (hi [B], lo [B]: int32 chunk sums with sum(hi) * 2^12 + sum(lo) =
     sum over b of 2 (R - mean R), R the average rank (scipy's, from 1);
     ties [B]: float32 chunk sums of t^2 - 1, t the size of each value's tie
     group, so sum(ties) = sum over groups of t^3 - t; whether all M values
     are tied).
  """
  m = v.shape[0]
  pos = jnp.arange(m, dtype=jnp.int32)
  change = v[1:] != v[:-1]
  # Each tie group spans positions first..last; its average rank (from 1) is
  # (first + last) / 2 + 1, and 2 (R - (m + 1) / 2) = first + last - (m - 1).
  first = jax.lax.cummax(
      jnp.where(jnp.concatenate([jnp.ones((1,), bool), change]), pos, 0))
  last = jax.lax.cummin(
      jnp.where(jnp.concatenate([change, jnp.ones((1,), bool)]), pos, m - 1),
      reverse=True)
  centred = jnp.where(b, first + last - (m - 1), 0)
  size = (last - first + 1).astype(jnp.float32)
  pad = -m % chunk
  centred = jnp.pad(centred, (0, pad)).reshape(-1, chunk)
  ties = jnp.pad(size * size - 1.0, (0, pad)).reshape(-1, chunk)
  hi = jnp.sum(jnp.right_shift(centred, _LO_BITS), axis=1)
  lo = jnp.sum(jnp.bitwise_and(centred, (1 << _LO_BITS) - 1), axis=1)
  return hi, lo, jnp.sum(ties, axis=1), v[0] == v[-1]


def _chunk(num_values: int) -> int:
  """A chunk length whose sums of lo (< 2^12 each) and |hi| (<= m / 2^12 + 1)
  fit in int32."""
  return max(1, min(1 << 16,
                    (2**31 - 1) // (num_values // (1 << _LO_BITS) + 2)))


def _rho(pieces, num_values: int, num_true: int) -> float:
  """Spearman's rho of M = num_values values and a 0/1 label (num_true 1s),
  from `_tie_pieces`, in float64: Pearson's r of the average ranks and the
  label, with sum (R - mean R)^2 = (M^3 - M - sum_groups (t^3 - t)) / 12."""
  hi, lo, ties, _ = (np.asarray(p) for p in pieces)
  m = num_values
  numerator = (int(np.sum(hi.astype(np.int64))) * (1 << _LO_BITS) +
               int(np.sum(lo.astype(np.int64)))) / 2
  var_ranks = (m**3 - m - float(np.sum(ties.astype(np.float64)))) / 12
  var_labels = num_true * (m - num_true) / m
  return numerator / math.sqrt(max(var_ranks, 0.0) * var_labels)


@functools.partial(jax.jit, static_argnames=("num_components", "chunk"))
def _rank_sums(x, y, *, num_components: int | None, chunk: int):
  """`_tie_pieces` of D_F's upper triangle against the different-class label."""
  n = x.shape[0]
  z = _standardised(x, num_components)
  zc = z - jnp.mean(z, axis=1, keepdims=True)
  norm = jnp.linalg.norm(zc, axis=1, keepdims=True)
  rows = jnp.where(norm > 0, zc / jnp.where(norm > 0, norm, 1.0), 0.0)
  corr = jnp.matmul(rows, rows.T, precision=_HIGHEST)  # [N, N]
  i = jnp.arange(n)
  upper = i[:, None] < i[None, :]
  # -corr orders pairs as 1 - corr does, without 1 - corr's rounding ties.
  # Pairs below the diagonal sort last (inf) and are cut off.
  values = jnp.where(upper, -corr, jnp.inf).ravel()
  different = (upper & (y[:, None] != y[None, :])).ravel()
  order = jnp.argsort(values, stable=True)[:n * (n - 1) // 2]
  return _tie_pieces(values[order], different[order], chunk)


def _check_inputs(features, labels, num_classes, num_components):
  """Validates; returns (float32 features, int32 labels, class counts)."""
  x = common.check_matrix(features, score="parc", dtype=np.float32)
  y = np.asarray(labels)
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise ValueError(f"parc: labels must be [N] with N = {x.shape[0]} (the "
                     f"rows of features), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"parc: labels must be integers, got dtype {y.dtype}")
  if y.min() < 0:
    raise ValueError(f"parc: labels must be >= 0, got "
                     f"{sorted(set(y[y < 0].tolist()))[:10]}")
  if num_classes is not None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
      raise ValueError(f"parc: num_classes must be an int or None, got "
                       f"{num_classes!r}")
    if y.max() >= num_classes:
      raise ValueError(f"parc: labels contain "
                       f"{sorted(set(y[y >= num_classes].tolist()))[:10]} "
                       f"outside 0..{num_classes - 1} "
                       f"(num_classes={num_classes})")
  if num_components is not None and (
      isinstance(num_components, bool) or
      not isinstance(num_components, int) or num_components < 2):
    raise ValueError(f"parc: num_components must be an int >= 2 or None (no "
                     f"PCA), got {num_components!r}")
  _, counts = np.unique(y, return_counts=True)
  if counts.size < 2:
    raise ValueError(f"parc: labels contain only class(es) "
                     f"{np.unique(y).tolist()}; at least 2 classes must be "
                     "present")
  if np.all(counts == 1):
    raise ValueError("parc: every class has a single example, so there are "
                     "no same-class pairs to compare with")
  if x.shape[1] < 2:
    raise ValueError(f"parc: features must have at least 2 dimensions (the "
                     f"correlation of 1-D rows is undefined), got shape "
                     f"{x.shape}")
  if np.all(x == x[0]):
    raise ValueError("parc: features are constant (every example the same), "
                     "so their correlations are undefined")
  return x, y.astype(np.int32), counts


def parc(features, labels, *, num_components: int | None = 32,
         num_classes: int | None = None) -> float:
  """PARC of Bolya et al. (NeurIPS 2021), times 100.

  Args:
    features: [N, D] float32 features.
    labels: [N] int labels in 0..C-1 (at least 2 classes present, and some
      class with 2 or more examples).
    num_components: f, the number of principal components kept (the paper's
      default: 32; capped at min(N, D)); None: no PCA, the standardised raw
      features.
    num_classes: C, for validating the labels; None means max(labels) + 1.

  Returns:
    100 * Spearman's rho between the pairwise dissimilarities of the features
    and of the labels, in [-100, 100]. Higher is better.

  Raises:
    ValueError: for bad shapes or options, labels outside 0..C-1, fewer than 2
      classes present, no same-class pair, non-finite or constant features,
      or when every pair of examples is equally correlated.
  """
  x, y, counts = _check_inputs(features, labels, num_classes, num_components)
  n, d = x.shape
  k = None if num_components is None else min(num_components, n, d)
  m = n * (n - 1) // 2
  pieces = _rank_sums(jnp.asarray(x), jnp.asarray(y), num_components=k,
                      chunk=_chunk(m))
  if bool(pieces[3]):
    raise ValueError("parc: every pair of examples has the same feature "
                     "correlation (e.g. a single usable dimension), so the "
                     "rank correlation is undefined")
  different = (n * n - int(np.sum(counts.astype(np.int64)**2))) // 2
  return 100.0 * _rho(pieces, m, different)


def score(inputs: common.ScoreInputs, *,
          num_components: int | None = 32) -> dict[str, float]:
  """PARC on the training split (the paper's probe set of target images).

  Args:
    inputs: the (model, task) features and labels.
    num_components: see `parc`.

  Returns:
    {'score': PARC times 100, in [-100, 100]}.
  """
  return {"score": parc(inputs.train_features, inputs.train_labels,
                        num_components=num_components,
                        num_classes=inputs.num_classes)}
