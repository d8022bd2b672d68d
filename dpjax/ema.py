"""Exponential moving average of parameters, as the last stage of a chain.

The stage passes updates through unchanged and keeps, in its state, the EMA
of the parameters *after* each update (params + updates), so evaluation and
export can use the averaged weights while training continues on the raw ones.

Formal guarantees: post-processing of the privatized updates; no privacy
cost. With decay d and initial parameters p_0, after t updates
ema_t = d^t p_0 + (1 - d) sum_{k=1..t} d^(t-k) p_k.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class EmaState(NamedTuple):
  count: jax.Array  # () int32
  ema: optax.Params  # float32 copy of the parameters


def ema_params(decay: float) -> optax.GradientTransformation:
  """EMA of parameters in the state; updates pass through unchanged.

  Args:
    decay: d in [0, 1). 0 keeps the latest parameters.

  Returns:
    An `optax.GradientTransformation` with state `EmaState`.
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f'ema decay must be in [0, 1), got {decay!r}.')

  def init_fn(params):
    return EmaState(
        count=jnp.zeros((), jnp.int32),
        ema=jax.tree.map(lambda p: jnp.array(p, jnp.float32, copy=True),
                         params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('ema_params needs params in update().')
    new = jax.tree.map(
        lambda e, p, u: decay * e + (1.0 - decay) * (
            p.astype(jnp.float32) + u.astype(jnp.float32)),
        state.ema, params, updates)
    return updates, EmaState(count=state.count + 1, ema=new)

  return optax.GradientTransformation(init_fn, update_fn)


def find_ema(opt_state) -> EmaState | None:
  """Returns the first EmaState inside an optimizer state, if any."""
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, EmaState))
           if isinstance(s, EmaState)]
  return found[0] if found else None
