"""Secret randomness: OS entropy by default, 128-bit noise keys, no leaks."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dpjax import randomness
from dpjax import steps


def _dp(seed):
  return ml_collections.ConfigDict({'insecure_fixed_randomness_seed': seed})


def test_default_draws_fresh_os_entropy_every_time():
  a = randomness.SecretRandomness.from_config(_dp(-1))
  b = randomness.SecretRandomness.from_config(_dp(-1))
  assert not a.is_insecure and a.warning() is None
  assert len(a.to_bytes()) == 32 and a.to_bytes() != b.to_bytes()
  na = jax.random.key_data(a.noise_key())
  nb = jax.random.key_data(b.noise_key())
  assert not np.array_equal(na, nb)
  # Different batches: the samplers' streams differ.
  ra = np.random.Generator(np.random.PCG64(a.sampler_seed()))
  rb = np.random.Generator(np.random.PCG64(b.sampler_seed()))
  assert not np.array_equal(ra.integers(0, 2**62, 8), rb.integers(0, 2**62, 8))


def test_noise_key_has_128_bits_and_streams_are_separate():
  s = randomness.SecretRandomness.from_os_entropy()
  noise = s.noise_key()
  assert str(jax.random.key_impl(noise)) == 'rbg'
  words = np.asarray(jax.random.key_data(noise))
  assert words.shape == (4,) and words.dtype == np.uint32
  drop = np.asarray(jax.random.key_data(s.dropout_key()))
  assert drop.shape == (2,)
  # Labels give unrelated streams (no shared words between purposes).
  assert not set(words.tolist()) & set(drop.tolist())
  # A seed derived from 32 bytes of material, not a 31-bit integer.
  assert s.sampler_seed().entropy.bit_length() > 64


def test_fixed_seed_mode_is_deterministic_and_says_so():
  a = randomness.SecretRandomness.from_config(_dp(3))
  b = randomness.SecretRandomness.from_config(_dp(3))
  c = randomness.SecretRandomness.from_config(_dp(4))
  assert a.to_bytes() == b.to_bytes() != c.to_bytes()
  np.testing.assert_array_equal(jax.random.key_data(a.noise_key()),
                                jax.random.key_data(b.noise_key()))
  assert a.is_insecure and 'insecure_fixed_randomness_seed=3' in a.warning()
  assert a.describe() == {'source': 'insecure_fixed_seed',
                          'insecure_fixed_randomness_seed': 3}
  # Re-keying (resume without secrets) never reuses the old streams.
  r = a.rekeyed('resume/2')
  assert r.to_bytes() != a.to_bytes() and r.insecure_fixed_seed == 3
  assert r.to_bytes() == b.rekeyed('resume/2').to_bytes()


def test_repr_never_shows_the_material():
  s = randomness.SecretRandomness.from_os_entropy()
  text = repr(s) + str(s)
  assert s.to_bytes().hex() not in text and 'os_entropy' in text
  with pytest.raises(ValueError, match='32 bytes'):
    randomness.SecretRandomness(b'short')


def test_record_keys_depend_on_the_record_not_the_slot():
  root = randomness.SecretRandomness.from_os_entropy().dropout_key()
  ids = jnp.array([3, 7, 11, 0], jnp.int32)
  k1 = jax.random.key_data(steps.record_keys(root, jnp.int32(5), ids))
  # Record 7 removed: 11 moves from slot 2 to slot 1, keeps its key.
  k2 = jax.random.key_data(steps.record_keys(
      root, jnp.int32(5), jnp.array([3, 11, 0, 0], jnp.int32)))
  np.testing.assert_array_equal(k1[2], k2[1])
  np.testing.assert_array_equal(k1[0], k2[0])
  # Other step, other keys; other records, other keys.
  k3 = jax.random.key_data(steps.record_keys(root, jnp.int32(6), ids))
  assert not np.array_equal(k1[0], k3[0])
  assert not np.array_equal(k1[0], k1[1])
  # Masks drawn from a record's key under vmap equal those drawn alone.
  keys = steps.record_keys(root, jnp.int32(5), ids)
  vm = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, (16,)))(keys)
  alone = jax.random.bernoulli(keys[2], 0.5, (16,))
  np.testing.assert_array_equal(vm[2], alone)
