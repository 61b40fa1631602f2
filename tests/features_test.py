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
