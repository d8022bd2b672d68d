"""Tight numerical accountant: privacy loss distributions composed by FFT.

Each distinct step (q, sigma) becomes a discretized privacy loss distribution
(PLD) on the grid {k * interval} built by the "connect-the-dots" method of
Doroshenko, Ghazi, Kamath, Kumar, Manurangsi (PETS 2022): the PLD whose
hockey-stick curve linearly interpolates (in e^eps) the exact curve delta(eps)
of the mechanism's dominating pair at the grid points. It is computed from
the exact P- and Q-masses of each loss interval (closed form: the loss is
monotone in the noise coordinate), splitting each interval's mass between its
end points, so every term is non-negative and free of cancellation. All steps
are composed at once in the Fourier domain: every phase's PLD is transformed
once and raised to the power `count`, the product is transformed back on a
window of losses chosen by a Chernoff bound, and the mass that can lie outside
the window is added to delta. A small epsilon (< 1000 intervals) is
recomputed on a 10x finer grid and the smaller bound kept.

Dominating pairs (sensitivity 1, noise N(0, sigma^2), Poisson rate q), as in
dp_accounting:
* add/remove, 'remove' direction: P = (1-q) N(0) + q N(1) vs Q = N(0);
* add/remove, 'add' direction:    P = N(0) vs Q = (1-q) N(0) + q N(1);
  delta(eps) of the composition is the larger of the two directions;
* replace-one: P = (1-q) N(0) + q N(-1) vs Q = (1-q) N(0) + q N(1) (for q = 1,
  a Gaussian with sensitivity 2).

Pure NumPy/SciPy.

Formal guarantees:
  `delta(phases, eps)` is an upper bound on the hockey-stick divergence of
  the composed mechanism, and `epsilon(phases, delta)` an upper bound on the
  smallest epsilon with (epsilon, delta)-DP, for the neighbouring relation
  given, up to float64 rounding (in particular of the FFT, whose negative
  round-off is clipped to zero): connect-the-dots interpolates a convex curve
  from above and yields a valid dominating PLD, so composition preserves the
  bound; the discretization top is mass at +inf; the composed mass above the
  window (Chernoff bound, `tail_bound`) is added to delta. Not a bound in the
  interval-arithmetic sense: the closed-form delta(eps) of one step is
  computed with SciPy's ndtr in float64. Losses above 700 nats are charged
  to +inf (only matters when epsilon is astronomically large).
"""

from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np
from scipy import fft as sp_fft
from scipy import special

from dpjax.accounting import ledger as ledger_lib
from dpjax.accounting import rdp as rdp_lib

Phase = ledger_lib.Phase

def _ndtr(x):
  return special.ndtr(x)


def _gauss_interval(lo, hi):
  """Phi(hi) - Phi(lo) for lo <= hi, from the tail where it is small."""
  with np.errstate(invalid='ignore'):
    return np.where(lo > 0, _ndtr(-lo) - _ndtr(-hi), _ndtr(hi) - _ndtr(lo))


