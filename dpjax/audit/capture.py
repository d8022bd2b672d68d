"""The trainer's step with its noise stage replaced by a capture stage.

`build_harness(config)` builds the model, data, privacy plan, DP stages and
jitted step with the functions `dpjax.train.train_and_evaluate` uses, in the
same order, with fixed-seed secret randomness. It then swaps the stages after
the clip for:

  noise     -> `capture_noise()`: passes the updates through unchanged and
               keeps its INPUT (the float32 clipped sum the noise would be
               added to, plus DP-Adam-AC's count arguments) as its new state;
  normalize -> identity;  optimizer -> `optax.set_to_zero()`;  ema -> identity.

`StepHarness.run(arrays, idx, mask)` runs one step on the batch
`{k: arrays[k][idx]}` and returns the captured pre-noise values. The state
is never donated, so one compiled step serves every replay.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import configuration
from dpjax import optimizers
from dpjax import randomness
from dpjax import run_setup
from dpjax import sharding
from dpjax import steps as steps_lib

PyTree = Any


class Captured(NamedTuple):
  """What the noise stage received (the capture stage's new state).

  Attributes:
    total: the clipped sum the noise would be added to (as received).
    num_unclipped: () float32 real units with norm <= C (DP-Adam-AC's raw
      count), NaN when the step does not pass it.
    num_examples: () float32 real units (records or non-empty groups), NaN
      when the step does not pass it.
  """
  total: PyTree
  num_unclipped: jax.Array
  num_examples: jax.Array


def _scalar(x) -> jax.Array:
  if x is None:
    return jnp.full((), jnp.nan, jnp.float32)
  return jnp.asarray(x, jnp.float32)


def capture_noise() -> optax.GradientTransformationExtraArgs:
  """A noise stage that adds nothing and records its input in its state.

  `update(updates, state, params=None, *, num_unclipped=None,
  num_examples=None, **extra)` returns `(updates, Captured(...))`. A
  DP-Adam-AC `ClippedSum` record (research-path clip stage) is unpacked, and
  its `total` is passed on. The new state's structure differs from the
  initial one: fine for a step whose state is not donated.
  """

  def init_fn(params):
    del params
    return Captured(total=(), num_unclipped=_scalar(None),
                    num_examples=_scalar(None))

  def update_fn(updates, state, params=None, *, num_unclipped=None,
                num_examples=None, **extra_args):
    del state, params, extra_args
    if hasattr(updates, 'total') and hasattr(updates, 'num_unclipped'):
      num_unclipped, num_examples = updates.num_unclipped, updates.num_examples
      updates = updates.total
    return updates, Captured(total=updates,
                             num_unclipped=_scalar(num_unclipped),
                             num_examples=_scalar(num_examples))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def capture_stages(stages: optimizers.DPStages) -> optimizers.DPStages:
  """`stages` with everything after the clip replaced (see module doc)."""
  return stages._replace(noise=capture_noise(), normalize=optax.identity(),
                         optimizer=optax.set_to_zero(),
                         ema=optax.identity())


def audit_seed(config, seed: int | None = None) -> int:
  """The fixed secret-randomness seed of a replay: `seed`, else
  `dp.insecure_fixed_randomness_seed` when >= 0, else 0."""
  if seed is not None and seed >= 0:
    return int(seed)
  s = int(config.dp.insecure_fixed_randomness_seed)
  return s if s >= 0 else 0


@dataclasses.dataclass
class StepHarness:
  """One run's step, built as the trainer builds it, with the capture stage.

  Attributes:
    config, model, data, plan, secret: as in `dpjax.train`.
    path: a short name of the configuration's code path.
    norm_ord: 2 (L2) or 1 (L1, dp.mechanism='lmo').
    clip_norm: C the step clips to (C_0 for DP-Adam-AC).
    sensitivity: the add/remove sensitivity the noise is calibrated for, in
      the norm `norm_ord` (C: one record per clipping unit).
    count_sensitivity: of DP-Adam-AC's released count (None otherwise).
    count_centered: the released count is u - n/2 (else the raw u).
    max_batch: B_max, the static batch shape.
    num_devices: devices on the mesh's data axis.
    notes: what the reader should know about this path.
  """
  config: Any
  model: Any
  data: Any
  plan: Any
  secret: randomness.SecretRandomness
  path: str
  norm_ord: int
  clip_norm: float
  sensitivity: float
  count_sensitivity: float | None
  count_centered: bool
  max_batch: int
  num_devices: int
  notes: tuple[str, ...]
  step: Callable[..., tuple]
  state: Any
  frozen: Any
  dropout_key: jax.Array
  batch_sharding: Any

  def run(self, arrays: dict[str, np.ndarray], idx: np.ndarray,
          mask: np.ndarray) -> Captured:
    """The captured pre-noise values of one step on `arrays[k][idx]`.

    Args:
      arrays: the training set (dict of [N', ...] arrays).
      idx: [B_max] record indices (padded slots: 0).
      mask: [B_max] 1 for real records.

    Returns:
      `Captured` with NumPy leaves.
    """
    batch = {k: v[idx] for k, v in arrays.items()}
    batch, mask_d, ids = jax.device_put(
        (batch, np.asarray(mask, np.float32), np.asarray(idx, np.int32)),
        self.batch_sharding)
    new_state, _ = self.step(self.state, self.frozen, batch, mask_d,
                             self.dropout_key, ids)
    return jax.device_get(new_state.opt_state[1])


def path_name(config, num_devices: int, engine: str | None = None) -> str:
  """E.g. 'full/gaussian-L2/float32/dropout=0/devices=1/bookkeeping' (the
  gradient engine last; the clip style before it when not flat)."""
  parts = [config.peft.mode]
  if config.dp_adam_ac.enabled:
    parts.append('dp_adam_ac')
  mech = config.dp.mechanism
  if mech == 'lmo':
    mech += ('-L2-paper-faithful' if config.dp.lmo_paper_faithful_not_private
             else '-L1')
  else:
    mech += '-L2'
  parts += [mech, str(config.model.param_dtype),
            f'dropout={config.model.dropout_rate:g}',
            f'devices={num_devices}']
  if config.train.clip_style != 'flat':
    parts.append(f'clip={config.train.clip_style}')
  if engine:
    parts.append(engine)
  return '/'.join(parts)


def placed_step(config, model, stages: optimizers.DPStages, plan,
                clip_norm_fn, mesh, secret: randomness.SecretRandomness,
                data, choice=None):
  """(state, frozen, jitted step, dropout key) of `stages`, placed on `mesh`
  as the trainer places them; the step is not donated (audits replay it)."""
  state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32),
                               trainable=model.trainable,
                               opt_state=optimizers.chain(stages).init(
                                   model.trainable))
  state = jax.device_put(state, sharding.config_shardings(state, mesh, config))
  frozen = jax.device_put(model.frozen,
                          sharding.config_shardings(model.frozen, mesh, config))
  step = jax.jit(run_setup.make_step(config, model, stages, plan,
                                     clip_norm_fn, run_setup.rgp_key(config),
                                     data, choice=choice))
  dropout_key = jax.device_put(secret.dropout_key(),
                               sharding.replicated(mesh))
  return state, frozen, step, dropout_key


def build_harness(config, *, seed: int | None = None) -> StepHarness:
  """Builds the trainer's step for `config` with the capture stage.

  Args:
    config: a run config (`configs/*.py`), validated here.
    seed: the fixed secret-randomness seed (see `audit_seed`).

  Returns:
    A `StepHarness`.

  Raises:
    ConfigError: the config is invalid, or not private (`dp.enabled=False`
      has no sensitivity bound to check).
  """
  configuration.validate(config)
  if not config.dp.enabled:
    raise configuration.ConfigError(
        'dp.enabled', 'False: a non-private run clips nothing, so there is '
        'no sensitivity bound to replay', 'True')
  model, data, plan, mesh = run_setup.build_inputs(config)
  n_data = mesh.shape['data']
  secret = randomness.SecretRandomness.from_insecure_seed(
      audit_seed(config, seed))

  stages, clip_norm_fn, _ = run_setup.build_stages(config, plan,
                                                   secret.noise_key())
  notes = []
  clip = float(plan.clip_norm)
  count_sens, centered = None, False
  if clip_norm_fn is not None:  # DP-Adam-AC: C_t lives in the real state.
    from dpjax import adaptive_clipping  # pylint: disable=g-import-not-at-top
    real = optimizers.chain(stages).init(model.trainable)
    clip = float(clip_norm_fn(real))
    c0 = jnp.asarray(clip, jnp.float32)
    clip_norm_fn = lambda _: c0
    centered = bool(config.dp_adam_ac.count_centered)
    count_sens = adaptive_clipping.count_sensitivity(1, centered)
    notes.append(f'DP-Adam-AC replayed at C_0 = {clip:g} (C_t is public at '
                 'every step: a function of earlier privatized counts)')
    if config.dp_adam_ac.nonprivate_percentile_clipping:
      notes.append('nonprivate_percentile_clipping=True: C_t follows raw '
                   'norms, so the run is NOT private whatever this replay '
                   'of one step shows')
  if plan.lmo_paper_faithful_not_private:
    notes.append('paper-faithful LMO: L2 clipping checked against C; the '
                 'noise assumes L1 sensitivity 1 (NOT private, see report)')
  if plan.sampling == 'shuffle':
    notes.append('shuffle sampling is accounted at replace-one sensitivity '
                 '2C, which follows from add/remove C (triangle inequality)')
  cap = capture_stages(stages)
  engine = run_setup.build_engine(config, model, plan,
                                  run_setup.rgp_key(config), data)
  state, frozen, step, dropout_key = placed_step(config, model, cap, plan,
                                                 clip_norm_fn, mesh, secret,
                                                 data, choice=engine)
  return StepHarness(
      config=config, model=model, data=data, plan=plan, secret=secret,
      path=path_name(config, n_data, engine.engine.name),
      norm_ord=int(plan.clip_norm_ord),
      clip_norm=clip, sensitivity=clip, count_sensitivity=count_sens,
      count_centered=centered, max_batch=int(config.train.max_batch_size),
      num_devices=n_data, notes=tuple(notes), step=step, state=state,
      frozen=frozen, dropout_key=dropout_key,
      batch_sharding=sharding.batch_sharding(mesh))
