"""Workdir layout, atomic writes and validated reads: every arrow of the pipeline is a file here.

A result file is written atomically (temp file in the same folder, then rename), carries the
fingerprint of what produced it, and is used only when it parses, holds the expected keys and
carries the expected fingerprint. Anything else (truncated, corrupt, stale) is reported, removed
and recomputed: a killed run resumes where it stopped and never silently uses a bad file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import uuid
from typing import Any, Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np


class CorruptFileError(ValueError):
  """A cache or result file exists but cannot be used."""


def fingerprint(*parts: Any) -> str:
  """A short stable hash of JSON-able parts (configs, names, versions)."""
  blob = json.dumps(parts, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def ensure_writable(workdir: str | os.PathLike[str]) -> epath.Path:
  """Creates `workdir` if needed and checks that a file can be written there."""
  path = epath.Path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write_probe_{uuid.uuid4().hex}"
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise ValueError(
        f"Workdir {str(path)!r} is not writable ({e.strerror or e}); "
        "pass --workdir=<a directory you can write to>.") from e
  return path


def _atomic_write_bytes(path: epath.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
  tmp.write_bytes(data)
  tmp.replace(path)  # os.replace on local disks: atomic, overwrites.


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
  """Writes JSON atomically; NaN and inf are refused rather than written."""
  data = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)
  _atomic_write_bytes(epath.Path(path), data.encode())


def write_text(path: str | os.PathLike[str], text: str) -> None:
  _atomic_write_bytes(epath.Path(path), text.encode())


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
  _atomic_write_bytes(epath.Path(path), data)


def write_npz(path: str | os.PathLike[str], *, fingerprint_: str,
              **arrays: np.ndarray) -> None:
  """Writes plain arrays (no pickles) and a fingerprint atomically."""
  buf = io.BytesIO()
  np.savez(buf, __fingerprint__=np.array(fingerprint_), **arrays)
  _atomic_write_bytes(epath.Path(path), buf.getvalue())


def _discard(path: epath.Path, why: str) -> None:
  logging.warning("Discarding %s: %s; it will be recomputed.", path, why)
  try:
    path.unlink()
  except OSError:
    pass


def read_json(path: str | os.PathLike[str], *, fingerprint_: str | None = None,
              required: Sequence[str] = ()) -> dict[str, Any] | None:
  """Reads a result JSON; None when absent, or corrupt/stale (then it is removed).

  Args:
    path: the file.
    fingerprint_: when given, the file's 'fingerprint' field must equal it.
    required: keys that must be present.

  Returns:
    The parsed dict, or None when the item has to be (re)computed.
  """
  path = epath.Path(path)
  if not path.exists():
    return None
  try:
    obj = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    _discard(path, f"not valid JSON ({e})")
    return None
  if not isinstance(obj, dict):
    _discard(path, "not a JSON object")
    return None
  missing = [k for k in required if k not in obj]
  if missing:
    _discard(path, f"missing keys {missing}")
    return None
  if fingerprint_ is not None and obj.get("fingerprint") != fingerprint_:
    _discard(path, f"fingerprint {obj.get('fingerprint')!r} != {fingerprint_!r} "
             "(made by another config or model version)")
    return None
  return obj


def read_npz(path: str | os.PathLike[str], *, fingerprint_: str,
             shapes: Mapping[str, tuple[int | None, ...]],
             dtypes: Mapping[str, Any] | None = None) -> dict[str, np.ndarray] | None:
  """Reads a cached array file; None when absent or unusable (then it is removed).

  Args:
    path: the .npz file.
    fingerprint_: the expected producer fingerprint.
    shapes: expected keys with shapes (None matches any size on that axis).
      Float arrays must be finite.
    dtypes: expected dtypes of some of the keys.

  Returns:
    The arrays, or None when they have to be recomputed.
  """
  path = epath.Path(path)
  if not path.exists():
    return None
  try:
    with path.open("rb") as f:
      with np.load(f, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
  except Exception as e:  # pylint: disable=broad-except  # zip/CRC/format errors vary.
    _discard(path, f"unreadable ({type(e).__name__}: {e})")
    return None
  if str(arrays.pop("__fingerprint__", "")) != fingerprint_:
    _discard(path, "fingerprint mismatch (made by another config or model version)")
    return None
  for key, shape in shapes.items():
    if key not in arrays:
      _discard(path, f"missing array {key!r}")
      return None
    a = arrays[key]
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
      _discard(path, f"array {key!r} has shape {a.shape}, expected {shape}")
      return None
    if dtypes and key in dtypes and a.dtype != np.dtype(dtypes[key]):
      _discard(path, f"array {key!r} has dtype {a.dtype}, expected {np.dtype(dtypes[key])}")
      return None
    if a.dtype.kind == "f" and not np.isfinite(a).all():
      _discard(path, f"array {key!r} has non-finite values")
      return None
  return arrays


def is_finite_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# Layout (design.md): one file per item.
def features_path(workdir, model: str, task: str, split: str) -> epath.Path:
  return epath.Path(workdir) / "features" / model / task / f"{split}.npz"


def scores_path(workdir, model: str, task: str) -> epath.Path:
  return epath.Path(workdir) / "scores" / model / f"{task}.json"


def finetune_path(workdir, model: str, task: str) -> epath.Path:
  return epath.Path(workdir) / "finetune" / model / f"{task}.json"


def report_dir(workdir) -> epath.Path:
  return epath.Path(workdir) / "report"


def failure_path(workdir, stage: str, model: str, task: str) -> epath.Path:
  return epath.Path(workdir) / "failures" / stage / model / f"{task}.json"
