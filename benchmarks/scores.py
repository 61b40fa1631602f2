"""Score timings on VTAB-sized inputs against peer implementations, same machine, same inputs.

  python benchmarks/scores.py                  # every score, n = 1000, d = 2048, C in 2/10/100/397
  python benchmarks/scores.py --scores=linear,knn --classes=10,100 --n=10000

Inputs: features with class structure (class means plus Gaussian noise, unbalanced class
sizes), float32, fixed seed. Each row times our score (compiled and warmed up first; best of
--repeats) and its peer on the same inputs, and checks that both give the same value. Peers:

  linear         a plain Python loop over the 10 (learning rate, seed) runs, each one jitted
                 lax.scan of the same SGD on the weights (the same batches): the program
                 `linear` replaces (one vmapped program, in the kernel form for N <= D).
  knn            scikit-learn's brute-force KNeighborsClassifier (1-NN, Euclidean).
  other scores   an independent float64 NumPy implementation of the published algorithm (the
                 references of tests/scores/*_test.py: the public reference implementations of
                 LogME, LEEP, NCE, H-score, TransRate are NumPy code of this kind, which cannot
                 be installed here), or scikit-learn where it has the method.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import jax
import numpy as np

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests", "scores"))

_SCORES = flags.DEFINE_list("scores", [], "Scores to time (default: every one with a peer).")
_CLASSES = flags.DEFINE_list("classes", ["2", "10", "100", "397"], "Class counts C.")
_N = flags.DEFINE_integer("n", 1000, "Training examples.")
_D = flags.DEFINE_integer("d", 2048, "Feature dimension.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats; the best is reported.")
_LINEAR_WARM = flags.DEFINE_bool(
    "linear_warm", False, "Keep linear's per-task batch bookkeeping between calls (as for every "
    "model after the first on a task); by default each timed call recomputes it.")


def make_inputs(n: int, d: int, c: int, seed: int = 0):
  """Train / val features with class structure, unbalanced classes (sizes ~ 1..3)."""
  rng = np.random.default_rng(seed)
  weights = rng.uniform(1, 3, c)
  def draw(m):
    y = rng.choice(c, size=m, p=weights / weights.sum())
    y[:c] = np.arange(c)[: min(c, m)]  # Every class present.
    return y
  # Class means 0.08 apart per dimension: hard enough that no score saturates.
  means = rng.standard_normal((c, d)).astype(np.float32) * 0.08
  y, yv = draw(n), draw(max(n // 4, c))
  x = means[y] + rng.standard_normal((n, d)).astype(np.float32)
  xv = means[yv] + rng.standard_normal((len(yv), d)).astype(np.float32)
  probs = rng.dirichlet(np.ones(50), n).astype(np.float32)  # A 50-class source head.
  return x, y.astype(np.int32), xv, yv.astype(np.int32), probs


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
  out = fn()  # Warm-up: compilation, caches.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return min(times), out


# ----------------------------------------------------------------------------
# Peers that are programs, not formulas.

_PEER_UNROLL = flags.DEFINE_integer(
    "peer_unroll", 1, "lax.scan unroll of the linear peer's runs (1 was its fastest).")


def linear_loop(x, y, xv, yv, c, steps=2500, batch_size=512):
  """The 10 linear-probe runs one after the other, each its own jitted scan."""
  from model_search.scores import linear  # pylint: disable=g-import-not-at-top
  xs, xvs = linear.standardize(x, xv)
  accs = np.zeros((2, 5))
  for i, lr in enumerate(linear.DEFAULT_LEARNING_RATES):
    for j, seed in enumerate(linear.DEFAULT_SEEDS):
      runs = linear.fit_sgd(xs, y, xvs, yv, num_classes=c, learning_rates=(lr,), seeds=(seed,),
                            steps=steps, batch_size=batch_size, form="primal",
                            unroll=_PEER_UNROLL.value)
      accs[i, j] = runs.val_accuracy[0, 0]
  return float(np.median(accs.max(axis=0)))


def knn_sklearn(x, y, xv, yv):
  from sklearn.neighbors import KNeighborsClassifier  # pylint: disable=g-import-not-at-top
  clf = KNeighborsClassifier(n_neighbors=1, algorithm="brute").fit(x, y)
  return float(np.mean(clf.predict(xv) == yv))


def _ours(name: str) -> Callable[..., float]:
  from model_search import scores  # pylint: disable=g-import-not-at-top
  from model_search.scores import common  # pylint: disable=g-import-not-at-top
  module = scores.get(name)

  def run(x, y, xv, yv, c, probs):
    if name == "linear" and not _LINEAR_WARM.value:  # The first model of a task pays it.
      module._batches.cache_clear()  # pylint: disable=protected-access
    inputs = common.ScoreInputs(x, y, xv, yv, num_classes=c, source_probs=probs)
    return module.score(inputs)["score"]
  return run


# name -> (peer description, peer(x, y, xv, yv, c, probs) -> float). Filled by `_peers`.
def _peers() -> dict[str, tuple[str, Callable[..., float]]]:
  peers = {
      "linear": ("plain loop over the 10 runs (JAX)",
                 lambda x, y, xv, yv, c, p: linear_loop(x, y, xv, yv, c)),
      "knn": ("scikit-learn brute force", lambda x, y, xv, yv, c, p: knn_sklearn(x, y, xv, yv)),
  }
  def ref(module, fn, make_args, desc="NumPy float64 reference of the published algorithm"):
    def run(x, y, xv, yv, c, p):
      f = getattr(importlib.import_module(module), fn)
      out = f(*make_args(x.astype(np.float64), y, p))
      return float(out[0] if isinstance(out, tuple) else out)  # LogME's returns diagnostics.
    return desc, run

  peers.update({
      "logme": ref("logme_test", "_numpy_logme", lambda x, y, p: (x, y)),
      "hscore": ref("hscore_test", "_numpy_hscore", lambda x, y, p: (x, y)),
      "regularized_hscore": ref("hscore_test", "_numpy_regularized_hscore",
                                lambda x, y, p: (x, y)),
      "leep": ref("leep_test", "_numpy_leep", lambda x, y, p: (p.astype(np.float64), y)),
      "nce": ref("nce_test", "_numpy_nce", lambda x, y, p: (np.argmax(p, axis=1), y)),
      "transrate": ref("transrate_test", "_numpy_transrate", lambda x, y, p: (x, y)),
      "gbc": ref("gbc_test", "_numpy_gbc", lambda x, y, p: (x, y, 64)),
      "lfc": ref("lfc_test", "_numpy_lfc", lambda x, y, p: (x, y)),
      "msc": ("scikit-learn silhouette_score",
              lambda x, y, xv, yv, c, p: _silhouette(x, y)),
      "sfda": ref("sfda_test", "_numpy_sfda", lambda x, y, p: (x, y)),
      "parc": ref("parc_test", "_numpy_parc", lambda x, y, p: (x, y)),
      # Ours runs scikit-learn's PCA and GaussianMixture itself: the same pipeline written
      # out (tests/scores/nleep_test.py), so this row shows the overhead of our wrapper.
      "nleep": ("scikit-learn PCA + GaussianMixture, then NumPy LEEP",
                lambda x, y, xv, yv, c, p: _nleep_sklearn(x, y, c)),
  })
  return peers


def _nleep_sklearn(x, y, c):
  from model_search.scores import nleep  # pylint: disable=g-import-not-at-top
  import nleep_test  # pylint: disable=g-import-not-at-top
  k = nleep.default_num_components(len(np.unique(y)), y.shape[0])
  return nleep_test._numpy_leep(nleep_test._sklearn_posteriors(x, k), y)  # pylint: disable=protected-access


def _silhouette(x, y):
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  return metrics.silhouette_score(x, y)


def main(argv):
  del argv
  peers = _peers()
  names = _SCORES.value or list(peers)
  print(f"n = {_N.value}, d = {_D.value}; JAX devices: {jax.devices()}")
  print("| score | C | ours (s) | peer (s) | speed-up | ours value | peer value | peer |")
  print("|---|---|---|---|---|---|---|---|")
  for name in names:
    if name not in peers:
      print(f"| {name} | - | no peer | | | | | |")
      continue
    desc, peer = peers[name]
    ours = _ours(name)
    for c in map(int, _CLASSES.value):
      x, y, xv, yv, probs = make_inputs(_N.value, _D.value, c)
      t_ours, v_ours = best_time(lambda: ours(x, y, xv, yv, c, probs), _REPEATS.value)
      t_peer, v_peer = best_time(lambda: peer(x, y, xv, yv, c, probs),
                                 1 if name == "linear" else _REPEATS.value)
      print(f"| {name} | {c} | {t_ours:.3f} | {t_peer:.3f} | {t_peer / t_ours:.1f}x | "
            f"{float(v_ours):.4f} | {float(v_peer):.4f} | {desc} |", flush=True)


if __name__ == "__main__":
  app.run(main)
