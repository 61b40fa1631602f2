"""Renderers of the offline mini suite's texture tasks: procedural textures (DTD-like), aerial
land use (EuroSAT-like) and cell / fluorescent blobs (PCam-like), 32x32x3 uint8, batched, from
a NumPy RNG; built on the primitives of `mini_draw.py`.
"""

from __future__ import annotations

import numpy as np

from model_search.data import mini_draw as draw

S = draw.S
XX, YY = draw.XX, draw.YY

# ----------------------------------------------------------------------------
# Textures: a pattern p in [0, 1] per pixel, coloured between two colours.


def _random_frame(rng, n, angle=None):
  angle = draw.uniform(rng, 0, np.pi, n) if angle is None else angle
  return draw.frame(draw.uniform(rng, 0, S, n), draw.uniform(rng, 0, S, n), angle, np.ones(n))


def _per(x):
  return np.asarray(x, np.float32)[:, None, None]


def _lines(t, width):
  """Coverage of lines of `width` (in periods) at integer values of t."""
  return np.clip((width / 2 - np.abs(t - np.round(t))) * 8, 0, 1)


def _tex_stripes(rng, n):
  u, _ = _random_frame(rng, n)
  return draw.soft(np.sin(2 * np.pi * _per(draw.uniform(rng, 0.1, 0.28, n)) * u))


def _tex_checker(rng, n):
  u, v = _random_frame(rng, n)
  f = _per(draw.uniform(rng, 0.06, 0.14, n))
  return draw.soft(3 * np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v))


def _tex_dots(rng, n):
  u, v = _random_frame(rng, n)
  f = _per(draw.uniform(rng, 0.1, 0.2, n))
  du, dv = u * f - np.round(u * f), v * f - np.round(v * f)
  radius = _per(draw.uniform(rng, 0.18, 0.32, n))
  return np.clip((radius - np.hypot(du, dv)) / f + 0.5, 0, 1)


def _tex_waves(rng, n):
  u, v = _random_frame(rng, n)
  amplitude, f_bend = _per(draw.uniform(rng, 1.5, 3, n)), _per(draw.uniform(rng, 0.03, 0.08, n))
  bend = amplitude * np.sin(2 * np.pi * f_bend * v)
  return draw.soft(np.sin(2 * np.pi * _per(draw.uniform(rng, 0.1, 0.22, n)) * u + bend))


def _tex_grid(rng, n):
  u, v = _random_frame(rng, n)
  f, w = _per(draw.uniform(rng, 0.1, 0.18, n)), _per(draw.uniform(rng, 0.15, 0.3, n))
  return np.maximum(_lines(u * f, w), _lines(v * f, w))


def _tex_zigzag(rng, n):
  u, v = _random_frame(rng, n)
  tri = 2 * np.abs(v * _per(draw.uniform(rng, 0.06, 0.12, n)) % 1 - 0.5)
  return draw.soft(np.sin(2 * np.pi * _per(draw.uniform(rng, 0.1, 0.2, n)) *
                      (u + _per(draw.uniform(rng, 3, 6, n)) * tri)))


def _tex_blotches(rng, n):
  mix = _per(draw.uniform(rng, 0, 1, n))  # Blotch size varies per image.
  noise = mix * draw.smooth_noise(rng, n, 3) + (1 - mix) * draw.smooth_noise(rng, n, 5)
  return draw.soft(3 * noise)


def _tex_rings(rng, n):
  rho = np.hypot(*draw.frame(draw.uniform(rng, 0, S, n), draw.uniform(rng, 0, S, n), np.zeros(n),
                         np.ones(n)))
  return draw.soft(np.sin(2 * np.pi * _per(draw.uniform(rng, 0.1, 0.22, n)) * rho))


def _tex_plaid(rng, n):
  u, v = _random_frame(rng, n)
  a = np.sin(2 * np.pi * _per(draw.uniform(rng, 0.05, 0.12, n)) * u)
  b = np.sin(2 * np.pi * _per(draw.uniform(rng, 0.05, 0.12, n)) * v)
  return np.clip(0.5 + 0.25 * (np.sign(a) + np.sign(b)) + 0.1 * a * b, 0, 1)


def _tex_crosshatch(rng, n):
  u, v = _random_frame(rng, n, angle=np.pi / 4 + draw.uniform(rng, -0.2, 0.2, n))
  f, w = _per(draw.uniform(rng, 0.12, 0.25, n)), _per(draw.uniform(rng, 0.2, 0.3, n))
  return np.maximum(_lines(u * f, w), _lines(v * f, w))


