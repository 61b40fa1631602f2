"""Predicted fine-tuning loss curves and steps-to-target from the linearised model's NTK.

Zancato et al., "Predicting Training Time Without Training" (NeurIPS 2020, arXiv 2008.12478):
fine-tuning from pre-trained weights is well described by the model linearised at them,
f(x; w) ~ f(x; w0) + J(x) (w - w0), so under the MSE loss the training dynamics live in
function space and are set by the empirical NTK Theta = J J^T on the training set.

Notation. N examples, K outputs, P (selected) parameters. J [N K, P] stacks the Jacobian
rows (row i K + k: d f_k(x_i) / dw); Theta = J J^T [N K, N K] = U diag(lambda) U^T; the
initial residual r0 = f(X; w0) - Y [N K] has projections c = U^T r0. The loss is
L = 1/N sum_i 0.5 ||f(x_i) - y_i||^2 (design.md), so full-batch GD sees Theta / N, whose
eigenvalues are mu_a = lambda_a / N.

Full-batch GD with momentum m (optax.sgd: v <- m v + g, w <- w - lr v). Per eigen-direction
a, with c_a(t) = u_a . r_t and s_a(t) = u_a . J v_t (the velocity seen in function space):

  [c_a(t+1)]   [1 - lr mu_a   -lr m] [c_a(t)]
  [s_a(t+1)] = [    mu_a         m ] [s_a(t)],    c_a(0) = c_a, s_a(0) = 0,

i.e. c_a(t) = c_a phi_a(t) with phi(0) = 1, phi(1) = 1 - lr mu, phi(t+1) =
(1 + m - lr mu) phi(t) - m phi(t-1) (for m = 0: phi(t) = (1 - lr mu)^t), and
L_t = 0.5 / N sum_a c_a^2 phi_a(t)^2. Every direction is stable iff 0 <= lr mu_a < 2 (1 + m):
the learning rate must stay below 2 (1 + m) N / lambda_max. Directions with lambda_a = 0 (the
kernel's null space) never move: 0.5 / N sum_{lambda_a = 0} c_a^2 is a floor no learning rate
goes below.

SGD, batch size B (`loss_curve` docstring has the recursion). The linearised model under SGD
is a linear system driven by the batch-sampling matrix D_t (E[D_t] = I / N), so the first and
second moments of (residual, velocity) follow closed linear recursions; the expected loss is
0.5 / N times the trace of the residual's second moment. This is exact for the linear model
(with or without momentum) for independently drawn batches, with or without replacement within
a batch. The paper instead integrates an SDE (continuous time) with an approximated noise
covariance; here the discrete-time moments are exact, and `noise='diagonal'` is the cheap
approximation for large kernels.

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
NOISE = ("auto", "exact", "diagonal")
SAMPLING = ("without_replacement", "with_replacement")
# noise='auto' runs the exact second-moment recursion (O(M^3) per step) up to this M.
EXACT_NOISE_MAX_DIM = 512
# Eigenvalues below this fraction of the largest are the null space (float32 Jacobians).
NULL_RTOL = 1e-5


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
  """
  eigenvalues: np.ndarray
  residual_projections: np.ndarray
  num_examples: int
  eigenvector_blocks: np.ndarray | None = None
  subset_size: int | None = None

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


class Prediction(NamedTuple):
  """Steps to a target loss, with the reason when there is no finite answer.

  Attributes:
    steps: first t with predicted loss <= target; inf when never.
    reason: '' when reached, else why `steps` is inf.
    floor: the null-space floor of the loss (`Spectrum.floor`).
    curve: the predicted loss curve [steps + 1] (None when not computed).
  """
  steps: float
  reason: str
  floor: float
  curve: np.ndarray | None


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
  N / n times. With this module's mean loss the corrected full-batch and with-replacement
  SGD curves are the subset's own curves; without replacement, the finite-population
  factor (N - B) / (N - 1) uses the true N. What the subset cannot know is kept as the
  subset has it: the residual's split between range and null space (a training loss on
  fewer examples is optimistic: the subset's floor is biased low when P < n K) and the
  small eigenvalues of the N-example kernel.

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
    A `Spectrum` for `loss_curve`.
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
  return correct_for_subset(spectrum, n_all)


