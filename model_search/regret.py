"""How much a selection strategy loses against the fine-tuned oracle, and rank correlations.

Renggli et al., "Which Model to Transfer?", Sec. 3: with fine-tuned test accuracies of the pool
on a task, a selection's accuracy is the best of its models; the absolute regret is
oracle - selection and the relative regret is relative_delta(oracle, selection), where
relative_delta(s1, s2) = (s1 - s2) / (1 - min(s1, s2)) measures a gain as a fraction of the
error that was left. Appendix C's log-odds view measures the same gap as
logit(oracle) - logit(selection). `evaluate_selections` runs every strategy on every
(pool, task, budget) and returns the table that the report stage turns into Markdown, CSV and
figures; `zero_regret_fraction` reads the budget curve of optimal picks off that table, and
`expected_regret` averages a strategy's regret over repeats with random scores or accuracies.
Rank metrics (`rank_correlations`, `relative_top_k`, from `rank_metrics`) compare a score with fine-tuned accuracy.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from model_search import strategies
from model_search import rank_metrics
from model_search.data.task import GROUPS
from model_search.models.zoo import ModelEntry

_check_accuracy = rank_metrics.check_accuracy
_check_accuracies = rank_metrics.check_accuracies
# Rank agreement between a score and accuracy lives in rank_metrics; design.md names it here.
rank_correlations = rank_metrics.rank_correlations
relative_top_k = rank_metrics.relative_top_k

COLUMNS = ("pool", "task", "group", "strategy", "budget", "selected", "accuracy",
           "oracle_accuracy", "absolute_regret", "relative_regret", "log_odds_regret", "optimal",
           "missing")
REGRET_METRICS = ("absolute_regret", "relative_regret", "log_odds_regret")
# Accuracies are clipped to [eps, 1 - eps] before the logit: one error in 10^4 test examples.
LOG_ODDS_EPS = 1e-4


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


def _check_eps(eps: float) -> float:
  eps = float(eps)
  if not 0.0 <= eps < 0.5:
    raise ValueError(f"eps must be in [0, 0.5) (accuracies are clipped to [eps, 1 - eps]); "
                     f"got {eps}")
  return eps


def logit(p: float, *, eps: float = LOG_ODDS_EPS) -> float:
  """log(p / (1 - p)) of an accuracy clipped to [eps, 1 - eps].

  Args:
    p: an accuracy in [0, 1].
    eps: the clip, in [0, 0.5). With eps > 0 the result is finite, at most
      logit(1 - eps) in magnitude; with eps = 0, logit(0) = -inf and logit(1) = inf.

  Returns:
    The log-odds, a float (never NaN).
  """
  p = _check_accuracy(p, "p")
  eps = _check_eps(eps)
  p = min(max(p, eps), 1.0 - eps)
  if p == 0.0:
    return -math.inf
  if p == 1.0:
    return math.inf
  return math.log(p) - math.log1p(-p)


def log_odds_delta(s1: float, s2: float, *, eps: float = LOG_ODDS_EPS) -> float:
  """logit(s1) - logit(s2), accuracies clipped to [eps, 1 - eps] (see `logit`).

  Defined as 0 when s1 == s2, so with eps = 0 the result is never inf - inf:
  it is +-inf when exactly one of s1, s2 is 0 or 1, and finite otherwise.

  Args:
    s1: an accuracy in [0, 1].
    s2: an accuracy in [0, 1].
    eps: the clip, in [0, 0.5).

  Returns:
    The log-odds difference, a float (never NaN).
  """
  l1, l2 = logit(s1, eps=eps), logit(s2, eps=eps)
  return 0.0 if s1 == s2 else l1 - l2


def log_odds_regret(accuracies: Mapping[str, float], selected: Sequence[str], *,
                    eps: float = LOG_ODDS_EPS) -> float:
  """logit(oracle accuracy) - logit(selection accuracy): Appendix C's log-odds regret.

  Both accuracies are clipped to [eps, 1 - eps] first (see `logit`), so near
  0 and 1, where accuracy differences are compressed, a gap counts more: a
  selection at 0.98 under an oracle at 0.99 loses log(99) - log(49) = 0.70,
  one at 0.50 under 0.51 loses 0.04.

  Args:
    accuracies: model name -> fine-tuned test accuracy in [0, 1], the whole pool.
    selected: the selected model names.
    eps: the clip, in [0, 0.5). With eps > 0 the regret is finite; with
      eps = 0 it is inf when the oracle is 1 or the selection 0 (and they differ).

  Returns:
    A float >= 0; exactly 0 when the selection contains an oracle-best model.
  """
  acc = _check_accuracies(accuracies)
  return log_odds_delta(max(acc.values()), _selection_max(acc, selected), eps=eps)


def _regrets(best: float, sel: float, eps: float) -> dict[str, float]:
  """The REGRET_METRICS of a selection at `sel` under an oracle at `best`."""
  return {"absolute_regret": best - sel, "relative_regret": relative_delta(best, sel),
          "log_odds_regret": log_odds_delta(best, sel, eps=eps)}


def _random_regrets(sorted_acc: np.ndarray, budget: int, eps: float) -> dict[str, float]:
  """Exact expectations of the REGRET_METRICS over uniformly random B-subsets.

  Each regret is a function of the subset's max, so the order-statistic weights of
  `strategies.random_max_weights` give its expectation; zero weights are skipped so an
  infinite log-odds term that cannot occur does not turn the sum into NaN.
  """
  w = strategies.random_max_weights(len(sorted_acc), budget)
  best = float(sorted_acc[-1])
  terms = [(wi, _regrets(best, float(a), eps)) for wi, a in zip(w, sorted_acc) if wi > 0]
  return {k: math.fsum(wi * r[k] for wi, r in terms) for k in REGRET_METRICS}


class RepeatedRegret(NamedTuple):
  """A strategy's regret over repeats.

  Attributes:
    mean: the mean of `per_repeat` (math.fsum / count).
    per_repeat: the regret of each (scores, accuracies) repeat pair, in order.
    selections: the selected names per repeat pair (empty tuples for 'random').
  """
  mean: float
  per_repeat: tuple[float, ...]
  selections: tuple[tuple[str, ...], ...]


def _repeats(values, what: str) -> list:
  values = [values] if values is None or isinstance(values, Mapping) else list(values)
  if not values:
    raise ValueError(f"No {what} repeats; give a dict or a non-empty list of dicts.")
  return values


def expected_regret(select: Callable[[Mapping[str, float] | None], Sequence[str]] | str,
                    accuracies: Mapping[str, float] | Sequence[Mapping[str, float]], *,
                    scores: (Mapping[str, float] | Sequence[Mapping[str, float]]
                             | None) = None,
                    budget: int | None = None, metric: str = "relative_regret",
                    pairing: str = "zip", eps: float = LOG_ODDS_EPS) -> RepeatedRegret:
  """The expected regret of a strategy when scores and/or accuracies vary over repeats.

  A repeat pairs one score dict (e.g. a score computed with one seed) with one
  accuracy dict (e.g. one fine-tuning repeat) of the same task. For each pair,
  the strategy selects from the scores and the regret is measured against that
  repeat's accuracies: its oracle is the best accuracy of that dict, and a
  selected model absent from it is an error (missing ground truth is never 0).
  The result is the plain mean of these per-pair regrets, each pair weighted
  equally. A single dict (not a list) is the same in every repeat.

  Args:
    select: scores -> selected names (called with one repeat's score dict, or
      None when `scores` is None), e.g. `lambda s: strategies.task_aware(s, 2)`;
      or 'random': the exact expectation over uniformly random `budget`-subsets
      of each repeat's models (scores are not used).
    accuracies: model name -> fine-tuned test accuracy in [0, 1], or a list of
      such dicts, one per repeat.
    scores: model name -> score, a list of them (one per repeat), or None.
    budget: B, needed (only) for select='random'.
    metric: 'absolute_regret', 'relative_regret' or 'log_odds_regret'.
    pairing: 'zip': repeat r uses scores[r] and accuracies[r] (lists of equal
      length; a single dict is broadcast); 'product': every score repeat with
      every accuracy repeat (for independent noise sources), scores-major.
    eps: the clip of 'log_odds_regret' (see `logit`).

  Returns:
    RepeatedRegret(mean, per_repeat, selections).
  """
  if metric not in REGRET_METRICS:
    raise ValueError(f"Unknown metric {metric!r}; valid metrics: {', '.join(REGRET_METRICS)}")
  if not callable(select) and select != "random":
    raise ValueError(f"select must be a callable (scores -> selected names) or 'random'; "
                     f"got {select!r}")
  if select == "random" and budget is None:
    raise ValueError("select='random' needs a budget.")
  eps = _check_eps(eps)
  accs = [_check_accuracies(a) for a in _repeats(accuracies, "accuracy")]
  score_list = _repeats(scores, "score")
  if pairing == "product":
    pairs = [(s, a) for s in score_list for a in accs]
  elif pairing == "zip":
    n = max(len(score_list), len(accs))
    if {len(score_list), len(accs)} - {1, n}:
      raise ValueError(f"pairing='zip' needs as many score repeats as accuracy repeats (or a "
                       f"single dict of one); got {len(score_list)} score and {len(accs)} "
                       "accuracy repeats. Use pairing='product' for every combination.")
    pairs = [(score_list[r % len(score_list)], accs[r % len(accs)]) for r in range(n)]
  else:
    raise ValueError(f"Unknown pairing {pairing!r}; valid pairings: zip, product")
  values, selections = [], []
  for s, acc in pairs:
    best = max(acc.values())
    if select == "random":
      values.append(_random_regrets(np.sort(np.array(list(acc.values()))), budget, eps)[metric])
      selections.append(())
    else:
      chosen = tuple(select(s))
      values.append(_regrets(best, _selection_max(acc, chosen), eps)[metric])
      selections.append(chosen)
  return RepeatedRegret(math.fsum(values) / len(values), tuple(values), tuple(selections))


def zero_regret_fraction(table: pd.DataFrame, pool: str, strategy: str) -> dict[int, float]:
  """The fraction of tasks whose selection holds an oracle-best model, per budget.

  An oracle-best model is any model achieving the task's best accuracy (ties
  all count), so this is the fraction of tasks with zero regret. It is the mean
  of the table's `optimal` column over the tasks that have a row at that
  budget; for 'random' that column is the probability, so the fraction is
  expected. A task with fewer usable models than B has no row at B and is not
  in that budget's denominator.

  Args:
    table: a selection table from `evaluate_selections` (or `report.read_table`).
    pool: a pool of the table.
    strategy: a strategy of that pool, e.g. 'task_aware/knn' or 'random'.

  Returns:
    {budget: fraction in [0, 1]}, budgets ascending.
  """
  lacking = [c for c in ("pool", "task", "strategy", "budget", "optimal")
             if c not in table.columns]
  if lacking:
    raise ValueError(f"Not a selection table: lacks columns {lacking}")
  rows = table[table["pool"] == pool]
  if rows.empty:
    raise ValueError(f"Unknown pool {pool!r}; pools of the table: "
                     f"{', '.join(map(str, dict.fromkeys(table['pool'])))}")
  part = rows[rows["strategy"] == strategy]
  if part.empty:
    raise ValueError(f"Unknown strategy {strategy!r} for pool {pool!r}; its strategies: "
                     f"{', '.join(map(str, dict.fromkeys(rows['strategy'])))}")
  frac = part.groupby("budget")["optimal"].mean().sort_index()
  return {int(b): float(f) for b, f in frac.items()}


def _row(pool, task, group, strategy, budget, selected, accuracy, oracle_acc,
         regrets, optimal, missing) -> dict:
  return dict(pool=pool, task=task, group=group, strategy=strategy, budget=budget,
              selected="+".join(selected), accuracy=accuracy, oracle_accuracy=oracle_acc,
              absolute_regret=oracle_acc - accuracy,
              relative_regret=regrets["relative_regret"],
              log_odds_regret=regrets["log_odds_regret"],
              optimal=float(optimal), missing="+".join(missing))


def _task_rows(pool: str, task: str, group: str, pool_entries: list[ModelEntry],
               task_scores: Mapping[str, Mapping[str, float]], acc: dict[str, float],
               all_accuracies: Mapping[str, Mapping[str, float]], budgets: Sequence[int],
               missing: list[str], eps: float) -> list[dict]:
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
  # The task-agnostic oracle needs ground truth on another task for at least one usable model;
  # without any (e.g. a one-task table) it would only repeat task_agnostic, so it has no rows.
  other_order = None
  if strategies.mean_other_task_accuracy(all_accuracies, task, names):
    other_order = strategies.task_agnostic_oracle_order(pool_entries, all_accuracies, task)
  rows = []
  for b in budgets:
    def add(strategy, selected):
      sel = _selection_max(acc, selected)
      rows.append(_row(pool, task, group, strategy, b, selected, sel, best,
                       _regrets(best, sel, eps), sel == best, missing))
    add("task_agnostic", strategies.task_agnostic(pool_entries, b))
    if other_order is not None:
      add("task_agnostic_oracle", other_order[:b])
    for score_name, values in task_scores.items():
      pool_scores = {n: values[n] for n in names}
      add(f"task_aware/{score_name}", strategies.task_aware(pool_scores, b))
      add(f"hybrid/{score_name}", strategies.hybrid(pool_entries, pool_scores, b))
    add("oracle", strategies.oracle(acc, b))
    # Random: every number is the exact expectation over uniformly random B-subsets.
    w = strategies.random_max_weights(len(sorted_acc), b)
    rows.append(_row(pool, task, group, "random", b, [], float(w @ sorted_acc), best,
                     _random_regrets(sorted_acc, b, eps),
                     strategies.random_optimal_probability(sorted_acc, b), missing))
  return rows


def evaluate_selections(entries: Sequence[ModelEntry],
                        scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                        accuracies: Mapping[str, Mapping[str, float]],
                        task_groups: Mapping[str, str],
                        pools: Mapping[str, Sequence[str]], *,
                        budgets: Sequence[int] | None = None,
                        log_odds_eps: float = LOG_ODDS_EPS) -> pd.DataFrame:
  """Runs every strategy on every (pool, task, budget) and measures it against the oracle.

  A model without ground truth for a task (absent from accuracies[task]) is left out of that
  task's selections and oracle, and named in the row's `missing` column; it never counts as 0.

  Args:
    entries: the model entries; every pool member must be one of them.
    scores: task -> score name -> model name -> score (higher = better). A task's strategies
      are task_agnostic, task_agnostic_oracle, oracle, random and, per score S of that task,
      task_aware/S and hybrid/S. Every pool model with ground truth needs every score of the
      task. task_agnostic_oracle ranks by mean accuracy over the table's other tasks
      (`strategies.task_agnostic_oracle`); a (pool, task) where no usable model has ground
      truth on another task (always so in a one-task table) has no task_agnostic_oracle rows.
    accuracies: task -> model name -> fine-tuned test accuracy in [0, 1]. Its tasks are the
      tasks of the table.
    task_groups: task -> 'natural' | 'specialized' | 'structured'.
    pools: pool name -> model names.
    budgets: the budgets B to evaluate, each in 1..pool size; None means 1..pool size.
      A (pool, task) with fewer usable models than B has no rows for that B.
    log_odds_eps: the clip of log_odds_regret (see `logit`).

  Returns:
    A DataFrame with one row per (pool, task, strategy, budget) and columns
    pool, task, group, strategy, budget, selected ('+'-joined, '' for random),
    accuracy (for random the exact expectation), oracle_accuracy, absolute_regret,
    relative_regret, log_odds_regret (random: exact expectations), optimal (1.0 / 0.0: the
    selection contains an oracle-best model; random: the probability of that) and missing
    ('+'-joined names of pool models without ground truth). Tasks come in group order, then
    in `accuracies` order; pools with no ground truth on a task have no rows for it.
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
  checked = {t: _check_accuracies(accuracies[t], t) if accuracies[t] else {} for t in tasks}
  eps = _check_eps(log_odds_eps)
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
      acc = {m: checked[task][m] for m in members if m in checked[task]}
      if not acc:
        continue
      missing = [m for m in members if m not in acc]
      usable = [b for b in pool_budgets if b <= len(acc)]
      rows += _task_rows(pool, task, task_groups[task], [by_name[m] for m in acc],
                         scores.get(task, {}), acc, checked, usable, missing, eps)
  return pd.DataFrame(rows, columns=list(COLUMNS))
