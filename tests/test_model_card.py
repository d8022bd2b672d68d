"""Tests for dpjax.model_card: exported models carry the run's guarantee."""

import hashlib
import math
import re
import types

import pytest
import yaml

from configs import debug
from dpjax import model_card
from dpjax import model_setup
from dpjax import reporting
from dpjax.accounting.ledger import PrivacyLedger
from dpjax.models import gguf_io
from tests.test_reporting import _plan  # the same plan as the report tests

N = 2000
UNIT = 'one packed sequence of 16 tokens of Shakespeare'
OS_ENTROPY = {'source': 'os_entropy', 'insecure_fixed_randomness_seed': None,
              'secret_state': 'deleted when the run completed'}
FINAL = {'eval_loss': 4.1, 'eval_loss_ema': 4.0, 'eval_loss_initial': 4.5}


def _write_report(workdir, plan=None, **kw):
  ledger = PrivacyLedger(sampling='poisson', neighbouring='add_remove',
                         unit=UNIT, dataset_size=N, batch_size=40)
  ledger.record(40.0 / N, 1.1, 30)
  sampler = types.SimpleNamespace(max_batch_size=48)
  return reporting.write_report(str(workdir), plan or _plan(), ledger,
                                sampler, dict(FINAL), randomness=OS_ENTROPY,
                                **kw)


def _split(card):
  m = re.match(r'^---\n(.*?)\n---\n(.*)$', card, re.S)
  assert m, card[:200]
  return yaml.safe_load(m.group(1)), m.group(2)


def _info():
  return model_card.source_info(debug.get_config(), 'llama')


def _bound(report):
  return min(r['epsilon'] for r in report['privacy']['rows']
             if r['kind'] == 'upper bound')


def test_card_front_matter_parses_and_its_epsilon_is_the_reports(tmp_path):
  report = _write_report(tmp_path)
  card = model_card.render_card(model_card.load_facts(str(tmp_path)),
                                _info())
  meta, body = _split(card)
  assert meta['library_name'] == 'transformers'
  assert meta['pipeline_tag'] == 'text-generation'
  assert {'differential-privacy', 'dpjax'} <= set(meta['tags'])
  assert 'license' not in meta and 'base_model' not in meta  # random init
  dp = meta['differential_privacy']
  assert dp['epsilon'] == _bound(report)
  assert dp['delta'] == report['delta'] == 1e-5
  assert dp['accountant'] == 'pld' and dp['epsilon_kind'] == 'upper bound'
  assert dp['steps'] == 30 and dp['noise_multiplier'] == 1.1
  raw = (tmp_path / 'privacy_report.json').read_bytes()
  assert dp['report_sha256'] == hashlib.sha256(raw).hexdigest()
  assert dp['report_sha256'] in body
  shown = float(re.search(r'\(ε = ([0-9.]+), δ = 1e-05\)-DP: an upper bound '
                          r'by the pld accountant', body).group(1))
  assert 0 <= shown - _bound(report) < 1e-4  # rounded up: still a bound
  for text in ('## Differential privacy', UNIT, 'add or remove one unit',
               'poisson, rate q = 0.02', '| Steps | 30 |',
               '| Noise multiplier σ | 1.1 ', '| Clip norm C | 1 ',
               '4.5 → 4 nats/token', 'edgeworth', 'estimate',
               "Shakespeare's plays"):
    assert text in body, text
  assert 'NOT' not in body.split('## Differential privacy')[0]


def test_not_private_run_says_so_first(tmp_path):
  _write_report(tmp_path, _plan(enabled=False))
  facts = model_card.load_facts(str(tmp_path))
  meta, body = _split(model_card.render_card(facts, _info()))
  assert 'differential-privacy' not in meta['tags']
  assert 'not-differentially-private' in meta['tags']
  assert meta['differential_privacy']['private'] is False
  assert meta['differential_privacy']['epsilon'] == math.inf
  intro = body.split('## Differential privacy')[0]
  assert intro.lstrip().startswith(
      '# llama-random-init fine-tune (not differentially private)\n\n'
      '**This model is NOT differentially private.**')
  assert 'Noise multiplier' not in body
  assert model_card.gguf_description(facts, _info()).count(
      'NOT differentially private') == 1


