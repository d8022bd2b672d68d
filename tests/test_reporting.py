"""Tests for dpjax.reporting: the end-of-run privacy report."""

import json
import math
import types

import pytest
from scipy import stats

from configs import default
from dpjax import configuration
from dpjax import reporting
from dpjax.accounting import get_accountant
from dpjax.accounting import report as acc_report
from dpjax.accounting.ledger import PrivacyLedger

N = 2000


def _plan(**overrides):
  fields = dict(
      enabled=True, sampling='poisson', neighbouring='add_remove',
      dataset_size=N, expected_batch_size=40.0, q=40.0 / N,
      noise_multiplier=1.1, l2_clip_norm=1.0, clip_norm=1.0, delta=1e-5,
      accountant='pld', calibrated_for_epsilon=None, batch_schedule=None,
      mechanism='gaussian', clip_norm_ord=2)
  fields.update(overrides)
  return types.SimpleNamespace(**fields)


def _ledger(steps=30):
  ledger = PrivacyLedger(sampling='poisson', neighbouring='add_remove',
                         unit='one packed sequence of 16 tokens',
                         dataset_size=N, batch_size=40)
  ledger.record(40.0 / N, 1.1, steps)
  return ledger


class _Sampler:
  """The public part of a PoissonSampler, plus a secret overflow count."""
  max_batch_size = 48
  overflows = 3


OS_ENTROPY = {'source': 'os_entropy', 'insecure_fixed_randomness_seed': None,
              'secret_state': 'deleted when the run completed'}
FIXED = {'source': 'insecure_fixed_seed', 'insecure_fixed_randomness_seed': 17,
         'secret_state': 'kept in workdir/secret/ (owner-only); delete it '
                         'before sharing the workdir'}


def _build(plan=None, final=None, **kw):
  return reporting.build_report(plan or _plan(), _ledger(), _Sampler(),
                                final or {'eval_loss': 4.2}, **kw)


def test_insecure_seed_is_said_in_the_first_lines_and_a_top_level_field(
    tmp_path):
  rep = reporting.write_report(str(tmp_path), _plan(), _ledger(), _Sampler(),
                               {'eval_loss': 4.2}, randomness=FIXED)
  text = (tmp_path / 'privacy_report.txt').read_text()
  first = text.splitlines()[0]
  assert 'dp.insecure_fixed_randomness_seed=17' in first
  assert 'only against parties who do not know that seed' in first.lower()
  on_disk = json.loads((tmp_path / 'privacy_report.json').read_text())
  assert on_disk['insecure_fixed_randomness']['seed'] == 17
  assert 'do not know that seed' in (
      on_disk['insecure_fixed_randomness']['warning'])
  assert on_disk == json.loads(json.dumps(rep, default=reporting._default))
  assert 'secret state: kept in workdir/secret/' in text
  assert 'THIS RUN USES IT' in text


def test_os_entropy_report_has_no_insecure_banner():
  rep = _build(randomness=OS_ENTROPY)
  text = reporting.format_text(rep)
  assert rep['insecure_fixed_randomness'] is None
  assert text.splitlines()[0] == 'dpjax privacy report'
  assert 'INSECURE FIXED RANDOMNESS' not in text
  assert 'source: 256 bits of OS entropy' in text
  assert 'secret state: deleted when the run completed' in text


def test_bad_randomness_is_refused():
  with pytest.raises(ValueError, match='source'):
    _build(randomness={'source': 'config_seed'})
  with pytest.raises(ValueError, match='insecure_fixed_randomness_seed'):
    _build(randomness=dict(FIXED, insecure_fixed_randomness_seed=None))


