"""User-level DP: the privacy unit is a person, not a record.

When `config.data.user_field` names the column that identifies a person,
adding or removing one user (with all of their records) is the neighbouring
relation. Two ways to train (Charles et al. 2024, "Fine-tuning large
language models with user-level differential privacy"), chosen by
`config.dp.user_sampling`:

* 'uls' (user-level sampling, the default): Poisson-sample users with
  q = expected users per step / number of users; each sampled user
  contributes up to k = `data.max_records_per_user` of their records, chosen
  afresh every step with the secret sampler randomness; the gradients of
  those records are averaged into ONE contribution, which is clipped to C.
  The step is the record-level step with a user in place of a record: one
  definition of clipping, noise and accounting.
* 'els' (example-level sampling with group accounting): each user keeps at
  most k records (chosen once with the secret randomness); records are
  Poisson-sampled and clipped one by one as in record-level DP-SGD, and the
  ledger records every step as the user-level mechanism it is (below).

Formal guarantees:
  ULS: removing or adding one user changes the clipped sum of a step by at
  most C (their one clipped contribution, present with probability q), so
  each step is the Poisson-subsampled Gaussian mechanism (rate q over
  users, multiplier z) under add/remove-one-user: exactly what the ledger
  records. Which of a user's records are used, and how many (<= k), depends
  only on that user's data and the secret randomness.
  ELS: a user holds m <= k records of the (capped) training set; a step
  includes each independently with probability q, and their clipped
  gradients add at most m C <= k C to the sum. The step's output on D + u
  is the mixture (1 - p_m) N(mu, s^2) + p_m E[N(mu + V, s^2)] with
  p_m = 1 - (1 - q)^m <= p = 1 - (1 - q)^k and ||V|| <= k C. By the joint
  convexity of the hockey-stick divergence and its monotonicity in the
  mixing weight and in the shift, the pair is dominated by the
  Poisson-subsampled Gaussian at rate p with multiplier z / k (both
  directions of add/remove). The ledger records (p, z / k) for every ELS
  step, so every accountant (PLD, RDP) composes the user-level mechanism.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import sampling

MODES = ('uls', 'els')
RECORD_MASK = 'record_mask'


def els_rate(q: float, group_size: int) -> float:
  """The user-level sampling rate of an ELS step: 1 - (1 - q)^k."""
  return float(-math.expm1(group_size * math.log1p(-q))) if q < 1 else 1.0


def user_unit(base: str, mode: str, k: int) -> str:
  """The ledger's unit for a user-level run ("one user, at most k ...")."""
  if mode == 'uls':
    return (f'{base}, with all of their records (at most {k} of them, chosen '
            f'at random, per step; their gradients averaged into one '
            f'contribution clipped to C)')
  return (f'{base}, with at most {k} records in the training set (example-'
          f'level sampling; each step accounted as the user-level mechanism '
          f'at rate 1 - (1 - q)^{k} and multiplier z / {k})')


def user_loss_fn(loss_fn):
  """A user's loss: the mean of `loss_fn` over their selected records.

  `example` holds the records `[k, ...]` of one user and `record_mask [k]`;
  `keys [k]` are the records' own dropout keys. The gradient of this loss
  is the average of the records' gradients, which the step clips as one
  contribution.
  """

  def user_loss(trainable, frozen, example, keys):
    mask = example[RECORD_MASK]
    records = {k: v for k, v in example.items() if k != RECORD_MASK}
    losses = jax.vmap(loss_fn, in_axes=(None, None, 0, 0))(
        trainable, frozen, records, keys)
    losses = jnp.where(mask > 0, losses, 0.0)
    return jnp.sum(losses) / jnp.maximum(jnp.sum(mask), 1.0)

  return user_loss


def gather_batch(train: dict[str, np.ndarray], indices: np.ndarray
                 ) -> dict[str, np.ndarray]:
  """The batch of `indices`: `[B]` records, or `[B, k]` users' records.

  For `[B, k]` indices, -1 marks an empty slot; the batch then carries
  `record_mask [B, k]` (1 for a real record).
  """
  if indices.ndim == 1:
    return {name: v[indices] for name, v in train.items()}
  safe = np.maximum(indices, 0)
  batch = {name: v[safe] for name, v in train.items()}
  batch[RECORD_MASK] = (indices >= 0).astype(np.float32)
  return batch