def _forward(apply_fn, params, images, chunk_size):
  n = int(np.shape(images)[0])
  step = 16 * max(int(chunk_size), 1)
  out = [np.asarray(apply_fn(params, jnp.asarray(images[s:s + step])), np.float64)
         for s in range(0, n, step)]
  return np.concatenate([o.reshape(o.shape[0], -1) for o in out])


def _check_dynamics(learning_rate, steps, momentum, batch_size):
  if not (isinstance(learning_rate, (int, float, np.floating, np.integer))
          and math.isfinite(learning_rate) and learning_rate > 0):
    raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
  gradient_kernel.check_int("steps", steps, 0)
  if not (isinstance(momentum, (int, float, np.floating, np.integer)) and 0 <= momentum < 1):
    raise ValueError(f"momentum must be in [0, 1) (optax.sgd's trace decay), got {momentum!r}")
  if batch_size is not None:
    gradient_kernel.check_int("batch_size", batch_size, 1)


def _sandwich(blocks, flat, r):
  """mean_j H_j R H_j with H_j = B_j^T B_j (blocks [n, Kb, M], flat [n Kb, M])."""
  n, kb, m = blocks.shape
  t = (flat @ r).reshape(n, kb, m)                     # B_j R
  q = np.einsum("jkp,jlp->jkl", t, blocks)             # B_j R B_j^T
  y = np.einsum("jkl,jlm->jkm", q, blocks).reshape(n * kb, m)
  return flat.T @ y / n


def _deterministic_curve(mu, energy, lr, m, steps):
  out = np.empty(steps + 1)
  # phi(-1) = 1 makes the recurrence give phi(1) = 1 - lr mu (the velocity starts at 0).
  prev, phi = np.ones_like(mu), np.ones_like(mu)
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(steps + 1):
      out[t] = 0.5 * np.dot(energy, phi**2)
      prev, phi = phi, (1 + m - lr * mu) * phi - m * prev
  return out


def _sgd_exact(mu, c, blocks, lr, m, steps, noise_scale):
  flat = blocks.reshape(-1, blocks.shape[2])
  rr = c @ c.T
  rv, vv = np.zeros_like(rr), np.zeros_like(rr)
  a, b, g, d = 1 - lr * mu, -lr * m, mu, m
  mumu = np.outer(mu, mu)
  out = np.empty(steps + 1)
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(steps + 1):
      out[t] = 0.5 * np.trace(rr)
      if t == steps or not np.isfinite(out[t]):
        out[t:] = out[t] if np.isfinite(out[t]) else np.inf
        break
      noise = mumu * (noise_scale * (_sandwich(blocks, flat, rr) - rr))
      if m == 0:
        rr = np.outer(a, a) * rr + lr**2 * noise
        continue
      arv = a[:, None] * rv
      grv = g[:, None] * rv
      rr, rv, vv = (np.outer(a, a) * rr + b * (arv + arv.T) + b * b * vv + lr**2 * noise,
                    np.outer(a, g) * rr + d * arv + b * grv.T + b * d * vv - lr * noise,
                    np.outer(g, g) * rr + d * (grv + grv.T) + d * d * vv + noise)
  return out


