"""One-run empirical privacy audit (Steinke, Nasr, Jagielski 2023).

"Privacy Auditing with One (1) Training Run", arXiv:2305.08846. Each of m
canaries is included in training independently with probability 1/2 (its
secret coin). After training, an attacker scores every canary from the
released output (higher = more likely included) and guesses "in" for the
k_plus highest scores and "out" for the k_minus lowest, abstaining on the
rest. With r = k_plus + k_minus guesses of which v are correct, Theorem 3
(and its (eps, delta) extension, Proposition 5 / Algorithm 2 of the paper)
says that under (eps, delta)-DP

  P[V >= v] <= f(v) + 2 m delta max_{1 <= i <= v} (f(v - i) - f(v)) / i,
  f(u) = P[Binomial(r, e^eps / (1 + e^eps)) >= u].

The lower bound at confidence 1 - alpha is the largest eps for which the
right-hand side is still <= alpha (bracketing by doubling, then Brent's
method; the reported eps itself satisfies the inequality, and since
(eps', delta)-DP implies (eps, delta)-DP for eps' < eps, every claim at or
below it is rejected as well).

Guess selection (`guesses='search'`). The default, `correction='grid'`,
guesses "in" on the k highest scores (ties in a random order from `seed`)
for each k of a family fixed before anything is seen, k = m/2^j (about
log2(m) + 1 counts), splits alpha evenly over them (Bonferroni) and reports
the largest bound: sound (see "Formal guarantees"), and on the issue's
golden scores stronger than the reference (2.08 / 4.09 / 6.39 for mu = 1 /
2 / 4 against 1.133 / 2.312 / 4.396), since the hull has hundreds of
vertices to pay for. `correction='hull'` reproduces the reference implementation
`CanaryScoreAuditor.epsilon_one_run` of google-deepmind/jax_privacy
(`jax_privacy/auditing.py`, default `Bonferroni()` threshold strategy),
re-implemented here in NumPy/SciPy:

  * only "in" guesses are made (k_minus = 0): for a threshold t every canary
    with score >= t is guessed "in", the others are abstained on;
  * the candidate thresholds are the distinct scores plus "above every
    score", reduced to the vertices of the upper convex hull of the
    (false-negative count, true-negative count) ROC points;
  * alpha is split evenly (Bonferroni) over those hull vertices (the
    `correction='hull'`; `'all'` uses m + 1 instead), and the
    largest per-threshold bound is reported.

Ties: with `guesses='search'` guesses are whole score thresholds, so a group
of tied scores is never split (all guessed or none). With a fixed guess
count, the order of tied scores is a uniformly random permutation drawn from
`numpy.random.default_rng(seed)`, independent of the coins; sorting is
stable on score only. The coins never influence which canaries are guessed.

Formal guarantees:
  For a FIXED guess rule (`guesses=k` or `(k_plus, k_minus)`), if
  (i) every canary was included independently with probability 1/2, (ii)
  the scores (hence the guesses) are a function of the released output only
  (plus randomness independent of the coins), and (iii) the training
  algorithm is (eps, delta)-DP with respect to adding/removing one canary,
  then P[epsilon_lb > eps] <= alpha (Theorem 3 / Proposition 5). So with
  probability >= 1 - alpha over the coins and the training randomness, any
  claim of (eps, delta)-DP with eps < epsilon_lb is false.

  For `guesses='search'` with the default `correction='grid'` each of the
  G fixed counts is such a fixed rule, so by the union bound P[epsilon_lb >
  eps] <= G (alpha / G) = alpha (measured: 2.1% of 2000 seeds of scores
  independent of the coins, m = 1000, alpha = 0.05).

  For `correction='hull'` the threshold is chosen after seeing the coins, and
  alpha is divided by the number of convex-hull vertices, as in the
  reference. That count is itself data dependent (the hull uses the coins),
  so the union bound is over a data-chosen family; it is what the reference
  does and is far smaller than the number of distinct scores, but it is not
  the textbook fixed-family Bonferroni correction, and it is measurably
  anti-conservative: with scores independent of the coins (a 0-DP
  mechanism), m = 1000, alpha = 0.05, 3000 seeds, the reference search
  reported epsilon_lb > 0 in 6.6% of seeds (95% CI 5.8%-7.6%); fixed
  guesses (k_plus = 100) gave 4.4%. `correction='all'` divides alpha by
  m + 1 instead (the at most m + 1 rules "guess in iff score >= the j-th
  distinct score" form a family fixed in advance, each a function of the
  output), which restores the guarantee P[epsilon_lb > eps] <= alpha for
  the search, at the price of a weaker bound.

  What it does NOT prove: it is a lower bound only. A small or zero value
  does not show that the run is private (the attack may just be weak; the
  paper's bound is also loose for small delta and few canaries: it never
  exceeds `max_epsilon_lower_bound(m, r)`). It says nothing about examples
  other than the canaries, nor about a differently seeded run, and it is
  void if canaries were not included by independent fair coins (e.g. a
  fixed half chosen by hand) or if the scores used the coins.

Pure NumPy/SciPy.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy import optimize
from scipy import special
from scipy import stats

_XTOL = 1e-10
_MAX_DOUBLINGS = 60


class OneRunAudit(NamedTuple):
  """Result of a one-run audit (see the module docstring)."""
  epsilon_lb: float
  num_canaries: int
  num_guesses: int
  num_correct: int
  k_plus: int
  k_minus: int
  alpha: float
  delta: float
  method: str


def _check_alpha_delta(alpha: float, delta: float) -> None:
  """Raises ValueError unless 0 < alpha < 1 and 0 <= delta < 1."""
  if not 0.0 < alpha < 1.0:  # also rejects NaN
    raise ValueError(f'alpha must be in (0, 1), got {alpha}.')
  if not 0.0 <= delta < 1.0:
    raise ValueError(f'delta must be in [0, 1), got {delta}.')


def _check_counts(m: int, r: int, v: int) -> None:
  """Raises ValueError unless 0 <= v <= r <= m and m >= 1."""
  for name, x in (('m', m), ('r', r), ('v', v)):
    if int(x) != x:
      raise ValueError(f'{name} must be an integer, got {x}.')
  if m < 1:
    raise ValueError(f'm (number of canaries) must be >= 1, got {m}.')
  if not 0 <= v <= r <= m:
    raise ValueError(f'need 0 <= v <= r <= m, got m={m}, r={r}, v={v}.')


def p_value(m: int, r: int, v: int, eps: float, delta: float = 0.0) -> float:
  """Bound on P[V >= v] under (eps, delta)-DP (Theorem 3 / Proposition 5).

  Args:
    m: number of canaries.
    r: number of guesses.
    v: number of correct guesses.
    eps: the epsilon of the DP claim being tested.
    delta: the delta of the DP claim being tested.

  Returns:
    f(v) + 2 m delta max_{1<=i<=v} (f(v-i) - f(v)) / i, capped at 1, where
    f(u) = P[Binomial(r, sigmoid(eps)) >= u].
  """
  q = special.expit(eps)
  tail = float(stats.binom.sf(v - 1, r, q))
  if delta == 0.0 or v == 0:
    return tail
  i = np.arange(1, v + 1)
  excess = stats.binom.sf(v - i - 1, r, q) - tail
  worst = float(np.max(excess / i))
  return min(tail + worst * delta * 2 * m, 1.0)


def _p_value_floor(m: int, r: int, v: int, eps: float, delta: float) -> float:
  """A cheap lower bound on `p_value` (its i = 1 and i = v terms only)."""
  q = special.expit(eps)
  tail = float(stats.binom.sf(v - 1, r, q))
  if delta == 0.0 or v == 0:
    return tail
  worst = max(float(stats.binom.pmf(v - 1, r, q)), (1.0 - tail) / v)
  return min(tail + worst * delta * 2 * m, 1.0)


def _solve_epsilon(m: int, r: int, v: int, alpha: float, delta: float,
                   eps_lo: float = 0.0) -> float:
  """Largest eps >= eps_lo with p_value <= alpha; eps_lo if none."""
  if r == 0 or _p_value_floor(m, r, v, eps_lo, delta) > alpha:
    return eps_lo

  def objective(eps: float) -> float:
    return alpha - p_value(m, r, v, eps, delta)

  if objective(eps_lo) <= 0:
    return eps_lo
  eps_hi = max(1.0, 2 * eps_lo)
  for _ in range(_MAX_DOUBLINGS):
    if objective(eps_hi) <= 0:
      break
    eps_lo, eps_hi = eps_hi, 2 * eps_hi
  else:
    return eps_lo
  root = optimize.brentq(objective, eps_lo, eps_hi, xtol=_XTOL)
  # Keep the reported value on the rejected (conservative) side of the root.
  while root > eps_lo and objective(root) < 0:
    root = max(eps_lo, root - _XTOL)
  return float(root)


def epsilon_lower_bound_from_counts(m: int, r: int, v: int, *,
                                    alpha: float = 0.05,
                                    delta: float = 0.0) -> float:
  """Theorem 3 for one fixed guess set.

  Args:
    m: number of canaries.
    r: number of guesses (k_plus + k_minus).
    v: number of correct guesses.
    alpha: 1 - confidence.
    delta: the delta of the DP claims tested.

  Returns:
    The largest eps such that P[V >= v] <= alpha under (eps, delta)-DP
    (0.0 when even eps = 0 is not rejected).

  Raises:
    ValueError: on counts outside 0 <= v <= r <= m, m >= 1, or alpha/delta
      out of range.
  """
  _check_alpha_delta(alpha, delta)
  _check_counts(m, r, v)
  return _solve_epsilon(int(m), int(r), int(v), alpha, delta)


def max_epsilon_lower_bound(m: int, r: int, *, alpha: float = 0.05,
                            delta: float = 0.0) -> float:
  """The bound when all r guesses are correct: no run exceeds it (m, r fixed).

  Args:
    m: number of canaries.
    r: number of guesses.
    alpha: 1 - confidence.
    delta: the delta of the DP claims tested.

  Returns:
    `epsilon_lower_bound_from_counts(m, r, r, alpha=alpha, delta=delta)`.
  """
  return epsilon_lower_bound_from_counts(m, r, r, alpha=alpha, delta=delta)


def _validate_inputs(scores: Sequence[float] | np.ndarray,
                     included: Sequence[bool] | np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Returns (scores, included) as 1-D float64 / bool arrays, validated."""
  s = np.asarray(scores, dtype=np.float64)
  c = np.asarray(included)
  if s.ndim != 1 or c.ndim != 1:
    raise ValueError(f'scores and included must be 1-D, got shapes '
                     f'{s.shape} and {c.shape}.')
  if s.size == 0:
    raise ValueError('scores must be non-empty.')
  if s.shape != c.shape:
    raise ValueError(f'scores and included must have the same length, got '
                     f'{s.size} and {c.size}.')
  if np.isnan(s).any():
    raise ValueError(f'scores contain {int(np.isnan(s).sum())} NaN value(s).')
  if c.dtype != np.bool_:
    if not np.isin(c, (0, 1)).all():
      raise ValueError('included must be boolean (or 0/1).')
    c = c.astype(bool)
  return s, c


