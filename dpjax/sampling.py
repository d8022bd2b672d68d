"""Host-side batch samplers with fixed-shape padded output.

Every draw returns index and mask arrays whose length is a multiple of
`max_batch_size`, so the jitted step sees one static shape (a second shape
only in the rare event that a Poisson draw exceeds the maximum, see below).

Formal guarantees:
  `PoissonSampler`: at every step, each of the N examples is included
  independently with probability q, using a seeded `numpy.random.Generator`
  (the draw is a Binomial(N, q) size followed by a uniform subset of that
  size, which has exactly the same distribution). If a draw has more than
  `max_batch_size` examples it is NOT truncated: the batch is padded to the
  next multiple of `max_batch_size` and processed in several fixed-shape
  chunks whose clipped sums are added before the single noise addition. So
  the mechanism that runs is exactly the Poisson-subsampled Gaussian that the
  accountant composes; the cost is one extra compilation for the larger
  shape. `overflow_probability()` reports how rare this is.

  `ShuffleSampler`: shuffled fixed-size batches (epochs without
  replacement). It gives no amplification by subsampling that dpjax claims as
  a guarantee; the ledger marks the run 'shuffle' and the report accounts for
  it without amplification (see `dpjax.accounting.ledger`).

  Secrecy: the trainer seeds the generator from 256 bits of secret material
  (`dpjax.randomness.SecretRandomness.sampler_seed`, OS entropy by default);
  its state is secret and is checkpointed only in the owner-only secret store
  (`dpjax.secret_store`). PCG64 is a statistical, not a cryptographic,
  generator: an adversary who never sees its output (only noised weights)
  cannot exploit that; one who learns batch memberships could in principle.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats


class PoissonSampler:
  """Each example enters each batch independently with probability q."""

  kind = 'poisson'

  def __init__(self, dataset_size: int, expected_batch_size: float,
               max_batch_size: int, seed):
    if dataset_size <= 0:
      raise ValueError(f'dataset_size must be > 0, got {dataset_size}.')
    if not 0 < expected_batch_size <= dataset_size:
      raise ValueError(f'expected batch size must be in (0, dataset size '
                       f'{dataset_size}], got {expected_batch_size}.')
    if max_batch_size < 1:
      raise ValueError(f'max_batch_size must be >= 1, got {max_batch_size}.')
    self.dataset_size = int(dataset_size)
    self.expected_batch_size = float(expected_batch_size)
    self.q = self.expected_batch_size / self.dataset_size
    self.max_batch_size = int(max_batch_size)
    self._rng = np.random.Generator(np.random.PCG64(seed))
    self.steps_drawn = 0
    self.overflows = 0

  def overflow_probability(self) -> float:
    """P(a draw exceeds max_batch_size) = P(Binomial(N, q) > B_max)."""
    return float(stats.binom.sf(self.max_batch_size, self.dataset_size,
                                self.q))

  def draw(self, expected_batch_size: float | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Returns (indices, mask), length a multiple of max_batch_size.

    Args:
      expected_batch_size: this step's B_t for a batch-size schedule (rate
        q_t = B_t / N); None for the sampler's constant rate.
    """
    q = self.q
    if expected_batch_size is not None:
      if not 0 < expected_batch_size <= self.dataset_size:
        raise ValueError('expected_batch_size must be in (0, dataset size], '
                         f'got {expected_batch_size}.')
      q = float(expected_batch_size) / self.dataset_size
    n = int(self._rng.binomial(self.dataset_size, q))
    idx = self._rng.choice(self.dataset_size, size=n, replace=False)
    idx.sort()
    chunks = max(1, math.ceil(n / self.max_batch_size))
    if chunks > 1:
      self.overflows += 1
    size = chunks * self.max_batch_size
    indices = np.zeros((size,), np.int64)
    mask = np.zeros((size,), bool)
    indices[:n] = idx
    mask[:n] = True
    self.steps_drawn += 1
    return indices, mask

  def get_state(self) -> dict[str, Any]:
    return {'kind': self.kind, 'bit_generator': self._rng.bit_generator.state,
            'steps_drawn': self.steps_drawn, 'overflows': self.overflows}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get('kind') != self.kind:
      raise ValueError(f'sampler state is for {state.get("kind")!r}, '
                       f'not {self.kind!r}.')
    self._rng.bit_generator.state = state['bit_generator']
    self.steps_drawn = int(state['steps_drawn'])
    self.overflows = int(state['overflows'])


class ShuffleSampler:
  """Shuffled fixed-size batches; every batch has exactly `batch_size`."""

  kind = 'shuffle'

  def __init__(self, dataset_size: int, batch_size: int, seed):
    if not 0 < batch_size <= dataset_size:
      raise ValueError(f'batch_size must be in (0, dataset size '
                       f'{dataset_size}], got {batch_size}.')
    self.dataset_size = int(dataset_size)
    self.batch_size = int(batch_size)
    self.expected_batch_size = float(batch_size)
    self.max_batch_size = int(batch_size)
    self.q = self.batch_size / self.dataset_size
    self._rng = np.random.Generator(np.random.PCG64(seed))
    self._perm = self._rng.permutation(self.dataset_size)
    self._pos = 0
    self.steps_drawn = 0
    self.overflows = 0

  def draw(self) -> tuple[np.ndarray, np.ndarray]:
    if self._pos + self.batch_size > self.dataset_size:
      self._perm = self._rng.permutation(self.dataset_size)
      self._pos = 0
    idx = self._perm[self._pos:self._pos + self.batch_size].copy()
    self._pos += self.batch_size
    self.steps_drawn += 1
    return idx.astype(np.int64), np.ones((self.batch_size,), bool)

  def get_state(self) -> dict[str, Any]:
    return {'kind': self.kind, 'bit_generator': self._rng.bit_generator.state,
            'perm': self._perm.tolist(), 'pos': self._pos,
            'steps_drawn': self.steps_drawn}

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get('kind') != self.kind:
      raise ValueError(f'sampler state is for {state.get("kind")!r}, '
                       f'not {self.kind!r}.')
    self._rng.bit_generator.state = state['bit_generator']
    self._perm = np.asarray(state['perm'], np.int64)
    self._pos = int(state['pos'])
    self.steps_drawn = int(state['steps_drawn'])


def default_max_batch_size(dataset_size: int, expected_batch_size: float,
                           multiple: int, overflow_prob: float = 1e-6) -> int:
  """Smallest multiple of `multiple` with P(Binomial > it) <= overflow_prob."""
  q = expected_batch_size / dataset_size
  b = int(stats.binom.isf(overflow_prob, dataset_size, q))
  b = max(b, int(math.ceil(expected_batch_size)))
  return int(math.ceil(b / multiple) * multiple)
