"""Tests for model_search.report: every file is written, figures are images, winners are right."""

import math
import os
import re

from matplotlib import image as mpimg
import pandas as pd
import pytest
from scipy import stats

from model_search import regret, report
from model_search.models.zoo import ModelEntry

ENTRIES = [ModelEntry("gen_a", "h", imagenet_accuracy=0.80, num_params=10),
           ModelEntry("gen_b", "h", imagenet_accuracy=0.75, num_params=20),
           ModelEntry("exp_c", "h", upstream_size=1000, expert=True)]
# Winners: t1 -> gen_b (generalist), t2 -> exp_c (expert), t3 -> exp_c, where gen_b has no
# ground truth (it must show as 'missing', never 0).
ACCURACIES = {"t1": {"gen_a": 0.6, "gen_b": 0.9, "exp_c": 0.7},
              "t2": {"gen_a": 0.5, "gen_b": 0.4, "exp_c": 0.8},
              "t3": {"gen_a": 0.3, "exp_c": 0.35}}
SCORES = {"t1": {"knn": {"gen_a": 0.1, "gen_b": 0.2, "exp_c": 0.3}},
          "t2": {"knn": {"gen_a": 3.0, "gen_b": 2.0, "exp_c": 1.0}},
          "t3": {"knn": {"gen_a": 1.0, "exp_c": 0.0}}}
GROUPS = {"t1": "natural", "t2": "structured", "t3": "specialized"}
POOLS = {"all": ["gen_a", "gen_b", "exp_c"], "my pool": ["gen_a", "exp_c"]}

FIGURES = [
    "relative_regret_all_B1", "relative_regret_all_B2",
    "relative_regret_my_pool_B1", "relative_regret_my_pool_B2",
    "delta_all_knn", "delta_my_pool_knn", "optimal_all", "optimal_my_pool",
    "rank_correlation_all", "rank_correlation_my_pool",
]
EXPECTED_FILES = [
    "summary.md", "selections.csv", "accuracy.csv",
    "regret_all.md", "regret_all.csv", "regret_my_pool.md", "regret_my_pool.csv",
] + [f"{stem}.{ext}" for stem in FIGURES for ext in ("png", "csv")]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  table = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS)
  out = tmp_path_factory.mktemp("report") / "nested" / "report"
  path = report.write_report(table, out, accuracies=ACCURACIES, entries=ENTRIES,
                             task_groups=GROUPS, scores=SCORES, title="Test report")
  return table, out, path


def _read(path) -> pd.DataFrame:
  """A report CSV as text cells, so 'missing' stays visible."""
  return pd.read_csv(path, dtype=str, keep_default_na=False)


def _num(cell: str) -> float:
  assert cell not in ("", "nan"), "a value must be a number or 'missing'"
  return math.nan if cell == report.MISSING else float(cell)


def test_writes_every_expected_file_and_nothing_else(written):
  _, out, path = written
  assert path == os.path.join(out, "summary.md")
  assert sorted(os.listdir(out)) == sorted(EXPECTED_FILES)  # No temp files left behind.


def test_figures_are_valid_non_trivial_pngs(written):
  _, out, _ = written
  for name in EXPECTED_FILES:
    if name.endswith(".png"):
      data = (out / name).read_bytes()
      assert data[:8] == b"\x89PNG\r\n\x1a\n", name
      assert len(data) > 10_000, name
      pixels = mpimg.imread(out / name)
      assert pixels.shape[0] > 200 and pixels.shape[1] > 400, name
      assert pixels.std() > 0.01, name  # Not a blank canvas.


def test_summary_has_the_winners_and_missing_ground_truth(written):
  _, out, _ = written
  summary = (out / "summary.md").read_text()
  assert summary.startswith("# Test report")
  assert "| t1 | natural | gen_b | 0.900 | generalist |" in summary
  assert "| t2 | structured | exp_c | 0.800 | expert |" in summary
  assert "| t3 | specialized | exp_c | 0.350 | expert |" in summary
  assert "2 distinct winner(s) over 3 task(s)" in summary
  assert "Tasks won by experts: 2; by generalists: 1." in summary
  # Accuracy table in group order t1 (natural), t3 (specialized), t2 (structured),
  # best per task in bold, gen_b's t3 ground truth missing, not 0.
  assert "| model | type | t1 | t3 | t2 |" in summary
  assert "| gen_b | generalist | **0.900** | missing | 0.400 |" in summary
  assert "| exp_c | expert | 0.700 | **0.350** | **0.800** |" in summary
  for name in EXPECTED_FILES[1:]:
    assert f"({name})" in summary, name


