"""Accountants against references computed outside dpjax (issue 13).

* PLD and RDP on batch-size schedules (several phases with different q, the
  ledger built the way the trainer builds it) against dp_accounting composing
  one event per step's rate, taken from the raw schedule, not from the ledger.
* The sound LMO accountant against a numerical privacy-loss distribution of
  the LMO noise: its density is integrated here by quadrature against SciPy's
  component densities (checked against `lmo_noise.sample_lmo` by a KS test),
  the pair (noise, noise shifted by the L1 sensitivity), Poisson-mixed in the
  remove and the add direction, is binned in the noise coordinate and handed to
  dp_accounting's `from_two_probability_mass_functions`, then self-composed.

  Binning the noise coordinate (and clamping it to a window) is
  post-processing, so the binned pair's hockey-stick curve is below the true
  one; with `pessimistic_estimate=False` dp_accounting rounds losses down, so
  the "optimistic" reference is a lower bound on the true epsilon of this
  neighbouring pair (all of the L1 sensitivity on one coordinate), hence on the
  mechanism's. The pessimistic reference is above the binned pair's epsilon by
  at most the loss rounding (T * interval); it is what the upper tolerance is
  measured against.
"""

from __future__ import annotations

import functools
import math

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as dpa_pld
from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp
import numpy as np
import pytest
from scipy import stats

from dpjax import batch_schedule
from dpjax.accounting import get_accountant
from dpjax.accounting import ledger as ledger_lib
from dpjax.accounting import lmo
from dpjax.accounting import rdp

NR = dp_accounting.NeighboringRelation


# ---------------------------------------------------------------------------
# Gaussian accountants on batch-size schedules.


def _schedule_ledger(rates, sigma, neighbouring):
  """The ledger as the trainer fills it: one record(q_t, sigma) per step."""
  ledger = ledger_lib.PrivacyLedger(
      sampling='poisson', neighbouring=neighbouring, dataset_size=1000,
      batch_size=10)
  return batch_schedule.record_schedule(ledger, rates, sigma)


def _dpa_events(rates, sigma):
  """One dp_accounting event per distinct rate, with its number of steps
  (composition commutes), straight from the per-step rates."""
  values, counts = np.unique(np.asarray(rates, np.float64),
                             return_counts=True)
  return [(dp_accounting.PoissonSampledDpEvent(
      float(q), dp_accounting.GaussianDpEvent(sigma)), int(c))
          for q, c in zip(values, counts)]


def _ramp_rates():
  # 12-step ramp of B_t from 4 to 24 of N = 1000, then 24 for the rest:
  # 13 distinct rates, the last one weighing most.
  sizes = batch_schedule.linear_ramp(start=4.0, end=24.0, steps=400,
                                     ramp_steps=12)
  return batch_schedule.sampling_rates(sizes, 1000)


def _epoch_rates():
  # Epochs of 7 batches of 130 plus one of 90 (N = 1000): two rates that
  # alternate, 64 phases in the ledger.
  sizes = batch_schedule.epoch_schedule(dataset_size=1000, batch_size=130,
                                        steps=256)
  return batch_schedule.sampling_rates(sizes, 1000)


_SCHEDULES = {
    # (rates, sigma): a ramp (13 rates, 5x apart) and alternating rates.
    'ramp': (_ramp_rates, 0.9),
    'epoch': (_epoch_rates, 1.6),
    # Three hand-made phases with q 8x apart, each a sizeable share of eps.
    'three_phases': (lambda: np.repeat([0.005, 0.04, 0.012], [2400, 40, 400]),
                     1.1),
}


@pytest.mark.parametrize('neighbouring,relation', [
    ('add_remove', NR.ADD_OR_REMOVE_ONE), ('replace_one', NR.REPLACE_ONE)])
@pytest.mark.parametrize('name', sorted(_SCHEDULES))
def test_pld_schedule_is_a_tight_upper_bound_of_dp_accounting(
    name, neighbouring, relation):
  make_rates, sigma = _SCHEDULES[name]
  rates = make_rates()
  ledger = _schedule_ledger(rates, sigma, neighbouring)
  assert ledger.steps == len(rates)
  h = 1e-3
  ours = get_accountant('pld', value_discretization_interval=h,
                        min_interval=h)
  ref = pld_privacy_accountant.PLDAccountant(
      relation, value_discretization_interval=h)
  for event, count in _dpa_events(rates, sigma):
    ref.compose(event, count)
  for delta in (1e-5, 1e-8):
    e = ours.epsilon(ledger.accountable_phases(), delta, neighbouring)
    e_ref = ref.get_epsilon(delta)
    assert e_ref * (1 - 1e-3) <= e <= e_ref * 1.02, (name, delta, e, e_ref)


