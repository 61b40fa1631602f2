"""model_search/published.py and configs/vtab_published.py: the published VTAB accuracies as
ground truth, and selection and reporting on them without data, models or training."""

import itertools
import json
import pathlib

import numpy as np
import pandas as pd
import pytest
import tensorflow_datasets as tfds
import tensorflow_hub

import config_files
from model_search import main
from model_search import published
from model_search import stages
from model_search import strategies
from model_search import study as study_lib
from model_search import workdir as wd
from model_search.data import vtab
from model_search.models import hub
from model_search.models import zoo
from model_search.models.zoo import ModelEntry

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_CSV = REPO.parent / "shared" / "reference" / published.CSV_NAME
HEADER = ",".join(published.COLUMNS)


def _config(arg=None):
  return config_files.get_config("vtab_published", arg)


def _vtab_config(arg=None):
  return config_files.get_config("vtab", arg)


# ----------------------------------------------------------------------------
# The loader.


@pytest.mark.skipif(not REFERENCE_CSV.exists(), reason="no shared/reference checkout")
def test_packaged_table_is_the_reference_file():
  packaged = REPO / "model_search" / "data" / published.CSV_NAME
  assert packaged.read_bytes() == REFERENCE_CSV.read_bytes()


@pytest.mark.parametrize("name,task,train,percent", [
    # Rows of the reference CSV, copied by hand.
    ("vtab_cond_biggan", "cifar100", 1000, 21.080000698566437),
    ("vtab_sup_rotation_100", "caltech101", 1000, 91.69408082962036),
    ("vtab_relative_patch_location", "kitti_dist", "1000", 68.19620132446289),
    ("vtab_jigsaw", "kitti_dist", 1000, 68.19620132446289),
    ("vtab_wae_ukl", "dsprites_loc", "full", 98.12690019607544),
    ("vtab_cond_biggan", "caltech101", "full", 0.14802631922066212),
])
def test_values_are_the_reference_rows_as_fractions(name, task, train, percent):
  assert published.load_accuracies(train)[task][name] == pytest.approx(percent / 100, abs=1e-15)


def test_vtab_1k_grid_is_complete():
  acc = published.load_accuracies()
  names = [e.name for e in published.entries()]
  assert len(names) == 15 and len(set(names)) == 15
  assert sorted(acc) == sorted(vtab.task_names())
  for task, by_model in acc.items():
    assert sorted(by_model) == sorted(names), task
    assert all(0.0 <= a <= 1.0 for a in by_model.values())
  assert published.load_accuracies("1000") == acc
  assert published.load_accuracies("full") != acc


def test_entries_are_the_registry_vtab_models():
  got = published.entries()
  assert got == [e for e in zoo.entries("tfhub") if e.handle.startswith("https://tfhub.dev/vtab/")]
  assert all(zoo.get(e.name) is e for e in got)


def test_from_scratch_is_only_a_reference():
  with_scratch = published.load_accuracies(include_from_scratch=True)
  assert published.FROM_SCRATCH not in published.load_accuracies()["dtd"]
  assert with_scratch["dtd"][published.FROM_SCRATCH] == pytest.approx(0.20581896603107452)
  assert published.FROM_SCRATCH not in [e.name for e in published.entries()]


@pytest.mark.parametrize("value", [500, "1k", "", True, None])
def test_unknown_train_examples(value):
  with pytest.raises(ValueError, match="Unknown train_examples.*1000, full"):
    published.load_accuracies(value)


def _write(tmp_path, lines):
  path = tmp_path / "table.csv"
  path.write_text("\n".join(lines) + "\n")
  return path


_SUP = "Sup-100%,https://tfhub.dev/vtab/sup-100/1,ResNet50"
_ROT = "Rotation,https://tfhub.dev/vtab/rotation/1,ResNet50"


def test_a_small_valid_table(tmp_path):
  path = _write(tmp_path, [HEADER, f"{_SUP},dtd,1000,50", f"{_ROT},dtd,1000,25.5",
                           "From-Scratch,,ResNet50,dtd,1000,10"])
  assert published.load_accuracies(path=path) == {
      "dtd": {"vtab_sup_100": 0.5, "vtab_rotation": 0.255}}
  assert [e.name for e in published.entries(path)] == ["vtab_sup_100", "vtab_rotation"]


