"""DP-Adam-AC chain: both paths, noise at C_t, AdamW, EMA, LR multiplier."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import adaptive_clipping as ac
from dpjax import clipping
from dpjax import dp_adam_ac
from dpjax import ema
from dpjax import optimizers
from dpjax import steps as steps_lib


def _problem(n=8, seed=0):
  rng = np.random.default_rng(seed)
  params = {'w': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
            'b': jnp.zeros((3,), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(n, 4)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)
  return params, x, y


def _loss(p, x, y):
  return jnp.sum((x @ p['w'] + p['b'] - y) ** 2)


_per_example = jax.vmap(jax.grad(_loss), in_axes=(None, 0, 0))


def _kw(**over):
  kw = dict(noise_multiplier=1.0, expected_batch_size=8.0, learning_rate=1e-2,
            key=jax.random.key(0), initial_clip_norm=2.0, count_noise_std=2.0,
            weight_decay=1e-3, ema_decay=0.9)
  kw.update(over)
  return kw


@pytest.mark.parametrize('nonprivate', [False, True])
def test_research_path_equals_training_step_path(nonprivate):
  """Full chain on per-example grads == microbatched sum + post_clip."""
  params, x, y = _problem()
  mask = jnp.asarray([1, 1, 0, 1, 1, 1, 0, 1], jnp.float32)
  kw = _kw(nonprivate_percentile_clipping=nonprivate, history_size=5)
  tx = dp_adam_ac.dp_adam_ac(**kw)
  stages = dp_adam_ac.dp_adam_ac_stages(**kw)
  post = optimizers.post_clip(stages)
  p1 = p2 = params
  s1 = tx.init(params)
  s2 = optimizers.chain(stages).init(params)
  assert jax.tree.structure(s1) == jax.tree.structure(s2)
  batch = {'x': x, 'y': y}
  keys = jax.random.split(jax.random.key(9), 8)
  record_loss = lambda p, ex, k: _loss(p, ex['x'], ex['y'])

  @jax.jit
  def trainer_step(p, s):
    # What dpjax.steps.make_train_step does, plus num_examples (and the norms
    # for the non-private percentile mode).
    c = dp_adam_ac.current_clip_norm(s)
    total, stats, norms = clipping.microbatched_clipped_sum(
        record_loss, p, batch, mask, keys, l2_clip_norm=c, microbatch_size=4)
    extra = dict(num_unclipped=stats.num_examples - stats.num_clipped,
                 num_examples=stats.num_examples, clip_norm=c)
    if nonprivate:
      extra.update(norms=norms, norms_mask=mask)
    u, post_state = post.update(total, s[1:], p, **extra)
    return optax.apply_updates(p, u), (s[0],) + tuple(post_state)

  update = jax.jit(tx.update)
  for _ in range(2):
    u, s1 = update(_per_example(p1, x, y), s1, p1, mask=mask)
    p1 = optax.apply_updates(p1, u)
    p2, s2 = trainer_step(p2, s2)
    np.testing.assert_allclose(dp_adam_ac.current_clip_norm(s1),
                               dp_adam_ac.current_clip_norm(s2), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(dp_adam_ac.current_clip_norm(s1)) != 2.0  # C moved


def test_noise_std_is_sigma_delta_times_clip_norm_before_its_update():
  dim, z, sb, c0 = 20000, 0.8, 2.5, 0.6
  stages = dp_adam_ac.dp_adam_ac_stages(**_kw(
      noise_multiplier=z, count_noise_std=sb, initial_clip_norm=c0))
  state = stages.noise.init({'w': jnp.zeros(dim)})
  out, new = stages.noise.update({'w': jnp.zeros(dim)}, state,
                                 num_unclipped=0.0, num_examples=8.0)
  assert float(new.control.clip_norm) > c0  # all clipped: C grows after
  std = float(np.std(np.asarray(out.updates['w'])))
  np.testing.assert_allclose(std, ac.gradient_noise_multiplier(z, sb) * c0,
                             rtol=0.03)
  # Paper mode: no sigma_Delta boost (nothing is accounted there anyway).
  stages = dp_adam_ac.dp_adam_ac_stages(**_kw(
      noise_multiplier=z, initial_clip_norm=c0,
      nonprivate_percentile_clipping=True))
  state = stages.noise.init({'w': jnp.zeros(dim)})
  out, _ = stages.noise.update(
      {'w': jnp.zeros(dim)}, state, num_unclipped=0.0, num_examples=1.0,
      norms=jnp.ones(1), norms_mask=jnp.ones(1))
  np.testing.assert_allclose(float(np.std(np.asarray(out.updates['w']))),
                             z * c0, rtol=0.03)


def test_zero_noise_fixed_clip_no_lr_rule_is_adamw_on_the_mean_gradient():
  params, x, y = _problem()
  n = x.shape[0]
  kw = dict(learning_rate=1e-2, b1=0.9, b2=0.99, eps=1e-8, weight_decay=1e-2)
  tx = dp_adam_ac.dp_adam_ac(
      noise_multiplier=0.0, expected_batch_size=float(n),
      key=jax.random.key(0), initial_clip_norm=1e30, clip_learning_rate=0.0,
      adapt_learning_rate=False, ema_decay=0.0, **kw)
  ref = optax.adamw(**kw)
  mean_grad = jax.grad(lambda p: jnp.mean(jax.vmap(_loss, (None, 0, 0))(
      p, x, y)))
  p_dp = p_ref = params
  s_dp, s_ref = tx.init(params), ref.init(params)
  for _ in range(3):
    u, s_dp = jax.jit(tx.update)(_per_example(p_dp, x, y), s_dp, p_dp)
    p_dp = optax.apply_updates(p_dp, u)
    u, s_ref = ref.update(mean_grad(p_ref), s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
  for a, b in zip(jax.tree.leaves(p_dp), jax.tree.leaves(p_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lr_multiplier_scales_the_adamw_step():
  params, x, y = _problem()
  g = _per_example(params, x, y)
  base = dict(noise_multiplier=0.0, expected_batch_size=8.0,
              learning_rate=1e-2, key=jax.random.key(0), initial_clip_norm=1e30,
              ema_decay=0.0, count_noise_std=1e-6)
  # All units unclipped: privatized clip rate ~0 < target - band, so the
  # multiplier rises to lr_up at the first step.
  on = dp_adam_ac.dp_adam_ac(**base, lr_up=1.5)
  off = dp_adam_ac.dp_adam_ac(**base, adapt_learning_rate=False)
  u_on, s_on = on.update(g, on.init(params), params)
  u_off, _ = off.update(g, off.init(params), params)
  np.testing.assert_allclose(dp_adam_ac.current_lr_multiplier(s_on), 1.5,
                             rtol=1e-6)
  for a, b in zip(jax.tree.leaves(u_on), jax.tree.leaves(u_off)):
    np.testing.assert_allclose(a, 1.5 * b, rtol=1e-5, atol=1e-8)


def test_ema_weights_kept_and_found_by_the_trainer():
  params, x, y = _problem()
  tx = dp_adam_ac.dp_adam_ac(**_kw(ema_decay=0.5))
  state = tx.init(params)
  hist = [params]
  for _ in range(2):
    p = hist[-1]
    u, state = tx.update(_per_example(p, x, y), state, p)
    hist.append(optax.apply_updates(p, u))
  p = hist[-1]
  found = ema.find_ema(state)
  assert found is not None and int(found.count) == 2
  ts = steps_lib.TrainState(step=jnp.asarray(2), trainable=p,
                            opt_state=state)
  ema_p = steps_lib.ema_trainable(ts)
  assert not np.allclose(ema_p['w'], p['w'])   # EMA differs from raw
  # Closed form for two updates with d = 0.5: 0.25 p0 + 0.25 p1 + 0.5 p2.
  closed = 0.25 * hist[0]['w'] + 0.25 * hist[1]['w'] + 0.5 * hist[2]['w']
  np.testing.assert_allclose(ema_p['w'], closed, rtol=1e-5, atol=1e-7)


def test_expected_batch_size_schedule_divides_each_step():
  dim = 3
  sched = [4.0, 8.0, 16.0]
  stages = dp_adam_ac.dp_adam_ac_stages(**_kw(
      noise_multiplier=0.0, expected_batch_size=sched))
  state = stages.noise.init({'w': jnp.zeros(dim)})
  for t in range(5):
    out, state = stages.noise.update({'w': jnp.ones(dim)}, state,
                                     num_unclipped=1.0, num_examples=2.0)
    np.testing.assert_allclose(out.inv_batch, 1.0 / sched[min(t, 2)])


def test_missing_count_gives_a_clear_error():
  stages = dp_adam_ac.dp_adam_ac_stages(**_kw())
  post = optimizers.post_clip(stages)
  params = {'w': jnp.zeros(3)}
  state = optimizers.chain(stages).init(params)
  with pytest.raises(ValueError, match='num_examples'):
    post.update({'w': jnp.zeros(3)}, state[1:], params, num_unclipped=1.0,
                clip_norm=1.0)
  with pytest.raises(ValueError, match='clip_norm'):
    optimizers.chain(stages).update({'w': jnp.zeros((2, 3))}, state, params)


@pytest.mark.parametrize('bad', [dict(target_quantile=1.0),
                                 dict(expected_batch_size=0.0),
                                 dict(initial_clip_norm=5.0, max_clip_norm=1.0),
                                 dict(noise_multiplier=-1.0)])
def test_bad_arguments(bad):
  with pytest.raises(ValueError):
    dp_adam_ac.dp_adam_ac_stages(**_kw(**bad))


def test_group_mode_noise_is_scaled_to_two_c():
  dim, z, sb, c0 = 20000, 0.5, 3.0, 0.4
  stages = dp_adam_ac.dp_adam_ac_stages(**_kw(
      noise_multiplier=z, count_noise_std=sb, initial_clip_norm=c0,
      group_size=4, num_groups=2))
  state = stages.noise.init({'w': jnp.zeros(dim)})
  out, _ = stages.noise.update({'w': jnp.zeros(dim)}, state,
                               num_unclipped=1.0, num_examples=2.0)
  expect = ac.gradient_noise_multiplier(z, sb, 1.0) * 2 * c0
  np.testing.assert_allclose(float(np.std(np.asarray(out.updates['w']))),
                             expect, rtol=0.03)


def test_make_train_step_with_raw_count_equals_research_path():
  """dpjax.steps.make_train_step (num_unclipped, clip_norm only) drives the
  raw-count variant; the research path computes the same steps."""
  params, x, y = _problem()
  mask = jnp.asarray([1, 1, 1, 0, 1, 1, 1, 1], jnp.float32)
  kw = _kw(count_centered=False, count_noise_std=3.0)
  stages = dp_adam_ac.dp_adam_ac_stages(**kw)
  loss = lambda p, frozen, ex, k: _loss(p, ex['x'], ex['y'])
  step = jax.jit(steps_lib.vmap_train_step(
      loss, stages, l2_clip_norm=1.0, microbatch_size=4,
      clip_norm_fn=dp_adam_ac.current_clip_norm))
  state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32), trainable=params,
                               opt_state=optimizers.chain(stages).init(params))
  tx = dp_adam_ac.dp_adam_ac(**kw)
  p_ref, s_ref = params, tx.init(params)
  for _ in range(2):
    state, metrics = step(state, None, {'x': x, 'y': y}, mask,
                          jax.random.key(0), jnp.arange(mask.shape[0]))
    u, s_ref = tx.update(_per_example(p_ref, x, y), s_ref, p_ref, mask=mask)
    p_ref = optax.apply_updates(p_ref, u)
  np.testing.assert_allclose(dp_adam_ac.current_clip_norm(state.opt_state),
                             dp_adam_ac.current_clip_norm(s_ref), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state.trainable), jax.tree.leaves(p_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # sigma_Delta for the raw count: 1/sigma_Delta^2 + 1/sigma_b^2 = 1/z^2.
  sd = ac.gradient_noise_multiplier(1.0, 3.0, ac.count_sensitivity(1, False))
  np.testing.assert_allclose(sd ** -2 + 3.0 ** -2, 1.0, rtol=1e-12)


def test_fixed_clip_without_lr_rule_is_dp_adamw_noise_at_z():
  """clip_learning_rate=0, adapt_learning_rate=False: no count is released,
  so the gradient noise is z * C_0 (DP-AdamW), and C_t stays C_0."""
  dim, z, c0 = 20000, 0.8, 0.6
  stages = dp_adam_ac.dp_adam_ac_stages(**_kw(
      noise_multiplier=z, initial_clip_norm=c0, clip_learning_rate=0.0,
      adapt_learning_rate=False, count_noise_std=0.1))  # 0.1 < z/2: unused
  state = stages.noise.init({'w': jnp.zeros(dim)})
  out, new = jax.jit(stages.noise.update)(
      {'w': jnp.zeros(dim)}, state, num_unclipped=0.0, num_examples=8.0)
  np.testing.assert_allclose(float(np.std(np.asarray(out.updates['w']))),
                             z * c0, rtol=0.03)
  assert float(new.control.clip_norm) == pytest.approx(c0)
  assert float(new.control.unclipped_fraction) == pytest.approx(0.5)


# ---------------------------------------------------------------------------
# Issue 13: the joint (gradient, count) release against an independent
# reference, and the measured noise levels.


def _boost_setting():
  # sigma_b / Delta_b = 2 z (Delta_b = 1/2, centered count): sigma_Delta / z
  # = (1 - 1/4)^-1/2 = 1.1547, so dropping the boost changes epsilon a lot.
  z, sb, c0 = 1.0, 1.0, 0.7
  stages = dp_adam_ac.dp_adam_ac_stages(**_kw(
      noise_multiplier=z, count_noise_std=sb, initial_clip_norm=c0,
      expected_batch_size=8.0))
  return z, sb, c0, stages


def test_joint_release_is_one_gaussian_of_multiplier_z():
  """Gaussian sum (sensitivity C, std sigma_Delta C) and Gaussian count
  (sensitivity Delta_b = 1/2, std sigma_b) released together are one
  Gaussian of multiplier z_eff = (sigma_Delta^-2 + (Delta_b/sigma_b)^2)^-1/2
  (the privacy loss of independent Gaussians adds; mu^2 = sum of squares).
  sigma_Delta is read from what the noise stage uses, not recomputed."""
  from dp_accounting import dp_event  # pylint: disable=g-import-not-at-top
  from dp_accounting.pld import pld_privacy_accountant  # pylint: disable=g-import-not-at-top
  from dpjax.accounting import get_accountant  # pylint: disable=g-import-not-at-top
  from dpjax.accounting import ledger as ledger_lib  # pylint: disable=g-import-not-at-top
  z, sb, c0, stages = _boost_setting()
  state = stages.noise.init({'w': jnp.zeros(3)})
  sigma_delta = float(state.grad_multiplier)  # the stage's std / (S = C_t)
  assert sigma_delta / z == pytest.approx(1.1547, abs=1e-4)
  delta_b = 0.5  # centered count: a record moves it by +-1/2
  z_eff = (sigma_delta ** -2 + (delta_b / sb) ** 2) ** -0.5
  assert z_eff >= z * (1 - 1e-6)
  assert z_eff == pytest.approx(z, rel=1e-6)
  # The ledger's epsilon for (q, z) is dp_accounting's for the joint release.
  q, steps, delta = 0.01, 2000, 1e-5
  ref = pld_privacy_accountant.PLDAccountant(
      value_discretization_interval=1e-3)
  ref.compose(dp_event.PoissonSampledDpEvent(
      q, dp_event.GaussianDpEvent(z_eff)), steps)
  ledger = ledger_lib.PrivacyLedger()
  ledger.record(q, z, steps)
  ours = get_accountant('pld', value_discretization_interval=1e-3,
                        min_interval=1e-3).epsilon(ledger.phases, delta)
  assert ours == pytest.approx(ref.get_epsilon(delta), rel=5e-3)


def test_measured_gradient_noise_std_is_sigma_delta_times_c():
  """Zero clipped sum, 250,000 coordinates (std error of the std 0.14%)."""
  z, sb, c0, stages = _boost_setting()
  dim = 250_000
  sigma_delta = (z ** -2 - (sb / 0.5) ** -2) ** -0.5  # Andrew et al.
  state = stages.noise.init({'w': jnp.zeros(dim)})
  out, _ = jax.jit(stages.noise.update)(
      {'w': jnp.zeros(dim)}, state, num_unclipped=4.0, num_examples=8.0)
  std = float(np.std(np.asarray(out.updates['w'], np.float64)))
  assert std == pytest.approx(sigma_delta * c0, rel=0.01)


def test_measured_count_noise_std_is_sigma_b():
  """80,000 independent count keys through the stage (std error 0.25%)."""
  z, sb, c0, stages = _boost_setting()
  del z, c0
  state = stages.noise.init({'w': jnp.zeros(1)})
  keys = jax.random.split(jax.random.key(11), 80_000)

  def frac(k):
    s = state._replace(control=state.control._replace(count_key=k))
    _, new = stages.noise.update({'w': jnp.zeros(1)}, s, num_unclipped=4.0,
                                 num_examples=8.0)
    return new.control.unclipped_fraction

  f = np.asarray(jax.jit(jax.vmap(frac))(keys), np.float64)
  # b~ = (4 - 8/2 + N(0, sb^2)) / B + 1/2 with B = 8.
  noise = (f - 0.5) * 8.0
  assert abs(np.mean(noise)) < 5 * sb / np.sqrt(noise.size)
  assert np.std(noise) == pytest.approx(sb, rel=0.01)
