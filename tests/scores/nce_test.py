"""Tests for NCE: NumPy and scipy.stats.entropy references, a hand table, invariances."""

import numpy as np
import pytest
from scipy import stats

from model_search import scores
from model_search.scores import leep
from model_search.scores import nce


def _random_labels(seed=0, n=200, num_source=20, c=5, balanced=True,
                   noise=0.5):
  """Source labels z and target labels y that depend on z, with noise."""
  rng = np.random.default_rng(seed)
  prior = (np.ones(num_source) / num_source if balanced else
           rng.dirichlet(0.3 * np.ones(num_source)))
  z = rng.choice(num_source, size=n, p=prior)
  mapping = rng.integers(0, c, num_source)
  y = np.where(rng.random(n) < noise, rng.integers(0, c, n), mapping[z])
  return z, y


def _numpy_nce(z, y):
  """Tran et al.: sum_{y,z} P(y, z) log(P(y, z) / P(z)), in float64 loops."""
  n = len(y)
  joint = {}
  for a, b in zip(y, z):
    joint[a, b] = joint.get((a, b), 0.0) + 1.0 / n
  p_z = {}
  for (_, b), p in joint.items():
    p_z[b] = p_z.get(b, 0.0) + p
  return sum(p * np.log(p / p_z[b]) for (_, b), p in joint.items())


def _scipy_nce(z, y):
  """-H(Y | Z) = -sum_z P(z) H(Y | Z = z), with scipy's entropy (nats)."""
  counts = np.zeros((y.max() + 1, z.max() + 1))
  np.add.at(counts, (y, z), 1.0)
  p_z = counts.sum(axis=0) / len(y)
  present = p_z > 0
  return -np.sum(p_z[present] * stats.entropy(counts[:, present], axis=0))


@pytest.mark.parametrize("n, num_source, c, balanced", [
    (50, 3, 2, True),
    (200, 20, 5, False),
    (1000, 100, 10, True),
    (600, 7, 30, False),  # More target than source classes.
    (2000, 1000, 100, False),
])
def test_matches_references(n, num_source, c, balanced):
  z, y = _random_labels(seed=n + c, n=n, num_source=num_source, c=c,
                        balanced=balanced)
  got = nce.nce(z, y)
  assert got == pytest.approx(_numpy_nce(z, y), rel=1e-5)
  assert got == pytest.approx(_scipy_nce(z, y), rel=1e-5)
  # Bounds: conditioning cannot increase entropy, so -H(Y) <= NCE <= 0.
  p_y = np.bincount(y) / n
  assert -stats.entropy(p_y) - 1e-5 <= got <= 0.0


def test_hand_computed_table():
  # Counts (rows y, columns z):   z=0  z=1  z=2
  #                        y=0     2    0    1
  #                        y=1     1    3    1
  # N = 8. H(Y | z=0) = H(2/3, 1/3), H(Y | z=1) = 0, H(Y | z=2) = H(1/2, 1/2);
  # P(z) = (3/8, 3/8, 2/8).
  z = np.array([0, 0, 0, 1, 1, 1, 2, 2])
  y = np.array([0, 0, 1, 1, 1, 1, 0, 1])
  h = lambda *p: -sum(q * np.log(q) for q in p)
  expected = -(3 / 8 * h(2 / 3, 1 / 3) + 3 / 8 * 0.0 + 2 / 8 * h(0.5, 0.5))
  assert nce.nce(z, y) == pytest.approx(expected, rel=1e-6)
  assert expected == pytest.approx(-0.4120, abs=1e-4)  # 0.2387 + 0.1733.


def test_zero_when_target_is_a_function_of_source():
  z, _ = _random_labels(seed=1, n=500, num_source=12, c=3)
  assert nce.nce(z, z % 4) == 0.0
  assert nce.nce(z, z) == 0.0
  # A constant source label gives -H(Y).
  y = np.array([0, 1, 1, 2, 2, 2])
  assert nce.nce(np.zeros(6, int), y) == pytest.approx(
      -stats.entropy(np.bincount(y)), rel=1e-6)


