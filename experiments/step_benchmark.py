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


def variants(loss, trainable, frozen, batch, *, micro, dp_micro_small):
  """Jitted step variants on `loss(trainable, frozen, example, key)`.

  Returns {name: (jitted fn, make_args)}; every variant updates `trainable`
  with AdamW; `frozen` (PEFT base weights) is an argument, never vmapped.
  """
  b = next(iter(batch.values())).shape[0]
  adamw = optax.adamw(1e-3)
  keys = jax.random.split(jax.random.key(3), b)

  def whole(params, opt_state, frozen, batch):
    def mean_loss(p):
      return jnp.mean(jax.vmap(loss, (None, None, 0, 0))(p, frozen, batch,
                                                         keys))
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
  def step(stages, m, private):
    return steps_lib.make_train_step(loss, optimizers.post_clip(stages),
                                     l2_clip_norm=1.0, microbatch_size=m,
                                     private=private)
  mask = jnp.ones((b,), jnp.float32)
  dkey = jax.random.key(2)
  ids = jnp.arange(b, dtype=jnp.int32)

  def state_for(stages):
    tx = optimizers.chain(stages)
    p = jax.tree.map(jnp.copy, trainable)
    return steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))

  out = {}
  out['nonprivate_whole'] = (jax.jit(whole, donate_argnums=(0, 1)),
                             lambda: (jax.tree.map(jnp.copy, trainable),
                                      adamw.init(trainable), frozen, batch))
  out['nonprivate_micro'] = (
      jax.jit(step(plain, micro, False), donate_argnums=(0,)),
      lambda: (state_for(plain), frozen, batch, mask, dkey, ids))
  out['dp_micro'] = (jax.jit(step(dp, micro, True), donate_argnums=(0,)),
                     lambda: (state_for(dp), frozen, batch, mask, dkey, ids))
  out['dp_micro_small'] = (
      jax.jit(step(dp, dp_micro_small, True), donate_argnums=(0,)),
      lambda: (state_for(dp), frozen, batch, mask, dkey, ids))
  return out


def measure(fns, rounds, reps):
  """(median seconds, all seconds, compile seconds, memory) per variant."""
  mem, times, compile_s = {}, {k: [] for k in fns}, {}
  for name, (fn, make_args) in fns.items():
    mem[name] = memory_bytes(fn, make_args())
    t = time.perf_counter()
    jax.block_until_ready(fn(*make_args()))
    compile_s[name] = time.perf_counter() - t
  for _ in range(rounds):  # interleaved rounds
    for name, (fn, make_args) in fns.items():
      a = make_args()
      jax.block_until_ready(a)
      t = time.perf_counter()
      for _ in range(reps):
        if name == 'nonprivate_whole':
          a = fn(*a) + tuple(a[2:])   # (params, opt_state) + (frozen, batch)
        else:
          state, _ = fn(*a)           # (state, metrics)
          a = (state,) + tuple(a[1:])
      jax.block_until_ready(a)
      times[name].append((time.perf_counter() - t) / reps)
  med = {k: statistics.median(v) for k, v in times.items()}
  return med, times, compile_s, mem


def ratios(med, mem):
  best_name = min(('nonprivate_whole', 'nonprivate_micro'), key=med.get)
  best, best_mem = med[best_name], mem[best_name]['total']
  return best_name, {
      'dp_time_vs_best_nonprivate': med['dp_micro'] / best,
      'dp_time_vs_whole_batch': med['dp_micro'] / med['nonprivate_whole'],
      'dp_memory_vs_best_nonprivate': mem['dp_micro']['total'] / best_mem,
      'dp_memory_vs_whole_batch': (mem['dp_micro']['total'] /
                                   mem['nonprivate_whole']['total']),
      'dp_small_micro_time_vs_best_nonprivate': med['dp_micro_small'] / best,
      'dp_small_micro_memory_vs_best_nonprivate': (
          mem['dp_micro_small']['total'] / best_mem),
      'micro_time_vs_whole_batch': (med['nonprivate_micro'] /
                                    med['nonprivate_whole']),
  }


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
  fns = variants(record_loss(module), params, {}, batch, micro=args.micro,
                 dp_micro_small=args.dp_micro_small)
  med, times, compile_s, mem = measure(fns, args.rounds, args.reps)
  best_name, rat = ratios(med, mem)
  result = {
      'setup': {'params': int(n_params), 'batch': args.batch, 'seq': args.seq,
                'microbatch': args.micro,
                'dp_microbatch_small': args.dp_micro_small,
                'hidden': args.hidden, 'layers': args.layers,
                'vocab': args.vocab, 'rounds': args.rounds,
                'reps_per_round': args.reps, 'jax': jax.__version__,
                'backend': jax.default_backend(),
                'cpu_count': os.cpu_count(), 'machine': platform.machine()},
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'best_nonprivate': best_name,
      'ratios': rat,
      'targets': {'time_ratio_max': 1.15, 'memory_ratio_max': 1.2},
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps({'median_step_seconds': med, 'ratios': rat,
                    'memory_MB': {k: v['total'] / 2**20
                                  for k, v in mem.items()}}, indent=2))


if __name__ == '__main__':
  main()
