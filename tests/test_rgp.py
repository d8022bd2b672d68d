"""Tests for dpjax.rgp (reparametrized gradient perturbation)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import rgp


def _params(rng, shapes):
  return {name: {'kernel': jnp.asarray(rng.normal(size=s), jnp.float32),
                 'bias': jnp.zeros((s[1],), jnp.float32)}
          for name, s in shapes.items()}


def _loss(params, x, y):
  h = jnp.tanh(x @ params['l1']['kernel'] + params['l1']['bias'])
  out = h @ params['l2']['kernel'] + params['l2']['bias']
  return jnp.sum((out - y)**2)


def _setup(seed=0, b=5):
  rng = np.random.default_rng(seed)
  params = _params(rng, {'l1': (6, 4), 'l2': (4, 3)})
  x = jnp.asarray(rng.normal(size=(b, 6)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(b, 3)), jnp.float32)
  per_ex = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))(params, x, y)
  return params, x, y, per_ex


def test_full_rank_no_noise_reconstructs_true_gradient():
  params, _, _, per_ex = _setup()
  targets = ('l1/kernel', 'l2/kernel')
  grads_w = {'l1/kernel': per_ex['l1']['kernel'],
             'l2/kernel': per_ex['l2']['kernel']}
  mask = jnp.ones((5,))
  # Full rank is min(in, out): 3 for l2 (4x3, full in 'out') and 4 for l1
  # (6x4, full in 'out'); l1 transposed (4x6) checks fullness in 'in'.
  for name, rank, source in (('l2/kernel', 3, 'weights'),
                             ('l1/kernel', 4, 'history')):
    config, state = rgp.rgp_init(jax.random.key(0), params, rank=rank,
                                 targets=(name,), source=source)
    recon, _ = rgp.rgp_private_gradient(
        config, state, params, {name: grads_w[name]}, mask,
        l2_clip_norm=1e9, noise_multiplier=0.0)
    np.testing.assert_allclose(recon[name], grads_w[name].sum(0), rtol=2e-5,
                               atol=2e-5)
  params_t = {'t': {'kernel': params['l1']['kernel'].T}}
  g_t = jnp.swapaxes(grads_w['l1/kernel'], 1, 2)
  config, state = rgp.rgp_init(jax.random.key(2), params_t, rank=4,
                               targets=('t/kernel',))
  recon, _ = rgp.rgp_private_gradient(config, state, params_t,
                                      {'t/kernel': g_t}, mask,
                                      l2_clip_norm=1e9, noise_multiplier=0.0)
  np.testing.assert_allclose(recon['t/kernel'], g_t.sum(0), rtol=2e-5,
                             atol=2e-5)
  del targets


def test_ewtune_plus_sign_is_not_exact_at_full_rank():
  params, _, _, per_ex = _setup()
  g = per_ex['l2']['kernel'].sum(0)
  config, state = rgp.rgp_init(jax.random.key(0), params, rank=3,
                               targets=('l2/kernel',), cross_sign=+1.0)
  bases, _ = rgp.rgp_bases(config, state, params)
  recon = rgp.reconstruct(rgp.project({'l2/kernel': g}, bases), bases, +1.0)
  left, right = bases['l2/kernel']
  pl, pr = left @ left.T, right.T @ right
  np.testing.assert_allclose(pr, np.eye(3), atol=1e-5)   # full rank in 'out'
  np.testing.assert_allclose(recon['l2/kernel'], g + 2 * pl @ g, rtol=1e-4,
                             atol=1e-4)
  assert not np.allclose(recon['l2/kernel'], g, atol=1e-2)


def test_low_rank_reconstruction_is_the_projection():
  rng = np.random.default_rng(3)
  w = jnp.asarray(rng.normal(size=(7, 5)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(7, 5)), jnp.float32)
  left, right = rgp.power_bases(jax.random.key(0), w, 2, power_iters=3)
  np.testing.assert_allclose(left.T @ left, np.eye(2), atol=1e-5)
  np.testing.assert_allclose(right @ right.T, np.eye(2), atol=1e-5)
  bases = {'w': (left, right)}
  recon = rgp.reconstruct(rgp.project({'w': g}, bases), bases)['w']
  pl, pr = left @ left.T, right.T @ right
  want = pl @ g + g @ pr - pl @ g @ pr
  np.testing.assert_allclose(recon, want, atol=1e-5)
  # A projection: applying it twice changes nothing.
  again = rgp.reconstruct(rgp.project({'w': recon}, bases), bases)['w']
  np.testing.assert_allclose(again, recon, atol=1e-5)


def test_power_iteration_finds_top_singular_subspace():
  rng = np.random.default_rng(4)
  u, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  v, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  s = np.array([10.0, 5.0, 1.0, 0.5, 0.1, 0.01])
  w = jnp.asarray(u[:, :6] * s @ v.T, jnp.float32)
  left, right = rgp.power_bases(jax.random.key(0), w, 2, power_iters=20)
  pl = np.asarray(left @ left.T)
  np.testing.assert_allclose(pl, u[:, :2] @ u[:, :2].T, atol=1e-4)
  pr = np.asarray(right.T @ right)
  np.testing.assert_allclose(pr, v[:, :2] @ v[:, :2].T, atol=1e-4)


def test_merge_gradients_equal_projection():
  params, x, y, per_ex = _setup()
  config, state = rgp.rgp_init(jax.random.key(0), params, rank=2,
                               targets=('l1/kernel', 'l2/kernel'))
  bases, _ = rgp.rgp_bases(config, state, params)
  carriers = rgp.carriers_of(bases)
  merged = rgp.merge(params, bases, carriers)
  for t in ('l1', 'l2'):
    np.testing.assert_allclose(merged[t]['kernel'], params[t]['kernel'],
                               atol=1e-5)

  def loss_c(c, xi, yi):
    return _loss(rgp.merge(params, bases, c), xi, yi)

  per_c = jax.vmap(jax.grad(loss_c), in_axes=(None, 0, 0))(carriers, x, y)
  proj = rgp.project({'l1/kernel': per_ex['l1']['kernel'],
                      'l2/kernel': per_ex['l2']['kernel']}, bases)
  for t in proj:
    np.testing.assert_allclose(per_c[t][0], proj[t][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(per_c[t][1], proj[t][1], rtol=1e-4, atol=1e-5)


def test_privatize_clips_jointly_and_adds_calibrated_noise():
  params, _, _, per_ex = _setup(b=4)
  config, state = rgp.rgp_init(jax.random.key(0), params, rank=2,
                               targets=('l1/kernel', 'l2/kernel'))
  bases, _ = rgp.rgp_bases(config, state, params)
  carriers = rgp.project({'l1/kernel': per_ex['l1']['kernel'],
                          'l2/kernel': per_ex['l2']['kernel']}, bases)
  tree = {'carriers': carriers, 'head_bias': per_ex['l2']['bias']}
  c = 0.05
  for i in range(4):   # one example's joint norm after clipping is <= C
    mask = jnp.zeros((4,)).at[i].set(1)
    one = rgp.privatize(tree, mask, l2_clip_norm=c, noise_multiplier=0.0,
                        key=jax.random.key(0))
    norm = np.sqrt(sum(float(jnp.sum(v**2)) for v in jax.tree.leaves(one)))
    assert norm <= c * (1 + 1e-5)
  zeros = {'z': jnp.zeros((1, 300))}
  noised = rgp.privatize(zeros, jnp.ones((1,)), l2_clip_norm=2.0,
                         noise_multiplier=1.5, key=jax.random.key(5))
  std = float(jnp.std(noised['z']))
  assert std == pytest.approx(3.0, rel=0.15)


def test_history_source_and_full_update():
  params, _, _, per_ex = _setup()
  config, state = rgp.rgp_init(jax.random.key(0), params, rank=1,
                               targets=('l1/kernel',), source='history',
                               power_iters=8)
  recon, state = rgp.rgp_private_gradient(
      config, state, params, {'l1/kernel': per_ex['l1']['kernel']},
      jnp.ones((5,)), l2_clip_norm=1.0, noise_multiplier=1.0)
  state = rgp.update_history(config, state, recon)
  np.testing.assert_allclose(state.history['l1/kernel'], recon['l1/kernel'])
  # The next bases come from the (rank-1) history.
  bases, _ = rgp.rgp_bases(config, state, params)
  left, _ = bases['l1/kernel']
  h = np.asarray(state.history['l1/kernel'])
  u = np.linalg.svd(h)[0][:, :1]
  assert abs(float(np.abs(u.T @ np.asarray(left))[0, 0])) > 0.99
  upd = rgp.full_update(params, recon,
                        others={'l1': {'bias': jnp.ones(4), 'kernel': None},
                                'l2': {'bias': None, 'kernel': None}})
  np.testing.assert_allclose(upd['l1']['kernel'], recon['l1/kernel'])
  np.testing.assert_allclose(upd['l1']['bias'], np.ones(4))
  np.testing.assert_allclose(upd['l2']['kernel'], 0.0)


def test_bad_arguments():
  params, _, _, _ = _setup()
  with pytest.raises(ValueError, match='rank'):
    rgp.rgp_init(jax.random.key(0), params, rank=5, targets=('l2/kernel',))
  with pytest.raises(ValueError, match='targets'):
    rgp.rgp_init(jax.random.key(0), params, rank=1, targets=('nope',))
  with pytest.raises(ValueError, match='source'):
    rgp.rgp_init(jax.random.key(0), params, rank=1, source='grads')
  with pytest.raises(TypeError, match='typed PRNG key'):
    rgp.rgp_init(jax.random.PRNGKey(0), params, rank=1)
  assert rgp.default_targets(params) == ('l1/kernel', 'l2/kernel')
