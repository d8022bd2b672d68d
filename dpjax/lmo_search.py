"""Offline search for LMO noise parameters (LMO-DP's "optimal noise search").

    python -m dpjax.lmo_search --epsilon 0.3 --delta 1e-10 --method grid \\
        --accounting paper_faithful_not_private --json
    python -m dpjax.lmo_search --epsilon 2 --delta 1e-5 --q 0.03 --steps 192 \\
        --method fast --json

Two searches over the paper's space (ALGORITHMS.md §5.4): a1, a3, a4 in
{0.1, ..., 0.9}, (theta, k) in 7 pairs, lam in {0.1, 0.5, 1, 5},
(u_a, u_b) in {(0, 1), (1, 2)}; 40,824 configurations.

* `grid_search`: the paper's exhaustive grid. With
  `accounting='paper_faithful_not_private'` it is the artifact's search: MGF
  check at alpha = 2 only, per-step eps from the unchecked formula at integer
  orders 2..128 (§5.9a); eps < threshold. With `accounting='sound'` every
  configuration is scored with `dpjax.accounting.lmo`'s sound bound (per step,
  or composed over `steps` Poisson-subsampled steps at rate `q`).
* `fast_search` (sound accounting only): the sound eps and the usefulness
  1 - M(-gamma) are both non-decreasing in each weight a1, a3, a4 (eps' grows
  stochastically, and every bound used is monotone in the law of eps'). So
  for fixed (theta, k, lam, u, a1) the feasible (a3, a4) cells form a
  staircase, which a frontier walk finds with at most 17 evaluations instead
  of 81; that returns the grid optimum exactly. It then refines the best
  frontier points continuously (bisection on a4, a3, a1 within [0.1, 0.9]
  while eps <= threshold), so its result is at least as useful as the grid's
  at the same privacy level.

Objectives: 'usefulness' (the paper's "optimal noise", P(|noise| <= gamma)),
'epsilon' (eps closest to the threshold from below), 'min_epsilon'.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from typing import Any

import numpy as np
from scipy import special

from dpjax.accounting import lmo

A_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
THETA_K_GRID = ((1, 2), (2, 2), (3, 2), (5, 1), (9, 0.5), (7.5, 1), (0.5, 1))
LAM_GRID = (0.1, 0.5, 1, 5)
U_GRID = ((0, 1), (1, 2))   # (u_a, u_b); the paper lists (u_b, u_a)
ACCOUNTINGS = ('sound', 'paper_faithful_not_private')
OBJECTIVES = ('usefulness', 'epsilon', 'min_epsilon')
FIELDS = ('a1', 'k', 'theta', 'a3', 'lam', 'a4', 'u_a', 'u_b')


@dataclasses.dataclass
class SearchResult:
  params: lmo.LMOParams | None
  epsilon: float
  usefulness: float
  evaluations: int
  seconds: float
  method: str
  accounting: str
  settings: dict[str, Any]

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['params'] = self.params.to_dict() if self.params else None
    return d


@dataclasses.dataclass(frozen=True)
class Target:
  """The privacy constraint: eps(params) < epsilon (paper) or <= (sound)."""
  epsilon: float
  delta: float = lmo.ARTIFACT_DELTA
  q: float = 1.0
  steps: int = 1
  l1_sensitivity: float = 1.0
  accounting: str = 'sound'
  gamma: float = lmo.USEFULNESS_GAMMA

  def __post_init__(self):
    if not self.epsilon > 0:
      raise ValueError(f'epsilon must be > 0, got {self.epsilon!r}.')
    if not 0 < self.delta < 1:
      raise ValueError(f'delta must be in (0, 1), got {self.delta!r}.')
    if not 0 < self.q <= 1:
      raise ValueError(f'q must be in (0, 1], got {self.q!r}.')
    if not (isinstance(self.steps, int) and self.steps >= 1):
      raise ValueError(f'steps must be an integer >= 1, got {self.steps!r}.')
    if self.accounting not in ACCOUNTINGS:
      raise ValueError(f'accounting must be one of {ACCOUNTINGS}, got '
                       f'{self.accounting!r}.')
    if self.accounting != 'sound' and (self.q != 1 or self.steps != 1 or
                                       self.l1_sensitivity != 1):
      raise ValueError('The paper-faithful search constrains the per-step '
                       'eps only: leave q, steps and l1_sensitivity at 1.')


# ------------------------------------------------------------------------------
# Vectorized evaluation (rows = configurations).
# ------------------------------------------------------------------------------
def _cols(cfg: np.ndarray) -> list[np.ndarray]:
  return [cfg[:, i:i + 1] for i in range(8)]


def _log_mgf(cfg, t):
  return lmo.log_mgf_arrays(*_cols(cfg), t)


def usefulness(cfg: np.ndarray, gamma: float = lmo.USEFULNESS_GAMMA
               ) -> np.ndarray:
  """1 - M(-gamma) per row of cfg [n, 8]."""
  return 1.0 - np.exp(_log_mgf(cfg, -gamma))[:, 0]


def _rdp_mgf(cfg, orders):
  a = np.asarray(orders, np.float64)[None, :]
  a1, k, th, a3, lam = (cfg[:, i:i + 1] for i in range(5))
  with np.errstate(divide='ignore'):
    tmax = np.minimum(np.where(a1 > 0, 1 / (a1 * th), np.inf),
                      np.where(a3 > 0, lam / np.maximum(a3, 1e-300), np.inf))
  valid = (a - 1) < tmax
  with np.errstate(over='ignore', invalid='ignore'):
    lpos = np.log(a) + _log_mgf(cfg, np.where(valid, a - 1, 0.0))
    lneg = np.log(a - 1) + _log_mgf(cfg, -a)
    v = (np.logaddexp(lpos, lneg) - np.log(2 * a - 1)) / (a - 1)
  return np.where(valid & np.isfinite(v), np.maximum(v, 0), np.inf)


def _pure(cfg):
  a1, k, th, a3, lam, a4, ua, ub = (cfg[:, i] for i in range(8))
  mean = a1 * k * th + a3 / lam + a4 * (ua + ub) / 2
  var = a1**2 * k * th**2 + a3**2 / lam**2 + a4**2 * (ub - ua)**2 / 12
  return (var + mean**2) / mean


def _rr(eps, orders):
  """rdp_from_pure_dp, vectorized: eps [n] -> [n, m]."""
  a = np.asarray(orders, np.float64)[None, :]
  e = eps[:, None]
  with np.errstate(over='ignore', invalid='ignore'):
    v = e - (np.log1p(np.exp(-e)) - np.log1p(np.exp(-(2 * a - 1) * e))) / (
        a - 1)
  return np.where(e == 0, 0.0, v)


def _to_eps(rdp, orders, delta):
  a = np.asarray(orders, np.float64)[None, :]
  with np.errstate(invalid='ignore', over='ignore'):
    eps = rdp + np.log1p(-1 / a) - (math.log(delta) + np.log(a)) / (a - 1)
    zero = (delta**2 + np.expm1(-rdp)) >= 0
  eps = np.where(zero & np.isfinite(rdp), 0.0, eps)
  eps = np.where(~np.isfinite(rdp) | np.isnan(eps) | (a <= 1.01), np.inf, eps)
  return np.maximum(eps.min(axis=1), 0.0)


def _zhu_wang(base_int: np.ndarray, q: float, alphas) -> dict[int, np.ndarray]:
  """Vectorized lmo._zhu_wang; base_int [n, A+2] (column j = order j; order
  alpha + 1 is read, as in lmo._zhu_wang)."""
  alphas = np.asarray(sorted(alphas), int)
  amax = int(alphas.max())
  l1q, lq = math.log1p(-q), math.log(q)
  ls = np.arange(2, amax + 1)
  al = alphas[:, None]
  with np.errstate(invalid='ignore'):
    logc = (special.gammaln(al + 1) - special.gammaln(ls + 1)[None, :] -
            special.gammaln(np.maximum(al - ls[None, :], 0) + 1))
  w = logc + ls[None, :] * lq + (al - ls[None, :]) * l1q
  w = np.where(ls[None, :] <= al, w, -np.inf)              # [nA, L]
  t0 = (alphas - 1) * l1q + np.log1p((alphas - 1) * q)      # [nA]
  b = (ls - 1)[None, :] * base_int[:, 2:amax + 1]           # [n, L]
  # Rows are finite only if base is finite at every order 2..alpha.
  finite_upto = np.cumprod(np.isfinite(b), axis=1).astype(bool)
  # l >= 3: the larger of 3 e^{(l-1) eps(l)} and e^{l eps(l+1)}.
  alt = ls[None, :] * base_int[:, 3:amax + 2]
  b = np.where(ls[None, :] >= 3, np.maximum(b + math.log(3.0), alt), b)
  out_all = np.empty((base_int.shape[0], len(alphas)))
  chunk = max(1, 2_000_000 // max(1, w.size))
  for s0 in range(0, base_int.shape[0], chunk):
    bb = np.where(np.isfinite(b[s0:s0 + chunk]), b[s0:s0 + chunk], 0.0)
    inf_rows = ~np.isfinite(b[s0:s0 + chunk])
    t = w[None, :, :] + bb[:, None, :]                       # [c, nA, L]
    m = np.maximum(t.max(axis=2), t0[None, :])
    with np.errstate(divide='ignore'):
      tot = np.log(np.exp(t - m[:, :, None]).sum(axis=2) +
                   np.exp(t0[None, :] - m)) + m
    # An infinite term (order alpha + 1 outside the domain) makes it inf.
    hit = (inf_rows[:, None, :] & (ls[None, None, :] <= al[None, :, :]))
    tot = np.where(hit.any(axis=2), np.inf, tot)
    out_all[s0:s0 + chunk] = tot / (alphas - 1)[None, :]
  ok = finite_upto[:, alphas - 2]
  out_all = np.where(ok, out_all, np.inf)
  return {int(a): out_all[:, i] for i, a in enumerate(alphas)}


def epsilon_batch(cfg: np.ndarray, target: Target) -> np.ndarray:
  """eps of every configuration row under the target's accounting."""
  cfg = np.asarray(cfg, np.float64)
  if target.accounting == 'paper_faithful_not_private':
    a = np.asarray(lmo.ARTIFACT_ORDERS)[None, :]
    p = _cols(cfg)
    with np.errstate(all='ignore'):
      def m(t):
        a1, k, th, a3, lam, a4, ua, ub = p
        return ((1 - a1 * th * t)**(-k) * lam / (lam - a3 * t) *
                (np.exp(a4 * t * ub) - np.exp(a4 * t * ua)) /
                (a4 * t * (ub - ua)))
      v = np.log((a * m(a - 1) + (a - 1) * m(-a)) / (2 * a - 1)) / (a - 1)
    rdp = np.where(np.isfinite(v) & (v > 0), v, np.inf)
    eps = _to_eps(rdp, lmo.ARTIFACT_ORDERS, target.delta)
    valid = np.isfinite(rdp[:, 0])   # the artifact's check at alpha = 2
    return np.where(valid, eps, np.inf)
  r = target.l1_sensitivity
  scaled = cfg.copy()
  scaled[:, [0, 3, 5]] *= r
  orders = np.asarray(lmo.PT_ORDERS)
  pure = _pure(scaled)
  base = np.minimum(_rdp_mgf(scaled, orders), _rr(pure, orders))
  if target.q == 1:
    rdp = base
    pure_step = pure
  else:
    q = target.q
    pure_step = np.logaddexp(math.log1p(-q), math.log(q) + pure)
    amax = int(math.ceil(orders.max())) + 1   # _zhu_wang reads alpha + 1
    ints = np.arange(2, amax + 1, dtype=np.float64)
    base_int = np.full((len(cfg), amax + 1), np.inf)
    base_int[:, 2:] = np.minimum(_rdp_mgf(scaled, ints), _rr(pure, ints))
    needed = sorted({max(2, int(math.ceil(a - 1e-12))) for a in orders})
    zw = _zhu_wang(base_int, q, needed)
    zw_cols = np.stack([zw[max(2, int(math.ceil(a - 1e-12)))]
                        for a in orders], axis=1)
    rdp = np.minimum(np.minimum(base, _rr(pure_step, orders)), zw_cols)
  eps_rdp = _to_eps(target.steps * rdp, orders, target.delta)
  return np.minimum(eps_rdp, target.steps * pure_step)


