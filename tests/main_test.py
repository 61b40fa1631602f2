"""End-to-end tests of `main`: the smoke config, resuming after a kill, corrupt files, bad input."""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import config_files
from model_search import main

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(cache_dir, arg="smoke"):
  config = config_files.get_config("mini", arg)
  config.cache_dir = str(cache_dir)
  return config


@pytest.fixture(scope="module")
def cache_dir(mini_cache_dir):
  return mini_cache_dir


@pytest.fixture(scope="module")
def smoke_run(cache_dir, tmp_path_factory):
  """One uninterrupted run of configs/mini.py:smoke (the zoo is built into cache_dir)."""
  workdir = tmp_path_factory.mktemp("smoke")
  config = _config(cache_dir)
  main.run(config, str(workdir))
  return config, workdir


def _results(workdir):
  """Every result of a workdir, timings left out, keyed by relative path."""
  out = {}
  for path in sorted(pathlib.Path(workdir).rglob("*")):
    rel = str(path.relative_to(workdir))
    if path.name.startswith(".") or not path.is_file():
      continue
    if path.suffix == ".json" and rel.split("/")[0] in ("finetune", "scores"):
      data = json.loads(path.read_text())
      data.pop("secs", None)
      data.pop("execution", None)  # Where and how long a fine-tuning run ran.
      out[rel] = data
    elif path.suffix == ".json" and rel.split("/")[0] == "training_time":
      data = json.loads(path.read_text())
      for key in ("step_seconds", "prediction_seconds", "speed_seconds"):
        data.pop(key)
      for run in data["runs"]:
        run.pop("predicted_seconds")
      out[rel] = data
    elif rel == "finetune/table.csv":
      out[rel] = path.read_text()
    elif path.suffix == ".npz":
      with np.load(path, allow_pickle=False) as data:
        out[rel] = {k: data[k].tolist() for k in data.files}
    elif rel == "select/table.csv":
      out[rel] = path.read_text()
  return out


def test_smoke_produces_every_result(smoke_run):
  config, workdir = smoke_run
  models = json.loads((workdir / "models.json").read_text())
  assert [m["name"] for m in models] == list(config.zoo.models)
  dims = {m["name"]: m["feature_dim"] for m in models}
  for m in config.zoo.models:
    for t in config.tasks:
      for split, n in (("train800", 800), ("val200", 200)):
        with np.load(workdir / "features" / m / t / f"{split}.npz") as f:
          assert f["features"].shape == (n, dims[m]) and f["labels"].shape == (n,)
          assert np.isfinite(f["features"]).all()
          np.testing.assert_allclose(f["source_probs"].sum(1), 1.0, atol=1e-4)
      scores = json.loads((workdir / "scores" / m / f"{t}.json").read_text())["scores"]
      assert set(scores) == set(config.scores.keys())
      assert all(0.0 <= s["score"] <= 1.0 for s in scores.values())
      ft = json.loads((workdir / "finetune" / m / f"{t}.json").read_text())
      assert 0.0 <= ft["test_accuracy"] <= 1.0 and ft["learning_rate"] in (0.1, 0.01)
      best = max(ft["repeats"][0]["runs"], key=lambda r: r["val_accuracy"])
      assert ft["test_accuracy"] == best["test_accuracy"]  # The val-picked run is reported.
      assert len(best["loss_curve"]) == config.finetune.steps
  table = pd.read_csv(workdir / "select" / "table.csv")
  num_scores = len(config.scores)
  for pool, members in json.loads((workdir / "select" / "pools.json").read_text()).items():
    rows = table[table.pool == pool]
    # task_agnostic, task_agnostic_oracle (2 tasks: each has another), oracle, random
    # + 2 per score, for each budget 1..M, for each task.
    assert len(rows) == len(config.tasks) * len(members) * (4 + 2 * num_scores)
    assert (rows[rows.strategy == "oracle"].absolute_regret == 0).all()
  for m in config.zoo.models:
    for t in config.tasks:
      pred = json.loads((workdir / "training_time" / m / f"{t}.json").read_text())
      assert len(pred["runs"]) == config.finetune.repeats * len(config.finetune.learning_rates)
      for run in pred["runs"]:
        assert len(run["batch_loss"]) == config.finetune.steps
        assert len(run["train_accuracy"]) == config.finetune.steps + 1
        assert set(run["steps_to_threshold"]) == {f"{x:g}" for x in
                                                  config.training_time.thresholds}
      assert pred["step_seconds"] > 0
  summary = (workdir / "report" / "summary.md").read_text()
  assert "### Winners" in summary
  assert "## Predicted training time" in summary
  frame = pd.read_csv(workdir / "report" / "training_time.csv")
  assert len(frame) == (len(config.zoo.models) * len(config.tasks) * config.finetune.repeats *
                        len(config.finetune.learning_rates) * len(config.training_time.thresholds))
  assert frame["has_actual_run"].all()
  assert len(list((workdir / "report").glob("*.png"))) >= 4


