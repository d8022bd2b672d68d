"""The noise probe (dpjax.audit.noise_probe): the noise the trainer's step adds,
measured in the released update, matches what the ledger records on every
noise path; planted 2% deficits fail."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpjax import adaptive_clipping
from dpjax import lmo_noise
from dpjax import noise as noise_lib
from dpjax import optimizers
from dpjax.audit import noise_probe
from dpjax.audit.__main__ import main as audit_main
from tests.audit_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pooled coordinates: the Gaussian scale's relative standard error is
# 1/sqrt(2 n) = 0.16%, so the 1% tolerance fails a 2% deficit by > 6 SE.
MIN_COORDS = 200_000
ALL_KERNELS = r'.*(self_attn/(q|k|v|o)_proj|mlp/(gate|up|down)_proj)'
LORA = {'peft.mode': 'lora', 'peft.lora_rank': 16,
        'peft.lora_targets': ALL_KERNELS}  # 8,192 coordinates a step




def probe(config):
  return noise_probe.probe_config(config, min_coordinates=MIN_COORDS)


def assert_measured(report, check='gaussian noise std / S (multiplier)'):
  assert report.passed, '\n'.join(report.lines())
  assert report.coordinates >= MIN_COORDS
  c = report.check(check)
  assert abs(c.ratio - 1) < 0.01 and c.standard_error < 0.005, c.line()
  return c


def test_gaussian_full_fine_tuning():
  r = probe(tiny_config(**{'dp.noise_multiplier': 0.7}))
  c = assert_measured(r)
  assert c.expected == pytest.approx(0.7)  # the ledger's multiplier
  assert r.ledger['noise_multiplier'] == pytest.approx(0.7)
  assert r.ledger['steps'] == r.steps


def test_gaussian_lora():
  assert_measured(probe(tiny_config(**LORA)))


def test_gaussian_rgp_carriers():
  r = probe(tiny_config(**{'peft.mode': 'rgp', 'peft.rgp_rank': 8}))
  assert_measured(r)
  assert r.path.startswith('rgp/')


def test_batch_size_schedule_divides_by_each_steps_expected_size():
  r = probe(tiny_config(**{'train.batch_schedule': 'linear_ramp',
                           'train.batch_schedule_start': 2.0,
                           'train.steps': 8}))
  assert_measured(r)
  assert len(set(r.ledger['q'])) > 1  # q_t varies, the update still matches
  assert r.check('released update x B_t - released sum, max abs / float32 '
                 'rounding allowance').passed


def test_dp_adam_ac_gradient_and_count_noise_where_the_boost_matters():
  """sigma_b / Delta_b = 2 z: the gradient noise must be 1.155 z, not z."""
  r = probe(tiny_config(**{'dp_adam_ac.enabled': True,
                           'dp_adam_ac.count_noise_std': 1.0}))
  c = assert_measured(r)
  assert c.expected / r.ledger['noise_multiplier'] > 1.15
  joint = r.check('joint multiplier of gradient and count noise')
  assert abs(joint.ratio - 1) < 0.01, joint.line()
  assert r.ledger['count_noise_std_measured'] == pytest.approx(1.0, rel=0.02)


def test_lmo_noise_law_and_scale():
  r = probe(tiny_config(**{'dp.mechanism': 'lmo', 'dp.l1_clip_norm': 10.0,
                           'dp.noise_multiplier': 0.5}))
  assert r.passed, '\n'.join(r.lines())
  for c in r.checks[:3]:
    assert 'LMO' in c.name and abs(c.ratio - 1) < 0.01, c.line()


def test_lmo_reference_quantiles_match_an_independent_monte_carlo():
  params = dict(a1=1.0, k=2.0, theta=0.5, a3=0.5, lam=2.0, a4=0.3, u_a=0.1,
                u_b=1.0)
  rng = np.random.default_rng(0)
  n = 2_000_000
  eps = (params['a1'] * rng.gamma(params['k'], params['theta'], n) +
         params['a3'] * rng.exponential(1 / params['lam'], n) +
         params['a4'] * rng.uniform(params['u_a'], params['u_b'], n))
  x = np.abs(rng.laplace(0, 1, n)) / eps
  np.testing.assert_allclose(noise_probe.lmo_abs_quantiles(params),
                             np.quantile(x, noise_probe.QUARTILES),
                             rtol=0.005)


# ---------------------------------------------------------------------------
# Planted bugs: each must fail the probe.


def test_catches_a_two_percent_gaussian_deficit(monkeypatch):
  real = noise_lib.tree_gaussian
  monkeypatch.setattr(noise_lib, 'tree_gaussian',
                      lambda key, tree, std: real(key, tree, 0.98 * std))
  r = probe(tiny_config())
  c = r.check('gaussian noise std / S (multiplier)')
  assert not r.passed and c.ratio == pytest.approx(0.98, abs=0.005)


def test_catches_dropping_dp_adam_ac_extra_gradient_noise(monkeypatch):
  monkeypatch.setattr(adaptive_clipping, 'gradient_noise_multiplier',
                      lambda z, *args, **kwargs: z)
  r = probe(tiny_config(**{'dp_adam_ac.enabled': True,
                           'dp_adam_ac.count_noise_std': 1.0}))
  assert not r.passed
  assert not r.check('joint multiplier of gradient and count noise').passed


def test_catches_a_two_percent_lmo_deficit(monkeypatch):
  real = lmo_noise.sample_lmo
  monkeypatch.setattr(lmo_noise, 'sample_lmo',
                      lambda key, params, shape: 0.98 * real(key, params,
                                                             shape))
  r = probe(tiny_config(**{'dp.mechanism': 'lmo', 'dp.l1_clip_norm': 10.0,
                           'dp.noise_multiplier': 0.5}))
  assert not r.passed
  assert all(c.ratio < 0.99 for c in r.checks[:3]), r.lines()


def test_catches_the_trainer_building_half_the_noise(monkeypatch):
  """The review's bug: the stages get sigma/2 while the ledger records sigma."""
  real = optimizers.dp_stages
  monkeypatch.setattr(optimizers, 'dp_stages', lambda **kw: real(**dict(
      kw, noise_multiplier=kw['noise_multiplier'] / 2)))
  r = probe(tiny_config(**LORA))
  c = r.check('gaussian noise std / S (multiplier)')
  assert not r.passed and c.ratio == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------------
