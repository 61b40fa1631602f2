"""The empirical NTK of a model linearised at its weights, and its spectrum.

Zancato et al., "Predicting Training Time Without Training" (NeurIPS 2020, arXiv 2008.12478):
fine-tuning from pre-trained weights is well described by the model linearised at them,
f(x; w) ~ f(x; w0) + J(x) (w - w0), so under the MSE loss the training dynamics live in
function space and are set by the empirical NTK Theta = J J^T on the training set. This
module computes Theta from per-example Jacobians (exact or sketched), eigendecomposes it into
a `Spectrum`, and corrects a spectrum computed on a subset for the full training set; the
loss curves the spectrum determines are in `model_search.training_time`.

Notation. N examples, K outputs, P (selected) parameters. J [N K, P] stacks the Jacobian
rows (row i K + k: d f_k(x_i) / dw); Theta = J J^T [N K, N K] = U diag(lambda) U^T; the
initial residual r0 = f(X; w0) - Y [N K] has projections c = U^T r0. Directions with
lambda_a = 0 (the kernel's null space) are ones gradient descent on the linearised model
never moves.

Memory rule. The exact path holds J on the host: 4 N K P bytes (float32), refused above
`max_jacobian_bytes` (default 1 GiB); pass `projection_dim=d` to CountSketch each Jacobian row
to d coordinates as it is produced (4 N K d bytes, E[Z Z^T] = Theta; the sketch of
`model_search.scores.gradient_kernel`), `select` fewer parameters or `subset_size`. The kernel
and its eigenvectors take 8 M^2 bytes each, M = N K ('full') or N ('kronecker').
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import gradient_kernel

KERNELS = ("full", "kronecker")
# Eigenvalues at or below this fraction of the largest are the null space. The Jacobian is
# float32: rounding its entries (relative error eps32 / 2) perturbs Theta = J J^T by about
# eps32 lambda_max in norm, so smaller eigenvalues cannot be told from 0; 4 eps32 ~ 4.8e-7
# leaves a margin. (1e-5, the first default, zeroed real directions when one eigenvalue
# dominates: floors of up to 61% of the initial loss on the mini zoo, benchmarks/RESULTS.md.)
NULL_RTOL = float(4 * np.finfo(np.float32).eps)


class Spectrum(NamedTuple):
  """The NTK's spectrum and the initial residual in its eigenbasis.

  Attributes:
    eigenvalues: [M] eigenvalues lambda_a of Theta on the `num_examples` examples,
      descending, >= 0 (those in the null space exactly 0).
    residual_projections: [M] c_a = u_a . r0, or [M, R] for R residual channels sharing
      the kernel (the 'kronecker' kernel: one channel per output).
    num_examples: N, the examples the loss averages over.
    eigenvector_blocks: [n, Kb, M] or None: sqrt(n) times the rows of the eigenvectors
      that belong to each of the n examples the kernel was computed on (Kb = K for the
      'full' kernel, 1 for 'kronecker'), so their mean over examples of B_j^T B_j is the
      identity. Only the SGD noise needs them; None allows full-batch curves only.
    subset_size: n when the kernel came from a subset of n < N examples, else None.
    example_index: [n] which of the N examples the kernel's n are (`compute_spectrum`'s
      subset), or None when they are all N in order.
  """
  eigenvalues: np.ndarray
  residual_projections: np.ndarray
  num_examples: int
  eigenvector_blocks: np.ndarray | None = None
  subset_size: int | None = None
  example_index: np.ndarray | None = None

  @property
  def energies(self) -> np.ndarray:
    """[M] residual energy per direction, sum over channels of c_a^2."""
    c = np.asarray(self.residual_projections, np.float64)
    return c**2 if c.ndim == 1 else np.sum(c**2, axis=1)

  @property
  def floor(self) -> float:
    """The loss the null space keeps: 0.5 / N sum over lambda_a = 0 of c_a^2."""
    null = np.asarray(self.eigenvalues) <= 0
    return float(0.5 / self.num_examples * np.sum(self.energies[null]))

  def max_stable_learning_rate(self, momentum: float = 0.0) -> float:
    """2 (1 + m) N / lambda_max: full-batch GD diverges at or above it."""
    top = float(np.max(self.eigenvalues, initial=0.0))
    return math.inf if top <= 0 else 2.0 * (1.0 + momentum) * self.num_examples / top


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def _merge_fn(treedef, mask):
  def merge(sel_leaves, rest_leaves):
    sel, rest = iter(sel_leaves), iter(rest_leaves)
    return jax.tree_util.tree_unflatten(
        treedef, [next(sel) if m else next(rest) for m in mask])
  return merge


@functools.lru_cache(maxsize=32)
def _rows_fn(apply_fn, treedef, mask, projection_dim):
  """Jitted: a chunk of images -> its Jacobian rows [c K, P], or their sketch [c K, d]."""
  merge = _merge_fn(treedef, mask)

  def outputs(sel, rest, image):
    return jnp.reshape(apply_fn(merge(sel, rest), image[None]), (-1,))

  def rows(sel, rest, images, salts):
    # jacrev: one vjp per output, vmapped over the chunk's examples.
    jac = jax.vmap(jax.jacrev(outputs), in_axes=(None, None, 0))(sel, rest, images)
    c, k = images.shape[0], jac[0].shape[1]
    leaves = [jnp.reshape(j, (c * k, -1)) for j in jac]
    if projection_dim is None:
      return jnp.concatenate(leaves, axis=1)
    # The same hashed buckets and signs for every row: one sketch S with E[S^T S] = I.
    return gradient_kernel.sketch_columns([x.T for x in leaves], salts, projection_dim).T

  return jax.jit(rows)


def _jacobian_rows(apply_fn, params, images, *, select, projection_dim, seed, chunk_size,
                   max_jacobian_bytes):
  """[N K, P] Jacobian rows (or [N K, d] sketched), float32 on the host, and K."""
  if projection_dim is not None:
    gradient_kernel.check_int("projection_dim", projection_dim, 1)
  prep = gradient_kernel.prepare(apply_fn, params, images, select=select, num_directions=1,
                                 seed=seed, chunk_size=chunk_size)
  n, c = prep.n, prep.chunk
  k = int(np.prod(jax.eval_shape(apply_fn, params, prep.images[:1]).shape[1:]))
  width = (sum(int(np.size(x)) for x in prep.sel) if projection_dim is None
           else int(projection_dim))
  need = 4 * n * k * width
  if projection_dim is None and need > max_jacobian_bytes:
    raise ValueError(
        f"The exact Jacobian needs 4 N K P = 4 x {n} x {k} x {width} bytes = "
        f"{need / 2**30:.2f} GiB > max_jacobian_bytes = {max_jacobian_bytes / 2**30:.2f} GiB; "
        "pass projection_dim=d (4 N K d bytes), a narrower select, a subset_size, or raise "
        "max_jacobian_bytes")
  fn = _rows_fn(apply_fn, prep.treedef, prep.mask,
                None if projection_dim is None else int(projection_dim))
  out = np.empty((n * k, width), np.float32)
  for start in range(0, n, c):
    index = np.minimum(np.arange(start, start + c), n - 1)  # Pad by repeating the last.
    rows = np.asarray(fn(prep.sel, prep.rest, jnp.asarray(prep.take(index)), prep.salts))
    m = min(c, n - start)
    out[start * k:(start + m) * k] = rows[:m * k]
  return out, k


def _gram64(rows):
  """rows rows^T in float64, a block of columns at a time (bounded extra memory)."""
  m = rows.shape[0]
  gram = np.zeros((m, m))
  width = max(1, 2**26 // (8 * max(m, 1)))
  for p in range(0, rows.shape[1], width):
    block = rows[:, p:p + width].astype(np.float64)
    gram += block @ block.T
  return gram


def empirical_ntk(apply_fn: Callable[..., Any], params: Any, images, *,
                  select: str | None = None, projection_dim: int | None = None,
                  seed: int = 0, chunk_size: int = 16,
                  max_jacobian_bytes: int = 2**30) -> np.ndarray:
  """The empirical NTK Theta = J J^T of `apply_fn` at `params` on `images`.

  Args:
    apply_fn: `apply_fn(params, images) -> [N, K]` (other output shapes are flattened).
    params: the pytree `apply_fn` takes.
    images: [N, ...] inputs.
    select: regex searched in each '/'-joined parameter path; None: every float parameter.
    projection_dim: None for the exact kernel; d to CountSketch each Jacobian row to d
      coordinates (unbiased: E[Z Z^T] = Theta, error ~ 1 / sqrt(d)).
    seed: fixes the sketch.
    chunk_size: examples whose Jacobians ([chunk, K, P]) are held at once.
    max_jacobian_bytes: the exact path refuses a Jacobian (4 N K P bytes) above this.

  Returns:
    [N K, N K] float64; entry (i K + k, j K + l) = df_k(x_i)/dw . df_l(x_j)/dw.

  Raises:
    ValueError: for bad options, a `select` matching nothing, or too large a Jacobian.
  """
  rows, _ = _jacobian_rows(apply_fn, params, images, select=select,
                           projection_dim=projection_dim, seed=seed, chunk_size=chunk_size,
                           max_jacobian_bytes=max_jacobian_bytes)
  return _gram64(rows)


def spectrum_from_kernel(theta, residuals, *, kernel: str = "full",
                         null_rtol: float = NULL_RTOL) -> Spectrum:
  """Eigendecomposes a kernel and projects the initial residual onto its eigenvectors.

  Args:
    theta: [N K, N K] kernel (example-major rows, as `empirical_ntk` returns) for
      kernel='full'; [N, N] for kernel='kronecker' (Theta = theta (x) I_K).
    residuals: [N, K] initial residual f(X; params) - Y.
    kernel: 'full' or 'kronecker'.
    null_rtol: eigenvalues <= null_rtol * lambda_max are set to 0 (the null space).

  Returns:
    The `Spectrum` (with eigenvector blocks, so SGD curves are available).
  """
  _check_choice("kernel", kernel, KERNELS)
  r = np.asarray(residuals, np.float64)
  if r.ndim != 2:
    raise ValueError(f"residuals must be [N, K], got shape {r.shape}")
  n, k = r.shape
  size = n * k if kernel == "full" else n
  theta = np.asarray(theta, np.float64)
  if theta.shape != (size, size):
    raise ValueError(f"For kernel={kernel!r} and residuals [{n}, {k}] the kernel must be "
                     f"[{size}, {size}], got {theta.shape}")
  lam, vec = np.linalg.eigh(0.5 * (theta + theta.T))
  lam, vec = lam[::-1], vec[:, ::-1]
  lam = np.where(lam <= null_rtol * max(lam[0], 0.0), 0.0, lam)
  proj = vec.T @ (r.reshape(-1) if kernel == "full" else r)
  blocks = math.sqrt(n) * vec.reshape(n, size // n, size)
  return Spectrum(lam, proj, n, blocks)


def correct_for_subset(spectrum: Spectrum, num_examples: int) -> Spectrum:
  """Re-expresses a spectrum computed on n examples for a training set of N >= n.

  The correction (Nystrom-style; the paper's exact formula could not be checked here, so
  this is the natural one, stated plainly): Theta_N / N and Theta_n / n estimate the same
  integral operator, so lambda_a <- lambda_a N / n and, keeping the residual energy per
  example, c_a^2 <- c_a^2 N / n; the eigenvector blocks (normalised per example) are kept.
  This is exactly the spectrum of the training set made of each subset example repeated
  N / n times. With `training_time`'s mean loss the corrected full-batch and
  with-replacement SGD curves are the subset's own curves; without replacement, the
  finite-population factor (N - B) / (N - 1) uses the true N. What the subset cannot know
  is kept as the subset has it: the residual's split between range and null space (a
  training loss on fewer examples is optimistic: the subset's floor is biased low when
  P < n K) and the small eigenvalues of the N-example kernel.

  Args:
    spectrum: from the n-example subset (its `num_examples` is n).
    num_examples: N.

  Returns:
    The corrected `Spectrum` (`num_examples` N, `subset_size` n).
  """
  n = spectrum.num_examples
  gradient_kernel.check_int("num_examples", num_examples, n)
  scale = num_examples / n
  return spectrum._replace(
      eigenvalues=np.asarray(spectrum.eigenvalues) * scale,
      residual_projections=np.asarray(spectrum.residual_projections) * math.sqrt(scale),
      num_examples=int(num_examples), subset_size=n)


def compute_spectrum(apply_fn: Callable[..., Any], params: Any, images, targets, *,
                     select: str | None = None, projection_dim: int | None = None,
                     seed: int = 0, kernel: str = "full", subset_size: int | None = None,
                     chunk_size: int = 16, null_rtol: float = NULL_RTOL,
                     max_jacobian_bytes: int = 2**30) -> Spectrum:
  """The NTK spectrum and residual projections of the model linearised at `params`.

  Args:
    apply_fn, params, images, select, projection_dim, seed, chunk_size, max_jacobian_bytes:
      as in `empirical_ntk`.
    targets: [N, K] regression targets (e.g. one-hot labels).
    kernel: 'full', the N K x N K kernel; or 'kronecker', Theta ~ theta (x) I_K with theta
      [N, N] the mean over outputs of the per-output kernels (exact for a linear head on
      fixed features; an N x N eigenproblem instead of N K x N K).
    subset_size: n < N: the kernel on n examples drawn at random (seed), corrected for N by
      `correct_for_subset`; only the n examples are processed.
    null_rtol: see `spectrum_from_kernel`.

  Returns:
    A `Spectrum` for `training_time.loss_curve`.
  """
  _check_choice("kernel", kernel, KERNELS)
  y = np.asarray(targets, np.float64)
  n_all = int(np.shape(images)[0])
  if y.ndim != 2 or y.shape[0] != n_all:
    raise ValueError(f"targets must be [N, K] with N = {n_all} images, got shape {y.shape}")
  if subset_size is not None:
    gradient_kernel.check_int("subset_size", subset_size, 1)
    if subset_size > n_all:
      raise ValueError(f"subset_size={subset_size} exceeds the {n_all} examples")
    index = np.sort(np.random.default_rng([seed, 1]).choice(n_all, subset_size, replace=False))
    images, y = images[index], y[index]
  outputs = _forward(apply_fn, params, images, chunk_size)
  if outputs.shape != y.shape:
    raise ValueError(f"apply_fn gives outputs [N, K] = {list(outputs.shape)} but targets "
                     f"are {list(y.shape)}")
  rows, k = _jacobian_rows(apply_fn, params, images, select=select,
                           projection_dim=projection_dim, seed=seed, chunk_size=chunk_size,
                           max_jacobian_bytes=max_jacobian_bytes)
  n = y.shape[0]
  if kernel == "kronecker":
    r3 = rows.reshape(n, k, -1)
    theta = sum(_gram64(r3[:, j]) for j in range(k)) / k
  else:
    theta = _gram64(rows)
  spectrum = spectrum_from_kernel(theta, outputs - y, kernel=kernel, null_rtol=null_rtol)
  if subset_size is None or subset_size == n_all:
    return spectrum
  return correct_for_subset(spectrum, n_all)._replace(example_index=index)


def _forward(apply_fn, params, images, chunk_size):
  n = int(np.shape(images)[0])
  step = 16 * max(int(chunk_size), 1)
  out = [np.asarray(apply_fn(params, jnp.asarray(images[s:s + step])), np.float64)
         for s in range(0, n, step)]
  return np.concatenate([o.reshape(o.shape[0], -1) for o in out])
