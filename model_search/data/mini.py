"""The offline mini suite: small VTAB-like TFDS datasets generated locally.

Nothing here downloads. Importing this module registers one TFDS builder per
dataset (`mini_*` downstream tasks, `up_*` upstream pre-training tasks); each
renders its 32x32x3 uint8 images with NumPy from a fixed seed derived from the
builder name and split (zlib.crc32), so `tfds.load('mini_digits', data_dir=D)`
prepares identical files on every run (across machines, up to differences in
floating-point math libraries).

Downstream tasks mirror the three VTAB groups:

* natural: `mini_digits` (SVHN-like: scikit-learn's bundled 8x8 digits, warped,
  recoloured, with side distractors), `mini_shapes` (an object on clutter),
  `mini_textures` (procedural textures, DTD-like);
* specialized: `mini_cells` (PCam-like: is there a tumour nucleus in the
  centre?), `mini_landuse` (EuroSAT-like aerial land use);
* structured: `mini_count` (CLEVR-count: 3..10 objects), `mini_largest` (size
  bin of the largest, front-most object), `mini_sprite_x` and `mini_sprite_ori`
  (dSprites x-position and orientation bins).

Upstream tasks are drawn from different distributions (other colours, other
shape / texture families, other class definitions): `up_broad` mixes every
family (the ImageNet analogue) and `up_digits`, `up_shapes`, `up_textures`,
`up_blobs`, `up_count`, `up_sprites` are narrow experts, each closest to its
`UpstreamTask.related` downstream tasks. The 1797 base digits are partitioned
(`digits_partition`) so that no base image is shared between the downstream
train / validation / test splits and the upstream tasks.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Callable, Mapping, Sequence

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from model_search.data import mini_draw as draw
from model_search.data import mini_objects as obj
from model_search.data import mini_textures as tex
from model_search.data import task as task_lib

IMAGE_SIZE = 32
VERSION = "1.0.0"

# ----------------------------------------------------------------------------
# The datasets: classes, renderer, split sizes.

_DOWNSTREAM_SIZES = {"train": 1000, "validation": 200, "test": 1000}
_EXPERT_SIZES = {"train": 5000, "test": 1000}
_BROAD_SIZES = {"train": 10000, "test": 2000}


@dataclasses.dataclass(frozen=True)
class _Dataset:
  classes: tuple[str, ...]
  # (rng, labels [N] int, split) -> images uint8 [N, S, S, 3].
  render: Callable[[np.random.Generator, np.ndarray, str], np.ndarray]
  sizes: Mapping[str, int]
  description: str


def _named(classes, render_kinds):
  """Adapts a renderer of class-name arrays to one of label arrays."""
  names = np.asarray(classes)
  return lambda rng, labels, split: render_kinds(rng, names[labels])


def _mixture(*blocks):
  """Concatenates (classes, render) blocks into one labelled family."""
  classes = tuple(c for names, _ in blocks for c in names)

  def render(rng, labels, split):
    out = np.empty((len(labels), draw.S, draw.S, 3), np.uint8)
    start = 0
    for names, block_render in blocks:
      m = (labels >= start) & (labels < start + len(names))
      if m.any():
        out[m] = block_render(rng, labels[m] - start, split)
      start += len(names)
    return out

  return classes, render


_MINI_SHAPES = ("circle", "triangle", "square", "star", "cross", "ring",
                "crescent", "heart")
_MINI_TEXTURES = ("stripes", "checker", "dots", "waves", "grid", "zigzag",
                  "blotches", "rings")
_UP_SHAPES = ("pentagon", "hexagon", "diamond", "ellipse", "semicircle",
              "arrow", "l_shape", "t_shape", "frame", "star4")
_UP_TEXTURES = ("plaid", "crosshatch", "spiral", "bricks", "cellular",
                "marble", "speckle", "sawtooth", "fibres", "weave")
_UP_COUNTS = tuple(range(1, 9))


def _broad():
  """ImageNet analogue: object-centric classes from every family."""
  digits = tuple(f"digit_{d}" for d in range(10))
  shapes = ("circle", "square", "triangle", "hexagon", "arrow", "frame")
  textures = ("stripes", "checker", "dots", "bricks", "cellular", "marble",
              "plaid", "speckle")
  blobs = ("sparse_round", "rods", "rings", "clustered")
  sprites = ("square", "ellipse", "heart", "arrow")
  land = ("forest", "water", "residential")

  def scenes(rng, labels, split):
    del split
    return obj.count_flat(rng, 3 * labels + rng.integers(1, 4, len(labels)))

  def sprites_render(rng, labels, split):
    del split
    n = len(labels)
    return obj.sprites_colored(rng, np.asarray(sprites)[labels],
                            draw.uniform(rng, obj.SPRITE_LO, obj.SPRITE_HI, n),
                            draw.uniform(rng, 0, 2 * np.pi, n))

  return _mixture(
      (digits,
       lambda rng, labels, split: obj.digits_paper(rng, labels, "upstream")),
      (tuple(f"shape_{s}" for s in shapes), _named(shapes, obj.shapes_plain)),
      (tuple(f"texture_{t}" for t in textures),
       _named(textures, tex.textures_tonal)),
      (tuple(f"blobs_{b}" for b in blobs), _named(blobs, tex.render_fluorescent)),
      (tuple(f"sprite_{s}" for s in sprites), sprites_render),
      (("scene_1_3_objects", "scene_4_6_objects", "scene_7_9_objects"), scenes),
      (tuple(f"aerial_{a}" for a in land),
       _named(land, functools.partial(tex.aerial, false_color=True))),
  )


def _datasets():
  bins = lambda prefix, k: tuple(f"{prefix}_{i}" for i in range(k))
  broad_classes, broad_render = _broad()
  return {
      "mini_digits": _Dataset(
          tuple(str(d) for d in range(10)),
          lambda rng, labels, split: obj.digits_natural(rng, labels, split),
          _DOWNSTREAM_SIZES,
          "House-number-like digits (SVHN analogue): scikit-learn's 8x8 "
          "digits warped to a random size and position, recoloured, with "
          "neighbouring distractor digits and noise."),
      "mini_shapes": _Dataset(
          _MINI_SHAPES, _named(_MINI_SHAPES, obj.shapes_clutter),
          _DOWNSTREAM_SIZES,
          "One bright object shape, randomly rotated and scaled, on a dim "
          "cluttered background."),
      "mini_textures": _Dataset(
          _MINI_TEXTURES,
          lambda rng, labels, split: tex.textures_dtd(rng, labels, _MINI_TEXTURES),
          _DOWNSTREAM_SIZES,
          "Procedural textures (DTD analogue); each class leans towards its "
          "own hue, as natural texture categories do."),
      "mini_cells": _Dataset(
          ("normal", "tumor"), lambda rng, labels, split: tex.render_cells(rng, labels),
          _DOWNSTREAM_SIZES,
          "H&E-like tissue patches (PCam analogue): label 1 iff a large, dark, "
          "irregular nucleus lies in the central 12x12 region."),
      "mini_landuse": _Dataset(
          tuple(tex.LAND), _named(tuple(tex.LAND), tex.aerial), _DOWNSTREAM_SIZES,
          "Aerial land-use tiles (EuroSAT analogue)."),
      "mini_count": _Dataset(
          tuple(f"count_{c}" for c in range(3, 11)),
          lambda rng, labels, split: obj.count_clevr(rng, labels),
          _DOWNSTREAM_SIZES,
          "Shaded objects on a floor (CLEVR-count analogue): label = number "
          "of objects - 3 (3..10 objects)."),
      "mini_largest": _Dataset(
          bins("size", obj.LARGEST_BINS),
          lambda rng, labels, split: obj.largest_clevr(rng, labels),
          _DOWNSTREAM_SIZES,
          "Shaded objects on a floor (CLEVR-dist analogue): label = radius "
          "bin of the largest, front-most object ([2.5, 8.5) px in 1 px "
          "bins)."),
      "mini_sprite_x": _Dataset(
          bins("x", obj.SPRITE_BINS),
          lambda rng, labels, split: obj.sprite_x(rng, labels), _DOWNSTREAM_SIZES,
          "White square / ellipse / heart sprites on black (dSprites "
          "analogue): label = x-position bin."),
      "mini_sprite_ori": _Dataset(
          bins("angle", obj.SPRITE_BINS),
          lambda rng, labels, split: obj.sprite_ori(rng, labels),
          _DOWNSTREAM_SIZES,
          "White heart sprites on black (dSprites analogue): label = "
          "orientation bin of 45 degrees over [0, 360)."),
      "up_broad": _Dataset(
          broad_classes, broad_render, _BROAD_SIZES,
          "Broad upstream task (ImageNet analogue): object-centric classes "
          "from every family (digits, shapes, textures, fluorescent blobs, "
          "sprites, scenes by number of objects, false-colour aerial tiles)."),
      "up_digits": _Dataset(
          tuple(str(d) for d in range(10)),
          lambda rng, labels, split: obj.digits_paper(rng, labels, "upstream"),
          _EXPERT_SIZES,
          "Digits as ink on paper or chalk on a board, from the upstream part "
          "of the base digits."),
      "up_shapes": _Dataset(
          _UP_SHAPES, _named(_UP_SHAPES, obj.shapes_plain), _EXPERT_SIZES,
          "Pastel or dark shapes (other kinds than mini_shapes) on plain "
          "gradients."),
      "up_textures": _Dataset(
          _UP_TEXTURES, _named(_UP_TEXTURES, tex.textures_tonal), _EXPERT_SIZES,
          "Tonal procedural textures of other families than mini_textures."),
      "up_blobs": _Dataset(
          tuple(tex.BLOB_CLASSES), _named(tuple(tex.BLOB_CLASSES), tex.render_fluorescent),
          _EXPERT_SIZES,
          "Fluorescence-like blobs on black: label = blob morphology."),
      "up_count": _Dataset(
          tuple(f"count_{c}" for c in _UP_COUNTS),
          lambda rng, labels, split: obj.count_flat(rng, labels + 1),
          _EXPERT_SIZES,
          "Flat neon shapes on a dark background: label = number of objects "
          "- 1 (1..8 objects)."),
      "up_sprites": _Dataset(
          tuple(f"y{y}_quadrant{q}" for y in range(4) for q in range(4)),
          lambda rng, labels, split: obj.up_sprites(rng, labels), _EXPERT_SIZES,
          "Coloured arrow / L sprites on dark backgrounds: label = y-position "
          "bin (4) x orientation quadrant (4)."),
  }


_DATASETS = _datasets()


def generate(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Renders one split of a mini dataset, as its TFDS builder stores it.

  Args:
    name: a builder name, e.g. 'mini_digits' or 'up_broad'.
    split: a TFDS split of that builder ('train', 'test', and 'validation'
      for downstream tasks).

  Returns:
    (images uint8 [N, 32, 32, 3], labels int64 [N]) in generation order
    (TFDS stores them shuffled by key). Balanced labels; deterministic: the
    seed is zlib.crc32 of 'name/split'.
  """
  if name not in _DATASETS:
    raise ValueError(f"Unknown dataset {name!r}; known datasets: "
                     f"{', '.join(sorted(_DATASETS))}")
  spec = _DATASETS[name]
  if split not in spec.sizes:
    raise ValueError(f"Unknown split {split!r} for {name!r}; valid splits: "
                     f"{', '.join(spec.sizes)}")
  rng = np.random.default_rng(zlib.crc32(f"{name}/{split}".encode()))
  labels = rng.permutation(np.arange(spec.sizes[split]) % len(spec.classes))
  images = spec.render(rng, labels, split)
  assert images.shape == (len(labels), draw.S, draw.S, 3) and images.dtype == np.uint8
  return images, labels.astype(np.int64)


