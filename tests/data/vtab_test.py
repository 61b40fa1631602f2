"""Tests for the 19 VTAB-1k tasks: the reference table, and every label function on crafted
examples served through `tfds.testing.mock_data`, with expectations worked out by hand from the
reference formulas (shared/reference/vtab1k.md, sections 3 and 7)."""

import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from model_search.data import pipeline
from model_search.data import vtab

# Section 7 of the reference file, verbatim in its facts:
# name: (tfds_name, num_classes, train800, val200, train800val200, test, n_test).
REFERENCE = {
    "caltech101": ("caltech101:3.*.*", 102, "train[:800]", "train[2754:2954]", "train[:800]+train[2754:2954]", "test", 6084),
    "cifar100": ("cifar100:3.*.*", 100, "train[:800]", "train[45000:45200]", "train[:800]+train[45000:45200]", "test", 10000),
    "dtd": ("dtd:3.*.*", 47, "train[:800]", "validation[:200]", "train[:800]+validation[:200]", "test", 1880),
    "oxford_flowers102": ("oxford_flowers102:2.*.*", 102, "train[:800]", "validation[:200]", "train[:800]+validation[:200]", "test", 6149),
    "oxford_iiit_pet": ("oxford_iiit_pet:3.*.*", 37, "train[:800]", "train[2944:3144]", "train[:800]+train[2944:3144]", "test", 3669),
    "sun397": ("sun397/tfds:4.*.*", 397, "train[:800]", "validation[:200]", "train[:800]+validation[:200]", "test", 21750),
    "svhn": ("svhn_cropped:3.*.*", 10, "train[:800]", "train[65931:66131]", "train[:800]+train[65931:66131]", "test", 26032),
    "patch_camelyon": ("patch_camelyon:2.*.*", 2, "train[:800]", "validation[:200]", "train[:800]+validation[:200]", "test", 32768),
    "eurosat": ("eurosat/rgb:2.*.*", 10, "train[:800]", "train[16200:16400]", "train[:800]+train[16200:16400]", "train[21600:]", 5400),
    "resisc45": ("resisc45:3.*.*", 45, "train[:800]", "train[18900:19100]", "train[:800]+train[18900:19100]", "train[25200:]", 6300),
    "diabetic_retinopathy": ("diabetic_retinopathy_detection/btgraham-300:3.*.*", 5, "train[:800]", "validation[:200]", "train[:800]+validation[:200]", "test", 42670),
    "clevr_count": ("clevr:3.*.*", 8, "train[:800]", "train[63000:63200]", "train[:800]+train[63000:63200]", "validation", 15000),
    "clevr_dist": ("clevr:3.*.*", 6, "train[:800]", "train[63000:63200]", "train[:800]+train[63000:63200]", "validation", 15000),
    "dmlab": ("dmlab:2.0.1", 6, "train[:800]", "validation[:200]", "train[:800]+validation[:200]", "test", 22735),
    "kitti_dist": ("kitti:3.1.0", 4, "train[:800]", "validation[:200]", "train[:800]+validation[:200]", "test", 711),
    "dsprites_loc": ("dsprites:2.*.*", 16, "train[:800]", "train[589824:590024]", "train[:800]+train[589824:590024]", "train[663552:]", 73728),
    "dsprites_ori": ("dsprites:2.*.*", 16, "train[:800]", "train[589824:590024]", "train[:800]+train[589824:590024]", "train[663552:]", 73728),
    "smallnorb_azi": ("smallnorb:2.*.*", 18, "train[:800]", "test[:200]", "train[:800]+test[:200]", "test[50%:]", 12150),
    "smallnorb_ele": ("smallnorb:2.*.*", 9, "train[:800]", "test[:200]", "train[:800]+test[:200]", "test[50%:]", 12150),
}
# Full splits (reference section 2): name: (train, val, trainval, n_train, n_val).
FULL = {
    "caltech101": ("train[:2754]", "train[2754:]", "train", 2754, 306),
    "cifar100": ("train[:45000]", "train[45000:]", "train", 45000, 5000),
    "dtd": ("train", "validation", "train+validation", 1880, 1880),
    "oxford_flowers102": ("train", "validation", "train+validation", 1020, 1020),
    "oxford_iiit_pet": ("train[:2944]", "train[2944:]", "train", 2944, 736),
    "sun397": ("train", "validation", "train+validation", 76128, 10875),
    "svhn": ("train[:65931]", "train[65931:]", "train", 65931, 7326),
    "patch_camelyon": ("train", "validation", "train+validation", 262144, 32768),
    "eurosat": ("train[:16200]", "train[16200:21600]", "train[:21600]", 16200, 5400),
    "resisc45": ("train[:18900]", "train[18900:25200]", "train[:25200]", 18900, 6300),
    "diabetic_retinopathy": ("train", "validation", "train+validation", 35126, 10906),
    "clevr_count": ("train[:63000]", "train[63000:]", "train", 63000, 7000),
    "clevr_dist": ("train[:63000]", "train[63000:]", "train", 63000, 7000),
    "dmlab": ("train", "validation", "train+validation", 65550, 22628),
    "kitti_dist": ("train", "validation", "train+validation", 6347, 423),
    "dsprites_loc": ("train[:589824]", "train[589824:663552]", "train[:663552]", 589824, 73728),
    "dsprites_ori": ("train[:589824]", "train[589824:663552]", "train[:663552]", 589824, 73728),
    "smallnorb_azi": ("train", "test[:50%]", "train+test[:50%]", 24300, 12150),
    "smallnorb_ele": ("train", "test[:50%]", "train+test[:50%]", 24300, 12150),
}
GROUPS = {
    "natural": ["caltech101", "cifar100", "dtd", "oxford_flowers102", "oxford_iiit_pet",
                "sun397", "svhn"],
    "specialized": ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"],
    "structured": ["clevr_count", "clevr_dist", "dmlab", "kitti_dist", "dsprites_loc",
                   "dsprites_ori", "smallnorb_azi", "smallnorb_ele"],
}
# Where this code must use another builder version than the reference (vtab.py docstring).
VERSION_DEVIATIONS = {"kitti_dist": "kitti:3.2.0", "oxford_iiit_pet": "oxford_iiit_pet:4.*.*"}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_task_matches_the_reference_table(name):
  tfds_name, num_classes, train800, val200, train800val200, test, n_test = REFERENCE[name]
  task = vtab.get_task(name)
  assert task.name == name
  assert vtab.REFERENCE_TFDS_NAMES[name] == tfds_name
  assert task.tfds_name == VERSION_DEVIATIONS.get(name, tfds_name)
  assert task.num_classes == num_classes
  assert dict(task.splits) == {
      "train800": train800, "val200": val200, "train800val200": train800val200, "test": test,
      "train": FULL[name][0], "val": FULL[name][1], "trainval": FULL[name][2]}
  _, _, _, n_train, n_val = FULL[name]
  assert dict(task.split_sizes) == {
      "train800": 800, "val200": 200, "train800val200": 1000, "test": n_test,
      "train": n_train, "val": n_val, "trainval": n_train + n_val}
  assert task.prepare_hint


