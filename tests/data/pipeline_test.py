"""Tests for the TFDS -> NumPy batch pipeline, against NumPy references."""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from model_search.data import mini
from model_search.data import pipeline
from model_search.data import task as task_lib


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data_dir; pipeline prepares mini datasets there on first use."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def digits():
  return mini.get_task("mini_digits")


def legacy_bilinear(image, out_h, out_w):
  """NumPy reference of TF1 resize_bilinear(align_corners=False,
  half_pixel_centers=False): src = dst * in / out, edge-clamped."""
  in_h, in_w = image.shape[:2]
  image = image.astype(np.float64)

  def axis(n_in, n_out):
    src = np.arange(n_out) * (n_in / n_out)
    i0 = np.floor(src).astype(int)
    return i0, np.minimum(i0 + 1, n_in - 1), src - i0

  y0, y1, wy = axis(in_h, out_h)
  x0, x1, wx = axis(in_w, out_w)
  wx = wx[None, :, None]
  top = image[y0][:, x0] * (1 - wx) + image[y0][:, x1] * wx
  bottom = image[y1][:, x0] * (1 - wx) + image[y1][:, x1] * wx
  return top * (1 - wy[:, None, None]) + bottom * wy[:, None, None]


@pytest.mark.parametrize("in_hw,out_hw", [
    ((7, 5), (16, 16)), ((32, 32), (48, 48)), ((50, 41), (32, 32)),
    ((9, 9), (9, 9)), ((32, 32), (224, 224)), ((3, 8), (5, 2))])
def test_resize_and_scale_matches_legacy_bilinear(in_hw, out_hw):
  rng = np.random.default_rng(sum(in_hw + out_hw))
  images = rng.integers(0, 256, (2,) + in_hw + (3,), dtype=np.uint8)
  out = pipeline.resize_and_scale(images, out_hw).numpy()
  assert out.dtype == np.float32 and out.shape == (2,) + out_hw + (3,)
  for image, got in zip(images, out):
    np.testing.assert_allclose(got, legacy_bilinear(image, *out_hw) / 255,
                               atol=1e-4, rtol=0)
  reference = tf.compat.v1.image.resize(images, out_hw).numpy() / 255
  np.testing.assert_allclose(out, reference, atol=1e-6, rtol=0)
  # Unbatched images give the same result; an int size means a square.
  single = pipeline.resize_and_scale(images[0], out_hw).numpy()
  np.testing.assert_array_equal(single, out[0])
  if out_hw[0] == out_hw[1]:
    np.testing.assert_array_equal(
        pipeline.resize_and_scale(images, out_hw[0]).numpy(), out)


def test_resize_and_scale_value_range():
  images = np.array([[[[0, 255, 51]]]], np.uint8)  # [1, 1, 1, 3]
  np.testing.assert_allclose(
      pipeline.resize_and_scale(images, 1).numpy().ravel(), [0, 1, 0.2],
      atol=1e-6)
  np.testing.assert_allclose(
      pipeline.resize_and_scale(images, 1, (-1, 1)).numpy().ravel(),
      [-1, 1, -0.6], atol=1e-6)
  np.testing.assert_allclose(
      pipeline.resize_and_scale(images, 1, (0, 255)).numpy().ravel(),
      [0, 255, 51], atol=1e-4)


def test_resize_and_scale_inside_tf_data():
  images = np.random.default_rng(0).integers(0, 256, (4, 10, 12, 3), np.uint8)
  ds = tf.data.Dataset.from_tensor_slices(images).map(
      lambda x: pipeline.resize_and_scale(x, 20, (-1, 1)))
  got = np.stack(list(ds.as_numpy_iterator()))
  np.testing.assert_allclose(
      got, np.stack([legacy_bilinear(x, 20, 20) for x in images]) / 127.5 - 1,
      atol=2e-4)


