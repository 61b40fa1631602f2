"""The mini zoo: Flax models pre-trained on the mini suite's upstream tasks, exported in hub format.

The zoo mirrors the paper's pools: generalists of three architecture families (CNN, ResNet,
Mixer; different widths and feature dimensions) trained on one broad mixed upstream task
(`up_broad`, whose held-out accuracy plays the role of ImageNet accuracy), and experts of one
architecture (the ResNet, like the paper's ResNet-50 experts) each trained on a narrower upstream
task. Models are pre-trained deterministically from a seed, exported as TF2 SavedModels through
a TensorFlow mirror of each architecture (models/export.py), and from then on loaded like any hub
model (models/hub.py). Each model lives in `CACHE/zoo/NAME-FINGERPRINT/`, where the fingerprint
covers its architecture, upstream task and pre-training recipe: a built model is reused by every
config with the same recipe, and a changed recipe builds a new one.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Mapping

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow_datasets as tfds
import tqdm

from model_search import finetune
from model_search import workdir as wd
from model_search.data import mini
from model_search.models import export
from model_search.models import nets
from model_search.models.zoo import ModelEntry

_VERSION = "mini-zoo-v1"


@dataclasses.dataclass(frozen=True)
class MiniModel:
  """The recipe of one mini-zoo model."""
  name: str
  arch: str
  arch_kwargs: Mapping[str, Any]
  upstream: str
  expert: bool
  # Use only the first `train_examples` upstream training images (None: all), to vary the
  # upstream data size among generalists as ImageNet-1k vs -21k does in the paper.
  train_examples: int | None = None


# Sizes are chosen so that the whole zoo pre-trains in a few minutes on 2 CPU cores, and so
# that the paper's two size pools differ: the Mixer has fewer parameters than the experts but
# wider features (in `resnet50`, not in `dim2048`), cnn_deep the reverse.
_EXPERT_ARCH = {"widths": (16, 32, 64), "blocks": (1, 1, 1)}

SPECS: dict[str, MiniModel] = {s.name: s for s in [
    # Generalists: three families, several sizes, one broad upstream task.
    MiniModel("cnn_small", "cnn", {"widths": (16, 32, 64), "downsample": "stride"},
              "up_broad", False, train_examples=5000),
    MiniModel("cnn_wide", "cnn", {"widths": (24, 48, 96), "downsample": "stride",
                                  "feature_dim": 192}, "up_broad", False),
    MiniModel("cnn_deep", "cnn", {"widths": (32, 64, 64), "downsample": "stride"},
              "up_broad", False),
    MiniModel("resnet_broad", "resnet", _EXPERT_ARCH, "up_broad", False),
    MiniModel("mixer_broad", "mixer", {"patch": 8, "hidden": 96, "tokens_mlp": 32,
                                       "channels_mlp": 96, "depth": 2}, "up_broad", False),
    # Experts: one architecture, one narrow upstream task each.
    MiniModel("expert_digits", "resnet", _EXPERT_ARCH, "up_digits", True),
    MiniModel("expert_shapes", "resnet", _EXPERT_ARCH, "up_shapes", True),
    MiniModel("expert_textures", "resnet", _EXPERT_ARCH, "up_textures", True),
    MiniModel("expert_blobs", "resnet", _EXPERT_ARCH, "up_blobs", True),
    MiniModel("expert_count", "resnet", _EXPERT_ARCH, "up_count", True),
    MiniModel("expert_sprites", "resnet", _EXPERT_ARCH, "up_sprites", True),
]}

SMOKE_MODELS = ("mixer_broad", "expert_digits", "expert_count")


def get_zoo_config(smoke: bool = False) -> ml_collections.ConfigDict:
  """The pre-training recipe; every field is part of each model's cache key."""
  c = ml_collections.ConfigDict()
  c.models = SMOKE_MODELS if smoke else tuple(SPECS)
  c.seed = 0
  c.batch_size = 64
  # AdamW with linear warm-up then cosine decay; no augmentation.
  c.learning_rate = 2e-3
  c.weight_decay = 1e-4
  c.warmup_steps = 10 if smoke else 50
  c.steps_generalist = 60 if smoke else 1000
  c.steps_expert = 40 if smoke else 500
  c.eval_batch_size = 500
  return c


def validate(zoo_config) -> None:
  unknown = [m for m in zoo_config.models if m not in SPECS]
  if unknown:
    raise ValueError(f"Unknown model(s) {unknown}; models of the mini zoo: {', '.join(SPECS)}")
  if not zoo_config.models:
    raise ValueError("config.zoo.models is empty; name at least one model.")
  shortest = min(zoo_config.steps_expert, zoo_config.steps_generalist)
  if not 0 <= zoo_config.warmup_steps < shortest:
    raise ValueError(f"config.zoo.warmup_steps={zoo_config.warmup_steps} must be in "
                     f"0..{shortest - 1} (below the pre-training steps).")


def _recipe(spec: MiniModel, zoo_config) -> dict[str, Any]:
  c = zoo_config
  return {"version": _VERSION, "spec": dataclasses.asdict(spec), "seed": c.seed,
          "batch_size": c.batch_size, "learning_rate": c.learning_rate,
          "weight_decay": c.weight_decay, "warmup_steps": c.warmup_steps,
          "steps": c.steps_expert if spec.expert else c.steps_generalist}


def model_dir(zoo_dir, name: str, zoo_config) -> epath.Path:
  spec = SPECS[name]
  return epath.Path(zoo_dir) / f"{name}-{wd.fingerprint(_recipe(spec, zoo_config))}"


