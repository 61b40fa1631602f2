"""The training_time stage's helpers and its report section, on hand-worked inputs."""

import math

from flax import linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd
import pytest

from model_search import finetune
from model_search import function_space
from model_search import report_training_time as rtt
from model_search import training_time_stage as tts


def test_smoothed_is_a_trailing_running_mean():
  np.testing.assert_allclose(tts.smoothed([4.0, 2.0, 0.0, 6.0], 2), [4.0, 3.0, 1.0, 3.0])
  np.testing.assert_allclose(tts.smoothed([4.0, 2.0, 0.0], 1), [4.0, 2.0, 0.0])
  np.testing.assert_allclose(tts.smoothed([3.0, 0.0, 0.0, 0.0], 3), [3.0, 1.5, 1.0, 0.0])


def test_steps_to_counts_steps_after_which_the_smoothed_loss_is_below():
  curve = [4.0, 2.0, 0.0, 6.0]
  assert tts.steps_to(curve, 3.0, 2) == 2.0   # smoothed [4, 3, 1, 3]: 3 after step 2.
  assert tts.steps_to(curve, 0.5, 2) == math.inf
  assert tts.steps_to(curve, 0.0, 1) == 3.0


def _config(**kw):
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.finetune = ml_collections.ConfigDict(dict(
      learning_rates=(0.1, 0.01), momentum=0.9, batch_size=8, steps=30, grad_clip_norm=1.0,
      decay_at=(0.5,), warmup_steps=0, repeats=2))
  config.training_time = tts.default_config()
  config.training_time.update(kw)
  return config


def test_predict_replays_every_run_of_the_grid():
  rng = np.random.default_rng(0)
  phi = rng.normal(size=(40, 6)).astype(np.float32)
  labels = rng.integers(0, 4, size=40)
  config = _config(thresholds=(0.9, 0.5), smooth=3)
  out = tts.predict(config, phi, labels, 4)
  assert out["initial_loss"] == pytest.approx(math.log(4))
  assert [(r["repeat"], r["learning_rate"]) for r in out["runs"]] == [
      (0, 0.1), (0, 0.01), (1, 0.1), (1, 0.01)]
  assert out["runs"][0]["seed"] != out["runs"][2]["seed"]
  run = out["runs"][0]
  # The same replay by hand: function_space on the run's own batches and schedule.
  indices = finetune.batch_indices(40, steps=30, batch_size=8, seed=run["seed"])
  lrs = tts.learning_rates(config, 0.1)
  np.testing.assert_allclose(lrs[:15], 0.1, rtol=1e-6)
  np.testing.assert_allclose(lrs[15:], 0.01, rtol=1e-6)
  want = function_space.simulate(function_space.feature_kernel(phi), np.zeros((40, 4)),
                                 labels, indices, learning_rate=lrs, momentum=0.9,
                                 grad_clip_norm=1.0)
  np.testing.assert_allclose(run["batch_loss"], want.batch_loss)
  for key, steps in run["steps_to_threshold"].items():
    expected = tts.steps_to(want.batch_loss, float(key) * math.log(4), 3)
    assert steps == (None if math.isinf(expected) else expected)


def test_bad_thresholds_and_smoothing_are_errors():
  with pytest.raises(ValueError, match=r"fractions of the initial loss in \(0, 1\)"):
    tts._check_config(_config(thresholds=(0.5, 1.5)))  # pylint: disable=protected-access
  with pytest.raises(ValueError, match="smooth must be >= 1"):
    tts._check_config(_config(smooth=0))  # pylint: disable=protected-access


def _record(model="m", task="t", lr=0.1, predicted=None, actual=None, actual_steps=None):
  return {"model": model, "task": task, "repeat": 0, "learning_rate": lr,
          "initial_loss": 2.0, "thresholds": [0.5, 0.25], "smooth": 1, "curve_every": 1,
          "step_seconds": 0.5, "prediction_seconds": 0.1,
          "predicted_batch_loss": [2.0, 1.5, 1.0, 0.8],
          "predicted_steps": predicted or {"0.5": 3.0, "0.25": None},
          "actual_batch_loss": actual, "actual_steps": actual_steps,
          "actual_train_seconds": None if actual is None else 2.0,
          "actual_step_seconds": None if actual is None else 0.25}


