"""Book-keeping (BK) DP step vs the best non-private step, one process.

  python experiments/bookkeeping_benchmark.py
      [--out experiments/results/bookkeeping_benchmark.json]
      [--microbatches 4,8] [--bk_microbatches 4,8] [--rounds 3] [--reps 2]

Model and batch as `experiments/step_benchmark.py` (7.3M-parameter Llama-style
decoder, batch 32 x 128, float32, AdamW), whose helpers (build, variants,
measure, compare, compiled_memory via measure, write_result) are reused.
Variants, each jitted once and timed in interleaved rounds:

  nonprivate_micro{m}, nonprivate_whole, dp_micro{m}: as in step_benchmark
      (dp_micro is the vmap engine, reported beside BK).
  bk_micro{m}: `dpjax.bookkeeping.clipped_sum_bk` (method 'auto') over
      micro-batches of m in lax.scan, then the same post-clip work as the
      training step (Gaussian noise, 1/B, AdamW). BK is not wired into
      `dpjax.steps` yet; this step is assembled here from the same pieces.

Ratios: bk / nonprivate at equal micro-batch, best BK vs best non-private
(fastest median of each), and the vmap engine's best vs best for reference.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_benchmark as sb  # pylint: disable=g-import-not-at-top,wrong-import-position

from dpjax import bookkeeping  # pylint: disable=wrong-import-position
from dpjax import optimizers  # pylint: disable=wrong-import-position
from dpjax import steps as steps_lib  # pylint: disable=wrong-import-position


def bk_variant(module, trainable, batch, m):
  """(jitted BK DP step, make_args) with the step_benchmark signature."""
  b = batch['inputs'].shape[0]
  stages = optimizers.dp_stages(l2_clip_norm=1.0, noise_multiplier=1.0,
                                expected_batch_size=b, learning_rate=1e-3,
                                key=jax.random.key(1), ema_decay=0.0)
  post = optimizers.post_clip(stages)

  def step(state, frozen, batch, mask, dropout_key, record_ids):
    del frozen, dropout_key, record_ids
    out = bookkeeping.clipped_sum_bk(module, state.trainable, batch, mask, 1.0,
                                     microbatch_size=m)
    updates, post_state = post.update(out.clipped_sum, state.opt_state[1:],
                                      state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    new = steps_lib.TrainState(step=state.step + 1, trainable=trainable,
                               opt_state=(state.opt_state[0],)
                               + tuple(post_state))
    return new, {'mean_grad_norm': jnp.mean(out.norms)}

  def make_args():
    tx = optimizers.chain(stages)
    p = jax.tree.map(jnp.copy, trainable)
    state = steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))
    return (state, {}, batch, jnp.ones((b,), jnp.float32), jax.random.key(2),
            jnp.arange(b, dtype=jnp.int32))

  return jax.jit(step, donate_argnums=(0,)), make_args


def markdown(result: dict) -> str:
  s = result['setup']
  lines = [
      f"# Book-keeping DP step vs non-private step ({s['params'] / 1e6:.1f}M"
      '-parameter decoder)', '',
      f"{s['params']:,} parameters, batch {s['batch']} x seq {s['seq']}, "
      f"float32, AdamW; {s['rounds']} interleaved rounds x "
      f"{s['reps_per_round']} steps after one warm-up call. "
      + sb.provenance_line(s), '']
  if s.get('note'):
    lines += [s['note'], '']
  lines += ['## Ratios', '', '| comparison | variants | time | per-round '
            'time ratios (min-max) | memory |', '|---|---|---:|---:|---:|']
  for key, r in result['ratios'].items():
    lines.append(f"| {key} | `{r['dp']}` / `{r['nonprivate']}` | "
                 f"{r['time']:.2f}x | {r['time_per_round_min']:.2f}-"
                 f"{r['time_per_round_max']:.2f} | {r['memory']:.2f}x |")
  lines += ['', '## Variants', ''] + sb.VARIANT_HEADER + sb.variant_rows(
      result['median_step_seconds'], result['memory_bytes'],
      result['all_step_seconds'])
  lines += ['', "BK per-leaf choice ('auto'): " + ', '.join(
      f'{k}: {v}' for k, v in result['bk_choices'].items()), '',
      sb.FOOTER.format(script='experiments/bookkeeping_benchmark.py'), '']
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'bookkeeping_benchmark.json'))
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--seq', type=int, default=128)
  ap.add_argument('--microbatches', default='4,8')
  ap.add_argument('--bk_microbatches', default='4,8')
  ap.add_argument('--hidden', type=int, default=256)
  ap.add_argument('--layers', type=int, default=4)
  ap.add_argument('--vocab', type=int, default=8000)
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--reps', type=int, default=2)
  ap.add_argument('--note', default='')
  args = ap.parse_args()
  mbs = sb.parse_microbatches(args.microbatches)
  bk_mbs = sb.parse_microbatches(args.bk_microbatches)
  t0 = time.perf_counter()
  info = sb.run_info()

  module, params, batch = sb.build(args)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  fns = sb.variants(sb.record_loss(module), params, {}, batch,
                    microbatches=mbs)
  for m in bk_mbs:
    fns[f'bk_micro{m}'] = bk_variant(module, params, batch, m)
  plan = bookkeeping.plan(module, params, jax.tree.map(
      lambda x: x[:bk_mbs[0]], batch))
  choices = collections.Counter(c for c, _ in plan.leaves.values())

  med, times, compile_s, mem = sb.measure(fns, args.rounds, args.reps)
  np_names = [k for k in fns if k.startswith('nonprivate_')]
  bk_names = [k for k in fns if k.startswith('bk_')]
  dp_names = [k for k in fns if k.startswith('dp_')]
  best_np = sb.fastest(np_names, times)
  rat = {f'equal micro-batch {m}': sb.compare(f'bk_micro{m}',
                                              f'nonprivate_micro{m}', times,
                                              mem)
         for m in bk_mbs if f'nonprivate_micro{m}' in fns}
  rat['BK best vs non-private best'] = sb.compare(
      sb.fastest(bk_names, times), best_np, times, mem)
  rat['vmap best vs non-private best'] = sb.compare(
      sb.fastest(dp_names, times), best_np, times, mem)
  rat['BK best vs vmap best'] = sb.compare(
      sb.fastest(bk_names, times), sb.fastest(dp_names, times), times, mem)
  result = {
      'setup': {'params': int(n_params), 'batch': args.batch, 'seq': args.seq,
                'microbatches': list(mbs), 'bk_microbatches': list(bk_mbs),
                'hidden': args.hidden, 'layers': args.layers,
                'vocab': args.vocab, 'dtype': 'float32',
                'optimizer': 'adamw lr 1e-3', 'dp_noise_multiplier': 1.0,
                'dp_l2_clip_norm': 1.0, 'rounds': args.rounds,
                'reps_per_round': args.reps,
                'note': sb.rounds_note(args.rounds, ap.get_default('rounds'),
                                       args.note),
                **info},
      'ratios': rat,
      'bk_choices': dict(choices),
      'bk_plan': {k: c for k, (c, _) in plan.leaves.items()},
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'wall_seconds': None,
  }
  sb.write_result(result, args.out, markdown, t0)


if __name__ == '__main__':
  main()
