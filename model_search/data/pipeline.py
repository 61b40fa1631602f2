"""TFDS split -> NumPy batches, the same way for VTAB-1k and mini tasks.

A task is anything with `tfds_name`, `split(split_name)` and `preprocess`
(`model_search.data.task.Task`). Images are read in TFDS order
(`shuffle_files=False`, one file at a time, so 'train[:800]+validation[:200]'
yields the 800 train examples first), preprocessed by the task, then resized
and scaled as the VTAB reference does for hub modules: legacy TF1 bilinear
resize (`align_corners=False`, `half_pixel_centers=False`) of the uint8 image,
float32, / 255, mapped to the model's value range.

Evaluation batches are padded with a mask so that every example counts
exactly once. (The VTAB reference batches with `drop_remainder=True` and so
never scores the last `N mod batch_size` test examples; we score all of them.)
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def _not_prepared(task: Any, builder, data_dir: str | None) -> FileNotFoundError:
  """The error for a dataset missing from data_dir, with how to prepare it."""
  hint = getattr(task, "prepare_hint", "") or (
      f"is prepared with `tfds build {task.tfds_name.split(':')[0]} --data_dir=DATA_DIR`")
  hint = hint.replace("DATA_DIR", data_dir or "~/tensorflow_datasets")
  return FileNotFoundError(
      f"TFDS dataset {task.tfds_name!r} (task {getattr(task, 'name', '?')!r}) is not prepared "
      f"in data_dir {data_dir or tfds.core.constants.DATA_DIR!r}: expected "
      f"{os.fspath(builder.data_dir)!r}. It {hint}. See 'Preparing VTAB-1k' in the README.")


def builder(task: Any, data_dir: str | None = None):
  """The TFDS builder of `task`; generates mini datasets if needed."""
  try:
    tfds_builder = tfds.builder(task.tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
        f"TFDS has no builder {task.tfds_name!r} (task "
        f"{getattr(task, 'name', '?')!r}); for "
        "mini tasks, import model_search.data.mini first") from e
  except AssertionError as e:  # A version this TFDS cannot build and data_dir does not hold.
    raise ValueError(f"Task {getattr(task, 'name', '?')!r}: {e}") from e
  if not tfds_builder.is_prepared() and getattr(tfds_builder, "GENERATES_LOCALLY", False):
    tfds_builder.download_and_prepare()  # The mini suite: offline and fast.
  return tfds_builder


def _check_size(task: Any, split_name: str, builder) -> None:
  """Fails when a prepared split does not have the size the task's definition expects."""
  expected = getattr(task, "split_sizes", {}).get(split_name)
  if expected is None or not builder.info.splits:  # Unknown, or a mocked builder.
    return
  found = builder.info.splits[task.split(split_name)].num_examples
  if found != expected:
    raise ValueError(
        f"Task {task.name!r} split {split_name!r} ({task.split(split_name)!r}) has {found} "
        f"examples in {os.fspath(builder.data_dir)!r}, but the task defines {expected}: the "
        "prepared dataset is another version or incomplete; prepare it again.")


def dataset(task: Any, split_name: str, data_dir: str | None = None, *,
            with_ids: bool = False, decode_images: bool = True) -> tf.data.Dataset:
  """The task's split as preprocessed examples, in TFDS order.

  Args:
    task: a Task (anything with tfds_name, split() and preprocess).
    split_name: one of the task's split names.
    data_dir: TFDS data directory; None means TFDS's default.
    with_ids: also yield each example's 'tfds_id' (a string naming its file and index).
    decode_images: False skips JPEG/PNG decoding and hands `preprocess` a 1x1 black image of the
      feature's channel count instead (for labels and ids only).

  Returns:
    A deterministic tf.data.Dataset of {'image': uint8 [H, W, 3], 'label': int64[, 'tfds_id']}.
  """
  split = task.split(split_name)
  tfds_builder = builder(task, data_dir)
  decoders = None if decode_images else {"image": tfds.decode.SkipDecoding()}
  # One file at a time: examples come in TFDS order, and the parts of a
  # split string such as 'train[:800]+validation[:200]' in the order named.
  try:
    ds = tfds_builder.as_dataset(
        split=split, shuffle_files=False, decoders=decoders,
        read_config=tfds.ReadConfig(interleave_cycle_length=1, add_tfds_id=with_ids))
  except AssertionError as e:  # TFDS's "could not find data in ..."
    raise _not_prepared(task, tfds_builder, data_dir) from e
  _check_size(task, split_name, tfds_builder)
  options = tf.data.Options()
  options.deterministic = True
  channels = tfds_builder.info.features["image"].shape[-1] or 3

  def preprocess(example):
    example = dict(example)
    if not decode_images:
      example["image"] = tf.zeros([1, 1, channels], tf.uint8)
    out = dict(task.preprocess(example))
    if with_ids:
      out["tfds_id"] = example["tfds_id"]
    return out

  return ds.with_options(options).map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)


