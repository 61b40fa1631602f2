"""Label-Gradient Correlation (LGC): how well a network's gradient kernel matches the labels.

Deshpande et al., "A linearized framework and a new benchmark for model
selection for fine-tuning" (arXiv:2102.00084), Sec. 3, eq. 8. Fine-tuning
linearised around the pre-trained weights theta is kernel regression with the
gradient (tangent) kernel Theta_ij = grad f(x_i) . grad f(x_j); LGC scores a
model by the Pearson correlation between the entries of Theta and of the
label-similarity matrix Y (Y_ij = +1 if y_i == y_j else -1), computed exactly as
LFC (`lfc.kernel_label_correlation`) with the per-example gradients as rows.

The kernel, exactly. The network output f(x; theta) is a vector in R^D (here
`apply_fn(params, images) -> [N, D]`, the pre-logit features: the target head
does not exist yet). With K unit output directions u_1..u_K (Gaussian vectors
normalised to ||u_k|| = 1, drawn from `seed`) and theta_S the parameters that
`select` picks,

  g_i^(k) = d/d theta_S <u_k, f(x_i; theta)>,
  Theta_ij = (1/K) sum_k g_i^(k) . g_j^(k) = Phi_i . Phi_j,
  Phi_i = [g_i^(1), ..., g_i^(K)] / sqrt(K)  (length K P, P = |theta_S|).

Since E[u u^T] = I / D for a uniform unit vector, Theta is a K-sample estimate
of the trace kernel (1/D) sum_o grad f_o(x_i) . grad f_o(x_j). Unit (not raw
Gaussian) directions make one case exact: for f(x) = W h(x) with only W
selected, g_i^(k) = u_k h(x_i)^T, so Theta_ij = h(x_i) . h(x_j) for any K and
LGC equals LFC of the features h (and selecting a bias b too adds the constant
1 to Theta, which the correlation ignores).

Two paths, both streaming `chunk_size` examples at a time through a vmap of
per-example `jax.vjp` (one forward per example, K cotangents):

* exact (`projection_dim=None`): Phi itself, [N, K P]; memory O(N K P), for
  small models and tests.
* sketched (`projection_dim=d`): a first pass computes the mean gradient
  m = mean_i Phi_i exactly (one batched vjp per chunk). Then each chunk's rows
  are split as Phi_i = (Phi_i . m) m / ||m||^2 + r_i: the part along m is kept
  exactly as one column Phi_i . m / ||m||, and r_i is CountSketched to d
  columns as it is produced: coordinate (k, p) of leaf l is added, with a
  random sign, to one of d buckets, bucket and sign computed on the fly from an
  integer hash of (seed, the leaf's path, the coordinate's index). The rows
  Z_i [d + 1] have E[Z_i . Z_j] = Theta_ij, with error O(||r_i|| ||r_j|| /
  sqrt(d)); per-example gradients share a large mean (often most of their
  norm), which would otherwise dominate that error. The P x d projection is
  never formed or stored (it is recomputed from the hash), so memory is
  O(N d + K P + chunk K P), and the cost is O(K P) per example on top of the
  gradients, where a dense Gaussian projection would cost O(K P d).

Conventions. The paper builds Theta from the gradients of the network output
and correlates its entries with Y; how a D-dimensional output becomes one
kernel (the K random unit directions above, averaged) is this module's choice,
as are the sketch and the parameter selection. The correlation itself is LFC's
(`lfc.py`: entries centred over all N^2 pairs, Frobenius norms).

A matrix-free path (class-indicator quadratic forms through jvp/vjp plus
Hutchinson probes for ||Theta||_F) is not implemented.

Which parameters: `select` is a regex searched in each parameter's '/'-joined
path (`param_paths`); None takes all floating-point parameters. For the
pipeline, pass the last block before pooling, e.g. for the mini zoo's nets
(`models/nets.py`, paths 'params/stage2_block0/conv1/kernel', ...): CNN
r'(^|/)stage2_conv1/', ResNet r'(^|/)(stage2_block0|norm)/', Mixer
r'(^|/)(block1|norm)/'. Low-data fine-tuning moves the top of the network
most, backpropagation then stops at that block, and P stays small enough for
the sketch. `score` picks the path itself (`projection_dim='auto'`): exact when
N K P <= 2^26 floats, else a 1024-dimensional sketch.
"""