@pytest.mark.parametrize("lines,message", [
    (["model,task,accuracy", "a,dtd,1"], "columns.*expected model, hub_handle"),
    ([HEADER, f"{_SUP},dtd,1000,50", f"{_SUP},dtd,1000,51"],
     "line 3: duplicate row for model 'Sup-100%', task 'dtd', train_examples 1000"),
    ([HEADER, f"{_SUP},dtd,1000,100.5"], "line 2: test_accuracy_percent 100.5 is not a perc"),
    ([HEADER, f"{_SUP},dtd,1000,-1"], "is not a percentage in \\[0, 100\\]"),
    ([HEADER, f"{_SUP},dtd,1000,nan"], "is not a percentage"),
    ([HEADER, f"{_SUP},dtd,1000,"], "test_accuracy_percent '' is not a number"),
    ([HEADER, f"{_SUP},clevr_count_all,1000,50"],
     "unknown task 'clevr_count_all'; known VTAB-1k tasks: caltech101, cifar100, clevr_count"),
    ([HEADER, f"{_SUP},dtd,800,50"], "train_examples '800'; valid values: 1000, full"),
    ([HEADER, "Mine,https://tfhub.dev/me/net/1,CNN,dtd,1000,50"],
     "hub_handle 'https://tfhub.dev/me/net/1' of model 'Mine' is not in the model registry"),
    ([HEADER, "Mine,,CNN,dtd,1000,50"], "model 'Mine' has no hub_handle; only 'From-Scratch'"),
    ([HEADER, f"{_SUP},dtd,1000,50", "Sup-100%,https://tfhub.dev/vtab/rotation/1,R,svhn,1000,5"],
     "line 3: model 'Sup-100%' has handle .*rotation.* but .*sup-100.* above"),
    ([HEADER, f"{_SUP},dtd,1000,50", f"{_ROT},svhn,1000,50"],
     "train_examples 1000 has no row for vtab_rotation/dtd, vtab_sup_100/svhn"),
])
def test_bad_tables(tmp_path, lines, message):
  with pytest.raises(ValueError, match=message):
    published.load_accuracies(path=_write(tmp_path, lines))


def test_accuracies_for_matches_entries_by_handle():
  sup = zoo.get("vtab_sup_100")
  mine = ModelEntry("my_sup", sup.handle)
  got = published.accuracies_for([mine, zoo.get("vtab_vae")], ["dtd", "svhn"])
  table = published.load_accuracies()
  assert got == {t: {"my_sup": table[t]["vtab_sup_100"], "vtab_vae": table[t]["vtab_vae"]}
                 for t in ("dtd", "svhn")}
  with pytest.raises(ValueError, match="No published accuracies for model.*resnet_v2_50"):
    published.accuracies_for([zoo.get("resnet_v2_50")], ["dtd"])
  with pytest.raises(ValueError, match="No published accuracies for task.*mini_digits"):
    published.accuracies_for([sup], ["mini_digits"])


# ----------------------------------------------------------------------------
# The config.


def test_config_arguments():
  config = _config()
  assert tuple(config.stages) == ("select", "report")
  assert config.ground_truth == "published" and config.published.train_examples == "1000"
  assert list(config.tasks) == vtab.task_names()
  assert list(config.hub_models) == [e.name for e in published.entries()]
  assert tuple(config.select.pools) == ("all", "resnet50") and not config.select.budgets
  assert not config.scores.to_dict()
  assert _config("train_examples=full").published.train_examples == "full"
  assert list(_config("tasks=structured").tasks) == vtab.task_names("structured")
  assert _config("only=vtab_vae+vtab_rotation").hub_models == ("vtab_vae", "vtab_rotation")
  assert tuple(_config("smoke").select.budgets) == (1, 2)
  with pytest.raises(ValueError, match=r"Unknown config argument\(s\) \['zoo'\].*valid "
                     "arguments: only, pool, scores, smoke, tasks, train_examples"):
    _config("zoo=mini")
  with pytest.raises(ValueError, match="Unknown train_examples '10'.*1000, full"):
    _config("train_examples=10")


def test_docstring_starts_with_the_command():
  vtab_published = config_files.module("vtab_published")
  first = [l.strip() for l in vtab_published.__doc__.splitlines() if l.strip()][1]
  assert first == ("python -m model_search.main --config=configs/vtab_published.py "
                   "--workdir=/tmp/vtab_published")


def test_the_default_pools_are_nonempty_and_distinct():
  from model_search.models import pools  # pylint: disable=g-import-not-at-top
  entries = published.entries()
  members = {p: pools.members(p, entries) for p in _config().select.pools}
  assert len(members["all"]) == 15
  assert sorted(set(members["all"]) - set(members["resnet50"])) == [
      "vtab_cond_biggan", "vtab_uncond_biggan"]
  assert not pools.members("expert", entries) and not pools.members("imagenet", entries)


