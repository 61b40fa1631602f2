"""How much a selection strategy loses against the fine-tuned oracle, and rank correlations.

Renggli et al., "Which Model to Transfer?", Sec. 3: with fine-tuned test accuracies of the pool
on a task, a selection's accuracy is the best of its models; the absolute regret is
oracle - selection and the relative regret is relative_delta(oracle, selection), where
relative_delta(s1, s2) = (s1 - s2) / (1 - min(s1, s2)) measures a gain as a fraction of the
error that was left. `evaluate_selections` runs every strategy on every (pool, task, budget)
and returns the table that the report stage turns into Markdown, CSV and figures.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from model_search import strategies
from model_search.data.task import GROUPS
from model_search.models.zoo import ModelEntry

COLUMNS = ("pool", "task", "group", "strategy", "budget", "selected", "accuracy",
           "oracle_accuracy", "absolute_regret", "relative_regret", "optimal", "missing")


def _check_accuracy(value: float, what: str) -> float:
  value = float(value)
  if math.isnan(value) or not 0.0 <= value <= 1.0:
    raise ValueError(f"{what} must be an accuracy in [0, 1]; got {value}")
  return value


def _check_accuracies(accuracies: Mapping[str, float], task: str = "") -> dict[str, float]:
  where = f" on task {task!r}" if task else ""
  if not accuracies:
    raise ValueError(f"No accuracies{where}.")
  return {str(m): _check_accuracy(a, f"Accuracy of model {m!r}{where}")
          for m, a in accuracies.items()}


def _selection_max(accuracies: dict[str, float], selected: Sequence[str]) -> float:
  selected = list(selected)
  if not selected:
    raise ValueError("The selection is empty; select at least one model.")
  unknown = [m for m in selected if m not in accuracies]
  if unknown:
    raise ValueError(f"No accuracy for selected model(s) {', '.join(unknown)}; "
                     f"known models: {', '.join(sorted(accuracies))}")
  return max(accuracies[m] for m in selected)


def selection_accuracy(accuracies: Mapping[str, float], selected: Sequence[str]) -> float:
  """The best fine-tuned accuracy among the selected models.

  Args:
    accuracies: model name -> fine-tuned test accuracy in [0, 1].
    selected: the selected model names (each must have an accuracy).

  Returns:
    max over the selection.
  """
  return _selection_max(_check_accuracies(accuracies), selected)


def absolute_regret(accuracies: Mapping[str, float], selected: Sequence[str]) -> float:
  """Oracle accuracy (best over all of `accuracies`) minus the selection's accuracy.

  Args:
    accuracies: model name -> fine-tuned test accuracy in [0, 1], the whole pool.
    selected: the selected model names.

  Returns:
    A float in [0, 1]; 0 when the selection contains an oracle-best model.
  """
  acc = _check_accuracies(accuracies)
  return max(acc.values()) - _selection_max(acc, selected)


def relative_delta(s1: float, s2: float) -> float:
  """(s1 - s2) / (1 - min(s1, s2)): the gain of s1 over s2 as a share of the error left.

  Defined as 0 when s1 == s2 (also when both are 1). The result lies in [-1, 1].

  Args:
    s1: an accuracy in [0, 1].
    s2: an accuracy in [0, 1].

  Returns:
    The relative delta.
  """
  s1 = _check_accuracy(s1, "s1")
  s2 = _check_accuracy(s2, "s2")
  if s1 == s2:
    return 0.0
  return (s1 - s2) / (1.0 - min(s1, s2))


def relative_regret(accuracies: Mapping[str, float], selected: Sequence[str]) -> float:
  """relative_delta(oracle accuracy, selection accuracy).

  Args:
    accuracies: model name -> fine-tuned test accuracy in [0, 1], the whole pool.
    selected: the selected model names.

  Returns:
    A float in [0, 1]; exactly 0 when the selection contains an oracle-best model.
  """
  acc = _check_accuracies(accuracies)
  return relative_delta(max(acc.values()), _selection_max(acc, selected))


def rank_correlations(scores: Mapping[str, float],
                      accuracies: Mapping[str, float]) -> dict[str, float]:
  """Rank agreement between a score and fine-tuned accuracy over their common models.

  Args:
    scores: model name -> score (higher = predicted better).
    accuracies: model name -> fine-tuned test accuracy in [0, 1].

  Returns:
    {'spearman', 'kendall' (tau-b), 'weighted_tau' (scipy's default hyperbolic
    weigher, ranks by importance of the scores), 'pearson'}; each NaN when
    either side is constant over the common models.
  """
  acc = _check_accuracies(accuracies)
  common = sorted(set(scores) & set(acc))
  if len(common) < 2:
    raise ValueError(f"Rank correlations need at least 2 models with both a score and an "
                     f"accuracy; common models: {common}")
  x = np.array([float(scores[m]) for m in common])
  nan = [m for m, v in zip(common, x) if math.isnan(v)]
  if nan:
    raise ValueError(f"Score is NaN for model(s) {', '.join(nan)}.")
  y = np.array([acc[m] for m in common])
  with warnings.catch_warnings():
    # Constant inputs give NaN, as documented; the warning adds nothing.
    warnings.simplefilter("ignore", stats.ConstantInputWarning)
    warnings.simplefilter("ignore", RuntimeWarning)
    return {
        "spearman": float(stats.spearmanr(x, y).statistic),
        "kendall": float(stats.kendalltau(x, y).statistic),
        "weighted_tau": float(stats.weightedtau(x, y).statistic),
        "pearson": float(stats.pearsonr(x, y).statistic),
    }


def _row(pool, task, group, strategy, budget, selected, accuracy, oracle_acc,
         relative, optimal, missing) -> dict:
  return dict(pool=pool, task=task, group=group, strategy=strategy, budget=budget,
              selected="+".join(selected), accuracy=accuracy, oracle_accuracy=oracle_acc,
              absolute_regret=oracle_acc - accuracy, relative_regret=relative,
              optimal=float(optimal), missing="+".join(missing))


def _task_rows(pool: str, task: str, group: str, pool_entries: list[ModelEntry],
               task_scores: Mapping[str, Mapping[str, float]], acc: dict[str, float],
               budgets: Sequence[int], missing: list[str]) -> list[dict]:
  """All strategies' rows for one (pool, task): `acc` holds exactly the usable models."""
  names = [e.name for e in pool_entries]
  best = max(acc.values())
  sorted_acc = np.sort(np.array(list(acc.values())))
  for score_name, values in task_scores.items():
    unscored = [n for n in names if n not in values]
    if unscored:
      raise ValueError(f"Score {score_name!r} is missing for model(s) {', '.join(unscored)} "
                       f"on task {task!r} (pool {pool!r}); every model of a pool with ground "
                       "truth needs every score: compute it, or drop the score or the model.")
  rows = []
  for b in budgets:
    def add(strategy, selected):
      sel = _selection_max(acc, selected)
      rows.append(_row(pool, task, group, strategy, b, selected, sel, best,
                       relative_delta(best, sel), sel == best, missing))
    add("task_agnostic", strategies.task_agnostic(pool_entries, b))
    for score_name, values in task_scores.items():
      pool_scores = {n: values[n] for n in names}
      add(f"task_aware/{score_name}", strategies.task_aware(pool_scores, b))
      add(f"hybrid/{score_name}", strategies.hybrid(pool_entries, pool_scores, b))
    add("oracle", strategies.oracle(acc, b))
    # Random: every number is the exact expectation over uniformly random B-subsets.
    # Regrets are functions of the subset's max, so they take the same order-statistic weights.
    w = strategies.random_max_weights(len(sorted_acc), b)
    rows.append(_row(pool, task, group, "random", b, [], float(w @ sorted_acc), best,
                     float(sum(wi * relative_delta(best, a) for wi, a in zip(w, sorted_acc))),
                     strategies.random_optimal_probability(sorted_acc, b), missing))
  return rows


