"""Tests for ScoreInputs, the result contract and the score registry."""

import sys
import textwrap

import numpy as np
import pytest

from model_search import scores
from model_search.scores import common
from model_search.scores import knn


def _arrays(n=40, m=20, d=5, c=3, seed=0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(c, d)) * 3
  y, yv = np.arange(n) % c, np.arange(m) % c
  x = centers[y] + rng.normal(size=(n, d))
  xv = centers[yv] + rng.normal(size=(m, d))
  return x, y, xv, yv


def _inputs(**overrides):
  x, y, xv, yv = _arrays()
  kw = dict(train_features=x, train_labels=y, val_features=xv, val_labels=yv,
            num_classes=3, model_name="m1", task_name="t1")
  kw.update(overrides)
  return common.ScoreInputs(**kw)


# ScoreInputs.


def test_inputs_convert_and_describe():
  inputs = _inputs()
  assert inputs.train_features.dtype == np.float32
  assert inputs.val_labels.dtype == np.int32
  assert (inputs.num_train, inputs.num_val, inputs.feature_dim) == (40, 20, 5)
  with pytest.raises(AttributeError):
    inputs.num_classes = 4  # Frozen.


@pytest.mark.parametrize("overrides,message", [
    (dict(train_labels=np.zeros(39, int)), "train_labels has 39 entries but "
     "train_features has 40 rows"),
    (dict(val_labels=np.arange(21) % 3), "val_labels has 21 entries"),
    (dict(train_features=np.zeros((40, 5, 1))), "train_features must be 2-D"),
    (dict(val_features=np.zeros((20, 4))), "dimension 5 but val_features have 4"),
    (dict(train_labels=np.arange(40) % 4), r"\[3\] outside 0..2"),
    (dict(val_labels=-(np.arange(20) % 3)), r"\[-2, -1\] outside 0..2"),
    (dict(train_labels=np.arange(40) % 3 * 1.0), "must be integers"),
    (dict(train_labels=np.full(40, 2)), r"only class\(es\) \[2\]"),
    (dict(num_classes=1), "num_classes must be an int >= 2"),
    (dict(num_classes=3.0), "num_classes must be an int >= 2"),
    (dict(train_features=np.full((40, 5), np.nan)), "non-finite"),
    (dict(val_features=np.full((20, 5), 1e39)), "non-finite"),
    (dict(train_features=np.zeros((0, 5)), train_labels=np.zeros(0, int)),
     "empty"),
    (dict(source_probs=np.full((40, 4), 0.3)), "rows must sum to 1"),
    (dict(source_probs=np.full((39, 4), 0.25)), r"must be \[40, "),
    (dict(source_probs=np.full((40, 4), 0.25),
          val_source_probs=np.full((20, 2), 0.5)), "4 source classes"),
    (dict(apply_fn=3), "apply_fn must be callable"),
    (dict(val_images=np.zeros((19, 8, 8, 3))), "val_images has shape"),
])
def test_inputs_validation_names_model_task_and_problem(overrides, message):
  with pytest.raises(ValueError, match="model 'm1' on task 't1'") as e:
    _inputs(**overrides)
  assert e.match(message)


def test_inputs_optional_fields_and_require():
  probs = np.full((40, 4), 0.25)
  inputs = _inputs(source_probs=probs, apply_fn=lambda p, x: x,
                   params={"w": 1}, train_images=np.zeros((40, 8, 8, 3)))
  assert inputs.source_probs.shape == (40, 4)
  inputs.require("source_probs", "apply_fn", score="leep")
  with pytest.raises(ValueError, match=r"'leep' needs val_source_probs.*'m1'"):
    inputs.require("val_source_probs", score="leep")
  with pytest.raises(ValueError, match="valid fields: source_probs"):
    inputs.require("probs", score="leep")


# The result contract.


def test_check_result():
  out = common.check_result({"score": np.float32(0.5), "n": np.int64(3)},
                            score="s")
  assert out == {"score": 0.5, "n": 3.0}
  assert all(type(v) is float for v in out.values())
  with pytest.raises(ValueError, match="'score' key"):
    common.check_result({"acc": 0.5}, score="s")
  with pytest.raises(ValueError, match="not finite"):
    common.check_result({"score": float("nan")}, score="s")
  with pytest.raises(ValueError, match="scalar float"):
    common.check_result({"score": 0.5, "curve": np.zeros(3)}, score="s")
  with pytest.raises(ValueError, match="must return a dict"):
    common.check_result(0.5, score="s")
  with pytest.raises(ValueError, match="keys must be str"):
    common.check_result({"score": 0.5, 1: 2.0}, score="s")


# The registry.


def test_available_lists_score_modules_only():
  names = scores.available()
  assert {"knn", "linear"} <= set(names)
  assert "common" not in names
  assert names == sorted(names)


def test_get_finds_modules_by_name():
  assert scores.get("knn") is knn
  assert scores.get("model_search.scores.knn") is knn


@pytest.mark.parametrize("name", ["knnn", "common", "no_such_pkg.score", "",
                                  "a-b"])
def test_unknown_score_lists_the_choices(name):
  with pytest.raises(ValueError, match="available scores: .*knn.*linear"):
    scores.get(name)


