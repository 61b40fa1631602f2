"""The report: CSV and Markdown tables, summary.md, and `write_report`, which writes it all.

From the selection table: the accuracy table and winners per task, regret tables per pool
(strategies x tasks with group means), the best strategy and the failed tasks per pool, and the
mean rank correlation of each score with fine-tuned accuracy. `write_report` also writes the
figures of `report_figures` (Renggli et al., "Which Model to Transfer?", Figs. 3-7, and a
rank-correlation heatmap), each PNG with a CSV of the same name holding the numbers drawn.
Every file is written atomically (workdir.write_text / write_bytes: temp file, then rename).
`read_table` reads the selection table back.
"""

from __future__ import annotations

import math
import os
import re
from typing import Mapping, Sequence

from etils import epath
import numpy as np
import pandas as pd

from model_search import regret
from model_search import report_figures
from model_search import workdir as wd
from model_search.data.task import GROUPS
from model_search.models.zoo import ModelEntry
# Shared with the figures, and importable from here as before (report.MISSING, ...).
from model_search.report_figures import CORRELATION_LABELS
from model_search.report_figures import CORRELATIONS
from model_search.report_figures import MISSING
from model_search.report_figures import NOT_AVAILABLE
from model_search.report_figures import rank_correlation_table

# Strategies that use fine-tuned ground truth (of the task, or of the other tasks).
_REFERENCES = ("oracle", "task_agnostic_oracle")
REGRET_BUDGETS = (1, 2)
METRICS = (("relative_regret", "Relative regret"), ("absolute_regret", "Absolute regret"))
_TEXT_COLUMNS = ("pool", "task", "group", "strategy", "selected", "missing")


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
  """Reads a selection table written by `write_report` (selections.csv).

  Args:
    path: the CSV file.

  Returns:
    The table with the columns of `regret.evaluate_selections`; empty names stay ''.
  """
  numeric = [c for c in regret.COLUMNS if c not in _TEXT_COLUMNS]
  with epath.Path(path).open() as f:
    table = pd.read_csv(f, dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False,
                        na_values={c: ["", "nan", "NaN"] for c in numeric},
                        float_precision="round_trip")
  missing = [c for c in regret.COLUMNS if c not in table.columns]
  if missing:
    raise ValueError(f"{path} is not a selection table: it lacks columns {missing}; "
                     f"expected columns: {', '.join(regret.COLUMNS)}")
  for c in [c for c in table.columns if c not in regret.COLUMNS + _TEXT_COLUMNS]:
    if table[c].dtype == object:  # A column this version does not know: numbers if it parses.
      try:
        table[c] = pd.to_numeric(table[c].replace(["", "nan", "NaN"], np.nan))
      except ValueError:
        pass
  return table


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _fmt(value: float | None) -> str:
  if value is None or math.isnan(value):
    return MISSING
  return f"{value:.3f}"


def _csv(frame: pd.DataFrame) -> str:
  """CSV text with 'missing' (never 0, never an empty cell) where a value is NaN."""
  return frame.astype(object).where(frame.notna(), MISSING).to_csv(index=False)


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def _ordered_tasks(tasks: Sequence[str], task_groups: Mapping[str, str]) -> list[str]:
  unknown = [t for t in tasks if task_groups.get(t) not in GROUPS]
  if unknown:
    raise ValueError(f"Task(s) {', '.join(unknown)} need a group in task_groups; "
                     f"valid groups: {', '.join(GROUPS)}")
  return sorted(dict.fromkeys(tasks), key=lambda t: GROUPS.index(task_groups[t]))


def _strategies(table: pd.DataFrame) -> list[str]:
  """The table's strategies in first-seen order, without the oracle (zero regret)."""
  return [s for s in dict.fromkeys(table["strategy"]) if s != "oracle"]


def regret_table(table: pd.DataFrame, pool: str, metric: str, budget: int,
                 tasks: Sequence[str], task_groups: Mapping[str, str]) -> pd.DataFrame:
  """One pool's regrets: strategies x (tasks, group means, overall mean); NaN = missing.

  Args:
    table: the selection table.
    pool: the pool name.
    metric: a numeric column of the table, e.g. 'relative_regret'.
    budget: the budget B.
    tasks: the tasks, as columns, in this order.
    task_groups: task -> group.

  Returns:
    A DataFrame indexed by strategy; means are over the tasks with a value.
  """
  rows = table[(table["pool"] == pool) & (table["budget"] == budget)]
  wide = rows.pivot(index="strategy", columns="task", values=metric)
  wide = wide.reindex(index=_strategies(table[table["pool"] == pool]), columns=list(tasks))
  for g in GROUPS:
    members = [t for t in tasks if task_groups[t] == g]
    if members:
      wide[f"mean {g}"] = wide[members].mean(axis=1)
  wide["mean"] = wide[list(tasks)].mean(axis=1)
  return wide