# ----------------------------------------------------------------------------
# TFDS builders, one per dataset, registered on import.


class _MiniBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base builder: renders its splits with `generate`; downloads nothing."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Initial release."}
  # Tells model_search.data.pipeline it may prepare the dataset on first use.
  GENERATES_LOCALLY = True

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS finds a package builder's source through `importlib_resources`,
    # which it does not install; we know where ours is.
    return epath.Path(__file__)

  def _info(self):
    spec = _DATASETS[self.name]
    return tfds.core.DatasetInfo(
        builder=self,
        description=spec.description,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(draw.S, draw.S, 3)),
            "label": tfds.features.ClassLabel(names=spec.classes),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split)
            for split in _DATASETS[self.name].sizes}

  def _generate_examples(self, split):
    images, labels = generate(self.name, split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label), "id": f"{split}_{i:05d}"}


BUILDERS = {
    name: type("".join(p.title() for p in name.split("_")), (_MiniBuilder,),
               {"name": name, "__module__": __name__,
                "__doc__": spec.description})
    for name, spec in _DATASETS.items()
}


# ----------------------------------------------------------------------------
# Tasks.

SPLITS = {
    "train800": "train[:800]",
    "val200": "validation[:200]",
    "train800val200": "train[:800]+validation[:200]",
    "test": "test",
}

