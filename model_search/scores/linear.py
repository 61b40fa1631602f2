"""Linear-probe score: a linear classifier on frozen features (Renggli et al.).

Renggli et al., "Which Model to Transfer? Finding the Needle in the Growing
Haystack" (CVPR 2022), rank models by the validation accuracy of a linear
classifier trained on their frozen features: SGD with momentum 0.9, batch 512,
2500 steps, learning rates {0.1, 0.01}, several seeds. `linear` does that, with
every (learning rate, seed) run in one compiled program. `ridge` is the
closed-form alternative of big_vision's few-shot evaluator: regularised least
squares to one-hot targets, one eigendecomposition shared by all regularisers.

Both standardise features with train statistics first (per dimension, zero mean
and unit variance on the train split). Feature scales differ by orders of
magnitude between models; without it a fixed learning-rate grid would be too
large for some models and too small for others, and the score would rank
feature scales rather than features.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from model_search.scores import common

METHODS = ("ridge", "sgd")
SGD_FORMS = ("auto", "primal", "kernel")
# The paper's grid: two learning rates, five seeds.
DEFAULT_LEARNING_RATES = (0.1, 0.01)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
# big_vision's few-shot regulariser grid.
DEFAULT_L2_REGS = tuple(float(2.0**e) for e in range(-10, 20, 2))
# Full float32 matmuls, so scores agree across CPU, GPU (TF32) and TPU (bf16).
_HIGHEST = jax.lax.Precision.HIGHEST
# SGD steps per iteration of the compiled loop (lax.scan's unroll): the same arithmetic. 1 was
# fastest on CPU for both forms (benchmarks/RESULTS.md).
DEFAULT_UNROLL = 1


def standardize(train_x, *others):
  """Standardises features with the train split's per-dimension statistics.

  Dimensions that are constant on the train split are only centred.

  Args:
    train_x: [N, D] float train features; defines mean and std.
    *others: more [M, D] float arrays (e.g. val features) to transform alike.

  Returns:
    A tuple (train_x, *others) of standardised float32 arrays.
  """
  train_x = jnp.asarray(train_x, jnp.float32)
  mean = jnp.mean(train_x, axis=0)
  std = jnp.std(train_x, axis=0)
  std = jnp.where(std > 0, std, 1.0)
  return tuple((jnp.asarray(x, jnp.float32) - mean) / std
               for x in (train_x, *others))


def _step_indices(key, step, *, num_examples: int, batch_size: int):
  """The [batch_size] example indices used at `step` by the run seeded `key`."""
  return jax.random.randint(jax.random.fold_in(key, step), (batch_size,), 0,
                            num_examples)


@functools.partial(jax.jit,
                   static_argnames=("num_examples", "steps", "batch_size"))
def sample_batch_indices(seed, *, num_examples: int, steps: int,
                         batch_size: int) -> jax.Array:
  """The minibatches `linear` / `fit_sgd` draw for one seed.

  Batches are sampled uniformly with replacement, independently at each step
  (no epochs), so any batch size works with any number of examples. Every
  learning rate of a seed sees the same batches.

  Args:
    seed: int seed of the run.
    num_examples: N, the number of training examples.
    steps: number of SGD steps.
    batch_size: examples per step.

  Returns:
    [steps, batch_size] int32 indices into the training examples; row t is the
    batch of step t.
  """
  key = jax.random.key(seed)
  return jax.vmap(lambda t: _step_indices(
      key, t, num_examples=num_examples, batch_size=batch_size))(
          jnp.arange(steps))


class SgdRuns(NamedTuple):
  """Result of `fit_sgd`: one entry per (learning rate, seed).

  Attributes:
    weights: [L, S, D, C] float32 final weights.
    biases: [L, S, C] float32 final biases.
    val_accuracy: [L, S] float64 NumPy validation accuracy of the final
      weights.
  """
  weights: jax.Array
  biases: jax.Array
  val_accuracy: jax.Array


def _loss(params, x, y, weight_decay, num_classes):
  """Mean softmax cross-entropy plus an L2 penalty on the weights (not bias)."""
  logits = jnp.matmul(x, params["w"], precision=_HIGHEST) + params["b"]
  ce = optax.softmax_cross_entropy(logits, jax.nn.one_hot(y, num_classes))
  return jnp.mean(ce) + 0.5 * weight_decay * jnp.sum(params["w"]**2)


@functools.partial(jax.jit,
                   static_argnames=("num_classes", "steps", "batch_size", "unroll"))
def _fit_sgd(train_x, train_y, val_x, val_y, learning_rates, seeds, momentum,
             weight_decay, *, num_classes, steps, batch_size, unroll):
  n, d = train_x.shape

  def run(lr, key):
    params = {"w": jnp.zeros((d, num_classes), jnp.float32),
              "b": jnp.zeros((num_classes,), jnp.float32)}
    opt = optax.sgd(lr, momentum=momentum)

    def step(carry, t):
      params, opt_state = carry
      # The batch depends on the seed only, so under the vmap over learning
      # rates it is gathered once per seed, not once per run.
      idx = _step_indices(key, t, num_examples=n, batch_size=batch_size)
      grads = jax.grad(_loss)(params, train_x[idx], train_y[idx], weight_decay,
                              num_classes)
      updates, opt_state = opt.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)),
                                  jnp.arange(steps), unroll=unroll)
    logits = jnp.matmul(val_x, params["w"], precision=_HIGHEST) + params["b"]
    num_correct = jnp.sum(jnp.argmax(logits, axis=1) == val_y)
    return params["w"], params["b"], num_correct

  keys = jax.vmap(jax.random.key)(seeds)
  over_seeds = jax.vmap(run, in_axes=(None, 0))
  over_lrs = jax.vmap(over_seeds, in_axes=(0, None))
  return over_lrs(learning_rates, keys)


@functools.partial(jax.jit, static_argnames=("num_examples", "steps", "batch_size"))
def _distinct_rows(seeds, *, num_examples: int, steps: int, batch_size: int):
  """Each minibatch of each seed as distinct rows and their weights (multiplicity / batch).

  Returns [S, steps, R] int32 rows (ascending, padded with row 0), [S, steps, R] float32
  weights (0 for padding) with R = min(batch_size, num_examples), and the most distinct rows
  of any batch. sum_j w_j f(x_{rows_j}) is the batch mean of f.
  """
  num_rows = min(batch_size, num_examples)

  def one(batch):
    counts = jnp.zeros((num_examples,), jnp.float32).at[batch].add(1.0)
    present = counts > 0
    slot = jnp.where(present, jnp.cumsum(present) - 1, num_rows)  # num_rows: dropped.
    rows = jnp.zeros((num_rows,), jnp.int32).at[slot].set(
        jnp.arange(num_examples, dtype=jnp.int32), mode="drop")
    weights = jnp.zeros((num_rows,), jnp.float32).at[slot].set(counts, mode="drop")
    return rows, weights / batch_size, jnp.sum(present)

  def over_steps(seed):
    idx = sample_batch_indices(seed, num_examples=num_examples, steps=steps,
                               batch_size=batch_size)
    return jax.vmap(one)(idx)

  rows, weights, distinct = jax.vmap(over_steps)(seeds)
  return rows, weights, jnp.max(distinct, initial=1)


@functools.lru_cache(maxsize=2)
def _batches(seeds: tuple[int, ...], num_examples: int, steps: int,
             batch_size: int) -> tuple[jax.Array, jax.Array]:
  """`_distinct_rows` cut to the most distinct rows of any batch (a static shape).

  A function of the sampling alone (about 40 MB at the paper's sizes), so it is computed
  once per (seeds, N, steps, batch size) and shared by every model scored on a task.
  """
  rows, weights, num_rows = _distinct_rows(
      jnp.asarray(seeds, jnp.uint32), num_examples=num_examples, steps=steps,
      batch_size=batch_size)
  num_rows = int(num_rows)
  return rows[..., :num_rows], weights[..., :num_rows]


@functools.partial(jax.jit, static_argnames=("num_classes", "unroll"))
def _fit_sgd_kernel(train_x, train_y, val_x, val_y, learning_rates, rows, weights, momentum,
                    weight_decay, *, num_classes, unroll):
  """`_fit_sgd` in the span of the training features: W = X^T A, A [N, C].

  From W = 0, every SGD update of W is X_b^T G_b (+ weight_decay * W) = X^T (scatter(G_b) +
  weight_decay * A), and momentum is linear, so W stays X^T A for the same updates of A:
  the logits of a batch are K[idx] A with the Gram matrix K = X X^T, and no [B, D] x [D, C]
  products are needed. Exact (up to float rounding); cheaper whenever N is not much larger
  than D (VTAB-1k: N = 1000, D up to 4320).

  Two more savings, both exact. A batch of B draws with replacement holds fewer distinct
  examples (about 0.47 B for B = 512 of N = 800): logits are computed once per distinct
  example and weighted by its multiplicity. And every learning rate of a seed sees the same
  batch, so their A's sit side by side in one [N, L C] matrix: one product per seed and step.
  Momentum is optax.sgd's (m <- g + momentum m; A <- A - lr m).
  """
  n, _ = train_x.shape
  num_lrs = learning_rates.shape[0]
  num_rows = rows.shape[-1]
  gram = jnp.matmul(train_x, train_x.T, precision=_HIGHEST)        # [N, N]
  val_gram = jnp.matmul(val_x, train_x.T, precision=_HIGHEST)      # [M, N]
  one_hot = jax.nn.one_hot(train_y, num_classes)
  lrs = learning_rates[:, None]                                    # [L, 1]

  def run(rows, weights):  # [steps, R] each: one seed's batches.
    a = jnp.zeros((n, num_lrs, num_classes), jnp.float32)
    b = jnp.zeros((num_lrs, num_classes), jnp.float32)

    def step(carry, batch):
      a, b, trace_a, trace_b = carry
      r, w = batch
      # The distinct rows of the Gram matrix: R N L C multiply-adds.
      logits = jnp.matmul(gram[r], a.reshape(n, -1), precision=_HIGHEST)
      logits = logits.reshape(num_rows, num_lrs, num_classes) + b
      # d(mean cross-entropy) / d(logits), per distinct example.
      g = (jax.nn.softmax(logits) - one_hot[r][:, None, :]) * w[:, None, None]
      # The W-gradient X_b^T g + wd W, written in A's coordinates.
      grad_a = jnp.zeros_like(a).at[r].add(g) + weight_decay * a
      trace_a = grad_a + momentum * trace_a
      trace_b = jnp.sum(g, axis=0) + momentum * trace_b
      return (a - lrs * trace_a, b - lrs * trace_b, trace_a, trace_b), None

    zeros = (a, b, jnp.zeros_like(a), jnp.zeros_like(b))
    (a, b, _, _), _ = jax.lax.scan(step, zeros, (rows, weights), unroll=unroll)
    logits = jnp.matmul(val_gram, a.reshape(n, -1), precision=_HIGHEST)
    logits = logits.reshape(-1, num_lrs, num_classes) + b
    num_correct = jnp.sum(jnp.argmax(logits, axis=-1) == val_y[:, None], axis=0)  # [L]
    weights = jnp.einsum("nd,nlc->ldc", train_x, a, precision=_HIGHEST)
    return weights, b, num_correct

  weights, biases, num_correct = jax.vmap(run)(rows, weights)  # Seeds first: [S, L, ...].
  return (jnp.swapaxes(weights, 0, 1), jnp.swapaxes(biases, 0, 1),
          jnp.swapaxes(num_correct, 0, 1))


def fit_sgd(train_x, train_y, val_x, val_y, *, num_classes: int,
            learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
            steps: int = 2500, batch_size: int = 512,
            seeds: Sequence[int] = DEFAULT_SEEDS, momentum: float = 0.9,
            weight_decay: float = 0.0, form: str = "auto",
            unroll: int = DEFAULT_UNROLL) -> SgdRuns:
  """Trains one softmax classifier per (learning rate, seed), all at once.

  Each run: weights and bias start at zero; `steps` steps of SGD with momentum
  (`optax.sgd`) on the mean softmax cross-entropy of a minibatch plus
  0.5 * weight_decay * ||W||^2 (the bias is not decayed); minibatches from
  `sample_batch_indices(seed, ...)`. All runs are one jax.jit program (a vmap
  over learning rates and seeds of a lax.scan over steps); it is compiled once
  per shape and reused across models and tasks. Features are used as given.

  Args:
    train_x: [N, D] float training features.
    train_y: [N] int training labels in 0..num_classes-1.
    val_x: [M, D] float validation features.
    val_y: [M] int validation labels.
    num_classes: C.
    learning_rates: L learning rates.
    steps: SGD steps per run.
    batch_size: examples per step (sampled with replacement).
    seeds: S int seeds; seed s fixes the minibatches.
    momentum: momentum of optax.sgd (0 for plain SGD).
    weight_decay: L2 penalty coefficient on the weights.
    form: 'primal' (the weights W [D, C]), 'kernel' (W = X^T A with A [N, C]: the same
      iterates, cheaper when N <= D, see `_fit_sgd_kernel`) or 'auto' (kernel when N <= D).
    unroll: SGD steps per iteration of the compiled loop (speed only).

  Returns:
    SgdRuns with weights [L, S, D, C], biases [L, S, C] and val_accuracy
    [L, S] of the weights after the last step.
  """
  if form not in SGD_FORMS:
    raise ValueError(f"Unknown form {form!r}; valid forms: {', '.join(SGD_FORMS)}")
  n, d = np.shape(train_x)
  kernel = form == "kernel" or (form == "auto" and n <= d)
  data = (jnp.asarray(train_x, jnp.float32), jnp.asarray(train_y, jnp.int32),
          jnp.asarray(val_x, jnp.float32), jnp.asarray(val_y, jnp.int32),
          jnp.asarray(learning_rates, jnp.float32).reshape(-1))
  if kernel:
    seeds = tuple(int(seed) for seed in np.ravel(seeds))
    rows, weights = _batches(seeds, int(n), int(steps), int(batch_size))
    weights, biases, num_correct = _fit_sgd_kernel(
        *data, rows, weights, jnp.float32(momentum), jnp.float32(weight_decay),
        num_classes=int(num_classes), unroll=int(unroll))
  else:
    weights, biases, num_correct = _fit_sgd(
        *data, jnp.asarray(seeds, jnp.uint32).reshape(-1), jnp.float32(momentum),
        jnp.float32(weight_decay), num_classes=int(num_classes), steps=int(steps),
        batch_size=int(batch_size), unroll=int(unroll))
  return SgdRuns(weights, biases, np.asarray(num_correct) / np.shape(val_y)[0])


def linear(train_x, train_y, val_x, val_y, *, num_classes: int,
           learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES,
           steps: int = 2500, batch_size: int = 512,
           seeds: Sequence[int] = DEFAULT_SEEDS, momentum: float = 0.9,
           weight_decay: float = 0.0) -> dict:
  """Linear-probe validation accuracy (Renggli et al. 2022).

  Features are standardised with train statistics (see the module docstring),
  then `fit_sgd` trains every (learning rate, seed) run. A run's accuracy is
  the validation accuracy after its last step (no early stopping); for each
  seed the best learning rate counts; the score is the median over seeds.

  Args:
    train_x: [N, D] float training features.
    train_y: [N] int training labels in 0..num_classes-1.
    val_x: [M, D] float validation features.
    val_y: [M] int validation labels.
    num_classes: C.
    learning_rates: L learning rates, the per-seed selection grid.
    steps: SGD steps per run.
    batch_size: examples per step (sampled with replacement).
    seeds: S int seeds.
    momentum: momentum of optax.sgd.
    weight_decay: L2 penalty coefficient on the weights.

  Returns:
    A dict with 'score' (float, the median over seeds of the best validation
    accuracy), 'per_seed' ([S] best accuracy of each seed), 'best_lr_counts'
    ([L] number of seeds whose best learning rate is each one; ties go to the
    earlier learning rate) and 'val_accuracy' ([L, S] every run).
  """
  learning_rates = tuple(float(lr) for lr in np.ravel(learning_rates))
  seeds = tuple(int(s) for s in np.ravel(seeds))
  if not learning_rates or not seeds or min(seeds) < 0:
    raise ValueError(f"Need at least one learning rate and one non-negative "
                     f"seed, got learning_rates={learning_rates}, "
                     f"seeds={seeds}")
  if steps < 0 or batch_size < 1:
    raise ValueError(f"Need steps >= 0 and batch_size >= 1, got steps={steps},"
                     f" batch_size={batch_size}")
  train_x, val_x = standardize(train_x, val_x)
  runs = fit_sgd(train_x, train_y, val_x, val_y, num_classes=num_classes,
                 learning_rates=learning_rates, steps=steps,
                 batch_size=batch_size, seeds=seeds, momentum=momentum,
                 weight_decay=weight_decay)
  acc = np.asarray(runs.val_accuracy, np.float64)  # [L, S]
  per_seed = acc.max(axis=0)
  best_lr_counts = np.bincount(acc.argmax(axis=0), minlength=acc.shape[0])
  return {"score": float(np.median(per_seed)), "per_seed": per_seed,
          "best_lr_counts": best_lr_counts, "val_accuracy": acc}


class RidgeSolution(NamedTuple):
  """Result of `fit_ridge`: one classifier per regulariser.

  Attributes:
    weights: [R, D, C] float64 weights on standardised features.
    biases: [R, C] float64 biases.
    mean: [D] train mean used to standardise.
    std: [D] train std used to standardise (1 for constant dimensions).
  """
  weights: np.ndarray
  biases: np.ndarray
  mean: np.ndarray
  std: np.ndarray


def fit_ridge(train_x, train_y, *, num_classes: int,
              l2_regs: Sequence[float] = DEFAULT_L2_REGS) -> RidgeSolution:
  """Closed-form ridge regression to +/-1 one-hot targets, all regularisers.

  Minimises ||X W + 1 b^T - Y||^2 + l2 ||W||^2 over W, b, where X is the
  standardised train features and Y = 2 * one_hot - 1 (big_vision's few-shot
  targets). The bias is exact and unregularised (X is centred, so
  b = mean(Y)); big_vision instead appends a constant feature of 100, which
  regularises the bias a little. With an unregularised bias, +/-1 and 0/1
  targets give the same argmax predictions.

  One eigendecomposition serves every l2: of the N x N Gram matrix X X^T when
  N <= D (W = X^T Q diag(1 / (e + l2)) Q^T Y), else of the D x D matrix X^T X
  (W = Q diag(1 / (e + l2)) Q^T X^T Y). Computed in float64 with NumPy: small
  eigenvalues matter for small l2 and float32 loses them.

  Args:
    train_x: [N, D] float features.
    train_y: [N] int labels in 0..num_classes-1.
    num_classes: C.
    l2_regs: R regularisers, each > 0.

  Returns:
    RidgeSolution with weights [R, D, C] and biases [R, C].
  """
  l2_regs = np.asarray(l2_regs, np.float64).reshape(-1)
  if l2_regs.size == 0 or np.any(l2_regs <= 0):
    raise ValueError(f"l2_regs must be a non-empty list of positive numbers, "
                     f"got {l2_regs.tolist()}")
  x = np.asarray(train_x, np.float64)
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  x = (x - mean) / std
  y = 2.0 * np.eye(num_classes)[np.asarray(train_y)] - 1.0  # [N, C]
  n, d = x.shape
  if n <= d:
    eigs, q = np.linalg.eigh(x @ x.T)  # [N], [N, N]
    lhs, rhs = x.T @ q, q.T @ y  # [D, N], [N, C]
  else:
    eigs, q = np.linalg.eigh(x.T @ x)  # [D], [D, D]
    lhs, rhs = q, q.T @ (x.T @ y)  # [D, D], [D, C]
  eigs = np.maximum(eigs, 0.0)  # Roundoff can make zero eigenvalues negative.
  scaling = 1.0 / (eigs[None, :] + l2_regs[:, None])  # [R, K]
  weights = np.einsum("dk,rk,kc->rdc", lhs, scaling, rhs)
  biases = np.broadcast_to(y.mean(axis=0), (l2_regs.size, num_classes))
  return RidgeSolution(weights, np.array(biases), mean, std)


def ridge(train_x, train_y, val_x, val_y, *, num_classes: int,
          l2_regs: Sequence[float] = DEFAULT_L2_REGS) -> dict:
  """Validation accuracy of closed-form ridge classifiers (see `fit_ridge`).

  Args:
    train_x: [N, D] float training features.
    train_y: [N] int training labels in 0..num_classes-1.
    val_x: [M, D] float validation features.
    val_y: [M] int validation labels.
    num_classes: C.
    l2_regs: R regularisers, each > 0.

  Returns:
    A dict with 'score' (float, the best validation accuracy over l2_regs),
    'best_l2' (float, the regulariser that reached it; the smallest among
    ties) and 'val_accuracy' ([R] accuracy for each regulariser).
  """
  sol = fit_ridge(train_x, train_y, num_classes=num_classes, l2_regs=l2_regs)
  xv = (np.asarray(val_x, np.float64) - sol.mean) / sol.std
  logits = np.einsum("md,rdc->rmc", xv, sol.weights) + sol.biases[:, None, :]
  acc = np.mean(logits.argmax(axis=2) == np.asarray(val_y)[None, :], axis=1)
  l2_regs = np.asarray(l2_regs, np.float64).reshape(-1)
  order = np.argsort(l2_regs, kind="stable")  # Ties go to the smallest l2.
  best = int(order[np.argmax(acc[order])])
  return {"score": float(acc[best]), "best_l2": float(l2_regs[best]),
          "val_accuracy": acc}


def score(inputs: common.ScoreInputs, *, method: str = "sgd",
          learning_rates: Sequence[float] | None = None,
          steps: int | None = None, batch_size: int | None = None,
          seeds: Sequence[int] | None = None, momentum: float | None = None,
          weight_decay: float | None = None,
          l2_regs: Sequence[float] | None = None) -> dict[str, float]:
  """Linear-probe validation accuracy, by SGD (default) or ridge regression.

  Args:
    inputs: the (model, task) features and labels.
    method: 'sgd' (`linear`) or 'ridge' (`ridge`).
    learning_rates, steps, batch_size, seeds, momentum, weight_decay: options
      of `linear` (method 'sgd' only); None keeps its default.
    l2_regs: regularisers of `ridge` (method 'ridge' only); None keeps its
      default.

  Returns:
    {'score': validation accuracy} plus diagnostics. 'sgd': 'val_acc/lr=LR'
    (median over seeds of each learning rate), 'best_lr_count/lr=LR',
    'val_acc/seed_min' and 'val_acc/seed_max'. 'ridge': 'best_l2' and
    'val_acc/l2=L2' for each regulariser.
  """
  if method not in METHODS:
    raise ValueError(f"Unknown linear method {method!r}; valid methods: "
                     f"{', '.join(METHODS)}")
  sgd_options = dict(learning_rates=learning_rates, steps=steps,
                     batch_size=batch_size, seeds=seeds, momentum=momentum,
                     weight_decay=weight_decay)
  sgd_options = {k: v for k, v in sgd_options.items() if v is not None}
  data = (inputs.train_features, inputs.train_labels, inputs.val_features,
          inputs.val_labels)
  if method == "ridge":
    if sgd_options:
      raise ValueError(f"Options {sorted(sgd_options)} apply to method 'sgd' "
                       "only; method 'ridge' takes l2_regs")
    l2_options = {} if l2_regs is None else {"l2_regs": tuple(l2_regs)}
    res = ridge(*data, num_classes=inputs.num_classes, **l2_options)
    out = {"score": res["score"], "best_l2": res["best_l2"]}
    grid = l2_options.get("l2_regs", DEFAULT_L2_REGS)
    for l2, acc in zip(grid, res["val_accuracy"]):
      out[f"val_acc/l2={l2:g}"] = float(acc)
    return out

  if l2_regs is not None:
    raise ValueError("Option 'l2_regs' applies to method 'ridge' only")
  if "learning_rates" in sgd_options:
    sgd_options["learning_rates"] = tuple(sgd_options["learning_rates"])
  if "seeds" in sgd_options:
    sgd_options["seeds"] = tuple(sgd_options["seeds"])
  res = linear(*data, num_classes=inputs.num_classes, **sgd_options)
  lrs = sgd_options.get("learning_rates", DEFAULT_LEARNING_RATES)
  out = {"score": res["score"],
         "val_acc/seed_min": float(res["per_seed"].min()),
         "val_acc/seed_max": float(res["per_seed"].max())}
  for lr, accs, count in zip(lrs, res["val_accuracy"], res["best_lr_counts"]):
    out[f"val_acc/lr={lr:g}"] = float(np.median(accs))
    out[f"best_lr_count/lr={lr:g}"] = float(count)
  return out
