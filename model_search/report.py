"""The report: CSV and Markdown tables and matplotlib figures from the selection table.

The figures follow Renggli et al., "Which Model to Transfer?": relative regret per task grouped
by VTAB group for B = 1 and B = 2 (Figs. 3-4), relative delta between strategies per task
(Figs. 5-6) and the fraction of tasks whose selection holds an oracle-best model vs the budget
(Fig. 7). Figures are drawn on matplotlib Figure objects (Agg), never through pyplot, so the
report neither needs a display nor touches the global backend. Every file is written atomically
(workdir.write_text / write_bytes: temp file, then rename).
"""

from __future__ import annotations

import io
import math
import os
import re
from typing import Mapping, Sequence

from etils import epath
import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np
import pandas as pd

from model_search import regret
from model_search import workdir as wd
from model_search.data.task import GROUPS
from model_search.models.zoo import ModelEntry

MISSING = "missing"
REGRET_BUDGETS = (1, 2)
METRICS = (("relative_regret", "Relative regret"), ("absolute_regret", "Absolute regret"))
GROUP_COLORS = {"natural": "#4c72b0", "specialized": "#dd8452", "structured": "#55a868"}
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
  return table


def _slug(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _write_figure(path: epath.Path, fig: Figure) -> None:
  FigureCanvasAgg(fig)  # Attaches an Agg canvas: no display, no global backend.
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  wd.write_bytes(path, buf.getvalue())


def _fmt(value: float | None) -> str:
  if value is None or math.isnan(value):
    return MISSING
  return f"{value:.3f}"


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


def _colors(strategies: Sequence[str]) -> dict[str, object]:
  """One fixed colour per strategy (random in grey), shared by all figures of a pool."""
  others = [s for s in strategies if s != "random"]
  cmap = matplotlib.colormaps["tab10" if len(others) <= 10 else "tab20"]
  colors = {s: cmap(i % cmap.N) for i, s in enumerate(others)}
  colors["random"] = "#9a9a9a"
  return colors


def _group_axis(ax, tasks, task_groups, centers) -> None:
  """Task labels, dashed separators between groups and group names above the axes."""
  ax.set_xticks(centers)
  ax.set_xticklabels(tasks, rotation=45, ha="right")
  ax.set_xlim(centers[0] - 0.7, centers[-1] + 0.7)
  spans = {}
  for t, x in zip(tasks, centers):
    spans.setdefault(task_groups[t], []).append(x)
  ordered = [g for g in GROUPS if g in spans]
  for g_prev, g in zip(ordered, ordered[1:]):
    ax.axvline((max(spans[g_prev]) + min(spans[g])) / 2, color="0.4", ls="--", lw=1)
  for g in ordered:
    ax.text((min(spans[g]) + max(spans[g])) / 2, 1.01, g, transform=ax.get_xaxis_transform(),
            ha="center", va="bottom", fontsize=10, fontweight="bold", color=GROUP_COLORS[g])


def _task_centers(tasks, task_groups) -> np.ndarray:
  """x positions with a gap of one slot between task groups."""
  xs, x, prev = [], 0.0, None
  for t in tasks:
    if prev is not None and task_groups[t] != prev:
      x += 0.6
    xs.append(x)
    x += 1.0
    prev = task_groups[t]
  return np.array(xs)


def _mark_missing(ax, x) -> None:
  ax.text(x, 0.0, MISSING, rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")


def _mark_zeros(ax, xs, heights, color) -> None:
  """A dot where a bar is exactly 0, so 'no loss' is visible and differs from 'missing'."""
  zero = np.asarray(heights) == 0.0
  if zero.any():
    ax.scatter(np.asarray(xs)[zero], np.zeros(zero.sum()), s=12, color=color, zorder=3,
               clip_on=False)


def _regret_figure(table, pool, budget, tasks, task_groups, colors) -> Figure:
  strategies = _strategies(table[table["pool"] == pool])
  values = regret_table(table, pool, "relative_regret", budget, tasks, task_groups)
  width = 0.84 / len(strategies)
  fig = Figure(figsize=(min(40, max(8, 1.5 + len(tasks) * (0.14 * len(strategies) + 0.35))),
                        5.0))
  ax = fig.add_subplot()
  centers = _task_centers(tasks, task_groups)
  for i, s in enumerate(strategies):
    offsets = centers - 0.42 + width * (i + 0.5)
    heights = values.loc[s, list(tasks)].to_numpy(dtype=float)
    ax.bar(offsets, heights, width, label=s, color=colors[s])
    _mark_zeros(ax, offsets, heights, colors[s])
  for t, x in zip(tasks, centers):
    if values[t].isna().all():
      _mark_missing(ax, x)
  _group_axis(ax, tasks, task_groups, centers)
  ax.set_ylabel("relative regret (0 = oracle)")
  ax.set_ylim(bottom=0)
  ax.set_title(f"Pool {pool!r}: relative regret per task, B={budget} (dots: exactly 0)",
               pad=22)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(title="strategy", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
  return fig


def _accuracy_of(table, pool, strategy, budget) -> pd.Series:
  rows = table[(table["pool"] == pool) & (table["strategy"] == strategy)
               & (table["budget"] == budget)]
  return rows.set_index("task")["accuracy"]


def _delta_panels(table, pool, score) -> list[tuple[str, str, int]]:
  budgets = set(table.loc[table["pool"] == pool, "budget"])
  panels = [(f"task_aware/{score}", "task_agnostic", 1)]
  if 2 in budgets:
    panels += [(f"hybrid/{score}", "task_agnostic", 2),
               (f"hybrid/{score}", f"task_aware/{score}", 2)]
  return [p for p in panels if p[2] in budgets]


def _delta_figure(table, pool, score, tasks, task_groups) -> Figure:
  panels = _delta_panels(table, pool, score)
  fig = Figure(figsize=(max(8, 1.5 + 0.45 * len(tasks)), 3.6 * len(panels)))
  axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
  centers = _task_centers(tasks, task_groups)
  for ax, (s1, s2, b) in zip(axes, panels):
    a1, a2 = _accuracy_of(table, pool, s1, b), _accuracy_of(table, pool, s2, b)
    deltas = []
    for t, x in zip(tasks, centers):
      if t in a1.index and t in a2.index:
        d = regret.relative_delta(a1[t], a2[t])
        deltas.append(d)
        ax.bar(x, d, 0.7, color=GROUP_COLORS[task_groups[t]])
        _mark_zeros(ax, [x], [d], GROUP_COLORS[task_groups[t]])
      else:
        _mark_missing(ax, x)
    ax.axhline(0, color="black", lw=0.8)
    _group_axis(ax, tasks, task_groups, centers)
    mean = f"mean {np.mean(deltas):+.3f}" if deltas else "no data"
    ax.set_title(f"{s1} vs {s2}, B={b} (> 0: {s1} better; {mean})", pad=22)
    ax.set_ylabel("relative delta")
    ax.grid(axis="y", alpha=0.3)
    lim = max([0.05] + [abs(d) for d in deltas]) * 1.15
    ax.set_ylim(-lim, lim)
  handles = [axes[0].bar([0], [0], color=c, label=g) for g, c in GROUP_COLORS.items()
             if g in {task_groups[t] for t in tasks}]
  axes[0].legend(handles=handles, title="task group", loc="upper left",
                 bbox_to_anchor=(1.01, 1.0))
  fig.suptitle(f"Pool {pool!r}: relative delta per task, score {score!r} (dots: exactly 0)")
  fig.subplots_adjust(hspace=0.9)
  return fig


def _optimal_figure(table, pool, colors) -> Figure:
  rows = table[table["pool"] == pool]
  groups = [g for g in GROUPS if g in set(rows["group"])]
  panels = [("all tasks", rows)] + [(g, rows[rows["group"] == g]) for g in groups]
  fig = Figure(figsize=(4.2 * len(panels) + 2.5, 4.4), layout="constrained")
  axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
  for ax, (name, part) in zip(axes, panels):
    frac = part.groupby(["strategy", "budget"])["optimal"].mean()
    ntasks = part["task"].nunique()
    strategies = _strategies(rows)
    for i, s in enumerate(strategies):
      curve = frac.loc[s]
      # Earlier strategies drawn wider, so curves that coincide stay visible.
      lw = 1.2 + 2.0 * (len(strategies) - 1 - i) / max(1, len(strategies) - 1)
      ax.plot(curve.index, curve.to_numpy(), marker="o", ms=2 + 1.5 * lw, lw=lw,
              color=colors[s], label=s, ls="--" if s == "random" else "-")
    ax.set_title(f"{name} ({ntasks} task{'s' if ntasks != 1 else ''})")
    ax.set_xlabel("budget B (models fine-tuned)")
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("fraction of tasks with an\noracle-best model selected")
  axes[-1].legend(title="strategy", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
  fig.suptitle(f"Pool {pool!r}: optimal picks vs budget (random: expected)")
  return fig


def _pool_summary(table, pool) -> str:
  """Best strategy by mean relative regret at B=1, 2 and each strategy's worst tasks."""
  rows = table[table["pool"] == pool]
  lines, cells = [], {}
  budgets = [b for b in REGRET_BUDGETS if b in set(rows["budget"])]
  for b in budgets:
    part = rows[(rows["budget"] == b) & (rows["strategy"] != "oracle")]
    means = part.groupby("strategy", sort=False)["relative_regret"].mean()
    best = [s for s, v in means.items() if v == means.min()]
    lines.append(f"- B={b}: lowest mean relative regret: **{', '.join(best)}** "
                 f"({means.min():.3f}, over {part['task'].nunique()} tasks)")
    for s, group in part.groupby("strategy", sort=False):
      worst = group[group["relative_regret"] > 0].nlargest(3, "relative_regret")
      text = ", ".join(f"{t} ({v:.3f})" for t, v in zip(worst["task"], worst["relative_regret"]))
      cells.setdefault(s, {})[b] = (f"{means[s]:.3f}", text or "none (0 on every task)")
  if not budgets:
    return "No budget of 1 or 2 in the table for this pool.\n"
  header = ["strategy"]
  for b in budgets:
    header += [f"mean rel. regret B={b}", f"largest rel. regret B={b}"]
  body = [[s] + [c for b in budgets for c in per_b.get(b, (MISSING, ""))]
          for s, per_b in cells.items()]
  return "\n".join(lines) + "\n\n" + _markdown(header, body)


def write_report(table: pd.DataFrame, out_dir: str | os.PathLike[str], *,
                 accuracies: Mapping[str, Mapping[str, float]],
                 entries: Sequence[ModelEntry], task_groups: Mapping[str, str],
                 title: str = "model_search report") -> str:
  """Writes the report's CSVs, Markdown tables and PNG figures, and summary.md, into out_dir.

  Files (POOL and SCORE made filename-safe):
    selections.csv                the full table;
    accuracy.csv                  fine-tuned accuracy, models x tasks ('missing' where absent);
    regret_POOL.md, .csv          absolute and relative regret at B=1 and B=2, strategies x
                                  tasks with group means and the overall mean;
    relative_regret_POOL_B1.png   (and _B2) relative regret per task, grouped by task group;
    delta_POOL_SCORE.png          relative delta per task: task-aware vs task-agnostic (B=1),
                                  hybrid vs task-agnostic and hybrid vs task-aware (B=2);
    optimal_POOL.png              fraction of tasks with an oracle-best pick vs B;
    summary.md                    the overview, linking all of the above.

  Args:
    table: the selection table from `regret.evaluate_selections` (or `read_table`).
    out_dir: the report folder (local or gs://), created if needed.
    accuracies: task -> model -> fine-tuned test accuracy (the table's ground truth).
    entries: the model entries (for expert vs generalist).
    task_groups: task -> 'natural' | 'specialized' | 'structured'.
    title: the summary's title.

  Returns:
    The path of summary.md.
  """
  lacking = [c for c in regret.COLUMNS if c not in table.columns]
  if lacking:
    raise ValueError(f"Not a selection table: lacks columns {lacking}; expected columns: "
                     f"{', '.join(regret.COLUMNS)}")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  path = lambda name: out / name
  tasks = _ordered_tasks(list(accuracies) + list(table["task"]), task_groups)
  pools = list(dict.fromkeys(table["pool"]))
  slugs = [_slug(p) for p in pools]
  if len(set(slugs)) != len(slugs):
    raise ValueError(f"Pool names {pools} clash as file names {slugs}; rename a pool.")
  wd.write_text(path("selections.csv"), table.to_csv(index=False))

  acc_text, acc_csv = _accuracy_section(accuracies, entries, tasks, task_groups)
  wd.write_text(path("accuracy.csv"), acc_csv.to_csv(index=False))
  summary = [f"# {title}\n",
             f"From `selections.csv`: {len(table)} rows, {table['pool'].nunique()} pool(s), "
             f"{len(tasks)} task(s). Accuracies and regrets are in [0, 1]. The oracle has zero "
             "regret by definition and is left out of regret tables and figures; the random "
             "strategy's numbers are exact expectations over uniformly random B-subsets.\n",
             "## Fine-tuned accuracy\n", acc_text, "CSV: [accuracy.csv](accuracy.csv)\n"]

  for pool, slug in zip(pools, slugs):
    rows = table[table["pool"] == pool]
    strategies = _strategies(rows)
    colors = _colors(strategies)
    budgets = [b for b in REGRET_BUDGETS if b in set(rows["budget"])]
    missing = {t: m for t, m in zip(rows["task"], rows["missing"]) if isinstance(m, str) and m}

    md = [f"# Pool {pool!r}: regret per task\n",
          "Strategies x tasks; means are over the tasks with ground truth.\n"]
    csv_parts = []
    for b in budgets:
      for metric, label in METRICS:
        wide = regret_table(table, pool, metric, b, tasks, task_groups)
        header = ["strategy"] + [f"{t}*" if t in missing else t for t in wide.columns]
        group_row = ["*group*"] + [task_groups.get(c, "") for c in wide.columns]
        body = [[s] + [_fmt(v) for v in wide.loc[s]] for s in wide.index]
        md += [f"## {label}, B={b}\n", _markdown(header, [group_row] + body)]
        frame = wide.astype(object).where(wide.notna(), MISSING).reset_index()
        frame.insert(0, "budget", b)
        frame.insert(0, "metric", metric)
        csv_parts.append(frame)
    if missing:
      md.append("\\* ground truth missing for some pool models (left out of that task): " +
                "; ".join(f"{t}: {m.replace('+', ', ')}" for t, m in missing.items()) + "\n")
    wd.write_text(path(f"regret_{slug}.md"), "\n".join(md))
    if csv_parts:
      wd.write_text(path(f"regret_{slug}.csv"),
                    pd.concat(csv_parts, ignore_index=True).to_csv(index=False))

    figures = []
    for b in budgets:
      name = f"relative_regret_{slug}_B{b}.png"
      _write_figure(path(name), _regret_figure(table, pool, b, tasks, task_groups, colors))
      figures.append((f"Relative regret per task, B={b}", name))
    scores = [s.split("/", 1)[1] for s in strategies if s.startswith("task_aware/")]
    for score in scores:
      if _delta_panels(table, pool, score):
        name = f"delta_{slug}_{_slug(score)}.png"
        _write_figure(path(name), _delta_figure(table, pool, score, tasks, task_groups))
        figures.append((f"Relative delta per task, score {score}", name))
    name = f"optimal_{slug}.png"
    _write_figure(path(name), _optimal_figure(table, pool, colors))
    figures.append(("Optimal picks vs budget", name))

    summary += [f"## Pool `{pool}`\n", _pool_summary(table, pool)]
    links = f"Tables: [regret_{slug}.md](regret_{slug}.md)"
    if csv_parts:
      links += f", [regret_{slug}.csv](regret_{slug}.csv)"
    summary.append(links + "\n")
    summary += [f"![{caption}]({name})\n" for caption, name in figures]

  summary.append("Full table: [selections.csv](selections.csv)\n")
  wd.write_text(path("summary.md"), "\n".join(summary))
  return os.fspath(path("summary.md"))
