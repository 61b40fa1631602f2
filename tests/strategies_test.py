"""Tests for model_search.strategies: orders, ties, budgets, hybrid, random expectation."""

import itertools

import numpy as np
import pytest

from model_search import strategies
from model_search.models.zoo import ModelEntry


def _entry(name, **kw):
  return ModelEntry(name, f"/hub/{name}", **kw)


def test_task_agnostic_order_with_missing_metadata_and_ties():
  entries = [
      _entry("no_meta"),                                          # nothing known: last
      _entry("expert_small", upstream_size=100, num_params=5),
      _entry("imnet_b", imagenet_accuracy=0.8, num_params=10),
      _entry("expert_big", upstream_size=1000, num_params=5),
      _entry("imnet_a", imagenet_accuracy=0.8, num_params=10),    # ties imnet_b: by name
      _entry("imnet_big", imagenet_accuracy=0.8, num_params=30),  # tie on acc: more params first
      _entry("imnet_best", imagenet_accuracy=0.9),
      _entry("imnet_noparams", imagenet_accuracy=0.8),            # tie on acc: unknown params last
      _entry("expert_nosize", num_params=99),                     # no upstream size: after sizes
      _entry("expert_big2", upstream_size=1000, num_params=7),    # tie on size: more params first
  ]
  expected = ["imnet_best", "imnet_big", "imnet_a", "imnet_b", "imnet_noparams",
              "expert_big2", "expert_big", "expert_small", "expert_nosize", "no_meta"]
  assert strategies.task_agnostic_order(entries) == expected
  assert strategies.task_agnostic(entries, 3) == expected[:3]
  assert strategies.task_agnostic(entries, len(entries)) == expected
  # The order does not depend on the input order.
  assert strategies.task_agnostic(entries[::-1], len(entries)) == expected


def test_task_aware_and_oracle_break_ties_by_name():
  values = {"c": 0.5, "b": 0.7, "a": 0.5, "d": 0.1}
  assert strategies.task_aware(values, 4) == ["b", "a", "c", "d"]
  assert strategies.oracle(values, 2) == ["b", "a"]
  assert strategies.task_aware({"m": -np.inf, "n": 2.0}, 2) == ["n", "m"]


@pytest.mark.parametrize("budget", [0, -1, 4, 2.0, True])
def test_bad_budget_is_an_error(budget):
  entries = [_entry(n, imagenet_accuracy=0.5) for n in "abc"]
  scores = {"a": 1.0, "b": 2.0, "c": 3.0}
  for call in (lambda: strategies.task_agnostic(entries, budget),
               lambda: strategies.task_aware(scores, budget),
               lambda: strategies.hybrid(entries, scores, budget),
               lambda: strategies.oracle(scores, budget),
               lambda: strategies.random(list(scores), budget, seed=0),
               lambda: strategies.expected_random_accuracy(scores, budget)):
    with pytest.raises(ValueError, match=r"budget must be .*1\.\.3"):
      call()


def test_pool_of_one():
  entries = [_entry("only")]
  assert strategies.task_agnostic(entries, 1) == ["only"]
  assert strategies.task_aware({"only": 0.3}, 1) == ["only"]
  assert strategies.hybrid(entries, {"only": 0.3}, 1) == ["only"]
  assert strategies.oracle({"only": 0.3}, 1) == ["only"]
  assert strategies.random(["only"], 1, seed=3) == ["only"]
  assert strategies.expected_random_accuracy({"only": 0.3}, 1) == 0.3
  assert strategies.random_optimal_probability({"only": 0.3}, 1) == 1.0
  with pytest.raises(ValueError, match=r"1\.\.1"):
    strategies.task_agnostic(entries, 2)


def test_empty_pool_is_an_error():
  with pytest.raises(ValueError, match="empty"):
    strategies.task_aware({}, 1)