def num_examples(task: Any, split_name: str,
                 data_dir: str | None = None) -> int:
  """Number of examples in one of a task's splits.

  Args:
    task: a Task (anything with tfds_name, split() and preprocess).
    split_name: e.g. 'train800', 'val200', 'train800val200', 'test'.
    data_dir: TFDS data directory; None means TFDS's default.

  Returns:
    The example count, from the prepared dataset's metadata.
  """
  split = task.split(split_name)
  tfds_builder = builder(task, data_dir)
  if not tfds_builder.info.splits:
    raise _not_prepared(task, tfds_builder, data_dir)
  return int(tfds_builder.info.splits[split].num_examples)


def load_split(task: Any, split_name: str, *,
               data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads a whole split into memory, in TFDS order, without resizing.

  Args:
    task: a Task (anything with tfds_name, split() and preprocess).
    split_name: e.g. 'train800', 'val200', 'train800val200', 'test'.
    data_dir: TFDS data directory; None means TFDS's default. Mini datasets
      are generated there on first use; other datasets must be prepared.

  Returns:
    (images uint8 [N, H, W, 3], labels int32 [N]).

  Raises:
    ValueError: the images do not share one size (resize them with
      `eval_batches` instead), or the split / builder is unknown.
    FileNotFoundError: a non-mini dataset is not prepared in data_dir.
  """
  images, labels = [], []
  ds = dataset(task, split_name, data_dir).batch(1024)
  for batch in ds.as_numpy_iterator():
    images.append(batch["image"])
    labels.append(batch["label"])
  if not images:
    return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0,), np.int32)
  shapes = {x.shape[1:] for x in images}
  if len(shapes) > 1:
    raise ValueError(f"Task {task.name!r} split {split_name!r} has images of "
                     f"several sizes {sorted(shapes)}; resize them with "
                     "eval_batches")
  return (np.concatenate(images).astype(np.uint8),
          np.concatenate(labels).astype(np.int32))


def load_resized(task: Any, split_name: str, *, image_size: int | Sequence[int],
                 value_range: Sequence[float] = (0.0, 1.0), data_dir: str | None = None,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as model inputs, resized while reading (for images of many sizes).

  Args:
    task: a Task (anything with tfds_name, split() and preprocess).
    split_name: one of the task's split names.
    image_size: output side S, or (height, width).
    value_range: pixel value range the model expects.
    data_dir: TFDS data directory; None means TFDS's default.
    batch_size: images resized per step.

  Returns:
    (images float32 [N, S, S, 3], labels int32 [N]), in TFDS order.
  """
  images, labels = [], []
  for batch in eval_batches(task, split_name, batch_size=batch_size, image_size=image_size,
                            value_range=value_range, data_dir=data_dir):
    images.append(batch["image"][batch["mask"]])
    labels.append(batch["label"][batch["mask"]])
  return np.concatenate(images), np.concatenate(labels).astype(np.int32)


def resize_and_scale(images: Any, size: int | Sequence[int],
                     value_range: Sequence[float] = (0.0, 1.0)) -> tf.Tensor:
  """Resizes and rescales images as the VTAB reference feeds hub modules.

  `tf.compat.v1.image.resize` (bilinear, align_corners=False,
  half_pixel_centers=False, no antialiasing; a no-op when the size already
  matches) of the [0, 255] image, then float32 / 255 mapped linearly to
  value_range. Works eagerly and inside tf.data / tf.function.

  Args:
    images: uint8 (or float in [0, 255]) [H, W, C] or [N, H, W, C].
    size: output side S, or (height, width).
    value_range: (lo, hi) that pixel values 0 and 255 map to.

  Returns:
    float32 [S, S, C] or [N, S, S, C].
  """
  size = [size, size] if np.ndim(size) == 0 else list(size)
  # Legacy bilinear (align_corners=False, half_pixel_centers=False).
  images = tf.compat.v1.image.resize(images, [int(s) for s in size])
  lo, hi = value_range
  return tf.cast(images, tf.float32) / 255.0 * (hi - lo) + lo


def to_model_input(images: np.ndarray, *, image_size: int | Sequence[int],
                   value_range: Sequence[float] = (0.0, 1.0),
                   chunk_size: int = 512) -> np.ndarray:
  """`resize_and_scale` of a whole in-memory split, as one NumPy array.

  Args:
    images: uint8 [N, H, W, 3] (e.g. from load_split).
    image_size: output side S, or (height, width).
    value_range: pixel value range the model expects.
    chunk_size: images resized per TF call (bounds peak memory).

  Returns:
    float32 [N, S, S, 3].
  """
  images = np.asarray(images)
  size = [image_size] * 2 if np.ndim(image_size) == 0 else list(image_size)
  out = np.empty((len(images), int(size[0]), int(size[1]), images.shape[-1]),
                 np.float32)
  for start in range(0, len(images), chunk_size):
    chunk = images[start:start + chunk_size]
    out[start:start + len(chunk)] = resize_and_scale(chunk, size, value_range)
  return out


def _padded(batches: Iterator[tuple[np.ndarray, np.ndarray]],
            batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """Adds a mask and zero-pads the final short batch to batch_size."""
  for images, labels in batches:
    n = len(labels)
    mask = np.arange(batch_size) < n
    if n < batch_size:
      pad = np.zeros((batch_size - n,) + images.shape[1:], images.dtype)
      images = np.concatenate([images, pad])
      labels = np.concatenate([labels, np.zeros(batch_size - n, labels.dtype)])
    yield {"image": images, "label": labels, "mask": mask}


def eval_batches(task: Any, split_name: str, *, batch_size: int,
                 image_size: int | Sequence[int],
                 value_range: Sequence[float] = (0.0, 1.0),
                 data_dir: str | None = None
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Deterministic evaluation batches: every example exactly once, in order.

  Unlike the VTAB reference (which drops the last partial batch), the last
  batch is zero-padded to batch_size and its padding has mask False, so all N
  examples count; weight per-example metrics by 'mask'.

  Args:
    task: a Task (anything with tfds_name, split() and preprocess).
    split_name: e.g. 'train800', 'val200', 'train800val200', 'test'.
    batch_size: examples per batch.
    image_size: output side S (or (height, width)) for resize_and_scale.
    value_range: pixel value range the model expects.
    data_dir: TFDS data directory; None means TFDS's default.

  Yields:
    {'image': float32 [B, S, S, 3], 'label': int32 [B], 'mask': bool [B]}.
  """
  def prepare(example):
    return (resize_and_scale(example["image"], image_size, value_range),
            tf.cast(example["label"], tf.int32))

  ds = dataset(task, split_name, data_dir).map(
      prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  yield from _padded(ds.prefetch(2).as_numpy_iterator(), batch_size)


def batches_from_arrays(images: np.ndarray, labels: np.ndarray, *,
                        batch_size: int, image_size: int | Sequence[int],
                        value_range: Sequence[float] = (0.0, 1.0)
                        ) -> Iterator[dict[str, np.ndarray]]:
  """`eval_batches` for in-memory arrays (e.g. the output of load_split).

  Args:
    images: uint8 [N, H, W, 3].
    labels: int [N].
    batch_size: examples per batch; the last batch is padded, mask False.
    image_size: output side S (or (height, width)) for resize_and_scale.
    value_range: pixel value range the model expects.

  Yields:
    {'image': float32 [B, S, S, 3], 'label': int32 [B], 'mask': bool [B]}.
  """
  images, labels = np.asarray(images), np.asarray(labels, np.int32)
  if len(images) != len(labels):
    raise ValueError(f"{len(images)} images but {len(labels)} labels")

  def chunks():
    for start in range(0, len(labels), batch_size):
      stop = start + batch_size
      chunk = resize_and_scale(images[start:stop], image_size, value_range)
      yield chunk.numpy(), labels[start:stop]

  yield from _padded(chunks(), batch_size)


def train_batches(task: Any, split_name: str, *, batch_size: int,
                  image_size: int | Sequence[int],
                  value_range: Sequence[float] = (0.0, 1.0), seed: int,
                  data_dir: str | None = None,
                  shuffle_buffer_size: int = 10_000
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite shuffled training batches, deterministic for a seed.

  As the VTAB reference: cache -> repeat -> shuffle (buffer 10 000) ->
  preprocess -> batch(drop_remainder=True); no augmentation.

  Args:
    task: a Task (anything with tfds_name, split() and preprocess).
    split_name: e.g. 'train800' or 'train800val200'.
    batch_size: examples per batch.
    image_size: output side S (or (height, width)) for resize_and_scale.
    value_range: pixel value range the model expects.
    seed: shuffling seed; the same seed gives the same batches.
    data_dir: TFDS data directory; None means TFDS's default.
    shuffle_buffer_size: tf.data shuffle buffer.

  Yields:
    {'image': float32 [B, S, S, 3], 'label': int32 [B]}.
  """
  def prepare(example):
    image = resize_and_scale(example["image"], image_size, value_range)
    return {"image": image, "label": tf.cast(example["label"], tf.int32)}

  ds = dataset(task, split_name, data_dir).cache().repeat()
  ds = ds.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(2)
  yield from ds.as_numpy_iterator()