def test_summary_names_the_best_strategy_per_pool(written):
  table, out, _ = written
  summary = (out / "summary.md").read_text()
  # Pool 'all', B=1 mean relative regret over t1, t3, t2 (hand values, see regret_test):
  # task_aware/knn picks exp_c, gen_a, gen_a -> (0.2/0.3 + 0.05/0.7 + 0.3/0.5) / 3.
  rows = table[(table["pool"] == "all") & (table["budget"] == 1)]
  means = rows.groupby("strategy")["relative_regret"].mean()
  assert means["task_aware/knn"] == pytest.approx((0.2 / 0.3 + 0.05 / 0.7 + 0.3 / 0.5) / 3)
  best = means.drop("oracle").idxmin()
  assert f"B=1: lowest mean relative regret: **{best}** ({means[best]:.3f}" in summary


def test_regret_tables_mark_missing_ground_truth(written):
  _, out, _ = written
  md = (out / "regret_all.md").read_text()
  assert "## Relative regret, B=1" in md and "## Absolute regret, B=2" in md
  assert "t3*" in md and "t3: gen_b" in md
  csv = pd.read_csv(out / "regret_all.csv", keep_default_na=False)
  # log_odds_regret where the table has it (a newer regret.py).
  assert set(csv["metric"]) == ({"relative_regret", "absolute_regret"}
                                | ({"log_odds_regret"} & set(written[0].columns)))
  assert set(csv["budget"]) == {1, 2}
  row = csv[(csv["metric"] == "relative_regret") & (csv["budget"] == 1)
            & (csv["strategy"] == "task_agnostic")].iloc[0]
  # task_agnostic picks gen_a everywhere: t1 0.3/0.4, t2 0.3/0.5, t3 0.05/0.7.
  assert float(row["t1"]) == pytest.approx(0.75)
  assert float(row["mean structured"]) == pytest.approx(0.6)
  assert float(row["mean"]) == pytest.approx((0.75 + 0.6 + 0.05 / 0.7) / 3)
  assert "oracle" not in set(csv["strategy"])


def test_read_table_round_trips(written):
  table, out, _ = written
  back = report.read_table(out / "selections.csv")
  pd.testing.assert_frame_equal(back, table, check_dtype=False)
  assert back.loc[back["strategy"] == "random", "selected"].eq("").all()


def test_not_a_selection_table_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="lacks columns"):
    report.write_report(pd.DataFrame({"pool": ["p"]}), tmp_path, accuracies={}, entries=[],
                        task_groups={})


def test_summary_lists_the_tasks_where_each_strategy_fails(written):
  _, out, _ = written
  summary = (out / "summary.md").read_text()
  assert "A strategy *fails* on a task where its relative regret > 0" in summary
  # Pool 'all': task_agnostic picks gen_a everywhere (B=1), gen_a + gen_b at B=2 (t2 only).
  assert "| task_agnostic | 0.474 | 3/3: t1 (0.750), t2 (0.600), t3 (0.071) | 0.200 | " \
         "1/3: t2 (0.600) |" in summary
  # Pool 'my pool', B=2: both models picked, so no strategy fails.
  assert "| task_agnostic | 0.307 | 3/3: t2 (0.600), t1 (0.250), t3 (0.071) | 0.000 | " \
         "none (0/3) |" in summary


def test_every_figure_has_its_csv_with_the_drawn_numbers(written):
  table, out, _ = written
  pngs = sorted(n[:-4] for n in os.listdir(out) if n.endswith(".png"))
  assert pngs == sorted(FIGURES)
  for stem in pngs:
    assert len(_read(out / f"{stem}.csv")) > 0, stem
  rows = table[table["pool"] == "all"].set_index(["strategy", "budget", "task"]).sort_index()
  bars = _read(out / "relative_regret_all_B1.csv")
  assert set(bars["strategy"]) == set(table["strategy"]) - {"oracle"}
  for r in bars.itertuples():
    assert _num(r.relative_regret) == pytest.approx(rows.loc[(r.strategy, 1, r.task),
                                                             "relative_regret"])
  delta = _read(out / "delta_all_knn.csv")
  assert len(delta) == 3 * 3  # 3 panels x 3 tasks.
  for r in delta.itertuples():
    a1 = rows.loc[(r.strategy_1, int(r.budget), r.task), "accuracy"]
    a2 = rows.loc[(r.strategy_2, int(r.budget), r.task), "accuracy"]
    assert _num(r.relative_delta) == pytest.approx(regret.relative_delta(a1, a2))
  optimal = _read(out / "optimal_all.csv")
  assert set(optimal["tasks"]) == {"all tasks", "natural", "specialized", "structured"}
  for r in optimal[optimal["tasks"] == "all tasks"].itertuples():
    part = rows.loc[(r.strategy, int(r.budget))]
    assert _num(r.fraction_optimal) == pytest.approx(part["optimal"].mean())
    assert int(r.n_tasks) == len(part)


