"""Drawing primitives of the offline mini suite: coordinates, shapes as signed distances,
anti-aliased coverage, colours, smooth and fractal noise (batched NumPy, 32x32).

The renderers built on them live in `mini_objects.py` (digits, shapes, scenes, sprites) and
`mini_textures.py` (textures, aerial land use, cells); `model_search.data.mini` composes those
into the suite's datasets.
"""

from __future__ import annotations

import functools

import numpy as np

IMAGE_SIZE = 32

S = IMAGE_SIZE
# Pixel-centre coordinates, [S, S]: XX[i, j] = j + 0.5, YY[i, j] = i + 0.5.
YY, XX = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5

# ----------------------------------------------------------------------------
# Drawing primitives. Every array has a leading batch axis N; "sdf" values are
# signed distances in shape units (negative inside), turned into anti-aliased
# coverage by coverage.


def uniform(rng, lo, hi, n):
  return rng.uniform(lo, hi, n).astype(np.float32)


def frame(cx, cy, angle, scale):
  """Pixel coordinates (u, v) [N, S, S] in a centred, rotated, scaled frame."""
  dx = XX - np.asarray(cx, np.float32)[:, None, None]
  dy = YY - np.asarray(cy, np.float32)[:, None, None]
  c = np.cos(angle).astype(np.float32)[:, None, None]
  s = np.sin(angle).astype(np.float32)[:, None, None]
  scale = np.asarray(scale, np.float32)[:, None, None]
  return (c * dx + s * dy) / scale, (-s * dx + c * dy) / scale


def coverage(sdf, scale):
  """Anti-aliased coverage in [0, 1] from an sdf in units of `scale` pixels."""
  return np.clip(0.5 - sdf * np.asarray(scale, np.float32)[:, None, None], 0, 1)


def _box(u, v, a, b):
  return np.maximum(np.abs(u) - a, np.abs(v) - b)


def _convex(u, v, verts):
  """Signed distance to a convex polygon (max over its edges' half-planes)."""
  verts = np.asarray(verts, np.float32)
  centre = verts.mean(0)
  d = np.full(u.shape, -np.inf, np.float32)
  for (x0, y0), (x1, y1) in zip(verts, np.roll(verts, -1, axis=0)):
    nx, ny = y1 - y0, x0 - x1
    norm = np.hypot(nx, ny)
    nx, ny = nx / norm, ny / norm
    if (centre[0] - x0) * nx + (centre[1] - y0) * ny > 0:  # Point outwards.
      nx, ny = -nx, -ny
    d = np.maximum(d, (u - x0) * nx + (v - y0) * ny)
  return d


def _regular(n):
  """Vertices of a regular n-gon of circumradius 1 with a vertex at the top."""
  a = -np.pi / 2 + 2 * np.pi * np.arange(n) / n
  return np.stack([np.cos(a), np.sin(a)], -1)


def _star(u, v, points):
  phi = np.arctan2(v, u) + np.pi / 2
  return 0.6 * (np.hypot(u, v) - (0.62 + 0.33 * np.cos(points * phi)))


def _heart(u, v):
  lobes = np.minimum(np.hypot(u - 0.4, v + 0.28), np.hypot(u + 0.4, v + 0.28))
  return np.minimum(lobes - 0.5,
                    _convex(u, v, [(-0.88, -0.2), (0.88, -0.2), (0, 0.95)]))


# Shape catalogue: sdf(u, v) of a shape about one unit in radius.
_SHAPES = {
    "circle": lambda u, v: np.hypot(u, v) - 0.9,
    "square": lambda u, v: _box(u, v, 0.75, 0.75),
    "triangle": lambda u, v: _convex(u, v + 0.2, _regular(3)),
    "pentagon": lambda u, v: _convex(u, v, _regular(5)),
    "hexagon": lambda u, v: _convex(u, v, _regular(6)),
    "diamond": lambda u, v: _convex(u, v, [(0, -1), (0.6, 0), (0, 1),
                                           (-0.6, 0)]),
    "star": lambda u, v: _star(u, v, 5),
    "star4": lambda u, v: _star(u, v, 4),
    "cross": lambda u, v: np.minimum(_box(u, v, 0.9, 0.3),
                                     _box(u, v, 0.3, 0.9)),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.62) - 0.3,
    "crescent": lambda u, v: np.maximum(np.hypot(u, v) - 0.95,
                                        0.75 - np.hypot(u - 0.45, v)),
    "heart": _heart,
    "ellipse": lambda u, v: 0.5 * (np.hypot(u, v / 0.5) - 1.0),
    "semicircle": lambda u, v: np.maximum(np.hypot(u, v - 0.4) - 1.0, v - 0.4),
    "arrow": lambda u, v: np.minimum(
        _box(u + 0.35, v, 0.55, 0.18),
        _convex(u, v, [(0.05, -0.6), (0.95, 0), (0.05, 0.6)])),
    "l_shape": lambda u, v: np.minimum(_box(u + 0.45, v, 0.25, 0.9),
                                       _box(u, v - 0.65, 0.7, 0.25)),
    "t_shape": lambda u, v: np.minimum(_box(u, v + 0.65, 0.9, 0.25),
                                       _box(u, v - 0.25, 0.25, 0.65)),
    "frame": lambda u, v: np.maximum(_box(u, v, 0.85, 0.85),
                                     -_box(u, v, 0.45, 0.45)),
}


