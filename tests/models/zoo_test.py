"""Tests for the model registry against shared/reference/hub_models.md (numbers typed in)."""

import json

import pytest

from model_search import strategies
from model_search.models import zoo
from model_search.models.zoo import ModelEntry

_IN = "https://tfhub.dev/google/imagenet/"
_VT = "https://tfhub.dev/vtab/"
_EX = "https://tfhub.dev/google/experts/bit/r50x1/in21k/"

# name, handle, format, input size, feature dim, params, top-1 (%), per the reference's Sec. 2-3.
REFERENCE = [
    ("inception_v1", _IN + "inception_v1/feature_vector/4", "tf2", 224, 1024, 5592624, 69.8),
    ("inception_v2", _IN + "inception_v2/feature_vector/4", "tf2", 224, 1024, 10153336, 73.9),
    ("inception_v3", _IN + "inception_v3/feature_vector/4", "tf2", 299, 2048, 21768352, 78.0),
    ("inception_resnet_v2", _IN + "inception_resnet_v2/feature_vector/4", "tf2", 299, 1536,
     54276192, 80.4),
    ("resnet_v1_50", _IN + "resnet_v1_50/feature_vector/4", "tf2", 224, 2048, 23508032, 75.2),
    ("resnet_v1_101", _IN + "resnet_v1_101/feature_vector/4", "tf2", 224, 2048, 42500160, 76.4),
    ("resnet_v1_152", _IN + "resnet_v1_152/feature_vector/4", "tf2", 224, 2048, 58143808, 76.8),
    ("resnet_v2_50", _IN + "resnet_v2_50/feature_vector/4", "tf2", 224, 2048, 23519360, 75.6),
    ("resnet_v2_101", _IN + "resnet_v2_101/feature_vector/4", "tf2", 224, 2048, 42528896, 77.0),
    ("resnet_v2_152", _IN + "resnet_v2_152/feature_vector/4", "tf2", 224, 2048, 58187904, 77.8),
    ("mobilenet_v1_100_224", _IN + "mobilenet_v1_100_224/feature_vector/4", "tf2", 224, 1024,
     3206976, 70.9),
    ("mobilenet_v2_100_224", _IN + "mobilenet_v2_100_224/feature_vector/4", "tf2", 224, 1280,
     2223872, 71.8),
    ("nasnet_mobile", _IN + "nasnet_mobile/feature_vector/4", "tf2", 224, 1056, 4232978, 74.0),
    ("nasnet_large", _IN + "nasnet_large/feature_vector/4", "tf2", 331, 4032, 84720150, 82.7),
    ("pnasnet_large", _IN + "pnasnet_large/feature_vector/4", "tf2", 331, 4320, 81736668, 82.9),
    ("vtab_sup_100", _VT + "sup-100/1", "tf1", 224, 2048, 23500352, None),
    ("vtab_rotation", _VT + "rotation/1", "tf1", 224, 2048, 23500352, None),
    ("vtab_exemplar", _VT + "exemplar/1", "tf1", 224, 2048, 23500352, None),
    ("vtab_relative_patch_location", _VT + "relative-patch-location/1", "tf1", 224, 2048,
     23500352, None),
    ("vtab_jigsaw", _VT + "jigsaw/1", "tf1", 224, 2048, 23500352, None),
    ("vtab_semi_rotation_10", _VT + "semi-rotation-10/1", "tf1", 224, 2048, 23500352, None),
    ("vtab_sup_rotation_100", _VT + "sup-rotation-100/1", "tf1", 224, 2048, 23500352, None),
    ("vtab_semi_exemplar_10", _VT + "semi-exemplar-10/1", "tf1", 224, 2048, 23500352, None),
    ("vtab_sup_exemplar_100", _VT + "sup-exemplar-100/1", "tf1", 224, 2048, 23500352, None),
    ("vtab_cond_biggan", _VT + "cond-biggan/1", "tf1", 128, 1536, 86444833, None),
    ("vtab_uncond_biggan", _VT + "uncond-biggan/1", "tf1", 128, 1536, 86444833, None),
    ("vtab_wae_mmd", _VT + "wae-mmd/1", "tf1", 128, 128, 23779136, None),
    ("vtab_wae_gan", _VT + "wae-gan/1", "tf1", 128, 128, 23779136, None),
    ("vtab_wae_ukl", _VT + "wae-ukl/1", "tf1", 128, 128, 23779136, None),
    ("vtab_vae", _VT + "vae/1", "tf1", 128, 128, 23779136, None),
] + [
    # Set A stand-ins; params are the BiT R50x1 backbone's own count (D).
    (f"bit_expert_{s}", f"{_EX}{s}/1", "tf2", 224, 2048, 23500352, None)
    for s in ("conveyance", "natural_object", "structure", "mammal", "plant", "substance",
              "consumer_goods", "angiosperm", "equipment", "nutriment", "clothing", "covering",
              "container", "matter", "solid")
] + [("bit_m_r50x1", "https://tfhub.dev/google/bit/m-r50x1/1", "tf2", 224, 2048, 23500352,
      None)]