from __future__ import annotations

import functools
import math
import re
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common
from model_search.scores import lfc as lfc_lib

# `score`'s automatic choice: exact while Phi [N, K P] has at most this many
# floats (256 MiB), else a sketch of this dimension.
# The scores stage loads the model and the train800 images for this score (scores/__init__.py).
REQUIRES = ("apply_fn", "params", "train_images")
AUTO_MAX_EXACT_FLOATS = 2**26
AUTO_PROJECTION_DIM = 1024


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def flatten_params(params: Any) -> dict[str, Any]:
  """Maps each leaf of a params pytree to its '/'-joined path.

  Args:
    params: a pytree (nested dicts as Flax makes them, lists, dataclasses...).

  Returns:
    {path: leaf} in tree order, e.g. {'head/kernel': ..., 'stage0_conv0/bias':
    ...}; a flat dict already keyed by '/'-joined paths maps to itself.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in flat}


def param_paths(params: Any) -> list[str]:
  """The '/'-joined paths of the leaves of `params`, in tree order."""
  return list(flatten_params(params))


def select_params(params: Any, select: str | None) -> list[str]:
  """The paths of the floating-point parameters that `select` picks.

  Args:
    params: a params pytree.
    select: a regex searched (`re.search`) in each '/'-joined path; None picks
      every floating-point parameter.

  Returns:
    The selected paths, in tree order.

  Raises:
    ValueError: for an invalid regex, or when nothing is selected (the message
      lists some of the paths there are).
  """
  flat = flatten_params(params)
  floats = [p for p, leaf in flat.items()
            if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)]
  try:
    pattern = re.compile(select) if select is not None else None
  except re.error as e:
    raise ValueError(f"select={select!r} is not a valid regex: {e}") from e
  chosen = [p for p in floats if pattern is None or pattern.search(p)]
  if not chosen:
    shown = ", ".join(floats[:12]) + (", ..." if len(floats) > 12 else "")
    raise ValueError(
        f"select={select!r} matches none of the {len(floats)} floating-point "
        f"parameter paths ({shown or 'there are none'}); select is a regex "
        "searched in each '/'-joined path, e.g. r'^head/kernel$'")
  return chosen


def output_directions(num_outputs: int, num_directions: int,
                      seed: int = 0) -> jax.Array:
  """The K unit output directions of seed `seed`: [num_directions, num_outputs]."""
  # NumPy, not jax.random: K x D numbers need no compiled kernel, and the
  # directions are the same on every backend.
  u = np.random.default_rng([seed, 0]).standard_normal(
      (num_directions, num_outputs))
  return jnp.asarray(u / np.linalg.norm(u, axis=1, keepdims=True), jnp.float32)


def _mix32(x):
  """A 32-bit integer hash ("lowbias32", C. Wellons), on uint32 arrays."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _leaf_salt(seed: int, path: str) -> np.uint32:
  # By path, not position, so a leaf's sketch does not depend on what else
  # is selected.
  with np.errstate(over="ignore"):
    x = np.uint32(zlib.crc32(path.encode())) ^ _mix32(
        np.uint32(seed & 0xFFFFFFFF) * np.uint32(0x9E3779B1) + np.uint32(1))
    return _mix32(np.uint32(x))


def _sketch(rows, salts, projection_dim: int):
  """CountSketch [c, d] of per-leaf rows [c, K p_l] (lists over leaves).

  Coordinate j of leaf l goes to bucket h % d with sign +-1 from the top bit
  of a second hash, h = mix(mix(j) ^ salt_l). Computed here rather than
  stored: O(1) memory, a few integer ops per coordinate. mix(j) is a
  bijection, so two leaves' hash inputs coincide only at scattered
  coordinates, never along a shifted range.
  """
  # All leaves in one pass: XLA:CPU compiles each scatter and each integer
  # elementwise chain slowly, so one of each instead of one per leaf.
  index = jnp.concatenate([jax.lax.iota(jnp.uint32, r.shape[1]) for r in rows])
  salt = jnp.concatenate([jnp.full((r.shape[1],), s, jnp.uint32)
                          for r, s in zip(rows, salts)])
  h = _mix32(_mix32(index) ^ salt)
  bucket = (h % np.uint32(projection_dim)).astype(jnp.int32)
  sign = 1.0 - 2.0 * (_mix32(h ^ np.uint32(0x9E3779B9)) >> 31).astype(
      jnp.float32)
  values = jnp.concatenate(rows, axis=1) * sign
  z = jnp.zeros((values.shape[0], projection_dim), jnp.float32)
  return z.at[:, bucket].add(values)


