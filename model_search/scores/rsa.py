"""Representation Similarity Analysis (RSA): the model's image similarities vs a task probe's.

Dwivedi & Roig, "Representation Similarity Analysis for Efficient Task Taxonomy
& Transfer Learning" (CVPR 2019). For M images with feature vectors
f_1..f_M (rows of an [M, D] matrix), the representation dissimilarity matrix is

  RDM_ij = 1 - pearson(f_i, f_j),

the Pearson correlation taken over the D feature dimensions of the two images
(so RDM_ii = 0 and 0 <= RDM_ij <= 2). A model is scored by the Spearman rank
correlation between the upper-triangular entries (i < j, M (M - 1) / 2 pairs)
of its RDM and of the RDM of a small probe network trained on the target task:

  RSA = spearman({RDM^model_ij}_{i<j}, {RDM^probe_ij}_{i<j}),

ties by average ranks, as `scipy.stats.spearmanr`. Higher = the model's
image similarities are ordered more like the task probe's = predicted better.

What RSA is invariant to: per-image shift and positive scale of either
feature matrix (f_i -> a_i f_i + b_i with a_i > 0, a property of Pearson),
permuting the feature dimensions of either, any strictly increasing map of the
RDM entries (a property of Spearman), permuting the images jointly in both
inputs, and swapping its two arguments. Not to a per-dimension shift or scale
(f -> f + c or f * s with vectors c, s), a rotation of the feature space, or
a negative per-image scale: Pearson correlates an image's D coordinates, so
those change the RDM.

Conventions and choices where the paper leaves them open:

* Images: the model's features are the cached `val_features`, so the RDMs are
  built on the task's validation split (M = 200 for VTAB-1k: 19,900 pairs).
  The probe is trained on the train split only.
* The probe (the paper's small network trained on a small dataset of the
  new task, its "SDNN") is `ProbeNet` here: three 3x3 conv + relu +
  2x2 max-pool stages (widths 16, 32, 64), global average pooling and a
  linear head, trained from scratch with Adam (learning rate 3e-3, batch 64,
  500 steps: 40 epochs of 800 images) on mini-batches drawn from seeded
  permutations of the training set, all inside one jitted `lax.scan`; no
  augmentation, no weight decay. Its features for the RDM are the pooled
  penultimate features (`probe_features='penultimate'`, default) or the
  logits. The convs run as im2col patches times a Dense kernel: XLA:CPU
  computes the same convolution's gradient several times slower. On the mini
  suite (digits, shapes, count, textures; 800 train images) these defaults
  reach 0.64-0.74 probe val accuracy and take ~20 s per task on 2 busy CPU
  cores (once per task, thanks to the cache); `steps=300, stem_stride=2`
  takes ~4 s at 0.42-0.66.
* Probe inputs: images are resized (`jax.image.resize`, bilinear, antialiased)
  to `image_size` x `image_size` (default 32; non-square images are stretched)
  and standardised per channel by the mean and standard deviation of the
  resized *training* images (a channel with zero spread is only centred). So
  the images may come in any value range -- uint8 [0, 255], or float such as
  [0, 1] or [-1, 1], as the pipeline passes them in the model's value range --
  and the probe sees nearly the same inputs for every model: exactly the same
  up to float rounding under any positive affine change of the pixel values.
* Probe cache: the same task is scored for many models, so the trained probe
  is kept in a process-wide LRU (`rsa_probe.py`, `PROBE_CACHE_SIZE` entries), keyed by a
  BLAKE2b hash of the training images' bytes (with shape and dtype), the
  labels, num_classes and every training option. A hit is therefore exactly
  the probe a fresh training would give; models whose pipeline images differ
  (another input size or value range) get their own, nearly identical, probe.
  `rsa_probe.clear_probe_cache()` empties it.
* Degenerate inputs: an image whose feature vector has (numerically) zero
  variance makes its Pearson correlations undefined; `rdm` raises a
  ValueError naming the rows (a row counts as constant when
  ||f_i - mean(f_i)|| <= 1e-5 ||f_i||, below which float32 correlations are
  rounding noise). Fewer than 3 images (at most one pair), mismatched image
  counts, fewer than 2 feature dimensions, non-finite values and an RDM whose
  upper triangle is constant (a Spearman correlation with a constant is
  undefined) are ValueErrors too.
* Precision and ties: the RDMs are computed in float32 in JAX (`rdm` is
  jittable; under `jax.jit`, where nothing can be raised, a constant row's
  entries are NaN instead of an error), as 1 - r = ||u_i - u_j||^2 / 2 of the
  centred, unit-norm rows u, which keeps float32's relative precision for
  similar images where 1 - (u_i . u_j) would cancel. Ranking and the
  correlation of the ranks run on the host in float64. Entries that differ by
  less than 1e-6 relative (~8 float32 ulps) plus 1e-9 (1 - r of two images
  whose features agree up to a positive affine map is float32 noise of order
  1e-14 D, not 0) count as tied, so dissimilarities that are equal in exact
  arithmetic but were rounded differently get the same average rank, as
  they would in float64; beyond that the ranking is scipy's
  (`rdm_correlation` with its default zero tolerances is exactly spearmanr).
  On random data the tolerances move RSA by ~1e-6; on discrete features
  (one-hot-like) they are what keeps rounding noise out of the ranks.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common
from model_search.scores import rsa_probe

# The scores stage loads the train800 and val200 images for this score.
REQUIRES = ("train_images", "val_images")

# Full float32 patch extraction (a convolution) on GPU / TPU.
_HIGHEST = jax.lax.Precision.HIGHEST
# A row whose spread ||f - mean(f)|| is below this fraction of ||f|| is constant.
_CONSTANT_RTOL = 1e-5
# RDM entries closer than _TIE_RTOL (relative, ~8 float32 ulps) + _TIE_ATOL
# are ties: equal dissimilarities rounded differently must not be ranked
# apart. Images whose features are equal up to a positive affine map (r = 1)
# get dissimilarities of order eps_float32^2 D ~ 1e-14 D, not exactly 0.
_TIE_RTOL = 1e-6
_TIE_ATOL = 1e-9
# The RDM's pairwise differences are formed this many floats at a time.
_BLOCK_FLOATS = 2**24
_PROBE_FEATURES = ("penultimate", "logits")


# ----------------------------------------------------------------------------
# RDMs and their comparison.


def _check_features(features, name: str, *, min_rows: int = 3):
  """Checks [M, D] numeric features with M >= min_rows and D >= 2; returns them."""
  x = features if isinstance(features, jax.Array) else np.asarray(features)
  if x.ndim != 2:
    raise ValueError(f"{name} must be 2-D [num_images, dim], got shape "
                     f"{x.shape}")
  if not (jnp.issubdtype(x.dtype, jnp.floating) or
          jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
  if x.shape[0] < min_rows:
    raise ValueError(f"{name} have {x.shape[0]} rows (images); RSA needs at "
                     f"least {min_rows}, so that the RDMs have 2 or more "
                     "pairs to rank")
  if x.shape[1] < 2:
    raise ValueError(f"{name} have dimension {x.shape[1]}; the Pearson "
                     "correlation between two images is over their feature "
                     "dimensions, so at least 2 are needed")
  return x


@jax.jit
def _rdm_terms(features):
  """(RDM [M, M], relative spread [M] of each row) in float32."""
  x = features.astype(jnp.float32)
  # Pearson is invariant to a per-row scale: unit max-abs rows cannot overflow.
  peak = jnp.max(jnp.abs(x), axis=1, keepdims=True)
  x = x / jnp.where(peak > 0, peak, 1.0)
  c = x - jnp.mean(x, axis=1, keepdims=True)
  c = c - jnp.mean(c, axis=1, keepdims=True)  # Second pass: rounding of the mean.
  norm = jnp.sqrt(jnp.sum(c * c, axis=1))
  spread = norm / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=1)),
                              jnp.finfo(jnp.float32).tiny)
  u = c / jnp.where(norm > 0, norm, 1.0)[:, None]
  # 1 - u_i . u_j = ||u_i - u_j||^2 / 2 for unit rows. The distance form keeps
  # float32's relative precision for similar images (1 - r << 1), where
  # 1 - (u_i . u_j) would cancel to an absolute error of ~1e-7 and order
  # near-ties by noise. Rows are taken in blocks of <= _BLOCK_FLOATS floats.
  m, dim = u.shape
  block = max(1, min(m, _BLOCK_FLOATS // max(1, m * dim)))
  d = jax.lax.map(lambda ui: 0.5 * jnp.sum(jnp.square(ui - u), axis=-1), u,
                  batch_size=block)
  d = jnp.clip(0.5 * (d + d.T), 0.0, 2.0)  # Exactly symmetric.
  d = jnp.where(jnp.eye(d.shape[0], dtype=bool), 0.0, d)
  bad = spread <= _CONSTANT_RTOL
  d = jnp.where(bad[:, None] | bad[None, :], jnp.nan, d)
  return d, spread


def rdm(features) -> jax.Array:
  """Representation dissimilarity matrix, RDM_ij = 1 - pearson(f_i, f_j).

  Args:
    features: [M, D] float features, one row per image, D >= 2.

  Returns:
    [M, M] float32 symmetric matrix with zero diagonal and entries in [0, 2].

  Raises:
    ValueError: for a bad shape, non-finite values, or rows with (numerically)
      zero variance, whose correlations are undefined; the message names the
      rows. Under `jax.jit` nothing is checked, and the rows and columns of
      constant rows are NaN.
  """
  if isinstance(features, jax.core.Tracer):
    return _rdm_terms(features)[0]
  x = _check_features(features, "features", min_rows=1)
  d, spread = _rdm_terms(jnp.asarray(x))
  _raise_for_bad_rows(np.asarray(spread), "features")
  return d


def _raise_for_bad_rows(spread: np.ndarray, name: str) -> None:
  if not np.all(np.isfinite(spread)):
    rows = np.flatnonzero(~np.isfinite(spread))
    raise ValueError(f"{name} contain NaN or inf, in row(s) "
                     f"{_some(rows)} (after conversion to float32)")
  constant = np.flatnonzero(spread <= _CONSTANT_RTOL)
  if constant.size:
    raise ValueError(
        f"{name} row(s) {_some(constant)} ({constant.size} of {spread.size}) "
        "have (numerically) zero variance across the feature dimensions, so "
        "their Pearson correlations with other images, and the RDM, are "
        "undefined")


def _some(rows: np.ndarray, limit: int = 10) -> str:
  shown = rows[:limit].tolist()
  return f"{shown}" + (f" and {rows.size - limit} more" if rows.size > limit
                       else "")


def _upper(matrix, name: str) -> np.ndarray:
  """The entries i < j of a square matrix, in float64."""
  m = np.asarray(matrix, np.float64)
  if m.ndim != 2 or m.shape[0] != m.shape[1]:
    raise ValueError(f"{name} must be a square [M, M] matrix, got shape "
                     f"{m.shape}")
  if m.shape[0] < 3:
    raise ValueError(f"{name} is {m.shape[0]}x{m.shape[0]}; at least 3x3 (2 "
                     "pairs) is needed for a rank correlation")
  values = m[np.triu_indices(m.shape[0], k=1)]
  if not np.all(np.isfinite(values)):
    raise ValueError(f"{name} contains NaN or inf above the diagonal")
  return values


def _ranks(values: np.ndarray, tie_rtol: float = 0.0,
           tie_atol: float = 0.0) -> np.ndarray:
  """1-based average ranks; sorted neighbours within the tolerances tie.

  With zero tolerances this is scipy.stats.rankdata(values, method='average').
  """
  order = np.argsort(values, kind="stable")
  v = values[order]
  gap = np.diff(v)
  new = gap > tie_rtol * np.maximum(np.abs(v[1:]), np.abs(v[:-1])) + tie_atol
  group = np.concatenate([[0], np.cumsum(new)])
  positions = np.arange(1, v.size + 1, dtype=np.float64)
  mean_rank = (np.bincount(group, weights=positions) /
               np.bincount(group))
  ranks = np.empty(v.size)
  ranks[order] = mean_rank[group]
  return ranks


def rdm_correlation(rdm_a, rdm_b, *, tie_rtol: float = 0.0,
                    tie_atol: float = 0.0) -> float:
  """Spearman correlation of the upper-triangular (i < j) entries of two RDMs.

  Ties get average ranks and the ranks are Pearson-correlated in float64, as
  `scipy.stats.spearmanr` does (exactly so with zero tolerances); only the
  entries above the diagonal are read.

  Args:
    rdm_a: [M, M] dissimilarity matrix, M >= 3.
    rdm_b: [M, M] dissimilarity matrix over the same M images, same order.
    tie_rtol, tie_atol: entries that, sorted, follow one another within
      tie_rtol * |entry| + tie_atol count as tied (`rsa` passes 1e-6 and 1e-9,
      so that dissimilarities equal in exact arithmetic but rounded
      differently in float32 tie).

  Returns:
    The rank correlation, in [-1, 1].

  Raises:
    ValueError: for shapes that differ or are not square, M < 3, non-finite
      entries, or an upper triangle whose entries all tie, with which a rank
      correlation is undefined.
  """
  a, b = _upper(rdm_a, "rdm_a"), _upper(rdm_b, "rdm_b")
  if a.shape != b.shape:
    raise ValueError(f"The RDMs must describe the same images: rdm_a is "
                     f"{np.shape(rdm_a)} and rdm_b is {np.shape(rdm_b)}")
  ranks = []
  for name, v in (("rdm_a", a), ("rdm_b", b)):
    r = _ranks(v, tie_rtol, tie_atol)
    if np.all(r == r[0]):
      raise ValueError(
          f"{name} has the same dissimilarity ({v[0]:.6g}) for every pair of "
          "images (within float32 rounding), so its rank correlation with "
          "another RDM is undefined")
    ranks.append(r - r.mean())
  ra, rb = ranks
  rho = np.dot(ra, rb) / np.sqrt(np.dot(ra, ra) * np.dot(rb, rb))
  return float(np.clip(rho, -1.0, 1.0))


def rsa(features, probe_features) -> float:
  """RSA (Dwivedi & Roig 2019): Spearman correlation of two RDMs' upper triangles.

  Args:
    features: [M, D] features of M images from the model being scored.
    probe_features: [M, D'] features of the same M images, in the same order,
      from the reference (the task probe); D' may differ from D.

  Returns:
    spearman(RDM(features)_ij, RDM(probe_features)_ij) over i < j, in [-1, 1];
    higher = more similar representations. Symmetric in its two arguments.

  Raises:
    ValueError: for M < 3, different M, D < 2, non-finite values, rows with
      zero variance (named), or an RDM that is the same for every pair.
  """
  x = _check_features(features, "features")
  p = _check_features(probe_features, "probe_features")
  if x.shape[0] != p.shape[0]:
    raise ValueError(f"features have {x.shape[0]} rows (images) but "
                     f"probe_features have {p.shape[0]}; the RDMs must be "
                     "over the same images")
  rdms = []
  for name, f in (("features", x), ("probe_features", p)):
    d, spread = _rdm_terms(jnp.asarray(f))
    _raise_for_bad_rows(np.asarray(spread), name)
    rdms.append(d)
  return rdm_correlation(*rdms, tie_rtol=_TIE_RTOL, tie_atol=_TIE_ATOL)


def score(inputs: common.ScoreInputs, *, steps: int = 500,
          batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0,
          image_size: int = 32, widths: Sequence[int] = (16, 32, 64),
          stem_stride: int = 1,
          probe_features: Any = "penultimate") -> dict[str, float]:
  """RSA between the model's val features and a task probe's, on the val images.

  Args:
    inputs: needs train_images and val_images (any value range, see the
      module doc); the model's features are inputs.val_features.
    steps, batch_size, learning_rate, seed, image_size, widths, stem_stride:
      the probe's training (`train_probe`); the trained probe is cached per
      process.
    probe_features: which probe representation is compared, 'penultimate'
      (the pooled features before the head) or 'logits'; or an [M, D'] array
      of precomputed reference features of the val images, in which case no
      probe is trained.

  Returns:
    {'score': RSA in [-1, 1] (higher = better), 'probe_train_accuracy',
    'probe_val_accuracy'} (the accuracies are left out with precomputed
    reference features).
  """
  if not isinstance(probe_features, str):
    return {"score": rsa(inputs.val_features, probe_features)}
  if probe_features not in _PROBE_FEATURES:
    raise ValueError(f"Unknown probe_features {probe_features!r}; valid "
                     f"choices: {', '.join(map(repr, _PROBE_FEATURES))} or an "
                     "[M, D'] array of reference features")
  inputs.require("train_images", "val_images", score="rsa")
  probe, train_accuracy = rsa_probe.cached_probe(
      inputs.train_images, inputs.train_labels, inputs.num_classes,
      steps=steps, batch_size=batch_size, learning_rate=learning_rate,
      seed=seed, image_size=image_size,
      widths=tuple(widths) if isinstance(widths, list) else widths,
      stem_stride=stem_stride)
  features, logits = probe.apply(inputs.val_images)
  val_accuracy = float(np.mean(np.argmax(logits, axis=1) == inputs.val_labels))
  reference = features if probe_features == "penultimate" else logits
  return {"score": rsa(inputs.val_features, reference),
          "probe_train_accuracy": train_accuracy,
          "probe_val_accuracy": val_accuracy}
