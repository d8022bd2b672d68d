"""DP step versus non-private steps on the same model and batch, one process.

  python experiments/step_benchmark.py [--out experiments/results/step_benchmark.json]
      [--microbatches 4,8] [--rounds 5] [--reps 3]

Model: a Llama-style decoder like shared/ANCHORS.md section 4.1 (4 layers,
d 256, SwiGLU, RoPE, untied 8000-way head: ~7.3M parameters), batch 32 x
seq 128, float32, AdamW. Variants, each jitted once and timed in interleaved
rounds (this machine's speed swings within minutes, so only ratios within a
run mean anything):

  nonprivate_whole:  grad of the mean loss over all 32 examples at once
                     (micro-batch = the whole batch).
  nonprivate_micro{m}: the training loop's non-private step
                     (`steps.make_train_step(..., private=False)`): the
                     batch gradient accumulated over micro-batches of m in
                     lax.scan, no per-example gradients.
  dp_micro{m}:       dpjax's DP step: vmap(grad) per example, micro-batches
                     of m in lax.scan, flat clipping, masked clipped sum,
                     Gaussian noise, 1/B, AdamW (the training loop's step).

for every m in --microbatches. Each round times nonprivate_micro{m} and
dp_micro{m} back to back, so the equal-micro-batch ratio of one round
compares steps run seconds apart.

Ratios (`ratios` in the JSON, all DP / non-private):

  equal_microbatch[m]: dp_micro{m} / nonprivate_micro{m}, time (ratio of
      medians, plus the min and max of the per-round ratios) and memory.
  best_vs_best: the fastest DP configuration against the fastest
      non-private one (whole batch included), naming each one's
      micro-batch; memory is that of those two configurations.

Memory is XLA's compiled memory analysis of each step (arguments + outputs +
temporaries, minus aliased donated buffers): the step's own peak footprint,
which on CPU is what per-example gradients would blow up.
Writes the JSON and a Markdown summary next to it (same name, .md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import models
from dpjax import optimizers
from dpjax import randomness
from dpjax import steps as steps_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(args):
  module, cfg = models.build_model(
      'llama', vocab_size=args.vocab, hidden_size=args.hidden,
      intermediate_size=args.hidden * 4 * 2 // 3 // 8 * 8 + 8,
      num_layers=args.layers, num_heads=args.hidden // 64,
      num_kv_heads=args.hidden // 64, head_dim=64,
      max_position_embeddings=args.seq)
  del cfg
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


def noise_key(seed: int = 1) -> jax.Array:
  """A public benchmark key of the trainer's noise-key kind (`rbg`).

  The trainer draws its noise from a `randomness.NOISE_KEY_IMPL` key; the
  generator decides the noise stage's cost (on XLA:CPU a threefry draw keeps
  about four parameter-sized temporaries, the rbg draw fuses into the add),
  so a benchmark must use the same kind to measure the step that runs.
  """
  return jax.random.key(seed, impl=randomness.NOISE_KEY_IMPL)


def parse_microbatches(text: str) -> tuple[int, ...]:
  """'4,8' -> (4, 8), sorted and deduplicated."""
  return tuple(sorted({int(x) for x in text.split(',') if x.strip()}))


def variants(loss, trainable, frozen, batch, *, microbatches=(4, 8)):
  """Jitted step variants on `loss(trainable, frozen, example, key)`.

  Returns {name: (jitted fn, make_args)} in timing order: for each m,
  `nonprivate_micro{m}` then `dp_micro{m}`, then `nonprivate_whole`. Every
  variant updates `trainable` with AdamW; `frozen` (PEFT base weights) is an
  argument, never vmapped.
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
                               key=noise_key(), ema_decay=0.0)
  plain = plain._replace(noise=optax.identity())
  dp = optimizers.dp_stages(l2_clip_norm=1.0, noise_multiplier=1.0,
                            expected_batch_size=b, learning_rate=1e-3,
                            key=noise_key(), ema_decay=0.0)

  def step(stages, m, private):
    return steps_lib.vmap_train_step(loss, stages,
                                     l2_clip_norm=1.0, microbatch_size=m,
                                     private=private)
  mask = jnp.ones((b,), jnp.float32)
  dkey = jax.random.key(2)
  ids = jnp.arange(b, dtype=jnp.int32)

  def state_for(stages):
    tx = optimizers.chain(stages)
    p = jax.tree.map(jnp.copy, trainable)
    return steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))

  def args_for(stages):
    return lambda: (state_for(stages), frozen, batch, mask, dkey, ids)

  out = {}
  for m in microbatches:
    if b % m:
      raise ValueError(f'micro-batch {m} does not divide batch {b}')
    out[f'nonprivate_micro{m}'] = (
        jax.jit(step(plain, m, False), donate_argnums=(0,)), args_for(plain))
    out[f'dp_micro{m}'] = (jax.jit(step(dp, m, True), donate_argnums=(0,)),
                           args_for(dp))
  out['nonprivate_whole'] = (jax.jit(whole, donate_argnums=(0, 1)),
                             lambda: (jax.tree.map(jnp.copy, trainable),
                                      adamw.init(trainable), frozen, batch))
  return out


