"""SFDA: self-challenging Fisher discriminant analysis, a transferability score.

Shao et al., "Not All Models Are Equal: Predicting Model Transferability in a
Self-challenging Fisher Space" (ECCV 2022), the method section. With K
classes, priors pi_c = n_c / N, class means m_c and the pooled within-class
scatter

  S_w = sum_c pi_c cov_c = 1/N sum_i (x_i - m_{y_i}) (x_i - m_{y_i})^T,

SFDA fits a regularised Fisher discriminant twice:

1. Regularisation (the paper's lambda = exp(-a sigma(S_w))): the shrinkage is
   lambda = max(exp(-a * s), 1e-10), s the largest eigenvalue of S_w estimated
   by 3 power iterations, a = 5 (`decay`), and the within-class scatter is
   shrunk towards mu I, mu = tr(S_w) / D:  A = (1 - lambda) S_w + lambda mu I.
2. Fisher space: the generalised eigenvectors V of (S_b, A) (V^T A V = I) and
   the class-mean similarities  s_c(x) = x^T V V^T m_c - 1/2 m_c^T V V^T m_c
   + log pi_c, whose softmax is p(c | x).
3. ConfMix (the self-challenging step): p is softened by a second softmax,
   q = softmax(p), and each example is mixed with the mean of the OTHER
   classes' means, x~_i = q_i x_i + (1 - q_i) o_{y_i}, q_i = q(y_i | x_i),
   o_c = (sum_{c'} m_{c'} - m_c) / (K - 1).
4. Step 2 again on x~ with the same lambda; the score is the mean over examples
   of p~(y_i | x~_i).

Conventions, checked against the authors' code (TencentARC/SFDA `metrics.py`,
also in TMoE-Lab/SFDA and OpenGVLab/Multitask-Model-Selector: `SFDA_Score`,
class `SFDA`, `iterative_A` in `utils.py`):

* Same: the power iteration starts from S_w 1 and does 3 double steps
  (y = S_w x / |S_w x|, x = S_w y / |S_w y|), estimate x^T S_w y; lambda =
  max(exp(-5 s), 1e-10) in the first fit and reused in the second; covariances
  are biased (divide by n_c); the softening softmax, ConfMix and the
  unweighted mean of the other class means as written there.
* Same, computed differently: V is square and A-orthonormal, so V V^T = A^-1
  exactly: the eigenvectors (and S_b) cancel from the probabilities, which are
  those of a linear discriminant with covariance A. We evaluate them from one
  eigendecomposition of the N x N Gram matrix of the within-class deviations
  (D x D when N >= D), handling the null space of S_w analytically, instead of
  a D x D generalised eigenproblem. The reference tests check this against the
  literal generalised eigenvector computation.
* `statistic='prob'` (default) is the authors' code: the mean probability of
  the true class ("the log function is ignored in case of instability").
  `statistic='log_prob'` is the mean log-probability (LEEP-style, the log the
  code's comment says it dropped); the two can rank models differently.
* Departure: classes are the labels present, relabelled 0..K-1 in sorted order
  as `np.unique` does (the reference loops over 0..K-1 in ConfMix, which
  mismatches when some label in 0..max is absent).
* Departure: if S_w 1 is (numerically) zero the power iteration starts instead
  from the column of S_w with the largest diagonal (the reference gives NaN).

Precision: the heavy part is JAX, in float64 by default (`dtype`, run under a
scoped `jax.enable_x64`). The shrinkage is floored at 1e-10, so A has condition
numbers up to ~1e10 for unnormalised features (any features whose top
within-class variance is above ~5); float32 then disagrees with a float64
implementation by up to ~1e-3 relative (measured with N > D, lambda = 1e-10
and within-class variances spread over 6 decades). `dtype='float32'` is
available for accelerators without float64 and agrees to ~1e-6 when the
shrinkage is not tiny.

Degenerate regime: when N - K < D (VTAB-1k: N = 1000, D = 2048) the class
means differ along null directions of S_w, which A^-1 scales by 1 / (lambda mu);
with the floor lambda = 1e-10 the training examples are then separated with
probability ~1 and the score is ~1 for any such model (like the plain H-score):
exactly 1.0 on synthetic VTAB-sized features (weak class means in unit noise,
C = 10 and 100). Only features whose top within-class variance is small
(lambda not tiny) are ranked there, or pass a fixed `shrinkage`; the paper's
benchmarks have N > D.

Invariances: label permutation, example order and feature shifts (exact in
exact arithmetic). With a fixed `shrinkage`, also rotations and a global scale
of the features; the adaptive lambda depends on the scale (and, through the
start vector S_w 1, slightly on rotations). A class with one example is fine
(its covariance is 0). The score uses the training split only, as the paper.
"""

