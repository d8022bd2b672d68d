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


def _fsdp_spec(shape: tuple[int, ...], n_data: int,
               min_size: int) -> tuple[Any, ...]:
  """FSDP: the largest axis divisible by `n_data` goes over 'data'."""
  if n_data <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return ()
  axes = [i for i in np.argsort(shape, kind='stable')[::-1]
          if shape[i] % n_data == 0]
  if not axes:
    return ()
  spec = [None] * len(shape)
  spec[int(axes[0])] = 'data'
  return tuple(spec)


def param_shardings(params: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, Sequence[Any]]],
                    preset: str = 'replicated',
                    fsdp_min_size: int = 1024) -> Any:
  """NamedSharding per leaf: the first matching rule, else the preset.

  `preset='replicated'` keeps every other leaf whole on every device;
  `preset='fsdp'` shards each leaf of at least `fsdp_min_size` elements along
  its largest axis divisible by the 'data' axis size (parameters and the
  optimizer state that mirrors them), replicating the rest.
  """
  if preset not in ('replicated', 'fsdp'):
    raise ConfigError('mesh.param_sharding', f'unknown preset {preset!r}',
                      "'replicated' or 'fsdp'")
  compiled = [(re.compile(r), tuple(spec)) for r, spec in rules]
  n_data = mesh.shape['data']

  def for_leaf(path, leaf):
    name = '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)
    for rx, spec in compiled:
      if rx.fullmatch(name):
        if len(spec) > np.ndim(leaf):
          raise ConfigError('sharding_rules', f'rule {rx.pattern!r} gives '
                            f'{len(spec)} axes for {name} of rank '
                            f'{np.ndim(leaf)}', 'a spec no longer than the rank')
        return NamedSharding(mesh, P(*spec))
    if preset == 'fsdp':
      return NamedSharding(mesh, P(*_fsdp_spec(tuple(np.shape(leaf)), n_data,
                                               fsdp_min_size)))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(for_leaf, params)


def config_shardings(tree: Any, mesh: Mesh, config) -> Any:
  """`param_shardings` with the run's rules, preset and FSDP threshold."""
  return param_shardings(tree, mesh,
                         tuple(tuple(r) for r in config.sharding_rules),
                         preset=config.mesh.param_sharding,
                         fsdp_min_size=config.mesh.fsdp_min_size)
