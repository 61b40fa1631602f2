"""Feature-extraction throughput: model_search (tf2jax + jax.jit, sharded) vs TensorFlow.

  python benchmarks/features.py [--batch_size=32] [--num_batches=8] [--image_size=224]
  XLA_FLAGS=--xla_force_host_platform_device_count=$(nproc) python benchmarks/features.py

Builds a ResNet-50 (tf-keras, random weights, global average pooling: 23.6M parameters, 2048-d
features) as a TF2 SavedModel in a temporary directory, then times, on the same machine, the same
inputs and the same batch size:
  * TensorFlow: the restored SavedModel's `__call__` (training=False), inside a tf.function;
  * model_search: `hub.load` (tf2jax) and `features.Extractor` (jax.jit over all local devices).
Each side runs its warm-up (compilation / tracing) first; both timed loops take the same uint8
batches, scale them to [0, 1] and return the features as NumPy arrays (on the JAX side: the
transfer of each batch to the devices and of the features back, as the features stage does). Prints images/s
for both, the ratio, and on a GPU the fraction of the device's measured matrix-multiply peak
(ResNet-50 forward at 224: 4.1 GFLOPs per image, 2 * multiply-adds).
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np
import tensorflow as tf
import tf_keras

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # pylint: disable=g-import-not-at-top
from model_search import features
from model_search.models import hub

_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per batch, both sides.")
_BATCHES = flags.DEFINE_integer("num_batches", 8, "Timed batches per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; the best is reported.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Input side.")

# ResNet-50 forward pass at 224x224: about 4.1e9 multiply-adds... reported as 2 * 4.1e9 / 2:
# the usual 4.1 GFLOPs figure counts multiply-adds, so FLOPs = 2 * 4.1e9 * (S / 224)^2.
_RESNET50_MACS_224 = 4.1e9


def _build(path: str, size: int) -> int:
  model = tf_keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                         input_shape=(size, size, 3))
  tf.saved_model.save(model, path)
  return model.count_params()


def main(argv):
  del argv
  tf.config.set_visible_devices([], "GPU")  # TensorFlow on CPU unless JAX has no GPU either.
  size, bs, nb = _SIZE.value, _BATCH.value, _BATCHES.value
  rng = np.random.default_rng(0)
  batches = [rng.integers(0, 256, (bs, size, size, 3), np.uint8) for _ in range(nb)]
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "resnet50")
    num_params = _build(path, size)

    loaded = tf.saved_model.load(path)
    # The same work on both sides: uint8 images in, scaled to [0, 1], features out as NumPy.
    tf_fn = tf.function(lambda x: loaded(tf.cast(x, tf.float32) / 255.0, training=False))
    tf_fn(batches[0]).numpy()  # Trace and warm up.

    def run_tf():
      for x in batches:
        tf_fn(x).numpy()

    model = hub.load(path)
    extractor = features.Extractor(model, batch_size=bs)
    images = np.concatenate(batches)
    extractor(images[:bs])  # Compile.

    def run_jax():
      extractor(images)

    # Same outputs first: the comparison is only meaningful for the same function.
    want = tf_fn(batches[0]).numpy()
    got = extractor(batches[0])["features"]
    rel = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))

    t_tf = common.best_time(run_tf, _REPEATS.value)
    t_jax = common.best_time(run_jax, _REPEATS.value)
  n = bs * nb
  print(f"ResNet-50 ({num_params:,} params), {size}x{size}, batch {bs}, {n} images; "
        f"JAX devices: {jax.devices()}")
  print(f"max relative difference of the features: {rel:.2e}")
  print(f"TensorFlow SavedModel: {n / t_tf:8.1f} images/s")
  print(f"model_search (tf2jax): {n / t_jax:8.1f} images/s")
  print(f"ratio model_search / TensorFlow: {t_tf / t_jax:.2f}x")
  if jax.default_backend() == "gpu":
    peak = common.matmul_peak_flops()
    flops = 2 * _RESNET50_MACS_224 * (size / 224) ** 2 * n / t_jax
    print(f"measured matmul peak {peak / 1e12:.1f} TFLOP/s; extraction {flops / 1e12:.2f} "
          f"TFLOP/s = {flops / peak:.1%} of it")


if __name__ == "__main__":
  app.run(main)