@pytest.mark.parametrize('name', sorted(_SCHEDULES))
def test_rdp_schedule_equals_dp_accounting_on_the_same_orders(name):
  make_rates, sigma = _SCHEDULES[name]
  rates = make_rates()
  ledger = _schedule_ledger(rates, sigma, 'add_remove')
  # dp_accounting 0.6.0 is exact at integer orders only (see test_rdp.py).
  orders = [a for a in rdp.DEFAULT_ORDERS if float(a).is_integer()]
  ours = rdp.RdpAccountant(orders)
  ref = dpa_rdp.RdpAccountant(orders=orders)
  for event, count in _dpa_events(rates, sigma):
    ref.compose(event, count)
  for delta in (1e-5, 1e-8):
    e = ours.epsilon(ledger.accountable_phases(), delta)
    assert e == pytest.approx(ref.get_epsilon(delta), rel=1e-6), (name, delta)
  # The default accountant (fractional orders too) can only be smaller.
  default = get_accountant('rdp').epsilon(ledger.accountable_phases(), 1e-5)
  assert default <= ref.get_epsilon(1e-5) * (1 + 1e-6)


def test_schedule_references_separate_the_phases():
  """The checks above have power: a ledger that drops a phase or charges
  every step with one phase's rate moves PLD epsilon by far more than the 2%
  tolerance (dropping the steps of the commonest rate; charging every step
  with the smallest rate)."""
  h = 1e-3
  ours = get_accountant('pld', value_discretization_interval=h,
                        min_interval=h)
  for name in _SCHEDULES:
    rates, sigma = _SCHEDULES[name][0](), _SCHEDULES[name][1]
    phases = _schedule_ledger(rates, sigma, 'add_remove').accountable_phases()
    e = ours.epsilon(phases, 1e-5)
    biggest = max(phases, key=lambda p: p.count)
    dropped = [p for p in phases if p.q != biggest.q]
    assert ours.epsilon(dropped, 1e-5) < 0.95 * e, name
    low_q = min(p.q for p in phases)
    one_q = [ledger_lib.Phase(low_q, p.sigma, p.count) for p in phases]
    assert ours.epsilon(one_q, 1e-5) < 0.95 * e, name


# ---------------------------------------------------------------------------
# LMO: an independent numerical PLD of the noise.


def _gauss_legendre(lo, hi, pieces, nodes):
  x, w = np.polynomial.legendre.leggauss(nodes)
  edges = np.linspace(lo, hi, pieces + 1)
  a, b = edges[:-1, None], edges[1:, None]
  return ((b - a) / 2 * x + (b + a) / 2).ravel(), ((b - a) / 2 * w).ravel()


def _components(p: lmo.LMOParams):
  """Quadrature (nodes, weights * density) of each term of eps'.

  eps' = a1 Gamma(k, theta) + a3 Exponential(rate lam) + a4 U[u_a, u_b]
  (what `lmo_noise.sample_inverse_scale` draws), from SciPy's densities.
  """
  comps = []
  if p.a1 > 0:
    d = stats.gamma(p.k, scale=p.a1 * p.theta)
    x, w = _gauss_legendre(0.0, d.isf(1e-16), 16, 16)
    comps.append((x, w * d.pdf(x)))
  if p.a3 > 0:
    d = stats.expon(scale=p.a3 / p.lam)  # rate lam of Exp, times a3
    x, w = _gauss_legendre(0.0, d.isf(1e-16), 16, 16)
    comps.append((x, w * d.pdf(x)))
  if p.a4 > 0:
    lo, hi = p.a4 * p.u_a, p.a4 * p.u_b
    x, w = _gauss_legendre(lo, hi, 2, 16)
    comps.append((x, w / (hi - lo)))
  return comps


def _decay(s, e):
  # e^{-s e}, floored at e^{-600} (harmless) to keep subnormals (slow) out.
  return np.exp(np.maximum(-s * e, -600.0))


