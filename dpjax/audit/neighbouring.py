"""Neighbouring-dataset replay: S(D) against S(D - r) and S(D + x).

The engine behind `python -m dpjax.audit replay`. A `Target` is anything
that maps a padded batch to the captured pre-noise values (`Captured`): the
trainer's step (`target_of(build_harness(config))`) or a library path
(`dpjax.audit.groups`). For each scenario (a batch for D) the engine runs:

  D        the scenario's records (sorted record ids, compacted, padded);
  D - r    the same list with record r removed and re-compacted, so every
           record after r moves one slot earlier;
  D + x    the list with a new record x appended to the training arrays at
           index N (so no existing record is renumbered) and to the batch.

and checks, for every pair, ||S(D) - S(D')|| <= sensitivity * (1 + tol) in
the norm the noise is calibrated for, plus |count(D) - count(D')| <= the
count sensitivity where the step releases a count (DP-Adam-AC). All replays
use the same fixed secret randomness, so a correct step couples every other
record's contribution exactly (same dropout key, same group, same C).

Scenarios: 'sampled' (the run's own sampler, seeded from the fixed secret
seed), 'small' (two records: makes any batch-size-dependent rescaling
visible) and 'full' (B_max - 1 records: every slot in use).

Float32 rounding. S(D) and S(D') add the other records in a different
grouping (a removal shifts them across micro-batches and devices), so
S(D) - S(D') = clip(g_r) + e with e the difference of two float32 summation
errors, |e| ~ a few u ||S|| (u = 2^-24). Its projection on clip(g_r) moves
the ratio by up to ~u ||S|| / C. Each case reports that `rounding_scale`
(u max(||S(D)||, ||S(D')||) / sensitivity). Measured excess over 1 (CPU,
float32 sums): 1e-7 to 5e-7 on the shipped configs, up to 1.2e-6 (0.12
rounding scales) for a 14k-parameter LoRA at 383 records. The default check
is strict (`rounding_allowance=0`: distance <= sensitivity (1 + tolerance));
`rounding_allowance=k` also allows k rounding scales. A bfloat16 rounding of
the sum (u = 2^-9) exceeds the scale by ~10^3-10^4 and is caught either way.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from dpjax import sampling
from dpjax.audit.capture import Captured
from dpjax.audit.capture import StepHarness

SCENARIOS = ('sampled', 'small', 'full')
ADDITIONS = ('reversed', 'random', 'copy')
DEFAULT_TOLERANCE = 1e-6
U_FLOAT32 = 2.0 ** -24  # unit roundoff of float32


@dataclasses.dataclass(frozen=True)
class Target:
  """What the replay needs from a step.

  Attributes:
    path: name of the code path, for the output.
    run: `run(arrays, idx[B_max], mask[B_max]) -> Captured` (NumPy leaves).
    train: the training set, a dict of arrays with leading length N.
    norm_ord: 2 or 1: the norm the noise is calibrated for.
    sensitivity: the add/remove sensitivity of the sum in that norm.
    count_sensitivity: of the released count, or None when none is released.
    count_centered: the released count is u - n/2 (else u).
    max_batch: B_max.
    sampling: 'poisson' or 'shuffle' (for the 'sampled' scenario).
    expected_batch_size: B.
    seed: the fixed secret seed (sampler and the audit's own choices).
    sampler_seed: the sampler's seed (`SecretRandomness.sampler_seed()`).
    notes: lines for the report.
  """
  path: str
  run: Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray], Captured]
  train: dict[str, np.ndarray]
  norm_ord: int
  sensitivity: float
  count_sensitivity: float | None
  count_centered: bool
  max_batch: int
  sampling: str
  expected_batch_size: float
  seed: int
  sampler_seed: Any
  notes: tuple[str, ...] = ()

  @property
  def dataset_size(self) -> int:
    return int(next(iter(self.train.values())).shape[0])


def target_of(h: StepHarness) -> Target:
  """The replay target of a trainer step harness."""
  return Target(
      path=h.path, run=h.run, train=h.data.train, norm_ord=h.norm_ord,
      sensitivity=h.sensitivity, count_sensitivity=h.count_sensitivity,
      count_centered=h.count_centered, max_batch=h.max_batch,
      sampling=h.plan.sampling,
      expected_batch_size=float(h.plan.expected_batch_size),
      seed=int(h.secret.insecure_fixed_seed or 0),
      sampler_seed=h.secret.sampler_seed(), notes=h.notes)


@dataclasses.dataclass
class CaseResult:
  """One neighbouring pair (D, D')."""
  scenario: str     # 'sampled' | 'small' | 'full'
  kind: str         # 'remove' | 'add' | 'count' | 'dtype'
  record: str       # which record was removed or added
  batch_size: int   # records in D
  distance: float   # ||S(D) - S(D')|| (or |count(D) - count(D')|)
  bound: float      # the sensitivity it must not exceed
  ratio: float      # distance / bound (NaN counts as a violation)
  passed: bool
  rounding_scale: float = 0.0  # u max(||S(D)||, ||S(D')||) / bound


@dataclasses.dataclass
class ReplayReport:
  """All cases of one path, with the summary."""
  path: str
  norm: str                 # 'L2' | 'L1'
  sensitivity: float
  count_sensitivity: float | None
  tolerance: float
  sum_dtype: str
  cases: list[CaseResult]
  notes: tuple[str, ...] = ()
  seconds: float = 0.0
  rounding_allowance: float = 0.0

  @property
  def max_rounding_scale(self) -> float:
    return max((c.rounding_scale for c in self.cases), default=0.0)

  @property
  def violations(self) -> list[CaseResult]:
    return [c for c in self.cases if not c.passed]

  @property
  def passed(self) -> bool:
    return not self.violations and bool(self.cases)

  def max_ratio(self, kinds: Sequence[str] = ('remove', 'add')) -> float:
    """The largest ratio among `kinds` (NaN if any is NaN)."""
    rs = [c.ratio for c in self.cases if c.kind in kinds]
    if not rs:
      return math.nan
    return math.nan if any(math.isnan(r) for r in rs) else max(rs)

  def lines(self, verbose: bool = False) -> list[str]:
    """One line per (scenario, kind), or per case when `verbose`."""
    out = [f'path {self.path}: ||S(D) - S(D\')||_{self.norm[1]} <= '
           f'{self.sensitivity:.6g} (sum {self.sum_dtype})']
    out += [f'  note: {n}' for n in self.notes]
    groups: dict[tuple[str, str], list[CaseResult]] = {}
    for c in self.cases:
      groups.setdefault((c.scenario, c.kind), []).append(c)
    for (scen, kind), cs in groups.items():
      rows = cs if verbose else [max(
          cs, key=lambda c: math.inf if math.isnan(c.ratio) else c.ratio)]
      for c in rows:
        ok = all(x.passed for x in (cs if not verbose else [c]))
        what = c.record if verbose else (
            f'{len(cs)} case(s), worst {c.record}')
        flag = 'ok' if ok else 'FAIL'
        out.append(f'  [{flag:4s}] {scen:7s} n={c.batch_size:<4d} '
                   f'{kind:6s} ratio {c.ratio:.9f}  ({what})')
    return out

  def summary(self) -> str:
    r = self.max_ratio()
    verdict = 'PASS' if self.passed else 'VIOLATION'
    cnt = self.max_ratio(('count',))
    count = ('' if math.isnan(cnt) and self.count_sensitivity is None
             else f', max count ratio {cnt:.6g}')
    allow = (f' + {self.rounding_allowance:g} x rounding scale'
             if self.rounding_allowance else '')
    return (f'{verdict} {self.path}: {len(self.cases)} cases, max ratio '
            f'{r:.9f} (slack {r - 1:+.2e}, tolerance {self.tolerance:g}'
            f'{allow}; float32 rounding scale up to '
            f'{self.max_rounding_scale:.1e}){count}, '
            f'{len(self.violations)} violation(s), {self.seconds:.1f} s')

  def to_dict(self) -> dict[str, Any]:
    return {'path': self.path, 'norm': self.norm,
            'sensitivity': self.sensitivity,
            'count_sensitivity': self.count_sensitivity,
            'tolerance': self.tolerance,
            'rounding_allowance': self.rounding_allowance,
            'max_rounding_scale': self.max_rounding_scale,
            'sum_dtype': self.sum_dtype,
            'passed': self.passed, 'max_ratio': _json_float(self.max_ratio()),
            'max_count_ratio': _json_float(self.max_ratio(('count',))),
            'violations': len(self.violations), 'seconds': self.seconds,
            'notes': list(self.notes),
            'cases': [{k: _json_float(v) if isinstance(v, float) else v
                       for k, v in dataclasses.asdict(c).items()}
                      for c in self.cases]}


def _json_float(x: float) -> float | str:
  return x if math.isfinite(x) else str(x)


def _norm64(leaves, norm_ord: int) -> float:
  acc = 0.0
  for d in leaves:
    acc += float(np.sum(np.abs(d))) if norm_ord == 1 else float(np.sum(d * d))
  out = acc if norm_ord == 1 else math.sqrt(acc)
  return out if math.isfinite(out) else math.nan


def distance(a: Any, b: Any, norm_ord: int) -> float:
  """||a - b|| over all leaves (float64 on the host); NaN if non-finite."""
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  if len(la) != len(lb):
    raise ValueError(f'captured sums differ in structure: {len(la)} vs '
                     f'{len(lb)} leaves.')
  return _norm64((np.asarray(x, np.float64) - np.asarray(y, np.float64)
                  for x, y in zip(la, lb)), norm_ord)


def norm(a: Any, norm_ord: int) -> float:
  """||a|| over all leaves (float64 on the host); NaN if non-finite."""
  return _norm64((np.asarray(x, np.float64) for x in jax.tree.leaves(a)),
                 norm_ord)


def released_count(c: Captured, centered: bool) -> float:
  u, n = float(c.num_unclipped), float(c.num_examples)
  return u - n / 2.0 if centered else u


def pad(ids: np.ndarray, max_batch: int) -> tuple[np.ndarray, np.ndarray]:
  """(idx [B_max] int64, mask [B_max] bool): sorted ids first, then 0s."""
  ids = np.sort(np.asarray(ids, np.int64))
  if ids.size > max_batch:
    raise ValueError(f'{ids.size} records do not fit B_max={max_batch}.')
  idx = np.zeros((max_batch,), np.int64)
  mask = np.zeros((max_batch,), bool)
  idx[:ids.size] = ids
  mask[:ids.size] = True
  return idx, mask


def scenario_ids(target: Target, scenario: str) -> np.ndarray:
  """The sorted record ids of D in `scenario` (room left for one more)."""
  n_data, cap = target.dataset_size, max(1, target.max_batch - 1)
  rng = np.random.default_rng([target.seed, 20240612])
  if scenario == 'full':
    return np.sort(rng.choice(n_data, size=min(cap, n_data), replace=False))
  if target.sampling == 'poisson':
    sampler = sampling.PoissonSampler(n_data, target.expected_batch_size,
                                      target.max_batch, target.sampler_seed)
  else:
    sampler = sampling.ShuffleSampler(n_data,
                                      int(target.expected_batch_size),
                                      target.sampler_seed)
  idx, mask = sampler.draw()
  ids = np.sort(idx[mask])[:cap]
  if ids.size < 2:  # an (unlikely) empty or single draw: two random records
    ids = np.sort(np.unique(np.concatenate(
        [ids, rng.choice(n_data, size=2, replace=False)])))[:2]
  if scenario == 'small':
    return ids[:2]
  if scenario != 'sampled':
    raise ValueError(f'scenario must be one of {SCENARIOS}, got '
                     f'{scenario!r}.')
  return ids


def removal_slots(n: int, k: int) -> np.ndarray:
  """k slots evenly spread over 0..n-1, first and last included (k<=0: all)."""
  if k <= 0 or k >= n:
    return np.arange(n)
  return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def new_record(train: dict[str, np.ndarray], source: int, kind: str,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A record that is not in the training set, derived from record `source`.

  'reversed': every per-token field reversed along its token axis (a label
  flipped); 'random': token fields ('inputs', 'targets') drawn uniformly from
  the token values of the training set, other fields kept (a label flipped);
  'copy': an exact duplicate (a second record with equal content).
  """
  rec = {k: np.array(v[source]) for k, v in train.items()}
  if kind == 'copy':
    return rec
  if kind not in ADDITIONS:
    raise ValueError(f'addition kind must be one of {ADDITIONS}, got '
                     f'{kind!r}.')
  for k, v in rec.items():
    if v.ndim == 0:  # a label: flipped within the observed range
      lo, hi = train[k].min(), train[k].max()
      rec[k] = np.asarray(lo + hi - v, v.dtype)
    elif kind == 'reversed':
      rec[k] = v[::-1].copy()
    elif k in ('inputs', 'targets'):
      values = np.unique(train[k])
      rec[k] = rng.choice(values, size=v.shape).astype(v.dtype)
  return rec


def _append(train: dict[str, np.ndarray], rec: dict[str, np.ndarray]
            ) -> dict[str, np.ndarray]:
  return {k: np.concatenate([v, rec[k][None].astype(v.dtype)])
          for k, v in train.items()}


def replay(target: Target, *, scenarios: Sequence[str] = SCENARIOS,
           removals: int = 8, additions: int = len(ADDITIONS),
           tolerance: float = DEFAULT_TOLERANCE,
           rounding_allowance: float = 0.0) -> ReplayReport:
  """Runs the neighbouring-dataset replay on `target`.

  Args:
    target: the step to replay.
    scenarios: which batches D to use (see module docstring).
    removals: records removed per scenario (evenly spread over the slots,
      first and last included; <= 0: every record).
    additions: new records tried per scenario (the first of `ADDITIONS`);
      the report keeps the worst.
    tolerance: relative slack for float32 rounding: a pair passes when
      distance <= sensitivity * (1 + tolerance + rounding_allowance *
      rounding_scale).
    rounding_allowance: k >= 0 (see "Float32 rounding" above; 0: strict).

  Returns:
    A `ReplayReport` (`.passed` False on any violation).
  """
  for s in scenarios:
    if s not in SCENARIOS:
      raise ValueError(f'scenario must be one of {SCENARIOS}, got {s!r}.')
  if not 0 <= additions <= len(ADDITIONS):
    raise ValueError(f'additions must be in [0, {len(ADDITIONS)}], got '
                     f'{additions!r}.')
  if not tolerance >= 0:
    raise ValueError(f'tolerance must be >= 0, got {tolerance!r}.')
  if not rounding_allowance >= 0:
    raise ValueError('rounding_allowance must be >= 0, got '
                     f'{rounding_allowance!r}.')
  t0 = time.time()
  cases: list[CaseResult] = []
  dtypes: set[str] = set()
  n_data, bmax = target.dataset_size, target.max_batch
  rng = np.random.default_rng([target.seed, 7])

  def check(scen, kind, label, n, base, other):
    d = distance(base.total, other.total, target.norm_ord)
    r = d / target.sensitivity
    scale = U_FLOAT32 * max(norm(base.total, target.norm_ord),
                            norm(other.total, target.norm_ord)
                            ) / target.sensitivity
    cases.append(CaseResult(
        scen, kind, label, n, d, target.sensitivity, r,
        r <= 1.0 + tolerance + rounding_allowance * scale, scale))
    if target.count_sensitivity is not None:
      dc = abs(released_count(base, target.count_centered) -
               released_count(other, target.count_centered))
      dc = dc if math.isfinite(dc) else math.nan
      rc = dc / target.count_sensitivity
      cases.append(CaseResult(scen, 'count', f'{kind} {label}', n, dc,
                              target.count_sensitivity, rc,
                              rc <= 1.0 + tolerance))

  for scen in scenarios:
    ids = scenario_ids(target, scen)
    n = int(ids.size)
    base = target.run(target.train, *pad(ids, bmax))
    leaf_dtypes = {str(np.asarray(x).dtype) for x in jax.tree.leaves(
        base.total)}
    dtypes |= leaf_dtypes
    if leaf_dtypes != {'float32'}:
      cases.append(CaseResult(scen, 'dtype', f'clipped sum in {leaf_dtypes}',
                              n, math.nan, math.nan, math.nan, False))
    for slot in removal_slots(n, removals):
      rest = np.delete(ids, slot)
      other = target.run(target.train, *pad(rest, bmax))
      check(scen, 'remove', f'record {ids[slot]} at slot {slot}', n, base,
            other)
    if n + 1 > bmax:
      continue
    for kind in ADDITIONS[:additions]:
      source = int(ids[0])
      rec = new_record(target.train, source, kind, rng)
      grown = _append(target.train, rec)
      other = target.run(grown, *pad(np.append(ids, n_data), bmax))
      check(scen, 'add', f'{kind} of record {source} as record {n_data}',
            n, base, other)
  return ReplayReport(
      path=target.path, norm=f'L{target.norm_ord}',
      sensitivity=target.sensitivity,
      count_sensitivity=target.count_sensitivity, tolerance=tolerance,
      sum_dtype='/'.join(sorted(dtypes)), cases=cases, notes=target.notes,
      seconds=time.time() - t0, rounding_allowance=rounding_allowance)
