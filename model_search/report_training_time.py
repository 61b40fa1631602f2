"""The report's training-time section: predicted (training_time stage) vs actual fine-tuning.

Input: one record per fine-tuning run (`training_time_stage.collect`), with the predicted
batch-loss curve and steps to each threshold, and, where the `finetune` stage has run it, the
actual batch-loss curve with its steps and seconds. Output, in the report folder:

  training_time.csv        one row per (run, threshold): target loss, predicted and actual
                           steps and seconds, relative error of the steps;
  training_time.md         the same as a table per (model, task), with final losses;
  training_time_TASK.png   per task and model: actual vs predicted smoothed batch loss
                           (repeat 0, every learning rate), thresholds dotted; and its CSV;

and a Markdown section for summary.md (returned).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from etils import epath
from matplotlib.figure import Figure
import numpy as np
import pandas as pd

from model_search import report
from model_search import report_figures
from model_search import training_time_stage
from model_search import workdir as wd

MISSING = report_figures.MISSING


def _rel(pred, actual):
  if pred is None or actual is None or not actual:
    return math.nan
  return abs(pred - actual) / actual


def rows(records: Sequence[dict[str, Any]]) -> pd.DataFrame:
  """One row per (run, threshold); NaN where a side is missing or never reaches it."""
  out = []
  for r in records:
    for thr in r["thresholds"]:
      key = f"{thr:g}"
      pred = r["predicted_steps"].get(key)
      act = (r["actual_steps"] or {}).get(key)
      out.append({
          "model": r["model"], "task": r["task"], "repeat": r["repeat"],
          "learning_rate": r["learning_rate"], "threshold": thr,
          "target_loss": thr * r["initial_loss"],
          "predicted_steps": math.nan if pred is None else pred,
          "actual_steps": math.nan if act is None else act,
          "relative_error": _rel(pred, act),
          "predicted_seconds": math.nan if pred is None else pred * r["step_seconds"],
          "actual_seconds": (math.nan if act is None or r["actual_step_seconds"] is None
                             else act * r["actual_step_seconds"]),
          "has_actual_run": r["actual_batch_loss"] is not None,
      })
  return pd.DataFrame(out)


def _never(frame: pd.DataFrame) -> pd.DataFrame:
  """The CSV's view: 'never' where a side ran but did not reach the threshold ('missing'
  stays for an actual run that is absent)."""
  out = frame.astype(object)
  pred_never = frame["predicted_steps"].isna()
  act_never = frame["actual_steps"].isna() & frame["has_actual_run"]
  for col, never in (("predicted_steps", pred_never), ("predicted_seconds", pred_never),
                     ("actual_steps", act_never), ("actual_seconds", act_never)):
    out.loc[never, col] = "never"
  return out


def _q(values, p):
  return float(np.quantile(values, p)) if len(values) else math.nan


def _fmt(x, spec=".3g"):
  return MISSING if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _steps(x):
  return "never" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:g}"


def _figure(task: str, records: Sequence[dict[str, Any]]):
  models = list(dict.fromkeys(r["model"] for r in records))
  ncols = min(4, len(models))
  nrows = -(-len(models) // ncols)
  fig = Figure(figsize=(3.6 * ncols, 2.8 * nrows + 0.6))
  lrs = sorted({r["learning_rate"] for r in records})
  colors = {lr: f"C{i}" for i, lr in enumerate(lrs)}
  data = []
  for i, m in enumerate(models):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    for r in records:
      if r["model"] != m or r["repeat"] != 0:
        continue
      every = r["curve_every"]
      pred = training_time_stage.smoothed(r["predicted_batch_loss"], max(r["smooth"] // every, 1))
      steps = every * np.arange(1, len(pred) + 1)
      ax.plot(steps, pred, "--", color=colors[r["learning_rate"]],
              label=f"lr {r['learning_rate']:g} predicted")
      data += [{"model": m, "learning_rate": r["learning_rate"], "curve": "predicted",
                "step": int(s), "smoothed_batch_loss": float(v)} for s, v in zip(steps, pred)]
      if r["actual_batch_loss"] is not None:
        act = training_time_stage.smoothed(r["actual_batch_loss"], r["smooth"])
        ax.plot(np.arange(1, len(act) + 1), act, "-", color=colors[r["learning_rate"]],
                label=f"lr {r['learning_rate']:g} actual")
        data += [{"model": m, "learning_rate": r["learning_rate"], "curve": "actual",
                  "step": t + 1, "smoothed_batch_loss": float(v)} for t, v in enumerate(act)]
      for thr in r["thresholds"]:
        ax.axhline(thr * r["initial_loss"], color="0.6", lw=0.7, ls=":")
    ax.set_title(m, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.set_ylabel("batch loss (smoothed)", fontsize=8)
    ax.tick_params(labelsize=7)
    if i == 0:
      ax.legend(fontsize=7)
  fig.suptitle(f"{task}: fine-tuning loss, actual (solid) vs predicted from the linearised "
               "model (dashed); thresholds dotted", fontsize=10)
  fig.tight_layout()
  return fig, pd.DataFrame(data)


def write(records: Sequence[dict[str, Any]], out_dir) -> str:
  """Writes the section's files into out_dir; returns its Markdown for summary.md."""
  out = epath.Path(out_dir)
  frame = rows(records)
  wd.write_text(out / "training_time.csv", report._csv(_never(frame)))  # pylint: disable=protected-access
  md = ["# Predicted vs actual fine-tuning time\n",
        "Steps until the batch loss, smoothed, first reaches each threshold (a fraction of the "
        "initial loss); 'never' when it does not within the run.\n"]
  by_item: dict[tuple[str, str], list] = {}
  for r in records:
    by_item.setdefault((r["model"], r["task"]), []).append(r)
  for (m, t), rs in by_item.items():
    thresholds = rs[0]["thresholds"]
    header = ["repeat", "lr"] + [f"steps to {x:g} L0 (pred / actual)" for x in thresholds] + [
        "final loss (pred / actual)"]
    body = []
    for r in rs:
      act_curve = r["actual_batch_loss"]
      final_act = (None if act_curve is None
                   else float(training_time_stage.smoothed(act_curve, r["smooth"])[-1]))
      final_pred = float(training_time_stage.smoothed(
          r["predicted_batch_loss"], max(r["smooth"] // r["curve_every"], 1))[-1])
      body.append([r["repeat"], f"{r['learning_rate']:g}"] + [
          f"{_steps(r['predicted_steps'].get(f'{x:g}'))} / "
          f"{_steps((r['actual_steps'] or {}).get(f'{x:g}')) if act_curve is not None else MISSING}"
          for x in thresholds] + [f"{final_pred:.3f} / {_fmt(final_act, '.3f')}"])
    md += [f"## {m} on {t}\n", report._markdown(header, body)]  # pylint: disable=protected-access
  wd.write_text(out / "training_time.md", "\n".join(md))

  figures = []
  for task in dict.fromkeys(r["task"] for r in records):
    fig, data = _figure(task, [r for r in records if r["task"] == task])
    stem = f"training_time_{task}"
    report_figures.write_figure(out / f"{stem}.png", fig)
    wd.write_text(out / f"{stem}.csv", report._csv(data))  # pylint: disable=protected-access
    figures.append(stem)
  return _summary(frame, records) + "".join(
      f"\n![Predicted vs actual loss, {s[len('training_time_'):]}]({s}.png)\n\nData: "
      f"[{s}.csv]({s}.csv)\n" for s in figures)


def _summary(frame: pd.DataFrame, records) -> str:
  lines = ["## Predicted training time\n",
           "Each fine-tuning run replayed, before training, on the model linearised at its "
           "start (`training_time` stage: same loss, batches, schedule, momentum and clipping; "
           "at the zero head the linearised model is a linear probe on the backbone's "
           "features). Thresholds are fractions of the initial loss; steps count until the "
           "smoothed batch loss reaches them.\n"]
  if not len(frame):
    return "\n".join(lines + ["No predictions.\n"])
  have = frame[frame["has_actual_run"]]
  both = have.dropna(subset=["predicted_steps", "actual_steps"])
  pred_only = int((have["predicted_steps"].notna() & have["actual_steps"].isna()).sum())
  act_only = int((have["predicted_steps"].isna() & have["actual_steps"].notna()).sum())
  neither = int((have["predicted_steps"].isna() & have["actual_steps"].isna()).sum())
  lines.append(f"- {len(frame)} (run, threshold) pairs; {len(frame) - len(have)} without an "
               f"actual run yet.")
  if len(have):
    err = both["relative_error"].to_numpy()
    lines.append(f"- Reached by both: {len(both)}; relative error of the predicted steps: "
                 f"median {_fmt(_q(err, 0.5), '.1%')}, 90th percentile "
                 f"{_fmt(_q(err, 0.9), '.1%')}.")
    lines.append(f"- Reached only as predicted: {pred_only}; only in the actual run: "
                 f"{act_only}; by neither: {neither}.")
  pred_secs = sum(r["prediction_seconds"] for r in records)
  speed_secs = sum(r.get("speed_seconds", 0.0) for r in records)
  train_secs = [r["actual_train_seconds"] for r in records
                if r.get("actual_train_seconds") is not None]
  cost = (f"- Cost: the replays took {pred_secs:.1f} s in all and the step-speed measurement "
          f"{speed_secs:.1f} s (the features are shared with the scores); ")
  if train_secs:
    cost += (f"the {len(train_secs)} actual runs trained for {sum(train_secs):.1f} s, "
             f"compilation included ({sum(train_secs) / max(pred_secs + speed_secs, 1e-9):.1f}x "
             "the prediction).")
  else:
    cost += "no actual run recorded its training time."
  lines.append(cost)
  lines.append("\nTables: [training_time.md](training_time.md), "
               "[training_time.csv](training_time.csv)\n")
  return "\n".join(lines)
