"""H-score: how much of the feature covariance the class means explain.

Bao et al., "An Information-theoretic Approach to Transferability in Task
Transfer Learning" (ICIP 2019), the H-score of features f for labels y:

  H(f) = tr(cov(f)^-1 cov(E[f | y])),

computed as thuml/Transfer-Learning-Library `tllib.ranking.hscore.h_score`
does: with the pseudo-inverse of cov(f), E[f | y] the mean of each example's
class, and both covariances with the same normalisation (which cancels).

With centred features X (N x D) and P the N x N matrix that replaces each row
by its class mean, H = tr(P X (X^T X)^+ X^T), the trace of P restricted to the
column space of X. So 0 <= H <= C - 1 (C = classes present), and:

  The H-score is degenerate when N - 1 <= D (VTAB-1k: N = 1000, D = 2048).
  Centred features in general position then span the whole (N - 1)-dimensional
  space orthogonal to the ones vector, and H = tr(P) - 1 = C - 1 for ANY
  features: it cannot rank models there. Use `regularized_hscore`, whose
  shrinkage covariance removes the degeneracy, in configs.

Numerical rank: singular values of the centred features at or below
rtol * the largest are treated as zero, as the pseudo-inverse does (a singular
value s of X is the square root of an eigenvalue s^2 of cov(f)). tllib uses
rcond = 1e-15 on cov(f) in float64; this runs in float32 and takes an SVD of X
(not an eigendecomposition of X^T X, whose float32 round-off floor,
eps * largest eigenvalue, would swallow genuine small variances), with the
default rtol = max(N, D) * eps(float32), NumPy's matrix_rank rule. So on
features in general position with N - 1 <= D it returns C - 1 like tllib.
Cost: one thin SVD of the [N, D] features shared by all classes (at N = 1000,
D = 2048 a few times slower than the Gram eigendecomposition LogME uses; the
regularised H-score, which does not need the small singular values, uses the
eigendecomposition).

Feature columns that are exactly constant are zeroed after centring; all
constant features give H = 0. A class with one example is fine (its mean is
that example); classes absent from `labels` contribute nothing. The score
uses the training split only, as the paper does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from model_search.scores import common

# Full float32 matmuls: TF32 / bf16 passes (the GPU / TPU default) would cost
# digits the projections need.
_HIGHEST = jax.lax.Precision.HIGHEST


def check_inputs(features, labels, *, num_classes: int | None = None, score: str):
  """`common.check_features_labels`: (float32 features, int32 labels, C), validated."""
  return common.check_features_labels(features, labels, num_classes=num_classes, score=score)


def centre(features):
  """Centred features [N, D]; exactly constant columns come out exactly zero.

  Float32 centring would leave round-off in a constant column (the mean of N
  copies of 0.1 is not 0.1), which a pseudo-inverse would then amplify.
  """
  constant = jnp.all(features == features[:1], axis=0)
  return jnp.where(constant, 0.0, features - jnp.mean(features, axis=0))


def default_rtol(num_examples: int, dim: int) -> float:
  """The default relative cutoff: max(N, D) * eps(float32)."""
  return max(num_examples, dim) * float(jnp.finfo(jnp.float32).eps)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _hscore(features, labels, rtol, *, num_classes: int):
  xc = centre(features)
  # X = U S V^T: tr((X^T X)^+ X^T P X) = tr(P U_r U_r^T) over the r kept
  # singular values = sum_c ||U_r^T y_c||^2 / n_c. An SVD of X, not an
  # eigendecomposition of X^T X, so float32 resolves variances down to
  # ~eps^2 of the largest instead of ~eps.
  u, s, _ = jnp.linalg.svd(xc, full_matrices=False)  # u: [N, min(N, D)]
  y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [N, C]
  counts = jnp.sum(y, axis=0)
  inv_counts = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1.0), 0.0)
  z = jnp.matmul(u.T, y, precision=_HIGHEST)  # [min(N, D), C]
  per_direction = jnp.matmul(jnp.square(z), inv_counts, precision=_HIGHEST)
  keep = s > rtol * jnp.max(s)
  return jnp.sum(jnp.where(keep, per_direction, 0.0)), jnp.sum(keep)


def hscore_and_rank(features, labels, *, num_classes: int | None = None,
                    rtol: float | None = None) -> tuple[float, int]:
  """The H-score and the numerical rank of cov(f) it used.

  Args: as `hscore`.

  Returns:
    (H, rank): rank is the numerical rank of cov(f) (singular values kept);
    H = C - 1 whenever rank = N - 1 (the degenerate case N - 1 <= D).
  """
  x, y, num_classes = check_inputs(features, labels, num_classes=num_classes,
                                   score="hscore")
  if rtol is None:
    rtol = default_rtol(*x.shape)
  elif not 0 <= rtol < 1:
    raise ValueError(f"hscore: rtol must be in [0, 1), got {rtol!r}")
  h, rank = _hscore(x, y, jnp.float32(rtol), num_classes=num_classes)
  return float(h), int(rank)


def hscore(features, labels, *, num_classes: int | None = None,
           rtol: float | None = None) -> float:
  """H-score of Bao et al. (ICIP 2019), with the pseudo-inverse.

  Invariant to any invertible affine map of the features (f -> f A + b). See
  the module docstring for the degeneracy at N - 1 <= D, where it is C - 1 for
  any features; prefer `regularized_hscore`.

  Args:
    features: [N, D] float32 features.
    labels: [N] int labels in 0..C-1.
    num_classes: C; None means max(labels) + 1 (only the classes present
      matter).
    rtol: singular values of the centred features at or below rtol * the
      largest are treated as zero in the pseudo-inverse; None:
      max(N, D) * eps(float32).

  Returns:
    tr(cov(f)^+ cov(E[f | y])), a float in [0, C - 1] (C = classes present);
    0 for constant features.
  """
  return hscore_and_rank(features, labels, num_classes=num_classes,
                         rtol=rtol)[0]


def score(inputs: common.ScoreInputs, *,
          rtol: float | None = None) -> dict[str, float]:
  """H-score on the training split.

  Args:
    inputs: the (model, task) features and labels.
    rtol: see `hscore`.

  Returns:
    {'score': H-score, 'rank': numerical rank of cov(f) (rank = N - 1 means
     the degenerate case, score = C - 1 whatever the features)}.
  """
  h, rank = hscore_and_rank(inputs.train_features, inputs.train_labels,
                            num_classes=inputs.num_classes, rtol=rtol)
  return {"score": h, "rank": float(rank)}