# The paper's expert each set A stand-in replaces (reference Sec. 3), in registry order.
STANDS_IN_FOR = ["Mode of transport", "Geographical feature", "Structure", "Mammal", "Plant",
                 "Material", "Home & garden", "Flowering plant", "Sports equipment", "Dish",
                 "Textile", "Shoe", "Bag", "Paper", "Snow", "Full JFT"]


def test_registry_matches_reference_tables():
  entries = zoo.entries("tfhub")
  assert len(entries) == len(REFERENCE) == 46
  for e, (name, handle, fmt, size, dim, params, top1) in zip(entries, REFERENCE):
    got = (e.name, e.handle, e.hub_format, e.input_size, e.feature_dim, e.num_params)
    assert got == (name, handle, fmt, size, dim, params), name
    if top1 is None:
      assert e.imagenet_accuracy is None, name
    else:
      assert e.imagenet_accuracy == pytest.approx(top1 / 100, abs=1e-9), name
    assert e.value_range == (0.0, 1.0) and e.collection == "tfhub"
    assert zoo.get(name) is e


def test_metadata_by_group():
  entries = zoo.entries("tfhub")
  imagenet, vtab, experts = entries[:15], entries[15:30], entries[30:]
  for e in imagenet:
    assert (e.upstream_size, e.expert, e.signature, e.output_key) == (1_200_000, False, None, None)
    assert e.upstream_dataset == "ILSVRC-2012-CLS" and e.paper_name
  fixed = [e.name for e in imagenet if e.fixed_input_size]
  assert fixed == ["mobilenet_v2_100_224", "nasnet_mobile", "nasnet_large", "pnasnet_large"]
  for e in vtab:
    assert (e.signature, e.output_key, e.expert, e.upstream_size) == (
        "default", "pre_logits", False, 1_200_000)
    assert e.provenance_of("input_size") == "E"
  assert all(e.expert for e in experts)
  assert [e.stands_in_for for e in experts] == STANDS_IN_FOR
  # Subtree sizes are unknown; only the full BiT-M has one (ImageNet-21k, 14M).
  assert [e.upstream_size for e in experts] == [None] * 15 + [14_000_000]
  for e in experts:
    assert e.provenance_of("num_params") == "D" and e.provenance_of("stands_in_for") == "E"


def test_provenance_covers_the_data_fields():
  for e in zoo.entries("tfhub"):
    for field in ("handle", "hub_format", "input_size", "feature_dim", "num_params",
                  "upstream_dataset", "value_range", "architecture", "expert"):
      assert e.provenance_of(field) in ("V", "D", "E"), (e.name, field)
    assert (e.provenance_of("imagenet_accuracy") == "V") == (e.imagenet_accuracy is not None)


