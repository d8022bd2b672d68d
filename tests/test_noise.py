"""Gaussian noise stage: KS test of its scale, key threading, dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dpjax import noise


def _samples(stddev, steps=3, dim=512):
  tx = noise.gaussian_noise(stddev, jax.random.key(42))
  zeros = {'a': jnp.zeros((dim // 2,)), 'b': jnp.zeros((2, dim // 4))}
  state = tx.init(zeros)
  update = jax.jit(tx.update)
  out = []
  for _ in range(steps):
    u, state = update(zeros, state)
    out.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(u)]))
  return np.stack(out)


def test_noise_std_passes_ks_and_fails_at_wrong_scales():
  sigma_c = 1.7
  samples = _samples(sigma_c).ravel()
  assert stats.kstest(samples, stats.norm(scale=sigma_c).cdf).pvalue > 0.025
  for factor in (2 / 3, 3 / 2):
    p = stats.kstest(samples, stats.norm(scale=factor * sigma_c).cdf).pvalue
    assert p < 0.05, factor


def test_noise_differs_every_step_and_is_reproducible():
  a = _samples(1.0)
  assert not np.allclose(a[0], a[1]) and not np.allclose(a[1], a[2])
  np.testing.assert_array_equal(a, _samples(1.0))


def test_dtype_preserved_and_untyped_key_refused():
  tx = noise.gaussian_noise(1.0, jax.random.key(0))
  x = {'h': jnp.zeros((4,), jnp.bfloat16)}
  u, _ = tx.update(x, tx.init(x))
  assert u['h'].dtype == jnp.bfloat16
  with pytest.raises(TypeError, match='typed PRNG key'):
    noise.gaussian_noise(1.0, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='stddev'):
    noise.gaussian_noise(-1.0, jax.random.key(0))
