"""DP step versus non-private steps on the same model and batch, one process.

  python experiments/step_benchmark.py [--out experiments/results/step_benchmark.json]

Model: a Llama-style decoder like shared/ANCHORS.md section 4.1 (4 layers,
d 256, SwiGLU, RoPE, untied 8000-way head: ~7.3M parameters), batch 32 x
seq 128, float32, AdamW. Variants, each jitted once and timed in interleaved
rounds (this machine's speed swings within minutes, so only ratios within a
run mean anything):

  nonprivate_whole: grad of the mean loss over all 32 examples at once.
  nonprivate_micro: the same gradient accumulated over micro-batches of 8 in
                    lax.scan (the best non-private step on XLA:CPU).
  dp_micro:         dpjax's DP step: vmap(grad) per example, micro-batches of
                    8 in lax.scan, flat clipping, masked clipped sum, Gaussian
                    noise, 1/B, AdamW (the training loop's function).
  dp_micro_small:   the same with micro-batches of 4 (less memory).

Memory is XLA's compiled memory analysis of each step (arguments + outputs +
temporaries, minus aliased donated buffers): the step's own peak footprint,
which on CPU is what per-example gradients would blow up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import models
from dpjax import optimizers
from dpjax import steps as steps_lib


def build(args):
  module, cfg = models.build_model(
      'llama', vocab_size=args.vocab, hidden_size=args.hidden,
      intermediate_size=args.hidden * 4 * 2 // 3 // 8 * 8 + 8,
      num_layers=args.layers, num_heads=args.hidden // 64,
      num_kv_heads=args.hidden // 64, head_dim=64,
      max_position_embeddings=args.seq)
  tokens = jnp.zeros((1, args.seq), jnp.int32)
  params = jax.jit(module.init)(jax.random.key(0), tokens)['params']
  rng = np.random.default_rng(0)
  toks = rng.integers(0, args.vocab, size=(args.batch, args.seq + 1))
  batch = {'inputs': jnp.asarray(toks[:, :-1], jnp.int32),
           'targets': jnp.asarray(toks[:, 1:], jnp.int32),
           'weights': jnp.ones((args.batch, args.seq), jnp.float32)}
  return module, params, batch


def record_loss(module):
  def loss(trainable, frozen, ex, key):
    del frozen, key
    logits = module.apply({'params': trainable}, ex['inputs'][None])[0]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ex['targets'])
    return jnp.sum(ce * ex['weights']) / jnp.sum(ex['weights'])
  return loss


def variants(module, params, batch, args):
  b = args.batch
  loss = record_loss(module)
  adamw = optax.adamw(1e-3)

  def whole(params, opt_state, batch):
    def mean_loss(p):
      logits = module.apply({'params': p}, batch['inputs'])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           batch['targets'])
      return jnp.mean(jnp.sum(ce * batch['weights'], -1) /
                      jnp.sum(batch['weights'], -1))
    g = jax.grad(mean_loss)(params)
    u, opt_state = adamw.update(g, opt_state, params)
    return optax.apply_updates(params, u), opt_state

  # The training loop's own step function, non-private and private.
  plain = optimizers.dp_stages(l2_clip_norm=1.0, noise_multiplier=0.0,
                               expected_batch_size=b, learning_rate=1e-3,
                               key=jax.random.key(1), ema_decay=0.0)
  plain = plain._replace(noise=optax.identity())
  dp = optimizers.dp_stages(l2_clip_norm=1.0, noise_multiplier=1.0,
                            expected_batch_size=b, learning_rate=1e-3,
                            key=jax.random.key(1), ema_decay=0.0)
  micro_step = steps_lib.make_train_step(
      loss, optimizers.post_clip(plain), l2_clip_norm=1.0,
      microbatch_size=args.micro, private=False)
  dp_step = steps_lib.make_train_step(
      loss, optimizers.post_clip(dp), l2_clip_norm=1.0,
      microbatch_size=args.micro, private=True)
  dp_step_small = steps_lib.make_train_step(
      loss, optimizers.post_clip(dp), l2_clip_norm=1.0,
      microbatch_size=args.dp_micro_small, private=True)
  mask = jnp.ones((b,), jnp.float32)
  dkey = jax.random.key(2)

  def state_for(stages):
    tx = optimizers.chain(stages)
    p = jax.tree.map(jnp.copy, params)
    return steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))

  out = {}
  out['nonprivate_whole'] = (jax.jit(whole, donate_argnums=(0, 1)),
                             lambda: (jax.tree.map(jnp.copy, params),
                                      adamw.init(params), batch))
  out['nonprivate_micro'] = (jax.jit(micro_step, donate_argnums=(0,)),
                             lambda: (state_for(plain), {}, batch, mask, dkey))
  out['dp_micro'] = (jax.jit(dp_step, donate_argnums=(0,)),
                     lambda: (state_for(dp), {}, batch, mask, dkey))
  out['dp_micro_small'] = (jax.jit(dp_step_small, donate_argnums=(0,)),
                           lambda: (state_for(dp), {}, batch, mask, dkey))
  return out


def memory_bytes(fn, args) -> dict[str, int]:
  m = fn.lower(*args).compile().memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes +
           m.temp_size_in_bytes - m.alias_size_in_bytes)
  return {'total': int(total), 'temp': int(m.temp_size_in_bytes),
          'arguments': int(m.argument_size_in_bytes)}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(os.path.dirname(__file__),
                                                'results',
                                                'step_benchmark.json'))
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--seq', type=int, default=128)
  ap.add_argument('--micro', type=int, default=8)
  ap.add_argument('--dp_micro_small', type=int, default=4)
  ap.add_argument('--hidden', type=int, default=256)
  ap.add_argument('--layers', type=int, default=4)
  ap.add_argument('--vocab', type=int, default=8000)
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--reps', type=int, default=3)
  args = ap.parse_args()

  module, params, batch = build(args)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  fns = variants(module, params, batch, args)
  mem, times, compile_s = {}, {k: [] for k in fns}, {}
  for name, (fn, make_args) in fns.items():
    mem[name] = memory_bytes(fn, make_args())
    t = time.perf_counter()
    jax.block_until_ready(fn(*make_args()))
    compile_s[name] = time.perf_counter() - t
  for _ in range(args.rounds):  # interleaved rounds
    for name, (fn, make_args) in fns.items():
      a = make_args()
      jax.block_until_ready(a)
      t = time.perf_counter()
      for _ in range(args.reps):
        if name == 'nonprivate_whole':
          a = fn(*a) + (a[2],)   # (params, opt_state) + batch
        else:
          state, _ = fn(*a)      # (state, metrics)
          a = (state,) + tuple(a[1:])
      jax.block_until_ready(a)
      times[name].append((time.perf_counter() - t) / args.reps)
  med = {k: statistics.median(v) for k, v in times.items()}
  best = min(med['nonprivate_whole'], med['nonprivate_micro'])
  best_name = min(('nonprivate_whole', 'nonprivate_micro'), key=med.get)
  best_mem = mem[best_name]['total']
  result = {
      'setup': {'params': int(n_params), 'batch': args.batch, 'seq': args.seq,
                'microbatch': args.micro, 'hidden': args.hidden,
                'layers': args.layers, 'vocab': args.vocab,
                'rounds': args.rounds, 'reps_per_round': args.reps,
                'jax': jax.__version__, 'backend': jax.default_backend(),
                'cpu_count': os.cpu_count(), 'machine': platform.machine()},
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'best_nonprivate': best_name,
      'ratios': {
          'dp_small_micro_time_vs_best_nonprivate': (
              med['dp_micro_small'] / best),
          'dp_small_micro_memory_vs_best_nonprivate': (
              mem['dp_micro_small']['total'] / best_mem),
          'dp_time_vs_best_nonprivate': med['dp_micro'] / best,
          'dp_time_vs_whole_batch': med['dp_micro'] / med['nonprivate_whole'],
          'dp_memory_vs_best_nonprivate': mem['dp_micro']['total'] / best_mem,
          'dp_memory_vs_whole_batch': (mem['dp_micro']['total'] /
                                       mem['nonprivate_whole']['total']),
          'micro_time_vs_whole_batch': (med['nonprivate_micro'] /
                                        med['nonprivate_whole']),
      },
      'targets': {'time_ratio_max': 1.15, 'memory_ratio_max': 1.2},
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps({'median_step_seconds': med, 'ratios': result['ratios'],
                    'memory_MB': {k: v['total'] / 2**20
                                  for k, v in mem.items()}}, indent=2))


if __name__ == '__main__':
  main()
