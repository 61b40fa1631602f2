"""Tests for RSA: RDMs against np.corrcoef, the comparison against scipy's spearmanr, the probe."""

import jax
import numpy as np
import pytest
from scipy import stats

from model_search import scores
from model_search.scores import rsa
from model_search.scores import rsa_probe

# Probe options small enough for a CPU test (resized to 16x16, two stages).
FAST = dict(steps=60, batch_size=32, learning_rate=3e-3, image_size=16,
            widths=(8, 16))
# Agreement with the float64 reference: float32 RDMs and the 1e-6 relative tie
# tolerance move the rank correlation by ~1e-6 at most on random data.
TOL = 1e-5


@pytest.fixture(autouse=True)
def _empty_cache():
  rsa_probe.clear_probe_cache()
  yield
  rsa_probe.clear_probe_cache()


def _numpy_rdm(features):
  """The paper's RDM in float64: 1 - Pearson correlation of the rows.

  Rounded to 12 decimals: float64 BLAS does not give bitwise-equal
  correlations for repeated images, and rounding restores the formula's exact
  ties without reordering anything else.
  """
  return np.round(1.0 - np.corrcoef(np.asarray(features, np.float64)), 12)


def _numpy_rsa(features, probe_features):
  """scipy's Spearman correlation of the two float64 RDMs' upper triangles."""
  a, b = _numpy_rdm(features), _numpy_rdm(probe_features)
  iu = np.triu_indices(a.shape[0], k=1)
  return stats.spearmanr(a[iu], b[iu]).statistic