def test_compute_with_the_config_example():
  x, y, xv, yv = _arrays()
  inputs = _inputs()
  config = {"linear": {}, "knn": {"k": 1},
            "knn_cos": {"type": "knn", "metric": "cosine"}}
  results = scores.compute(config, inputs)
  assert list(results) == ["linear", "knn", "knn_cos"]
  for result in results.values():
    assert 0.0 <= result["score"] <= 1.0
    assert all(type(v) is float for v in result.values())
  assert results["knn"] == {"score": knn.knn_accuracy(x, y, xv, yv)}
  assert results["knn_cos"] == {
      "score": knn.knn_accuracy(x, y, xv, yv, metric="cosine")}
  # Separated blobs: the linear probe gets them all.
  assert results["linear"]["score"] == 1.0


def test_compute_rejects_unknown_options_before_running():
  with pytest.raises(ValueError, match=r"Score 'knn_cos' \(type 'knn'\): "
                     r"unknown option\(s\) 'neighbours'; valid options: k, "
                     r"metric, block_size"):
    scores.compute({"knn_cos": {"type": "knn", "neighbours": 3}}, _inputs())
  with pytest.raises(ValueError, match="available scores"):
    scores.compute({"knn": {}, "nope": {}}, _inputs())
  with pytest.raises(ValueError, match="must be a mapping"):
    scores.compute({"knn": 3}, _inputs())


def _write_package(tmp_path, monkeypatch, package, modules):
  root = tmp_path / package
  root.mkdir()
  (root / "__init__.py").write_text("")
  for name, source in modules.items():
    (root / f"{name}.py").write_text(textwrap.dedent(source))
  monkeypatch.syspath_prepend(str(tmp_path))
  for key in list(sys.modules):
    if key == package or key.startswith(package + "."):
      monkeypatch.delitem(sys.modules, key)


def test_score_outside_the_package_by_dotted_path(tmp_path, monkeypatch):
  _write_package(tmp_path, monkeypatch, "ms_plugin_lab", {
      "centroid": '''
          """A toy score: nearest-centroid accuracy."""
          import numpy as np

          def score(inputs, *, scale=1.0):
            x, y = inputs.train_features, inputs.train_labels
            c = np.stack([x[y == k].mean(0) for k in range(inputs.num_classes)])
            d = ((inputs.val_features[:, None] - c[None]) ** 2).sum(-1)
            acc = np.mean(d.argmin(1) == inputs.val_labels)
            return {"score": scale * acc, "num_centroids": len(c)}
          ''',
      "broken": '''
          def score(inputs):
            return {"score": float("inf")}
          ''',
      "failing": '''
          def score(inputs):
            raise RuntimeError("boom")
          ''',
      "noscore": '''
          def other(inputs):
            return {}
          ''',
  })
  results = scores.compute(
      {"nc": {"type": "ms_plugin_lab.centroid", "scale": 2.0},
       "ms_plugin_lab.centroid": {}}, _inputs())
  assert results["nc"]["score"] == 2.0
  assert results["nc"]["num_centroids"] == 3.0
  assert results["ms_plugin_lab.centroid"]["score"] == 1.0
  with pytest.raises(ValueError, match="valid options: scale"):
    scores.compute({"nc": {"type": "ms_plugin_lab.centroid", "k": 1}},
                   _inputs())
  with pytest.raises(ValueError, match=r"'b'.*'m1'.*'score' is not finite"):
    scores.compute({"b": {"type": "ms_plugin_lab.broken"}}, _inputs())
  with pytest.raises(RuntimeError, match="boom") as e:
    scores.compute({"f": {"type": "ms_plugin_lab.failing"}}, _inputs())
  assert "while computing score 'f'" in "".join(e.value.__notes__)
  with pytest.raises(ValueError, match="has no score"):
    scores.get("ms_plugin_lab.noscore")
  with pytest.raises(ValueError, match="no module 'ms_plugin_lab.missing'"):
    scores.get("ms_plugin_lab.missing")


def test_a_score_whose_own_import_fails_shows_that_error(tmp_path, monkeypatch):
  _write_package(tmp_path, monkeypatch, "ms_plugin_lab2", {
      "needs_dep": '''
          import ms_no_such_dependency

          def score(inputs):
            return {"score": 0.0}
          ''',
  })
  with pytest.raises(ModuleNotFoundError, match="ms_no_such_dependency"):
    scores.get("ms_plugin_lab2.needs_dep")


def test_check_matrix():
  x = common.check_matrix(np.arange(6, dtype=np.int32).reshape(2, 3), score="s")
  assert x.dtype == np.float64 and x.shape == (2, 3)
  assert common.check_matrix(np.ones((2, 2)), score="s", dtype=np.float32).dtype == np.float32
  for bad, message in ((np.ones(3), "non-empty \\[N, D\\]"), (np.ones((0, 2)), "non-empty"),
                       (np.array([["a", "b"]]), "numeric"),
                       (np.array([[1.0, np.nan]]), "1 NaN or inf"),
                       (np.array([[1e39]]), "after conversion to float32")):
    with pytest.raises(ValueError, match=f"s: features .*{message}|s: features {message}"):
      common.check_matrix(bad, score="s", dtype=np.float32)
