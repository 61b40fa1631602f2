"""The kernel statistics LGC's correlation needs, by the sketch and the matrix-free paths.

See `lgc.py`'s module docstring for the decomposition (class terms, a_i, ||G||_F^2) and for
what each path computes exactly and what it estimates. Not a score itself.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import gradient_kernel as gk
from model_search.scores import lfc as lfc_lib

_HIGHEST = jax.lax.Precision.HIGHEST


def _segments(labels_sorted: np.ndarray, weights: np.ndarray, c: int):
  """Per chunk of c class-sorted examples: its classes and how they continue across chunks.

  Returns a list of (local class ids [c], carry_in, continues, last_rows [c], keep_carry):
  carry_in: the chunk's first class continues the previous chunk's last; continues: the
  chunk's last class goes on into the next chunk; last_rows: indicator of the rows of the
  last class (whose running sum is carried); keep_carry: 1 when that class also started
  before this chunk.
  """
  out = []
  num_chunks = len(labels_sorted) // c
  for j in range(num_chunks):
    chunk, w = labels_sorted[j * c:(j + 1) * c], weights[j * c:(j + 1) * c]
    _, ids = np.unique(chunk, return_inverse=True)
    ids = ids.reshape(-1)
    last = int(ids[-1])
    carry_in = bool(j > 0 and labels_sorted[j * c - 1] == chunk[0])
    continues = bool(j + 1 < num_chunks and labels_sorted[(j + 1) * c] == chunk[-1])
    last_rows = ((ids == last) * w).astype(np.float32)
    out.append((ids, carry_in, continues, last_rows,
                np.float32(carry_in and last == 0)))
  return out


def correlation(stats: dict[str, Any], what: str) -> float:
  """LFC's formula (lfc.py module doc) from the kernel statistics, in float64."""
  counts = np.asarray(stats["counts"], np.float64)
  n = float(np.sum(counts))
  spread_sq = stats["centred_sq"] / max(stats["centred_sq"] + n * stats["mean_sq"], 1e-300)
  if not np.isfinite(spread_sq):
    raise ValueError(f"{what} contain non-finite values")
  if math.sqrt(spread_sq) <= lfc_lib.CONSTANT_RTOL:
    raise ValueError(
        f"{what} are (numerically) the same for every example "
        f"(||Phi - mean(Phi)||_F / ||Phi||_F = {math.sqrt(spread_sq):.3g}), so the kernel "
        "is constant and its correlation with the labels is undefined")
  num = 2.0 * (2.0 * stats["nc_mu_t"] + stats["class_sq"])
  q = np.sum((counts / n) ** 2)
  den_y = 4.0 * n * n * q * (1.0 - q)
  # A Frobenius estimate below the part that is known exactly is noise: clip to it.
  frobenius = max(stats["frobenius"], stats["frobenius_floor"])
  den_k = 2.0 * n * stats["a_sq"] + frobenius
  return float(np.clip(num / math.sqrt(den_k * den_y), -1.0, 1.0))


