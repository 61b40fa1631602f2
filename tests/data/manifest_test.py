"""Tests for split manifests: real slicing on the mini suite's builders, label functions on
crafted VTAB examples through mock_data, and the command line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from model_search.data import manifest
from model_search.data import mini
from model_search.data import pipeline
from model_search.data import vtab


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def test_mini_manifests_name_the_exact_examples(data_dir):
  task = mini.get_task("mini_count")
  m = {s: manifest.split_manifest(task, s, data_dir=data_dir)
       for s in ("train800", "val200", "train800val200", "test")}
  assert [m[s]["num_examples"] for s in m] == [800, 200, 1000, 1000]
  for s, entry in m.items():
    assert entry["split"] == task.split(s) and entry["tfds_name"] == task.tfds_name
    assert entry["tfds_version"] == mini.VERSION
    assert len(set(entry["tfds_ids"])) == entry["num_examples"] == len(entry["labels"])
    _, labels = pipeline.load_split(task, s, data_dir=data_dir)
    assert entry["labels"] == labels.tolist()  # Same order as the pipeline reads.
  # train800val200 is train800 then val200, and the ids say which TFDS split each came from.
  both = m["train800val200"]["tfds_ids"]
  assert both == m["train800"]["tfds_ids"] + m["val200"]["tfds_ids"]
  assert all("-train." in i for i in both[:800]) and all("-validation." in i for i in both[800:])
  assert not set(m["test"]["tfds_ids"]) & set(both)
  # The first 800 of the full TFDS train split, by record index.
  full = tfds.builder(task.tfds_name, data_dir=data_dir).as_dataset(
      split="train", shuffle_files=False,
      read_config=tfds.ReadConfig(add_tfds_id=True, interleave_cycle_length=1))
  first = [x["tfds_id"].decode() for x in full.take(800).as_numpy_iterator()]
  assert first == m["train800"]["tfds_ids"]


def test_vtab_manifest_labels_without_decoding_images(tmp_path):
  """KITTI labels come from the label function even though images are not decoded."""
  examples = [
      {"image": np.zeros((3, 5, 3), np.uint8),
       "objects": {"type": np.array(t, np.int64),
                   "location": np.array([[0.0, 0.0, z] for z in zs], np.float32).reshape(-1, 3)}}
      for t, zs in [([0], [5.0]), ([3], [5.0]), ([1, 2], [30.0, 12.0])]]

  def as_dataset_fn(builder, split, decoders=None, read_config=None, shuffle_files=False):
    assert isinstance(decoders["image"], tfds.decode.SkipDecoding)
    ds = None
    for i, ex in enumerate(examples):
      one = tf.data.Dataset.from_tensors(tf.nest.map_structure(
          tf.constant, {**ex, "tfds_id": f"kitti-{split}__{i}"}))
      ds = one if ds is None else ds.concatenate(one)
    return ds

  with tfds.testing.mock_data(as_dataset_fn=as_dataset_fn):
    paths = manifest.write([vtab.get_task("kitti_dist")], str(tmp_path), splits=["val200"],
                           data_dir=str(tmp_path / "tfds"))
  entry = json.loads(open(paths[0]).read())
  assert paths[0].endswith("kitti_dist/val200.json")
  assert entry["labels"] == [0, 3, 1]
  assert entry["split"] == "validation[:200]" and entry["tfds_name"] == "kitti:3.2.0"
  assert entry["tfds_ids"] == ["kitti-validation[:200]__0", "kitti-validation[:200]__1",
                               "kitti-validation[:200]__2"]


def test_select_and_errors():
  assert [t.name for t in manifest.select("vtab", "specialized")] == vtab.task_names(
      "specialized")
  assert [t.name for t in manifest.select("mini", "mini_digits+mini_count")] == [
      "mini_digits", "mini_count"]
  with pytest.raises(ValueError, match="Unknown suite 'vtab2'; known suites: mini, vtab"):
    manifest.select("vtab2", "all")
  with pytest.raises(ValueError, match="Unknown split 'val'"):
    manifest.write([mini.get_task("mini_digits")], "/nonexistent", splits=["val"])


def test_command_line(data_dir, tmp_path):
  out = subprocess.run(
      [sys.executable, "-m", "model_search.data.manifest", "--suite=mini",
       "--tasks=mini_digits", "--splits=val200", f"--data_dir={data_dir}", f"--out={tmp_path}"],
      capture_output=True, text=True, check=True, timeout=300)
  path = tmp_path / "mini_digits" / "val200.json"
  assert str(path) in out.stdout
  assert json.loads(path.read_text())["num_examples"] == 200