def _density(p: lmo.LMOParams, x) -> np.ndarray:
  """Density of Laplace(0, 1) / eps': E[eps' e^{-eps' |x|}] / 2.

  eps' is a sum of independent terms T_i, so E[eps' e^{-s eps'}] =
  sum_i E[T_i e^{-s T_i}] prod_{j != i} E[e^{-s T_j}], each factor a 1-D
  quadrature.
  """
  s = np.abs(np.asarray(x, np.float64))[..., None]
  comps = _components(p)
  laplace = [_decay(s, e) @ w for e, w in comps]
  tilted = [_decay(s, e) @ (w * e) for e, w in comps]
  total = 0.0
  for i in range(len(comps)):
    term = tilted[i]
    for j in range(len(comps)):
      if j != i:
        term = term * laplace[j]
    total = total + term
  return 0.5 * total


def _cdf(p: lmo.LMOParams, x) -> np.ndarray:
  """CDF of the noise: 1/2 + sign(x) (1 - E[e^{-eps'|x|}]) / 2."""
  x = np.asarray(x, np.float64)
  s = np.abs(x)[..., None]
  tail = 1.0
  for e, w in _components(p):
    tail = tail * (_decay(s, e) @ w)
  return 0.5 + np.sign(x) * 0.5 * (1.0 - tail)


def _min_inverse_scale(p: lmo.LMOParams) -> float:
  return p.a4 * p.u_a


@functools.lru_cache(maxsize=None)
def _binned(p: lmo.LMOParams, shift: float, dx: float):
  """Masses of noise and noise + shift on bins of width dx (Simpson), the
  window [-X, X + shift] with both tails folded into the end bins."""
  em = _min_inverse_scale(p)
  assert em > 0.2, 'the window below assumes eps\' bounded away from 0'
  lo, hi = -15.0 / em, 15.0 / em + shift
  n = int(math.ceil((hi - lo) / dx))
  edges = lo + dx * np.arange(n + 1)
  mids = (edges[:-1] + edges[1:]) / 2

  def masses(c):
    f_e, f_m = _density(p, edges - c), _density(p, mids - c)
    m = dx / 6 * (f_e[:-1] + 4 * f_m + f_e[1:])
    m[0] += _cdf(p, edges[0] - c)
    m[-1] += 1 - _cdf(p, edges[-1] - c)
    return m

  return masses(0.0), masses(shift)


def _reference_plds(p, shift, q, pessimistic, dx=1e-2, h=1e-4):
  """Single-step PLDs (remove, add) of noise vs (1-q) noise + q (noise+shift)."""
  base, moved = _binned(p, shift, dx)
  mix = (1 - q) * base + q * moved
  log_base = {i: math.log(v) for i, v in enumerate(base) if v > 0}
  log_mix = {i: math.log(v) for i, v in enumerate(mix) if v > 0}
  # dp_accounting: loss log(upper / lower), delta = E_upper[(1 - e^{eps-L})+].
  remove = dpa_pld.from_two_probability_mass_functions(
      log_base, log_mix, pessimistic_estimate=pessimistic,
      value_discretization_interval=h)
  add = dpa_pld.from_two_probability_mass_functions(
      log_mix, log_base, pessimistic_estimate=pessimistic,
      value_discretization_interval=h)
  return remove, add


def _reference_epsilon(p, phases, delta, pessimistic):
  """max over directions of eps(delta) of the composed [(shift, q, T)]."""
  out = []
  for direction in (0, 1):
    total = None
    for shift, q, count in phases:
      one = _reference_plds(p, shift, q, pessimistic)[direction]
      comp = one.self_compose(count)
      total = comp if total is None else total.compose(comp)
    out.append(total.get_epsilon_for_delta(delta))
  return max(out)


_P_SMALL = lmo.ARTIFACT_PARAMS[0.7]   # eps' in [0.5, ...): per-step eps0 ~0.6
_P_LARGE = lmo.ARTIFACT_PARAMS[2.0]   # eps' in [1.4, ...)


def test_reference_density_matches_the_sampler():
  """The density integrated here is the law `lmo_noise.sample_lmo` draws."""
  import jax  # pylint: disable=g-import-not-at-top
  from dpjax import lmo_noise  # pylint: disable=g-import-not-at-top
  grid = np.linspace(-80, 80, 12_001)  # CDF interpolated off this grid
  for p in (_P_SMALL, _P_LARGE, lmo.ARTIFACT_PARAMS[3.0]):
    x = np.asarray(lmo_noise.sample_lmo(jax.random.key(3), p, (40_000,)),
                   np.float64)
    cdf = _cdf(p, grid)
    assert stats.kstest(x, lambda t, c=cdf: np.interp(t, grid, c)).pvalue > 1e-3
    # Power: the artifact's Exponential with scale lam instead of rate lam.
    wrong = _cdf(lmo.LMOParams(p.a1, p.k, p.theta, p.a3 * p.lam ** 2, p.lam,
                               p.a4, p.u_a, p.u_b), grid)
    assert stats.kstest(x, lambda t, c=wrong: np.interp(t, grid, c)
                        ).pvalue < 1e-6
  # A density (mass 1).
  grid = np.linspace(-60, 60, 12_001)
  f = _density(_P_SMALL, grid)
  assert np.trapezoid(f, grid) + 2 * (1 - _cdf(_P_SMALL, 60.0)) == (
      pytest.approx(1.0, abs=1e-5))