def test_invariances():
  z, y = _random_labels(seed=2, n=400, num_source=15, c=6, balanced=False)
  base = nce.nce(z, y)
  rng = np.random.default_rng(0)
  assert nce.nce(rng.permutation(15)[z], y) == pytest.approx(base, rel=1e-6)
  assert nce.nce(z, rng.permutation(6)[y]) == pytest.approx(base, rel=1e-6)
  rows = rng.permutation(len(y))
  assert nce.nce(z[rows], y[rows]) == pytest.approx(base, rel=1e-6)
  # Unused class indices change nothing.
  assert nce.nce(z * 3, y * 2 + 1) == pytest.approx(base, rel=1e-6)
  # Not symmetric in (z, y): -H(Y | Z) differs from -H(Z | Y).
  assert abs(nce.nce(y, z) - base) > 1e-2


def test_degenerate_but_defined_inputs():
  z, y = _random_labels(seed=3, n=50, num_source=5, c=3)
  assert nce.nce(z, np.zeros(50, int)) == 0.0  # One target class.
  assert nce.nce(z[:1], y[:1]) == 0.0  # One example.
  # A class with a single example.
  y1 = np.zeros(50, int)
  y1[7] = 1
  assert nce.nce(z, y1) == pytest.approx(_scipy_nce(z, y1), rel=1e-6)


def test_errors_name_the_problem():
  z, y = _random_labels(seed=4, n=20, num_source=4, c=3)
  with pytest.raises(ValueError, match=">= 0"):
    nce.nce(z - 1, y)
  with pytest.raises(ValueError, match=">= 0"):
    nce.nce(z, y - 1)
  with pytest.raises(ValueError, match="integers"):
    nce.nce(z.astype(float), y)
  with pytest.raises(ValueError, match="integers"):
    nce.nce(z, y > 0)
  with pytest.raises(ValueError, match="20 entries"):
    nce.nce(z, y[:-1])
  with pytest.raises(ValueError, match="non-empty"):
    nce.nce(np.array([], int), np.array([], int))
  with pytest.raises(ValueError, match="1-D"):
    nce.nce(z[:, None], y)


def test_source_labels_are_argmax_with_ties_to_the_lower_class():
  probs = np.array([[0.2, 0.5, 0.3], [0.4, 0.2, 0.4], [1 / 3, 1 / 3, 1 / 3]])
  np.testing.assert_array_equal(nce.source_labels_from_probs(probs), [1, 0, 0])
  with pytest.raises(ValueError, match="sum to 1"):
    nce.source_labels_from_probs(probs * 3)


def test_score_plugin_and_agreement_with_leep_on_hard_predictions():
  rng = np.random.default_rng(5)
  n, num_source, c = 150, 12, 4
  logits = rng.normal(size=(n, num_source)) * 3
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  z = probs.argmax(axis=1)
  y = np.where(rng.random(n) < 0.3, rng.integers(0, c, n), z % c)
  x, xv = rng.normal(size=(n, 3)), rng.normal(size=(30, 3))
  inputs = scores.ScoreInputs(x, y, xv, rng.integers(0, c, 30), num_classes=c,
                              source_probs=probs)
  result = scores.compute({"nce": {}}, inputs)["nce"]
  assert set(result) == {"score"}
  assert result["score"] == pytest.approx(_scipy_nce(z, y), rel=1e-5)
  # LEEP of the one-hot head is -H(Y | Z): the two scores meet there.
  assert result["score"] == pytest.approx(leep.leep(np.eye(num_source)[z], y),
                                          rel=1e-5)
  with pytest.raises(ValueError, match="needs source_probs"):
    nce.score(scores.ScoreInputs(x, y, xv, y[:30], num_classes=c))