def test_groups_order_and_selection():
  assert vtab.task_names() == [n for g in GROUPS.values() for n in g]
  assert len(vtab.task_names()) == 19
  for group, names in GROUPS.items():
    assert vtab.task_names(group) == names
    assert vtab.select_tasks(group) == names
  assert vtab.select_tasks("all") == vtab.task_names() == vtab.select_tasks("")
  assert vtab.select_tasks("dtd+svhn") == ["dtd", "svhn"]


def test_errors_name_the_choices():
  with pytest.raises(ValueError, match=r"Unknown task 'cifar10'; known VTAB-1k tasks: .*cifar100"):
    vtab.get_task("cifar10")
  with pytest.raises(ValueError, match="Unknown task 'nope'"):
    vtab.select_tasks("dtd+nope")
  with pytest.raises(ValueError, match="Unknown group 'natrual'; valid groups: natural"):
    vtab.task_names("natrual")
  with pytest.raises(ValueError, match=r"Unknown split 'train1000'.*valid splits: test, train, "
                     r"train800, train800val200, trainval, val, val200"):
    vtab.get_task("dtd").split("train1000")


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_builders_exist_offline_with_the_features_the_labels_need(name, tmp_path):
  """The builder strings resolve in the installed TFDS (no download) and their features have
  the keys, channels and class counts the label functions rely on."""
  task = vtab.get_task(name)
  builder = tfds.builder(task.tfds_name, data_dir=str(tmp_path))
  features = builder.info.features
  height, width, channels = features["image"].shape
  # A fixed image_size lets the pipeline read a split once for every model.
  assert task.image_size == ((height, width) if height and width else None)
  assert channels == (1 if name.startswith(("dsprites", "smallnorb")) else 3)
  if name.startswith("clevr"):
    assert {"size", "pixel_coords"} <= set(features["objects"].feature.keys())
  elif name == "kitti_dist":
    assert features["objects"]["type"].names[:3] == ["Car", "Van", "Truck"]
  elif name == "dsprites_loc":
    assert features["label_x_position"].num_classes == 32
  elif name == "dsprites_ori":
    assert features["label_orientation"].num_classes == 40
  elif name == "smallnorb_azi":
    assert features["label_azimuth"].num_classes == task.num_classes
  elif name == "smallnorb_ele":
    assert features["label_elevation"].num_classes == task.num_classes
  else:
    assert features["label"].num_classes == task.num_classes


