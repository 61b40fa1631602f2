"""Regularised H-score: the H-score with a Ledoit-Wolf shrinkage covariance.

Ibrahim et al., "Newer is not always better: Rethinking transferability
metrics, their peculiarities, stability and performance" (ECML-PKDD 2022,
arXiv:2110.06893), the shrinkage-based H-score. The plain H-score (`hscore.py`)
inverts a sample covariance that is singular or badly conditioned when the
dimension is comparable to the number of examples, which makes it unstable, and
degenerate (C - 1 for any features) when N - 1 <= D. They replace cov(f) by
the Ledoit-Wolf estimate

  cov_a(f) = (1 - a) S + a mu I,  S = X^T X / N,  mu = tr(S) / D,

with X the centred features and a the Ledoit-Wolf shrinkage (Ledoit & Wolf,
"A well-conditioned estimator for large-dimensional covariance matrices", 2004,
as sklearn.covariance.ledoit_wolf computes it), and define

  H_a(f) = tr(cov_a(f)^-1 (1 - a) cov(E[f | y])).

Prefer this score to the plain H-score in configs: it ranks models at
VTAB-1k sizes (N = 1000, D = 2048), where the plain H-score cannot.

Conventions, matching thuml/Transfer-Learning-Library
`tllib.ranking.hscore.regularized_h_score`: features are centred; S and mu are
the biased (divide by N) estimates sklearn uses, while cov(E[f | y]) is
np.cov's unbiased one (divide by N - 1), so the value is N / (N - 1) times the
one with a single normalisation; the inverse is a pseudo-inverse (eigenvalues
of cov_a at or below rtol * the largest are dropped; they only occur when
a = 0). Unlike the plain H-score, H_a is not invariant to linear maps of the
features (the shrinkage target mu I is isotropic): only to rotations, a global
scale and shifts.

Computed in float32 from one symmetric eigendecomposition, of X X^T when
N < D and of X^T X otherwise, shared by all classes: cov_a shares the
eigenvectors of S, and the Ledoit-Wolf statistics need only the eigenvalues of
S and the row norms of X, so no D x D matrix is formed when N < D. The
eigendecomposition's float32 round-off (~eps * the largest eigenvalue) is
harmless here, as every eigenvalue of cov_a is at least a mu. Degenerate cases
as for `hscore`: constant features give 0; a class with one example is fine.
The score uses the training split only, as the paper does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common
from model_search.scores import hscore as hscore_lib

# Full float32 matmuls: TF32 / bf16 passes (the GPU / TPU default) would cost
# digits the projections need.
_HIGHEST = jax.lax.Precision.HIGHEST


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _spectrum(features, labels, *, num_classes: int):
  """The spectral pieces of the regularised H-score.

  With X the centred features, X^T X = sum_i e_i v_i v_i^T and y_c the
  indicator of class c (n_c examples), returns e and
  q_i = sum_c (v_i^T X^T y_c)^2 / n_c = (N - 1) v_i^T cov(E[f | y]) v_i, so
  that tr(g(X^T X) X^T P X) = sum_i g(e_i) q_i for a spectral function g.

  Returns:
    (e, q, xc): e and q [min(N, D)] float32 (e >= 0), xc the [N, D] centred
    features.
  """
  xc = hscore_lib.centre(features)
  n, d = xc.shape
  y = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [N, C]
  counts = jnp.sum(y, axis=0)
  inv_counts = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1.0), 0.0)
  if n < d:
    # X X^T = U diag(e) U^T and v_i = X^T u_i / sqrt(e_i), so
    # (v_i^T X^T y_c)^2 = e_i (u_i^T y_c)^2.
    e, u = jnp.linalg.eigh(jnp.matmul(xc, xc.T, precision=_HIGHEST))
    e = jnp.maximum(e, 0.0)
    z = jnp.matmul(u.T, y, precision=_HIGHEST)  # [N, C]
    q = e * jnp.matmul(jnp.square(z), inv_counts, precision=_HIGHEST)
  else:
    e, v = jnp.linalg.eigh(jnp.matmul(xc.T, xc, precision=_HIGHEST))
    e = jnp.maximum(e, 0.0)
    sums = jnp.matmul(xc.T, y, precision=_HIGHEST)  # [D, C] class sums
    z = jnp.matmul(v.T, sums, precision=_HIGHEST)  # [D, C]
    q = jnp.matmul(jnp.square(z), inv_counts, precision=_HIGHEST)
  return e, q, xc


def _shrinkage(e, xc):
  """Ledoit-Wolf shrinkage and mu from the eigenvalues e of X^T X and X.

  The statistics of sklearn's `ledoit_wolf_shrinkage`, written in terms of
  the spectrum: ||S||_F^2 = sum lambda^2 and ||S - mu I||_F^2 =
  sum (lambda - mu)^2 + (D - k) mu^2 over the k = min(N, D) eigenvalues
  lambda = e / N (the other D - k are zero). The second form avoids the
  cancellation of ||S||_F^2 - D mu^2 when S is close to mu I.
  """
  n, d = xc.shape
  lam = e / n
  mu = jnp.sum(lam) / d
  s_frob2 = jnp.sum(jnp.square(lam))
  # sum_k ||x_k||^4 / N - ||S||_F^2: the spread of the rank-one terms x x^T.
  row_norms4 = jnp.sum(jnp.square(jnp.sum(jnp.square(xc), axis=1)))
  beta = (row_norms4 / n - s_frob2) / (d * n)
  delta = (jnp.sum(jnp.square(lam - mu)) + (d - lam.shape[0]) * mu**2) / d
  beta = jnp.minimum(beta, delta)
  ratio = beta / jnp.where(delta > 0, delta, 1.0)
  shrinkage = jnp.where(delta > 0, jnp.clip(ratio, 0.0, 1.0), 0.0)
  if d == 1:
    shrinkage = jnp.zeros_like(shrinkage)  # As sklearn: any value is the same.
  return shrinkage, mu


@jax.jit
def _ledoit_wolf(features):
  xc = hscore_lib.centre(features)
  n, d = xc.shape
  gram = (jnp.matmul(xc, xc.T, precision=_HIGHEST) if n < d else
          jnp.matmul(xc.T, xc, precision=_HIGHEST))
  e = jnp.maximum(jnp.linalg.eigvalsh(gram), 0.0)
  shrinkage, mu = _shrinkage(e, xc)
  cov = jnp.matmul(xc.T, xc, precision=_HIGHEST) / n
  return (1.0 - shrinkage) * cov + shrinkage * mu * jnp.eye(d), shrinkage


def ledoit_wolf(features) -> tuple[np.ndarray, float]:
  """The Ledoit-Wolf shrinkage covariance, as sklearn.covariance.ledoit_wolf.

  Forms the [D, D] matrix; `regularized_hscore` itself never does when N < D.

  Args:
    features: [N, D] float features (centred here).

  Returns:
    (covariance [D, D] float32, shrinkage in [0, 1]).
  """
  x = jnp.asarray(features, jnp.float32)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"ledoit_wolf: features must be a non-empty [N, D] array, "
                     f"got shape {x.shape}")
  cov, shrinkage = _ledoit_wolf(x)
  return np.asarray(cov), float(shrinkage)


@jax.jit
def _regularized_hscore(e, q, xc, rtol):
  n = xc.shape[0]
  shrinkage, mu = _shrinkage(e, xc)
  # Eigenvalues of cov_a on the eigenvectors of S that X reaches; the others
  # (a mu) meet q = 0.
  den = (1.0 - shrinkage) * e / n + shrinkage * mu
  keep = den > rtol * jnp.max(den)
  trace = jnp.sum(jnp.where(keep, q / jnp.where(keep, den, 1.0), 0.0))
  # q sums (v^T X^T y_c)^2 / n_c, i.e. (N - 1) v^T cov(E[f | y]) v.
  return (1.0 - shrinkage) * trace / (n - 1), shrinkage


def regularized_hscore_and_shrinkage(
    features, labels, *, num_classes: int | None = None,
    rtol: float | None = None) -> tuple[float, float]:
  """The regularised H-score and the Ledoit-Wolf shrinkage it used.

  Args: as `regularized_hscore`.

  Returns:
    (H_a, a).
  """
  x, y, num_classes = hscore_lib.check_inputs(
      features, labels, num_classes=num_classes, score="regularized_hscore")
  if rtol is None:
    rtol = hscore_lib.default_rtol(*x.shape)
  elif not 0 <= rtol < 1:
    raise ValueError(f"regularized_hscore: rtol must be in [0, 1), got {rtol!r}")
  e, q, xc = _spectrum(x, y, num_classes=num_classes)
  h, shrinkage = _regularized_hscore(e, q, xc, jnp.float32(rtol))
  return float(h), float(shrinkage)


def regularized_hscore(features, labels, *, num_classes: int | None = None,
                       rtol: float | None = None) -> float:
  """Regularised (shrinkage) H-score of Ibrahim et al. (ECML-PKDD 2022).

  Args:
    features: [N, D] float32 features.
    labels: [N] int labels in 0..C-1.
    num_classes: C; None means max(labels) + 1 (only the classes present
      matter).
    rtol: eigenvalues of cov_a(f) at or below rtol * the largest are dropped
      from the pseudo-inverse; None: max(N, D) * eps(float32). Only matters
      when the shrinkage is 0.

  Returns:
    tr(cov_a(f)^+ (1 - a) cov(E[f | y])) with tllib's normalisation, a float
    >= 0; 0 for constant features.
  """
  return regularized_hscore_and_shrinkage(features, labels,
                                          num_classes=num_classes, rtol=rtol)[0]


def score(inputs: common.ScoreInputs, *,
          rtol: float | None = None) -> dict[str, float]:
  """Regularised H-score on the training split.

  Args:
    inputs: the (model, task) features and labels.
    rtol: see `regularized_hscore`.

  Returns:
    {'score': regularised H-score, 'shrinkage': the Ledoit-Wolf shrinkage}.
  """
  h, shrinkage = regularized_hscore_and_shrinkage(
      inputs.train_features, inputs.train_labels,
      num_classes=inputs.num_classes, rtol=rtol)
  return {"score": h, "shrinkage": shrinkage}