def test_summary_links_resolve(written):
  _, out, _ = written
  summary = (out / "summary.md").read_text()
  links = re.findall(r"\]\(([^)]+)\)", summary)
  assert len(links) > 10
  for link in links:
    assert (out / link).is_file(), link
  for stem in FIGURES:
    assert f"]({stem}.png)" in summary and f"]({stem}.csv)" in summary, stem


def _scipy(scores, accuracies, members):
  common = sorted(m for m in scores if m in accuracies and m in members)
  x, y = [scores[m] for m in common], [accuracies[m] for m in common]
  return {"weighted_tau": stats.weightedtau(x, y).statistic,
          "spearman": stats.spearmanr(x, y).statistic}, len(common)


def test_rank_correlation_csv_equals_scipy(written):
  _, out, _ = written
  for pool, slug in (("all", "all"), ("my pool", "my_pool")):
    csv = _read(out / f"rank_correlation_{slug}.csv")
    assert list(csv.columns) == ["score", "task", "group", "metric", "value", "n_models"]
    assert set(csv["metric"]) == set(report.CORRELATIONS)
    for r in csv[csv["metric"].isin(["weighted_tau", "spearman"])].itertuples():
      want, n = _scipy(SCORES[r.task][r.score], ACCURACIES[r.task], POOLS[pool])
      assert r.group == GROUPS[r.task]
      assert int(r.n_models) == n
      assert _num(r.value) == pytest.approx(want[r.metric]), (pool, r.task, r.metric)


# Four models; task b has one model with ground truth, score s2 is constant on task c.
ENTRIES_4 = [ModelEntry("m0", "h", imagenet_accuracy=0.8, num_params=1),
             ModelEntry("m1", "h", imagenet_accuracy=0.7, num_params=1),
             ModelEntry("m2", "h", upstream_size=10, expert=True),
             ModelEntry("m3", "h", upstream_size=20, expert=True)]
ACCURACIES_4 = {"a": {"m0": 0.9, "m1": 0.5, "m2": 0.7, "m3": 0.6},
                "b": {"m2": 0.8},
                "c": {"m0": 0.3, "m1": 0.4, "m2": 0.2, "m3": 0.6}}
SCORES_4 = {"a": {"s1": {"m0": 2.0, "m1": 0.5, "m2": 1.0, "m3": 1.5},
                  "s2": {"m0": 0.1, "m1": 0.4, "m2": 0.2, "m3": 0.3}},
            "b": {"s1": {"m0": 1.0, "m1": 2.0, "m2": 3.0, "m3": 4.0},
                  "s2": {"m0": 1.0, "m1": 2.0, "m2": 3.0, "m3": 4.0}},
            "c": {"s1": {"m0": 3.0, "m1": 1.0, "m2": 2.0, "m3": 4.0},
                  "s2": {"m0": 5.0, "m1": 5.0, "m2": 5.0, "m3": 5.0}}}
GROUPS_4 = {"a": "natural", "b": "specialized", "c": "structured"}
POOLS_4 = {"all": ["m0", "m1", "m2", "m3"], "sub": ["m0", "m1", "m2"]}


@pytest.fixture(scope="module")
def written_4(tmp_path_factory):
  table = regret.evaluate_selections(ENTRIES_4, SCORES_4, ACCURACIES_4, GROUPS_4, POOLS_4)
  out = tmp_path_factory.mktemp("report_4")
  report.write_report(table, out, accuracies=ACCURACIES_4, entries=ENTRIES_4,
                      task_groups=GROUPS_4, scores=SCORES_4, pools=POOLS_4)
  return table, out