def test_names_unique_and_collections():
  for collection in ("tfhub", "tfhub_set_b"):
    names = [e.name for e in zoo.entries(collection)]
    assert len(names) == len(set(names)) == 46
  set_b = zoo.entries("tfhub_set_b")
  assert [e.name for e in set_b[:30]] == [e.name for e in zoo.entries("tfhub")[:30]]
  assert zoo.EXPERTS_SET_B == tuple(e.name for e in set_b[30:])
  assert zoo.EXPERTS_SET_B[-1] == "bit_m_r50x1" and "bit_expert_physical_entity" not in (
      zoo.EXPERTS_SET_B)
  assert len(zoo.EXPERTS_SET_A) == len(zoo.EXPERTS_SET_B) == 16
  assert len(set(zoo.EXPERTS_SET_A) & set(zoo.EXPERTS_SET_B)) == 6
  assert zoo.get("bit_expert_abstraction").stands_in_for is None


def test_entries_returns_a_fresh_list():
  zoo.entries("tfhub").clear()
  assert len(zoo.entries("tfhub")) == 46


@pytest.mark.parametrize("name", ["resnet_v2_50", "vtab_relative_patch_location", "bit_m_r50x1"])
def test_json_round_trip(name):
  e = zoo.get(name)
  d = json.loads(json.dumps(e.to_json()))
  assert ModelEntry.from_json(d) == e
  assert isinstance(ModelEntry.from_json(d).provenance, tuple)


def test_json_round_trip_all_and_old_json_unchanged():
  for e in zoo.entries("tfhub_set_b"):
    assert ModelEntry.from_json(json.loads(json.dumps(e.to_json()))) == e
  # Entries without hub fields keep the JSON (and so the cache fingerprints) they had.
  plain = ModelEntry("m", "/path", num_params=3, value_range=[0, 1])
  assert plain.value_range == (0, 1)
  assert set(plain.to_json()) == {
      "name", "handle", "imagenet_accuracy", "upstream_dataset", "upstream_size",
      "upstream_accuracy", "num_params", "feature_dim", "input_size", "value_range",
      "architecture", "expert", "num_source_classes", "collection"}
  assert ModelEntry.from_json(plain.to_json()) == plain


def test_provenance_accepts_a_mapping_and_validates():
  e = ModelEntry("m", "h", num_params=1, provenance={"num_params": "E"})
  assert e.provenance == (("num_params", "E"),) and e.provenance_of("num_params") == "E"
  assert e.provenance_of("handle") is None
  with pytest.raises(ValueError, match="codes one of V, D, E"):
    ModelEntry("m", "h", provenance={"num_params": "X"})
  with pytest.raises(ValueError, match="ModelEntry fields"):
    ModelEntry("m", "h", provenance=[("nope", "V")])
  with pytest.raises(ValueError, match="choices: tf2, tf1"):
    ModelEntry("m", "h", hub_format="tf3")


def test_errors_name_the_choices():
  with pytest.raises(ValueError, match="Unknown model 'nope'; known models: .*bit_m_r50x1"):
    zoo.get("nope")
  with pytest.raises(ValueError, match="choices: tfhub, tfhub_set_b, mini"):
    zoo.entries("hub")
  with pytest.raises(ValueError, match="Unknown ModelEntry fields"):
    ModelEntry.from_json({"name": "m", "handle": "h", "bogus": 1})


def test_mini_collection_not_built_says_run_the_zoo_stage(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="run the 'zoo' stage"):
    zoo.entries("mini", cache_dir=tmp_path)
  monkeypatch.setenv("MODEL_SEARCH_CACHE", str(tmp_path / "cache"))
  assert zoo.default_cache_dir() == tmp_path / "cache"
  with pytest.raises(ValueError, match=str(tmp_path / "cache" / "zoo")):
    zoo.entries("mini")


def test_task_agnostic_on_tfhub():
  entries = zoo.entries("tfhub")
  order = strategies.task_agnostic_order(entries)
  assert order[:3] == ["pnasnet_large", "nasnet_large", "inception_resnet_v2"]
  # After the 15 ImageNet models: BiT-M (14M), then the ImageNet-trained VTAB models (1.2M,
  # by params), then the experts with unknown subtree sizes.
  assert order[15] == "bit_m_r50x1"
  assert set(order[16:31]) == {e.name for e in entries[15:30]}
  assert order[16:18] == ["vtab_cond_biggan", "vtab_uncond_biggan"]
  assert set(order[31:]) == {e.name for e in entries[30:45]}
