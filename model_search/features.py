"""Features stage: data-parallel jitted extraction per (model, task, split), cached in the workdir.

Each (model, task, split) becomes `WORKDIR/features/MODEL/TASK/SPLIT.npz` holding `features`
[N, D] float32, `labels` [N] int32 and, where the model has a source head, `source_probs`
[N, C_s] (softmax of the source logits, for LEEP-style scores). The file carries a fingerprint of
the model, the task, the split string and the preprocessing; a file with another fingerprint, a
wrong shape or non-finite values is discarded and recomputed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import time

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import tqdm

from model_search import workdir as wd
from model_search.data import pipeline
from model_search.models import cpu_convs
from model_search.models import hub

_VERSION = "features-v1"


class Extractor:
  """Runs a HubModel over batches with the batch sharded over all local devices."""

  def __init__(self, model: hub.HubModel, *, batch_size: int, image_size: int | None = None,
               devices=None):
    """Builds the sharded forward pass.

    Args:
      model: the HubModel.
      batch_size: examples per step, rounded up to a multiple of the number of devices.
      image_size: the side images are resized to (default: the model's input size, else the
        images' own size).
      devices: the devices to shard each batch over (default: all local devices).
    """
    self.image_size = image_size or model.input_size
    self.in_flight = 2
    devices = np.array(jax.local_devices() if devices is None else list(devices))
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

    # XLA:CPU runs 1x1 convolutions far faster as matrix products (models/cpu_convs.py).
    forward = cpu_convs.on_cpu(forward)

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

  def _run(self, batch) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """One batch through the model: (features, source probs or None, labels), padding dropped."""
    x = jax.device_put(batch["image"], self.data_sharding)
    f, p = self._forward(self.params, x)
    mask = np.asarray(batch["mask"])
    return (np.asarray(f)[mask], None if p is None else np.asarray(p)[mask],
            np.asarray(batch["label"])[mask])

  def from_batches(self, batches) -> dict[str, np.ndarray]:
    """Features (and source probabilities) and labels of padded, masked model-input batches
    ({'image': float32 [B, S, S, 3], 'label', 'mask'}, as pipeline.eval_batches yields them).

    Two batches are in flight at once, from two threads: on XLA:CPU one large convolution
    keeps only about one core busy, and the second batch fills the others (1.15x on 2 cores,
    benchmarks/RESULTS.md); on accelerators it overlaps transfers with compute. Results keep
    the input order.
    """
    results, pending = [], collections.deque()
    with concurrent.futures.ThreadPoolExecutor(self.in_flight) as pool:
      for batch in batches:
        pending.append(pool.submit(self._run, batch))
        if len(pending) >= self.in_flight:
          results.append(pending.popleft().result())
      results.extend(f.result() for f in pending)
    feats, probs, labels = zip(*results) if results else ((), (), ())
    out = {"features": np.concatenate(feats).astype(np.float32),
           "labels": np.concatenate(labels).astype(np.int32)}
    if probs and probs[0] is not None:
      out["source_probs"] = np.concatenate(probs).astype(np.float32)
    return out


# Fixed-size splits up to this many bytes (uint8) are read once and kept for the next models.
_CACHE_BYTES = 2 << 30


class _SplitCache:
  """The raw uint8 splits of fixed-size tasks, least recently used first out, within a budget."""

  def __init__(self, max_bytes: int):
    self.max_bytes = max_bytes
    self._splits: collections.OrderedDict = collections.OrderedDict()

  def get(self, task, split: str, data_dir) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels) of a fixed-size split that fits the budget, else None (stream it)."""
    key = (task.name, split)
    if key in self._splits:
      self._splits.move_to_end(key)
      return self._splits[key]
    if task.image_size is None:
      return None
    n = _num_examples(task, split, data_dir)
    if n is None or n * task.image_size[0] * task.image_size[1] * 3 > self.max_bytes:
      return None
    value = pipeline.load_split(task, split, data_dir=data_dir)
    self._splits[key] = value
    while sum(v[0].nbytes for v in self._splits.values()) > self.max_bytes:
      self._splits.popitem(last=False)
    return value


def _num_examples(task, split: str, data_dir) -> int | None:
  """The split's size from the prepared dataset's metadata; None where there is none (a mocked
  builder; a dataset that is missing fails when it is streamed, with how to prepare it)."""
  try:
    return pipeline.num_examples(task, split, data_dir=data_dir)
  except FileNotFoundError:
    return None


def feature_fingerprint(entry, task, split: str) -> str:
  return wd.fingerprint(_VERSION, entry.to_json(), task.name, task.tfds_name,
                        task.split(split))


def load(workdir, entry, task, split: str) -> dict[str, np.ndarray] | None:
  """The cached features of (entry, task, split), or None if absent or unusable."""
  arrays = wd.read_npz(wd.features_path(workdir, entry.name, task.name, split),
                       fingerprint_=feature_fingerprint(entry, task, split),
                       shapes={"features": (None, entry.feature_dim), "labels": (None,)},
                       dtypes={"features": np.float32, "labels": np.int32,
                               "source_probs": np.float32})
  if arrays is not None and len(arrays["features"]) != len(arrays["labels"]):
    logging.warning("Discarding features of %s on %s/%s: %d features but %d labels.",
                    entry.name, task.name, split, len(arrays["features"]), len(arrays["labels"]))
    return None
  return arrays


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
  cache = _SplitCache(int(config.features.get("cache_bytes", _CACHE_BYTES)))
  extractor, current = None, None
  num_images, secs = 0, 0.0
  for m, t, s in tqdm.tqdm(todo, desc="features", unit="split"):
    entry, task = by_name[m], task_by_name[t]
    if current != m:
      extractor, current = Extractor(hub.load_entry(entry), image_size=entry.input_size,
                                     batch_size=config.features.batch_size), m
    start = time.perf_counter()
    split = cache.get(task, s, study.data_dir)
    if split is not None:
      images, labels = split
      out = {**extractor(images), "labels": labels.astype(np.int32)}
    else:
      # Stream: images of many sizes (Caltech101, DTD, ...) or a split too large to keep are
      # resized while reading, so no split ever has to fit in memory.
      if extractor.image_size is None:
        raise ValueError(f"Model {m!r} declares no input size and task {t!r} has images of "
                         "many sizes; set input_size in the model's entry.")
      out = extractor.from_batches(pipeline.eval_batches(
          task, s, batch_size=extractor.batch_size, image_size=extractor.image_size,
          value_range=extractor.model.value_range, data_dir=study.data_dir))
    secs += time.perf_counter() - start
    num_images += len(out["labels"])
    wd.write_npz(wd.features_path(workdir, m, t, s),
                 fingerprint_=feature_fingerprint(entry, task, s), **out)
  logging.info("features: %d images in %.1fs (%.0f images/s, compile included).",
               num_images, secs, num_images / max(secs, 1e-9))
