"""Device mesh and shardings built from the config.

One process drives all local devices through `jax.jit`: the batch axis is
sharded over the mesh axis 'data'. A parameter leaf takes the first rule
`(regex over the parameter path, PartitionSpec entries)` that matches it;
other leaves follow `mesh.param_sharding`: 'replicated' (whole on every
device) or 'fsdp' (fully sharded data parallel: each leaf of at least
`mesh.fsdp_min_size` elements is split along its largest axis divisible by
the 'data' axis size, ties to the later axis; smaller leaves, and leaves with
no divisible axis, stay replicated). The trainer places the TrainState
(trainable parameters and the optimizer state that mirrors them: Adam's mu
and nu, the EMA) and the frozen parameters with `config_shardings`; XLA
all-gathers a sharded weight where the forward and backward passes use it and
reduces the gradient sum into the shards. The mesh uses Auto axis types so
that XLA propagates shardings through the micro-batch reshapes.

Noise for a sharded sum: the noise stage (`dpjax.noise`) draws ONE
`jax.random.normal(key, leaf.shape)` per leaf over the full (global) leaf
shape, from the replicated noise key, exactly as on one device; sharding
only decides which device holds which slice of that one draw. So the noise
a device adds to its shard is its slice of the same Gaussian vector a
single device would add: never the same values repeated on every shard
(which would correlate the noise across shards) and never a fresh draw per
shard. For the 128-bit `rbg` noise key (`dpjax.randomness`) this is how
XLA treats `rng-bit-generator` by default: its SPMD partitioner does not
split the generator, so each device evaluates the generator over the full
leaf shape and keeps its slice (JAX documents `rbg` as identical across
shardings; XLA's TPU flag `--xla_tpu_spmd_rng_bit_generator_unsafe` would
trade that for sharded generation and must not be set). Checked with
jax 0.10.2 on XLA:CPU: the compiled per-device program generates the full
leaf shape and slices it (the expanded generator is fused with the slice, so
the temporary memory stays per-shard) and the sharded draw equals the
unsharded one bit for bit. `tests/test_sharding.py` checks this on the
backend it runs on: one FSDP step on 8 devices equals the same step on one
device (noise on, same secret randomness), the noise shards differ from each
other, and a planted per-shard draw with the same key is caught.
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


def fsdp_spec(shape: Sequence[int], n_data: int,
              min_size: int) -> tuple[Any, ...]:
  """The FSDP PartitionSpec entries of a leaf of `shape` ('data' of size n_data).

  The largest axis divisible by `n_data` (ties: the later axis) goes over
  'data'; `()` (replicated) when `n_data <= 1`, when the leaf has fewer than
  `min_size` elements, or when no axis is divisible. Trailing `None`s are
  dropped (`('data',)`, not `('data', None)`): the canonical form XLA gives
  its outputs, so a placed state and a step's output compare equal.
  """
  shape = tuple(int(d) for d in shape)
  if n_data <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return ()
  axes = [i for i in np.argsort(shape, kind='stable')[::-1]
          if shape[i] % n_data == 0]
  if not axes:
    return ()
  axis = int(axes[0])
  return (None,) * axis + ('data',)


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
  if (isinstance(fsdp_min_size, bool) or
      not isinstance(fsdp_min_size, (int, np.integer)) or fsdp_min_size < 0):
    raise ConfigError('mesh.fsdp_min_size', f'{fsdp_min_size!r} is not a '
                      'non-negative integer', 'an integer >= 0 (elements)')
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
      return NamedSharding(mesh, P(*fsdp_spec(np.shape(leaf), n_data,
                                              fsdp_min_size)))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(for_leaf, params)


def config_shardings(tree: Any, mesh: Mesh, config) -> Any:
  """`param_shardings` with the run's rules, preset and FSDP threshold."""
  return param_shardings(tree, mesh,
                         tuple(tuple(r) for r in config.sharding_rules),
                         preset=config.mesh.param_sharding,
                         fsdp_min_size=config.mesh.fsdp_min_size)