def test_hybrid_on_a_hand_table():
  entries = [_entry("generalist", imagenet_accuracy=0.85, num_params=10),
             _entry("good_score", imagenet_accuracy=0.70),
             _entry("expert", upstream_size=100),
             _entry("worst", imagenet_accuracy=0.60)]
  # Task-aware order: generalist (0.9), expert (0.8), good_score (0.5), worst (0.1).
  scores = {"generalist": 0.9, "good_score": 0.5, "expert": 0.8, "worst": 0.1,
            "not_in_pool": 5.0}
  assert strategies.hybrid(entries, scores, 1) == ["generalist"]
  # The task-agnostic pick is also the top task-aware one: hybrid takes the next best score.
  assert strategies.hybrid(entries, scores, 2) == ["generalist", "expert"]
  assert strategies.hybrid(entries, scores, 4) == ["generalist", "expert", "good_score",
                                                   "worst"]
  # With a different top score, B=2 is the agnostic pick plus the task-aware top.
  scores2 = {"generalist": 0.1, "good_score": 0.2, "expert": 0.9, "worst": 0.3}
  assert strategies.hybrid(entries, scores2, 1) == ["generalist"]
  assert strategies.hybrid(entries, scores2, 2) == ["generalist", "expert"]
  assert strategies.task_aware(scores2, 2) == ["expert", "worst"]


def test_hybrid_needs_a_score_for_every_entry():
  entries = [_entry("a", imagenet_accuracy=0.8), _entry("b", imagenet_accuracy=0.7)]
  with pytest.raises(ValueError, match="No score for model.*b"):
    strategies.hybrid(entries, {"a": 1.0}, 1)


def test_nan_scores_and_metadata_are_errors_naming_the_model():
  with pytest.raises(ValueError, match="NaN for model.*bad"):
    strategies.task_aware({"ok": 1.0, "bad": float("nan")}, 1)
  with pytest.raises(ValueError, match="NaN for model.*bad"):
    strategies.oracle({"ok": 0.5, "bad": float("nan")}, 1)
  with pytest.raises(ValueError, match="NaN for model.*bad"):
    strategies.task_agnostic([_entry("bad", imagenet_accuracy=float("nan"))], 1)
  with pytest.raises(ValueError, match="NaN for model.*bad"):
    strategies.hybrid([_entry("bad", imagenet_accuracy=0.9), _entry("ok")],
                      {"bad": float("nan"), "ok": 1.0}, 1)
  with pytest.raises(ValueError, match="Duplicate.*twin"):
    strategies.task_agnostic([_entry("twin"), _entry("twin")], 1)


def test_random_is_a_seeded_sample_of_distinct_names():
  names = [f"m{i}" for i in range(10)]
  sel = strategies.random(names, 4, seed=7)
  assert len(sel) == 4 and len(set(sel)) == 4 and set(sel) <= set(names)
  assert sel == strategies.random(names, 4, seed=7)
  samples = {tuple(strategies.random(names, 4, seed=s)) for s in range(20)}
  assert len(samples) > 1


@pytest.mark.parametrize("values", [
    [0.2, 0.9, 0.5, 0.7, 0.1, 0.65],
    [0.5, 0.5, 0.3, 0.9, 0.9, 0.1, 0.5],   # ties, including for the best
])
def test_expected_random_accuracy_matches_enumeration(values):
  accuracies = {f"m{i}": v for i, v in enumerate(values)}
  best = max(values)
  for budget in range(1, len(values) + 1):
    subsets = list(itertools.combinations(values, budget))
    brute = sum(max(s) for s in subsets) / len(subsets)
    hits = sum(best in s for s in subsets) / len(subsets)
    assert strategies.expected_random_accuracy(accuracies, budget) == pytest.approx(brute,
                                                                                   abs=1e-12)
    assert strategies.expected_random_accuracy(values, budget) == pytest.approx(brute,
                                                                                abs=1e-12)
    assert strategies.random_optimal_probability(accuracies, budget) == pytest.approx(hits)


def test_random_max_weights_hand_case():
  # M=4, B=2: the i-th smallest is the max of C(i-1, 1) of the 6 pairs.
  np.testing.assert_allclose(strategies.random_max_weights(4, 2), [0, 1 / 6, 2 / 6, 3 / 6])