def _sgd_diagonal(mu, c, blocks, lr, m, steps, noise_scale):
  n, kb, size = blocks.shape
  # G_ab = mean_j (H_j)_ab^2 = (1/n) sum_{k,l} sum_j (B_jka B_jla)(B_jkb B_jlb): the noise
  # that covariance along b puts on a's diagonal. One matrix product per pair k <= l.
  gmat = np.zeros((size, size))
  for k in range(kb):
    for l in range(k, kb):
      prod = blocks[:, k] * blocks[:, l]
      gmat += (1.0 if k == l else 2.0) * (prod.T @ prod)
  gmat /= n
  flat = blocks.reshape(n * kb, size)
  squares = blocks[:, 0] ** 2 if kb == 1 else None
  mr, mv = c.copy(), np.zeros_like(c)
  srr, srv, svv = (np.zeros(size) for _ in range(3))
  a, b, g, d = 1 - lr * mu, -lr * m, mu, m
  out = np.empty(steps + 1)
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(steps + 1):
      out[t] = 0.5 * (np.sum(mr**2) + np.sum(srr))
      if t == steps or not np.isfinite(out[t]):
        out[t:] = out[t] if np.isfinite(out[t]) else np.inf
        break
      # diag(mean_j H_j (sum_r m_r m_r^T) H_j)_a = (1/n) sum_j sum_r (B_j^T B_j m_r)_a^2.
      y = (flat @ mr).reshape(n, kb, -1)  # B_j m_r: [n, Kb, R]
      if kb == 1:
        mean_part = squares.T @ np.sum(y[:, 0] ** 2, axis=1) / n
      else:
        mean_part = sum(np.sum(np.matmul(y[:, None, :, r], blocks)[:, 0] ** 2, axis=0)
                        for r in range(y.shape[2])) / n
      src = noise_scale * (gmat @ srr + mean_part - np.sum(mr**2, axis=1) - srr)
      src = mu**2 * src
      mr, mv = a[:, None] * mr + b * mv, g[:, None] * mr + d * mv
      srr, srv, svv = (a * a * srr + 2 * a * b * srv + b * b * svv + lr**2 * src,
                       a * g * srr + (a * d + b * g) * srv + b * d * svv - lr * src,
                       g * g * srr + 2 * g * d * srv + d * d * svv + src)
  return out


