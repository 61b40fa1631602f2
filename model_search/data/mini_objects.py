"""Renderers of the offline mini suite's object tasks: digits, shapes on clutter, scenes of
several objects (CLEVR-like counting and sizes) and sprites (dSprites-like), 32x32x3 uint8,
batched, from a NumPy RNG; built on the primitives of `mini_draw.py`.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from model_search.data import mini_draw as draw

S = draw.S
XX, YY = draw.XX, draw.YY

# ----------------------------------------------------------------------------
# Digits: scikit-learn's 1797 bundled 8x8 digits, partitioned by role.

DIGIT_PARTS = ("train", "validation", "test", "upstream")
_DIGIT_FRACTIONS = (0.3, 0.1, 0.3, 0.3)


@functools.cache
def _digit_bank():
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  return (digits.images / 16.0).astype(np.float32), digits.target.astype(int)


@functools.cache
def _digits_partition():
  _, targets = _digit_bank()
  rng = np.random.default_rng(zlib.crc32(b"mini_digits/partition"))
  parts = {k: [] for k in DIGIT_PARTS}
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(targets == c))
    cuts = np.round(np.cumsum(_DIGIT_FRACTIONS)[:-1] * len(idx)).astype(int)
    for part, chunk in zip(DIGIT_PARTS, np.split(idx, cuts)):
      parts[part].append(chunk)
  return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def digits_partition() -> dict[str, np.ndarray]:
  """Which of scikit-learn's `load_digits` images each role may use.

  Returns:
    {'train', 'validation', 'test', 'upstream'} -> sorted int indices into
    `sklearn.datasets.load_digits().images`; disjoint, covering all 1797, and
    stratified by class. `mini_digits` splits draw from the part of the same
    name; `up_digits` and the digits of `up_broad` draw from 'upstream'.
  """
  return {k: v.copy() for k, v in _digits_partition().items()}


def _sample_digits(rng, labels, part):
  """Base 8x8 digit images [N, 8, 8] in [0, 1] of the given labels."""
  bank, targets = _digit_bank()
  pool = _digits_partition()[part]
  chosen = np.empty(len(labels), int)
  for c in range(10):
    m = labels == c
    candidates = pool[targets[pool] == c]
    chosen[m] = candidates[rng.integers(0, len(candidates), m.sum())]
  return bank[chosen]


def _warp(src, cx, cy, angle, scale):
  """Places src [N, h, w] at (cx, cy), rotated, `scale` px per source px.

  Bilinear sampling; zero outside the source. Returns [N, S, S].
  """
  n, h, w = src.shape
  u, v = draw.frame(cx, cy, angle, scale)
  pad = np.pad(src, ((0, 0), (1, 1), (1, 1)))
  x = np.clip(u + w / 2 + 0.5, 0, w + 1 - 1e-3)  # +1 for the pad, -0.5 centres.
  y = np.clip(v + h / 2 + 0.5, 0, h + 1 - 1e-3)
  x0, y0 = np.floor(x), np.floor(y)
  fx, fy = x - x0, y - y0
  flat = pad.reshape(n, -1)
  def at(yi, xi):
    index = (yi * (w + 2) + xi).astype(np.int32).reshape(n, -1)
    return np.take_along_axis(flat, index, 1).reshape(x.shape)

  x1, y1 = np.minimum(x0 + 1, w + 1), np.minimum(y0 + 1, h + 1)
  return ((at(y0, x0) * (1 - fx) + at(y0, x1) * fx) * (1 - fy) +
          (at(y1, x0) * (1 - fx) + at(y1, x1) * fx) * fy)


def _ink(glyph):
  """Sharpens blurry upsampled strokes into a coverage in [0, 1]."""
  return np.clip((glyph - 0.25) / 0.4, 0, 1)


def digits_natural(rng, labels, part):
  """SVHN-like: coloured digit, random size/position, side distractors."""
  n = len(labels)
  scale = draw.uniform(rng, 2.4, 3.2, n)
  angle = draw.uniform(rng, -0.2, 0.2, n)
  cx = S / 2 + draw.uniform(rng, -1, 1, n) * (15 - 4 * scale)
  cy = S / 2 + draw.uniform(rng, -1, 1, n) * (15 - 4.2 * scale)
  a, b = draw.contrasting_values(rng, n, 0.35)
  light = rng.random(n) < 0.8  # Mostly light digits on darker plates.
  v_fg = np.where(light, np.maximum(a, b), np.minimum(a, b))
  v_bg = np.where(light, np.minimum(a, b), np.maximum(a, b))
  bg = draw.hsv(draw.uniform(rng, 0, 1, n), draw.uniform(rng, 0, 0.8, n), v_bg)
  fg = draw.hsv(draw.uniform(rng, 0, 1, n), draw.uniform(rng, 0, 1, n), v_fg)
  img = draw.fill(bg)
  img += 0.06 * draw.smooth_noise(rng, n, 3)[..., None]
  # Neighbouring house-number digits, cut by the image border.
  for side in (-1, 1):
    other = _sample_digits(rng, rng.integers(0, 10, n), part)
    shift = side * scale * 7.5
    draw.paint_some(img, rng.random(n) < 0.5, lambda i: _ink(_warp(
        other[i], cx[i] + shift[i], cy[i], angle[i], scale[i])), fg)
  glyph = _warp(_sample_digits(rng, labels, part), cx, cy, angle, scale)
  draw.paint(img, _ink(glyph), fg)
  return draw.finish(rng, img, 0.04)


def digits_paper(rng, labels, part):
  """Upstream digits: ink on paper or chalk on a board; larger rotations."""
  n = len(labels)
  scale = draw.uniform(rng, 1.8, 3.5, n)
  angle = draw.uniform(rng, -0.45, 0.45, n)
  cx = S / 2 + draw.uniform(rng, -1, 1, n) * np.maximum(14 - 3.5 * scale, 1)
  cy = S / 2 + draw.uniform(rng, -1, 1, n) * np.maximum(14 - 3.5 * scale, 1)
  board = rng.random(n) < 0.4
  paper = draw.color(rng, n, (0.08, 0.16), (0, 0.2), (0.75, 1))
  ink = draw.color(rng, n, (0.55, 0.7), (0, 0.7), (0, 0.35))
  slate = draw.color(rng, n, (0.3, 0.5), (0.1, 0.5), (0.1, 0.3))
  chalk = draw.color(rng, n, (0, 1), (0, 0.15), (0.8, 1))
  img = draw.fill(np.where(board[:, None], slate, paper))
  img += 0.05 * draw.fractal(rng, n)[..., None]
  glyph = _warp(_sample_digits(rng, labels, part), cx, cy, angle, scale)
  draw.paint(img, _ink(glyph), np.where(board[:, None], chalk, ink))
  return draw.finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Shapes.

_CLUTTER = ("circle", "square", "triangle", "diamond")


def shapes_clutter(rng, kinds):
  """Downstream: a bright, saturated object over dim coloured clutter."""
  n = len(kinds)
  img = draw.fill(draw.color(rng, n, (0, 1), (0.2, 0.7), (0.15, 0.45)))
  img += 0.1 * draw.smooth_noise(rng, n, 4, 3)
  for _ in range(6):
    alpha = draw.shape_alpha(rng.choice(_CLUTTER, n), draw.uniform(rng, 0, S, n),
                         draw.uniform(rng, 0, S, n), draw.uniform(rng, 0, 2 * np.pi, n),
                         draw.uniform(rng, 1.5, 4, n))
    color = draw.color(rng, n, (0, 1), (0.2, 0.8), (0.1, 0.55))
    draw.paint(img, 0.7 * alpha, color)
  scale = draw.uniform(rng, 8, 12.5, n)
  alpha = draw.shape_alpha(kinds, S / 2 + draw.uniform(rng, -3.5, 3.5, n),
                       S / 2 + draw.uniform(rng, -3.5, 3.5, n),
                       draw.uniform(rng, 0, 2 * np.pi, n), scale)
  draw.paint(img, alpha, draw.color(rng, n, (0, 1), (0.5, 1), (0.65, 1)))
  return draw.finish(rng, img, 0.03)


def shapes_plain(rng, kinds):
  """Upstream: pastel or dark objects on a plain two-colour gradient."""
  n = len(kinds)
  top = draw.color(rng, n, (0, 1), (0, 0.25), (0.3, 0.9))
  bottom = draw.color(rng, n, (0, 1), (0, 0.25), (0.3, 0.9))
  ramp = (YY / S)[None, :, :, None]
  img = top[:, None, None] * (1 - ramp) + bottom[:, None, None] * ramp
  v_bg = img.mean(axis=(1, 2, 3))
  v_obj = np.where(v_bg > 0.55, draw.uniform(rng, 0.05, 0.3, n), draw.uniform(rng, 0.8, 1, n))
  scale = draw.uniform(rng, 6, 13, n)
  lim = 16 - scale * 0.9
  alpha = draw.shape_alpha(kinds, S / 2 + draw.uniform(rng, -1, 1, n) * lim,
                       S / 2 + draw.uniform(rng, -1, 1, n) * lim,
                       draw.uniform(rng, 0, 2 * np.pi, n), scale)
  draw.paint(img, alpha, draw.hsv(draw.uniform(rng, 0, 1, n), draw.uniform(rng, 0.15, 0.45, n), v_obj))
  return draw.finish(rng, img, 0.015)


# ----------------------------------------------------------------------------
# Scenes of several objects (CLEVR-like downstream, flat 2D upstream).

_CLEVR_COLORS = np.asarray(
    [(87, 87, 87), (173, 35, 35), (42, 75, 215), (29, 105, 20), (129, 74, 25),
     (129, 38, 192), (41, 208, 208), (255, 238, 51)], np.float32) / 255
_SCENE_SHAPES = ("circle", "square", "hexagon")


def _floor(rng, n):
  """A grey floor lit from the top."""
  level = draw.uniform(rng, 0.35, 0.6, n)[:, None, None, None]
  ramp = 1.15 - 0.3 * (YY / S)[None, :, :, None]
  return np.broadcast_to(level * ramp, (n, S, S, 3)).copy()


def _solid(rng, img, cx, cy, radius, present=None):
  """Paints a shaded CLEVR-like object with a shadow; returns img."""
  n = len(cx)
  kinds = rng.choice(_SCENE_SHAPES, n)
  angle = draw.uniform(rng, 0, np.pi / 2, n)
  present = np.ones(n, bool) if present is None else present
  color = _CLEVR_COLORS[rng.integers(0, len(_CLEVR_COLORS), n)]
  color = color * draw.uniform(rng, 0.85, 1.1, n)[:, None]
  draw.paint_some(img, present, lambda i: 0.35 * draw.shape_alpha(
      kinds[i], cx[i] + 0.25 * radius[i], cy[i] + 0.3 * radius[i], angle[i],
      radius[i]), np.zeros((n, 3), np.float32))

  def shaded(i):  # Lit from the top left.
    u, v = draw.frame(cx[i], cy[i], np.zeros(len(i)), radius[i])
    shade = np.clip(1.15 - 0.35 * np.hypot(u + 0.4, v + 0.4), 0.5, 1.2)
    return color[i, None, None, :] * shade[..., None]

  idx = np.flatnonzero(present)
  if len(idx):
    alpha = draw.shape_alpha(kinds[idx], cx[idx], cy[idx], angle[idx], radius[idx])
    img[idx] = draw.paint(img[idx], alpha, shaded(idx))
  return img


def _grid_positions(rng, n, slots, cell):
  """Jittered centres [N, slots, 2] on distinct cells of a 4x4 grid."""
  order = np.argsort(rng.random((n, 16)), axis=1)[:, :slots]
  cells = np.stack([order % 4, order // 4], -1)
  centre = (cells + 0.5) * cell + (S - 4 * cell) / 2
  return centre + rng.uniform(-1.2, 1.2, centre.shape)


def count_clevr(rng, labels):
  """CLEVR-count: label + 3 objects (3..10) on a floor."""
  n = len(labels)
  count = labels + 3
  img = _floor(rng, n)
  pos = _grid_positions(rng, n, 10, 7.5).astype(np.float32)
  for k in range(10):
    cx, cy = pos[:, k, 0], pos[:, k, 1]
    radius = draw.uniform(rng, 1.9, 2.8, n) * (0.8 + 0.4 * cy / S)
    _solid(rng, img, cx, cy, radius, present=k < count)
  return draw.finish(rng, img, 0.02)


def count_flat(rng, counts):
  """Upstream counting: flat neon shapes on a dark textured background."""
  n = len(counts)
  img = draw.fill(draw.color(rng, n, (0, 1), (0.3, 0.8), (0.05, 0.25)))
  img *= 1 + 0.4 * draw.fractal(rng, n)[..., None]
  pos = _grid_positions(rng, n, int(counts.max()), 7.5).astype(np.float32)
  kinds = rng.choice(("star", "triangle", "diamond", "cross"), n)
  for k in range(pos.shape[1]):
    params = (kinds, pos[:, k, 0], pos[:, k, 1], draw.uniform(rng, 0, np.pi, n),
              draw.uniform(rng, 2.2, 3.5, n))
    color = draw.color(rng, n, (0, 1), (0.7, 1), (0.8, 1))
    draw.paint_some(img, k < counts,
                lambda i: draw.shape_alpha(*(a[i] for a in params)), color)
  return draw.finish(rng, img, 0.02)


LARGEST_BINS = 6


def largest_clevr(rng, labels):
  """CLEVR-like: 3..6 objects; label = size bin of the largest (front) one."""
  n = len(labels)
  img = _floor(rng, n)
  r_max = 2.5 + labels + draw.uniform(rng, 0, 1, n)  # Bins [2.5, 3.5), ..., [7.5, 8.5).
  others = rng.integers(2, 6, n)
  for k in range(5):
    radius = np.maximum(draw.uniform(rng, 0.5, 1, n) * np.minimum(0.75 * r_max, 3.5), 1.2)
    _solid(rng, img, draw.uniform(rng, 3, S - 3, n), draw.uniform(rng, 3, S - 3, n), radius,
           present=k < others)
  cx = rng.uniform(r_max, S - r_max).astype(np.float32)
  cy = rng.uniform(r_max, S - r_max).astype(np.float32)
  _solid(rng, img, cx, cy, r_max)
  return draw.finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Sprites (dSprites-like downstream, coloured upstream).

SPRITE_BINS = 8
SPRITE_LO, SPRITE_HI = 6.0, 26.0


def _sprites_binary(kinds, cx, cy, angle, scale):
  """White sprites on black, like dSprites."""
  alpha = draw.shape_alpha(kinds, cx, cy, angle, scale)
  return np.round(np.repeat(alpha[..., None], 3, -1) * 255).astype(np.uint8)


def sprite_x(rng, labels):
  n = len(labels)
  width = (SPRITE_HI - SPRITE_LO) / SPRITE_BINS
  cx = SPRITE_LO + width * (labels + draw.uniform(rng, 0, 1, n))
  return _sprites_binary(rng.choice(("square", "ellipse", "heart"), n), cx,
                         draw.uniform(rng, SPRITE_LO, SPRITE_HI, n),
                         draw.uniform(rng, 0, 2 * np.pi, n), draw.uniform(rng, 3, 6, n))


def sprite_ori(rng, labels):
  n = len(labels)
  # A heart has no rotational symmetry: every angle in [0, 2 pi) is distinct.
  angle = 2 * np.pi / SPRITE_BINS * (labels + draw.uniform(rng, 0, 1, n))
  return _sprites_binary(np.full(n, "heart"), draw.uniform(rng, 12, 20, n),
                         draw.uniform(rng, 12, 20, n), angle, draw.uniform(rng, 5, 7, n))


def sprites_colored(rng, kinds, cy, angle):
  """Coloured sprites on a dark noisy background."""
  n = len(kinds)
  img = draw.fill(draw.color(rng, n, (0, 1), (0, 0.3), (0.05, 0.25)))
  img += 0.04 * draw.smooth_noise(rng, n, 8)[..., None]
  alpha = draw.shape_alpha(kinds, draw.uniform(rng, SPRITE_LO, SPRITE_HI, n), cy, angle,
                       draw.uniform(rng, 3, 6, n))
  draw.paint(img, alpha, draw.color(rng, n, (0, 1), (0.5, 1), (0.7, 1)))
  return draw.finish(rng, img, 0.02)


def up_sprites(rng, labels):
  """Label = 4 y-position bins x 4 orientation quadrants."""
  n = len(labels)
  ybin, quadrant = labels // 4, labels % 4
  cy = SPRITE_LO + (SPRITE_HI - SPRITE_LO) / 4 * (ybin + draw.uniform(rng, 0, 1, n))
  angle = np.pi / 2 * (quadrant + draw.uniform(rng, 0, 1, n))
  return sprites_colored(rng, rng.choice(("arrow", "l_shape"), n), cy, angle)
