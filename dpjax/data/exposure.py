"""Canary exposure (Carlini et al., "The Secret Sharer", USENIX Security 2019).

For a canary `prefix + secret` and the candidate space R of all secrets of the
same format (e.g. every 6-digit string, |R| = 10**6), the model scores every
`prefix + candidate` by its negative log-likelihood; the secret's rank is its
position when candidates are sorted by NLL (1 = most likely), and

  exposure = log2 |R| - log2 rank.

It ranges over [0, log2 |R|]; log2 |R| means the model ranks the true secret
first. Ties count half (mid-rank: the expected rank under random tie
breaking), so a constant scorer gives rank (|R| + 1) / 2 and exposure about 1.

For a scorer that knows nothing about the secret, rank is uniform on
{1..|R|} and E[exposure] = log2 |R| - log2(|R|!) / |R|, which tends to
1 / ln 2 ~ 1.4427 bits (Stirling); `expected_exposure_at_chance` gives the
exact value.

When |R| is too large to score, `sampled_exposure` scores the secret and m
candidates drawn uniformly from R without the secret (K = m + 1 scored
texts); k counts sampled candidates with lower NLL (ties half). Two numbers
follow from k, and they answer different questions:

* the rank-based (sampled) exposure, log2 K - log2(1 + k): the secret's
  exposure among the K texts actually scored. It is a measurement, and it
  cannot exceed the sampled ceiling log2 K (10.97 bits for K = 2,001).
* the extrapolated exposure, log2 |R| - log2 rank_hat with
  rank_hat = 1 + (|R| - 1) k / m: the rank in the full space estimated by
  scaling the sampled fraction k / m to |R| (E[k / m] = (rank - 1) /
  (|R| - 1), so rank_hat is unbiased for the rank). It reaches the
  full-space maximum log2 |R| whenever k = 0, i.e. whenever the secret beats
  every sampled candidate: above about log2 m it is an extrapolation the
  sample does not resolve. `ExposureResult.extrapolated_lower_bound` gives
  a one-sided Clopper-Pearson confidence bound for it (k = 0, m = 2,000,
  95%: about 9.4 bits of the 19.93 maximum).

Scoring is model-agnostic: `score_fn(texts: list[str]) -> np.ndarray` of
NLLs, e.g. a jitted model summed over the secret's tokens.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

ScoreFn = Callable[[list], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ExposureResult:
  """Rank and exposure of one canary.

  Attributes:
    rank: the secret's (mid-)rank among candidates, 1 = most likely; an
      estimate extrapolated to the full space when `method == 'sampled'`.
    exposure: log2(space_size) - log2(rank), in bits; for 'sampled' an
      extrapolation (see the module docstring), not a measurement.
    space_size: |R|.
    n_scored: texts scored, the secret included (|R| for 'exact', m + 1
      for 'sampled').
    method: 'exact' or 'sampled'.
    n_lower: scored candidates other than the secret with lower NLL (ties
      count half): rank - 1 for 'exact', k for 'sampled'.
  """
  rank: float
  exposure: float
  space_size: int
  n_scored: int
  method: str
  n_lower: float

  @classmethod
  def from_sampled_count(cls, n_lower: float, n_samples: int,
                         space_size: int) -> ExposureResult:
    """The 'sampled' result for k = `n_lower` of m = `n_samples` candidates."""
    if not 0 <= n_lower <= n_samples:
      raise ValueError(f'n_lower={n_lower} outside [0, {n_samples}]')
    rank = 1.0 + (space_size - 1) * n_lower / n_samples
    return cls(rank, math.log2(space_size) - math.log2(rank), int(space_size),
               int(n_samples) + 1, 'sampled', float(n_lower))

  @property
  def sampled_rank(self) -> float:
    """The secret's (mid-)rank among the scored texts: 1 + n_lower."""
    return 1.0 + self.n_lower

  @property
  def sampled_ceiling_bits(self) -> float:
    """log2 of the texts scored: the most a rank among them can show."""
    return math.log2(self.n_scored)

  @property
  def rank_exposure(self) -> float:
    """Rank-based exposure among the scored texts, in [0, log2 n_scored].

    Equal to `exposure` for 'exact' (every candidate scored).
    """
    return self.sampled_ceiling_bits - math.log2(self.sampled_rank)

  @property
  def full_space_max_bits(self) -> float:
    """log2 |R|: the exposure of a secret ranked first in the full space."""
    return math.log2(self.space_size)

  def extrapolated_lower_bound(self, confidence: float = 0.95) -> float:
    """One-sided lower confidence bound on the full-space exposure.

    For 'sampled', k ~ Binomial(m, p) with p = (rank - 1) / (|R| - 1); the
    Clopper-Pearson upper bound on p from ceil(k) (ties rounded against the
    secret) gives an upper bound on the rank and so a lower bound on the
    exposure. For 'exact' it is `exposure`.

    Args:
      confidence: coverage of the bound, in (0, 1).

    Returns:
      Bits; the full-space exposure is at least this with probability
      `confidence` over the sampled candidates.
    """
    if self.method == 'exact':
      return self.exposure
    if not 0 < confidence < 1:
      raise ValueError(f'confidence={confidence} must be in (0, 1)')
    m = self.n_scored - 1
    k = math.ceil(self.n_lower)
    if k >= m:
      p_hi = 1.0
    else:
      from scipy import stats  # pylint: disable=g-import-not-at-top
      p_hi = float(stats.beta.ppf(confidence, k + 1, m - k))
    rank_hi = 1.0 + (self.space_size - 1) * p_hi
    return math.log2(self.space_size) - math.log2(rank_hi)