_GROUPS = {
    "mini_digits": "natural", "mini_shapes": "natural",
    "mini_textures": "natural", "mini_cells": "specialized",
    "mini_landuse": "specialized", "mini_count": "structured",
    "mini_largest": "structured", "mini_sprite_x": "structured",
    "mini_sprite_ori": "structured",
}


def _identity(example):
  """Keeps image and label (uint8 [32, 32, 3], int64); tf.data friendly."""
  return {"image": example["image"],
          "label": tf.cast(example["label"], tf.int64)}


TASKS: dict[str, task_lib.Task] = {
    name: task_lib.Task(
        name=name,
        tfds_name=f"{name}:{VERSION}",
        num_classes=len(_DATASETS[name].classes),
        group=group,
        splits=SPLITS,
        preprocess=_identity,
        image_size=(draw.S, draw.S),
        split_sizes={"train800": 800, "val200": 200, "train800val200": 1000,
                     "test": _DOWNSTREAM_SIZES["test"]},
    ) for name, group in _GROUPS.items()
}


def task_names(group: str | None = None) -> list[str]:
  """Names of the downstream mini tasks in suite order, optionally of one group
  ('natural', 'specialized' or 'structured')."""
  return task_lib.names(TASKS, group)


def get_task(name: str) -> task_lib.Task:
  """Returns the downstream mini task `name` (see `task_names()`)."""
  return task_lib.lookup(TASKS, name, "mini")


