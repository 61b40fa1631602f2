"""The model registry: ModelEntry records with the metadata strategies and pools need."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Sequence

from etils import epath


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """One pre-trained model: where to load it from plus its metadata.

  Accuracies are in [0, 1]; sizes are counts (images, parameters).

  Attributes:
    name: unique model name.
    handle: a TF-Hub URL or a local SavedModel directory.
    imagenet_accuracy: top-1 accuracy on ImageNet (for the mini zoo: held-out
      accuracy on the broad upstream task), None for experts.
    upstream_dataset: name of the pre-training data.
    upstream_size: number of pre-training images.
    upstream_accuracy: held-out accuracy on the model's own upstream task.
    num_params: parameter count of the feature extractor.
    feature_dim: dimension of the features (pre-logits).
    input_size: the (square) input resolution the model expects.
    value_range: the pixel range the model expects.
    architecture: architecture family name.
    expert: True for models pre-trained on a narrow upstream task.
    num_source_classes: size of the source head, if the model exposes logits.
    collection: 'tfhub', 'mini' or 'user'.
  """
  name: str
  handle: str
  imagenet_accuracy: float | None = None
  upstream_dataset: str | None = None
  upstream_size: int | None = None
  upstream_accuracy: float | None = None
  num_params: int | None = None
  feature_dim: int | None = None
  input_size: int | None = None
  value_range: tuple[float, float] = (0.0, 1.0)
  architecture: str | None = None
  expert: bool = False
  num_source_classes: int | None = None
  collection: str = "user"

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "ModelEntry":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"Unknown ModelEntry fields {sorted(unknown)}; "
                       f"valid fields: {', '.join(sorted(known))}")
    d = dict(d)
    if "value_range" in d:
      d["value_range"] = tuple(d["value_range"])
    return cls(**d)
