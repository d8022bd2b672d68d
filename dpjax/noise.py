"""Noise mechanisms as optax transformations that carry their PRNG key.

Formal guarantees:
  `gaussian_noise(stddev, key)` adds independent N(0, stddev^2) noise to
  every coordinate of its input. Applied to a sum with L2 sensitivity C and
  `stddev = sigma * C`, one step is the Gaussian mechanism with noise
  multiplier sigma; with Poisson sampling at rate q it is the subsampled
  Gaussian mechanism that `dpjax.accounting` composes. The key is split on
  every update and never reused; the noise is drawn once for the whole
  (replicated) sum, so all devices add the same noise. `noised_float32`
  draws it per group of consecutive leaves, each group from its own key
  split from the step's key, so the coordinates stay independent.

  Float32 rule: the noise is drawn in float32 and added to the float32 sum
  (an input in another dtype is first cast to float32), whatever the
  parameter or compute dtype. Only the noised result is cast: to the dtype
  of the corresponding parameter leaf when `update` receives `params` with
  the same tree structure as the updates (`cast_to_params`), else it stays
  float32. The cast is post-processing of the released value. Clipping and
  summation in `dpjax.clipping` are float32 too, so a bfloat16 model does
  not round the clipped sum before the noise: rounding a sum of magnitude
  ~B C to bfloat16 (8 significant bits) could move it by far more than C
  when one record is added or removed, breaking the sensitivity bound.

  Caveat (as for every floating-point implementation of DP, Mironov 2012):
  the guarantee is for ideal real-valued Gaussian noise; floating-point
  sampling artefacts are not modelled.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class NoiseState(NamedTuple):
  key: jax.Array  # typed PRNG key, shape ()


def check_key(key, what: str = 'Noise') -> jax.Array:
  """Returns `key` if it is a typed PRNG key, else raises a clear TypeError."""
  if not (isinstance(key, jax.Array) and
          jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
    raise TypeError(f'{what} needs a typed PRNG key from jax.random.key(seed); '
                    f'got {type(key).__name__} with dtype '
                    f'{getattr(key, "dtype", None)}.')
  return key


def tree_gaussian(key: jax.Array, tree, stddev) -> object:
  """Independent N(0, stddev^2) float32 noise shaped like `tree`."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  noise = [stddev * jax.random.normal(k, jnp.shape(x), jnp.float32)
           for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, noise)


def cast_to_params(tree, params=None):
  """`tree` cast leaf by leaf to the dtypes of `params` (post-noise only).

  Args:
    tree: the noised updates.
    params: the parameters the updates belong to, or None.

  Returns:
    `tree` with every leaf cast to the dtype of the corresponding leaf of
    `params` when `params` is given and has the same tree structure as
    `tree`; otherwise every leaf cast to float32 (e.g. RGP's carrier tree,
    which the caller casts after reconstruction).
  """
  if params is not None:
    p_leaves, p_def = jax.tree.flatten(params)
    t_leaves, t_def = jax.tree.flatten(tree)
    if p_def == t_def:
      return jax.tree.unflatten(
          t_def, [jnp.asarray(t).astype(jnp.result_type(p))
                  for t, p in zip(t_leaves, p_leaves)])
  return jax.tree.map(lambda t: jnp.asarray(t).astype(jnp.float32), tree)


_FENCE_MIN_ELEMENTS = 1 << 22


def _fence_on() -> bool:
  """Whether `noised_float32` fences its groups (XLA:CPU only)."""
  return jax.default_backend() == 'cpu'


def _fence_groups(leaves) -> list[list[int]]:
  """Consecutive leaf indices in groups of at most max(largest leaf, 4M)
  elements: one fence per group."""
  sizes = [max(int(jnp.size(x)), 1) for x in leaves]
  cap = max(sizes + [_FENCE_MIN_ELEMENTS])
  groups, total = [], cap + 1
  for i, n in enumerate(sizes):
    if total + n > cap:
      groups.append([])
      total = 0
    groups[-1].append(i)
    total += n
  return groups


def noised_float32(key: jax.Array, updates, stddev) -> object:
  """updates (in float32) + independent N(0, stddev^2) noise, leaf by leaf.

  The leaves are taken in consecutive groups (`_fence_groups`); group j
  gets `add_float32(us_j, tree_gaussian(k_j, us_j, stddev))` with
  `k_j = split(key, n_groups)[j]`, so the draw is `tree_gaussian`'s (one
  definition of the noise) and the grouping depends only on leaf sizes.

  On XLA:CPU each group is computed inside a `lax.cond` whose predicate is
  always true (`x | 1 != 0`) but not provably so to XLA: XLA:CPU has no
  multi-output loop fusion, so without this fence the draw's consumers
  (Adam's two moments) each recompute the end of the draw, and every
  leaf's random bits and two erf_inv intermediates stay live at once:
  about three parameter-sized temporaries. Fenced, a noised leaf is
  computed once and at most a group's outputs are live beside the sum
  (`experiments/noise_memory.py`). The other branch, never taken, returns
  NaN rather than an un-noised value. Other backends fuse the draw with its
  consumers and skip the fence.
  """
  leaves, treedef = jax.tree.flatten(updates)
  if not leaves:
    return updates
  groups = _fence_groups(leaves)
  keys = jax.random.split(key, len(groups))

  def noised(k, us):
    return add_float32(us, tree_gaussian(k, us, stddev))

  def poisoned(k, us):
    del k
    return [jnp.full(jnp.shape(u), jnp.nan, jnp.float32) for u in us]

  out = [None] * len(leaves)
  for k, group in zip(keys, groups):
    us = [leaves[i] for i in group]
    if _fence_on():
      pred = (jax.random.key_data(k).reshape(-1)[0] | 1) != 0
      ys = jax.lax.cond(pred, noised, poisoned, k, us)
    else:
      ys = noised(k, us)
    for i, y in zip(group, ys):
      out[i] = y
  return jax.tree.unflatten(treedef, out)


def add_float32(updates, noise):
  """updates (cast to float32) + float32 noise, leaf by leaf (float32)."""
  return jax.tree.map(lambda u, n: jnp.asarray(u).astype(jnp.float32) + n,
                      updates, noise)


def gaussian_noise(stddev: float | jax.Array,
                   key: jax.Array) -> optax.GradientTransformation:
  """Adds N(0, stddev^2) to every coordinate of the updates.

  The noise is added in float32 to the float32 updates; the result is cast
  to the dtypes of `params` when `update` gets a params tree of the same
  structure, else returned in float32 (see `cast_to_params`).

  Args:
    stddev: noise standard deviation (sigma * C for a sum of sensitivity C).
    key: typed PRNG key; stored in the state and split at every update.

  Returns:
    An `optax.GradientTransformation` with state `NoiseState`.
  """
  key = check_key(key)
  if isinstance(stddev, (int, float)) and not stddev >= 0:
    raise ValueError(f'stddev must be >= 0, got {stddev!r}.')

  def init_fn(params):
    del params
    # A copy, since callers may donate the state.
    return NoiseState(key=jnp.array(key, copy=True))

  def update_fn(updates, state, params=None):
    key, sub = jax.random.split(state.key)
    out = cast_to_params(noised_float32(sub, updates, stddev), params)
    return out, NoiseState(key=key)

  return optax.GradientTransformation(init_fn, update_fn)
