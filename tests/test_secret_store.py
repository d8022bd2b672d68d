"""The secret store: owner-only files, keys split from the public state."""

import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import randomness
from dpjax import secret_store


def _state():
  s = randomness.SecretRandomness.from_os_entropy()
  return {'w': jnp.arange(3.0), 'noise': s.noise_key(),
          'inner': (jnp.ones(2), s.dropout_key())}


def test_split_zeroes_every_key_and_merge_restores_it():
  state = _state()
  public, keys = secret_store.split_keys(state)
  assert len(keys) == 2
  assert {k['impl'] for k in keys} == {'rbg', 'threefry2x32'}
  for leaf in (public['noise'], public['inner'][1]):
    assert not np.any(np.asarray(jax.random.key_data(leaf)))
  np.testing.assert_array_equal(public['w'], state['w'])
  back = secret_store.merge_keys(public, keys)
  for a, b in ((back['noise'], state['noise']),
               (back['inner'][1], state['inner'][1])):
    assert jax.random.key_impl(a) == jax.random.key_impl(b)
    np.testing.assert_array_equal(jax.random.key_data(a),
                                  jax.random.key_data(b))
  with pytest.raises(ValueError, match='fewer keys'):
    secret_store.merge_keys(public, keys[:1])


def test_store_is_owner_only_atomic_and_pruned(tmp_path):
  store = secret_store.SecretStore(str(tmp_path), keep=2)
  material = os.urandom(32)
  _, keys = secret_store.split_keys(_state())
  sampler = {'bit_generator': {'state': {'state': 2**127 + 5}}}
  for step in (1, 2, 3, 4):
    store.save(step, material=material, keys=keys, sampler_state=sampler)
  assert store.steps() == [2, 3, 4]  # keep + 1 newest
  mode = stat.S_IMODE(os.stat(store.directory).st_mode)
  assert mode == 0o700
  for name in os.listdir(store.directory):
    assert stat.S_IMODE(os.stat(os.path.join(store.directory, name)).st_mode) \
        == 0o600
  got = store.load(4)
  assert got['material'] == material and got['keys'] == keys
  assert got['sampler'] == sampler
  assert store.load(1) is None
  store.delete()
  assert not os.path.exists(store.directory) and store.steps() == []
