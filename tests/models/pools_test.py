"""Tests for pool membership against the paper's definitions: hand-made and tfhub entries."""

import pytest

from model_search import strategies
from model_search.models import pools
from model_search.models import zoo
from model_search.models.zoo import ModelEntry


def _entries():
  return [
      ModelEntry("g_big", "h", imagenet_accuracy=0.8, num_params=500, feature_dim=4096),
      ModelEntry("g_small", "h", imagenet_accuracy=0.7, num_params=90, feature_dim=1024),
      ModelEntry("g_wide_small", "h", imagenet_accuracy=0.6, num_params=100, feature_dim=4096),
      ModelEntry("e1", "h", num_params=100, feature_dim=2048, expert=True),
      ModelEntry("e2", "h", num_params=100, feature_dim=2048, expert=True),
      ModelEntry("no_meta", "h"),
  ]


@pytest.mark.parametrize("pool,expected", [
    ("all", ["g_big", "g_small", "g_wide_small", "e1", "e2", "no_meta"]),
    ("expert", ["e1", "e2"]),
    ("imagenet", ["g_big", "g_small", "g_wide_small"]),
    # At most the experts' parameter count (100) / feature dimension (2048); unknown -> out.
    ("resnet50", ["g_small", "g_wide_small", "e1", "e2"]),
    ("dim2048", ["g_small", "e1", "e2"]),
])
def test_paper_pools(pool, expected):
  assert pools.members(pool, _entries()) == expected


def test_custom_pools():
  custom = {"mine": ["e2", "g_big"], "big": "e.num_params is not None and e.num_params > 100"}
  assert pools.members("mine", _entries(), custom) == ["g_big", "e2"]
  assert pools.members("big", _entries(), custom) == ["g_big"]
  with pytest.raises(ValueError, match="unknown models"):
    pools.members("bad", _entries(), {"bad": ["nope"]})


def test_unknown_pool_lists_choices():
  with pytest.raises(ValueError, match="known pools: all, dim2048, expert, imagenet, resnet50"):
    pools.members("resnet", _entries())


def test_threshold_pool_needs_experts():
  with pytest.raises(ValueError, match="expert"):
    pools.members("resnet50", _entries()[:3])


# The paper's pools on the 'tfhub' collection, member lists from shared/reference/hub_models.md.
_EXPERTS_A = ["bit_expert_" + s for s in (
    "conveyance", "natural_object", "structure", "mammal", "plant", "substance",
    "consumer_goods", "angiosperm", "equipment", "nutriment", "clothing", "covering",
    "container", "matter", "solid")] + ["bit_m_r50x1"]
_IMAGENET = ["inception_v1", "inception_v2", "inception_v3", "inception_resnet_v2",
             "resnet_v1_50", "resnet_v1_101", "resnet_v1_152", "resnet_v2_50", "resnet_v2_101",
             "resnet_v2_152", "mobilenet_v1_100_224", "mobilenet_v2_100_224", "nasnet_mobile",
             "nasnet_large", "pnasnet_large"]
_VTAB = ["vtab_sup_100", "vtab_rotation", "vtab_exemplar", "vtab_relative_patch_location",
         "vtab_jigsaw", "vtab_semi_rotation_10", "vtab_sup_rotation_100",
         "vtab_semi_exemplar_10", "vtab_sup_exemplar_100", "vtab_cond_biggan",
         "vtab_uncond_biggan", "vtab_wae_mmd", "vtab_wae_gan", "vtab_wae_ukl", "vtab_vae"]
# Reference Sec. 1: all but Inception-ResNet-V2, ResNet V1/V2 101 and 152, NASNet-Large,
# PNASNet-Large and the two BigGANs (NASNet-Mobile kept).
_RESNET50 = (["inception_v1", "inception_v2", "inception_v3", "resnet_v1_50", "resnet_v2_50",
              "mobilenet_v1_100_224", "mobilenet_v2_100_224", "nasnet_mobile"]
             + [n for n in _VTAB if "biggan" not in n] + _EXPERTS_A)
