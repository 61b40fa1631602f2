"""Tests for LEEP: a float64 NumPy reference, hand-worked cases, invariances."""

import numpy as np
import pytest

from model_search import scores
from model_search.scores import leep


def _softmax(logits):
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _random_data(seed=0, n=200, num_source=20, c=5, balanced=True,
                 temperature=2.0):
  rng = np.random.default_rng(seed)
  prior = np.ones(c) / c if balanced else rng.dirichlet(0.3 * np.ones(c))
  y = rng.choice(c, size=n, p=prior)
  # Source logits that depend on the label, so the score is not trivial.
  mixing = rng.normal(size=(c, num_source))
  logits = temperature * (mixing[y] + rng.normal(size=(n, num_source)))
  return _softmax(logits).astype(np.float32), y


def _numpy_leep(probs, y):
  """Nguyen et al. eq. (1)-(2), example by example, in float64."""
  probs = np.asarray(probs, np.float64)
  n, num_source = probs.shape
  c = int(y.max()) + 1
  joint = np.zeros((c, num_source))
  for theta, label in zip(probs, y):
    joint[label] += theta / n
  p_z = joint.sum(axis=0)
  p_y_given_z = np.divide(joint, p_z, out=np.zeros_like(joint),
                          where=p_z > 0)
  eep = [theta @ p_y_given_z[label] for theta, label in zip(probs, y)]
  return np.mean(np.log(eep))


@pytest.mark.parametrize("n, num_source, c, balanced", [
    (50, 3, 2, True),
    (200, 20, 5, False),
    (1000, 100, 10, True),
    (600, 7, 30, False),  # More target than source classes.
    (300, 1000, 4, False),
])
def test_matches_numpy_reference(n, num_source, c, balanced):
  probs, y = _random_data(seed=n + c, n=n, num_source=num_source, c=c,
                          balanced=balanced)
  expected = _numpy_leep(probs, y)
  got = leep.leep(probs, y)
  assert got == pytest.approx(expected, rel=1e-5)
  assert got <= 0.0


def test_hand_worked():
  # θ = [[1, 0], [.5, .5]], y = [0, 1]: P(y, z) = [[.5, 0], [.25, .25]],
  # P(z) = [.75, .25], P(y | z=0) = [2/3, 1/3], P(y | z=1) = [0, 1].
  # Example 0: 1 * 2/3. Example 1: .5 * 1/3 + .5 * 1 = 2/3. LEEP = log(2/3).
  probs = np.array([[1.0, 0.0], [0.5, 0.5]])
  assert leep.leep(probs, np.array([0, 1])) == pytest.approx(np.log(2 / 3),
                                                             rel=1e-6)


def test_uniform_source_gives_minus_label_entropy():
  # θ(x) uniform: P(y | z) = P(y) for every z, so LEEP = sum_y P(y) log P(y).
  y = np.array([0, 0, 0, 1, 2, 2])
  probs = np.full((6, 4), 0.25)
  p = np.bincount(y) / len(y)
  assert leep.leep(probs, y) == pytest.approx(np.sum(p * np.log(p)), rel=1e-6)


def test_hard_source_predictions_give_minus_conditional_entropy():
  # One-hot θ(x): LEEP = mean log P(y_i | z_i) = -H(Y | Z) (NCE).
  rng = np.random.default_rng(3)
  z = rng.integers(0, 6, 300)
  y = (z + rng.integers(0, 2, 300)) % 4
  joint = np.zeros((4, 6))
  np.add.at(joint, (y, z), 1.0 / len(y))
  cond = joint / joint.sum(axis=0)
  expected = np.sum(np.where(joint > 0, joint * np.log(np.where(
      joint > 0, cond, 1.0)), 0.0))
  assert leep.leep(np.eye(6)[z], y) == pytest.approx(expected, rel=1e-5)
  # Labels a function of the hard source prediction: perfect score, exactly 0.
  assert leep.leep(np.eye(6)[z], z % 3) == 0.0


