"""Tests for dpjax.accounting.rdp against published numbers and references."""

import math

import mpmath
import numpy as np
import pytest
from dp_accounting.rdp import rdp_privacy_accountant as dp_rdp

from dpjax.accounting import get_accountant
from dpjax.accounting import rdp
from dpjax.accounting.ledger import Phase

# private-transformers grid used for ALGORITHMS.md section 1.2.
PT_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 128))
OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
TF_ORDERS = ([1.25, 1.5, 1.75, 2., 2.25, 2.5, 3., 3.5, 4., 4.5] +
             list(range(5, 64)) + [128, 256, 512])


@pytest.mark.parametrize('q,sigma,steps,delta,improved,order,classic', [
    (0.01, 1.0, 1000, 1e-5, 2.1014, 7.8, 2.5380),
    (2000 / 67349, 0.8775, 660, 1e-5, 7.1672, 3.5, 7.9983),
    (0.03, 22.73, 192, 1e-10, 0.1578, 127, 0.2042),
])
def test_algorithms_table(q, sigma, steps, delta, improved, order, classic):
  acc = rdp.RdpAccountant(PT_ORDERS, 'improved')
  assert acc.epsilon([Phase(q, sigma, steps)], delta) == pytest.approx(
      improved, abs=5e-5)
  assert acc.last_order == pytest.approx(order)
  acc = rdp.RdpAccountant(PT_ORDERS, 'classic')
  assert acc.epsilon([Phase(q, sigma, steps)], delta) == pytest.approx(
      classic, abs=5e-5)


def test_single_step_values():
  r = rdp.compute_rdp(0.01, 1.0, [2, 8, 32])
  np.testing.assert_allclose(r, [1.718e-4, 8.936e-4, 11.25], rtol=1e-3)


def test_published_epsilons():
  # TF Privacy compute_dp_sgd_privacy_test (optimal order 19).
  acc = rdp.RdpAccountant(TF_ORDERS)
  assert acc.epsilon([Phase(150 / 60000, 1.3, 6000)], 1e-5) == pytest.approx(
      0.7242234026, rel=1e-9)
  assert acc.last_order == 19
  # Opacus accountants_test.test_rdp_accountant (its signed log A series).
  acc = rdp.RdpAccountant(OPACUS_ORDERS)
  assert acc.epsilon([Phase(0.04, 1.5, 2250)], 1e-5) == pytest.approx(
      7.32911117143, rel=1e-9)
  # Old jax_privacy analysis_test.
  orders = (list(np.linspace(1.01, 8, 50)) + list(range(8, 64)) +
            list(np.linspace(65, 512, 10)))
  acc = rdp.RdpAccountant(orders)
  assert acc.epsilon([Phase(1024 / 50000, 4.0, 10000)], 1e-5) == (
      pytest.approx(2.27535, abs=1e-5))
  # Opacus issue 643.
  acc = rdp.RdpAccountant(OPACUS_ORDERS)
  assert acc.epsilon([Phase(0.2, 3.0, 50)], 1 / 48000) == pytest.approx(
      2.16904, abs=1e-5)


def test_dp_accounting_published_rdp_integer_orders():
  # dp_accounting test_compute_rdp_poisson_sampled_gaussian, integer orders.
  r = 50 * rdp.compute_rdp(0.01, 2.5, [5, 50, 100])
  np.testing.assert_allclose(r, [2.18075656e-3, 2.38460375e-2, 1.67416308e2],
                             rtol=1e-4)


def _mp_rdp(q, sigma, alpha):
  """Exact RDP of the subsampled Gaussian by mpmath quadrature."""
  mpmath.mp.dps = 30
  q, s, a = mpmath.mpf(q), mpmath.mpf(sigma), mpmath.mpf(alpha)
  f = lambda z: mpmath.npdf(z, 0, s) * (
      1 - q + q * mpmath.e**((2 * z - 1) / (2 * s * s)))**a
  pts = [-mpmath.inf, -20 * s, 0, 0.5, 20 * s + 1, 60 * s + 1, mpmath.inf]
  return float(mpmath.log(mpmath.quad(f, pts)) / (a - 1))


