"""Features stage: data-parallel jitted extraction per (model, task, split), cached in the workdir.

Each (model, task, split) becomes `WORKDIR/features/MODEL/TASK/SPLIT.npz` holding `features`
[N, D] float32, `labels` [N] int32 and, where the model has a source head, `source_probs`
[N, C_s] (softmax of the source logits, for LEEP-style scores). The file carries a fingerprint of
the model, the task, the split string and the preprocessing; a file with another fingerprint, a
wrong shape or non-finite values is discarded and recomputed.
"""

from __future__ import annotations

import time

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import tqdm

from model_search import workdir as wd
from model_search.data import pipeline
from model_search.models import hub

_VERSION = "features-v1"


class Extractor:
  """Runs a HubModel over batches with the batch sharded over all local devices."""

  def __init__(self, model: hub.HubModel, *, batch_size: int, image_size: int | None = None):
    """Args: model; batch_size (rounded up to a multiple of the local devices); image_size,
    the side images are resized to (default: the model's input size, else unchanged)."""
    self.image_size = image_size or model.input_size
    devices = np.array(jax.local_devices())
    self.mesh = Mesh(devices, ("data",))
    n = len(devices)
    # Every device gets the same share of each (padded) batch.
    self.batch_size = -(-batch_size // n) * n
    self.model = model
    replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.params = jax.device_put(model.params, replicated)
    with_logits = model.logits is not None

    def forward(params, images):
      feats = model.apply(params, images)
      if with_logits:
        return feats, jax.nn.softmax(model.logits(params, images), axis=-1)
      return feats, None

    self._forward = jax.jit(forward, in_shardings=(replicated, self.data_sharding),
                            out_shardings=self.data_sharding)

  def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """Features (and source probabilities) of uint8 images [N, H, W, 3], in order."""
    batches = pipeline.batches_from_arrays(
        images, np.zeros(len(images), np.int32), batch_size=self.batch_size,
        image_size=self.image_size or images.shape[1], value_range=self.model.value_range)
    out = self.from_batches(batches)
    out.pop("labels")
    return out

  def from_batches(self, batches) -> dict[str, np.ndarray]:
    """Features (and source probabilities) and labels of padded, masked model-input batches
    ({'image': float32 [B, S, S, 3], 'label', 'mask'}, as pipeline.eval_batches yields them)."""
    feats, probs, labels = [], [], []
    for batch in batches:
      x = jax.device_put(batch["image"], self.data_sharding)
      f, p = self._forward(self.params, x)
      mask = np.asarray(batch["mask"])
      feats.append(np.asarray(f)[mask])
      labels.append(np.asarray(batch["label"])[mask])
      if p is not None:
        probs.append(np.asarray(p)[mask])
    out = {"features": np.concatenate(feats).astype(np.float32),
           "labels": np.concatenate(labels).astype(np.int32)}
    if probs:
      out["source_probs"] = np.concatenate(probs).astype(np.float32)
    return out


def feature_fingerprint(entry, task, split: str) -> str:
  return wd.fingerprint(_VERSION, entry.to_json(), task.name, task.tfds_name,
                        task.split(split))


def load(workdir, entry, task, split: str) -> dict[str, np.ndarray] | None:
  """The cached features of (entry, task, split), or None if absent or unusable."""
  return wd.read_npz(wd.features_path(workdir, entry.name, task.name, split),
                     fingerprint_=feature_fingerprint(entry, task, split),
                     shapes={"features": (None, entry.feature_dim), "labels": (None,)})


def run_stage(study) -> None:
  """Extracts and caches features for this process's (model, task) items and each split."""
  config, workdir, items = study.config, study.workdir, study.items()
  by_name = {e.name: e for e in study.entries}
  task_by_name = {t.name: t for t in study.tasks}
  todo = [(m, t, s) for m, t in items for s in config.features.splits
          if load(workdir, by_name[m], task_by_name[t], s) is None]
  if not todo:
    logging.info("features: all %d items cached.", len(items) * len(config.features.splits))
    return
  arrays: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
  extractor, current = None, None
  num_images, secs = 0, 0.0
  for m, t, s in tqdm.tqdm(todo, desc="features", unit="split"):
    entry, task = by_name[m], task_by_name[t]
    if current != m:
      extractor, current = Extractor(hub.load(entry.handle), image_size=entry.input_size,
                                     batch_size=config.features.batch_size), m
    start = time.perf_counter()
    if task.image_size is None:
      # Images of many sizes (Caltech101, DTD, ...): resize while reading, as the reference.
      if extractor.image_size is None:
        raise ValueError(f"Model {m!r} declares no input size and task {t!r} has images of "
                         "many sizes; set input_size in the model's entry.")
      out = extractor.from_batches(pipeline.eval_batches(
          task, s, batch_size=extractor.batch_size, image_size=extractor.image_size,
          value_range=extractor.model.value_range, data_dir=study.data_dir))
    else:
      # Fixed-size images: read each split once and reuse it for every model.
      if (t, s) not in arrays:
        arrays[t, s] = pipeline.load_split(task, s, data_dir=study.data_dir)
      images, labels = arrays[t, s]
      out = {**extractor(images), "labels": labels.astype(np.int32)}
    secs += time.perf_counter() - start
    num_images += len(out["labels"])
    wd.write_npz(wd.features_path(workdir, m, t, s),
                 fingerprint_=feature_fingerprint(entry, task, s), **out)
  logging.info("features: %d images in %.1fs (%.0f images/s, compile included).",
               num_images, secs, num_images / max(secs, 1e-9))
