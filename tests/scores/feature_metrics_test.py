"""Tests for the feature statistics against a float64 NumPy reference."""

import numpy as np
import pytest

from model_search import scores
from model_search.scores import feature_metrics as fm
import score_data

KEYS = {"separability", "zero_fraction", "hoyer_sparsity", "mean_variance",
        "top_k_variance_ratio", "effective_rank"}


def _data(seed=0, n=150, d=12, c=4, relu=True):
  rng = np.random.default_rng(seed)
  y = score_data.class_labels(rng, n, c, np.arange(1, c + 1))  # Unbalanced.
  x = (rng.normal(size=(c, d))[y] + rng.normal(size=(n, d))) * np.geomspace(
      3.0, 0.1, d)
  if relu:
    x = np.maximum(x, 0.0)
  return x.astype(np.float32), y


def _numpy_metrics(x, y, zero_tol=1e-3, top_k=10):
  """Reference from the documented definitions, float64."""
  x = x.astype(np.float64)
  n, d = x.shape
  rms = np.sqrt(np.mean(x**2))
  hoyer = []
  for row in x:
    l1, l2 = np.abs(row).sum(), np.sqrt((row**2).sum())
    hoyer.append(1.0 if l2 == 0 or d == 1 else
                 (np.sqrt(d) - l1 / l2) / (np.sqrt(d) - 1))
  cov = np.cov(x, rowvar=False, bias=True).reshape(d, d)
  eig = np.sort(np.clip(np.linalg.eigvalsh(cov), 0, None))[::-1]
  p = eig / eig.sum()
  nz = p[p > 0]
  mu = x.mean(axis=0)
  between = sum(np.sum(y == c) / n * np.sum((x[y == c].mean(0) - mu)**2)
                for c in np.unique(y))
  return {
      "separability": between / np.trace(cov),
      "zero_fraction": np.mean(np.abs(x) <= zero_tol * rms),
      "hoyer_sparsity": np.mean(hoyer),
      "mean_variance": np.mean(np.diag(cov)),
      "top_k_variance_ratio": p[:top_k].sum(),
      "effective_rank": np.exp(-np.sum(nz * np.log(nz))),
  }


@pytest.mark.parametrize("n,d,c,top_k", [(50, 6, 2, 10), (150, 12, 4, 3),
                                         (60, 100, 5, 10), (300, 20, 9, 1)])
def test_matches_numpy_reference(n, d, c, top_k):
  x, y = _data(seed=n + d + c, n=n, d=d, c=c)
  expected = _numpy_metrics(x, y, top_k=top_k)
  got = fm.feature_metrics(x, y, top_k=top_k)
  assert set(got) == KEYS
  for key in KEYS:
    assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key


def test_hand_worked_cases():
  y = np.array([0, 0, 1, 1])
  # 1-D: class means 1 and 11, overall 6. S_B = 25, S_T = (36+16+16+36)/4 = 26.
  x = np.array([[0.0], [2.0], [10.0], [12.0]], np.float32)
  got = fm.feature_metrics(x, y)
  assert got["separability"] == pytest.approx(25 / 26, rel=1e-6)
  assert got["mean_variance"] == pytest.approx(26.0, rel=1e-6)
  assert got["hoyer_sparsity"] == 1.0  # D = 1: one coordinate, max sparse.
  assert got["effective_rank"] == pytest.approx(1.0, rel=1e-6)
  assert got["top_k_variance_ratio"] == pytest.approx(1.0, rel=1e-6)
  assert got["zero_fraction"] == 0.25  # Only the exact 0.
  # Four points on the axes: covariance diag(1/2, 1/2), two equal components.
  x2 = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]], np.float32)
  got2 = fm.feature_metrics(x2, y, top_k=1)
  assert got2["effective_rank"] == pytest.approx(2.0, rel=1e-6)
  assert got2["top_k_variance_ratio"] == pytest.approx(0.5, rel=1e-6)
  assert got2["separability"] == pytest.approx(0.0, abs=1e-7)  # Means at 0.
  # Every row has one non-zero of two coordinates: Hoyer 1, half are zeros.
  assert got2["hoyer_sparsity"] == pytest.approx(1.0, rel=1e-6)
  assert got2["zero_fraction"] == 0.5
  # Equal magnitudes: Hoyer 0.
  x3 = np.array([[1, 1], [2, -2], [3, 3], [-1, 1]], np.float32)
  assert fm.feature_metrics(x3, y)["hoyer_sparsity"] == pytest.approx(
      0.0, abs=1e-6)