def evaluate_selections(entries: Sequence[ModelEntry],
                        scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                        accuracies: Mapping[str, Mapping[str, float]],
                        task_groups: Mapping[str, str],
                        pools: Mapping[str, Sequence[str]], *,
                        budgets: Sequence[int] | None = None) -> pd.DataFrame:
  """Runs every strategy on every (pool, task, budget) and measures it against the oracle.

  A model without ground truth for a task (absent from accuracies[task]) is left out of that
  task's selections and oracle, and named in the row's `missing` column; it never counts as 0.

  Args:
    entries: the model entries; every pool member must be one of them.
    scores: task -> score name -> model name -> score (higher = better). A task's strategies
      are task_agnostic, oracle, random and, per score S of that task, task_aware/S and
      hybrid/S. Every pool model with ground truth needs every score of the task.
    accuracies: task -> model name -> fine-tuned test accuracy in [0, 1]. Its tasks are the
      tasks of the table.
    task_groups: task -> 'natural' | 'specialized' | 'structured'.
    pools: pool name -> model names.
    budgets: the budgets B to evaluate, each in 1..pool size; None means 1..pool size.
      A (pool, task) with fewer usable models than B has no rows for that B.

  Returns:
    A DataFrame with one row per (pool, task, strategy, budget) and columns
    pool, task, group, strategy, budget, selected ('+'-joined, '' for random),
    accuracy (for random the exact expectation), oracle_accuracy, absolute_regret,
    relative_regret (random: exact expectations), optimal (1.0 / 0.0: the selection contains
    an oracle-best model; random: the probability of that) and missing ('+'-joined names of
    pool models without ground truth). Tasks come in group order, then in `accuracies` order;
    pools with no ground truth on a task have no rows for it.
  """
  by_name = {}
  for e in entries:
    if e.name in by_name:
      raise ValueError(f"Duplicate model entry {e.name!r}.")
    by_name[e.name] = e
  ungrouped = [t for t in accuracies if task_groups.get(t) not in GROUPS]
  if ungrouped:
    raise ValueError(f"Task(s) {', '.join(ungrouped)} need a group in task_groups; "
                     f"valid groups: {', '.join(GROUPS)}")
  tasks = sorted(accuracies, key=lambda t: GROUPS.index(task_groups[t]))  # Stable sort.
  rows = []
  for pool, members in pools.items():
    members = list(members)
    if not members:
      raise ValueError(f"Pool {pool!r} is empty.")
    unknown = [m for m in members if m not in by_name]
    if unknown:
      raise ValueError(f"Pool {pool!r} has model(s) without an entry: {', '.join(unknown)}; "
                       f"known models: {', '.join(sorted(by_name))}")
    if len(set(members)) != len(members):
      raise ValueError(f"Pool {pool!r} lists a model twice: {members}")
    if budgets is None:
      pool_budgets = range(1, len(members) + 1)
    else:
      pool_budgets = sorted(set(budgets))
      for b in pool_budgets:
        strategies.check_budget(b, len(members), f"pool {pool!r}")
    for task in tasks:
      all_acc = _check_accuracies(accuracies[task], task) if accuracies[task] else {}
      acc = {m: all_acc[m] for m in members if m in all_acc}
      if not acc:
        continue
      missing = [m for m in members if m not in acc]
      usable = [b for b in pool_budgets if b <= len(acc)]
      rows += _task_rows(pool, task, task_groups[task], [by_name[m] for m in acc],
                         scores.get(task, {}), acc, usable, missing)
  return pd.DataFrame(rows, columns=list(COLUMNS))
