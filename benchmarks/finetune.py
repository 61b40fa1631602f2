"""Fine-tuning throughput: model_search's sharded training step vs TensorFlow's, same models.

  python benchmarks/finetune.py                          # CPU: mini-zoo models, batch 32/128
  python benchmarks/finetune.py --models=resnet50 --batch_size=512 --image_size=224   # GPU
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/finetune.py --devices=2

For each model, on the same machine and the same random images and labels, times training steps
of the VTAB protocol (new zero head, whole network, SGD momentum 0.9, batch norm in training
mode where the model has it):
  * model_search: `finetune.Finetuner`, the step the fine-tuning grid runs (jax.jit over a mesh
    of --devices devices, the batch split over them; --accumulation_steps micro-batches);
  * TensorFlow: the same SavedModel restored with tf.saved_model.load, every backbone variable
    trained, plus a Dense head: a tf.function step with tf.GradientTape and Keras SGD (TF side:
    its own default device placement).
Both warm up (compile / trace) first and report the best of --repeats timed loops of --steps
steps. Prints images/s for both and the ratio; the model FLOPs per step from XLA's cost analysis
(all devices) and the achieved FLOP/s as a fraction of the measured float32 matmul peak (of one
device times the devices on accelerators: the model FLOP utilisation; on CPU, of the CPU's matmul
rate, which fake CPU devices share).

Models: 'mini:NAME' for a mini-zoo model (built into --cache_dir by the zoo stage if missing;
the default picks a CNN, the ResNet and the Mixer generalists), 'resnet50' for a tf-keras
ResNet-50 (random weights, 23.6M parameters) saved as a TF2 SavedModel.
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

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import common  # pylint: disable=g-import-not-at-top
from model_search import finetune
from model_search import sharding
from model_search.models import hub

_MODELS = flags.DEFINE_list("models", ["mini:cnn_small", "mini:resnet_broad", "mini:mixer_broad"],
                            "Models: mini:NAME or resnet50.")
_BATCHES = flags.DEFINE_list("batch_size", ["32", "128"], "Batch sizes to time.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per repeat.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; the best is reported.")
_DEVICES = flags.DEFINE_integer("devices", 0, "Devices in the mesh (0: all local devices).")
_ACCUM = flags.DEFINE_integer("accumulation_steps", 1, "Micro-batches per step (ours).")
_SIZE = flags.DEFINE_integer("image_size", 224, "Input side for resnet50.")
_CLASSES = flags.DEFINE_integer("classes", 10, "Head classes.")
_CACHE = flags.DEFINE_string("cache_dir", "", "model_search cache (mini zoo); '' = default.")
_SKIP_TF = flags.DEFINE_bool("skip_tf", False, "Time only model_search.")


def _handle(name: str, tmp: str) -> tuple[str, int]:
  """(SavedModel directory, input size) of a model name."""
  if name == "resnet50":
    path = os.path.join(tmp, "resnet50")
    model = tf_keras.applications.ResNet50(weights=None, include_top=False, pooling="avg",
                                           input_shape=(_SIZE.value, _SIZE.value, 3))
    tf.saved_model.save(model, path)
    return path, _SIZE.value
  if not name.startswith("mini:"):
    raise ValueError(f"Unknown model {name!r}; use mini:NAME or resnet50")
  from etils import epath  # pylint: disable=g-import-not-at-top
  from model_search import study as study_lib  # pylint: disable=g-import-not-at-top
  from model_search.models import mini_zoo  # pylint: disable=g-import-not-at-top
  cache = epath.Path(_CACHE.value).expanduser() if _CACHE.value else study_lib.default_cache_dir()
  config = mini_zoo.get_zoo_config()
  entries = {e.name: e for e in mini_zoo.build(config, cache / "zoo", str(cache / "tfds"))}
  entry = entries[name[len("mini:"):]]
  return entry.handle, entry.input_size


def _ours(handle: str, images, labels, indices, warm):
  """(seconds per timed loop, FLOPs per step, uses batch norm) of model_search's step."""
  model = hub.load(handle)
  mesh = sharding.make_mesh(num_devices=_DEVICES.value or None)
  steps = len(indices)
  tuner = finetune.Finetuner(model, head_classes=_CLASSES.value, momentum=0.9, steps=steps,
                             decay_at=(), warmup_steps=0, eval_batch_size=64,
                             accumulation_steps=_ACCUM.value, mesh=mesh)
  tuner.train(0.01, images, labels, _CLASSES.value, warm)  # Compiles.
  secs = common.best_time(lambda: tuner.train(0.01, images, labels, _CLASSES.value, indices),
               _REPEATS.value)
  state = tuner.init_state()
  rep = sharding.replicated(mesh)
  args = (state, jax.device_put(np.float32(0.01), rep), jax.device_put(images, rep),
          jax.device_put(labels.astype(np.int32), rep),
          jax.device_put(tuner.class_mask(_CLASSES.value), rep), jax.device_put(indices[0], rep),
          jax.random.key(0))
  cost = tuner._step.lower(*args).compile().cost_analysis()  # pylint: disable=protected-access
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return secs, float(cost.get("flops", float("nan"))), tuner.uses_train_mode