def test_invariances():
  x, y = _data(seed=3)
  base = fm.feature_metrics(x, y)
  perm = np.random.default_rng(0).permutation(4)
  rows = np.random.default_rng(1).permutation(len(y))
  for got in (fm.feature_metrics(x, perm[y]),
              fm.feature_metrics(x[rows], y[rows])):
    for key in KEYS:
      assert got[key] == pytest.approx(base[key], rel=1e-5), key
  # Scale: all scale-free except mean_variance, which scales by s^2.
  scaled = fm.feature_metrics(7.0 * x, y)
  for key in KEYS - {"mean_variance"}:
    assert scaled[key] == pytest.approx(base[key], rel=1e-5), key
  assert scaled["mean_variance"] == pytest.approx(49 * base["mean_variance"],
                                                  rel=1e-5)
  # Rotation: the spectrum and separability are invariant; sparsity, which
  # depends on the basis, is not.
  q = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 12)))[0]
  rotated = fm.feature_metrics((x @ q).astype(np.float32), y)
  for key in ("separability", "effective_rank", "top_k_variance_ratio"):
    assert rotated[key] == pytest.approx(base[key], rel=1e-4), key
  assert base["zero_fraction"] > 0.3 and rotated["zero_fraction"] < 0.01
  assert abs(rotated["hoyer_sparsity"] - base["hoyer_sparsity"]) > 0.05


def test_separability_tracks_label_information():
  x, y = _data(seed=4, relu=False)
  shuffled = np.random.default_rng(0).permutation(y)
  assert (fm.feature_metrics(x, y)["separability"] >
          fm.feature_metrics(x, shuffled)["separability"] + 0.2)


def test_degenerate_inputs():
  x, y = _data(seed=5, n=40, d=6, c=3)
  # Constant features: the documented values, no NaN.
  const = fm.feature_metrics(np.full_like(x, 2.0), y)
  assert const["separability"] == 0.0
  assert const["top_k_variance_ratio"] == 1.0
  assert const["effective_rank"] == 0.0
  assert const["mean_variance"] == 0.0
  assert const["hoyer_sparsity"] == pytest.approx(0.0, abs=1e-6)
  # 7.0 is not exactly its float32 mean over 30 rows: rounding residue only.
  const7 = fm.feature_metrics(np.full((30, 6), 7.0, np.float32), y[:30])
  assert (const7["separability"], const7["effective_rank"]) == (0.0, 0.0)
  assert fm.feature_metrics(np.zeros_like(x), y)["zero_fraction"] == 1.0
  assert fm.feature_metrics(np.zeros_like(x), y)["hoyer_sparsity"] == 1.0
  # A one-example class is fine.
  y1 = np.where(y == 2, 1, y)
  y1[0] = 2
  expected = _numpy_metrics(x, y1)
  assert fm.feature_metrics(x, y1)["separability"] == pytest.approx(
      expected["separability"], rel=1e-4)
  with pytest.raises(ValueError, match="at least 2 classes"):
    fm.feature_metrics(x, np.zeros(40, int))
  with pytest.raises(ValueError, match=r"0\.\.C-1"):
    fm.feature_metrics(x, np.where(y == 0, -1, y))
  with pytest.raises(ValueError, match="must be integers"):
    fm.feature_metrics(x, y.astype(float))
  with pytest.raises(ValueError, match="shape"):
    fm.feature_metrics(x, y[:5])
  with pytest.raises(ValueError, match="NaN or inf"):
    fm.feature_metrics(np.where(x > 1, np.nan, x), y)
  with pytest.raises(ValueError, match="top_k must be"):
    fm.feature_metrics(x, y, top_k=0)
  with pytest.raises(ValueError, match="zero_tol must be"):
    fm.feature_metrics(x, y, zero_tol=-1.0)


def test_score_plugin():
  x, y = _data(seed=6)
  xv, yv = _data(seed=7, n=20)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=4)
  result = scores.compute({"feature_metrics": {"top_k": 3}}, inputs)[
      "feature_metrics"]
  assert set(result) == KEYS | {"score"}
  assert result["score"] == result["separability"]
  assert result["score"] == pytest.approx(
      fm.feature_metrics(x, y, top_k=3)["separability"], rel=1e-6)
