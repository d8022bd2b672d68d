"""Device mesh and shardings built from the config.

One process drives all local devices through `jax.jit`: the batch axis is
sharded over the mesh axis 'data'; parameters are replicated unless a rule
`(regex over the parameter path, PartitionSpec entries)` matches. The mesh
uses Auto axis types so that XLA propagates shardings through the
micro-batch reshapes; the noise is drawn once for the replicated gradient sum
(threefry is partitionable), so every device adds the same noise.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dpjax.configuration import ConfigError


def make_mesh(data: int, model: int) -> Mesh:
  """A ('data', 'model') mesh; -1 takes all remaining devices."""
  devices = jax.devices()
  n = len(devices)
  if data == -1 and model == -1:
    raise ConfigError('mesh.data', 'mesh.data and mesh.model are both -1',
                      'at most one -1')
  if data == -1:
    data = n // model
  if model == -1:
    model = n // data
  if data * model > n or data < 1 or model < 1:
    raise ConfigError('mesh.data', f'a {data}x{model} mesh needs '
                      f'{data * model} devices but {n} are available',
                      f'data * model <= {n}')
  grid = np.asarray(devices[:data * model]).reshape(data, model)
  return Mesh(grid, ('data', 'model'))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_shardings(params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Sequence[Any]]]) -> Any:
  """NamedSharding per leaf: the first matching rule, else replicated."""
  compiled = [(re.compile(r), tuple(spec)) for r, spec in rules]

  def for_leaf(path, leaf):
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
    for rx, spec in compiled:
      if rx.fullmatch(name):
        if len(spec) > np.ndim(leaf):
          raise ConfigError('sharding_rules', f'rule {rx.pattern!r} gives '
                            f'{len(spec)} axes for {name} of rank '
                            f'{np.ndim(leaf)}', 'a spec no longer than the rank')
        return NamedSharding(mesh, P(*spec))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(for_leaf, params)