@functools.lru_cache(maxsize=64)
def _chunk_fns(apply_fn: Callable[..., Any], treedef,
               selected: tuple[bool, ...], projection_dim: int | None):
  """Jitted (mean-gradient chunk, rows chunk) functions for one model."""

  def merge(sel_leaves, rest_leaves):
    sel, rest = iter(sel_leaves), iter(rest_leaves)
    leaves = [next(sel) if s else next(rest) for s in selected]
    return jax.tree_util.tree_unflatten(treedef, leaves)

  def forward(sel_leaves, rest_leaves, images):
    y = apply_fn(merge(sel_leaves, rest_leaves), images)
    return jnp.reshape(y, (images.shape[0], -1)).astype(jnp.float32)

  def mean_chunk(sel_leaves, rest_leaves, images, weights, directions):
    # sum_i w_i g_i^(k) for every k from one batched forward: leaves [K p_l].
    _, vjp = jax.vjp(lambda s: forward(s, rest_leaves, images), sel_leaves)
    cotangents = weights[None, :, None] * directions[:, None, :]  # [K, c, D]
    grads = jax.vmap(lambda ct: vjp(ct)[0])(cotangents)
    return [jnp.reshape(g, (-1,)).astype(jnp.float32) for g in grads]

  def example_grads(sel_leaves, rest_leaves, image, directions):
    _, vjp = jax.vjp(lambda s: forward(s, rest_leaves, image[None])[0],
                     sel_leaves)
    # One cotangent per direction: leaves [K, *shape].
    return jax.vmap(lambda u: vjp(u)[0])(directions)

  def rows_chunk(sel_leaves, rest_leaves, images, directions, salts, mean):
    grads = jax.vmap(example_grads, in_axes=(None, None, 0, None))(
        sel_leaves, rest_leaves, images, directions)
    c, k = images.shape[0], directions.shape[0]
    rows = [jnp.reshape(g, (c, -1)).astype(jnp.float32) / math.sqrt(k)
            for g in grads]  # Phi's columns, leaf by leaf.
    if projection_dim is None:
      return jnp.concatenate(rows, axis=1)
    # Phi_i = b_i m / ||m||^2 + (the rest, orthogonal to m): the first part
    # exactly as one coordinate b_i / ||m||, the rest sketched, using
    # S(rest) = S(Phi_i) - b_i S(m) / ||m||^2 (S is linear).
    b = sum(jnp.matmul(row, m, precision=jax.lax.Precision.HIGHEST)
            for row, m in zip(rows, mean))  # [c] = Phi_i . m
    m_sq = sum(jnp.sum(m * m) for m in mean)
    inv = jnp.where(m_sq > 0, 1.0 / m_sq, 0.0)
    # S(m) is sketched with the chunk, as its last row: one more example.
    z = _sketch([jnp.concatenate([row, m[None]]) for row, m in zip(rows, mean)],
                salts, projection_dim)
    z = z[:c] - (b * inv)[:, None] * z[c]
    return jnp.concatenate([z, (b * jnp.sqrt(inv))[:, None]], axis=1)

  return jax.jit(mean_chunk), jax.jit(rows_chunk)


