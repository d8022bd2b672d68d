"""The Edgeworth accountant (Wang, Gao, Zhang, Shen, Su 2022; used by EW-Tune).

For each distinct step (q, sigma) the cumulants of the privacy loss random
variable L = log(dU/dV) of the dominating pair (U, V) are computed once, under
U and under V, by quadrature (float64 trapezoid rule on a fine grid, which is
spectrally accurate for these smooth, Gaussian-decaying integrands). Cumulants
add under composition; the CDFs of the composed loss under U and V are
replaced by their Edgeworth expansions of order 1, 2 or 3, and

  delta_hat(eps) = (1 - F_U(eps)) - e^eps (1 - F_V(eps)),

solved for eps by a bracketing solver (scan, then Brent).

The pairs are those of `pld.py`. For add/remove the default
(`directions='remove'`) is the 'remove' direction only (U = (1-q) N(0) +
q N(1), V = N(0)): exactly the reference code's computation, what EW-Tune
calibrated with. `directions='both'` also evaluates the 'add' direction
(U = N(0), V = mixture) and reports the larger estimate. For replace-one,
U = (1-q)N(0)+qN(-1), V = (1-q)N(0)+qN(1).

The finite-sample error bound of the first-order expansion (reference code's
`error_bound_edgeworth_1`, Derumigny-Girard-Guyonvarch style, uniform in x)
is computed for a single phase of identical steps and turned into eps bounds;
`describe()` and `last_bound` say plainly when it is vacuous (which it is at
DP-SGD-scale delta).

Pure NumPy/SciPy.

Formal guarantees:
  None for the point estimate: `epsilon()` is an ESTIMATE of the epsilon of
  the composition (an asymptotic expansion), not an upper bound; it can be
  below the true epsilon (for EW-Tune's SST-2 setting it is ~8.0 where the
  PLD upper bound is ~8.3). `is_upper_bound` is False. The error-bound
  interval [eps_lower, eps_upper], when it is not vacuous, brackets the
  epsilon implied by the Berry-Esseen-type bound on the expansion error.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import integrate
from scipy import optimize
from scipy import special

from dpjax.accounting import ledger as ledger_lib
from dpjax.accounting import rdp as rdp_lib

Phase = ledger_lib.Phase

_SQRT2PI = math.sqrt(2 * math.pi)


def _log_npdf(z):
  return -0.5 * z * z - math.log(_SQRT2PI)


def _pair(direction: str, q: float, mu: float):
  """(loss(z), log_u(z), log_v(z)) in units where the noise is N(0, 1)."""
  log1mq, logq = (math.log1p(-q) if q < 1 else -math.inf), math.log(q)

  def log_mix(z, shift):  # log((1-q) phi(z) + q phi(z - shift))
    a = log1mq + _log_npdf(z)
    b = logq + _log_npdf(z - shift)
    return np.logaddexp(a, b)

  if direction == 'remove':
    def loss(z):
      return np.logaddexp(log1mq, logq + mu * z - mu * mu / 2)
    return loss, (lambda z: log_mix(z, mu)), _log_npdf
  if direction == 'add':
    def loss(z):
      return -np.logaddexp(log1mq, logq + mu * z - mu * mu / 2)
    return loss, _log_npdf, (lambda z: log_mix(z, mu))
  if direction == 'replace':
    def loss(z):
      return log_mix(z, -mu) - log_mix(z, mu)
    return loss, (lambda z: log_mix(z, -mu)), (lambda z: log_mix(z, mu))
  raise ValueError(f'unknown direction {direction!r}')


class StepMoments:
  """Moments and cumulants of one step's privacy loss under U and V.

  Attributes:
    cumulants_u, cumulants_v: kappa_1..kappa_5 under U and V.
    raw_u, raw_v: raw moments E[L^k], k = 1..4.
    abs_u, abs_v: absolute moments E|L|^k, k = 1..4.
  """

  def __init__(self, q: float, sigma: float, direction: str,
               points: int = 40001):
    mu = 1.0 / sigma
    loss, log_u, log_v = _pair(direction, q, mu)
    lo = -12.0 - (mu if direction == 'replace' else 0.0)
    hi = 12.0 + mu
    # Fine enough to resolve the loss's transition (width ~ 1/mu).
    n = min(max(points, int((hi - lo) * max(mu, 1.0) * 200) + 1), 1_000_001)
    z = np.linspace(lo - 26.0, hi + 26.0, n)
    dz = z[1] - z[0]
    ell = loss(z)
    out = {}
    for name, log_w in (('u', log_u), ('v', log_v)):
      w = np.exp(log_w(z)) * dz
      w /= w.sum()  # the quadrature of a density: exactly 1 by construction
      m1 = float(np.sum(w * ell))
      c = ell - m1
      central = [float(np.sum(w * c**k)) for k in (2, 3, 4, 5)]
      c2, c3, c4, c5 = central
      out[name] = (
          np.array([m1, c2, c3, c4 - 3 * c2 * c2, c5 - 10 * c3 * c2]),
          np.array([float(np.sum(w * ell**k)) for k in (1, 2, 3, 4)]),
          np.array([float(np.sum(w * np.abs(ell)**k)) for k in (1, 2, 3, 4)]),
      )
    self.cumulants_u, self.raw_u, self.abs_u = out['u']
    self.cumulants_v, self.raw_v, self.abs_v = out['v']


def _tail_edgeworth(x, cumulants: np.ndarray, order: int):
  """1 - F(x) for the Edgeworth expansion of the given order."""
  k1, k2, k3, k4, k5 = cumulants
  if not k2 > 1e-300:  # degenerate: a point mass at k1
    return np.where(np.asarray(x, dtype=np.float64) < k1, 1.0, 0.0)
  s = math.sqrt(k2)
  z = (np.asarray(x, dtype=np.float64) - k1) / s
  g1, g2, g3 = k3 / s**3, k4 / s**4, k5 / s**5
  e = -(g1 / 6) * (z**2 - 1)
  if order >= 2:
    e = e - (g2 / 24) * (z**3 - 3 * z) - (g1**2 / 72) * (
        z**5 - 10 * z**3 + 15 * z)
  if order >= 3:
    e = e - (g3 / 120) * (z**4 - 6 * z**2 + 3) - (g1 * g2 / 144) * (
        z**6 - 15 * z**4 + 45 * z**2 - 15) - (g1**3 / 1296) * (
            z**8 - 28 * z**6 + 210 * z**4 - 420 * z**2 + 105)
  return special.ndtr(-z) - e * np.exp(_log_npdf(z))


# --- finite-sample error bound (port of the reference utils.py) -------------

def _phi_t_i(t):
  return 0.5 * (1 - abs(t) + 0.54831 * t**2)


def _omega1(T, lambda3, n):
  const = abs(lambda3) / n**0.5 / 6
  f1 = lambda tt: 1 + const * tt**3
  quad1 = lambda t: _phi_t_i(t) * math.exp(-(T * t)**2 / 2) * f1(T * t)
  quad2 = lambda t: math.exp(-(T * t)**2 / 2) / t * f1(T * t)
  t0 = 1 / math.pi
  s1 = integrate.quad(quad1, 0, t0, epsabs=1e-8, epsrel=1e-8, limit=50)[0]
  s2 = integrate.quad(quad2, t0, np.inf, epsabs=1e-8, epsrel=1e-8,
                      limit=50)[0]
  return s1 * 2 + s2 / math.pi


def _omega2(T):
  return 67.0415 / T**4 + 1.2187 / T**2


def _p1n(eps):
  return (144 + 48 * eps + 4 * eps**2 + (96 * (2 * eps)**0.5 + 32 * eps +
                                         16 * 2**0.5 * eps**1.5)) / 576


def _e1(eps):
  return math.exp(eps**2 * (1 / 6 + 2 * _p1n(eps) / (1 - 3 * eps)**2))


def _u11n(t, k4dn):
  return t**6 / 24 * k4dn**1.5 + t**8 / 576 * k4dn**2


def _u12n(t, k4dn):
  return t**5 / 6 * k4dn**1.25 + t**6 / 36 * k4dn**1.5 + t**7 / 72 * k4dn**1.75


def _r1n(t, eps, lambda3, K4, n):
  temp = 1 / (1 - 3 * eps)**2
  return ((_u11n(t, K4 / n) + _u12n(t, K4 / n)) / 2 * temp + _e1(eps) * (
      t**8 * K4**2 / 2 / n**2 * (1 / 24 + _p1n(eps) / 2 * temp)**2 +
      t**7 * abs(lambda3) * K4 / 6 / n**1.5 * (1 / 24 + _p1n(eps) / 2 * temp)))


def _j1(p, l, m):
  f = lambda u: u**(p - 1) * math.exp(-u**2 / 2)
  return 0.16318 * integrate.quad(f, l, m, epsabs=1e-8, epsrel=1e-8,
                                  limit=50)[0]


def _j2(p, l, m, K3_, K4, T, n):
  f = lambda u: (0.16318 / abs(u / T)) * u**p * math.exp(
      -u**2 / 2 * (1 - 0.198324 * abs(u) * K3_ / n**0.5 - (K4 / n)**0.5))
  return 1 / T * integrate.quad(f, l, m, epsabs=1e-8, epsrel=1e-8,
                                limit=50)[0]


def _omega3(T, lambda3, K3, K3_, K4, n, eps=0.1):
  m = (2 * eps)**0.5 * (n / K4)**0.25
  f = lambda u: u * math.exp(-u**2 / 2) * _r1n(u, eps, lambda3, K4, n)
  i31 = (0.327 * K4 / n * (1 / 12 + 1 / 4 / (1 - 3 * eps)**2) +
         0.036278 * _e1(eps) * lambda3**2 / n +
         0.32636 * integrate.quad(f, 0, m, epsabs=1e-8, epsrel=1e-8,
                                  limit=50)[0])
  i32 = K3 / 3 / n**0.5 * _j2(3, m, T / math.pi, K3_, K4, T, n)
  i33 = lambda3 / 3 / n**0.5 * _j1(3, m, T / math.pi)
  return i31 + i32 + i33


def edgeworth_error_bound(raw: np.ndarray, absolute: np.ndarray,
                          n: int) -> float:
  """Uniform bound on |F_n - Edgeworth_1| for a sum of n i.i.d. copies.

  Args:
    raw: raw moments E[L^k], k = 1..4, of one copy.
    absolute: absolute moments E|L|^k, k = 1..4.
    n: number of copies.
  """
  bn = raw[1]**0.5
  lambda3 = raw[2] / bn**3
  K3, K4 = absolute[2] / bn**3, absolute[3] / bn**4
  K3_ = K3 + absolute[0] / bn
  T = 2 * math.pi * n**0.5 / K3_
  with np.errstate(all='ignore'):
    return float(_omega1(T, lambda3, n) + _omega2(T) +
                 _omega3(T, lambda3, K3, K3_, K4, n))


# --- accountant ---------------------------------------------------------------

class EdgeworthAccountant:
  """Edgeworth accountant: an estimate of epsilon, NOT an upper bound.

  Formal guarantees:
    None. `epsilon()`/`delta()` return the Edgeworth point estimate, which
    may understate the true epsilon (see module docstring). Report it beside
    an upper bound (the privacy report does). `error_bounds()` gives the
    reference finite-sample bound for one phase of identical steps and says
    when it is vacuous.

  Args:
    order: expansion order, 1 (EW-Tune's choice), 2 or 3.
    directions: 'both' (default: the larger of the remove and add
      directions under add/remove) or 'remove' (the reference code, EW-Tune).
    eps_max: upper end of the bracket searched for epsilon.
  """

  name = 'edgeworth'
  is_upper_bound = False

  def __init__(self, order: int = 1, directions: str = 'remove',
               eps_max: float = 200.0):
    if order not in (1, 2, 3):
      raise ValueError(f'order must be 1, 2 or 3, got {order!r}.')
    if directions not in ('both', 'remove'):
      raise ValueError("directions must be 'both' or 'remove', got "
                       f'{directions!r}.')
    self.order = order
    self.directions = directions
    self.eps_max = float(eps_max)
    self._moments: dict[tuple, StepMoments] = {}
    self.last_bound: dict | None = None

  def step_moments(self, q: float, sigma: float, direction: str
                   ) -> StepMoments:
    key = (q, sigma, direction)
    if key not in self._moments:
      self._moments[key] = StepMoments(q, sigma, direction)
    return self._moments[key]

  def _dirs(self, neighbouring: str) -> tuple[str, ...]:
    if neighbouring == 'replace_one':
      return ('replace',)
    if neighbouring != 'add_remove':
      raise ValueError(f'neighbouring must be one of '
                       f'{ledger_lib.NEIGHBOURING}, got {neighbouring!r}.')
    return ('remove',) if self.directions == 'remove' else ('remove', 'add')

  def _cumulants(self, phases, direction):
    ku = np.zeros(5)
    kv = np.zeros(5)
    for p in phases:
      if p.count == 0:
        continue
      m = self.step_moments(p.q, p.sigma, direction)
      ku += p.count * m.cumulants_u
      kv += p.count * m.cumulants_v
    return ku, kv

  def _delta_fn(self, ku, kv):
    def delta_hat(eps):
      eps = np.asarray(eps, dtype=np.float64)
      return (_tail_edgeworth(eps, ku, self.order) -
              np.exp(eps) * _tail_edgeworth(eps, kv, self.order))
    return delta_hat

  def _solve(self, delta_hat, delta: float) -> float:
    """Largest root of delta_hat(eps) = delta in [0, eps_max] (then up to
    700, where e^eps overflows); inf if delta_hat stays above delta."""
    for top in sorted({self.eps_max, 700.0}):
      grid = np.linspace(0.0, top, 4001)
      with np.errstate(over='ignore', invalid='ignore'):
        vals = delta_hat(grid) - delta
      vals = np.where(np.isnan(vals), np.inf, vals)
      above = np.nonzero(vals > 0)[0]
      if above.size == 0:
        return 0.0
      i = int(above[-1])
      if i < len(grid) - 1:
        f = lambda e: float(delta_hat(e)) - delta
        return float(optimize.brentq(f, grid[i], grid[i + 1], xtol=1e-12,
                                     rtol=1e-14))
    return math.inf

  def epsilon(self, phases: Sequence[Phase], delta: float,
              neighbouring: str = 'add_remove') -> float:
    rdp_lib._check_delta(delta)  # pylint: disable=protected-access
    phases = rdp_lib._as_phases(phases)  # pylint: disable=protected-access
    if ledger_lib.has_noiseless_step(phases):
      return math.inf
    if not any(p.count > 0 for p in phases):
      return 0.0
    return max(self._solve(self._delta_fn(*self._cumulants(phases, d)), delta)
               for d in self._dirs(neighbouring))

  def delta(self, phases: Sequence[Phase], epsilon: float,
            neighbouring: str = 'add_remove') -> float:
    if not epsilon >= 0:
      raise ValueError(f'epsilon must be >= 0, got {epsilon!r}.')
    phases = rdp_lib._as_phases(phases)  # pylint: disable=protected-access
    if ledger_lib.has_noiseless_step(phases):
      return 1.0
    if not any(p.count > 0 for p in phases):
      return 0.0
    d = max(float(self._delta_fn(*self._cumulants(phases, dd))(epsilon))
            for dd in self._dirs(neighbouring))
    return min(1.0, max(0.0, d))

  def error_bounds(self, phases: Sequence[Phase], delta: float,
                   neighbouring: str = 'add_remove') -> dict:
    """Finite-sample eps bounds from the reference error bound (order 1).

    Only for one phase of identical steps (the bound is for i.i.d. sums).
    Returns a dict with 'e_u', 'e_v' (uniform CDF error bounds),
    'eps_lower', 'eps_upper' and 'vacuous' (True when no finite eps makes the
    upper delta bound reach `delta`).
    """
    rdp_lib._check_delta(delta)  # pylint: disable=protected-access
    phases = [p for p in rdp_lib._as_phases(phases)  # pylint: disable=protected-access
              if p.count > 0]
    if len(phases) != 1 or phases[0].sigma == 0:
      out = {'available': False,
             'reason': 'the finite-sample bound is implemented for one phase '
                       'of identical steps with sigma > 0'}
      self.last_bound = out
      return out
    p = phases[0]
    result = {'available': True, 'vacuous': False, 'e_u': 0.0, 'e_v': 0.0,
              'eps_lower': 0.0, 'eps_upper': 0.0}
    for d in self._dirs(neighbouring):
      m = self.step_moments(p.q, p.sigma, d)
      e_u = edgeworth_error_bound(m.raw_u, m.abs_u, p.count)
      e_v = edgeworth_error_bound(m.raw_v, m.abs_v, p.count)
      ku, kv = self._cumulants(phases, d)
      dh = self._delta_fn(ku, kv)
      upper = lambda e, dh=dh, e_u=e_u, e_v=e_v: (
          dh(e) + e_u + np.exp(e) * e_v)
      lower = lambda e, dh=dh, e_u=e_u, e_v=e_v: (
          dh(e) - e_u - np.exp(e) * e_v)
      grid = np.linspace(0.0, self.eps_max, 4001)
      with np.errstate(over='ignore', invalid='ignore'):
        ok_up = np.nonzero(upper(grid) <= delta)[0]
      if e_u >= delta or ok_up.size == 0:
        result['vacuous'] = True
        eps_up = math.inf
      else:
        eps_up = self._solve(upper, delta)
      eps_lo = self._solve(lower, delta)
      result['e_u'] = max(result['e_u'], e_u)
      result['e_v'] = max(result['e_v'], e_v)
      result['eps_upper'] = max(result['eps_upper'], eps_up)
      result['eps_lower'] = max(result['eps_lower'], eps_lo)
    if result['vacuous']:
      result['message'] = (
          'vacuous: the uniform Edgeworth error bounds '
          f"(e_U={result['e_u']:.3g}"
          f", e_V={result['e_v']:.3g}) exceed delta={delta:g}, so no finite "
          'epsilon is certified.')
    self.last_bound = result
    return result

  def describe(self) -> dict:
    d = {
        'accountant': self.name,
        'kind': 'estimate',
        'method': 'Edgeworth expansion of the composed privacy loss '
                  '(cumulants by quadrature); an estimate, not a bound',
        'expansion_order': self.order,
        'directions': self.directions,
    }
    if self.last_bound is not None:
      d['error_bound'] = (self.last_bound.get('message') or
                          self.last_bound.get('reason') or
                          f"eps in [{self.last_bound['eps_lower']:.4g}, "
                          f"{self.last_bound['eps_upper']:.4g}]")
    return d

