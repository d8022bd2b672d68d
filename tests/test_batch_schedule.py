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


def _trainer_draws(steps=3000, seed=20261):
  """Sampler, plan and ledger built and driven as `dpjax.train` does.

  `configs/debug.py` with `train.batch_schedule='linear_ramp'`; the plan from
  `privacy_plan.plan_privacy`, the sampler from `train.make_sampler`, and per
  step the trainer loop's own two calls: `train.draw_batch(sampler, plan,
  step)` and `plan.record_step(ledger, step)` (the ledger from
  `plan.new_ledger`).
  Returns (plan, ledger, per-step realised sizes, per-record counts, number
  of steps in which both records 0 and 1 were drawn).
  """
  from configs import debug  # pylint: disable=g-import-not-at-top
  from dpjax import configuration  # pylint: disable=g-import-not-at-top
  from dpjax import privacy_plan  # pylint: disable=g-import-not-at-top
  from dpjax import train  # pylint: disable=g-import-not-at-top
  config = debug.get_config()
  config.train.update(steps=steps, batch_size=48, max_batch_size=96,
                      batch_schedule='linear_ramp', batch_schedule_start=8.0,
                      batch_schedule_ramp_steps=steps // 2)
  config.dp.update(noise_multiplier=1.0)  # no calibration needed here
  configuration.validate(config)
  n = 512
  plan = privacy_plan.plan_privacy(config, n)
  sampler = train.make_sampler(config, plan, np.random.SeedSequence(seed))
  ledger = plan.new_ledger('record')
  sizes = np.zeros(steps, np.int64)
  counts = np.zeros(n, np.int64)
  both = 0
  for step in range(1, steps + 1):
    idx, mask = train.draw_batch(sampler, plan, step)
    plan.record_step(ledger, step)
    drawn = idx[mask]
    assert len(np.unique(drawn)) == drawn.size  # without replacement
    sizes[step - 1] = drawn.size
    np.add.at(counts, drawn, 1)
    both += int(0 in drawn and 1 in drawn)
  return plan, ledger, sizes, counts, both


def test_sampler_realised_rate_matches_the_ledger_q_t():
  """Per step t, |batch| ~ Binomial(N, q_t) with q_t read from the LEDGER.

  3000 steps, E|batch| from 8 to 48 (sum ~ 1.1e5): a 5% rate error is ~16
  standard errors of the total, and ~5 in each of 10 blocks of steps.
  """
  steps = 3000
  plan, ledger, sizes, counts, both = _trainer_draws(steps)
  del counts, both
  assert plan.batch_schedule is not None and ledger.steps == steps
  q = np.concatenate([[p.q] * p.count for p in ledger.phases])
  assert q.size == steps and q[0] < 0.2 * q[-1]  # a real ramp
  n = plan.dataset_size
  mean, var = n * q, n * q * (1 - q)
  # Whole run, then 10 blocks (Bonferroni over 11 z-scores at ~1e-4 each).
  assert abs((sizes.sum() - mean.sum()) / math.sqrt(var.sum())) < 4.0
  for block in np.array_split(np.arange(steps), 10):
    z = (sizes[block].sum() - mean[block].sum()) / math.sqrt(var[block].sum())
    assert abs(z) < 4.0, block[0]
  # Per-step chi-square (catches a wrong spread as well as a wrong mean).
  chi2 = float(np.sum((sizes - mean) ** 2 / var))
  from scipy import stats  # pylint: disable=g-import-not-at-top
  assert 1e-4 < stats.chi2.sf(chi2, steps) < 1 - 1e-4


def test_sampler_membership_is_independent_per_record_at_rate_q_t():
  """Record i is drawn in step t with probability q_t, independently: each
  record's count ~ Poisson-binomial(sum_t q_t), and two records are drawn
  together sum_t q_t^2 times in expectation."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  plan, ledger, sizes, counts, both = _trainer_draws(3000)
  del plan, sizes
  q = np.concatenate([[p.q] * p.count for p in ledger.phases])
  mean, var = q.sum(), (q * (1 - q)).sum()
  z = (counts - mean) / math.sqrt(var)
  assert np.max(np.abs(z)) < 4.5  # Bonferroni over 512 records
  assert 1e-4 < stats.chi2.sf(float(np.sum(z ** 2)), counts.size) < 1 - 1e-4
  pair_mean, pair_var = (q ** 2).sum(), (q ** 2 * (1 - q ** 2)).sum()
  assert abs(both - pair_mean) < 4.5 * math.sqrt(pair_var)


def test_trainer_draws_each_step_at_exactly_the_rate_it_records():
  """Deterministic link: `train.draw_batch` asks the sampler for B_t and
  `plan.record_step` records q_t = B_t / N for the same step t (an off-by-one
  between them is too small for the statistical tests above)."""
  from configs import debug  # pylint: disable=g-import-not-at-top
  from dpjax import privacy_plan  # pylint: disable=g-import-not-at-top
  from dpjax import train  # pylint: disable=g-import-not-at-top
  config = debug.get_config()
  config.train.update(steps=40, batch_size=48, max_batch_size=96,
                      batch_schedule='linear_ramp', batch_schedule_start=8.0,
                      batch_schedule_ramp_steps=30)
  config.dp.update(noise_multiplier=1.0)
  n = 512
  plan = privacy_plan.plan_privacy(config, n)

  class Spy:
    asked = []

    def draw(self, expected=None):
      self.asked.append(expected)
      return np.zeros(96, np.int64), np.zeros(96, bool)

  spy, ledger = Spy(), plan.new_ledger('record')
  for step in range(1, 41):
    train.draw_batch(spy, plan, step)
    plan.record_step(ledger, step)
  recorded = [p.q for p in ledger.phases for _ in range(p.count)]
  np.testing.assert_allclose(np.asarray(spy.asked) / n, recorded, rtol=1e-12)
  assert len(set(spy.asked)) > 20  # the ramp really varies