# ----------------------------------------------------------------------------
# Crafted examples through tfds.testing.mock_data.

def _serve(examples):
  """A mock_data as_dataset_fn yielding `examples` (dicts of arrays) for any split."""
  def as_dataset_fn(builder, split, decoders=None, read_config=None, shuffle_files=False):
    del builder, decoders, shuffle_files
    items = []
    for i, ex in enumerate(examples):
      ex = dict(ex)
      if read_config is not None and read_config.add_tfds_id:
        ex["tfds_id"] = f"mock-{split}__{i}"
      items.append(tf.data.Dataset.from_tensors(tf.nest.map_structure(tf.constant, ex)))
    return functools.reduce(lambda a, b: a.concatenate(b), items)
  return tfds.testing.mock_data(as_dataset_fn=as_dataset_fn)


def _labels(name, examples, tmp_path, split="train800"):
  """Labels of crafted examples inside tf.data, checked equal to eager preprocess."""
  task = vtab.get_task(name)
  with _serve(examples):
    out = list(pipeline.dataset(task, split, str(tmp_path)).as_numpy_iterator())
  eager = [task.preprocess(tf.nest.map_structure(tf.constant, ex)) for ex in examples]
  for got, want in zip(out, eager):
    assert got["label"].dtype == np.int64 and got["image"].dtype == np.uint8
    assert got["label"] == want["label"].numpy()
    np.testing.assert_array_equal(got["image"], want["image"].numpy())
  return [int(x["label"]) for x in out], [x["image"] for x in out]


def _rgb(h=4, w=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)


def _clevr(sizes=None, depths=None):
  depths = [12.0] * len(sizes) if depths is None else depths
  n = len(depths)
  sizes = [0] * n if sizes is None else sizes
  coords = np.array([[100.0, 50.0, d] for d in depths], np.float32).reshape(n, 3)
  return {"image": _rgb(), "objects": {"size": np.array(sizes, np.int64),
                                       "pixel_coords": coords}}


def test_clevr_count_is_objects_minus_three(tmp_path):
  # 3..10 objects -> 0..7; the object count is the length of objects/size.
  examples = [_clevr(sizes=[0, 1, 0]), _clevr(sizes=[1] * 5), _clevr(sizes=[0] * 10)]
  labels, images = _labels("clevr_count", examples, tmp_path)
  assert labels == [0, 2, 7]
  np.testing.assert_array_equal(images[0], examples[0]["image"])