def _related(seed, m, d, d_probe, noise=1.0, offset=0.0):
  """Two representations of the same m images sharing a latent factor."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(m, 8))
  x = z @ rng.normal(size=(8, d)) + noise * rng.normal(size=(m, d)) + offset
  p = z @ rng.normal(size=(8, d_probe)) + noise * rng.normal(size=(m, d_probe))
  return x.astype(np.float32), p.astype(np.float32)


@pytest.mark.parametrize("m,d,offset,scale", [
    (5, 2, 0.0, 1.0),
    (40, 7, 0.0, 1.0),
    (200, 64, 0.0, 1.0),
    (60, 300, 20.0, 1.0),  # Rows far from zero mean.
    (30, 16, 0.0, 1e6),  # Large values: no overflow in the sums of squares.
    (30, 16, 0.0, 1e-6),
])
def test_rdm_matches_numpy_reference(m, d, offset, scale):
  x, _ = _related(m + d, m, d, 3, offset=offset)
  x = x * np.float32(scale)
  got = np.asarray(rsa.rdm(x))
  expected = _numpy_rdm(x)
  np.testing.assert_allclose(got, expected, atol=2e-5 * (1 + offset), rtol=0)
  np.testing.assert_array_equal(got, got.T)
  np.testing.assert_array_equal(np.diag(got), 0.0)
  assert got.min() >= 0.0 and got.max() <= 2.0


def test_rdm_is_jittable():
  x, _ = _related(1, 20, 6, 3)
  np.testing.assert_allclose(jax.jit(rsa.rdm)(x), rsa.rdm(x), atol=1e-6)
  # Under jit nothing can be raised: a constant row's entries are NaN.
  x[3] = 2.5
  out = np.asarray(jax.jit(rsa.rdm)(x))
  assert np.all(np.isnan(out[3])) and np.all(np.isnan(out[:, 3]))
  assert np.all(np.isfinite(np.delete(np.delete(out, 3, 0), 3, 1)))


@pytest.mark.parametrize("m,d,d_probe,noise", [
    (3, 4, 2, 1.0),
    (12, 5, 9, 0.5),
    (80, 32, 16, 1.0),
    (200, 128, 64, 2.0),  # VTAB's val200: 19,900 pairs.
    (150, 10, 10, 10.0),  # Nearly unrelated.
])
def test_rsa_matches_scipy_reference(m, d, d_probe, noise):
  x, p = _related(m * d, m, d, d_probe, noise=noise)
  expected = _numpy_rsa(x, p)
  assert rsa.rsa(x, p) == pytest.approx(expected, abs=TOL)


def test_rsa_with_ties_matches_scipy():
  # Repeated images give exactly repeated RDM entries: ties in both RDMs.
  x, p = _related(2, 30, 12, 6)
  rows = np.concatenate([np.arange(30), np.arange(10), np.arange(5)])
  x, p = x[rows], p[rows]
  assert rsa.rsa(x, p) == pytest.approx(_numpy_rsa(x, p), abs=TOL)
  # Few distinct values: features are permutations of (1, 2, 3, 4), so the
  # 24 images have few distinct correlations and nearly every entry is tied.
  rng = np.random.default_rng(3)
  x = np.array([rng.permutation(4) + 1 for _ in range(24)], np.float32)
  p = np.array([rng.permutation(4) + 1 for _ in range(24)], np.float32)
  assert rsa.rsa(x, p) == pytest.approx(_numpy_rsa(x, p), abs=TOL)


def test_discrete_features_tie_exactly():
  # Per-image scaled and shifted one-hot features: the RDM is exactly 0 within
  # a class and 4/3 across classes, but float32 rounds the 4/3 entries
  # differently. They must tie, as in exact arithmetic, not be ordered by
  # rounding noise.
  rng = np.random.default_rng(10)
  y = np.arange(40) % 4
  a = rng.uniform(0.5, 2.0, size=(40, 1))
  x = (a * np.eye(4)[y] + rng.normal(size=(40, 1))).astype(np.float32)
  _, p = _related(11, 40, 4, 8)
  expected = _numpy_rsa(x, p)
  assert rsa.rsa(x, p) == pytest.approx(expected, abs=TOL)
  d = np.asarray(rsa.rdm(x))
  assert len(np.unique(d[np.triu_indices(40, k=1)])) > 2  # Rounding differs.
  untied = rsa.rdm_correlation(d, np.asarray(rsa.rdm(p)))
  assert abs(untied - expected) > 1e-3


def test_rdm_correlation_is_spearmanr_exactly():
  rng = np.random.default_rng(4)
  for m, levels in ((6, 2), (20, 3), (50, 1000)):
    a, b = rng.integers(0, levels, size=(2, m, m)).astype(np.float64)
    a[0, 1], a[0, 2] = 0, 1  # Not constant.
    b[0, 1], b[0, 2] = 0, 1
    iu = np.triu_indices(m, k=1)
    expected = stats.spearmanr(a[iu], b[iu]).statistic
    assert rsa.rdm_correlation(a, b) == pytest.approx(expected, abs=1e-12)
  # Only the upper triangle is read.
  a2 = a.copy()
  a2[np.tril_indices(m)] = -7.0
  assert rsa.rdm_correlation(a2, b) == rsa.rdm_correlation(a, b)


def test_ranks_match_rankdata_and_tie_within_tolerance():
  rng = np.random.default_rng(9)
  for v in (rng.normal(size=50), rng.integers(0, 4, 60).astype(float),
            np.array([3.0, 1.0, 2.0, 1.0, 3.0, 3.0])):
    np.testing.assert_array_equal(rsa._ranks(v, 0.0),
                                  stats.rankdata(v, method="average"))
  # Values one float32 ulp apart tie under the tolerance rsa uses.
  v = np.array([1.5, 0.5, np.nextafter(np.float32(1.5), 0), 0.5 + 6e-8, 2.0])
  np.testing.assert_array_equal(rsa._ranks(v, 1e-6), [3.5, 1.5, 3.5, 1.5, 5.0])
  np.testing.assert_array_equal(rsa._ranks(v), [4, 1, 3, 2, 5])
  # Float32 noise around 0 ties under the absolute tolerance.
  v = np.array([2e-14, 0.0, 0.3, 5e-13, 1e-3])
  np.testing.assert_array_equal(rsa._ranks(v, 1e-6, 1e-9), [2, 2, 5, 2, 4])


def test_hand_worked_case():
  # Rows are permutations of (1, 2, 3), centred (-1, 0, 1) etc.; with
  # A=(1,2,3), B=(1,3,2), C=(2,1,3), D=(3,2,1) the correlations are
  # AB = AC = 1/2, AD = -1 and BC = BD = CD = -1/2, so the model's RDM upper
  # triangle (AB, AC, AD, BC, BD, CD) is (0.5, 0.5, 2, 1.5, 1.5, 1.5).
  x = np.array([[1, 2, 3], [1, 3, 2], [2, 1, 3], [3, 2, 1]], np.float32)
  np.testing.assert_allclose(
      np.asarray(rsa.rdm(x))[np.triu_indices(4, k=1)],
      [0.5, 0.5, 2.0, 1.5, 1.5, 1.5], atol=1e-6)
  # The probe sees the images as (A, D, B, C): its triangle is
  # (2, 0.5, 0.5, 1.5, 1.5, 1.5). Average ranks: (1.5, 1.5, 6, 4, 4, 4) and
  # (6, 1.5, 1.5, 4, 4, 4); centred at 3.5 their dot product is
  # -5 + 4 - 5 + 3/4 = -21/4 and each squared norm 15, so rho = -7/20.
  p = x[[0, 3, 1, 2]]
  assert rsa.rsa(x, p) == pytest.approx(-7 / 20, abs=1e-12)
  assert rsa.rsa(x, x) == pytest.approx(1.0, abs=1e-12)


def test_invariances():
  x, p = _related(5, 60, 20, 10)
  base = rsa.rsa(x, p)
  rng = np.random.default_rng(6)
  assert rsa.rsa(x, x) == pytest.approx(1.0, abs=1e-12)
  assert rsa.rsa(p, x) == pytest.approx(base, abs=1e-12)  # Symmetric.
  # Per-image positive scale and shift of either input.
  a = rng.uniform(0.1, 10.0, size=(60, 1)).astype(np.float32)
  b = rng.normal(scale=5.0, size=(60, 1)).astype(np.float32)
  assert rsa.rsa(a * x + b, p) == pytest.approx(base, abs=1e-5)
  assert rsa.rsa(x, a * p - b) == pytest.approx(base, abs=1e-5)
  assert rsa.rsa(a * x + b, x) == pytest.approx(1.0, abs=1e-5)
  # Permuting the images jointly; permuting one input's feature dimensions.
  rows = rng.permutation(60)
  assert rsa.rsa(x[rows], p[rows]) == pytest.approx(base, abs=1e-6)
  assert rsa.rsa(x[:, rng.permutation(20)], p) == pytest.approx(base, abs=TOL)
  # Not invariant: permuting the images of one input only, a negative scale of
  # some images, or a per-dimension shift / scale (Pearson is over the D
  # coordinates of an image, so these change the RDM).
  assert abs(rsa.rsa(x[rows], p)) < 0.2
  flipped = np.where(np.arange(60)[:, None] < 30, -x, x)
  assert abs(rsa.rsa(flipped, p) - base) > 1e-2
  shift = rng.normal(scale=3.0, size=(1, 20)).astype(np.float32)
  assert abs(rsa.rsa(x + shift, p) - base) > 1e-2
  assert rsa.rsa(x + shift, p) == pytest.approx(_numpy_rsa(x + shift, p),
                                                abs=TOL)
  col_scale = rng.uniform(0.1, 10.0, size=(1, 20)).astype(np.float32)
  assert abs(rsa.rsa(x * col_scale, p) - base) > 1e-2


def test_more_related_representations_score_higher():
  values = [rsa.rsa(*_related(7, 100, 24, 12, noise=n)) for n in
            (8.0, 2.0, 0.5, 0.1)]
  assert values == sorted(values)
  assert abs(values[0]) < 0.1 and values[-1] > 0.5
  # Two different linear maps of the latent factor are not the same
  # representation (Pearson is not rotation-invariant); the same map is.
  x, _ = _related(7, 100, 24, 12, noise=0.1)
  assert rsa.rsa(x, x @ np.diag(np.linspace(1, 1.5, 24))) > 0.9


def test_degenerate_inputs():
  x, p = _related(8, 20, 6, 4)
  for row in (4, 11):
    bad = x.copy()
    bad[row] = 3.0
    with pytest.raises(ValueError, match=rf"features row\(s\) \[{row}\]"):
      rsa.rdm(bad)
    with pytest.raises(ValueError, match=rf"probe_features row\(s\) \[{row}\].*"
                       "zero variance"):
      rsa.rsa(x, bad)
  bad = x.copy()
  bad[[2, 5]] = 0.0
  with pytest.raises(ValueError, match=r"row\(s\) \[2, 5\].*zero variance"):
    rsa.rsa(bad, p)
  # A row that is constant up to float32 rounding of its mean.
  bad = x.copy()
  bad[7] = 0.1
  with pytest.raises(ValueError, match=r"\[7\]"):
    rsa.rsa(bad, p)
  with pytest.raises(ValueError, match="20 rows .* probe_features have 19"):
    rsa.rsa(x, p[:-1])
  with pytest.raises(ValueError, match="at least 3"):
    rsa.rsa(x[:2], p[:2])
  with pytest.raises(ValueError, match="at least 2 are needed"):
    rsa.rsa(x[:, :1], p)
  with pytest.raises(ValueError, match="2-D"):
    rsa.rsa(x[:, 0], p)
  with pytest.raises(ValueError, match="NaN or inf"):
    rsa.rsa(np.where(x > 1.0, np.nan, x), p)
  # Every pair equally dissimilar: the Spearman correlation is undefined.
  with pytest.raises(ValueError, match="same dissimilarity"):
    rsa.rsa(np.eye(3, dtype=np.float32), p[:3])
  with pytest.raises(ValueError, match="square"):
    rsa.rdm_correlation(np.zeros((3, 4)), np.zeros((3, 4)))
  with pytest.raises(ValueError, match="same images"):
    rsa.rdm_correlation(np.asarray(rsa.rdm(x)), np.asarray(rsa.rdm(x[:10])))


def _quadrant_task(seed, n, size=32, num_classes=4):
  """uint8 images whose class is the quadrant that is bright, on noise."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % num_classes
  rng.shuffle(y)
  images = rng.integers(0, 100, size=(n, size, size, 3)).astype(np.uint8)
  h = size // 2
  for i, c in enumerate(y):
    r, s = divmod(int(c), 2)
    images[i, r * h:(r + 1) * h, s * h:(s + 1) * h] += 120
  return images, y