from __future__ import annotations

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common

STATISTICS = ("log_prob", "prob")
DTYPES = ("float32", "float64")
# Full-precision matmuls: TF32 / bf16 passes (the GPU / TPU float32 default)
# would swamp the small eigenvalues of the within-class scatter.
_HIGHEST = jax.lax.Precision.HIGHEST
_mm = functools.partial(jnp.matmul, precision=_HIGHEST)


def _within(x, y, counts, num_classes: int):
  """Class means [K, D], one-hot labels [N, K] and W [N, D] with S_w = W^T W."""
  n = x.shape[0]
  onehot = jax.nn.one_hot(y, num_classes, dtype=x.dtype)
  means = _mm(onehot.T, x) / counts[:, None]
  return means, onehot, (x - means[y]) / math.sqrt(n)


def _top_eigenvalue(w, iterations: int):
  """The reference's power-iteration estimate of the top eigenvalue of W^T W."""
  d = w.shape[1]
  s_w = lambda v: _mm(w.T, _mm(w, v))
  start = s_w(jnp.ones((d,), w.dtype))
  # Fallback when S_w 1 vanishes: the column of S_w with the largest diagonal
  # is nonzero whenever S_w is, and lies in its range.
  diag = jnp.sum(w * w, axis=0)
  column = s_w(jax.nn.one_hot(jnp.argmax(diag), d, dtype=w.dtype))
  tiny = jnp.linalg.norm(start) <= (
      10 * jnp.finfo(w.dtype).eps * math.sqrt(d) * jnp.sum(diag))
  x = jnp.where(tiny, column, start)
  for _ in range(iterations):
    t = s_w(x)
    y = t / jnp.linalg.norm(t)
    t = s_w(y)
    x = t / jnp.linalg.norm(t)
  return jnp.dot(x, s_w(y))


def _logits(means, onehot, w, counts, shrinkage):
  """The discriminant s_c(x_i) [N, K] with covariance A, for the rows of W.

  With x_i = m_{y_i} + sqrt(N) w_i, s_c(x_i) = G[y_i, c] + sqrt(N) w_i A^-1 m_c
  - G[c, c] / 2 + log pi_c, G = M A^-1 M^T. A shares the eigenvectors of
  S_w = W^T W, with eigenvalues (1 - lambda) e + lambda mu (lambda mu on the
  null space of S_w).
  """
  n, d = w.shape
  mu = jnp.sum(w * w) / d
  floor = shrinkage * mu
  if n < d:
    # W W^T = U diag(e) U^T; the directions v_j = W^T u_j / sqrt(e_j) of the
    # nonzero e_j span the range of S_w; the rest of R^D is its null space.
    e, u = jnp.linalg.eigh(_mm(w, w.T))
    e = jnp.maximum(e, 0.0)
    keep = e > max(n, d) * jnp.finfo(w.dtype).eps * jnp.max(e)
    s = jnp.sqrt(e)
    v = _mm(w.T, u) * jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
    lam = (1.0 - shrinkage) * e + floor
    b = _mm(means, v)  # [K, N]: M V.
    # The means' null-space parts, formed explicitly: |m|^2 - |M V|^2 would
    # cancel digits that 1 / (lambda mu) magnifies.
    perp = means - _mm(b, v.T)
    g = _mm(b / lam, b.T) + _mm(perp, perp.T) / floor
    # w_i A^-1 m_c = sum_j u_ij sqrt(e_j) / lam_j (M V)_cj; null directions
    # carry no w_i.
    wa = _mm(u * jnp.where(keep, s / lam, 0.0), b.T)
  else:
    e, v = jnp.linalg.eigh(_mm(w.T, w))
    lam = (1.0 - shrinkage) * jnp.maximum(e, 0.0) + floor
    b = _mm(means, v)  # [K, D]
    g = _mm(b / lam, b.T)
    wa = _mm(_mm(w, v) / lam, b.T)
  log_prior = jnp.log(counts / n)
  return _mm(onehot, g) + math.sqrt(n) * wa - 0.5 * jnp.diagonal(g) + log_prior