@pytest.mark.parametrize('q,sigma,alpha', [
    (0.01, 2.5, 1.5), (0.01, 2.5, 2.5), (0.0328, 0.909, 1.1),
    (0.2, 1.3, 3.7), (0.001, 0.7, 7.8)])
def test_fractional_orders_match_quadrature(q, sigma, alpha):
  assert rdp.compute_rdp(q, sigma, [alpha])[0] == pytest.approx(
      _mp_rdp(q, sigma, alpha), rel=1e-6)


def test_random_cases_against_dp_accounting(rng_cases):
  orders = np.array(rdp.DEFAULT_ORDERS)
  integer = orders == np.round(orders)
  for q, sigma in rng_cases:
    mine = rdp.compute_rdp(q, sigma, orders)
    ref = dp_rdp._compute_rdp_poisson_subsampled_gaussian(q, sigma, orders)  # pylint: disable=protected-access
    fin = np.isfinite(ref)
    # Integer orders: both are the exact finite sum.
    np.testing.assert_allclose(mine[integer & fin], ref[integer & fin],
                               rtol=1e-6)
    # Fractional orders: dp_accounting 0.6.0 sums |terms| of the alternating
    # series (an upper bound); ours keeps the signs (exact, see the
    # quadrature test), so ours is never above.
    frac = ~integer & fin
    assert np.all(mine[frac] <= ref[frac] * (1 + 1e-9))


def test_conversions_match_dp_accounting(rng_cases):
  orders = np.array(rdp.DEFAULT_ORDERS)
  for q, sigma in rng_cases[:6]:
    curve = 1000 * rdp.compute_rdp(q, sigma, orders)
    for delta in (1e-5, 1e-8):
      e, o = rdp.rdp_to_epsilon(curve, orders, delta)
      e_ref, o_ref = dp_rdp.compute_epsilon(orders, curve, delta)
      assert e == pytest.approx(e_ref, rel=1e-9, abs=1e-12)
      assert o == o_ref
    for eps in (0.5, 4.0):
      d, _ = rdp.rdp_to_delta(curve, orders, eps)
      d_ref, _ = dp_rdp.compute_delta(orders, curve, eps)
      assert d == pytest.approx(d_ref, rel=1e-9, abs=1e-300)


def test_classic_conversion_closed_form():
  orders = np.arange(2, 33)
  curve = np.full(orders.shape, 1.1)
  e, o = rdp.rdp_to_epsilon(curve, orders, 1e-5, 'classic')
  assert e == pytest.approx(1.1 + math.log(1e5) / 31)
  assert o == 32
  # dp_accounting: constant RDP 1.1 on orders 2..32, improved conversion.
  e, o = rdp.rdp_to_epsilon(curve, orders, 1e-5, 'improved')
  assert e == pytest.approx(1.32783806176, rel=1e-9)


def test_gaussian_closed_form():
  orders = [1.5, 2, 10, 100]
  np.testing.assert_allclose(rdp.compute_rdp(1.0, 2.0, orders),
                             np.array(orders) / 8)
  dense = [1 + x / 1000 for x in range(1, 99000)]
  acc = rdp.RdpAccountant(dense)
  assert acc.epsilon([Phase(1.0, 4.530877117, 1)], 1e-6) == pytest.approx(
      1.0, abs=1e-6)