def test_rank_correlation_missing_where_not_computable(written_4):
  _, out = written_4
  for pool in POOLS_4:
    assert (out / f"rank_correlation_{pool}.png").is_file()
    csv = _read(out / f"rank_correlation_{pool}.csv").set_index(["score", "task", "metric"])
    for metric in report.CORRELATIONS:
      for score in ("s1", "s2"):  # One model with ground truth: missing, never 0.
        assert csv.loc[(score, "b", metric), "value"] == report.MISSING
        assert csv.loc[(score, "b", metric), "n_models"] == "1"
      assert csv.loc[("s2", "c", metric), "value"] == report.MISSING  # Constant score.
    for score, task in (("s1", "a"), ("s2", "a"), ("s1", "c")):
      want, n = _scipy(SCORES_4[task][score], ACCURACIES_4[task], POOLS_4[pool])
      for metric in ("weighted_tau", "spearman"):
        assert _num(csv.loc[(score, task, metric), "value"]) == pytest.approx(want[metric])
      assert int(csv.loc[(score, task, "weighted_tau"), "n_models"]) == n
  summary = (out / "summary.md").read_text()
  csv = _read(out / "rank_correlation_all.csv")
  means = []
  for metric in report.CORRELATIONS:  # Over tasks a and c: b is left out, not counted as 0.
    values = csv[(csv["score"] == "s1") & (csv["metric"] == metric)]["value"]
    assert (values == report.MISSING).sum() == 1
    means.append(f"{sum(float(v) for v in values if v != report.MISSING) / 2:.3f}")
  assert f"| s1 | {' | '.join(means)} | 2 |" in summary


def test_members_read_from_the_table_match_the_given_pools(written_4, tmp_path):
  table, out = written_4
  report.write_report(table, tmp_path, accuracies=ACCURACIES_4, entries=ENTRIES_4,
                      task_groups=GROUPS_4, scores=SCORES_4)  # Budgets 1..pool size.
  for pool in POOLS_4:
    name = f"rank_correlation_{pool}.csv"
    assert (tmp_path / name).read_text() == (out / name).read_text()


def test_new_figure_csvs_mark_missing_ground_truth(written_4):
  _, out = written_4
  # Task b has one model with ground truth: no B=2 rows, so 'missing', never 0.
  bars = _read(out / "relative_regret_all_B2.csv")
  assert set(bars.loc[bars["task"] == "b", "relative_regret"]) == {report.MISSING}
  assert (bars.loc[bars["task"] != "b", "relative_regret"] != report.MISSING).all()
  delta = _read(out / "delta_all_s1.csv")
  at_b2 = delta[(delta["budget"] == "2") & (delta["task"] == "b")]
  assert len(at_b2) == 2 and set(at_b2["relative_delta"]) == {report.MISSING}
  summary = (out / "summary.md").read_text()
  assert "fewer than B pool models have ground truth: b" in summary
  assert "ground truth missing (left out of the task, never 0): b: m0, m1, m3" in summary


def test_no_scores_no_heatmap(tmp_path):
  table = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS)
  for scores in (None, {}):
    report.write_report(table, tmp_path, accuracies=ACCURACIES, entries=ENTRIES,
                        task_groups=GROUPS, scores=scores)
    assert not [n for n in os.listdir(tmp_path) if n.startswith("rank_correlation")]
    assert "Rank correlation" not in (tmp_path / "summary.md").read_text()


def test_extra_strategies_and_columns_are_reported(tmp_path):
  table = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS)
  extra = table[table["strategy"] == "task_agnostic"].assign(strategy="brand_new")
  table = pd.concat([table, extra], ignore_index=True).assign(extra_metric=0.5)
  report.write_report(table, tmp_path, accuracies=ACCURACIES, entries=ENTRIES,
                      task_groups=GROUPS, scores=SCORES)
  assert "| brand_new |" in (tmp_path / "regret_all.md").read_text()
  assert "brand_new" in set(_read(tmp_path / "optimal_all.csv")["strategy"])
  back = report.read_table(tmp_path / "selections.csv")
  assert back["extra_metric"].dtype == float


def test_pools_must_cover_the_table(tmp_path):
  table = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS)
  with pytest.raises(ValueError, match="pools lacks the table's pool"):
    report.write_report(table, tmp_path, accuracies=ACCURACIES, entries=ENTRIES,
                        task_groups=GROUPS, scores=SCORES, pools={"all": POOLS["all"]})
