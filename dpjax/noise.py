"""Noise mechanisms as optax transformations that carry their PRNG key.

Formal guarantees:
  `gaussian_noise(stddev, key)` adds independent N(0, stddev^2) noise to
  every coordinate of its input. Applied to a sum with L2 sensitivity C and
  `stddev = sigma * C`, one step is the Gaussian mechanism with noise
  multiplier sigma; with Poisson sampling at rate q it is the subsampled
  Gaussian mechanism that `dpjax.accounting` composes. The key is split on
  every update and never reused; the noise is drawn once for the whole
  (replicated) sum, so all devices add the same noise. Noise is drawn in
  float32 whatever the gradient dtype.

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


def gaussian_noise(stddev: float | jax.Array,
                   key: jax.Array) -> optax.GradientTransformation:
  """Adds N(0, stddev^2) to every coordinate of the updates.

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
    del params
    key, sub = jax.random.split(state.key)
    noise = tree_gaussian(sub, updates, stddev)
    out = jax.tree.map(lambda u, n: (u.astype(jnp.float32) + n).astype(u.dtype),
                       updates, noise)
    return out, NoiseState(key=key)

  return optax.GradientTransformation(init_fn, update_fn)