def test_clevr_count_outside_3_to_10_fails_loudly(tmp_path):
  with pytest.raises(tf.errors.InvalidArgumentError, match="clevr_count"):
    _labels("clevr_count", [_clevr(sizes=[0] * 11)], tmp_path)


def test_clevr_dist_bins_with_thresholds_in_the_lower_bin(tmp_path):
  # Bins 0:(0,8] 1:(8,8.5] 2:(8.5,9] 3:(9,9.5] 4:(9.5,10] 5:(10,100]; the closest depth counts.
  cases = [([3.0], 0), ([8.0], 0), ([8.25], 1), ([8.5], 1), ([8.75], 2), ([9.0], 2),
           ([9.25], 3), ([9.5], 3), ([9.75], 4), ([10.0], 4), ([10.25], 5), ([100.0], 5),
           ([15.0, 9.2, 30.0], 3), ([8.6, 50.0], 2)]
  labels, _ = _labels("clevr_dist", [_clevr(depths=d) for d, _ in cases], tmp_path)
  assert labels == [want for _, want in cases]


def test_clevr_dist_beyond_the_last_threshold_fails_loudly(tmp_path):
  # The reference would emit label 6 of 6 classes; we refuse it.
  with pytest.raises(tf.errors.InvalidArgumentError, match="clevr_dist"):
    _labels("clevr_dist", [_clevr(depths=[150.0])], tmp_path)


def _kitti(types, depths):
  n = len(types)
  location = np.array([[1.0, 1.5, z] for z in depths], np.float32).reshape(n, 3)
  return {"image": _rgb(5, 16), "objects": {"type": np.array(types, np.int64),
                                            "location": location}}


def test_kitti_closest_vehicle_bins(tmp_path):
  # Types: Car 0, Van 1, Truck 2 are vehicles; Pedestrian 3, Person_sitting 4, Cyclist 5,
  # Tram 6, Misc 7 are not. Bins 0: z <= 8, 1: 8 < z <= 20, 2: 20 < z <= 999, 3: no vehicle.
  cases = [
      ([0], [1.0], 0), ([0], [10.0], 1), ([0], [30.0], 2),   # the reference's unit tests
      ([4], [30.0], 3), ([0, 1], [30.0, 1.0], 0),
      ([1], [8.0], 0), ([2], [20.0], 1), ([0], [999.0], 2),   # exactly on a threshold
      ([2], [8.01], 1), ([0], [20.5], 2),
      ([], [], 3),                                             # no object at all
      ([3, 5, 6, 7], [2.0, 3.0, 4.0, 5.0], 3),                 # only non-vehicles, all close
      ([3, 2, 0], [1.0, 15.0, 40.0], 1),                       # a close pedestrian is ignored
  ]
  labels, _ = _labels("kitti_dist", [_kitti(t, z) for t, z, _ in cases], tmp_path)
  assert labels == [want for _, _, want in cases]


def _dsprites(x=0, orientation=0, seed=0):
  mask = np.random.default_rng(seed).integers(0, 2, (64, 64, 1), np.uint8)
  return {"image": mask, "label_x_position": np.int64(x),
          "label_orientation": np.int64(orientation), "label_y_position": np.int64(5)}