def test_load_split_sizes_order_and_dtypes(digits, data_dir):
  train, train_labels = pipeline.load_split(digits, "train800",
                                            data_dir=data_dir)
  val, val_labels = pipeline.load_split(digits, "val200", data_dir=data_dir)
  both, both_labels = pipeline.load_split(digits, "train800val200",
                                          data_dir=data_dir)
  assert train.shape == (800, 32, 32, 3) and train.dtype == np.uint8
  assert val.shape == (200, 32, 32, 3)
  assert train_labels.dtype == np.int32 and train_labels.shape == (800,)
  # train800val200 is the 800 train examples, then the 200 validation ones.
  np.testing.assert_array_equal(both, np.concatenate([train, val]))
  np.testing.assert_array_equal(both_labels,
                                np.concatenate([train_labels, val_labels]))
  # Same order and content as reading TFDS directly.
  direct = tfds.as_numpy(tfds.load("mini_digits", split="train[:800]",
                                   data_dir=data_dir, batch_size=-1,
                                   shuffle_files=False))
  np.testing.assert_array_equal(train, direct["image"])
  np.testing.assert_array_equal(train_labels, direct["label"])
  for split, n in [("train800", 800), ("val200", 200), ("train800val200", 1000),
                   ("test", 1000)]:
    assert pipeline.num_examples(digits, split, data_dir=data_dir) == n


def test_load_split_applies_preprocess_of_any_task_like_object(data_dir):
  class Parity:
    """Duck-typed task: digit parity, image flipped upside down."""
    name = "parity"
    tfds_name = "mini_digits"

    def split(self, split_name):
      return {"val": "validation[:50]"}[split_name]

    def preprocess(self, example):
      return {"image": example["image"][::-1], "label": example["label"] % 2}

  images, labels = pipeline.load_split(Parity(), "val", data_dir=data_dir)
  base, base_labels = pipeline.load_split(mini.get_task("mini_digits"),
                                          "val200", data_dir=data_dir)
  np.testing.assert_array_equal(images, base[:50, ::-1])
  np.testing.assert_array_equal(labels, base_labels[:50] % 2)


def test_eval_batches_count_every_example_once(digits, data_dir):
  images, labels = pipeline.load_split(digits, "val200", data_dir=data_dir)
  batches = list(pipeline.eval_batches(digits, "val200", batch_size=64,
                                       image_size=32, data_dir=data_dir))
  assert len(batches) == 4  # 200 = 3 * 64 + 8
  for b in batches:
    assert b["image"].shape == (64, 32, 32, 3)
    assert b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == bool
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 200 and mask[:200].all() and not mask[200:].any()
  got = np.concatenate([b["image"] for b in batches])
  got_labels = np.concatenate([b["label"] for b in batches])
  np.testing.assert_allclose(got[:200] * 255, images, atol=1e-3)
  np.testing.assert_array_equal(got_labels[:200], labels)
  assert not got[200:].any() and not got_labels[200:].any()
  # Deterministic.
  again = next(pipeline.eval_batches(digits, "val200", batch_size=64,
                                     image_size=32, data_dir=data_dir))
  np.testing.assert_array_equal(again["image"], batches[0]["image"])


def test_eval_batches_resize_and_range_match_arrays(digits, data_dir):
  images, labels = pipeline.load_split(digits, "val200", data_dir=data_dir)
  kwargs = dict(batch_size=48, image_size=40, value_range=(-1.0, 1.0))
  from_tfds = list(pipeline.eval_batches(digits, "val200", data_dir=data_dir,
                                         **kwargs))
  from_arrays = list(pipeline.batches_from_arrays(images, labels, **kwargs))
  assert len(from_tfds) == len(from_arrays) == 5  # 200 = 4 * 48 + 8
  for a, b in zip(from_tfds, from_arrays):
    assert set(a) == set(b) == {"image", "label", "mask"}
    for key in a:
      np.testing.assert_allclose(a[key], b[key], atol=1e-6)
  first = from_tfds[0]["image"][:3]
  reference = np.stack([legacy_bilinear(x, 40, 40) for x in images[:3]])
  np.testing.assert_allclose(first, reference / 127.5 - 1, atol=2e-4)
  assert from_tfds[-1]["mask"].sum() == 8
  whole = pipeline.to_model_input(images, image_size=40, value_range=(-1, 1),
                                  chunk_size=64)
  assert whole.shape == (200, 40, 40, 3) and whole.dtype == np.float32
  batched = np.concatenate([b["image"] for b in from_arrays])[:200]
  np.testing.assert_array_equal(whole, batched)


