"""LMO-DP noise selected from the config: sound by default, faithful flagged."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import debug
from dpjax import configuration
from dpjax import steps as steps_lib
from dpjax import train
from dpjax.accounting import lmo
from dpjax.accounting.ledger import Phase


def _lmo_config(steps=3):
  config = debug.get_config()
  config.train.steps = steps
  config.dp.mechanism = 'lmo'
  config.dp.l1_clip_norm = 2.0
  return config


def test_lmo_run_is_calibrated_and_accounted_with_the_sound_bound(tmp_path):
  config = _lmo_config()
  out = train.train_and_evaluate(config, str(tmp_path))
  plan, ledger = out['plan'], out['ledger']
  assert plan.mechanism == 'lmo' and plan.clip_norm_ord == 1
  assert ledger.mechanism == 'lmo'
  params = lmo.LMOParams(**ledger.mechanism_params)
  # The ledger alone gives the bound: recompute it independently.
  m = plan.noise_multiplier
  assert ledger.phases == [Phase(plan.q, m, config.train.steps)]
  sound = lmo.epsilon_sound(
      [lmo.LMOPhase(params, plan.q, config.train.steps, l1_sensitivity=1 / m)],
      config.dp.delta)
  assert sound <= config.dp.target_epsilon * (1 + 1e-6)
  assert sound >= 0.9 * config.dp.target_epsilon  # calibrated, not loose
  # The noise scale is m x the L1 clip norm.
  assert plan.lmo_noise_scale == pytest.approx(m * config.dp.l1_clip_norm)
  rows = {r['accountant']: r for r in out['report']['privacy']['rows']}
  assert rows['lmo_sound']['epsilon'] == pytest.approx(sound, rel=1e-9)
  assert rows['lmo_sound']['kind'] == 'upper bound'
  faithful = rows['lmo_paper_faithful_not_private']
  assert 'not a guarantee' in faithful['kind']
  assert 'pld' not in rows  # Gaussian accountants are not applied
  assert out['report']['mechanism']['noise'] == 'lmo'
  assert out['report']['mechanism']['clipping'] == 'flat per-example L1'
  # Every epsilon in the metrics names the LMO accountant.
  recs = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  eps_recs = [r for r in recs if 'epsilon' in r]
  assert eps_recs and all(r['epsilon_accountant'] == 'lmo_sound'
                          for r in eps_recs)
  assert eps_recs[-1]['epsilon'] == pytest.approx(sound, rel=1e-9)
  text = open(tmp_path / 'privacy_report.txt').read()
  assert 'lmo_sound' in text and 'lmo_paper_faithful_not_private' in text


def test_lmo_paper_faithful_mode_is_flagged_and_soundly_accounted(tmp_path):
  config = _lmo_config(steps=2)
  config.dp.lmo_paper_faithful_not_private = True
  out = train.train_and_evaluate(config, str(tmp_path))
  rep = out['report']
  assert rep['formally_private'] is False
  text = open(tmp_path / 'privacy_report.txt').read()
  assert 'NOT DIFFERENTIALLY PRIVATE' in text
  plan = out['plan']
  d = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      out['state'].trainable))
  # L2 clipping to C gives L1 sensitivity C sqrt(d): the ledger says so.
  assert plan.clip_norm_ord == 2
  assert plan.noise_multiplier == pytest.approx(
      1 / (config.dp.l2_clip_norm * math.sqrt(d)))
  rows = {r['accountant']: r for r in rep['privacy']['rows']}
  # The paper's figure is small; the true bound for what ran is enormous.
  assert rows['lmo_paper_faithful_not_private']['epsilon'] < 1.0
  assert rows['lmo_sound']['epsilon'] > 100 * rows[
      'lmo_paper_faithful_not_private']['epsilon']


def test_lmo_step_clips_in_l1_and_adds_scaled_lmo_noise():
  # One step of the trainer's chain with zero learning-rate-free SGD: the
  # update is -(clipped L1 sum + scale * LMO noise) / B exactly.
  from dpjax import optimizers
  from dpjax import lmo_noise
  params = lmo.LMOParams(a1=0.1, k=2, theta=1, a3=0.1, lam=5, a4=0.9,
                         u_a=2, u_b=3)
  key = jax.random.key(3)
  stages = optimizers.dp_stages(l2_clip_norm=1.0, noise_multiplier=0.0,
                                expected_batch_size=4.0, learning_rate=1.0,
                                key=key, optimizer='sgd')
  stages = stages._replace(noise=lmo_noise.lmo_noise(
      params, l1_sensitivity=0.5, key=key))
  w = {'w': jnp.zeros((3,))}
  def loss_fn(t, frozen, ex, k):
    del frozen, k
    return jnp.dot(t['w'], ex['x'])
  step = steps_lib.vmap_train_step(loss_fn, stages,
                                   l2_clip_norm=1.0, microbatch_size=2,
                                   clip_norm_ord=1)
  x = np.array([[3.0, -1.0, 0.0], [0.2, 0.1, 0.0], [10., 10., 10.],
                [1.0, 1.0, 1.0]], np.float32)
  mask = np.array([1, 1, 1, 0], np.float32)
  tx = optimizers.chain(stages)
  state = steps_lib.TrainState(jnp.zeros((), jnp.int32), w, tx.init(w))
  new, _ = step(state, {}, {'x': jnp.asarray(x)}, jnp.asarray(mask),
                jax.random.key(0), jnp.arange(mask.shape[0]))
  clipped = sum(m * g * min(1.0, 1.0 / np.abs(g).sum())
                for g, m in zip(x, mask))
  _, sub = jax.random.split(key)
  noise = lmo_noise.tree_lmo(sub, w, params, 0.5)['w']
  expected = -(clipped + np.asarray(noise)) / 4.0
  np.testing.assert_allclose(np.asarray(new.trainable['w']), expected,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('field,value,match', [
    ('dp.sampling', 'shuffle', 'dp.sampling'),
    ('dp.l1_clip_norm', 0.0, 'dp.l1_clip_norm'),
    ('dp.lmo.k', -1.0, 'dp.lmo'),
    ('dp_adam_ac.enabled', True, 'dp_adam_ac.enabled'),
])
def test_lmo_config_errors_name_the_field(field, value, match):
  config = _lmo_config()
  node = config
  *path, last = field.split('.')
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(configuration.ConfigError, match=match):
    configuration.validate(config)


def test_lmo_ledger_survives_a_restart_from_the_checkpoint(tmp_path):
  # Rerunning a finished run restores state and ledger from the checkpoint:
  # the mechanism kind and the LMO parameters must come back with it.
  config = _lmo_config(steps=2)
  first = train.train_and_evaluate(config, str(tmp_path))
  again = train.train_and_evaluate(config, str(tmp_path))
  assert again['ledger'].mechanism == 'lmo'
  assert again['ledger'].mechanism_params == first['ledger'].mechanism_params
  assert again['ledger'].phases == first['ledger'].phases
  rows = {r['accountant']: r['epsilon']
          for r in again['report']['privacy']['rows']}
  first_rows = {r['accountant']: r['epsilon']
                for r in first['report']['privacy']['rows']}
  assert rows == pytest.approx(first_rows)
  # Another LMO parameter set is another mechanism: resuming is refused.
  config.dp.lmo.a4 = 0.5
  with pytest.raises(configuration.ConfigError, match='privacy'):
    train.train_and_evaluate(config, str(tmp_path))


def test_lmo_target_needing_too_much_noise_names_the_field():
  config = _lmo_config()
  config.dp.target_epsilon = 0.05
  config.dp.max_noise_multiplier = 5.0
  with pytest.raises(configuration.ConfigError,
                     match=r'dp\.target_epsilon.*LMO noise scale'):
    train.plan_privacy(config, dataset_size=512)