def _tex_spiral(rng, n):
  u, v = draw.frame(draw.uniform(rng, 8, 24, n), draw.uniform(rng, 8, 24, n), np.zeros(n), np.ones(n))
  arms = _per(rng.integers(1, 4, n))
  return draw.soft(np.sin(arms * np.arctan2(v, u) +
                      2 * np.pi * _per(draw.uniform(rng, 0.1, 0.2, n)) * np.hypot(u, v)))


def _tex_bricks(rng, n):
  u, v = _random_frame(rng, n, angle=draw.uniform(rng, -0.3, 0.3, n))
  height = _per(draw.uniform(rng, 3.5, 6, n))
  row = np.floor(v / height)
  brick = (u / (2 * height) + 0.5 * (row % 2))
  return 1 - np.maximum(_lines(v / height, 0.25), _lines(brick, 0.12))


def _tex_cellular(rng, n):
  pts = rng.uniform(-4, S + 4, (n, 12, 2)).astype(np.float32)
  d = np.hypot(XX[None, None] - pts[..., 0, None, None],
               YY[None, None] - pts[..., 1, None, None])
  d.sort(axis=1)
  return np.clip((d[:, 1] - d[:, 0]) / 2.5, 0, 1)


def _tex_marble(rng, n):
  u, _ = _random_frame(rng, n)
  phase = 2 * np.pi * _per(draw.uniform(rng, 0.03, 0.08, n)) * u + 3 * draw.fractal(rng, n)
  return 0.5 + 0.5 * np.sin(phase)


def _tex_speckle(rng, n):
  density = _per(draw.uniform(rng, 0.08, 0.3, n))
  return (rng.random((n, S, S)) < density).astype(np.float32)


def _tex_sawtooth(rng, n):
  u, _ = _random_frame(rng, n)
  return (u * _per(draw.uniform(rng, 0.08, 0.2, n))) % 1


def _tex_fibres(rng, n):
  base = draw.uniform(rng, 0, np.pi, n)
  total = 0
  for _ in range(6):
    u, _ = _random_frame(rng, n, angle=base + draw.uniform(rng, -0.15, 0.15, n))
    total = total + np.sin(2 * np.pi * _per(draw.uniform(rng, 0.1, 0.35, n)) * u)
  return np.clip(0.5 + total / 5, 0, 1)


def _tex_weave(rng, n):
  u, v = _random_frame(rng, n)
  cell = _per(draw.uniform(rng, 5, 9, n))
  parity = (np.floor(u / cell) + np.floor(v / cell)) % 2
  f = 3 / cell
  return np.where(parity > 0, draw.soft(np.sin(2 * np.pi * f * u)),
                  draw.soft(np.sin(2 * np.pi * f * v)))


_TEXTURES = {
    "stripes": _tex_stripes, "checker": _tex_checker, "dots": _tex_dots,
    "waves": _tex_waves, "grid": _tex_grid, "zigzag": _tex_zigzag,
    "blotches": _tex_blotches, "rings": _tex_rings, "plaid": _tex_plaid,
    "crosshatch": _tex_crosshatch, "spiral": _tex_spiral,
    "bricks": _tex_bricks, "cellular": _tex_cellular, "marble": _tex_marble,
    "speckle": _tex_speckle, "sawtooth": _tex_sawtooth,
    "fibres": _tex_fibres, "weave": _tex_weave,
}


def _patterns(rng, kinds):
  kinds = np.asarray(kinds)
  p = np.empty((len(kinds), S, S), np.float32)
  for kind in np.unique(kinds):
    m = kinds == kind
    p[m] = _TEXTURES[kind](rng, int(m.sum()))
  return p


def textures_dtd(rng, labels, classes):
  """Downstream textures: each class leans towards its own hue (like DTD)."""
  n = len(labels)
  kinds = np.asarray(classes)[labels]
  own = rng.random(n) < 0.6
  hue = np.where(own, labels / len(classes) + draw.uniform(rng, -0.06, 0.06, n),
                 draw.uniform(rng, 0, 1, n))
  v0, v1 = draw.contrasting_values(rng, n, 0.3)
  c0 = draw.hsv(hue, draw.uniform(rng, 0.2, 0.9, n), v0)
  c1 = draw.hsv(hue + draw.uniform(rng, -0.15, 0.15, n), draw.uniform(rng, 0.2, 0.9, n), v1)
  p = _patterns(rng, kinds)[..., None]
  return draw.finish(rng, c0[:, None, None] * (1 - p) + c1[:, None, None] * p, 0.03)


