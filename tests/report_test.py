"""Tests for model_search.report: every file is written, figures are images, winners are right."""

import os

from matplotlib import image as mpimg
import pandas as pd
import pytest

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

EXPECTED_FILES = [
    "summary.md", "selections.csv", "accuracy.csv",
    "regret_all.md", "regret_all.csv", "regret_my_pool.md", "regret_my_pool.csv",
    "relative_regret_all_B1.png", "relative_regret_all_B2.png",
    "relative_regret_my_pool_B1.png", "relative_regret_my_pool_B2.png",
    "delta_all_knn.png", "delta_my_pool_knn.png", "optimal_all.png", "optimal_my_pool.png",
]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  table = regret.evaluate_selections(ENTRIES, SCORES, ACCURACIES, GROUPS, POOLS)
  out = tmp_path_factory.mktemp("report") / "nested" / "report"
  path = report.write_report(table, out, accuracies=ACCURACIES, entries=ENTRIES,
                             task_groups=GROUPS, title="Test report")
  return table, out, path


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
  assert set(csv["metric"]) == {"relative_regret", "absolute_regret"}
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
