"""Device meshes and parameter shardings for training (the pjit model: jax.jit + NamedSharding).

Fine-tuning runs data-parallel by default: the batch is split over the mesh's 'data' axis and
every parameter is replicated. For models too large for one device, `param_shardings` shards
the parameters whose '/'-joined path matches a regex over the same axis (FSDP / ZeRO-3 style:
each device holds 1/n of those parameters and XLA gathers them where they are used). Either
way the computation is the same as on one device; only where the numbers live changes.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None, *,
              num_devices: int | None = None) -> Mesh:
  """A 1-D mesh with axis 'data' over `devices` (default: this process's local devices).

  In a multi-host run each process fine-tunes its own grid items, so its mesh spans only the
  devices it can address.

  Args:
    devices: the devices, or None for jax.local_devices().
    num_devices: use only the first `num_devices` of them (None: all).

  Returns:
    The mesh.
  """
  devices = list(jax.local_devices() if devices is None else devices)
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(f"num_devices must be in 1..{len(devices)} (the devices available), "
                       f"got {num_devices}")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def path_name(path) -> str:
  """The '/'-joined name of a pytree key path (dict keys, attributes, indices)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: tuple[int, ...], num_shards: int) -> P:
  """Shard the largest axis that `num_shards` divides; replicate when none does."""
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % num_shards == 0 and shape[axis] >= num_shards:
      spec = [None] * len(shape)
      spec[axis] = DATA_AXIS
      return P(*spec)
  return P()


def param_shardings(params: Any, mesh: Mesh, *, fsdp_regex: str | None = None,
                    fsdp_min_size: int = 2**16) -> Any:
  """A NamedSharding per parameter: replicated, or FSDP-sharded where the rule says so.

  Args:
    params: a pytree of arrays (or ShapeDtypeStructs).
    mesh: the mesh of `make_mesh`.
    fsdp_regex: None: every parameter replicated (data parallel). A regex: parameters whose
      '/'-joined path it matches (re.search) and that have at least `fsdp_min_size` elements
      are sharded over 'data' along their largest axis divisible by the mesh size (others
      stay replicated).
    fsdp_min_size: the smallest parameter worth sharding.

  Returns:
    A pytree of NamedSharding with the structure of `params`.
  """
  if fsdp_regex is None:
    return jax.tree.map(lambda _: replicated(mesh), params)
  try:
    pattern = re.compile(fsdp_regex)
  except re.error as e:
    raise ValueError(f"fsdp_regex {fsdp_regex!r} is not a valid regular expression: {e}") from e
  num_shards = mesh.shape[DATA_AXIS]

  def one(path, leaf):
    shape = tuple(np.shape(leaf))
    if pattern.search(path_name(path)) and int(np.prod(shape, dtype=np.int64)) >= fsdp_min_size:
      return NamedSharding(mesh, _fsdp_spec(shape, num_shards))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, params)