def textures_tonal(rng, kinds):
  """Upstream textures: one hue, light/dark tones, a little shading."""
  n = len(kinds)
  hue, sat = draw.uniform(rng, 0, 1, n), draw.uniform(rng, 0, 0.5, n)
  v0, v1 = draw.contrasting_values(rng, n, 0.25)
  c0, c1 = draw.hsv(hue, sat, v0), draw.hsv(hue, sat, v1)
  p = _patterns(rng, kinds)[..., None]
  img = c0[:, None, None] * (1 - p) + c1[:, None, None] * p
  img *= 1 + 0.15 * draw.smooth_noise(rng, n, 2)[..., None]
  return draw.finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Aerial land use (EuroSAT-like).


def _land_forest(rng, n):
  base = draw.color(rng, n, (0.22, 0.38), (0.35, 0.8), (0.18, 0.45))
  crowns = draw.fractal(rng, n, cells=(8, 16, 31))
  return base[:, None, None] * (1 + 0.35 * crowns[..., None])


def _land_water(rng, n):
  base = draw.color(rng, n, (0.48, 0.66), (0.3, 0.85), (0.15, 0.55))
  img = draw.fill(base) * (1 + 0.08 * draw.smooth_noise(rng, n, 3)[..., None])
  u, _ = _random_frame(rng, n)
  img *= 1 + 0.04 * np.sin(2 * np.pi * 0.25 * u)[..., None]
  shore = rng.random(n) < 0.4
  land = draw.soft(3 * (draw.smooth_noise(rng, n, 2) - 1.2)) * shore[:, None, None]
  land_color = draw.color(rng, n, (0.1, 0.3), (0.3, 0.6), (0.35, 0.7))
  return draw.paint(img, land, land_color)


# Crop colours (green, yellow, brown): (h lo, h hi, s lo, s hi, v lo, v hi).
_CROPS = ((0.22, 0.33, 0.4, 0.75, 0.35, 0.65),
          (0.11, 0.16, 0.45, 0.8, 0.6, 0.85),
          (0.05, 0.1, 0.35, 0.6, 0.3, 0.5))


def _crop_colors(rng, n):
  kind = rng.integers(0, len(_CROPS), n)
  lo_hi = np.asarray(_CROPS, np.float32)[kind]
  return draw.hsv(*(rng.uniform(lo_hi[:, 2 * i], lo_hi[:, 2 * i + 1])
                for i in range(3)))


def _land_farmland(rng, n):
  u, v = _random_frame(rng, n)
  a, b = _per(draw.uniform(rng, -10, 10, n)), _per(draw.uniform(rng, -10, 10, n))
  parcel = (u > a).astype(int) + 2 * (v > b)
  colors = np.stack([_crop_colors(rng, n) for _ in range(4)], 1)  # [N, 4, 3]
  img = np.take_along_axis(colors[:, None, None], parcel[..., None, None], 3)
  img = img[:, :, :, 0]
  rows = (np.where(parcel % 2 == 0, u, v) * 2 * np.pi *
          _per(draw.uniform(rng, 0.25, 0.45, n)))
  return img * (1 + 0.12 * np.sin(rows)[..., None])


def _land_residential(rng, n):
  ground = draw.color(rng, n, (0.15, 0.35), (0.1, 0.5), (0.35, 0.6))
  img = draw.fill(ground) * (1 + 0.1 * draw.smooth_noise(rng, n, 6)[..., None])
  u, v = _random_frame(rng, n, angle=draw.uniform(rng, -0.4, 0.4, n))
  pitch = _per(draw.uniform(rng, 6, 9, n))
  street = np.maximum(_lines(u / pitch, 0.2), _lines(v / pitch, 0.2))
  draw.paint(img, street, draw.hsv(np.zeros(n), np.zeros(n), draw.uniform(rng, 0.45, 0.7, n)))
  du = u / pitch - np.floor(u / pitch) - 0.5
  dv = v / pitch - np.floor(v / pitch) - 0.5
  cell = (np.floor(u / pitch) * 7 + np.floor(v / pitch) * 13).astype(int) % 16
  built = np.take_along_axis(rng.random((n, 16)) < 0.8, cell.reshape(n, -1), 1)
  house = np.clip((0.28 - np.maximum(np.abs(du), np.abs(dv))) * 8 * pitch, 0, 1)
  roof = draw.color(rng, n, (-0.03, 0.08), (0.2, 0.7), (0.35, 0.8))
  return draw.paint(img, house * built.reshape(n, S, S), roof)


