"""LMO-DP noise (Yang et al. 2024) as an optax transformation, and L1 clipping.

The LMO mechanism adds to every coordinate of the clipped SUM Laplace noise
whose inverse scale eps' is drawn independently per coordinate:

  eps' = a1 * Gamma(k, theta) + a3 * Exponential(rate lam) + a4 * U[u_a, u_b]
  noise = l1_sensitivity * Laplace(0, 1) / eps'.

It is the stage right after clipping; the division by the expected batch size
happens after it (in the trainer), as for Gaussian noise.

Formal guarantees:
  With `l1_sensitivity` equal to the true add/remove L1 sensitivity of the
  noised sum, one step is the mechanism `dpjax.accounting.lmo` accounts for at
  relative sensitivity 1 (pass `LMOPhase(..., l1_sensitivity=1.0)`); its
  module docstring states the guarantee. Two ways to make the value true:
  clip each example in L1 (`l1_clipped_sum(..., l1_clip_norm=C1)`, then
  `l1_sensitivity=C1`), or L2-clip to C and pass
  `l1_sensitivity_of_l2_clip(C, d) = C sqrt(d)` for the d noised coordinates.
  The paper's setting (L2 clip to C = 1, noise at scale 1) corresponds to
  `l1_sensitivity=1` with L2 clipping: that is NOT covered by the guarantee
  (ALGORITHMS.md §5.9c); its accounting is
  `dpjax.accounting.lmo.epsilon_paper_faithful_not_private`.
  The Exponential is drawn with RATE lam, as accounted (the artifact drew it
  with scale lam, §5.9b). The key is split on every update and never reused;
  noise is drawn once for the whole (replicated) sum, in float32, and added
  in float32 to the float32 sum; only the result is cast, to the parameter
  dtypes when `update` gets params of the same tree structure (else it stays
  float32; see `dpjax.noise.cast_to_params`). Floating point sampling
  artefacts are not modelled. With u_a = 0 the inverse scale
  eps' can come arbitrarily close to 0, so a coordinate's noise is
  occasionally enormous: that is the mechanism's law, not a bug.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import clipping
from dpjax import noise as noise_lib
from dpjax.accounting.lmo import LMOParams, l1_sensitivity_of_l2_clip

PyTree = Any

__all__ = ['LMONoiseState', 'lmo_noise', 'sample_inverse_scale',
           'sample_lmo', 'l1_norms', 'l1_clipped_sum', 'LMOParams',
           'l1_sensitivity_of_l2_clip', 'num_coordinates']



class LMONoiseState(NamedTuple):
  key: jax.Array  # typed PRNG key, shape ()


def _check_key(key) -> jax.Array:
  return noise_lib.check_key(key, 'LMO noise')


def sample_inverse_scale(key: jax.Array, params: LMOParams,
                         shape: tuple[int, ...]) -> jax.Array:
  """eps' = a1 G + a3 E + a4 U, float32, i.i.d. over `shape`."""
  kg, ke, ku = jax.random.split(key, 3)
  p = params
  eps = jnp.zeros(shape, jnp.float32)
  if p.a1 > 0:
    eps = eps + p.a1 * p.theta * jax.random.gamma(kg, p.k, shape, jnp.float32)
  if p.a3 > 0:
    eps = eps + (p.a3 / p.lam) * jax.random.exponential(ke, shape, jnp.float32)
  if p.a4 > 0:
    eps = eps + p.a4 * jax.random.uniform(ku, shape, jnp.float32,
                                          minval=p.u_a, maxval=p.u_b)
  return eps


def sample_lmo(key: jax.Array, params: LMOParams,
               shape: tuple[int, ...]) -> jax.Array:
  """Unit-sensitivity LMO noise Laplace(0, 1/eps'), float32."""
  k_eps, k_lap = jax.random.split(key)
  eps = sample_inverse_scale(k_eps, params, shape)
  return jax.random.laplace(k_lap, shape, jnp.float32) / eps


def tree_lmo(key: jax.Array, tree: PyTree, params: LMOParams,
             scale) -> PyTree:
  """Independent LMO noise times `scale`, shaped like `tree` (float32)."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  noise = [scale * sample_lmo(k, params, jnp.shape(x))
           for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, noise)


def lmo_noise(params: LMOParams, *, l1_sensitivity: float,
              key: jax.Array) -> optax.GradientTransformation:
  """Adds l1_sensitivity * LMO noise to every coordinate of the updates.

  Args:
    params: the LMO noise parameters (`dpjax.accounting.lmo.LMOParams`, e.g.
      from `python -m dpjax.lmo_search`).
    l1_sensitivity: the add/remove L1 sensitivity of the incoming sum (see the
      module docstring; for L2 clipping use `l1_sensitivity_of_l2_clip`).
    key: typed PRNG key; stored in the state and split at every update.

  The noise is added in float32 to the float32 updates; the result has the
  dtypes of the params passed to `update` when their tree structure matches
  the updates', else float32.

  Returns:
    An `optax.GradientTransformation` with state `LMONoiseState`.
  """
  key = _check_key(key)
  if not isinstance(params, LMOParams):
    raise ValueError('params must be a dpjax.accounting.lmo.LMOParams, got '
                     f'{type(params).__name__}.')
  if not (isinstance(l1_sensitivity, (int, float)) and
          math.isfinite(l1_sensitivity) and l1_sensitivity > 0):
    raise ValueError('l1_sensitivity must be a finite number > 0, got '
                     f'{l1_sensitivity!r}.')

  def init_fn(tree):
    del tree
    return LMONoiseState(key=jnp.array(key, copy=True))

  def update_fn(updates, state, tree=None):
    key, sub = jax.random.split(state.key)
    noise = tree_lmo(sub, updates, params, float(l1_sensitivity))
    out = noise_lib.cast_to_params(noise_lib.add_float32(updates, noise), tree)
    return out, LMONoiseState(key=key)

  return optax.GradientTransformation(init_fn, update_fn)


def num_coordinates(tree: PyTree) -> int:
  """d: the number of coordinates noised (for `l1_sensitivity_of_l2_clip`)."""
  return int(sum(math.prod(jnp.shape(x)) for x in jax.tree.leaves(tree)))


def l1_norms(per_example: PyTree) -> jax.Array:
  """L1 norm of each example's gradient over all leaves: shape [B]."""
  return clipping.global_norms(per_example, norm_ord=1)


def l1_clipped_sum(per_example: PyTree, mask: jax.Array,
                   l1_clip_norm: float | jax.Array
                   ) -> tuple[PyTree, jax.Array]:
  """Masked sum of per-example gradients clipped to L1 norm `l1_clip_norm`.

  `dpjax.clipping.clipped_sum(..., norm_ord=1)`: the sum has add/remove L1
  sensitivity `l1_clip_norm` (the same conditions as for L2: no
  cross-example interaction, padded rows masked). Non-finite norms make the
  example contribute 0.

  Returns:
    (float32 clipped sum with one example's shapes, L1 norms [B]).
  """
  return clipping.clipped_sum(per_example, mask, l1_clip_norm, norm_ord=1)
