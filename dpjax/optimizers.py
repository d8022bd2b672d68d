"""DP optimizers as optax chains: clip -> noise -> 1/B -> AdamW/SGD -> EMA.

The first stage consumes per-example gradients (leading batch axis) and a
mask and emits the clipped *sum*; noise is added to that sum; only then is it
divided by the *expected* batch size (a public constant), so the noise scale
does not depend on the realised Poisson batch size.

Research use on any parameter pytree:

  tx = dp_adamw(l2_clip_norm=1.0, noise_multiplier=1.1, expected_batch_size=64,
                learning_rate=1e-3, key=jax.random.key(0))
  state = tx.init(params)
  per_ex = jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)
  updates, state = tx.update(per_ex, state, params, mask=mask)
  params = optax.apply_updates(params, updates)

The training step drives the same stages without materialising all
per-example gradients: it computes the clipped sum micro-batch by micro-batch
with `dpjax.clipping.microbatched_clipped_sum` (the same `clipped_sum`
function) and then calls `post_clip(tx_stages)` on it.

Formal guarantees:
  One update is the Gaussian mechanism with noise multiplier
  `noise_multiplier` applied to a sum of add/remove L2 sensitivity
  `l2_clip_norm`; everything after the noise stage (scaling, AdamW, EMA) is
  post-processing. The privacy of a run then follows from the sampling of the
  batches (see `dpjax.sampling`) and is composed by `dpjax.accounting`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import clipping
from dpjax import ema as ema_lib
from dpjax import noise as noise_lib


class DPStages(NamedTuple):
  """The stages of a DP chain, in order (each an optax transformation)."""
  clip: optax.GradientTransformationExtraArgs
  noise: optax.GradientTransformation
  normalize: optax.GradientTransformation
  optimizer: optax.GradientTransformation
  ema: optax.GradientTransformation


def chain(stages: DPStages) -> optax.GradientTransformationExtraArgs:
  """The whole chain; its state is a tuple with one entry per stage."""
  return optax.chain(*stages)


def post_clip(stages: DPStages) -> optax.GradientTransformation:
  """The chain after the clip stage; its state is `full_state[1:]`."""
  return optax.chain(*stages[1:])


def _base_optimizer(name: str, learning_rate, *, b1, b2, eps, weight_decay,
                    momentum) -> optax.GradientTransformation:
  if name == 'adamw':
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                       weight_decay=weight_decay)
  if name == 'adam':
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)
  if name == 'sgd':
    return optax.sgd(learning_rate, momentum=momentum or None)
  raise ValueError(f"optimizer must be 'adamw', 'adam' or 'sgd', got {name!r}.")


def _normalize(expected_batch_size) -> optax.GradientTransformation:
  """1/B, or 1/B_t at update t for a schedule of expected batch sizes."""
  sizes = np.atleast_1d(np.asarray(expected_batch_size, np.float64))
  if sizes.ndim != 1 or not np.all(sizes > 0):
    raise ValueError('expected_batch_size must be > 0 (or a sequence of '
                     f'values > 0), got {expected_batch_size!r}.')
  if sizes.size == 1:
    return optax.scale(1.0 / float(sizes[0]))
  inv = jnp.asarray(1.0 / sizes, jnp.float32)
  # Past the end of the schedule the last size is kept.
  return optax.scale_by_schedule(
      lambda count: inv[jnp.minimum(count, inv.shape[0] - 1)])


def dp_stages(*, l2_clip_norm: float, noise_multiplier: float,
              expected_batch_size: Any, learning_rate: Any,
              key: jax.Array, optimizer: str = 'adamw', b1: float = 0.9,
              b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
              momentum: float = 0.0, ema_decay: float = 0.0) -> DPStages:
  """Builds the five stages of a DP optimizer.

  Args:
    l2_clip_norm: flat per-example clip norm C > 0.
    noise_multiplier: sigma >= 0; the noise std is sigma * C.
    expected_batch_size: B > 0, the public divisor (q * N under Poisson), or
      a sequence B_t (a batch-size schedule, step t divided by B_t).
    learning_rate: float or optax schedule.
    key: typed PRNG key for the noise.
    optimizer: 'adamw', 'adam' or 'sgd'.
    b1, b2, eps, weight_decay, momentum: optimizer hyperparameters.
    ema_decay: decay of the parameter EMA kept for evaluation (0: none).

  Returns:
    `DPStages`.
  """
  if not noise_multiplier >= 0:
    raise ValueError(f'noise_multiplier must be >= 0, got {noise_multiplier!r}.')
  return DPStages(
      clip=clipping.clip_and_sum(l2_clip_norm),
      noise=noise_lib.gaussian_noise(noise_multiplier * l2_clip_norm, key),
      normalize=_normalize(expected_batch_size),
      optimizer=_base_optimizer(optimizer, learning_rate, b1=b1, b2=b2,
                                eps=eps, weight_decay=weight_decay,
                                momentum=momentum),
      # No EMA state at all when it would equal the raw parameters.
      ema=ema_lib.ema_params(ema_decay) if ema_decay else optax.identity())


def dp_adamw(**kwargs) -> optax.GradientTransformationExtraArgs:
  """DP-AdamW as one optax chain (clip -> noise -> 1/B -> AdamW -> EMA).

  Takes the keyword arguments of `dp_stages` (with `optimizer='adamw'`).

  .. warning:: The input to `update` must be per-example gradients with the
    batch on axis 0, plus `mask=` for padded batches. Do not wrap it in
    `optax.MultiSteps`: accumulate clipped sums instead.
  """
  kwargs.setdefault('optimizer', 'adamw')
  return chain(dp_stages(**kwargs))


def dp_sgd(**kwargs) -> optax.GradientTransformationExtraArgs:
  """DP-SGD as one optax chain; takes `dp_stages` keyword arguments."""
  kwargs['optimizer'] = 'sgd'
  return chain(dp_stages(**kwargs))
