"""Fine-tuning: ground-truth transfer accuracy by training the whole network (VTAB protocol).

Protocol (Renggli et al., following the VTAB reference): the hub model's pre-logits get a new
linear head initialised to zero; the whole network is trained with SGD and momentum (0.9) at
batch 512 for 2500 steps, with a step decay of the learning rate (x0.1 at 30/60/90% of the
steps) and optional linear warm-up, no augmentation, batch norm in training mode (batch
statistics; the moving averages it updates are used at evaluation). Optional clipping of the
gradient's global norm (big_vision's transfer configs clip at 1.0; the VTAB reference does not)
keeps learning rate 0.1 stable for the mini zoo's normalisation-free CNNs. Each learning rate of
the grid (the paper: 0.1 and 0.01) is one run, trained on train800 and evaluated on val200; per
repeat (a different data order) the run with the higher val200 accuracy is kept (ties: the
earlier learning rate in the grid) and its test accuracy reported; the ground truth is the
median over repeats (`summarize`). The grid of runs, its checkpoints and its failures are
`finetune_grid`'s.

`Finetuner` compiles one training step per model: `jax.jit` with the batch split over a
device mesh's 'data' axis and the parameters replicated (data parallel) or sharded by a path
regex (FSDP; see `sharding`), and gradient accumulation over micro-batches so a batch of 512
fits on small devices. The learning rate is an argument of the step, so all rates share one
program, and the head is padded to a fixed number of classes with the extra logits masked out
(exactly equivalent to a head of the task's size: their softmax weight is 0, so they get no
gradient), so tasks share it too.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from model_search import sharding as sharding_lib

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


class TrainState(NamedTuple):
  """What a run carries from step to step (and what a checkpoint holds)."""
  params: Any  # {'backbone': model params (batch-norm statistics included), 'head': ...}
  opt_state: Any


class NonFiniteLoss(FloatingPointError):
  """The training loss became NaN or infinite."""

  def __init__(self, step: int, loss: float):
    super().__init__(f"non-finite training loss {loss} at step {step}")
    self.step = step


class Finetuner:
  """Compiled fine-tuning and evaluation programs for one hub model.

  Args:
    model: a `hub.HubModel` (or anything with `apply`, `params`, `feature_dim`, and optionally
      `apply_train` / `has_training_mode`).
    head_classes: width of the (masked) head; at least every task's class count.
    momentum, steps, decay_at, warmup_steps: the SGD protocol (`lr_schedule`).
    eval_batch_size: examples per evaluation batch (rounded up to a multiple of the mesh size).
    grad_clip_norm: clip the gradient's global norm to this (None: no clipping).
    accumulation_steps: micro-batches per step: the batch's gradient is the mean of theirs, so
      k micro-batches of B / k give the step of one batch of B (exactly, up to float rounding,
      for models without batch norm; with batch norm each micro-batch has its own statistics
      and updates the moving averages in turn).
    mesh: the device mesh (`sharding.make_mesh`); None: this process's local devices.
    fsdp_regex, fsdp_min_size: parameter sharding (`sharding.param_shardings`); None:
      data parallel, every parameter replicated.
    train_mode: use the model's training mode (batch statistics) when it has one.
  """

  def __init__(self, model, *, head_classes: int, momentum: float, steps: int,
               decay_at: Sequence[float], warmup_steps: int, eval_batch_size: int,
               grad_clip_norm: float | None = None, accumulation_steps: int = 1,
               mesh=None, fsdp_regex: str | None = None, fsdp_min_size: int = 2**16,
               train_mode: bool = True):
    if accumulation_steps < 1:
      raise ValueError(f"accumulation_steps must be >= 1, got {accumulation_steps}")
    self.model = model
    self.head_classes = head_classes
    self.steps = steps
    self.accumulation_steps = accumulation_steps
    self.mesh = sharding_lib.make_mesh() if mesh is None else mesh
    self.num_devices = self.mesh.size
    self.eval_batch_size = -(-eval_batch_size // self.num_devices) * self.num_devices
    apply_fn = model.apply
    apply_train = getattr(model, "apply_train", None)
    self.uses_train_mode = bool(train_mode and apply_train is not None
                                and getattr(model, "has_training_mode", False))

    def head(params, feats, class_mask):
      logits = feats @ params["head"]["kernel"] + params["head"]["bias"]
      return jnp.where(class_mask, logits, _MASKED)

    def logits_fn(params, images, class_mask):
      return head(params, apply_fn(params["backbone"], images), class_mask)

    def loss_fn(params, images, labels, class_mask, rng):
      if self.uses_train_mode:
        # A PRNG key only for models with random ops (dropout); see `_probe_rng`.
        feats, backbone = apply_train(params["backbone"], images,
                                      **({"rng": rng} if self._needs_rng else {}))
      else:
        feats, backbone = apply_fn(params["backbone"], images), params["backbone"]
      logits = head(params, feats, class_mask)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, backbone

    def make_tx(base_lr):
      schedule = functools.partial(lr_schedule, base_lr, steps=steps, decay_at=tuple(decay_at),
                                   warmup_steps=warmup_steps)
      sgd = optax.sgd(schedule, momentum=momentum)
      return optax.chain(optax.clip_by_global_norm(grad_clip_norm), sgd) if grad_clip_norm else sgd

    self._make_tx = make_tx
    self._apply_train = apply_train
    self._train_features_fn = jax.jit(apply_train) if self.uses_train_mode else None
    self._needs_rng: bool | None = None
    k = accumulation_steps
    batch_sh = sharding_lib.batch_sharding(self.mesh)

    def train_step(state, base_lr, images, labels, class_mask, idx, rng):
      params = state.params
      x = jax.lax.with_sharding_constraint(images[idx], batch_sh)
      y = jax.lax.with_sharding_constraint(labels[idx], batch_sh)
      grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
      if k == 1:
        (loss, backbone), grads = grad_fn(params, x, y, class_mask, rng)
      else:
        # Micro-batch i holds examples i, i + k, i + 2k, ...: every device keeps its share of
        # each micro-batch, so no data moves between devices. Unrolled: XLA:CPU runs
        # convolutions inside loops ~30x slower than outside.
        xs = x.reshape((-1, k) + x.shape[1:])
        ys = y.reshape(-1, k)
        loss, grads, backbone = 0.0, None, params["backbone"]
        for i in range(k):
          micro = {"backbone": backbone, "head": params["head"]}
          (loss_i, backbone), grads_i = grad_fn(micro, xs[:, i], ys[:, i], class_mask,
                                                jax.random.fold_in(rng, i))
          loss = loss + loss_i / k
          grads = (jax.tree.map(lambda g: g / k, grads_i) if grads is None else
                   jax.tree.map(lambda a, g: a + g / k, grads, grads_i))
      updates, opt_state = make_tx(base_lr).update(grads, state.opt_state, params)
      new_params = optax.apply_updates(params, updates)
      # Batch-norm moving averages: the training-mode call returns them updated. Their
      # gradient is exactly zero (training mode does not read them), so the SGD update left
      # them as they were; every other entry is returned unchanged (new - old = 0 exactly).
      new_params["backbone"] = jax.tree.map(lambda p, new, old: p + (new - old),
                                            new_params["backbone"], backbone,
                                            params["backbone"])
      return TrainState(new_params, opt_state), loss

    abstract = jax.eval_shape(self._fresh_state)
    self.param_shardings = sharding_lib.param_shardings(
        abstract.params, self.mesh, fsdp_regex=fsdp_regex, fsdp_min_size=fsdp_min_size)
    # optax states mirror the params (momentum traces) plus scalars (counts).
    self.state_shardings = TrainState(
        self.param_shardings, self._opt_state_shardings(abstract))
    repl = sharding_lib.replicated(self.mesh)
    self._init = jax.jit(self._fresh_state, out_shardings=self.state_shardings)
    self._step = jax.jit(
        train_step,
        in_shardings=(self.state_shardings, repl, repl, repl, repl, repl, repl),
        out_shardings=(self.state_shardings, repl), donate_argnums=(0,))
    self._predict = jax.jit(
        lambda p, x, m: jnp.argmax(logits_fn(p, x, m), -1),
        in_shardings=(self.param_shardings, batch_sh, repl), out_shardings=batch_sh)
    self._replicated = repl
    self._batch_sharding = batch_sh

  def _fresh_state(self) -> TrainState:
    dim = self.model.feature_dim
    params = {"backbone": self.model.params,
              "head": {"kernel": jnp.zeros((dim, self.head_classes), jnp.float32),
                       "bias": jnp.zeros((self.head_classes,), jnp.float32)}}
    # The optimizer state's structure does not depend on the learning rate.
    return TrainState(params, self._make_tx(0.0).init(params))

  def _opt_state_shardings(self, abstract: TrainState):
    """Momentum traces sharded like their parameters; everything else replicated."""
    params_def = jax.tree.structure(abstract.params)

    def walk(node):
      if jax.tree.structure(node) == params_def:
        return self.param_shardings
      if isinstance(node, tuple) and not hasattr(node, "shape"):
        children = [walk(c) for c in node]
        return type(node)(*children) if hasattr(node, "_fields") else tuple(children)
      return jax.tree.map(lambda _: sharding_lib.replicated(self.mesh), node)

    return walk(abstract.opt_state)

  def _probe_rng(self, batch_shape) -> None:
    """Whether the training mode needs a PRNG key: traced once without one (no compute)."""
    if self._needs_rng is not None or not self.uses_train_mode:
      return
    images = jax.ShapeDtypeStruct(tuple(batch_shape), jnp.float32)
    try:
      jax.eval_shape(self._apply_train, self.model.params, images)
      self._needs_rng = False
    except ValueError as e:
      if "PRNG key" not in str(e):
        raise
      self._needs_rng = True

  def train_features(self, images, batches, *, seed: int = 0) -> np.ndarray:
    """Backbone features as the training step sees them at the start: in training mode
    (batch statistics of each batch) when the run uses it, else inference features.

    Args:
      images: [N, ...] model inputs.
      batches: a sequence of index arrays, together covering each example once (e.g. one
        epoch of `batch_indices`); each example's features come from its batch.
      seed: the PRNG key for random ops of the training mode (dropout).

    Returns:
      [N, D] float32.
    """
    images = np.asarray(images)
    out = np.full((len(images), self.model.feature_dim), np.nan, np.float32)
    fn = self.model.apply if not self.uses_train_mode else self._train_features_fn
    for i, idx in enumerate(batches):
      idx = np.asarray(idx)
      x = jnp.asarray(images[idx], jnp.float32)
      if not self.uses_train_mode:
        out[idx] = np.asarray(fn(self.model.params, x))
        continue
      self._probe_rng(x.shape)
      kw = {"rng": jax.random.fold_in(jax.random.key(seed), i)} if self._needs_rng else {}
      out[idx] = np.asarray(fn(self.model.params, x, **kw)[0])
    if np.isnan(out).any():
      raise ValueError("batches must cover every example (some features were not computed)")
    return out

  def init_state(self) -> TrainState:
    """Backbone from the hub model, zero head, fresh optimizer state; placed on the mesh."""
    return self._init()

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of a TrainState (what a checkpoint restores into)."""
    shapes = jax.eval_shape(self._fresh_state)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def class_mask(self, num_classes: int) -> jnp.ndarray:
    if num_classes > self.head_classes:
      raise ValueError(f"Task has {num_classes} classes but the head has {self.head_classes}; "
                       "raise finetune.head_classes.")
    return jnp.arange(self.head_classes) < num_classes

  def check_batch_size(self, batch_size: int) -> None:
    per_step = self.num_devices * self.accumulation_steps
    if batch_size % per_step:
      raise ValueError(
          f"batch_size {batch_size} must be divisible by devices x accumulation_steps = "
          f"{self.num_devices} x {self.accumulation_steps} = {per_step}")

  def train(self, learning_rate: float, images, labels, num_classes: int, indices, *,
            seed: int = 0, state: TrainState | None = None, start_step: int = 0,
            losses: np.ndarray | None = None, every: int = 0,
            callback: Callable[[int, TrainState, np.ndarray], None] | None = None,
            ) -> tuple[Any, np.ndarray]:
    """Trains one run; returns the final params and the [steps] training losses.

    Args:
      learning_rate: the base learning rate.
      images, labels: the training split (float images, int labels), on the host.
      num_classes: the task's class count.
      indices: [steps, batch] example indices (`batch_indices`).
      seed: seeds random ops of the training mode (dropout), per step.
      state, start_step, losses: resume from this state after `start_step` steps, with the
        first `start_step` losses (from a checkpoint); None: a fresh run.
      every: every this many steps (and after the last) the losses are fetched, checked and
        passed to `callback` (0: only after the last step).
      callback: `callback(step, state, losses)` after `step` steps (e.g. a checkpoint).

    Raises:
      NonFiniteLoss: when a fetched loss is NaN or infinite.
    """
    indices = np.asarray(indices)
    steps = len(indices)
    self.check_batch_size(indices.shape[1])
    self._probe_rng((indices.shape[1] // self.accumulation_steps,) + np.shape(images)[1:])
    state = self.init_state() if state is None else state
    all_losses = np.full(steps, np.nan, np.float32)
    if losses is not None:
      all_losses[:start_step] = np.asarray(losses)[:start_step]
    lr = jax.device_put(jnp.float32(learning_rate), self._replicated)
    x = jax.device_put(jnp.asarray(images, jnp.float32), self._replicated)
    y = jax.device_put(jnp.asarray(labels, jnp.int32), self._replicated)
    mask = jax.device_put(self.class_mask(num_classes), self._replicated)
    key = jax.random.key(seed)
    pending, first = [], start_step
    for t in range(start_step, steps):
      state, loss = self._step(state, lr, x, y, mask, jax.device_put(indices[t], self._replicated),
                               jax.random.fold_in(key, t))
      pending.append(loss)
      if (every and (t + 1) % every == 0) or t + 1 == steps:
        fetched = np.asarray(jax.device_get(pending), np.float32)
        all_losses[first:t + 1] = fetched
        bad = np.flatnonzero(~np.isfinite(fetched))
        if bad.size:
          raise NonFiniteLoss(first + int(bad[0]), float(fetched[bad[0]]))
        pending, first = [], t + 1
        if callback is not None:
          callback(t + 1, state, all_losses[:t + 1])
    return state.params, all_losses

  def accuracy(self, params, images, labels, num_classes: int) -> float:
    """Accuracy on all examples (padded batches, each example counted once)."""
    mask, bs = self.class_mask(num_classes), self.eval_batch_size
    correct = 0
    for start in range(0, len(images), bs):
      x = np.asarray(images[start:start + bs], np.float32)
      n = len(x)
      if n < bs:  # Pad to a fixed shape so the program compiles once.
        x = np.concatenate([x, np.zeros((bs - n,) + x.shape[1:], x.dtype)])
      pred = np.asarray(self._predict(params, jax.device_put(x, self._batch_sharding), mask))[:n]
      correct += int((pred == np.asarray(labels[start:start + n])).sum())
    return correct / len(images)


def summarize(runs: Sequence[dict[str, Any]], learning_rates: Sequence[float],
              repeats: int) -> dict[str, Any]:
  """The protocol's ground truth from its runs: pick by val200 per repeat, median over repeats.

  Args:
    runs: one dict per (repeat, learning rate) with 'repeat', 'learning_rate',
      'val_accuracy', 'test_accuracy' (None for a failed run) and 'failure' (None or reason).
    learning_rates: the grid, in order (ties in val accuracy go to the earlier rate).
    repeats: the number of repeats.

  Returns:
    {'test_accuracy', 'val_accuracy': medians over the repeats with a successful run,
     'learning_rate': the pick of the median repeat, 'repeats': per repeat its pick and runs,
     'failed_repeats': repeats where every rate failed}; test_accuracy None when none succeeded.
  """
  order = {float(lr): i for i, lr in enumerate(learning_rates)}
  per_repeat, failed = [], []
  for r in range(repeats):
    mine = sorted((run for run in runs if run["repeat"] == r),
                  key=lambda run: order[float(run["learning_rate"])])
    ok = [run for run in mine if run.get("failure") is None]
    if not ok:
      failed.append({"repeat": r, "failures": [run.get("failure") for run in mine]})
      continue
    best = max(ok, key=lambda run: run["val_accuracy"])  # max keeps the first of ties.
    per_repeat.append({"repeat": r, "seed": best.get("seed"),
                       "learning_rate": best["learning_rate"],
                       "val_accuracy": best["val_accuracy"],
                       "test_accuracy": best["test_accuracy"], "runs": mine})
  if not per_repeat:
    return {"test_accuracy": None, "val_accuracy": None, "learning_rate": None,
            "repeats": [], "failed_repeats": failed}
  order_by_test = np.argsort([rep["test_accuracy"] for rep in per_repeat], kind="stable")
  median_rep = per_repeat[order_by_test[(len(order_by_test) - 1) // 2]]
  return {
      "test_accuracy": float(np.median([rep["test_accuracy"] for rep in per_repeat])),
      "val_accuracy": float(np.median([rep["val_accuracy"] for rep in per_repeat])),
      "learning_rate": median_rep["learning_rate"],
      "repeats": per_repeat,
      "failed_repeats": failed,
  }
