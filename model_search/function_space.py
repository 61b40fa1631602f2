"""Training a linearised model in function space: one SGD run, step by step, from its NTK.

A model linearised at its weights w0, f(x; w) = f(x; w0) + J(x) (w - w0), trained by
gradient steps moves only in function space: a step on batch S with weight-space gradient
g = J_S^T e_S / |S| (e_S = dloss / df on the batch) changes the outputs on every training
example by -lr J g = -lr Theta[:, S] e_S / |S|, with Theta = J J^T the empirical NTK. So
the whole run (the batch losses SGD sees, the training loss and accuracy on all N examples
after each step) follows from Theta, the initial outputs and the batches, without touching
the weights. This is exact for the linearised model, for any loss that is a function of
the outputs, and covers what `model_search.finetune` does to the gradient:

* momentum (optax.sgd's trace: v <- m v + g, w <- w - lr_t v): carried as u = J v, the
  velocity seen in function space, u <- m u + J g;
* a learning-rate schedule (one lr per step);
* clipping the gradient's global norm (optax.clip_by_global_norm, before the momentum):
  ||g||^2 = e_S^T Theta[S, S] e_S / |S|^2 is known in function space too.

`model_search.training_time` predicts the *expected* MSE loss in closed form (the paper's
analysis); this module replays one run of any loss, e.g. the cross-entropy fine-tuning of
the `finetune` stage on its own batches (`model_search.training_time_stage`).

Kernels: 'kronecker' [N, N] theta with Theta = theta (x) I_K (exact for a linear head on
fixed features: theta = Phi Phi^T + 1 for a kernel and a bias), or 'full' [N K, N K]
(example-major, as `ntk.empirical_ntk` returns).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

LOSSES = ("cross_entropy", "mse")
KERNELS = ("kronecker", "full")


class Run(NamedTuple):
  """One simulated run of the linearised model.

  Attributes:
    batch_loss: [T] the loss on step t's batch before its update (what `finetune` records
      as its loss curve).
    train_loss: [T + 1] the loss on all N examples after t steps.
    train_accuracy: [T + 1] the accuracy on all N examples after t steps.
    grad_norm: [T] the global norm of step t's (unclipped) gradient.
  """
  batch_loss: np.ndarray
  train_loss: np.ndarray
  train_accuracy: np.ndarray
  grad_norm: np.ndarray


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"Unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def _loss_and_error(loss, f, labels):
  """Per-example loss [n] and its gradient with respect to the outputs [n, K]."""
  k = f.shape[1]
  onehot = jax.nn.one_hot(labels, k, dtype=f.dtype)
  if loss == "mse":
    e = f - onehot
    return 0.5 * jnp.sum(e * e, axis=1), e
  logp = jax.nn.log_softmax(f, axis=1)
  return -jnp.sum(onehot * logp, axis=1), jnp.exp(logp) - onehot


@functools.partial(jax.jit, static_argnames=("loss", "kernel", "clip"))
def _simulate(theta, f0, labels, indices, lrs, momentum, clip_norm, *, loss, kernel, clip):
  n, k = f0.shape
  b = indices.shape[1]

  def columns(idx, e):
    """Theta[:, S] e_S as [N, K], and e_S^T Theta[S, S] e_S."""
    if kernel == "kronecker":
      cols = theta[:, idx]                                      # [N, B]
      move = cols @ e
      quad = jnp.sum(e * (cols[idx] @ e))
    else:
      rows = (idx[:, None] * k + jnp.arange(k)).reshape(-1)     # [B K]
      cols = theta[:, rows]                                     # [N K, B K]
      move = (cols @ e.reshape(-1)).reshape(n, k)
      quad = jnp.dot(e.reshape(-1), cols[rows] @ e.reshape(-1))
    return move, quad

  def metrics(f):
    per, _ = _loss_and_error(loss, f, labels)
    return jnp.mean(per), jnp.mean(jnp.argmax(f, axis=1) == labels)

  def step(carry, inputs):
    f, u = carry
    idx, lr = inputs
    per, e = _loss_and_error(loss, f[idx], labels[idx])
    move, quad = columns(idx, e)
    norm = jnp.sqrt(jnp.maximum(quad, 0.0)) / b
    scale = jnp.where(clip & (norm > clip_norm), clip_norm / jnp.maximum(norm, 1e-30), 1.0)
    u = momentum * u + scale * move / b
    f = f - lr * u
    return (f, u), (jnp.mean(per), norm, *metrics(f))

  _, (batch_loss, norms, train_loss, acc) = jax.lax.scan(
      step, (f0, jnp.zeros_like(f0)), (indices, lrs))
  loss0, acc0 = metrics(f0)
  return (batch_loss, jnp.concatenate([loss0[None], train_loss]),
          jnp.concatenate([acc0[None], acc]), norms)


def simulate(theta, outputs0, labels, indices, *, learning_rate, momentum: float = 0.0,
             loss: str = "cross_entropy", kernel: str = "kronecker",
             grad_clip_norm: float | None = None) -> Run:
  """Replays SGD on the linearised model in function space (module docstring).

  Args:
    theta: the NTK on the N training examples: [N, N] for kernel='kronecker', [N K, N K]
      for 'full'.
    outputs0: [N, K] the outputs at the linearisation point (zeros for a zero head).
    labels: [N] int labels in 0..K-1.
    indices: [T, B] the examples of each step's batch.
    learning_rate: a number, or [T] learning rates (entry t is step t's).
    momentum: optax.sgd's, in [0, 1).
    loss: 'cross_entropy' (softmax, mean over the batch) or 'mse' (mean of 0.5 ||f - y||^2
      with one-hot y, `training_time`'s loss).
    kernel: 'kronecker' or 'full'.
    grad_clip_norm: clip the gradient's global norm to this (None: no clipping).

  Returns:
    The `Run`: float32 arrays (the computation runs in JAX's default precision, as
    training does).
  """
  _check_choice("loss", loss, LOSSES)
  _check_choice("kernel", kernel, KERNELS)
  f0 = np.asarray(outputs0, np.float32)
  if f0.ndim != 2:
    raise ValueError(f"outputs0 must be [N, K], got shape {f0.shape}")
  n, k = f0.shape
  labels = np.asarray(labels)
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be [N={n}] integers, got {labels.dtype} {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= k):
    raise ValueError(f"labels must be in 0..{k - 1} (outputs0 has K = {k} columns)")
  size = n if kernel == "kronecker" else n * k
  theta = np.asarray(theta, np.float32)
  if theta.shape != (size, size):
    raise ValueError(f"kernel={kernel!r} with outputs0 [{n}, {k}] needs theta [{size}, "
                     f"{size}], got {theta.shape}")
  indices = np.asarray(indices)
  if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer) or (
      indices.size and (indices.min() < 0 or indices.max() >= n)):
    raise ValueError(f"indices must be [T, B] integers in 0..{n - 1}, got "
                     f"{indices.dtype} {indices.shape}")
  steps = indices.shape[0]
  if isinstance(learning_rate, (int, float, np.floating, np.integer)):
    lrs = np.full(steps, float(learning_rate), np.float32)
  else:
    lrs = np.asarray(learning_rate, np.float32)
  if lrs.shape != (steps,) or not np.all(np.isfinite(lrs)) or np.any(lrs < 0):
    raise ValueError(f"learning_rate must be a number or [T={steps}] finite values >= 0, got "
                     f"shape {lrs.shape}")
  if not 0 <= momentum < 1:
    raise ValueError(f"momentum must be in [0, 1) (optax.sgd's trace decay), got {momentum!r}")
  clip = grad_clip_norm is not None
  if clip and not (math.isfinite(grad_clip_norm) and grad_clip_norm > 0):
    raise ValueError(f"grad_clip_norm must be None or a finite number > 0, got "
                     f"{grad_clip_norm!r}")
  out = _simulate(jnp.asarray(theta), jnp.asarray(f0), jnp.asarray(labels, jnp.int32),
                  jnp.asarray(indices, jnp.int32), jnp.asarray(lrs), jnp.float32(momentum),
                  jnp.float32(grad_clip_norm if clip else 0.0), loss=loss, kernel=kernel,
                  clip=clip)
  return Run(*(np.asarray(x) for x in out))


def feature_kernel(features, *, bias: bool = True) -> np.ndarray:
  """theta = Phi Phi^T (+ 1 for the bias) [N, N]: the NTK (kronecker form) of a linear head
  on fixed features, at any head weights; float64."""
  phi = np.asarray(features, np.float64)
  if phi.ndim != 2:
    raise ValueError(f"features must be [N, D], got shape {phi.shape}")
  return phi @ phi.T + (1.0 if bias else 0.0)
