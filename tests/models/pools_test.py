"""Tests for pool membership against the paper's definitions, on hand-made entries."""

import pytest

from model_search.models import pools
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