def test_report_rows_hand_worked():
  rec = _record(actual=[2.0, 0.9, 0.6, 0.4], actual_steps={"0.5": 2.0, "0.25": 4.0})
  frame = rtt.rows([rec, _record(model="n")])
  first = frame.iloc[0]
  assert first.target_loss == 1.0 and first.predicted_steps == 3.0
  assert first.actual_steps == 2.0 and first.relative_error == pytest.approx(0.5)
  assert first.predicted_seconds == 1.5 and first.actual_seconds == 0.5
  second = frame.iloc[1]  # Predicted never, actual at step 4: no relative error.
  assert math.isnan(second.predicted_steps) and second.actual_steps == 4.0
  assert math.isnan(second.relative_error)
  assert not frame.iloc[2].has_actual_run and math.isnan(frame.iloc[2].actual_steps)


def test_report_section_files(tmp_path):
  recs = [_record(actual=[2.0, 0.9, 0.6, 0.4], actual_steps={"0.5": 2.0, "0.25": 4.0}),
          _record(lr=0.01, actual=[2.0, 1.9, 1.8, 1.7], actual_steps={"0.5": None,
                                                                      "0.25": None})]
  section = rtt.write(recs, tmp_path)
  assert "## Predicted training time" in section
  assert "median 50.0%" in section
  assert "Reached only as predicted: 1; only in the actual run: 1; by neither: 1" in section
  assert (tmp_path / "training_time_t.png").exists()
  data = pd.read_csv(tmp_path / "training_time_t.csv")
  assert set(data.curve) == {"predicted", "actual"}
  table = (tmp_path / "training_time.md").read_text()
  assert "| 0 | 0.1 | 3 / 2 | never / 4 | 0.800 / 0.400 |" in table
  csv = pd.read_csv(tmp_path / "training_time.csv")
  assert len(csv) == 4
  # Steps never reached say so; a threshold the run did reach keeps its number.
  assert list(csv.predicted_steps) == ["3.0", "never", "3.0", "never"]
  assert list(csv.actual_steps) == ["2.0", "4.0", "never", "never"]


class _BnNet(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(6)(x.reshape(x.shape[0], -1))
    return nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))


def _bn_model(train_mode=True):
  from model_search.models import hub  # pylint: disable=g-import-not-at-top
  net = _BnNet()
  variables = net.init(jax.random.key(0), jnp.zeros((1, 4, 4, 3)))

  def train_fn(v, x):
    out, new = net.apply(v, x, train=True, mutable=["batch_stats"])
    return out, {**v, **new}

  model = hub.from_flax(net.apply, variables, name="bn", input_size=4, apply_train_fn=train_fn)
  return net, variables, finetune.Finetuner(
      model, head_classes=3, momentum=0.9, steps=10, decay_at=(), warmup_steps=0,
      eval_batch_size=8, train_mode=train_mode)


def test_train_features_use_each_batchs_statistics():
  net, variables, tuner = _bn_model()
  images = np.random.default_rng(0).normal(2.0, 3.0, size=(20, 4, 4, 3)).astype(np.float32)
  indices = finetune.batch_indices(20, steps=10, batch_size=8, seed=1)
  batches = tts.first_epoch(20, indices)
  assert [len(b) for b in batches] == [8, 8, 4]
  assert sorted(np.concatenate(batches)) == list(range(20))
  got = tuner.train_features(images, batches)
  for idx in batches:
    want, _ = net.apply(variables, jnp.asarray(images[idx]), train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(got[idx], want, rtol=1e-5, atol=1e-6)
  inference = np.asarray(net.apply(variables, jnp.asarray(images)))
  assert not np.allclose(got, inference, atol=1e-2)  # The moving averages are not the data's.
  _, _, no_train = _bn_model(train_mode=False)
  np.testing.assert_allclose(no_train.train_features(images, batches), inference, rtol=1e-6)
  with pytest.raises(ValueError, match="cover every example"):
    tuner.train_features(images, batches[:2])


def test_predict_with_run_dependent_features():
  rng = np.random.default_rng(0)
  phi = rng.normal(size=(40, 6)).astype(np.float32)
  labels = rng.integers(0, 4, size=40)
  config = _config()
  seen = []

  def features(repeat, indices):
    seen.append((repeat, indices.shape))
    return phi + repeat
  out = tts.predict(config, features, labels, 4)
  assert seen == [(0, (30, 8)), (1, (30, 8))]
  fixed = tts.predict(config, phi, labels, 4)
  assert out["runs"][0]["batch_loss"] == fixed["runs"][0]["batch_loss"]
  assert out["runs"][2]["batch_loss"] != fixed["runs"][2]["batch_loss"]