def _accuracy_section(accuracies, entries, tasks, task_groups) -> tuple[str, pd.DataFrame]:
  """The models x tasks accuracy table (Markdown and CSV frame) and the winners per task."""
  kind = {e.name: "expert" if e.expert else "generalist" for e in entries}
  with_acc = {m for t in tasks for m in accuracies.get(t, {})}
  models = [e.name for e in entries if e.name in with_acc]
  models += sorted(with_acc - set(models))
  winners = {}
  for t in tasks:
    acc = accuracies.get(t, {})
    best = max(acc.values()) if acc else None
    winners[t] = [m for m in models if acc.get(m) == best] if acc else []
  header = ["model", "type"] + tasks
  rows = [["*group*", ""] + [task_groups[t] for t in tasks]]
  csv_rows = []
  for m in models:
    cells = []
    for t in tasks:
      a = accuracies.get(t, {}).get(m)
      cell = _fmt(None if a is None else float(a))
      cells.append(f"**{cell}**" if m in winners[t] else cell)
    rows.append([m, kind.get(m, "unknown")] + cells)
    csv_rows.append([m, kind.get(m, "unknown")] + [
        accuracies.get(t, {}).get(m, MISSING) for t in tasks])
  text = ("Fine-tuned test accuracy in [0, 1]; **bold**: the best model of the task; "
          f"'{MISSING}': no ground truth.\n\n" + _markdown(header, rows))
  text += "\n### Winners\n\n"
  win_rows, by_kind, distinct = [], {"expert": 0, "generalist": 0, "mixed": 0}, set()
  for t in tasks:
    ws = winners[t]
    if not ws:
      win_rows.append([t, task_groups[t], MISSING, MISSING, ""])
      continue
    distinct.update(ws)
    kinds = sorted({kind.get(m, "unknown") for m in ws})
    k = kinds[0] if len(kinds) == 1 else "mixed"
    by_kind[k] = by_kind.get(k, 0) + 1
    win_rows.append([t, task_groups[t], ", ".join(ws),
                     _fmt(float(accuracies[t][ws[0]])), " / ".join(kinds)])
  text += _markdown(["task", "group", "winner", "accuracy", "type"], win_rows)
  decided = sum(1 for t in tasks if winners[t])
  text += (f"\n{len(distinct)} distinct winner(s) over {decided} task(s) with ground truth: "
           f"{', '.join(sorted(distinct)) or 'none'}. Tasks won by experts: {by_kind['expert']}; "
           f"by generalists: {by_kind['generalist']}")
  text += f"; tied between both: {by_kind['mixed']}.\n" if by_kind["mixed"] else ".\n"
  if by_kind.get("unknown"):
    text += f"Tasks won by models without an entry: {by_kind['unknown']}.\n"
  return text, pd.DataFrame(csv_rows, columns=header)


def _correlation_summary(corr: pd.DataFrame) -> str:
  """Markdown: per score the mean of each correlation over the tasks with a value."""
  ntasks = corr["task"].nunique()
  header = ["score"] + [f"mean {CORRELATION_LABELS[m]}" for m in CORRELATIONS]
  header.append(f"tasks with a value (of {ntasks})")
  body = []
  for name, part in corr.groupby("score", sort=False):
    means = part.groupby("metric")["value"].mean()
    counted = part.loc[part["metric"] == CORRELATIONS[0], "value"].notna().sum()
    body.append([name] + [_fmt(means.get(m)) for m in CORRELATIONS] + [str(counted)])
  return (f"Means over the tasks with a value; a task without one ({NOT_AVAILABLE}: fewer than 2 "
          f"pool models with a score and ground truth, or a constant side) is left out, never "
          "counted as 0.\n\n" + _markdown(header, body))


