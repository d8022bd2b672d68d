"""The jitted training and evaluation steps, independent of configs.

`make_train_step` builds THE step from a gradient engine and the DP stages:

  engine: masked clipped SUM (vmap(grad), book-keeping or RGP carriers;
          micro-batched in lax.scan)               (dpjax.grad_engines)
    -> noise -> 1/B -> engine.to_gradient -> optimizer -> EMA

`vmap_train_step` is the common case (the vmap engine, or with
`private=False` the plain gradient sum micro-batch by micro-batch divided by
the expected batch size: the best non-private step on XLA:CPU, used as the
baseline).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import ema as ema_lib
from dpjax import grad_engines
from dpjax import optimizers

PyTree = Any


class TrainState(NamedTuple):
  step: jax.Array        # () int32, number of updates applied
  trainable: PyTree      # differentiated parameters (float32)
  opt_state: PyTree      # full chain state (clip, noise key, scale, opt, EMA)


def record_keys(dropout_key: jax.Array, step: jax.Array,
                record_ids: jax.Array) -> jax.Array:
  """Per-record dropout keys: `fold_in(fold_in(dropout_key, step), id)`.

  `record_ids` is `[B]`, or `[B, k]` for user-level batches (a user's
  records; the keys then have that shape). A record's key depends only on
  the step and its own index in the training set, never on which other records were sampled or on its batch slot, so
  adding or removing a record leaves every other record's dropout unchanged.
  `dropout_key` is secret (`dpjax.randomness`) and must be a vmap-invariant
  implementation (threefry).
  """
  step_key = jax.random.fold_in(dropout_key, step)
  flat = record_ids.reshape(-1).astype(jnp.uint32)
  keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(flat)
  return keys.reshape(record_ids.shape)


def make_train_step(engine: grad_engines.GradEngine,
                    stages: optimizers.DPStages, *,
                    l2_clip_norm: float,
                    clip_norm_fn: Callable[[PyTree], jax.Array] | None = None
                    ) -> Callable[..., tuple]:
  """`step(state, frozen, batch, mask, dropout_key, record_ids) -> (state, metrics)`.

  The one training step of every engine (`dpjax.grad_engines`):

    engine.clipped_sum -> stages.noise -> stages.normalize (1/B)
      -> engine.to_gradient -> stages.optimizer -> stages.ema

  each stage called as `optax.chain` would (every stage receives the
  pre-update parameters and the extra arguments below). `record_ids` [B]
  are the records' indices in the training set (any value on padded rows);
  each record's dropout key is `record_keys(dropout_key, state.step,
  record_ids)`, independent of the other records in the batch.

  Args:
    engine: how the clipped sum is computed (vmap, book-keeping, RGP
      carriers, or the non-private sum).
    stages: the DP stages; `state.opt_state` is
      `optimizers.chain(stages).init(trainable)` (the clip stage's state is
      carried through unchanged: the engine clips).
    l2_clip_norm: C (in the engine's norm).
    clip_norm_fn: for adaptive clipping, `clip_norm_fn(opt_state) -> C_t`
      reads the current clip norm from the chain state (default: the
      constant `l2_clip_norm`). The stages then also receive the extra
      arguments `num_unclipped` (real examples with norm <= C_t),
      `num_examples` (real examples), `clip_norm`, `norms` and `norms_mask`
      (per-example norms): none of them private, the stages must privatize
      what they use.

  The caller jits the returned function (with donation of `state`).
  """
  post = tuple(optax.with_extra_args_support(t) for t in stages[1:])
  noise, normalize, optimizer, ema_stage = post

  def step(state: TrainState, frozen, batch, mask, dropout_key, record_ids):
    keys = record_keys(dropout_key, state.step, record_ids)
    clip = (l2_clip_norm if clip_norm_fn is None
            else clip_norm_fn(state.opt_state))
    out = engine.clipped_sum(state.trainable, frozen, batch, mask, keys,
                             clip_norm=clip, step=state.step)
    stats = out.stats
    extra = {}
    if clip_norm_fn is not None:
      extra = {'num_unclipped': stats.num_examples - stats.num_clipped,
               'num_examples': stats.num_examples, 'clip_norm': clip,
               'norms': out.norms, 'norms_mask': mask.astype(jnp.float32)}
    opt_state = state.opt_state
    params = state.trainable
    noised, noise_state = noise.update(out.clipped_sum, opt_state[1], params,
                                       **extra)
    scaled, norm_state = normalize.update(noised, opt_state[2], params,
                                          **extra)
    grads = engine.to_gradient(scaled, out.aux, params)
    updates, opt_inner = optimizer.update(grads, opt_state[3], params, **extra)
    updates, ema_state = ema_stage.update(updates, opt_state[4], params,
                                          **extra)
    trainable = optax.apply_updates(state.trainable, updates)
    new_state = TrainState(step=state.step + 1, trainable=trainable,
                           opt_state=(opt_state[0], noise_state, norm_state,
                                      opt_inner, ema_state))
    n = jnp.maximum(stats.num_examples, 1.0)
    metrics = {
        'train_loss': stats.loss_sum / n,           # not privatized
        'batch_size': stats.num_examples,           # not privatized
        'clip_fraction': stats.num_clipped / n,     # not privatized
        'mean_grad_norm': stats.norm_sum / n,       # not privatized
        'clip_norm': jnp.asarray(clip, jnp.float32),  # public (privatized)
    }
    return new_state, metrics

  return step


def vmap_train_step(loss_fn: Callable[..., jax.Array],
                    stages: optimizers.DPStages, *, l2_clip_norm: float,
                    microbatch_size: int, private: bool = True,
                    clip_norm_fn: Callable[[PyTree], jax.Array] | None = None,
                    clip_norm_ord: int = 2,
                    skip_padding_microbatches: bool = False,
                    clip_style: str = 'flat') -> Callable[..., tuple]:
  """`make_train_step` with the vmap engine (or, `private=False`, the
  non-private micro-batched sum: the best non-private step on XLA:CPU).

  `loss_fn(trainable, frozen, example, key) -> scalar` for one record;
  `frozen` parameters are closed over, never vmapped.
  """
  if private:
    engine = grad_engines.VmapEngine(
        loss_fn, microbatch_size, norm_ord=clip_norm_ord,
        clip_style=clip_style,
        skip_padding_microbatches=skip_padding_microbatches)
  else:
    engine = grad_engines.NonPrivateEngine(loss_fn, microbatch_size)
  return make_train_step(engine, stages, l2_clip_norm=l2_clip_norm,
                         clip_norm_fn=clip_norm_fn)


def make_eval_step(loss_and_count: Callable[..., tuple[jax.Array, jax.Array]]
                   ) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """`eval(params, batch) -> (sum of token losses, token count)`."""
  return loss_and_count


def ema_trainable(state: TrainState) -> PyTree:
  """The EMA of the trainable parameters (or the raw ones without EMA)."""
  found = ema_lib.find_ema(state.opt_state)
  return state.trainable if found is None else found.ema
