"""Tests for model_search.regret: regrets, relative delta, rank correlations, selections."""

import numpy as np
import pytest
from scipy import stats

from model_search import regret
from model_search.models.zoo import ModelEntry

ACC = {"a": 0.6, "b": 0.9, "c": 0.7}


def test_selection_accuracy_and_regrets_on_a_hand_case():
  assert regret.selection_accuracy(ACC, ["a", "c"]) == 0.7
  assert regret.absolute_regret(ACC, ["a", "c"]) == pytest.approx(0.2)
  assert regret.relative_regret(ACC, ["a", "c"]) == pytest.approx(0.2 / 0.3)
  assert regret.relative_regret(ACC, ["a"]) == pytest.approx(0.3 / 0.4)
  assert regret.absolute_regret(ACC, ["c", "b"]) == 0.0


def test_bad_inputs_are_errors_naming_the_model():
  with pytest.raises(ValueError, match="selected model.*zz"):
    regret.selection_accuracy(ACC, ["a", "zz"])
  with pytest.raises(ValueError, match="empty"):
    regret.relative_regret(ACC, [])
  with pytest.raises(ValueError, match="'hi'.*\\[0, 1\\]"):
    regret.absolute_regret({"a": 0.5, "hi": 1.5}, ["a"])
  with pytest.raises(ValueError, match="'nan_model'"):
    regret.relative_regret({"a": 0.5, "nan_model": float("nan")}, ["a"])
  with pytest.raises(ValueError, match="\\[0, 1\\]"):
    regret.relative_delta(0.5, -0.1)


@pytest.mark.parametrize("s1, s2, expected", [
    (0.9, 0.8, 0.5),      # 0.1 gained of the 0.2 error left
    (0.8, 0.9, -0.5),     # antisymmetric
    (0.5, 0.0, 0.5),
    (1.0, 0.0, 1.0),
    (0.0, 1.0, -1.0),
    (1.0, 0.75, 1.0),
    (0.3, 0.3, 0.0),
    (1.0, 1.0, 0.0),      # 0/0, defined as 0
])
def test_relative_delta_hand_cases(s1, s2, expected):
  assert regret.relative_delta(s1, s2) == pytest.approx(expected)


def test_relative_regret_is_bounded_and_zero_exactly_with_an_oracle_model():
  rng = np.random.default_rng(0)
  for _ in range(200):
    m = int(rng.integers(1, 7))
    # Coarse values make ties (several oracle-best models) common.
    acc = {f"m{i}": float(v) for i, v in enumerate(rng.integers(0, 11, m) / 10)}
    selected = list(rng.choice(list(acc), int(rng.integers(1, m + 1)), replace=False))
    r = regret.relative_regret(acc, selected)
    assert -1.0 <= r <= 1.0
    has_oracle = any(acc[s] == max(acc.values()) for s in selected)
    assert (r == 0.0) == has_oracle
  for s1, s2 in rng.uniform(0, 1, (200, 2)):
    assert -1.0 <= regret.relative_delta(s1, s2) <= 1.0


