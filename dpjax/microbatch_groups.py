"""Micro-batch groups: clip the *mean* gradient of a group of records.

DP-Adam-AC's "micro-batching" (Yang 2025, as reconstructed) clips one
gradient per group of m records instead of one per record. Here a group's
unit is the mean of its members' gradients, u_k = (1/n_k) sum_{i in G_k} g_i,
clipped to C; the clipped units are summed over the non-empty groups.

Group membership must not depend on the other records, otherwise adding one
record could reshuffle many groups. `random_group_ids` draws each row's group
uniformly and independently from public randomness (K = `num_groups` groups),
which is what the guarantee below assumes; group sizes are then random (mean
B/K), and the public normaliser is the expected number of non-empty groups
(`expected_nonempty_groups`).

Formal guarantees (the privacy unit stays ONE RECORD):
  Adding or removing one record x changes only the unit of x's group k. Both
  the old and the new clipped unit have norm <= C, so the clipped sum moves
  by at most 2C (tight: the group's mean can flip direction), and by at most C
  when x is alone in its group (it was empty before). Replacing x by x':
  group draws are independent of the records, so the coupling that gives x'
  the draw of x changes one group's unit, by at most 2C. Hence the L2
  sensitivity S of
  the clipped sum is
      S = C   for m = 1 (each record its own unit), add/remove,
      S = 2C  for groups (m >= 2), add/remove or replace-one,
  and the noise std must be sigma * S for the step to be the Gaussian
  mechanism of multiplier sigma (`sensitivity_factor` gives S / C). The
  unclipped count over groups has sensitivity 1 (a record can flip its
  group's bit), see `dpjax.adaptive_clipping.count_sensitivity`.
  Padded rows (mask 0) belong to no group. A group whose mean is non-finite
  contributes 0 (as in `dpjax.clipping`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from dpjax import clipping

PyTree = Any


def sensitivity_factor(group_size: int,
                       neighbouring: str = 'add_remove') -> float:
  """S / C for the clipped sum of group units (see module docstring)."""
  if not (isinstance(group_size, int) and group_size >= 1):
    raise ValueError(f'group_size must be an int >= 1, got {group_size!r}.')
  if neighbouring not in ('add_remove', 'replace_one'):
    raise ValueError("neighbouring must be 'add_remove' or 'replace_one', "
                     f'got {neighbouring!r}.')
  if group_size == 1 and neighbouring == 'add_remove':
    return 1.0
  return 2.0


def random_group_ids(key: jax.Array, batch_size: int,
                     num_groups: int) -> jax.Array:
  """[batch_size] int32 group ids, iid uniform in [0, num_groups)."""
  if not (isinstance(num_groups, int) and num_groups >= 1):
    raise ValueError(f'num_groups must be an int >= 1, got {num_groups!r}.')
  return jax.random.randint(key, (batch_size,), 0, num_groups, jnp.int32)


def expected_nonempty_groups(*, dataset_size: int, q: float,
                             num_groups: int) -> float:
  """E[# non-empty groups] under Poisson(q) sampling and uniform group ids.

  Each record lands in a given group with probability q / K independently,
  so a group is empty with probability (1 - q/K)^N.
  """
  if not 0 < q <= 1:
    raise ValueError(f'q must be in (0, 1], got {q!r}.')
  return float(num_groups * (1.0 - (1.0 - q / num_groups) ** dataset_size))


def group_means(per_example: PyTree, mask: jax.Array, group_ids: jax.Array,
                num_groups: int) -> tuple[PyTree, jax.Array]:
  """(mean gradient of each group [K, ...], member counts [K])."""
  m = mask.astype(jnp.float32)
  counts = jax.ops.segment_sum(m, group_ids, num_segments=num_groups)
  inv = jnp.where(counts > 0, 1.0 / jnp.maximum(counts, 1.0), 0.0)

  def mean(x):
    keep = (m > 0).reshape((-1,) + (1,) * (x.ndim - 1))
    x32 = jnp.where(keep, x.astype(jnp.float32), 0.0)
    s = jax.ops.segment_sum(x32, group_ids, num_segments=num_groups)
    return s * inv.reshape((-1,) + (1,) * (x.ndim - 1))

  return jax.tree.map(mean, per_example), counts


def grouped_clipped_sum(per_example: PyTree, mask: jax.Array,
                        group_ids: jax.Array, *, num_groups: int,
                        l2_clip_norm: float | jax.Array
                        ) -> tuple[PyTree, jax.Array, jax.Array]:
  """Sum over non-empty groups of the clipped group-mean gradients.

  Group means, norms and the clipped sum are float32 whatever the gradient
  dtype (as `dpjax.clipping.clipped_sum`); nothing is skipped.

  Returns:
    (float32 clipped sum, unit norms [K], non-empty indicator [K] float32).
  """
  means, counts = group_means(per_example, mask, group_ids, num_groups)
  nonempty = (counts > 0).astype(jnp.float32)
  total, norms = clipping.clipped_sum(means, nonempty, l2_clip_norm)
  return total, norms, nonempty


def grouped_clipped_sum_from_loss(
    loss_fn: Callable[..., jax.Array], trainable: PyTree,
    batch: dict[str, jax.Array], mask: jax.Array, keys: jax.Array,
    group_ids: jax.Array, *, num_groups: int,
    l2_clip_norm: float | jax.Array) -> tuple[PyTree, dict[str, jax.Array]]:
  """The trainer's entry point: per-record loss in, grouped clipped sum out.

  Memory: materialises all B per-example gradients (vmap), then averages
  them per group; use small batches or LoRA for large models.

  Args:
    loss_fn: `loss_fn(trainable, example, key) -> scalar` for ONE record.
    trainable, batch, mask, keys: as `dpjax.clipping.microbatched_clipped_sum`.
    group_ids: [B] int32 from `random_group_ids`.
    num_groups: K.
    l2_clip_norm: C (C_t for adaptive clipping).

  Returns:
    (clipped sum, stats) with stats 'num_units' (non-empty groups),
    'num_unclipped' (non-empty groups with unit norm <= C; not private),
    'unit_norms' [K] and 'unit_mask' [K] (not private), 'loss_sum'.
  """
  losses, grads = clipping.per_example_grads(loss_fn)(trainable, batch, keys)
  total, norms, nonempty = grouped_clipped_sum(
      grads, mask, group_ids, num_groups=num_groups, l2_clip_norm=l2_clip_norm)
  unclipped = nonempty * (jnp.isfinite(norms) & (norms <= l2_clip_norm))
  m = mask.astype(jnp.float32)
  stats = {'num_units': jnp.sum(nonempty), 'num_unclipped': jnp.sum(unclipped),
           'unit_norms': norms, 'unit_mask': nonempty,
           'loss_sum': jnp.sum(m * jnp.where(jnp.isfinite(losses), losses, 0.))}
  return total, stats
