"""Training loop: builds everything from the config once, then runs.

Nothing below `train_and_evaluate` sees the whole ConfigDict: the config is
read here and turned into typed objects (model, sampler, DP chain, ledger).

Resume order: the latest checkpoint in `workdir/checkpoints` if any, else a
fresh start from `config.model.init`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import batch_schedule
from dpjax import checkpointing
from dpjax import configuration
from dpjax import input_pipeline
from dpjax import metrics as metrics_lib
from dpjax import model_setup
from dpjax import optimizers
from dpjax import reporting
from dpjax import sampling
from dpjax import sharding
from dpjax import steps as steps_lib
from dpjax.accounting import calibration
from dpjax.accounting import get_accountant
from dpjax.accounting import ledger as ledger_lib


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  """The mechanism a run applies at every step (public parameters)."""
  enabled: bool
  sampling: str           # 'poisson' | 'shuffle'
  neighbouring: str       # 'add_remove' | 'replace_one'
  dataset_size: int
  expected_batch_size: float
  q: float
  noise_multiplier: float
  l2_clip_norm: float
  delta: float
  accountant: str
  calibrated_for_epsilon: float | None
  batch_schedule: tuple[float, ...] | None = None  # B_t per step (variable q)
  # Noise: 'gaussian' (noise_multiplier = std / L2 sensitivity) or 'lmo'
  # (noise_multiplier = LMO noise scale / L1 sensitivity).
  mechanism: str = 'gaussian'
  clip_norm_ord: int = 2              # 2: L2 clipping; 1: L1 clipping (LMO)
  l1_clip_norm: float | None = None   # LMO with L1 clipping
  lmo_params: tuple[tuple[str, float], ...] | None = None
  lmo_noise_scale: float | None = None  # what the unit LMO noise is scaled by
  lmo_paper_faithful_not_private: bool = False

  @property
  def clip_norm(self) -> float:
    """The clip norm the step applies (L1 for LMO with L1 clipping)."""
    return self.l1_clip_norm if self.clip_norm_ord == 1 else self.l2_clip_norm

  def lmo(self):
    """The LMO noise parameters (`dpjax.accounting.lmo.LMOParams`)."""
    from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
    return lmo.LMOParams(**dict(self.lmo_params))

  def accountant_obj(self):
    """The accountant that bounds this run's epsilon so far."""
    if self.mechanism == 'lmo':
      from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
      return lmo.LMOAccountant(self.lmo())
    return get_accountant(self.accountant)

  def batch_size_at(self, step: int) -> float:
    """Expected batch size of step `step` (1-based)."""
    if self.batch_schedule is None:
      return self.expected_batch_size
    return self.batch_schedule[min(step, len(self.batch_schedule)) - 1]

  def q_at(self, step: int) -> float:
    return self.batch_size_at(step) / self.dataset_size


def _batch_sizes(config) -> tuple[float, ...] | None:
  """The per-step expected batch sizes, or None when constant."""
  t = config.train
  if t.batch_schedule == 'constant':
    return None
  sizes = batch_schedule.linear_ramp(
      start=float(t.batch_schedule_start), end=float(t.batch_size),
      steps=t.steps, ramp_steps=t.batch_schedule_ramp_steps or None)
  return tuple(float(b) for b in sizes)


