"""RGP selected from the config (peft.mode='rgp'), alone and with LMO noise."""

import jax
import numpy as np
import pytest

from configs import debug
from dpjax import configuration
from dpjax import model_setup
from dpjax import rgp
from dpjax import train
from dpjax.accounting import get_accountant
from dpjax.accounting.ledger import Phase


def _rgp_config(steps=3):
  config = debug.get_config()
  config.train.steps = steps
  config.train.log_every = 1
  config.peft.mode = 'rgp'
  config.peft.rgp_rank = 2
  config.peft.rgp_targets = r'.*self_attn/(q|v)_proj'
  config.peft.rgp_extra_trainable = (r'norm/scale',)
  return config


def test_rgp_run_trains_only_the_targets_and_is_accounted_as_dp_sgd(tmp_path):
  config = _rgp_config()
  model = model_setup.create(config)
  assert model.rgp_targets and all(
      t.endswith('kernel') and ('q_proj' in t or 'v_proj' in t)
      for t in model.rgp_targets)
  out = train.train_and_evaluate(config, str(tmp_path))
  flat0 = rgp.flat_params(model.trainable)
  flat1 = rgp.flat_params(jax.device_get(out['state'].trainable))
  assert set(flat1) == set(flat0)
  assert set(model.rgp_targets) < set(flat1)           # plus the extra leaves
  assert any('norm' in p for p in set(flat1) - set(model.rgp_targets))
  for p in flat0:
    assert not np.allclose(flat0[p], flat1[p]), p        # every leaf trained
  plan, ledger = out['plan'], out['ledger']
  assert ledger.phases == [Phase(plan.q, plan.noise_multiplier,
                                 config.train.steps)]
  direct = get_accountant('pld').epsilon(ledger.phases, config.dp.delta)
  assert direct <= config.dp.target_epsilon * (1 + 1e-6)
  rows = {r['accountant']: r for r in out['report']['privacy']['rows']}
  assert rows['pld']['epsilon'] == pytest.approx(direct, rel=1e-9)
  assert np.isfinite(out['final']['eval_loss'])


@pytest.mark.slow  # 29 s; test_audit_noise covers RGP carriers and LMO noise
def test_rgp_with_lmo_noise_runs_with_l1_clipping(tmp_path):
  config = _rgp_config(steps=2)
  config.dp.mechanism = 'lmo'
  out = train.train_and_evaluate(config, str(tmp_path))
  assert out['plan'].clip_norm_ord == 1
  rows = {r['accountant']: r for r in out['report']['privacy']['rows']}
  assert rows['lmo_sound']['epsilon'] <= config.dp.target_epsilon * (1 + 1e-6)
  assert np.isfinite(out['final']['eval_loss'])


def test_rgp_config_errors_name_the_field():
  config = _rgp_config()
  config.peft.rgp_targets = r'.*no_such_module'
  with pytest.raises(configuration.ConfigError, match='peft'):
    model_setup.create(config)
  config = _rgp_config()
  config.peft.rgp_rank = 0
  with pytest.raises(configuration.ConfigError, match='peft.rgp_rank'):
    configuration.validate(config)
  config = _rgp_config()
  config.peft.rgp_cross_sign = 0.5
  with pytest.raises(configuration.ConfigError, match='peft.rgp_cross_sign'):
    configuration.validate(config)
  config = _rgp_config()
  config.dp_adam_ac.enabled = True
  with pytest.raises(configuration.ConfigError, match='dp_adam_ac.enabled'):
    configuration.validate(config)


def test_nonprivate_rgp_run_makes_low_rank_sgd_updates(tmp_path):
  # Without DP the baseline is RGP itself (no clipping, no noise): with SGD
  # every target kernel moves by a rank <= 2r matrix per step.
  config = _rgp_config(steps=1)
  config.dp.enabled = False
  config.train.optimizer = 'sgd'
  config.train.learning_rate = 100.0   # a step far above float32 round-off
  config.train.ema_decay = 0.0
  model = model_setup.create(config)
  out = train.train_and_evaluate(config, str(tmp_path))
  flat0 = rgp.flat_params(model.trainable)
  flat1 = rgp.flat_params(jax.device_get(out['state'].trainable))
  for t in model.rgp_targets:
    delta = np.asarray(flat1[t]) - np.asarray(flat0[t])
    s = np.linalg.svd(delta, compute_uv=False)
    assert s[0] > 1e-3
    assert np.all(s[2 * config.peft.rgp_rank:] < 1e-4 * s[0]), (t, s)