def _feasible(eps: np.ndarray, target: Target) -> np.ndarray:
  if target.accounting == 'paper_faithful_not_private':
    return eps < target.epsilon           # the artifact's strict inequality
  return eps <= target.epsilon


def paper_grid() -> np.ndarray:
  """All 40,824 configurations of §5.4 as rows (a1, k, theta, a3, lam, a4,
  u_a, u_b)."""
  rows = [(a1, k, th, a3, lam, a4, ua, ub)
          for (th, k), lam, (ua, ub), a1, a3, a4 in itertools.product(
              THETA_K_GRID, LAM_GRID, U_GRID, A_GRID, A_GRID, A_GRID)]
  return np.asarray(rows, np.float64)


def _row_params(row) -> lmo.LMOParams:
  return lmo.LMOParams(**{f: float(v) for f, v in zip(FIELDS, row)})


def _pick(cfg, eps, use, target: Target, objective: str):
  ok = _feasible(eps, target)
  if not np.any(ok):
    return None
  idx = np.flatnonzero(ok)
  if objective == 'usefulness':
    best = idx[np.argmax(use[idx])]
  elif objective == 'epsilon':
    best = idx[np.argmax(eps[idx])]
  else:
    best = idx[np.argmin(eps[idx])]
  return best


def grid_search(target: Target, objective: str = 'usefulness') -> SearchResult:
  """The paper's exhaustive grid under the target's accounting."""
  if objective not in OBJECTIVES:
    raise ValueError(f'objective must be one of {OBJECTIVES}, got '
                     f'{objective!r}.')
  t0 = time.perf_counter()
  cfg = paper_grid()
  eps = epsilon_batch(cfg, target)
  use = usefulness(cfg, target.gamma)
  best = _pick(cfg, eps, use, target, objective)
  sec = time.perf_counter() - t0
  if best is None:
    return SearchResult(None, math.inf, math.nan, len(cfg), sec, 'grid',
                        target.accounting, _settings(target, objective))
  return SearchResult(_row_params(cfg[best]), float(eps[best]),
                      float(use[best]), len(cfg), sec, 'grid',
                      target.accounting, _settings(target, objective))