_ALL = _IMAGENET + _VTAB + _EXPERTS_A
_DIM2048 = [n for n in _ALL if n not in ("nasnet_large", "pnasnet_large")]


def test_tfhub_pools_match_the_reference():
  entries = zoo.entries("tfhub")
  got = {p: pools.members(p, entries) for p in pools.POOLS}
  assert {p: len(m) for p, m in got.items()} == {
      "all": 46, "expert": 16, "dim2048": 44, "imagenet": 15, "resnet50": 37}
  assert got["all"] == _ALL
  assert got["expert"] == _EXPERTS_A
  assert got["imagenet"] == _IMAGENET
  assert got["dim2048"] == _DIM2048
  assert sorted(got["resnet50"]) == sorted(_RESNET50)
  # EXPERT ⊂ RESNET-50 ⊂ DIM2048 ⊂ ALL and IMNETACCURACIES ⊂ ALL ([P] Sec. 4.2).
  sets = {p: set(m) for p, m in got.items()}
  assert sets["expert"] < sets["resnet50"] < sets["dim2048"] < sets["all"]
  assert sets["imagenet"] < sets["all"]


def test_tfhub_set_b_pools_have_the_same_sizes():
  entries = zoo.entries("tfhub_set_b")
  sizes = {p: len(pools.members(p, entries)) for p in pools.POOLS}
  assert sizes == {"all": 46, "expert": 16, "dim2048": 44, "imagenet": 15, "resnet50": 37}
  assert pools.members("expert", entries) == list(zoo.EXPERTS_SET_B)


def test_tfhub_size_pools_use_the_papers_thresholds_not_the_stand_ins():
  # The literal "params <= ResNet50-V2's" would give 17; the stand-ins' own count (23,500,352)
  # would drop the VAE/WAE (23,779,136). The paper's expert count keeps the 37.
  resnet50 = set(pools.members("resnet50", zoo.entries("tfhub")))
  assert {"vtab_vae", "vtab_wae_mmd", "nasnet_mobile"} <= resnet50
  assert "resnet_v1_101" not in resnet50
  # Any subset of the collection keeps its membership: no expert is needed for the threshold.
  imagenet_only = [e for e in zoo.entries("tfhub") if e.imagenet_accuracy is not None]
  assert pools.members("resnet50", imagenet_only) == _RESNET50[:8]
  assert len(pools.members("dim2048", imagenet_only)) == 13


@pytest.mark.parametrize("collection", ["tfhub", "tfhub_set_b"])
def test_task_agnostic_picks_on_tfhub_pools(collection):
  entries = zoo.entries(collection)
  by_name = {e.name: e for e in entries}
  pick = {p: strategies.task_agnostic([by_name[n] for n in pools.members(p, entries)], 1)[0]
          for p in pools.POOLS}
  # PNASNet-Large has the best ImageNet accuracy (82.9); Expert has no ImageNet accuracy, so
  # the model trained on the largest dataset wins: the Full JFT stand-in (ImageNet-21k, 14M).
  assert pick == {"all": "pnasnet_large", "imagenet": "pnasnet_large",
                  "dim2048": "inception_resnet_v2", "resnet50": "inception_v3",
                  "expert": "bit_m_r50x1"}
  assert strategies.task_agnostic_order([by_name[n] for n in pools.members(
      "expert", entries)])[0] == "bit_m_r50x1"


def test_non_tfhub_entries_keep_the_expert_relative_rule():
  # A user entry next to tfhub entries is measured against the largest expert (2048 / 23.5M).
  entries = zoo.entries("tfhub") + [
      ModelEntry("user_wide", "h", num_params=10, feature_dim=2049),
      ModelEntry("user_big", "h", num_params=23_600_000, feature_dim=16)]
  assert "user_wide" not in pools.members("dim2048", entries)
  assert "user_wide" in pools.members("resnet50", entries)
  assert "user_big" not in pools.members("resnet50", entries)