def test_stage_outputs_agree_with_independent_computations(smoke_run):
  """Scores and selections recomputed here from the stored features and accuracies."""
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top
  config, workdir = smoke_run
  models = {m["name"]: m for m in json.loads((workdir / "models.json").read_text())}
  table = pd.read_csv(workdir / "select" / "table.csv")
  for t in config.tasks:
    accs = {}
    for m in config.zoo.models:
      with np.load(workdir / "features" / m / t / "train800.npz") as tr, \
          np.load(workdir / "features" / m / t / "val200.npz") as va:
        knn = neighbors.KNeighborsClassifier(1, algorithm="brute").fit(tr["features"],
                                                                        tr["labels"])
        want = (knn.predict(va["features"]) == va["labels"]).mean()
      got = json.loads((workdir / "scores" / m / f"{t}.json").read_text())["scores"]["knn"]
      assert got["score"] == pytest.approx(want, abs=1e-9)
      accs[m] = json.loads((workdir / "finetune" / m / f"{t}.json").read_text())["test_accuracy"]
    rows = table[(table.pool == "all") & (table.task == t) & (table.budget == 1)]
    by_strategy = rows.set_index("strategy")
    assert by_strategy.loc["oracle", "accuracy"] == pytest.approx(max(accs.values()))
    generalists = [m for m in config.zoo.models if not models[m]["expert"]]
    first = max(generalists, key=lambda m: models[m]["imagenet_accuracy"])
    assert by_strategy.loc["task_agnostic", "selected"] == first
    assert by_strategy.loc["random", "accuracy"] == pytest.approx(np.mean(list(accs.values())))
    oracle = max(accs.values())
    assert by_strategy.loc["task_agnostic", "absolute_regret"] == pytest.approx(
        oracle - accs[first])


