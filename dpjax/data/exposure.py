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

When |R| is too large to score, `sampled_exposure` estimates the rank from m
candidates drawn uniformly from R without the secret:
rank_hat = 1 + (|R| - 1) * k / m, where k counts sampled candidates with
lower NLL (ties half). E[k / m] = (rank - 1) / (|R| - 1), so rank_hat is
unbiased for the rank; exposure estimates above log2 m or so are unreliable
(k = 0 gives the maximum, log2 |R|).

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
      estimate when `method == 'sampled'`.
    exposure: log2(space_size) - log2(rank), in bits.
    space_size: |R|.
    n_scored: candidates scored (|R| for 'exact').
    method: 'exact' or 'sampled'.
  """
  rank: float
  exposure: float
  space_size: int
  n_scored: int
  method: str


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
  rank = 1.0 + _mid_rank_count(others, scores[pos])
  n = len(candidates)
  return ExposureResult(rank, math.log2(n) - math.log2(rank), n, n, 'exact')


def sampled_exposure(score_fn: ScoreFn, prefix: str, secret: str, *,
                     n_samples: int, seed: int, sep: str = ' ',
                     batch_size: int = 4096) -> ExposureResult:
  """Exposure estimated from `n_samples` random other candidates.

  Candidates are digit strings of the secret's format drawn uniformly with
  replacement from R minus the secret; rank_hat = 1 + (|R| - 1) k / m.
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
  rank = 1.0 + (space - 1) * k / n_samples
  return ExposureResult(rank, math.log2(space) - math.log2(rank), space,
                        n_samples + 1, 'sampled')