def test_the_scores_variant_finds_what_configs_vtab_wrote(tmp_path):
  """Same score options and entries, so the same fingerprints: configs/vtab.py's scores stage
  writes files this config reads (and its select stage does not discard)."""
  assert _config("scores").scores.to_dict() == _vtab_config().scores.to_dict()
  ours = study_lib.from_config(_config("scores"), str(tmp_path))
  theirs = study_lib.from_config(_vtab_config(), str(tmp_path))
  entry, task = zoo.get("vtab_rotation"), vtab.get_task("dtd")
  assert (stages._score_fingerprint(ours, entry, task)  # pylint: disable=protected-access
          == stages._score_fingerprint(theirs, entry, task))  # pylint: disable=protected-access


# ----------------------------------------------------------------------------
# The pipeline, end to end.


def _forbid_data_and_models(mp):
  def forbidden(*args, **kwargs):
    raise AssertionError(f"published ground truth must not load data or models: {args}")
  for module, name in ((tfds, "load"), (tfds, "builder"), (tensorflow_hub, "load"),
                       (tensorflow_hub, "resolve"), (hub, "load"), (hub, "load_entry")):
    mp.setattr(module, name, forbidden)


@pytest.fixture(scope="module")
def published_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("vtab_published")
  config = _config()
  with pytest.MonkeyPatch.context() as mp:
    _forbid_data_and_models(mp)
    main.run(config, str(workdir))
  return config, workdir


def test_run_writes_the_table_and_the_report(published_run):
  config, workdir = published_run
  table = pd.read_csv(workdir / "select" / "table.csv", keep_default_na=False)
  assert set(table.pool) == {"all", "resnet50"}
  assert sorted(set(table.task)) == sorted(vtab.task_names())
  assert {"task_agnostic", "oracle", "random"} <= set(table.strategy)
  assert not any(s.startswith(("task_aware/", "hybrid/")) for s in table.strategy)
  assert (table.missing == "").all()
  pools_json = json.loads((workdir / "select" / "pools.json").read_text())
  assert len(pools_json["all"]) == 15 and len(pools_json["resnet50"]) == 13
  assert sorted(table[table.pool == "all"].budget.unique()) == list(range(1, 16))
  summary = (workdir / "report" / "summary.md").read_text()
  assert "published VTAB-1k ground truth" in summary.splitlines()[0]
  assert f"| {published.FROM_SCRATCH} |" in summary  # The reference row.
  assert all(published.FROM_SCRATCH not in m for m in pools_json.values())
  accuracy = pd.read_csv(workdir / "report" / "accuracy.csv")
  assert len(accuracy) == 16 and set(accuracy.columns[2:]) == set(config.tasks)


@pytest.mark.parametrize("pool,task", [("all", "dtd"), ("resnet50", "clevr_dist"),
                                       ("all", "kitti_dist")])
def test_hand_checked_numbers(published_run, pool, task):
  _, workdir = published_run
  table = pd.read_csv(workdir / "select" / "table.csv", keep_default_na=False)
  members = json.loads((workdir / "select" / "pools.json").read_text())[pool]
  acc = {m: published.load_accuracies()[task][m] for m in members}
  rows = table[(table.pool == pool) & (table.task == task)]
  at = lambda strategy, b: rows[(rows.strategy == strategy) & (rows.budget == b)].iloc[0]
  # Oracle, B=1: the best published accuracy of the pool.
  assert at("oracle", 1).accuracy == pytest.approx(max(acc.values()), abs=1e-12)
  # Task-agnostic, B=1: the first of strategies.task_agnostic_order over the pool's entries.
  first = strategies.task_agnostic_order([zoo.get(m) for m in members])[0]
  assert at("task_agnostic", 1).selected == first
  assert at("task_agnostic", 1).accuracy == pytest.approx(acc[first], abs=1e-12)
  # Random, B=2: the mean of the best accuracy over every 2-subset of the pool.
  brute = np.mean([max(acc[a], acc[b]) for a, b in itertools.combinations(members, 2)])
  assert at("random", 2).accuracy == pytest.approx(brute, abs=1e-12)
  assert at("random", 2).oracle_accuracy == pytest.approx(max(acc.values()), abs=1e-12)


def test_task_agnostic_has_no_signal_among_the_vtab_models():
  """No ImageNet accuracies and one upstream dataset: parameter count decides (the BigGANs)."""
  order = strategies.task_agnostic_order(published.entries())
  assert order[:2] == ["vtab_cond_biggan", "vtab_uncond_biggan"]


