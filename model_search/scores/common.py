"""The score contract: ScoreInputs (every score's input) and result checks."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Fields a score may need that are optional in ScoreInputs.
OPTIONAL_FIELDS = ("source_probs", "val_source_probs", "apply_fn", "params",
                   "train_images", "val_images", "source_features",
                   "source_labels")


@dataclasses.dataclass(frozen=True)
class ScoreInputs:
  """Everything a score may use for one (model, task) pair.

  Features and labels are converted to NumPy on construction (features to
  float32, labels to int32, probabilities to float32) and validated, so a score
  can rely on their shapes and ranges.

  Attributes:
    train_features: [N, D] float32 features of the training split.
    train_labels: [N] int labels in 0..num_classes-1.
    val_features: [M, D] float32 features of the validation split.
    val_labels: [M] int labels in 0..num_classes-1.
    num_classes: number of target classes C (at least 2).
    source_probs: optional [N, C_s] source-head probabilities on the training
      split (rows sum to 1), for LEEP / NCE style scores.
    val_source_probs: optional [M, C_s] source-head probabilities on val.
    apply_fn: optional `apply_fn(params, images) -> [N, D]` for gradient scores.
    params: the parameters `apply_fn` takes (a pytree).
    train_images: optional [N, H, W, 3] images of the training split.
    val_images: optional [M, H, W, 3] images of the validation split.
    source_features: optional [N_s, D] float32 features of (a sample of) the
      model's upstream training data, for scores that compare domains.
    source_labels: optional [N_s] int labels of `source_features` (upstream
      classes, 0..C_s-1).
    model_name: model name, used in messages.
    task_name: task name, used in messages.
  """
  train_features: Any
  train_labels: Any
  val_features: Any
  val_labels: Any
  num_classes: int
  source_probs: Any = None
  val_source_probs: Any = None
  apply_fn: Callable[..., Any] | None = None
  params: Any = None
  train_images: Any = None
  val_images: Any = None
  source_features: Any = None
  source_labels: Any = None
  model_name: str = "<unnamed model>"
  task_name: str = "<unnamed task>"

  def __post_init__(self):
    set_ = lambda name, value: object.__setattr__(self, name, value)
    if (isinstance(self.num_classes, bool) or
        not isinstance(self.num_classes, numbers.Integral) or
        self.num_classes < 2):
      self._fail(f"num_classes must be an int >= 2, got {self.num_classes!r}")
    set_("num_classes", int(self.num_classes))

    for split in ("train", "val"):
      feats = self._features(f"{split}_features")
      labels = self._labels(f"{split}_labels")
      if labels.shape[0] != feats.shape[0]:
        self._fail(f"{split}_labels has {labels.shape[0]} entries but "
                   f"{split}_features has {feats.shape[0]} rows")
      set_(f"{split}_features", feats)
      set_(f"{split}_labels", labels)
    if self.train_features.shape[1] != self.val_features.shape[1]:
      self._fail(f"train_features have dimension "
                 f"{self.train_features.shape[1]} but val_features have "
                 f"{self.val_features.shape[1]}")
    present = np.unique(self.train_labels)
    if present.size < 2:
      self._fail(f"train_labels contain only class(es) {present.tolist()}; at "
                 "least 2 classes must be present")

    for name, rows in (("source_probs", self.num_train),
                       ("val_source_probs", self.num_val)):
      if getattr(self, name) is not None:
        set_(name, self._probs(name, rows))
    if self.source_probs is not None and self.val_source_probs is not None:
      if self.source_probs.shape[1] != self.val_source_probs.shape[1]:
        self._fail(f"source_probs have {self.source_probs.shape[1]} source "
                   f"classes but val_source_probs have "
                   f"{self.val_source_probs.shape[1]}")

    if self.apply_fn is not None and not callable(self.apply_fn):
      self._fail("apply_fn must be callable, got "
                 f"{type(self.apply_fn).__name__}")
    for name, rows in (("train_images", self.num_train),
                       ("val_images", self.num_val)):
      images = getattr(self, name)
      if images is not None:
        shape = np.shape(images)
        if not shape or shape[0] != rows:
          self._fail(f"{name} has shape {shape} but the split has {rows} "
                     "examples")

    if (self.source_features is None) != (self.source_labels is None):
      self._fail("source_features and source_labels must be given together")
    if self.source_features is not None:
      feats = self._features("source_features")
      labels = np.asarray(self.source_labels)
      if (labels.ndim != 1 or labels.shape[0] != feats.shape[0] or
          not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0):
        self._fail(f"source_labels must be [{feats.shape[0]}] non-negative "
                   f"ints (one per source_features row), got shape "
                   f"{labels.shape} and dtype {labels.dtype}")
      if feats.shape[1] != self.feature_dim:
        self._fail(f"source_features have dimension {feats.shape[1]} but the "
                   f"target features have {self.feature_dim}")
      set_("source_features", feats)
      set_("source_labels", labels.astype(np.int32))

  @property
  def num_train(self) -> int:
    return self.train_features.shape[0]

  @property
  def num_val(self) -> int:
    return self.val_features.shape[0]

  @property
  def feature_dim(self) -> int:
    return self.train_features.shape[1]

  def require(self, *fields: str, score: str) -> None:
    """Raises a ValueError unless the optional `fields` are all provided.

    Args:
      *fields: names from OPTIONAL_FIELDS, e.g. 'source_probs'.
      score: the name of the score asking, for the message.
    """
    for field in fields:
      if field not in OPTIONAL_FIELDS:
        raise ValueError(f"Unknown optional ScoreInputs field {field!r}; "
                         f"valid fields: {', '.join(OPTIONAL_FIELDS)}")
    missing = [f for f in fields if getattr(self, f) is None]
    if missing:
      raise ValueError(
          f"Score {score!r} needs {', '.join(missing)}, which the inputs for "
          f"model {self.model_name!r} on task {self.task_name!r} do not "
          "provide")

  def _fail(self, problem: str):
    raise ValueError(f"ScoreInputs for model {self.model_name!r} on task "
                     f"{self.task_name!r}: {problem}")

  def _features(self, name: str) -> np.ndarray:
    x = np.asarray(getattr(self, name))
    if x.ndim != 2:
      self._fail(f"{name} must be 2-D [num_examples, dim], got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
      self._fail(f"{name} is empty (shape {x.shape})")
    if not (np.issubdtype(x.dtype, np.floating) or
            np.issubdtype(x.dtype, np.integer)):
      self._fail(f"{name} must be numeric, got dtype {x.dtype}")
    with np.errstate(over="ignore"):  # Overflow to inf is reported below.
      x = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x)):
      bad = np.argwhere(~np.isfinite(x))[0].tolist()
      self._fail(f"{name} contain {np.sum(~np.isfinite(x))} non-finite "
                 f"values (first at index {bad}) after conversion to float32")
    return x

  def _labels(self, name: str) -> np.ndarray:
    y = np.asarray(getattr(self, name))
    if y.ndim != 1:
      self._fail(f"{name} must be 1-D [num_examples], got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
      self._fail(f"{name} must be integers, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= self.num_classes):
      bad = sorted(set(y[(y < 0) | (y >= self.num_classes)].tolist()))
      self._fail(f"{name} contain {bad[:10]} outside 0..{self.num_classes - 1}"
                 f" (num_classes={self.num_classes})")
    return y.astype(np.int32)

  def _probs(self, name: str, rows: int) -> np.ndarray:
    p = np.asarray(getattr(self, name), dtype=np.float32)
    if p.ndim != 2 or p.shape[0] != rows:
      self._fail(f"{name} must be [{rows}, num_source_classes], got shape "
                 f"{p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
      self._fail(f"{name} must be finite and non-negative")
    sums = p.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > 1e-3:
      self._fail(f"{name} rows must sum to 1; row {worst} sums to "
                 f"{sums[worst]:.6g}")
    return p


def check_result(result: Any, *, score: str,
                 inputs: ScoreInputs | None = None) -> dict[str, float]:
  """Checks a score's return value against the contract.

  Args:
    result: what `score(inputs, **options)` returned.
    score: the score's name, for messages.
    inputs: the inputs it was computed on, for messages (optional).

  Returns:
    The result as a plain {str: float} dict (NumPy / JAX scalars converted).

  Raises:
    ValueError: unless `result` is a mapping from str to finite real numbers
      with a 'score' key.
  """
  where = f"Score {score!r}"
  if inputs is not None:
    where += f" (model {inputs.model_name!r}, task {inputs.task_name!r})"
  if not isinstance(result, Mapping):
    raise ValueError(f"{where} must return a dict of floats, got "
                     f"{type(result).__name__}")
  if "score" not in result:
    raise ValueError(f"{where} returned keys {sorted(map(str, result))}; a "
                     "'score' key (higher = better) is required")
  out = {}
  for key, value in result.items():
    if not isinstance(key, str):
      raise ValueError(f"{where}: result keys must be str, got {key!r}")
    if np.ndim(value) != 0 or isinstance(value, (bool, np.bool_, str)):
      raise ValueError(f"{where}: result {key!r} must be a scalar float, got "
                       f"{type(value).__name__} of shape {np.shape(value)}")
    try:
      value = float(value)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{where}: result {key!r} is not a real number: "
                       f"{value!r}") from e
    if not math.isfinite(value):
      raise ValueError(f"{where}: result {key!r} is not finite ({value})")
    out[key] = value
  return out


def check_matrix(x, *, score: str, name: str = "features", dtype=np.float64) -> np.ndarray:
  """A non-empty, numeric, finite [N, D] NumPy array of `dtype` (for NumPy-side scores).

  Raises:
    ValueError: naming the score and the argument, for a bad shape or dtype, or NaN / inf
      values (after conversion to `dtype`).
  """
  a = np.asarray(x)
  if a.ndim != 2 or 0 in a.shape:
    raise ValueError(f"{score}: {name} must be a non-empty [N, D] array, got shape {a.shape}")
  if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
    raise ValueError(f"{score}: {name} must be numeric, got dtype {a.dtype}")
  with np.errstate(over="ignore"):  # Overflow to inf is reported below.
    a = a.astype(dtype, copy=False)
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{score}: {name} contain {int(np.sum(~np.isfinite(a)))} NaN or inf "
                     f"values (after conversion to {np.dtype(dtype).name})")
  return a


def check_features_labels(features, labels, *, num_classes: int | None = None,
                          score: str):
  """Validates the features and labels a feature-based score's math function takes.

  Args:
    features: [N, D] numeric array.
    labels: [N] int array with values in 0..num_classes-1.
    num_classes: C; None means max(labels) + 1.
    score: the score's name, for messages.

  Returns:
    (features as a float32 jax array, labels as an int32 jax array, C).

  Raises:
    ValueError: naming the problem, for bad shapes or dtypes, labels outside
      0..C-1, fewer than 2 classes present, or non-finite features.
  """
  x = features if isinstance(features, jax.Array) else np.asarray(features)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"{score}: features must be a non-empty [N, D] array, got "
                     f"shape {x.shape}")
  if not (jnp.issubdtype(x.dtype, jnp.floating) or
          jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"{score}: features must be numeric, got dtype {x.dtype}")
  y = np.asarray(labels)
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise ValueError(f"{score}: labels must be [N] with N = {x.shape[0]} (the "
                     f"rows of features), got shape {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{score}: labels must be integers, got dtype {y.dtype}")
  if y.min() < 0:
    raise ValueError(f"{score}: labels must be >= 0, got "
                     f"{sorted(set(y[y < 0].tolist()))[:10]}")
  if num_classes is None:
    num_classes = int(y.max()) + 1
  elif isinstance(num_classes, bool) or not isinstance(num_classes, int):
    raise ValueError(f"{score}: num_classes must be an int or None, got "
                     f"{num_classes!r}")
  elif y.max() >= num_classes:
    raise ValueError(f"{score}: labels contain "
                     f"{sorted(set(y[y >= num_classes].tolist()))[:10]} outside "
                     f"0..{num_classes - 1} (num_classes={num_classes})")
  present = np.flatnonzero(np.bincount(y, minlength=num_classes))
  if present.size < 2:
    raise ValueError(f"{score}: labels contain only class(es) "
                     f"{present.tolist()}; at least 2 classes must be present")
  x = jnp.asarray(x, jnp.float32)
  if not bool(jnp.all(jnp.isfinite(x))):
    raise ValueError(f"{score}: features contain NaN or inf (after conversion "
                     "to float32)")
  return x, jnp.asarray(y, jnp.int32), num_classes


def present_classes(features, labels, *, score: str):
  """Validates features and labels, numbering the classes present 0..K-1.

  For scores defined over the classes that occur (GBC, TransRate); finiteness is left to the
  caller, which can check it on device.

  Args:
    features: [N, D] numeric array.
    labels: [N] int array of class indices >= 0.
    score: the score's name, for messages.

  Returns:
    (features as float32 jax array [N, D], codes int32 [N] in 0..K-1, counts [K]).
  """
  x = jnp.asarray(features)
  y = np.asarray(labels)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"{score}: features must be a non-empty [N, D] array, got "
                     f"shape {x.shape}")
  if not (jnp.issubdtype(x.dtype, jnp.floating) or
          jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"{score}: features must be numeric, got {x.dtype}")
  if y.shape != (x.shape[0],):
    raise ValueError(f"{score}: labels must have shape [N] = ({x.shape[0]},) "
                     f"to match the features, got {y.shape}")
  if not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"{score}: labels must be integers, got {y.dtype}")
  if y.min() < 0:
    raise ValueError(f"{score}: labels must be class indices in 0..C-1, got "
                     f"{sorted(set(y[y < 0].tolist()))[:10]}")
  classes, codes, counts = np.unique(y, return_inverse=True, return_counts=True)
  if classes.size < 2:
    raise ValueError(f"{score}: labels contain only class(es) "
                     f"{classes.tolist()}; at least 2 classes must be present")
  return x.astype(jnp.float32), codes.reshape(-1).astype(np.int32), counts