def test_rank_correlations_equal_scipy_on_random_inputs():
  rng = np.random.default_rng(1)
  for n in (2, 5, 17):
    names = [f"m{i}" for i in range(n)]
    x, y = rng.normal(size=n), rng.uniform(size=n)
    scores = dict(zip(names, x)) | {"only_scored": 3.0}  # Not common: ignored.
    acc = dict(zip(names, y)) | {"only_tuned": 0.5}
    got = regret.rank_correlations(scores, acc)
    assert got["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert got["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert got["weighted_tau"] == pytest.approx(stats.weightedtau(x, y).statistic)
    assert got["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)


def test_rank_correlations_hand_case():
  # Ranks (1, 2, 3) vs (1, 3, 2): spearman 1 - 6*2/(3*8) = 0.5; kendall (2 - 1) / 3;
  # pearson: centred x (-1, 0, 1), y (-0.1, 0.1, 0) -> 0.1 / (sqrt(2) sqrt(0.02)) = 0.5.
  got = regret.rank_correlations({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.1, "b": 0.3, "c": 0.2})
  assert got["spearman"] == pytest.approx(0.5)
  assert got["kendall"] == pytest.approx(1 / 3)
  assert got["pearson"] == pytest.approx(0.5)
  same = regret.rank_correlations({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.1, "b": 0.2, "c": 0.3})
  assert all(v == pytest.approx(1.0) for v in same.values())
  with pytest.raises(ValueError, match="at least 2"):
    regret.rank_correlations({"a": 1.0}, {"a": 0.5, "b": 0.2})


# The hand table: 3 models x 2 tasks, one score "s", one pool "p".
# Task-agnostic order: A (ImageNet 0.80), B (0.75), C (expert, no ImageNet accuracy).
ENTRIES = [ModelEntry("A", "h", imagenet_accuracy=0.80, num_params=10),
           ModelEntry("B", "h", imagenet_accuracy=0.75, num_params=20),
           ModelEntry("C", "h", upstream_size=1000, expert=True)]
ACCURACIES = {"t1": {"A": 0.6, "B": 0.9, "C": 0.7}, "t2": {"A": 0.5, "B": 0.4, "C": 0.8}}
SCORES = {"t1": {"s": {"A": 0.1, "B": 0.2, "C": 0.3}},   # task-aware order C, B, A
          "t2": {"s": {"A": 3.0, "B": 2.0, "C": 1.0}}}   # task-aware order A, B, C
GROUPS = {"t1": "natural", "t2": "structured"}
POOLS = {"p": ["A", "B", "C"]}

# (task, budget, strategy, selected, accuracy, relative regret, optimal) for t1 (oracle 0.9)
# and t2 (oracle 0.8). Random rows: sorted t1 accuracies (0.6, 0.7, 0.9); B=1 is each with
# probability 1/3, B=2 has max 0.9, 0.7, 0.9 over the pairs {A,B}, {A,C}, {B,C}.
# t2: sorted (0.4, 0.5, 0.8), pair maxima {A,B} 0.5, {A,C} 0.8, {B,C} 0.8.
EXPECTED = [
    ("t1", 1, "task_agnostic", "A", 0.6, 0.3 / 0.4, 0.0),
    ("t1", 1, "task_aware/s", "C", 0.7, 0.2 / 0.3, 0.0),
    ("t1", 1, "hybrid/s", "A", 0.6, 0.3 / 0.4, 0.0),
    ("t1", 1, "oracle", "B", 0.9, 0.0, 1.0),
    ("t1", 1, "random", "", (0.6 + 0.7 + 0.9) / 3, (0.75 + 2 / 3 + 0) / 3, 1 / 3),
    ("t1", 2, "task_agnostic", "A+B", 0.9, 0.0, 1.0),
    ("t1", 2, "task_aware/s", "C+B", 0.9, 0.0, 1.0),
    ("t1", 2, "hybrid/s", "A+C", 0.7, 0.2 / 0.3, 0.0),
    ("t1", 2, "oracle", "B+C", 0.9, 0.0, 1.0),
    ("t1", 2, "random", "", (0.9 + 0.7 + 0.9) / 3, (2 / 3) / 3, 2 / 3),
    ("t1", 3, "task_agnostic", "A+B+C", 0.9, 0.0, 1.0),
    ("t1", 3, "task_aware/s", "C+B+A", 0.9, 0.0, 1.0),
    ("t1", 3, "hybrid/s", "A+C+B", 0.9, 0.0, 1.0),
    ("t1", 3, "oracle", "B+C+A", 0.9, 0.0, 1.0),
    ("t1", 3, "random", "", 0.9, 0.0, 1.0),
    ("t2", 1, "task_agnostic", "A", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 1, "task_aware/s", "A", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 1, "hybrid/s", "A", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 1, "oracle", "C", 0.8, 0.0, 1.0),
    ("t2", 1, "random", "", (0.4 + 0.5 + 0.8) / 3, (0.4 / 0.6 + 0.3 / 0.5 + 0) / 3, 1 / 3),
    ("t2", 2, "task_agnostic", "A+B", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 2, "task_aware/s", "A+B", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 2, "hybrid/s", "A+B", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 2, "oracle", "C+A", 0.8, 0.0, 1.0),
    ("t2", 2, "random", "", (0.5 + 0.8 + 0.8) / 3, (0.3 / 0.5) / 3, 2 / 3),
    ("t2", 3, "task_agnostic", "A+B+C", 0.8, 0.0, 1.0),
    ("t2", 3, "task_aware/s", "A+B+C", 0.8, 0.0, 1.0),
    ("t2", 3, "hybrid/s", "A+B+C", 0.8, 0.0, 1.0),
    ("t2", 3, "oracle", "C+A+B", 0.8, 0.0, 1.0),
    ("t2", 3, "random", "", 0.8, 0.0, 1.0),
]


def _check_rows(table, expected, pool="p", missing=None):
  missing = missing or {}
  assert list(table.columns) == list(regret.COLUMNS)
  assert len(table) == len(expected)
  got = {(r.task, r.budget, r.strategy): r for r in table.itertuples()}
  assert len(got) == len(table)
  for task, budget, strategy, selected, acc, rel, optimal in expected:
    row = got[(task, budget, strategy)]
    oracle = max(a for m, a in ACCURACIES[task].items() if m not in missing.get(task, ""))
    assert row.pool == pool
    assert row.group == GROUPS[task]
    assert row.selected == selected, (task, budget, strategy)
    assert row.accuracy == pytest.approx(acc), (task, budget, strategy)
    assert row.oracle_accuracy == pytest.approx(oracle)
    assert row.absolute_regret == pytest.approx(oracle - acc), (task, budget, strategy)
    assert row.relative_regret == pytest.approx(rel), (task, budget, strategy)
    assert row.optimal == pytest.approx(optimal), (task, budget, strategy)
    assert row.missing == missing.get(task, "")


def test_evaluate_selections_on_a_hand_table():
  table = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS)
  _check_rows(table, EXPECTED)
  # Grouped task order, then strategy order within a budget.
  assert list(table["task"].drop_duplicates()) == ["t1", "t2"]
  assert list(table["strategy"][:5]) == ["task_agnostic", "task_aware/s", "hybrid/s", "oracle",
                                         "random"]
  two = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS, budgets=[2])
  _check_rows(two, [e for e in EXPECTED if e[1] == 2])


