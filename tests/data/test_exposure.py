"""Tests for dpjax.data.exposure against hand-computed ranks and a memorizer."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest

from dpjax.data import exposure, records

PREFIX = 'My ID number is '


def _value_scorer(texts):
  """NLL = the secret read as an integer: the rank of 'abc' is int(abc) + 1."""
  return np.array([int(t[len(PREFIX):].replace(' ', '')) for t in texts], float)


class CharNgram:
  """Character n-gram LM with add-one smoothing, trained by counting."""

  def __init__(self, texts, order=6):
    self.k = order - 1
    self.counts = collections.defaultdict(collections.Counter)
    self.vocab = set()
    for t in texts:
      for i, c in enumerate(t):
        self.counts[t[max(0, i - self.k):i]][c] += 1
        self.vocab.add(c)
    self.v = len(self.vocab) + 1

  def __call__(self, texts):
    out = np.empty(len(texts))
    for j, t in enumerate(texts):
      nll = 0.0
      for i in range(len(PREFIX), len(t)):
        ctr = self.counts.get(t[max(0, i - self.k):i])
        n, tot = (ctr[t[i]], sum(ctr.values())) if ctr else (0, 0)
        nll -= math.log((n + 1) / (tot + self.v))
      out[j] = nll
    return out


def test_expected_exposure_at_chance_formula():
  # Hand: N=2 -> ranks 1, 2 -> exposures 1, 0 -> mean 0.5.
  assert exposure.expected_exposure_at_chance(2) == pytest.approx(0.5)
  assert exposure.expected_exposure_at_chance(4) == pytest.approx(
      2 - math.log2(24) / 4)
  # Tends to 1/ln 2 (Stirling):
  # log2(N) - log2(N!)/N = 1/ln 2 - log2(2 pi N)/(2N) + O(1/N**2).
  n = 10**6
  assert exposure.expected_exposure_at_chance(n) == pytest.approx(
      1 / math.log(2) - math.log2(2 * math.pi * n) / (2 * n), abs=1e-9)


def test_exact_rank_and_ties():
  res = exposure.exposure(_value_scorer, PREFIX, '0 4 2')
  assert (res.rank, res.space_size, res.method) == (43, 1000, 'exact')
  assert res.exposure == pytest.approx(math.log2(1000) - math.log2(43))
  top = exposure.exposure(_value_scorer, PREFIX, '0 0 0')
  assert top.exposure == pytest.approx(math.log2(1000))
  const = exposure.exposure(lambda t: np.zeros(len(t)), PREFIX, '5 5 5')
  assert const.rank == pytest.approx(500.5)  # mid-rank of 1000 ties
  assert exposure.all_secrets(2, sep='-')[:3] == ['0-0', '0-1', '0-2']


def test_random_scorer_is_at_chance():
  rng = np.random.default_rng(0)
  cands = exposure.all_secrets(3)
  scorer = lambda t: rng.random(len(t))
  vals = [exposure.exposure(scorer, PREFIX, cands[rng.integers(1000)],
                            candidates=cands).exposure for _ in range(400)]
  expected = exposure.expected_exposure_at_chance(1000)  # 1.4364
  # exposure ~ -log2(uniform): std ~ 1/ln 2 = 1.44, so the mean's SE is 0.072.
  assert abs(np.mean(vals) - expected) < 0.25, np.mean(vals)


def test_memorized_canary_has_maximal_exposure():
  cans = records.make_canaries([50, 0], seed=7, n_digits=4)
  notes = [r.text for r in records.make_records(300, seed=7)]
  scorer = CharNgram(records.insert_canaries(notes, cans, seed=7))
  seen = exposure.exposure(scorer, PREFIX, cans[0].secret)
  assert seen.rank == 1 and seen.exposure == pytest.approx(math.log2(10**4))
  control = exposure.exposure(scorer, PREFIX, cans[1].secret)
  assert control.exposure < 8, control


def test_sampled_exposure_is_unbiased_for_the_rank():
  secret = '4 2 0 0'  # true rank 4201 of 10**4 under the value scorer
  ranks = [exposure.sampled_exposure(_value_scorer, PREFIX, secret,
                                     n_samples=200, seed=s).rank
           for s in range(30)]
  # rank_hat std ~ 9999 * sqrt(.42 * .58 / 200) = 349; mean of 30: SE 64.
  assert abs(np.mean(ranks) - 4201) < 300
  top = exposure.sampled_exposure(_value_scorer, PREFIX, '0 0 0 0',
                                  n_samples=50, seed=0)
  assert top.rank == 1 and top.exposure == pytest.approx(math.log2(10**4))
  assert top.n_scored == 51 and top.method == 'sampled'


def test_sampled_ceiling_and_extrapolation_are_told_apart():
  # The secret beats all 50 samples: rank 1 of the 51 scored texts, so the
  # rank-based exposure is at its ceiling log2(51); the extrapolation to
  # |R| = 10**4 claims the full-space maximum log2(10**4).
  top = exposure.sampled_exposure(_value_scorer, PREFIX, '0 0 0 0',
                                  n_samples=50, seed=0)
  assert top.n_lower == 0 and top.sampled_rank == 1
  assert top.sampled_ceiling_bits == pytest.approx(math.log2(51))
  assert top.rank_exposure == pytest.approx(math.log2(51))
  assert top.full_space_max_bits == pytest.approx(math.log2(10**4))
  assert top.exposure == pytest.approx(top.full_space_max_bits)
  # k = 0 of m: the one-sided 95% bound on p is 1 - 0.05**(1/m).
  p_hi = 1 - 0.05**(1 / 50)
  assert top.extrapolated_lower_bound(0.95) == pytest.approx(
      math.log2(10**4) - math.log2(1 + 9999 * p_hi))
  assert top.extrapolated_lower_bound(0.95) < top.rank_exposure
  # Hand: k = 3 of m = 9 ranks the secret 4th of 10 scored texts, and
  # extrapolates to rank 1 + 999 * 3 / 9 = 334 of 1000.
  mid = exposure.ExposureResult.from_sampled_count(3, 9, 1000)
  assert (mid.sampled_rank, mid.n_scored, mid.rank) == (4, 10, 334)
  assert mid.rank_exposure == pytest.approx(math.log2(10) - 2)
  assert mid.exposure == pytest.approx(math.log2(1000) - math.log2(334))
  assert mid.extrapolated_lower_bound(0.95) < mid.exposure
  # The rank-based exposure never exceeds its ceiling.
  for s in range(20):
    res = exposure.sampled_exposure(_value_scorer, PREFIX, '0 3 0 0',
                                    n_samples=30, seed=s)
    assert 0 <= res.rank_exposure <= res.sampled_ceiling_bits
  # Exact: every candidate scored, so the two coincide.
  ex = exposure.exposure(_value_scorer, PREFIX, '0 4 2')
  assert ex.rank_exposure == pytest.approx(ex.exposure)
  assert ex.extrapolated_lower_bound() == ex.exposure
  with pytest.raises(ValueError, match='outside'):
    exposure.ExposureResult.from_sampled_count(10, 9, 1000)


def test_reported_fields_qualify_sampled_and_extrapolated():
  from dpjax import memorization  # pylint: disable=g-import-not-at-top
  f = memorization.exposure_fields(
      exposure.ExposureResult.from_sampled_count(0, 2000, 10**6))
  assert f['sampled_candidates'] == 2001
  assert f['sampled_ceiling_bits'] == pytest.approx(10.9665, abs=1e-4)
  assert f['exposure_rank_bits'] == pytest.approx(f['sampled_ceiling_bits'])
  assert f['exposure_extrapolated_bits'] == pytest.approx(19.9316, abs=1e-4)
  assert f['full_space_max_bits'] == pytest.approx(19.9316, abs=1e-4)
  assert 9 < f['exposure_extrapolated_lower95_bits'] < 10
  assert 'rank_hat' in f['extrapolation_method']
  # Earlier names keep their meanings.
  assert f['exposure_bits'] == f['exposure_extrapolated_bits']
  assert f['max_exposure_bits'] == f['full_space_max_bits']
  assert f['candidates_scored'] == f['sampled_candidates']


def test_errors():
  with pytest.raises(ValueError, match='do not contain'):
    exposure.exposure(_value_scorer, PREFIX, '1 2', candidates=['0 0'])
  with pytest.raises(ValueError, match='returned 1 scores'):
    exposure.exposure(lambda t: np.zeros(1), PREFIX, '1 2')
  with pytest.raises(ValueError, match='not digits'):
    exposure.exposure(_value_scorer, PREFIX, '1x2')