def loss_curve(spectrum: Spectrum, *, learning_rate: float, steps: int,
               batch_size: int | None = None, momentum: float = 0.0, noise: str = "auto",
               sampling: str = "without_replacement") -> np.ndarray:
  """The predicted (expected) training loss after t = 0..steps steps.

  Full batch (batch_size None, or B = N without replacement): the closed form of the
  module docstring. With batch size B, in normalised eigen-coordinates (rt = U^T r / sqrt(N),
  vt = U^T J v / sqrt(N), mu = lambda / N, loss = 0.5 ||rt||^2) one SGD step is

    rt' = (1 - lr mu) rt - lr m vt - lr mu xi,   vt' = m vt + mu xi,

  where xi = (E - I) rt is the batch noise, E = N U^T D U, D the batch's sampling weights
  (count / B per example, on each of its K outputs). xi has mean 0 and, given rt, covariance
  (s / B) (mean_j H_j rt rt^T H_j - rt rt^T), H_j = B_j^T B_j from `eigenvector_blocks`,
  s = 1 with replacement and s = (N - B) / (N - 1) for B distinct examples. The second
  moments Rr = E[rt rt^T], Rv, Vv then follow an exact linear recursion (noise='exact',
  O(M^3) per step): Rr' = A Rr A + lr^2 mu mu^T o Noise(Rr) + momentum terms, expected loss
  0.5 tr Rr. Assumptions: the model is linear (its NTK constant), batches are drawn
  independently each step (epoch-wise shuffling is anti-correlated and somewhat less
  noisy), and for subset-corrected spectra the n examples stand for the N.
  noise='diagonal' (O(M^2) per step) keeps the mean exactly but only the diagonal of the
  covariance in the eigenbasis: the noise's off-diagonal covariance, which feeds back into
  later noise through mean_j H_j R H_j, is dropped. 'auto': exact for M <= 512.

  Args:
    spectrum: from `compute_spectrum` / `spectrum_from_kernel`, or built by hand (without
      eigenvector blocks only full-batch curves are available).
    learning_rate: > 0.
    steps: the number of steps; the curve has steps + 1 entries.
    batch_size: None for full batch; B for SGD (expected loss, noise term included).
    momentum: m in [0, 1), optax.sgd's.
    noise: 'auto', 'exact' or 'diagonal' (see above).
    sampling: 'without_replacement' (B distinct examples per step) or 'with_replacement'.

  Returns:
    [steps + 1] float64: entry t is the (expected) loss after t steps; a divergent run
    grows to inf.
  """
  _check_dynamics(learning_rate, steps, momentum, batch_size)
  _check_choice("noise", noise, NOISE)
  _check_choice("sampling", sampling, SAMPLING)
  n = int(spectrum.num_examples)
  lam = np.asarray(spectrum.eigenvalues, np.float64)
  c = np.asarray(spectrum.residual_projections, np.float64)
  c = (c[:, None] if c.ndim == 1 else c) / math.sqrt(n)
  if lam.ndim != 1 or c.shape[0] != lam.shape[0]:
    raise ValueError(f"Spectrum has {lam.shape} eigenvalues but residual projections of "
                     f"shape {np.shape(spectrum.residual_projections)}; both need M rows")
  mu, lr, m = lam / n, float(learning_rate), float(momentum)
  if batch_size is not None and sampling == "without_replacement" and batch_size > n:
    raise ValueError(f"batch_size={batch_size} > N={n} examples cannot be drawn without "
                     "replacement; use sampling='with_replacement' or batch_size <= N")
  if batch_size is None or (sampling == "without_replacement" and batch_size == n):
    return _deterministic_curve(mu, np.sum(c**2, axis=1), lr, m, int(steps))
  blocks = spectrum.eigenvector_blocks
  if blocks is None:
    raise ValueError("SGD (batch_size set) needs the spectrum's eigenvector_blocks; use "
                     "compute_spectrum / spectrum_from_kernel, or batch_size=None")
  blocks = np.asarray(blocks, np.float64)
  if blocks.ndim != 3 or blocks.shape[2] != lam.shape[0]:
    raise ValueError(f"eigenvector_blocks must be [n, Kb, M={lam.shape[0]}], got "
                     f"{blocks.shape}")
  scale = 1.0 if sampling == "with_replacement" else (n - batch_size) / (n - 1)
  scale /= batch_size
  if noise == "auto":
    noise = "exact" if lam.shape[0] <= EXACT_NOISE_MAX_DIM else "diagonal"
  fn = _sgd_exact if noise == "exact" else _sgd_diagonal
  return fn(mu, c, blocks, lr, m, int(steps), scale)


def steps_to_loss(curve, target: float) -> float:
  """The first t with curve[t] <= target, as a float; inf when there is none.

  Args:
    curve: [T] loss curve (entry t: after t steps).
    target: the loss to reach.
  """
  curve = np.asarray(curve, np.float64)
  if curve.ndim != 1 or curve.size == 0:
    raise ValueError(f"curve must be a non-empty 1-D array, got shape {curve.shape}")
  if not isinstance(target, (int, float, np.floating, np.integer)) or math.isnan(target):
    raise ValueError(f"target must be a number, got {target!r}")
  hits = np.flatnonzero(curve <= target)
  return float(hits[0]) if hits.size else math.inf


