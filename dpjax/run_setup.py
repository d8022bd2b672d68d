"""Builds a run's DP chain and its jittable step from the config and plan.

The trainer (`dpjax.train`) and the neighbouring-dataset replay audit
(`dpjax.audit`) call these same functions, so the audit checks exactly the
step that trains.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from absl import logging
import jax
import optax

from dpjax import configuration
from dpjax import grad_engines
from dpjax import input_pipeline
from dpjax import model_setup
from dpjax import optimizers
from dpjax import sharding
from dpjax import steps as steps_lib
from dpjax.privacy_plan import PrivacyPlan
from dpjax.privacy_plan import plan_privacy

RGP_KEY_FOLD = 7919  # public: RGP's random starts derive from config.seed


class RunInputs(NamedTuple):
  """What a run is built from: model, data, privacy plan and device mesh."""
  model: Any
  data: Any
  plan: PrivacyPlan
  mesh: Any


def build_inputs(config) -> RunInputs:
  """Validates `config`, builds the model and data, plans the privacy and the
  mesh (the trainer and the replay audit share this, in this order)."""
  configuration.validate(config)
  model = model_setup.create(config)
  tokenizer = (model.tokenizer if config.data.tokenizer == 'model' or
               config.data.task == 'genre' else None)
  data = input_pipeline.build(config.data, tokenizer, seed=config.seed)
  users, n_units = data_users(data), sampled_units(config, data)
  configuration.validate_against_data(
      config, n_units,
      unit=('users' if users is not None and config.dp.user_sampling == 'uls'
            else 'records'),
      n_privacy_units=None if users is None else len(users))
  plan = plan_privacy(config, n_units, model_setup.noised_coordinates(
      model, config.peft.rgp_rank))
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  n_data = mesh.shape['data']
  for field, value in (('train.max_batch_size', config.train.max_batch_size),
                       ('data.eval_batch_size', config.data.eval_batch_size)):
    if value % n_data:
      raise configuration.ConfigError(
          field, f'{value} is not divisible by the {n_data} devices on the '
          'data axis (every device holds the same number of rows; with many '
          'processes, every host too)', f'a multiple of {n_data}')
  return RunInputs(model, data, plan, mesh)


def data_users(data):
  """The per-user record indices of a user-level dataset, or None."""
  return getattr(data, 'users', None)


def sampled_units(config, data) -> int:
  """N of the sampling rate: records; users (ULS); or the records kept at
  most `data.max_records_per_user` per user (ELS)."""
  users = data_users(data)
  if users is None:
    return data.train_size
  if config.dp.user_sampling == 'uls':
    return len(users)
  from dpjax import user_level  # pylint: disable=g-import-not-at-top
  return user_level.els_pool_size(users, config.data.max_records_per_user)


def rgp_key(config) -> jax.Array:
  """RGP's (public) random-start key, from `config.seed`."""
  return jax.random.fold_in(jax.random.key(config.seed), RGP_KEY_FOLD)


def schedule(config):
  """The learning rate (with linear warm-up when train.warmup_steps)."""
  lr, warm = config.train.learning_rate, config.train.warmup_steps
  if warm:
    return optax.linear_schedule(0.0, lr, warm)
  return lr


def lmo_noise_stage(plan: PrivacyPlan, noise_key):
  from dpjax import lmo_noise  # pylint: disable=g-import-not-at-top
  return lmo_noise.lmo_noise(plan.lmo(),
                             l1_sensitivity=plan.lmo_noise_scale,
                             key=noise_key)


def adaptive_stages(config, plan: PrivacyPlan, noise_key):
  """DP-Adam-AC stages when `config.dp_adam_ac.enabled`, else (None, None, None).

  The ledger still records (q, sigma) with sigma the configured multiplier z:
  gradient and count noise are one Gaussian mechanism of multiplier z
  (dpjax.dp_adam_ac). The paper-faithful percentile mode is not private;
  the report says so.
  """
  ac = config.dp_adam_ac
  if not (plan.enabled and ac.enabled):
    return None, None, None
  from dpjax import dp_adam_ac  # pylint: disable=g-import-not-at-top
  fields = {k: ac[k] for k in (
      'initial_clip_norm', 'target_quantile', 'clip_learning_rate',
      'count_centered', 'min_clip_norm', 'max_clip_norm',
      'nonprivate_percentile_clipping', 'history_size', 'adapt_learning_rate',
      'lr_band', 'lr_up', 'lr_down', 'lr_min_multiplier', 'lr_max_multiplier')}
  fields['count_noise_std'] = (ac.count_noise_std or
                               plan.expected_batch_size / 20.0)
  try:
    stages = dp_adam_ac.dp_adam_ac_stages(
        noise_multiplier=plan.noise_multiplier,
        expected_batch_size=(list(plan.batch_schedule) if plan.batch_schedule
                             else plan.expected_batch_size),
        learning_rate=schedule(config), key=noise_key, b1=config.train.b1,
        b2=config.train.b2, eps=config.train.eps,
        weight_decay=config.train.weight_decay,
        ema_decay=config.train.ema_decay, **fields)
  except ValueError as e:
    raise configuration.ConfigError(
        'dp_adam_ac', str(e), 'settings accepted by dp_adam_ac_stages (e.g. '
        'count_noise_std > noise multiplier / 2 for the centered count)') from e
  notes = dp_adam_ac.privacy_notes(
      nonprivate_percentile_clipping=ac.nonprivate_percentile_clipping,
      noise_multiplier=plan.noise_multiplier)
  return stages, dp_adam_ac.current_clip_norm, notes


