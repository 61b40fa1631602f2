"""Finetune stage: ground-truth transfer accuracy by fine-tuning the whole network.

Protocol (Renggli et al., following the VTAB reference): the hub model's pre-logits get a new
linear head initialised to zero; the whole network is trained with SGD and momentum (0.9), with
a step decay of the learning rate (x0.1 at 30/60/90% of the steps) and optional linear warm-up,
no augmentation. Optional clipping of the gradient's global norm (big_vision's transfer
configs clip at 1.0; the VTAB reference does not clip) keeps learning rate 0.1 stable for the
mini zoo's normalisation-free CNNs. Each learning rate of the grid (the paper: 0.1 and 0.01) is trained on train800
and evaluated on val200; the run with the higher val200 accuracy is kept (ties: the earlier
learning rate in the grid) and its test accuracy reported. With several repeats (different data
orders), the ground truth is the median over repeats.

All learning rates of one (model, task, repeat) train in one compiled step (vmap over the
learning rates), and the program is reused across tasks: the head is
padded to a fixed number of classes with the extra logits masked out, which is exactly
equivalent to a head of the task's size (their softmax weight is 0, so they get no gradient).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from model_search import workdir as wd
from model_search.data import pipeline
from model_search.models import hub

_VERSION = "finetune-v1"
_MASKED = -1e9  # exp() of this underflows to exactly 0 in float32.


def lr_schedule(base_lr, step, *, steps: int, decay_at: Sequence[float], warmup_steps: int):
  """The learning rate at `step` (traceable in base_lr and step)."""
  boundaries = jnp.asarray([int(round(f * steps)) for f in decay_at] or [steps + 1])
  factor = 0.1 ** jnp.sum(step >= boundaries)
  if warmup_steps:
    factor = factor * jnp.minimum(1.0, (step + 1) / warmup_steps)
  return base_lr * factor


def batch_indices(num_examples: int, *, steps: int, batch_size: int, seed: int) -> np.ndarray:
  """[steps, batch_size] example indices: shuffled epochs, concatenated (the data order)."""
  rng = np.random.RandomState(seed)
  epochs = -(-steps * batch_size // num_examples)
  order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
  return order[: steps * batch_size].reshape(steps, batch_size)


class Finetuner:
  """Compiled fine-tuning and evaluation programs for one hub model."""

  def __init__(self, model: hub.HubModel, *, head_classes: int, momentum: float, steps: int,
               decay_at: Sequence[float], warmup_steps: int, eval_batch_size: int,
               grad_clip_norm: float | None = None):
    self.model = model
    self.head_classes = head_classes
    self.eval_batch_size = eval_batch_size
    apply_fn = model.apply

    def logits_fn(params, images, class_mask):
      feats = apply_fn(params["backbone"], images)
      logits = feats @ params["head"]["kernel"] + params["head"]["bias"]
      return jnp.where(class_mask, logits, _MASKED)

    def loss_fn(params, images, labels, class_mask):
      logits = logits_fn(params, images, class_mask)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def make_tx(base_lr):
      schedule = functools.partial(lr_schedule, base_lr, steps=steps, decay_at=tuple(decay_at),
                                   warmup_steps=warmup_steps)
      sgd = optax.sgd(schedule, momentum=momentum)
      return optax.chain(optax.clip_by_global_norm(grad_clip_norm), sgd) if grad_clip_norm else sgd

    def step_one(base_lr, params, opt_state, images, labels, class_mask, idx):
      loss, grads = jax.value_and_grad(loss_fn)(params, images[idx], labels[idx], class_mask)
      updates, opt_state = make_tx(base_lr).update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    # vmap over learning rates: same initial params, data and order for every rate. One jitted
    # step in a Python loop: on CPU, XLA runs convolutions inside lax.scan/while bodies ~30x
    # slower than as top-level ops (measured here), so the loop stays in Python.
    self._init = jax.jit(jax.vmap(lambda lr, p: make_tx(lr).init(p), in_axes=(0, None)))
    self._step = jax.jit(jax.vmap(step_one, in_axes=(0, 0, 0, None, None, None, None)),
                         donate_argnums=(1, 2))
    # Evaluation runs each learning rate's params separately: a vmap over stacked conv weights
    # becomes a grouped convolution, which XLA:CPU runs ~4x slower.
    self._predict = jax.jit(lambda p, x, m: jnp.argmax(logits_fn(p, x, m), -1))

  def init_params(self) -> dict[str, Any]:
    dim = self.model.feature_dim
    return {"backbone": self.model.params,
            "head": {"kernel": jnp.zeros((dim, self.head_classes), jnp.float32),
                     "bias": jnp.zeros((self.head_classes,), jnp.float32)}}

  def class_mask(self, num_classes: int) -> jnp.ndarray:
    if num_classes > self.head_classes:
      raise ValueError(f"Task has {num_classes} classes but the head has {self.head_classes}; "
                       "raise finetune.head_classes.")
    return jnp.arange(self.head_classes) < num_classes

  def train(self, learning_rates, images, labels, num_classes, indices):
    """Trains one run per learning rate; returns stacked params and losses [R, steps]."""
    lrs = jnp.asarray(learning_rates, jnp.float32)
    params = jax.tree.map(lambda a: jnp.broadcast_to(a, (len(lrs),) + a.shape),
                          self.init_params())
    opt_state = self._init(lrs, self.init_params())
    images, labels = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    mask = self.class_mask(num_classes)
    losses = []
    for idx in np.asarray(indices):
      params, opt_state, loss = self._step(lrs, params, opt_state, images, labels, mask,
                                           jnp.asarray(idx))
      losses.append(loss)
    return params, jnp.stack(losses, axis=1)

  def accuracy(self, params, images, labels, num_classes) -> np.ndarray:
    """Accuracy [R] of each stacked run on all examples (padded batches, counted once)."""
    mask, bs = self.class_mask(num_classes), self.eval_batch_size
    num_runs = jax.tree.leaves(params)[0].shape[0]
    runs = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(num_runs)]
    correct = np.zeros(num_runs)
    for start in range(0, len(images), bs):
      x = images[start:start + bs]
      n = len(x)
      if n < bs:  # Pad to a fixed shape so the program compiles once.
        x = np.concatenate([x, np.zeros((bs - n,) + x.shape[1:], x.dtype)])
      x = jnp.asarray(x)
      for i, run in enumerate(runs):
        pred = np.asarray(self._predict(run, x, mask))[:n]
        correct[i] += (pred == np.asarray(labels[start:start + n])).sum()
    return correct / len(images)


def finetune_task(tuner: Finetuner, splits: dict[str, tuple[np.ndarray, np.ndarray]], *,
                  num_classes: int, learning_rates: Sequence[float], steps: int,
                  batch_size: int, repeats: int, seed: int) -> dict[str, Any]:
  """Runs the protocol for one (model, task); `splits` has train800, val200, test as floats."""
  x_train, y_train = splits["train800"]
  result_repeats = []
  for r in range(repeats):
    run_seed = seed + 7919 * r
    indices = batch_indices(len(x_train), steps=steps, batch_size=batch_size, seed=run_seed)
    params, losses = tuner.train(learning_rates, x_train, y_train, num_classes, indices)
    losses = np.asarray(losses)
    val = tuner.accuracy(params, *splits["val200"], num_classes)
    test = tuner.accuracy(params, *splits["test"], num_classes)
    runs = []
    for i, lr in enumerate(learning_rates):
      finite = bool(np.isfinite(losses[i]).all())
      runs.append({"learning_rate": float(lr), "val_accuracy": float(val[i]) if finite else None,
                   "test_accuracy": float(test[i]) if finite else None,
                   "final_loss": float(losses[i, -1]) if finite else None,
                   "loss_curve": [float(v) for v in losses[i]] if finite else None,
                   "failure": None if finite else "non-finite training loss"})
    ok = [run for run in runs if run["failure"] is None]
    if not ok:
      raise FloatingPointError(f"every learning rate diverged (losses {losses[:, -1]})")
    best = max(ok, key=lambda run: run["val_accuracy"])  # max keeps the first of ties.
    result_repeats.append({"seed": run_seed, "learning_rate": best["learning_rate"],
                           "val_accuracy": best["val_accuracy"],
                           "test_accuracy": best["test_accuracy"], "runs": runs})
  order = np.argsort([rep["test_accuracy"] for rep in result_repeats], kind="stable")
  median_rep = result_repeats[order[(len(order) - 1) // 2]]
  return {
      "test_accuracy": float(np.median([rep["test_accuracy"] for rep in result_repeats])),
      "val_accuracy": float(np.median([rep["val_accuracy"] for rep in result_repeats])),
      "learning_rate": median_rep["learning_rate"],
      "repeats": result_repeats,
  }


def _fingerprint(config, entry, task) -> str:
  ft = config.finetune
  return wd.fingerprint(_VERSION, entry.to_json(), task.name, task.tfds_name,
                        {k: task.split(k) for k in ("train800", "val200", "test")},
                        ft.to_dict(), config.seed)


def load(config, workdir, entry, task) -> dict[str, Any] | None:
  """The finished result of (entry, task), or None if absent or unusable."""
  return wd.read_json(wd.finetune_path(workdir, entry.name, task.name),
                      fingerprint_=_fingerprint(config, entry, task),
                      required=("test_accuracy", "val_accuracy", "learning_rate"))


def run_stage(study) -> None:
  """Fine-tunes this process's (model, task) items not yet done; one atomic JSON per item."""
  config, workdir, items, tasks = study.config, study.workdir, study.items(), study.tasks
  by_name = {e.name: e for e in study.entries}
  task_by_name = {t.name: t for t in tasks}
  todo = [(m, t) for m, t in items if load(config, workdir, by_name[m], task_by_name[t]) is None]
  if not todo:
    logging.info("finetune: all %d items done.", len(items))
    return
  ft = config.finetune
  head_classes = max(t.num_classes for t in tasks)
  raw: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
  tuner, current = None, None
  for m, t in tqdm.tqdm(todo, desc="finetune", unit="item"):
    entry, task = by_name[m], task_by_name[t]
    if current != m:
      model = hub.load_entry(entry)
      tuner, current = Finetuner(model, head_classes=head_classes, momentum=ft.momentum,
                                 steps=ft.steps, decay_at=ft.decay_at,
                                 warmup_steps=ft.warmup_steps,
                                 eval_batch_size=ft.eval_batch_size,
                                 grad_clip_norm=ft.grad_clip_norm or None), m
    splits = {}
    size = entry.input_size or model.input_size
    for s in ("train800", "val200", "test"):
      if task.image_size is None:  # Images of many sizes: resize while reading.
        if size is None:
          raise ValueError(f"Model {m!r} declares no input size and task {t!r} has images of "
                           "many sizes; set input_size in the model's entry.")
        splits[s] = pipeline.load_resized(task, s, image_size=size,
                                          value_range=model.value_range,
                                          data_dir=study.data_dir)
        continue
      if (t, s) not in raw:
        raw[t, s] = pipeline.load_split(task, s, data_dir=study.data_dir)
      images, labels = raw[t, s]
      splits[s] = (pipeline.to_model_input(images, image_size=size or images.shape[1],
                                           value_range=model.value_range), labels)
    start = time.perf_counter()
    result = {"model": m, "task": t, "fingerprint": _fingerprint(config, entry, task)}
    try:
      result.update(finetune_task(tuner, splits, num_classes=task.num_classes,
                                  learning_rates=ft.learning_rates, steps=ft.steps,
                                  batch_size=ft.batch_size, repeats=ft.repeats, seed=config.seed))
    except FloatingPointError as e:
      logging.error("finetune %s on %s failed: %s", m, t, e)
      wd.write_json(wd.failure_path(workdir, "finetune", m, t), {**result, "failure": str(e)})
      continue
    result["secs"] = time.perf_counter() - start
    wd.write_json(wd.finetune_path(workdir, m, t), result)