def test_variable_q_composition_is_the_sum():
  acc = get_accountant('rdp')
  phases = [Phase(0.01, 1.0, 300), Phase(0.02, 1.2, 200), Phase(0.01, 1.0, 5)]
  total = acc.rdp(phases)
  expected = sum(p.count * rdp.compute_rdp(p.q, p.sigma, acc.orders)
                 for p in phases)
  np.testing.assert_allclose(total, expected, rtol=1e-12)
  # And matches dp_accounting's accountant composing the same events.
  import dp_accounting  # pylint: disable=g-import-not-at-top
  ref = dp_rdp.RdpAccountant(orders=[a for a in acc.orders
                                     if float(a).is_integer()])
  for p in phases:
    ref.compose(dp_accounting.PoissonSampledDpEvent(
        p.q, dp_accounting.GaussianDpEvent(p.sigma)), p.count)
  ints = rdp.RdpAccountant([a for a in acc.orders if float(a).is_integer()])
  assert ints.epsilon(phases, 1e-6) == pytest.approx(ref.get_epsilon(1e-6),
                                                     rel=1e-6)


def test_upper_bounds_analytic_gaussian():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  sigma, steps, delta = 5.0, 16, 1e-5
  mu = math.sqrt(steps) / sigma
  f = lambda e: (stats.norm.cdf(-e / mu + mu / 2) -
                 math.exp(e) * stats.norm.cdf(-e / mu - mu / 2) - delta)
  exact = optimize.brentq(f, 0, 50)
  assert get_accountant('rdp').epsilon([Phase(1.0, sigma, steps)],
                                       delta) >= exact


def test_edge_cases():
  acc = get_accountant('rdp')
  assert acc.epsilon([Phase(0.1, 0.0, 10)], 1e-5) == math.inf
  assert acc.delta([Phase(0.1, 0.0, 10)], 1.0) == 1.0
  assert acc.epsilon([], 1e-5) == 0.0
  assert acc.epsilon([Phase(0.1, 1.0, 0)], 1e-5) == 0.0
  for bad in (dict(q=0.0, sigma=1.0, count=1), dict(q=1.5, sigma=1.0, count=1),
              dict(q=0.1, sigma=-1.0, count=1), dict(q=0.1, sigma=1.0, count=-1)):
    with pytest.raises(ValueError):
      Phase(**bad)
  with pytest.raises(ValueError, match='delta'):
    acc.epsilon([Phase(0.1, 1.0, 10)], 0.0)
  with pytest.raises(ValueError, match='delta'):
    acc.epsilon([Phase(0.1, 1.0, 10)], 1.0)
  with pytest.raises(ValueError, match='q'):
    rdp.compute_rdp(0.0, 1.0)
  with pytest.raises(ValueError, match='neighbouring'):
    acc.epsilon([Phase(0.1, 1.0, 10)], 1e-5, neighbouring='swap')
  with pytest.raises(NotImplementedError):
    acc.epsilon([Phase(0.1, 1.0, 10)], 1e-5, neighbouring='replace_one')
  # Replace-one at q = 1 is the Gaussian with sensitivity 2.
  assert acc.epsilon([Phase(1.0, 4.0, 3)], 1e-5, 'replace_one') == (
      pytest.approx(acc.epsilon([Phase(1.0, 2.0, 3)], 1e-5)))
  assert acc.describe()['orders'] == list(rdp.DEFAULT_ORDERS)


@pytest.mark.parametrize('n_data,sigma,delta,expected', [
    (67349, 0.7865, 1e-5, 10.240), (67349, 0.8170, 1e-5, 9.378),
    (67349, 0.8775, 1e-5, 7.998), (67349, 0.7865, 1e-6, 11.367),
    (104743, 0.7110, 1e-5, 10.525), (363849, 0.5635, 1e-5, 11.546),
    (392702, 0.5570, 1e-5, 11.621), (392702, 0.6255, 1e-5, 7.984),
])
def test_ewtune_rdp_baseline(n_data, sigma, delta, expected):
  # ALGORITHMS.md 2.8, eps_RDP(classic): orders arange(2, 32, 0.1).
  acc = get_accountant('rdp', orders=rdp.EWTUNE_ORDERS, conversion='classic')
  q, steps = 2000 / n_data, 20 * (n_data // 2000)
  assert acc.epsilon([Phase(q, sigma, steps)], delta) == pytest.approx(
      expected, abs=1e-3)
  assert acc.describe()['conversion'] == 'classic'