def make_step(config, model, stages, plan: PrivacyPlan, clip_norm_fn,
              rgp_key, data, *, choice=None):
  """The jittable step: `steps.make_train_step` with the run's engine
  (`choice`, else `build_engine`).

  A non-private run with peft.mode='rgp' is RGP without clipping or noise
  (the same low-rank updates: the baseline for the private runs).
  """
  choice = choice or build_engine(config, model, plan, rgp_key, data)
  clip = stages_clip(plan)
  if config.peft.mode == 'rgp' and not plan.enabled:
    clip = math.inf   # the RGP engine clips; a non-private run must not
  return steps_lib.make_train_step(choice.engine, stages, l2_clip_norm=clip,
                                   clip_norm_fn=clip_norm_fn)


def build_engine(config, model, plan: PrivacyPlan, rgp_key, data):
  """`grad_engines.Choice`: the run's gradient engine, checked at build time.

  `train.grad_engine`: 'vmap', 'bookkeeping' (an error naming why, where
  book-keeping cannot run the step) or 'auto' (book-keeping where every
  trainable leaf is covered, else vmap). RGP has its own engine; a
  non-private run uses the plain micro-batched gradient sum.

  Raises:
    ConfigError: on `train.grad_engine` when book-keeping was asked for and
      cannot run this step.
  """
  tc = config.train
  micro = tc.microbatch_size
  skip = tc.skip_padding_microbatches
  if config.peft.mode == 'rgp':
    from dpjax import rgp_step  # pylint: disable=g-import-not-at-top
    if tc.grad_engine == 'bookkeeping':
      raise configuration.ConfigError(
          'train.grad_engine', "'bookkeeping' cannot run peft.mode='rgp' "
          '(RGP clips carriers, which book-keeping does not tap)',
          "'auto' or 'vmap'")
    return grad_engines.Choice(rgp_step.rgp_engine(
        model.loss_fn, targets=model.rgp_targets, rank=config.peft.rgp_rank,
        microbatch_size=micro, key=rgp_key,
        power_iters=config.peft.rgp_power_iters,
        cross_sign=float(config.peft.rgp_cross_sign),
        clip_norm_ord=plan.clip_norm_ord,
        extra_grad_scale=float(config.peft.rgp_extra_grad_scale),
        skip_padding_microbatches=skip, clip_style=tc.clip_style), 'rgp')
  loss_fn = model.loss_fn
  why_not = None
  if plan.user_sampling == 'uls':  # a user's records make one contribution
    from dpjax import user_level  # pylint: disable=g-import-not-at-top
    loss_fn = user_level.user_loss_fn(loss_fn)
    why_not = ('user-level sampling (uls) vmaps over each user\'s records '
               'inside the per-unit loss, which book-keeping taps cannot see '
               'through')
  if not plan.enabled:
    return grad_engines.Choice(
        grad_engines.NonPrivateEngine(loss_fn, micro), 'non-private run')
  example = {k: jax.ShapeDtypeStruct((micro,) + v.shape[1:], v.dtype)
             for k, v in data.train.items()}
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), micro))
  lora_scale = None
  if config.peft.mode == 'lora':
    lora_scale = float(config.peft.lora_alpha) / float(config.peft.lora_rank)
  try:
    choice = grad_engines.select(
        tc.grad_engine, loss_fn=loss_fn, trainable=model.trainable,
        frozen=model.frozen, example_batch=example, keys=keys,
        microbatch_size=micro, norm_ord=plan.clip_norm_ord,
        clip_style=tc.clip_style, gamma=tc.automatic_clip_gamma,
        skip_padding_microbatches=skip, method=tc.bookkeeping_method,
        lora_scale=lora_scale, bookkeeping_possible=why_not)
  except ValueError as e:
    raise configuration.ConfigError(
        'train.grad_engine', str(e), "'auto' or 'vmap'") from e
  logging.info('Gradient engine: %s (%s)', choice.engine.name, choice.reason)
  return choice


def clipping_description(config, model, choice) -> dict[str, Any]:
  """The report's clipping fields: style, gamma, leaves and the engine."""
  leaves = len(jax.tree.leaves(model.trainable))
  if config.peft.mode == 'rgp':   # each target clipped as its 2 carriers
    leaves += len(model.rgp_targets)
  return {'style': config.train.clip_style,
          'gamma': config.train.automatic_clip_gamma,
          'num_leaves': leaves,
          'engine': choice.engine.name, 'engine_reason': choice.reason}


def stages_clip(plan: PrivacyPlan) -> float:
  """The clip norm the step applies (1.0, unused, for non-private runs)."""
  return plan.clip_norm if plan.enabled else 1.0


def build_stages(config, plan: PrivacyPlan, noise_key):
  """(DPStages, clip_norm_fn or None, mechanism notes or None) of a run.

  DP-Adam-AC's stages when enabled, else DP-AdamW/Adam/SGD's; the noise stage
  is the identity for a non-private run and LMO noise for dp.mechanism='lmo'.
  `noise_key` must be secret (`dpjax.randomness`).
  """
  stages, clip_norm_fn, notes = adaptive_stages(config, plan, noise_key)
  stages = stages or optimizers.dp_stages(
      l2_clip_norm=plan.l2_clip_norm if plan.enabled else 1.0,
      noise_multiplier=plan.noise_multiplier,
      expected_batch_size=plan.batch_schedule or plan.expected_batch_size,
      learning_rate=schedule(config), key=noise_key,
      optimizer=config.train.optimizer, b1=config.train.b1,
      b2=config.train.b2, eps=config.train.eps,
      weight_decay=config.train.weight_decay, momentum=config.train.momentum,
      ema_decay=config.train.ema_decay)
  if not plan.enabled:
    stages = stages._replace(noise=optax.identity())
  elif plan.mechanism == 'lmo':
    stages = stages._replace(noise=lmo_noise_stage(plan, noise_key))
  return stages, clip_norm_fn, notes