def predict_steps(spectrum: Spectrum, target: float, *, learning_rate: float, steps: int,
                  batch_size: int | None = None, momentum: float = 0.0,
                  noise: str = "auto",
                  sampling: str = "without_replacement") -> Prediction:
  """Steps to reach `target` loss, or inf with the reason (floor, divergence, horizon).

  Args:
    spectrum, learning_rate, steps, batch_size, momentum, noise, sampling: as in
      `loss_curve` (`steps` is the horizon searched).
    target: the loss to reach.

  Returns:
    A `Prediction`: inf steps when the target is below the null-space floor (no learning
    rate or step count reaches it), when the learning rate is at or above the stability
    limit 2 (1 + m) N / lambda_max (the loss diverges), when the predicted SGD loss grows,
    or when the target is not reached within `steps`.
  """
  _check_dynamics(learning_rate, steps, momentum, batch_size)
  if not isinstance(target, (int, float, np.floating, np.integer)) or math.isnan(target):
    raise ValueError(f"target must be a number, got {target!r}")
  floor = spectrum.floor
  if target < floor:
    return Prediction(math.inf, (
        f"target {target:.6g} is below the floor {floor:.6g}: the initial residual's "
        "component in the kernel's null space, which gradient descent on the linearised "
        "model cannot reduce"), floor, None)
  limit = spectrum.max_stable_learning_rate(momentum)
  if learning_rate >= limit:
    return Prediction(math.inf, (
        f"learning_rate {learning_rate:.6g} is at or above the stability limit "
        f"2 (1 + momentum) N / lambda_max = {limit:.6g}: the loss diverges"), floor, None)
  curve = loss_curve(spectrum, learning_rate=learning_rate, steps=steps,
                     batch_size=batch_size, momentum=momentum, noise=noise, sampling=sampling)
  t = steps_to_loss(curve, target)
  if math.isfinite(t):
    return Prediction(t, "", floor, curve)
  grows = not np.all(np.isfinite(curve)) or (
      len(curve) > 1 and curve[-1] > curve[0] and curve[-1] > curve[-2])
  if batch_size is not None and grows:
    return Prediction(math.inf, (
        f"the expected SGD loss grows (batch_size={batch_size}): learning_rate "
        f"{learning_rate:.6g} is beyond SGD's stability limit for this batch size, below "
        f"the full-batch limit {limit:.6g}"), floor, curve)
  return Prediction(math.inf, (
      f"not reached within {steps} steps (loss after {steps} steps: {curve[-1]:.6g}, "
      f"floor {floor:.6g})"), floor, curve)


def predict_loss_curve(apply_fn: Callable[..., Any], params: Any, images, targets, *,
                       learning_rate: float, steps: int, batch_size: int | None = None,
                       momentum: float = 0.0, select: str | None = None,
                       projection_dim: int | None = None, seed: int = 0,
                       kernel: str = "full", subset_size: int | None = None,
                       noise: str = "auto", sampling: str = "without_replacement",
                       chunk_size: int = 16) -> np.ndarray:
  """The predicted training-loss curve of `apply_fn` linearised at `params` (design.md).

  Loss L = mean over the N examples of 0.5 ||apply_fn(params, x) - y||^2, optimised by
  optax.sgd(learning_rate, momentum), full batch or with batch size B (expected loss).
  For many learning rates or batch sizes, call `compute_spectrum` once and `loss_curve`
  per setting.

  Args:
    apply_fn: `apply_fn(params, images) -> [N, K]`.
    params: the pytree to linearise at.
    images: [N, ...] training inputs.
    targets: [N, K] targets.
    learning_rate, steps, batch_size, momentum, noise, sampling: see `loss_curve`.
    select, projection_dim, seed, kernel, subset_size, chunk_size: see `compute_spectrum`.

  Returns:
    [steps + 1] float64; entry t is the loss after t steps.
  """
  _check_dynamics(learning_rate, steps, momentum, batch_size)
  spectrum = compute_spectrum(apply_fn, params, images, targets, select=select,
                              projection_dim=projection_dim, seed=seed, kernel=kernel,
                              subset_size=subset_size, chunk_size=chunk_size)
  return loss_curve(spectrum, learning_rate=learning_rate, steps=steps,
                    batch_size=batch_size, momentum=momentum, noise=noise, sampling=sampling)
