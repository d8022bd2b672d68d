"""bfloat16 compute vs float32 compute of the real DP step, one process.

  python experiments/mixed_precision_benchmark.py
      [--out experiments/results/mixed_precision.json] [--rounds 5] [--reps 2]
      [--loss-steps 30]

Model: a small Llama-style decoder from random init (4 layers, d 256, 4 heads
of 64, SwiGLU 688, RoPE, untied 258-way byte vocabulary: ~3.3M parameters)
on byte-tokenized Shakespeare records of 128 tokens, float32 master weights
(`model.param_dtype='float32'`), DP-AdamW, flat clipping C = 1, Gaussian
noise multiplier 1, Poisson sampling (expected batch 32, fixed padded batch
48), micro-batches of 8. Two variants, built exactly as the trainer builds
its step (`dpjax.run_setup.build_inputs` / `build_stages` / `make_step`, i.e.
`dpjax.steps.make_train_step` on `model_setup`'s per-record loss):

  dp_float32:  `model.dtype='float32'`.
  dp_bfloat16: `model.dtype='bfloat16'`: forward and backward matmuls in
               bfloat16 on the float32 weights; per-example gradients,
               clipping, the clipped sum, its accumulation and the noise in
               float32 (dpjax.clipping, dpjax.noise).

Timing and memory use experiments/step_benchmark.py's helpers (`measure`:
one warm-up call, then interleaved rounds of `--reps` steps of each variant;
`compiled_memory`: XLA's compiled memory analysis, arguments + outputs +
temporaries - aliased donated buffers; `compare`: ratio of medians and the
per-round extremes). `ratio` is bfloat16 / float32.

Loss comparison: `dpjax.train.train_and_evaluate` runs `--loss-steps` steps
of the same config twice, float32 and bfloat16 compute, with
`dp.insecure_fixed_randomness_seed=0` so that both draw the same Poisson
batches and the same noise. That seed is a research setting for this
comparison only: a run with it is not private against anyone who knows the
seed (its report says so). Train losses (logged with
`train.log_nonprivate_stats`) and held-out losses are compared step by step.

XLA:CPU has no fast bfloat16 matmul (it converts to float32 and back), so
bfloat16 can be slower here; the speed gain of bfloat16 compute is a
property of accelerators (GPU tensor cores, TPU MXUs), not measured by this
script on a CPU. Writes the JSON and a Markdown summary next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

import step_benchmark  # pylint: disable=g-import-not-at-top
from configs import debug  # pylint: disable=g-import-not-at-top
from dpjax import optimizers  # pylint: disable=g-import-not-at-top
from dpjax import run_setup  # pylint: disable=g-import-not-at-top
from dpjax import steps as steps_lib  # pylint: disable=g-import-not-at-top
from dpjax import train  # pylint: disable=g-import-not-at-top

DTYPES = ('float32', 'bfloat16')
SEED = 0   # dp.insecure_fixed_randomness_seed of the loss runs (research only)


def make_config(args, dtype: str):
  """configs/debug.py grown to the benchmark's model, in `dtype` compute."""
  config = debug.get_config()
  config.model.update(
      vocab_size=258, hidden_size=args.hidden, num_layers=args.layers,
      intermediate_size=args.hidden * 4 * 2 // 3 // 8 * 8 + 8,
      num_heads=args.hidden // 64, num_kv_heads=args.hidden // 64,
      head_dim=64, max_position_embeddings=args.seq, dtype=dtype,
      param_dtype='float32')
  config.data.update(seq_len=args.seq, max_train_records=args.records,
                     max_eval_records=64, eval_batch_size=32)
  config.train.update(batch_size=args.batch, max_batch_size=args.max_batch,
                      microbatch_size=args.microbatch,
                      learning_rate=args.lr, optimizer='adamw')
  config.dp.update(noise_multiplier=args.sigma, l2_clip_norm=1.0,
                   accountant='rdp', report_accountants=('rdp', 'pld'))
  return config


def step_variant(args, dtype: str):
  """(jitted trainer step, make_args, model) for `dtype` compute."""
  config = make_config(args, dtype)
  model, data, plan, _ = run_setup.build_inputs(config)
  stages, clip_norm_fn, _ = run_setup.build_stages(config, plan,
                                                   step_benchmark.noise_key())
  tx = optimizers.chain(stages)
  step = jax.jit(run_setup.make_step(config, model, stages, plan,
                                     clip_norm_fn, run_setup.rgp_key(config),
                                     data),
                 donate_argnums=(0,))
  b = config.train.max_batch_size
  batch = {k: jnp.asarray(v[:b]) for k, v in data.train.items()}
  mask = jnp.ones((b,), jnp.float32)
  dkey, ids = jax.random.key(2), jnp.arange(b, dtype=jnp.int32)

  def make_args():
    p = jax.tree.map(jnp.copy, model.trainable)
    state = steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))
    return (state, model.frozen, batch, mask, dkey, ids)

  return step, make_args, model


