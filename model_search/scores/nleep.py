"""NLEEP: LEEP with a Gaussian mixture on the features in place of a source head.

Li et al., "Ranking Neural Checkpoints" (CVPR 2021), Sec. 4: reduce the
features by PCA, keeping 80% of the variance; fit a Gaussian mixture model with
5 components per target class to the reduced features; use the component
posteriors p(v | x) as the "source head" θ(x) of LEEP (Nguyen et al. 2020,
eq. (1)-(2); see `leep`). Like LEEP, NLEEP <= 0 and higher = better transfer.

Choices, and how they compare with public implementations (TencentARC/SFDA
metrics.py `NLEEP`, google-research stable_transfer/transferability/nleep.py;
both scikit-learn):

* PCA: scikit-learn's exact PCA keeping the smallest number of components that
  explains more than `pca_variance` of the variance, as SFDA (0.8); the
  stable_transfer function fits the GMM to the features it is given.
* Components: 5 x the number of classes present, as the paper and both
  implementations (SFDA counts the classes present, stable_transfer max + 1). When that is not below N (few-shot tasks, many classes) the
  multiplier is lowered to the largest k < 5 with k C < N, a common public
  workaround; if even C components would not be below N there is an error.
  An explicit `num_components` is used as given (it must be < N).
* Covariance: 'full', scikit-learn's default, which both implementations use
  (neither sets it); 'diag' etc. are options. Other GMM settings are
  scikit-learn's defaults (k-means initialisation, 100 EM iterations,
  reg_covar 1e-6), seeded by `seed`.
* Log: the mean log expected empirical prediction, as the LEEP definition.
  SFDA's `NLEEP` drops the log (it averages the prediction itself); the
  stable_transfer one keeps it.
* Scale: the features are divided by their root mean variance before PCA.
  This changes neither the PCA fraction nor the posteriors' geometry, but makes
  scikit-learn's absolute reg_covar relative, so NLEEP does not depend on the
  feature scale (without it, features of scale 1e-3 and 1e3 would be
  regularised very differently).

The fitting is scikit-learn's (iterative EM with data-dependent stopping, not
jittable); the LEEP part is `leep.leep` in JAX.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np
from sklearn import decomposition
from sklearn import mixture

from model_search.scores import common
from model_search.scores import leep as leep_lib

# The paper's number of Gaussian components per target class.
COMPONENTS_PER_CLASS = 5
COVARIANCE_TYPES = ("diag", "full", "spherical", "tied")


class Posteriors(NamedTuple):
  """GMM component posteriors of the examples, and how they were obtained."""
  probs: np.ndarray  # [N, K] float64, rows sum to 1.
  pca_dim: int  # Dimensions kept by PCA.
  num_components: int  # K.
  num_iterations: int  # EM iterations run.
  converged: bool  # Whether EM met scikit-learn's tolerance.


def default_num_components(num_classes: int, num_examples: int) -> int:
  """The paper's 5 components per class, lowered while not below N.

  Args:
    num_classes: C, the number of target classes present.
    num_examples: N.

  Returns:
    k C for the largest k in 1..5 with k C < N.

  Raises:
    ValueError: if C >= N, so that no multiple of C is below N.
  """
  for k in range(COMPONENTS_PER_CLASS, 0, -1):
    if k * num_classes < num_examples:
      return k * num_classes
  raise ValueError(
      f"nleep needs fewer classes than examples to fit a Gaussian mixture with "
      f"a multiple of the class count as components; got {num_classes} classes "
      f"and {num_examples} examples (pass num_components explicitly)")


def gmm_posteriors(features, *, num_components: int,
                   pca_variance: float = 0.8, covariance_type: str = "full",
                   seed: int = 0) -> Posteriors:
  """PCA, then a Gaussian mixture; the component posteriors of each example.

  Args:
    features: [N, D] float features.
    num_components: K, the number of Gaussian components, 1 <= K < N.
    pca_variance: the fraction of the variance PCA keeps, in (0, 1]; 1 keeps
      every principal component.
    covariance_type: one of 'diag', 'full', 'spherical', 'tied'
      (scikit-learn's GaussianMixture).
    seed: seeds the k-means initialisation; equal seeds give equal results.

  Returns:
    The posteriors [N, K] and fit details.

  Raises:
    ValueError: for invalid options or constant features.
  """
  x = np.asarray(features)
  if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"features must be a non-empty 2-D array [N, D], got "
                     f"shape {x.shape}")
  if not (np.issubdtype(x.dtype, np.floating) or
          np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"features must be numeric, got dtype {x.dtype}")
  x = x.astype(np.float64)
  if not np.all(np.isfinite(x)):
    raise ValueError("features must be finite (no NaN or inf)")
  n = x.shape[0]
  if (isinstance(num_components, bool) or
      not isinstance(num_components, numbers.Integral) or
      not 1 <= num_components < n):
    raise ValueError(f"num_components must be an int in 1..{n - 1} (fewer "
                     f"than the {n} examples), got {num_components!r}")
  if (isinstance(pca_variance, bool) or
      not isinstance(pca_variance, numbers.Real) or
      not 0 < pca_variance <= 1):
    raise ValueError(f"pca_variance must be a fraction in (0, 1], got "
                     f"{pca_variance!r}")
  if covariance_type not in COVARIANCE_TYPES:
    raise ValueError(f"Unknown covariance_type {covariance_type!r}; valid "
                     f"types: {', '.join(COVARIANCE_TYPES)}")
  magnitude = np.abs(x).max()
  x = x - x.mean(axis=0)
  scale = np.sqrt(np.mean(x * x))
  # Centring a constant column leaves rounding noise ~1e-16 of its value, which
  # is not variation.
  if scale <= 1e-12 * magnitude or scale == 0:
    raise ValueError("features are constant (every example has the same "
                     "features); nleep needs features that vary")
  x /= scale
  pca = decomposition.PCA(
      n_components=None if pca_variance == 1 else float(pca_variance),
      svd_solver="full")
  reduced = pca.fit_transform(x)
  gmm = mixture.GaussianMixture(n_components=int(num_components),
                                covariance_type=covariance_type,
                                random_state=int(seed))
  gmm.fit(reduced)
  return Posteriors(probs=gmm.predict_proba(reduced),
                    pca_dim=int(reduced.shape[1]),
                    num_components=int(num_components),
                    num_iterations=int(gmm.n_iter_),
                    converged=bool(gmm.converged_))


def _nleep(features, labels, *, num_components, pca_variance, covariance_type,
           seed) -> tuple[float, Posteriors]:
  x = np.asarray(features)
  if x.ndim != 2:
    raise ValueError(f"features must be 2-D [N, D], got shape {x.shape}")
  y = leep_lib.check_labels(labels, x.shape[0])
  if num_components is None:
    num_components = default_num_components(len(np.unique(y)), x.shape[0])
  post = gmm_posteriors(x, num_components=num_components,
                        pca_variance=pca_variance,
                        covariance_type=covariance_type, seed=seed)
  return leep_lib.leep(post.probs, y), post


def nleep(features, labels, *, num_components: int | None = None,
          pca_variance: float = 0.8, covariance_type: str = "full",
          seed: int = 0) -> float:
  """NLEEP (Li et al. 2021): LEEP of the GMM posteriors of PCA'd features.

  Args:
    features: [N, D] float features of the target examples.
    labels: [N] int target labels >= 0.
    num_components: Gaussian components K (< N); None: 5 per class present,
      lowered while not below N (see `default_num_components`).
    pca_variance: the fraction of the variance PCA keeps, in (0, 1].
    covariance_type: 'full' (default, as public implementations), 'diag',
      'spherical' or 'tied'.
    seed: seeds the GMM's k-means initialisation; equal seeds give equal
      results.

  Returns:
    NLEEP in (-inf, 0], natural log; 0 when only one class is present.

  Raises:
    ValueError: for invalid labels or options, or constant features.
  """
  value, _ = _nleep(features, labels, num_components=num_components,
                    pca_variance=pca_variance,
                    covariance_type=covariance_type, seed=seed)
  return value


def score(inputs: common.ScoreInputs, *, num_components: int | None = None,
          pca_variance: float = 0.8, covariance_type: str = "full",
          seed: int = 0) -> dict[str, float]:
  """NLEEP on the train split (features + labels only, as the paper).

  Args:
    inputs: the (model, task) features and labels.
    num_components: Gaussian components; None: 5 per class present.
    pca_variance: the fraction of the variance PCA keeps.
    covariance_type: the GMM covariance ('full', 'diag', ...).
    seed: seeds the GMM initialisation.

  Returns:
    {'score': NLEEP, 'pca_dim', 'num_components', 'gmm_iterations',
     'gmm_converged' (1.0 or 0.0)}.
  """
  value, post = _nleep(inputs.train_features, inputs.train_labels,
                       num_components=num_components,
                       pca_variance=pca_variance,
                       covariance_type=covariance_type, seed=seed)
  return {"score": value, "pca_dim": float(post.pca_dim),
          "num_components": float(post.num_components),
          "gmm_iterations": float(post.num_iterations),
          "gmm_converged": float(post.converged)}
