"""TransRate: mutual information of features and labels via coding rates.

Huang et al., "Frustratingly Easy Transferability Estimation" (ICML 2022),
estimate I(Z; Y) = H(Z) - H(Z | Y) with the coding rate in place of entropy
(Sec. 3, the TransRate definition, and the paper's code listing):

  TrR(Z, Y) = R(Z, eps) - R(Z, eps | Y),
  R(Z, eps) = 1/2 log det(I_D + 1 / (N eps) Z^T Z),
  R(Z, eps | Y) = 1/C sum_c R(Z_c, eps),

where Z [N, D] are the features centred on their overall mean, Z_c [n_c, D] the
(overall-centred) rows of class c, and each R(Z_c) uses its own n_c.

Conventions, checked against the paper's code listing (its "10 lines of
code", as reproduced in tllib `tllib/ranking/transrate.py`):
* features are centred on the mean of all examples, once; classes are not
  re-centred, and features are not scaled or normalised. TransRate therefore
  depends on the feature scale: scaling features by s is the same as dividing
  eps by s^2. (The authors' experiment scripts, Long-Kai/TransRate, instead
  L2-normalise rows and rescale eigenvalues; we follow the published listing.)
* the log is natural (slogdet), with the factor 1/2; there is no d / eps^2
  factor as in MCR^2 (Yu et al., 2020): eps here is the listing's eps.
* `class_weights='uniform'` (default) averages the class rates with weight 1/C,
  as the listing does; 'proportional' weights them by n_c / n, as MCR^2 and the
  authors' experiment scripts do.
* Departure: C counts the classes present in `labels`. The listing divides by
  max(label) + 1, which also counts (with rate 0) classes that never occur.

Computation. log det(I_D + a Z^T Z) = log det(I_m + a Z Z^T) (Sylvester), so
each rate is taken in the smaller of the two forms, m = min(n_c, D): the
n_c x n_c Gram form for classes smaller than D, O(n_c^2 D) instead of O(D^3).
Two methods:
* 'gram' (default): Cholesky of I + a K with K the smaller Gram matrix,
  log det = 2 sum log diag(L). Fastest (one matmul and a Cholesky). In float32
  the Gram matrix carries rounding of ~1e-7 of its largest eigenvalue, so the
  rates have relative errors of ~1e-7 to ~1e-4 (growing with the ratio of the
  top feature variance to eps); when I + a K is not numerically positive
  definite (that ratio above ~1e7) the Cholesky fails and that block is redone
  with 'svd', so no NaN escapes.
* 'svd': sum_i log(1 + a s_i^2) over the singular values of Z itself, which
  never forms the Gram matrix: ~1e-7 relative error whatever the spectrum,
  but 5-15x slower than 'gram' on CPU (N = 1000, D = 2048: 0.1-0.4 s against
  0.02-0.04 s).
Classes are padded with zero rows into blocks of a few sizes (a zero row adds
an identity row and column to I + a K, or nothing to Z^T Z, and a zero singular
value: the rates are exact); each block size is one batched, jitted call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common

CLASS_WEIGHTS = ("proportional", "uniform")
METHODS = ("gram", "svd")
# Full float32 matmuls: TF32 / bf16 passes would lose the small eigenvalues.
_HIGHEST = jax.lax.Precision.HIGHEST


def _rates_of(blocks, counts, eps, method: str):
  """Coding rates [k] of k padded row blocks [k, m, D] with `counts` [k] rows.

  NaN where method='gram' and a Cholesky failed.
  """
  scale = 1.0 / (counts.astype(jnp.float32) * eps)  # [k]
  if method == "svd":
    s = jnp.linalg.svd(blocks, compute_uv=False)  # [k, min(m, D)]
    return 0.5 * jnp.sum(jnp.log1p(scale[:, None] * s * s), axis=1)
  m, d = blocks.shape[1:]
  if m <= d:  # The m x m Gram form.
    gram = jnp.einsum("kmd,kld->kml", blocks, blocks, precision=_HIGHEST)
  else:
    gram = jnp.einsum("kmd,kme->kde", blocks, blocks, precision=_HIGHEST)
  eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
  chol = jnp.linalg.cholesky(eye + scale[:, None, None] * gram)
  # 1/2 log det(L L^T) = sum log diag(L).
  return jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=1)


@functools.partial(jax.jit, static_argnames=("method",))
def _rate(z, eps, *, method: str):
  """R(Z, eps) of all rows of z [N, D], shape [1]."""
  return _rates_of(z[None], jnp.full((1,), z.shape[0]), eps, method)


@functools.partial(jax.jit, static_argnames=("method",))
def _block_rates(z, idx, counts, eps, *, method: str):
  """R(Z_c, eps) [k] for the rows idx [k, m] of z (-1: padding, a zero row)."""
  blocks = jnp.where((idx >= 0)[..., None], z[jnp.maximum(idx, 0)], 0.0)
  return _rates_of(blocks, counts, eps, method)


def _robust(fn, *args, method: str) -> np.ndarray:
  """fn(*args, method=method) in float64, redone with 'svd' if it has NaN."""
  rates = np.asarray(fn(*args, method=method), np.float64)
  if method == "gram" and not np.all(np.isfinite(rates)):
    rates = np.asarray(fn(*args, method="svd"), np.float64)
  return rates


@jax.jit
def _center(x):
  """(x - mean of rows, whether x is all finite)."""
  return x - jnp.mean(x, axis=0, keepdims=True), jnp.all(jnp.isfinite(x))


def _bucket_size(count: int) -> int:
  """The padded block size for a class of `count` rows.

  A power of two up to 256 rows (few shapes, so few compilations; small
  blocks are cheap anyway), above that the next multiple of a quarter of the
  power of two below: at most 25% padding, 4 shapes per doubling.
  """
  count = max(int(count), 1)
  if count <= 256:
    return 1 << (count - 1).bit_length()
  step = 1 << (count.bit_length() - 3)
  return -(-count // step) * step


def _class_rates(z, codes: np.ndarray, num_groups: int, eps, method: str):
  """R(Z_c, eps) [num_groups] for rows of `z` grouped by `codes` in 0..G-1."""
  order = np.argsort(codes, kind="stable")
  counts = np.bincount(codes, minlength=num_groups)
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  rates = np.zeros(num_groups, np.float64)
  buckets = {}
  for g in range(num_groups):
    buckets.setdefault(_bucket_size(counts[g]), []).append(g)
  for size, groups in sorted(buckets.items()):
    # [k, size] row indices, -1 for padding rows (gathered, then zeroed).
    idx = np.full((len(groups), size), -1, np.int64)
    for row, g in enumerate(groups):
      idx[row, :counts[g]] = order[starts[g]:starts[g] + counts[g]]
    rates[groups] = _robust(_block_rates, z, idx, counts[groups], eps,
                            method=method)
  return rates, counts


def transrate_parts(features, labels, eps: float = 1e-4, *,
                    class_weights: str = "uniform",
                    method: str = "gram") -> tuple[float, float]:
  """The two coding rates of TransRate: (R(Z, eps), R(Z, eps | Y)).

  Args: as `transrate`.

  Returns:
    (rate, class_rate), floats in nats; TransRate is rate - class_rate.
  """
  if class_weights not in CLASS_WEIGHTS:
    raise ValueError(f"Unknown class_weights {class_weights!r}; valid choices: "
                     f"{', '.join(CLASS_WEIGHTS)}")
  if method not in METHODS:
    raise ValueError(f"Unknown transrate method {method!r}; valid methods: "
                     f"{', '.join(METHODS)}")
  try:
    eps_value = float(eps)
  except (TypeError, ValueError):
    eps_value = float("nan")
  if not (eps_value > 0 and np.isfinite(eps_value)):
    raise ValueError(f"transrate: eps must be a positive number, got {eps!r}")
  eps = eps_value
  x, codes, counts = common.present_classes(features, labels, score="transrate")
  codes = codes.astype(np.int64)
  z, finite = _center(x)
  if not bool(finite):
    raise ValueError("transrate: features contain NaN or inf (after "
                     "conversion to float32)")
  n = z.shape[0]
  rate = float(_robust(_rate, z, eps, method=method)[0])
  class_rates, _ = _class_rates(z, codes, counts.size, eps, method)
  if class_weights == "uniform":
    class_rate = float(np.mean(class_rates))
  else:
    class_rate = float(np.sum(class_rates * counts) / n)
  return rate, class_rate


def transrate(features, labels, eps: float = 1e-4, *,
              class_weights: str = "uniform", method: str = "gram") -> float:
  """TransRate of features for labels (Huang et al. 2022, Sec. 3).

  TrR = R(Z, eps) - R(Z, eps | Y) with Z the centred features (see the module
  docstring for the exact conventions). Higher = more label information in the
  features = predicted better transfer. Not jittable as a whole (class sizes
  set the shapes); the batched decompositions that carry the cost are.

  Documented values: constant features give 0.0 up to rounding (every rate is
  0); a class with one example contributes 1/2 log(1 + ||z||^2 / eps).

  Args:
    features: [N, D] float features.
    labels: [N] int class indices (0..C-1; the classes present are used).
    eps: distortion eps > 0 (the paper's default 1e-4).
    class_weights: 'uniform' (1/C, the paper's listing) or 'proportional'
      (n_c / N).
    method: 'gram' (Cholesky of the smaller Gram matrix, fast) or 'svd'
      (singular values, more accurate in float32); see the module docstring.

  Returns:
    TransRate in nats, a float.

  Raises:
    ValueError: for bad shapes, non-integer or negative labels, fewer than two
      classes present, non-finite features, eps <= 0 or unknown options.
  """
  rate, class_rate = transrate_parts(features, labels, eps,
                                     class_weights=class_weights,
                                     method=method)
  return rate - class_rate


def score(inputs: common.ScoreInputs, *, eps: float = 1e-4,
          class_weights: str = "uniform",
          method: str = "gram") -> dict[str, float]:
  """TransRate on the train split (the paper scores the target training set).

  Args:
    inputs: the (model, task) features and labels.
    eps: distortion eps > 0.
    class_weights: 'uniform' or 'proportional'.
    method: 'gram' or 'svd'.

  Returns:
    {'score': TransRate (higher = better), 'rate': R(Z, eps),
     'class_rate': R(Z, eps | Y)}.
  """
  rate, class_rate = transrate_parts(inputs.train_features,
                                     inputs.train_labels, eps,
                                     class_weights=class_weights,
                                     method=method)
  return {"score": rate - class_rate, "rate": rate, "class_rate": class_rate}
