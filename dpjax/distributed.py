"""Many processes: JAX's multi-controller runtime, and what dpjax adds to it.

One process per host (or per GPU) runs the same program over one global mesh
of all processes' devices (`jax.distributed`: the coordination service, gloo
collectives on CPU, NCCL/ICI on accelerators). dpjax adds four rules:

* **Secrets come from process 0.** Its `SecretRandomness` material (OS
  entropy) and, on resume, its secret store are broadcast to the others
  (`broadcast_json`), so every process derives the same noise key and the same
  sampler stream; none derives anything secret from the public seed.
* **One global draw, local slices.** Every process draws the same global
  Poisson batch (indices + mask, padded to `train.max_batch_size`) from that
  stream and gathers only the rows its devices hold (`local_rows`), i.e.
  `max_batch_size / num_processes` records per host; `global_batch` assembles
  the global array (`jax.make_array_from_process_local_data`).
* **One noise draw.** The noise is drawn from the replicated key for the
  global clipped sum inside the jitted step, so every replica (and every shard
  of a sharded sum) holds the same draw.
* **One writer.** Process 0 alone writes metrics, the ledger's report, the
  secret store, plots and exports (`is_main`); orbax writes the checkpoint
  from all processes (the work directory must be one shared path: NFS,
  Lustre, or a bucket mounted with gcsfuse; `gs://` URLs are not supported).

Formal guarantees:
  What is accounted is what runs: the ledger records one Poisson-subsampled
  mechanism per step, exactly as with one process, because the global draw,
  the clipped sum over all processes' rows and the single noise draw are the
  same computation partitioned over more devices (tested equal to one process
  to 1e-6). Secrets never travel anywhere but between the run's own processes
  (the coordination service's key-value store). A dead process makes the
  others exit with an error (heartbeat / collective failure), never continue
  on a partial batch.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

from absl import logging
import jax
import numpy as np

_INITIALIZED = False


def cluster_detected(env=os.environ) -> str | None:
  """The cluster `jax.distributed.initialize()` would detect, else None.

  SLURM (more than one task), Open MPI (more than one rank), an explicit
  `JAX_COORDINATOR_ADDRESS`, or a Cloud TPU VM (libtpu installed and TPU
  devices present).
  """
  ntasks = env.get('SLURM_STEP_NUM_TASKS') or env.get('SLURM_NTASKS')
  if 'SLURM_JOB_ID' in env and ntasks and int(ntasks) > 1:
    return 'slurm'
  if int(env.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return 'openmpi'
  if env.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  if (os.path.exists('/dev/accel0') or os.path.exists('/dev/vfio/0')) and (
      importlib.util.find_spec('libtpu') is not None):
    return 'cloud_tpu'
  return None


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *,
               initialization_timeout: int = 300,
               heartbeat_timeout_seconds: int = 100,
               env=os.environ) -> str:
  """Starts the multi-controller runtime when the command line or the
  cluster asks for it; returns what it did ('single process', 'explicit',
  or the detected cluster's name).

  Must run before anything touches a JAX backend. The three arguments are
  `jax.distributed.initialize`'s; give all three or none.

  Raises:
    ValueError: some but not all of the three are given, or they are
      inconsistent (named in the message).
  """
  global _INITIALIZED
  given = {'coordinator_address': coordinator_address,
           'num_processes': num_processes, 'process_id': process_id}
  missing = [k for k, v in given.items() if v is None]
  timeouts = dict(initialization_timeout=int(initialization_timeout),
                  heartbeat_timeout_seconds=int(heartbeat_timeout_seconds))
  if len(missing) < 3:
    if missing:
      raise ValueError(f'--{", --".join(missing)} missing: a many-process run '
                       'needs --coordinator_address, --num_processes and '
                       '--process_id together (or none of them, to let a '
                       'Cloud TPU VM or SLURM set them)')
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f'--process_id={process_id} with --num_processes='
                       f'{num_processes}: need 0 <= process_id < '
                       'num_processes')
    if ':' not in coordinator_address:
      raise ValueError(f'--coordinator_address={coordinator_address!r}: '
                       'expected HOST:PORT of process 0')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id, **timeouts)
    _INITIALIZED = True
    return 'explicit'
  cluster = cluster_detected(env)
  if cluster is None:
    return 'single process'
  jax.distributed.initialize(**timeouts)
  _INITIALIZED = True
  return cluster


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_main() -> bool:
  """True on the process that writes the run's files (process 0)."""
  return jax.process_index() == 0


def broadcast_json(value: Any) -> Any:
  """Process 0's `value` (JSON-serialisable) on every process.

  One process: returned as is. The payload travels through the run's own
  collectives (length first, then the UTF-8 bytes).
  """
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = (json.dumps(value).encode() if is_main() else b'')
  n = int(multihost_utils.broadcast_one_to_all(np.int64(len(data))))
  buf = np.zeros((n,), np.uint8)
  if is_main():
    buf[:] = np.frombuffer(data, np.uint8)
  out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return json.loads(bytes(out.astype(np.uint8)).decode())


def assert_same(value: str, what: str) -> None:
  """Raises on every process unless all processes hold the same `value`
  (e.g. the training data's digest: hosts must train on one dataset)."""
  if jax.process_count() == 1:
    return
  values = broadcast_all(value)
  if len(set(values)) > 1:
    raise RuntimeError(f'processes disagree on {what}: '
                       + ', '.join(f'process {i}: {v[:16]}'
                                   for i, v in enumerate(values)))


def broadcast_all(value: str) -> list[str]:
  """Every process's string, in process order, on every process."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  data = np.frombuffer(value.encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(
      np.int64(data.size))).reshape(-1)
  buf = np.zeros((int(lengths.max()),), np.uint8)
  buf[:data.size] = data
  rows = np.asarray(multihost_utils.process_allgather(buf))
  return [bytes(r[:n].astype(np.uint8)).decode()
          for r, n in zip(rows, lengths)]


def local_rows(sharding, global_rows: int) -> slice:
  """The rows of a `[global_rows, ...]` batch this process's devices hold
  under `sharding` (one contiguous block)."""
  if jax.process_count() == 1:
    return slice(0, global_rows)
  idx = sharding.addressable_devices_indices_map((global_rows,))
  starts = sorted({(s[0].start or 0, global_rows if s[0].stop is None
                    else s[0].stop) for s in idx.values()})
  lo, hi = starts[0][0], starts[-1][1]
  covered = sum(b - a for a, b in starts)
  if covered != hi - lo:
    raise RuntimeError(f'this process holds non-contiguous batch rows '
                       f'{starts}: build the mesh with devices grouped by '
                       'process (dpjax.sharding.make_mesh does)')
  return slice(lo, hi)


def global_batch(local: Any, sharding, global_rows: int) -> Any:
  """Global arrays (leading axis `global_rows`) from this process's rows."""
  if jax.process_count() == 1:
    return jax.device_put(local, sharding)

  def put(x):
    x = np.asarray(x)
    return jax.make_array_from_process_local_data(
        sharding, x, (global_rows,) + x.shape[1:])
  return jax.tree.map(put, local)


def replicate(tree: Any, sharding_tree: Any) -> Any:
  """Places host values that are identical on every process (initial
  parameters from the public seed, keys from the broadcast material) onto
  their (global) shardings. `sharding_tree` may be one sharding for all."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding_tree)

  def put(x, sh):
    if _is_key(x):
      data = np.asarray(jax.device_get(jax.random.key_data(x)))
      return jax.random.wrap_key_data(jax.device_put(data, sh),
                                      impl=jax.random.key_impl(x))
    return jax.device_put(np.asarray(jax.device_get(x)), sh)
  if isinstance(sharding_tree, jax.sharding.Sharding):
    return jax.tree.map(lambda x: put(x, sharding_tree), tree)
  return jax.tree.map(put, tree, sharding_tree)


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key)


def to_host(tree: Any) -> Any:
  """NumPy copies of (possibly sharded, multi-process) arrays: every process
  must call it (it gathers over all processes)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  def get(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable or (
        x.sharding.is_fully_replicated):
      return np.asarray(jax.device_get(x)) if not _is_key(x) else x
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(get, tree)


def barrier(name: str) -> None:
  """All processes reach `name` before any goes on (no-op for one)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def describe() -> dict[str, Any]:
  """Process layout, for the report and the logs."""
  return {'num_processes': jax.process_count(),
          'process_index': jax.process_index(),
          'local_devices': jax.local_device_count(),
          'global_devices': jax.device_count(),
          'platform': jax.devices()[0].platform}


def log_layout() -> None:
  d = describe()
  logging.info('process %d of %d: %d local of %d devices (%s)',
               d['process_index'], d['num_processes'], d['local_devices'],
               d['global_devices'], d['platform'])