def test_insecure_fixed_seed_is_the_first_thing_said(tmp_path):
  fixed = {'source': 'insecure_fixed_seed',
           'insecure_fixed_randomness_seed': 17, 'secret_state': 'kept'}
  ledger = PrivacyLedger(sampling='poisson', neighbouring='add_remove',
                         unit=UNIT, dataset_size=N, batch_size=40)
  ledger.record(40.0 / N, 1.1, 30)
  reporting.write_report(str(tmp_path), _plan(), ledger,
                         types.SimpleNamespace(max_batch_size=48),
                         dict(FINAL), randomness=fixed)
  facts = model_card.load_facts(str(tmp_path))
  _, body = _split(model_card.render_card(facts, _info()))
  first = body.strip().split('\n\n')[1]
  assert first.startswith('**WARNING: ') and '17' in first
  assert model_card.gguf_metadata(facts)['dpjax.insecure_fixed_randomness']
  assert 'WARNING' in model_card.gguf_description(facts, _info())


def test_formally_not_private_mode_says_so_first(tmp_path):
  warning = 'NOT DIFFERENTIALLY PRIVATE AS CONFIGURED: paper-faithful mode'
  _write_report(tmp_path, mechanism_notes={'formally_private': False,
                                           'warning': warning})
  facts = model_card.load_facts(str(tmp_path))
  meta, body = _split(model_card.render_card(facts, _info()))
  assert 'differential-privacy' not in meta['tags']
  assert meta['differential_privacy']['formally_private'] is False
  assert warning in body.split('## Differential privacy')[0]
  assert model_card.gguf_metadata(facts)['dpjax.formally_private'] is False


def test_missing_report_gives_no_numbers(tmp_path):
  facts = model_card.load_facts(str(tmp_path))
  card = model_card.render_card(facts, _info())
  meta, body = _split(card)
  assert meta['differential_privacy'] == {'report_found': False}
  assert 'differential-privacy' not in meta['tags']
  assert 'No privacy report was found' in body
  assert body.lstrip().startswith('# llama-random-init fine-tune\n')
  assert 'ε =' not in body and 'Steps' not in body and '→' not in body
  assert model_card.gguf_metadata(facts) == {
      'dpjax.report': 'privacy_report.json not found',
      'dpjax.report_found': False}
  assert 'No privacy report' in model_card.gguf_description(facts, _info())


def test_export_writes_card_and_gguf_metadata_that_round_trip(tmp_path):
  report = _write_report(tmp_path)
  config = debug.get_config()
  config.export.formats = ('hf', 'gguf')
  model = model_setup.create(config)
  model_setup.export(config, model, model.trainable, model.frozen,
                     str(tmp_path))
  card = (tmp_path / 'export' / 'hf' / 'README.md').read_text()
  meta, _ = _split(card)
  assert meta['differential_privacy']['epsilon'] == _bound(report)
  got = gguf_io.read_metadata(str(tmp_path / 'export' / 'model.gguf'))
  want = model_card.gguf_metadata(model_card.load_facts(str(tmp_path)))
  assert {k: v for k, v in got.items() if k.startswith('dpjax.')} == want
  assert got['dpjax.epsilon'] == _bound(report)
  assert got['dpjax.steps'] == 30 and got['dpjax.unit'] == UNIT
  assert got['dpjax.report_sha256'] == meta['differential_privacy'][
      'report_sha256']
  desc = got['general.description']
  assert '\n' not in desc and 'epsilon = ' in desc and 'pld' in desc
  assert 'differential-privacy' in got['general.tags']
  # The same model exported without a report: no numbers anywhere.
  bare = tmp_path / 'bare'
  model_setup.export(config, model, model.trainable, model.frozen, str(bare))
  got = gguf_io.read_metadata(str(bare / 'export' / 'model.gguf'), 'dpjax.')
  assert got == {'dpjax.report': 'privacy_report.json not found',
                 'dpjax.report_found': False}
  assert 'No privacy report' in (bare / 'export' / 'hf' / 'README.md'
                                 ).read_text()


def test_gguf_metadata_rejects_reserved_keys_and_bad_values(tmp_path):
  from dpjax.models import llama  # pylint: disable=g-import-not-at-top
  config = llama.LlamaConfig(vocab_size=8, hidden_size=8,
                             intermediate_size=8, num_layers=1, num_heads=1,
                             num_kv_heads=1)
  for bad in ({'general.epsilon': 1.0}, {'epsilon': 1.0},
              {'dpjax.x': [1, 2]}):
    with pytest.raises(ValueError, match='metadata'):
      gguf_io.save_gguf(str(tmp_path / 'x.gguf'), 'llama', config, {},
                        metadata=bad)


def test_yaml_numbers_read_back_as_floats():
  for x in (1e-5, 1e-300, 2.5e20, 8.0, 7.999882094546994, math.inf):
    assert yaml.safe_load(model_card._yaml_number(x)) == x