def test_training_time_replays_the_finetune_protocol_on_a_linear_probe(smoke_run):
  """The stored prediction equals optax training of a zero-initialised linear head on the
  stored train800 features, with the finetune stage's batches, schedule, momentum and clip."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from model_search import finetune  # pylint: disable=g-import-not-at-top
  from model_search import finetune_grid  # pylint: disable=g-import-not-at-top
  config, workdir = smoke_run
  ft = config.finetune
  m, t = config.zoo.models[0], config.tasks[0]
  pred = json.loads((workdir / "training_time" / m / f"{t}.json").read_text())
  with np.load(workdir / "features" / m / t / "train800.npz") as f:
    x, y = jnp.asarray(f["features"]), jnp.asarray(f["labels"])
  num_classes = int(round(np.exp(pred["initial_loss"])))
  for run in pred["runs"]:
    seed = finetune_grid.run_seed(config.seed, run["repeat"])
    assert run["seed"] == seed
    indices = finetune.batch_indices(len(y), steps=ft.steps, batch_size=ft.batch_size, seed=seed)
    schedule = lambda step, lr=run["learning_rate"]: finetune.lr_schedule(
        lr, step, steps=ft.steps, decay_at=tuple(ft.decay_at), warmup_steps=ft.warmup_steps)
    tx = optax.chain(optax.clip_by_global_norm(ft.grad_clip_norm),
                     optax.sgd(schedule, momentum=ft.momentum))
    params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    state, losses = tx.init(params), []
    loss_fn = lambda p, idx: optax.softmax_cross_entropy_with_integer_labels(
        x[idx] @ p["w"] + p["b"], y[idx]).mean()
    for idx in indices:
      value, grads = jax.value_and_grad(loss_fn)(params, idx)
      updates, state = tx.update(grads, state, params)
      params = optax.apply_updates(params, updates)
      losses.append(float(value))
    np.testing.assert_allclose(run["batch_loss"], losses, rtol=1e-4, atol=1e-5)


def test_rerun_skips_finished_items(smoke_run):
  config, workdir = smoke_run
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob("*.npz")}
  before.update({p: p.stat().st_mtime_ns for p in (workdir / "finetune").rglob("*.json")})
  results = _results(workdir)
  main.run(config, str(workdir))
  assert {p: p.stat().st_mtime_ns for p in before} == before
  assert _results(workdir) == results


def test_killed_run_resumes_to_identical_results(smoke_run, cache_dir, tmp_path):
  config, reference = smoke_run
  workdir = tmp_path / "killed"
  cmd = [sys.executable, "-m", "model_search.main", "--config=configs/mini.py:smoke",
         f"--workdir={workdir}", f"--config.cache_dir={cache_dir}"]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if len(list((workdir / "finetune").rglob("runs/*.json"))) >= 2:
        break
      time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed mid-stage"
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  done = len(list((workdir / "finetune").rglob("runs/*.json")))
  runs = (len(config.zoo.models) * len(config.tasks) * config.finetune.repeats *
          len(config.finetune.learning_rates))
  assert 2 <= done < runs
  main.run(config, str(workdir))
  assert _results(workdir) == _results(reference)


def test_corrupt_results_are_recomputed(smoke_run, tmp_path):
  config, reference = smoke_run
  workdir = tmp_path / "copy"
  shutil.copytree(reference, workdir)
  m, t = config.zoo.models[0], config.tasks[0]
  feats = workdir / "features" / m / t / "train800.npz"
  feats.write_bytes(feats.read_bytes()[:1000])  # Truncated.
  (workdir / "finetune" / m / f"{t}.json").write_text('{"test_accuracy": 0.5')  # Corrupt.
  (workdir / "scores" / m / f"{t}.json").write_text(
      json.dumps({"scores": {}, "fingerprint": "from-another-config"}))  # Stale.
  main.run(config, str(workdir))
  assert _results(workdir) == _results(reference)


@pytest.mark.parametrize("field,value,message", [
    ("tasks", ("mini_digits", "mini_nope"), "Unknown task 'mini_nope'; known mini tasks: "),
    ("zoo.models", ("cnn_small", "resnet9000"), "Unknown model"),
    ("stages", ("features", "train"), "Unknown stage"),
    ("select.pools", ("all", "tiny"), "Unknown pool"),
])
def test_bad_names_fail_before_any_work(tmp_path, field, value, message):
  config = _config(tmp_path / "cache")
  with config.unlocked():
    parent, _, key = field.rpartition(".")
    setattr(config.get(parent) if parent else config, key, value)
  with pytest.raises(ValueError, match=message):
    main.run(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_unknown_score_fails_before_any_work(tmp_path):
  config = _config(tmp_path / "cache")
  with config.unlocked():
    config.scores.logmee = {}
  with pytest.raises(ValueError, match="logmee.*knn"):
    main.run(config, str(tmp_path / "work"))


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="not writable"):
    main.run(_config(tmp_path / "cache"), str(blocker / "work"))


def test_unknown_config_key_and_argument_are_errors(tmp_path):
  cmd = [sys.executable, "-m", "model_search.main", "--config=configs/mini.py:smoke",
         f"--workdir={tmp_path}", "--config.finetune.stepz=3"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0 and "stepz" in out.stderr
  with pytest.raises(ValueError, match="valid arguments: models, smoke, tasks"):
    _config(tmp_path, "smok")


def _write_lab_module(tmp_path, monkeypatch, package, module, source):
  """Writes tmp_path/lab/PACKAGE/MODULE.py and puts the lab on sys.path."""
  lab = tmp_path / "lab"
  (lab / package).mkdir(parents=True)
  (lab / package / "__init__.py").write_text("")
  (lab / package / f"{module}.py").write_text(source)
  monkeypatch.syspath_prepend(str(lab))


def _copy_of_smoke_run(reference, config, tmp_path):
  """A copy of the smoke run's workdir and of its config, to change without touching them."""
  workdir = tmp_path / "work"
  shutil.copytree(reference, workdir)
  return workdir, config.copy_and_resolve_references()


def test_a_score_from_outside_the_package_through_the_config_alone(smoke_run, tmp_path,
                                                                     monkeypatch):
  """A new score is a file plus a config line: no edit inside model_search."""
  config, reference = smoke_run
  _write_lab_module(tmp_path, monkeypatch, "my_lab", "centroid",
                    '"""Nearest-centroid validation accuracy."""\n'
                    "import numpy as np\n\n\n"
                    "def score(inputs):\n"
                    "  x, y = inputs.train_features, inputs.train_labels\n"
                    "  c = np.stack([x[y == k].mean(0) for k in np.unique(y)])\n"
                    "  d = ((inputs.val_features[:, None] - c[None]) ** 2).sum(-1)\n"
                    "  return {'score': float(np.mean(np.unique(y)[d.argmin(1)] == "
                    "inputs.val_labels))}\n")
  workdir, config = _copy_of_smoke_run(reference, config, tmp_path)
  with config.unlocked():
    config.scores.centroid = {"type": "my_lab.centroid"}
    config.stages = ("scores", "select", "report")
  main.run(config, str(workdir))
  for path in (workdir / "scores").rglob("*.json"):
    values = json.loads(path.read_text())["scores"]
    assert 0.0 <= values["centroid"]["score"] <= 1.0 and "linear" in values
  table = pd.read_csv(workdir / "select" / "table.csv")
  assert "task_aware/centroid" in set(table["strategy"])