def _statistic(logits, y, statistic: str):
  rows = jnp.arange(y.shape[0])
  if statistic == "prob":
    return jnp.mean(jax.nn.softmax(logits, axis=1)[rows, y])
  return jnp.mean(jax.nn.log_softmax(logits, axis=1)[rows, y])


@functools.partial(
    jax.jit, static_argnames=("num_classes", "power_iterations", "statistic",
                              "adaptive"))
def _sfda(x, y, counts, shrinkage, decay, min_shrinkage, *, num_classes: int,
          power_iterations: int, statistic: str, adaptive: bool):
  # Every step is shift-invariant (ConfMix mixes with weights summing to 1);
  # centring keeps the class-mean products small.
  x = x - jnp.mean(x, axis=0)
  means, onehot, w = _within(x, y, counts, num_classes)
  top = _top_eigenvalue(w, power_iterations)
  if adaptive:
    shrinkage = jnp.maximum(jnp.exp(-decay * top), min_shrinkage)
  logits = _logits(means, onehot, w, counts, shrinkage)
  # ConfMix: soften p(y | x) by a second softmax, then pull each example
  # towards the mean of the other classes by 1 - q(y_i | x_i).
  q = jax.nn.softmax(jax.nn.softmax(logits, axis=1), axis=1)
  q_true = q[jnp.arange(x.shape[0]), y][:, None]
  outer = (jnp.sum(means, axis=0) - means) / (num_classes - 1)
  mixed = q_true * x + (1.0 - q_true) * outer[y]
  means2, _, w2 = _within(mixed, y, counts, num_classes)
  logits2 = _logits(means2, onehot, w2, counts, shrinkage)
  return dict(score=_statistic(logits2, y, statistic),
              first_pass=_statistic(logits, y, statistic),
              shrinkage=shrinkage, top_eigenvalue=top,
              within_trace=jnp.sum(w2 * w2))


