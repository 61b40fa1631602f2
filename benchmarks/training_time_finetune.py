"""The `training_time` stage's prediction vs real fine-tuning runs of the finetune protocol.

  python benchmarks/training_time_finetune.py      # 4 models x 3 tasks x 2 lrs x 2 batches
  python benchmarks/training_time_finetune.py --models=cnn_small --tasks=mini_digits

For each (model, task, learning rate, batch size), a fine-tuning run as the `finetune` stage
trains it (`finetune.Finetuner`: zero head, softmax cross-entropy, SGD with momentum 0.9,
the global gradient norm clipped to 1, the learning rate decayed 10x at 30/60/90% of the
steps, batch norm in training mode) on the first N of train800, with the stage's batches
(`finetune.batch_indices`), is predicted before training by the `training_time` stage's
replay on the linearised model (`function_space.simulate` on the feature kernel: at the zero
head, the NTK is (Phi Phi^T + 1) (x) I_C). The predicted steps until the smoothed batch loss
reaches each threshold (fractions of the initial loss ln C) are compared with
(a) the linearised model trained for real (optax on a zero linear head over the same
features: an independent check, equal to the prediction up to float rounding), and
(b) the real network. Relative error |pred - actual| / actual over the thresholds both reach;
the thresholds reached by only one side are counted apart.

Wall time: the prediction (inference-mode features of the N examples, kernel, replays)
against the real runs it predicts (compilation excluded on both sides: the feature extractor
and the replay are warmed up once per shape, the training step once per model and batch).
"""

from __future__ import annotations

import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import common  # pylint: disable=g-import-not-at-top
from model_search import features as features_lib  # pylint: disable=g-import-not-at-top
from model_search import finetune
from model_search import function_space
from model_search import training_time_stage as tts
from model_search.data import mini
from model_search.data import pipeline
from model_search.models import hub

_MODELS = flags.DEFINE_list("models", ["cnn_small", "resnet_broad", "mixer_broad",
                                       "expert_digits"], "Mini-zoo models.")
_TASKS = flags.DEFINE_list("tasks", ["mini_digits", "mini_textures", "mini_count"],
                           "Mini-suite tasks.")
_LRS = flags.DEFINE_list("learning_rates", ["0.1", "0.01"], "Base learning rates.")
_BATCHES = flags.DEFINE_list("batch_size", ["32", "128"], "Batch sizes.")
_THRESHOLDS = flags.DEFINE_list("thresholds", ["0.95", "0.9", "0.8", "0.7"],
                                "Targets: fractions of the initial loss ln C.")
_STEPS = flags.DEFINE_integer("steps", 200, "Steps of each run.")
_N = flags.DEFINE_integer("num_examples", 800, "Training examples (first N of train800).")
_SMOOTH = flags.DEFINE_integer("smooth", 10, "Running-mean window over batch losses.")
_CLIP = flags.DEFINE_float("grad_clip_norm", 1.0, "Global-norm clip (0: none).")
_SEED = flags.DEFINE_integer("seed", 0, "Batch order seed.")
_CACHE = flags.DEFINE_string("cache_dir", "", "model_search cache (mini zoo); '' = default.")


def _linear_probe_run(phi, labels, indices, lrs, momentum, clip):
  """optax on a zero-initialised linear head over fixed features: the batch losses."""
  x, y = jnp.asarray(phi), jnp.asarray(labels)

  def run(num_classes):
    sgd = optax.sgd(lambda t: jnp.asarray(lrs)[t], momentum=momentum)
    tx = optax.chain(optax.clip_by_global_norm(clip), sgd) if clip else sgd
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}

    def loss_fn(p, idx):
      return optax.softmax_cross_entropy_with_integer_labels(
          x[idx] @ p["w"] + p["b"], y[idx]).mean()

    def step(carry, idx):
      p, s = carry
      value, g = jax.value_and_grad(loss_fn)(p, idx)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), value

    _, losses = jax.lax.scan(step, (params, tx.init(params)), jnp.asarray(indices))
    return losses

  return run


def _q(errs, p):
  errs = np.sort(np.asarray(errs))
  return errs[min(len(errs) - 1, int(math.ceil(p * len(errs))) - 1)] if len(errs) else math.nan


