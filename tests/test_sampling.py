"""Samplers: Poisson inclusion rate, padding, overflow, state, shuffle."""

import numpy as np
import pytest
from scipy import stats

from dpjax import sampling


def test_poisson_inclusion_is_bernoulli_q_per_example():
  n, b, steps = 200, 20.0, 400
  s = sampling.PoissonSampler(n, b, max_batch_size=64, seed=0)
  counts = np.zeros(n)
  sizes = []
  for _ in range(steps):
    idx, mask = s.draw()
    assert idx.shape == mask.shape == (64,)
    real = idx[mask]
    assert len(set(real.tolist())) == len(real)  # without replacement
    counts[real] += 1
    sizes.append(mask.sum())
  q = b / n
  # Total inclusions ~ Binomial(n * steps, q).
  total = counts.sum()
  p = stats.binomtest(int(total), n * steps, q).pvalue
  assert p > 1e-3
  # Per-example counts ~ Binomial(steps, q): a chi-square-like check.
  z = (counts - steps * q) / np.sqrt(steps * q * (1 - q))
  assert abs(np.mean(z)) < 0.5 and 0.7 < np.std(z) < 1.3


def test_poisson_batch_sizes_follow_binomial():
  n, b = 500, 25.0
  s = sampling.PoissonSampler(n, b, max_batch_size=80, seed=3)
  sizes = np.array([s.draw()[1].sum() for _ in range(2000)])
  assert abs(sizes.mean() - b) < 4 * np.sqrt(b * (1 - b / n) / 2000)
  assert abs(sizes.var() - b * (1 - b / n)) < 0.15 * b


def test_overflow_is_split_into_chunks_not_truncated():
  s = sampling.PoissonSampler(100, 50.0, max_batch_size=8, seed=0)
  idx, mask = s.draw()
  assert len(idx) % 8 == 0 and len(idx) > 8
  assert mask.sum() > 8  # nothing dropped
  assert s.overflows == 1
  assert s.overflow_probability() > 0.99


def test_state_round_trip_reproduces_draws():
  a = sampling.PoissonSampler(1000, 30.0, 64, seed=5)
  for _ in range(3):
    a.draw()
  state = a.get_state()
  nxt = [a.draw() for _ in range(3)]
  b = sampling.PoissonSampler(1000, 30.0, 64, seed=999)
  b.set_state(state)
  for (i1, m1), (i2, m2) in zip(nxt, [b.draw() for _ in range(3)]):
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(m1, m2)
  with pytest.raises(ValueError, match='shuffle'):
    sampling.ShuffleSampler(10, 2, 0).set_state(state)


def test_shuffle_covers_each_example_once_per_epoch():
  s = sampling.ShuffleSampler(20, 5, seed=1)
  seen = np.concatenate([s.draw()[0] for _ in range(4)])
  np.testing.assert_array_equal(np.sort(seen), np.arange(20))
  state = s.get_state()
  a = s.draw()[0]
  s2 = sampling.ShuffleSampler(20, 5, seed=2)
  s2.set_state(state)
  np.testing.assert_array_equal(a, s2.draw()[0])


def test_default_max_batch_size():
  m = sampling.default_max_batch_size(10000, 64, multiple=8)
  assert m % 8 == 0 and m > 64
  assert stats.binom.sf(m, 10000, 64 / 10000) <= 1e-6


def test_bad_arguments():
  with pytest.raises(ValueError, match='expected batch size'):
    sampling.PoissonSampler(10, 11, 16, 0)
  with pytest.raises(ValueError, match='dataset_size'):
    sampling.PoissonSampler(0, 1, 16, 0)