def _settings(target: Target, objective: str) -> dict[str, Any]:
  return dataclasses.asdict(target) | {'objective': objective}


def fast_search(target: Target, *, refine: bool = True, refine_top: int = 4,
                bisection_steps: int = 24) -> SearchResult:
  """Frontier walk over the paper's grid, then continuous refinement.

  Requires the sound accounting (monotone in a1, a3, a4); maximizes
  usefulness.
  """
  if target.accounting != 'sound':
    raise ValueError('fast_search needs accounting="sound": the '
                     'paper-faithful eps is not monotone in the weights '
                     '(spurious values past the MGF domain), so the frontier '
                     'walk would not be exact.')
  t0 = time.perf_counter()
  evals = 0
  a = np.asarray(A_GRID)
  n_a = len(a)
  lines = [(th, k, lam, ua, ub, a1)
           for (th, k), lam, (ua, ub), a1 in itertools.product(
               THETA_K_GRID, LAM_GRID, U_GRID, A_GRID)]
  lines = np.asarray(lines, np.float64)
  i = np.zeros(len(lines), int)          # a3 index, walks up
  j = np.full(len(lines), n_a - 1)       # a4 index, walks down
  best_use = np.full(len(lines), -np.inf)
  best_cfg = np.zeros((len(lines), 8))
  best_eps = np.full(len(lines), np.inf)
  active = np.ones(len(lines), bool)
  while np.any(active):
    idx = np.flatnonzero(active)
    th, k, lam, ua, ub, a1 = (lines[idx, c] for c in range(6))
    cfg = np.stack([a1, k, th, a[i[idx]], lam, a[j[idx]], ua, ub], axis=1)
    eps = epsilon_batch(cfg, target)
    evals += len(idx)
    ok = _feasible(eps, target)
    use = usefulness(cfg, target.gamma)
    better = ok & (use > best_use[idx])
    best_use[idx[better]] = use[better]
    best_cfg[idx[better]] = cfg[better]
    best_eps[idx[better]] = eps[better]
    i[idx[ok]] += 1
    j[idx[~ok]] -= 1
    active[idx] = (i[idx] < n_a) & (j[idx] >= 0)
  if not np.any(np.isfinite(best_eps)):
    return SearchResult(None, math.inf, math.nan, evals,
                        time.perf_counter() - t0, 'fast', target.accounting,
                        _settings(target, 'usefulness'))
  order = np.argsort(-best_use)
  top = [o for o in order[:refine_top] if np.isfinite(best_eps[o])]
  cands = best_cfg[top].copy()
  if refine:
    hi_a = max(A_GRID)
    for col in (5, 3, 0):                    # a4, then a3, then a1
      lo = cands[:, col].copy()
      hi = np.full(len(cands), hi_a)
      hi_cfg = cands.copy()
      hi_cfg[:, col] = hi
      e = epsilon_batch(hi_cfg, target)
      evals += len(cands)
      done = _feasible(e, target)
      lo[done] = hi[done]
      for _ in range(bisection_steps):
        mid = 0.5 * (lo + hi)
        test = cands.copy()
        test[:, col] = np.where(done, lo, mid)
        e = epsilon_batch(test, target)
        evals += int(np.sum(~done))
        ok = _feasible(e, target)
        lo = np.where(~done & ok, mid, lo)
        hi = np.where(~done & ~ok, mid, hi)
      cands[:, col] = lo
  eps = epsilon_batch(cands, target)
  evals += len(cands)
  use = usefulness(cands, target.gamma)
  ok = _feasible(eps, target)
  use = np.where(ok, use, -np.inf)
  b = int(np.argmax(use))
  return SearchResult(_row_params(cands[b]), float(eps[b]), float(use[b]),
                      evals, time.perf_counter() - t0, 'fast',
                      target.accounting, _settings(target, 'usefulness'))


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog='python -m dpjax.lmo_search',
                               description=__doc__.split('\n\n')[0])
  ap.add_argument('--epsilon', type=float, required=True,
                  help='threshold: per-step eps, or eps after --steps steps')
  ap.add_argument('--delta', type=float, default=lmo.ARTIFACT_DELTA)
  ap.add_argument('--q', type=float, default=1.0,
                  help='Poisson sampling rate (sound accounting)')
  ap.add_argument('--steps', type=int, default=1)
  ap.add_argument('--l1-sensitivity', type=float, default=1.0,
                  help='L1 sensitivity in units of the noise scale')
  ap.add_argument('--accounting', choices=ACCOUNTINGS, default='sound')
  ap.add_argument('--method', choices=('grid', 'fast', 'both'),
                  default='fast')
  ap.add_argument('--objective', choices=OBJECTIVES, default='usefulness')
  ap.add_argument('--gamma', type=float, default=lmo.USEFULNESS_GAMMA)
  ap.add_argument('--json', action='store_true', help='print JSON')
  args = ap.parse_args(argv)
  try:
    target = Target(epsilon=args.epsilon, delta=args.delta, q=args.q,
                    steps=args.steps, l1_sensitivity=args.l1_sensitivity,
                    accounting=args.accounting, gamma=args.gamma)
    results = []
    if args.method in ('grid', 'both'):
      results.append(grid_search(target, args.objective))
    if args.method in ('fast', 'both'):
      results.append(fast_search(target))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps([r.to_dict() for r in results], indent=2))
  else:
    for r in results:
      print(f'{r.method:5s} [{r.accounting}] eps={r.epsilon:.4f} '
            f'usefulness={r.usefulness:.4f} evaluations={r.evaluations} '
            f'time={r.seconds:.2f}s params={r.params}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
