"""DP-Adam-AC (Yang 2025) as optax stages: clip, noise, 1/B, AdamW, EMA.

DP-AdamW plus (1) adaptive clipping, (2) a clip-rate-driven learning-rate
multiplier, (3) an EMA of the parameters for evaluation and export, (4)
micro-batch groups, and (5) per-step (variable-q) accounting, which lives in
`dpjax.batch_schedule` and the ledger.

The five stages have the names and order of `dpjax.optimizers.DPStages`, so
`optimizers.chain(stages)` and `optimizers.post_clip(stages)` work and the
trainer's state layout is unchanged. The controller (C_t, count-noise key,
LR multiplier, percentile history) lives in the *noise* stage's state, i.e.
in `opt_state[1]`, which the training step updates; `current_clip_norm(opt_state)`
reads C_t from it (pass it as `clip_norm_fn` to `dpjax.steps.make_train_step`).

Two ways to drive the chain, tested equal:

* Research path: `tx = dp_adam_ac(...)`, `tx.update(per_example_grads, state,
  params, mask=mask)`. The clip stage reads C_t (handed to it by `dp_adam_ac`
  as the extra argument `clip_norm`), clips, and computes the unclipped count
  itself; it passes sum, count and norms to the noise stage inside a
  `ClippedSum` record.
* Training step: `post_clip(stages).update(clipped_sum, opt_state[1:], params,
  num_unclipped=..., num_examples=..., clip_norm=C_t)` (plus `norms=`,
  `norms_mask=` in the non-private percentile mode). `dpjax.steps.make_train_step`
  as it stands passes only `num_unclipped` and `clip_norm`: it works with
  `count_centered=False` (raw count, sensitivity 1); the centered count (the
  default, sensitivity 1/2, smaller sigma_Delta) needs it to pass
  `num_examples=stats.num_examples` too.

Between noise and optimizer the updates travel as a `Carried` record that also
holds 1/B_t and the LR multiplier, both public.

Formal guarantees:
  Private mode (default). One step releases (clipped sum + N(0, (sigma_Delta S)^2
  I), centered unclipped count + N(0, sigma_b^2)) (or the raw count with
  `count_centered=False`, sensitivity 1 instead of 1/2) with S = C_t times
  `microbatch_groups.sensitivity_factor(group_size)` the L2 sensitivity of
  the clipped sum to adding or removing one record, and sigma_Delta from
  `adaptive_clipping.gradient_noise_multiplier`. The pair is one Gaussian
  mechanism of multiplier z = `noise_multiplier` (see
  `dpjax.adaptive_clipping`); C_t is a function of earlier privatized counts
  only, so it is public at step t. With Poisson sampling at rate q_t the step
  is the subsampled Gaussian (q_t, z): record `ledger.record(q_t, z)`.
  Normalisation, AdamW, the LR multiplier (a function of privatized counts)
  and the EMA are post-processing.
  Float32 rule (as `dpjax.clipping` and `dpjax.noise`): the clipped sum is
  float32 whatever the parameter dtype, the noise is added to it in float32,
  and only the noised sum is cast, to the parameter dtypes when the noise
  stage gets params of the same tree structure (else it stays float32).
  `nonprivate_percentile_clipping=True` (the paper's rule) sets C_{t+1} from
  raw per-example norms: the run is NOT differentially private, whatever the
  ledger says; `privacy_notes` returns the flag the report must show.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import adaptive_clipping as ac
from dpjax import clipping
from dpjax import ema as ema_lib
from dpjax import microbatch_groups
from dpjax import noise as noise_lib
from dpjax import optimizers

PyTree = Any


class ClippedSum(NamedTuple):
  """Output of the research-path clip stage (input of the noise stage)."""
  total: PyTree            # masked sum of clipped units (float32)
  num_unclipped: jax.Array  # () real units with norm <= C_t (not private)
  num_examples: jax.Array   # () real units (records, or non-empty groups)
  norms: jax.Array          # [U] unit norms (not private)
  norms_mask: jax.Array     # [U] 1 for real units


class Carried(NamedTuple):
  """Updates between the noise and the optimizer stages."""
  updates: PyTree
  inv_batch: jax.Array       # () 1 / B_t (public)
  lr_multiplier: jax.Array   # () gamma_t (public)


class NoiseStageState(NamedTuple):
  noise: noise_lib.NoiseState        # gradient-noise key
  control: ac.AdaptiveClipState      # C_t, count key, LR multiplier, history
  # () float32: gradient-noise std / (S = sensitivity factor x C_t), i.e.
  # sigma_Delta (private mode) or z. Set at init from the construction
  # arguments; kept in the state (as optax.inject_hyperparams does) so that
  # one compiled step serves every noise level.
  grad_multiplier: jax.Array


# ---------------------------------------------------------------------------
# Stage 1: clip (research path).


def adaptive_clip_and_sum(group_size: int = 1, num_groups: int | None = None
                          ) -> optax.GradientTransformationExtraArgs:
  """Per-example gradients in, `ClippedSum` out, at the clip norm `clip_norm`.

  `update(per_example, state, params, *, clip_norm, mask=None,
  group_ids=None)`; `clip_norm` must be `current_clip_norm(state)` (the
  `dp_adam_ac` wrapper passes it). With `group_size > 1`, `group_ids` ([B]
  from `microbatch_groups.random_group_ids`) and `num_groups` define the
  groups whose mean gradient is the clipped unit. The sum is float32
  whatever the gradient dtype (`clipping.clipped_sum`). Nothing is skipped
  (no data-dependent control flow).
  """
  if group_size > 1 and not (isinstance(num_groups, int) and num_groups >= 1):
    raise ValueError(f'num_groups must be an int >= 1 when group_size > 1, '
                     f'got {num_groups!r}.')

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, clip_norm=None, mask=None,
                group_ids=None, **extra_args):
    del params, extra_args
    if clip_norm is None:
      raise ValueError('the DP-Adam-AC clip stage needs clip_norm='
                       'current_clip_norm(opt_state) (dp_adam_ac passes it).')
    leaves = jax.tree.leaves(updates)
    batch = leaves[0].shape[0]
    if any(x.ndim == 0 or x.shape[0] != batch for x in leaves):
      raise ValueError('the clip stage expects per-example gradients with a '
                       'common leading batch axis on every leaf.')
    if mask is None:
      mask = jnp.ones((batch,), jnp.float32)
    if group_size == 1:
      total, norms = clipping.clipped_sum(updates, mask, clip_norm)
      units = mask.astype(jnp.float32)
    else:
      if group_ids is None:
        raise ValueError('group_size > 1 needs group_ids= in update().')
      total, norms, units = microbatch_groups.grouped_clipped_sum(
          updates, mask, group_ids, num_groups=num_groups,
          l2_clip_norm=clip_norm)
    unclipped = units * (jnp.isfinite(norms) & (norms <= clip_norm))
    return ClippedSum(total, jnp.sum(unclipped), jnp.sum(units), norms,
                      units), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Stage 2: noise + controller.


def _as_schedule(expected_batch_size) -> np.ndarray:
  b = np.atleast_1d(np.asarray(expected_batch_size, np.float64))
  if b.ndim != 1 or b.size == 0 or not np.all(np.isfinite(b) & (b > 0)):
    raise ValueError('expected_batch_size must be a number > 0 or a non-empty '
                     f'sequence of numbers > 0 (one per step), got '
                     f'{expected_batch_size!r}.')
  return b


def adaptive_noise(*, noise_multiplier: float, expected_batch_size,
                   key: jax.Array, initial_clip_norm: float,
                   target_quantile: float, clip_learning_rate: float,
                   count_noise_std: float, min_clip_norm: float,
                   max_clip_norm: float, nonprivate_percentile_clipping: bool,
                   history_size: int, group_size: int,
                   lr_rule: ac.LrMultiplierRule | None,
                   count_centered: bool = True
                   ) -> optax.GradientTransformationExtraArgs:
  """The noise stage: Gaussian noise at C_t, then C_{t+1} and gamma_{t+1}.

  The noise is added in float32 to the float32 sum; the noised sum is cast
  to the dtypes of the params passed to `update` when their tree structure
  matches the sum's, else it stays float32 (`noise.cast_to_params`).
  """
  schedule = jnp.asarray(_as_schedule(expected_batch_size), jnp.float32)
  sens = microbatch_groups.sensitivity_factor(group_size)
  # The count is released only when something reads it.
  uses_count = (nonprivate_percentile_clipping or clip_learning_rate > 0 or
                lr_rule is not None)
  if (nonprivate_percentile_clipping or noise_multiplier == 0 or
      not uses_count):
    grad_multiplier = float(noise_multiplier)
  else:
    grad_multiplier = ac.gradient_noise_multiplier(
        noise_multiplier, count_noise_std,
        ac.count_sensitivity(group_size, count_centered))
  if not (isinstance(key, jax.Array) and
          jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
    raise TypeError('key must be a typed PRNG key from jax.random.key(seed), '
                    f'got {type(key).__name__}.')
  noise_key, count_key = jax.random.split(key)
  hist = history_size if nonprivate_percentile_clipping else 0

  def init_fn(params):
    del params
    return NoiseStageState(
        noise=noise_lib.NoiseState(key=jnp.array(noise_key, copy=True)),
        control=ac.init_state(initial_clip_norm=initial_clip_norm,
                              count_key=count_key,
                              target_quantile=target_quantile,
                              history_size=hist),
        grad_multiplier=jnp.asarray(grad_multiplier, jnp.float32))

  def update_fn(updates, state, params=None, *, num_unclipped=None,
                num_examples=None, norms=None, norms_mask=None,
                **extra_args):
    del extra_args
    if isinstance(updates, ClippedSum):
      num_unclipped, num_examples = updates.num_unclipped, updates.num_examples
      norms, norms_mask = updates.norms, updates.norms_mask
      updates = updates.total
    if num_unclipped is None or (count_centered and num_examples is None):
      raise ValueError(
          'the DP-Adam-AC noise stage needs the extra arguments '
          'num_unclipped= and num_examples= (real clipping units in the '
          'batch) from the training step, or a ClippedSum from its clip '
          'stage (num_examples may be omitted only with count_centered=False).')
    if not count_centered:
      num_examples = None
    ctl = state.control
    c_t = ctl.clip_norm  # C_t of THIS step, before its update.
    b_t = schedule[jnp.minimum(ctl.step, schedule.shape[0] - 1)]
    key, sub = jax.random.split(state.noise.key)
    std = state.grad_multiplier * sens * c_t
    noised = noise_lib.cast_to_params(
        noise_lib.noised_float32(sub, updates, std), params)

    count_key, sub_c = jax.random.split(ctl.count_key)
    if uses_count:
      frac = ac.privatized_unclipped_fraction(
          num_unclipped, num_examples, count_noise_std=count_noise_std,
          expected_units=b_t, key=sub_c)
    else:  # fixed C, no LR rule: DP-AdamW; nothing about the count leaves.
      frac = ctl.unclipped_fraction
    history, history_count = ctl.history, ctl.history_count
    if nonprivate_percentile_clipping:
      if norms is None or norms_mask is None:
        raise ValueError('nonprivate_percentile_clipping needs norms= and '
                         'norms_mask= (raw unit norms) from the training step.')
      valid = (norms_mask > 0) & jnp.isfinite(norms)
      history, history_count = ac.push_history(history, history_count, norms,
                                               valid)
      c_next = ac.percentile_update(c_t, history, history_count,
                                    target_quantile=target_quantile,
                                    min_clip_norm=min_clip_norm,
                                    max_clip_norm=max_clip_norm)
    else:
      c_next = jnp.clip(ac.geometric_update(
          c_t, frac, target_quantile=target_quantile,
          learning_rate=clip_learning_rate), min_clip_norm, max_clip_norm)
    gamma = ctl.lr_multiplier
    if lr_rule is not None:
      gamma = ac.lr_multiplier_update(gamma, 1.0 - frac, lr_rule)
    control = ac.AdaptiveClipState(
        clip_norm=c_next.astype(jnp.float32), count_key=count_key,
        step=ctl.step + 1, unclipped_fraction=frac.astype(jnp.float32),
        lr_multiplier=gamma.astype(jnp.float32), history=history,
        history_count=history_count)
    out = Carried(noised, (1.0 / b_t).astype(jnp.float32), gamma)
    return out, NoiseStageState(noise=noise_lib.NoiseState(key=key),
                                control=control,
                                grad_multiplier=state.grad_multiplier)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Stages 3 and 4: 1/B_t, then AdamW scaled by the LR multiplier.


def normalize_carried() -> optax.GradientTransformation:
  """Divides the carried noised sum by the expected batch size B_t."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    if not isinstance(updates, Carried):
      raise ValueError('normalize_carried expects the noise stage output.')
    scaled = jax.tree.map(lambda u: (u * updates.inv_batch).astype(u.dtype),
                          updates.updates)
    return updates._replace(updates=scaled), state

  return optax.GradientTransformation(init_fn, update_fn)