def test_dsprites_position_bins_and_image_scaling(tmp_path):
  xs = list(range(32))
  labels, images = _labels("dsprites_loc", [_dsprites(x=x, seed=x) for x in xs], tmp_path)
  assert labels == [x // 2 for x in xs]
  assert labels[:4] == [0, 0, 1, 1] and labels[-2:] == [15, 15]
  mask = _dsprites(seed=3)["image"]
  assert images[3].shape == (64, 64, 3)
  for c in range(3):  # Grey {0, 1} mask tiled to RGB and scaled to {0, 255}.
    np.testing.assert_array_equal(images[3][..., c], mask[..., 0].astype(np.uint8) * 255)


def test_dsprites_orientation_bins(tmp_path):
  # 40 orientations -> 16 classes, floor(o / 2.5); the reference's table, by hand.
  table = {0: (0, 1, 2), 1: (3, 4), 2: (5, 6, 7), 3: (8, 9), 4: (10, 11, 12), 5: (13, 14),
           6: (15, 16, 17), 7: (18, 19), 8: (20, 21, 22), 9: (23, 24), 10: (25, 26, 27),
           11: (28, 29), 12: (30, 31, 32), 13: (33, 34), 14: (35, 36, 37), 15: (38, 39)}
  want = {o: c for c, os_ in table.items() for o in os_}
  assert sorted(want) == list(range(40))
  labels, _ = _labels("dsprites_ori", [_dsprites(orientation=o) for o in range(40)], tmp_path)
  assert labels == [want[o] for o in range(40)]
  assert labels[-1] == 15  # The last bin holds 38 and 39.


def _norb(azimuth=0, elevation=0):
  rng = np.random.default_rng(azimuth * 10 + elevation)
  return {"image": rng.integers(0, 256, (96, 96, 1), np.uint8),
          "image2": np.full((96, 96, 1), 7, np.uint8),
          "label_azimuth": np.int64(azimuth), "label_elevation": np.int64(elevation),
          "label_category": np.int64(1)}


def test_smallnorb_first_camera_tiled_and_labels_unchanged(tmp_path):
  examples = [_norb(azimuth=a, elevation=a % 9) for a in range(18)]
  labels, images = _labels("smallnorb_azi", examples, tmp_path, split="val200")
  assert labels == list(range(18))
  labels, images = _labels("smallnorb_ele", examples, tmp_path, split="test")
  assert labels == [a % 9 for a in range(18)]
  for ex, image in zip(examples, images):
    assert image.shape == (96, 96, 3)
    np.testing.assert_array_equal(image, np.repeat(ex["image"], 3, axis=-1))  # not 'image2'


@pytest.mark.parametrize("name", [n for n in REFERENCE if not n.startswith(
    ("clevr", "kitti", "dsprites", "smallnorb"))])
def test_classification_tasks_keep_image_and_label(name, tmp_path):
  task = vtab.get_task(name)
  examples = [{"image": _rgb(3 + i, 5, seed=i), "label": np.int64(label)}
              for i, label in enumerate([0, task.num_classes - 1, 1])]
  labels, images = _labels(name, examples, tmp_path)
  assert labels == [0, task.num_classes - 1, 1]
  for ex, image in zip(examples, images):
    np.testing.assert_array_equal(image, ex["image"])
  with pytest.raises(tf.errors.InvalidArgumentError, match="label outside"):
    _labels(name, [{"image": _rgb(), "label": np.int64(task.num_classes)}], tmp_path)


def test_variable_size_images_resize_and_count_exactly_once(tmp_path):
  """Caltech-like images of several sizes: every example exactly once, resized like the
  reference (legacy bilinear), for a count not divisible by the batch size."""
  task = vtab.get_task("caltech101")
  examples = [{"image": _rgb(10 + 3 * i, 7 + 5 * i, seed=i), "label": np.int64(i % 102)}
              for i in range(11)]
  with _serve(examples):
    batches = list(pipeline.eval_batches(task, "test", batch_size=4, image_size=12,
                                         data_dir=str(tmp_path)))
  assert len(batches) == 3
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 11 and not mask[11:].any()
  images = np.concatenate([b["image"] for b in batches])[mask]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask],
                                np.arange(11) % 102)
  for ex, got in zip(examples, images):
    want = tf.compat.v1.image.resize(ex["image"], [12, 12]).numpy() / 255
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("name,hint", [("resisc45", "manual download.*NWPU-RESISC45"),
                                       ("diabetic_retinopathy", "manual download.*Kaggle"),
                                       ("kitti_dist", "kitti:3.2.0"),
                                       ("cifar100", "tfds build cifar100")])
def test_missing_dataset_says_how_to_prepare(name, hint, tmp_path):
  task = vtab.get_task(name)
  with pytest.raises(FileNotFoundError, match=f"not prepared in data_dir '{tmp_path}'.*{hint}"):
    pipeline.load_split(task, "val200", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=hint):
    pipeline.num_examples(task, "test", data_dir=str(tmp_path))
