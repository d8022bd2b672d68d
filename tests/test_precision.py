"""The float32 rule: clip, sum, accumulate and noise in float32, cast after.

With bfloat16 parameters (8 significant bits) a clipped sum of magnitude
~B C rounded back to bfloat16 has a spacing of ~B C / 256, so adding or
removing one record could move it by far more than C (or not at all). These
tests check S(D) - S(D minus one record) against that record's clipped
gradient computed in float64 from the same bfloat16 values (closed form),
and that the noise stages add float32 noise to a float32 sum and cast only
the result.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import clipping
from dpjax import dp_adam_ac
from dpjax import lmo_noise
from dpjax import microbatch_groups
from dpjax import noise
from dpjax import optimizers
from dpjax import rgp
from dpjax.accounting import lmo

BF16 = jnp.bfloat16
C = 1.0
B = 64          # records; the other B - 1 each contribute ~C to the sum.
SMALL = 0.008   # norm of the record that is added or removed.
# Float32 rounding of sums of magnitude ~B C is ~1e-5; bfloat16 rounding is
# B C / 256 = 0.25: the tolerance separates them by orders of magnitude.
TOL = 1e-4


def _records(n_pad=0, seed=0):
  """bfloat16 per-example grads {'w': [B, 4], 'b': [B, 3]}, record B-1 small.

  Records 0 .. B-2 have norm ~3 > C and point the same way (their clipped sum
  has magnitude ~(B-1) C); record B-1 has norm SMALL < C. `n_pad` padding
  rows (garbage values, mask 0) follow.
  """
  rng = np.random.default_rng(seed)
  w = np.abs(rng.normal(size=(B, 4))) + 1.0
  b = np.abs(rng.normal(size=(B, 3))) + 0.5
  small = np.concatenate([w[-1], b[-1]])
  small = SMALL * small / np.linalg.norm(small)
  w[-1], b[-1] = small[:4], small[4:]
  if n_pad:
    w = np.concatenate([w, 5 * rng.normal(size=(n_pad, 4))])
    b = np.concatenate([b, 5 * rng.normal(size=(n_pad, 3))])
  grads = {'w': jnp.asarray(w, BF16), 'b': jnp.asarray(b, BF16)}
  mask = np.zeros(B + n_pad, np.float32)
  mask[:B] = 1
  return grads, mask


def _reference(grads, mask):
  """float64 sum_i m_i g_i min(1, C / ||g_i||) from the bfloat16 values."""
  g = {k: np.asarray(v.astype(jnp.float32), np.float64)
       for k, v in grads.items()}
  norms = np.sqrt(sum(np.sum(x ** 2, axis=1) for x in g.values()))
  f = mask * np.minimum(1.0, C / norms)
  return {k: f @ x for k, x in g.items()}


def _without_small(mask):
  out = np.array(mask)
  out[B - 1] = 0
  return out


def _check_neighbours(s_d, s_dm, grads):
  """S(D) - S(D') equals the small record's clipped gradient (closed form)."""
  for k in ('w', 'b'):
    expected = np.asarray(grads[k][B - 1].astype(jnp.float32), np.float64)
    diff = np.asarray(s_d[k], np.float64) - np.asarray(s_dm[k], np.float64)
    np.testing.assert_allclose(diff, expected, rtol=0, atol=TOL)


def _max_neighbour_error(s_d, s_dm, grads):
  return max(float(np.max(np.abs(
      np.asarray(s_d[k], np.float64) - np.asarray(s_dm[k], np.float64) -
      np.asarray(grads[k][B - 1].astype(jnp.float32), np.float64))))
             for k in ('w', 'b'))


def test_clipped_sum_bf16_grads_neighbours_differ_by_the_record():
  grads, mask = _records()
  s_d, _ = clipping.clipped_sum(grads, jnp.asarray(mask), C)
  s_dm, _ = clipping.clipped_sum(grads, jnp.asarray(_without_small(mask)), C)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s_d))
  ref = _reference(grads, mask)
  for k in ('w', 'b'):
    assert float(np.max(np.abs(ref[k]))) > 0.5 * (B - 1) * C / 3
    np.testing.assert_allclose(np.asarray(s_d[k], np.float64), ref[k],
                               rtol=1e-6, atol=TOL)
  _check_neighbours(s_d, s_dm, grads)
  # The old rule (cast the sum back to the gradient dtype) fails this test:
  # the neighbours then differ by 0 or a multiple of the bfloat16 spacing.
  old = lambda s: jax.tree.map(lambda x: x.astype(BF16), s)
  assert _max_neighbour_error(old(s_d), old(s_dm), grads) > 10 * TOL


def _linear_loss(p, ex, key):
  """Gradient w.r.t. p is exactly ex (bfloat16 when p is bfloat16)."""
  del key
  return jnp.sum(p['w'] * ex['w']) + jnp.sum(p['b'] * ex['b'])


@pytest.mark.parametrize('skip', [False, True])
def test_microbatched_sum_bf16_params_accumulates_in_float32(skip):
  # 64 records and 16 padding rows in micro-batches of 8: the two last
  # micro-batches are all padding (skipped or not).
  grads, mask = _records(n_pad=16)
  params = {'w': jnp.ones((4,), BF16), 'b': jnp.ones((3,), BF16)}
  keys = jax.random.split(jax.random.key(0), B + 16)

  @jax.jit
  def run(m):
    return clipping.microbatched_clipped_sum(
        _linear_loss, params, grads, m, keys, l2_clip_norm=C,
        microbatch_size=8, skip_padding_microbatches=skip)

  (s_d, stats, norms), (s_dm, _, _) = run(mask), run(_without_small(mask))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s_d))
  ref = _reference(grads, mask)
  for k in ('w', 'b'):
    np.testing.assert_allclose(np.asarray(s_d[k], np.float64), ref[k],
                               rtol=1e-6, atol=TOL)
  _check_neighbours(s_d, s_dm, grads)
  assert float(stats.num_examples) == B
  assert float(stats.num_clipped) == B - 1
  g = np.concatenate([np.asarray(grads[k].astype(jnp.float32)) for k in
                      ('w', 'b')], axis=1)
  np.testing.assert_allclose(np.asarray(norms)[:B],
                             np.linalg.norm(g[:B], axis=1), rtol=1e-5)


def test_skip_padding_microbatches_gives_equal_sums():
  grads, mask = _records(n_pad=16, seed=3)
  params = {'w': jnp.ones((4,), BF16), 'b': jnp.ones((3,), BF16)}
  keys = jax.random.split(jax.random.key(0), B + 16)
  out = {}
  for skip in (False, True):
    out[skip] = jax.jit(lambda m, s=skip: clipping.microbatched_clipped_sum(
        _linear_loss, params, grads, m, keys, l2_clip_norm=C,
        microbatch_size=8, skip_padding_microbatches=s))(jnp.asarray(mask))
  for k in ('w', 'b'):
    np.testing.assert_array_equal(out[False][0][k], out[True][0][k])
  for a, b in zip(out[False][1], out[True][1]):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(out[False][2][:B], out[True][2][:B])


def test_grouped_and_rgp_sums_are_float32():
  grads, mask = _records()
  # The small record alone in group 0, everyone else in groups 1..7.
  ids = jnp.asarray(np.r_[np.arange(B - 1) % 7 + 1, 0], jnp.int32)
  s_d, _, _ = microbatch_groups.grouped_clipped_sum(
      grads, jnp.asarray(mask), ids, num_groups=8, l2_clip_norm=C)
  s_dm, _, _ = microbatch_groups.grouped_clipped_sum(
      grads, jnp.asarray(_without_small(mask)), ids, num_groups=8,
      l2_clip_norm=C)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s_d))
  _check_neighbours(s_d, s_dm, grads)
  # DP-Adam-AC's clip stage (research path).
  stage = dp_adam_ac.adaptive_clip_and_sum()
  out, _ = stage.update(grads, stage.init(None), clip_norm=C,
                        mask=jnp.asarray(mask))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out.total))
  # RGP's reference privatize path: float32 noised sum.
  noised = rgp.privatize(grads, jnp.asarray(mask), l2_clip_norm=C,
                         noise_multiplier=0.5, key=jax.random.key(1))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(noised))


# ---------------------------------------------------------------------------
# Noise stages.

_LMO = lmo.LMOParams(a1=0.0, k=1, theta=1, a3=0.4, lam=2.0, a4=0.7, u_a=0.5,
                     u_b=1.5)


def _gaussian_stage(std):
  return noise.gaussian_noise(std, jax.random.key(3))


def _lmo_stage(std):
  return lmo_noise.lmo_noise(_LMO, l1_sensitivity=std, key=jax.random.key(3))


def _ac_stage(std):
  """DP-Adam-AC's noise stage at fixed C = std (z = 1), no count released."""
  return dp_adam_ac.dp_adam_ac_stages(
      noise_multiplier=1.0, expected_batch_size=8.0, learning_rate=1e-2,
      key=jax.random.key(3), initial_clip_norm=std, clip_learning_rate=0.0,
      adapt_learning_rate=False).noise


def _call(name, stage, updates, state, params):
  if name == 'dp_adam_ac':
    out, state = stage.update(updates, state, params, num_unclipped=0.0,
                              num_examples=0.0)
    return out.updates, state
  return stage.update(updates, state, params)


STAGES = {'gaussian': _gaussian_stage, 'lmo': _lmo_stage,
          'dp_adam_ac': _ac_stage}


@pytest.mark.parametrize('name', sorted(STAGES))
def test_noise_added_in_float32_then_cast_to_params(name):
  std = 1e-3
  stage = STAGES[name](std)
  # 64.01 is not a bfloat16 (spacing 0.5 there): a sum rounded to bfloat16
  # before the noise would be off by 0.01 everywhere.
  updates = {'w': jnp.full((64, 64), 64.01, jnp.float32),
             'b': jnp.full((64,), -64.01, jnp.float32)}
  params = {'w': jnp.zeros((64, 64), BF16), 'b': jnp.zeros((64,), jnp.float32)}
  state = stage.init(params)
  out32, _ = _call(name, stage, updates, state, None)
  out, _ = _call(name, stage, updates, state, params)
  assert out32['w'].dtype == jnp.float32 and out32['b'].dtype == jnp.float32
  assert out['w'].dtype == BF16 and out['b'].dtype == jnp.float32
  # Without params: the float32 sum plus float32 noise of the stage's scale.
  n = np.asarray(out32['w'], np.float64) - 64.01
  assert abs(float(np.median(n))) < 3e-4
  med_abs = float(np.median(np.abs(n)))
  expected = {'gaussian': 0.6745 * std,
              'dp_adam_ac': 0.6745 * std}.get(name, None)
  if expected is not None:
    assert 0.9 * expected < med_abs < 1.1 * expected
  else:
    assert 1e-5 < med_abs < 1e-2
  # With params: the same noised float32 values, cast after the noise.
  np.testing.assert_array_equal(np.asarray(out['w'], np.float32),
                                np.asarray(out32['w'].astype(BF16),
                                           np.float32))
  np.testing.assert_array_equal(out['b'], out32['b'])


def _recording(stage, seen):
  """`stage` that records the dtypes of the updates it receives."""
  def update(updates, state, params=None, **extra):
    seen.append(jax.tree.map(lambda u: u.dtype, updates))
    if extra:
      return stage.update(updates, state, params, **extra)
    return stage.update(updates, state, params)
  return optax.GradientTransformationExtraArgs(stage.init, update)


def _dtypes(tree):
  return jax.tree.map(lambda x: jnp.asarray(x).dtype, tree)


@pytest.mark.parametrize('chain', ['adamw', 'sgd_lmo', 'dp_adam_ac'])
def test_training_step_path_bf16_params_stable_state(chain):
  """Micro-batched float32 sum -> post-clip chain with params=trainable."""
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(4,)), BF16),
            'b': jnp.asarray(rng.normal(size=(3,)), BF16)}
  batch = {'w': jnp.asarray(rng.normal(size=(16, 4)), BF16),
           'b': jnp.asarray(rng.normal(size=(16, 3)), BF16)}
  mask = jnp.asarray(np.r_[np.ones(11), np.zeros(5)], jnp.float32)
  keys = jax.random.split(jax.random.key(0), 16)
  extra = {}
  if chain == 'dp_adam_ac':
    stages = dp_adam_ac.dp_adam_ac_stages(
        noise_multiplier=1.0, expected_batch_size=11.0, learning_rate=1e-2,
        key=jax.random.key(1), ema_decay=0.9)
  else:
    stages = optimizers.dp_stages(
        l2_clip_norm=C, noise_multiplier=1.0, expected_batch_size=11.0,
        learning_rate=1e-2, key=jax.random.key(1),
        optimizer='adamw' if chain == 'adamw' else 'sgd', momentum=0.9,
        ema_decay=0.9)
    if chain == 'sgd_lmo':
      stages = stages._replace(noise=lmo_noise.lmo_noise(
          _LMO, l1_sensitivity=C, key=jax.random.key(1)))
  seen = []
  stages = stages._replace(noise=_recording(stages.noise, seen))
  post = optimizers.post_clip(stages)
  opt_state = optimizers.chain(stages).init(params)

  def step(p, s):
    clip = (dp_adam_ac.current_clip_norm(s) if chain == 'dp_adam_ac'
            else C)
    total, stats, _ = clipping.microbatched_clipped_sum(
        _linear_loss, p, batch, mask, keys, l2_clip_norm=clip,
        microbatch_size=4)
    if chain == 'dp_adam_ac':
      extra.update(num_unclipped=stats.num_examples - stats.num_clipped,
                   num_examples=stats.num_examples)
    updates, post_state = post.update(total, s[1:], p, **extra)
    return optax.apply_updates(p, updates), (s[0],) + tuple(post_state)

  step = jax.jit(step)
  before = _dtypes((params, opt_state))
  p, s = params, opt_state
  for _ in range(3):
    p, s = step(p, s)
    assert _dtypes((p, s)) == before
  assert seen and all(d == {'w': jnp.float32, 'b': jnp.float32} for d in seen)
  assert p['w'].dtype == BF16


def test_research_chain_bf16_params_stable_state():
  params = {'w': jnp.zeros((4,), BF16), 'b': jnp.zeros((3,), BF16)}
  grads, mask = _records()
  for tx in (optimizers.dp_adamw(l2_clip_norm=C, noise_multiplier=1.0,
                                 expected_batch_size=64.0, learning_rate=1e-2,
                                 key=jax.random.key(0), ema_decay=0.9),
             dp_adam_ac.dp_adam_ac(noise_multiplier=1.0,
                                   expected_batch_size=64.0,
                                   learning_rate=1e-2, key=jax.random.key(0))):
    state = tx.init(params)
    before = _dtypes((params, state))
    p = params
    for _ in range(2):
      updates, state = tx.update(grads, state, p, mask=jnp.asarray(mask))
      assert _dtypes(updates) == _dtypes(params)
      p = optax.apply_updates(p, updates)
      assert _dtypes((p, state)) == before
