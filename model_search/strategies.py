"""Model selection strategies: which B models of a pool to fine-tune for a task.

Renggli et al., "Which Model to Transfer? Finding the Needle in the Growing Haystack", Sec. 3:
  task-agnostic  rank by upstream quality alone (ImageNet accuracy, then upstream data size);
  task-aware     rank by a cheap proxy score computed on the task (higher = better);
  hybrid         the top task-agnostic model plus the B - 1 best task-aware ones;
  oracle         the B models with the best fine-tuned accuracy (needs ground truth);
  task-agnostic oracle
                 the B models with the best mean fine-tuned accuracy over the OTHER tasks
                 (leave the evaluated task out): the best a task-agnostic ranking could do
                 if it knew every other task's ground truth;
  random         a uniformly random B-subset; its expected best accuracy is exact, see
                 `expected_random_accuracy`.
Every selection returns `budget` distinct model names, best first; a budget outside 1..M
(M = pool size) is an error, so no strategy silently returns fewer models than asked.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from model_search.models.zoo import ModelEntry


def check_budget(budget: int, pool_size: int, what: str = "pool") -> None:
  """Raises ValueError unless `budget` is an int in 1..pool_size."""
  if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
    raise ValueError(f"budget must be an int in 1..{pool_size}; got {budget!r}")
  if pool_size < 1:
    raise ValueError(f"Cannot select from an empty {what}.")
  if not 1 <= budget <= pool_size:
    raise ValueError(f"budget must be in 1..{pool_size} (the size of the {what}); "
                     f"got {budget}")


def _check_unique(names: Sequence[str], what: str) -> None:
  seen, dup = set(), []
  for n in names:
    if n in seen:
      dup.append(n)
    seen.add(n)
  if dup:
    raise ValueError(f"Duplicate model names in the {what}: {', '.join(sorted(set(dup)))}")


def _finite_values(values: Mapping[str, float], what: str) -> dict[str, float]:
  """Returns {name: float(value)}, refusing NaN with an error naming the models."""
  out = {str(k): float(v) for k, v in values.items()}
  nan = sorted(k for k, v in out.items() if math.isnan(v))
  if nan:
    raise ValueError(f"{what} is NaN for model(s) {', '.join(nan)}; "
                     "fix or drop those entries before selecting.")
  return out


def _agnostic_key(e: ModelEntry) -> tuple:
  # Larger-is-better fields are negated; a missing field sorts after every present one.
  params = (1, 0) if e.num_params is None else (0, -e.num_params)
  if e.imagenet_accuracy is not None:
    return (0, -e.imagenet_accuracy, 0, 0, *params, e.name)
  upstream = (1, 0) if e.upstream_size is None else (0, -e.upstream_size)
  return (1, 0, *upstream, *params, e.name)


def task_agnostic_order(entries: Sequence[ModelEntry]) -> list[str]:
  """Returns all model names in task-agnostic order (best first).

  Highest ImageNet accuracy first; models without one come after, by upstream
  dataset size, largest first (unknown size last); ties by parameter count,
  largest first (unknown last); then by name, for determinism.

  Args:
    entries: the pool's model entries.

  Returns:
    Every entry's name, best first.
  """
  entries = list(entries)
  _check_unique([e.name for e in entries], "entries")
  nan = sorted(e.name for e in entries
               if e.imagenet_accuracy is not None and math.isnan(e.imagenet_accuracy))
  if nan:
    raise ValueError(f"imagenet_accuracy is NaN for model(s) {', '.join(nan)}; "
                     "use None for an unknown accuracy.")
  return [e.name for e in sorted(entries, key=_agnostic_key)]


def task_agnostic(entries: Sequence[ModelEntry], budget: int) -> list[str]:
  """Selects the `budget` best models by upstream quality (see `task_agnostic_order`).

  Args:
    entries: the pool's model entries.
    budget: number of models to select, in 1..len(entries).

  Returns:
    `budget` distinct model names, best first.
  """
  check_budget(budget, len(entries), "pool")
  return task_agnostic_order(entries)[:budget]


def _top(values: Mapping[str, float], budget: int, what: str) -> list[str]:
  values = _finite_values(values, what)
  check_budget(budget, len(values), f"{what} dict")
  return sorted(values, key=lambda n: (-values[n], n))[:budget]


def task_aware(scores: Mapping[str, float], budget: int) -> list[str]:
  """Selects the `budget` models with the highest task score (ties by name).

  Args:
    scores: model name -> proxy score on the task, higher = predicted better.
      The pool is exactly the models in `scores`.
    budget: number of models to select, in 1..len(scores).

  Returns:
    `budget` distinct model names, best first.
  """
  return _top(scores, budget, "score")


def hybrid(entries: Sequence[ModelEntry], scores: Mapping[str, float],
           budget: int) -> list[str]:
  """The top task-agnostic model, then the best task-aware models not yet chosen.

  With budget 1 this is the task-agnostic choice.

  Args:
    entries: the pool's model entries; each needs a score. Scores of models
      outside `entries` are ignored.
    scores: model name -> proxy score on the task, higher = predicted better.
    budget: number of models to select, in 1..len(entries).

  Returns:
    `budget` distinct model names: the task-agnostic pick first.
  """
  entries = list(entries)
  unscored = [e.name for e in entries if e.name not in scores]
  if unscored:
    raise ValueError(f"No score for model(s) {', '.join(unscored)}; every model in the pool "
                     "needs a score (drop them from the pool or compute the score).")
  pool_scores = _finite_values({e.name: scores[e.name] for e in entries}, "score")
  check_budget(budget, len(entries), "pool")
  first = task_agnostic(entries, 1)[0]
  if budget == 1:
    return [first]
  rest = {n: v for n, v in pool_scores.items() if n != first}
  return [first] + task_aware(rest, budget - 1)


def oracle(accuracies: Mapping[str, float], budget: int) -> list[str]:
  """Selects the `budget` models with the best fine-tuned accuracy (ties by name).

  Args:
    accuracies: model name -> fine-tuned test accuracy on the task.
    budget: number of models to select, in 1..len(accuracies).

  Returns:
    `budget` distinct model names, best first.
  """
  return _top(accuracies, budget, "accuracy")


def mean_other_task_accuracy(accuracies: Mapping[str, Mapping[str, float]],
                             task: str | None,
                             models: Iterable[str] | None = None) -> dict[str, float]:
  """Each model's mean fine-tuned accuracy over the tasks other than `task`.

  A task where a model has no ground truth (the model is absent from that
  task's dict) is skipped in that model's mean, never counted as 0: the mean is
  over the tasks the model has. So two models' means can be over different task
  sets. A model with no accuracy on any other task is left out of the result.
  The sum is exact (math.fsum), so equal multisets of accuracies give equal
  means whatever the task order.

  Args:
    accuracies: task -> model name -> fine-tuned test accuracy.
    task: the evaluated task, left out; must be a key of `accuracies`. None
      leaves no task out (ranking for a new task without ground truth).
    models: the models to average; None means every model of `accuracies`.

  Returns:
    model name -> mean accuracy over its other tasks, for the models that have one.
  """
  if task is not None and task not in accuracies:
    raise ValueError(f"Unknown task {task!r} to leave out; tasks with accuracies: "
                     f"{', '.join(sorted(accuracies))} (or None to leave no task out)")
  per_task = {t: _finite_values(acc, f"accuracy on task {t!r}")
              for t, acc in accuracies.items() if t != task}
  if models is None:
    models = dict.fromkeys(m for acc in per_task.values() for m in acc)
  means = {}
  for m in models:
    values = [acc[m] for acc in per_task.values() if m in acc]
    if values:
      means[m] = math.fsum(values) / len(values)
  return means


def task_agnostic_oracle_order(entries: Sequence[ModelEntry],
                               accuracies: Mapping[str, Mapping[str, float]],
                               task: str | None) -> list[str]:
  """All model names by mean fine-tuned accuracy over the other tasks (best first).

  Renggli et al.'s "task-agnostic oracle" ranks models by their
  average downstream accuracy over the other tasks, leaving the evaluated task
  out. Means are as in `mean_other_task_accuracy` (missing ground truth is
  skipped, never 0). Models without any other-task accuracy come last. Ties
  (equal means, and the order of the models without a mean) follow
  `task_agnostic_order`, so the order is deterministic.

  Args:
    entries: the pool's model entries.
    accuracies: task -> model name -> fine-tuned test accuracy; may hold models
      outside the pool (ignored).
    task: the evaluated task, left out (a key of `accuracies`); None leaves no
      task out.

  Returns:
    Every entry's name, best first.
  """
  agnostic = task_agnostic_order(entries)
  means = mean_other_task_accuracy(accuracies, task, agnostic)
  position = {n: i for i, n in enumerate(agnostic)}
  key = lambda n: (0, -means[n], position[n]) if n in means else (1, 0.0, position[n])
  return sorted(agnostic, key=key)


def task_agnostic_oracle(entries: Sequence[ModelEntry],
                         accuracies: Mapping[str, Mapping[str, float]],
                         task: str | None, budget: int) -> list[str]:
  """Selects the `budget` best models by mean accuracy over the other tasks.

  See `task_agnostic_oracle_order` for the ranking, ties and missing ground truth.

  Args:
    entries: the pool's model entries.
    accuracies: task -> model name -> fine-tuned test accuracy.
    task: the evaluated task, left out (a key of `accuracies`); None leaves no
      task out.
    budget: number of models to select, in 1..len(entries).

  Returns:
    `budget` distinct model names, best first.
  """
  check_budget(budget, len(entries), "pool")
  return task_agnostic_oracle_order(entries, accuracies, task)[:budget]


def random(names: Sequence[str], budget: int, *, seed: int) -> list[str]:
  """Selects `budget` distinct models uniformly at random.

  Args:
    names: the pool's model names.
    budget: number of models to select, in 1..len(names).
    seed: seed of the numpy generator; the same seed gives the same sample.

  Returns:
    `budget` distinct model names, in sampled order.
  """
  names = list(names)
  _check_unique(names, "pool")
  check_budget(budget, len(names), "pool")
  idx = np.random.default_rng(seed).choice(len(names), size=budget, replace=False)
  return [names[i] for i in idx]


def random_max_weights(pool_size: int, budget: int) -> np.ndarray:
  """P(the i-th smallest of M values is the max of a uniformly random B-subset).

  Entry i (0-based) is C(i, B - 1) / C(M, B): the subset holds model i and
  B - 1 of the i models below it. Ties among values do not change the
  expectation of any function of the max, so any ascending order will do.

  Args:
    pool_size: M.
    budget: B in 1..M.

  Returns:
    float64 [M] weights summing to 1, for the values sorted ascending.
  """
  check_budget(budget, pool_size, "pool")
  total = math.comb(pool_size, budget)
  return np.array([math.comb(i, budget - 1) / total for i in range(pool_size)])


def _values(accuracies: Mapping[str, float] | Iterable[float]) -> np.ndarray:
  if isinstance(accuracies, Mapping):
    accuracies = _finite_values(accuracies, "accuracy").values()
  values = np.asarray(list(accuracies), dtype=np.float64)
  if np.isnan(values).any():
    raise ValueError("accuracy is NaN for some model; fix or drop it before selecting.")
  return values


def expected_random_accuracy(accuracies: Mapping[str, float] | Iterable[float],
                             budget: int) -> float:
  """The exact expected best accuracy of a uniformly random B-subset.

  With a_(1) <= ... <= a_(M) sorted ascending:
  E = sum_i a_(i) C(i - 1, B - 1) / C(M, B).

  Args:
    accuracies: model name -> accuracy, or the accuracies themselves.
    budget: B in 1..M.

  Returns:
    The expectation, a float.
  """
  values = np.sort(_values(accuracies))
  return float(np.dot(random_max_weights(len(values), budget), values))


def random_optimal_probability(accuracies: Mapping[str, float] | Iterable[float],
                               budget: int) -> float:
  """P(a uniformly random B-subset contains a model with the best accuracy).

  With k models tied for the best of M: 1 - C(M - k, B) / C(M, B).

  Args:
    accuracies: model name -> accuracy, or the accuracies themselves.
    budget: B in 1..M.

  Returns:
    The probability, a float in (0, 1].
  """
  values = _values(accuracies)
  check_budget(budget, len(values), "pool")
  m, k = len(values), int(np.sum(values == values.max()))
  return 1.0 - math.comb(m - k, budget) / math.comb(m, budget)