def _check_users(users: Sequence[np.ndarray]) -> list[np.ndarray]:
  users = [np.asarray(u, np.int64).reshape(-1) for u in users]
  if not users or any(u.size == 0 for u in users):
    raise ValueError('every user needs at least one record')
  return users


class _OverPoisson:
  """A sampler built on one `sampling.PoissonSampler` (`self._inner`), whose
  rate, sizes, counters and state it exposes; `unit` tags the state."""

  kind = 'poisson'
  unit = ''

  def _wrap(self, inner: sampling.PoissonSampler) -> None:
    self._inner = inner
    self.dataset_size = inner.dataset_size
    self.expected_batch_size = inner.expected_batch_size
    self.max_batch_size = inner.max_batch_size
    self.q = inner.q

  @property
  def steps_drawn(self) -> int:
    return self._inner.steps_drawn

  @property
  def overflows(self) -> int:
    return self._inner.overflows

  def overflow_probability(self) -> float:
    return self._inner.overflow_probability()

  def get_state(self) -> dict[str, Any]:
    return dict(self._inner.get_state(), unit=self.unit)

  def set_state(self, state: dict[str, Any]) -> None:
    if state.get('unit') != self.unit:
      raise ValueError(f'sampler state is not a {self.unit!r} sampler '
                       f'state (got unit {state.get("unit")!r})')
    self._inner.set_state({k: v for k, v in state.items() if k != 'unit'})


class UserSampler(_OverPoisson):
  """ULS: Poisson over users; up to k of a sampled user's records per step.

  `draw()` returns `(indices [B_max', k], mask [B_max'])`: record indices
  (-1 for empty slots) of the sampled users and which rows are users.
  B_max' is a multiple of `max_batch_size` (users), as for
  `sampling.PoissonSampler`, whose draw this wraps: a draw above the maximum
  is processed in chunks, never truncated.
  """

  unit = 'user'

  def __init__(self, users: Sequence[np.ndarray], records_per_user: int,
               expected_batch_size: float, max_batch_size: int, seed):
    self.users = _check_users(users)
    if records_per_user < 1:
      raise ValueError(f'records_per_user must be >= 1, got '
                       f'{records_per_user}')
    self.k = int(records_per_user)
    self._wrap(sampling.PoissonSampler(len(self.users), expected_batch_size,
                                       max_batch_size, seed))

  def draw(self, expected_batch_size: float | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    user_idx, mask = self._inner.draw(expected_batch_size)
    rng = self._inner._rng  # pylint: disable=protected-access
    out = np.full((user_idx.shape[0], self.k), -1, np.int64)
    for row in np.flatnonzero(mask):
      records = self.users[user_idx[row]]
      if records.size > self.k:
        records = np.sort(rng.choice(records, size=self.k, replace=False))
      out[row, :records.size] = records
    return out, mask


def els_pool(users: Sequence[np.ndarray], k: int, seed) -> np.ndarray:
  """ELS: the training records kept, at most k per user, chosen at random.

  `seed` must be secret (it decides which records are used); the pool's
  size, sum over users of min(n_u, k), is public (`els_pool_size`).
  """
  rng = np.random.Generator(np.random.PCG64(seed))
  kept = []
  for records in _check_users(users):
    if records.size > k:
      records = rng.choice(records, size=k, replace=False)
    kept.append(records)
  return np.sort(np.concatenate(kept))


def els_pool_size(users: Sequence[np.ndarray], k: int) -> int:
  return int(sum(min(len(u), k) for u in users))


class ElsSampler(_OverPoisson):
  """ELS: Poisson sampling of records from a pool of <= k records per user.

  Draws `(record indices [B_max'], mask)` of the training set, like
  `sampling.PoissonSampler` over the pool.
  """

  unit = 'els'

  def __init__(self, users: Sequence[np.ndarray], records_per_user: int,
               expected_batch_size: float, max_batch_size: int,
               seed: np.random.SeedSequence):
    pool_seed, sampler_seed = seed.spawn(2)
    self.pool = els_pool(users, records_per_user, pool_seed)
    self._wrap(sampling.PoissonSampler(len(self.pool), expected_batch_size,
                                       max_batch_size, sampler_seed))

  def draw(self, expected_batch_size: float | None = None
           ) -> tuple[np.ndarray, np.ndarray]:
    idx, mask = self._inner.draw(expected_batch_size)
    return self.pool[idx], mask
