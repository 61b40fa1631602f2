"""Tests for model_search.regret: regrets, relative delta, rank correlations, selections."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from model_search import regret
from model_search import strategies
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

# Task-agnostic oracle: on t1 the means over t2 alone, A 0.5, B 0.4, C 0.8 -> C, A, B;
# on t2 the means over t1 alone, A 0.6, B 0.9, C 0.7 -> B, C, A.
# (task, budget, strategy, selected, accuracy, relative regret, optimal) for t1 (oracle 0.9)
# and t2 (oracle 0.8). Random rows: sorted t1 accuracies (0.6, 0.7, 0.9); B=1 is each with
# probability 1/3, B=2 has max 0.9, 0.7, 0.9 over the pairs {A,B}, {A,C}, {B,C}.
# t2: sorted (0.4, 0.5, 0.8), pair maxima {A,B} 0.5, {A,C} 0.8, {B,C} 0.8.
EXPECTED = [
    ("t1", 1, "task_agnostic", "A", 0.6, 0.3 / 0.4, 0.0),
    ("t1", 1, "task_agnostic_oracle", "C", 0.7, 0.2 / 0.3, 0.0),
    ("t1", 1, "task_aware/s", "C", 0.7, 0.2 / 0.3, 0.0),
    ("t1", 1, "hybrid/s", "A", 0.6, 0.3 / 0.4, 0.0),
    ("t1", 1, "oracle", "B", 0.9, 0.0, 1.0),
    ("t1", 1, "random", "", (0.6 + 0.7 + 0.9) / 3, (0.75 + 2 / 3 + 0) / 3, 1 / 3),
    ("t1", 2, "task_agnostic", "A+B", 0.9, 0.0, 1.0),
    ("t1", 2, "task_agnostic_oracle", "C+A", 0.7, 0.2 / 0.3, 0.0),
    ("t1", 2, "task_aware/s", "C+B", 0.9, 0.0, 1.0),
    ("t1", 2, "hybrid/s", "A+C", 0.7, 0.2 / 0.3, 0.0),
    ("t1", 2, "oracle", "B+C", 0.9, 0.0, 1.0),
    ("t1", 2, "random", "", (0.9 + 0.7 + 0.9) / 3, (2 / 3) / 3, 2 / 3),
    ("t1", 3, "task_agnostic", "A+B+C", 0.9, 0.0, 1.0),
    ("t1", 3, "task_agnostic_oracle", "C+A+B", 0.9, 0.0, 1.0),
    ("t1", 3, "task_aware/s", "C+B+A", 0.9, 0.0, 1.0),
    ("t1", 3, "hybrid/s", "A+C+B", 0.9, 0.0, 1.0),
    ("t1", 3, "oracle", "B+C+A", 0.9, 0.0, 1.0),
    ("t1", 3, "random", "", 0.9, 0.0, 1.0),
    ("t2", 1, "task_agnostic", "A", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 1, "task_agnostic_oracle", "B", 0.4, 0.4 / 0.6, 0.0),
    ("t2", 1, "task_aware/s", "A", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 1, "hybrid/s", "A", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 1, "oracle", "C", 0.8, 0.0, 1.0),
    ("t2", 1, "random", "", (0.4 + 0.5 + 0.8) / 3, (0.4 / 0.6 + 0.3 / 0.5 + 0) / 3, 1 / 3),
    ("t2", 2, "task_agnostic", "A+B", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 2, "task_agnostic_oracle", "B+C", 0.8, 0.0, 1.0),
    ("t2", 2, "task_aware/s", "A+B", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 2, "hybrid/s", "A+B", 0.5, 0.3 / 0.5, 0.0),
    ("t2", 2, "oracle", "C+A", 0.8, 0.0, 1.0),
    ("t2", 2, "random", "", (0.5 + 0.8 + 0.8) / 3, (0.3 / 0.5) / 3, 2 / 3),
    ("t2", 3, "task_agnostic", "A+B+C", 0.8, 0.0, 1.0),
    ("t2", 3, "task_agnostic_oracle", "B+C+A", 0.8, 0.0, 1.0),
    ("t2", 3, "task_aware/s", "A+B+C", 0.8, 0.0, 1.0),
    ("t2", 3, "hybrid/s", "A+B+C", 0.8, 0.0, 1.0),
    ("t2", 3, "oracle", "C+A+B", 0.8, 0.0, 1.0),
    ("t2", 3, "random", "", 0.8, 0.0, 1.0),
]


def L(p):  # pylint: disable=invalid-name
  """The log-odds, written out for the hand values (none is 0 or 1, so no clip applies)."""
  return math.log(p / (1 - p))


# Log-odds regret of the random rows: the same subset maxima as the random rows above.
# t1 (0.6, 0.7, 0.9): L(.9) - L(.6) = ln 9 - ln 1.5 = ln 6; L(.9) - L(.7) = ln 9 - ln(7/3)
# = ln(27/7). t2 (0.4, 0.5, 0.8): L(.8) - L(.4) = ln 4 - ln(2/3) = ln 6; L(.8) - L(.5) = ln 4.
RANDOM_LOG_ODDS = {
    ("t1", 1): (math.log(6) + math.log(27 / 7) + 0) / 3,
    ("t1", 2): math.log(27 / 7) / 3,      # Pair maxima 0.9, 0.7, 0.9.
    ("t1", 3): 0.0,
    ("t2", 1): (math.log(6) + math.log(4) + 0) / 3,
    ("t2", 2): math.log(4) / 3,           # Pair maxima 0.5, 0.8, 0.8.
    ("t2", 3): 0.0,
}


def _check_rows(table, expected, pool="p", missing=None, random_log_odds=None):
  missing = missing or {}
  random_log_odds = random_log_odds or RANDOM_LOG_ODDS
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
    if strategy == "random":
      assert row.log_odds_regret == pytest.approx(random_log_odds[(task, budget)])
    else:
      assert row.log_odds_regret == pytest.approx(L(oracle) - L(acc), abs=1e-12)
    assert row.optimal == pytest.approx(optimal), (task, budget, strategy)
    assert row.missing == missing.get(task, "")


def test_evaluate_selections_on_a_hand_table():
  table = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS)
  _check_rows(table, EXPECTED)
  # Grouped task order, then strategy order within a budget.
  assert list(table["task"].drop_duplicates()) == ["t1", "t2"]
  assert list(table["strategy"][:6]) == ["task_agnostic", "task_agnostic_oracle",
                                         "task_aware/s", "hybrid/s", "oracle", "random"]
  two = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS, budgets=[2])
  _check_rows(two, [e for e in EXPECTED if e[1] == 2])


def test_evaluate_selections_excludes_and_reports_missing_ground_truth():
  accuracies = {"t1": ACCURACIES["t1"], "t2": {"A": 0.5, "B": 0.4}}  # C not fine-tuned on t2
  scores = {"t1": SCORES["t1"], "t2": {"s": {"A": 3.0, "B": 2.0}}}  # nor scored: not needed
  table = regret.evaluate_selections(ENTRIES, scores, accuracies, GROUPS, POOLS)
  # t1's task-agnostic oracle: means over t2, A 0.5, B 0.4, C none (not 0) -> A, B, C last.
  t1_oracle = [
      ("t1", 1, "task_agnostic_oracle", "A", 0.6, 0.3 / 0.4, 0.0),
      ("t1", 2, "task_agnostic_oracle", "A+B", 0.9, 0.0, 1.0),
      ("t1", 3, "task_agnostic_oracle", "A+B+C", 0.9, 0.0, 1.0),
  ]
  # t2 over {A, B}: oracle A (0.5); no B=3 rows; C never selected, never counted as 0.
  # Task-agnostic oracle: means over t1, A 0.6, B 0.9 -> B, A.
  t2 = [
      ("t2", 1, "task_agnostic", "A", 0.5, 0.0, 1.0),
      ("t2", 1, "task_agnostic_oracle", "B", 0.4, 0.1 / 0.6, 0.0),
      ("t2", 1, "task_aware/s", "A", 0.5, 0.0, 1.0),
      ("t2", 1, "hybrid/s", "A", 0.5, 0.0, 1.0),
      ("t2", 1, "oracle", "A", 0.5, 0.0, 1.0),
      ("t2", 1, "random", "", 0.45, (0.1 / 0.6) / 2, 0.5),
      ("t2", 2, "task_agnostic", "A+B", 0.5, 0.0, 1.0),
      ("t2", 2, "task_agnostic_oracle", "B+A", 0.5, 0.0, 1.0),
      ("t2", 2, "task_aware/s", "A+B", 0.5, 0.0, 1.0),
      ("t2", 2, "hybrid/s", "A+B", 0.5, 0.0, 1.0),
      ("t2", 2, "oracle", "A+B", 0.5, 0.0, 1.0),
      ("t2", 2, "random", "", 0.5, 0.0, 1.0),
  ]
  t1 = [e for e in EXPECTED if e[0] == "t1" and e[2] != "task_agnostic_oracle"]
  # t2 random, B=1: A or B; L(.5) - L(.4) = 0 - ln(2/3) = ln 1.5, with probability 1/2.
  log_odds = RANDOM_LOG_ODDS | {("t2", 1): math.log(1.5) / 2, ("t2", 2): 0.0}
  _check_rows(table, t1 + t1_oracle + t2, missing={"t2": "C"}, random_log_odds=log_odds)
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


def test_task_agnostic_oracle_rows_need_another_task():
  # One task: no model has ground truth elsewhere, so there are no task_agnostic_oracle rows
  # (the ranking would only repeat task_agnostic).
  one = regret.evaluate_selections(ENTRIES, {"t1": SCORES["t1"]}, {"t1": ACCURACIES["t1"]},
                                   GROUPS, POOLS)
  assert "task_agnostic_oracle" not in set(one["strategy"])
  assert len(one) == 3 * 5  # Budgets 1..3 x (agnostic, aware, hybrid, oracle, random).
  _check_rows(one, [e for e in EXPECTED if e[0] == "t1" and e[2] != "task_agnostic_oracle"])
  # A pool of one on two tasks: its only model is also the task-agnostic oracle's pick.
  single = regret.evaluate_selections(ENTRIES, {}, ACCURACIES, GROUPS, {"solo": ["C"]})
  assert list(single["strategy"][:4]) == ["task_agnostic", "task_agnostic_oracle", "oracle",
                                          "random"]
  assert (single["selected"][single["strategy"] != "random"] == "C").all()
  assert (single[["absolute_regret", "relative_regret", "log_odds_regret"]] == 0).all().all()
  assert (single["optimal"] == 1.0).all()


@pytest.mark.parametrize("oracle, selection, eps, expected", [
    (0.9, 0.6, 1e-4, math.log(6)),              # ln(0.9/0.1) - ln(0.6/0.4) = ln 9 - ln 1.5
    (0.8, 0.5, 1e-4, math.log(4)),              # ln 4 - ln 1
    (0.99, 0.98, 1e-4, math.log(99 / 49)),      # ln 99 - ln 49: small gaps near 1 count more
    (1.0, 0.5, 1e-4, math.log(0.9999 / 1e-4)),  # 1 clips to 1 - eps: ln 9999
    (0.5, 0.0, 0.01, math.log(99)),             # 0 clips to eps: 0 - ln(0.01 / 0.99)
    (1.0, 0.0, 0.01, 2 * math.log(99)),
    (1.0, 0.5, 0.0, math.inf),                  # eps = 0: logit(1) = inf, documented
    (0.5, 0.0, 0.0, math.inf),
    (1.0, 1.0, 0.0, 0.0),                       # equal: 0, not inf - inf
    (0.0, 0.0, 0.0, 0.0),
    (0.7, 0.7, 1e-4, 0.0),
])
def test_log_odds_regret_hand_cases(oracle, selection, eps, expected):
  acc = {"best": oracle, "picked": selection}
  assert regret.log_odds_regret(acc, ["picked"], eps=eps) == pytest.approx(expected)
  assert regret.log_odds_delta(oracle, selection, eps=eps) == pytest.approx(expected)


def test_logit_and_its_errors():
  assert regret.logit(0.5) == 0.0
  assert regret.logit(0.75) == pytest.approx(math.log(3))
  assert regret.logit(1.0, eps=0.0) == math.inf and regret.logit(0.0, eps=0.0) == -math.inf
  assert regret.logit(1.0) == pytest.approx(math.log(9999))  # Default eps = 1e-4.
  with pytest.raises(ValueError, match=r"eps must be in \[0, 0\.5\)"):
    regret.logit(0.5, eps=0.5)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    regret.logit(1.5)
  with pytest.raises(ValueError, match="eps must be"):
    regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS, log_odds_eps=-1)


def test_random_log_odds_with_zero_and_one_accuracies_is_never_nan():
  # Sorted (0, 0.5, 0.75), eps = 0: L(.75) = ln 3, L(.5) = 0, L(0) = -inf.
  # B=1: each with 1/3 -> inf. B=2: pair maxima 0.5, 0.75, 0.75 -> (ln 3 - 0) / 3.
  # B=3: the weight of 0 is zero, so its infinite term does not turn the sum into NaN -> 0.
  acc = {"A": 0.0, "B": 0.5, "C": 0.75}
  table = regret.evaluate_selections(ENTRIES, {}, {"t1": acc}, GROUPS, POOLS, log_odds_eps=0.0)
  rnd = table[table["strategy"] == "random"].set_index("budget")["log_odds_regret"]
  assert rnd[1] == math.inf
  assert rnd[2] == pytest.approx(math.log(3) / 3)
  assert rnd[3] == 0.0
  assert not table["log_odds_regret"].isna().any()
  # With eps = 0.01 every value is finite: B=1 is (ln 3 - ln(1/99) + ln 3 + 0) / 3.
  table = regret.evaluate_selections(ENTRIES, {}, {"t1": acc}, GROUPS, POOLS, log_odds_eps=0.01)
  rnd = table[table["strategy"] == "random"].set_index("budget")["log_odds_regret"]
  assert rnd[1] == pytest.approx((math.log(3) + math.log(99) + math.log(3)) / 3)
  assert np.isfinite(table["log_odds_regret"]).all()


def test_regrets_on_random_tables_are_bounded_and_zero_exactly_with_an_oracle_model():
  """Random tables with ties, 0/1 accuracies and missing ground truth, through the table."""
  rng = np.random.default_rng(3)
  entries = [ModelEntry(f"m{i}", "h", imagenet_accuracy=float(rng.uniform()))
             for i in range(6)]
  groups = {f"t{j}": "natural" for j in range(4)}
  for _ in range(20):
    accuracies, scores = {}, {}
    for t in groups:
      present = [e.name for e in entries if rng.uniform() < 0.8] or ["m0"]
      # Coarse values: ties for the best are common, and 0 and 1 occur.
      accuracies[t] = {m: float(rng.integers(0, 11)) / 10 for m in present}
      scores[t] = {"s": {m: float(rng.integers(0, 3)) for m in present}}  # Tied scores.
    table = regret.evaluate_selections(entries, scores, accuracies, groups,
                                       {"all": [e.name for e in entries]})
    for r in table.itertuples():
      acc = accuracies[r.task]
      assert r.oracle_accuracy == max(acc.values())  # Over the models with ground truth.
      assert set(r.missing.split("+")) - {""} == {e.name for e in entries} - set(acc)
      assert -1.0 <= r.relative_regret <= 1.0 and r.relative_regret >= 0.0
      assert np.isfinite(r.log_odds_regret) and r.log_odds_regret >= 0.0
      if r.strategy != "random":
        chosen = r.selected.split("+")
        assert all(m in acc for m in chosen)  # A model without ground truth is never picked.
        has_oracle = any(acc[m] == max(acc.values()) for m in chosen)
        assert r.optimal == float(has_oracle)
        assert (r.relative_regret == 0.0) == has_oracle
        assert (r.log_odds_regret == 0.0) == has_oracle  # Tenths stay apart after the clip.
        assert (r.absolute_regret == 0.0) == has_oracle


def test_log_odds_regret_property():
  rng = np.random.default_rng(4)
  for eps in (0.0, 1e-4):
    for _ in range(200):
      m = int(rng.integers(1, 6))
      acc = {f"m{i}": float(v) for i, v in enumerate(rng.integers(0, 11, m) / 10)}
      selected = list(rng.choice(list(acc), int(rng.integers(1, m + 1)), replace=False))
      r = regret.log_odds_regret(acc, selected, eps=eps)
      assert not math.isnan(r) and r >= 0.0
      assert (r == 0.0) == any(acc[s] == max(acc.values()) for s in selected)


def test_expected_regret_over_random_scores():
  # Accuracies fixed (ACC: a 0.6, b 0.9, c 0.7, oracle b); three score repeats, B=1.
  # Repeat 1 picks a: 0.3 / 0.4 = 0.75; repeat 2 picks b: 0; repeat 3 picks c: 0.2 / 0.3.
  repeats = [{"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 1.0, "b": 3.0, "c": 2.0},
             {"a": 1.0, "b": 2.0, "c": 3.0}]
  got = regret.expected_regret(lambda s: strategies.task_aware(s, 1), ACC, scores=repeats)
  assert got.per_repeat == pytest.approx((0.75, 0.0, 2 / 3))
  assert got.mean == pytest.approx((0.75 + 0 + 2 / 3) / 3)
  assert got.selections == (("a",), ("b",), ("c",))
  # Absolute regret: 0.3, 0, 0.2 -> 0.5 / 3. Log-odds: ln 6, 0, ln(27/7) (see RANDOM_LOG_ODDS).
  absolute = regret.expected_regret(lambda s: strategies.task_aware(s, 1), ACC, scores=repeats,
                                    metric="absolute_regret")
  assert absolute.mean == pytest.approx(0.5 / 3)
  log_odds = regret.expected_regret(lambda s: strategies.task_aware(s, 1), ACC, scores=repeats,
                                    metric="log_odds_regret")
  assert log_odds.mean == pytest.approx((math.log(6) + math.log(27 / 7)) / 3)


def test_expected_regret_over_random_accuracies_and_pairings():
  # Scores fixed: c is picked every time. Repeat 1 (a .6, b .9, c .7): 0.9 - 0.7 = 0.2;
  # repeat 2 (a .5, b .4, c .8): 0. Mean 0.1.
  acc_repeats = [ACC, {"a": 0.5, "b": 0.4, "c": 0.8}]
  pick = lambda s: strategies.task_aware(s, 1)
  got = regret.expected_regret(pick, acc_repeats, scores={"a": 1.0, "b": 2.0, "c": 3.0},
                               metric="absolute_regret")
  assert got.per_repeat == pytest.approx((0.2, 0.0)) and got.mean == pytest.approx(0.1)
  # zip: score repeat r with accuracy repeat r. Scores pick a then c:
  # repeat 1 a on ACC: 0.3; repeat 2 c on the second: 0.
  score_repeats = [{"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 3.0}]
  zipped = regret.expected_regret(pick, acc_repeats, scores=score_repeats,
                                  metric="absolute_regret")
  assert zipped.per_repeat == pytest.approx((0.3, 0.0))
  # product, scores-major: (a on ACC 0.3, a on second 0.8 - 0.5 = 0.3, c on ACC 0.2, c 0).
  product = regret.expected_regret(pick, acc_repeats, scores=score_repeats,
                                   metric="absolute_regret", pairing="product")
  assert product.per_repeat == pytest.approx((0.3, 0.3, 0.2, 0.0))
  assert product.mean == pytest.approx(0.8 / 4)
  # No scores: the callable gets None (a task-agnostic strategy).
  fixed = regret.expected_regret(lambda s: ["a"] if s is None else [], acc_repeats)
  assert fixed.per_repeat == pytest.approx((0.3 / 0.4, 0.3 / 0.5))


def test_expected_regret_of_random_is_the_mean_of_exact_expectations():
  # B=1 absolute: repeat 1: 0.9 - (0.6 + 0.9 + 0.7) / 3 = 1/6; repeat 2: 0.8 - 1.7 / 3 = 0.7/3.
  acc_repeats = [ACC, {"a": 0.5, "b": 0.4, "c": 0.8}]
  got = regret.expected_regret("random", acc_repeats, budget=1, metric="absolute_regret")
  assert got.per_repeat == pytest.approx((1 / 6, 0.7 / 3))
  assert got.mean == pytest.approx((1 / 6 + 0.7 / 3) / 2)
  assert got.selections == ((), ())
  # The same numbers as the table's random rows (t1 and t2 of the hand table, B=2).
  rel = regret.expected_regret("random", [ACCURACIES["t1"], ACCURACIES["t2"]], budget=2)
  assert rel.per_repeat == pytest.approx(((2 / 3) / 3, (0.3 / 0.5) / 3))


def test_expected_regret_errors():
  pick = lambda s: strategies.task_aware(s, 1)
  with pytest.raises(ValueError, match="2 score and 3 accuracy repeats"):
    regret.expected_regret(pick, [ACC] * 3, scores=[ACC] * 2)
  with pytest.raises(ValueError, match="Unknown metric 'mse'.*log_odds_regret"):
    regret.expected_regret(pick, ACC, scores=ACC, metric="mse")
  with pytest.raises(ValueError, match="Unknown pairing 'cross'; valid pairings: zip, product"):
    regret.expected_regret(pick, ACC, scores=ACC, pairing="cross")
  with pytest.raises(ValueError, match="needs a budget"):
    regret.expected_regret("random", ACC)
  with pytest.raises(ValueError, match="callable .* or 'random'"):
    regret.expected_regret("oracle", ACC)
  with pytest.raises(ValueError, match="No accuracy repeats"):
    regret.expected_regret(pick, [], scores=ACC)
  # A repeat without ground truth for the pick is an error, never a 0.
  with pytest.raises(ValueError, match="No accuracy for selected model.*c"):
    regret.expected_regret(pick, [ACC, {"a": 0.5, "b": 0.4}], scores={"a": 1.0, "c": 2.0})
  with pytest.raises(ValueError, match=r"budget must be in 1\.\.3"):
    regret.expected_regret("random", ACC, budget=4)


def test_zero_regret_fraction_on_the_hand_table():
  table = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS)
  # optimal per task (t1, t2) from EXPECTED: task_agnostic B1 (0, 0), B2 (1, 0), B3 (1, 1).
  assert regret.zero_regret_fraction(table, "p", "task_agnostic") == {1: 0.0, 2: 0.5, 3: 1.0}
  assert regret.zero_regret_fraction(table, "p", "hybrid/s") == {1: 0.0, 2: 0.0, 3: 1.0}
  assert regret.zero_regret_fraction(table, "p", "oracle") == {1: 1.0, 2: 1.0, 3: 1.0}
  # Random: the probabilities 1/3, 2/3, 1 on both tasks.
  assert regret.zero_regret_fraction(table, "p", "random") == pytest.approx(
      {1: 1 / 3, 2: 2 / 3, 3: 1.0})


def test_zero_regret_fraction_counts_every_tied_best_model():
  # t1: A and B tie for the best (0.9); t2: B and C tie (0.6).
  accuracies = {"t1": {"A": 0.9, "B": 0.9, "C": 0.5}, "t2": {"A": 0.4, "B": 0.6, "C": 0.6}}
  scores = {"t1": {"s": {"A": 0.0, "B": 1.0, "C": 0.5}},   # Picks B: a tied best.
            "t2": {"s": {"A": 0.0, "B": 0.1, "C": 0.5}}}   # Picks C: a tied best.
  table = regret.evaluate_selections(ENTRIES, scores, accuracies, GROUPS, POOLS)
  # task_aware B=1: B on t1 and C on t2, each tied for the best -> 1.0.
  assert regret.zero_regret_fraction(table, "p", "task_aware/s")[1] == 1.0
  # task_agnostic B=1 picks A: tied best on t1, 0.4 < 0.6 on t2 -> 0.5; B=2 (A, B) -> 1.
  assert regret.zero_regret_fraction(table, "p", "task_agnostic") == {1: 0.5, 2: 1.0, 3: 1.0}
  # Random B=1: two of three models are best on each task -> 2/3; B=2: no pair misses -> 1.
  assert regret.zero_regret_fraction(table, "p", "random") == pytest.approx(
      {1: 2 / 3, 2: 1.0, 3: 1.0})
  with pytest.raises(ValueError, match="Unknown pool 'q'; pools of the table: p"):
    regret.zero_regret_fraction(table, "q", "random")
  with pytest.raises(ValueError, match="Unknown strategy 'knn'.*task_agnostic, "):
    regret.zero_regret_fraction(table, "p", "knn")
  with pytest.raises(ValueError, match="lacks columns"):
    regret.zero_regret_fraction(table.drop(columns="optimal"), "p", "random")


def test_zero_regret_fraction_leaves_tasks_without_the_budget_out():
  # C has no ground truth on t2: t2 has no B=3 row, so B=3 is over t1 alone.
  accuracies = {"t1": ACCURACIES["t1"], "t2": {"A": 0.5, "B": 0.4}}
  table = regret.evaluate_selections(ENTRIES, {}, accuracies, GROUPS, POOLS)
  # task_agnostic: t1 B1 A (0), t2 B1 A (1, the best of A and B) -> 0.5; B2 both 1; B3 t1 1.
  assert regret.zero_regret_fraction(table, "p", "task_agnostic") == {1: 0.5, 2: 1.0, 3: 1.0}


def test_relative_top_k_by_hand():
  scores = {"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}
  acc = {"a": 0.4, "b": 0.8, "c": 0.6, "d": 0.5}   # Best: b, 0.8.
  assert regret.relative_top_k(scores, acc) == pytest.approx(0.4 / 0.8)       # Top-1 a.
  assert regret.relative_top_k(scores, acc, k=2) == pytest.approx(1.0)        # a, b.
  assert regret.relative_top_k(scores, acc, k=4) == pytest.approx(1.0)
  assert regret.relative_top_k({"a": 0.0, "b": 2.0, "c": 1.0, "d": 3.0}, acc, k=1) == (
      pytest.approx(0.5 / 0.8))                                               # Top-1 d.
  assert regret.relative_top_k({"a": 0.0, "b": 2.0, "c": 1.0, "d": 3.0}, acc, k=2) == 1.0
  # Models outside either dict are ignored.
  assert regret.relative_top_k(scores | {"z": 9.0}, acc | {"y": 1.0}) == pytest.approx(0.5)


def test_relative_top_k_with_tied_scores_is_the_expectation_over_tie_breaks():
  # a and b tie at the top: top-1 is a or b with probability 1/2 each ->
  # (0.4 + 0.8) / 2 / 0.8 = 0.75, whatever the names.
  acc = {"a": 0.4, "b": 0.8, "c": 0.6}
  assert regret.relative_top_k({"a": 2.0, "b": 2.0, "c": 1.0}, acc) == pytest.approx(0.75)
  assert regret.relative_top_k({"a": 2.0, "b": 2.0, "c": 1.0}, acc, k=2) == 1.0
  renamed = regret.relative_top_k({"z": 2.0, "b": 2.0, "c": 1.0}, {"z": 0.4, "b": 0.8, "c": 0.6})
  assert renamed == pytest.approx(0.75)
  # One above the cut (a), b and c tied for the second place, k=2: {a, b} or {a, c} ->
  # (max(.5, .4) + max(.5, .9)) / 2 / 1.0 = 0.7.
  acc2 = {"a": 0.5, "b": 0.4, "c": 0.9, "d": 1.0}
  assert regret.relative_top_k({"a": 3.0, "b": 2.0, "c": 2.0, "d": 0.0}, acc2,
                               k=2) == pytest.approx(0.7)
  # Brute force over tie-break orders agrees on random tied inputs.
  rng = np.random.default_rng(5)
  for _ in range(50):
    n = int(rng.integers(1, 7))
    x, y = rng.integers(0, 3, n).astype(float), rng.uniform(0.1, 1, n)
    k = int(rng.integers(1, n + 1))
    brute = []
    for perm in itertools.permutations(range(n)):  # Ties broken by a random permutation.
      order = sorted(range(n), key=lambda i: (-x[i], perm[i]))
      brute.append(max(y[i] for i in order[:k]) / y.max())
    names = [f"m{i}" for i in range(n)]
    got = regret.relative_top_k(dict(zip(names, x)), dict(zip(names, y)), k=k)
    assert got == pytest.approx(np.mean(brute))


def test_relative_top_k_edges_and_errors():
  assert regret.relative_top_k({"a": 1.0, "b": 2.0}, {"a": 0.0, "b": 0.0}) == 1.0  # 0 / 0
  assert regret.relative_top_k({"a": 1.0}, {"a": 0.3}) == 1.0                       # One model.
  with pytest.raises(ValueError, match=r"k must be an int in 1\.\.2"):
    regret.relative_top_k({"a": 1.0, "b": 2.0}, {"a": 0.1, "b": 0.2}, k=3)
  with pytest.raises(ValueError, match=r"k must be an int in 1\.\.2"):
    regret.rank_correlations({"a": 1.0, "b": 2.0}, {"a": 0.1, "b": 0.2}, k=0)
  with pytest.raises(ValueError, match="at least 1"):
    regret.relative_top_k({"a": 1.0}, {"b": 0.2})
  got = regret.rank_correlations({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.1, "b": 0.3, "c": 0.2},
                                 k=1)
  assert got["relative_top_k"] == pytest.approx(0.2 / 0.3)  # Top-1 c (0.2) of best b (0.3).
  assert regret.rank_correlations({"a": 1.0, "b": 2.0, "c": 3.0},
                                  {"a": 0.1, "b": 0.3, "c": 0.2}, k=2)["relative_top_k"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_rank_metrics_equal_scipy_on_random_inputs_per_seed(seed):
  rng = np.random.default_rng(100 + seed)
  for n in (2, 3, 8, 30):
    names = [f"m{i}" for i in range(n)]
    x = rng.normal(size=n)
    if seed % 2:
      x = np.round(x)  # Tied scores.
    y = rng.uniform(size=n)
    got = regret.rank_correlations(dict(zip(names, x)), dict(zip(names, y)))
    expected = {"spearman": stats.spearmanr(x, y).statistic,
                "kendall": stats.kendalltau(x, y).statistic,
                "weighted_tau": stats.weightedtau(x, y).statistic,
                "pearson": stats.pearsonr(x, y).statistic}
    assert set(got) == set(expected) | {"relative_top_k"}
    for key, want in expected.items():
      if np.isnan(want):  # Constant (rounded) scores: NaN, as documented.
        assert np.isnan(got[key]), (key, n)
      else:
        assert got[key] == pytest.approx(want, abs=1e-12), (key, n)
    assert 0.0 < got["relative_top_k"] <= 1.0
