"""Adaptive clipping: quantile tracking, joint accounting, percentile, LR."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from dpjax import adaptive_clipping as ac
from dpjax import dp_adam_ac
from dpjax import microbatch_groups
from dpjax.accounting import Phase, get_accountant


# ---- sigma_Delta and the joint mechanism ---------------------------------


@pytest.mark.parametrize('z,sigma_b', [(0.7, 3.2), (1.1, 0.6), (4.0, 50.0)])
def test_sigma_delta_closed_form(z, sigma_b):
  sd = ac.gradient_noise_multiplier(z, sigma_b)
  # Andrew et al. Thm 1: 1/sigma_Delta^2 + 1/(2 sigma_b)^2 = 1/z^2.
  np.testing.assert_allclose(sd ** -2 + (2 * sigma_b) ** -2, z ** -2,
                             rtol=1e-12)
  assert sd > z


def test_sigma_delta_rejects_z_at_or_above_2_sigma_b():
  with pytest.raises(ValueError, match='count_noise_std'):
    ac.gradient_noise_multiplier(1.0, 0.5)   # z = 2 sigma_b
  with pytest.raises(ValueError, match='count_noise_std'):
    ac.gradient_noise_multiplier(1.0, 0.4)
  # Groups: the count's sensitivity is 1, so z must stay below sigma_b.
  with pytest.raises(ValueError, match='count_noise_std'):
    ac.gradient_noise_multiplier(1.0, 0.9, ac.count_sensitivity(4))


def test_joint_mechanism_accounts_as_one_gaussian_of_multiplier_z():
  z, sigma_b = 0.9, 2.0
  sd = ac.gradient_noise_multiplier(z, sigma_b)
  # Without subsampling the two releases compose exactly (RDP of a Gaussian
  # is alpha / (2 sigma^2), additive): gradient (sigma_Delta) + count (2
  # sigma_b, sensitivity 1/2) is one Gaussian of multiplier z.
  rdp = get_accountant('rdp', orders=(1.5, 2.0, 8.0, 32.0))
  np.testing.assert_allclose(
      rdp.rdp([Phase(1.0, sd, 1), Phase(1.0, 2 * sigma_b, 1)]),
      rdp.rdp([Phase(1.0, z, 1)]), rtol=1e-12)
  pld = get_accountant('pld')
  np.testing.assert_allclose(
      pld.epsilon([Phase(1.0, sd, 3), Phase(1.0, 2 * sigma_b, 3)], 1e-5),
      pld.epsilon([Phase(1.0, z, 3)], 1e-5), rtol=2e-3)


def test_implemented_noise_stds_give_whitened_sensitivity_one_over_z():
  # Measure the two noise stds the noise stage really draws, then check that
  # the worst neighbour (clipped gradient of norm C_t, count bit +-1/2) moves
  # the whitened output by 1/z, i.e. one Gaussian of multiplier z (and with
  # shared Poisson sampling one subsampled Gaussian (q, z)).
  z, sigma_b, b, c0, dim = 1.0, 3.0, 60.0, 0.7, 20000
  stages = dp_adam_ac.dp_adam_ac_stages(
      noise_multiplier=z, expected_batch_size=b, learning_rate=1e-3,
      key=jax.random.key(3), initial_clip_norm=c0, count_noise_std=sigma_b)
  state = stages.noise.init({'w': jnp.zeros((dim,))})
  out, _ = jax.jit(stages.noise.update)({'w': jnp.zeros((dim,))}, state,
                                        num_unclipped=20.0, num_examples=50.0)
  std_grad = float(np.std(np.asarray(out.updates['w'])))

  def count_noise(key):
    st = state._replace(control=state.control._replace(count_key=key))
    _, new = stages.noise.update({'w': jnp.zeros((1,))}, st,
                                 num_unclipped=20.0, num_examples=50.0)
    return new.control.unclipped_fraction

  fracs = jax.jit(jax.vmap(count_noise))(
      jax.random.split(jax.random.key(0), 1000))
  count = (np.asarray(fracs, np.float64) - 0.5) * b - (20.0 - 25.0)
  std_count = float(np.std(count))
  sd = ac.gradient_noise_multiplier(z, sigma_b)
  np.testing.assert_allclose(std_grad, sd * c0, rtol=0.03)
  np.testing.assert_allclose(std_count, sigma_b, rtol=0.1)
  whitened = np.hypot(c0 / (sd * c0), 0.5 / sigma_b)
  np.testing.assert_allclose(whitened, 1.0 / z, rtol=1e-6)


# ---- private quantile tracking -------------------------------------------


@pytest.mark.parametrize('gamma', [0.5, 0.8])
def test_private_quantile_tracking_converges_to_target_quantile(gamma):
  # Per-example gradient norms ~ LogNormal(0, 0.5): the gamma-quantile is
  # exp(0.5 * Phi^-1(gamma)). Drive the whole chain (research path).
  b, steps = 256, 300
  true_q = float(np.exp(0.5 * stats.norm.ppf(gamma)))
  tx = dp_adam_ac.dp_adam_ac(
      noise_multiplier=1.0, expected_batch_size=float(b), learning_rate=0.0,
      key=jax.random.key(1), initial_clip_norm=0.1, target_quantile=gamma,
      clip_learning_rate=0.2, ema_decay=0.0)
  params = {'w': jnp.zeros((1,))}

  def body(state, key):
    norms = jnp.exp(0.5 * jax.random.normal(key, (b, 1)))
    _, state = tx.update({'w': norms}, state, params)
    return state, dp_adam_ac.current_clip_norm(state)

  _, trace = jax.jit(lambda s: jax.lax.scan(
      body, s, jax.random.split(jax.random.key(2), steps)))(tx.init(params))
  trace = np.asarray(trace)
  assert trace[0] < 0.2 * true_q  # it really had to travel
  np.testing.assert_allclose(np.mean(trace[-150:]), true_q, rtol=0.05)


def test_geometric_update_direction():
  c = jnp.asarray(1.0)
  assert float(ac.geometric_update(c, 0.9, target_quantile=0.5,
                                   learning_rate=0.2)) < 1.0
  assert float(ac.geometric_update(c, 0.1, target_quantile=0.5,
                                   learning_rate=0.2)) > 1.0
  np.testing.assert_allclose(
      float(ac.geometric_update(c, 0.7, target_quantile=0.5,
                                learning_rate=0.2)), np.exp(-0.04), rtol=1e-6)


# ---- the paper's percentile rule (not private) ---------------------------


def test_nonprivate_percentile_mode_reproduces_percentile_rule_exactly():
  h, gamma, cmin, cmax = 7, 0.8, 0.3, 2.5
  tx = dp_adam_ac.dp_adam_ac(
      noise_multiplier=1.0, expected_batch_size=5.0, learning_rate=1e-3,
      key=jax.random.key(0), initial_clip_norm=1.0, target_quantile=gamma,
      min_clip_norm=cmin, max_clip_norm=cmax,
      nonprivate_percentile_clipping=True, history_size=h)
  params = {'w': jnp.zeros((2,))}
  state = tx.init(params)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(0)
  pushed = []
  for t in range(8):
    # Fixed padded shape 9 > H; step 5 has all 9 rows real (more than H).
    g = rng.lognormal(0.0, 1.0, size=(9, 2)).astype(np.float32)
    mask = (rng.random(9) < (1.0 if t == 5 else 0.5)).astype(np.float32)
    c_before = float(dp_adam_ac.current_clip_norm(state))
    _, state = update({'w': jnp.asarray(g)}, state, params,
                      mask=jnp.asarray(mask))
    norms = np.linalg.norm(g.astype(np.float64), axis=1)
    pushed += list(norms[mask > 0])
    expect = (np.clip(np.percentile(pushed[-h:], 100 * gamma), cmin, cmax)
              if pushed else c_before)
    np.testing.assert_allclose(float(dp_adam_ac.current_clip_norm(state)),
                               expect, rtol=1e-5)


def test_nonprivate_mode_is_flagged():
  notes = dp_adam_ac.privacy_notes(nonprivate_percentile_clipping=True,
                                   noise_multiplier=1.0)
  assert notes['formally_private'] is False
  assert 'NOT' in notes['warning']
  private = dp_adam_ac.privacy_notes(nonprivate_percentile_clipping=False,
                                     noise_multiplier=1.0)
  assert private['formally_private'] is True


# ---- LR multiplier --------------------------------------------------------


def test_lr_multiplier_bounds_and_direction():
  rule = ac.LrMultiplierRule(target_clip_rate=0.2).validate()
  run = jax.jit(lambda g, rate, n: jax.lax.scan(
      lambda c, _: (ac.lr_multiplier_update(c, rate, rule),) * 2, g, None,
      length=n)[1], static_argnums=2)
  ups = np.asarray(run(jnp.asarray(1.0), jnp.asarray(0.0), 100))
  assert np.all(np.diff(ups) >= 0) and ups[0] > 1.0
  np.testing.assert_allclose(ups[9], 1.01 ** 10, rtol=1e-5)
  assert max(ups) <= rule.max_multiplier + 1e-6
  np.testing.assert_allclose(ups[-1], rule.max_multiplier, rtol=1e-6)
  # clip rate far above target: LR falls
  downs = np.asarray(run(jnp.asarray(ups[-1]), jnp.asarray(0.9), 2000))
  assert np.all(np.diff(downs) <= 0)
  np.testing.assert_allclose(downs[-1], rule.min_multiplier, rtol=1e-6)
  # Inside the band: unchanged.
  assert float(ac.lr_multiplier_update(jnp.asarray(0.7), jnp.asarray(0.25),
                                       rule)) == pytest.approx(0.7)
  with pytest.raises(ValueError, match='bounds'):
    ac.LrMultiplierRule(0.2, min_multiplier=1.5).validate()


def test_lr_multiplier_reads_only_the_privatized_clip_rate():
  # gamma_{t+1} = rule(gamma_t, 1 - b~_t) with b~_t the NOISY fraction kept
  # in the state; with large count noise it differs from the raw rate.
  stages = dp_adam_ac.dp_adam_ac_stages(
      noise_multiplier=1.0, expected_batch_size=10.0, learning_rate=1e-3,
      key=jax.random.key(5), count_noise_std=4.0, target_quantile=0.5)
  rule = ac.LrMultiplierRule(target_clip_rate=0.5)
  state = stages.noise.init({'w': jnp.zeros(3)})
  update = jax.jit(stages.noise.update)
  raw_rate = 0.5                 # inside the band: raw rate would not move it
  moved = 0
  for _ in range(30):
    gamma = state.control.lr_multiplier
    out, state = update({'w': jnp.zeros(3)}, state, num_unclipped=5.0,
                        num_examples=10.0)
    frac = state.control.unclipped_fraction
    np.testing.assert_allclose(
        state.control.lr_multiplier,
        ac.lr_multiplier_update(gamma, 1.0 - frac, rule), rtol=1e-6)
    np.testing.assert_allclose(out.lr_multiplier, state.control.lr_multiplier)
    moved += abs(float(1.0 - frac) - raw_rate) > 0.1
  assert moved > 0


def test_group_count_sensitivity():
  assert ac.count_sensitivity(1) == 0.5
  assert ac.count_sensitivity(3) == 1.0
  assert microbatch_groups.sensitivity_factor(1) == 1.0
  assert microbatch_groups.sensitivity_factor(3) == 2.0