def _upper_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Indices of the strict upper convex hull of points sorted by x (then y).

  Args:
    x: nondecreasing coordinates.
    y: coordinates, nondecreasing along with x.

  Returns:
    The indices (ascending) of the vertices that are not weakly dominated by
    a segment between two other points (collinear points are dropped).
  """
  hull: list[int] = []
  for k in range(x.size):
    while len(hull) >= 2:
      a, b = hull[-2], hull[-1]
      cross = (x[b] - x[a]) * (y[k] - y[a]) - (y[b] - y[a]) * (x[k] - x[a])
      if cross < 0:
        break
      hull.pop()
    hull.append(k)
  return np.asarray(hull, dtype=np.int64)


def _threshold_counts(s: np.ndarray, c: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
  """(true positives, false positives) of 'guess in iff score >= t'.

  Thresholds t are the distinct scores in increasing order, followed by
  "above every score" (no guesses).
  """
  order = np.argsort(s, kind='stable')
  s_sorted, c_sorted = s[order], c[order]
  starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
  in_below = np.r_[0, np.cumsum(c_sorted)]  # '#in with index < j'
  out_below = np.r_[0, np.cumsum(~c_sorted)]
  fn = np.r_[in_below[starts], in_below[-1]]
  tn = np.r_[out_below[starts], out_below[-1]]
  return in_below[-1] - fn, out_below[-1] - tn


def _screen(m: int, r: np.ndarray, v: np.ndarray, eps: float,
            delta: float, alpha: float) -> np.ndarray:
  """Mask of the (r, v) that may still reject some eps' > eps at alpha.

  Exact pruning: a candidate is dropped only if v <= r sigmoid(eps) (then
  P[V >= v] >= 1/2 > alpha, as the median of Binomial(r, q) is >= floor(rq))
  or if a lower bound on its p-value at eps (which increases with eps)
  already exceeds alpha.
  """
  q = special.expit(eps)
  precise = v > r * q
  tail = stats.binom.sf(v - 1, r, q)
  floor = tail
  if delta > 0:
    pmf = stats.binom.pmf(v - 1, r, q)
    worst = np.maximum(pmf, (1.0 - tail) / np.maximum(v, 1))
    floor = tail + worst * delta * 2 * m
  return precise & (r > 0) & (floor <= alpha)


def _best_threshold(m: int, r: np.ndarray, v: np.ndarray, alpha: float,
                    delta: float) -> tuple[float, int, int]:
  """Max over candidates (r_j, v_j) of the Theorem 3 bound at alpha.

  Visits the most precise candidates first and re-screens the rest after
  each improvement (speed only: the result is the exact maximum).

  Returns:
    (epsilon, r, v) of the best candidate; (0.0, 0, 0) if none rejects 0.
  """
  with np.errstate(divide='ignore', invalid='ignore'):
    prec = np.where(r > 0, v / np.maximum(r, 1), 0.0)
  todo = np.argsort(-prec, kind='stable')
  best = (0.0, 0, 0)
  todo = todo[_screen(m, r[todo], v[todo], best[0], delta, alpha)]
  while todo.size:
    j, todo = todo[0], todo[1:]
    rj, vj = int(r[j]), int(v[j])
    eps = _solve_epsilon(m, rj, vj, alpha, delta, eps_lo=best[0])
    if eps > best[0]:
      best = (eps, rj, vj)
      todo = todo[_screen(m, r[todo], v[todo], eps, delta, alpha)]
  return best


def guess_grid(m: int) -> np.ndarray:
  """The fixed family of guess counts of `correction='grid'`.

  k = round(m / 2^j) for j = 0, 1, ... (k >= 1), i.e. about log2(m) + 1
  counts chosen before any score or coin is seen.
  """
  ks, j = set(), 0
  while True:
    k = int(round(m / 2.0 ** j))
    if k < 1:
      break
    ks.add(k)
    j += 1
  return np.asarray(sorted(ks), np.int64)


def _grid_search(s: np.ndarray, c: np.ndarray, alpha: float, delta: float,
                 seed: int) -> OneRunAudit:
  """Bonferroni over the fixed guess counts `guess_grid(m)`: sound."""
  m = s.size
  ks = guess_grid(m)
  ranked = _ranked(s, seed)
  in_from_top = np.cumsum(c[ranked[::-1]].astype(np.int64))
  v_all = in_from_top[ks - 1]
  eps, r, v = _best_threshold(m, ks, v_all, alpha / ks.size, delta)
  method = (f'steinke2023 thm3 (delta via prop5); top-k in-guesses, '
            f'bonferroni alpha/{ks.size} over the fixed counts k = m/2^j '
            f'(random tie order, seed {seed})')
  return OneRunAudit(float(eps), m, r, v, r, 0, alpha, delta, method)


def _search(s: np.ndarray, c: np.ndarray, alpha: float, delta: float,
            correction: str) -> OneRunAudit:
  """Threshold search of the reference (jax_privacy epsilon_one_run).

  Args:
    s: [m] scores.
    c: [m] coins.
    alpha: overall 1 - confidence.
    delta: the delta of the DP claims tested.
    correction: 'hull' (reference: Bonferroni over the ROC hull vertices) or
      'all' (Bonferroni over m + 1 threshold rules, a fixed family).

  Returns:
    The OneRunAudit record of the best threshold.
  """
  m = s.size
  tp, fp = _threshold_counts(s, c)
  if correction == 'hull':
    fn, tn = tp[0] - tp, fp[0] - fp
    keep = _upper_hull(fn.astype(np.float64), tn.astype(np.float64))
    tp, fp = tp[keep], fp[keep]
    num_tests = keep.size
    family = 'ROC hull (jax_privacy epsilon_one_run)'
  elif correction == 'all':
    num_tests = m + 1
    family = 'all m+1 score thresholds'
  else:
    raise ValueError(f"correction must be 'grid', 'hull' or 'all', got "
                     f'{correction!r}.')
  alpha_each = alpha / num_tests
  r_all = tp + fp
  eps, r, v = _best_threshold(m, r_all, tp, alpha_each, delta)
  method = (f'steinke2023 thm3 (delta via prop5); in-guesses at score '
            f'thresholds, bonferroni alpha/{num_tests} over {family}')
  return OneRunAudit(float(eps), m, r, v, r, 0, alpha, delta, method)


def _ranked(s: np.ndarray, seed: int) -> np.ndarray:
  """Indices sorted by score (stable), ties in a random order from seed."""
  perm = np.random.default_rng(seed).permutation(s.size)
  return perm[np.argsort(s[perm], kind='stable')]


def _fixed(s: np.ndarray, c: np.ndarray, k_plus: int, k_minus: int,
           alpha: float, delta: float, seed: int) -> OneRunAudit:
  """Theorem 3 for the fixed guess counts (k_plus top in, k_minus low out)."""
  m = s.size
  if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
    raise ValueError(f'need k_plus, k_minus >= 0 and k_plus + k_minus <= m; '
                     f'got k_plus={k_plus}, k_minus={k_minus}, m={m}.')
  ranked = _ranked(s, seed)
  top, bottom = ranked[m - k_plus:], ranked[:k_minus]
  v = int(c[top].sum()) + int((~c[bottom]).sum())
  r = k_plus + k_minus
  eps = _solve_epsilon(m, r, v, alpha, delta)
  method = (f'steinke2023 thm3 (delta via prop5); fixed guesses '
            f'k+={k_plus}, k-={k_minus}, random tie order (seed {seed})')
  return OneRunAudit(float(eps), m, r, v, k_plus, k_minus, alpha, delta,
                     method)


def _parse_guesses(guesses: str | int | tuple[int, int]
                   ) -> tuple[int, int] | None:
  """None for 'search', else (k_plus, k_minus)."""
  if isinstance(guesses, str):
    if guesses != 'search':
      raise ValueError(f"guesses must be 'search', an int or (k_plus, "
                       f"k_minus), got {guesses!r}.")
    return None
  if isinstance(guesses, (int, np.integer)) and not isinstance(guesses, bool):
    return int(guesses), 0
  if (isinstance(guesses, tuple) and len(guesses) == 2 and
      all(isinstance(g, (int, np.integer)) for g in guesses)):
    return int(guesses[0]), int(guesses[1])
  raise ValueError(f"guesses must be 'search', an int or (k_plus, k_minus), "
                   f'got {guesses!r}.')


def epsilon_lower_bound(scores: Sequence[float] | np.ndarray,
                        included: Sequence[bool] | np.ndarray, *,
                        alpha: float = 0.05, delta: float = 0.0,
                        guesses: str | int | tuple[int, int] = 'search',
                        seed: int = 0,
                        correction: str = 'grid') -> OneRunAudit:
  """One-run lower bound on epsilon from canary scores and coins.

  Args:
    scores: [m] attack scores, higher = more likely included. +-inf allowed.
    included: [m] bool, the secret coin of each canary.
    alpha: 1 - confidence (overall, including the search correction).
    delta: the delta of the DP claims tested.
    guesses: 'search' (the reference threshold search with its Bonferroni
      correction), an int k_plus (top k_plus guessed in, no out guesses), or
      (k_plus, k_minus) for a fixed choice.
    seed: seed of the random order of tied scores (fixed guesses only).
    correction: multiple-testing correction of the search. 'grid' (default,
      sound): top-k guesses for the ~log2(m) + 1 counts k = m/2^j fixed in
      advance, alpha divided by their number. 'hull' (the reference;
      reproduces its published values) divides alpha by the
      number of ROC-hull vertices, a data-dependent count (see "Formal
      guarantees"); 'all' divides it by m + 1, a fixed family of threshold
      rules, for which the union bound is rigorous (it is much weaker when
      delta > 0, the 2 m delta term then dominating).

  Returns:
    The OneRunAudit record.

  Raises:
    ValueError: on alpha outside (0, 1), delta outside [0, 1), empty or
      mismatched inputs, NaN scores, or invalid guess counts.
  """
  _check_alpha_delta(alpha, delta)
  s, c = _validate_inputs(scores, included)
  fixed = _parse_guesses(guesses)
  if fixed is None:
    if correction == 'grid':
      return _grid_search(s, c, alpha, delta, seed)
    return _search(s, c, alpha, delta, correction)
  return _fixed(s, c, fixed[0], fixed[1], alpha, delta, seed)


__all__ = [
    'OneRunAudit', 'epsilon_lower_bound', 'epsilon_lower_bound_from_counts',
    'max_epsilon_lower_bound', 'p_value', 'guess_grid',
]