def _sorted_chunks(labels: np.ndarray, c: int, per_class: bool):
  """Class-sorted example order, padded into chunks.

  Returns (order [M] int: example index per slot, padding slots repeat the last example;
  weights [M]: 1 for examples, 0 for padding; chunk size per chunk). With `per_class`, no
  chunk mixes classes: each class is split into chunks of c, the last one of a class padded
  to the next power of two (so a few shapes are compiled).
  """
  order = np.argsort(labels, kind="stable")
  if not per_class:
    m = -(-len(order) // c) * c
    slots = np.concatenate([order, np.repeat(order[-1:], m - len(order))])
    weights = (np.arange(m) < len(order)).astype(np.float32)
    return slots, weights, [c] * (m // c)
  slots, weights, sizes = [], [], []
  for cls in np.unique(labels):
    members = order[labels[order] == cls]
    for start in range(0, len(members), c):
      part = members[start:start + c]
      size = min(c, 1 << (len(part) - 1).bit_length())
      slots.append(np.concatenate([part, np.repeat(part[-1:], size - len(part))]))
      weights.append((np.arange(size) < len(part)).astype(np.float32))
      sizes.append(size)
  return np.concatenate(slots), np.concatenate(weights), sizes


def _mean_gradient(weighted_sums, prep, chunks):
  """mu = mean_i Phi_i, leaves [K p_l], from one batched vjp per chunk."""
  total = None
  for images, weights in chunks:
    part = weighted_sums(prep.sel, prep.rest, images, weights[None], prep.directions)
    part = [p[0] for p in part]
    total = part if total is None else [t + p for t, p in zip(total, part)]
  return [t / prep.n for t in total]


def sketch_statistics(prep, labels: np.ndarray, projection_dim: int) -> dict[str, Any]:
  """Kernel statistics with the class terms exact and ||G||_F^2 from a debiased sketch."""
  weighted_sums, _, stats_chunk = gk.stat_fns(prep.apply_fn, prep.treedef, prep.mask,
                                            projection_dim)
  c = prep.chunk
  order, weights, sizes = _sorted_chunks(labels, c, per_class=False)
  chunks = [(prep.take(order[i * c:(i + 1) * c]), weights[i * c:(i + 1) * c])
            for i in range(len(sizes))]
  mean = _mean_gradient(weighted_sums, prep, chunks)
  sketch_mean = gk.sketch_vector(mean, prep.salts, projection_dim)
  sorted_labels = labels[order]
  segments = _segments(sorted_labels, weights, c)
  carry = [jnp.zeros_like(m) for m in mean]
  outputs, v = [], None  # v = sum_i g_i^2 per coordinate, accumulated on the device.
  for (images, w), (_, _, _, last_rows, keep) in zip(chunks, segments):
    gram, carry, sq_coords, quartic, z = stats_chunk(
        prep.sel, prep.rest, images, w, prep.directions, prep.salts, mean, sketch_mean,
        carry, last_rows, keep)
    v = sq_coords if v is None else [x + y for x, y in zip(v, sq_coords)]
    outputs.append((gram, quartic, z))
  # The exact statistics, from each chunk's Gram matrix of [g_1..g_c, t, mu] (float64).
  s, a, class_sq, nc_mu_t = [], [], 0.0, 0.0
  counts = np.bincount(labels)
  for j, ((gram, _, _), (ids, carry_in, continues, _, _)) in enumerate(
      zip(outputs, segments)):
    g = np.asarray(gram, np.float64)
    w = weights[j * c:(j + 1) * c]
    s.append(np.diag(g)[:c])
    a.append(g[:c, c + 1])
    for k in range(int(ids[-1]) + 1):
      if k == int(ids[-1]) and continues:
        continue  # Finished in a later chunk, from its carried sum.
      pick = np.zeros(c + 2)
      pick[:c] = (ids == k) * w
      pick[c] = float(k == 0 and carry_in)  # The class's sum over earlier chunks.
      n_c = float(counts[sorted_labels[j * c + int(np.argmax(ids == k))]])
      class_sq += float(pick @ g @ pick)  # ||t_c||^2
      nc_mu_t += n_c * float(pick @ g[:, c + 1])  # n_c mu . t_c
  keep = weights > 0
  s = np.concatenate(s)[keep]
  a = np.concatenate(a)[keep]
  quartic = np.concatenate([np.asarray(o[1], np.float64) for o in outputs])[keep]
  z = jnp.concatenate([o[2] for o in outputs], axis=1)[:, np.flatnonzero(keep)]  # [d, N]
  d = float(projection_dim)
  v_sq = gk.dot64(v, v)
  # E sum_ij (z_i . z_j)^2 over the CountSketch, for columns g_i (see the module doc):
  #   sum_ij (g_i.g_j)^2 (1 + 1/d) + ((sum_i s_i)^2 - 2 ||v||^2) / d,
  # v = sum_i g_i^2 per coordinate. The diagonal (i = j) is known exactly (s_i^2), so
  # only the off-diagonal part is estimated, with its own correction.
  gram = np.asarray(jnp.matmul(z.T, z, precision=_HIGHEST), np.float64)  # N x N
  z_sq = np.diag(gram)
  off = float(np.sum(gram * gram) - np.sum(z_sq * z_sq))
  off_bias = ((np.sum(s) ** 2 - np.sum(s * s)) - 2.0 * (v_sq - np.sum(quartic))) / d
  frobenius = float(np.sum(s * s) + (off - off_bias) / (1.0 + 1.0 / d))
  return {"counts": counts[counts > 0], "nc_mu_t": nc_mu_t, "class_sq": class_sq,
          "a_sq": float(np.sum(a * a)), "centred_sq": float(np.sum(s)),
          "mean_sq": gk.dot64(mean, mean), "frobenius": frobenius,
          "frobenius_floor": float(np.sum(s * s))}


def _vjp_sweep(weighted_sums, prep, rows: np.ndarray):
  """Phi^T r for each row r of rows [R, N] (leaves [R, K p_l]), one vjp per chunk."""
  c = prep.chunk
  order, weights, sizes = _sorted_chunks(np.zeros(prep.n, np.int64), c, per_class=False)
  total = None
  for i in range(len(sizes)):
    idx = order[i * c:(i + 1) * c]
    part = weighted_sums(prep.sel, prep.rest, prep.take(idx),
                         rows[:, idx] * weights[None, i * c:(i + 1) * c], prep.directions)
    total = part if total is None else [a + b for a, b in zip(total, part)]
  return total


def _jvp_sweep(tangent_products, prep, tangents) -> np.ndarray:
  """Phi w for each tangent w (leaves [T, K p_l]): [T, N], one linearisation per chunk."""
  c = prep.chunk
  order, _, sizes = _sorted_chunks(np.zeros(prep.n, np.int64), c, per_class=False)
  out = [np.asarray(tangent_products(prep.sel, prep.rest, prep.take(order[i * c:(i + 1) * c]),
                                     tangents, prep.directions), np.float64)
         for i in range(len(sizes))]
  return np.concatenate(out, axis=1)[:, :prep.n]  # order is 0..N-1, then padding.


def _centred_products(tangent_products, prep, mean, sums, weights_sum):
  """G r for rows r given Phi^T r (`sums`, leaves [R, K p_l]) and sum_i r_i.

  G r = J_c (J_c^T r) with J_c^T r = Phi^T r - (sum_i r_i) mu and J_c w = Phi w - (mu . w).
  """
  tangents = [p - jnp.asarray(weights_sum, jnp.float32)[:, None] * m[None]
              for m, p in zip(mean, sums)]
  mu_dot = np.array(sum(np.asarray(t @ m, np.float64) for t, m in zip(tangents, mean)))
  return _jvp_sweep(tangent_products, prep, tangents) - mu_dot[:, None]


def matrix_free_statistics(prep, labels: np.ndarray, num_probes: int,
                            seed: int) -> dict[str, Any]:
  """Kernel statistics from vjp / jvp products only; tr(G) and ||G||_F^2 by Hutch++."""
  weighted_sums, tangent_products, _ = gk.stat_fns(prep.apply_fn, prep.treedef, prep.mask,
                                                 None)
  add = lambda a, b: b if a is None else [x + y for x, y in zip(a, b)]
  rng = np.random.default_rng([seed, 1])
  # Hutch++ (Meyer et al. 2021): a third of the products find G's top subspace, whose
  # part of the trace is taken exactly, the rest go to Hutchinson on the remainder.
  s = max(1, num_probes // 3)
  range_probes = rng.choice(np.array([-1.0, 1.0], np.float32), size=(s, prep.n))
  # Sweep 1, over chunks of one class each: weight rows [membership, range probes] give
  # the class sum S_c = sum_{i in c} Phi_i and Phi^T z_r, from one vjp per chunk.
  order, weights, sizes = _sorted_chunks(labels, prep.chunk, per_class=True)
  starts = np.cumsum([0] + sizes)
  total, weighted, probe_sums, class_sum, class_sum_sq = None, None, None, None, 0.0
  for j, size in enumerate(sizes):
    idx, w = order[starts[j]:starts[j + 1]], weights[starts[j]:starts[j + 1]]
    rows = np.concatenate([w[None], range_probes[:, idx] * w[None]], axis=0)
    part = weighted_sums(prep.sel, prep.rest, prep.take(idx), rows, prep.directions)
    class_sum = add(class_sum, [p[0] for p in part])
    probe_sums = add(probe_sums, [p[1:] for p in part])
    cls = labels[idx[0]]
    if j + 1 == len(sizes) or labels[order[starts[j + 1]]] != cls:  # Class complete.
      n_c = float(np.sum(labels == cls))
      class_sum_sq += gk.dot64(class_sum, class_sum)
      total = add(total, class_sum)
      weighted = add(weighted, [n_c * t for t in class_sum])
      class_sum = None
  mean = [t / prep.n for t in total]
  mean_sq = gk.dot64(mean, mean)
  # t_c = S_c - n_c mu, so with W = sum_c n_c S_c:
  #   sum_c ||t_c||^2 = sum_c ||S_c||^2 - 2 mu . W + ||mu||^2 sum_c n_c^2,
  #   sum_c n_c mu . t_c = mu . W - ||mu||^2 sum_c n_c^2.
  counts = np.bincount(labels)
  mu_w = gk.dot64(mean, weighted)
  nc_sq = float(np.sum(counts.astype(np.float64) ** 2))
  # Sweep 2: a_i = Phi_i . mu - ||mu||^2 and G Z for the range probes Z.
  a = _jvp_sweep(tangent_products, prep, [m[None] for m in mean])[0] - mean_sq
  g_range = _centred_products(tangent_products, prep, mean, probe_sums,
                              range_probes.sum(axis=1))
  q, _ = np.linalg.qr(g_range.T)  # [N, s], orthonormal.
  rest = rng.choice(np.array([-1.0, 1.0]), size=(num_probes - 2 * s if num_probes > 2 * s
                                                  else s, prep.n))
  rest = rest - (rest @ q) @ q.T  # (I - Q Q^T) z.
  rows = np.concatenate([q.T, rest]).astype(np.float32)
  # Sweeps 3 and 4: G Q and G (I - Q Q^T) Z.
  products = _centred_products(tangent_products, prep, mean,
                               _vjp_sweep(weighted_sums, prep, rows), rows.sum(axis=1))
  g_q, g_rest = products[:s], products[s:]
  rows = rows.astype(np.float64)
  return {"counts": counts[counts > 0],
          "nc_mu_t": mu_w - mean_sq * nc_sq,
          "class_sq": class_sum_sq - 2.0 * mu_w + mean_sq * nc_sq,
          "a_sq": float(np.sum(a * a)),
          # tr(G) = tr(Q^T G Q) + E w^T G w, ||G||_F^2 = ||G Q||_F^2 + E ||G w||^2,
          # w = (I - Q Q^T) z.
          "centred_sq": float(np.sum(rows[:s] * g_q) +
                              np.mean(np.sum(rows[s:] * g_rest, axis=1))),
          "mean_sq": mean_sq,
          "frobenius": float(np.sum(g_q * g_q) + np.mean(np.sum(g_rest * g_rest, axis=1))),
          "frobenius_floor": 0.0}


