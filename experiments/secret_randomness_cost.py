"""What secret randomness and float32 accumulation cost per step (one process).

  python experiments/secret_randomness_cost.py [--out experiments/results/secret_randomness_cost.json]

Issue 12 changed three things on the step's path; this measures each against
the behaviour it replaced, on the step benchmark's model (Llama-style decoder,
~7.3M parameters, batch 32 x 128, micro-batch 8, dropout 0.1 so that the
dropout keys are used), jitted once each and timed in interleaved rounds
(this machine's speed swings within minutes: only ratios within a run mean
anything):

  previous_threefry_slot_keys:  noise key `jax.random.key(seed)` (threefry,
      64 bits, public seed), dropout keys by batch slot
      (`split(fold_in(key, step), B)`): what ran before issue 12;
  secret_rbg_record_keys:  the current step: a 128-bit `rbg` noise key from
      OS entropy and per-record dropout keys (`steps.record_keys`);
  bf16_params_bf16_sum:  bfloat16 parameters with each micro-batch's clipped
      sum rounded to bfloat16 before accumulation (the previous rounding,
      emulated by wrapping `clipping.clipped_sum` while tracing);
  bf16_params_f32_sum:  bfloat16 parameters, the current float32 clipped sum
      and accumulation (cast to bfloat16 only after the noise).

Also timed: drawing the secret material from the OS and deriving the keys
(once per run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import clipping
from dpjax import models
from dpjax import optimizers
from dpjax import randomness
from dpjax import steps as steps_lib


def build(args, param_dtype):
  module, _ = models.build_model(
      'llama', vocab_size=args.vocab, hidden_size=args.hidden,
      intermediate_size=args.hidden * 4 * 2 // 3 // 8 * 8 + 8,
      num_layers=args.layers, num_heads=args.hidden // 64,
      num_kv_heads=args.hidden // 64, head_dim=64,
      max_position_embeddings=args.seq, dropout_rate=args.dropout,
      param_dtype=param_dtype)
  tokens = jnp.zeros((1, args.seq), jnp.int32)
  params = jax.jit(module.init)(jax.random.key(0), tokens)['params']
  return module, params


def record_loss(module):
  def loss(trainable, frozen, ex, key):
    del frozen
    logits = module.apply({'params': trainable}, ex['inputs'][None],
                          deterministic=False, rngs={'dropout': key})[0]
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), ex['targets'])
    return jnp.sum(ce * ex['weights']) / jnp.sum(ex['weights'])
  return loss


def slot_keys(dropout_key, step, record_ids):
  """The previous dropout keys: by batch slot."""
  return jax.random.split(jax.random.fold_in(dropout_key, step),
                          record_ids.shape[0])


def bf16_rounded_clipped_sum(*a, **k):
  """The previous rounding: the clipped sum in the parameters' dtype."""
  total, norms = _ORIG_CLIPPED_SUM(*a, **k)
  return jax.tree.map(lambda x: x.astype(jnp.bfloat16).astype(jnp.float32),
                      total), norms


_ORIG_CLIPPED_SUM = clipping.clipped_sum


def compiled_step(loss, params, batch, mask, ids, noise_key, dropout_key,
                  micro, patches=()):
  b = mask.shape[0]
  stages = optimizers.dp_stages(l2_clip_norm=1.0, noise_multiplier=1.0,
                                expected_batch_size=b, learning_rate=1e-3,
                                key=noise_key, ema_decay=0.0)
  step = steps_lib.vmap_train_step(loss, stages,
                                   l2_clip_norm=1.0, microbatch_size=micro)
  tx = optimizers.chain(stages)

  def make_args():
    p = jax.tree.map(jnp.copy, params)
    return (steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
            {}, batch, mask, dropout_key, ids)
  with contextlib_patches(patches):
    compiled = jax.jit(step, donate_argnums=(0,)).lower(
        *make_args()).compile()
  return compiled, make_args