def with_lr_multiplier(inner: optax.GradientTransformation
                       ) -> optax.GradientTransformation:
  """Runs `inner` (AdamW) on the carried gradient, scales its step by gamma_t.

  AdamW's step is -lr (m^ / (sqrt(v^) + eps) + lambda theta), so the result
  is AdamW with learning rate lr * gamma_t (decoupled weight decay included).
  """

  def update_fn(updates, state, params=None):
    if not isinstance(updates, Carried):
      raise ValueError('with_lr_multiplier expects the noise stage output.')
    out, state = inner.update(updates.updates, state, params)
    out = jax.tree.map(lambda u: (u * updates.lr_multiplier).astype(u.dtype),
                       out)
    return out, state

  return optax.GradientTransformation(inner.init, update_fn)


# ---------------------------------------------------------------------------
# The chain.


def dp_adam_ac_stages(
    *, noise_multiplier: float, expected_batch_size: float | Sequence[float],
    learning_rate: Any, key: jax.Array, initial_clip_norm: float = 1.0,
    target_quantile: float = 0.5, clip_learning_rate: float = 0.2,
    count_noise_std: float | None = None, min_clip_norm: float = 0.0,
    max_clip_norm: float = math.inf,
    nonprivate_percentile_clipping: bool = False, history_size: int = 1000,
    group_size: int = 1, num_groups: int | None = None,
    count_centered: bool = True,
    adapt_learning_rate: bool = True, lr_band: float = 0.10,
    lr_up: float = 1.01, lr_down: float = 0.995,
    lr_min_multiplier: float = 0.1, lr_max_multiplier: float = 2.0,
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
    weight_decay: float = 0.01, ema_decay: float = 0.999) -> optimizers.DPStages:
  """The five stages of DP-Adam-AC.

  Args:
    noise_multiplier: z >= 0, the multiplier the run is accounted with (the
      ledger records (q_t, z)). In private mode the gradient noise uses
      sigma_Delta > z so that gradient + count together cost z.
    expected_batch_size: B > 0, or one B_t per step (a schedule from
      `dpjax.batch_schedule`; the last value repeats). The public divisor,
      and the denominator of the privatized unclipped fraction. In group mode
      it is the expected number of non-empty groups.
    learning_rate: base AdamW learning rate (float or optax schedule).
    key: typed PRNG key (split into gradient-noise and count-noise keys).
    initial_clip_norm: C_0 > 0.
    target_quantile: gamma in (0, 1), the target unclipped fraction (1 - the
      paper's target clip rate rho*).
    clip_learning_rate: eta of the geometric update (private mode). With
      0 and `adapt_learning_rate=False` no count is released, the gradient
      noise multiplier is z and the chain is DP-AdamW at the fixed clip norm
      `initial_clip_norm` (the baseline, sharing this chain's state layout).
    count_noise_std: sigma_b (default: B_0 / 20, Andrew et al.).
    min_clip_norm, max_clip_norm: clamp of C_{t+1} (both modes).
    nonprivate_percentile_clipping: the paper's percentile-of-history rule on
      raw norms; NOT private (see `privacy_notes`).
    history_size: H, ring-buffer length of that rule.
    group_size: m; 1 clips each record, > 1 clips group means (noise scaled
      to the sensitivity 2C; research path needs `num_groups` and
      `group_ids=` in update).
    num_groups: K groups per batch (group mode, research path).
    count_centered: release the centered count (sensitivity 1/2 per record;
      needs `num_examples=` from the training step). False releases the raw
      count (sensitivity 1), which works with a step that passes only
      `num_unclipped`, at the price of a larger sigma_Delta.
    adapt_learning_rate: apply the clip-rate LR multiplier.
    lr_band, lr_up, lr_down, lr_min_multiplier, lr_max_multiplier: its rule
      (`adaptive_clipping.LrMultiplierRule`), centred on the target clip
      rate 1 - target_quantile.
    b1, b2, eps, weight_decay: AdamW (decoupled weight decay).
    ema_decay: decay of the parameter EMA for evaluation/export (0: none).

  Returns:
    `dpjax.optimizers.DPStages`.
  """
  if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier >= 0
          and math.isfinite(noise_multiplier)):
    raise ValueError(f'noise_multiplier must be finite and >= 0, got '
                     f'{noise_multiplier!r}.')
  sched = _as_schedule(expected_batch_size)
  if not 0.0 < target_quantile < 1.0:
    raise ValueError(f'target_quantile must be in (0, 1), got '
                     f'{target_quantile!r}.')
  if not clip_learning_rate >= 0:
    raise ValueError(f'clip_learning_rate must be >= 0, got '
                     f'{clip_learning_rate!r}.')
  if not 0.0 <= min_clip_norm <= initial_clip_norm <= max_clip_norm:
    raise ValueError('need 0 <= min_clip_norm <= initial_clip_norm <= '
                     f'max_clip_norm, got {min_clip_norm!r}, '
                     f'{initial_clip_norm!r}, {max_clip_norm!r}.')
  if nonprivate_percentile_clipping and not (
      isinstance(history_size, int) and history_size >= 1):
    raise ValueError(f'history_size must be an int >= 1, got {history_size!r}.')
  if count_noise_std is None:
    count_noise_std = float(sched[0]) / 20.0
  lr_rule = None
  if adapt_learning_rate:
    lr_rule = ac.LrMultiplierRule(
        target_clip_rate=1.0 - target_quantile, band=lr_band, up=lr_up,
        down=lr_down, min_multiplier=lr_min_multiplier,
        max_multiplier=lr_max_multiplier).validate()
  return optimizers.DPStages(
      clip=adaptive_clip_and_sum(group_size, num_groups),
      noise=adaptive_noise(
          noise_multiplier=float(noise_multiplier), expected_batch_size=sched,
          key=key, initial_clip_norm=float(initial_clip_norm),
          target_quantile=float(target_quantile),
          clip_learning_rate=float(clip_learning_rate),
          count_noise_std=float(count_noise_std),
          min_clip_norm=float(min_clip_norm),
          max_clip_norm=float(max_clip_norm),
          nonprivate_percentile_clipping=bool(nonprivate_percentile_clipping),
          history_size=history_size, group_size=group_size, lr_rule=lr_rule,
          count_centered=bool(count_centered)),
      normalize=normalize_carried(),
      optimizer=with_lr_multiplier(optax.adamw(
          learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)),
      ema=ema_lib.ema_params(ema_decay) if ema_decay else optax.identity())


