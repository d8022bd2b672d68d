"""Gaussian noise stage: KS test of its scale, key threading, dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


# ---------------------------------------------------------------------------
# noised_float32: the grouped draw and its XLA:CPU fence.

def _tree(sizes):
  return {f'l{i:02d}': jnp.full((n,), float(i), jnp.float32)
          for i, n in enumerate(sizes)}


def test_fence_groups_are_consecutive_and_capped(monkeypatch):
  monkeypatch.setattr(noise, '_FENCE_MIN_ELEMENTS', 10)
  sizes = [3, 4, 2, 8, 1, 1, 9, 20, 5]
  groups = noise._fence_groups([jnp.zeros((n,)) for n in sizes])
  assert [i for g in groups for i in g] == list(range(len(sizes)))
  cap = max(sizes)
  assert all(sum(sizes[i] for i in g) <= cap for g in groups)
  # Greedy: no two neighbouring groups could have been merged.
  assert all(sum(sizes[i] for i in a + b) > cap
             for a, b in zip(groups, groups[1:]))


@pytest.mark.parametrize('fence', [True, False])
def test_noised_float32_is_tree_gaussian_per_group(monkeypatch, fence):
  """Independent reference: group j gets updates + tree_gaussian(k_j)."""
  monkeypatch.setattr(noise, '_FENCE_MIN_ELEMENTS', 300)
  monkeypatch.setattr(noise, '_fence_on', lambda: fence)
  sizes = [100, 150, 40, 300, 7, 260]
  tree = _tree(sizes)
  key = jax.random.key(5, impl='rbg')
  got = jax.jit(lambda k, t: noise.noised_float32(k, t, 0.7))(key, tree)
  leaves = jax.tree.leaves(tree)
  groups = noise._fence_groups(leaves)
  assert len(groups) == 3
  names = sorted(tree)
  for k, g in zip(jax.random.split(key, len(groups)), groups):
    us = [leaves[i] for i in g]
    want = [u + z for u, z in zip(us, noise.tree_gaussian(k, us, 0.7))]
    for i, w in zip(g, want):
      np.testing.assert_allclose(got[names[i]], w, rtol=0, atol=1e-6)
  z = np.concatenate([np.asarray(got[n]) - i for i, n in enumerate(names)])
  assert abs(np.std(z) / 0.7 - 1) < 0.1
  # Leaves of equal size in different groups get different noise.
  assert not np.allclose(got['l00'] - 0.0, got['l01'][:100] - 1.0)


def _adam_step_temp_bytes(fence, monkeypatch, private=True):
  """Temporaries of one step: a scanned gradient sum, noise, Adam."""
  monkeypatch.setattr(noise, '_fence_on', lambda: fence)
  monkeypatch.setattr(noise, '_FENCE_MIN_ELEMENTS', 1)   # cap: largest leaf
  params = {'a': jnp.zeros((1024, 1024)), 'b': jnp.zeros((512, 1024)),
            'c': jnp.zeros((1024,))}
  tx = optax.chain(noise.gaussian_noise(1.0, jax.random.key(0, impl='rbg'))
                   if private else optax.identity(), optax.adam(1e-3))
  state = tx.init(params)

  def step(p, s, xs):
    def body(acc, x):
      return jax.tree.map(lambda a, w: a + jnp.sin(w * x), acc, p), None
    g, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, p), xs)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, state, jnp.ones((4,))).compile()
  return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='XLA:CPU fence')
def test_fenced_noise_costs_at_most_one_group_of_temporaries(monkeypatch):
  """Deterministic XLA memory analysis: the fenced noise + Adam step keeps
  at most one group (here: the largest leaf) beside what the non-private
  step keeps; the unfenced form (the planted regression) keeps several
  parameter copies."""
  largest = 1024 * 1024 * 4
  base = _adam_step_temp_bytes(True, monkeypatch, private=False)
  fenced = _adam_step_temp_bytes(True, monkeypatch)
  unfenced = _adam_step_temp_bytes(False, monkeypatch)
  assert base >= 1.5 * largest            # the sum is materialised
  assert fenced <= base + largest + 65536, (base, fenced)
  assert unfenced >= base + 2 * largest, (base, unfenced)