def test_evaluate_selections_excludes_and_reports_missing_ground_truth():
  accuracies = {"t1": ACCURACIES["t1"], "t2": {"A": 0.5, "B": 0.4}}  # C not fine-tuned on t2
  scores = {"t1": SCORES["t1"], "t2": {"s": {"A": 3.0, "B": 2.0}}}  # nor scored: not needed
  table = regret.evaluate_selections(ENTRIES, scores, accuracies, GROUPS, POOLS)
  # t2 over {A, B}: oracle A (0.5); no B=3 rows; C never selected, never counted as 0.
  t2 = [
      ("t2", 1, "task_agnostic", "A", 0.5, 0.0, 1.0),
      ("t2", 1, "task_aware/s", "A", 0.5, 0.0, 1.0),
      ("t2", 1, "hybrid/s", "A", 0.5, 0.0, 1.0),
      ("t2", 1, "oracle", "A", 0.5, 0.0, 1.0),
      ("t2", 1, "random", "", 0.45, (0.1 / 0.6) / 2, 0.5),
      ("t2", 2, "task_agnostic", "A+B", 0.5, 0.0, 1.0),
      ("t2", 2, "task_aware/s", "A+B", 0.5, 0.0, 1.0),
      ("t2", 2, "hybrid/s", "A+B", 0.5, 0.0, 1.0),
      ("t2", 2, "oracle", "A+B", 0.5, 0.0, 1.0),
      ("t2", 2, "random", "", 0.5, 0.0, 1.0),
  ]
  _check_rows(table, [e for e in EXPECTED if e[0] == "t1"] + t2, missing={"t2": "C"})
  assert not table.loc[table["task"] == "t2", "selected"].str.contains("C").any()


def test_evaluate_selections_errors():
  with pytest.raises(ValueError, match=r"1\.\.3"):
    regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS, budgets=[1, 4])
  with pytest.raises(ValueError, match="t2.*natural, specialized, structured"):
    regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, {"t1": "natural"}, POOLS)
  with pytest.raises(ValueError, match="without an entry: Z"):
    regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, {"p": ["A", "Z"]})
  bad_scores = {"t1": {"s": {"A": 0.1, "B": 0.2}}, "t2": SCORES["t2"]}
  with pytest.raises(ValueError, match="'s' is missing for model.*C.*'t1'"):
    regret.evaluate_selections(ENTRIES, bad_scores, ACCURACIES, GROUPS, POOLS)
  with pytest.raises(ValueError, match="'B' on task 't2'"):
    regret.evaluate_selections(ENTRIES, SCORES, {"t2": {"A": 0.5, "B": 1.2}}, GROUPS, POOLS)
