"""Calibration: noise, steps or batch size for a target (epsilon, delta).

Every function returns a value that was *checked* under the given accountant:
`accountant.epsilon([Phase(q, sigma, steps)], delta) <= target_epsilon` for
the returned parameter (root-finding only proposes; the last evaluation
decides).

Pure NumPy/SciPy.

Formal guarantees:
  The returned parameter satisfies epsilon <= target_epsilon *under the
  accountant passed*. With an upper-bound accountant ('pld', 'rdp') this is a
  DP guarantee for the calibrated mechanism; with 'edgeworth' it is not (its
  epsilon is an estimate), and the privacy report shows the PLD bound beside
  it.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from scipy import optimize

from dpjax.accounting import ledger as ledger_lib
from dpjax.accounting import rdp as rdp_lib

Phase = ledger_lib.Phase


def _resolve(accountant: Any):
  if isinstance(accountant, str):
    from dpjax.accounting import get_accountant  # pylint: disable=g-import-not-at-top
    return get_accountant(accountant)
  return accountant


def _check_target(target_epsilon: float, delta: float) -> None:
  if not (isinstance(target_epsilon, (int, float)) and target_epsilon > 0 and
          math.isfinite(target_epsilon)):
    raise ValueError('target_epsilon must be a finite number > 0, got '
                     f'{target_epsilon!r}.')
  if not (isinstance(delta, (int, float)) and 0 < delta < 1):
    raise ValueError(f'delta must be in (0, 1), got {delta!r}.')


def calibrate_sigma(accountant: Any, *, target_epsilon: float, delta: float,
                    q: float, steps: int, neighbouring: str = 'add_remove',
                    rtol: float = 1e-4, sigma_max: float = 1e4) -> float:
  """Smallest noise multiplier (to `rtol`) with epsilon <= target_epsilon.

  Args:
    accountant: an accountant object or its name ('pld', 'rdp', 'edgeworth').
    target_epsilon: the epsilon to reach.
    delta: the delta at which epsilon is computed.
    q: Poisson sampling rate in (0, 1].
    steps: number of steps (>= 1).
    neighbouring: 'add_remove' or 'replace_one'.
    rtol: relative precision of the returned sigma.
    sigma_max: give up above this noise multiplier.

  Returns:
    sigma with `accountant.epsilon([Phase(q, sigma, steps)], delta,
    neighbouring) <= target_epsilon` (verified).

  Raises:
    ValueError: bad arguments, or target_epsilon unreachable.
  """
  acc = _resolve(accountant)
  _check_target(target_epsilon, delta)
  ledger_lib.validate_mechanism(q=q, sigma=1.0, steps=steps)
  if steps == 0:
    raise ValueError('steps must be >= 1 to calibrate sigma, got 0.')

  def eps(sigma: float) -> float:
    return acc.epsilon([Phase(q, float(sigma), steps)], delta, neighbouring)

  # Bracket [lo, hi] in sigma: eps(hi) <= target < eps(lo).
  guess = _rdp_guess(target_epsilon, delta, q, steps, neighbouring)
  hi = guess
  e_hi = eps(hi)
  while e_hi > target_epsilon:
    hi *= 1.5
    if hi > sigma_max:
      raise ValueError(
          f'target_epsilon={target_epsilon} is unreachable with sigma <= '
          f'{sigma_max} (q={q}, steps={steps}, delta={delta}).')
    e_hi = eps(hi)
  # Tight accountants need a few percent less noise than RDP says.
  lo = hi * 0.92
  e_lo = eps(lo)
  while e_lo <= target_epsilon:
    hi, e_hi = lo, e_lo
    lo = lo / 1.3
    if lo < 1e-6:
      return hi
    e_lo = eps(lo)
  return _refine(eps, target_epsilon, lo, hi, rtol, geometric=True)


def _refine(eps: Callable[[float], float], target: float, lo: float,
            hi: float, rtol: float, geometric: bool) -> float:
  """Brent on eps(x) - target in [lo, hi] (eps(lo) > target >= eps(hi)),
  then returns a verified x on the feasible side (decreasing eps)."""
  cache: dict[float, float] = {}

  def f(u: float) -> float:
    x = math.exp(u) if geometric else u
    if x not in cache:
      cache[x] = eps(x)
    e = cache[x]
    return (e if math.isfinite(e) else 1e300) - target

  a, b = (math.log(lo), math.log(hi)) if geometric else (lo, hi)
  xtol = rtol if geometric else rtol * hi
  try:
    root = optimize.brentq(f, a, b, xtol=xtol / 2, rtol=1e-12, maxiter=100)
  except ValueError:
    root = b
  del root  # the smallest feasible point evaluated is within xtol of it
  feasible = [v for v, e in cache.items() if e <= target]
  x = min(feasible) if feasible else hi
  # Verify (eps is evaluated again if it was never computed at x).
  while f(math.log(x) if geometric else x) > 0:
    x *= 1 + rtol
  return x


def _rdp_guess(target_epsilon, delta, q, steps, neighbouring) -> float:
  """A fast starting sigma from RDP (feasible for RDP, usually close)."""
  orders = (1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
  acc = rdp_lib.RdpAccountant(orders)
  if neighbouring == 'replace_one' and q < 1:
    neighbouring = 'add_remove'  # only a starting point
  lo, hi = 1e-2, 1.0

  def eps(sigma):
    return acc.epsilon([Phase(q, sigma, steps)], delta, neighbouring)

  while eps(hi) > target_epsilon:
    lo, hi = hi, hi * 2
    if hi > 1e5:
      return hi
  for _ in range(30):
    mid = math.sqrt(lo * hi)
    if eps(mid) > target_epsilon:
      lo = mid
    else:
      hi = mid
    if hi / lo < 1.01:
      break
  return hi


def calibrate_steps(accountant: Any, *, target_epsilon: float, delta: float,
                    q: float, sigma: float, neighbouring: str = 'add_remove',
                    max_steps: int = 10**8) -> int:
  """Largest number of steps with epsilon <= target_epsilon (verified).

  Raises:
    ValueError: if even one step exceeds target_epsilon.
  """
  acc = _resolve(accountant)
  _check_target(target_epsilon, delta)
  ledger_lib.validate_mechanism(q=q, sigma=sigma, steps=1)

  def ok(t: int) -> bool:
    return acc.epsilon([Phase(q, sigma, int(t))], delta,
                       neighbouring) <= target_epsilon

  if not ok(1):
    raise ValueError(f'target_epsilon={target_epsilon} is unreachable: one '
                     f'step with q={q}, sigma={sigma} already exceeds it.')
  lo, hi = 1, 2
  while ok(hi):
    lo, hi = hi, hi * 2
    if hi > max_steps:
      return lo
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if ok(mid):
      lo = mid
    else:
      hi = mid
  return lo


def calibrate_sampling_rate(accountant: Any, *, target_epsilon: float,
                            delta: float, sigma: float, steps: int,
                            neighbouring: str = 'add_remove',
                            rtol: float = 1e-4, q_min: float = 1e-9) -> float:
  """Largest Poisson rate q (to `rtol`) with epsilon <= target_epsilon."""
  acc = _resolve(accountant)
  _check_target(target_epsilon, delta)
  ledger_lib.validate_mechanism(q=1.0, sigma=sigma, steps=steps)

  def eps(q: float) -> float:
    return acc.epsilon([Phase(min(1.0, q), sigma, steps)], delta, neighbouring)

  if eps(1.0) <= target_epsilon:
    return 1.0
  hi_q = 1.0  # infeasible
  lo_q = 0.5
  while eps(lo_q) > target_epsilon:
    hi_q = lo_q
    lo_q /= 4
    if lo_q < q_min:
      raise ValueError(
          f'target_epsilon={target_epsilon} is unreachable with q >= {q_min} '
          f'(sigma={sigma}, steps={steps}, delta={delta}).')
  # eps increasing in q: refine on the decreasing function of 1/q.
  inv = _refine(lambda x: eps(1.0 / x), target_epsilon, 1.0 / hi_q,
                1.0 / lo_q, rtol, geometric=True)
  return 1.0 / inv


def calibrate_batch_size(accountant: Any, *, target_epsilon: float,
                         delta: float, sigma: float, steps: int,
                         dataset_size: int, neighbouring: str = 'add_remove'
                         ) -> int:
  """Largest expected batch size B (q = B / dataset_size), verified."""
  if not (isinstance(dataset_size, int) and dataset_size >= 1):
    raise ValueError(f'dataset_size must be an integer >= 1, got '
                     f'{dataset_size!r}.')
  acc = _resolve(accountant)
  q = calibrate_sampling_rate(acc, target_epsilon=target_epsilon, delta=delta,
                              sigma=sigma, steps=steps,
                              neighbouring=neighbouring,
                              q_min=0.5 / dataset_size)
  b = int(math.floor(q * dataset_size))
  while b >= 1 and acc.epsilon([Phase(b / dataset_size, sigma, steps)], delta,
                               neighbouring) > target_epsilon:
    b -= 1
  if b < 1:
    raise ValueError(f'target_epsilon={target_epsilon} is unreachable with a '
                     'batch size >= 1.')
  return b