def measure(fns, rounds, reps):
  """(median seconds, all seconds, compile seconds, memory) per variant.

  One warm-up call per variant (compilation included), then `rounds`
  interleaved rounds; each round times `reps` consecutive steps of every
  variant in `fns`' order.
  """
  mem, times, compile_s, compiled = {}, {k: [] for k in fns}, {}, {}
  for name, (fn, make_args) in fns.items():
    # Compile once; the same executable gives the memory analysis and runs.
    t = time.perf_counter()
    compiled[name] = fn.lower(*make_args()).compile()
    mem[name] = compiled_memory(compiled[name])
    jax.block_until_ready(compiled[name](*make_args()))
    compile_s[name] = time.perf_counter() - t
  for r in range(rounds):  # interleaved rounds
    for name, (_, make_args) in fns.items():
      fn = compiled[name]
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
    print(f'round {r + 1}/{rounds}: ' + ', '.join(
        f'{k} {v[-1]:.2f}s' for k, v in times.items()), flush=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  return med, times, compile_s, mem


def compare(num: str, den: str, times, mem) -> dict:
  """Time and memory of variant `num` over variant `den` (same run).

  time: ratio of the median step times; time_per_round_min / _max: the
  extremes of the per-round ratios (both variants timed in the same round,
  seconds apart), a direct view of the noise.
  """
  per_round = [a / b for a, b in zip(times[num], times[den])]
  return {
      'dp': num, 'nonprivate': den,
      'time': statistics.median(times[num]) / statistics.median(times[den]),
      'time_per_round_min': min(per_round),
      'time_per_round_max': max(per_round),
      'memory': mem[num]['total'] / mem[den]['total'],
  }


def fastest(names, times):
  return min(names, key=lambda k: statistics.median(times[k]))


def ratios(times, mem, microbatches, batch_size: int) -> dict:
  """The `ratios` block: equal micro-batch, and each engine's best.

  Args:
    times: {variant: [seconds per round]} from `measure`.
    mem: {variant: memory_bytes(...)} from `measure`.
    microbatches: the micro-batch sizes m with `dp_micro{m}` and
      `nonprivate_micro{m}` variants.
    batch_size: B (the micro-batch of `nonprivate_whole`).
  """
  mb = {f'nonprivate_micro{m}': m for m in microbatches}
  mb['nonprivate_whole'] = batch_size
  mb.update({f'dp_micro{m}': m for m in microbatches})
  np_names = [k for k in mb if k.startswith('nonprivate_') and k in times]
  dp_names = [k for k in mb if k.startswith('dp_') and k in times]
  best_np, best_dp = fastest(np_names, times), fastest(dp_names, times)
  lean_np = min(np_names, key=lambda k: mem[k]['total'])
  lean_dp = min(dp_names, key=lambda k: mem[k]['total'])
  return {
      'equal_microbatch': {
          str(m): compare(f'dp_micro{m}', f'nonprivate_micro{m}', times, mem)
          for m in microbatches},
      'best_vs_best': {
          'criterion': 'fastest median step of each engine',
          'dp_microbatch': mb[best_dp], 'nonprivate_microbatch': mb[best_np],
          **compare(best_dp, best_np, times, mem)},
      'leanest_vs_leanest': {
          'criterion': 'smallest memory of each engine',
          'dp_microbatch': mb[lean_dp], 'nonprivate_microbatch': mb[lean_np],
          **compare(lean_dp, lean_np, times, mem)},
  }


def memory_bytes(fn, args) -> dict[str, int]:
  """`compiled_memory` of jitted `fn` compiled for `args`."""
  return compiled_memory(fn.lower(*args).compile())


def compiled_memory(compiled) -> dict[str, int]:
  """Arguments + outputs + temporaries - aliased (donated) bytes."""
  m = compiled.memory_analysis()
  total = (m.argument_size_in_bytes + m.output_size_in_bytes +
           m.temp_size_in_bytes - m.alias_size_in_bytes)
  return {'total': int(total), 'temp': int(m.temp_size_in_bytes),
          'arguments': int(m.argument_size_in_bytes)}


def _git(*cmd) -> str:
  try:
    return subprocess.run(('git',) + cmd, cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def run_info() -> dict:
  """Provenance: commit, uncommitted code changes, versions, machine."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  dirty = _git('status', '--porcelain', '--', 'dpjax', 'configs',
               'experiments/*.py')
  return {
      'git_commit': _git('rev-parse', '--short', 'HEAD').strip(),
      'git_uncommitted_code': [l[3:] for l in dirty.splitlines()
                               if l.strip()] if dirty != 'unknown' else dirty,
      'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime(
          '%Y-%m-%d %H:%M'),
      'command': ' '.join([os.path.relpath(sys.argv[0], REPO)] +
                          sys.argv[1:]),
      'jax': jax.__version__, 'jaxlib': jaxlib.__version__,
      'backend': jax.default_backend(), 'cpu_count': os.cpu_count(),
      'machine': platform.machine(), 'python': platform.python_version(),
      'load_average_at_start': [round(x, 2) for x in os.getloadavg()],
  }


def rounds_note(rounds: int, default: int, note: str = '') -> str:
  """States a departure from the default number of rounds, plus `note`."""
  parts = []
  if rounds != default:
    parts.append(f'Ran {rounds} rounds instead of the default {default}.')
  if note:
    parts.append(note)
  return ' '.join(parts)


def ratio_rows(rat: dict, label: str = '') -> list[str]:
  """Markdown rows `| label | comparison | time | per-round | memory |`."""
  rows = []
  for m, r in rat['equal_microbatch'].items():
    rows.append(f'| {label}equal micro-batch {m} | `{r["dp"]}` / '
                f'`{r["nonprivate"]}` | {r["time"]:.2f}x | '
                f'{r["time_per_round_min"]:.2f}-{r["time_per_round_max"]:.2f}'
                f' | {r["memory"]:.2f}x |')
  for key, what in (('best_vs_best', 'best vs best (fastest)'),
                    ('leanest_vs_leanest', 'leanest vs leanest (memory)')):
    r = rat[key]
    rows.append(f'| {label}{what}: DP mb {r["dp_microbatch"]} vs '
                f'non-private mb {r["nonprivate_microbatch"]} | `{r["dp"]}` / '
                f'`{r["nonprivate"]}` | {r["time"]:.2f}x | '
                f'{r["time_per_round_min"]:.2f}-{r["time_per_round_max"]:.2f}'
                f' | {r["memory"]:.2f}x |')
  return rows


RATIO_HEADER = ['| comparison | variants (DP / non-private) | time | '
                'per-round time ratios (min-max) | memory |',
                '|---|---|---:|---:|---:|']


def variant_rows(med, mem, times, label: str = '') -> list[str]:
  rows = []
  for k in med:
    spread = (max(times[k]) - min(times[k])) / med[k]
    rows.append(f'| {label}{k} | {med[k]:.3f} | {spread * 100:.0f}% | '
                f'{mem[k]["total"] / 2**20:.0f} ({mem[k]["temp"] / 2**20:.0f})'
                ' |')
  return rows


VARIANT_HEADER = ['| variant | median s/step | round spread (max-min)/median '
                  '| memory MB (temp) |', '|---|---:|---:|---:|']


def provenance_line(s: dict) -> str:
  dirty = s['git_uncommitted_code']
  if isinstance(dirty, list):
    dirty = ', '.join(dirty)
  return (f"Commit `{s['git_commit']}`"
          + (f" (uncommitted changes in: {dirty})" if dirty else '')
          + f"; jax {s['jax']} ({s['backend']}), {s['cpu_count']} CPUs, "
          f"{s['date_utc']} UTC; `{s['command']}`."
          + (f" Load average (1 min) {s['load_average_at_start'][0]:.1f} at "
             f"the start, {s['load_average_at_end'][0]:.1f} at the end."
             if 'load_average_at_end' in s else '')
          + (f" {s['git_commit_note']}" if s.get('git_commit_note') else ''))


def markdown(result: dict) -> str:
  s = result['setup']
  lines = [
      f"# DP step vs non-private step ({s['params'] / 1e6:.1f}M-parameter "
      'decoder)', '',
      f"{s['params']:,} parameters (Llama-style, {s['layers']} layers, d "
      f"{s['hidden']}, vocab {s['vocab']}), batch {s['batch']} x seq "
      f"{s['seq']}, float32, AdamW; micro-batches "
      f"{', '.join(map(str, s['microbatches']))}; {s['rounds']} interleaved "
      f"rounds x {s['reps_per_round']} steps after one warm-up call. "
      + provenance_line(s), '']
  if s.get('note'):
    lines += [s['note'], '']
  lines += ['## Ratios (DP / non-private)', ''] + RATIO_HEADER + ratio_rows(
      result['ratios'])
  lines += ['', '## Variants', ''] + VARIANT_HEADER + variant_rows(
      result['median_step_seconds'], result['memory_bytes'],
      result['all_step_seconds'])
  lines += ['', FOOTER.format(script='experiments/step_benchmark.py'), '']
  return '\n'.join(lines)


FOOTER = ('Time: ratio of median step times; the per-round column gives the '
          'extremes of the ratio within single rounds (both steps timed '
          'seconds apart), so it shows how much of a ratio is noise. Memory: '
          'XLA compiled memory analysis (arguments + outputs + temporaries - '
          'aliased donated buffers), exact and deterministic. Only ratios '
          'within one run mean anything: this machine\'s speed drifts 2-5x. '
          'Generated by `{script}`; do not edit by hand.')


def write_result(result: dict, out: str, render, t0: float) -> None:
  """Stamps wall time and end load, writes `out` (JSON) and its .md."""
  result['wall_seconds'] = time.perf_counter() - t0
  result['setup']['load_average_at_end'] = [round(x, 2)
                                            for x in os.getloadavg()]
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(result, f, indent=2)
  md = render(result)
  with open(os.path.splitext(out)[0] + '.md', 'w') as f:
    f.write(md)
  print(md, flush=True)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(os.path.dirname(__file__),
                                                'results',
                                                'step_benchmark.json'))
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--seq', type=int, default=128)
  ap.add_argument('--microbatches', default='4,8')
  ap.add_argument('--hidden', type=int, default=256)
  ap.add_argument('--layers', type=int, default=4)
  ap.add_argument('--vocab', type=int, default=8000)
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--reps', type=int, default=3)
  ap.add_argument('--note', default='',
                  help='free text recorded in the JSON and the .md, e.g. why '
                  'the rounds were reduced')
  args = ap.parse_args()
  mbs = parse_microbatches(args.microbatches)
  t0 = time.perf_counter()
  info = run_info()   # the commit and code this run starts from

  module, params, batch = build(args)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  fns = variants(record_loss(module), params, {}, batch, microbatches=mbs)
  med, times, compile_s, mem = measure(fns, args.rounds, args.reps)
  rat = ratios(times, mem, mbs, args.batch)
  result = {
      'setup': {'params': int(n_params), 'batch': args.batch, 'seq': args.seq,
                'microbatches': list(mbs), 'hidden': args.hidden,
                'layers': args.layers, 'vocab': args.vocab,
                'dtype': 'float32', 'optimizer': 'adamw lr 1e-3',
                'dp_noise_multiplier': 1.0, 'dp_l2_clip_norm': 1.0,
                'rounds': args.rounds, 'reps_per_round': args.reps,
                'note': rounds_note(args.rounds, ap.get_default('rounds'),
                                   args.note),
                **info},
      'ratios': rat,
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'wall_seconds': None,
  }
  write_result(result, args.out, markdown, t0)


if __name__ == '__main__':
  main()