def plan_privacy(config, dataset_size: int,
                 num_noised_coordinates: int | None = None) -> PrivacyPlan:
  """Resolves sigma (given or calibrated) for the run's sampling scheme.

  `num_noised_coordinates` (d) is needed only for the paper-faithful LMO
  mode, whose true L1 sensitivity after L2 clipping to C is C sqrt(d).
  """
  dp = config.dp
  if dp.enabled and dp.mechanism == 'lmo':
    return _plan_lmo(config, dataset_size, num_noised_coordinates)
  batch = float(config.train.batch_size)
  q = batch / dataset_size
  neighbouring = 'add_remove' if dp.sampling == 'poisson' else 'replace_one'
  sizes = _batch_sizes(config)
  if not dp.enabled:
    return PrivacyPlan(False, dp.sampling, neighbouring, dataset_size, batch,
                       q, 0.0, math.inf, dp.delta, dp.accountant, None, sizes)
  sigma = float(dp.noise_multiplier)
  target = None
  if sigma < 0:
    target = float(dp.target_epsilon)
    accountant = get_accountant(dp.accountant)
    if dp.sampling == 'poisson':
      sigma = _calibrate(config, accountant, dataset_size, sizes,
                         neighbouring, 'noise multiplier')
    else:
      # Fixed-size shuffled batches: one full-batch Gaussian per epoch an
      # example takes part in, at replace-one sensitivity 2C.
      steps = config.train.steps
      epochs = math.ceil(steps / max(1, dataset_size // int(batch)))
      try:
        sigma = 2.0 * calibration.calibrate_sigma(
            accountant, target_epsilon=target, delta=dp.delta, q=1.0,
            steps=epochs, neighbouring='add_remove')
      except ValueError as e:
        raise _unreachable(config, q, e) from e
      _check_max_multiplier(config, sigma, q, 'noise multiplier')
  return PrivacyPlan(True, dp.sampling, neighbouring, dataset_size, batch, q,
                     sigma, float(dp.l2_clip_norm), float(dp.delta),
                     dp.accountant, target, sizes)


def _plan_lmo(config, dataset_size: int, dim: int | None) -> PrivacyPlan:
  """The LMO mechanism's plan: sound (L1 clipping, calibrated scale) by
  default, or the artifact's setting behind the not-private flag."""
  from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
  dp = config.dp
  params = lmo.LMOParams(**{k: float(v) for k, v in dp.lmo.items()})
  batch = float(config.train.batch_size)
  q = batch / dataset_size
  sizes = _batch_sizes(config)
  acc = lmo.LMOAccountant(params)
  common = dict(enabled=True, sampling='poisson', neighbouring='add_remove',
                dataset_size=dataset_size, expected_batch_size=batch, q=q,
                delta=float(dp.delta), accountant=acc.name,
                batch_schedule=sizes, mechanism='lmo',
                lmo_params=tuple(sorted(params.to_dict().items())))
  if dp.lmo_paper_faithful_not_private:
    # The artifact: L2 clipping to C, unit-scale LMO noise on the sum, the
    # parameters' per-step eps taken as the guarantee. The L1 sensitivity of
    # an L2-clipped sum is C sqrt(d), so the sound multiplier is 1/(C sqrt d).
    if not dim:
      raise ValueError('the paper-faithful LMO plan needs the number of '
                       'noised coordinates')
    c = float(dp.l2_clip_norm)
    return PrivacyPlan(noise_multiplier=1.0 / (c * math.sqrt(dim)),
                       l2_clip_norm=c, calibrated_for_epsilon=None,
                       clip_norm_ord=2, lmo_noise_scale=1.0,
                       lmo_paper_faithful_not_private=True, **common)
  c1 = float(dp.l1_clip_norm)
  m = float(dp.noise_multiplier)
  target = None
  if m < 0:
    target = float(dp.target_epsilon)
    m = _calibrate(config, acc, dataset_size, sizes, 'add_remove',
                   'LMO noise scale / L1 clip norm')
  return PrivacyPlan(noise_multiplier=m, l2_clip_norm=math.inf,
                     calibrated_for_epsilon=target, clip_norm_ord=1,
                     l1_clip_norm=c1, lmo_noise_scale=m * c1, **common)


def _calibrate(config, accountant, dataset_size: int, sizes, neighbouring,
               what: str) -> float:
  """The smallest multiplier meeting dp.target_epsilon under Poisson
  sampling (over the batch schedule when there is one)."""
  dp = config.dp
  target = float(dp.target_epsilon)
  q = float(config.train.batch_size) / dataset_size
  try:
    if sizes is not None:
      m = batch_schedule.calibrate_sigma_for_schedule(
          accountant, target_epsilon=target, delta=dp.delta,
          rates=[b / dataset_size for b in sizes], neighbouring=neighbouring)
    else:
      m = calibration.calibrate_sigma(
          accountant, target_epsilon=target, delta=dp.delta, q=q,
          steps=config.train.steps, neighbouring=neighbouring)
  except ValueError as e:
    raise _unreachable(config, q, e) from e
  _check_max_multiplier(config, m, q, what)
  return m


def _unreachable(config, q: float, e: Exception) -> configuration.ConfigError:
  dp = config.dp
  return configuration.ConfigError(
      'dp.target_epsilon', f'{dp.target_epsilon} cannot be reached with '
      f'{dp.mechanism} noise over {config.train.steps} steps at q={q:.4g}, '
      f'delta={dp.delta} ({e})', 'a larger target, fewer steps or a smaller '
      'batch')


def _check_max_multiplier(config, m: float, q: float, what: str) -> None:
  dp = config.dp
  if m > dp.max_noise_multiplier:
    raise configuration.ConfigError(
        'dp.target_epsilon', f'{dp.target_epsilon} needs {what} {m:.4g} > '
        f'dp.max_noise_multiplier ({dp.max_noise_multiplier}) with '
        f'{config.train.steps} steps at q={q:.4g}, delta={dp.delta}',
        'a larger target, fewer steps, a smaller batch or a larger '
        'dp.max_noise_multiplier')


def _lmo_noise_stage(plan: PrivacyPlan, noise_key):
  from dpjax import lmo_noise  # pylint: disable=g-import-not-at-top
  return lmo_noise.lmo_noise(plan.lmo(),
                             l1_sensitivity=plan.lmo_noise_scale,
                             key=noise_key)


def _fingerprint(plan: PrivacyPlan, config) -> str:
  """Hash of everything a resumed run must share with the saved one."""
  keys = dict(dataclasses.asdict(plan))
  keys.update(seed=config.seed, max_batch=config.train.max_batch_size,
              steps=config.train.steps)
  return hashlib.sha256(json.dumps(keys, sort_keys=True,
                                   default=str).encode()).hexdigest()[:16]


def _make_sampler(config, plan: PrivacyPlan, seed: int):
  if plan.sampling == 'poisson':
    return sampling.PoissonSampler(plan.dataset_size, plan.expected_batch_size,
                                   config.train.max_batch_size, seed)
  return sampling.ShuffleSampler(plan.dataset_size,
                                 int(config.train.batch_size), seed)


def _schedule(config):
  lr, warm = config.train.learning_rate, config.train.warmup_steps
  if warm:
    return optax.linear_schedule(0.0, lr, warm)
  return lr


def evaluate(eval_fn, params_full, heldout: dict[str, np.ndarray],
             batch_size: int, batch_sh) -> tuple[float, float]:
  """(mean held-out loss, accuracy) per counted token or example."""
  n = next(iter(heldout.values())).shape[0]
  total, count, correct = 0.0, 0.0, 0.0
  for start in range(0, n, batch_size):
    chunk = {k: v[start:start + batch_size] for k, v in heldout.items()}
    pad = batch_size - next(iter(chunk.values())).shape[0]
    if pad:
      chunk = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in chunk.items()}
    chunk = jax.device_put(chunk, batch_sh)
    s, c, k = eval_fn(params_full, chunk)
    total += float(s)
    count += float(c)
    correct += float(k)
  return total / max(count, 1.0), correct / max(count, 1.0)


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) one DP training run; returns the final summary."""
  configuration.validate(config)
  os.makedirs(workdir, exist_ok=True)
  model = model_setup.create(config)
  tokenizer = (model.tokenizer if config.data.tokenizer == 'model' or
               config.data.task == 'genre' else None)
  data = input_pipeline.build(config.data, tokenizer, seed=config.seed)
  configuration.validate_against_data(config, data.train_size)
  plan = plan_privacy(config, data.train_size, model_setup.noised_coordinates(
      model, config.peft.rgp_rank))

  root = jax.random.key(config.seed)
  noise_key, dropout_key, sample_seed_key = jax.random.split(root, 3)
  sample_seed = int(jax.random.randint(sample_seed_key, (), 0, 2**31 - 1))
  sampler = _make_sampler(config, plan, sample_seed)
  ledger = ledger_lib.PrivacyLedger(
      sampling=plan.sampling, neighbouring=plan.neighbouring, unit=data.unit,
      dataset_size=plan.dataset_size,
      batch_size=int(math.ceil(plan.expected_batch_size)),
      mechanism=plan.mechanism,
      mechanism_params=dict(plan.lmo_params or ()))

  mesh = sharding.make_mesh(config.mesh.data, config.mesh.model)
  n_data = mesh.shape['data']
  if config.train.max_batch_size % n_data:
    raise configuration.ConfigError(
        'train.max_batch_size', f'{config.train.max_batch_size} is not '
        f'divisible by the {n_data} devices on the data axis',
        f'a multiple of {n_data}')
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)

  stages, clip_norm_fn, ac_notes = _adaptive_stages(config, plan, noise_key)
  stages = stages or optimizers.dp_stages(
      l2_clip_norm=plan.l2_clip_norm if plan.enabled else 1.0,
      noise_multiplier=plan.noise_multiplier,
      expected_batch_size=plan.batch_schedule or plan.expected_batch_size,
      learning_rate=_schedule(config), key=noise_key,
      optimizer=config.train.optimizer, b1=config.train.b1,
      b2=config.train.b2, eps=config.train.eps,
      weight_decay=config.train.weight_decay, momentum=config.train.momentum,
      ema_decay=config.train.ema_decay)
  if not plan.enabled:
    stages = stages._replace(noise=optax.identity())
  elif plan.mechanism == 'lmo':
    stages = stages._replace(noise=_lmo_noise_stage(plan, noise_key))
  tx = optimizers.chain(stages)
  state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32),
                               trainable=model.trainable,
                               opt_state=tx.init(model.trainable))
  rules = tuple(tuple(r) for r in config.sharding_rules)
  state = jax.device_put(state, sharding.param_shardings(state, mesh, rules))
  frozen = jax.device_put(model.frozen,
                          sharding.param_shardings(model.frozen, mesh, rules))

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    config.train.keep_checkpoints)
  fingerprint = _fingerprint(plan, config)
  start = ckpt.latest_step() or 0
  if start:
    state, meta = ckpt.restore(start, state)
    if meta['fingerprint'] != fingerprint:
      raise configuration.ConfigError(
          'dp', f'workdir {workdir} holds a run with other privacy or '
          'sampling parameters', 'the same config as the saved run, or a '
          'new --workdir')
    sampler.set_state(meta['sampler'])
    ledger = ledger_lib.PrivacyLedger.from_dict(meta['ledger'])
    logging.info('Resumed from step %d', start)

  train_step = jax.jit(_make_step(config, model, stages, plan, clip_norm_fn,
                                  jax.random.fold_in(root, 7919)),
                       donate_argnums=(0,))
  eval_fn = jax.jit(model.eval_fn)
  accountant = plan.accountant_obj() if plan.enabled else None

  def epsilon_so_far() -> float:
    if not plan.enabled:
      return math.inf
    if ledger.steps == 0:
      return 0.0
    return float(accountant.epsilon(ledger.accountable_phases(), plan.delta))

  writer = metrics_lib.MetricsWriter(os.path.join(workdir, 'metrics.jsonl'),
                                     resume_step=start)
  progress = metrics_lib.Progress(config.train.steps, start)
  total_steps = config.train.steps
  dropout_key = jax.device_put(dropout_key, repl)

  last_eval = {'eval_loss': math.nan, 'step': -1}

  def run_eval(step):
    ev = evaluate_both(model, state, frozen, data, config, eval_fn, batch_sh)
    writer.write(step, ev)
    last_eval.update(ev, step=step)
    return ev

  eps_context = {'epsilon_accountant': plan.accountant if plan.enabled
                 else 'none (non-private)', 'epsilon_delta': plan.delta,
                 'sampling': plan.sampling, 'neighbouring': plan.neighbouring}
  if start == 0:
    first = run_eval(0)
    writer.write(0, dict(epsilon=0.0 if plan.enabled else math.inf,
                         **eps_context))
    logging.info('Initial held-out loss %.4f', first['eval_loss'])

  for step in range(start + 1, total_steps + 1):
    idx, mask = (sampler.draw(plan.batch_size_at(step))
                 if plan.batch_schedule else sampler.draw())
    batch = {k: v[idx] for k, v in data.train.items()}
    batch, mask_d = jax.device_put((batch, mask.astype(np.float32)), batch_sh)
    state, m = train_step(state, frozen, batch, mask_d, dropout_key)
    if plan.enabled:
      ledger.record(plan.q_at(step), plan.noise_multiplier)
    if step % config.train.log_every == 0 or step == total_steps:
      m = jax.device_get(m)
      if not np.isfinite(m['train_loss']):
        raise FloatingPointError(f'non-finite training loss at step {step}')
      eps = epsilon_so_far()
      # Statistics of private batches are not privatized: logged only on
      # request (or for non-private runs). clip_norm is public (privatized).
      show_private = config.train.log_nonprivate_stats or not plan.enabled
      logged = dict(m) if show_private else {'clip_norm': m['clip_norm']}
      writer.write(step, dict(logged, epsilon=eps, **eps_context))
      progress.line(step, float(m['train_loss'] if show_private
                                else last_eval['eval_loss']), eps,
                    eps_context['epsilon_accountant'],
                    f', delta={plan.delta:g}, {plan.sampling}, '
                    f'{plan.neighbouring}',
                    loss_label='train loss' if show_private
                    else 'last held-out loss')
    if step % config.train.eval_every == 0 or step == total_steps:
      run_eval(step)
    if step % config.train.checkpoint_every == 0 or step == total_steps:
      ckpt.save(step, state, {
          'fingerprint': fingerprint, 'sampler': sampler.get_state(),
          'ledger': ledger.to_dict(), 'plan': dataclasses.asdict(plan)})
  ckpt.wait()

  if last_eval['step'] == total_steps:  # the loop evaluated the final state
    final = {k: v for k, v in last_eval.items() if k != 'step'}
  else:  # resumed an already finished run
    final = evaluate_both(model, state, frozen, data, config, eval_fn,
                          batch_sh)
  recs = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  initial = next((r for r in recs if r['step'] == 0 and 'eval_loss' in r),
                 {})
  final['eval_loss_initial'] = initial.get('eval_loss')
  final['eval_accuracy_initial'] = initial.get('eval_accuracy')
  if data.canaries:
    from dpjax import memorization  # pylint: disable=g-import-not-at-top
    final['canary_exposure'] = memorization.canary_exposures(
        model.module, jax.device_get(model.combine(state.trainable, frozen)),
        data.tokenizer, data.canaries,
        n_samples=config.data.exposure_samples, seed=config.seed)
  accountants, extra_rows = config.dp.report_accountants, None
  if plan.enabled and plan.mechanism == 'lmo':
    accountants, extra_rows, ac_notes = _lmo_report(plan, ledger)
  report = reporting.write_report(workdir, plan, ledger, sampler, final,
                                  accountants=accountants,
                                  extra_rows=extra_rows,
                                  mechanism_notes=ac_notes)
  writer.close()
  ckpt.close()
  if config.plot:
    metrics_lib.plot_run(os.path.join(workdir, 'metrics.jsonl'),
                         os.path.join(workdir, 'training.png'))
  model_setup.export(config, model, steps_lib.ema_trainable(state), frozen,
                     workdir)
  return {'state': state, 'frozen': frozen, 'report': report, 'final': final,
          'plan': plan, 'ledger': ledger}


def _adaptive_stages(config, plan: PrivacyPlan, noise_key):
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
        learning_rate=_schedule(config), key=noise_key, b1=config.train.b1,
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


def _make_step(config, model, stages, plan: PrivacyPlan, clip_norm_fn,
               rgp_key):
  """The jittable step: DP-SGD-style, or RGP's carrier-space step.

  A non-private run with peft.mode='rgp' is RGP without clipping or noise
  (the same low-rank updates: the baseline for the private runs).
  """
  if config.peft.mode == 'rgp':
    from dpjax import rgp_step  # pylint: disable=g-import-not-at-top
    return rgp_step.make_rgp_train_step(
        model.loss_fn, stages, targets=model.rgp_targets,
        rank=config.peft.rgp_rank,
        l2_clip_norm=plan.clip_norm if plan.enabled else math.inf,
        microbatch_size=config.train.microbatch_size, key=rgp_key,
        power_iters=config.peft.rgp_power_iters,
        cross_sign=float(config.peft.rgp_cross_sign),
        clip_norm_ord=plan.clip_norm_ord,
        extra_grad_scale=float(config.peft.rgp_extra_grad_scale))
  return steps_lib.make_train_step(
      model.loss_fn, optimizers.post_clip(stages),
      l2_clip_norm=stages_clip(plan),
      microbatch_size=config.train.microbatch_size, private=plan.enabled,
      clip_norm_fn=clip_norm_fn, clip_norm_ord=plan.clip_norm_ord)


def stages_clip(plan: PrivacyPlan) -> float:
  return plan.clip_norm if plan.enabled else 1.0


def _lmo_report(plan: PrivacyPlan, ledger):
  """(accountants, extra rows, notes) of an LMO run's report: the sound
  bound (the guarantee) and the artifact's heuristic figure beside it."""
  from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
  acc = plan.accountant_obj()
  phases = acc.lmo_phases(ledger.phases)
  if plan.lmo_paper_faithful_not_private:
    # The paper's figure assumes L1 sensitivity 1 in noise units.
    phases = [dataclasses.replace(p, l1_sensitivity=1.0) for p in phases]
  row = lmo.paper_faithful_row(phases, plan.delta)
  rows = [dict(row, basis='paper heuristic (Gaussian with the same per-step '
               'eps)')] if row else []
  notes = {
      'noise': 'LMO: Laplace(0, scale / eps\') per coordinate, eps\' = a1 '
               'Gamma(k, theta) + a3 Exp(rate lam) + a4 U[u_a, u_b]',
      'lmo_noise_scale': plan.lmo_noise_scale,
      'lmo_sound_accounting': 'lmo_sound: MGF-RDP on its domain or pure DP, '
                              'Zhu-Wang Poisson subsampling, RDP '
                              'composition; an upper bound',
      'lmo_paper_faithful_not_private': (
          "the paper's overall eps: the Gaussian mechanism with the same "
          'per-step (eps0, delta), subsampled and composed; NOT a guarantee '
          'for LMO noise'),
  }
  if plan.lmo_paper_faithful_not_private:
    notes.update(
        formally_private=False,
        warning='NOT DIFFERENTIALLY PRIVATE AS CONFIGURED: '
        'dp.lmo_paper_faithful_not_private=True runs the artifact\'s setting '
        '(L2 clipping, unit-scale noise assumed to have L1 sensitivity 1). '
        'The lmo_sound row accounts the true L1 sensitivity C sqrt(d).')
  return (acc,), rows, notes


def evaluate_both(model, state, frozen, data, config, eval_fn, batch_sh):
  """Held-out loss of the raw and of the EMA weights."""
  def ev(trainable):
    return evaluate(eval_fn, model.combine(trainable, frozen), data.heldout,
                    config.data.eval_batch_size, batch_sh)
  loss, acc = ev(state.trainable)
  loss_ema, acc_ema = ev(steps_lib.ema_trainable(state))
  return {'eval_loss': loss, 'eval_accuracy': acc, 'eval_loss_ema': loss_ema,
          'eval_accuracy_ema': acc_ema}
