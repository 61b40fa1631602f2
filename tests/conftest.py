"""Test setup: four fake CPU devices, quiet TensorFlow, no GPU for TensorFlow."""

import os
import pathlib
import sys

# Shared test helpers (tests/scores/score_data.py): --import-mode=importlib puts no test
# directory on sys.path by itself.
sys.path.insert(0, str(pathlib.Path(__file__).parent / "scores"))
sys.path.insert(0, str(pathlib.Path(__file__).parent))  # tests/grid_driver.py

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope="session")
def mini_cache_dir(tmp_path_factory):
  """One model_search cache (mini suite data, mini zoo) for every test that builds them."""
  return tmp_path_factory.mktemp("mini_cache")