def gradient_features(apply_fn: Callable[..., Any], params: Any, images, *,
                      select: str | None = None,
                      projection_dim: int | None = None,
                      num_directions: int = 8, seed: int = 0,
                      chunk_size: int = 16) -> jax.Array:
  """Rows whose Gram matrix is the gradient kernel Theta (see module doc).

  Args:
    apply_fn: `apply_fn(params, images) -> [N, D]` (other output shapes are
      flattened per example).
    params: the parameters `apply_fn` takes (a pytree).
    images: [N, ...] inputs; `apply_fn` sees batches of one image (and, for
      the sketch's mean gradient, chunks).
    select: regex picking parameters by '/'-joined path; None: all.
    projection_dim: None for Phi itself ([N, K P], Phi Phi^T = Theta); an int d
      for Z [N, d + 1] with E[Z Z^T] = Theta: the component of Phi_i along the
      mean gradient m exactly (last column, Phi_i . m / ||m||) and the rest
      CountSketched to d columns.
    num_directions: K, the number of unit output directions.
    seed: fixes the directions and the sketch.
    chunk_size: examples whose per-example gradients ([chunk, K, P]) are held
      at once.

  Returns:
    [N, K P] (exact) or [N, d + 1] (sketched) float32 rows.

  Raises:
    ValueError: for bad options, a `select` that matches nothing or an
      `apply_fn` whose outputs do not have one row per image.
  """
  for name, value, low in (("num_directions", num_directions, 1),
                           ("chunk_size", chunk_size, 1), ("seed", seed, 0)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
        value < low):
      raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
  if projection_dim is not None and (
      isinstance(projection_dim, bool) or
      not isinstance(projection_dim, (int, np.integer)) or projection_dim < 1):
    raise ValueError("projection_dim must be None (exact Gram matrix) or an "
                     f"int >= 1 (sketch dimension), got {projection_dim!r}")
  if not callable(apply_fn):
    raise ValueError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
  # Host images stay on the host; each chunk is transferred as it is used.
  xp = jnp if isinstance(images, jax.Array) else np
  images = xp.asarray(images)
  if images.ndim < 1 or images.shape[0] < 1:
    raise ValueError(f"images must be [N, ...] with N >= 1, got shape "
                     f"{images.shape}")
  n = images.shape[0]
  chosen = set(select_params(params, select))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = ["/".join(_key_name(k) for k in path) for path, _ in flat]
  mask = tuple(p in chosen for p in paths)
  sel = [jnp.asarray(leaf) for (_, leaf), m in zip(flat, mask) if m]
  rest = [leaf for (_, leaf), m in zip(flat, mask) if not m]

  out = jax.eval_shape(apply_fn, params, images[:1])
  if not hasattr(out, "shape") or not out.shape or out.shape[0] != 1:
    raise ValueError("apply_fn(params, images) must return one row per image "
                     f"([N, D]); for 1 image it returned {out}")
  num_outputs = int(np.prod(out.shape[1:]))
  directions = output_directions(num_outputs, int(num_directions), seed)
  salts = [jnp.asarray(_leaf_salt(seed, p)) for p, m in zip(paths, mask) if m]
  if int(num_directions) * sum(int(np.size(leaf)) for leaf in sel) >= 2**31:
    raise ValueError("num_directions x the number of selected parameters must "
                     "be < 2^31; select fewer parameters")
  # The mean pass does not depend on d: share its compiled function.
  mean_fn = _chunk_fns(apply_fn, treedef, mask, None)[0]
  rows_fn = _chunk_fns(apply_fn, treedef, mask,
                       None if projection_dim is None else int(projection_dim))[1]

  c = min(int(chunk_size), n)
  num_chunks = -(-n // c)
  pad = num_chunks * c - n
  if pad:  # Repeat the last image so every chunk has one compiled shape.
    images = xp.concatenate(
        [images, xp.repeat(images[-1:], pad, axis=0)], axis=0)
  chunks = [images[i * c:(i + 1) * c] for i in range(num_chunks)]
  mean = []
  if projection_dim is not None:
    # The sketch's error scales with what it sketches; gradients share a large
    # mean (often most of their norm), which is handled exactly instead. (Any
    # m keeps E[Z Z^T] = Theta; the exact mean makes the sketched part small.)
    weights = np.ones(num_chunks * c, np.float32)
    weights[n:] = 0.0  # Padding rows.
    for i, chunk in enumerate(chunks):
      part = mean_fn(sel, rest, chunk, weights[i * c:(i + 1) * c], directions)
      mean = part if not mean else [m + p for m, p in zip(mean, part)]
    mean = [m / (n * math.sqrt(num_directions)) for m in mean]
  rows = [rows_fn(sel, rest, chunk, directions, salts, mean)
          for chunk in chunks]
  return jnp.concatenate(rows, axis=0)[:n]


def lgc(apply_fn: Callable[..., Any], params: Any, images, labels, *,
        select: str | None = None, projection_dim: int | None = None,
        num_directions: int = 8, seed: int = 0, chunk_size: int = 16,
        num_classes: int | None = None) -> float:
  """Label-Gradient Correlation (Deshpande et al. 2021, Sec. 3, eq. 8).

  Args:
    apply_fn: `apply_fn(params, images) -> [N, D]`, the network output.
    params: the parameters `apply_fn` takes (a pytree).
    images: [N, ...] inputs (e.g. [N, H, W, 3] float32 images).
    labels: [N] int labels in 0..C-1.
    select: regex searched in each parameter's '/'-joined path (see
      `param_paths`); None: all floating-point parameters.
    projection_dim: None for the exact gradient Gram matrix (memory O(N K P));
      an int d for per-example gradients CountSketched to d dimensions as they
      are produced (memory O(N d)).
    num_directions: K, unit output directions the gradients are taken along.
    seed: fixes the directions and the sketch.
    chunk_size: examples whose per-example gradients are held at once.
    num_classes: C; default max(labels) + 1.

  Returns:
    The Pearson correlation between the entries of Theta and of Y, in
    [-1, 1]; higher = the gradient kernel follows the classes more closely.

  Raises:
    ValueError: for bad options or labels, a single class present, a `select`
      that matches nothing, or per-example gradients that are all equal (e.g.
      the selected parameters do not change the output).
  """
  labels = np.asarray(labels)
  n = np.shape(images)[0] if np.ndim(images) else 0
  lfc_lib.check_labels(labels, n, num_classes=num_classes, what="images")
  phi = gradient_features(apply_fn, params, images, select=select,
                          projection_dim=projection_dim,
                          num_directions=num_directions, seed=seed,
                          chunk_size=chunk_size)
  return lfc_lib.kernel_label_correlation(
      phi, labels, num_classes=num_classes,
      what=f"per-example gradients (select={select!r})")


def score(inputs: common.ScoreInputs, *, select: str | None = None,
          projection_dim: int | str | None = "auto", num_directions: int = 8,
          seed: int = 0, chunk_size: int = 16) -> dict[str, float]:
  """LGC on the train images and labels (the paper uses the target train set).

  Args:
    inputs: needs apply_fn, params and train_images.
    select: regex picking parameters by '/'-joined path; None: all (see the
      module doc for the pipeline's choice, the last block before pooling).
    projection_dim: 'auto' (exact when N K P <= AUTO_MAX_EXACT_FLOATS, else
      AUTO_PROJECTION_DIM), None (exact) or an int sketch dimension.
    num_directions: K output directions.
    seed: fixes the directions and the sketch.
    chunk_size: examples whose per-example gradients are held at once.

  Returns:
    {'score': LGC in [-1, 1] (higher = better), 'exact': 1.0 for the exact path
    and 0.0 for the sketch, 'projection_dim': d (0 when exact),
    'num_selected_params': P, 'num_selected_leaves': selected arrays}.
  """
  inputs.require("apply_fn", "params", "train_images", score="lgc")
  chosen = set(select_params(inputs.params, select))
  num_params = sum(int(np.size(leaf)) for p, leaf in
                   flatten_params(inputs.params).items() if p in chosen)
  if isinstance(projection_dim, str):
    if projection_dim != "auto":
      raise ValueError(f"Unknown projection_dim {projection_dim!r}; valid: "
                       "'auto', None (exact) or an int >= 1")
    exact_floats = inputs.num_train * int(num_directions) * num_params
    projection_dim = (None if exact_floats <= AUTO_MAX_EXACT_FLOATS else
                      AUTO_PROJECTION_DIM)
  value = lgc(inputs.apply_fn, inputs.params, inputs.train_images,
              inputs.train_labels, select=select,
              projection_dim=projection_dim, num_directions=num_directions,
              seed=seed, chunk_size=chunk_size,
              num_classes=inputs.num_classes)
  return {"score": value,
          "exact": float(projection_dim is None),
          "projection_dim": float(projection_dim or 0),
          "num_selected_params": float(num_params),
          "num_selected_leaves": float(len(chosen))}
