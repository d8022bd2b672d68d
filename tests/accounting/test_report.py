"""Tests for dpjax.accounting.report."""

import math

import pytest

from dpjax.accounting import get_accountant
from dpjax.accounting import report as report_lib
from dpjax.accounting.ledger import Phase
from dpjax.accounting.ledger import PrivacyLedger


def _poisson_ledger():
  ledger = PrivacyLedger(sampling='poisson', neighbouring='add_remove',
                         unit='one packed sequence of 64 tokens',
                         dataset_size=50000, batch_size=500)
  ledger.record(0.01, 1.0, 300)
  ledger.record(0.02, 1.1, 100)
  return ledger


def test_poisson_report_rows():
  ledger = _poisson_ledger()
  rep = report_lib.privacy_report(ledger, 1e-5)
  assert [r['accountant'] for r in rep['rows']] == ['pld', 'rdp', 'edgeworth']
  kinds = {r['accountant']: r['kind'] for r in rep['rows']}
  assert kinds == {'pld': 'upper bound', 'rdp': 'upper bound',
                   'edgeworth': 'estimate'}
  for r in rep['rows']:
    assert set(r) >= {'accountant', 'epsilon', 'delta', 'kind', 'details'}
    assert r['delta'] == 1e-5
  eps = {r['accountant']: r['epsilon'] for r in rep['rows']}
  phases = ledger.accountable_phases()
  assert eps['pld'] == pytest.approx(
      get_accountant('pld').epsilon(phases, 1e-5))
  assert eps['pld'] < eps['rdp']
  ew = [r for r in rep['rows'] if r['accountant'] == 'edgeworth'][0]
  assert ew['details']['upper_bound_beside']['pld'] == eps['pld']
  assert rep['sampling'] == 'poisson' and rep['neighbouring'] == 'add_remove'
  assert rep['unit'].startswith('one packed') and rep['steps'] == 400
  assert len(rep['phases']) == 2
  text = report_lib.format_report(rep)
  for word in ('pld', 'rdp', 'edgeworth', 'upper bound', 'estimate',
               'add_remove', 'poisson', '400'):
    assert word in text
  assert any('not a bound' in n for n in rep['notes'])


def test_shuffle_report_labels_poisson_rows_not_a_guarantee():
  ledger = PrivacyLedger(sampling='shuffle', neighbouring='replace_one',
                         dataset_size=1000, batch_size=100)
  ledger.record(0.1, 2.0, 30)  # 3 epochs
  rep = report_lib.privacy_report(ledger, 1e-6, accountants=('pld', 'rdp'))
  guarantee = [r for r in rep['rows'] if r['basis'] == report_lib.GUARANTEE]
  other = [r for r in rep['rows'] if r['basis'] == report_lib.NOT_A_GUARANTEE]
  assert len(guarantee) == 2 and len(other) == 2
  # Guarantee: 3 full-batch Gaussians with replace-one sensitivity 2C.
  expected = get_accountant('pld').epsilon([Phase(1.0, 1.0, 3)], 1e-6)
  assert guarantee[0]['epsilon'] == pytest.approx(expected)
  assert other[0]['epsilon'] < guarantee[0]['epsilon']
  assert 'not a guarantee' in report_lib.format_report(rep)


def test_poisson_replace_one_and_extra_rows():
  ledger = PrivacyLedger(sampling='poisson', neighbouring='replace_one')
  ledger.record(0.01, 1.0, 100)
  extra = {'accountant': 'lmo (paper-faithful)', 'epsilon': 0.3,
           'delta': 1e-10, 'kind': 'not private (paper-faithful mode)'}
  rep = report_lib.privacy_report(ledger, 1e-6, extra_rows=[extra])
  by = {r['accountant']: r for r in rep['rows']}
  assert by['pld']['epsilon'] == pytest.approx(get_accountant('pld').epsilon(
      [Phase(0.01, 1.0, 100)], 1e-6, 'replace_one'))
  assert math.isnan(by['rdp']['epsilon'])  # not implemented, said so
  assert 'not_available' in by['rdp']['details']
  assert by['lmo (paper-faithful)']['kind'].startswith('not private')
  text = report_lib.format_report(rep)
  assert 'n/a' in text and 'lmo (paper-faithful)' in text


def test_bad_delta_and_empty_ledger():
  ledger = PrivacyLedger()
  with pytest.raises(ValueError, match='delta'):
    report_lib.privacy_report(ledger, 0.0)
  rep = report_lib.privacy_report(ledger, 1e-5)
  assert all(r['epsilon'] == 0.0 for r in rep['rows'])


def test_a_report_without_an_upper_bound_is_refused():
  ledger = _poisson_ledger()
  with pytest.raises(report_lib.NoUpperBoundError, match='upper bound'):
    report_lib.privacy_report(ledger, 1e-5, accountants=('edgeworth',))
  # An n/a bound is no bound: RDP has none under replace-one with q < 1.
  replace = PrivacyLedger(sampling='poisson', neighbouring='replace_one')
  replace.record(0.01, 1.0, 100)
  with pytest.raises(ValueError, match='no row is an upper bound'):
    report_lib.privacy_report(replace, 1e-6, accountants=('rdp', 'edgeworth'))
  # A caller's row of kind 'upper bound' supplies one.
  extra = {'accountant': 'external', 'epsilon': 5.0, 'delta': 1e-5,
           'kind': 'upper bound'}
  rep = report_lib.privacy_report(ledger, 1e-5, accountants=('edgeworth',),
                                  extra_rows=[extra])
  assert [r['kind'] for r in rep['rows']] == ['estimate', 'upper bound']


def test_shuffle_as_poisson_rows_are_not_the_bound_a_report_needs():
  ledger = PrivacyLedger(sampling='shuffle', neighbouring='replace_one',
                         dataset_size=1000, batch_size=100)
  ledger.record(0.1, 2.0, 30)
  rep = report_lib.privacy_report(ledger, 1e-6, accountants=('pld',))
  flags = [report_lib.is_guarantee_row(r) for r in rep['rows']]
  assert flags == [True, False]  # the as-if-Poisson row is no guarantee
