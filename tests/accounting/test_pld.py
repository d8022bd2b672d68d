"""Tests for dpjax.accounting.pld against dp_accounting, prv_accountant and
closed forms."""

import math
import time

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
import numpy as np
import prv_accountant
from prv_accountant import privacy_random_variables as prvs
import pytest
from scipy import optimize
from scipy import stats

from dpjax.accounting import get_accountant
from dpjax.accounting import pld
from dpjax.accounting.ledger import Phase

NR = dp_accounting.NeighboringRelation


def _dp_event(q, sigma):
  g = dp_accounting.GaussianDpEvent(sigma)
  return g if q == 1.0 else dp_accounting.PoissonSampledDpEvent(q, g)


def _ref_accountant(phases, relation=NR.ADD_OR_REMOVE_ONE, h=1e-4):
  acc = pld_privacy_accountant.PLDAccountant(
      relation, value_discretization_interval=h)
  for p in phases:
    acc.compose(_dp_event(p.q, p.sigma), p.count)
  return acc


def _analytic_delta(mu, eps):
  return (stats.norm.cdf(-eps / mu + mu / 2) -
          math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2))


@pytest.mark.parametrize('q,sigma,steps,delta,expected,tol', [
    (0.1, 3.0, 512, 1e-6, 3.76969, 1e-5),          # jax_privacy doctest
    (1024 / 50000, 4.0, 10000, 1e-5, 2.092456, 1e-6),  # old jax_privacy
    (0.04, 1.5, 2250, 1e-5, 6.76879, 1e-5),        # Opacus PRV test case
    (0.005, 0.8, 1000, 1e-6, 2.00411, 1e-5),       # prv_accountant README
    (0.01, 1.0, 1000, 1e-5, 1.8282, 1e-4),         # ANCHORS 4.1
    (0.01, 1.0, 10000, 1e-5, 6.1877, 1e-4),
])
def test_published_epsilons(q, sigma, steps, delta, expected, tol):
  eps = get_accountant('pld').epsilon([Phase(q, sigma, steps)], delta)
  assert eps == pytest.approx(expected, abs=tol)


def test_published_deltas():
  acc = get_accountant('pld')
  # Gaussian sigma = sqrt(3) composed 3 times == sigma 1 once.
  d = acc.delta([Phase(1.0, math.sqrt(3), 3)], 1.0)
  assert d == pytest.approx(0.126936, abs=2e-6)
  assert d >= _analytic_delta(1.0, 1.0)
  assert acc.delta([Phase(0.2, 0.5, 3)], 1.0) == pytest.approx(0.15594,
                                                                abs=2e-5)


def test_random_cases_against_dp_accounting(rng_cases):
  # Same discretization on both sides (1e-3 keeps dp_accounting fast; no
  # refinement of small epsilons on ours).
  acc = get_accountant('pld', value_discretization_interval=1e-3,
                       min_interval=1e-3)
  for q, sigma in rng_cases[:10]:
    phases = [Phase(q, sigma, 200)]
    ref = _ref_accountant(phases, h=1e-3)
    for delta in (1e-5, 1e-8):
      e, e_ref = acc.epsilon(phases, delta), ref.get_epsilon(delta)
      assert e == pytest.approx(e_ref, rel=5e-3, abs=1e-4), (q, sigma, delta)
    e_ref = ref.get_epsilon(1e-5)
    assert acc.delta(phases, e_ref) == pytest.approx(
        ref.get_delta(e_ref), rel=5e-3, abs=1e-12)


def test_replace_one_against_dp_accounting(rng_cases):
  acc = get_accountant('pld', value_discretization_interval=1e-3,
                       min_interval=1e-3)
  for q, sigma in rng_cases[:4] + [(1.0, 3.0)]:
    phases = [Phase(q, sigma, 100)]
    ref = _ref_accountant(phases, NR.REPLACE_ONE, h=1e-3)
    e = acc.epsilon(phases, 1e-6, neighbouring='replace_one')
    assert e == pytest.approx(ref.get_epsilon(1e-6), rel=5e-3, abs=1e-4)
    # Replace-one is never better than add/remove.
    assert e >= acc.epsilon(phases, 1e-6) - 1e-9


def test_heterogeneous_against_dp_accounting():
  phases = [Phase(0.01, 1.0, 300), Phase(0.05, 2.0, 100), Phase(0.02, 0.8, 50),
            Phase(1.0, 20.0, 3)]
  ref = _ref_accountant(phases, h=1e-3)
  acc = get_accountant('pld', value_discretization_interval=1e-3,
                       min_interval=1e-3)
  for delta in (1e-5, 1e-7):
    assert acc.epsilon(phases, delta) == pytest.approx(ref.get_epsilon(delta),
                                                       rel=5e-3)


def test_never_below_prv_lower_bound(rng_cases):
  acc = get_accountant('pld')
  for q, sigma in rng_cases[:8]:
    steps, delta = 300, 1e-5
    prv = prv_accountant.Accountant(noise_multiplier=sigma,
                                    sampling_probability=q, delta=delta,
                                    eps_error=0.05, max_compositions=steps)
    lower, _, upper = prv.compute_epsilon(num_compositions=steps)
    eps = acc.epsilon([Phase(q, sigma, steps)], delta)
    assert eps >= lower, (q, sigma)
    assert eps <= upper + 1e-3, (q, sigma)


