"""Secret state at rest: noise keys, sampler state and seed material.

Exact resume needs the noise PRNG keys (they live in the optimizer state) and
the sampler's generator state; both are secret. They are kept apart from the
public orbax checkpoint:

* `split_keys(state)` replaces every typed PRNG key leaf of a pytree by a
  zero key of the same implementation (what the public checkpoint stores) and
  returns the key data separately;
* `SecretStore` writes that key data, the sampler state and the seed material
  to `workdir/secret/step_<N>.json`: directory mode 0700, files 0600, written
  atomically (temporary file, fsync, rename) *before* the public checkpoint of
  the same step, so every checkpoint has its secrets;
* `merge_keys(state, secret)` puts the keys back on restore.

When a run completes the store is deleted unless `dp.keep_secret_state`; a
finished run can still be re-reported and exported from the public checkpoint.

Formal guarantees:
  Nothing written outside `workdir/secret/` contains key material: the public
  checkpoint holds all-zero keys in place of the noise keys and no sampler
  state (tested by searching a run's other outputs for the key bytes).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

SECRET_DIR = 'secret'


def _is_key(x) -> bool:
  return (isinstance(x, jax.Array) and
          jnp.issubdtype(x.dtype, jax.dtypes.prng_key))


def split_keys(tree) -> tuple[Any, list[dict[str, Any]]]:
  """(tree with every key leaf zeroed, [{'impl', 'data'} per key leaf])."""
  leaves, treedef = jax.tree.flatten(tree)
  public, secret = [], []
  for x in leaves:
    if _is_key(x):
      impl = str(jax.random.key_impl(x))
      data = np.asarray(jax.device_get(jax.random.key_data(x)))
      secret.append({'impl': impl, 'shape': list(data.shape),
                     'data': data.astype(np.uint32).ravel().tolist()})
      public.append(jax.random.wrap_key_data(
          jax.device_put(np.zeros(data.shape, np.uint32), x.sharding),
          impl=impl))
    else:
      public.append(x)
  return jax.tree.unflatten(treedef, public), secret


def merge_keys(tree, secret: list[dict[str, Any]]):
  """Puts the key leaves of `secret` (from `split_keys`) back into `tree`."""
  leaves, treedef = jax.tree.flatten(tree)
  it = iter(secret)
  out = []
  for x in leaves:
    if _is_key(x):
      try:
        s = next(it)
      except StopIteration as e:
        raise ValueError('the secret state holds fewer keys than the '
                         'training state needs') from e
      data = np.asarray(s['data'], np.uint32).reshape(s['shape'])
      # NumPy in: device_put onto a multi-process sharding takes host data.
      out.append(jax.random.wrap_key_data(jax.device_put(data, x.sharding),
                                          impl=s['impl']))
    else:
      out.append(x)
  if next(it, None) is not None:
    raise ValueError('the secret state holds more keys than the training '
                     'state has')
  return jax.tree.unflatten(treedef, out)


class SecretStore:
  """Owner-only JSON files `step_<N>.json` under `workdir/secret/`."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), SECRET_DIR)
    self.keep = int(keep)

  def _ensure_dir(self) -> None:
    os.makedirs(self.directory, mode=0o700, exist_ok=True)
    os.chmod(self.directory, stat.S_IRWXU)

  def _path(self, step: int) -> str:
    return os.path.join(self.directory, f'step_{int(step)}.json')

  def steps(self) -> list[int]:
    if not os.path.isdir(self.directory):
      return []
    found = [re.fullmatch(r'step_(\d+)\.json', n)
             for n in os.listdir(self.directory)]
    return sorted(int(m.group(1)) for m in found if m)

  def save(self, step: int, *, material: bytes, keys, sampler_state) -> None:
    """Writes step N's secrets atomically with mode 0600; prunes old ones."""
    self._ensure_dir()
    payload = {'step': int(step),
               'material': base64.b64encode(material).decode(),
               'keys': keys, 'sampler': sampler_state}
    path = self._path(step)
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      json.dump(payload, f, default=_default)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
    os.replace(tmp, path)
    # Keep one more than the checkpoints, so the newest complete checkpoint
    # always has its secrets even while a newer one is being written.
    for old in self.steps()[:-(self.keep + 1)]:
      os.remove(self._path(old))

  def load(self, step: int) -> dict[str, Any] | None:
    path = self._path(step)
    if not os.path.exists(path):
      return None
    with open(path, encoding='utf-8') as f:
      payload = json.load(f)
    payload['material'] = base64.b64decode(payload['material'])
    return payload

  def delete(self) -> None:
    """Removes every secret file (the run is complete)."""
    if os.path.isdir(self.directory):
      shutil.rmtree(self.directory)


def _default(o):
  if isinstance(o, np.integer):
    return int(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f'not JSON serializable: {type(o).__name__}')