def _pair(direction: str, q: float, sigma: float):
  """Dominating pair of one step in the noise coordinate x (noise std sigma).

  Returns (threshold, orientation, p_components, q_components): the privacy
  loss L(x) = log(dP/dQ)(x) is monotone in x, L > eps iff x > threshold(eps)
  (orientation +1) or x < threshold(eps) (orientation -1); each component
  list holds (weight, mean) of Gaussians N(mean, sigma^2).
  """
  s2 = sigma * sigma
  if direction == 'remove':
    def threshold(eps):
      with np.errstate(divide='ignore', invalid='ignore'):
        arg = np.expm1(eps) + q  # e^eps - (1 - q)
        x = s2 * (np.log(arg) - math.log(q)) + 0.5
      return np.where(arg > 0, x, -np.inf)
    comps_p = [(1 - q, 0.0), (q, 1.0)] if q < 1 else [(1.0, 1.0)]
    return threshold, 1, comps_p, [(1.0, 0.0)]
  if direction == 'add':
    def threshold(eps):
      with np.errstate(divide='ignore', invalid='ignore'):
        arg = np.expm1(-eps) + q  # e^-eps - (1 - q)
        x = s2 * (np.log(arg) - math.log(q)) + 0.5
      return np.where(arg > 0, x, -np.inf)
    comps_q = [(1 - q, 0.0), (q, 1.0)] if q < 1 else [(1.0, 1.0)]
    return threshold, -1, [(1.0, 0.0)], comps_q
  if direction == 'replace':
    if q == 1.0:
      # Gaussian with sensitivity 2: L(x) = -2x / sigma^2.
      return (lambda eps: -s2 * np.asarray(eps) / 2.0), -1, [(1.0, -1.0)], [
          (1.0, 1.0)]
    log_c = -1.0 / (2 * s2)

    def threshold(eps):
      # L > eps iff w = exp(x/sigma^2) < w_eps, the positive root of
      # q c e^eps w^2 + (1-q)(e^eps - 1) w - q c = 0, c = exp(-1/(2 sigma^2)).
      eps = np.asarray(eps, dtype=np.float64)
      with np.errstate(divide='ignore', invalid='ignore', over='ignore'):
        b = (1 - q) * np.expm1(eps)
        disc = np.sqrt(b * b + np.exp(
            math.log(4) + 2 * (math.log(q) + log_c) + eps))
        log_w = np.where(
            b >= 0, math.log(2 * q) + log_c - np.log(b + disc),
            np.log(disc - b) - (math.log(2 * q) + log_c + eps))
      return s2 * log_w
    return threshold, -1, [(1 - q, 0.0), (q, -1.0)], [(1 - q, 0.0), (q, 1.0)]
  raise ValueError(f'unknown direction {direction!r}')


def _masses(direction: str, q: float, sigma: float, eps: np.ndarray):
  """P and Q masses of {L <= eps_0}, (eps_{j-1}, eps_j] and {L > eps_m}."""
  threshold, orient, comps_p, comps_q = _pair(direction, q, sigma)
  x = threshold(eps)

  def mass(comps):
    below = 0.0
    inner = 0.0
    above = 0.0
    for w, m in comps:
      z = (x - m) / sigma
      if orient > 0:
        below = below + w * _ndtr(z[0])
        inner = inner + w * _gauss_interval(z[:-1], z[1:])
        above = above + w * _ndtr(-z[-1])
      else:
        below = below + w * _ndtr(-z[0])
        inner = inner + w * _gauss_interval(z[1:], z[:-1])
        above = above + w * _ndtr(z[-1])
    return below, inner, above

  return mass(comps_p), mass(comps_q)


def _hockey_stick(direction: str, q: float, sigma: float,
                  eps: np.ndarray) -> np.ndarray:
  """delta(eps) = P(L > eps) - e^eps Q(L > eps) of one step, elementwise."""
  threshold, orient, comps_p, comps_q = _pair(direction, q, sigma)
  x = threshold(np.asarray(eps, dtype=np.float64))

  def tail(comps):
    return sum(w * _ndtr(orient * (m - x) / sigma) for w, m in comps)

  with np.errstate(over='ignore', invalid='ignore'):
    return tail(comps_p) - np.exp(eps) * tail(comps_q)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
  # einsum, not np.dot: BLAS threads are slow on a busy machine.
  return float(np.einsum('i,i->', a, b))


class _Pmf:
  """Finite part of a discretized PLD: mass[k] at loss (offset + k) * h."""

  def __init__(self, offset: int, mass: np.ndarray, inf_mass: float, h: float):
    self.offset, self.mass, self.inf_mass, self.h = offset, mass, inf_mass, h
    losses, m = self._finite()
    self.finite_size = int(m.size)
    total = float(m.sum())
    if total > 0:
      self.mean = _dot(m, losses) / total
      self.var = _dot(m, (losses - self.mean)**2) / total
    else:  # everything at +inf
      self.mean, self.var = 0.0, 0.0
    self._spectra: dict[int, np.ndarray] = {}

  def _finite(self):
    nz = np.nonzero(self.mass)[0]
    return (self.offset + nz) * self.h, self.mass[nz]

  def log_mgf(self, t: np.ndarray) -> np.ndarray:
    """log E[e^{t L}; L finite] for each t."""
    if self.finite_size == 0:
      return np.full(len(t), -np.inf)
    losses, m = self._finite()
    out = np.empty(len(t))
    for i, ti in enumerate(t):
      e = ti * losses
      mx = float(e.max())
      # Clipping avoids slow subnormals and only overstates the MGF.
      out[i] = mx + math.log(_dot(m, np.exp(np.maximum(e - mx, -700.0))))
    return out

  def spectrum(self, n: int, keep: bool = True) -> np.ndarray:
    """rfft of the mass folded modulo n (the last one kept if `keep`)."""
    if n not in self._spectra:
      m = self.mass
      if m.size > n:
        pad = (-m.size) % n
        m = np.concatenate([m, np.zeros(pad)]).reshape(-1, n).sum(axis=0)
      spec = sp_fft.rfft(m, n)
      self._spectra.clear()
      if not keep or n > (1 << 21):  # do not keep large spectra alive
        return spec
      self._spectra[n] = spec
    return self._spectra[n]