def test_threat_model_in_text_and_json():
  rep = _build(randomness=OS_ENTROPY)
  tm = rep['threat_model']
  assert 'not the secret randomness' in tm['covers']
  assert 'knows the code, the config and all other' in tm['covers']
  gaps = '\n'.join(tm['does_not_cover'])
  for phrase in ('recompiles', 'Floating-point', 'workdir/secret/',
                 'epsilons compose', 'Held-out evaluation data is treated as '
                 'public', f'N = {N}', 'insecure fixed seed',
                 'Data-validation counts'):
    assert phrase in gaps, phrase
  # The padding channel is named only when that option is on.
  assert 'skip_padding_microbatches' not in gaps
  on = _build(randomness=OS_ENTROPY, skip_padding_microbatches=True)
  assert 'realised (secret) batch size' in '\n'.join(
      on['threat_model']['does_not_cover'])
  text = reporting.format_text(rep)
  assert 'Threat model:' in text and 'epsilon does NOT cover:' in text
  assert 'deleted when the run completed' in text.split('Threat model:')[1]


def test_non_private_threat_model_covers_nothing():
  rep = _build(plan=_plan(enabled=False))
  assert rep['threat_model']['covers'].startswith('Nothing')
  assert rep['privacy'] is None
  assert 'NON-PRIVATE RUN' in reporting.format_text(rep)


def test_overflow_draws_are_gone_and_the_public_probability_stays():
  rep = _build()
  blob = json.dumps(rep, default=reporting._default)
  assert 'poisson_overflow_draws' not in blob
  assert 'overflows' not in blob
  p = rep['mechanism']['poisson_overflow_probability_per_step']
  assert p == pytest.approx(stats.binom.sf(48, N, 40.0 / N))
  assert 0 < p < 0.2
  # A schedule: the probability at its largest q_t.
  ramp = _build(plan=_plan(batch_schedule=(10.0, 20.0, 45.0)))
  assert ramp['mechanism']['poisson_overflow_probability_per_step'] == (
      pytest.approx(stats.binom.sf(48, N, 45.0 / N)))
  assert 'poisson_overflow_probability' not in json.dumps(
      _build(plan=_plan(sampling='shuffle'))['mechanism'])


def test_dataset_size_is_said_to_be_public():
  rep = _build()
  note = [n for n in rep['notes'] if 'dataset size' in n]
  assert len(note) == 1 and f'N = {N}' in note[0]
  assert 'public' in note[0] and 'data.max_train_records' in note[0]


def test_canary_exposure_is_labelled_not_covered_by_epsilon():
  exposures = [{'repetitions': 1, 'exposure_bits': 3.4},
               {'repetitions': 100, 'exposure_bits': 19.9}]
  rep = _build(final={'eval_loss': 4.2, 'canary_exposure': exposures})
  assert rep['evaluation']['canary_exposure'] == exposures
  assert 'NOT covered by epsilon' in rep['evaluation']['canary_exposure_label']
  assert any('Canary exposure' in n and 'NOT covered by epsilon' in n
             for n in rep['notes'])
  text = reporting.format_text(rep)
  line = [l for l in text.splitlines()
          if l.strip().startswith('canary_exposure')]
  assert len(line) == 1 and 'empirical, NOT covered by epsilon' in line[0]
  assert 'canary_exposure_label' not in text
  assert "'exposure_bits': 19.9" in text  # bare items: printed as they are
  sampled = [{'repetitions': 100, 'exposure_bits': 19.93,
              'exposure_rank_bits': 10.97, 'sampled_ceiling_bits': 10.97,
              'sampled_rank': 1, 'sampled_candidates': 2001,
              'exposure_extrapolated_bits': 19.93, 'full_space_size': 10**6,
              'full_space_max_bits': 19.93,
              'exposure_extrapolated_lower95_bits': 9.38}]
  text = reporting.format_text(_build(final={'eval_loss': 4.2,
                                             'canary_exposure': sampled}))
  assert ('x100: 10.97 of 10.97 bits measured (rank 1 among 2001 scored '
          'texts); extrapolated to |R| = 1000000: 19.93 of 19.93 bits (95% '
          'lower bound 9.38)') in text
  # No canaries, no label.
  assert 'canary_exposure_label' not in _build()['evaluation']


