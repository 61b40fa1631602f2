"""NCE: negative conditional entropy of target labels given source labels.

Tran et al., "Transferability and Hardness of Supervised Classification Tasks"
(ICCV 2019). With z_i the source label of example i (here the argmax of the
source head) and y_i its target label, the empirical joint distribution is

  P(y, z) = #{i : y_i = y, z_i = z} / N,   P(z) = sum_y P(y, z),

and the score is NCE = -H(Y | Z) = sum_{y,z} P(y, z) log(P(y, z) / P(z))
(Sec. 3; the paper shows it bounds the log-likelihood of the transferred
model from below). NCE <= 0; it is 0 exactly when y is a function of z.
Higher = better transfer, so the score is NCE itself.

Conventions match tllib's `negative_conditional_entropy`
(thuml/Transfer-Learning-Library, tllib/ranking/nce.py): natural log, classes
0..max. tllib adds 1e-20 to P(y | z) inside the log; here 0 log 0 is exactly 0,
a difference of about 5e-19 per empty (y, z) cell.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common
from model_search.scores import leep as leep_lib


@functools.partial(jax.jit,
                   static_argnames=("num_classes", "num_source_classes"))
def _nce(source_labels, labels, *, num_classes: int, num_source_classes: int):
  """-H(Y | Z) of [N] int labels, y in 0..num_classes-1, z likewise."""
  n = labels.shape[0]
  # Counts are integers, exact in float32 up to 2^24 examples per cell.
  counts = jnp.zeros((num_classes, num_source_classes), jnp.float32)
  counts = counts.at[labels, source_labels].add(1.0)  # [C, C_s]
  source_counts = jnp.sum(counts, axis=0)  # N P(z) [C_s]
  # P(y, z) log P(y | z), with 0 log 0 = 0 (the empty cells and the source
  # classes that never occur, whose counts are all 0).
  nonzero = counts > 0
  ratio = jnp.where(nonzero, counts, 1.0) / jnp.where(nonzero, source_counts,
                                                      1.0)
  return jnp.sum(jnp.where(nonzero, counts * jnp.log(ratio), 0.0)) / n


def nce(source_labels, labels) -> float:
  """Negative conditional entropy -H(Y | Z) (Tran et al. 2019).

  Args:
    source_labels: [N] int source labels z >= 0 (e.g. the source head's
      argmax); source classes are 0..max(source_labels).
    labels: [N] int target labels y >= 0; target classes are 0..max(labels).

  Returns:
    NCE in [-log C, 0], natural log: 0 when y is a function of z (in
    particular when only one target class is present), -H(Y) when z is
    constant.

  Raises:
    ValueError: unless both are non-empty [N] arrays of non-negative integers.
  """
  z = leep_lib.check_labels(source_labels, None, name="source_labels")
  y = leep_lib.check_labels(labels, z.shape[0])
  return float(_nce(jnp.asarray(z), jnp.asarray(y),
                    num_classes=int(y.max()) + 1,
                    num_source_classes=int(z.max()) + 1))


def source_labels_from_probs(source_probs) -> np.ndarray:
  """The source head's hard labels, argmax_z θ(x)_z; ties go to the lower z.

  Args:
    source_probs: [N, C_s] float source-head probabilities.

  Returns:
    [N] int32 source labels in 0..C_s-1.
  """
  probs = leep_lib.check_probs(source_probs)
  return np.argmax(probs, axis=1).astype(np.int32)


def score(inputs: common.ScoreInputs) -> dict[str, float]:
  """NCE on the train split, source labels = argmax of the source head.

  The paper assumes hard source labels on the target examples; a pretrained
  model's own predictions stand in for them (the "plug-in" choice of tllib and
  the LEEP paper's NCE baseline).

  Args:
    inputs: the (model, task) inputs; needs `source_probs` (train split).

  Returns:
    {'score': NCE} (higher = better transfer).
  """
  inputs.require("source_probs", score="nce")
  z = source_labels_from_probs(inputs.source_probs)
  return {"score": nce(z, inputs.train_labels)}