def _power(spec: np.ndarray, c: int) -> np.ndarray:
  """spec**c, skipping the frequencies where it underflows to 0."""
  if c == 1:
    return spec
  mag = np.abs(spec)
  with np.errstate(divide='ignore'):
    keep = np.log(mag) * c > -745.0
  out = np.zeros_like(spec)
  out[keep] = np.power(spec[keep], c)
  return out


_MAX_LOSS = 700.0  # |loss| beyond this: mass to +inf (top) or to the bottom


def _loss_range(q: float, sigma: float, direction: str
                ) -> tuple[float, float]:
  """Losses outside [lo, hi] carry negligible mass (hi: delta < 1e-30).

  Whatever lies above `hi` is charged to +inf and whatever lies below `lo`
  is moved up to `lo` by connect-the-dots, both pessimistic; |loss| is
  capped at 700 nats (exp overflow), which only matters when epsilon is
  astronomically large anyway.
  """
  mu = 1.0 / sigma
  # Under P the loss is at most ~ |x| * (2/sigma^2) with |x| < 14 sigma;
  # search the grid of candidate upper ends for delta < 1e-30.
  hi_cap = min(2.0 * (14.0 * sigma + 2.0) / sigma**2 + 2.0, _MAX_LOSS)
  if direction == 'add':
    hi = -math.log1p(-q) if q < 1 else hi_cap
  else:
    cands = np.linspace(0.0, hi_cap, 4001)[1:]
    d = _hockey_stick(direction, q, sigma, cands)
    ok = np.nonzero(d < 1e-30)[0]
    hi = float(cands[ok[0]]) if ok.size else hi_cap
  if direction == 'remove':
    # Under P the loss is >= log(1-q); for q = 1 it is N(mu^2/2, mu^2).
    lo = math.log1p(-q) if q < 1 else max(-hi, mu * mu / 2 - 12.0 * mu)
  elif direction == 'replace':
    lo = -hi
  else:  # add: loss under P = N(0) unbounded below; cut where P-mass tiny
    x = 12.0 * sigma  # P(N(0, sigma^2) > 12 sigma) < 1e-32
    if q < 1:
      lo = -math.log1p(-q + q * math.exp(min((2 * x - 1) * mu * mu / 2, 700)))
    else:
      lo = -(2 * x - 1) * mu * mu / 2
    lo = max(lo, -hi_cap)
  return max(lo, -_MAX_LOSS), min(hi, _MAX_LOSS)


class _GridTooLarge(Exception):
  pass


def single_step_pmf(q: float, sigma: float, direction: str, h: float,
                    max_points: int = 1 << 22) -> _Pmf:
  """Connect-the-dots PLD of one step on the grid k * h (pessimistic).

  The P-mass of each interval (eps_{j-1}, eps_j] of the loss is split
  between its two end points so that the PLD's hockey-stick curve
  interpolates the exact one linearly in e^eps at the grid points; the mass
  above the top grid point goes to the top point (the part e^eps_m Q(L >
  eps_m)) and to +inf (the rest, which is delta(eps_m)). All terms are
  non-negative: no cancellation.
  """
  lo, hi = _loss_range(q, sigma, direction)
  if (hi - lo) / h > max_points:
    raise _GridTooLarge()
  k0 = int(math.floor(lo / h))
  k1 = int(math.ceil(hi / h))
  eps = np.arange(k0, k1 + 1) * h
  (p_below, p_in, p_above), (_, q_in, q_above) = _masses(direction, q, sigma,
                                                         eps)
  e_lo = np.exp(eps[:-1])
  with np.errstate(divide='ignore', invalid='ignore'):
    # Position of E_Q[e^L | interval] between e^{eps_{j-1}} and e^{eps_j}.
    theta = (p_in / (q_in * e_lo) - 1.0) / math.expm1(h)
  theta = np.where(q_in > 0, np.clip(theta, 0.0, 1.0), 1.0)
  lower = np.minimum(p_in, e_lo * (1 - theta) * q_in)  # to eps_{j-1}
  upper = p_in - lower                                 # to eps_j
  mass = np.zeros(eps.size)
  mass[:-1] += lower
  mass[1:] += upper
  mass[0] += p_below
  top = math.exp(eps[-1]) * q_above
  mass[-1] += min(top, p_above)
  inf_mass = max(0.0, float(p_above - top))
  return _Pmf(k0, mass, inf_mass, h)