def test_probe_trains_and_is_deterministic():
  images, y = _quadrant_task(0, 160)
  probe = rsa_probe.train_probe(images, y, 4, seed=0, **FAST)
  assert probe.accuracy(images, y) > 0.9  # Chance is 0.25.
  val_images, val_y = _quadrant_task(1, 40)
  assert probe.accuracy(val_images, val_y) > 0.8
  assert probe.features(val_images).shape == (40, 16)
  again = rsa_probe.train_probe(images, y, 4, seed=0, **FAST)
  for a, b in zip(jax.tree_util.tree_leaves(probe.params),
                  jax.tree_util.tree_leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  other = rsa_probe.train_probe(images, y, 4, seed=1, **FAST)
  assert not np.allclose(probe.features(val_images), other.features(val_images))


def test_probe_argument_errors():
  images, y = _quadrant_task(5, 8)
  with pytest.raises(ValueError, match="steps must be an int >= 1"):
    rsa_probe.train_probe(images, y, 4, steps=0)
  with pytest.raises(ValueError, match=r"outside 0\.\.3"):
    rsa_probe.train_probe(images, y + 1, 4)
  with pytest.raises(ValueError, match=r"labels must be \[8\]"):
    rsa_probe.train_probe(images, y[:-1], 4)
  with pytest.raises(ValueError, match="widths must be a sequence"):
    rsa_probe.train_probe(images, y, 4, widths=16)
  with pytest.raises(ValueError, match="image_size must be a positive int"):
    rsa_probe.train_probe(images, y, 4, image_size=0)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    rsa_probe.train_probe(images[..., 0], y, 4)
  with pytest.raises(ValueError, match="NaN or inf"):
    rsa_probe.train_probe(np.full(images.shape, np.nan, np.float32), y, 4)


def test_probe_standardises_the_value_range():
  images, y = _quadrant_task(2, 64)
  scaled = images.astype(np.float32) / 127.5 - 1.0  # The [-1, 1] range.
  options = dict(FAST, steps=5)
  a = rsa_probe.train_probe(images, y, 4, **options)
  b = rsa_probe.train_probe(scaled, y, 4, **options)
  np.testing.assert_allclose(b.mean, a.mean / 127.5 - 1.0, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(b.std, a.std / 127.5, rtol=1e-5)
  np.testing.assert_allclose(b.features(scaled), a.features(images),
                             rtol=1e-3, atol=1e-4)


def _inputs(model_features, with_images=True):
  train_images, train_y = _quadrant_task(3, 120, size=40)
  val_images, val_y = _quadrant_task(4, 30, size=40)
  kwargs = dict(train_images=train_images, val_images=val_images)
  return scores.ScoreInputs(
      train_features=model_features(train_images, train_y),
      train_labels=train_y,
      val_features=model_features(val_images, val_y), val_labels=val_y,
      num_classes=4, model_name="toy", task_name="quadrants",
      **(kwargs if with_images else {}))


def test_score_plugin(monkeypatch):
  # A "model" whose features see the quadrant, and one that sees noise.
  quadrant = lambda im, y: np.eye(4)[y] * 3 + np.random.default_rng(0).normal(
      size=(len(y), 4))
  noise = lambda im, y: np.random.default_rng(1).normal(size=(len(y), 6))
  good, bad = _inputs(quadrant), _inputs(noise)
  assert scores.required_fields({"rsa": {}}) == {"train_images", "val_images"}
  options = dict(FAST, seed=3)
  out = scores.compute({"rsa": options}, good)["rsa"]
  assert set(out) == {"score", "probe_train_accuracy", "probe_val_accuracy"}
  assert out["probe_train_accuracy"] > 0.9
  probe = rsa_probe.train_probe(good.train_images, good.train_labels, 4, **options)
  probe_val = probe.features(good.val_images)
  assert out["score"] == rsa.rsa(good.val_features, probe_val)
  # The probe's RDM has near-ties (relu features of similar images) that
  # float32 and float64 may order differently.
  assert out["score"] == pytest.approx(
      _numpy_rsa(good.val_features, probe_val), abs=1e-4)

  # The second model on the same task reuses the cached probe.
  def no_training(*args, **kwargs):
    raise AssertionError("the probe should come from the cache")
  monkeypatch.setattr(rsa_probe, "train_probe", no_training)
  out_bad = scores.compute({"rsa": options}, bad)["rsa"]
  assert out_bad["probe_train_accuracy"] == out["probe_train_accuracy"]
  assert out_bad["score"] < out["score"] - 0.2
  logits = scores.compute({"rsa": dict(options, probe_features="logits")},
                          good)["rsa"]
  assert logits["score"] == pytest.approx(
      rsa.rsa(good.val_features, probe.apply(good.val_images)[1]), abs=1e-6)
  # Precomputed reference features: no probe at all.
  ref = scores.compute({"rsa": {"probe_features": good.val_features}},
                       good)["rsa"]
  assert ref == {"score": pytest.approx(1.0, abs=1e-12)}
  with pytest.raises(ValueError, match="Unknown probe_features 'middle'"):
    rsa.score(good, probe_features="middle")
  with pytest.raises(ValueError, match="needs train_images, val_images"):
    rsa.score(_inputs(quadrant, with_images=False))