def _failed(part: pd.DataFrame, threshold: float, tasks: Sequence[str]) -> str:
  """One strategy's failed tasks at one B: 'k/n: worst three with values, then the rest'.

  Args:
    part: the strategy's rows at this B.
    threshold: a task fails where its relative regret is above this.
    tasks: the tasks where some strategy has a value at this B; those without one for this
      strategy are named as missing.
  """
  n = len(part)
  failed = part[part["relative_regret"] > threshold].sort_values(
      "relative_regret", ascending=False, kind="stable")
  k = len(failed)
  absent = [t for t in tasks if t not in set(part["task"])]
  suffix = f" ({MISSING}: {', '.join(absent)})" if absent else ""
  if not k:
    return f"none (0/{n}){suffix}"
  worst = ", ".join(f"{t} ({v:.3f})" for t, v in zip(failed["task"][:3],
                                                     failed["relative_regret"][:3]))
  passed = [t for t in part["task"] if t not in set(failed["task"])]
  if len(passed) < k - 3:  # Naming the passed tasks is shorter.
    return (f"{k}/{n}: {worst} and every other task" +
            (f" except {', '.join(passed)}" if passed else "") + suffix)
  return f"{k}/{n}: " + ", ".join([worst] + list(failed["task"][3:])) + suffix


def _pool_summary(table, pool, tasks, missing, threshold) -> str:
  """Best strategy by mean relative regret at B=1, 2 and the tasks where each strategy fails."""
  rows = table[table["pool"] == pool]
  budgets = [b for b in REGRET_BUDGETS if b in set(rows["budget"])]
  if not budgets:
    return "No budget of 1 or 2 in the table for this pool.\n"
  fails_on = f"relative regret > {threshold:g}"
  lines = [f"A strategy *fails* on a task where its {fails_on}"
           + (" (none of its picks is an oracle-best model)" if threshold == 0 else "")
           + "; failed tasks are listed worst first, with the values of the worst three. "
           "The lowest-regret line leaves out the references (the oracle and the task-agnostic "
           "oracle, which use fine-tuned ground truth).\n"]
  cells = {}
  for b in budgets:
    part = rows[(rows["budget"] == b) & (rows["strategy"] != "oracle")]
    means = part.groupby("strategy", sort=False)["relative_regret"].mean()
    present = [t for t in tasks if t in set(part["task"])]
    fails = {s: _failed(g, threshold, present) for s, g in part.groupby("strategy", sort=False)}
    # The task-agnostic oracle ranks by other tasks' ground truth: a reference, not a choice
    # a practitioner can make before fine-tuning, so it is never the headline.
    candidates = means.drop([s for s in _REFERENCES if s in means.index])
    best = [s for s, v in candidates.items() if v == candidates.min()]
    absent = [t for t in tasks if t not in present]
    if len({fails[s] for s in best}) == 1:
      where = ("fails on " if len(best) == 1 else "each fails on ") + fails[best[0]]
    else:
      where = "fails on " + "; ".join(f"{s}: {fails[s]}" for s in best)
    lines.append(
        f"- B={b}: lowest mean relative regret: **{', '.join(best)}** "
        f"({candidates.min():.3f}, over "
        f"{part['task'].nunique()} tasks" + (f"; no value, as fewer than B pool models have ground "
                                      f"truth: {', '.join(absent)}" if absent else "")
        + f"); {where}")
    for s in means.index:
      cells.setdefault(s, {})[b] = (f"{means[s]:.3f}", fails[s])
  if missing:
    lines.append("- ground truth missing (left out of the task, never 0): " +
                 "; ".join(f"{t}: {m.replace('+', ', ')}" for t, m in missing.items()))
  header = ["strategy"]
  for b in budgets:
    header += [f"mean rel. regret B={b}", f"fails at B={b} ({fails_on})"]
  body = [[s] + [c for b in budgets for c in per_b.get(b, (MISSING, MISSING))]
          for s, per_b in cells.items()]
  return "\n".join(lines) + "\n\n" + _markdown(header, body)


def _pool_members(table: pd.DataFrame, pool: str) -> list[str]:
  """The pool's models as far as the table names them: every model selected or missing."""
  rows = table[table["pool"] == pool]
  return list(dict.fromkeys(m for col in ("selected", "missing") for v in rows[col]
                            if isinstance(v, str) for m in v.split("+") if m))


