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


def test_noise_std_within_one_percent():
  """The KS test above has no power against a 2% scale error; the sample
  std of 3 x 65,536 draws (standard error 0.16%) has."""
  sigma_c = 1.7
  samples = _samples(sigma_c, dim=65_536).astype(np.float64)
  assert abs(np.mean(samples)) < 5 * sigma_c / np.sqrt(samples.size)
  assert np.std(samples) == pytest.approx(sigma_c, rel=0.01)


def test_noise_differs_every_step_and_is_reproducible():
  a = _samples(1.0)
  assert not np.allclose(a[0], a[1]) and not np.allclose(a[1], a[2])
  np.testing.assert_array_equal(a, _samples(1.0))


def test_dtype_follows_params_and_untyped_key_refused():
  tx = noise.gaussian_noise(1.0, jax.random.key(0))
  x = {'h': jnp.zeros((4,), jnp.bfloat16)}
  params = {'h': jnp.ones((4,), jnp.bfloat16)}
  state = tx.init(x)
  u, _ = tx.update(x, state)               # no params: float32
  assert u['h'].dtype == jnp.float32
  v, _ = tx.update(x, state, params)       # params: their dtype
  assert v['h'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(v['h'], np.float32),
                                np.asarray(u['h'].astype(jnp.bfloat16),
                                           np.float32))
  # A params tree of another structure (e.g. RGP carriers): float32.
  w, _ = tx.update(x, state, {'other': params['h']})
  assert w['h'].dtype == jnp.float32
  with pytest.raises(TypeError, match='typed PRNG key'):
    noise.gaussian_noise(1.0, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='stddev'):
    noise.gaussian_noise(-1.0, jax.random.key(0))