def _land_road(rng, n):
  kind = rng.random(n) < 0.5
  ground = np.where(kind[:, None], _crop_colors(rng, n), draw.hsv(
      draw.uniform(rng, 0.06, 0.14, n), draw.uniform(rng, 0.25, 0.5, n), draw.uniform(rng, 0.45, 0.8, n)))
  img = draw.fill(ground) * (1 + 0.15 * draw.fractal(rng, n)[..., None])
  u, v = draw.frame(draw.uniform(rng, 8, 24, n), draw.uniform(rng, 8, 24, n), draw.uniform(rng, 0, np.pi, n),
                np.ones(n))
  width = _per(draw.uniform(rng, 2.5, 5, n))
  road = np.clip(width / 2 - np.abs(u) + 0.5, 0, 1)
  draw.paint(img, road, draw.hsv(np.zeros(n), np.zeros(n), draw.uniform(rng, 0.3, 0.6, n)))
  dashes = np.clip(0.6 - np.abs(u) * 2, 0, 1) * (np.sin(v * 1.2) > 0)
  return draw.paint(img, 0.8 * dashes, np.ones((n, 3), np.float32))


def _land_barren(rng, n):
  base = draw.color(rng, n, (0.05, 0.14), (0.2, 0.55), (0.45, 0.85))
  u, _ = _random_frame(rng, n)
  f = _per(draw.uniform(rng, 0.06, 0.15, n))
  dunes = 0.06 * np.sin(2 * np.pi * f * u + 2 * draw.fractal(rng, n))
  shade = 1 + 0.15 * draw.fractal(rng, n) + dunes
  return base[:, None, None] * shade[..., None]


LAND = {"forest": _land_forest, "water": _land_water,
         "farmland": _land_farmland, "residential": _land_residential,
         "road": _land_road, "barren": _land_barren}


def aerial(rng, kinds, false_color=False):
  """Aerial tiles; `false_color` swaps red and green (colour-infrared look)."""
  kinds = np.asarray(kinds)
  n = len(kinds)
  img = np.empty((n, S, S, 3), np.float32)
  for kind in np.unique(kinds):
    m = kinds == kind
    img[m] = LAND[kind](rng, int(m.sum()))
  haze = draw.uniform(rng, 0, 0.3, n)[:, None, None, None]
  img = img * (1 - haze) + haze * 0.7
  img *= draw.uniform(rng, 0.85, 1.15, n)[:, None, None, None]
  if false_color:
    img = img[..., [1, 0, 2]]
  return draw.finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Blobs: cell nuclei (H&E, downstream) and fluorescent blobs (upstream).


_COS1, _SIN1 = float(np.cos(1.0)), float(np.sin(1.0))


def _blob_alpha(cx, cy, radius, aspect, angle, lobes2, lobes3, hollow,
                soft=1.0):
  """Coverage of ellipses with 2- and 3-lobed radius modulation, or rings."""
  u, v = draw.frame(cx, cy, angle, radius)
  q = np.hypot(u, v / _per(aspect))
  rho = np.maximum(np.hypot(u, v), 1e-6)
  cu, sv = u / rho, v / rho  # cos and sin of the polar angle.
  cos2 = cu * cu - sv * sv
  cos3_plus_1 = ((cu * cu - 3 * sv * sv) * cu * _COS1 -
                 (3 * cu * cu - sv * sv) * sv * _SIN1)
  r = 1 + _per(lobes2) * cos2 + _per(lobes3) * cos3_plus_1
  sdf = np.where(_per(hollow) > 0, np.abs(q - 0.72 * r) - 0.28 * r, q - r)
  return draw.coverage(sdf * _per(aspect) / soft, radius)


