"""Tests for the offline mini suite: builders, tasks and their difficulty."""

import dataclasses
import pathlib
import warnings

import numpy as np
import pytest
from sklearn import datasets as sk_datasets
from sklearn import exceptions as sk_exceptions
from sklearn import linear_model
import tensorflow_datasets as tfds
import threadpoolctl

from model_search.data import mini
from model_search.data import mini_objects
from model_search.data import task as task_lib

DOWNSTREAM = ("mini_digits", "mini_shapes", "mini_textures", "mini_cells",
              "mini_landuse", "mini_count", "mini_largest", "mini_sprite_x",
              "mini_sprite_ori")
EXPERTS = ("up_digits", "up_shapes", "up_textures", "up_blobs", "up_count",
           "up_sprites")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data_dir with every downstream mini task prepared once."""
  path = str(tmp_path_factory.mktemp("tfds"))
  mini.prepare(DOWNSTREAM, data_dir=path)
  return path


def _arrays(name, split, data_dir):
  """(images, labels) of one TFDS split, read in order."""
  ds = tfds.load(name, split=split, data_dir=data_dir, shuffle_files=False,
                 batch_size=-1)
  ex = tfds.as_numpy(ds)
  return ex["image"], ex["label"]


def test_registry():
  assert tuple(mini.TASKS) == DOWNSTREAM
  assert mini.task_names() == list(DOWNSTREAM)
  assert mini.task_names("natural") == ["mini_digits", "mini_shapes",
                                        "mini_textures"]
  assert mini.task_names("specialized") == ["mini_cells", "mini_landuse"]
  assert mini.task_names("structured") == ["mini_count", "mini_largest",
                                           "mini_sprite_x", "mini_sprite_ori"]
  for name in DOWNSTREAM:
    t = mini.get_task(name)
    assert isinstance(t, task_lib.Task)
    assert t.name == name and t.image_size == (32, 32)
    assert dict(t.splits) == {"train800": "train[:800]",
                              "val200": "validation[:200]",
                              "train800val200": "train[:800]+validation[:200]",
                              "test": "test"}
  assert mini.get_task("mini_cells").num_classes == 2
  assert mini.get_task("mini_count").num_classes == 8
  assert set(mini.UPSTREAM) == {"up_broad", *EXPERTS}
  assert 30 <= mini.get_upstream("up_broad").num_classes <= 50
  up = mini.get_upstream("up_digits")
  assert (up.train_split, up.test_split) == ("train", "test")
  assert up.num_classes == 10
  assert up.related == ("mini_digits",) and up.description
  with pytest.raises(dataclasses.FrozenInstanceError):
    up.name = "other"


def test_errors_name_the_choices():
  with pytest.raises(ValueError,
                     match=r"Unknown task 'cifar'; known mini tasks: .*mini_digits"):
    mini.get_task("cifar")
  with pytest.raises(ValueError, match=r"Unknown task 'mini_digits'; "
                     r"known tasks: .*up_broad"):
    mini.get_upstream("mini_digits")
  with pytest.raises(ValueError,
                     match=r"valid groups: natural, specialized, structured"):
    mini.task_names("natral")
  with pytest.raises(ValueError, match=r"valid splits: .*train800val200"):
    mini.get_task("mini_digits").split("train")
  with pytest.raises(ValueError, match=r"Unknown task 'nope'"):
    mini.prepare(["nope"], data_dir="/nonexistent")


def test_split_sizes_and_features(data_dir):
  builder = tfds.builder("mini_shapes", data_dir=data_dir)
  assert str(builder.version) == "1.0.0"
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 1000, "validation": 200, "test": 1000}
  for name in DOWNSTREAM:
    t = mini.get_task(name)
    sizes = {s: len(_arrays(t.tfds_name, t.split(s), data_dir)[1])
             for s in task_lib.SPLIT_NAMES}
    assert sizes == {"train800": 800, "val200": 200, "train800val200": 1000,
                     "test": 1000}, name
  # The plain call from the docs works once the module is imported.
  ds = tfds.load("mini_digits", split="train[:800]", data_dir=data_dir)
  example = next(iter(ds))
  assert example["image"].shape == (32, 32, 3)
  assert example["image"].dtype == np.uint8
  assert example["id"].numpy().decode().startswith("train_")
  assert ds.cardinality().numpy() == 800


def test_preprocess_is_identity_inside_tf_data(data_dir):
  t = mini.get_task("mini_count")
  ds = tfds.load(t.tfds_name, split="validation[:5]", data_dir=data_dir,
                 shuffle_files=False)
  raw = list(tfds.as_numpy(ds))
  out = list(tfds.as_numpy(ds.map(t.preprocess)))
  assert set(out[0]) == {"image", "label"}
  for r, o in zip(raw, out):
    assert o["image"].dtype == np.uint8 and o["label"].dtype == np.int64
    np.testing.assert_array_equal(o["image"], r["image"])
    assert o["label"] == r["label"]


@pytest.mark.parametrize("name", DOWNSTREAM)
def test_labels_in_range_and_every_class_in_train800(name, data_dir):
  t = mini.get_task(name)
  images, labels = _arrays(t.tfds_name, t.split("train800"), data_dir)
  assert images.shape == (800, 32, 32, 3) and images.dtype == np.uint8
  assert labels.min() >= 0 and labels.max() < t.num_classes
  assert set(labels.tolist()) == set(range(t.num_classes))
  assert images.std() > 10  # Not blank.
  # Distinct examples: no two training images are identical.
  assert len({x.tobytes() for x in images}) == len(images)


def test_prepare_is_deterministic(data_dir, tmp_path):
  names = ("mini_digits", "mini_largest")
  mini.prepare(names, data_dir=str(tmp_path))
  for name in names:
    first = sorted(pathlib.Path(data_dir, name, "1.0.0").glob("*.tfrecord*"))
    second = sorted(pathlib.Path(tmp_path, name, "1.0.0").glob("*.tfrecord*"))
    assert [p.name for p in first] == [p.name for p in second]
    assert len(first) == 3  # train, validation, test
    for a, b in zip(first, second):
      assert a.read_bytes() == b.read_bytes(), a.name


def test_splits_and_tasks_do_not_share_images():
  seen = {}
  for name, split in [("mini_shapes", "train"), ("mini_shapes", "test"),
                      ("up_shapes", "test")]:
    images, _ = mini.generate(name, split)
    seen[name, split] = {x.tobytes() for x in images}
  assert not seen["mini_shapes", "train"] & seen["mini_shapes", "test"]
  assert not seen["mini_shapes", "test"] & seen["up_shapes", "test"]


def test_digits_partition_is_disjoint_stratified_and_used():
  # pylint: disable=protected-access
  parts = mini_objects.digits_partition()
  assert set(parts) == {"train", "validation", "test", "upstream"}
  everything = np.concatenate(list(parts.values()))
  assert len(everything) == 1797 == len(np.unique(everything))
  targets = sk_datasets.load_digits().target
  for idx in parts.values():
    assert set(targets[idx].tolist()) == set(range(10))
  # Base digits sampled for a role come from that role's part only.
  bank = sk_datasets.load_digits().images / 16.0
  rows = {bank[i].astype(np.float32).tobytes(): i for i in range(len(bank))}
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 500)
  for part in ("test", "upstream"):
    drawn = mini_objects._sample_digits(rng, labels, part)
    idx = np.array([rows[d.tobytes()] for d in drawn])
    assert np.isin(idx, parts[part]).all()
    np.testing.assert_array_equal(targets[idx], labels)


@pytest.mark.parametrize("name", ("up_broad",) + EXPERTS)
def test_upstream_generation(name):
  up = mini.get_upstream(name)
  assert up.tfds_name.startswith(name)
  images, labels = mini.generate(name, up.test_split)
  assert images.shape == (2000 if name == "up_broad" else 1000, 32, 32, 3)
  assert images.dtype == np.uint8 and images.std() > 10
  # Balanced: every class appears, counts differ by at most one.
  counts = np.bincount(labels, minlength=up.num_classes)
  assert len(counts) == up.num_classes and counts.max() - counts.min() <= 1
  again, labels_again = mini.generate(name, up.test_split)
  np.testing.assert_array_equal(again, images)
  np.testing.assert_array_equal(labels_again, labels)


def test_generate_errors():
  with pytest.raises(ValueError, match=r"known datasets: .*up_broad"):
    mini.generate("mini_nope", "train")
  with pytest.raises(ValueError, match=r"valid splits: train, test"):
    mini.generate("up_digits", "validation")


@pytest.mark.parametrize("name", DOWNSTREAM)
def test_pixel_baseline_is_informative_but_not_solved(name, data_dir,
                                                      record_property):
  """Logistic regression on raw pixels, train800 -> test: > chance, < 95%."""
  t = mini.get_task(name)
  x_train, y_train = _arrays(t.tfds_name, t.split("train800"), data_dir)
  x_test, y_test = _arrays(t.tfds_name, t.split("test"), data_dir)
  # One BLAS thread: the fit is small, and threads fight on a shared CPU.
  with warnings.catch_warnings(), threadpoolctl.threadpool_limits(1):
    warnings.simplefilter("ignore", sk_exceptions.ConvergenceWarning)
    clf = linear_model.LogisticRegression(C=0.1, max_iter=100)
    clf.fit(x_train.reshape(800, -1) / 255.0, y_train)
  accuracy = clf.score(x_test.reshape(len(x_test), -1) / 255.0, y_test)
  chance = 1.0 / t.num_classes
  record_property("pixel_baseline_accuracy", accuracy)
  print(f"{name}: pixel logistic regression {accuracy:.3f} "
        f"(chance {chance:.3f})")
  assert accuracy >= 1.5 * chance, (name, accuracy)
  assert accuracy <= 0.95, (name, accuracy)