def current_clip_norm(opt_state) -> jax.Array:
  """C_t, the clip norm of the next step (full or post-clip chain state)."""
  found = ac.find_state(opt_state)
  if found is None:
    raise ValueError('no AdaptiveClipState in this optimizer state: it was not '
                     'built by dp_adam_ac_stages.')
  return found.clip_norm


def current_lr_multiplier(opt_state) -> jax.Array:
  """gamma_t, public (a function of privatized counts)."""
  return ac.find_state(opt_state).lr_multiplier


def privatized_clip_rate(opt_state) -> jax.Array:
  """1 - b~ of the last step (public), for logging."""
  return 1.0 - ac.find_state(opt_state).unclipped_fraction


def dp_adam_ac(**kwargs) -> optax.GradientTransformationExtraArgs:
  """DP-Adam-AC as one chain: `update(per_example, state, params, mask=...)`.

  Takes the keyword arguments of `dp_adam_ac_stages`. Reads C_t from the
  state and hands it to the clip stage (extra argument `clip_norm`); with
  `group_size > 1` pass `group_ids=` too.
  """
  inner = optimizers.chain(dp_adam_ac_stages(**kwargs))

  def update_fn(updates, state, params=None, **extra_args):
    extra_args['clip_norm'] = current_clip_norm(state)
    return inner.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def privacy_notes(*, nonprivate_percentile_clipping: bool,
                  noise_multiplier: float, group_size: int = 1
                  ) -> dict[str, Any]:
  """What the privacy report must say about a DP-Adam-AC run."""
  if nonprivate_percentile_clipping:
    return {
        'formally_private': False,
        'adaptive_clipping': 'percentile of raw per-example norms (Yang 2025, '
                             'paper-faithful): NOT differentially private',
        'warning': 'NOT DIFFERENTIALLY PRIVATE: the clip norm (and so the '
                   'noise scale) follows raw per-example gradient norms; the '
                   'epsilon figures hold only for a fixed clip norm and do '
                   'not apply to this run.'}
  return {
      'formally_private': noise_multiplier > 0,
      'adaptive_clipping': 'private quantile tracking (Andrew et al. 2021); '
                           'gradient and count noise accounted together as '
                           f'one Gaussian of multiplier {noise_multiplier:g}',
      'sensitivity': f'{microbatch_groups.sensitivity_factor(group_size):g} '
                     'x C_t per record (add/remove)'}