def main(argv):
  del argv
  entries, data_dir = common.mini_zoo(_CACHE.value)
  tasks = {t: mini.get_task(t) for t in _TASKS.value}
  head_classes = max(t.num_classes for t in tasks.values())
  steps, n, m, clip = _STEPS.value, _N.value, 0.9, _CLIP.value or None
  decay_at = (0.3, 0.6, 0.9)
  fracs = [float(f) for f in _THRESHOLDS.value]
  errs_lin, errs_real, one_sided, rows = [], [], {"pred_only": 0, "real_only": 0}, []
  secs_pred, secs_real, secs_lin, secs_compile = 0.0, 0.0, 0.0, 0.0
  print("| model | task | lr | B | threshold | predicted | linearised | real | err lin | "
        "err real |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for model_name in _MODELS.value:
    entry = entries[model_name]
    model = hub.load(entry.handle)
    size = entry.input_size or model.input_size
    tuner = finetune.Finetuner(model, head_classes=head_classes, momentum=m, steps=steps,
                               decay_at=decay_at, warmup_steps=0, eval_batch_size=200,
                               grad_clip_norm=clip)
    extractor = features_lib.Extractor(model, image_size=size, batch_size=256)
    warmed = set()
    for task_name, task in tasks.items():
      images, labels = pipeline.load_split(task, "train800", data_dir=data_dir)
      x = pipeline.to_model_input(images[:n], image_size=size, value_range=model.value_range)
      y = np.asarray(labels[:n])
      c = task.num_classes
      loss0 = math.log(c)
      if "features" not in warmed:
        start = time.perf_counter()
        extractor(images[:256])  # Compiles the extractor's batch shape.
        secs_compile += time.perf_counter() - start
        warmed.add("features")
      start = time.perf_counter()
      phi = extractor(images[:n])["features"]
      theta = function_space.feature_kernel(phi)
      secs_pred += time.perf_counter() - start
      for batch in map(int, _BATCHES.value):
        indices = finetune.batch_indices(n, steps=steps, batch_size=batch, seed=_SEED.value)
        if batch not in warmed:
          tuner.train(0.01, x, y, c, indices[:2])  # Compiles the training step.
          warmed.add(batch)
        for lr in map(float, _LRS.value):
          lrs = np.asarray([float(finetune.lr_schedule(lr, t, steps=steps, decay_at=decay_at,
                                                       warmup_steps=0))
                            for t in range(steps)], np.float32)
          sim = lambda: function_space.simulate(  # pylint: disable=cell-var-from-loop
              theta, np.zeros((n, c)), y, indices, learning_rate=lrs, momentum=m,
              grad_clip_norm=clip)
          if ("replay", c, batch) not in warmed:
            start = time.perf_counter()
            sim()
            secs_compile += time.perf_counter() - start
            warmed.add(("replay", c, batch))
          start = time.perf_counter()
          pred = sim().batch_loss
          secs_pred += time.perf_counter() - start
          probe = jax.jit(_linear_probe_run(phi, y, indices, lrs, m, clip), static_argnums=0)
          probe(c).block_until_ready()
          start = time.perf_counter()
          lin = np.asarray(probe(c))
          secs_lin += time.perf_counter() - start
          start = time.perf_counter()
          _, real = tuner.train(lr, x, y, c, indices)
          secs_real += time.perf_counter() - start
          for f in fracs:
            target = f * loss0
            p, a_lin, a_real = (tts.steps_to(curve, target, _SMOOTH.value)
                                for curve in (pred, lin, real))
            e_lin = abs(p - a_lin) / a_lin if math.isfinite(p) and math.isfinite(a_lin) else None
            e_real = (abs(p - a_real) / a_real if math.isfinite(p) and math.isfinite(a_real)
                      else None)
            if e_lin is not None:
              errs_lin.append(e_lin)
            if e_real is not None:
              errs_real.append(e_real)
            elif math.isfinite(p) != math.isfinite(a_real):
              one_sided["pred_only" if math.isfinite(p) else "real_only"] += 1
            rows.append((model_name, task_name, lr, batch, f, p, a_lin, a_real))
            fmt = lambda e: "-" if e is None else f"{e:.1%}"
            print(f"| {model_name} | {task_name} | {lr:g} | {batch} | {f:g} | {p:g} | "
                  f"{a_lin:g} | {a_real:g} | {fmt(e_lin)} | {fmt(e_real)} |", flush=True)
          print(f"<!-- final smoothed batch loss: predicted "
                f"{tts.smoothed(pred, _SMOOTH.value)[-1]:.4f}, linearised "
                f"{tts.smoothed(lin, _SMOOTH.value)[-1]:.4f}, real "
                f"{tts.smoothed(real, _SMOOTH.value)[-1]:.4f} -->", flush=True)
  settings = len({r[:4] for r in rows})
  print(f"\nsettings: {settings}; (setting, threshold) pairs: {len(rows)}")
  for name, errs in (("linearised", errs_lin), ("real network", errs_real)):
    print(f"relative error vs {name} ({len(errs)} thresholds reached by both): median "
          f"{_q(errs, 0.5):.1%}, 90th percentile {_q(errs, 0.9):.1%}")
  # One-sided pairs with the side that never reaches the threshold put at the horizon: a
  # lower bound on their error, over every pair either side reaches.
  capped = [abs(min(r[5], steps) - min(r[7], steps)) / min(r[7], steps) for r in rows
            if math.isfinite(r[5]) or math.isfinite(r[7])]
  print(f"relative error vs real network over the {len(capped)} thresholds either side "
        f"reaches, a side that never does counted at {steps} steps (a lower bound): median "
        f"{_q(capped, 0.5):.1%}, 90th percentile {_q(capped, 0.9):.1%}")
  print(f"reached only as predicted: {one_sided['pred_only']}; only by the real network: "
        f"{one_sided['real_only']}; by neither: "
        f"{sum(1 for r in rows if not math.isfinite(r[5]) and not math.isfinite(r[7]))}")
  bias = [math.log(r[5] / r[7]) for r in rows if math.isfinite(r[5]) and math.isfinite(r[7])]
  if bias:
    print(f"median predicted / real steps: {math.exp(float(np.median(bias))):.3f}")
  print(f"wall time: prediction {secs_pred:.1f} s (features, kernel, replays); real runs "
        f"{secs_real:.1f} s; linear-probe runs {secs_lin:.1f} s; real runs / prediction = "
        f"{secs_real / secs_pred:.1f}x; with the prediction's compilation ({secs_compile:.1f} s) "
        f"{secs_real / (secs_pred + secs_compile):.1f}x")


if __name__ == "__main__":
  app.run(main)
