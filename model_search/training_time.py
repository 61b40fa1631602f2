"""Predicted fine-tuning loss curves and steps-to-target from the linearised model's NTK.

Zancato et al., "Predicting Training Time Without Training" (NeurIPS 2020, arXiv 2008.12478):
fine-tuning from pre-trained weights is well described by the model linearised at them, so
under the MSE loss the training dynamics live in function space and are set by the empirical
NTK Theta on the training set. `model_search.ntk` computes Theta and its `Spectrum`; this
module turns a spectrum into loss curves (full-batch GD, momentum, SGD's expected loss) and
steps to a target loss. Its kernel-side names (`compute_spectrum`, `empirical_ntk`,
`spectrum_from_kernel`, `correct_for_subset`, `Spectrum`, `KERNELS`, `NULL_RTOL`) are
importable from here too.

Notation (as in `model_search.ntk`). N examples, K outputs; Theta = J J^T [N K, N K] =
U diag(lambda) U^T; the initial residual r0 = f(X; w0) - Y [N K] has projections c = U^T r0.
The loss is L = 1/N sum_i 0.5 ||f(x_i) - y_i||^2 (design.md), so full-batch GD sees
Theta / N, whose eigenvalues are mu_a = lambda_a / N.

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

Memory. `predict_loss_curve` computes the kernel with `ntk.compute_spectrum`, so the
memory rule in `model_search.ntk` (the Jacobian, the kernel and its eigenvectors) bounds it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import numpy as np

from model_search.ntk import KERNELS
from model_search.ntk import NULL_RTOL
from model_search.ntk import Spectrum
from model_search.ntk import compute_spectrum
from model_search.ntk import correct_for_subset
from model_search.ntk import empirical_ntk
from model_search.ntk import spectrum_from_kernel
from model_search.scores import gradient_kernel

# The kernel-side names are re-exported: callers use training_time.compute_spectrum etc.
__all__ = [
    "EXACT_NOISE_MAX_DIM", "KERNELS", "NOISE", "NULL_RTOL", "SAMPLING", "Prediction",
    "Spectrum", "compute_spectrum", "correct_for_subset", "empirical_ntk", "loss_curve",
    "accuracy_curve", "predict_loss_curve", "predict_steps", "spectrum_from_kernel",
    "steps_to_loss",
]

NOISE = ("auto", "exact", "diagonal")
SAMPLING = ("without_replacement", "with_replacement")
# noise='auto' runs the exact second-moment recursion (O(M^3) per step) up to this M.
EXACT_NOISE_MAX_DIM = 512


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




def _check_dynamics(learning_rate, steps, momentum, batch_size) -> np.ndarray:
  """Validates the options; returns the learning rate of each step, [steps] float64."""
  gradient_kernel.check_int("steps", steps, 0)
  if isinstance(learning_rate, (int, float, np.floating, np.integer)):
    lrs = np.full(int(steps), float(learning_rate))
  else:
    lrs = np.asarray(learning_rate, np.float64)
    if lrs.shape != (int(steps),):
      raise ValueError(f"learning_rate must be a number or a schedule of one learning rate "
                       f"per step, shape [steps={steps}], got shape {lrs.shape}")
  if not (np.all(np.isfinite(lrs)) and np.all(lrs > 0)):
    raise ValueError(f"learning_rate must be finite and > 0 (every step of a schedule), got "
                     f"{learning_rate!r}")
  if not (isinstance(momentum, (int, float, np.floating, np.integer)) and 0 <= momentum < 1):
    raise ValueError(f"momentum must be in [0, 1) (optax.sgd's trace decay), got {momentum!r}")
  if batch_size is not None:
    gradient_kernel.check_int("batch_size", batch_size, 1)
  return lrs


def _sandwich(blocks, flat, r):
  """mean_j H_j R H_j with H_j = B_j^T B_j (blocks [n, Kb, M], flat [n Kb, M])."""
  n, kb, m = blocks.shape
  t = (flat @ r).reshape(n, kb, m)                     # B_j R
  q = np.einsum("jkp,jlp->jkl", t, blocks)             # B_j R B_j^T
  y = np.einsum("jkl,jlm->jkm", q, blocks).reshape(n * kb, m)
  return flat.T @ y / n


def _deterministic_curve(mu, energy, lrs, m, steps):
  """Full-batch GD: L_t from phi_a(t), with the velocity term (psi = s / c_a) carried along.

  With a learning rate per step, c(t+1) = c(t) - lr_t (mu c(t) + m s(t)), s(t+1) = mu c(t) +
  m s(t); for a constant lr this is the three-term recurrence of the module docstring.
  """
  out = np.empty(steps + 1)
  phi, psi = np.ones_like(mu), np.zeros_like(mu)
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(steps + 1):
      out[t] = 0.5 * np.dot(energy, phi**2)
      if t < steps:
        psi = mu * phi + m * psi
        phi = phi - lrs[t] * psi
  return out


def _sgd_exact(mu, c, blocks, lrs, m, steps, noise_scale):
  flat = blocks.reshape(-1, blocks.shape[2])
  rr = c @ c.T
  rv, vv = np.zeros_like(rr), np.zeros_like(rr)
  g, d = mu, m
  mumu = np.outer(mu, mu)
  out = np.empty(steps + 1)
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(steps + 1):
      out[t] = 0.5 * np.trace(rr)
      if t == steps or not out[t] >= 0 or not np.isfinite(out[t]):
        # An expected loss cannot be negative: only runaway rounding of a diverging
        # recursion gets there, so it is reported as divergence, like inf and NaN.
        out[t:] = out[t] if np.isfinite(out[t]) and out[t] >= 0 else np.inf
        break
      lr = lrs[t]
      a, b = 1 - lr * mu, -lr * m
      noise = mumu * (noise_scale * (_sandwich(blocks, flat, rr) - rr))
      # The moments are symmetric; rounding is not. Left alone, the antisymmetric part of
      # the rounding error can grow geometrically at high learning rates (it has unstable
      # modes where the symmetric part has none) and swamp the loss: keep them symmetric.
      noise = 0.5 * (noise + noise.T)
      if m == 0:
        rr = np.outer(a, a) * rr + lr**2 * noise
        rr = 0.5 * (rr + rr.T)
        continue
      arv = a[:, None] * rv
      grv = g[:, None] * rv
      rr, rv, vv = (np.outer(a, a) * rr + b * (arv + arv.T) + b * b * vv + lr**2 * noise,
                    np.outer(a, g) * rr + d * arv + b * grv.T + b * d * vv - lr * noise,
                    np.outer(g, g) * rr + d * (grv + grv.T) + d * d * vv + noise)
      rr, vv = 0.5 * (rr + rr.T), 0.5 * (vv + vv.T)
  return out


# The diagonal noise's G matrix of the last spectra: (eigenvector blocks, G) pairs, so the
# curves of many learning rates and batch sizes on one spectrum build it once.
_NOISE_CACHE: list = []


def _noise_matrix(blocks):
  """G_ab = mean_j (H_j)_ab^2 = (1/n) sum_{k,l} sum_j (B_jka B_jla)(B_jkb B_jlb): the noise
  that covariance along b puts on a's diagonal. One matrix product per pair k <= l."""
  for cached, gmat in _NOISE_CACHE:
    if cached is blocks:
      return gmat
  n, kb, size = blocks.shape
  gmat = np.zeros((size, size))
  for k in range(kb):
    for l in range(k, kb):
      prod = blocks[:, k] * blocks[:, l]
      gmat += (1.0 if k == l else 2.0) * (prod.T @ prod)
  gmat /= n
  _NOISE_CACHE[:] = [(blocks, gmat)] + _NOISE_CACHE[:1]
  return gmat