def expected_exposure_at_chance(space_size: int) -> float:
  """E[exposure] for a rank uniform on {1..|R|}: log2|R| - log2(|R|!)/|R|."""
  n = int(space_size)
  return math.log2(n) - math.lgamma(n + 1) / math.log(2) / n


def all_secrets(n_digits: int, sep: str = ' ') -> list[str]:
  """Every digit string of length `n_digits`, formatted with `sep`, in order."""
  if not 1 <= n_digits <= 7:
    raise ValueError(f'n_digits={n_digits}: enumerate at most 7 digits '
                     '(10**7 candidates); use sampled_exposure beyond')
  return [sep.join(f'{i:0{n_digits}d}') for i in range(10**n_digits)]


def _score(score_fn: ScoreFn, texts: list[str], batch_size: int) -> np.ndarray:
  out = []
  for s in range(0, len(texts), batch_size):
    part = np.asarray(score_fn(texts[s:s + batch_size]), np.float64).reshape(-1)
    if part.shape[0] != len(texts[s:s + batch_size]):
      raise ValueError(f'score_fn returned {part.shape[0]} scores for '
                       f'{len(texts[s:s + batch_size])} texts')
    out.append(part)
  scores = np.concatenate(out)
  if not np.all(np.isfinite(scores)):
    raise ValueError('score_fn returned non-finite NLLs')
  return scores


def _mid_rank_count(others: np.ndarray, secret_score: float) -> float:
  lower = np.sum(others < secret_score)
  return float(lower + 0.5 * np.sum(others == secret_score))


def _digits_of(secret: str, sep: str) -> int:
  digits = secret.split(sep) if sep else list(secret)
  if not digits or not all(len(d) == 1 and d.isdigit() for d in digits):
    raise ValueError(f'secret {secret!r} is not digits separated by {sep!r}')
  return len(digits)


def exposure(score_fn: ScoreFn, prefix: str, secret: str, *,
             candidates: Sequence[str] | None = None, sep: str = ' ',
             batch_size: int = 4096) -> ExposureResult:
  """Exact exposure of `secret` against the full candidate space.

  Args:
    score_fn: texts -> NLLs (lower = more likely).
    prefix: the canary's context.
    secret: the true secret, e.g. '7 3 9'.
    candidates: the space R (must contain `secret`); default every digit
      string of the secret's format (`all_secrets`).
    sep: digit separator of the secret format.
    batch_size: texts per `score_fn` call.

  Returns:
    `ExposureResult` with method 'exact'.
  """
  if candidates is None:
    candidates = all_secrets(_digits_of(secret, sep), sep)
  candidates = list(candidates)
  try:
    pos = candidates.index(secret)
  except ValueError:
    raise ValueError(
        f'candidates do not contain the secret {secret!r}') from None
  scores = _score(score_fn, [prefix + c for c in candidates], batch_size)
  others = np.delete(scores, pos)
  lower = _mid_rank_count(others, scores[pos])
  rank = 1.0 + lower
  n = len(candidates)
  return ExposureResult(rank, math.log2(n) - math.log2(rank), n, n, 'exact',
                        lower)


def sampled_exposure(score_fn: ScoreFn, prefix: str, secret: str, *,
                     n_samples: int, seed: int, sep: str = ' ',
                     batch_size: int = 4096) -> ExposureResult:
  """Exposure estimated from `n_samples` random other candidates.

  Candidates are digit strings of the secret's format drawn uniformly with
  replacement from R minus the secret; rank_hat = 1 + (|R| - 1) k / m. The
  result's `exposure` is the extrapolation to |R|; its `rank_exposure` is the
  measurement among the m + 1 scored texts (at most `sampled_ceiling_bits`).
  """
  n_digits = _digits_of(secret, sep)
  if n_samples < 1:
    raise ValueError(f'n_samples={n_samples} must be >= 1')
  space = 10**n_digits
  secret_int = int(secret.replace(sep, '') if sep else secret)
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, space - 1, size=n_samples)
  draws = draws + (draws >= secret_int)  # uniform over R without the secret
  texts = [prefix + secret] + [prefix + sep.join(f'{int(d):0{n_digits}d}')
                               for d in draws]
  scores = _score(score_fn, texts, batch_size)
  k = _mid_rank_count(scores[1:], scores[0])
  return ExposureResult.from_sampled_count(k, n_samples, space)