# The command.


def test_eight_devices_through_the_command(tmp_path):
  out = tmp_path / 'n.json'
  env = dict(os.environ,
             XLA_FLAGS='--xla_force_host_platform_device_count=8',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run(
      [sys.executable, '-m', 'dpjax.audit', 'noise',
       '--config=' + os.path.join(ROOT, 'configs', 'debug.py'),
       '--config.mesh.data=-1', '--config.model.num_layers=1',
       '--config.dp.noise_multiplier=0.8', '--config.train.batch_size=8',
       '--config.train.max_batch_size=16',
       '--config.data.max_train_records=128', f'--json={out}'],
      capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rep = json.loads(out.read_text())['report']
  assert rep['passed'] and rep['path'].endswith('devices=8')
  std = next(c for c in rep['checks'] if c['name'].startswith('gaussian '
                                                               'noise std'))
  assert abs(std['ratio'] - 1) < 0.01 and std['expected'] == 0.8


@pytest.mark.parametrize('argv,needle', [
    (['noise', '--min_coordinates=0'], '--min_coordinates'),
    (['noise', '--noise_tolerance=2'], '--noise_tolerance'),
    (['noise', '--config.dp.enabled=False'], 'dp.enabled'),
])
def test_command_bad_usage_exits_2_naming_the_problem(argv, needle, capsys):
  config = os.path.join(ROOT, 'configs', 'debug.py')
  code = audit_main(['prog', argv[0], f'--config={config}'] + argv[1:])
  assert code == 2
  assert needle in capsys.readouterr().err