def test_heterogeneous_never_below_prv_lower_bound():
  mech = [prvs.PoissonSubsampledGaussianMechanism(sampling_probability=0.02,
                                                   noise_multiplier=1.0),
          prvs.PoissonSubsampledGaussianMechanism(sampling_probability=0.05,
                                                   noise_multiplier=1.5)]
  prv = prv_accountant.PRVAccountant(prvs=mech, max_self_compositions=[500, 200],
                                     eps_error=0.05, delta_error=1e-9)
  lower, _, _ = prv.compute_epsilon(delta=1e-6, num_self_compositions=[500, 200])
  eps = get_accountant('pld').epsilon([Phase(0.02, 1.0, 500),
                                       Phase(0.05, 1.5, 200)], 1e-6)
  assert eps >= lower


def test_small_epsilon_refinement_stays_above_prv_lower_bound():
  q, sigma, steps, delta = 1e-3, 20.0, 2000, 1e-5
  prv = prv_accountant.Accountant(noise_multiplier=sigma,
                                  sampling_probability=q, delta=delta,
                                  eps_error=1e-3, max_compositions=steps)
  lower, _, upper = prv.compute_epsilon(num_compositions=steps)
  coarse = get_accountant('pld', min_interval=1e-4).epsilon(
      [Phase(q, sigma, steps)], delta)
  fine = get_accountant('pld').epsilon([Phase(q, sigma, steps)], delta)
  assert lower <= fine < coarse
  assert fine <= upper


@pytest.mark.parametrize('sigma,steps', [(1.0, 1), (3.0, 10), (10.0, 400)])
def test_brackets_analytic_gaussian(sigma, steps):
  acc = get_accountant('pld')
  mu = math.sqrt(steps) / sigma
  for eps in (0.0, 0.5, 2.0):
    exact = _analytic_delta(mu, eps)
    d = acc.delta([Phase(1.0, sigma, steps)], eps)
    assert exact - 1e-12 <= d <= exact * (1 + 1e-3) + 1e-12
  for delta in (1e-5, 1e-9):
    exact = optimize.brentq(lambda e: _analytic_delta(mu, e) - delta, 0, 100)
    e = acc.epsilon([Phase(1.0, sigma, steps)], delta)
    assert exact - 1e-9 <= e <= exact + 2e-3


def test_single_step_pmf_is_a_valid_dominating_pld():
  for direction in ('remove', 'add', 'replace'):
    p = pld.single_step_pmf(0.05, 1.2, direction, 1e-3)
    losses = (p.offset + np.arange(p.mass.size)) * p.h
    assert np.all(p.mass >= 0)
    assert p.mass.sum() + p.inf_mass == pytest.approx(1.0, abs=1e-9)
    # E_P[e^{-L}] <= 1 (the "Q" measure of the finite part).
    assert np.sum(p.mass * np.exp(-losses)) <= 1 + 1e-9


def test_edge_cases():
  acc = get_accountant('pld')
  assert acc.epsilon([Phase(0.1, 0.0, 10)], 1e-5) == math.inf
  assert acc.delta([Phase(0.1, 0.0, 10)], 1.0) == 1.0
  assert acc.epsilon([], 1e-5) == 0.0
  assert acc.epsilon([Phase(0.1, 1.0, 0)], 1e-5) == 0.0
  with pytest.raises(ValueError, match='delta'):
    acc.epsilon([Phase(0.1, 1.0, 10)], 1.5)
  with pytest.raises(ValueError, match='epsilon'):
    acc.delta([Phase(0.1, 1.0, 10)], -1.0)
  with pytest.raises(ValueError, match='neighbouring'):
    acc.epsilon([Phase(0.1, 1.0, 10)], 1e-5, neighbouring='x')
  with pytest.raises(ValueError, match='value_discretization_interval'):
    pld.PldAccountant(value_discretization_interval=0)
  d = acc.describe()
  assert d['value_discretization_interval'] == 1e-4 and acc.is_upper_bound


def test_fast_for_ten_thousand_steps():
  acc = get_accountant('pld')
  t = time.perf_counter()
  acc.epsilon([Phase(0.01, 1.0, 10000)], 1e-5)
  elapsed = time.perf_counter() - t
  # Target < 1 s; generous here because the test machine is shared.
  assert elapsed < 3.0
  # Per-log-step calls reuse the single-step PLDs.
  t = time.perf_counter()
  for steps in range(100, 2100, 400):
    acc.epsilon([Phase(0.01, 1.0, steps)], 1e-5)
  assert time.perf_counter() - t < 3.0


def test_many_distinct_steps_are_bucketed_pessimistically():
  # A ramp of 30 distinct rates (variable-q): merged into <= 20 buckets by
  # rounding q up (by < 7% here), which can only increase epsilon.
  phases = [Phase(q, 1.5, 5) for q in np.linspace(0.01, 0.03, 30)]
  exact = get_accountant('pld', max_distinct=100).epsilon(phases, 1e-6)
  bucketed_acc = get_accountant('pld', max_distinct=20)
  bucketed = bucketed_acc.epsilon(phases, 1e-6)
  assert exact <= bucketed <= exact * 1.07
  assert bucketed_acc.describe()['bucket_rtol'] > 0
  # Still never above the RDP bound here.
  assert bucketed <= get_accountant('rdp').epsilon(phases, 1e-6)
