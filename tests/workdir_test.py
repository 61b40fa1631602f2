"""Tests for atomic writes and validated reads of workdir files."""

import json

import numpy as np
import pytest

from model_search import workdir as wd


def test_json_roundtrip_and_fingerprint(tmp_path):
  path = tmp_path / "a" / "b.json"
  wd.write_json(path, {"x": 1.5, "fingerprint": "abc"})
  assert wd.read_json(path, fingerprint_="abc", required=("x",)) == {"x": 1.5, "fingerprint": "abc"}
  assert not list(path.parent.glob(".*tmp*")), "temp files must not be left behind"


def test_json_stale_fingerprint_is_discarded(tmp_path):
  path = tmp_path / "b.json"
  wd.write_json(path, {"x": 1, "fingerprint": "old"})
  assert wd.read_json(path, fingerprint_="new") is None
  assert not path.exists()


@pytest.mark.parametrize("content", ['{"x": 1', "", "[1, 2]", '{"y": 2}'])
def test_json_corrupt_or_incomplete_is_discarded(tmp_path, content):
  path = tmp_path / "c.json"
  path.write_text(content)
  assert wd.read_json(path, required=("x",)) is None
  assert not path.exists()


def test_json_refuses_nan(tmp_path):
  with pytest.raises(ValueError):
    wd.write_json(tmp_path / "d.json", {"x": float("nan")})
  assert not (tmp_path / "d.json").exists()


def test_npz_roundtrip_and_checks(tmp_path):
  path = tmp_path / "f.npz"
  feats = np.random.RandomState(0).randn(5, 3).astype(np.float32)
  wd.write_npz(path, fingerprint_="fp", features=feats, labels=np.arange(5))
  out = wd.read_npz(path, fingerprint_="fp", shapes={"features": (None, 3), "labels": (None,)})
  np.testing.assert_array_equal(out["features"], feats)
  # A wrong expected shape, fingerprint or missing key: discarded, not used.
  for kwargs in [dict(fingerprint_="fp", shapes={"features": (None, 4)}),
                 dict(fingerprint_="other", shapes={}),
                 dict(fingerprint_="fp", shapes={"logits": (None,)}),
                 dict(fingerprint_="fp", shapes={"features": (None, 3)},
                      dtypes={"features": np.float64})]:
    wd.write_npz(path, fingerprint_="fp", features=feats, labels=np.arange(5))
    assert wd.read_npz(path, **kwargs) is None
    assert not path.exists()
  wd.write_npz(path, fingerprint_="fp", features=feats, labels=np.arange(5))
  assert wd.read_npz(path, fingerprint_="fp", shapes={"features": (None, 3)},
                     dtypes={"features": np.float32, "absent": np.int8}) is not None


def test_npz_truncated_or_nonfinite_is_discarded(tmp_path):
  path = tmp_path / "g.npz"
  feats = np.ones((50, 8), np.float32)
  wd.write_npz(path, fingerprint_="fp", features=feats)
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  assert wd.read_npz(path, fingerprint_="fp", shapes={"features": (None, 8)}) is None
  feats[3, 2] = np.nan
  wd.write_npz(path, fingerprint_="fp", features=feats)
  assert wd.read_npz(path, fingerprint_="fp", shapes={"features": (None, 8)}) is None


def test_not_writable_workdir(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(ValueError, match="not writable"):
    wd.ensure_writable(blocker / "sub")


def test_fingerprint_is_order_independent_for_dicts():
  assert wd.fingerprint({"a": 1, "b": [1, 2]}) == wd.fingerprint({"b": (1, 2), "a": 1})
  assert wd.fingerprint({"a": 1}) != wd.fingerprint({"a": 2})