class PldAccountant:
  """PLD accountant for (variable) Poisson-subsampled Gaussian steps.

  Formal guarantees:
    An upper bound (pessimistic connect-the-dots discretization, tails
    charged to delta), for add/remove and replace-one neighbouring, for any
    sequence of phases with their own (q, sigma). Tight to about
    `value_discretization_interval` per composed step in the worst case and
    typically far better (it matches dp_accounting's PLD accountant, which
    uses the same discretization). See the module docstring for the exact
    scope of "upper bound" (float64 arithmetic).

  Args:
    value_discretization_interval: grid step h of the privacy loss.
    tail_bound: mass allowed outside the composition window; added to delta.
    max_bins: largest FFT window; beyond it h is coarsened (still an upper
      bound) and the interval used is reported by `describe()`.
    cache_size: number of single-step PLDs kept.
    min_interval: when epsilon < 1000 h, `epsilon` retries with h / 10 (down
      to this) and keeps the smaller of the two upper bounds.
    max_distinct: more distinct (q, sigma) steps than this (e.g. a per-step
      variable-q schedule) are merged by rounding q up and sigma down onto
      geometric grids, the finest that leaves at most this many; each step
      becomes less private (the PLD is monotone in q and in 1/sigma), so the
      result is still an upper bound, slightly looser
      (`describe()['bucket_rtol']`).
  """

  name = 'pld'
  is_upper_bound = True

  def __init__(self, value_discretization_interval: float = 1e-4,
               tail_bound: float = 1e-15, max_bins: int = 1 << 22,
               cache_size: int = 160, min_interval: float = 1e-8,
               max_distinct: int = 64):
    if not value_discretization_interval > 0:
      raise ValueError('value_discretization_interval must be > 0, got '
                       f'{value_discretization_interval!r}.')
    self.h = float(value_discretization_interval)
    self.min_interval = float(min_interval)
    self.max_distinct = int(max_distinct)
    self.last_bucket_rtol = 0.0
    self.tail_bound = float(tail_bound)
    self.max_bins = int(max_bins)
    self._pmfs: collections.OrderedDict = collections.OrderedDict()
    self._composed: collections.OrderedDict = collections.OrderedDict()
    self._cache_size = cache_size
    self.last_interval = self.h
    self.last_window_bins = 0

  # -- building blocks ------------------------------------------------------

  def _pmf(self, q: float, sigma: float, direction: str, h: float) -> _Pmf:
    key = (q, sigma, direction, h)
    if key in self._pmfs:
      self._pmfs.move_to_end(key)
      return self._pmfs[key]
    pmf = single_step_pmf(q, sigma, direction, h, self.max_bins)
    self._pmfs[key] = pmf
    if len(self._pmfs) > self._cache_size:
      self._pmfs.popitem(last=False)
    return pmf

  def _compose(self, phases: tuple, direction: str, h: float):
    """Returns (losses, mass, inf_mass) of the composition, or None if h must
    be coarsened."""
    key = (phases, direction, h)
    if key in self._composed:
      self._composed.move_to_end(key)
      return self._composed[key]
    try:
      pmfs = [(self._pmf(q, s, direction, h), c) for q, s, c in phases]
    except _GridTooLarge:
      return None
    log_keep = 0.0  # log P(no step's loss is +inf)
    for pmf, c in pmfs:
      log_keep += (c * math.log1p(-pmf.inf_mass) if pmf.inf_mass < 1
                   else -math.inf)
    inf_mass = -math.expm1(log_keep)
    if inf_mass >= 1.0 or any(pmf.finite_size == 0 for pmf, _ in pmfs):
      return (np.zeros(1), np.zeros(1), 1.0)
    # Window [lo, hi] of the finite sum: Chernoff bounds (valid for any t),
    # at a few t around the Gaussian-optimal one.
    mean = sum(c * pmf.mean for pmf, c in pmfs)
    sd = math.sqrt(max(sum(c * pmf.var for pmf, c in pmfs), 1e-300))
    log_tol = math.log(self.tail_bound)
    t0 = math.sqrt(-2 * log_tol) / sd
    t = np.array([t0 / 4, t0 / 2, t0, 2 * t0, 1.0])
    kp = sum(c * pmf.log_mgf(t) for pmf, c in pmfs)
    km = sum(c * pmf.log_mgf(-t) for pmf, c in pmfs)
    hi = float(np.min((kp - log_tol) / t))
    lo = float(np.max(-(km - log_tol) / t))
    lo = max(lo, mean - 40 * sd)  # lower tail only affects tightness
    k_lo = int(math.floor(lo / h)) - 1
    k_hi = int(math.ceil(hi / h)) + 1
    n = sp_fft.next_fast_len(k_hi - k_lo + 1, real=True)
    if n > self.max_bins:
      return None
    spec = None
    total_offset = 0
    for pmf, c in pmfs:
      part = _power(pmf.spectrum(n, keep=len(pmfs) <= 4), c)
      spec = part if spec is None else spec * part
      total_offset += c * pmf.offset
    circ = sp_fft.irfft(spec, n)
    # circ[i] holds (folded) mass at total index total_offset + i (mod n).
    shift = (k_lo - total_offset) % n
    mass = np.maximum(np.roll(circ, -shift), 0.0)
    losses = (k_lo + np.arange(n)) * h
    out = (losses, mass, min(1.0, inf_mass + self.tail_bound))
    self._composed[key] = out
    if len(self._composed) > 4:
      self._composed.popitem(last=False)
    self.last_window_bins = n
    return out

  def _directions(self, neighbouring: str, phases) -> tuple[str, ...]:
    if neighbouring == 'replace_one':
      return ('replace',)
    if neighbouring != 'add_remove':
      raise ValueError(f'neighbouring must be one of '
                       f'{ledger_lib.NEIGHBOURING}, got {neighbouring!r}.')
    if all(q == 1.0 for q, _, _ in phases):
      return ('remove',)  # the two directions coincide for a Gaussian
    return ('remove', 'add')

  def _composed_all(self, phases, neighbouring):
    key = self._bucketed(_key(phases))
    dirs = self._directions(neighbouring, key)
    h = self.h
    while True:
      res = [self._compose(key, d, h) for d in dirs]
      if all(r is not None for r in res):
        self.last_interval = h
        return res
      h *= 2.0

  def _bucketed(self, key: tuple) -> tuple:
    """At most `max_distinct` distinct steps: q rounded up and sigma down
    onto geometric grids (each step is then less private, so the bound
    stays valid); the grid ratio used is kept in `last_bucket_rtol`."""
    self.last_bucket_rtol = 0.0
    if len({(q, s) for q, s, _ in key}) <= self.max_distinct:
      return key
    r = 1e-3
    while True:
      lr = math.log1p(r)
      merged: dict[tuple[float, float], int] = {}
      for q, s, c in key:
        qb = min(1.0, math.exp(math.ceil(math.log(q) / lr - 1e-12) * lr))
        sb = (math.exp(math.floor(math.log(s) / lr + 1e-12) * lr)
              if s > 0 else 0.0)
        merged[(qb, sb)] = merged.get((qb, sb), 0) + c
      if len(merged) <= self.max_distinct:
        self.last_bucket_rtol = r
        return tuple((q, s, c) for (q, s), c in sorted(merged.items()))
      r *= 1.25

  # -- public API -----------------------------------------------------------

  def epsilon(self, phases: Sequence[Phase], delta: float,
              neighbouring: str = 'add_remove') -> float:
    rdp_lib._check_delta(delta)  # pylint: disable=protected-access
    phases = rdp_lib._as_phases(phases)  # pylint: disable=protected-access
    if ledger_lib.has_noiseless_step(phases):
      return math.inf
    if not _key(phases):
      return 0.0
    eps = max(_eps_from_pmf(*r, delta)
              for r in self._composed_all(phases, neighbouring))
    # A small epsilon is dominated by the discretization: refine (the
    # minimum of two upper bounds is an upper bound).
    h0, used = self.h, self.last_interval
    try:
      while eps < 1000 * self.h and self.h > self.min_interval:
        self.h /= 10.0
        finer = max(_eps_from_pmf(*r, delta)
                    for r in self._composed_all(phases, neighbouring))
        if finer < eps:
          eps, used = finer, self.last_interval
        else:
          break
    finally:
      self.h, self.last_interval = h0, used
    return eps

  def delta(self, phases: Sequence[Phase], epsilon: float,
            neighbouring: str = 'add_remove') -> float:
    if not epsilon >= 0:
      raise ValueError(f'epsilon must be >= 0, got {epsilon!r}.')
    phases = rdp_lib._as_phases(phases)  # pylint: disable=protected-access
    if ledger_lib.has_noiseless_step(phases):
      return 1.0
    if not _key(phases):
      return 0.0
    return max(_delta_from_pmf(*r, epsilon)
               for r in self._composed_all(phases, neighbouring))

  def describe(self) -> dict:
    return {
        'accountant': self.name,
        'kind': 'upper bound',
        'method': 'privacy loss distribution, connect-the-dots discretization '
                  '(pessimistic), composed by FFT',
        'value_discretization_interval': self.h,
        'interval_used': self.last_interval,
        'tail_bound': self.tail_bound,
        'window_bins': self.last_window_bins,
        'max_distinct': self.max_distinct,
        'bucket_rtol': self.last_bucket_rtol,
    }


