"""Tests for dpjax.rgp_step (the RGP training step) and peft mode 'rgp'."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import clipping
from dpjax import optimizers
from dpjax import rgp
from dpjax import rgp_step
from dpjax import steps
from dpjax.models import peft

# x[8] -> dense1 [8, 4] -> tanh -> dense2 [4, 6] -> tanh -> head [6, 3].
# min(in, out) = 4 for both targets (dense1 tall, dense2 wide).
SHAPES = {'dense1': (8, 4), 'dense2': (4, 6), 'head': (6, 3)}
TARGETS = ('dense1/kernel', 'dense2/kernel')
PEFT = peft.Peft(mode='rgp', rank=4, targets=('dense1', 'dense2'),
                 extra_trainable=('head/.*',))
B = 8


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {name: {'kernel': jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]),
                                       jnp.float32),
                 'bias': jnp.asarray(0.1 * rng.normal(size=s[1]),
                                     jnp.float32)}
          for name, s in SHAPES.items()}


def _forward(params, x):
  h = jnp.tanh(x @ params['dense1']['kernel'] + params['dense1']['bias'])
  h = jnp.tanh(h @ params['dense2']['kernel'] + params['dense2']['bias'])
  return h @ params['head']['kernel'] + params['head']['bias']


def _loss(trainable, frozen, example, key):
  del key
  params = peft.merge_trees(trainable, frozen)
  return jnp.sum((_forward(params, example['x']) - example['y'])**2)


def _batch(seed=1, n_real=6):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, 8)).astype(np.float32)
  y = rng.normal(size=(B, 3)).astype(np.float32)
  mask = (np.arange(B) < n_real).astype(np.float32)
  x[n_real:] = 0.0
  y[n_real:] = 0.0
  return {'x': jnp.asarray(x), 'y': jnp.asarray(y)}, jnp.asarray(mask)


def _stages(sigma=0.0, clip=1e6, lr=0.1, optimizer='sgd', ema_decay=0.0,
            expected_batch_size=B, seed=3):
  return optimizers.dp_stages(
      l2_clip_norm=clip, noise_multiplier=sigma,
      expected_batch_size=expected_batch_size, learning_rate=lr,
      key=jax.random.key(seed), optimizer=optimizer, ema_decay=ema_decay)


def _state(trainable, stages):
  trainable = jax.tree.map(lambda x: jnp.array(x, copy=True), trainable)
  return steps.TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                          opt_state=optimizers.chain(stages).init(trainable))


def _rgp(stages, rank=4, clip=1e6, mb=4, cross_sign=-1.0, key_seed=7,
         loss=_loss):
  return rgp_step.make_rgp_train_step(
      loss, stages, targets=TARGETS, rank=rank, l2_clip_norm=clip,
      microbatch_size=mb, key=jax.random.key(key_seed), cross_sign=cross_sign)


def _split():
  return PEFT.split(_params())


def _arr(x):
  if jnp.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
    return np.asarray(jax.random.key_data(x))
  return np.asarray(x)


def _close(a, b, atol=1e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      _arr(x), _arr(y), rtol=1e-5, atol=atol), a, b)


# ------------------------------------------------------------------ peft ---


def test_peft_rgp_split_combine_and_target_paths():
  params = _params()
  trainable, frozen = PEFT.split(params)
  assert peft.trainable_paths(trainable) == [
      'dense1/kernel', 'dense2/kernel', 'head/bias', 'head/kernel']
  assert peft.trainable_paths(frozen) == ['dense1/bias', 'dense2/bias']
  _close(PEFT.combine(trainable, frozen), params, atol=0)
  _close(PEFT.export(trainable, frozen), params, atol=0)
  # head/kernel is 2-D but only trained through extra_trainable.
  assert PEFT.rgp_target_paths(trainable) == TARGETS
  assert peft.rgp_target_paths(trainable, ('dense1', 'dense2')) == TARGETS
  assert tuple(rgp.flat_params(trainable)[t].shape for t in TARGETS) == (
      (8, 4), (4, 6))
  # Without extra_trainable only the target kernels train.
  t2, f2 = peft.Peft(mode='rgp', rank=2, targets=('dense.',)).split(params)
  assert peft.trainable_paths(t2) == ['dense1/kernel', 'dense2/kernel']
  _close(peft.Peft(mode='rgp').combine(t2, f2), params, atol=0)


def test_peft_rgp_errors():
  params = _params()
  with pytest.raises(ValueError, match='match no 2-D Dense kernel'):
    peft.Peft(mode='rgp', rank=2, targets=('nothing',)).split(params)
  with pytest.raises(ValueError, match='exceeds min'):
    peft.Peft(mode='rgp', rank=5, targets=('dense1',)).split(params)
  with pytest.raises(ValueError, match='rank'):
    peft.Peft(mode='rgp', rank=0, targets=('dense1',))
  with pytest.raises(ValueError, match='only used by mode "rgp"'):
    peft.Peft(mode='lora', extra_trainable=('head/.*',))
  with pytest.raises(ValueError, match='needs peft mode "rgp"'):
    peft.Peft(mode='lora').rgp_target_paths({})


# ------------------------------------------------------------ the step ----


@pytest.mark.parametrize('optimizer', ['sgd', 'adamw'])
def test_full_rank_no_noise_equals_dp_sgd_step(optimizer):
  trainable, frozen = _split()
  batch, mask = _batch()
  st = _stages(optimizer=optimizer, ema_decay=0.5)
  ref_step = steps.vmap_train_step(_loss, st,
                                   l2_clip_norm=1e6, microbatch_size=4,
                                   private=True)
  ref, ref_m = ref_step(_state(trainable, st), frozen, batch, mask,
                        jax.random.key(0), jnp.arange(mask.shape[0]))
  new, m = _rgp(st)(_state(trainable, st), frozen, batch, mask,
                    jax.random.key(0), jnp.arange(mask.shape[0]))
  assert int(new.step) == 1
  _close(new.trainable, ref.trainable)
  _close(new.opt_state, ref.opt_state)       # optimizer moments and EMA
  assert set(m) == set(ref_m)
  for k in ('train_loss', 'batch_size', 'clip_fraction', 'clip_norm'):
    np.testing.assert_allclose(m[k], ref_m[k], rtol=1e-5)
  # The targets did move, and EW-Tune's '+' sign is not the identity.
  assert not np.allclose(new.trainable['dense1']['kernel'],
                         trainable['dense1']['kernel'], atol=1e-4)
  plus, _ = _rgp(st, cross_sign=1.0)(_state(trainable, st), frozen, batch,
                                     mask, jax.random.key(0), jnp.arange(mask.shape[0]))
  for name in ('dense1', 'dense2'):
    assert not np.allclose(plus.trainable[name]['kernel'],
                           ref.trainable[name]['kernel'], atol=1e-4)
  _close(plus.trainable['head'], ref.trainable['head'])


def test_rank_one_update_is_projected_gradient():
  trainable, frozen = _split()
  batch, mask = _batch()
  st = _stages(lr=1.0)
  state = _state(trainable, st)
  # Two steps: the second uses fresh bases from the updated weights.
  step = _rgp(st, rank=1)
  for t in range(2):
    before = state.trainable
    state, _ = step(state, frozen, batch, mask, jax.random.key(0),
                       jnp.arange(mask.shape[0]))
    total = jax.grad(lambda p: jnp.sum(mask * jax.vmap(
        lambda ex: _loss(p, frozen, ex, None))(batch)))(before)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(7), t), 2)
    for k, name in zip(keys, ('dense1', 'dense2')):
      w = before[name]['kernel']
      left, right = rgp.power_bases(k, w, 1)
      p_l, p_r = left @ left.T, right.T @ right
      g = total[name]['kernel']
      want = -(p_l @ g + g @ p_r - p_l @ g @ p_r) / B
      got = state.trainable[name]['kernel'] - w
      np.testing.assert_allclose(got, want, atol=1e-5)
      assert np.linalg.matrix_rank(np.asarray(got), tol=1e-6) <= 2
    _close(jax.tree.map(lambda a, b: a - b, state.trainable['head'],
                        before['head']),
           jax.tree.map(lambda g: -g / B, total['head']))


def _per_example_carrier_norms(trainable, frozen, batch, bases):
  """Reference: per-example [B, in, out] gradients projected by rgp.project."""
  per_ex = jax.vmap(jax.grad(_loss), in_axes=(None, None, 0, None))(
      trainable, frozen, batch, None)
  carriers = rgp.project({t: rgp.flat_params(per_ex)[t] for t in TARGETS},
                         bases)
  return clipping.global_norms((carriers, per_ex['head']))


def test_sensitivity_in_carrier_space():
  trainable, frozen = _split()
  batch, mask = _batch(n_real=8)
  # Example 5 has a large gradient.
  batch = {'x': batch['x'].at[5].multiply(30.0),
           'y': batch['y'].at[5].set(50.0)}
  clip = 6.0
  bases = rgp_step.step_bases(jax.random.key(7), jnp.int32(0), trainable,
                              TARGETS, 2)
  keys = jax.random.split(jax.random.key(0), B)

  def csum(m):
    s, stats, norms = rgp_step.carrier_clipped_sum(
        _loss, trainable, frozen, bases, batch, m, keys, l2_clip_norm=clip,
        microbatch_size=4)
    return s, stats, norms

  full, stats, norms = csum(mask)
  ref_norms = _per_example_carrier_norms(trainable, frozen, batch, bases)
  np.testing.assert_allclose(norms, ref_norms, rtol=1e-4)
  assert float(ref_norms[5]) > 10 * clip
  assert 0 < float(stats.num_clipped) < B     # clipping is active
  for j in range(B):
    without, _, _ = csum(mask.at[j].set(0.0))
    diff = jnp.sqrt(sum(jnp.sum((a - b)**2) for a, b in zip(
        jax.tree.leaves(full), jax.tree.leaves(without))))
    np.testing.assert_allclose(diff, min(clip, float(ref_norms[j])),
                               rtol=1e-4)
    assert float(diff) <= clip * (1 + 1e-5)
  # The step privatizes this sum: its metrics are the carrier-space ones.
  _, m = _rgp(_stages(clip=clip), rank=2, clip=clip)(
      _state(trainable, _stages(clip=clip)), frozen, batch, mask,
      jax.random.key(0), jnp.arange(mask.shape[0]))
  np.testing.assert_allclose(m['clip_fraction'], stats.num_clipped / B)
  np.testing.assert_allclose(m['mean_grad_norm'], jnp.mean(ref_norms),
                             rtol=1e-4)


def _zero_loss(trainable, frozen, example, key):
  return 0.0 * _loss(trainable, frozen, example, key)


def test_noise_only_in_carrier_space():
  trainable, frozen = _split()
  batch, mask = _batch()
  sigma, clip, rank = 2.0, 0.5, 1
  st = _stages(sigma=sigma, clip=clip, lr=1.0, expected_batch_size=1)
  step = jax.jit(_rgp(st, rank=rank, clip=clip, loss=_zero_loss))
  state = _state(trainable, st)
  n_r, resid, head = [], [], []
  for t in range(20):
    before = state.trainable
    state, _ = step(state, frozen, batch, mask, jax.random.key(0),
                       jnp.arange(mask.shape[0]))
    bases = rgp_step.step_bases(jax.random.key(7), jnp.int32(t), before,
                                TARGETS, rank)
    for name, path in zip(('dense1', 'dense2'), TARGETS):
      u = -(state.trainable[name]['kernel'] - before[name]['kernel'])
      s = np.linalg.svd(np.asarray(u), compute_uv=False)
      assert s[2 * rank] < 1e-5 * s[0]        # rank <= 2r
      left, right = bases[path]
      n_r.append(np.asarray(left.T @ u).ravel())         # = noise on dR
      res = (u - left @ (left.T @ u)) @ right.T          # = (I - P_L) n_L
      resid.append((float(jnp.sum(res**2)), (u.shape[0] - rank) * rank))
    head.append(np.asarray(before['head']['kernel'] -
                           state.trainable['head']['kernel']).ravel())
  std = sigma * clip
  np.testing.assert_allclose(np.std(np.concatenate(n_r)), std, rtol=0.2)
  np.testing.assert_allclose(
      np.sqrt(sum(r for r, _ in resid) / sum(d for _, d in resid)), std,
      rtol=0.2)
  np.testing.assert_allclose(np.std(np.concatenate(head)), std, rtol=0.2)
  # The same noise on the full gradient (ordinary DP-SGD) is full rank.
  ref_step = steps.vmap_train_step(_zero_loss, st,
                                   l2_clip_norm=clip, microbatch_size=4)
  ref, _ = ref_step(_state(trainable, st), frozen, batch, mask,
                    jax.random.key(0), jnp.arange(mask.shape[0]))
  u = ref.trainable['dense1']['kernel'] - trainable['dense1']['kernel']
  s = np.linalg.svd(np.asarray(u), compute_uv=False)
  assert s[2 * rank] > 0.1 * s[0]


def test_padding_jit_donation_and_microbatches():
  trainable, frozen = _split()
  batch, mask = _batch(n_real=5)
  st = _stages(sigma=1.0, clip=0.3, optimizer='adamw', lr=0.01,
               ema_decay=0.9)
  want, want_m = _rgp(st, rank=2, clip=0.3, mb=4)(
      _state(trainable, st), frozen, batch, mask, jax.random.key(0), jnp.arange(mask.shape[0]))
  assert 0 < float(want_m['clip_fraction']) <= 1
  garbage = {'x': batch['x'].at[5:].set(jnp.nan),
             'y': batch['y'].at[5:].set(1e30)}
  for mb in (2, 4):
    step = jax.jit(_rgp(st, rank=2, clip=0.3, mb=mb), donate_argnums=0)
    for b in (batch, garbage):
      got, m = step(_state(trainable, st), frozen, b, mask, jax.random.key(0), jnp.arange(mask.shape[0]))
      _close(got.trainable, want.trainable)
      _close(got.opt_state, want.opt_state)
      _close(m, want_m)
  # Donated state can be fed back (two jitted steps in a row).
  state = _state(trainable, st)
  for _ in range(2):
    state, m = step(state, frozen, garbage, mask, jax.random.key(0),
                       jnp.arange(mask.shape[0]))
  assert int(state.step) == 2
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state.trainable))


def test_argument_checks():
  trainable, frozen = _split()
  batch, mask = _batch()
  st = _stages()
  with pytest.raises(ValueError, match='exceeds min'):
    _rgp(st, rank=5)(_state(trainable, st), frozen, batch, mask,
                     jax.random.key(0), jnp.arange(mask.shape[0]))
  with pytest.raises(ValueError, match='no trainable leaf'):
    rgp_step.make_rgp_train_step(
        _loss, st, targets=('dense1/bias_x',), rank=1, l2_clip_norm=1.0,
        microbatch_size=4, key=jax.random.key(0))(
            _state(trainable, st), frozen, batch, mask, jax.random.key(0), jnp.arange(mask.shape[0]))
  with pytest.raises(TypeError, match='typed PRNG key'):
    rgp_step.make_rgp_train_step(_loss, st, targets=TARGETS, rank=1,
                                 l2_clip_norm=1.0, microbatch_size=4,
                                 key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='cross_sign'):
    _rgp(st, cross_sign=0.5)


def test_extra_grad_scale_scales_only_the_extra_leaves_before_clipping():
  # EW-Tune divides the head's per-example gradients by 10 before clipping.
  trainable, frozen = _split()
  batch, mask = _batch()
  stages = _stages(optimizer='sgd', lr=1.0)

  def run(scale, clip=1e6):
    step = rgp_step.make_rgp_train_step(
        _loss, stages, targets=TARGETS, rank=2, l2_clip_norm=clip,
        microbatch_size=4, key=jax.random.key(7), extra_grad_scale=scale)
    new, m = jax.jit(step)(_state(trainable, stages), frozen, batch, mask,
                           jax.random.key(0), jnp.arange(mask.shape[0]))
    return (rgp.flat_params(jax.tree.map(jnp.subtract, new.trainable,
                                         trainable)), m)

  d1, _ = run(1.0)
  d01, _ = run(0.1)
  for p in d1:
    if p.startswith('head'):
      np.testing.assert_allclose(d01[p], 0.1 * d1[p], rtol=1e-5, atol=1e-7)
    else:
      np.testing.assert_allclose(d01[p], d1[p], rtol=1e-5, atol=1e-7)
  # Scaled before clipping: the joint norm is smaller, fewer are clipped.
  _, m1 = run(1.0, clip=0.5)
  _, m01 = run(0.1, clip=0.5)
  assert float(m01['mean_grad_norm']) < float(m1['mean_grad_norm'])
  with pytest.raises(ValueError, match='extra_grad_scale'):
    rgp_step.make_rgp_train_step(
        _loss, stages, targets=TARGETS, rank=2, l2_clip_norm=1.0,
        microbatch_size=4, key=jax.random.key(7), extra_grad_scale=0.0)