def _tensorflow(handle: str, images, labels, indices, warm) -> float:
  obj = tf.saved_model.load(handle)
  # Keras SavedModels list their trainable variables; the mini zoo's tf.Module mirrors name
  # theirs in `variables_by_name` (all trainable: the mini zoo has no normalisation layers).
  backbone_vars = list(getattr(obj, "trainable_variables", None) or
                       getattr(obj, "variables_by_name", {}).values())
  if not backbone_vars:
    raise ValueError(f"{handle}: no trainable variables found for the TensorFlow side")
  try:  # Keras models take training=True (batch statistics); tf.Module mirrors take images.
    obj(tf.zeros((1,) + images.shape[1:]), training=True)
    call = lambda x: obj(x, training=True)  # pylint: disable=unnecessary-lambda-assignment
  except (TypeError, ValueError):
    call = obj
  head = tf_keras.layers.Dense(_CLASSES.value, kernel_initializer="zeros")
  opt = tf_keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
  x_all, y_all = tf.constant(images), tf.constant(labels.astype(np.int32))

  @tf.function
  def step(idx):
    x, y = tf.gather(x_all, idx), tf.gather(y_all, idx)
    with tf.GradientTape() as tape:
      feats = call(x)
      feats = tf.reshape(feats, [tf.shape(feats)[0], -1])
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, head(feats)))
    variables = backbone_vars + head.trainable_variables
    grads = tape.gradient(loss, variables)
    opt.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
    return loss

  def loop(idx):
    for t in range(len(idx)):
      loss = step(tf.constant(idx[t]))
    return float(loss)

  loop(warm)
  return common.best_time(lambda: loop(indices), _REPEATS.value)


def main(argv):
  del argv
  print(f"JAX devices: {jax.devices()}; TF devices: "
        f"{[d.name for d in tf.config.list_logical_devices()]}")
  peak = common.matmul_peak_flops()
  print(f"measured float32 matmul peak of the JAX device: {peak / 1e9:.0f} GFLOP/s")
  print("| model | batch | devices | ours (img/s) | TensorFlow (img/s) | ratio | GFLOP per step "
        "| achieved GFLOP/s | of matmul peak | batch norm |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for name in _MODELS.value:
      handle, size = _handle(name, tmp)
      for batch in map(int, _BATCHES.value):
        rng = np.random.RandomState(0)
        n = 2 * batch
        images = rng.rand(n, size, size, 3).astype(np.float32)
        labels = rng.randint(0, _CLASSES.value, n)
        indices = finetune.batch_indices(n, steps=_STEPS.value, batch_size=batch, seed=0)
        warm = indices[:2]
        secs, flops, bn = _ours(handle, images, labels, indices, warm)
        ours = _STEPS.value * batch / secs
        theirs = float("nan")
        if not _SKIP_TF.value:
          theirs = _STEPS.value * batch / _tensorflow(handle, images, labels, indices, warm)
        devices = _DEVICES.value or len(jax.local_devices())
        # XLA's cost analysis counts one device's share of the partitioned program.
        flops *= devices
        achieved = flops * _STEPS.value / secs
        # Fake CPU devices share the one CPU whose peak was measured; accelerators add up.
        peak_total = peak * (devices if jax.default_backend() in ("gpu", "tpu") else 1)
        print(f"| {name} | {batch} | {devices} | {ours:.1f} | {theirs:.1f} | "
              f"{ours / theirs:.2f}x | {flops / 1e9:.2f} | {achieved / 1e9:.1f} | "
              f"{achieved / peak_total:.1%} | {'train mode' if bn else 'none'} |", flush=True)


if __name__ == "__main__":
  app.run(main)