def select_tasks(spec: str | None) -> list[str]:
  """Task names from 'all' (or empty), a group, or names joined by '+'."""
  return task_lib.select(TASKS, spec, "mini")


@dataclasses.dataclass(frozen=True)
class UpstreamTask:
  """A pre-training task of the mini model zoo.

  Attributes:
    name: short name, e.g. 'up_digits'.
    tfds_name: the TFDS builder string.
    num_classes: number of labels.
    train_split: TFDS split to pre-train on.
    test_split: TFDS split to report upstream accuracy on.
    description: what the images and labels are.
    related: downstream mini tasks this task was designed to help most.
  """
  name: str
  tfds_name: str
  num_classes: int
  train_split: str = "train"
  test_split: str = "test"
  description: str = ""
  related: tuple[str, ...] = ()


_RELATED = {
    "up_broad": ("mini_digits", "mini_shapes", "mini_textures", "mini_cells",
                 "mini_landuse", "mini_count", "mini_largest",
                 "mini_sprite_x", "mini_sprite_ori"),
    "up_digits": ("mini_digits",),
    "up_shapes": ("mini_shapes",),
    "up_textures": ("mini_textures", "mini_landuse"),
    "up_blobs": ("mini_cells",),
    "up_count": ("mini_count", "mini_largest"),
    "up_sprites": ("mini_sprite_x", "mini_sprite_ori"),
}

UPSTREAM: dict[str, UpstreamTask] = {
    name: UpstreamTask(
        name=name,
        tfds_name=f"{name}:{VERSION}",
        num_classes=len(_DATASETS[name].classes),
        description=_DATASETS[name].description,
        related=related,
    ) for name, related in _RELATED.items()
}


def get_upstream(name: str) -> UpstreamTask:
  """Returns the upstream (pre-training) task `name`, e.g. 'up_broad'."""
  try:
    return UPSTREAM[name]
  except KeyError:
    raise ValueError(f"Unknown task {name!r}; known tasks: "
                     f"{', '.join(sorted(UPSTREAM))}") from None


def prepare(names: str | Sequence[str] | None = None,
            data_dir: str | None = None) -> None:
  """Generates and writes mini datasets in TFDS format (no network).

  Args:
    names: downstream and / or upstream task names (a single name is fine);
      None prepares all of them. Already prepared datasets are kept.
    data_dir: TFDS data directory; None means TFDS's default.
  """
  if names is None:
    names = list(TASKS) + list(UPSTREAM)
  elif isinstance(names, str):
    names = [names]
  for name in names:
    entry = TASKS.get(name) or UPSTREAM.get(name)
    if entry is None:
      raise ValueError(f"Unknown task {name!r}; known tasks: "
                       f"{', '.join(sorted(list(TASKS) + list(UPSTREAM)))}")
    tfds.builder(entry.tfds_name, data_dir=data_dir).download_and_prepare()
