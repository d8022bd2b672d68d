"""The jitted training and evaluation steps, independent of configs.

`make_train_step` builds one step from a per-record loss and a DP chain:

  per-example grads (vmap(grad), micro-batched in lax.scan)
    -> flat clip -> masked clipped SUM      (dpjax.clipping)
    -> chain after the clip stage: noise -> 1/B -> optimizer -> EMA

With `private=False` the same loop computes the plain (unclipped) gradient
sum micro-batch by micro-batch and divides by the expected batch size: the
best non-private step on XLA:CPU, used as the baseline.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dpjax import clipping
from dpjax import ema as ema_lib

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


def _micro_view(x, microbatch_size):
  n = x.shape[0] // microbatch_size
  return jnp.moveaxis(x.reshape((microbatch_size, n) + x.shape[1:]), 1, 0)


def nonprivate_grad_sum(loss_fn, trainable, batch, mask, keys, *,
                        microbatch_size):
  """Sum over real examples of their gradients, micro-batched (no clipping)."""
  def mb_loss(p, mb, mmask, mkeys):
    losses = jax.vmap(loss_fn, in_axes=(None, 0, 0))(p, mb, mkeys)
    losses = jnp.where(mmask > 0, losses, 0.0)
    return jnp.sum(losses)

  grad_fn = jax.value_and_grad(mb_loss)
  xs = (jax.tree.map(lambda x: _micro_view(x, microbatch_size), batch),
        _micro_view(mask.astype(jnp.float32), microbatch_size),
        _micro_view(keys, microbatch_size))
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)

  def body(acc, micro):
    total, loss_sum = acc
    loss, g = grad_fn(trainable, *micro)
    total = jax.tree.map(lambda t, x: t + x.astype(jnp.float32), total, g)
    return (total, loss_sum + loss), None

  (total, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros(())), xs)
  z = jnp.zeros((), jnp.float32)
  stats = clipping.ClipStats(num_examples=jnp.sum(mask.astype(jnp.float32)),
                             num_clipped=z, norm_sum=z, loss_sum=loss_sum)
  return total, stats


def make_train_step(loss_fn: Callable[..., jax.Array],
                    post_clip: optax.GradientTransformation, *,
                    l2_clip_norm: float, microbatch_size: int,
                    private: bool = True,
                    clip_norm_fn: Callable[[PyTree], jax.Array] | None = None,
                    clip_norm_ord: int = 2,
                    skip_padding_microbatches: bool = False
                    ) -> Callable[..., tuple]:
  """`step(state, frozen, batch, mask, dropout_key, record_ids) -> (state, metrics)`.

  `record_ids` [B] are the records' indices in the training set (any value on
  padded rows); each record's dropout key is `record_keys(dropout_key,
  state.step, record_ids)`, independent of the other records in the batch.

  Args:
    loss_fn: `loss_fn(trainable, frozen, example, key) -> scalar` for one
      record; `frozen` parameters are closed over, never vmapped.
    post_clip: the DP chain after its clip stage (noise -> 1/B -> opt -> EMA).
      Its state is `state.opt_state[1:]`.
    l2_clip_norm: C.
    microbatch_size: per-example gradients are computed m at a time.
    private: False for the non-private baseline (post_clip then has no noise
      stage to speak of; clipping is skipped).
    clip_norm_fn: for adaptive clipping, `clip_norm_fn(opt_state) -> C_t`
      reads the current clip norm from the chain state (default: the
      constant `l2_clip_norm`). The post-clip chain then also receives the
      extra arguments `num_unclipped` (real examples with norm <= C_t),
      `num_examples` (real examples), `norms` and `norms_mask` (per-example
      norms): none of them private, the chain must privatize what it uses.
    clip_norm_ord: 2 (flat L2 clipping, for Gaussian noise) or 1 (flat L1
      clipping, for the LMO Laplace-mixture noise).
    skip_padding_microbatches: True skips all-padding micro-batches (faster;
      the step time then reveals the realised batch size: a timing channel).

  The caller jits the returned function (with donation of `state`).
  """

  def step(state: TrainState, frozen, batch, mask, dropout_key, record_ids):
    keys = record_keys(dropout_key, state.step, record_ids)
    record_loss = lambda p, ex, k: loss_fn(p, frozen, ex, k)
    clip = (l2_clip_norm if clip_norm_fn is None
            else clip_norm_fn(state.opt_state))
    norms = None
    if private:
      total, stats, norms = clipping.microbatched_clipped_sum(
          record_loss, state.trainable, batch, mask, keys,
          l2_clip_norm=clip, microbatch_size=microbatch_size,
          norm_ord=clip_norm_ord,
          skip_padding_microbatches=skip_padding_microbatches)
    else:
      total, stats = nonprivate_grad_sum(record_loss, state.trainable, batch,
                                         mask, keys,
                                         microbatch_size=microbatch_size)
    extra = {}
    if clip_norm_fn is not None:
      extra = {'num_unclipped': stats.num_examples - stats.num_clipped,
               'num_examples': stats.num_examples, 'clip_norm': clip,
               'norms': norms, 'norms_mask': mask.astype(jnp.float32)}
    updates, post_state = post_clip.update(total, state.opt_state[1:],
                                           state.trainable, **extra)
    trainable = optax.apply_updates(state.trainable, updates)
    new_state = TrainState(step=state.step + 1, trainable=trainable,
                           opt_state=(state.opt_state[0],) + tuple(post_state))
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


def make_eval_step(loss_and_count: Callable[..., tuple[jax.Array, jax.Array]]
                   ) -> Callable[..., tuple[jax.Array, jax.Array]]:
  """`eval(params, batch) -> (sum of token losses, token count)`."""
  return loss_and_count


def ema_trainable(state: TrainState) -> PyTree:
  """The EMA of the trainable parameters (or the raw ones without EMA)."""
  found = ema_lib.find_ema(state.opt_state)
  return state.trainable if found is None else found.ema
