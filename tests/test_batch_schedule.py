"""Batch-size schedules and their variable-q accounting."""

import math

import numpy as np
import pytest
from scipy import special

from dpjax import batch_schedule
from dpjax.accounting import Phase, PrivacyLedger, get_accountant

ORDERS = tuple(range(2, 65))


def _rdp_step_integer_order(q, sigma, alpha):
  """Independent reference: log A_alpha / (alpha - 1), integer alpha (§1.2)."""
  k = np.arange(alpha + 1)
  log_terms = (special.gammaln(alpha + 1) - special.gammaln(k + 1)
               - special.gammaln(alpha - k + 1) + (alpha - k) * np.log1p(-q)
               + k * np.log(q) + (k * k - k) / (2 * sigma ** 2))
  return special.logsumexp(log_terms) / (alpha - 1)


def _hand_epsilon(rates, sigma, delta):
  """Sum RDP over the steps, then the improved conversion (§1.3)."""
  total = np.zeros(len(ORDERS))
  for q in rates:
    total += [_rdp_step_integer_order(q, sigma, a) for a in ORDERS]
  a = np.asarray(ORDERS, np.float64)
  eps = total + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)
  return float(np.min(eps))


def test_linear_ramp_and_epoch_schedule_values():
  np.testing.assert_allclose(
      batch_schedule.linear_ramp(start=10, end=50, steps=7, ramp_steps=5),
      [10, 20, 30, 40, 50, 50, 50])
  np.testing.assert_allclose(
      batch_schedule.epoch_schedule(dataset_size=10, batch_size=4, steps=7),
      [4, 4, 2, 4, 4, 2, 4])
  np.testing.assert_allclose(
      batch_schedule.epoch_schedule(dataset_size=8, batch_size=4, steps=3),
      [4, 4, 4])
  np.testing.assert_allclose(batch_schedule.sampling_rates([5, 10], 100),
                             [0.05, 0.1])
  with pytest.raises(ValueError, match='dataset_size'):
    batch_schedule.sampling_rates([5, 200], 100)
  with pytest.raises(ValueError, match='ramp_steps'):
    batch_schedule.linear_ramp(start=1, end=2, steps=3, ramp_steps=4)


@pytest.mark.parametrize('kind', ['ramp', 'epoch'])
def test_variable_q_ledger_equals_direct_composition(kind):
  n, sigma, delta = 1000, 1.1, 1e-5
  if kind == 'ramp':
    sizes = batch_schedule.linear_ramp(start=10, end=60, steps=12,
                                       ramp_steps=6)
  else:
    sizes = batch_schedule.epoch_schedule(dataset_size=n, batch_size=300,
                                          steps=12)   # 300, 300, 300, 100, ...
  rates = batch_schedule.sampling_rates(sizes, n)
  ledger = batch_schedule.record_schedule(PrivacyLedger(), rates, sigma)
  assert ledger.steps == 12
  assert len(ledger.phases) < 12        # compressed where q repeats
  per_step = [Phase(float(q), sigma, 1) for q in rates]
  rdp = get_accountant('rdp', orders=ORDERS)
  eps_ledger = rdp.epsilon(ledger.accountable_phases(), delta)
  np.testing.assert_allclose(eps_ledger, rdp.epsilon(per_step, delta),
                             rtol=1e-12)
  # And against the per-step RDP sum computed by hand (independent code).
  np.testing.assert_allclose(eps_ledger, _hand_epsilon(rates, sigma, delta),
                             rtol=1e-9)
  pld = get_accountant('pld', value_discretization_interval=1e-3)
  np.testing.assert_allclose(pld.epsilon(ledger.accountable_phases(), delta),
                             pld.epsilon(per_step, delta), rtol=1e-9)
  # Variable q differs from charging the largest q at every step.
  assert eps_ledger < rdp.epsilon([Phase(float(max(rates)), sigma, 12)],
                                  delta)


def test_calibrate_sigma_for_schedule_is_verified_and_tight():
  rates = batch_schedule.sampling_rates(
      batch_schedule.linear_ramp(start=20, end=80, steps=30, ramp_steps=4),
      2000)
  rdp = get_accountant('rdp', orders=ORDERS)
  sigma = batch_schedule.calibrate_sigma_for_schedule(
      rdp, target_epsilon=2.0, delta=1e-5, rates=rates, rtol=1e-3)
  phases = batch_schedule.phases(rates, sigma)
  assert rdp.epsilon(phases, 1e-5) <= 2.0
  assert rdp.epsilon(batch_schedule.phases(rates, sigma * 0.995), 1e-5) > 2.0
