"""Rank agreement between a task-aware score and fine-tuned accuracy.

The successors of Renggli et al. report how well a score ranks the models of a pool: Spearman,
Kendall's tau-b, weighted Kendall tau (scipy's hyperbolic weigher, the headline metric of the
transferability literature) and Pearson over the models with both a score and an accuracy, and
the relative top-k accuracy (the best accuracy among the score's top k over the best overall).
`regret` re-exports `rank_correlations` and `relative_top_k` (design.md's contract) and uses
this module's accuracy checks.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import numpy as np
from scipy import stats

from model_search import strategies


def check_accuracy(value: float, what: str) -> float:
  value = float(value)
  if math.isnan(value) or not 0.0 <= value <= 1.0:
    raise ValueError(f"{what} must be an accuracy in [0, 1]; got {value}")
  return value


def check_accuracies(accuracies: Mapping[str, float], task: str = "") -> dict[str, float]:
  where = f" on task {task!r}" if task else ""
  if not accuracies:
    raise ValueError(f"No accuracies{where}.")
  return {str(m): check_accuracy(a, f"Accuracy of model {m!r}{where}")
          for m, a in accuracies.items()}


def _common(scores: Mapping[str, float], accuracies: Mapping[str, float],
            at_least: int) -> tuple[list[str], np.ndarray, np.ndarray]:
  acc = check_accuracies(accuracies)
  common = sorted(set(scores) & set(acc))
  if len(common) < at_least:
    raise ValueError(f"Need at least {at_least} model(s) with both a score and an "
                     f"accuracy; common models: {common}")
  x = np.array([float(scores[m]) for m in common])
  nan = [m for m, v in zip(common, x) if math.isnan(v)]
  if nan:
    raise ValueError(f"Score is NaN for model(s) {', '.join(nan)}.")
  return common, x, np.array([acc[m] for m in common])


def _relative_top_k(x: np.ndarray, y: np.ndarray, k: int) -> float:
  n = len(x)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
    raise ValueError(f"k must be an int in 1..{n} (the number of models with both a score "
                     f"and an accuracy); got {k!r}")
  best = float(y.max())
  if best == 0.0:
    return 1.0  # Every model is at 0: any top-k holds a best model.
  cut = np.sort(x)[::-1][k - 1]  # The k-th highest score.
  above, tied = y[x > cut], np.sort(y[x == cut])
  floor = float(above.max()) if above.size else -math.inf
  # max(floor, .) is nondecreasing, so the sorted tied values keep their order statistics.
  w = strategies.random_max_weights(len(tied), k - above.size)
  return float(np.dot(w, np.maximum(tied, floor))) / best


def relative_top_k(scores: Mapping[str, float], accuracies: Mapping[str, float],
                   k: int = 1) -> float:
  """Relative top-k accuracy: the best accuracy among the score's top k over the best overall.

  Over the models with both a score and an accuracy,
    rel@k = max_{m in top-k by score} acc(m) / max_m acc(m),
  the "relative top-1 accuracy" (Rel@1) of Agostinelli et al., "How stable are
  Transferability Metrics evaluations?", ECCV 2022, for k = 1, extended to the
  top k. It is 1 when the top k holds an oracle-best model. Scores tied at the
  k-th place are broken uniformly at random and the result is the exact
  expectation (so it does not depend on model names); it is defined as 1 when
  every accuracy is 0.

  Args:
    scores: model name -> score (higher = predicted better).
    accuracies: model name -> fine-tuned test accuracy in [0, 1].
    k: the number of top-scored models, in 1..(number of common models).

  Returns:
    A float in [0, 1].
  """
  _, x, y = _common(scores, accuracies, 1)
  return _relative_top_k(x, y, k)


def rank_correlations(scores: Mapping[str, float], accuracies: Mapping[str, float], *,
                      k: int = 1) -> dict[str, float]:
  """Rank agreement between a score and fine-tuned accuracy over their common models.

  Args:
    scores: model name -> score (higher = predicted better).
    accuracies: model name -> fine-tuned test accuracy in [0, 1].
    k: the k of 'relative_top_k', in 1..(number of common models).

  Returns:
    {'spearman', 'kendall' (tau-b), 'weighted_tau' (scipy's default hyperbolic
    weigher, ranks by importance of the scores), 'pearson'}, each NaN when
    either side is constant over the common models, and 'relative_top_k'
    (see `relative_top_k`, never NaN).
  """
  _, x, y = _common(scores, accuracies, 2)
  rel = _relative_top_k(x, y, k)
  with warnings.catch_warnings():
    # Constant inputs give NaN, as documented; the warning adds nothing.
    warnings.simplefilter("ignore", stats.ConstantInputWarning)
    warnings.simplefilter("ignore", RuntimeWarning)
    return {
        "spearman": float(stats.spearmanr(x, y).statistic),
        "kendall": float(stats.kendalltau(x, y).statistic),
        "weighted_tau": float(stats.weightedtau(x, y).statistic),
        "pearson": float(stats.pearsonr(x, y).statistic),
        "relative_top_k": rel,
    }
