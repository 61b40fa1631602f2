"""Tests for the kNN score against sklearn, hand-worked cases and a NumPy vote."""

import numpy as np
import pytest
from sklearn import neighbors

from model_search import scores
from model_search.scores import knn


def _random_data(seed=0, n=300, m=100, d=16, c=5):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d))
  y, yt = rng.integers(0, c, n), rng.integers(0, c, m)
  x = centers[y] + rng.normal(size=(n, d))
  xt = centers[yt] + rng.normal(size=(m, d))
  return x.astype(np.float32), y, xt.astype(np.float32), yt


def _numpy_knn(x, y, xt, yt, k, metric):
  """Brute-force reference with the documented vote: nearest among the tied."""
  x, xt = x.astype(np.float64), xt.astype(np.float64)
  if metric == "cosine":
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    xt = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    dist = 1.0 - xt @ x.T
  else:
    dist = ((xt[:, None, :] - x[None, :, :])**2).sum(-1)
  correct = 0
  for row, label in zip(dist, yt):
    near = y[np.argsort(row, kind="stable")[:k]]
    counts = {c: np.sum(near == c) for c in near}
    best = max(counts.values())
    pred = next(c for c in near if counts[c] == best)
    correct += pred == label
  return correct / len(yt)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_k1_matches_sklearn(metric):
  x, y, xt, yt = _random_data()
  clf = neighbors.KNeighborsClassifier(n_neighbors=1, algorithm="brute",
                                       metric=metric).fit(x, y)
  expected = np.mean(clf.predict(xt) == yt)
  assert knn.knn_accuracy(x, y, xt, yt, k=1, metric=metric) == pytest.approx(
      expected, abs=1e-9)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_k5_matches_numpy_vote(metric):
  x, y, xt, yt = _random_data(seed=1)
  expected = _numpy_knn(x, y, xt, yt, 5, metric)
  assert knn.knn_accuracy(x, y, xt, yt, k=5, metric=metric) == pytest.approx(
      expected, abs=1e-9)


def test_hand_worked_1d():
  # Train points on a line: 0 -> class 0, 1 -> class 0, 10 -> class 1.
  x = np.array([[0.0], [1.0], [10.0]])
  y = np.array([0, 0, 1])
  # Test points 0.4 (nearest 0, class 0: right), 6 (nearest 10, class 1: the
  # label says 0, wrong), 9 (nearest 10, class 1: right), 2 (nearest 1: class 0,
  # label 1: wrong). Accuracy 2/4.
  xt = np.array([[0.4], [6.0], [9.0], [2.0]])
  yt = np.array([0, 0, 1, 1])
  assert knn.knn_accuracy(x, y, xt, yt, k=1) == 0.5
  # k=3 uses all points: majority class 0 everywhere, so rows 0 and 1 are right.
  assert knn.knn_accuracy(x, y, xt, yt, k=3) == 0.5
  # Cosine on 2-D directions: scale does not matter, angle does.
  xc = np.array([[1.0, 0.0], [0.0, 1.0]])
  yc = np.array([0, 1])
  xtc = np.array([[100.0, 1.0], [0.1, 0.2], [-1.0, 0.0]])
  # [-1, 0] has cosine -1 to class 0 and 0 to class 1: predicted 1, labelled 0.
  ytc = np.array([0, 1, 0])
  assert knn.knn_accuracy(xc, yc, xtc, ytc, metric="cosine") == pytest.approx(
      2 / 3)


def test_tie_goes_to_nearest_among_tied_classes():
  # Neighbours of 0 in distance order: 1 (class 2), 2 (class 0), 3 (class 0),
  # 4 (class 2), 5 (class 1).
  x = np.array([[1.0], [2.0], [3.0], [4.0], [5.0]])
  y = np.array([2, 0, 0, 2, 1])
  xt = np.zeros((1, 1))
  acc = lambda k, label: knn.knn_accuracy(x, y, xt, np.array([label]), k=k)
  assert acc(2, 2) == 1.0  # 1-1 tie between 2 and 0: nearest is class 2.
  assert acc(3, 0) == 1.0  # Majority 0 (2 votes) beats the nearest (class 2).
  assert acc(4, 2) == 1.0  # 2-2 tie: nearest among tied is class 2.
  assert acc(5, 2) == 1.0  # 2-2-1: tie between 2 and 0 again, class 1 is out.
  # A tie in which the nearest neighbour's class is not tied: labels in order
  # 1, 0, 0, 2, 2 with k=5 -> 0 and 2 tie at 2 votes; nearest of those is 0.
  y2 = np.array([1, 0, 0, 2, 2])
  assert knn.knn_accuracy(x, y2, xt, np.array([0]), k=5) == 1.0


def test_equidistant_points_go_to_the_earlier_index():
  x = np.array([[-1.0], [1.0]])
  xt = np.zeros((1, 1))
  assert knn.knn_accuracy(x, np.array([1, 0]), xt, np.array([1])) == 1.0
  assert knn.knn_accuracy(x, np.array([0, 1]), xt, np.array([0])) == 1.0


@pytest.mark.parametrize("block_size", [1, 7, 64, 100, 4096])
def test_block_size_does_not_change_the_answer(block_size):
  x, y, xt, yt = _random_data(seed=2, m=150)
  full = knn.knn_accuracy(x, y, xt, yt, k=3)
  assert knn.knn_accuracy(x, y, xt, yt, k=3, block_size=block_size) == full


def test_invariances():
  x, y, xt, yt = _random_data(seed=3)
  base = knn.knn_accuracy(x, y, xt, yt, k=1)
  perm = np.random.default_rng(0).permutation(5)
  assert knn.knn_accuracy(x, perm[y], xt, perm[yt], k=1) == base
  rows = np.random.default_rng(1).permutation(len(y))
  assert knn.knn_accuracy(x[rows], y[rows], xt, yt, k=1) == base
  # A shift of all features changes nothing for Euclidean distances.
  assert knn.knn_accuracy(x + 50.0, y, xt + 50.0, yt, k=1) == base


def test_errors_name_the_choices():
  x, y, xt, yt = _random_data(n=10, m=4)
  with pytest.raises(ValueError, match="cosine, euclidean"):
    knn.knn_accuracy(x, y, xt, yt, metric="manhattan")
  with pytest.raises(ValueError, match=r"k must be in 1\.\.10"):
    knn.knn_accuracy(x, y, xt, yt, k=11)
  with pytest.raises(ValueError, match="must be"):
    knn.knn_accuracy(x, y, xt[:, :3], yt)


def test_score_plugin():
  x, y, xt, yt = _random_data(seed=4)
  inputs = scores.ScoreInputs(x, y, xt, yt, num_classes=5)
  result = knn.score(inputs, k=1, metric="cosine")
  assert set(result) == {"score"}
  assert isinstance(result["score"], float)
  assert result["score"] == knn.knn_accuracy(x, y, xt, yt, metric="cosine")