def test_estimate_only_report_is_refused_naming_the_field():
  with pytest.raises(configuration.ConfigError,
                     match='dp.report_accountants') as e:
    _build(accountants=('edgeworth',))
  assert e.value.field == 'dp.report_accountants'
  # With a bound beside it the estimate is reported, the bound next to it.
  rep = _build(accountants=('edgeworth', 'pld'))
  rows = {r['accountant']: r for r in rep['privacy']['rows']}
  assert rows['edgeworth']['kind'] == 'estimate'
  assert rows['edgeworth']['details']['upper_bound_beside']['pld'] == (
      rows['pld']['epsilon'])


def test_config_refuses_estimate_only_report_accountants():
  config = default.get_config()
  config.dp.report_accountants = ('edgeworth',)
  with pytest.raises(configuration.ConfigError,
                     match='dp.report_accountants'):
    configuration.validate(config)
  config.dp.report_accountants = ('edgeworth', 'rdp')
  configuration.validate(config)
  config.dp.report_accountants = ('edgeworth',)
  config.dp.enabled = False  # no report rows at all: nothing to refuse
  configuration.validate(config)


def test_an_upper_bound_accountant_object_satisfies_the_report():
  """LMO runs pass an accountant object; its is_upper_bound is honoured."""

  class Bound:
    name = 'custom_bound'
    is_upper_bound = True

    def epsilon(self, phases, delta, neighbouring='add_remove'):
      return 2.0 * get_accountant('pld').epsilon(phases, delta, neighbouring)

    def describe(self):
      return {}

  class Estimate(Bound):
    name = 'custom_estimate'
    is_upper_bound = False

  rep = _build(accountants=(Bound(), 'edgeworth'))
  assert [r['kind'] for r in rep['privacy']['rows']] == ['upper bound',
                                                         'estimate']
  with pytest.raises(configuration.ConfigError):
    _build(accountants=(Estimate(), 'edgeworth'))


def test_percentile_clipping_report_says_not_private_and_raw_norms():
  notes = {'formally_private': False,
           'adaptive_clipping': 'percentile of raw per-example norms (Yang '
                                '2025, paper-faithful): NOT differentially '
                                'private',
           'warning': 'NOT DIFFERENTIALLY PRIVATE: the clip norm follows raw '
                      'per-example gradient norms'}
  rep = _build(mechanism_notes=notes, randomness=OS_ENTROPY)
  text = reporting.format_text(rep)
  assert rep['formally_private'] is False
  assert text.splitlines()[2].startswith('*** NOT DIFFERENTIALLY PRIVATE')
  raw = [n for n in rep['notes'] if 'raw' in n and 'clip_norm' in n]
  assert len(raw) == 1 and 'NOT privatized' in raw[0]
  assert 'privatized' not in text.replace('NOT privatized', '')


def test_privacy_rows_match_the_accountants():
  rep = _build(accountants=('pld', 'rdp'))
  phases = _ledger().accountable_phases()
  rows = {r['accountant']: r['epsilon'] for r in rep['privacy']['rows']}
  assert rows['pld'] == pytest.approx(
      get_accountant('pld').epsilon(phases, 1e-5))
  assert math.isfinite(rows['rdp']) and rows['rdp'] > rows['pld']
  assert acc_report.is_guarantee_row(rep['privacy']['rows'][0])


def test_every_delta_the_report_states_is_the_plans():
  """The top-level delta, each row's delta and the text all give the plan's
  delta (at which the rows' epsilons were computed)."""
  rep = _build(plan=_plan(delta=3e-7), accountants=('pld', 'rdp'))
  assert rep['delta'] == rep['privacy']['delta'] == 3e-7
  for row in rep['privacy']['rows']:
    assert row['delta'] == 3e-7
  phases = _ledger().accountable_phases()
  rows = {r['accountant']: r['epsilon'] for r in rep['privacy']['rows']}
  assert rows['pld'] == pytest.approx(
      get_accountant('pld').epsilon(phases, 3e-7))