def shape_alpha(kinds, cx, cy, angle, scale):
  """Coverage [N, S, S] of shapes `kinds` [N] (names in _SHAPES)."""
  kinds = np.asarray(kinds)
  u, v = frame(cx, cy, angle, scale)
  sdf = np.empty_like(u)
  for kind in np.unique(kinds):
    m = kinds == kind
    sdf[m] = _SHAPES[kind](u[m], v[m])
  return coverage(sdf, scale)


def hsv(h, s, v):
  """RGB [N, 3] in [0, 1] from hue, saturation, value arrays [N]."""
  h = (np.asarray(h, np.float32) % 1.0) * 6
  s, v = np.asarray(s, np.float32), np.asarray(v, np.float32)
  i = np.floor(h).astype(int) % 6
  f = h - np.floor(h)
  p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
  r = np.choose(i, [v, q, p, p, t, v])
  g = np.choose(i, [t, v, v, q, p, p])
  b = np.choose(i, [p, p, t, v, v, q])
  return np.stack([r, g, b], -1).astype(np.float32)


def color(rng, n, h, s, v):
  """Colours [N, 3]; hue, saturation and value uniform in (lo, hi) ranges."""
  return hsv(uniform(rng, *h, n), uniform(rng, *s, n), uniform(rng, *v, n))


def fill(color):
  """An image [N, S, S, 3] filled with colours [N, 3]."""
  return np.repeat(np.repeat(color[:, None, None, :], S, 1), S, 2)


def paint(img, alpha, color):
  """Composites colours [N, 3] (or images) onto img with coverage [N, S, S]."""
  if color.ndim == 2:
    color = color[:, None, None, :]
  img += alpha[..., None] * (color - img)
  return img


def paint_some(img, present, alpha_fn, color):
  """Paints alpha_fn(idx) in colours color[idx] on the images idx where present.

  Rendering only the present objects keeps scenes with many optional object
  slots cheap.
  """
  idx = np.flatnonzero(present)
  if len(idx):
    img[idx] = paint(img[idx], alpha_fn(idx), color[idx])
  return img


@functools.cache
def _upsample_matrix(cells):
  """[S, cells + 1] bilinear weights from a (cells + 1)-point grid to S px."""
  pos = (np.arange(S) + 0.5) / S * cells
  i0 = np.minimum(np.floor(pos).astype(int), cells - 1)
  m = np.zeros((S, cells + 1), np.float32)
  m[np.arange(S), i0] = 1 - (pos - i0)
  m[np.arange(S), i0 + 1] = pos - i0
  return m


def smooth_noise(rng, n, cells, channels=None):
  """Bilinearly upsampled Gaussian noise [N, S, S(, C)], unit variance."""
  grid = rng.standard_normal((n, channels or 1, cells + 1, cells + 1),
                             np.float32)
  m = _upsample_matrix(cells)
  out = np.moveaxis(m @ grid @ m.T, 1, -1)  # [N, S, S, C]
  return out if channels else out[..., 0]


def fractal(rng, n, cells=(2, 4, 8, 16), channels=None):
  """Sum of smooth noises, amplitude halving per octave, about unit variance."""
  out = sum(0.5**k * smooth_noise(rng, n, c, channels)
            for k, c in enumerate(cells))
  return out / np.sqrt(sum(0.25**k for k in range(len(cells))))


def soft(x, sharpness=4.0):
  return 1 / (1 + np.exp(-sharpness * x))


def finish(rng, img, noise):
  """Adds pixel noise and quantises to uint8."""
  if noise:
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def contrasting_values(rng, n, min_gap):
  """Two brightness arrays [N] in [0, 1] at least `min_gap` apart."""
  a = uniform(rng, 0, 1, n)
  gap = uniform(rng, min_gap, 1, n)
  up = np.where(a + gap <= 1, True, np.where(a - gap >= 0, False,
                                             a < 0.5))
  b = np.where(up, np.minimum(a + gap, 1), np.maximum(a - gap, 0))
  return a, b
