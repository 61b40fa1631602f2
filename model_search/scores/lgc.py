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

Code: the per-example gradient machinery (selection, directions, hashing, the jitted
chunk functions) is in `gradient_kernel.py`; the two statistics paths are in
`kernel_statistics.py`; this module picks the path and assembles the correlation.

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

from typing import Any, Callable

import numpy as np

from model_search.scores import common
from model_search.scores import gradient_kernel as gk
from model_search.scores import kernel_statistics as ks
from model_search.scores import lfc as lfc_lib


# The scores stage loads the model and the train800 images for this score (scores/__init__.py).
REQUIRES = ("apply_fn", "params", "train_images")
# `score`'s automatic choice: exact while Phi [N, K P] has at most this many
# floats (256 MiB), else a sketch of this dimension.
AUTO_MAX_EXACT_FLOATS = 2**26
AUTO_PROJECTION_DIM = 65536

# The parameter-selection and gradient helpers, from gradient_kernel.py.
flatten_params = gk.flatten_params
param_paths = gk.param_paths
select_params = gk.select_params
output_directions = gk.output_directions
gradient_features = gk.gradient_features


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
    stats = ks.sketch_statistics(prep, y, int(projection_dim))
  else:
    gk.check_int("num_probes", num_probes, 1)
    stats = ks.matrix_free_statistics(prep, y, int(num_probes), seed)
  return ks.correlation(stats, what)


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
