"""Per-example gradient machinery for gradient-kernel scores (LGC; see `lgc.py` for the math).

Parameter selection by '/'-joined path regex, the K unit output directions, per-example
gradients streamed in chunks (exact rows, or CountSketched as they are produced with buckets
and signs computed from an integer hash), and the jitted chunk functions of the statistics
paths: batched vjp sums, forward-mode products (`jax.linearize`) and the per-example statistics
chunk. Not a score itself (it has no `score` function).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import zlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def key_name(key: Any) -> str:
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
  return {"/".join(key_name(k) for k in path): leaf for path, leaf in flat}


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


def dot64(a, b) -> float:
  """sum over leaves of a_l . b_l, in float64 on the host."""
  return float(sum(np.dot(np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel())
                   for x, y in zip(a, b)))


def _merge_fn(treedef, selected):
  def merge(sel_leaves, rest_leaves):
    sel, rest = iter(sel_leaves), iter(rest_leaves)
    leaves = [next(sel) if s else next(rest) for s in selected]
    return jax.tree_util.tree_unflatten(treedef, leaves)
  return merge


def _forward_fn(apply_fn, treedef, selected):
  """forward(selected leaves, other leaves, images) -> [c, D] float32 outputs."""
  merge = _merge_fn(treedef, selected)

  def forward(sel_leaves, rest_leaves, images):
    y = apply_fn(merge(sel_leaves, rest_leaves), images)
    return jnp.reshape(y, (images.shape[0], -1)).astype(jnp.float32)
  return forward


@functools.lru_cache(maxsize=64)
def stat_fns(apply_fn: Callable[..., Any], treedef,
              selected: tuple[bool, ...], projection_dim: int | None):
  """Jitted chunk functions of the statistics paths (sketch and matrix-free)."""
  forward = _forward_fn(apply_fn, treedef, selected)

  def weighted_sums(sel_leaves, rest_leaves, images, weights, directions):
    # sum_i w_ri Phi_i for each weight row r: leaves [R, K p_l], one forward.
    _, vjp = jax.vjp(lambda s: forward(s, rest_leaves, images), sel_leaves)
    k = directions.shape[0]
    ct = weights[:, None, :, None] * directions[None, :, None, :]  # [R, K, c, D]
    grads = jax.vmap(jax.vmap(lambda t: vjp(t)[0]))(ct)
    return [jnp.reshape(g, (weights.shape[0], -1)) / math.sqrt(k) for g in grads]

  def tangent_products(sel_leaves, rest_leaves, images, tangents, directions):
    # Phi_i . w_t for each tangent t (leaves [T, K p_l]): [T, c]. One linearisation,
    # T K forward-mode products.
    k = directions.shape[0]
    _, jvp = jax.linearize(lambda s: forward(s, rest_leaves, images), sel_leaves)

    def one(tangent):  # leaves [K p_l] -> [c]
      def per_direction(i):
        t = [jnp.reshape(jax.lax.dynamic_index_in_dim(leaf.reshape(k, -1), i, 0, False),
                         s.shape) for leaf, s in zip(tangent, sel_leaves)]
        return jvp(t) @ directions[i]
      return jnp.sum(jax.vmap(per_direction)(jnp.arange(k)), axis=0) / math.sqrt(k)

    return jax.vmap(one)(tangents)

  def example_grads(sel_leaves, rest_leaves, image, directions):
    _, vjp = jax.vjp(lambda s: forward(s, rest_leaves, image[None])[0], sel_leaves)
    return jax.vmap(lambda u: vjp(u)[0])(directions)  # leaves [K, *shape]

  def stats_chunk(sel_leaves, rest_leaves, images, weights, directions, salts, mean,
                  sketch_mean, carry, last_rows, keep_carry):
    # Per-example gradients with the examples last: leaves [K p_l, c]. In this layout the
    # products below are matrix products and the sketch scatters rows of c floats, which
    # XLA:CPU runs an order of magnitude faster than the [c, K p_l] layout.
    grads = jax.vmap(example_grads, in_axes=(None, None, 0, None), out_axes=-1)(
        sel_leaves, rest_leaves, images, directions)
    c, k = images.shape[0], directions.shape[0]
    rows = [jnp.reshape(x, (-1, c)) / math.sqrt(k) for x in grads]  # Phi^T, leaf by leaf.
    # Centred columns g_i = Phi_i - mu (zero for padding), for the exact statistics: one
    # Gram matrix of [g_1..g_c, t, mu] (t: the open class's running sum of g) gives ||g_i||^2,
    # a_i = mu . g_i and every class's ||t_c||^2 and mu . t_c without cancellation.
    centred = [(x - m[:, None]) * weights for x, m in zip(rows, mean)]
    cols = [jnp.concatenate([x, t[:, None], m[:, None]], axis=1)
            for x, t, m in zip(centred, carry, mean)]
    gram = sum(jnp.matmul(m.T, m, precision=_HIGHEST) for m in cols)  # [c + 2, c + 2]
    new_carry = [keep_carry * t + jnp.matmul(x, last_rows, precision=_HIGHEST)
                 for x, t in zip(centred, carry)]
    sq_coords = [jnp.sum(x * x, axis=1) for x in centred]  # sum_i g_i^2, per coordinate.
    quartic = sum(jnp.sum(jnp.square(x * x), axis=0) for x in centred)  # sum_p g_ip^4.
    z = None
    if projection_dim is not None:  # CountSketch of g_i: S Phi_i - S mu (S is linear).
      z = (sketch_columns(rows, salts, projection_dim) - sketch_mean[:, None]) * weights
    return gram, new_carry, sq_coords, quartic, z

  return jax.jit(weighted_sums), jax.jit(tangent_products), jax.jit(stats_chunk)


@dataclasses.dataclass
class Prepared:
  """A model and its images, split for the chunk functions."""
  apply_fn: Callable[..., Any]
  treedef: Any
  mask: tuple[bool, ...]
  sel: list[Any]
  rest: list[Any]
  directions: jax.Array
  salts: list[Any]
  images: Any
  n: int
  chunk: int

  def take(self, index):
    """The images at `index` (host images stay on the host until used)."""
    return self.images[np.asarray(index)]


def check_int(name, value, low):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def prepare(apply_fn, params, images, *, select, num_directions, seed,
             chunk_size) -> Prepared:
  """Validates the options and splits the parameters into selected and the rest."""
  for name, value, low in (("num_directions", num_directions, 1),
                           ("chunk_size", chunk_size, 1), ("seed", seed, 0)):
    check_int(name, value, low)
  if not callable(apply_fn):
    raise ValueError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
  xp = jnp if isinstance(images, jax.Array) else np
  images = xp.asarray(images)
  if images.ndim < 1 or images.shape[0] < 1:
    raise ValueError(f"images must be [N, ...] with N >= 1, got shape "
                     f"{images.shape}")
  chosen = set(select_params(params, select))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = ["/".join(key_name(k) for k in path) for path, _ in flat]
  mask = tuple(p in chosen for p in paths)
  sel = [jnp.asarray(leaf) for (_, leaf), m in zip(flat, mask) if m]
  rest = [leaf for (_, leaf), m in zip(flat, mask) if not m]
  out = jax.eval_shape(apply_fn, params, images[:1])
  if not hasattr(out, "shape") or not out.shape or out.shape[0] != 1:
    raise ValueError("apply_fn(params, images) must return one row per image "
                     f"([N, D]); for 1 image it returned {out}")
  num_outputs = int(np.prod(out.shape[1:]))
  if int(num_directions) * sum(int(np.size(leaf)) for leaf in sel) >= 2**31:
    raise ValueError("num_directions x the number of selected parameters must "
                     "be < 2^31; select fewer parameters")
  return Prepared(
      apply_fn=apply_fn, treedef=treedef, mask=mask, sel=sel, rest=rest,
      directions=output_directions(num_outputs, int(num_directions), seed),
      salts=[jnp.asarray(_leaf_salt(seed, p)) for p, m in zip(paths, mask) if m],
      images=images, n=int(images.shape[0]), chunk=min(int(chunk_size), int(images.shape[0])))


def sketch_columns(cols, salts, projection_dim: int):
  """CountSketch [d, c] of per-leaf columns [K p_l, c]: the buckets and signs of `_sketch`
  (which sketches rows), scattering rows of c floats, one leaf at a time."""
  z = jnp.zeros((projection_dim, cols[0].shape[1]), jnp.float32)
  for x, salt in zip(cols, salts):
    h = _mix32(_mix32(jax.lax.iota(jnp.uint32, x.shape[0])) ^ salt)
    bucket = (h % np.uint32(projection_dim)).astype(jnp.int32)
    sign = 1.0 - 2.0 * (_mix32(h ^ np.uint32(0x9E3779B9)) >> 31).astype(jnp.float32)
    z = z.at[bucket].add(x * sign[:, None])
  return z


@functools.partial(jax.jit, static_argnums=2)
def sketch_vector(leaves, salts, projection_dim: int):
  """CountSketch [d] of one vector given as leaves [K p_l]."""
  return sketch_columns([x[:, None] for x in leaves], salts, projection_dim)[:, 0]


@functools.lru_cache(maxsize=64)
def _chunk_fns(apply_fn: Callable[..., Any], treedef,
               selected: tuple[bool, ...], projection_dim: int | None):
  """The jitted rows-chunk function (exact or sketched rows of Phi) for one model."""
  forward = _forward_fn(apply_fn, treedef, selected)

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

  return jax.jit(rows_chunk)


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
  if projection_dim is not None:
    check_int("projection_dim", projection_dim, 1)
  prep = prepare(apply_fn, params, images, select=select,
                  num_directions=num_directions, seed=seed, chunk_size=chunk_size)
  treedef, mask, sel, rest = prep.treedef, prep.mask, prep.sel, prep.rest
  directions, salts, images, n = prep.directions, prep.salts, prep.images, prep.n
  xp = jnp if isinstance(images, jax.Array) else np
  # The mean pass (batched vjp sums) is the statistics paths' compiled function.
  mean_fn = stat_fns(apply_fn, treedef, mask, None)[0]
  rows_fn = _chunk_fns(apply_fn, treedef, mask,
                       None if projection_dim is None else int(projection_dim))

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
      part = [p[0] for p in mean_fn(sel, rest, chunk, weights[None, i * c:(i + 1) * c],
                                    directions)]  # sum_i w_i Phi_i
      mean = part if not mean else [m + p for m, p in zip(mean, part)]
    mean = [m / n for m in mean]
  rows = [rows_fn(sel, rest, chunk, directions, salts, mean)
          for chunk in chunks]
  return jnp.concatenate(rows, axis=0)[:n]