def write_report(table: pd.DataFrame, out_dir: str | os.PathLike[str], *,
                 accuracies: Mapping[str, Mapping[str, float]],
                 entries: Sequence[ModelEntry], task_groups: Mapping[str, str],
                 scores: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
                 pools: Mapping[str, Sequence[str]] | None = None,
                 fail_threshold: float = 0.0,
                 title: str = "model_search report",
                 sections: Sequence[str] = ()) -> str:
  """Writes the report's CSVs, Markdown tables and PNG figures, and summary.md, into out_dir.

  Files (POOL and SCORE made filename-safe); every PNG comes with a CSV of the same name
  holding the numbers it draws, and every table writes 'missing' (never 0) where ground truth
  or a value is absent:
    selections.csv                the full table;
    accuracy.csv                  fine-tuned accuracy, models x tasks;
    regret_POOL.md, .csv          absolute and relative regret (and log-odds regret where the
                                  table has it) at B=1 and B=2, strategies x tasks with group
                                  means and the overall mean;
    relative_regret_POOL_B1.png   (and _B2) relative regret per task, grouped by task group;
    delta_POOL_SCORE.png          relative delta per task: task-aware vs task-agnostic (B=1),
                                  hybrid vs task-agnostic and hybrid vs task-aware (B=2);
    optimal_POOL.png              fraction of tasks with an oracle-best pick vs B;
    rank_correlation_POOL.png     with `scores`: weighted Kendall tau and Spearman of each score
                                  vs accuracy, scores x tasks; the CSV (score, task, group,
                                  metric, value, n_models) also has Kendall tau-b and Pearson;
    summary.md                    the overview, linking all of the above.

  Args:
    table: the selection table from `regret.evaluate_selections` (or `read_table`).
    out_dir: the report folder (local or gs://), created if needed.
    accuracies: task -> model -> fine-tuned test accuracy (the table's ground truth).
    entries: the model entries (for expert vs generalist).
    task_groups: task -> 'natural' | 'specialized' | 'structured'.
    scores: task -> score name -> model -> score, as given to `regret.evaluate_selections`;
      None or empty: no rank-correlation heatmap.
    pools: pool -> member models, for the rank correlations (e.g. select/pools.json). None:
      each pool's members are read from the table (the models it selects or marks missing),
      which is every member when the table holds B = pool size (the default budgets).
    fail_threshold: summary.md lists, per strategy, the tasks where its relative regret is
      above this (a failure); 0 means every task without an oracle-best pick.
    title: the summary's title.
    sections: more Markdown sections for summary.md, after the pools' (e.g.
      `report_training_time.write`'s).

  Returns:
    The path of summary.md.
  """
  lacking = [c for c in regret.COLUMNS if c not in table.columns]
  if lacking:
    raise ValueError(f"Not a selection table: lacks columns {lacking}; expected columns: "
                     f"{', '.join(regret.COLUMNS)}")
  if not fail_threshold >= 0:
    raise ValueError(f"fail_threshold must be a relative regret >= 0; got {fail_threshold}")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = lambda name: out / name
  tasks = _ordered_tasks(list(accuracies) + list(table["task"]), task_groups)
  pool_names = list(dict.fromkeys(table["pool"]))
  slugs = [_slug(p) for p in pool_names]
  if len(set(slugs)) != len(slugs):
    raise ValueError(f"Pool names {pool_names} clash as file names {slugs}; rename a pool.")
  if scores and pools is not None:
    unknown = [p for p in pool_names if p not in pools]
    if unknown:
      raise ValueError(f"pools lacks the table's pool(s) {', '.join(unknown)}; "
                       f"given pools: {', '.join(pools)}")
  metrics = METRICS + ((("log_odds_regret", "Log-odds regret"),)
                       if "log_odds_regret" in table.columns else ())
  wd.write_text(path("selections.csv"), table.to_csv(index=False))

  acc_text, acc_csv = _accuracy_section(accuracies, entries, tasks, task_groups)
  wd.write_text(path("accuracy.csv"), acc_csv.to_csv(index=False))
  summary = [f"# {title}\n",
             f"From `selections.csv`: {len(table)} rows, {table['pool'].nunique()} pool(s), "
             f"{len(tasks)} task(s). Accuracies and regrets are in [0, 1]. The oracle has zero "
             "regret by definition and is left out of regret tables and figures; the random "
             "strategy's numbers are exact expectations over uniformly random B-subsets. "
             "Every figure links its data as CSV; 'missing' marks absent ground truth.\n",
             "## Fine-tuned accuracy\n", acc_text, "CSV: [accuracy.csv](accuracy.csv)\n"]

  for pool, slug in zip(pool_names, slugs):
    rows = table[table["pool"] == pool]
    strategies = _strategies(rows)
    colors = report_figures.strategy_colors(strategies)
    budgets = [b for b in REGRET_BUDGETS if b in set(rows["budget"])]
    missing = {t: m for t, m in zip(rows["task"], rows["missing"]) if isinstance(m, str) and m}

    md = [f"# Pool {pool!r}: regret per task\n",
          "Strategies x tasks; means are over the tasks with ground truth.\n"]
    csv_parts = []
    for b in budgets:
      for metric, label in metrics:
        wide = regret_table(table, pool, metric, b, tasks, task_groups)
        header = ["strategy"] + [f"{t}*" if t in missing else t for t in wide.columns]
        group_row = ["*group*"] + [task_groups.get(c, "") for c in wide.columns]
        body = [[s] + [_fmt(v) for v in wide.loc[s]] for s in wide.index]
        md += [f"## {label}, B={b}\n", _markdown(header, [group_row] + body)]
        frame = wide.reset_index()
        frame.insert(0, "budget", b)
        frame.insert(0, "metric", metric)
        csv_parts.append(frame)
    if missing:
      md.append("\\* ground truth missing for some pool models (left out of that task): " +
                "; ".join(f"{t}: {m.replace('+', ', ')}" for t, m in missing.items()) + "\n")
    wd.write_text(path(f"regret_{slug}.md"), "\n".join(md))
    if csv_parts:
      wd.write_text(path(f"regret_{slug}.csv"), _csv(pd.concat(csv_parts, ignore_index=True)))

    figures = []  # (caption, file stem): STEM.png and STEM.csv.
    def figure(caption, stem, fig, data):
      report_figures.write_figure(path(f"{stem}.png"), fig)
      wd.write_text(path(f"{stem}.csv"), _csv(data))
      figures.append((caption, stem))

    for b in budgets:
      values = regret_table(table, pool, "relative_regret", b, tasks, task_groups)
      figure(f"Relative regret per task, B={b}", f"relative_regret_{slug}_B{b}",
             *report_figures.regret_figure(values, pool, b, tasks, task_groups, colors))
    score_names = [s.split("/", 1)[1] for s in strategies if s.startswith("task_aware/")]
    for score in score_names:
      if report_figures.delta_panels(table, pool, score):
        figure(f"Relative delta per task, score {score}", f"delta_{slug}_{_slug(score)}",
               *report_figures.delta_figure(table, pool, score, tasks, task_groups))
    figure("Optimal picks vs budget", f"optimal_{slug}",
           *report_figures.optimal_figure(table, pool, strategies, colors))

    summary += [f"## Pool `{pool}`\n", _pool_summary(table, pool, tasks, missing, fail_threshold)]
    links = f"Tables: [regret_{slug}.md](regret_{slug}.md)"
    if csv_parts:
      links += f", [regret_{slug}.csv](regret_{slug}.csv)"
    summary.append(links + "\n")
    summary += [f"![{caption}]({stem}.png)\n\nData: [{stem}.csv]({stem}.csv)\n"
                for caption, stem in figures]

    if scores:
      members = pools[pool] if pools is not None else _pool_members(table, pool)
      corr = rank_correlation_table(scores, accuracies, tasks, task_groups, members)
      summary.append(f"### Rank correlation of scores with fine-tuned accuracy, pool `{pool}`\n")
      if not len(corr):
        summary.append("No scores for the report's tasks.\n")
        continue
      stem = f"rank_correlation_{slug}"
      heatmap = report_figures.correlation_figure(corr, pool, tasks, task_groups)
      report_figures.write_figure(path(f"{stem}.png"), heatmap)
      wd.write_text(path(f"{stem}.csv"), _csv(corr))
      summary += [_correlation_summary(corr),
                  f"![Rank correlation per task]({stem}.png)\n\nData: [{stem}.csv]({stem}.csv)\n"]

  summary += list(sections)
  summary.append("Full table: [selections.csv](selections.csv)\n")
  wd.write_text(path("summary.md"), "\n".join(summary))
  return os.fspath(path("summary.md"))
