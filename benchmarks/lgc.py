"""LGC on a ResNet-50-sized block: cost in forward+backward passes, and accuracy vs exact.

  python benchmarks/lgc.py [--num_examples=1000] [--num_classes=100] [--image_size=224]

Builds a ResNet-50 (tf-keras, random weights) as a TF2 SavedModel, loads it with `hub.load`
(tf2jax) and scores random images with random labels (the cost does not depend on them):

  * cost: wall time of `lgc.score`'s default path on the last block before pooling
    (conv5_block3: 4.46M trainable parameters, K = 8 directions) and of the matrix-free
    path, each divided by the wall time of one forward+backward pass over the same images
    (a batched jax.vjp of a scalar output w.r.t. the same parameters, same chunk size);
  * accuracy: on a block small enough for the exact per-example Gram matrix
    (`--exact_select`, default conv5_block3_3_conv/kernel: 1,048,576 parameters, so the
    exact rows are N x 8.4M floats; N = `--exact_num_examples`), the sketched and
    matrix-free values against the exact one.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tf_keras

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from model_search.models import hub  # pylint: disable=g-import-not-at-top
from model_search.scores import gradient_kernel
from model_search.scores import lgc

_N = flags.DEFINE_integer("num_examples", 1000, "Images scored (VTAB-1k train: 800).")
_C = flags.DEFINE_integer("num_classes", 100, "Classes of the random labels.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Input side.")
_CHUNK = flags.DEFINE_integer("chunk_size", 16, "Examples per chunk, every path.")
_SELECT = flags.DEFINE_string("select", r"conv5_block3_\d_(conv|bn)/(kernel|bias|gamma|beta)",
                              "The ResNet-50-sized block (last before pooling).")
_EXACT_SELECT = flags.DEFINE_string("exact_select", r"conv5_block3_3_conv/kernel",
                                    "A block small enough for the exact path.")
_EXACT_N = flags.DEFINE_integer("exact_num_examples", 128,
                                "Images of the accuracy part (the exact rows are N x K P).")
_PROBES = flags.DEFINE_integer("num_probes", 16, "Matrix-free Hutch++ products.")
_FREE_N = flags.DEFINE_integer("matrix_free_num_examples", 128,
                               "Images for the (slower) matrix-free path's cost.")
_SKIP_COST = flags.DEFINE_bool("skip_cost", False, "Only the accuracy part.")
_SKIP_ACCURACY = flags.DEFINE_bool("skip_accuracy", False, "Only the cost part.")


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def _pass_time(model, images, select, chunk):
  """Seconds of one forward+backward pass over `images` w.r.t. the selected parameters."""
  chosen = set(lgc.select_params(model.params, select))
  flat, treedef = jax.tree_util.tree_flatten_with_path(model.params)
  paths = ["/".join(gradient_kernel.key_name(k) for k in p) for p, _ in flat]  # pylint: disable=protected-access
  mask = [p in chosen for p in paths]
  sel = [leaf for (_, leaf), m in zip(flat, mask) if m]
  rest = [leaf for (_, leaf), m in zip(flat, mask) if not m]

  def loss(sel_leaves, x):
    it_s, it_r = iter(sel_leaves), iter(rest)
    params = jax.tree_util.tree_unflatten(treedef, [next(it_s) if m else next(it_r)
                                                    for m in mask])
    return jnp.sum(model.apply(params, x))

  grad = jax.jit(jax.grad(loss))
  jax.block_until_ready(grad(sel, images[:chunk]))  # Compile.

  def run():
    for i in range(0, len(images) - chunk + 1, chunk):
      jax.block_until_ready(grad(sel, images[i:i + chunk]))

  return _timed(run)[1] * len(images) / (len(images) // chunk * chunk)


def main(argv):
  del argv
  tf.config.set_visible_devices([], "GPU")
  n, size, chunk = _N.value, _SIZE.value, _CHUNK.value
  rng = np.random.default_rng(0)
  labels = np.arange(n) % _C.value
  rng.shuffle(labels)
  # Images with class structure (a smooth random pattern per class plus noise), so that the
  # gradient kernel does correlate with the labels and relative errors are meaningful.
  patterns = jax.image.resize(rng.random((_C.value, 7, 7, 3), np.float32),
                              (_C.value, size, size, 3), "linear")
  images = np.clip(0.2 + 0.6 * np.asarray(patterns)[labels] +
                   0.15 * rng.standard_normal((n, size, size, 3), np.float32),
                   0.0, 1.0).astype(np.float32)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "resnet50")
    tf.saved_model.save(tf_keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3)), path)
    model = hub.load(path)
  print(f"ResNet-50, {size}x{size}, N = {n}, C = {_C.value}, chunk {chunk}, "
        f"JAX devices: {jax.devices()}")
  flat = lgc.flatten_params(model.params)
  if not _SKIP_COST.value:
    chosen = lgc.select_params(model.params, _SELECT.value)
    p = sum(int(np.size(flat[k])) for k in chosen)
    t_pass = _pass_time(model, images, _SELECT.value, chunk)
    print(f"block {_SELECT.value!r}: P = {p:,} parameters in {len(chosen)} arrays")
    print(f"one forward+backward pass over the data: {t_pass:.1f} s")
    from model_search.scores import common  # pylint: disable=g-import-not-at-top
    feats = np.zeros((n, 2048), np.float32)
    inputs = common.ScoreInputs(feats, labels, feats[:2], labels[:2] * 0 + np.arange(2),
                                num_classes=_C.value, apply_fn=model.apply,
                                params=model.params, train_images=images)
    result, t_default = _timed(lambda: lgc.score(inputs, select=_SELECT.value,
                                                 chunk_size=chunk))
    # The pass again, after: the smaller of the two is the reference (less noise).
    t_pass = min(t_pass, _pass_time(model, images, _SELECT.value, chunk))
    print(f"one forward+backward pass over the data, best of two: {t_pass:.1f} s")
    print(f"default path (score, projection_dim=auto -> {int(result['projection_dim'])}): "
          f"{t_default:.1f} s = {t_default / t_pass:.1f} passes; LGC {result['score']:.5f}")
    m = _FREE_N.value
    t_pass_m = t_pass * m / n
    value, t_free = _timed(lambda: lgc.lgc(model.apply, model.params, images[:m],
                                           labels[:m], select=_SELECT.value,
                                           method="matrix_free", num_probes=_PROBES.value,
                                           chunk_size=chunk))
    print(f"matrix-free ({_PROBES.value} probes, first {m} images): {t_free:.1f} s = "
          f"{t_free / t_pass_m:.1f} passes over those images; LGC {value:.5f}")
  if not _SKIP_ACCURACY.value:
    images, labels = images[:_EXACT_N.value], labels[:_EXACT_N.value]
    chosen = lgc.select_params(model.params, _EXACT_SELECT.value)
    p = sum(int(np.size(flat[k])) for k in chosen)
    print(f"exactness block {_EXACT_SELECT.value!r}: P = {p:,}, N = {len(images)}")
    for seed in range(2):  # The seed draws the output directions too: exact per seed.
      exact, t_exact = _timed(lambda: lgc.lgc(  # pylint: disable=cell-var-from-loop
          model.apply, model.params, images, labels, select=_EXACT_SELECT.value, seed=seed,
          chunk_size=chunk))
      print(f"  seed {seed}: exact LGC {exact:.6f} ({t_exact:.1f} s)")
      sk = lgc.lgc(model.apply, model.params, images, labels, select=_EXACT_SELECT.value,
                   projection_dim=lgc.AUTO_PROJECTION_DIM, seed=seed, chunk_size=chunk)
      mf = lgc.lgc(model.apply, model.params, images, labels, select=_EXACT_SELECT.value,
                   method="matrix_free", num_probes=_PROBES.value, seed=seed,
                   chunk_size=chunk)
      print(f"  seed {seed}: sketch d={lgc.AUTO_PROJECTION_DIM} {sk:.6f} "
            f"({(sk - exact) / abs(exact):+.2%}), matrix-free {mf:.6f} "
            f"({(mf - exact) / abs(exact):+.2%})")


if __name__ == "__main__":
  app.run(main)