class contextlib_patches:  # pylint: disable=invalid-name
  def __init__(self, patches):
    self._ps = [mock.patch.object(obj, name, new) for obj, name, new in patches]

  def __enter__(self):
    for p in self._ps:
      p.start()

  def __exit__(self, *exc):
    for p in self._ps:
      p.stop()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'secret_randomness_cost.json'))
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--seq', type=int, default=128)
  ap.add_argument('--micro', type=int, default=8)
  ap.add_argument('--hidden', type=int, default=256)
  ap.add_argument('--layers', type=int, default=4)
  ap.add_argument('--vocab', type=int, default=8000)
  ap.add_argument('--dropout', type=float, default=0.1)
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--reps', type=int, default=2)
  args = ap.parse_args()

  t = time.perf_counter()
  secret = randomness.SecretRandomness.from_os_entropy()
  keys = (secret.noise_key(), secret.dropout_key(), secret.sampler_seed())
  jax.block_until_ready(keys[:2])
  seeding_s = time.perf_counter() - t

  rng = np.random.default_rng(0)
  toks = rng.integers(0, args.vocab, size=(args.batch, args.seq + 1))
  batch = {'inputs': jnp.asarray(toks[:, :-1], jnp.int32),
           'targets': jnp.asarray(toks[:, 1:], jnp.int32),
           'weights': jnp.ones((args.batch, args.seq), jnp.float32)}
  mask = jnp.ones((args.batch,), jnp.float32)
  ids = jnp.arange(args.batch, dtype=jnp.int32)
  m32, p32 = build(args, 'float32')
  m16, p16 = build(args, 'bfloat16')
  fns = {
      'previous_threefry_slot_keys': compiled_step(
          record_loss(m32), p32, batch, mask, ids, jax.random.key(0),
          jax.random.key(1), args.micro,
          patches=[(steps_lib, 'record_keys', slot_keys)]),
      'secret_rbg_record_keys': compiled_step(
          record_loss(m32), p32, batch, mask, ids, keys[0], keys[1],
          args.micro),
      'bf16_params_bf16_sum': compiled_step(
          record_loss(m16), p16, batch, mask, ids, keys[0], keys[1],
          args.micro,
          patches=[(clipping, 'clipped_sum', bf16_rounded_clipped_sum)]),
      'bf16_params_f32_sum': compiled_step(
          record_loss(m16), p16, batch, mask, ids, keys[0], keys[1],
          args.micro),
  }
  mem = {}
  for name, (fn, _) in fns.items():
    m = fn.memory_analysis()
    mem[name] = int(m.argument_size_in_bytes + m.output_size_in_bytes +
                    m.temp_size_in_bytes - m.alias_size_in_bytes)
  times = {k: [] for k in fns}
  for name, (fn, make_args) in fns.items():  # warm-up
    jax.block_until_ready(fn(*make_args()))
  for _ in range(args.rounds):
    for name, (fn, make_args) in fns.items():
      a = make_args()
      jax.block_until_ready(a)
      t = time.perf_counter()
      for _ in range(args.reps):
        state, _ = fn(*a)
        a = (state,) + tuple(a[1:])
      jax.block_until_ready(a)
      times[name].append((time.perf_counter() - t) / args.reps)
  med = {k: statistics.median(v) for k, v in times.items()}
  result = {
      'setup': dict(vars(args), jax=jax.__version__,
                    backend=jax.default_backend(), cpu_count=os.cpu_count()),
      'secret_seeding_seconds_once_per_run': seeding_s,
      'median_step_seconds': med,
      'all_step_seconds': times,
      'memory_bytes': mem,
      'ratios': {
          'secret_vs_previous_time': (med['secret_rbg_record_keys'] /
                                      med['previous_threefry_slot_keys']),
          'secret_vs_previous_memory': (mem['secret_rbg_record_keys'] /
                                        mem['previous_threefry_slot_keys']),
          'f32_sum_vs_bf16_sum_time': (med['bf16_params_f32_sum'] /
                                       med['bf16_params_bf16_sum']),
          'f32_sum_vs_bf16_sum_memory': (mem['bf16_params_f32_sum'] /
                                         mem['bf16_params_bf16_sum']),
      },
  }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(json.dumps({k: result[k] for k in (
      'secret_seeding_seconds_once_per_run', 'median_step_seconds',
      'ratios')}, indent=2))


if __name__ == '__main__':
  main()
