"""Accounting for the LMO-DP noise mechanism (Yang et al. 2024, arXiv 2405.18776).

The LMO mechanism adds to every coordinate of a sum Laplace noise whose
inverse scale is itself random and drawn independently per coordinate:

  eps' = a1 * Gamma(k, theta) + a3 * Exponential(rate lam) + a4 * U[u_a, u_b],
  noise = Laplace(0, b = 1 / eps')                  (density eps'/2 e^{-eps'|x|}).

`dpjax.lmo_noise` multiplies that draw by the declared L1 sensitivity of the
sum, so the accounting here is always for a sum whose L1 sensitivity is
`l1_sensitivity` (default 1) in units of the noise scale.

Two accountings live here, deliberately named apart:

* The paper/artifact pipeline (functions with `paper_faithful_not_private` in
  their names), for reproducing the published numbers only (ALGORITHMS.md
  §5.2, §5.4, §5.5): the MGF-based RDP evaluated at integer orders 2..128
  without checking that the MGF exists there (§5.9a), then the "overall eps"
  of a Gaussian mechanism with the same single-step (eps0, delta), subsampled
  and composed. None of its numbers is a privacy guarantee for LMO noise.
* The sound accounting (`rdp_lmo`, `subsampled_rdp`, `epsilon_sound`, ...),
  the default everywhere in dpjax.

Formal guarantees (sound accounting only):
  Setting. One step releases S + N where S is a sum over a batch and N has
  independent coordinates N_j = Delta * Laplace(0, 1/eps'_j), eps'_j i.i.d. as
  above and hidden. `l1_sensitivity` r is sup ||S(D) - S(D')||_1 / Delta over
  neighbouring D, D' (add/remove one record for Poisson sampling; for
  replace-one pass twice the add/remove value). L2 clipping to C does NOT give
  r = C/Delta: it gives r = C * sqrt(d) / Delta for d noised coordinates
  (`l1_sensitivity_of_l2_clip`); clipping each example in L1 to C1 gives
  r = C1 / Delta. The paper assumed r = 1 after L2 clipping (§5.9c).

  1. MGF-RDP bound (`rdp_lmo`): for every real order alpha with
     r (alpha - 1) < t_max = min(1 / (a1 theta), lam / a3), the unsampled
     step is (alpha, R(alpha))-RDP with
       R(alpha) = log[(alpha M(r(alpha-1)) + (alpha-1) M(-r alpha)) / (2alpha-1)]
                  / (alpha - 1),
     M the MGF of eps'. Proof: the Laplace mechanism with parameter e and
     shift s has exp((alpha-1) D_alpha) = [alpha e^{(alpha-1)es} +
     (alpha-1) e^{-alpha es}] / (2alpha-1) (Mironov 2017); the map
     (P, Q) -> int P^alpha Q^{1-alpha} is jointly convex, so hiding eps' can
     only lower it (average over eps'); per coordinate g(s) = log E[...] is
     convex in s with g(0) = g'(0) = 0, hence superadditive and increasing, so
     over ||v||_1 <= r the sum over coordinates is largest with all of r on
     one coordinate. Outside the MGF domain no finite value is claimed (inf).
  2. Pure-DP bound (`pure_dp_epsilon`): the step is eps_pure-DP (both
     directions, every pair at L1 distance <= r) with
       eps_pure = r * E[eps'^2] / E[eps'],
     or, for `dim` = d coordinates, d * f(r / d) <= that, where
     f(s) = log(E[eps'] / E[eps' e^{-s eps'}]) is the exact pure-DP level of
     one coordinate shifted by s (the likelihood ratio of the mixture density
     p(x) = E[eps' e^{-eps'|x|}] / 2 peaks at x = 0). f is concave with
     f(0) = 0 (minus a log-Laplace transform), so spreading the shift evenly
     is the worst case and f(s) <= s f'(0) = s E[eps'^2] / E[eps'].
     Pure DP gives RDP through the tight randomized-response bound
     (Steinke 2024, "Sharp RDP & zCDP from pure DP").
  3. Poisson subsampling at rate q (add/remove): the RDP of the subsampled
     step is bounded by the general bound of Zhu & Wang (ICML 2019, Thm 6;
     term by term the larger of the paper's and autodp's forms, `_zhu_wang`)
     applied to the smaller of bounds 1 and 2, at integer orders (and at ceil(alpha) for
     fractional alpha, since Renyi divergences grow with the order), by the
     unsampled RDP, and by the RR bound of the amplified pure-DP level
     log(1 + q (e^{eps_pure} - 1)). The smallest of these is used.
  4. Composition: RDP adds over steps (phases of `LMOPhase`), converted to
     (eps, delta) with Balle et al. 2020 / Canonne-Kamath-Steinke 2020 on the
     order grid used (recorded in the result); pure DP also composes
     additively and the smaller eps is reported.
  The result of `epsilon_sound` is an upper bound on eps at the given delta
  for the mechanism that ran, provided that the L1 sensitivity and the
  Poisson sampling rate that were passed are true of the code that ran, and
  the noise was drawn as above (Exponential with RATE lam: the artifact drew
  it with scale lam, §5.9b). Floating-point sampling artefacts are not
  modelled. `monte_carlo_epsilon_lower` gives a statistical lower estimate of
  the true eps for one neighbouring pair; the tests check that the bound
  never falls below it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
from scipy import special

from dpjax.accounting import rdp as rdp_lib

ARTIFACT_DELTA = 1e-10
# Integer orders at which the artifact evaluates the LMO RDP (§5.2).
ARTIFACT_ORDERS = tuple(float(a) for a in range(2, 129))
# private-transformers order grid (§1.2); the grid of §5.9a's corrected values.
PT_ORDERS = tuple([1 + x / 10.0 for x in range(1, 100)] +
                  [float(a) for a in range(12, 128)])
# The orders of the artifact's overall-eps computation (§5.5): the
# private-transformers grid extended to 128; reproduces §5.5's table.
ARTIFACT_OVERALL_ORDERS = PT_ORDERS + (128.0,)
USEFULNESS_GAMMA = 0.9


@dataclasses.dataclass(frozen=True)
class LMOParams:
  """Parameters of the LMO noise (inverse Laplace scale eps').

  eps' = a1 * Gamma(shape k, scale theta) + a3 * Exponential(rate lam)
         + a4 * Uniform[u_a, u_b].
  """
  a1: float
  k: float
  theta: float
  a3: float
  lam: float
  a4: float
  u_a: float
  u_b: float

  def __post_init__(self):
    for name in ('a1', 'a3', 'a4', 'u_a'):
      v = getattr(self, name)
      if not (math.isfinite(v) and v >= 0):
        raise ValueError(f'{name} must be a finite number >= 0, got {v!r}.')
    for name in ('k', 'theta', 'lam'):
      v = getattr(self, name)
      if not (math.isfinite(v) and v > 0):
        raise ValueError(f'{name} must be a finite number > 0, got {v!r}.')
    if not (math.isfinite(self.u_b) and self.u_b >= self.u_a):
      raise ValueError(f'u_b must be finite and >= u_a={self.u_a}, '
                       f'got {self.u_b!r}.')
    if self.mean <= 0:
      raise ValueError('The LMO inverse scale eps\' must have a positive mean: '
                       'set at least one of a1, a3, a4 (with u_b > 0) > 0.')

  # -- moments of eps' ----------------------------------------------------------
  @property
  def mean(self) -> float:
    return (self.a1 * self.k * self.theta + self.a3 / self.lam +
            self.a4 * 0.5 * (self.u_a + self.u_b))

  @property
  def variance(self) -> float:
    return (self.a1**2 * self.k * self.theta**2 + self.a3**2 / self.lam**2 +
            self.a4**2 * (self.u_b - self.u_a)**2 / 12.0)

  @property
  def mgf_bound(self) -> float:
    """t_max: the MGF E[exp(t eps')] is finite exactly for t < t_max."""
    b = math.inf
    if self.a1 > 0:
      b = min(b, 1.0 / (self.a1 * self.theta))
    if self.a3 > 0:
      b = min(b, self.lam / self.a3)
    return b

  def scaled(self, r: float) -> 'LMOParams':
    """The same mechanism at relative L1 sensitivity r (eps' -> r eps')."""
    return dataclasses.replace(self, a1=self.a1 * r, a3=self.a3 * r,
                               a4=self.a4 * r)

  def log_mgf(self, t) -> np.ndarray:
    """log E[exp(t eps')]; +inf where t >= mgf_bound."""
    return log_mgf_arrays(self.a1, self.k, self.theta, self.a3, self.lam,
                          self.a4, self.u_a, self.u_b, t)

  def mgf(self, t) -> np.ndarray:
    return np.exp(self.log_mgf(t))

  def usefulness(self, gamma: float = USEFULNESS_GAMMA) -> float:
    """P(|noise| <= gamma) at unit scale = 1 - M(-gamma) (R2DP's objective)."""
    return float(1.0 - self.mgf(-gamma))

  def to_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'LMOParams':
    return cls(**{f.name: float(d[f.name]) for f in dataclasses.fields(cls)})


def log_mgf_arrays(a1, k, theta, a3, lam, a4, u_a, u_b, t) -> np.ndarray:
  """log E[exp(t eps')] for broadcastable arrays of parameters; +inf outside
  the domain t < min(1/(a1 theta), lam/a3). Zero weights drop a component."""
  a1, k, theta, a3, lam, a4, u_a, u_b, t = (
      np.asarray(v, dtype=np.float64)
      for v in (a1, k, theta, a3, lam, a4, u_a, u_b, t))
  with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
    x = a1 * theta * t
    g = np.where(x < 1, -k * np.log1p(-np.minimum(x, 1)), np.inf)
    g = np.where(a1 > 0, g, 0.0)
    y = a3 * t
    e = np.where(y < lam, np.log(lam) - np.log(np.maximum(lam - y, 1e-300)),
                 np.inf)
    e = np.where(a3 > 0, e, 0.0)
    u = np.where(a4 > 0, a4 * u_a * t + _log_expm1_ratio(a4 * (u_b - u_a) * t),
                 0.0)
  return g + e + u


def _log_expm1_ratio(x: np.ndarray) -> np.ndarray:
  """log((e^x - 1) / x), stable, 0 at x = 0."""
  x = np.asarray(x, dtype=np.float64)
  ax = np.abs(x)
  safe = np.where(ax > 0, ax, 1.0)
  # For x > 0: x + log(1 - e^{-x}) - log x; for x < 0: log(1 - e^{x}) - log(-x).
  pos = x + np.log(-np.expm1(-safe)) - np.log(safe)
  neg = np.log(-np.expm1(-safe)) - np.log(safe)
  small = x / 2 + x * x / 24  # series for |x| < 1e-6
  return np.where(ax < 1e-6, small, np.where(x > 0, pos, neg))


# The artifact's parameter files ("task1"/"task2", identical), keyed by the
# per-step eps0 they were chosen for (ALGORITHMS.md §5.4).
ARTIFACT_PARAMS: dict[float, LMOParams] = {
    0.3: LMOParams(a1=0.1, k=1, theta=0.5, a3=0.1, lam=5, a4=0.1, u_a=1, u_b=2),
    0.7: LMOParams(a1=0.1, k=1, theta=0.5, a3=0.1, lam=5, a4=0.1, u_a=5, u_b=6),
    2.0: LMOParams(a1=0.1, k=2, theta=1, a3=0.1, lam=5, a4=0.2, u_a=7, u_b=8),
    3.0: LMOParams(a1=0.1, k=2, theta=1, a3=0.1, lam=5, a4=0.9, u_a=2, u_b=3),
}


# ------------------------------------------------------------------------------
# Conversions.
# ------------------------------------------------------------------------------
def rdp_to_epsilon(rdp, orders, delta: float) -> tuple[float, float]:
  """Balle et al. 2020 / CKS 2020 conversion; returns (eps, best order)."""
  if not 0 < delta < 1:
    raise ValueError(f'delta must be in (0, 1), got {delta!r}.')
  rdp = np.asarray(rdp, dtype=np.float64)
  orders = np.asarray(orders, dtype=np.float64)
  if rdp.shape != orders.shape:
    raise ValueError('rdp and orders must have the same shape.')
  with np.errstate(invalid='ignore', divide='ignore', over='ignore'):
    eps = (rdp + np.log1p(-1.0 / orders) -
           (math.log(delta) + np.log(orders)) / (orders - 1))
    zero = (delta**2 + np.expm1(-rdp)) >= 0
  eps = np.where(zero & np.isfinite(rdp), 0.0, eps)
  eps = np.where((orders <= 1.01) | ~np.isfinite(rdp) | np.isnan(eps),
                 np.inf, eps)
  i = int(np.argmin(eps))
  return float(max(eps[i], 0.0)), float(orders[i])


def rdp_from_pure_dp(eps: float, orders) -> np.ndarray:
  """Tight RDP of an eps-DP mechanism (randomized response is the worst)."""
  a = np.asarray(orders, dtype=np.float64)
  if eps == 0:
    return np.zeros_like(a)
  if not math.isfinite(eps):
    return np.full_like(a, np.inf)
  return eps - (np.log1p(math.exp(-eps)) -
                np.log1p(np.exp(-(2 * a - 1) * eps))) / (a - 1)


def amplified_pure_dp(eps: float, q: float) -> float:
  """log(1 + q (e^eps - 1)): eps-DP under Poisson sampling at rate q."""
  if q == 1:
    return float(eps)
  return float(np.logaddexp(math.log1p(-q), math.log(q) + eps))


def l1_sensitivity_of_l2_clip(clip: float, dim: int) -> float:
  """L1 sensitivity C sqrt(d) of a sum of d-dim vectors clipped in L2 to C."""
  if not clip > 0:
    raise ValueError(f'clip must be > 0, got {clip!r}.')
  if not (isinstance(dim, (int, np.integer)) and dim >= 1):
    raise ValueError(f'dim must be an integer >= 1, got {dim!r}.')
  return float(clip) * math.sqrt(int(dim))


# ------------------------------------------------------------------------------
# Sound accounting.
# ------------------------------------------------------------------------------
def _check_sensitivity(l1_sensitivity: float) -> float:
  if not (math.isfinite(l1_sensitivity) and l1_sensitivity > 0):
    raise ValueError('l1_sensitivity must be a finite number > 0 (the L1 '
                     'sensitivity of the noised sum in units of the noise '
                     f'scale), got {l1_sensitivity!r}.')
  return float(l1_sensitivity)


def rdp_lmo(params: LMOParams, orders=PT_ORDERS, *,
            l1_sensitivity: float = 1.0) -> np.ndarray:
  """MGF-based RDP of one unsampled step, inf outside the MGF's domain.

  Guarantee 1 of the module docstring. This is the formula of §5.2 evaluated
  only where it is valid (the correction of §5.9a).
  """
  p = params.scaled(_check_sensitivity(l1_sensitivity))
  a = np.asarray(orders, dtype=np.float64)
  if np.any(a <= 1):
    raise ValueError('orders must all be > 1.')
  valid = (a - 1) < p.mgf_bound
  with np.errstate(over='ignore', invalid='ignore'):
    lpos = np.log(a) + p.log_mgf(np.where(valid, a - 1, 0.0))
    lneg = np.log(a - 1) + p.log_mgf(-a)
    val = (np.logaddexp(lpos, lneg) - np.log(2 * a - 1)) / (a - 1)
  return np.where(valid & np.isfinite(val), np.maximum(val, 0.0), np.inf)


def pure_dp_epsilon_one_coordinate(params: LMOParams, shift: float) -> float:
  """Exact pure-DP level log(E[eps'] / E[eps' e^{-s eps'}]) of one coordinate."""
  s = float(shift)
  return float(math.log(params.mean) - _log_mean_tilted(params, s))


def _log_mean_tilted(params: LMOParams, s: float) -> float:
  """log E[eps' e^{-s eps'}] (= log M'(-s)), s >= 0, closed form."""
  return float(params.log_mgf(-s) + math.log(_tilted_mean(params, s)))


def _tilted_mean(params: LMOParams, s) -> np.ndarray:
  """E[eps' e^{-s eps'}] / E[e^{-s eps'}] for s >= 0 (closed form)."""
  s = np.asarray(s, dtype=np.float64)
  p = params
  m = np.zeros_like(s)
  if p.a1 > 0:
    m = m + p.k * p.a1 * p.theta / (1 + p.a1 * p.theta * s)
  if p.a3 > 0:
    m = m + p.a3 / (p.lam + p.a3 * s)
  if p.a4 > 0:
    a, w = p.a4 * p.u_a, p.a4 * (p.u_b - p.u_a)
    sw = s * w
    with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
      # Mean of an exponentially tilted U[a, a + w]: a + 1/s - w / expm1(s w).
      exact = a + 1 / s - w / np.expm1(sw)
    m = m + np.where(sw > 1e-4, exact, a + w / 2 - s * w * w / 12)
  return m


def pure_dp_epsilon(params: LMOParams, *, l1_sensitivity: float = 1.0,
                    dim: int | None = None) -> float:
  """Pure-DP level of one unsampled step (guarantee 2 of the docstring)."""
  r = _check_sensitivity(l1_sensitivity)
  if dim is None:
    return r * (params.variance + params.mean**2) / params.mean
  if not (isinstance(dim, (int, np.integer)) and dim >= 1):
    raise ValueError(f'dim must be an integer >= 1 or None, got {dim!r}.')
  return int(dim) * pure_dp_epsilon_one_coordinate(params, r / int(dim))


def base_rdp(params: LMOParams, orders=PT_ORDERS, *, l1_sensitivity=1.0,
             dim: int | None = None) -> np.ndarray:
  """Best sound RDP of one unsampled step: min(MGF-RDP, RR(pure DP))."""
  return np.minimum(
      rdp_lmo(params, orders, l1_sensitivity=l1_sensitivity),
      rdp_from_pure_dp(pure_dp_epsilon(params, l1_sensitivity=l1_sensitivity,
                                       dim=dim), orders))


def _zhu_wang(base_int: np.ndarray, q: float, alpha: int) -> float:
  """General Poisson-subsampled RDP bound at integer `alpha` (Zhu & Wang 2019).

  base_int[j] is the base mechanism's RDP at order j (j >= 2); entries up to
  alpha + 1 are read. The paper's general bound (Thm 6) is

    log[(1-q)^{a-1}(1 + (a-1)q) + C(a,2) q^2 (1-q)^{a-2} e^{eps(2)}
        + sum_{l>=3} C(a,l) q^l (1-q)^{a-l} * 3 e^{(l-1) eps(l)}] / (a-1).

  The general-bound code of autodp (the authors' library,
  `compose_poisson_subsampled_mechanisms1`) uses e^{l eps(l+1)} instead of
  3 e^{(l-1) eps(l)} for l >= 3. Without the paper's proof at hand offline we
  take, term by term, the larger of the two, which is at least each of the
  two published forms and hence a valid bound if either is.
  """
  if not np.all(np.isfinite(base_int[2:alpha + 1])):
    return math.inf
  l1q, lq = math.log1p(-q), math.log(q)
  terms = [(alpha - 1) * l1q + math.log1p((alpha - 1) * q)]
  ls = np.arange(2, alpha + 1)
  logc = (special.gammaln(alpha + 1) - special.gammaln(ls + 1) -
          special.gammaln(alpha - ls + 1))
  moment = (ls - 1) * base_int[ls]
  if alpha >= 3:
    nxt = base_int[ls[1:] + 1] if len(base_int) > alpha + 1 else np.full(
        len(ls) - 1, np.inf)
    with np.errstate(invalid='ignore'):
      alt = np.where(np.isfinite(nxt), ls[1:] * nxt, np.inf)
    moment = moment.astype(np.float64)
    moment[1:] = np.maximum(moment[1:] + math.log(3.0), alt)
  t = logc + ls * lq + (alpha - ls) * l1q + moment
  return float(special.logsumexp(np.concatenate([terms, t])) / (alpha - 1))


def subsampled_rdp(params: LMOParams, q: float, orders=PT_ORDERS, *,
                   l1_sensitivity: float = 1.0,
                   dim: int | None = None) -> np.ndarray:
  """Sound RDP of one Poisson-subsampled step (guarantee 3), add/remove."""
  if not (isinstance(q, (int, float)) and 0 < q <= 1):
    raise ValueError(f'q (sampling rate) must be in (0, 1], got {q!r}.')
  a = np.asarray(orders, dtype=np.float64)
  base = base_rdp(params, a, l1_sensitivity=l1_sensitivity, dim=dim)
  if q == 1:
    return base
  eps_pure = pure_dp_epsilon(params, l1_sensitivity=l1_sensitivity, dim=dim)
  eps_q = amplified_pure_dp(eps_pure, q)
  best = np.minimum(base, rdp_from_pure_dp(eps_q, a))
  amax = int(math.ceil(a.max())) + 1   # _zhu_wang reads order alpha + 1
  ints = np.arange(0, amax + 1, dtype=np.float64)
  base_int = np.full(amax + 1, np.inf)
  base_int[2:] = base_rdp(params, ints[2:], l1_sensitivity=l1_sensitivity,
                          dim=dim)
  zw_cache: dict[int, float] = {}
  out = np.empty_like(a)
  for i, alpha in enumerate(a):
    n = max(2, int(math.ceil(alpha - 1e-12)))
    if n not in zw_cache:
      zw_cache[n] = _zhu_wang(base_int, q, n)
    out[i] = min(best[i], zw_cache[n])
  return out


@dataclasses.dataclass(frozen=True)
class LMOPhase:
  """`count` identical Poisson-subsampled LMO steps.

  Attributes:
    params: the LMO noise parameters.
    q: Poisson sampling rate (1.0: no subsampling).
    count: number of steps.
    l1_sensitivity: L1 sensitivity of the noised sum in units of the noise
      scale (1.0 when `dpjax.lmo_noise` was given the true L1 sensitivity).
  """
  params: LMOParams
  q: float
  count: int = 1
  l1_sensitivity: float = 1.0

  def __post_init__(self):
    if not isinstance(self.params, LMOParams):
      raise ValueError('params must be an LMOParams.')
    if not (isinstance(self.q, (int, float)) and 0 < self.q <= 1):
      raise ValueError(f'q (sampling rate) must be in (0, 1], got {self.q!r}.')
    if not (isinstance(self.count, int) and self.count >= 0):
      raise ValueError(f'count must be an integer >= 0, got {self.count!r}.')
    _check_sensitivity(self.l1_sensitivity)

  def to_dict(self) -> dict[str, Any]:
    return {'params': self.params.to_dict(), 'q': self.q, 'count': self.count,
            'l1_sensitivity': self.l1_sensitivity}


def rdp_sound(phases: Sequence[LMOPhase], orders=PT_ORDERS) -> np.ndarray:
  """Composed sound RDP curve over `orders`."""
  a = np.asarray(orders, dtype=np.float64)
  total = np.zeros_like(a)
  for ph in phases:
    if ph.count:
      total = total + ph.count * subsampled_rdp(
          ph.params, float(ph.q), a, l1_sensitivity=ph.l1_sensitivity)
  return total


def epsilon_sound(phases: Sequence[LMOPhase], delta: float,
                  orders=PT_ORDERS) -> float:
  """Upper bound on eps at `delta` for the composed phases (the default)."""
  return epsilon_sound_details(phases, delta, orders)['epsilon']


def epsilon_sound_details(phases: Sequence[LMOPhase], delta: float,
                          orders=PT_ORDERS) -> dict[str, Any]:
  """eps, the route that gave it and the order, for reports."""
  phases = list(phases)
  if not phases or sum(p.count for p in phases) == 0:
    return {'epsilon': 0.0, 'route': 'no steps', 'order': None}
  eps_rdp, order = rdp_to_epsilon(rdp_sound(phases, orders), orders, delta)
  eps_pure = 0.0
  for ph in phases:
    e = pure_dp_epsilon(ph.params, l1_sensitivity=ph.l1_sensitivity)
    eps_pure += ph.count * amplified_pure_dp(e, float(ph.q))
  if eps_pure <= eps_rdp:
    return {'epsilon': eps_pure, 'route': 'pure DP, basic composition',
            'order': None}
  return {'epsilon': eps_rdp, 'route': 'RDP', 'order': order,
          'orders': [float(orders[0]), float(orders[-1]), len(orders)]}


class LMOAccountant:
  """The sound LMO accounting behind the accountant protocol of
  `dpjax.accounting` (`epsilon(phases, delta, neighbouring)`), for ledgers of
  LMO runs.

  A ledger `Phase(q, sigma, count)` of an LMO run records sigma = (the scale
  the unit LMO noise was multiplied by) / (the add/remove L1 sensitivity of
  the noised sum), the analogue of the Gaussian noise multiplier: it is
  accounted as `LMOPhase(params, q, count, l1_sensitivity=1 / sigma)`.

  Formal guarantees: those of `epsilon_sound` (module docstring), under
  Poisson sampling and the add/remove relation; other relations raise
  NotImplementedError (no bound is claimed).
  """
  name = 'lmo_sound'
  is_upper_bound = True

  def __init__(self, params: LMOParams, orders=PT_ORDERS):
    if not isinstance(params, LMOParams):
      raise ValueError('params must be an LMOParams.')
    self.params = params
    self.orders = tuple(float(a) for a in orders)

  def lmo_phases(self, phases) -> list[LMOPhase]:
    return [LMOPhase(self.params, float(p.q), int(p.count),
                     l1_sensitivity=1.0 / float(p.sigma))
            for p in phases if p.count]

  def epsilon(self, phases, delta: float,
              neighbouring: str = 'add_remove') -> float:
    if neighbouring != 'add_remove':
      raise NotImplementedError(
          'The sound LMO accounting is proven for Poisson sampling under '
          f'add/remove only, not {neighbouring!r}.')
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
      raise ValueError(f'delta must be in (0, 1), got {delta!r}.')
    phases = [p for p in phases if p.count]
    if any(p.sigma == 0 for p in phases):
      return math.inf
    return epsilon_sound(self.lmo_phases(phases), delta, self.orders)

  def delta(self, phases, epsilon: float,
            neighbouring: str = 'add_remove') -> float:
    del phases, epsilon, neighbouring
    raise NotImplementedError('delta(epsilon) is not implemented for the '
                              'LMO accounting; use epsilon(delta).')

  def describe(self) -> dict[str, Any]:
    return {'mechanism': 'LMO (Laplace with random inverse scale)',
            'params': self.params.to_dict(),
            'conversion': 'RDP (Zhu-Wang subsampling) or pure DP, the smaller',
            'orders': [self.orders[0], self.orders[-1], len(self.orders)],
            'sigma_means': 'noise scale / L1 sensitivity'}


def epsilon_per_step_sound(params: LMOParams, delta: float = ARTIFACT_DELTA,
                           *, l1_sensitivity: float = 1.0,
                           method: str = 'best',
                           orders=PT_ORDERS) -> float:
  """Sound eps of one unsampled step at `delta`.

  Args:
    params: LMO parameters.
    delta: target delta.
    l1_sensitivity: relative L1 sensitivity (see the module docstring).
    method: 'mgf_rdp' (the MGF-RDP restricted to its domain: §5.9a's
      corrected values), 'pure' (the pure-DP bound) or 'best' (the minimum).
    orders: RDP orders.
  """
  if method not in ('best', 'mgf_rdp', 'pure'):
    raise ValueError(f"method must be 'best', 'mgf_rdp' or 'pure', "
                     f'got {method!r}.')
  e_mgf = rdp_to_epsilon(rdp_lmo(params, orders,
                                 l1_sensitivity=l1_sensitivity),
                         orders, delta)[0]
  e_pure = pure_dp_epsilon(params, l1_sensitivity=l1_sensitivity)
  e_pure_rdp = rdp_to_epsilon(rdp_from_pure_dp(e_pure, orders), orders,
                              delta)[0]
  if method == 'mgf_rdp':
    return e_mgf
  if method == 'pure':
    return min(e_pure, e_pure_rdp)
  return min(e_mgf, e_pure, e_pure_rdp)


# ------------------------------------------------------------------------------
# The artifact's pipeline (reproduction only; NOT a privacy guarantee).
# ------------------------------------------------------------------------------
def _mgf_artifact(p: LMOParams, t: np.ndarray) -> np.ndarray:
  """The artifact's MGF formula evaluated as written, at any t."""
  t = np.asarray(t, dtype=np.float64)
  with np.errstate(all='ignore'):
    g = (1 - p.a1 * p.theta * t)**(-p.k)
    e = p.lam / (p.lam - p.a3 * t)
    u = ((np.exp(p.a4 * t * p.u_b) - np.exp(p.a4 * t * p.u_a)) /
         (p.a4 * t * (p.u_b - p.u_a)))
  return g * e * u


def rdp_paper_faithful_not_private(params: LMOParams,
                                   orders=ARTIFACT_ORDERS) -> np.ndarray:
  """The artifact's `compute_privacy_lmo_alpha`: no MGF-domain check (§5.9a).

  Non-positive or non-finite values become inf, as in the artifact; past the
  MGF's domain the formula may return spurious finite values, which the
  artifact then selects. Not a privacy guarantee.
  """
  a = np.asarray(orders, dtype=np.float64)
  with np.errstate(all='ignore'):
    v = np.log((a * _mgf_artifact(params, a - 1) +
                (a - 1) * _mgf_artifact(params, -a)) / (2 * a - 1)) / (a - 1)
  return np.where(np.isfinite(v) & (v > 0), v, np.inf)


def epsilon_per_step_paper_faithful_not_private(
    params: LMOParams, delta: float = ARTIFACT_DELTA,
    orders=ARTIFACT_ORDERS) -> tuple[float, float]:
  """The artifact's per-step eps_LMO and its order (§5.4 table)."""
  return rdp_to_epsilon(rdp_paper_faithful_not_private(params, orders),
                        orders, delta)


def mgf_domain_check_paper_faithful_not_private(params: LMOParams) -> bool:
  """The artifact's validity check: the MGF formula is finite at alpha = 2."""
  v = rdp_paper_faithful_not_private(params, (2.0,))
  return bool(np.isfinite(v[0]))


def gaussian_sigma_paper_faithful(eps0: float,
                                  delta: float = ARTIFACT_DELTA) -> float:
  """sigma0 = sqrt(2 ln(1.25/delta)) / eps0 (classical Gaussian, §5.5)."""
  if not eps0 > 0:
    raise ValueError(f'eps0 must be > 0, got {eps0!r}.')
  return math.sqrt(2 * math.log(1.25 / delta)) / eps0


def epsilon_paper_faithful_not_private(eps0: float, *, q: float, steps: int,
                                       delta: float = ARTIFACT_DELTA,
                                       orders=ARTIFACT_OVERALL_ORDERS) -> float:
  """The artifact's `compute_overall_privacy` (§5.5): the subsampled Gaussian
  with the same single-step (eps0, delta) as the LMO parameters, composed.

  A heuristic equivalence, NOT a privacy guarantee for LMO noise.
  """
  sigma0 = gaussian_sigma_paper_faithful(eps0, delta)
  a = np.asarray(orders, dtype=np.float64)
  rdp = steps * rdp_lib.compute_rdp(q, sigma0, a)
  return rdp_to_epsilon(rdp, a, delta)[0]


# ------------------------------------------------------------------------------
# Exact densities and a Monte-Carlo lower estimate (for audits and tests).
# ------------------------------------------------------------------------------
def noise_density(params: LMOParams, x) -> np.ndarray:
  """Exact density of one LMO noise coordinate: E[eps' e^{-eps'|x|}] / 2."""
  s = np.abs(np.asarray(x, dtype=np.float64))
  return 0.5 * params.mgf(-s) * _tilted_mean(params, s)


def sample_noise(params: LMOParams, size, rng: np.random.Generator
                 ) -> np.ndarray:
  """NumPy reference sampler (rate-lam Exponential, as accounted)."""
  p = params
  e = (p.a1 * rng.gamma(p.k, p.theta, size) +
       p.a3 * rng.exponential(1.0 / p.lam, size) +
       p.a4 * rng.uniform(p.u_a, p.u_b, size))
  return rng.laplace(0.0, 1.0, size) / e


def monte_carlo_epsilon_lower(params: LMOParams, *, q: float, steps: int,
                              delta: float, rng: np.random.Generator,
                              l1_sensitivity: float = 1.0,
                              num_samples: int = 200_000,
                              z: float = 3.0) -> float:
  """A (high-confidence) lower estimate of the true eps at `delta`.

  Takes one neighbouring pair (the whole L1 shift on one coordinate, which
  the mechanism must protect), computes its exact per-step privacy loss from
  `noise_density`, samples the `steps`-fold composed loss in both add and
  remove directions, and returns the smallest eps at which the estimated
  hockey-stick divergence minus `z` standard errors is <= delta. The true
  eps(delta) of the mechanism is at least that of this pair.
  """
  s = _check_sensitivity(l1_sensitivity)
  n = int(num_samples)
  worst = 0.0
  for direction in ('remove', 'add'):
    total = np.zeros(n)
    for _ in range(int(steps)):
      noise = sample_noise(params, n, rng)
      included = rng.random(n) < q
      if direction == 'remove':  # P = mixture, Q = base; sample from P.
        x = noise + s * included
        lr = np.log1p(q * (noise_density(params, x - s) /
                           noise_density(params, x) - 1))
      else:  # P = base, Q = mixture; sample from P.
        x = noise
        lr = -np.log1p(q * (noise_density(params, x - s) /
                            noise_density(params, x) - 1))
      total += lr

    def lower_delta(eps, total=total):
      h = -np.expm1(np.minimum(eps - total, 0.0))
      return h.mean() - z * h.std(ddof=1) / math.sqrt(n)

    if lower_delta(0.0) <= delta:
      continue
    lo, hi = 0.0, max(1.0, float(total.max()))
    for _ in range(60):
      mid = 0.5 * (lo + hi)
      if lower_delta(mid) > delta:
        lo = mid
      else:
        hi = mid
    worst = max(worst, lo)
  return worst


# ------------------------------------------------------------------------------
# Report rows.
# ------------------------------------------------------------------------------
def lmo_report_rows(phases: Sequence[LMOPhase], delta: float, *,
                    eps0: float | None = None) -> list[dict[str, Any]]:
  """Rows in `dpjax.accounting.report`'s format: the sound bound and the
  paper-faithful figure, the latter labelled as not a guarantee.

  Args:
    phases: the run's LMO phases.
    delta: target delta.
    eps0: the per-step eps the parameters were chosen for (the artifact's
      nominal eps0); default: the artifact's per-step eps of the parameters.
  """
  phases = list(phases)
  det = epsilon_sound_details(phases, delta)
  rows = [{'accountant': 'lmo_sound', 'epsilon': det['epsilon'],
           'delta': delta, 'kind': 'upper bound',
           'details': {k: v for k, v in det.items() if k != 'epsilon'} |
                      {'neighbouring': 'add_remove',
                       'phases': [p.to_dict() for p in phases]}}]
  faithful = paper_faithful_row(phases, delta, eps0=eps0)
  return rows + ([faithful] if faithful else [])


def paper_faithful_row(phases: Sequence[LMOPhase], delta: float, *,
                       eps0: float | None = None) -> dict[str, Any] | None:
  """The paper's "overall eps" as a report row labelled not a guarantee, or
  None when the phases do not share one (params, q) (the paper's pipeline
  has no notion of a schedule). Arguments as in `lmo_report_rows`."""
  phases = [p for p in phases if p.count]
  if len({(p.params, p.q) for p in phases}) != 1:
    return None
  ph = phases[0]
  steps = sum(p.count for p in phases)
  # The artifact's per-step eps of the mechanism as it ran: at relative
  # L1 sensitivity r the mechanism equals the params scaled by r at 1.
  e0 = eps0 if eps0 is not None else (
      epsilon_per_step_paper_faithful_not_private(
          ph.params.scaled(ph.l1_sensitivity), delta)[0])
  e = epsilon_paper_faithful_not_private(e0, q=float(ph.q), steps=steps,
                                         delta=delta)
  return {'accountant': 'lmo_paper_faithful_not_private', 'epsilon': e,
          'delta': delta, 'kind': 'paper heuristic, not a guarantee',
          'details': {'eps0': e0,
                      'sigma0': gaussian_sigma_paper_faithful(e0, delta),
                      'assumes_l1_sensitivity': 1.0}}