def load_upstream(name: str, split: str, data_dir: str | None, limit: int | None = None):
  """(uint8 images, int32 labels, num_classes) of a mini upstream task's split (first `limit`)."""
  up = mini.get_upstream(name)
  split_str = getattr(up, f"{split}_split")
  if limit is not None:
    split_str = f"{split_str}[:{limit}]"
  data = tfds.as_numpy(tfds.load(up.tfds_name, split=split_str, data_dir=data_dir,
                                 batch_size=-1, shuffle_files=False))
  return data["image"], data["label"].astype(np.int32), up.num_classes


def pretrain(spec: MiniModel, zoo_config, data_dir: str | None):
  """Pre-trains one model on its upstream task.

  Returns:
    (params, held-out accuracy on the upstream test split, number of training images,
    feature dimension).
  """
  c = zoo_config
  x_train, y_train, num_classes = load_upstream(spec.upstream, "train", data_dir,
                                                 spec.train_examples)
  x_test, y_test, _ = load_upstream(spec.upstream, "test", data_dir)
  net = nets.get_net(spec.arch, num_classes, **spec.arch_kwargs)
  seed = c.seed + int(wd.fingerprint(spec.name), 16) % 10_000
  params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1,) + x_train.shape[1:]))["params"]
  steps = c.steps_expert if spec.expert else c.steps_generalist
  schedule = optax.warmup_cosine_decay_schedule(0.0, c.learning_rate, c.warmup_steps, steps)
  tx = optax.adamw(schedule, weight_decay=c.weight_decay)
  opt_state = tx.init(params)

  def loss_fn(p, x, y):
    _, logits = net.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  # One jitted step in a Python loop: XLA:CPU runs convolutions inside lax.scan bodies far
  # slower than as top-level ops.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(p, s, x_all, y_all, idx):
    x = x_all[idx].astype(jnp.float32) / 255.0
    loss, g = jax.value_and_grad(loss_fn)(p, x, y_all[idx])
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, loss

  order = finetune.batch_indices(len(x_train), steps=steps, batch_size=c.batch_size, seed=seed)
  x_dev, y_dev = jnp.asarray(x_train), jnp.asarray(y_train)
  losses = []
  for i in tqdm.trange(steps, desc=f"pretrain {spec.name}", unit="step", leave=False):
    params, opt_state, loss = train_step(params, opt_state, x_dev, y_dev, jnp.asarray(order[i]))
    losses.append(loss)
  losses = np.asarray(jnp.stack(losses))
  if not np.isfinite(float(losses[-1])):
    raise FloatingPointError(f"pre-training {spec.name} diverged (loss {float(losses[-1])})")

  predict = jax.jit(lambda p, x: jnp.argmax(net.apply({"params": p}, x / 255.0)[1], -1))
  correct = 0
  for start in range(0, len(x_test), c.eval_batch_size):
    xb = jnp.asarray(x_test[start:start + c.eval_batch_size], jnp.float32)
    correct += int((np.asarray(predict(params, xb)) == y_test[start:start + len(xb)]).sum())
  dim = net.apply({"params": params}, jnp.zeros((1,) + x_train.shape[1:]))[0].shape[-1]
  return params, correct / len(x_test), len(x_train), int(dim)


def build(zoo_config, zoo_dir, data_dir: str | None) -> list[ModelEntry]:
  """Pre-trains and exports every configured model that is not in the cache yet."""
  validate(zoo_config)
  built = []
  for name in zoo_config.models:
    entry = _read_entry(zoo_dir, name, zoo_config)
    if entry is None:
      spec, path = SPECS[name], model_dir(zoo_dir, name, zoo_config)
      start = time.perf_counter()
      params, accuracy, num_train, dim = pretrain(spec, zoo_config, data_dir)
      up = mini.get_upstream(spec.upstream)
      saved = path / "savedmodel"
      if saved.exists():  # Left by a run killed between export and metadata: redo it.
        saved.rmtree()
      export.export_savedmodel(spec.arch, dict(spec.arch_kwargs), params, str(saved),
                               input_size=32, metadata={"name": name})
      entry = ModelEntry(
          name=name, handle=str(saved),
          imagenet_accuracy=None if spec.expert else accuracy,
          upstream_dataset=spec.upstream, upstream_size=num_train, upstream_accuracy=accuracy,
          num_params=nets.count_params(params), feature_dim=dim, input_size=32, value_range=(0.0, 1.0), architecture=spec.arch,
          expert=spec.expert, num_source_classes=up.num_classes, collection="mini")
      wd.write_json(path / "metadata.json", {"recipe": _recipe(spec, zoo_config),
                                             "entry": entry.to_json(),
                                             "secs": time.perf_counter() - start})
      logging.info("zoo: built %s (upstream %s accuracy %.3f) in %.1fs", name, spec.upstream,
                   accuracy, time.perf_counter() - start)
    built.append(entry)
  return built


def _read_entry(zoo_dir, name: str, zoo_config) -> ModelEntry | None:
  path = model_dir(zoo_dir, name, zoo_config)
  meta = wd.read_json(path / "metadata.json", required=("recipe", "entry"))
  if meta is None or wd.fingerprint(meta["recipe"]) != wd.fingerprint(
      _recipe(SPECS[name], zoo_config)):
    return None
  entry = ModelEntry.from_json(meta["entry"])
  if not (epath.Path(entry.handle) / "saved_model.pb").exists():
    return None
  return entry


def entries(zoo_config, zoo_dir) -> list[ModelEntry]:
  """The entries of the configured models; they must have been built."""
  validate(zoo_config)
  out = []
  for name in zoo_config.models:
    entry = _read_entry(zoo_dir, name, zoo_config)
    if entry is None:
      raise ValueError(f"Mini-zoo model {name!r} is not built in {zoo_dir}; run the 'zoo' stage "
                       "first (it is the first of configs/mini.py's stages).")
    out.append(entry)
  return out
