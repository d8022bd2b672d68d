"""Expected batch size per step, and its variable-q accounting.

DP-Adam-AC's "variable-q accountant" (Yang 2025) charges every step with its
own sampling rate q_t = B_t / N. This module makes the schedules (a linear
ramp, the last partial batch of every epoch) and turns them into ledger
entries: the training loop calls `ledger.record(q_t, sigma)` once per step
with `rates[t]` (or `record_schedule` does it), and every accountant then
composes the per-step mechanisms (RDP adds per order; PLDs convolve).

Pure NumPy (no JAX).

Formal guarantees:
  With Poisson sampling at rate q_t = B_t / N in step t (each record included
  independently with probability q_t) and noise multiplier sigma relative to
  the clipped sum's add/remove sensitivity, step t is the subsampled Gaussian
  mechanism (q_t, sigma), and the run is their adaptive composition, which
  the ledger records exactly. For the epoch schedule with shuffled fixed-size
  batches (what the paper trains with) q_t = B_t / N is NOT a Poisson rate and
  the amplification it implies is a heuristic; a shuffle ledger
  (`sampling='shuffle'`) ignores q and accounts each epoch without
  amplification instead.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from dpjax.accounting import ledger as ledger_lib


def _check_steps(steps) -> int:
  if not (isinstance(steps, (int, np.integer)) and steps >= 1):
    raise ValueError(f'steps must be an int >= 1, got {steps!r}.')
  return int(steps)


def constant(*, expected_batch_size: float, steps: int) -> np.ndarray:
  """B_t = B for every step."""
  steps = _check_steps(steps)
  if not expected_batch_size > 0:
    raise ValueError('expected_batch_size must be > 0, got '
                     f'{expected_batch_size!r}.')
  return np.full(steps, float(expected_batch_size))


def linear_ramp(*, start: float, end: float, steps: int,
                ramp_steps: int | None = None) -> np.ndarray:
  """B_t linear from `start` (t = 0) to `end` (t = ramp_steps - 1), then `end`.

  Args:
    start, end: expected batch sizes > 0.
    steps: total steps T.
    ramp_steps: length of the ramp (default: all T steps).
  """
  steps = _check_steps(steps)
  if not (start > 0 and end > 0):
    raise ValueError(f'start and end must be > 0, got {start!r}, {end!r}.')
  ramp = steps if ramp_steps is None else int(ramp_steps)
  if not 1 <= ramp <= steps:
    raise ValueError(f'ramp_steps must be in [1, steps={steps}], got '
                     f'{ramp_steps!r}.')
  out = np.full(steps, float(end))
  out[:ramp] = (np.linspace(start, end, ramp) if ramp > 1 else float(end))
  return out


def epoch_schedule(*, dataset_size: int, batch_size: int,
                   steps: int) -> np.ndarray:
  """Epochs of floor(N/B) batches of B plus one last batch of N mod B.

  The epoch's last, partial batch (when B does not divide N) is its own step.
  """
  steps = _check_steps(steps)
  if not (isinstance(dataset_size, int) and dataset_size >= 1):
    raise ValueError(f'dataset_size must be an int >= 1, got {dataset_size!r}.')
  if not (isinstance(batch_size, int) and 1 <= batch_size <= dataset_size):
    raise ValueError(f'batch_size must be an int in [1, dataset_size='
                     f'{dataset_size}], got {batch_size!r}.')
  full, rest = divmod(dataset_size, batch_size)
  epoch = [float(batch_size)] * full + ([float(rest)] if rest else [])
  reps = math.ceil(steps / len(epoch))
  return np.asarray((epoch * reps)[:steps], np.float64)


def sampling_rates(expected_batch_sizes: Sequence[float],
                   dataset_size: int) -> np.ndarray:
  """q_t = B_t / N, each checked to lie in (0, 1]."""
  b = np.asarray(expected_batch_sizes, np.float64)
  if not (isinstance(dataset_size, (int, np.integer)) and dataset_size >= 1):
    raise ValueError(f'dataset_size must be an int >= 1, got {dataset_size!r}.')
  q = b / float(dataset_size)
  if b.ndim != 1 or b.size == 0 or not np.all((q > 0) & (q <= 1)):
    raise ValueError('expected batch sizes must be a non-empty 1-D sequence '
                     f'with 0 < B_t <= dataset_size={dataset_size}.')
  return q


def record_schedule(ledger: ledger_lib.PrivacyLedger, rates: Sequence[float],
                    sigma: float) -> ledger_lib.PrivacyLedger:
  """`ledger.record(q_t, sigma)` for every step, in order; returns `ledger`."""
  for q in np.asarray(rates, np.float64):
    ledger.record(float(q), float(sigma))
  return ledger


def phases(rates: Sequence[float], sigma: float) -> list[ledger_lib.Phase]:
  """The run-length-compressed phases of a schedule (as the ledger keeps)."""
  return record_schedule(ledger_lib.PrivacyLedger(), rates, sigma).phases


def calibrate_sigma_for_schedule(accountant: Any, *, target_epsilon: float,
                                 delta: float, rates: Sequence[float],
                                 neighbouring: str = 'add_remove',
                                 rtol: float = 1e-3,
                                 sigma_max: float = 1e4) -> float:
  """Smallest sigma (to `rtol`) whose variable-q run has epsilon <= target.

  Verified: `accountant.epsilon(phases(rates, sigma), delta) <= target_epsilon`
  for the returned sigma.
  """
  from dpjax.accounting import get_accountant  # pylint: disable=g-import-not-at-top
  acc = get_accountant(accountant)
  if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
    raise ValueError(f'target_epsilon must be finite and > 0, got '
                     f'{target_epsilon!r}.')
  ph = lambda s: phases(rates, s)
  eps = lambda s: acc.epsilon(ph(s), delta, neighbouring)
  hi = 1.0
  while eps(hi) > target_epsilon:
    hi *= 2.0
    if hi > sigma_max:
      raise ValueError(f'target_epsilon={target_epsilon!r} is not reached '
                       f'with sigma <= {sigma_max}.')
  lo = hi / 2.0
  while lo > 1e-3 and eps(lo) <= target_epsilon:
    hi, lo = lo, lo / 2.0
  while hi - lo > rtol * hi:
    mid = 0.5 * (lo + hi)
    if eps(mid) <= target_epsilon:
      hi = mid
    else:
      lo = mid
  assert eps(hi) <= target_epsilon
  return hi