def _sgd_diagonal(mu, c, blocks, lrs, m, steps, noise_scale):
  n, kb, size = blocks.shape
  gmat = _noise_matrix(blocks)
  flat = blocks.reshape(n * kb, size)
  squares = blocks[:, 0] ** 2 if kb == 1 else None
  mr, mv = c.copy(), np.zeros_like(c)
  srr, srv, svv = (np.zeros(size) for _ in range(3))
  g, d = mu, m
  out = np.empty(steps + 1)
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(steps + 1):
      out[t] = 0.5 * (np.sum(mr**2) + np.sum(srr))
      if t == steps or not out[t] >= 0 or not np.isfinite(out[t]):
        # An expected loss cannot be negative: only runaway rounding of a diverging
        # recursion gets there, so it is reported as divergence, like inf and NaN.
        out[t:] = out[t] if np.isfinite(out[t]) and out[t] >= 0 else np.inf
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
      lr = lrs[t]
      a, b = 1 - lr * mu, -lr * m
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

    rt' = (1 - lr mu) rt - lr m vt - lr mu xi,   vt' = m vt + mu (rt + xi),

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
    learning_rate: > 0; a number, or a schedule: [steps] learning rates, entry t used by
      step t + 1 (as optax evaluates a schedule at the step count before the update).
    steps: the number of steps; the curve has steps + 1 entries.
    batch_size: None for full batch; B for SGD (expected loss, noise term included).
    momentum: m in [0, 1), optax.sgd's.
    noise: 'auto', 'exact' or 'diagonal' (see above).
    sampling: 'without_replacement' (B distinct examples per step) or 'with_replacement'.

  Returns:
    [steps + 1] float64: entry t is the (expected) loss after t steps; a divergent run
    grows to inf.
  """
  lrs = _check_dynamics(learning_rate, steps, momentum, batch_size)
  _check_choice("noise", noise, NOISE)
  _check_choice("sampling", sampling, SAMPLING)
  n = int(spectrum.num_examples)
  lam = np.asarray(spectrum.eigenvalues, np.float64)
  c = np.asarray(spectrum.residual_projections, np.float64)
  c = (c[:, None] if c.ndim == 1 else c) / math.sqrt(n)
  if lam.ndim != 1 or c.shape[0] != lam.shape[0]:
    raise ValueError(f"Spectrum has {lam.shape} eigenvalues but residual projections of "
                     f"shape {np.shape(spectrum.residual_projections)}; both need M rows")
  mu, m = lam / n, float(momentum)
  if batch_size is not None and sampling == "without_replacement" and batch_size > n:
    raise ValueError(f"batch_size={batch_size} > N={n} examples cannot be drawn without "
                     "replacement; use sampling='with_replacement' or batch_size <= N")
  if batch_size is None or (sampling == "without_replacement" and batch_size == n):
    return _deterministic_curve(mu, np.sum(c**2, axis=1), lrs, m, int(steps))
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
  return fn(mu, c, blocks, lrs, m, int(steps), scale)


def accuracy_curve(spectrum: Spectrum, targets, *, learning_rate, steps: int,
                   momentum: float = 0.0, every: int = 1) -> np.ndarray:
  """The training accuracy of the predicted outputs after t = 0, every, 2 every, ... steps.

  The outputs f_t = Y + r_t follow from the eigen-directions' phi_a(t) of full-batch GD
  (module docstring): r_t = U diag(phi(t)) c. For SGD on the linear model the *expected*
  outputs follow the same path (E[D_t] = I / N), so this is also the accuracy of SGD's mean
  prediction at any batch size; it is not the expected accuracy of one SGD run. Accuracy:
  argmax_k f_t(x)_k == argmax_k y_k. A subset-corrected spectrum predicts its n examples.

  Args:
    spectrum: with eigenvector blocks (`compute_spectrum` / `spectrum_from_kernel`).
    targets: [N, K] the targets the spectrum's residual was taken against (all N examples;
      for a subset spectrum its `example_index` rows are used), e.g. one-hot labels.
    learning_rate, steps, momentum: as in `loss_curve` (a schedule is allowed).
    every: keep every this-many-th step (the last step is always kept).

  Returns:
    [len(range(0, steps + 1, every)) (+ 1 if steps is not on that grid)] accuracies.
  """
  lrs = _check_dynamics(learning_rate, steps, momentum, None)
  gradient_kernel.check_int("every", every, 1)
  blocks = spectrum.eigenvector_blocks
  if blocks is None:
    raise ValueError("accuracy_curve needs the spectrum's eigenvector_blocks; use "
                     "compute_spectrum / spectrum_from_kernel")
  blocks = np.asarray(blocks, np.float64)
  n_kernel, n = blocks.shape[0], int(spectrum.num_examples)
  y = np.asarray(targets, np.float64)
  if spectrum.example_index is not None and y.shape[0] == n:
    y = y[np.asarray(spectrum.example_index)]
  c = np.asarray(spectrum.residual_projections, np.float64)
  k = y.shape[1] if y.ndim == 2 else -1
  if y.shape[0] != n_kernel or (c.ndim == 1 and blocks.shape[1] != k) or (
      c.ndim == 2 and c.shape[1] != k):
    raise ValueError(f"targets must be [N, K] for the spectrum's {n_kernel} examples and "
                     f"K outputs, got shape {y.shape}")
  labels = np.argmax(y, axis=1)
  mu, m = np.asarray(spectrum.eigenvalues, np.float64) / n, float(momentum)
  phi, psi = np.ones_like(mu), np.zeros_like(mu)
  keep = set(range(0, steps + 1, every)) | {steps}
  out = []
  for t in range(steps + 1):
    if t in keep:
      if c.ndim == 1:  # 'full': blocks [n, K, M], c [M].
        r = blocks @ (phi * c)
      else:            # 'kronecker': blocks [n, 1, M], c [M, K].
        r = blocks[:, 0] @ (phi[:, None] * c)
      out.append(np.mean(np.argmax(y + r / math.sqrt(n), axis=1) == labels))
    if t < steps:
      psi = mu * phi + m * psi
      phi = phi - lrs[t] * psi
  return np.asarray(out)


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
  lrs = _check_dynamics(learning_rate, steps, momentum, batch_size)
  if not isinstance(target, (int, float, np.floating, np.integer)) or math.isnan(target):
    raise ValueError(f"target must be a number, got {target!r}")
  floor = spectrum.floor
  if target < floor:
    return Prediction(math.inf, (
        f"target {target:.6g} is below the floor {floor:.6g}: the initial residual's "
        "component in the kernel's null space, which gradient descent on the linearised "
        "model cannot reduce"), floor, None)
  limit = spectrum.max_stable_learning_rate(momentum)
  peak = float(np.max(lrs, initial=0.0))
  if peak >= limit:
    return Prediction(math.inf, (
        f"learning_rate {peak:.6g}{' (the schedule peak)' if lrs.size and np.ptp(lrs) else ''}"
        f" is at or above the stability limit "
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
        f"{peak:.6g} is beyond SGD's stability limit for this batch size, below "
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