def _key(phases) -> tuple:
  return tuple((float(p.q), float(p.sigma), int(p.count))
               for p in phases if p.count > 0)


def _delta_from_pmf(losses, mass, inf_mass, eps) -> float:
  sel = losses > eps
  d = inf_mass + float(np.sum(mass[sel] * -np.expm1(eps - losses[sel])))
  return min(1.0, max(0.0, d))


def _suffix_sums(losses, mass):
  """S1_j = sum_{k>=j} p_k and S2_j = sum_{k>=j} p_k e^{ref_j - l_k}.

  ref_j is piecewise constant (chunks of 600 nats of loss, from the top),
  so no exponent exceeds 600 and terms far above l_j underflow harmlessly.
  """
  s1 = np.cumsum(mass[::-1])[::-1]
  s2 = np.empty_like(mass)
  ref = np.empty_like(mass)
  end = len(losses)
  carry, r_prev = 0.0, None
  while end > 0:
    r = float(losses[end - 1])
    start = int(np.searchsorted(losses, r - 600.0, side='left'))
    if r_prev is not None:
      carry *= math.exp(r - r_prev)
    w = mass[start:end] * np.exp(r - losses[start:end])
    s2[start:end] = np.cumsum(w[::-1])[::-1] + carry
    ref[start:end] = r
    carry, r_prev = float(s2[start]), r
    end = start
  return s1, s2, ref


