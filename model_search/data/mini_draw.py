"""Drawing code of the offline mini suite: NumPy renderers of digits, shapes, textures, aerial
land use, cells, scenes of objects and sprites (32x32x3 uint8, batched, from a NumPy RNG).

`model_search.data.mini` composes these into the suite's datasets.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

IMAGE_SIZE = 32

S = IMAGE_SIZE
# Pixel-centre coordinates, [S, S]: _XX[i, j] = j + 0.5, _YY[i, j] = i + 0.5.
_YY, _XX = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5

# ----------------------------------------------------------------------------
# Drawing primitives. Every array has a leading batch axis N; "sdf" values are
# signed distances in shape units (negative inside), turned into anti-aliased
# coverage by _coverage.


def uniform(rng, lo, hi, n):
  return rng.uniform(lo, hi, n).astype(np.float32)


def _frame(cx, cy, angle, scale):
  """Pixel coordinates (u, v) [N, S, S] in a centred, rotated, scaled frame."""
  dx = _XX - np.asarray(cx, np.float32)[:, None, None]
  dy = _YY - np.asarray(cy, np.float32)[:, None, None]
  c = np.cos(angle).astype(np.float32)[:, None, None]
  s = np.sin(angle).astype(np.float32)[:, None, None]
  scale = np.asarray(scale, np.float32)[:, None, None]
  return (c * dx + s * dy) / scale, (-s * dx + c * dy) / scale


def _coverage(sdf, scale):
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


def _shape_alpha(kinds, cx, cy, angle, scale):
  """Coverage [N, S, S] of shapes `kinds` [N] (names in _SHAPES)."""
  kinds = np.asarray(kinds)
  u, v = _frame(cx, cy, angle, scale)
  sdf = np.empty_like(u)
  for kind in np.unique(kinds):
    m = kinds == kind
    sdf[m] = _SHAPES[kind](u[m], v[m])
  return _coverage(sdf, scale)


def _hsv(h, s, v):
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


def _color(rng, n, h, s, v):
  """Colours [N, 3]; hue, saturation and value uniform in (lo, hi) ranges."""
  return _hsv(uniform(rng, *h, n), uniform(rng, *s, n), uniform(rng, *v, n))


def _fill(color):
  """An image [N, S, S, 3] filled with colours [N, 3]."""
  return np.repeat(np.repeat(color[:, None, None, :], S, 1), S, 2)


def _paint(img, alpha, color):
  """Composites colours [N, 3] (or images) onto img with coverage [N, S, S]."""
  if color.ndim == 2:
    color = color[:, None, None, :]
  img += alpha[..., None] * (color - img)
  return img


def _paint_some(img, present, alpha_fn, color):
  """Paints alpha_fn(idx) in colours color[idx] on the images idx where present.

  Rendering only the present objects keeps scenes with many optional object
  slots cheap.
  """
  idx = np.flatnonzero(present)
  if len(idx):
    img[idx] = _paint(img[idx], alpha_fn(idx), color[idx])
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


def _smooth_noise(rng, n, cells, channels=None):
  """Bilinearly upsampled Gaussian noise [N, S, S(, C)], unit variance."""
  grid = rng.standard_normal((n, channels or 1, cells + 1, cells + 1),
                             np.float32)
  m = _upsample_matrix(cells)
  out = np.moveaxis(m @ grid @ m.T, 1, -1)  # [N, S, S, C]
  return out if channels else out[..., 0]


def _fractal(rng, n, cells=(2, 4, 8, 16), channels=None):
  """Sum of smooth noises, amplitude halving per octave, about unit variance."""
  out = sum(0.5**k * _smooth_noise(rng, n, c, channels)
            for k, c in enumerate(cells))
  return out / np.sqrt(sum(0.25**k for k in range(len(cells))))


def _soft(x, sharpness=4.0):
  return 1 / (1 + np.exp(-sharpness * x))


def _finish(rng, img, noise):
  """Adds pixel noise and quantises to uint8."""
  if noise:
    img = img + rng.normal(0, noise, img.shape).astype(np.float32)
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def _contrasting_values(rng, n, min_gap):
  """Two brightness arrays [N] in [0, 1] at least `min_gap` apart."""
  a = uniform(rng, 0, 1, n)
  gap = uniform(rng, min_gap, 1, n)
  up = np.where(a + gap <= 1, True, np.where(a - gap >= 0, False,
                                             a < 0.5))
  b = np.where(up, np.minimum(a + gap, 1), np.maximum(a - gap, 0))
  return a, b


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
  u, v = _frame(cx, cy, angle, scale)
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
  scale = uniform(rng, 2.4, 3.2, n)
  angle = uniform(rng, -0.2, 0.2, n)
  cx = S / 2 + uniform(rng, -1, 1, n) * (15 - 4 * scale)
  cy = S / 2 + uniform(rng, -1, 1, n) * (15 - 4.2 * scale)
  a, b = _contrasting_values(rng, n, 0.35)
  light = rng.random(n) < 0.8  # Mostly light digits on darker plates.
  v_fg = np.where(light, np.maximum(a, b), np.minimum(a, b))
  v_bg = np.where(light, np.minimum(a, b), np.maximum(a, b))
  bg = _hsv(uniform(rng, 0, 1, n), uniform(rng, 0, 0.8, n), v_bg)
  fg = _hsv(uniform(rng, 0, 1, n), uniform(rng, 0, 1, n), v_fg)
  img = _fill(bg)
  img += 0.06 * _smooth_noise(rng, n, 3)[..., None]
  # Neighbouring house-number digits, cut by the image border.
  for side in (-1, 1):
    other = _sample_digits(rng, rng.integers(0, 10, n), part)
    shift = side * scale * 7.5
    _paint_some(img, rng.random(n) < 0.5, lambda i: _ink(_warp(
        other[i], cx[i] + shift[i], cy[i], angle[i], scale[i])), fg)
  glyph = _warp(_sample_digits(rng, labels, part), cx, cy, angle, scale)
  _paint(img, _ink(glyph), fg)
  return _finish(rng, img, 0.04)


def digits_paper(rng, labels, part):
  """Upstream digits: ink on paper or chalk on a board; larger rotations."""
  n = len(labels)
  scale = uniform(rng, 1.8, 3.5, n)
  angle = uniform(rng, -0.45, 0.45, n)
  cx = S / 2 + uniform(rng, -1, 1, n) * np.maximum(14 - 3.5 * scale, 1)
  cy = S / 2 + uniform(rng, -1, 1, n) * np.maximum(14 - 3.5 * scale, 1)
  board = rng.random(n) < 0.4
  paper = _color(rng, n, (0.08, 0.16), (0, 0.2), (0.75, 1))
  ink = _color(rng, n, (0.55, 0.7), (0, 0.7), (0, 0.35))
  slate = _color(rng, n, (0.3, 0.5), (0.1, 0.5), (0.1, 0.3))
  chalk = _color(rng, n, (0, 1), (0, 0.15), (0.8, 1))
  img = _fill(np.where(board[:, None], slate, paper))
  img += 0.05 * _fractal(rng, n)[..., None]
  glyph = _warp(_sample_digits(rng, labels, part), cx, cy, angle, scale)
  _paint(img, _ink(glyph), np.where(board[:, None], chalk, ink))
  return _finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Shapes.

_CLUTTER = ("circle", "square", "triangle", "diamond")


def shapes_clutter(rng, kinds):
  """Downstream: a bright, saturated object over dim coloured clutter."""
  n = len(kinds)
  img = _fill(_color(rng, n, (0, 1), (0.2, 0.7), (0.15, 0.45)))
  img += 0.1 * _smooth_noise(rng, n, 4, 3)
  for _ in range(6):
    alpha = _shape_alpha(rng.choice(_CLUTTER, n), uniform(rng, 0, S, n),
                         uniform(rng, 0, S, n), uniform(rng, 0, 2 * np.pi, n),
                         uniform(rng, 1.5, 4, n))
    color = _color(rng, n, (0, 1), (0.2, 0.8), (0.1, 0.55))
    _paint(img, 0.7 * alpha, color)
  scale = uniform(rng, 8, 12.5, n)
  alpha = _shape_alpha(kinds, S / 2 + uniform(rng, -3.5, 3.5, n),
                       S / 2 + uniform(rng, -3.5, 3.5, n),
                       uniform(rng, 0, 2 * np.pi, n), scale)
  _paint(img, alpha, _color(rng, n, (0, 1), (0.5, 1), (0.65, 1)))
  return _finish(rng, img, 0.03)


def shapes_plain(rng, kinds):
  """Upstream: pastel or dark objects on a plain two-colour gradient."""
  n = len(kinds)
  top = _color(rng, n, (0, 1), (0, 0.25), (0.3, 0.9))
  bottom = _color(rng, n, (0, 1), (0, 0.25), (0.3, 0.9))
  ramp = (_YY / S)[None, :, :, None]
  img = top[:, None, None] * (1 - ramp) + bottom[:, None, None] * ramp
  v_bg = img.mean(axis=(1, 2, 3))
  v_obj = np.where(v_bg > 0.55, uniform(rng, 0.05, 0.3, n), uniform(rng, 0.8, 1, n))
  scale = uniform(rng, 6, 13, n)
  lim = 16 - scale * 0.9
  alpha = _shape_alpha(kinds, S / 2 + uniform(rng, -1, 1, n) * lim,
                       S / 2 + uniform(rng, -1, 1, n) * lim,
                       uniform(rng, 0, 2 * np.pi, n), scale)
  _paint(img, alpha, _hsv(uniform(rng, 0, 1, n), uniform(rng, 0.15, 0.45, n), v_obj))
  return _finish(rng, img, 0.015)


# ----------------------------------------------------------------------------
# Textures: a pattern p in [0, 1] per pixel, coloured between two colours.


def _random_frame(rng, n, angle=None):
  angle = uniform(rng, 0, np.pi, n) if angle is None else angle
  return _frame(uniform(rng, 0, S, n), uniform(rng, 0, S, n), angle, np.ones(n))


def _per(x):
  return np.asarray(x, np.float32)[:, None, None]


def _lines(t, width):
  """Coverage of lines of `width` (in periods) at integer values of t."""
  return np.clip((width / 2 - np.abs(t - np.round(t))) * 8, 0, 1)


def _tex_stripes(rng, n):
  u, _ = _random_frame(rng, n)
  return _soft(np.sin(2 * np.pi * _per(uniform(rng, 0.1, 0.28, n)) * u))


def _tex_checker(rng, n):
  u, v = _random_frame(rng, n)
  f = _per(uniform(rng, 0.06, 0.14, n))
  return _soft(3 * np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * v))


def _tex_dots(rng, n):
  u, v = _random_frame(rng, n)
  f = _per(uniform(rng, 0.1, 0.2, n))
  du, dv = u * f - np.round(u * f), v * f - np.round(v * f)
  radius = _per(uniform(rng, 0.18, 0.32, n))
  return np.clip((radius - np.hypot(du, dv)) / f + 0.5, 0, 1)


def _tex_waves(rng, n):
  u, v = _random_frame(rng, n)
  amplitude, f_bend = _per(uniform(rng, 1.5, 3, n)), _per(uniform(rng, 0.03, 0.08, n))
  bend = amplitude * np.sin(2 * np.pi * f_bend * v)
  return _soft(np.sin(2 * np.pi * _per(uniform(rng, 0.1, 0.22, n)) * u + bend))


def _tex_grid(rng, n):
  u, v = _random_frame(rng, n)
  f, w = _per(uniform(rng, 0.1, 0.18, n)), _per(uniform(rng, 0.15, 0.3, n))
  return np.maximum(_lines(u * f, w), _lines(v * f, w))


def _tex_zigzag(rng, n):
  u, v = _random_frame(rng, n)
  tri = 2 * np.abs(v * _per(uniform(rng, 0.06, 0.12, n)) % 1 - 0.5)
  return _soft(np.sin(2 * np.pi * _per(uniform(rng, 0.1, 0.2, n)) *
                      (u + _per(uniform(rng, 3, 6, n)) * tri)))


def _tex_blotches(rng, n):
  mix = _per(uniform(rng, 0, 1, n))  # Blotch size varies per image.
  noise = mix * _smooth_noise(rng, n, 3) + (1 - mix) * _smooth_noise(rng, n, 5)
  return _soft(3 * noise)


def _tex_rings(rng, n):
  rho = np.hypot(*_frame(uniform(rng, 0, S, n), uniform(rng, 0, S, n), np.zeros(n),
                         np.ones(n)))
  return _soft(np.sin(2 * np.pi * _per(uniform(rng, 0.1, 0.22, n)) * rho))


def _tex_plaid(rng, n):
  u, v = _random_frame(rng, n)
  a = np.sin(2 * np.pi * _per(uniform(rng, 0.05, 0.12, n)) * u)
  b = np.sin(2 * np.pi * _per(uniform(rng, 0.05, 0.12, n)) * v)
  return np.clip(0.5 + 0.25 * (np.sign(a) + np.sign(b)) + 0.1 * a * b, 0, 1)


def _tex_crosshatch(rng, n):
  u, v = _random_frame(rng, n, angle=np.pi / 4 + uniform(rng, -0.2, 0.2, n))
  f, w = _per(uniform(rng, 0.12, 0.25, n)), _per(uniform(rng, 0.2, 0.3, n))
  return np.maximum(_lines(u * f, w), _lines(v * f, w))


def _tex_spiral(rng, n):
  u, v = _frame(uniform(rng, 8, 24, n), uniform(rng, 8, 24, n), np.zeros(n), np.ones(n))
  arms = _per(rng.integers(1, 4, n))
  return _soft(np.sin(arms * np.arctan2(v, u) +
                      2 * np.pi * _per(uniform(rng, 0.1, 0.2, n)) * np.hypot(u, v)))


def _tex_bricks(rng, n):
  u, v = _random_frame(rng, n, angle=uniform(rng, -0.3, 0.3, n))
  height = _per(uniform(rng, 3.5, 6, n))
  row = np.floor(v / height)
  brick = (u / (2 * height) + 0.5 * (row % 2))
  return 1 - np.maximum(_lines(v / height, 0.25), _lines(brick, 0.12))


def _tex_cellular(rng, n):
  pts = rng.uniform(-4, S + 4, (n, 12, 2)).astype(np.float32)
  d = np.hypot(_XX[None, None] - pts[..., 0, None, None],
               _YY[None, None] - pts[..., 1, None, None])
  d.sort(axis=1)
  return np.clip((d[:, 1] - d[:, 0]) / 2.5, 0, 1)


def _tex_marble(rng, n):
  u, _ = _random_frame(rng, n)
  phase = 2 * np.pi * _per(uniform(rng, 0.03, 0.08, n)) * u + 3 * _fractal(rng, n)
  return 0.5 + 0.5 * np.sin(phase)


def _tex_speckle(rng, n):
  density = _per(uniform(rng, 0.08, 0.3, n))
  return (rng.random((n, S, S)) < density).astype(np.float32)


def _tex_sawtooth(rng, n):
  u, _ = _random_frame(rng, n)
  return (u * _per(uniform(rng, 0.08, 0.2, n))) % 1


def _tex_fibres(rng, n):
  base = uniform(rng, 0, np.pi, n)
  total = 0
  for _ in range(6):
    u, _ = _random_frame(rng, n, angle=base + uniform(rng, -0.15, 0.15, n))
    total = total + np.sin(2 * np.pi * _per(uniform(rng, 0.1, 0.35, n)) * u)
  return np.clip(0.5 + total / 5, 0, 1)


def _tex_weave(rng, n):
  u, v = _random_frame(rng, n)
  cell = _per(uniform(rng, 5, 9, n))
  parity = (np.floor(u / cell) + np.floor(v / cell)) % 2
  f = 3 / cell
  return np.where(parity > 0, _soft(np.sin(2 * np.pi * f * u)),
                  _soft(np.sin(2 * np.pi * f * v)))


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
  hue = np.where(own, labels / len(classes) + uniform(rng, -0.06, 0.06, n),
                 uniform(rng, 0, 1, n))
  v0, v1 = _contrasting_values(rng, n, 0.3)
  c0 = _hsv(hue, uniform(rng, 0.2, 0.9, n), v0)
  c1 = _hsv(hue + uniform(rng, -0.15, 0.15, n), uniform(rng, 0.2, 0.9, n), v1)
  p = _patterns(rng, kinds)[..., None]
  return _finish(rng, c0[:, None, None] * (1 - p) + c1[:, None, None] * p, 0.03)


def textures_tonal(rng, kinds):
  """Upstream textures: one hue, light/dark tones, a little shading."""
  n = len(kinds)
  hue, sat = uniform(rng, 0, 1, n), uniform(rng, 0, 0.5, n)
  v0, v1 = _contrasting_values(rng, n, 0.25)
  c0, c1 = _hsv(hue, sat, v0), _hsv(hue, sat, v1)
  p = _patterns(rng, kinds)[..., None]
  img = c0[:, None, None] * (1 - p) + c1[:, None, None] * p
  img *= 1 + 0.15 * _smooth_noise(rng, n, 2)[..., None]
  return _finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Aerial land use (EuroSAT-like).


def _land_forest(rng, n):
  base = _color(rng, n, (0.22, 0.38), (0.35, 0.8), (0.18, 0.45))
  crowns = _fractal(rng, n, cells=(8, 16, 31))
  return base[:, None, None] * (1 + 0.35 * crowns[..., None])


def _land_water(rng, n):
  base = _color(rng, n, (0.48, 0.66), (0.3, 0.85), (0.15, 0.55))
  img = _fill(base) * (1 + 0.08 * _smooth_noise(rng, n, 3)[..., None])
  u, _ = _random_frame(rng, n)
  img *= 1 + 0.04 * np.sin(2 * np.pi * 0.25 * u)[..., None]
  shore = rng.random(n) < 0.4
  land = _soft(3 * (_smooth_noise(rng, n, 2) - 1.2)) * shore[:, None, None]
  land_color = _color(rng, n, (0.1, 0.3), (0.3, 0.6), (0.35, 0.7))
  return _paint(img, land, land_color)


# Crop colours (green, yellow, brown): (h lo, h hi, s lo, s hi, v lo, v hi).
_CROPS = ((0.22, 0.33, 0.4, 0.75, 0.35, 0.65),
          (0.11, 0.16, 0.45, 0.8, 0.6, 0.85),
          (0.05, 0.1, 0.35, 0.6, 0.3, 0.5))


def _crop_colors(rng, n):
  kind = rng.integers(0, len(_CROPS), n)
  lo_hi = np.asarray(_CROPS, np.float32)[kind]
  return _hsv(*(rng.uniform(lo_hi[:, 2 * i], lo_hi[:, 2 * i + 1])
                for i in range(3)))


def _land_farmland(rng, n):
  u, v = _random_frame(rng, n)
  a, b = _per(uniform(rng, -10, 10, n)), _per(uniform(rng, -10, 10, n))
  parcel = (u > a).astype(int) + 2 * (v > b)
  colors = np.stack([_crop_colors(rng, n) for _ in range(4)], 1)  # [N, 4, 3]
  img = np.take_along_axis(colors[:, None, None], parcel[..., None, None], 3)
  img = img[:, :, :, 0]
  rows = (np.where(parcel % 2 == 0, u, v) * 2 * np.pi *
          _per(uniform(rng, 0.25, 0.45, n)))
  return img * (1 + 0.12 * np.sin(rows)[..., None])


def _land_residential(rng, n):
  ground = _color(rng, n, (0.15, 0.35), (0.1, 0.5), (0.35, 0.6))
  img = _fill(ground) * (1 + 0.1 * _smooth_noise(rng, n, 6)[..., None])
  u, v = _random_frame(rng, n, angle=uniform(rng, -0.4, 0.4, n))
  pitch = _per(uniform(rng, 6, 9, n))
  street = np.maximum(_lines(u / pitch, 0.2), _lines(v / pitch, 0.2))
  _paint(img, street, _hsv(np.zeros(n), np.zeros(n), uniform(rng, 0.45, 0.7, n)))
  du = u / pitch - np.floor(u / pitch) - 0.5
  dv = v / pitch - np.floor(v / pitch) - 0.5
  cell = (np.floor(u / pitch) * 7 + np.floor(v / pitch) * 13).astype(int) % 16
  built = np.take_along_axis(rng.random((n, 16)) < 0.8, cell.reshape(n, -1), 1)
  house = np.clip((0.28 - np.maximum(np.abs(du), np.abs(dv))) * 8 * pitch, 0, 1)
  roof = _color(rng, n, (-0.03, 0.08), (0.2, 0.7), (0.35, 0.8))
  return _paint(img, house * built.reshape(n, S, S), roof)


def _land_road(rng, n):
  kind = rng.random(n) < 0.5
  ground = np.where(kind[:, None], _crop_colors(rng, n), _hsv(
      uniform(rng, 0.06, 0.14, n), uniform(rng, 0.25, 0.5, n), uniform(rng, 0.45, 0.8, n)))
  img = _fill(ground) * (1 + 0.15 * _fractal(rng, n)[..., None])
  u, v = _frame(uniform(rng, 8, 24, n), uniform(rng, 8, 24, n), uniform(rng, 0, np.pi, n),
                np.ones(n))
  width = _per(uniform(rng, 2.5, 5, n))
  road = np.clip(width / 2 - np.abs(u) + 0.5, 0, 1)
  _paint(img, road, _hsv(np.zeros(n), np.zeros(n), uniform(rng, 0.3, 0.6, n)))
  dashes = np.clip(0.6 - np.abs(u) * 2, 0, 1) * (np.sin(v * 1.2) > 0)
  return _paint(img, 0.8 * dashes, np.ones((n, 3), np.float32))


def _land_barren(rng, n):
  base = _color(rng, n, (0.05, 0.14), (0.2, 0.55), (0.45, 0.85))
  u, _ = _random_frame(rng, n)
  f = _per(uniform(rng, 0.06, 0.15, n))
  dunes = 0.06 * np.sin(2 * np.pi * f * u + 2 * _fractal(rng, n))
  shade = 1 + 0.15 * _fractal(rng, n) + dunes
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
  haze = uniform(rng, 0, 0.3, n)[:, None, None, None]
  img = img * (1 - haze) + haze * 0.7
  img *= uniform(rng, 0.85, 1.15, n)[:, None, None, None]
  if false_color:
    img = img[..., [1, 0, 2]]
  return _finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Blobs: cell nuclei (H&E, downstream) and fluorescent blobs (upstream).


_COS1, _SIN1 = float(np.cos(1.0)), float(np.sin(1.0))


def _blob_alpha(cx, cy, radius, aspect, angle, lobes2, lobes3, hollow,
                soft=1.0):
  """Coverage of ellipses with 2- and 3-lobed radius modulation, or rings."""
  u, v = _frame(cx, cy, angle, radius)
  q = np.hypot(u, v / _per(aspect))
  rho = np.maximum(np.hypot(u, v), 1e-6)
  cu, sv = u / rho, v / rho  # cos and sin of the polar angle.
  cos2 = cu * cu - sv * sv
  cos3_plus_1 = ((cu * cu - 3 * sv * sv) * cu * _COS1 -
                 (3 * cu * cu - sv * sv) * sv * _SIN1)
  r = 1 + _per(lobes2) * cos2 + _per(lobes3) * cos3_plus_1
  sdf = np.where(_per(hollow) > 0, np.abs(q - 0.72 * r) - 0.28 * r, q - r)
  return _coverage(sdf * _per(aspect) / soft, radius)


def render_cells(rng, labels):
  """PCam-like H&E patches; label 1 iff a tumour nucleus lies in the centre."""
  n = len(labels)
  stain = uniform(rng, -0.04, 0.04, n)
  img = _fill(_hsv(0.92 + stain, uniform(rng, 0.15, 0.35, n),
                   uniform(rng, 0.78, 0.95, n)))
  img *= 1 + 0.06 * _fractal(rng, n, cells=(4, 8, 16))[..., None]
  zeros = np.zeros(n, np.float32)
  for _ in range(14):  # Normal nuclei, anywhere.
    params = (uniform(rng, 0, S, n), uniform(rng, 0, S, n), uniform(rng, 1.3, 2.3, n),
              uniform(rng, 0.65, 1, n), uniform(rng, 0, np.pi, n), uniform(rng, 0, 0.1, n),
              zeros, zeros)
    color = _hsv(0.76 + stain, uniform(rng, 0.3, 0.6, n), uniform(rng, 0.4, 0.65, n))
    _paint_some(img, rng.random(n) < 0.75,
                lambda i: 0.85 * _blob_alpha(*(a[i] for a in params)), color)
  for slot in range(4):  # Tumour nuclei: slot 0 central for label 1.
    cx, cy = uniform(rng, 1, S - 1, n), uniform(rng, 1, S - 1, n)
    central = (np.abs(cx - 16) < 6) & (np.abs(cy - 16) < 6)
    # Outside the centre unless the label says otherwise.
    push = np.where(cx < 16, -9.0, 9.0).astype(np.float32)
    cx = np.where(central & (labels == 0), cx + push, cx)
    if slot == 0:
      cx = np.where(labels == 1, uniform(rng, 11, 21, n), cx)
      cy = np.where(labels == 1, uniform(rng, 11, 21, n), cy)
      present = (labels == 1) | (rng.random(n) < 0.3)
    else:
      present = rng.random(n) < 0.3
    params = (cx, cy, uniform(rng, 2.6, 4, n), uniform(rng, 0.6, 1, n),
              uniform(rng, 0, np.pi, n), uniform(rng, 0.08, 0.22, n),
              uniform(rng, 0.05, 0.2, n), zeros)
    color = _hsv(0.78 + stain, uniform(rng, 0.45, 0.8, n), uniform(rng, 0.2, 0.42, n))
    _paint_some(img, present,
                lambda i: 0.95 * _blob_alpha(*(a[i] for a in params)), color)
  return _finish(rng, img, 0.03)


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
  img = _fill(_color(rng, n, (0, 1), (0, 1), (0, 0.12)))
  img += 0.03 * _fractal(rng, n)[..., None]
  hue = np.asarray([0.33, 0.0, 0.6, 0.15], np.float32)[rng.integers(0, 4, n)]
  centre = rng.uniform(9, 23, (n, 2)).astype(np.float32)
  for k in range(_MAX_BLOBS):
    cx, cy = uniform(rng, 3, S - 3, n), uniform(rng, 3, S - 3, n)
    cx = np.where(p[:, 9] > 0, centre[:, 0] + rng.normal(0, 3, n), cx)
    cy = np.where(p[:, 9] > 0, centre[:, 1] + rng.normal(0, 3, n), cy)
    params = (cx, cy, rng.uniform(p[:, 2], p[:, 3]),
              rng.uniform(p[:, 4], p[:, 5]), uniform(rng, 0, np.pi, n),
              p[:, 6], p[:, 7], p[:, 8])
    color = _hsv(hue + uniform(rng, -0.04, 0.04, n), uniform(rng, 0.4, 0.9, n),
                 uniform(rng, 0.6, 1, n))
    _paint_some(img, k < count,
                lambda i: _blob_alpha(*(a[i] for a in params), soft=2.0), color)
  return _finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Scenes of several objects (CLEVR-like downstream, flat 2D upstream).

_CLEVR_COLORS = np.asarray(
    [(87, 87, 87), (173, 35, 35), (42, 75, 215), (29, 105, 20), (129, 74, 25),
     (129, 38, 192), (41, 208, 208), (255, 238, 51)], np.float32) / 255
_SCENE_SHAPES = ("circle", "square", "hexagon")


def _floor(rng, n):
  """A grey floor lit from the top."""
  level = uniform(rng, 0.35, 0.6, n)[:, None, None, None]
  ramp = 1.15 - 0.3 * (_YY / S)[None, :, :, None]
  return np.broadcast_to(level * ramp, (n, S, S, 3)).copy()


def _solid(rng, img, cx, cy, radius, present=None):
  """Paints a shaded CLEVR-like object with a shadow; returns img."""
  n = len(cx)
  kinds = rng.choice(_SCENE_SHAPES, n)
  angle = uniform(rng, 0, np.pi / 2, n)
  present = np.ones(n, bool) if present is None else present
  color = _CLEVR_COLORS[rng.integers(0, len(_CLEVR_COLORS), n)]
  color = color * uniform(rng, 0.85, 1.1, n)[:, None]
  _paint_some(img, present, lambda i: 0.35 * _shape_alpha(
      kinds[i], cx[i] + 0.25 * radius[i], cy[i] + 0.3 * radius[i], angle[i],
      radius[i]), np.zeros((n, 3), np.float32))

  def shaded(i):  # Lit from the top left.
    u, v = _frame(cx[i], cy[i], np.zeros(len(i)), radius[i])
    shade = np.clip(1.15 - 0.35 * np.hypot(u + 0.4, v + 0.4), 0.5, 1.2)
    return color[i, None, None, :] * shade[..., None]

  idx = np.flatnonzero(present)
  if len(idx):
    alpha = _shape_alpha(kinds[idx], cx[idx], cy[idx], angle[idx], radius[idx])
    img[idx] = _paint(img[idx], alpha, shaded(idx))
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
    radius = uniform(rng, 1.9, 2.8, n) * (0.8 + 0.4 * cy / S)
    _solid(rng, img, cx, cy, radius, present=k < count)
  return _finish(rng, img, 0.02)


def count_flat(rng, counts):
  """Upstream counting: flat neon shapes on a dark textured background."""
  n = len(counts)
  img = _fill(_color(rng, n, (0, 1), (0.3, 0.8), (0.05, 0.25)))
  img *= 1 + 0.4 * _fractal(rng, n)[..., None]
  pos = _grid_positions(rng, n, int(counts.max()), 7.5).astype(np.float32)
  kinds = rng.choice(("star", "triangle", "diamond", "cross"), n)
  for k in range(pos.shape[1]):
    params = (kinds, pos[:, k, 0], pos[:, k, 1], uniform(rng, 0, np.pi, n),
              uniform(rng, 2.2, 3.5, n))
    color = _color(rng, n, (0, 1), (0.7, 1), (0.8, 1))
    _paint_some(img, k < counts,
                lambda i: _shape_alpha(*(a[i] for a in params)), color)
  return _finish(rng, img, 0.02)


LARGEST_BINS = 6


def largest_clevr(rng, labels):
  """CLEVR-like: 3..6 objects; label = size bin of the largest (front) one."""
  n = len(labels)
  img = _floor(rng, n)
  r_max = 2.5 + labels + uniform(rng, 0, 1, n)  # Bins [2.5, 3.5), ..., [7.5, 8.5).
  others = rng.integers(2, 6, n)
  for k in range(5):
    radius = np.maximum(uniform(rng, 0.5, 1, n) * np.minimum(0.75 * r_max, 3.5), 1.2)
    _solid(rng, img, uniform(rng, 3, S - 3, n), uniform(rng, 3, S - 3, n), radius,
           present=k < others)
  cx = rng.uniform(r_max, S - r_max).astype(np.float32)
  cy = rng.uniform(r_max, S - r_max).astype(np.float32)
  _solid(rng, img, cx, cy, r_max)
  return _finish(rng, img, 0.02)


# ----------------------------------------------------------------------------
# Sprites (dSprites-like downstream, coloured upstream).

SPRITE_BINS = 8
SPRITE_LO, SPRITE_HI = 6.0, 26.0


def _sprites_binary(kinds, cx, cy, angle, scale):
  """White sprites on black, like dSprites."""
  alpha = _shape_alpha(kinds, cx, cy, angle, scale)
  return np.round(np.repeat(alpha[..., None], 3, -1) * 255).astype(np.uint8)


def sprite_x(rng, labels):
  n = len(labels)
  width = (SPRITE_HI - SPRITE_LO) / SPRITE_BINS
  cx = SPRITE_LO + width * (labels + uniform(rng, 0, 1, n))
  return _sprites_binary(rng.choice(("square", "ellipse", "heart"), n), cx,
                         uniform(rng, SPRITE_LO, SPRITE_HI, n),
                         uniform(rng, 0, 2 * np.pi, n), uniform(rng, 3, 6, n))


def sprite_ori(rng, labels):
  n = len(labels)
  # A heart has no rotational symmetry: every angle in [0, 2 pi) is distinct.
  angle = 2 * np.pi / SPRITE_BINS * (labels + uniform(rng, 0, 1, n))
  return _sprites_binary(np.full(n, "heart"), uniform(rng, 12, 20, n),
                         uniform(rng, 12, 20, n), angle, uniform(rng, 5, 7, n))


def sprites_colored(rng, kinds, cy, angle):
  """Coloured sprites on a dark noisy background."""
  n = len(kinds)
  img = _fill(_color(rng, n, (0, 1), (0, 0.3), (0.05, 0.25)))
  img += 0.04 * _smooth_noise(rng, n, 8)[..., None]
  alpha = _shape_alpha(kinds, uniform(rng, SPRITE_LO, SPRITE_HI, n), cy, angle,
                       uniform(rng, 3, 6, n))
  _paint(img, alpha, _color(rng, n, (0, 1), (0.5, 1), (0.7, 1)))
  return _finish(rng, img, 0.02)


def up_sprites(rng, labels):
  """Label = 4 y-position bins x 4 orientation quadrants."""
  n = len(labels)
  ybin, quadrant = labels // 4, labels % 4
  cy = SPRITE_LO + (SPRITE_HI - SPRITE_LO) / 4 * (ybin + uniform(rng, 0, 1, n))
  angle = np.pi / 2 * (quadrant + uniform(rng, 0, 1, n))
  return sprites_colored(rng, rng.choice(("arrow", "l_shape"), n), cy, angle)


