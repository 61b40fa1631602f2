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


# The task-agnostic oracle's hand table: 3 models x 3 tasks, dyadic accuracies so every mean
# below is exact in floating point (ties are real ties).
#        A      B      C
#   t1 0.875  0.5    0.625
#   t2 0.25   0.75   0.5
#   t3 0.5    0.875  0.25
# Task-agnostic order (the tie-break): C (ImageNet 0.8), A (ImageNet 0.7), B (no ImageNet).
LOO_ENTRIES = [_entry("A", imagenet_accuracy=0.7), _entry("B", upstream_size=1000),
               _entry("C", imagenet_accuracy=0.8)]
LOO_ACC = {"t1": {"A": 0.875, "B": 0.5, "C": 0.625},
           "t2": {"A": 0.25, "B": 0.75, "C": 0.5},
           "t3": {"A": 0.5, "B": 0.875, "C": 0.25}}


def test_task_agnostic_oracle_leave_one_out_by_hand():
  assert strategies.task_agnostic_order(LOO_ENTRIES) == ["C", "A", "B"]
  # Leave t1 out: A (0.25 + 0.5) / 2 = 0.375, B (0.75 + 0.875) / 2 = 0.8125,
  # C (0.5 + 0.25) / 2 = 0.375 -> B first; A and C tie, task-agnostic order puts C first.
  assert strategies.mean_other_task_accuracy(LOO_ACC, "t1") == {
      "A": 0.375, "B": 0.8125, "C": 0.375}
  assert strategies.task_agnostic_oracle_order(LOO_ENTRIES, LOO_ACC, "t1") == ["B", "C", "A"]
  # Leave t2 out: A (0.875 + 0.5) / 2 = 0.6875, B (0.5 + 0.875) / 2 = 0.6875,
  # C (0.625 + 0.25) / 2 = 0.4375 -> A and B tie: A (ImageNet) before B (expert); then C.
  assert strategies.mean_other_task_accuracy(LOO_ACC, "t2") == {
      "A": 0.6875, "B": 0.6875, "C": 0.4375}
  assert strategies.task_agnostic_oracle_order(LOO_ENTRIES, LOO_ACC, "t2") == ["A", "B", "C"]
  # Leave t3 out: A (0.875 + 0.25) / 2 = 0.5625, B (0.5 + 0.75) / 2 = 0.625,
  # C (0.625 + 0.5) / 2 = 0.5625 -> B; then the A/C tie -> C, A.
  assert strategies.task_agnostic_oracle_order(LOO_ENTRIES, LOO_ACC, "t3") == ["B", "C", "A"]
  # No task left out: A 1.625 / 3, B 2.125 / 3, C 1.375 / 3 -> B, A, C.
  assert strategies.task_agnostic_oracle_order(LOO_ENTRIES, LOO_ACC, None) == ["B", "A", "C"]
  assert strategies.task_agnostic_oracle(LOO_ENTRIES, LOO_ACC, "t1", 1) == ["B"]
  assert strategies.task_agnostic_oracle(LOO_ENTRIES, LOO_ACC, "t2", 2) == ["A", "B"]
  assert strategies.task_agnostic_oracle(LOO_ENTRIES, LOO_ACC, "t3", 3) == ["B", "C", "A"]
  # The input order of entries and tasks does not matter.
  shuffled = {t: LOO_ACC[t] for t in ("t3", "t1", "t2")}
  assert strategies.task_agnostic_oracle_order(LOO_ENTRIES[::-1], shuffled, "t1") == [
      "B", "C", "A"]


def test_task_agnostic_oracle_skips_missing_ground_truth_never_zero():
  acc = {t: dict(v) for t, v in LOO_ACC.items()}
  del acc["t3"]["B"]  # B not fine-tuned on t3.
  # Leave t1 out: B's mean is over t2 alone, 0.75 (as a 0 it would be 0.375 and tie A and C,
  # and the task-agnostic order C, A, B would follow). A and C stay at 0.375.
  assert strategies.mean_other_task_accuracy(acc, "t1")["B"] == 0.75
  assert strategies.task_agnostic_oracle_order(LOO_ENTRIES, acc, "t1") == ["B", "C", "A"]


def test_task_agnostic_oracle_models_without_other_tasks_rank_last():
  # D and E have ground truth on t1 only: leaving t1 out they have no mean, so they come
  # after A, B, C, in task-agnostic order (D: ImageNet 0.99 first, E: 0.5) - even though D
  # is the best task-agnostic model.
  entries = LOO_ENTRIES + [_entry("E", imagenet_accuracy=0.5), _entry("D", imagenet_accuracy=0.99)]
  acc = {t: dict(v) for t, v in LOO_ACC.items()}
  acc["t1"].update(D=0.99, E=0.1)
  assert "D" not in strategies.mean_other_task_accuracy(acc, "t1")
  assert strategies.task_agnostic_oracle_order(entries, acc, "t1") == ["B", "C", "A", "D", "E"]
  # Models outside the pool are ignored; a pool with no other-task ground truth at all is in
  # task-agnostic order.
  only = [_entry("E", imagenet_accuracy=0.5), _entry("D", imagenet_accuracy=0.99)]
  assert strategies.task_agnostic_oracle_order(only, acc, "t1") == ["D", "E"]
  assert strategies.task_agnostic_oracle(only, {"t1": {"D": 0.3}}, "t1", 2) == ["D", "E"]


def test_task_agnostic_oracle_errors_and_pool_of_one():
  assert strategies.task_agnostic_oracle([LOO_ENTRIES[0]], LOO_ACC, "t1", 1) == ["A"]
  with pytest.raises(ValueError, match=r"budget must be in 1\.\.3"):
    strategies.task_agnostic_oracle(LOO_ENTRIES, LOO_ACC, "t1", 4)
  with pytest.raises(ValueError, match=r"budget must be in 1\.\.1"):
    strategies.task_agnostic_oracle([LOO_ENTRIES[0]], LOO_ACC, "t1", 2)
  with pytest.raises(ValueError, match="Unknown task 'cifar'.*t1, t2, t3"):
    strategies.task_agnostic_oracle(LOO_ENTRIES, LOO_ACC, "cifar", 1)
  with pytest.raises(ValueError, match="NaN for model.*bad"):
    strategies.task_agnostic_oracle(LOO_ENTRIES, {"t1": {}, "t2": {"bad": float("nan")}},
                                    "t1", 1)


def test_task_agnostic_order_each_missing_field_alone():
  # No ImageNet accuracy: after every model with one, whatever its upstream size.
  assert strategies.task_agnostic_order([
      _entry("expert", upstream_size=10**9, num_params=10**9),
      _entry("generalist", imagenet_accuracy=0.1)]) == ["generalist", "expert"]
  # No upstream size (both without ImageNet accuracy): after the one with a size.
  assert strategies.task_agnostic_order([
      _entry("unsized", num_params=10**9), _entry("sized", upstream_size=1)]) == [
          "sized", "unsized"]
  # No parameter count (tied on ImageNet accuracy): after the one with a count.
  assert strategies.task_agnostic_order([
      _entry("a_uncounted", imagenet_accuracy=0.5),
      _entry("z_counted", imagenet_accuracy=0.5, num_params=1)]) == ["z_counted", "a_uncounted"]
