"""The 19 VTAB-1k tasks, exactly as the VTAB reference (google-research/task_adaptation) defines them.

Every fact here (TFDS builder strings, split strings, class counts, label formulas and
thresholds) is taken from `shared/reference/vtab1k.md`, which mirrors task_adaptation@d7630d3
(`task_adaptation/data/*.py` and their tests). Each task has the seven splits of the reference:
`train800`, `val200`, `train800val200` (the VTAB-1k protocol: tune on train800 -> val200, then
train on train800val200 and report `test`) and the full `train`, `val`, `trainval`, `test`.
The 1k splits are explicit TFDS slices (`train[:800]+train[2754:2954]`), so they name one fixed
set of examples whatever the read order (the reference's own `trainval.take(1000)` does not; see
the reference file, section 1.2).

Deviations from the reference, both forced by current TFDS and both the same data:
* `kitti:3.2.0` instead of `kitti:3.1.0`, which recent TFDS cannot generate
  (task_adaptation issue #18: 3.2.0 only updates the devkit);
* `oxford_iiit_pet:4.*.*` instead of `3.*.*`: TFDS 4.9 has only 4.0.0 (same trainval/test file
  lists, 3680 / 3669 examples; it re-encodes corrupt JPEGs and adds head boxes).

`preprocess` functions take one TFDS example (a dict of tf tensors, as `tfds.load` yields it) and
return `{'image': uint8 [H, W, 3], 'label': int64 []}`; they run inside `tf.data.Dataset.map`
and eagerly, with the same result. Labels outside 0..num_classes-1 (a CLEVR depth beyond the
last threshold, say) fail loudly instead of being passed on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np
import tensorflow as tf

from model_search.data import task as task_lib

# ----------------------------------------------------------------------------
# Label functions (reference file, section 3).

# bin(v, thrs) = max{i : thrs[i] < v}: a value exactly on a threshold falls in the lower bin.
CLEVR_DIST_THRESHOLDS = (0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)
KITTI_DIST_THRESHOLDS = (-100.0, 8.0, 20.0, 999.0)
# KITTI object types Car=0, Van=1, Truck=2 are vehicles; the sentinel depth means "none".
KITTI_NUM_VEHICLE_TYPES = 3
KITTI_NO_VEHICLE_DEPTH = 1000.0


def threshold_bin(value: tf.Tensor, thresholds) -> tf.Tensor:
  """The reference's `tf.reduce_max(tf.where((thrs - value) < 0))`: the largest i with
  thresholds[i] < value, as int64 (a value at or below thresholds[0] has no bin)."""
  thrs = tf.constant(np.asarray(thresholds, np.float32))
  value = tf.cast(value, tf.float32)
  return tf.reduce_max(tf.where((thrs - value) < 0))


def _checked(label: tf.Tensor, num_classes: int, task: str) -> tf.Tensor:
  label = tf.cast(label, tf.int64)
  with tf.control_dependencies([
      tf.debugging.assert_greater_equal(label, tf.constant(0, tf.int64), message=(
          f"{task}: example has no label bin (value at or below the first threshold)")),
      tf.debugging.assert_less(label, tf.constant(num_classes, tf.int64), message=(
          f"{task}: label outside 0..{num_classes - 1}"))]):
    return tf.identity(label)


def _classification(name: str, num_classes: int):
  def preprocess(example):
    return {"image": example["image"], "label": _checked(example["label"], num_classes, name)}
  return preprocess


def _clevr_count(example):
  # CLEVR scenes have 3..10 objects -> 0..7.
  label = tf.size(example["objects"]["size"], out_type=tf.int64) - 3
  return {"image": example["image"], "label": _checked(label, 8, "clevr_count")}


def _clevr_dist(example):
  # The third pixel coordinate is the depth; the closest object decides.
  depth = tf.reduce_min(example["objects"]["pixel_coords"][:, 2])
  label = threshold_bin(depth, CLEVR_DIST_THRESHOLDS)
  return {"image": example["image"], "label": _checked(label, 6, "clevr_dist")}


def _kitti_dist(example):
  objects = example["objects"]
  vehicles = tf.where(objects["type"] < KITTI_NUM_VEHICLE_TYPES)       # [K, 1]
  depths = tf.gather(tf.cast(objects["location"][:, 2], tf.float32), vehicles)  # [K, 1]
  depths = tf.concat([depths, tf.constant([[KITTI_NO_VEHICLE_DEPTH]], tf.float32)], axis=0)
  label = threshold_bin(tf.reduce_min(depths), KITTI_DIST_THRESHOLDS)
  return {"image": example["image"], "label": _checked(label, 4, "kitti_dist")}


def _dsprites(attribute: str, num_original: int, num_classes: int, name: str):
  factor = float(num_original) / num_classes

  def preprocess(example):
    # TFDS stores {0, 1} single-channel masks: tile to RGB and scale to {0, 255}.
    image = tf.tile(example["image"], [1, 1, 3]) * 255
    label = tf.math.floordiv(tf.cast(example[attribute], tf.float32), factor)
    return {"image": image, "label": _checked(label, num_classes, name)}
  return preprocess


def _smallnorb(attribute: str, num_classes: int, name: str):
  def preprocess(example):
    # The first camera ('image') only; 'image2' is unused, as in the reference.
    image = tf.tile(example["image"], [1, 1, 3])
    return {"image": image, "label": _checked(example[attribute], num_classes, name)}
  return preprocess


# ----------------------------------------------------------------------------
# The table (reference file, sections 2 and 7).

_AUTO = "downloads itself: `tfds build {builder} --data_dir=DATA_DIR`"


@dataclasses.dataclass(frozen=True)
class _Row:
  tfds_name: str
  num_classes: int
  group: str
  # split name -> TFDS split string (all seven).
  splits: Mapping[str, str]
  # split name -> number of examples.
  sizes: Mapping[str, int]
  preprocess: Callable[[Mapping[str, Any]], Mapping[str, Any]]
  image_size: tuple[int, int] | None
  prepare: str
  reference_tfds_name: str | None = None  # Where the reference pins another version.


def _splits(val200: str, test: str, train: str, val: str, trainval: str) -> dict[str, str]:
  return {"train800": "train[:800]", "val200": val200,
          "train800val200": f"train[:800]+{val200}", "test": test,
          "train": train, "val": val, "trainval": trainval}


def _sizes(test: int, train: int, val: int) -> dict[str, int]:
  return {"train800": 800, "val200": 200, "train800val200": 1000, "test": test,
          "train": train, "val": val, "trainval": train + val}


def _tail_of_train(offset: int, total: int, test: int) -> tuple[dict[str, str], dict[str, int]]:
  """val = train[offset:]; test is TFDS 'test' of size `test`."""
  return (_splits(f"train[{offset}:{offset + 200}]", "test", f"train[:{offset}]",
                  f"train[{offset}:]", "train"),
          _sizes(test, offset, total - offset))


def _tfds_validation(train: int, val: int, test: int):
  return (_splits("validation[:200]", "test", "train", "validation", "train+validation"),
          _sizes(test, train, val))


def _carved_from_train(train: int, val: int, test: int):
  """train / val / test all from TFDS 'train' (EuroSAT, Resisc45, dSprites)."""
  end = train + val
  return (_splits(f"train[{train}:{train + 200}]", f"train[{end}:]", f"train[:{train}]",
                  f"train[{train}:{end}]", f"train[:{end}]"),
          _sizes(test, train, val))


def _row(tfds_name, num_classes, group, splits_sizes, preprocess, *, image_size=None,
         prepare=None, reference_tfds_name=None):
  splits, sizes = splits_sizes
  builder = tfds_name.split(":")[0]
  return _Row(tfds_name, num_classes, group, splits, sizes, preprocess, image_size,
              prepare or _AUTO.format(builder=builder), reference_tfds_name)


_CLEVR = _tail_of_train(63000, 70000, 15000)
_CLEVR[0]["test"] = "validation"  # TFDS 'test' has no scene annotations.
_SMALLNORB = (_splits("test[:200]", "test[50%:]", "train", "test[:50%]", "train+test[:50%]"),
              _sizes(12150, 24300, 12150))

_ROWS: dict[str, _Row] = {
    # natural
    "caltech101": _row("caltech101:3.*.*", 102, "natural", _tail_of_train(2754, 3060, 6084),
                       _classification("caltech101", 102)),
    "cifar100": _row("cifar100:3.*.*", 100, "natural", _tail_of_train(45000, 50000, 10000),
                     _classification("cifar100", 100), image_size=(32, 32)),
    "dtd": _row("dtd:3.*.*", 47, "natural", _tfds_validation(1880, 1880, 1880),
                _classification("dtd", 47)),
    "oxford_flowers102": _row("oxford_flowers102:2.*.*", 102, "natural",
                              _tfds_validation(1020, 1020, 6149),
                              _classification("oxford_flowers102", 102)),
    "oxford_iiit_pet": _row("oxford_iiit_pet:4.*.*", 37, "natural",
                            _tail_of_train(2944, 3680, 3669),
                            _classification("oxford_iiit_pet", 37),
                            reference_tfds_name="oxford_iiit_pet:3.*.*"),
    "sun397": _row("sun397/tfds:4.*.*", 397, "natural", _tfds_validation(76128, 10875, 21750),
                   _classification("sun397", 397),
                   prepare=("downloads itself (about 37 GB of source images): "
                            "`tfds build sun397/tfds --data_dir=DATA_DIR`")),
    "svhn": _row("svhn_cropped:3.*.*", 10, "natural", _tail_of_train(65931, 73257, 26032),
                 _classification("svhn", 10), image_size=(32, 32)),
    # specialized
    "patch_camelyon": _row("patch_camelyon:2.*.*", 2, "specialized",
                           _tfds_validation(262144, 32768, 32768),
                           _classification("patch_camelyon", 2), image_size=(96, 96)),
    "eurosat": _row("eurosat/rgb:2.*.*", 10, "specialized", _carved_from_train(16200, 5400, 5400),
                    _classification("eurosat", 10), image_size=(64, 64),
                    prepare="downloads itself: `tfds build eurosat/rgb --data_dir=DATA_DIR`"),
    "resisc45": _row("resisc45:3.*.*", 45, "specialized", _carved_from_train(18900, 6300, 6300),
                     _classification("resisc45", 45), image_size=(256, 256),
                     prepare=("needs a manual download: get NWPU-RESISC45.rar (the OneDrive "
                              "link on the TFDS resisc45 catalog page) and extract it so that "
                              "DATA_DIR/downloads/manual/NWPU-RESISC45/<class>/*.jpg exist, "
                              "then `tfds build resisc45 --data_dir=DATA_DIR`")),
    "diabetic_retinopathy": _row(
        "diabetic_retinopathy_detection/btgraham-300:3.*.*", 5, "specialized",
        _tfds_validation(35126, 10906, 42670), _classification("diabetic_retinopathy", 5),
        prepare=("needs a manual download: the Kaggle 'diabetic-retinopathy-detection' "
                 "competition data, extracted into DATA_DIR/downloads/manual/ as train/*.jpeg, "
                 "test/*.jpeg, sample/, trainLabels.csv and sampleSubmission.csv, then "
                 "`tfds build diabetic_retinopathy_detection/btgraham-300 "
                 "--data_dir=DATA_DIR`")),
    # structured
    # CLEVR renders 320x480 images, but its TFDS feature does not fix the size.
    "clevr_count": _row("clevr:3.*.*", 8, "structured", _CLEVR, _clevr_count),
    "clevr_dist": _row("clevr:3.*.*", 6, "structured", _CLEVR, _clevr_dist),
    "dmlab": _row("dmlab:2.0.1", 6, "structured", _tfds_validation(65550, 22628, 22735),
                  _classification("dmlab", 6), image_size=(360, 480)),
    "kitti_dist": _row("kitti:3.2.0", 4, "structured", _tfds_validation(6347, 423, 711),
                       _kitti_dist, reference_tfds_name="kitti:3.1.0",
                       prepare=("downloads itself: `tfds build kitti:3.2.0 --data_dir=DATA_DIR` "
                                "(the reference's kitti:3.1.0 cannot be generated by current "
                                "TFDS; 3.2.0 holds the same images and labels)")),
    "dsprites_loc": _row("dsprites:2.*.*", 16, "structured",
                         _carved_from_train(589824, 73728, 73728),
                         _dsprites("label_x_position", 32, 16, "dsprites_loc"),
                         image_size=(64, 64)),
    "dsprites_ori": _row("dsprites:2.*.*", 16, "structured",
                         _carved_from_train(589824, 73728, 73728),
                         _dsprites("label_orientation", 40, 16, "dsprites_ori"),
                         image_size=(64, 64)),
    "smallnorb_azi": _row("smallnorb:2.*.*", 18, "structured", _SMALLNORB,
                          _smallnorb("label_azimuth", 18, "smallnorb_azi"), image_size=(96, 96)),
    "smallnorb_ele": _row("smallnorb:2.*.*", 9, "structured", _SMALLNORB,
                          _smallnorb("label_elevation", 9, "smallnorb_ele"), image_size=(96, 96)),
}

TASKS: dict[str, task_lib.Task] = {
    name: task_lib.Task(
        name=name, tfds_name=row.tfds_name, num_classes=row.num_classes, group=row.group,
        splits=row.splits, preprocess=row.preprocess, image_size=row.image_size,
        split_sizes=row.sizes, prepare_hint=row.prepare)
    for name, row in _ROWS.items()
}

# The reference's builder strings where this code must use another (module docstring).
REFERENCE_TFDS_NAMES = {name: row.reference_tfds_name or row.tfds_name
                        for name, row in _ROWS.items()}


def task_names(group: str | None = None) -> list[str]:
  """The 19 VTAB-1k task names in the reference's order, optionally of one group
  ('natural', 'specialized' or 'structured')."""
  return task_lib.names(TASKS, group)


def get_task(name: str) -> task_lib.Task:
  """Returns the VTAB-1k task `name` (one of `task_names()`)."""
  return task_lib.lookup(TASKS, name, "VTAB-1k")


def select_tasks(spec: str | None) -> list[str]:
  """Task names from 'all' (or empty), a group, or names joined by '+' ('cifar100+dtd')."""
  return task_lib.select(TASKS, spec, "VTAB-1k")
