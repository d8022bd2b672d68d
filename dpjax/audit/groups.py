"""Replay target for micro-batch groups through the DP-Adam-AC optax chain.

The trainer clips one gradient per record; DP-Adam-AC's micro-batch groups
(`dpjax.microbatch_groups`, group_size > 1) are a library path: per-example
gradients go through `optimizers.chain(dp_adam_ac_stages(group_size=m,
num_groups=K))` with `group_ids=`. `group_target(harness, ...)` replays that
chain on the harness's model and data with the capture stage in place of the
noise. The sensitivity is `microbatch_groups.sensitivity_factor(m) * C`
(2C for m > 1) and the count's `adaptive_clipping.count_sensitivity(m)`.

Group ids are keyed by RECORD (`record_group_ids`), like dropout keys, so
removing a record leaves every other record in its group. With
`slot_keyed=True` they come from `microbatch_groups.random_group_ids`, one
draw per batch slot: distributionally the same (iid uniform groups), but a
removal moves later records to other slots and so to other groups, which a
fixed-randomness replay reports as a violation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dpjax import adaptive_clipping
from dpjax import clipping
from dpjax import dp_adam_ac
from dpjax import microbatch_groups
from dpjax import optimizers
from dpjax import steps as steps_lib
from dpjax.audit.capture import StepHarness
from dpjax.audit.capture import capture_stages
from dpjax.audit.neighbouring import Target
from dpjax.audit.neighbouring import target_of

_GROUP_KEY_LABEL = 104729  # folded into the noise key for the group draws


def record_group_ids(key: jax.Array, record_ids: jax.Array,
                     num_groups: int) -> jax.Array:
  """[B] int32: record i's group, uniform in [0, K), from `fold_in(key, i)`.

  Independent of the other records and of the batch slot.
  """
  return jax.vmap(lambda i: jax.random.randint(
      jax.random.fold_in(key, i), (), 0, num_groups, jnp.int32))(
          record_ids.astype(jnp.uint32))


def group_target(h: StepHarness, *, group_size: int = 2,
                 num_groups: int | None = None, count_centered: bool = True,
                 slot_keyed: bool = False) -> Target:
  """The grouped DP-Adam-AC chain on `h`'s model and data, as a `Target`.

  Args:
    h: a harness (`build_harness`); its model, data, clip norm and secret
      randomness are used; its step is not.
    group_size: m > 1.
    num_groups: K groups per batch (default B_max // m).
    count_centered: the released count is centered (sensitivity 1 for groups
      either way).
    slot_keyed: draw group ids per batch slot (see module docstring).

  Returns:
    A `Target` whose sensitivity is `sensitivity_factor(m) * C`.
  """
  if not (isinstance(group_size, int) and group_size >= 2):
    raise ValueError(f'group_size must be an int >= 2, got {group_size!r}.')
  bmax = h.max_batch
  k = num_groups or max(1, bmax // group_size)
  if not (isinstance(k, int) and k >= 1):
    raise ValueError(f'num_groups must be an int >= 1, got {num_groups!r}.')
  if h.norm_ord != 2 or h.config.peft.mode == 'rgp':
    raise ValueError('micro-batch groups are a DP-Adam-AC (L2, non-RGP) '
                     f'path; got the harness path {h.path!r}.')
  c = float(h.clip_norm)
  expected = microbatch_groups.expected_nonempty_groups(
      dataset_size=h.data.train_size, q=h.plan.q, num_groups=k)
  stages = dp_adam_ac.dp_adam_ac_stages(
      noise_multiplier=1.0, expected_batch_size=expected,
      learning_rate=1e-3, key=h.secret.noise_key(), initial_clip_norm=c,
      count_noise_std=10.0,  # unused: the capture stage replaces the noise
      group_size=group_size, num_groups=k, count_centered=count_centered)
  tx = optimizers.chain(capture_stages(stages))
  loss_fn, trainable = h.model.loss_fn, h.state.trainable
  group_key = jax.random.fold_in(h.secret.dropout_key(), _GROUP_KEY_LABEL)

  @jax.jit
  def captured(trainable, frozen, batch, mask, dropout_key, ids):
    keys = steps_lib.record_keys(dropout_key, jnp.zeros((), jnp.int32), ids)
    record_loss = lambda p, ex, key: loss_fn(p, frozen, ex, key)
    _, per_ex = clipping.per_example_grads(record_loss)(trainable, batch,
                                                        keys)
    if slot_keyed:
      gids = microbatch_groups.random_group_ids(group_key, ids.shape[0], k)
    else:
      gids = record_group_ids(group_key, ids, k)
    state = tx.init(trainable)
    _, new = tx.update(per_ex, state, trainable, mask=mask,
                       clip_norm=jnp.asarray(c, jnp.float32), group_ids=gids)
    return new[1]

  def run(arrays, idx, mask):
    batch = {key: v[idx] for key, v in arrays.items()}
    batch, mask_d, ids = jax.device_put(
        (batch, np.asarray(mask, np.float32), np.asarray(idx, np.int32)),
        h.batch_sharding)
    return jax.device_get(captured(trainable, h.frozen, batch, mask_d,
                                   h.dropout_key, ids))

  base = target_of(h)
  sens = microbatch_groups.sensitivity_factor(group_size) * c
  return Target(
      path=(f'{h.path}/groups(m={group_size},K={k},'
            f'{"slot" if slot_keyed else "record"}-keyed)'),
      run=run, train=base.train, norm_ord=2, sensitivity=sens,
      count_sensitivity=adaptive_clipping.count_sensitivity(
          group_size, count_centered),
      count_centered=count_centered, max_batch=bmax,
      sampling=base.sampling, expected_batch_size=base.expected_batch_size,
      seed=base.seed, sampler_seed=base.sampler_seed,
      notes=(f'library path: dp_adam_ac_stages(group_size={group_size}, '
             f'num_groups={k}) via optimizers.chain, sensitivity '
             f'{microbatch_groups.sensitivity_factor(group_size):g} C',))