def test_batches_from_arrays_exact_multiple_has_no_padding():
  images = np.full((6, 4, 4, 3), 255, np.uint8)
  batches = list(pipeline.batches_from_arrays(
      images, np.arange(6), batch_size=3, image_size=4))
  assert len(batches) == 2 and all(b["mask"].all() for b in batches)
  np.testing.assert_array_equal(batches[1]["label"], [3, 4, 5])
  assert (batches[0]["image"] == 1).all()
  with pytest.raises(ValueError, match="6 images but 5 labels"):
    next(pipeline.batches_from_arrays(images, np.arange(5), batch_size=3,
                                      image_size=4))


def test_train_batches_shapes_repeat_and_seed(digits, data_dir):
  def take(seed, n):
    it = pipeline.train_batches(digits, "train800", batch_size=64,
                                image_size=24, value_range=(0.0, 1.0),
                                seed=seed, data_dir=data_dir)
    return list(itertools.islice(it, n))

  first = take(0, 15)  # 15 * 64 = 960 > 800: the data repeats.
  assert len(first) == 15
  for b in first:
    assert set(b) == {"image", "label"}
    assert b["image"].shape == (64, 24, 24, 3)
    assert b["image"].dtype == np.float32
    assert b["label"].shape == (64,) and b["label"].dtype == np.int32
    assert 0 <= b["image"].min() and b["image"].max() <= 1
  same = take(0, 3)
  other = take(1, 3)
  for a, b in zip(first, same):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(first[0]["label"], other[0]["label"])
  # Shuffled: not the TFDS order.
  _, labels = pipeline.load_split(digits, "train800", data_dir=data_dir)
  assert not np.array_equal(first[0]["label"], labels[:64])
  # Every class appears within the first ~1.2 epochs.
  seen = np.concatenate([b["label"] for b in first])
  counts = np.bincount(seen, minlength=10)
  assert (counts > 0).all()


def test_errors(digits, data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"Unknown split 'train'.*valid splits"):
    pipeline.load_split(digits, "train", data_dir=data_dir)
  missing = task_lib.Task(
      name="cifar100", tfds_name="cifar100:3.*.*", num_classes=100,
      group="natural", splits=mini.SPLITS, preprocess=lambda x: x)
  with pytest.raises(FileNotFoundError,
                     match=r"'cifar100:3.\*.\*'.*not prepared"):
    pipeline.load_split(missing, "test", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    next(pipeline.eval_batches(missing, "test", batch_size=8, image_size=32,
                               data_dir=str(tmp_path)))
  unknown = task_lib.Task(
      name="nope", tfds_name="no_such_dataset", num_classes=2, group="natural",
      splits=mini.SPLITS, preprocess=lambda x: x)
  with pytest.raises(ValueError, match=r"no builder 'no_such_dataset'"):
    pipeline.num_examples(unknown, "test", data_dir=str(tmp_path))


def test_prepared_split_of_the_wrong_size_is_refused(digits, data_dir):
  import dataclasses  # pylint: disable=g-import-not-at-top
  wrong = dataclasses.replace(digits, split_sizes={**digits.split_sizes, "test": 999})
  with pytest.raises(ValueError, match=r"split 'test' \('test'\) has 1000 examples.*defines 999"):
    pipeline.load_split(wrong, "test", data_dir=data_dir)
  assert len(pipeline.load_split(digits, "test", data_dir=data_dir)[1]) == 1000


def test_a_version_this_tfds_cannot_build_names_the_task(tmp_path):
  old = task_lib.Task(name="pets_v3", tfds_name="oxford_iiit_pet:3.*.*", num_classes=37,
                      group="natural", splits=mini.SPLITS, preprocess=lambda x: x)
  with pytest.raises(ValueError, match=r"Task 'pets_v3'.*only: 4\.0\.0"):
    pipeline.num_examples(old, "test", data_dir=str(tmp_path))
