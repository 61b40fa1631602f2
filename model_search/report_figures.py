"""The report's figures: matplotlib Figures of the selection table, and the data each draws.

The figures follow Renggli et al., "Which Model to Transfer?": relative regret per task grouped
by VTAB group for B = 1 and B = 2 (Figs. 3-4), relative delta between strategies per task
(Figs. 5-6) and the fraction of tasks whose selection holds an oracle-best model vs the budget
(Fig. 7), plus a heatmap of each score's rank correlation with fine-tuned accuracy per task
(weighted Kendall tau, the headline metric of the paper's successors, and Spearman;
`rank_correlation_table` computes it). Each figure function returns the Figure with a DataFrame
of the numbers it draws, which `report.write_report` writes as the CSV next to the PNG.
Figures are drawn on matplotlib Figure objects (Agg), never through pyplot, so the report
neither needs a display nor touches the global backend; `write_figure` saves one atomically.
"""

from __future__ import annotations

import io
import math
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

MISSING = "missing"  # An absent value in every table and figure of the report (never 0).
GROUP_COLORS = {"natural": "#4c72b0", "specialized": "#dd8452", "structured": "#55a868"}
# regret.rank_correlations' keys, in CSV order; the heatmap draws the first two.
CORRELATIONS = ("weighted_tau", "spearman", "kendall", "pearson")
CORRELATION_LABELS = {"weighted_tau": "weighted Kendall tau", "spearman": "Spearman rho",
                      "kendall": "Kendall tau-b", "pearson": "Pearson r"}
NOT_AVAILABLE = "n/a"  # A heatmap cell without a correlation (< 2 models, or constant).


def write_figure(path: epath.Path, fig: Figure) -> None:
  """Saves fig as a PNG at path, atomically (workdir.write_bytes: temp file, then rename).

  Args:
    path: the PNG file.
    fig: a Figure from this module.
  """
  FigureCanvasAgg(fig)  # Attaches an Agg canvas: no display, no global backend.
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
  wd.write_bytes(path, buf.getvalue())


def _family(strategy: str) -> str:
  """'task_aware/S' and 'hybrid/S' -> S; 'task_agnostic*' -> 'task_agnostic'; else itself."""
  if "/" in strategy:
    return strategy.split("/", 1)[1]
  return "task_agnostic" if strategy.startswith("task_agnostic") else strategy