# (params, L1 sensitivity in noise units, q, steps, delta, upper tolerance).
# The upper tolerance is the measured gap plus ~5%: with q = 1 the sound
# bound is basic composition of the exact pure-DP level (the loss is bounded
# and the ratio is near 1); under subsampling it goes through RDP (Zhu-Wang's
# general bound, then the RDP -> (eps, delta) conversion), which costs
# 35-60% against the exact PLD at these settings (module docstring of
# dpjax.accounting.lmo: "conservative ... up to ~40%").
_LMO_CASES = [
    (_P_LARGE, 1.0, 1.0, 10, 1e-5, 1.06),
    (_P_SMALL, 2.0, 0.5, 10, 1e-5, 1.10),   # amplified pure DP: measured 1.065
    (_P_SMALL, 2.0, 0.01, 1000, 1e-5, 1.32),
    (_P_LARGE, 0.5, 0.1, 100, 1e-5, 1.55),
]


@pytest.mark.parametrize('p,shift,q,steps,delta,upper', _LMO_CASES)
def test_lmo_sound_epsilon_against_numerical_pld(p, shift, q, steps, delta,
                                                 upper):
  # Through the accountant the trainer uses: ledger sigma = scale / L1 sens.
  acc = lmo.LMOAccountant(p)
  ours = acc.epsilon([ledger_lib.Phase(q, 1.0 / shift, steps)], delta)
  lower = _reference_epsilon(p, [(shift, q, steps)], delta, False)
  near = _reference_epsilon(p, [(shift, q, steps)], delta, True)
  assert lower <= near
  assert ours >= lower, (ours, lower)
  assert ours <= upper * near, (ours, near, ours / near)
  # The module-level function the accountant wraps says the same.
  assert ours == pytest.approx(lmo.epsilon_sound(
      [lmo.LMOPhase(p, q, steps, shift)], delta), rel=1e-12)


def test_lmo_sound_epsilon_of_a_schedule_against_numerical_pld():
  """Phases with different q (a batch-size ramp), composed per phase: with
  few steps at large q the bound is near-tight, so composing a phase at the
  wrong rate, or dropping steps, falls below the reference."""
  p, delta = _P_SMALL, 1e-5
  for phases, upper in (([(1.0, 0.25, 6), (1.0, 0.5, 6), (1.0, 1.0, 3)], 1.18),
                        ([(2.0, 0.004, 400), (2.0, 0.02, 300)], 1.42)):  # 1.14, 1.35
    ours = lmo.LMOAccountant(p).epsilon(
        [ledger_lib.Phase(q, 1.0 / s, n) for s, q, n in phases], delta)
    lower = _reference_epsilon(p, phases, delta, False)
    near = _reference_epsilon(p, phases, delta, True)
    assert lower <= ours <= upper * near, (phases, ours, lower, near)


def test_lmo_spreading_the_shift_stays_below_the_sound_bound():
  """The bound covers every split of the L1 sensitivity over coordinates.

  Without subsampling the d-coordinate mechanism with the shift split evenly
  is the d-fold product of 1-D pairs at shift r / d, so its PLD is the
  composition of 1-D PLDs. Spreading raises the pure-DP level d f(r/d), which
  the sound bound takes at its d -> infinity limit r E[eps'^2] / E[eps'];
  at delta > 0 it lowers epsilon here, so one coordinate carrying the whole
  shift is the pair the references above should (and do) use.
  """
  p, r, steps, delta = _P_LARGE, 1.0, 10, 1e-5
  ours = lmo.LMOAccountant(p).epsilon([ledger_lib.Phase(1.0, 1.0 / r, steps)],
                                      delta)
  refs = {d: _reference_epsilon(p, [(r / d, 1.0, steps * d)], delta, False)
          for d in (1, 2, 4)}
  # Measured: 17.10, 16.26, 12.55 against 17.34: the concentrated shift,
  # which the tests above use, is the worst of these splits at delta = 1e-5.
  assert max(refs.values()) == refs[1] <= ours, (refs, ours)