def state_dtypes(make_args) -> dict[str, list[str]]:
  """Floating dtypes of the parameters and optimizer state of a step."""
  state = make_args()[0]

  def floats(tree):
    return sorted({x.dtype.name for x in jax.tree.leaves(tree)
                   if jnp.issubdtype(x.dtype, jnp.floating)})
  return {'params': floats(state.trainable),
          'opt_state': floats(state.opt_state)}


def loss_run(args, dtype: str) -> dict:
  """Train and held-out losses of `--loss-steps` steps at the fixed seed."""
  config = make_config(args, dtype)
  config.dp.insecure_fixed_randomness_seed = SEED
  config.train.update(steps=args.loss_steps, log_every=1,
                      log_nonprivate_stats=True,
                      eval_every=max(args.loss_steps // 3, 1),
                      checkpoint_every=10 * args.loss_steps)
  with tempfile.TemporaryDirectory() as workdir:
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's own report
      out = train.train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - t
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      recs = [json.loads(line) for line in f]
  return {
      'train_loss': [r['train_loss'] for r in recs if 'train_loss' in r],
      'eval_loss': {int(r['step']): r['eval_loss'] for r in recs
                    if 'eval_loss' in r},
      'final': {k: float(v) for k, v in out['final'].items()},
      'seconds_incl_compile': seconds,
  }


def loss_comparison(runs: dict) -> dict:
  f32, bf16 = runs['float32'], runs['bfloat16']
  tl = np.abs(np.subtract(bf16['train_loss'], f32['train_loss']))
  ev = {s: bf16['eval_loss'][s] - f32['eval_loss'][s]
        for s in f32['eval_loss']}
  return {
      'max_abs_train_loss_diff': float(tl.max()),
      'mean_abs_train_loss_diff': float(tl.mean()),
      'eval_loss_diff_by_step': ev,
      'final_eval_loss_diff': bf16['final']['eval_loss'] -
                              f32['final']['eval_loss'],
      'final_eval_loss_ema_diff': bf16['final']['eval_loss_ema'] -
                                  f32['final']['eval_loss_ema'],
      'float32_train_loss_drop': f32['train_loss'][0] - f32['train_loss'][-1],
  }


def markdown(result: dict) -> str:
  s, r, lc = result['setup'], result['ratio'], result['loss_comparison']
  runs = result['loss_runs']
  lines = [
      f"# Mixed precision: bfloat16 vs float32 compute of the DP step "
      f"({s['params'] / 1e6:.1f}M-parameter decoder)", '',
      f"{s['params']:,} parameters (Llama-style, {s['layers']} layers, d "
      f"{s['hidden']}, byte vocabulary 258), float32 master weights; the "
      f"trainer's DP step (DP-AdamW, C 1, sigma {s['noise_multiplier']}) on a "
      f"padded batch of {s['max_batch']} x seq {s['seq']} Shakespeare "
      f"records, micro-batches of {s['microbatch']}; {s['rounds']} "
      f"interleaved rounds x {s['reps_per_round']} steps after one warm-up "
      'call. ' + step_benchmark.provenance_line(s), '']
  if s.get('note'):
    lines += [s['note'], '']
  lines += [
      '## Step time and memory (bfloat16 / float32)', '',
      '| comparison | time | per-round time ratios (min-max) | memory |',
      '|---|---:|---:|---:|',
      f"| `{r['bfloat16']}` / `{r['float32']}` | {r['time']:.2f}x | "
      f"{r['time_per_round_min']:.2f}-{r['time_per_round_max']:.2f} | "
      f"{r['memory']:.2f}x |", '',
      '## Variants', ''] + step_benchmark.VARIANT_HEADER + (
          step_benchmark.variant_rows(result['median_step_seconds'],
                                      result['memory_bytes'],
                                      result['all_step_seconds']))
  d = result['state_dtypes']
  lines += ['', 'Parameter and optimizer-state dtypes: ' + '; '.join(
      f"{k}: params {v['params']}, optimizer state {v['opt_state']}"
      for k, v in d.items()) + '.', '']
  lines += [
      f"## Losses after {s['loss_steps']} steps at identical randomness", '',
      f"Both runs use `dp.insecure_fixed_randomness_seed={SEED}` (the same "
      'Poisson batches and noise): a research seed for this comparison '
      'only; a run with it is not private against anyone who knows the '
      'seed.', '',
      '| | float32 | bfloat16 | bfloat16 - float32 |', '|---|---:|---:|---:|']
  f32, bf16 = runs['float32'], runs['bfloat16']
  for step in sorted(f32['eval_loss'], key=int):
    lines.append(f"| held-out loss, step {step} | {f32['eval_loss'][step]:.4f}"
                 f" | {bf16['eval_loss'][step]:.4f} | "
                 f"{lc['eval_loss_diff_by_step'][step]:+.2e} |")
  lines.append(f"| held-out loss of the EMA weights, end | "
               f"{f32['final']['eval_loss_ema']:.4f} | "
               f"{bf16['final']['eval_loss_ema']:.4f} | "
               f"{lc['final_eval_loss_ema_diff']:+.2e} |")
  lines.append(f"| train loss, step {s['loss_steps']} | "
               f"{f32['train_loss'][-1]:.4f} | {bf16['train_loss'][-1]:.4f} | "
               f"{bf16['train_loss'][-1] - f32['train_loss'][-1]:+.2e} |")
  lines += [
      '', f"Train loss per step: max |bfloat16 - float32| "
      f"{lc['max_abs_train_loss_diff']:.2e}, mean "
      f"{lc['mean_abs_train_loss_diff']:.2e}, against a float32 drop of "
      f"{lc['float32_train_loss_drop']:.3f} over the run. Wall time of each "
      f"run (compilation, evaluation and reporting included): float32 "
      f"{f32['seconds_incl_compile']:.0f} s, bfloat16 "
      f"{bf16['seconds_incl_compile']:.0f} s.", '',
      'XLA:CPU has no fast bfloat16 matmul (it computes bfloat16 dots by '
      'converting to float32), so a time ratio above 1 here says nothing '
      'about accelerators: the speed and memory gain of bfloat16 compute is '
      'a property of GPUs and TPUs with bfloat16 matrix units, not measured '
      'here. ' + step_benchmark.FOOTER.format(
          script='experiments/mixed_precision_benchmark.py'), '']
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(os.path.dirname(__file__),
                                                'results',
                                                'mixed_precision.json'))
  ap.add_argument('--hidden', type=int, default=256)
  ap.add_argument('--layers', type=int, default=4)
  ap.add_argument('--seq', type=int, default=128)
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--max-batch', type=int, default=48)
  ap.add_argument('--microbatch', type=int, default=8)
  ap.add_argument('--records', type=int, default=1024)
  ap.add_argument('--sigma', type=float, default=1.0)
  ap.add_argument('--lr', type=float, default=3e-3)
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--reps', type=int, default=2)
  ap.add_argument('--loss-steps', type=int, default=30)
  ap.add_argument('--note', default='',
                  help='free text recorded in the JSON and the .md')
  args = ap.parse_args()
  t0 = time.perf_counter()
  info = step_benchmark.run_info()

  fns, models_, dtypes = {}, {}, {}
  for dtype in DTYPES:
    step, make_args, model = step_variant(args, dtype)
    fns[f'dp_{dtype}'] = (step, make_args)
    models_[dtype] = model
    dtypes[dtype] = state_dtypes(make_args)
  n_params = sum(x.size for x in jax.tree.leaves(models_['float32'].trainable))
  med, times, compile_s, mem = step_benchmark.measure(fns, args.rounds,
                                                      args.reps)
  rat = step_benchmark.compare('dp_bfloat16', 'dp_float32', times, mem)
  rat = {'bfloat16': rat.pop('dp'), 'float32': rat.pop('nonprivate'), **rat}
  runs = {dtype: loss_run(args, dtype) for dtype in DTYPES}
  result = {
      'setup': {'params': int(n_params), 'hidden': args.hidden,
                'layers': args.layers, 'seq': args.seq,
                'expected_batch': args.batch, 'max_batch': args.max_batch,
                'microbatch': args.microbatch, 'records': args.records,
                'noise_multiplier': args.sigma, 'learning_rate': args.lr,
                'param_dtype': 'float32', 'optimizer': 'adamw',
                'rounds': args.rounds, 'reps_per_round': args.reps,
                'loss_steps': args.loss_steps,
                'insecure_fixed_randomness_seed_of_loss_runs': SEED,
                'note': step_benchmark.rounds_note(
                    args.rounds, ap.get_default('rounds'), args.note),
                **info},
      'ratio': rat,
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'state_dtypes': dtypes,
      'loss_runs': runs,
      'loss_comparison': loss_comparison(runs),
      'wall_seconds': None,
  }
  step_benchmark.write_result(result, args.out, markdown, t0)


if __name__ == '__main__':
  main()
