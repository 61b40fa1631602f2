"""LEEP: how well a source head's predictions, relabelled, explain target labels.

Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
Representations" (ICML 2020). With θ(x) the source head's probabilities over
the C_s source classes z and (x_i, y_i) the N target examples:

  eq. (1)  P(y, z) = 1/N sum_{i: y_i = y} θ(x_i)_z,   P(z) = sum_y P(y, z),
           P(y | z) = P(y, z) / P(z);
  eq. (2)  LEEP = 1/N sum_i log sum_z P(y_i | z) θ(x_i)_z,

the mean log-likelihood of the "expected empirical predictor" that maps the
source prediction to target labels through P(y | z). LEEP <= 0; higher = better
transfer, so the score is LEEP itself.

Conventions match tllib's `log_expected_empirical_prediction`
(thuml/Transfer-Learning-Library, tllib/ranking/leep.py): natural log, mean over
examples, target classes 0..max(labels). Two departures: rows of θ, which must
sum to 1 within 1e-3, are renormalised to sum to 1; and a source class that gets
no probability mass at all (P(z) = 0) has P(y | z) = 0/0 there, which is NaN;
here it is 0, as google-research stable_transfer (`divide_no_nan`). Every
θ(x_i)_z it would multiply is 0, so the score is the limiting value instead of
NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common

# Full float32 matmuls: TF32 / bf16 passes (the GPU / TPU default) would cost
# about three digits of the joint distribution.
_HIGHEST = jax.lax.Precision.HIGHEST
# How far a row of source_probs may be from summing to 1 (as ScoreInputs).
_SUM_TOLERANCE = 1e-3


def check_labels(labels, num_rows: int | None, *,
                 name: str = "labels") -> np.ndarray:
  """Validates [N] integer labels >= 0 and returns them as int32 NumPy.

  Args:
    labels: [N] integer labels.
    num_rows: the N they must have (None: any N >= 1).
    name: the argument's name, for messages.

  Returns:
    The labels as an int32 array.

  Raises:
    ValueError: for a wrong shape, a non-integer dtype or negative labels
      (NumPy bools are not integers here).
  """
  y = np.asarray(labels)
  if num_rows is None:
    if y.ndim != 1 or y.shape[0] == 0:
      raise ValueError(f"{name} must be a non-empty 1-D array, got shape "
                       f"{y.shape}")
  elif y.ndim != 1 or y.shape[0] != num_rows:
    raise ValueError(f"{name} must be 1-D with {num_rows} entries (one per "
                     f"example), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
  if y.size and y.min() < 0:
    bad = sorted(set(y[y < 0].tolist()))[:10]
    raise ValueError(f"{name} must be class indices >= 0, got {bad}")
  if y.size and y.max() >= np.iinfo(np.int32).max:
    raise ValueError(f"{name} must fit in int32, got {y.max()}")
  return y.astype(np.int32)


def check_probs(source_probs) -> np.ndarray:
  """Validates [N, C_s] probabilities; returns them renormalised, as float32.

  Raises:
    ValueError: unless `source_probs` is a non-empty 2-D array of finite,
      non-negative numbers whose rows sum to 1 (within 1e-3).
  """
  p = np.asarray(source_probs)
  if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
    raise ValueError(f"source_probs must be a non-empty 2-D array "
                     f"[num_examples, num_source_classes], got shape {p.shape}")
  if not (np.issubdtype(p.dtype, np.floating) or
          np.issubdtype(p.dtype, np.integer)):
    raise ValueError(f"source_probs must be numeric, got dtype {p.dtype}")
  p = p.astype(np.float64, copy=False)
  if not np.all(np.isfinite(p)) or np.any(p < 0):
    raise ValueError("source_probs must be finite and non-negative "
                     "(probabilities, not logits)")
  sums = p.sum(axis=1)
  worst = int(np.argmax(np.abs(sums - 1.0)))
  if abs(sums[worst] - 1.0) > _SUM_TOLERANCE:
    raise ValueError(f"source_probs rows must sum to 1 (probabilities, not "
                     f"logits); row {worst} sums to {sums[worst]:.6g}")
  # Exactly normalised rows (up to float32 rounding), so that the bound
  # LEEP <= 0 and its value 0 for a single class hold to rounding error.
  return (p / sums[:, None]).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _leep(probs, labels, *, num_classes: int):
  """LEEP of [N, C_s] float32 probs and [N] labels in 0..num_classes-1."""
  n = probs.shape[0]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)  # [N, C]
  joint = jnp.matmul(onehot.T, probs, precision=_HIGHEST) / n  # P(y, z) [C, C_s]
  marginal = jnp.sum(joint, axis=0)  # P(z) [C_s]
  # A source class with no mass gets P(y | z) = 0 rather than 0/0: every
  # θ(x)_z it multiplies is 0 (see the module docstring).
  has_mass = marginal > 0
  conditional = jnp.where(
      has_mass, joint / jnp.where(has_mass, marginal, 1.0), 0.0)  # P(y | z)
  # Only the true label's row of P(y | z) is needed for each example.
  eep = jnp.sum(probs * conditional[labels], axis=1)  # [N]
  # eep <= sum_z θ(x)_z = 1 exactly; rounding can overshoot by an ulp, which
  # would make a perfect score slightly positive.
  return jnp.mean(jnp.log(jnp.minimum(eep, 1.0)))


def leep(source_probs, labels) -> float:
  """Log expected empirical prediction (Nguyen et al. 2020, eq. (1)-(2)).

  Args:
    source_probs: [N, C_s] float source-head probabilities θ(x) on the target
      examples; rows sum to 1.
    labels: [N] int target labels >= 0; the target classes are
      0..max(labels) (classes absent from `labels` contribute nothing).

  Returns:
    LEEP in (-inf, 0], natural log. It is 0 when the labels are a function of
    the source head's (hard) predictions, in particular when only one target
    class is present.

  Raises:
    ValueError: if `source_probs` are not probabilities or `labels` are not
      [N] non-negative integers.
  """
  probs = check_probs(source_probs)
  y = check_labels(labels, probs.shape[0])
  # The expected empirical prediction of the true label is at least
  # θ(x)_z^2 / (N P(z)) >= 1 / (N C_s^2) > 0 for the z maximising θ(x)_z, so
  # the log below is finite: no NaN or -inf guards are needed.
  return float(_leep(jnp.asarray(probs), jnp.asarray(y),
                     num_classes=int(y.max()) + 1))


def score(inputs: common.ScoreInputs) -> dict[str, float]:
  """LEEP of the source head on the train split.

  As in the paper, the target data is what the model would be fine-tuned on.

  Args:
    inputs: the (model, task) inputs; needs `source_probs` (train split).

  Returns:
    {'score': LEEP} (higher = better transfer).
  """
  inputs.require("source_probs", score="leep")
  return {"score": leep(inputs.source_probs, inputs.train_labels)}
