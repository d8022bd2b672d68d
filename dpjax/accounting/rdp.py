"""Rényi DP of the Poisson-subsampled Gaussian, and RDP -> (epsilon, delta).

Implements the numerically stable log-space computation of Mironov, Talwar and
Zhang (2019), "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
for integer and fractional orders; composition over steps with their own
(q_t, sigma_t) by adding RDP curves on one order grid (the "variable-q"
accountant); and both conversions to (epsilon, delta):

* 'classic': Mironov (2017), Prop. 3: eps = min_a RDP(a) + log(1/delta)/(a-1).
* 'improved': Balle et al. (2020) Thm 21 / Canonne, Kamath, Steinke (2020)
  Prop. 12, as used by dp_accounting and Opacus:
  eps = min_a RDP(a) + log((a-1)/a) - (log delta + log a)/(a-1).

Pure NumPy/SciPy.

Formal guarantees:
  For the add/remove relation, RDP(a) computed here is the exact Rényi
  divergence of order a of the Poisson-subsampled Gaussian (up to float64
  rounding and the series truncation at 30 nats below the running total for
  fractional orders, as in dp_accounting); both conversions give valid upper
  bounds on epsilon(delta) of the composition. The result depends on the order
  grid (recorded by `describe()`); a coarser grid only makes it larger.
  Replace-one neighbouring is supported only for q = 1 (a Gaussian with
  sensitivity 2); for q < 1 it raises NotImplementedError rather than report a
  number that is not proved to be a bound (use the PLD accountant).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import special

from dpjax.accounting import ledger as ledger_lib

Phase = ledger_lib.Phase

# dp_accounting 0.6.0 `DEFAULT_RDP_ORDERS`.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) +
    [128, 256, 512, 1024])
# EW-Tune's "moments" baseline (np.arange(2, 32, 0.1)), classic conversion.
EWTUNE_ORDERS: tuple[float, ...] = tuple(
    float(x) for x in np.round(np.arange(2, 32, 0.1), 10))
CONVERSIONS = ('improved', 'classic')

_MAX_FRAC_TERMS = 16_384


def _log_add(x: float, y: float) -> float:
  a, b = min(x, y), max(x, y)
  if a == -math.inf:
    return b
  return b + math.log1p(math.exp(a - b))


def _log_sub(x: float, y: float) -> float:
  """log(exp(x) - exp(y)) for x >= y."""
  if y == -math.inf:
    return x
  if x <= y:
    return -math.inf
  return x + math.log1p(-math.exp(y - x))


def _log_comb(n: float, k: float) -> float:
  return float(special.gammaln(n + 1) - special.gammaln(k + 1) -
               special.gammaln(n - k + 1))


def _log_erfc(x: float) -> float:
  return math.log(2.0) + float(special.log_ndtr(-x * math.sqrt(2.0)))


def _log_a_int(q: float, sigma: float, alpha: int) -> float:
  """log A_alpha for integer alpha, 0 < q < 1 (log-sum-exp over k)."""
  k = np.arange(alpha + 1, dtype=np.float64)
  log_terms = (special.gammaln(alpha + 1) - special.gammaln(k + 1) -
               special.gammaln(alpha - k + 1) + k * math.log(q) +
               (alpha - k) * math.log1p(-q) + (k * k - k) / (2 * sigma**2))
  return float(_cum_logsumexp(log_terms, np.ones_like(log_terms))[-1])


def _log_a_frac(q: float, sigma: float, alpha: float) -> float:
  """log A_alpha for fractional alpha, 0 < q < 1 (MTZ 2019, Sec. 3.3).

  The two alternating series are summed with their signs (exact), in blocks
  of terms vectorized over i, until both terms decrease and fall 30 nats
  below the running total (dp_accounting's stopping rule).
  """
  z0 = sigma**2 * math.log(1 / q - 1) + 0.5
  log1mq, logq = math.log1p(-q), math.log(q)
  s2 = 2 * sigma**2
  n = 64
  while n <= _MAX_FRAC_TERMS:
    i = np.arange(n, dtype=np.float64)
    j = alpha - i
    coef = special.binom(alpha, i)
    with np.errstate(divide='ignore'):
      log_coef = np.log(np.abs(coef))
    log_e0 = math.log(0.5) + _log_erfc_vec((i - z0) / (math.sqrt(2) * sigma))
    log_e1 = math.log(0.5) + _log_erfc_vec((z0 - j) / (math.sqrt(2) * sigma))
    log_s0 = log_coef + i * logq + j * log1mq + (i * i - i) / s2 + log_e0
    log_s1 = log_coef + j * logq + i * log1mq + (j * j - j) / s2 + log_e1
    sign = np.where(coef > 0, 1.0, -1.0)
    # Running totals after each term; stop at the first term that is
    # decreasing in both series and 30 nats below the total.
    terms = np.concatenate([log_s0, log_s1])
    signs = np.concatenate([sign, sign])
    idx = np.concatenate([np.arange(n), np.arange(n)])
    order = np.argsort(idx, kind='stable')
    csum = _cum_logsumexp(terms[order], signs[order])[1::2]  # after term i
    dec = np.zeros(n, dtype=bool)
    dec[1:] = (log_s0[1:] < log_s0[:-1]) & (log_s1[1:] < log_s1[:-1])
    stop = np.nonzero(dec & (np.maximum(log_s0, log_s1) < csum - 30))[0]
    if stop.size:
      return float(csum[stop[0]])
    n *= 4
  return math.inf  # did not converge: drop this order (inf is conservative)


def _log_erfc_vec(x: np.ndarray) -> np.ndarray:
  return math.log(2.0) + special.log_ndtr(-x * math.sqrt(2.0))


def _cum_logsumexp(log_terms: np.ndarray, signs: np.ndarray) -> np.ndarray:
  """log of the running signed sums sum_{k<=m} signs_k exp(log_terms_k).

  Relative to the largest term (which must be positive), with log1p, so a
  total of 1 + 1e-9 keeps its 1e-9 to full precision.
  """
  k = int(np.argmax(log_terms))
  m = float(log_terms[k])
  if not math.isfinite(m):
    return np.full(log_terms.shape, -np.inf)
  e = signs * np.exp(log_terms - m)
  e[k] = 0.0
  rest = np.cumsum(e)
  pos = np.arange(log_terms.size)
  with np.errstate(divide='ignore', invalid='ignore'):
    after = m + np.log1p(np.maximum(rest, -1.0))
    before = np.where(rest > 0, m + np.log(rest), -np.inf)
  return np.where(pos >= k, after, before)


def compute_rdp(q: float, sigma: float,
                orders: Sequence[float] = DEFAULT_ORDERS) -> np.ndarray:
  """RDP of one step of the Poisson-subsampled Gaussian, add/remove relation.

  Args:
    q: sampling rate in (0, 1].
    sigma: noise multiplier (noise std / L2 sensitivity), >= 0.
    orders: Rényi orders > 1.

  Returns:
    Array of RDP values, one per order (inf where undefined or sigma = 0).
  """
  ledger_lib.validate_mechanism(q=q, sigma=sigma, steps=1)
  orders = np.asarray(orders, dtype=np.float64)
  if np.any(orders <= 1):
    raise ValueError(f'orders must all be > 1, got min {orders.min()}.')
  if sigma == 0:
    return np.full(orders.shape, np.inf)
  if q == 1.0:
    return orders / (2 * sigma**2)
  out = np.empty(orders.shape)
  for i, a in enumerate(orders):
    if float(a).is_integer():
      log_a = _log_a_int(q, sigma, int(a))
    else:
      log_a = _log_a_frac(q, sigma, float(a))
    out[i] = log_a / (a - 1)
  return out


def _effective_sigma(p: Phase, neighbouring: str) -> float:
  """sigma relative to the relation's sensitivity (replace-one: 2C, q = 1)."""
  if neighbouring != 'replace_one':
    return p.sigma
  if p.q < 1.0:
    raise NotImplementedError(
        'RDP accountant: replace_one neighbouring is only supported for '
        f'q = 1 (got q={p.q}); use the PLD accountant.')
  return p.sigma / 2.0


def compose_rdp(phases: Sequence[Phase],
                orders: Sequence[float] = DEFAULT_ORDERS,
                neighbouring: str = 'add_remove') -> np.ndarray:
  """Sum of per-step RDP curves over `phases` (variable q and sigma)."""
  _check_neighbouring(neighbouring)
  orders = np.asarray(orders, dtype=np.float64)
  total = np.zeros(orders.shape)
  for p in phases:
    if p.count == 0:
      continue
    sigma = _effective_sigma(p, neighbouring)
    total = total + p.count * compute_rdp(p.q, sigma, orders)
  return total


def _check_neighbouring(neighbouring: str) -> None:
  if neighbouring not in ledger_lib.NEIGHBOURING:
    raise ValueError(f'neighbouring must be one of {ledger_lib.NEIGHBOURING}, '
                     f'got {neighbouring!r}.')


def _check_delta(delta: float) -> None:
  if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
    raise ValueError(f'delta must be in (0, 1), got {delta!r}.')


def rdp_to_epsilon(rdp: Sequence[float], orders: Sequence[float], delta: float,
                   conversion: str = 'improved') -> tuple[float, float]:
  """Converts an RDP curve to epsilon at `delta`; returns (epsilon, order)."""
  _check_delta(delta)
  rdp = np.asarray(rdp, dtype=np.float64)
  orders = np.asarray(orders, dtype=np.float64)
  if conversion == 'classic':
    eps = rdp + math.log(1 / delta) / (orders - 1)
  elif conversion == 'improved':
    with np.errstate(invalid='ignore', over='ignore'):
      eps = (rdp + np.log1p(-1 / orders) -
             (math.log(delta) + np.log(orders)) / (orders - 1))
      eps = np.where(orders > 1.01, eps, np.inf)
      # KL bound: TV <= sqrt(1 - exp(-KL)) and RDP(a) >= KL for a > 1.
      eps = np.where(delta**2 + np.expm1(-rdp) >= 0, 0.0, eps)
  else:
    raise ValueError(f'conversion must be one of {CONVERSIONS}, '
                     f'got {conversion!r}.')
  eps = np.where(np.isnan(eps), np.inf, eps)
  i = int(np.argmin(eps))
  return max(0.0, float(eps[i])), float(orders[i])


def rdp_to_delta(rdp: Sequence[float], orders: Sequence[float], epsilon: float,
                 conversion: str = 'improved') -> tuple[float, float]:
  """Converts an RDP curve to delta at `epsilon`; returns (delta, order)."""
  if not epsilon >= 0:
    raise ValueError(f'epsilon must be >= 0, got {epsilon!r}.')
  rdp = np.asarray(rdp, dtype=np.float64)
  orders = np.asarray(orders, dtype=np.float64)
  with np.errstate(invalid='ignore', over='ignore', divide='ignore'):
    if conversion == 'classic':
      log_d = (orders - 1) * (rdp - epsilon)
    elif conversion == 'improved':
      log_d = ((orders - 1) * (rdp - epsilon + np.log1p(-1 / orders)) -
               np.log(orders))
      log_d = np.where(orders > 1.01, log_d, np.inf)
      log_d = np.minimum(log_d, 0.5 * np.log(-np.expm1(-rdp)))
    else:
      raise ValueError(f'conversion must be one of {CONVERSIONS}, '
                       f'got {conversion!r}.')
  log_d = np.where(np.isnan(log_d), np.inf, log_d)
  i = int(np.argmin(log_d))
  return min(1.0, math.exp(min(log_d[i], 0.0))), float(orders[i])


class RdpAccountant:
  """RDP accountant for (variable) Poisson-subsampled Gaussian steps.

  Formal guarantees:
    `epsilon(phases, delta)` is an upper bound on the smallest epsilon for
    which the composition of `phases` is (epsilon, delta)-DP under add/remove
    neighbouring (and replace-one when every phase has q = 1). It is looser
    than the PLD accountant, by an amount that depends on the order grid.
  """

  name = 'rdp'
  is_upper_bound = True

  def __init__(self, orders: Sequence[float] = DEFAULT_ORDERS,
               conversion: str = 'improved'):
    if conversion not in CONVERSIONS:
      raise ValueError(f'conversion must be one of {CONVERSIONS}, '
                       f'got {conversion!r}.')
    self.orders = tuple(float(a) for a in orders)
    if any(a <= 1 for a in self.orders):
      raise ValueError('orders must all be > 1.')
    self.conversion = conversion
    self._cache: dict[tuple[float, float], np.ndarray] = {}
    self.last_order: float | None = None

  def _rdp(self, phases: Sequence[Phase], neighbouring: str) -> np.ndarray:
    _check_neighbouring(neighbouring)
    total = np.zeros(len(self.orders))
    for p in phases:
      if p.count == 0:
        continue
      sigma = _effective_sigma(p, neighbouring)
      key = (p.q, sigma)
      if key not in self._cache:
        self._cache[key] = compute_rdp(p.q, sigma, self.orders)
      total = total + p.count * self._cache[key]
    return total

  def rdp(self, phases: Sequence[Phase],
          neighbouring: str = 'add_remove') -> np.ndarray:
    """The composed RDP curve on `self.orders`."""
    return self._rdp(_as_phases(phases), neighbouring)

  def epsilon(self, phases: Sequence[Phase], delta: float,
              neighbouring: str = 'add_remove') -> float:
    _check_delta(delta)
    phases = _as_phases(phases)
    if ledger_lib.has_noiseless_step(phases):
      return math.inf
    eps, order = rdp_to_epsilon(self._rdp(phases, neighbouring), self.orders,
                                delta, self.conversion)
    self.last_order = order
    return eps

  def delta(self, phases: Sequence[Phase], epsilon: float,
            neighbouring: str = 'add_remove') -> float:
    phases = _as_phases(phases)
    if ledger_lib.has_noiseless_step(phases):
      return 1.0
    d, order = rdp_to_delta(self._rdp(phases, neighbouring), self.orders,
                            epsilon, self.conversion)
    self.last_order = order
    return d

  def describe(self) -> dict:
    return {
        'accountant': self.name,
        'kind': 'upper bound',
        'method': 'RDP of the Poisson-subsampled Gaussian (Mironov, Talwar, '
                  'Zhang 2019), composed by summing over steps',
        'conversion': self.conversion,
        'orders': list(self.orders),
        'optimal_order': self.last_order,
    }


def _as_phases(phases) -> list[Phase]:
  out = []
  for p in phases:
    if isinstance(p, Phase):
      out.append(p)
    elif isinstance(p, dict):
      out.append(Phase(**p))
    else:
      out.append(Phase(*p))
  return out
