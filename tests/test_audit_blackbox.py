"""Black-box canary audit (`config.audit`, dpjax.audit.blackbox): secret
canaries, the real data's ledger, eps_lb in the report, exports withheld."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest

from configs import debug
from dpjax import configuration
from dpjax import model_setup
from dpjax import randomness
from dpjax import reporting
from dpjax import sampling
from dpjax import train
from dpjax.audit import blackbox
from dpjax.data import tokenizers

N_REAL = 64


def _config(**audit):
  c = debug.get_config()
  c.plot = False
  c.data.max_train_records = N_REAL
  c.train.update(steps=10, batch_size=32, max_batch_size=64,
                 learning_rate=1e-2, log_every=100, eval_every=1000,
                 checkpoint_every=1000)
  c.audit.update(dict(enabled=True, canaries=64, canary_tokens=16), **audit)
  return c


class _Data:
  def __init__(self, n=8, seq_len=32):
    self.tokenizer = tokenizers.ByteTokenizer()
    self.train = {'inputs': np.zeros((n, seq_len), np.int32),
                  'targets': np.zeros((n, seq_len), np.int32),
                  'weights': np.ones((n, seq_len), np.float32)}
    self.train_size = n


def test_canaries_and_coins_are_secret_randomness_not_the_seed():
  c, data = _config(canaries=200), _Data()
  a = blackbox.CanaryAudit.for_run(c, data,
                                   randomness.SecretRandomness.from_os_entropy())
  b = blackbox.CanaryAudit.for_run(c, data,
                                   randomness.SecretRandomness.from_os_entropy())
  assert not np.array_equal(a.records['inputs'], b.records['inputs'])
  assert not np.array_equal(a.included, b.included)
  assert 60 < a.n_included < 140 and 'inputs' not in repr(a)
  # Regenerable from the material alone; config.seed plays no part.
  material = randomness.SecretRandomness.from_os_entropy()
  c2 = _config(canaries=200)
  c2.seed = 12345
  x = blackbox.CanaryAudit.for_run(c, data, material)
  y = blackbox.CanaryAudit.for_run(c2, data, material)
  for k in x.records:
    np.testing.assert_array_equal(x.records[k], y.records[k])
  np.testing.assert_array_equal(x.included, y.included)
  # Records: 15 weighted targets of non-special byte tokens, then padding.
  tok = data.tokenizer
  r = x.records
  assert r['inputs'].shape == (200, 32)
  assert np.all(r['weights'][:, :15] == 1) and np.all(r['weights'][:, 15:] == 0)
  real = r['inputs'][:, :15]
  assert real.max() < 256 and not np.isin(real, [tok.pad_id, tok.eos_id]).any()
  np.testing.assert_array_equal(r['targets'][:, :14], r['inputs'][:, 1:15])
  assert np.all(r['inputs'][:, 15:] == tok.pad_id)
  merged = x.train_arrays(data.train)
  assert merged['inputs'].shape[0] == data.train_size + x.n_included


def test_sampler_keeps_the_real_rate_with_and_without_a_schedule():
  s = blackbox.CanarySampler(100, 50, 10.0, 64, np.random.SeedSequence(0))
  assert s.q == pytest.approx(0.1) and s.dataset_size == 150
  sizes = [s.draw()[1].sum() for _ in range(400)]
  assert np.mean(sizes) == pytest.approx(15.0, rel=0.1)
  sizes = [s.draw(20.0)[1].sum() for _ in range(400)]  # q_t = 20 / 100
  assert np.mean(sizes) == pytest.approx(30.0, rel=0.1)


@pytest.mark.parametrize('field,value', [
    ('canaries', 1), ('canaries', 10.0), ('canary_tokens', 1),
    ('canary_tokens', 34), ('alpha', 0.0), ('alpha', 1.0),
    ('enabled', 'yes'), ('export_with_canaries', 1)])
def test_bad_audit_fields_name_the_field(field, value):
  c = _config()
  c.audit = ml_collections.ConfigDict(dict(c.audit.to_dict(), **{field: value}))
  with pytest.raises(configuration.ConfigError, match=f'audit.{field}'):
    configuration.validate(c)


def test_audit_refused_where_canaries_do_not_fit():
  c = _config()
  c.model.update(family='bert', init='hf', path='/nowhere')
  c.data.task = 'genre'
  with pytest.raises(configuration.ConfigError, match='audit.enabled.*genre'):
    configuration.validate(c)
  c = _config()
  c.dp.sampling = 'shuffle'
  c.train.max_batch_size = 32
  with pytest.raises(configuration.ConfigError, match='audit.enabled.*poisson'):
    configuration.validate(c)
  c = _config()
  c.data.update(corpus='files', path='x.jsonl', user_field='user')
  with pytest.raises(configuration.ConfigError, match='audit.enabled.*user'):
    configuration.validate(c)
  c = _config(canary_tokens=500, canaries=1)  # ignored while disabled
  c.audit.enabled = False
  configuration.validate(c)


def _run(tmp_path, monkeypatch, config):
  exports, draws = [], []
  monkeypatch.setattr(model_setup, 'export',
                      lambda *a, **k: exports.append(a))
  orig = sampling.PoissonSampler.draw

  def draw(self, *a, **k):
    idx, mask = orig(self, *a, **k)
    draws.append(idx[mask])
    return idx, mask
  monkeypatch.setattr(sampling.PoissonSampler, 'draw', draw)
  work = str(tmp_path / 'run')
  out = train.train_and_evaluate(config, work)
  with open(os.path.join(work, 'privacy_report.json')) as f:
    report = json.load(f)
  text = open(os.path.join(work, 'privacy_report.txt')).read()
  return work, out, report, text, exports, np.concatenate(draws)


def _check_ledger(out, report, drawn, n_included):
  # N and q are the real data's; the batches held canaries (index >= N).
  assert out['ledger'].dataset_size == N_REAL
  assert out['plan'].q == pytest.approx(32 / N_REAL)
  assert report['mechanism']['dataset_size'] == N_REAL
  assert report['mechanism']['sampling_rate_q'] == pytest.approx(0.5)
  assert drawn.max() >= N_REAL and drawn.max() < N_REAL + n_included
  assert f'N = {N_REAL}' in report['audit']['ledger']


def test_nonprivate_run_memorises_and_exports_when_asked(tmp_path,
                                                          monkeypatch):
  c = _config(export_with_canaries=True)
  c.dp.enabled = False
  c.train.steps = 12
  c.train.learning_rate = 2e-2
  c.export.formats = ('hf',)
  _, out, report, text, exports, drawn = _run(tmp_path, monkeypatch, c)
  a = report['audit']
  assert a['num_canaries'] == 64 and a['num_included'] == out['audit'].n_included
  assert a['epsilon_lb'] > 0.5, a
  assert a['epsilon_lb'] <= a['epsilon_lb_ceiling'] + 1e-9
  assert math.isinf(a['claimed_epsilon']) and 'non-private' in (
      a['interpretation'])
  assert len(exports) == 1 and 'WITH the canaries' in a['export']
  _check_ledger(out, report, drawn, a['num_included'])
  assert 'Empirical audit' in text and 'eps_lb =' in text


def test_private_run_stays_below_its_claim_and_is_not_exported(
    tmp_path, monkeypatch, capsys):
  c = _config()
  c.train.steps = 3
  c.dp.target_epsilon = 0.5
  c.export.formats = ('hf', 'gguf')
  work, out, report, text, exports, drawn = _run(tmp_path, monkeypatch, c)
  a = report['audit']
  pld = {r['accountant']: r for r in report['privacy']['rows']}['pld']
  assert a['claimed_epsilon'] == pld['epsilon'] <= 0.5
  assert a['claimed_epsilon_accountant'] == 'pld'
  assert 0 <= a['epsilon_lb'] <= a['claimed_epsilon']
  assert a['delta'] == c.dp.delta and a['confidence'] == pytest.approx(0.95)
  assert a['interpretation'].startswith('consistent')
  assert exports == [] and a['export'] == blackbox.NOT_EXPORTED
  assert blackbox.NOT_EXPORTED in capsys.readouterr().out
  assert blackbox.NOT_EXPORTED in text
  assert not os.path.exists(os.path.join(work, 'export'))
  assert os.listdir(os.path.join(work, 'checkpoints'))
  _check_ledger(out, report, drawn, a['num_included'])
  # Nothing per canary is written: no scores, tokens or coins.
  assert not {'scores', 'included', 'canaries'} & set(a)


def test_finished_run_without_its_secret_state_reports_no_bound(tmp_path):
  # Re-run after the secret state was deleted: the canaries it trained on
  # cannot be regenerated, so the audit says so instead of scoring others.
  c = _config()
  c.train.steps = 2
  work = str(tmp_path / 'run')
  first = train.train_and_evaluate(c, work)['report']['audit']
  assert first['status'] == 'computed'
  again = train.train_and_evaluate(c, work)['report']['audit']
  assert again['epsilon_lb'] is None and 'secret state' in again['status']
  assert again['num_canaries'] == 64


def test_report_section_only_with_an_audit_and_a_violation_is_named():
  from tests import test_reporting as tr  # pylint: disable=g-import-not-at-top
  assert tr._build()['audit'] is None
  assert 'Empirical audit' not in reporting.format_text(tr._build())
  fields = {'method': blackbox.METHOD, 'num_canaries': 100,
            'num_included': 50, 'canary_tokens': 16, 'alpha': 0.05,
            'confidence': 0.95, 'delta': 1e-5, 'ledger': 'N = 2000',
            'export': blackbox.NOT_EXPORTED, 'epsilon_lb': 50.0,
            'num_guesses': 10, 'num_correct': 10, 'epsilon_lb_ceiling': 1.2}
  rep = tr._build(audit=fields)
  claimed = min(r['epsilon'] for r in rep['privacy']['rows']
                if r['kind'] == 'upper bound')
  assert rep['audit']['claimed_epsilon'] == claimed
  assert rep['audit']['interpretation'].startswith('VIOLATION')
  text = reporting.format_text(rep)
  assert 'eps_lb = 50' in text and 'VIOLATION' in text
  assert json.loads(json.dumps(rep, default=str))['audit']['epsilon_lb'] == 50
