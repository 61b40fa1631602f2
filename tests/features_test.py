"""Tests for data-parallel feature extraction against the model run directly in TensorFlow."""

import jax
import numpy as np
import pytest
import tensorflow as tf

from model_search import features
from model_search.models import export
from model_search.models import hub
from model_search.models import nets

MIXER = dict(patch=8, hidden=16, tokens_mlp=8, channels_mlp=24, depth=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  net = nets.get_net("mixer", 5, **MIXER)
  params = net.init(jax.random.PRNGKey(3), np.zeros((1, 32, 32, 3), np.float32))["params"]
  path = export.export_savedmodel("mixer", MIXER, params,
                                  tmp_path_factory.mktemp("hub") / "mixer")
  return path, hub.load(path)


@pytest.mark.parametrize("num_images,batch_size", [(37, 8), (5, 16), (64, 16)])
def test_sharded_extraction_matches_tensorflow(exported, num_images, batch_size):
  path, model = exported
  assert len(jax.local_devices()) == 4  # tests/conftest.py: four fake CPU devices.
  images = np.random.RandomState(num_images).randint(0, 256, (num_images, 32, 32, 3), np.uint8)
  out = features.Extractor(model, batch_size=batch_size)(images)
  loaded = tf.saved_model.load(str(path))
  x = tf.constant(images.astype(np.float32) / 255.0)
  want_feats = loaded(x).numpy()
  want_probs = tf.nn.softmax(loaded.logits(x)).numpy()
  assert out["features"].shape == (num_images, model.feature_dim)
  np.testing.assert_allclose(out["features"], want_feats, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["source_probs"], want_probs, rtol=1e-5, atol=1e-6)


def test_batch_size_is_rounded_to_the_devices(exported):
  _, model = exported
  assert features.Extractor(model, batch_size=10).batch_size == 12


@pytest.mark.parametrize("num_images,batch_size", [(37, 8), (13, 12)])
def test_four_devices_equal_one_device(exported, num_images, batch_size):
  """The sharded extraction gives the same features as one device, padding included."""
  _, model = exported
  images = np.random.RandomState(7).randint(0, 256, (num_images, 32, 32, 3), np.uint8)
  four = features.Extractor(model, batch_size=batch_size)
  one = features.Extractor(model, batch_size=batch_size, devices=jax.local_devices()[:1])
  assert four.mesh.devices.size == 4 and one.mesh.devices.size == 1
  a, b = four(images), one(images)
  assert a["features"].shape == (num_images, model.feature_dim)
  np.testing.assert_allclose(a["features"], b["features"], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(a["source_probs"], b["source_probs"], rtol=1e-6, atol=1e-7)


def test_streamed_batches_equal_in_memory_extraction(exported, tmp_path):
  """from_batches over the TFDS pipeline (used for large or variable-size splits) equals the
  in-memory path, labels included, for a split not divisible by the batch."""
  from model_search.data import mini  # pylint: disable=g-import-not-at-top
  from model_search.data import pipeline  # pylint: disable=g-import-not-at-top
  _, model = exported
  task = mini.get_task("mini_shapes")
  data_dir = str(tmp_path)
  images, labels = pipeline.load_split(task, "val200", data_dir=data_dir)
  extractor = features.Extractor(model, batch_size=24)
  streamed = extractor.from_batches(pipeline.eval_batches(
      task, "val200", batch_size=extractor.batch_size, image_size=32, data_dir=data_dir))
  np.testing.assert_array_equal(streamed["labels"], labels)
  np.testing.assert_allclose(streamed["features"], extractor(images)["features"],
                             rtol=1e-6, atol=1e-6)