def _eps_from_pmf(losses, mass, inf_mass, delta) -> float:
  if inf_mass >= delta:
    return math.inf
  start = int(np.searchsorted(losses, 0.0))
  if start >= len(losses):
    return 0.0
  if start > 0:  # eps >= 0: losses below 0 never enter delta(eps >= 0)
    losses, mass = losses[start - 1:], mass[start - 1:]
  # On the segment (l_{j-1}, l_j]: delta(eps) = inf + S1_j - e^eps S2_j.
  s1, s2, ref = _suffix_sums(losses, mass)
  # delta at eps = l_j (mass strictly above l_j), S2 taken at j + 1.
  s1_above = np.append(s1[1:], 0.0)
  s2_above = np.append(s2[1:], 0.0)
  ref_above = np.append(ref[1:], ref[-1])
  d_at = inf_mass + s1_above - np.exp(losses - ref_above) * s2_above
  ok = np.nonzero(d_at <= delta)[0]
  j = int(ok[0])
  if j == 0:
    return max(0.0, float(losses[0]))
  num = inf_mass + s1[j] - delta
  if s2[j] <= 0 or num <= 0:
    return max(0.0, float(losses[j]))
  eps = ref[j] + math.log(num / s2[j])
  eps = min(max(eps, float(losses[j - 1])), float(losses[j]))
  return max(0.0, eps)