def render_cells(rng, labels):
  """PCam-like H&E patches; label 1 iff a tumour nucleus lies in the centre."""
  n = len(labels)
  stain = draw.uniform(rng, -0.04, 0.04, n)
  img = draw.fill(draw.hsv(0.92 + stain, draw.uniform(rng, 0.15, 0.35, n),
                   draw.uniform(rng, 0.78, 0.95, n)))
  img *= 1 + 0.06 * draw.fractal(rng, n, cells=(4, 8, 16))[..., None]
  zeros = np.zeros(n, np.float32)
  for _ in range(14):  # Normal nuclei, anywhere.
    params = (draw.uniform(rng, 0, S, n), draw.uniform(rng, 0, S, n), draw.uniform(rng, 1.3, 2.3, n),
              draw.uniform(rng, 0.65, 1, n), draw.uniform(rng, 0, np.pi, n), draw.uniform(rng, 0, 0.1, n),
              zeros, zeros)
    color = draw.hsv(0.76 + stain, draw.uniform(rng, 0.3, 0.6, n), draw.uniform(rng, 0.4, 0.65, n))
    draw.paint_some(img, rng.random(n) < 0.75,
                lambda i: 0.85 * _blob_alpha(*(a[i] for a in params)), color)
  for slot in range(4):  # Tumour nuclei: slot 0 central for label 1.
    cx, cy = draw.uniform(rng, 1, S - 1, n), draw.uniform(rng, 1, S - 1, n)
    central = (np.abs(cx - 16) < 6) & (np.abs(cy - 16) < 6)
    # Outside the centre unless the label says otherwise.
    push = np.where(cx < 16, -9.0, 9.0).astype(np.float32)
    cx = np.where(central & (labels == 0), cx + push, cx)
    if slot == 0:
      cx = np.where(labels == 1, draw.uniform(rng, 11, 21, n), cx)
      cy = np.where(labels == 1, draw.uniform(rng, 11, 21, n), cy)
      present = (labels == 1) | (rng.random(n) < 0.3)
    else:
      present = rng.random(n) < 0.3
    params = (cx, cy, draw.uniform(rng, 2.6, 4, n), draw.uniform(rng, 0.6, 1, n),
              draw.uniform(rng, 0, np.pi, n), draw.uniform(rng, 0.08, 0.22, n),
              draw.uniform(rng, 0.05, 0.2, n), zeros)
    color = draw.hsv(0.78 + stain, draw.uniform(rng, 0.45, 0.8, n), draw.uniform(rng, 0.2, 0.42, n))
    draw.paint_some(img, present,
                lambda i: 0.95 * _blob_alpha(*(a[i] for a in params)), color)
  return draw.finish(rng, img, 0.03)


# Fluorescent blob classes: (min count, max count, radius lo, hi, aspect lo, hi,
# 2-lobe amplitude, 3-lobe amplitude, hollow, clustered).
BLOB_CLASSES = {
    "sparse_round": (2, 4, 1.5, 2.5, 0.85, 1, 0, 0, 0, 0),
    "dense_round": (10, 16, 1.2, 2, 0.85, 1, 0, 0, 0, 0),
    "large_round": (1, 2, 5, 8, 0.85, 1, 0, 0, 0, 0),
    "rods": (3, 6, 3, 5, 0.25, 0.4, 0, 0, 0, 0),
    "lobed": (1, 3, 4, 6, 0.8, 1, 0.15, 0.3, 0, 0),
    "rings": (2, 4, 3, 5, 0.85, 1, 0, 0, 1, 0),
    "dividing": (1, 3, 3.5, 5.5, 0.9, 1, 0.45, 0, 0, 0),
    "clustered": (6, 10, 1.3, 2.2, 0.85, 1, 0, 0, 0, 1),
}
_MAX_BLOBS = 16


def render_fluorescent(rng, kinds):
  """Bright soft blobs on a dark background; class = blob morphology."""
  kinds = np.asarray(kinds)
  n = len(kinds)
  p = np.asarray([BLOB_CLASSES[k] for k in kinds], np.float32)  # [N, 10]
  count = rng.integers(p[:, 0], p[:, 1] + 1)
  img = draw.fill(draw.color(rng, n, (0, 1), (0, 1), (0, 0.12)))
  img += 0.03 * draw.fractal(rng, n)[..., None]
  hue = np.asarray([0.33, 0.0, 0.6, 0.15], np.float32)[rng.integers(0, 4, n)]
  centre = rng.uniform(9, 23, (n, 2)).astype(np.float32)
  for k in range(_MAX_BLOBS):
    cx, cy = draw.uniform(rng, 3, S - 3, n), draw.uniform(rng, 3, S - 3, n)
    cx = np.where(p[:, 9] > 0, centre[:, 0] + rng.normal(0, 3, n), cx)
    cy = np.where(p[:, 9] > 0, centre[:, 1] + rng.normal(0, 3, n), cy)
    params = (cx, cy, rng.uniform(p[:, 2], p[:, 3]),
              rng.uniform(p[:, 4], p[:, 5]), draw.uniform(rng, 0, np.pi, n),
              p[:, 6], p[:, 7], p[:, 8])
    color = draw.hsv(hue + draw.uniform(rng, -0.04, 0.04, n), draw.uniform(rng, 0.4, 0.9, n),
                 draw.uniform(rng, 0.6, 1, n))
    draw.paint_some(img, k < count,
                lambda i: _blob_alpha(*(a[i] for a in params), soft=2.0), color)
  return draw.finish(rng, img, 0.02)
