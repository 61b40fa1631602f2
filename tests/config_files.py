"""Loads the repository's configs/NAME.py files for tests (configs/ is not a package)."""

import importlib
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def module(name: str):
  """The module configs/NAME.py."""
  sys.path.insert(0, str(REPO))
  try:
    return importlib.import_module(f"configs.{name}")
  finally:
    sys.path.pop(0)


def get_config(name: str, arg=None):
  """configs/NAME.py's get_config(arg)."""
  return module(name).get_config(arg)