def test_full_data_ground_truth_and_scores_from_the_workdir(tmp_path):
  config = _config("scores,smoke,train_examples=full,pool=resnet50")
  study = study_lib.from_config(config, str(tmp_path))
  acc = published.load_accuracies("full")
  rng = np.random.default_rng(0)
  knn = {}
  for entry in study.entries:
    for task in study.tasks:
      knn[task.name, entry.name] = float(acc[task.name][entry.name] + rng.normal(0, 0.05))
      wd.write_json(wd.scores_path(tmp_path, entry.name, task.name),
                    {"model": entry.name, "task": task.name,
                     "scores": {"knn": {"score": knn[task.name, entry.name]}},
                     "fingerprint": stages._score_fingerprint(  # pylint: disable=protected-access
                         study, entry, task)})
  with pytest.MonkeyPatch.context() as mp:
    _forbid_data_and_models(mp)
    main.run(config, str(tmp_path))
  table = pd.read_csv(tmp_path / "select" / "table.csv", keep_default_na=False)
  assert set(table.budget) == {1, 2} and set(table.task) == set(config.tasks)
  for task in config.tasks:
    rows = table[(table.task == task) & (table.budget == 1)].set_index("strategy")
    best = max((v, m) for (t, m), v in knn.items() if t == task)[1]
    assert rows.loc["task_aware/knn", "selected"] == best
    assert rows.loc["task_aware/knn", "accuracy"] == pytest.approx(acc[task][best], abs=1e-12)
    assert rows.loc["oracle", "accuracy"] == pytest.approx(
        max(acc[task][e.name] for e in study.entries), abs=1e-12)
    assert "hybrid/knn" in rows.index
  assert "published full-data ground truth" in (tmp_path / "report" / "summary.md").read_text()


def test_without_scores_the_workdir_scores_are_left_alone(tmp_path):
  stale = wd.scores_path(tmp_path, "vtab_vae", "dtd")
  wd.write_json(stale, {"model": "vtab_vae", "task": "dtd", "scores": {"knn": {"score": 1.0}},
                        "fingerprint": "from another config"})
  main.run(_config("smoke,tasks=dtd"), str(tmp_path))
  assert json.loads(pathlib.Path(stale).read_text())["fingerprint"] == "from another config"


@pytest.mark.parametrize("change,message", [
    (dict(ground_truth="oracle"), "Unknown ground truth 'oracle'; valid values of "
     "config.ground_truth: finetune, published"),
    (dict(hub_models=("vtab_vae", "resnet_v2_50")),
     "No published accuracies for model.*resnet_v2_50.*ground_truth='finetune'"),
    (dict(collection="mini"), "has results of the VTAB hub models on VTAB-1k only"),
])
def test_config_errors_before_any_work(tmp_path, change, message):
  config = _config("smoke")
  with config.unlocked():
    for key, value in change.items():
      config[key] = value
  with pytest.raises(ValueError, match=message):
    main.run(config, str(tmp_path / "w"))
  assert not (tmp_path / "w" / "select").exists()


def test_bad_published_options(tmp_path):
  config = _config("smoke")
  config.published.train_examples = "10"
  with pytest.raises(ValueError, match="Unknown train_examples '10'"):
    main.run(config, str(tmp_path))
  with pytest.raises(ValueError, match="Pool 'expert' has no models"):
    main.run(_config("smoke,pool=expert"), str(tmp_path))


def test_published_ground_truth_in_configs_vtab(tmp_path):
  """Any VTAB config can take the published ground truth: here configs/vtab.py's."""
  config = _vtab_config("tasks=dtd+svhn,only=vtab_vae+vtab_rotation+vtab_sup_100,pool=all")
  with config.unlocked():
    config.stages = ("select", "report")
    config.ground_truth = "published"
    config.scores = {}
  with pytest.MonkeyPatch.context() as mp:
    _forbid_data_and_models(mp)
    main.run(config, str(tmp_path))
  table = pd.read_csv(tmp_path / "select" / "table.csv", keep_default_na=False)
  oracle = table[(table.strategy == "oracle") & (table.budget == 1)].set_index("task")
  for task in ("dtd", "svhn"):
    acc = published.load_accuracies()[task]
    assert oracle.loc[task, "accuracy"] == pytest.approx(
        max(acc[m] for m in ("vtab_vae", "vtab_rotation", "vtab_sup_100")), abs=1e-12)