def test_invariances():
  probs, y = _random_data(seed=4, n=300, num_source=15, c=6, balanced=False)
  base = leep.leep(probs, y)
  rng = np.random.default_rng(0)
  # Renaming target classes, source classes or reordering examples.
  assert leep.leep(probs, rng.permutation(6)[y]) == pytest.approx(base, rel=1e-6)
  assert leep.leep(probs[:, rng.permutation(15)], y) == pytest.approx(
      base, rel=1e-6)
  rows = rng.permutation(len(y))
  assert leep.leep(probs[rows], y[rows]) == pytest.approx(base, rel=1e-6)
  # Not invariant to the source head's confidence: sharper logits change it.
  sharper, _ = _random_data(seed=4, n=300, num_source=15, c=6, balanced=False,
                            temperature=6.0)
  assert abs(leep.leep(sharper, y) - base) > 1e-3


def test_degenerate_but_defined_inputs():
  probs, y = _random_data(seed=5, n=100, num_source=8, c=4)
  # A single target class: P(y | z) = 1, LEEP = 0 (documented), up to
  # float32 rounding of the row sums.
  assert leep.leep(probs, np.zeros(100, int)) == pytest.approx(0.0, abs=1e-6)
  # A class with one example, and absent classes (labels 0, 1, 7).
  y_odd = np.where(np.arange(100) < 50, 0, 1)
  y_odd[17] = 7
  assert leep.leep(probs, y_odd) == pytest.approx(_numpy_leep(probs, y_odd),
                                                  rel=1e-5)
  # A source class that gets no mass at all: 0/0 in P(y | z) must not leak
  # a NaN; the score is that of the head without the column.
  padded = np.concatenate([probs, np.zeros((100, 1), np.float32)], axis=1)
  assert leep.leep(padded, y) == pytest.approx(leep.leep(probs, y), rel=1e-6)
  # One example.
  assert leep.leep(probs[:1], y[:1]) == pytest.approx(0.0, abs=1e-6)


def test_errors_name_the_problem():
  probs, y = _random_data(seed=6, n=20, num_source=4, c=3)
  with pytest.raises(ValueError, match="probabilities, not logits"):
    leep.leep(np.log(probs), y)
  with pytest.raises(ValueError, match="sum to 1"):
    leep.leep(probs * 2, y)
  with pytest.raises(ValueError, match="non-negative"):
    leep.leep(probs - 0.5, y)
  with pytest.raises(ValueError, match="finite"):
    leep.leep(np.where(probs > 0.9, np.nan, probs), y)
  with pytest.raises(ValueError, match="2-D"):
    leep.leep(probs[:, 0], y)
  with pytest.raises(ValueError, match=r"20 entries"):
    leep.leep(probs, y[:-1])
  with pytest.raises(ValueError, match="integers"):
    leep.leep(probs, y.astype(np.float32))
  with pytest.raises(ValueError, match=">= 0"):
    leep.leep(probs, y - 1)


def test_score_plugin():
  probs, y = _random_data(seed=7, n=120, num_source=10, c=4)
  rng = np.random.default_rng(0)
  x, xv = rng.normal(size=(120, 3)), rng.normal(size=(30, 3))
  yv = rng.integers(0, 4, 30)
  inputs = scores.ScoreInputs(x, y, xv, yv, num_classes=4, source_probs=probs)
  result = scores.compute({"leep": {}}, inputs)["leep"]
  assert set(result) == {"score"}
  assert result["score"] == pytest.approx(leep.leep(probs, y), rel=1e-7)
  assert result["score"] == pytest.approx(_numpy_leep(probs, y), rel=1e-5)
  with pytest.raises(ValueError, match="needs source_probs"):
    leep.score(scores.ScoreInputs(x, y, xv, yv, num_classes=4))
