"""Domain similarity: Earth Mover's Distance between the class means of source and target data.

Cui et al., "Large Scale Fine-Grained Categorization and Domain-Specific
Transfer Learning" (CVPR 2018), Sec. 4. A domain is a weighted set of points,
its class means g_i with weights w_i = (images of class i) / (images of the
domain). With the Euclidean ground distance d_ij = ||g_si - g_tj||, the Earth
Mover's Distance between source S and target T is

  EMD(S, T) = sum_ij f_ij d_ij / sum_ij f_ij,

where the flow f_ij >= 0 minimises sum_ij f_ij d_ij subject to
sum_j f_ij = w_si and sum_i f_ij = w_tj (both weight vectors sum to 1, so the
total flow is 1), and the domain similarity is

  sim(S, T) = exp(-gamma * EMD(S, T)),  gamma = 0.01 in the paper.

Higher = more similar, so the score is sim itself.

Conventions.

* Feature space. The paper embeds every domain with one fixed network (trained
  on the large source) to choose *source data*; here the scored model embeds
  both its own upstream data (`ScoreInputs.source_features`, a sample of it)
  and the target, so the score asks how close the target lies to what the model
  was trained on, in that model's feature space.
* The target domain is the task's train split (`train_features`,
  `train_labels`): the data the model would be fine-tuned on, as in the paper,
  where the target domain is the target training set. The val split is not
  used.
* gamma and scale. The paper chose gamma = 0.01 for the scale of its features.
  EMD has the units of the features (scaling all features by s scales EMD by s),
  so the similarity is not scale-invariant and models whose features have a
  larger norm look less similar. exp(-gamma * EMD) is decreasing in EMD, so the
  ranking of models (all that selection uses) is the same for every gamma > 0;
  gamma only sets where the similarity saturates. For EMD >> 700 / gamma the
  similarity underflows to 0 and ties; the 'emd' diagnostic keeps the order.
* Classes are those that occur; a class's mean is that of its examples, so a
  class with a single example is fine (its mean is that example). A domain may
  have a single class (all of its mass is at one point). Weights passed to
  `emd` are normalised to sum to 1, as the paper's fractions already do.
* The transport LP is solved exactly by HiGHS (`scipy.optimize.linprog`,
  method 'highs', which picks the dual simplex here) on a sparse
  (K_s + K_t - 1) x (K_s K_t) equality-constraint matrix: one of the K_s + K_t
  marginal constraints is implied by the others (both sides sum to 1) and is
  dropped. Ground distances are exact differences in float64
  (`scipy.spatial.distance.cdist`), so identical domains give EMD 0 to rounding.
  Measured on 2 CPU cores (scipy 1.17): K_s x K_t = 1000 x 400 classes (400k
  flow variables, random points) takes 1-2 s for the LP at D = 8 to 2048, plus
  0.15 s for the distances at D = 2048; 100 x 40 takes about 10 ms. Points in
  1 or 2 dimensions make the LP highly degenerate: 1000 x 400 then takes about
  8 s (the simplex edge-weight strategies and interior point were no faster).
  The LP grows with K_s K_t: a 21k-class upstream would need a class sample.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from scipy import optimize
from scipy import sparse
from scipy.spatial import distance

from model_search.scores import common

REQUIRES = ("source_features", "source_labels")


def _check_features(features, name: str) -> np.ndarray:
  """[N, D] finite numeric features as float64 NumPy (N, D >= 1)."""
  return common.check_matrix(features, score="domain_similarity", name=name)


def class_means(features, labels) -> tuple[np.ndarray, np.ndarray]:
  """Class means and class fractions of one domain (Cui et al. 2018, Sec. 4).

  Args:
    features: [N, D] float features of the domain's images.
    labels: [N] int class labels >= 0 (any ids; absent ids are ignored).

  Returns:
    (means [K, D] float64, weights [K] float64) over the K classes that occur,
    in increasing label order; weights[k] = (examples of class k) / N, so they
    sum to 1.

  Raises:
    ValueError: for bad shapes or dtypes, non-finite features, negative labels
      or an empty domain.
  """
  x = _check_features(features, "features")
  y = np.asarray(labels)
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise ValueError(f"domain_similarity: labels must be [N] with N = "
                     f"{x.shape[0]} (the rows of features), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"domain_similarity: labels must be integers, got dtype "
                     f"{y.dtype}")
  if y.min() < 0:
    raise ValueError(f"domain_similarity: labels must be class indices >= 0, "
                     f"got {sorted(set(y[y < 0].tolist()))[:10]}")
  _, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
  codes = codes.reshape(-1)
  n, k = x.shape[0], counts.size
  # A sparse [K, N] class indicator: one pass over the features, O(N D).
  indicator = sparse.csr_matrix((np.ones(n), (codes, np.arange(n))),
                                shape=(k, n))
  sums = np.asarray(indicator @ x)
  return sums / counts[:, None], counts / n


def _check_points(means, weights, side: str) -> tuple[np.ndarray, np.ndarray]:
  """Validates one side of the transport problem; normalises its weights."""
  g = _check_features(means, f"{side}_means")
  w = np.asarray(weights)
  if w.shape != (g.shape[0],):
    raise ValueError(f"domain_similarity: {side}_weights must be [K] with "
                     f"K = {g.shape[0]} (the rows of {side}_means), got shape "
                     f"{w.shape}")
  if not (np.issubdtype(w.dtype, np.floating) or
          np.issubdtype(w.dtype, np.integer)):
    raise ValueError(f"domain_similarity: {side}_weights must be numeric, got "
                     f"dtype {w.dtype}")
  w = w.astype(np.float64, copy=False)
  if not np.all(np.isfinite(w)) or np.any(w < 0) or not w.sum() > 0:
    raise ValueError(f"domain_similarity: {side}_weights must be finite, "
                     "non-negative and not all 0")
  return g, w / w.sum()


def emd(source_means, source_weights, target_means, target_weights) -> float:
  """Earth Mover's Distance with Euclidean ground distance (Cui et al. 2018, eq. 2).

  Args:
    source_means: [K_s, D] float points of the source (its class means).
    source_weights: [K_s] non-negative weights (normalised to sum to 1).
    target_means: [K_t, D] float points of the target.
    target_weights: [K_t] non-negative weights (normalised to sum to 1).

  Returns:
    EMD = sum_ij f_ij ||g_si - g_tj|| / sum_ij f_ij for the optimal flow f,
    a float >= 0 in the units of the features.

  Raises:
    ValueError: for bad shapes, non-finite values, negative or all-zero
      weights, a dimension mismatch, or when the LP solver fails (with its
      message).
  """
  gs, ws = _check_points(source_means, source_weights, "source")
  gt, wt = _check_points(target_means, target_weights, "target")
  if gs.shape[1] != gt.shape[1]:
    raise ValueError(f"domain_similarity: source points have dimension "
                     f"{gs.shape[1]} but target points have {gt.shape[1]}")
  # Zero-weight points carry no flow; leaving them out shrinks the LP.
  gs, ws = gs[ws > 0], ws[ws > 0]
  gt, wt = gt[wt > 0], wt[wt > 0]
  ks, kt = ws.size, wt.size
  cost = distance.cdist(gs, gt, "euclidean")  # [K_s, K_t] float64
  # Flow variable f_ij is column i * K_t + j. Rows 0..K_s-1: sum_j f_ij = w_si;
  # rows K_s..K_s+K_t-2: sum_i f_ij = w_tj for j < K_t - 1. The last target
  # row equals the sum of the source rows minus the others, so it is dropped.
  var = np.arange(ks * kt)
  i, j = var // kt, var % kt
  keep = j < kt - 1
  rows = np.concatenate([i, ks + j[keep]])
  cols = np.concatenate([var, var[keep]])
  a_eq = sparse.csc_matrix((np.ones(rows.size), (rows, cols)),
                           shape=(ks + kt - 1, ks * kt))
  b_eq = np.concatenate([ws, wt[:-1]])
  res = optimize.linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None),
                         method="highs")
  if res.status != 0 or res.x is None:
    raise ValueError(f"domain_similarity: the transport LP ({ks} x {kt} "
                     f"classes) failed with status {res.status}: "
                     f"{res.message}")
  flow = np.maximum(res.x, 0.0)  # Clip solver round-off below 0.
  return max(float(flow @ cost.ravel() / flow.sum()), 0.0)


def _check_gamma(gamma) -> float:
  if (isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or
      not math.isfinite(gamma) or gamma <= 0):
    raise ValueError(f"domain_similarity: gamma must be a finite number > 0 "
                     f"(the paper uses 0.01), got {gamma!r}")
  return float(gamma)


def domain_similarity(source_features, source_labels, target_features,
                      target_labels, *, gamma: float = 0.01) -> float:
  """exp(-gamma * EMD) between two labelled domains (Cui et al. 2018, Sec. 4).

  Args:
    source_features: [N_s, D] float features of the source domain.
    source_labels: [N_s] int source class labels >= 0.
    target_features: [N_t, D] float features of the target domain.
    target_labels: [N_t] int target class labels >= 0.
    gamma: > 0; the paper's 0.01 suits its features' scale (see module doc).

  Returns:
    The similarity in (0, 1]; 1 for domains with the same class means and
    fractions.

  Raises:
    ValueError: for invalid features, labels or gamma, or a dimension mismatch.
  """
  return _similarity(source_features, source_labels, target_features,
                     target_labels, gamma=gamma)["score"]


def _similarity(source_features, source_labels, target_features, target_labels,
                *, gamma: float) -> dict[str, float]:
  gamma = _check_gamma(gamma)
  gs, ws = class_means(source_features, source_labels)
  gt, wt = class_means(target_features, target_labels)
  distance_ = emd(gs, ws, gt, wt)
  return {"score": math.exp(-gamma * distance_), "emd": distance_,
          "num_source_classes": float(ws.size),
          "num_target_classes": float(wt.size)}


def score(inputs: common.ScoreInputs, *, gamma: float = 0.01) -> dict[str, float]:
  """Domain similarity of the model's upstream data and the task's train split.

  Args:
    inputs: the (model, task) inputs; needs `source_features` and
      `source_labels` (the model's features on a sample of its upstream data).
    gamma: > 0, the paper's 0.01 by default; any gamma > 0 ranks models alike.

  Returns:
    {'score': exp(-gamma * EMD) (higher = better), 'emd': EMD,
     'num_source_classes': K_s, 'num_target_classes': K_t}.
  """
  inputs.require(*REQUIRES, score="domain_similarity")
  return _similarity(inputs.source_features, inputs.source_labels,
                     inputs.train_features, inputs.train_labels, gamma=gamma)
