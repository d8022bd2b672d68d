"""Tests for dpjax.lmo_noise: samples against the mixture's analytic law."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from dpjax import lmo_noise
from dpjax.accounting import lmo

P03 = lmo.ARTIFACT_PARAMS[0.3]
PMIX = lmo.LMOParams(a1=0.3, k=1.5, theta=2.0, a3=0.4, lam=2.0, a4=0.7,
                     u_a=0.5, u_b=1.5)
N = 200_000


def _ks(samples: np.ndarray, params: lmo.LMOParams) -> float:
  """Kolmogorov-Smirnov distance to the exact CDF of the LMO noise:
  P(X <= x) = 1 - M(-x)/2 for x >= 0 and M(x)/2 for x < 0."""
  x = np.sort(samples.astype(np.float64))
  m = params.mgf(-np.abs(x))
  cdf = np.where(x >= 0, 1 - 0.5 * m, 0.5 * m)
  n = len(x)
  return float(max(np.max(np.arange(1, n + 1) / n - cdf),
                   np.max(cdf - np.arange(n) / n)))


KS_CRIT = 1.95 / math.sqrt(N)   # ~0.1% two-sided level


@pytest.mark.parametrize('params', [P03, PMIX])
def test_noise_matches_exact_distribution(params):
  x = np.asarray(lmo_noise.sample_lmo(jax.random.key(0), params, (N,)))
  assert _ks(x, params) < KS_CRIT


def test_ks_test_has_power_against_perturbed_parameters():
  # Checked by hand once: each perturbation fails; kept so that it stays so.
  truth = PMIX
  for wrong in (
      lmo.LMOParams(**(truth.to_dict() | {'k': 1.8})),
      lmo.LMOParams(**(truth.to_dict() | {'lam': 1.0 / truth.lam})),  # §5.9b
      lmo.LMOParams(**(truth.to_dict() | {'u_b': 2.0}))):
    x = np.asarray(lmo_noise.sample_lmo(jax.random.key(1), wrong, (N,)))
    assert _ks(x, truth) > KS_CRIT


@pytest.mark.parametrize('params', [P03, PMIX])
def test_inverse_scale_moments(params):
  e = np.asarray(lmo_noise.sample_inverse_scale(jax.random.key(2), params,
                                                (N,)), np.float64)
  p = params
  mean, var = p.mean, p.variance
  # Third cumulant: Gamma 2 k theta^3, Exponential 2/lam^3, Uniform 0.
  k3 = 2 * p.a1**3 * p.k * p.theta**3 + 2 * p.a3**3 / p.lam**3
  # Fourth central moment of the sum, for the variance's standard error.
  se_mean = math.sqrt(var / N)
  assert abs(e.mean() - mean) < 4 * se_mean
  se_var = math.sqrt(np.var((e - e.mean())**2) / N)
  assert abs(e.var() - var) < 4 * se_var
  c3 = ((e - e.mean())**3)
  assert abs(c3.mean() - k3) < 4 * math.sqrt(c3.var() / N)
  # The Laplace transform at the usefulness point, a whole-law check.
  w = np.exp(-lmo.USEFULNESS_GAMMA * e)
  assert abs(w.mean() - p.mgf(-lmo.USEFULNESS_GAMMA)) < 4 * w.std() / math.sqrt(N)


def test_noise_moments():
  # E|X| = E[1/eps'] = int_0^inf M(-s) ds; E[X^2] = 2 E[1/eps'^2]
  # = 2 int_0^inf s M(-s) ds; E[X] = 0; usefulness P(|X| <= 0.9) = 1 - M(-0.9).
  p = P03
  x = np.asarray(lmo_noise.sample_lmo(jax.random.key(3), p, (N,)), np.float64)
  e_abs = integrate.quad(lambda s: p.mgf(-s), 0, np.inf)[0]
  e_sq = 2 * integrate.quad(lambda s: s * p.mgf(-s), 0, np.inf)[0]
  a = np.abs(x)
  assert abs(a.mean() - e_abs) < 4 * a.std() / math.sqrt(N)
  assert abs(x.mean()) < 4 * x.std() / math.sqrt(N)
  sq = x**2
  assert abs(sq.mean() - e_sq) < 5 * sq.std() / math.sqrt(N)
  inside = (a <= 0.9)
  assert abs(inside.mean() - p.usefulness()) < 4 * math.sqrt(0.25 / N)


def test_transformation_state_key_and_scaling():
  # Gamma-free parameters keep compilation cheap; the law is tested above.
  p = lmo.LMOParams(a1=0.0, k=1, theta=1, a3=0.4, lam=2.0, a4=0.7, u_a=0.5,
                    u_b=1.5)
  tx = lmo_noise.lmo_noise(p, l1_sensitivity=1.0, key=jax.random.key(7))
  tx2 = lmo_noise.lmo_noise(p, l1_sensitivity=2.5, key=jax.random.key(7))
  grads = {'w': jnp.ones((3, 4)), 'b': jnp.zeros((4,), jnp.bfloat16)}
  state = tx.init(grads)
  assert jnp.issubdtype(state.key.dtype, jax.dtypes.prng_key)
  update = jax.jit(tx.update)
  out1, state1 = update(grads, state)
  out2, _ = update(grads, state1)
  assert out1['b'].dtype == jnp.float32            # no params: float32
  params = {'w': jnp.ones((3, 4)), 'b': jnp.ones((4,), jnp.bfloat16)}
  cast, _ = update(grads, state, params)           # params: their dtypes
  assert cast['b'].dtype == jnp.bfloat16 and cast['w'].dtype == jnp.float32
  np.testing.assert_array_equal(cast['w'], out1['w'])
  assert not np.allclose(out1['w'], out2['w'])     # fresh noise every step
  again, _ = update(grads, state)
  np.testing.assert_array_equal(out1['w'], again['w'])   # deterministic
  scaled, _ = tx2.update(grads, tx2.init(grads))
  np.testing.assert_allclose(np.asarray(scaled['w']) - 1,
                             2.5 * (np.asarray(out1['w']) - 1), rtol=1e-5,
                             atol=1e-5)


def test_bad_arguments():
  with pytest.raises(TypeError, match='typed PRNG key'):
    lmo_noise.lmo_noise(P03, l1_sensitivity=1.0,
                        key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='l1_sensitivity'):
    lmo_noise.lmo_noise(P03, l1_sensitivity=0.0, key=jax.random.key(0))
  with pytest.raises(ValueError, match='params'):
    lmo_noise.lmo_noise({'a1': 1}, l1_sensitivity=1.0, key=jax.random.key(0))


def test_l1_clipped_sum_has_l1_sensitivity_c():
  rng = np.random.default_rng(0)
  g = {'a': jnp.asarray(rng.normal(size=(5, 3, 2)), jnp.float32),
       'b': jnp.asarray(rng.normal(size=(5, 4)) * 10, jnp.float32)}
  mask = jnp.array([1, 1, 1, 1, 0], jnp.float32)
  c = 2.0
  s_all, norms = lmo_noise.l1_clipped_sum(g, mask, c)
  expect = np.abs(np.asarray(g['a'])).reshape(5, -1).sum(1) + np.abs(
      np.asarray(g['b'])).sum(1)
  np.testing.assert_allclose(norms, expect, rtol=1e-5)
  for i in range(4):   # removing a real example moves the sum by <= C in L1
    m = mask.at[i].set(0)
    s_i, _ = lmo_noise.l1_clipped_sum(g, m, c)
    diff = sum(float(jnp.sum(jnp.abs(s_all[k] - s_i[k]))) for k in g)
    assert diff <= c * (1 + 1e-5)
    assert diff == pytest.approx(min(c, expect[i]), rel=1e-4)
  # Padding contributes nothing.
  s_pad, _ = lmo_noise.l1_clipped_sum(g, mask.at[4].set(1) * 0 + mask, c)
  np.testing.assert_allclose(s_pad['a'], s_all['a'])
  assert lmo_noise.num_coordinates(s_all) == 10
  assert lmo_noise.l1_sensitivity_of_l2_clip(1.0, 100) == 10.0
