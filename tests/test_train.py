"""End to end: the debug run, resume determinism, 1 vs 8 devices."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import debug
from dpjax import configuration
from dpjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _leaves(tree):
  def as_np(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)  # the noise key is part of the state
    return np.asarray(jax.device_get(x))
  return [as_np(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope='module')
def full_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  config = debug.get_config()
  config.train.checkpoint_every = 2
  config.train.keep_checkpoints = 10
  # OS entropy (the default); the secret state is kept, as a killed run
  # leaves it, so that the resume below can continue exactly.
  config.dp.keep_secret_state = True
  out = train.train_and_evaluate(config, workdir)
  return config, workdir, out


def test_debug_run_writes_report_metrics_and_plot(full_run):
  config, workdir, out = full_run
  for name in ('metrics.jsonl', 'privacy_report.json', 'privacy_report.txt',
               'training.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  with open(os.path.join(workdir, 'privacy_report.json')) as f:
    report = json.load(f)
  m = report['mechanism']
  assert m['sampling'] == 'poisson' and m['neighbouring'] == 'add_remove'
  assert m['steps'] == config.train.steps
  rows = {r['accountant']: r for r in report['privacy']['rows']}
  assert rows['pld']['kind'] == 'upper bound'
  # Calibrated for epsilon 8 under PLD: the guarantee must not exceed it.
  assert 7.0 < rows['pld']['epsilon'] <= config.dp.target_epsilon
  assert rows['pld']['delta'] == config.dp.delta
  text = open(os.path.join(workdir, 'privacy_report.txt')).read()
  for word in ('pld', 'rdp', 'poisson', 'add_remove', 'upper bound'):
    assert word in text
  recs = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))]
  eps = [r['epsilon'] for r in recs if 'epsilon' in r]
  assert eps == sorted(eps) and eps[-1] == pytest.approx(rows['pld']['epsilon'])
  # Private-batch statistics are not logged by default (not privatized).
  assert not any('train_loss' in r or 'clip_fraction' in r for r in recs)
  assert all('clip_norm' in r for r in recs if r['step'] > 0 and 'epsilon' in r)


def test_resume_equals_uninterrupted(full_run):
  config, workdir, out = full_run
  resumed_dir = workdir + '_resumed'
  shutil.copytree(workdir, resumed_dir)
  ckpts = os.path.join(resumed_dir, 'checkpoints')
  steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert steps[-1] == config.train.steps and 2 in steps
  for s in steps:  # "kill" the run right after its step-2 checkpoint
    if s > 2:
      shutil.rmtree(os.path.join(ckpts, str(s)))
  os.remove(os.path.join(resumed_dir, 'privacy_report.json'))
  again = train.train_and_evaluate(config, resumed_dir)
  for a, b in zip(_leaves(out['state']), _leaves(again['state'])):
    np.testing.assert_array_equal(a, b)
  assert again['ledger'].to_dict() == out['ledger'].to_dict()
  e1 = out['report']['privacy']['rows'][0]['epsilon']
  e2 = again['report']['privacy']['rows'][0]['epsilon']
  assert e1 == e2
  lines = open(os.path.join(resumed_dir, 'metrics.jsonl')).read()
  assert lines == open(os.path.join(workdir, 'metrics.jsonl')).read()


def test_resume_with_other_privacy_parameters_is_refused(full_run):
  config, workdir, _ = full_run
  other = debug.get_config()
  other.train.checkpoint_every = 2
  other.dp.target_epsilon = 3.0
  with pytest.raises(configuration.ConfigError, match='config.dp'):
    train.train_and_evaluate(other, workdir)


def test_unreachable_target_epsilon_names_the_field(tmp_path):
  config = debug.get_config()
  config.dp.target_epsilon = 1e-4
  with pytest.raises(configuration.ConfigError, match='dp.target_epsilon'):
    train.train_and_evaluate(config, str(tmp_path))


def test_nonprivate_and_shuffle_runs_label_their_guarantees(tmp_path):
  config = debug.get_config()
  config.train.steps = 2
  config.dp.enabled = False
  out = train.train_and_evaluate(config, str(tmp_path / 'np'))
  assert out['report']['privacy'] is None
  assert 'NON-PRIVATE' in open(tmp_path / 'np' / 'privacy_report.txt').read()

  config = debug.get_config()
  config.train.steps = 2
  config.dp.sampling = 'shuffle'
  config.train.max_batch_size = 16
  out = train.train_and_evaluate(config, str(tmp_path / 'sh'))
  rep = out['report']
  assert rep['mechanism']['neighbouring'] == 'replace_one'
  text = open(tmp_path / 'sh' / 'privacy_report.txt').read()
  assert 'shuffle' in text and 'not a guarantee' in text.lower()
  guaranteed = [r for r in rep['privacy']['rows'] if r['accountant'] == 'pld'][0]
  assert guaranteed['epsilon'] <= config.dp.target_epsilon


_DEVICES_SCRIPT = r'''
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from configs import debug
from dpjax import train
assert jax.device_count() == 8
finals = []
for n in (1, 8):
  c = debug.get_config()
  c.train.steps = 3
  c.mesh.data = n
  c.dp.insecure_fixed_randomness_seed = 0  # the same noise on 1 and 8 devices
  out = train.train_and_evaluate(c, os.path.join(sys.argv[2], str(n)))
  finals.append([np.asarray(x) for x in jax.tree.leaves(jax.device_get(out["state"].trainable))])
diff = max(float(np.max(np.abs(a - b))) for a, b in zip(*finals))
scale = max(float(np.max(np.abs(a))) for a in finals[0])
print(json.dumps({"max_abs_diff": diff, "scale": scale}))
'''


def test_one_device_equals_eight_devices(tmp_path):
  proc = subprocess.run([sys.executable, '-c', _DEVICES_SCRIPT, ROOT,
                         str(tmp_path)], capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  assert res['max_abs_diff'] <= 1e-5 * max(1.0, res['scale']), res


def test_dp_adam_ac_runs_and_faithful_percentile_mode_is_flagged(tmp_path):
  config = debug.get_config()
  config.train.steps = 3
  config.train.log_nonprivate_stats = True
  config.dp_adam_ac.enabled = True
  config.dp_adam_ac.initial_clip_norm = 0.05
  out = train.train_and_evaluate(config, str(tmp_path / 'ac'))
  rep = out['report']
  assert rep['mechanism_notes']['formally_private'] is True
  recs = [json.loads(l) for l in open(tmp_path / 'ac' / 'metrics.jsonl')]
  assert any('train_loss' in r for r in recs)  # logged when asked for
  clip_norms = [r['clip_norm'] for r in recs if 'clip_norm' in r]
  assert clip_norms and clip_norms[-1] != pytest.approx(0.05)  # C_t adapts
  # Accounted as one Gaussian of the configured multiplier (ledger sigma).
  assert out['ledger'].phases[0].sigma == pytest.approx(
      out['plan'].noise_multiplier)

  config.dp_adam_ac.nonprivate_percentile_clipping = True
  out = train.train_and_evaluate(config, str(tmp_path / 'faithful'))
  assert out['report']['formally_private'] is False
  text = open(tmp_path / 'faithful' / 'privacy_report.txt').read()
  assert 'NOT DIFFERENTIALLY PRIVATE' in text
  recs = [json.loads(l) for l in open(tmp_path / 'faithful' / 'metrics.jsonl')]
  eps = [r for r in recs if 'epsilon' in r]
  assert eps and all(any('NOT PRIVATE' in w for w in r['privacy_warnings'])
                     for r in eps)


def test_batch_schedule_accounts_every_step_with_its_own_q(tmp_path):
  from dpjax.accounting import get_accountant
  from dpjax.accounting.ledger import Phase
  config = debug.get_config()
  config.train.steps = 4
  config.train.batch_schedule = 'linear_ramp'
  config.train.batch_schedule_start = 4.0
  out = train.train_and_evaluate(config, str(tmp_path))
  n = out['plan'].dataset_size
  sizes = out['plan'].batch_schedule
  assert sizes[0] == 4.0 and sizes[-1] == config.train.batch_size
  sigma = out['plan'].noise_multiplier
  expected = [Phase(b / n, sigma, 1) for b in sizes]
  assert out['ledger'].phases == expected
  direct = get_accountant('pld').epsilon(expected, config.dp.delta)
  rows = {r['accountant']: r for r in out['report']['privacy']['rows']}
  assert rows['pld']['epsilon'] == pytest.approx(direct, rel=1e-9)
  assert direct <= config.dp.target_epsilon


def test_records_corpus_reports_canary_exposure(tmp_path):
  config = debug.get_config()
  config.data.update(corpus='records', records_n=200,
                     canary_repetitions=(0, 5), exposure_samples=50,
                     seq_len=192, max_train_records=0, max_eval_records=16)
  config.train.steps = 2
  out = train.train_and_evaluate(config, str(tmp_path))
  exp = out['final']['canary_exposure']
  assert [e['repetitions'] for e in exp] == [0, 5]
  for e in exp:
    assert 0.0 <= e['exposure_bits'] <= e['max_exposure_bits']
  assert 'canary_exposure' in open(tmp_path / 'privacy_report.txt').read()
  assert 'one fictitious clinical note' in out['ledger'].unit


def test_edgeworth_calibration_shows_the_pld_bound_beside_it(tmp_path):
  config = debug.get_config()
  config.train.steps = 3
  config.dp.accountant = 'edgeworth'
  out = train.train_and_evaluate(config, str(tmp_path))
  rows = {r['accountant']: r for r in out['report']['privacy']['rows']}
  assert rows['edgeworth']['kind'] == 'estimate'
  assert rows['pld']['kind'] == 'upper bound'
  # Calibrated on the estimate: it meets the target, the bound is reported.
  assert rows['edgeworth']['epsilon'] <= config.dp.target_epsilon * (1 + 1e-6)
  assert out['report']['mechanism']['calibration_accountant'] == 'edgeworth'
  text = open(tmp_path / 'privacy_report.txt').read()
  assert 'estimate' in text and 'upper bound' in text
  # Every epsilon so far in the metrics is labelled an estimate and carries
  # the PLD bound, which is the report's PLD figure at the end.
  recs = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  eps = [r for r in recs if 'epsilon' in r and r['step'] > 0]
  assert eps and all(r['epsilon_kind'] == 'estimate' and
                     r['epsilon_upper_bound_accountant'] == 'pld'
                     for r in eps)
  assert eps[-1]['epsilon_upper_bound'] == pytest.approx(
      rows['pld']['epsilon'], rel=1e-9)
  assert eps[-1]['epsilon'] == pytest.approx(rows['edgeworth']['epsilon'],
                                             rel=1e-9)