def test_scores_that_require_the_model_get_it_and_its_images(smoke_run, tmp_path, monkeypatch):
  """A score with REQUIRES gets apply_fn, params and the train800 images: applying the model
  to those images gives back the cached features."""
  config, reference = smoke_run
  _write_lab_module(tmp_path, monkeypatch, "my_lab2", "refeature",
                    "import numpy as np\n"
                    "REQUIRES = ('apply_fn', 'params', 'train_images')\n\n\n"
                    "def score(inputs):\n"
                    "  f = np.asarray(inputs.apply_fn(inputs.params, inputs.train_images))\n"
                    "  err = (np.abs(f - inputs.train_features).max()\n"
                    "         / np.abs(inputs.train_features).max())\n"
                    "  return {'score': -float(err), 'n': float(len(inputs.train_images))}\n")
  workdir, config = _copy_of_smoke_run(reference, config, tmp_path)
  with config.unlocked():
    config.scores = {"refeature": {"type": "my_lab2.refeature"}}
    config.stages = ("scores",)
  main.run(config, str(workdir))
  paths = list((workdir / "scores").rglob("*.json"))
  assert len(paths) == len(config.tasks) * len(config.zoo.models)
  for path in paths:
    values = json.loads(path.read_text())["scores"]["refeature"]
    assert values["n"] == 800 and values["score"] > -1e-5


def test_source_domain_scores_get_the_upstream_features(smoke_run, tmp_path, monkeypatch):
  """domain_similarity (REQUIRES source_features) gets each model's features of the first
  `source_examples` images of its own upstream training split."""
  config, reference = smoke_run
  _write_lab_module(tmp_path, monkeypatch, "my_lab3", "source_probe",
                    "import numpy as np\n"
                    "REQUIRES = ('source_features', 'source_labels')\n\n\n"
                    "def score(inputs):\n"
                    "  return {'score': 0.0, 'n': float(len(inputs.source_labels)),\n"
                    "          'feature_sum': float(np.sum(inputs.source_features)),\n"
                    "          'label_sum': float(np.sum(inputs.source_labels))}\n")
  workdir, config = _copy_of_smoke_run(reference, config, tmp_path)
  with config.unlocked():
    config.scores = {"probe": {"type": "my_lab3.source_probe"}, "domain_similarity": {}}
    config.features.source_examples = 300
    config.stages = ("scores",)
  main.run(config, str(workdir))
  from model_search import study as study_lib  # pylint: disable=g-import-not-at-top
  from model_search.models import mini_zoo  # pylint: disable=g-import-not-at-top
  from model_search.models import hub  # pylint: disable=g-import-not-at-top
  study = study_lib.from_config(config, workdir)
  for entry in study.entries:
    images, labels, _ = mini_zoo.load_upstream(entry.upstream_dataset, "train",
                                               study.data_dir, limit=300)
    # The model's own features of those images, computed here without the pipeline (the mini
    # zoo takes its upstream images at their size, in [0, 1]).
    model = hub.load_entry(entry)
    want = float(np.sum(np.asarray(model.apply(model.params, images / np.float32(255.0)))))
    for t in config.tasks:
      values = json.loads((workdir / "scores" / entry.name / f"{t}.json").read_text())["scores"]
      assert values["probe"]["n"] == 300 and values["probe"]["label_sum"] == labels.sum()
      assert values["probe"]["feature_sum"] == pytest.approx(want, rel=1e-4)
      assert 0.0 < values["domain_similarity"]["score"] <= 1.0
      assert values["domain_similarity"]["emd"] > 0.0


def test_source_domain_scores_need_loadable_upstream_data():
  from model_search import stages  # pylint: disable=g-import-not-at-top
  from model_search.models import zoo  # pylint: disable=g-import-not-at-top
  entry = zoo.entries("tfhub")[0]
  with pytest.raises(ValueError, match="cannot load.*domain_similarity"):
    stages._check_source_data(entry)  # pylint: disable=protected-access