def strategy_colors(strategies: Sequence[str]) -> dict[str, object]:
  """One fixed colour per strategy, shared by all figures of a pool.

  A hue per family (`_family`): its first strategy dark, the next light (task_aware/S and
  hybrid/S of one score S look alike); random in grey, so tab20's grey pair is skipped.

  Args:
    strategies: the pool's strategies.

  Returns:
    strategy -> matplotlib colour, for every strategy and 'random'.
  """
  pairs = matplotlib.colormaps["tab20"].colors  # (dark, light) pairs of one hue.
  hues = [h for h in range(len(pairs) // 2) if h != 7]
  families, seen, colors = [], {}, {}
  for s in strategies:
    if s == "random":
      continue
    f = _family(s) if seen.get(_family(s), 0) < 2 else s  # A third gets a hue of its own.
    if f not in families:
      families.append(f)
    shade = seen.get(f, 0)
    seen[f] = shade + 1
    colors[s] = pairs[2 * hues[families.index(f) % len(hues)] + shade]
  colors["random"] = "#9a9a9a"
  return colors


def _group_axis(ax, tasks, task_groups, centers) -> None:
  """Task labels, dashed separators between groups and group names above the axes."""
  ax.set_xticks(centers)
  ax.set_xticklabels(tasks, rotation=45, ha="right", rotation_mode="anchor")
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


def regret_figure(values: pd.DataFrame, pool: str, budget: int, tasks: Sequence[str],
                  task_groups: Mapping[str, str],
                  colors: Mapping[str, object]) -> tuple[Figure, pd.DataFrame]:
  """Figs. 3-4 and the bars' data: task, group, strategy, budget, relative_regret.

  One row of bars, or one row per task group (shared y) where one row would be too wide to
  read at page width.

  Args:
    values: the pool's relative regrets at this budget, strategies x tasks, NaN = missing
      (`report.regret_table`); its index gives the strategies and their order.
    pool: the pool name.
    budget: the budget B.
    tasks: the tasks, in this order.
    task_groups: task -> group.
    colors: strategy -> colour (`strategy_colors`).

  Returns:
    The figure and its data, one row per (task, strategy).
  """
  strategies = list(values.index)
  per_task = 0.09 * len(strategies) + 0.3  # Inches of x-axis per task.
  rows = [list(tasks)]
  if 1.5 + per_task * len(tasks) > 16:
    rows = [[t for t in tasks if task_groups[t] == g] for g in GROUPS]
    rows = [r for r in rows if r]
  slots = max(len(r) for r in rows)
  fig = Figure(figsize=(max(8, 2.5 + per_task * slots), 1.2 + 3.2 * len(rows)),
               layout="constrained")
  axes = fig.subplots(len(rows), 1, sharey=True, squeeze=False)[:, 0]
  width = 0.84 / len(strategies)
  for ax, row in zip(axes, rows):
    centers = _task_centers(row, task_groups)
    for i, s in enumerate(strategies):
      offsets = centers - 0.42 + width * (i + 0.5)
      heights = values.loc[s, row].to_numpy(dtype=float)
      ax.bar(offsets, heights, width, label=s, color=colors[s])
      _mark_zeros(ax, offsets, heights, colors[s])
    for t, x in zip(row, centers):
      if values[t].isna().all():
        _mark_missing(ax, x)
    _group_axis(ax, row, task_groups, centers)
    if len(rows) > 1:
      ax.set_xlim(-0.7, slots - 0.3)  # The same bar width in every row.
    ax.set_ylabel("relative regret\n(0 = oracle)")
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylim(bottom=0)  # Shared: only once every row is drawn.
  axes[0].legend(title="strategy", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
  fig.suptitle(f"Pool {pool!r}: relative regret per task, B={budget} (dots: exactly 0)")
  data = pd.DataFrame([dict(task=t, group=task_groups[t], strategy=s, budget=budget,
                            relative_regret=values.loc[s, t]) for t in tasks for s in strategies])
  return fig, data


def _accuracy_of(table, pool, strategy, budget) -> pd.Series:
  rows = table[(table["pool"] == pool) & (table["strategy"] == strategy)
               & (table["budget"] == budget)]
  return rows.set_index("task")["accuracy"]


def delta_panels(table: pd.DataFrame, pool: str, score: str) -> list[tuple[str, str, int]]:
  """The (strategy_1, strategy_2, budget) panels of score's delta figure that the table has.

  Args:
    table: the selection table.
    pool: the pool name.
    score: the score name S of task_aware/S and hybrid/S.

  Returns:
    Up to three panels; empty where the pool has none, so no delta figure.
  """
  rows = table[table["pool"] == pool]
  budgets, present = set(rows["budget"]), set(rows["strategy"])
  panels = [(f"task_aware/{score}", "task_agnostic", 1),
            (f"hybrid/{score}", "task_agnostic", 2),
            (f"hybrid/{score}", f"task_aware/{score}", 2)]
  return [p for p in panels if p[2] in budgets and p[0] in present and p[1] in present]


def delta_figure(table: pd.DataFrame, pool: str, score: str, tasks: Sequence[str],
                 task_groups: Mapping[str, str]) -> tuple[Figure, pd.DataFrame]:
  """Figs. 5-6 and the bars' data: one row per (panel, task), NaN where a side is missing.

  Args:
    table: the selection table.
    pool: the pool name.
    score: the score name; the panels are `delta_panels` (at least one).
    tasks: the tasks, in this order.
    task_groups: task -> group.

  Returns:
    The figure and its data: strategy_1, strategy_2, budget, task, group, accuracy_1,
    accuracy_2, relative_delta.
  """
  panels = delta_panels(table, pool, score)
  fig = Figure(figsize=(max(8, 1.5 + 0.45 * len(tasks)), 3.6 * len(panels)),
               layout="constrained")
  axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
  centers = _task_centers(tasks, task_groups)
  data = []
  for ax, (s1, s2, b) in zip(axes, panels):
    a1, a2 = _accuracy_of(table, pool, s1, b), _accuracy_of(table, pool, s2, b)
    deltas = []
    for t, x in zip(tasks, centers):
      d = math.nan
      if t in a1.index and t in a2.index:
        d = regret.relative_delta(a1[t], a2[t])
        deltas.append(d)
        ax.bar(x, d, 0.7, color=GROUP_COLORS[task_groups[t]])
        _mark_zeros(ax, [x], [d], GROUP_COLORS[task_groups[t]])
      else:
        _mark_missing(ax, x)
      data.append(dict(strategy_1=s1, strategy_2=s2, budget=b, task=t, group=task_groups[t],
                       accuracy_1=a1.get(t, math.nan), accuracy_2=a2.get(t, math.nan),
                       relative_delta=d))
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
  return fig, pd.DataFrame(data)


def optimal_figure(table: pd.DataFrame, pool: str, strategies: Sequence[str],
                   colors: Mapping[str, object]) -> tuple[Figure, pd.DataFrame]:
  """Fig. 7 and the curves' data: tasks (all / a group), strategy, budget, fraction, n_tasks.

  Args:
    table: the selection table.
    pool: the pool name.
    strategies: the pool's strategies to draw, in this order (without the oracle).
    colors: strategy -> colour (`strategy_colors`).

  Returns:
    The figure and its data: tasks, strategy, budget, fraction_optimal, n_tasks.
  """
  rows = table[table["pool"] == pool]
  groups = [g for g in GROUPS if g in set(rows["group"])]
  panels = [("all tasks", rows)] + [(g, rows[rows["group"] == g]) for g in groups]
  ncols = 2 if len(panels) == 4 else len(panels)  # 2 x 2 stays readable at page width.
  nrows = math.ceil(len(panels) / ncols)
  fig = Figure(figsize=(4.2 * ncols + 2.5, 0.6 + 3.8 * nrows), layout="constrained")
  grid = fig.subplots(nrows, ncols, sharey=True, squeeze=False)
  axes = grid.ravel()
  data = []
  for ax, (name, part) in zip(axes, panels):
    stats = part.groupby(["strategy", "budget"]).agg(fraction_optimal=("optimal", "mean"),
                                                     n_tasks=("task", "nunique"))
    ntasks = part["task"].nunique()
    for i, s in enumerate(strategies):
      if s not in stats.index.get_level_values("strategy"):
        continue  # E.g. a score computed on other groups' tasks only.
      curve = stats.loc[s]
      data += [dict(tasks=name, strategy=s, budget=b, fraction_optimal=float(r.fraction_optimal),
                    n_tasks=int(r.n_tasks)) for b, r in curve.iterrows()]
      # Earlier strategies drawn wider, so curves that coincide stay visible.
      lw = 1.2 + 2.0 * (len(strategies) - 1 - i) / max(1, len(strategies) - 1)
      ax.plot(curve.index, curve["fraction_optimal"].to_numpy(), marker="o", ms=2 + 1.5 * lw,
              lw=lw, color=colors[s], label=s, ls="--" if s == "random" else "-")
    ax.set_title(f"{name} ({ntasks} task{'s' if ntasks != 1 else ''})")
    ax.set_xlabel("budget B (models fine-tuned)")
    ax.set_ylim(-0.03, 1.03)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
  for ax in grid[:, 0]:
    ax.set_ylabel("fraction of tasks with an\noracle-best model selected")
  grid[0, -1].legend(title="strategy", loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
  fig.suptitle(f"Pool {pool!r}: optimal picks vs budget (random: expected)")
  return fig, pd.DataFrame(data)


def rank_correlation_table(scores: Mapping[str, Mapping[str, Mapping[str, float]]],
                           accuracies: Mapping[str, Mapping[str, float]],
                           tasks: Sequence[str], task_groups: Mapping[str, str],
                           members: Sequence[str] | None = None) -> pd.DataFrame:
  """Each score's rank correlation with fine-tuned accuracy per task, over one pool's models.

  A value uses the models with both a (non-NaN) score and ground truth; it is NaN (missing,
  never 0) with fewer than 2 such models or where a side is constant (`regret.rank_correlations`).

  Args:
    scores: task -> score name -> model -> score (higher = predicted better).
    accuracies: task -> model -> fine-tuned test accuracy in [0, 1].
    tasks: the tasks, in this order.
    task_groups: task -> group.
    members: the pool's models; None means every model.

  Returns:
    A long DataFrame with columns score (first-seen order), task, group, metric (one of
    CORRELATIONS), value and n_models (the number of models the value is computed over).
  """
  names = list(dict.fromkeys(n for t in tasks for n in scores.get(t, {})))
  keep = None if members is None else set(members)
  rows = []
  for name in names:
    for t in tasks:
      acc = {m: a for m, a in accuracies.get(t, {}).items() if keep is None or m in keep}
      sc = {m: float(v) for m, v in scores.get(t, {}).get(name, {}).items()
            if m in acc and not math.isnan(float(v))}
      values = regret.rank_correlations(sc, {m: acc[m] for m in sc}) if len(sc) >= 2 else {}
      rows += [dict(score=name, task=t, group=task_groups[t], metric=k,
                    value=values.get(k, math.nan), n_models=len(sc)) for k in CORRELATIONS]
  return pd.DataFrame(rows, columns=["score", "task", "group", "metric", "value", "n_models"])


def correlation_figure(corr: pd.DataFrame, pool: str, tasks: Sequence[str],
                       task_groups: Mapping[str, str]) -> Figure:
  """Scores x tasks heatmaps of weighted Kendall tau and Spearman; grey 'n/a' where missing.

  Args:
    corr: the pool's `rank_correlation_table` (non-empty); it is the figure's data.
    pool: the pool name.
    tasks: the tasks, in this order.
    task_groups: task -> group.

  Returns:
    The figure.
  """
  names = list(dict.fromkeys(corr["score"]))
  metrics = CORRELATIONS[:2]
  fig = Figure(figsize=(max(7.0, 3.2 + 0.62 * len(tasks)),
                        len(metrics) * (2.0 + 0.42 * len(names))), layout="constrained")
  axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
  cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="0.8")
  spans = {}
  for j, t in enumerate(tasks):
    spans.setdefault(task_groups[t], []).append(j)
  for ax, metric in zip(axes, metrics):
    grid = (corr[corr["metric"] == metric].pivot(index="score", columns="task", values="value")
            .reindex(index=names, columns=list(tasks)).to_numpy(dtype=float))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-1.0, vmax=1.0,
                      aspect="auto", interpolation="nearest")
    for (i, j), v in np.ndenumerate(grid):
      if math.isnan(v):
        ax.text(j, i, NOT_AVAILABLE, ha="center", va="center", fontsize=8, color="0.25",
                style="italic")
      else:
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                color="white" if abs(v) > 0.6 else "black")
    ax.set_yticks(range(len(names)), names)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", rotation_mode="anchor")
    for label, t in zip(ax.get_xticklabels(), tasks):
      label.set_color(GROUP_COLORS[task_groups[t]])
    for g, js in spans.items():
      if min(js) > 0:
        ax.axvline(min(js) - 0.5, color="white", lw=4)
      ax.text((min(js) + max(js)) / 2, 1.02, g, transform=ax.get_xaxis_transform(),
              ha="center", va="bottom", fontsize=10, fontweight="bold", color=GROUP_COLORS[g])
    ax.set_title(f"{CORRELATION_LABELS[metric]} ({metric})", pad=20)
    ax.tick_params(length=0)
  fig.colorbar(image, ax=list(axes), ticks=[-1, -0.5, 0, 0.5, 1], shrink=0.9,
               label="rank correlation of score with fine-tuned accuracy")
  fig.suptitle(f"Pool {pool!r}: score vs fine-tuned accuracy per task (grey {NOT_AVAILABLE}: "
               "< 2 models with ground truth, or constant)")
  return fig

