"""Tests for the Flax -> TensorFlow mirror -> SavedModel export."""

import json
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from model_search.models import export
from model_search.models import nets

CONFIGS = {
    "cnn": dict(widths=(8, 16), feature_dim=12),
    "cnn_stride": dict(widths=(8, 16), downsample="stride", stem_stride=1),
    "resnet": dict(widths=(8, 16), blocks=(2, 1)),
    "mixer": dict(patch=4, hidden=16, tokens_mlp=8, channels_mlp=24, depth=2),
}


def random_params(arch, kwargs, *, num_classes=5, size=32, seed=0):
  """Random Flax params far from their init (non-zero biases, scales != 1).

  Built from `jax.eval_shape(net.init)` with NumPy: compiling `init` costs
  seconds on CPU, tracing it does not.
  """
  net = nets.get_net(arch, num_classes, **kwargs)
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, size, size, 3), np.float32))
  rng = np.random.default_rng(seed)

  def sample(path, leaf):
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      return noise / np.sqrt(np.prod(leaf.shape[:-1]))
    return noise * 0.1 + (1.0 if name == "scale" else 0.0)

  return net, jax.tree_util.tree_map_with_path(sample, shapes)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mirror_matches_flax(name):
  arch = name.split("_")[0]
  kwargs = CONFIGS[name]
  net, params = random_params(arch, kwargs)
  x = np.random.default_rng(1).random((6, 32, 32, 3)).astype(np.float32)
  features, logits = jax.jit(net.apply)(params, x)
  mirror = export.tf_mirror(arch, kwargs, params)
  np.testing.assert_array_less(np.abs(mirror(x).numpy() - features), 1e-5)
  np.testing.assert_array_less(np.abs(mirror.logits(x).numpy() - logits),
                               1e-5)
  # Variables are named by Flax path, one per parameter.
  assert sorted(v.name for v in mirror.variables) == sorted(
      f"{k}:0" for k in mirror.variables_by_name)


def test_mirror_other_input_size():
  kwargs = dict(widths=(4, 8), blocks=(1, 1))
  net, params = random_params("resnet", kwargs, size=24)
  x = np.random.default_rng(2).random((3, 24, 24, 3)).astype(np.float32)
  mirror = export.tf_mirror("resnet", kwargs, params, input_size=24)
  np.testing.assert_array_less(
      np.abs(mirror.logits(x).numpy() - jax.jit(net.apply)(params, x)[1]), 1e-5)


def test_mirror_rejects_mismatched_params():
  _, params = random_params("cnn", dict(widths=(4, 8)))
  with pytest.raises(ValueError, match="wrong shapes"):
    export.tf_mirror("cnn", dict(widths=(4, 16)), params)
  with pytest.raises(ValueError, match="missing"):
    export.tf_mirror("cnn", dict(widths=(4, 8), feature_dim=3), params)
  with pytest.raises(ValueError, match="valid names: cnn, mixer, resnet"):
    export.tf_mirror("vgg", {}, params)


def test_export_metadata_and_signatures(tmp_path):
  kwargs = CONFIGS["mixer"]
  net, params = random_params("mixer", kwargs)
  path = export.export_savedmodel(
      "mixer", kwargs, params, tmp_path / "m",
      metadata={"name": "mixer_test", "upstream_dataset": "mini", "tags": [1]})
  with open(os.path.join(path, "assets", export.METADATA_FILE)) as f:
    meta = json.load(f)
  assert meta["name"] == "mixer_test"
  assert meta["upstream_dataset"] == "mini" and meta["tags"] == [1]
  assert meta["architecture"] == "mixer" and meta["input_size"] == 32
  assert meta["feature_dim"] == 16 and meta["num_classes"] == 5
  assert meta["num_params"] == nets.count_params(params)
  assert meta["arch_kwargs"]["hidden"] == 16

  loaded = tf.saved_model.load(path)
  x = np.random.default_rng(3).random((2, 32, 32, 3)).astype(np.float32)
  features, logits = jax.jit(net.apply)(params, x)
  np.testing.assert_allclose(loaded(x).numpy(), features, atol=1e-5)
  np.testing.assert_allclose(loaded.logits(x).numpy(), logits, atol=1e-5)
  serve = loaded.signatures["serving_default"](images=tf.constant(x))
  assert set(serve) == {"default", "pre_logits"}
  np.testing.assert_allclose(serve["pre_logits"].numpy(), features, atol=1e-5)
  head = loaded.signatures["logits"](images=tf.constant(x))
  np.testing.assert_allclose(head["logits"].numpy(), logits, atol=1e-5)


def test_export_refuses_overwrite(tmp_path):
  kwargs = dict(widths=(4, 8))
  _, params = random_params("cnn", kwargs)
  path = export.export_savedmodel("cnn", kwargs, params, tmp_path / "m",
                                  metadata={"version": 1})
  with pytest.raises(FileExistsError, match="overwrite=True"):
    export.export_savedmodel("cnn", kwargs, params, path)
  export.export_savedmodel("cnn", kwargs, params, path,
                           metadata={"version": 2}, overwrite=True)
  with open(os.path.join(path, "assets", export.METADATA_FILE)) as f:
    assert json.load(f)["version"] == 2
  assert sorted(os.listdir(tmp_path)) == ["m"]  # No temp dirs left.
  (tmp_path / "other").mkdir()
  (tmp_path / "other" / "notes.txt").write_text("keep")
  with pytest.raises(FileExistsError, match="not an empty directory"):
    export.export_savedmodel("cnn", kwargs, params, tmp_path / "other")


def test_export_is_atomic(tmp_path, monkeypatch):
  kwargs = dict(widths=(4, 8))
  _, params = random_params("cnn", kwargs)

  def failing_save(obj, path, **kwargs):
    del obj, kwargs
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
      f.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(tf.saved_model, "save", failing_save)
  with pytest.raises(OSError, match="disk full"):
    export.export_savedmodel("cnn", kwargs, params, tmp_path / "m")
  assert os.listdir(tmp_path) == []


def test_export_rejects_unserialisable_metadata(tmp_path):
  kwargs = dict(widths=(4, 8))
  _, params = random_params("cnn", kwargs)
  with pytest.raises(TypeError):
    export.export_savedmodel("cnn", kwargs, params, tmp_path / "m",
                             metadata={"bad": object()})
  assert os.listdir(tmp_path) == []
