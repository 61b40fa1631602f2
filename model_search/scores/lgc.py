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

The correlation only needs a few statistics of Theta. With mu = mean_i Phi_i,
g_i = Phi_i - mu, a_i = mu . g_i, t_c = sum_{i in c} g_i and G = g g^T (the
decomposition of `lfc.py`),

  <Theta - mean(Theta), Y> = 2 sum_c (2 n_c mu . t_c + ||t_c||^2),
  ||Theta - mean(Theta)||_F^2 = 2 N ||a||^2 + ||G||_F^2,

so everything but ||G||_F^2 = sum_ij (g_i . g_j)^2 comes from class sums of
gradients and one more product per example. Three paths, all streaming
`chunk_size` examples at a time:

* exact (`projection_dim=None`): Phi itself, [N, K P], from a vmap of
  per-example `jax.vjp` (one forward per example, K cotangents); memory
  O(N K P), for small models and tests.
* sketch (`projection_dim=d`; `score`'s default for large blocks): one batched
  vjp pass for mu, then one pass of per-example gradients over the examples
  sorted by class, which gives the class sums t_c (a segment sum carried across
  chunks), a_i and ||g_i||^2 exactly, and a CountSketch z_i of g_i to d
  columns: coordinate (k, p) of leaf l is added, with a random sign, to one of d
  buckets, bucket and sign computed on the fly from an integer hash of (seed,
  the leaf's path, the coordinate's index), so the P x d projection is never
  stored. ||G||_F^2 is estimated from Z without bias: over the sketch,
  E sum_{i != j} (z_i . z_j)^2 = (1 + 1/d) sum_{i != j} (g_i . g_j)^2 +
  (sum_{i != j} s_i s_j - 2 sum_{i != j} sum_p g_ip^2 g_jp^2) / d with
  s_i = ||g_i||^2; the correction terms (and the diagonal, s_i^2) are computed
  exactly in the same pass (v = sum_i g_i^2 per coordinate, sum_p g_ip^4 per
  example). Memory O(N d + chunk K P); the relative error of ||G||_F^2 falls
  as 1/sqrt(d) (on the tests' 164k-coordinate MLP: about 3% at d = 1024, 0.7%
  at 8192, 0.2% at 65536), and only that term is estimated. On ResNet-50's
  last block (P = 4.5 M, N = 1000, K = 8, 2 CPU cores) it costs 9.4
  forward+backward passes over the data and is within 0.2% of the exact value
  on a block the exact path can hold (benchmarks/lgc.py, RESULTS.md). The
  per-example gradients are laid out [K P, chunk]: the sketch then scatters
  rows of `chunk` floats, and all exact statistics come from one
  [chunk + 2]^2 Gram matrix of [g_1..g_c, the running class sum, mu].
* matrix-free (`method='matrix_free'`): only products of the kernel, through
  batched `jax.vjp` (Phi^T r for weight vectors r: one backward per row and
  direction) and `jax.linearize` (Phi w for parameter-space tangents w).
  A first sweep over chunks of one class each gives the class sums S_c
  (t_c = S_c - n_c mu; ||t_c||^2 and n_c mu . t_c follow from S_c, mu and
  sum_c n_c S_c) and Phi^T Z for the range probes; a jvp sweep gives a and G Z;
  ||G||_F^2 = tr(G^2) and tr(G) are then estimated by Hutch++ (Meyer, Musco,
  Musco & Woodruff 2021): a third of `num_probes` products find G's top
  subspace Q, whose share ||G Q||_F^2 is exact, and the rest estimate the
  remainder by Hutchinson's estimator on (I - Q Q^T) z. Memory O(num_probes K P);
  exact when G has rank <= num_probes // 3; otherwise the error falls with the
  probes (1-5% at 16, 0.1-0.8% at 64 on the tests' MLP). It never forms
  per-example gradients, but it costs about 4 num_probes K / 3 block backward /
  forward-mode products per example, against K for the sketch.

Conventions. The paper builds Theta from the gradients of the network output
and correlates its entries with Y; how a D-dimensional output becomes one
kernel (the K random unit directions above, averaged) is this module's choice,
as are the sketch and the parameter selection. The correlation itself is LFC's
(`lfc.py`: entries centred over all N^2 pairs, Frobenius norms).

Which parameters: `select` is a regex searched in each parameter's '/'-joined
path (`param_paths`); None takes all floating-point parameters. For the
pipeline, pass the last block before pooling, e.g. for the mini zoo's nets
(`models/nets.py`, paths 'params/stage2_block0/conv1/kernel', ...): CNN
r'(^|/)stage2_conv1/', ResNet r'(^|/)(stage2_block0|norm)/', Mixer
r'(^|/)(block1|norm)/'. Low-data fine-tuning moves the top of the network
most, backpropagation then stops at that block, and P stays small enough for
the sketch. `score` picks the path itself (`projection_dim='auto'`): exact when
N K P <= 2^26 floats, else the sketch with d = min(65536, 2^26 / N) (Z at most
256 MiB).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from model_search.scores import common
from model_search.scores import gradient_kernel as gk
from model_search.scores import lfc as lfc_lib

_HIGHEST = jax.lax.Precision.HIGHEST

# `score`'s automatic choice: exact while Phi [N, K P] has at most this many
# floats (256 MiB), else a sketch of this dimension.
# The scores stage loads the model and the train800 images for this score (scores/__init__.py).
REQUIRES = ("apply_fn", "params", "train_images")
AUTO_MAX_EXACT_FLOATS = 2**26
AUTO_PROJECTION_DIM = 65536

# The parameter-selection and gradient helpers, from gradient_kernel.py.
flatten_params = gk.flatten_params
param_paths = gk.param_paths
select_params = gk.select_params
output_directions = gk.output_directions
gradient_features = gk.gradient_features


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


def _correlation(stats: dict[str, Any], what: str) -> float:
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


def _sketch_statistics(prep, labels: np.ndarray, projection_dim: int) -> dict[str, Any]:
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


def _matrix_free_statistics(prep, labels: np.ndarray, num_probes: int,
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


METHODS = ("exact", "sketch", "matrix_free")


def _method(method: str | None, projection_dim: int | None) -> str:
  if method is None:
    return "exact" if projection_dim is None else "sketch"
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; valid: {', '.join(METHODS)} (or None: "
                     "'exact' without projection_dim, 'sketch' with it)")
  if method == "sketch" and projection_dim is None:
    raise ValueError("method='sketch' needs projection_dim, the sketch dimension (an int)")
  if method != "sketch" and projection_dim is not None:
    raise ValueError(f"projection_dim={projection_dim!r} is only used by method='sketch', "
                     f"not {method!r}")
  return method


def lgc(apply_fn: Callable[..., Any], params: Any, images, labels, *,
        select: str | None = None, projection_dim: int | None = None,
        num_directions: int = 8, seed: int = 0, chunk_size: int = 16,
        num_classes: int | None = None, method: str | None = None,
        num_probes: int = 16) -> float:
  """Label-Gradient Correlation (Deshpande et al. 2021, Sec. 3, eq. 8).

  Args:
    apply_fn: `apply_fn(params, images) -> [N, D]`, the network output.
    params: the parameters `apply_fn` takes (a pytree).
    images: [N, ...] inputs (e.g. [N, H, W, 3] float32 images).
    labels: [N] int labels in 0..C-1.
    select: regex searched in each parameter's '/'-joined path (see
      `param_paths`); None: all floating-point parameters.
    projection_dim: None for the exact gradient Gram matrix (memory O(N K P));
      an int d for the sketch path (memory O(N d); see the module doc).
    num_directions: K, unit output directions the gradients are taken along.
    seed: fixes the directions, the sketch and the probes.
    chunk_size: examples whose per-example gradients (or one batched vjp / jvp)
      are held at once.
    num_classes: C; default max(labels) + 1.
    method: 'exact', 'sketch' (class terms exact, ||Theta||_F from a debiased
      CountSketch of dimension projection_dim) or 'matrix_free' (vjp / jvp
      products only, ||Theta||_F by `num_probes` Hutchinson probes); None picks
      'exact' or 'sketch' from projection_dim.
    num_probes: Hutchinson probes of the matrix-free path.

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
  y, _ = lfc_lib.check_labels(labels, n, num_classes=num_classes, what="images")
  y = np.asarray(y).astype(np.int64)
  if projection_dim is not None:
    gk.check_int("projection_dim", projection_dim, 1)
  method = _method(method, projection_dim)
  what = f"per-example gradients (select={select!r})"
  if method == "exact":
    phi = gk.gradient_features(apply_fn, params, images, select=select,
                            num_directions=num_directions, seed=seed,
                            chunk_size=chunk_size)
    return lfc_lib.kernel_label_correlation(phi, y, num_classes=num_classes, what=what)
  prep = gk.prepare(apply_fn, params, images, select=select,
                  num_directions=num_directions, seed=seed, chunk_size=chunk_size)
  if method == "sketch":
    stats = _sketch_statistics(prep, y, int(projection_dim))
  else:
    gk.check_int("num_probes", num_probes, 1)
    stats = _matrix_free_statistics(prep, y, int(num_probes), seed)
  return _correlation(stats, what)


def score(inputs: common.ScoreInputs, *, select: str | None = None,
          projection_dim: int | str | None = "auto", num_directions: int = 8,
          seed: int = 0, chunk_size: int = 16, method: str | None = None,
          num_probes: int = 16) -> dict[str, float]:
  """LGC on the train images and labels (the paper uses the target train set).

  Args:
    inputs: needs apply_fn, params and train_images.
    select: regex picking parameters by '/'-joined path; None: all (see the
      module doc for the pipeline's choice, the last block before pooling).
    projection_dim: 'auto' (exact when N K P <= AUTO_MAX_EXACT_FLOATS, else the
      sketch with d = min(AUTO_PROJECTION_DIM, AUTO_MAX_EXACT_FLOATS // N)), None
      (exact) or an int sketch dimension. Ignored by method='matrix_free'.
    num_directions: K output directions.
    seed: fixes the directions, the sketch and the probes.
    chunk_size: examples whose per-example gradients are held at once.
    method: None (from projection_dim) or 'matrix_free' (see `lgc`).
    num_probes: Hutch++ products of the matrix-free path.

  Returns:
    {'score': LGC in [-1, 1] (higher = better), 'exact': 1.0 for the exact path
    and 0.0 otherwise, 'projection_dim': d (0 unless sketched),
    'num_selected_params': P, 'num_selected_leaves': selected arrays}.
  """
  inputs.require("apply_fn", "params", "train_images", score="lgc")
  chosen = set(gk.select_params(inputs.params, select))
  num_params = sum(int(np.size(leaf)) for p, leaf in
                   gk.flatten_params(inputs.params).items() if p in chosen)
  if method == "matrix_free":
    projection_dim = None
  elif isinstance(projection_dim, str):
    if projection_dim != "auto":
      raise ValueError(f"Unknown projection_dim {projection_dim!r}; valid: "
                       "'auto', None (exact) or an int >= 1")
    exact_floats = inputs.num_train * int(num_directions) * num_params
    projection_dim = (None if exact_floats <= AUTO_MAX_EXACT_FLOATS else
                      min(AUTO_PROJECTION_DIM, AUTO_MAX_EXACT_FLOATS // inputs.num_train))
  value = lgc(inputs.apply_fn, inputs.params, inputs.train_images,
              inputs.train_labels, select=select,
              projection_dim=projection_dim, num_directions=num_directions,
              seed=seed, chunk_size=chunk_size,
              num_classes=inputs.num_classes, method=method, num_probes=num_probes)
  return {"score": value,
          "exact": float(method is None and projection_dim is None),
          "projection_dim": float(projection_dim or 0),
          "num_selected_params": float(num_params),
          "num_selected_leaves": float(len(chosen))}
