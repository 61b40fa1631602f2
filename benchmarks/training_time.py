"""Predicted steps to a training loss (NTK, issue 8) vs real fine-tuning runs, mini zoo + suite.

  python benchmarks/training_time.py                 # 2 models x 2 tasks x 3 lrs x 2 batches
  python benchmarks/training_time.py --models=cnn_small --tasks=mini_digits --lr_fractions=0.1

For each (model, task): N training images from train800 and their one-hot targets; the network
is the mini-zoo backbone followed by a new linear head initialised with small random weights
(W ~ N(0, head_scale^2 / E||phi||^2) so each initial output has std head_scale = 0.1, zero
bias, fixed seed; a zero head would make the backbone's
Jacobian vanish, leaving only the head in the linearised model). The loss is
L = mean_i 0.5 ||f(x_i) - y_i||^2 (training_time's), trained by optax.sgd(lr, momentum) with
batches of B distinct examples drawn independently each step (training_time's default
sampling 'without_replacement'). The NTK spectrum over every backbone + head parameter is
computed once (`training_time.compute_spectrum`, the exact Jacobian); for each learning rate
(a fraction of the full-batch stability limit 2 (1 + m) N / lambda_max) and batch size the
predicted expected-loss curve gives the steps to reach fractions of the initial loss, compared
with the first step at which the training loss on all N examples reaches them in two real
runs on the same batches: (a) the model linearised at the pre-trained weights (jax.jvp) and
(b) the real network. Relative error |pred - actual| / actual over the thresholds the run
reaches within --steps. The targets are the predicted loss after f x --steps steps, f in
--thresholds (fixed by the prediction alone, never by the runs; the spectrum's dominant
eigenvalue makes fixed fractions of L0 unreachable in a few hundred steps); a run that does not
reach a target within --steps counts as reaching it at --steps (a lower bound on the error).
The wall time of the prediction (kernel + eigendecomposition +
curves) is compared with the training runs it predicts.
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
from model_search import function_space  # pylint: disable=g-import-not-at-top
from model_search import training_time
from model_search.data import mini
from model_search.data import pipeline
from model_search.models import hub

_MODELS = flags.DEFINE_list("models", ["cnn_small", "mixer_broad"], "Mini-zoo models.")
_TASKS = flags.DEFINE_list("tasks", ["mini_digits", "mini_textures"], "Mini-suite tasks.")
_LR_FRACTIONS = flags.DEFINE_list(
    "lr_fractions", ["0.03", "0.1", "0.3"],
    "Learning rates as fractions of the full-batch stability limit 2 (1 + m) N / lambda_max.")
_BATCHES = flags.DEFINE_list("batch_size", ["16", "64"], "Batch sizes.")
_THRESHOLDS = flags.DEFINE_list(
    "thresholds", ["0.1", "0.25", "0.5"],
    "Targets: the predicted loss after f x --steps steps, for each fraction f.")
_N = flags.DEFINE_integer("num_examples", 256, "Training examples (first N of train800).")
_STEPS = flags.DEFINE_integer("steps", 300, "Steps of each real run.")
_HORIZON = flags.DEFINE_integer("horizon", 2, "Predicted curves run --steps x this.")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "optax.sgd momentum.")
_HEAD_SCALE = flags.DEFINE_float("head_scale", 0.1,
                                  "Std of each initial output (head init, see _network).")
_KERNEL = flags.DEFINE_enum("kernel", "full", ["full", "kronecker"], "compute_spectrum kernel.")
_NULL_RTOL = flags.DEFINE_float(
    "null_rtol", training_time.NULL_RTOL, "compute_spectrum null_rtol (1e-5, the first "
    "default, zeroed real directions when one eigenvalue dominates; see RESULTS.md).")
_NOISE = flags.DEFINE_enum("noise", "auto", list(training_time.NOISE),
                           "loss_curve noise: exact second moments or their diagonal.")
_PROJECTION = flags.DEFINE_integer("projection_dim", 0,
                                   "compute_spectrum projection_dim (0: the exact Jacobian).")
_PREDICTOR = flags.DEFINE_enum(
    "predictor", "expected", ["expected", "replay"],
    "expected: training_time.loss_curve's expected SGD loss (the paper's analysis); replay: "
    "function_space.simulate of the linearised model on the runs' own batches, from the same "
    "spectrum (Theta = U diag(lambda) U^T).")
_SUBSET = flags.DEFINE_integer("subset_size", 0, "compute_spectrum subset_size (0: all N).")
_SEED = flags.DEFINE_integer("seed", 0, "Head init and batch sampling seed.")
_CACHE = flags.DEFINE_string("cache_dir", "", "model_search cache (mini zoo); '' = default.")


def _data(task_name, size, value_range, data_dir, n):
  """[n, H, W, 3] model input and [n, K] one-hot targets from the first n of train800."""
  task = mini.get_task(task_name)
  images, labels = pipeline.load_split(task, "train800", data_dir=data_dir)
  x = pipeline.to_model_input(images[:n], image_size=size, value_range=value_range)
  y = np.eye(task.num_classes, dtype=np.float32)[np.asarray(labels[:n])]
  return np.asarray(x, np.float32), y


def _network(model, x, num_classes, seed):
  """(apply_fn, params): backbone features -> a small random linear head."""
  # The source head is not used by `apply`; leaving it out keeps zero columns out of J.
  backbone = {k: v for k, v in model.params.items() if not k.startswith("head/")}
  try:
    feats = np.asarray(model.apply(backbone, jnp.asarray(x[:64])))
  except Exception:  # pylint: disable=broad-except  (the graph wants every variable)
    backbone = dict(model.params)
    feats = np.asarray(model.apply(backbone, jnp.asarray(x[:64])))
  # W ~ N(0, s^2 / E||phi||^2): each initial output has std s whatever the feature scale.
  std = _HEAD_SCALE.value / math.sqrt(float(np.mean(np.sum(feats**2, axis=1))))
  w = std * jax.random.normal(jax.random.key(seed), (feats.shape[1], num_classes))
  params = {"backbone": backbone, "head": {"kernel": w, "bias": jnp.zeros((num_classes,))}}

  def apply_fn(p, x):
    return model.apply(p["backbone"], x) @ p["head"]["kernel"] + p["head"]["bias"]

  return apply_fn, params


def _run_fn(apply_fn, params0, x, y, momentum, linearised):
  """Jitted (lr, indices [T, B]) -> full training loss [T + 1] of one SGD run."""
  x, y = jnp.asarray(x), jnp.asarray(y)

  def model(p, idx):
    xb = x if idx is None else x[idx]
    if not linearised:
      return apply_fn(p, xb)
    delta = jax.tree_util.tree_map(jnp.subtract, p, params0)
    out0, jvp = jax.jvp(lambda q: apply_fn(q, xb), (params0,), (delta,))
    return out0 + jvp

  def loss(p, idx):
    yb = y if idx is None else y[idx]
    return 0.5 * jnp.mean(jnp.sum((model(p, idx) - yb) ** 2, axis=1))

  @jax.jit
  def run(lr, indices):
    opt = optax.sgd(lr, momentum=momentum or None)

    def step(carry, idx):
      p, s = carry
      g = jax.grad(loss)(p, idx)
      u, s = opt.update(g, s, p)
      p = optax.apply_updates(p, u)
      return (p, s), loss(p, None)

    _, losses = jax.lax.scan(step, (params0, opt.init(params0)), indices)
    return jnp.concatenate([loss(params0, None)[None], losses])

  return run


def _first_at_or_below(curve, target):
  return training_time.steps_to_loss(curve, target)


def _rel(pred, actual):
  return abs(pred - actual) / actual


def main(argv):
  del argv
  entries, data_dir = common.mini_zoo(_CACHE.value)
  n, steps, m = _N.value, _STEPS.value, _MOMENTUM.value
  fracs = [float(f) for f in _THRESHOLDS.value]
  rows, errs_lin, errs_real = [], [], []
  secs_pred, secs_lin, secs_real = 0.0, 0.0, 0.0
  print("| model | task | lr (x limit) | lr | B | target f | predicted | linearised | real "
        "| err lin | err real |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for model_name in _MODELS.value:
    entry = entries[model_name]
    model = hub.load(entry.handle)
    size = entry.input_size or model.input_size
    for task_name in _TASKS.value:
      x, y = _data(task_name, size, model.value_range, data_dir, n)
      apply_fn, params = _network(model, x, y.shape[1], _SEED.value)
      start = time.perf_counter()
      spectrum = training_time.compute_spectrum(apply_fn, params, x, y, kernel=_KERNEL.value,
                                                 subset_size=_SUBSET.value or None,
                                                 projection_dim=_PROJECTION.value or None,
                                                 null_rtol=_NULL_RTOL.value)
      if _PREDICTOR.value == "replay":
        # The replay needs the kernel and the initial outputs, not the eigendecomposition;
        # the spectrum above only sets the stability limit (its time is not counted).
        secs_spectrum = time.perf_counter() - start
        start = time.perf_counter()
        theta = training_time.empirical_ntk(apply_fn, params, x,
                                            projection_dim=_PROJECTION.value or None)
        outputs0 = np.asarray(apply_fn(params, jnp.asarray(x)), np.float64)
        print(f"<!-- replay kernel {time.perf_counter() - start:.1f} s (the spectrum: "
              f"{secs_spectrum:.1f} s, not counted) -->")
      secs_kernel = time.perf_counter() - start
      limit = spectrum.max_stable_learning_rate(m)
      loss0 = float(0.5 * np.sum(spectrum.energies) / n)
      lam = np.asarray(spectrum.eigenvalues)
      floor5 = float(0.5 / n * np.sum(spectrum.energies[lam <= 1e-5 * lam[0]]))
      print(f"<!-- {model_name}/{task_name}: P = "
            f"{sum(int(np.size(v)) for v in jax.tree_util.tree_leaves(params))}, "
            f"M = {len(spectrum.eigenvalues)}, lambda_max = {spectrum.eigenvalues[0]:.4g}, "
            f"rank = {int(np.sum(spectrum.eigenvalues > 0))}, L0 = {loss0:.4g}, "
            f"floor = {spectrum.floor:.3g} (at null_rtol 1e-5: {floor5:.3g}), limit lr = {limit:.4g}, "
            f"spectrum {secs_kernel:.1f} s -->", flush=True)
      secs_pred += secs_kernel
      runs = {lin: _run_fn(apply_fn, params, x, y, m, lin) for lin in (True, False)}
      rng = np.random.default_rng([_SEED.value, 1])
      for batch in map(int, _BATCHES.value):
        indices = np.stack([rng.choice(n, batch, replace=False) for _ in range(steps)])
        indices = jnp.asarray(indices, jnp.int32)
        for lin in (True, False):  # Compile once per (linearised, batch size).
          runs[lin](jnp.float32(limit * 0.01), indices[:steps]).block_until_ready()
        if _PREDICTOR.value == "replay":  # Compiles the replay for this shape, untimed too.
          function_space.simulate(theta, outputs0, np.argmax(y, axis=1), np.asarray(indices),
                                  learning_rate=limit * 0.01, momentum=m, loss="mse",
                                  kernel="full")
        for frac in map(float, _LR_FRACTIONS.value):
          lr = frac * limit
          start = time.perf_counter()
          if _PREDICTOR.value == "replay":
            # The replay needs the batches, so its horizon is the runs' --steps.
            curve = function_space.simulate(
                theta, outputs0, np.argmax(y, axis=1), np.asarray(indices),
                learning_rate=lr, momentum=m, loss="mse", kernel="full").train_loss
            curve = np.asarray(curve, np.float64)
          else:
            curve = training_time.loss_curve(spectrum, learning_rate=lr,
                                             steps=steps * _HORIZON.value, batch_size=batch,
                                             momentum=m, noise=_NOISE.value)
          secs_pred += time.perf_counter() - start
          actual = {}
          for lin in (True, False):
            start = time.perf_counter()
            actual[lin] = np.asarray(runs[lin](jnp.float32(lr), indices), np.float64)
            took = time.perf_counter() - start
            if lin:
              secs_lin += took
            else:
              secs_real += took
          print(f"<!-- lr {frac:g} B {batch}: loss after {steps} steps: predicted "
                f"{curve[steps]:.4g}, linearised {actual[True][-1]:.4g}, real "
                f"{actual[False][-1]:.4g} -->", flush=True)
          for t_frac in fracs:
            target = float(curve[int(round(t_frac * steps))])
            if not (math.isfinite(target) and target < loss0):
              continue  # Predicted to diverge (or not to move): no target to time.
            pred = _first_at_or_below(curve, target)
            a_lin = _first_at_or_below(actual[True], target)
            a_real = _first_at_or_below(actual[False], target)
            # Not reached within `steps`: actual > steps, so the error is at least this.
            e_lin = _rel(pred, a_lin) if math.isfinite(a_lin) else _rel(pred, steps)
            e_real = _rel(pred, a_real) if math.isfinite(a_real) else _rel(pred, steps)
            if not math.isnan(e_lin):
              errs_lin.append(e_lin)
            if not math.isnan(e_real):
              errs_real.append(e_real)
            rows.append((model_name, task_name, frac, lr, batch, t_frac, pred, a_lin, a_real))
            print(f"| {model_name} | {task_name} | {frac:g} | {lr:.3g} | {batch} | {t_frac:g} "
                  f"| {pred:g} | {a_lin:g} | {a_real:g} | {e_lin:.1%} | {e_real:.1%} |",
                  flush=True)
  settings = len({r[:5] for r in rows})
  print(f"\nsettings: {settings}; thresholds compared: {len(errs_lin)} (linearised), "
        f"{len(errs_real)} (real); {len(rows)} rows")
  for name, errs in (("linearised", errs_lin), ("real network", errs_real)):
    if errs:
      # A prediction of inf (diverges / never) against a finite run counts as inf error.
      errs = np.sort(np.asarray(errs))
      q = lambda p, e=errs: e[min(len(e) - 1, int(math.ceil(p * len(e))) - 1)]  # pylint: disable=unnecessary-lambda-assignment
      print(f"relative error vs {name} ({len(errs)} thresholds): median {q(0.5):.1%}, "
            f"90th percentile {q(0.9):.1%}, infinite {int(np.sum(np.isinf(errs)))}")
  bias = [np.log(r[6] / r[8]) for r in rows if math.isfinite(r[6]) and math.isfinite(r[8])
          and r[8] > 0]
  if bias:
    print(f"median predicted / real steps: {math.exp(np.median(bias)):.3f}")
  print(f"wall time: prediction {secs_pred:.1f} s; linearised runs {secs_lin:.1f} s; real "
        f"runs {secs_real:.1f} s; real runs / prediction = {secs_real / secs_pred:.2f}x; all "
        f"runs / prediction = {(secs_lin + secs_real) / secs_pred:.2f}x")


if __name__ == "__main__":
  app.run(main)