def _check_inputs(features, labels, num_classes):
  """Validates; returns (float64 features, labels relabelled 0..K-1, counts)."""
  x = common.check_matrix(features, score="sfda")
  y = np.asarray(labels)
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise ValueError(f"sfda: labels must be [N] with N = {x.shape[0]} (the "
                     f"rows of features), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"sfda: labels must be integers, got dtype {y.dtype}")
  if y.min() < 0:
    raise ValueError(f"sfda: labels must be >= 0, got "
                     f"{sorted(set(y[y < 0].tolist()))[:10]}")
  if num_classes is not None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
      raise ValueError(f"sfda: num_classes must be an int or None, got "
                       f"{num_classes!r}")
    if y.max() >= num_classes:
      raise ValueError(f"sfda: labels contain "
                       f"{sorted(set(y[y >= num_classes].tolist()))[:10]} "
                       f"outside 0..{num_classes - 1} "
                       f"(num_classes={num_classes})")
  present, y = np.unique(y, return_inverse=True)
  if present.size < 2:
    raise ValueError(f"sfda: labels contain only class(es) {present.tolist()};"
                     " at least 2 classes must be present")
  counts = np.bincount(y)
  # S_w = 0 exactly when every class's rows are identical; A would be 0.
  first_row = np.argmax(y[None, :] == np.arange(present.size)[:, None], axis=1)
  if np.all(x == x[first_row[y]]):
    raise ValueError("sfda: features are constant within every class (the "
                     "within-class scatter S_w is zero), so the Fisher "
                     "discriminant is undefined")
  return x, y.astype(np.int32), counts


def sfda_details(features, labels, *, num_classes: int | None = None,
                 shrinkage: float | None = None, decay: float = 5.0,
                 min_shrinkage: float = 1e-10, power_iterations: int = 3,
                 statistic: str = "prob",
                 dtype: str = "float64") -> dict[str, float]:
  """SFDA and its diagnostics.

  Args: as `sfda`.

  Returns:
    {'score': SFDA, 'first_pass': the same statistic before ConfMix (the
     regularised Fisher discriminant alone), 'shrinkage': lambda,
     'top_eigenvalue': the power-iteration estimate of the top eigenvalue of
     S_w}.
  """
  if statistic not in STATISTICS:
    raise ValueError(f"sfda: unknown statistic {statistic!r}; valid "
                     f"statistics: {', '.join(STATISTICS)}")
  if dtype not in DTYPES:
    raise ValueError(f"sfda: unknown dtype {dtype!r}; valid dtypes: "
                     f"{', '.join(DTYPES)}")
  if shrinkage is not None and not 0 < shrinkage <= 1:
    raise ValueError(f"sfda: shrinkage must be in (0, 1] or None (adaptive), "
                     f"got {shrinkage!r}")
  if not 0 < min_shrinkage <= 1:
    raise ValueError(f"sfda: min_shrinkage must be in (0, 1], got "
                     f"{min_shrinkage!r}")
  if not (math.isfinite(decay) and decay >= 0):
    raise ValueError(f"sfda: decay must be finite and >= 0, got {decay!r}")
  if (isinstance(power_iterations, bool) or
      not isinstance(power_iterations, int) or power_iterations < 1):
    raise ValueError(f"sfda: power_iterations must be an int >= 1, got "
                     f"{power_iterations!r}")
  x, y, counts = _check_inputs(features, labels, num_classes)
  x64 = (jax.enable_x64(True) if dtype == "float64" else
         contextlib.nullcontext())
  with x64:
    dt = jnp.dtype(dtype)
    out = _sfda(jnp.asarray(x, dt), jnp.asarray(y), jnp.asarray(counts, dt),
                jnp.asarray(1.0 if shrinkage is None else shrinkage, dt),
                jnp.asarray(decay, dt), jnp.asarray(min_shrinkage, dt),
                num_classes=int(counts.size),
                power_iterations=power_iterations, statistic=statistic,
                adaptive=shrinkage is None)
    out = {k: float(v) for k, v in out.items()}
  if not out.pop("within_trace") > 0:
    raise ValueError("sfda: after ConfMix the features are constant within "
                     "every class (the within-class scatter is zero)")
  bad = [k for k, v in out.items() if not math.isfinite(v)]
  if bad:
    raise ValueError(f"sfda: non-finite {', '.join(bad)} ({out}); the "
                     "features are too ill-conditioned for dtype "
                     f"{dtype!r}")
  return out


def sfda(features, labels, *, num_classes: int | None = None,
         shrinkage: float | None = None, decay: float = 5.0,
         min_shrinkage: float = 1e-10, power_iterations: int = 3,
         statistic: str = "prob", dtype: str = "float64") -> float:
  """SFDA score of Shao et al. (ECCV 2022); see the module docstring.

  Args:
    features: [N, D] float features (float32 from the pipeline).
    labels: [N] int labels in 0..C-1; only the classes present count (at
      least 2).
    num_classes: C, for validating the labels; None means max(labels) + 1.
    shrinkage: a fixed lambda in (0, 1]; None (default): the paper's adaptive
      max(exp(-decay * s), min_shrinkage), s the power-iteration estimate of
      the top eigenvalue of S_w.
    decay: a in lambda = exp(-a s) (the reference: 5).
    min_shrinkage: the floor of the adaptive lambda (the reference: 1e-10).
    power_iterations: double steps of the power iteration (the reference: 3).
    statistic: 'prob' (the authors' code: mean probability of the true class)
      or 'log_prob' (its mean log-probability).
    dtype: 'float64' (default) or 'float32', the precision of the JAX
      computation (see the module docstring).

  Returns:
    The mean over examples of p~(y_i | x~_i) after ConfMix, in (0, 1] (or of
    its log, <= 0). Higher is better.

  Raises:
    ValueError: for bad shapes or options, labels outside 0..C-1, fewer than 2
      classes present, non-finite features, or features constant within every
      class.
  """
  return sfda_details(features, labels, num_classes=num_classes,
                      shrinkage=shrinkage, decay=decay,
                      min_shrinkage=min_shrinkage,
                      power_iterations=power_iterations, statistic=statistic,
                      dtype=dtype)["score"]


def score(inputs: common.ScoreInputs, *, shrinkage: float | None = None,
          decay: float = 5.0, min_shrinkage: float = 1e-10,
          power_iterations: int = 3, statistic: str = "prob",
          dtype: str = "float64") -> dict[str, float]:
  """SFDA on the training split (as the paper: the target training set).

  Args:
    inputs: the (model, task) features and labels.
    shrinkage, decay, min_shrinkage, power_iterations, statistic, dtype: see
      `sfda`.

  Returns:
    {'score': SFDA, 'first_pass': the score before ConfMix, 'shrinkage':
     lambda, 'top_eigenvalue': the estimate of the top eigenvalue of S_w}.
  """
  return sfda_details(inputs.train_features, inputs.train_labels,
                      num_classes=inputs.num_classes, shrinkage=shrinkage,
                      decay=decay, min_shrinkage=min_shrinkage,
                      power_iterations=power_iterations, statistic=statistic,
                      dtype=dtype)
