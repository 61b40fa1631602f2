"""configs/vtab.py: its arguments, and the whole study on VTAB tasks served offline by
`tfds.testing.mock_data`, with a user model (a SavedModel the test writes)."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import config_files
from model_search import main
from model_search.data import pipeline
from model_search.data import vtab
from model_search.models import export
from model_search.models import hub
from model_search.models import nets

MIXER = dict(patch=8, hidden=16, tokens_mlp=8, channels_mlp=24, depth=1)


def _vtab_config(arg=None):
  return config_files.get_config("vtab", arg)


def test_arguments():
  config = _vtab_config()
  assert config.suite == "vtab" and list(config.tasks) == vtab.task_names()
  assert config.collection == "tfhub" and not config.hub_models
  assert config.finetune.batch_size == 512 and config.finetune.steps == 2500
  assert tuple(config.finetune.learning_rates) == (0.1, 0.01)
  config = _vtab_config("tasks=structured,pool=expert+all")
  assert list(config.tasks) == vtab.task_names("structured")
  assert tuple(config.select.pools) == ("expert", "all")
  assert list(_vtab_config("tasks=dtd+svhn").tasks) == ["dtd", "svhn"]
  assert _vtab_config("zoo=mini").collection == "mini"
  assert _vtab_config("zoo=mini,only=cnn_small").zoo.models == ("cnn_small",)
  config = _vtab_config("zoo=tfhub_set_b,only=resnet_v2_50+bit_m_r50x1")
  assert config.collection == "tfhub_set_b"
  assert config.hub_models == ("resnet_v2_50", "bit_m_r50x1")
  with pytest.raises(ValueError, match=r"Unknown config argument\(s\) \['pools'\].*valid "
                     "arguments: models, only, pool, tasks, zoo"):
    _vtab_config("pools=all")
  with pytest.raises(ValueError, match="Unknown task 'cifar'"):
    _vtab_config("tasks=cifar")
  with pytest.raises(ValueError, match="Unknown zoo 'big'"):
    _vtab_config("zoo=big")


def test_models_file(tmp_path):
  path = tmp_path / "models.json"
  path.write_text(json.dumps([{"name": "a", "handle": "/x/a", "expert": True},
                              {"name": "b", "handle": "/x/b", "input_size": 96}]))
  config = _vtab_config(f"models={path}")
  assert config.models.a.handle == "/x/a" and config.models.a.expert
  path.write_text(json.dumps([{"name": "a"}]))
  with pytest.raises(ValueError, match="needs 'name' and 'handle'"):
    _vtab_config(f"models={path}")


def test_model_choice_errors(tmp_path):
  config = _vtab_config("tasks=dtd")
  with config.unlocked():
    config.collection = "user"
    config.models = {}
  with pytest.raises(ValueError, match="config.models is empty"):
    main.run(config, str(tmp_path))
  with pytest.raises(ValueError, match=r"Unknown model\(s\) \['resnet_v9'\] in "
                     "config.hub_models.*resnet_v2_50"):
    main.run(_vtab_config("tasks=dtd,only=resnet_v9"), str(tmp_path))


def test_tfhub_study_resolves_the_paper_zoo():
  from model_search import study as study_lib  # pylint: disable=g-import-not-at-top
  study = study_lib.from_config(_vtab_config("tasks=natural,pool=resnet50"), "/tmp/unused")
  assert len(study.entries) == 46 and len(study.tasks) == 7
  study = study_lib.from_config(_vtab_config("only=vtab_sup_100+inception_v3"), "/tmp/unused")
  assert study.model_names == ["vtab_sup_100", "inception_v3"]
  assert study.entries[0].signature == "default" and study.entries[0].output_key == "pre_logits"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  net = nets.get_net("mixer", 5, **MIXER)
  params = net.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))["params"]
  return export.export_savedmodel("mixer", MIXER, params,
                                  tmp_path_factory.mktemp("hub") / "mixer")


def test_whole_study_on_mocked_vtab(model_dir, tmp_path):
  """dtd (images of many sizes: resized while reading) and dsprites_loc (fixed 64x64 grey
  images, tiled and scaled) through every stage with a user model at input size 32."""
  config = _vtab_config("tasks=dtd+dsprites_loc,pool=all")
  with config.unlocked():
    config.collection = "user"
    config.models = {"mixer": {"handle": str(model_dir), "input_size": 32,
                               "imagenet_accuracy": 0.5, "feature_dim": 16}}
    config.cache_dir = str(tmp_path / "cache")
    config.data_dir = str(tmp_path / "tfds")
    config.scores.linear = {"steps": 20, "batch_size": 16}
    config.finetune.steps = 3
    config.finetune.batch_size = 8
    config.finetune.eval_batch_size = 16
  workdir = tmp_path / "work"
  with tfds.testing.mock_data(num_examples=24):
    main.run(config, str(workdir))
    # The features equal the model run on the pipeline's own resized batches.
    model = hub.load(str(model_dir))
    for t in ("dtd", "dsprites_loc"):
      task = vtab.get_task(t)
      images, labels = pipeline.load_resized(task, "train800", image_size=32,
                                             data_dir=config.data_dir)
      with np.load(workdir / "features" / "mixer" / t / "train800.npz") as f:
        np.testing.assert_array_equal(f["labels"], labels)
        np.testing.assert_allclose(f["features"], np.asarray(model.apply(model.params, images)),
                                   rtol=1e-5, atol=1e-5)
        assert f["labels"].max() < task.num_classes
  for t in ("dtd", "dsprites_loc"):
    ft = json.loads((workdir / "finetune" / "mixer" / f"{t}.json").read_text())
    assert 0 <= ft["test_accuracy"] <= 1 and ft["learning_rate"] in (0.1, 0.01)
    assert (workdir / "scores" / "mixer" / f"{t}.json").exists()
  assert (workdir / "report" / "summary.md").exists()
  models = json.loads((workdir / "models.json").read_text())
  assert models[0]["name"] == "mixer" and models[0]["collection"] == "user"


def test_data_dir_is_passed_through_unchanged():
  from model_search import study as study_lib  # pylint: disable=g-import-not-at-top
  config = _vtab_config("tasks=dsprites_loc")
  with config.unlocked():
    config.collection = "user"
    config.models = {"m": {"handle": "/x"}}
    config.data_dir = "gs://bucket/tensorflow_datasets"
  study = study_lib.from_config(config, "/tmp/unused")
  assert study.data_dir == "gs://bucket/tensorflow_datasets"
  assert [e.input_size for e in study.entries] == [224]  # The reference's resize by default.
