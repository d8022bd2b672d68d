"""Book-keeping (BK) DP training step vs the best non-private step, one process.

  python experiments/bookkeeping_benchmark.py
      [--out experiments/results/bookkeeping_benchmark.json] [--batch 32]
      [--microbatches 4,8,16] [--dp_microbatches 4,8]
      [--bk_microbatches 4,8,16,32] [--method_microbatch 8]
      [--batchfwd_microbatches 8] [--rounds 3] [--reps 2]

Model as `experiments/step_benchmark.py` (7.3M-parameter Llama-style decoder,
seq 128, float32, AdamW), batch `--batch` (32 and 64 in the committed
results), whose helpers (build, variants, compare, compiled_memory,
fastest) are reused; each --batch's run is merged into one JSON. Every
variant is one jitted training step on the same per-record loss (`step_benchmark.record_loss`), timed in interleaved
rounds:

  nonprivate_micro{m}, nonprivate_whole: as in step_benchmark (the
      non-private engine micro-batched in lax.scan, and the whole-batch
      gradient); the fastest of them is THE baseline.
  dp_micro{m}: the vmap DP engine (`steps.vmap_train_step`), for reference.
  bk_micro{m}: the REAL book-keeping training step:
      `steps.make_train_step(grad_engines.BookkeepingEngine(loss, m),
      stages, l2_clip_norm=1.0)` (method 'auto'): what `dpjax.train` runs
      with `train.grad_engine=bookkeeping`.
  bk_gram_micro{m}, bk_instantiate_micro{m} (at --method_microbatch): the
      same step with every factored leaf forced to 'gram' / 'instantiate'
      (diagnostic: where BK's time goes).
  bkbatchfwd_micro{m} (EXPERIMENTAL, diagnostic, at --batchfwd_microbatches):
      the earlier BK implementation (`dpjax/bookkeeping.py` at commit
      36722fa, loaded from git into this process, not part of dpjax today):
      ONE batch forward of the module per micro-batch instead of the
      per-record loss vmapped over the micro-batch, then the same noise, 1/B
      and AdamW. It is what the previous committed result (bk_micro8 /
      nonprivate_micro8 = 0.86x at batch 32) measured; it cannot run dropout
      per record nor the trainer's loss, so it is a comparison point only.

Ratios (`ratios`): BK / non-private at equal micro-batch, BK's best vs the
best non-private step (the target: <= 0.90x time at <= 1.0x memory), the
vmap engine's best vs the same baseline, BK best vs vmap best, and the
diagnostics against bk_micro{m} at the same m. Also XLA's cost analysis
(flops, bytes accessed) of each compiled step (a lax.scan body is counted
once, so compare variants at equal micro-batch only). `bk_choices`: what
'auto' chose per trainable leaf (`bookkeeping.check(...).choices()`).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_benchmark as sb  # pylint: disable=g-import-not-at-top,wrong-import-position

from dpjax import bookkeeping  # pylint: disable=wrong-import-position
from dpjax import grad_engines  # pylint: disable=wrong-import-position
from dpjax import optimizers  # pylint: disable=wrong-import-position
from dpjax import steps as steps_lib  # pylint: disable=wrong-import-position

BATCHFWD_COMMIT = '36722fa'   # BK with a batch forward (the 0.86x result)


def dp_stages(b):
  return optimizers.dp_stages(l2_clip_norm=1.0, noise_multiplier=1.0,
                              expected_batch_size=b, learning_rate=1e-3,
                              key=sb.noise_key(), ema_decay=0.0)


def make_args_for(stages, trainable, frozen, batch):
  b = next(iter(batch.values())).shape[0]

  def make_args():
    tx = optimizers.chain(stages)
    p = jax.tree.map(jnp.copy, trainable)
    state = steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))
    return (state, frozen, batch, jnp.ones((b,), jnp.float32),
            jax.random.key(2), jnp.arange(b, dtype=jnp.int32))
  return make_args


def bk_variant(loss, trainable, frozen, batch, m, method='auto',
               lora_scale=None):
  """(jitted BK training step, make_args): the engine the trainer runs."""
  b = next(iter(batch.values())).shape[0]
  stages = dp_stages(b)
  engine = grad_engines.BookkeepingEngine(loss, m, method=method,
                                          lora_scale=lora_scale)
  step = steps_lib.make_train_step(engine, stages, l2_clip_norm=1.0)
  return (jax.jit(step, donate_argnums=(0,)),
          make_args_for(stages, trainable, frozen, batch))


def noised_nonprivate_variant(loss, trainable, frozen, batch, m):
  """(jitted step, make_args): the UNCLIPPED micro-batched gradient sum with
  the DP stages (Gaussian noise, 1/B, AdamW): what a DP step costs beyond
  the non-private one without any clipping (diagnostic, not private)."""
  b = next(iter(batch.values())).shape[0]
  stages = dp_stages(b)
  step = steps_lib.make_train_step(grad_engines.NonPrivateEngine(loss, m),
                                   stages, l2_clip_norm=1.0)
  return (jax.jit(step, donate_argnums=(0,)),
          make_args_for(stages, trainable, frozen, batch))


def load_batchfwd_module():
  """dpjax/bookkeeping.py at BATCHFWD_COMMIT, imported under another name."""
  src = subprocess.run(
      ['git', 'show', f'{BATCHFWD_COMMIT}:dpjax/bookkeeping.py'], cwd=sb.REPO,
      capture_output=True, text=True, check=True).stdout
  path = os.path.join(tempfile.mkdtemp(), 'bookkeeping_batchfwd.py')
  with open(path, 'w') as f:
    f.write(src)
  spec = importlib.util.spec_from_file_location('bookkeeping_batchfwd', path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod
  spec.loader.exec_module(mod)
  return mod


def batchfwd_variant(old, module, trainable, batch, m):
  """The earlier batch-forward BK clipped sum + noise, 1/B, AdamW."""
  b = batch['inputs'].shape[0]
  stages = dp_stages(b)
  post = optimizers.post_clip(stages)

  def step(state, frozen, batch, mask, dropout_key, record_ids):
    del frozen, dropout_key, record_ids
    out = old.clipped_sum_bk(module, state.trainable, batch, mask, 1.0,
                             microbatch_size=m)
    updates, post_state = post.update(out.clipped_sum, state.opt_state[1:],
                                      state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    new = steps_lib.TrainState(step=state.step + 1, trainable=trainable,
                               opt_state=(state.opt_state[0],)
                               + tuple(post_state))
    return new, {'mean_grad_norm': jnp.mean(out.norms)}

  return (jax.jit(step, donate_argnums=(0,)),
          make_args_for(stages, trainable, {}, batch))


def cost(compiled) -> dict[str, float]:
  """XLA's cost analysis of a compiled step (flops, bytes accessed)."""
  try:
    c = compiled.cost_analysis()
    if isinstance(c, (list, tuple)):
      c = c[0]
    return {'flops': float(c.get('flops', 0.0)),
            'bytes_accessed': float(c.get('bytes accessed', 0.0))}
  except Exception as e:  # pylint: disable=broad-except
    return {'error': repr(e)}


def measure(fns, rounds, reps, alternate=False):
  """`step_benchmark.measure`, plus each compiled step's cost analysis.

  alternate: every other round runs the variants in reverse order, so a
  drift of the machine's speed within a round does not always favour the
  variants timed first.
  """
  mem, times, compile_s, compiled, costs = {}, {k: [] for k in fns}, {}, {}, {}
  for name, (fn, make_args) in fns.items():
    t = time.perf_counter()
    compiled[name] = fn.lower(*make_args()).compile()
    mem[name] = sb.compiled_memory(compiled[name])
    costs[name] = cost(compiled[name])
    jax.block_until_ready(compiled[name](*make_args()))
    compile_s[name] = time.perf_counter() - t
    print(f'compiled {name} in {compile_s[name]:.1f}s, '
          f'{mem[name]["total"] / 2**20:.0f} MB', flush=True)
  for r in range(rounds):  # interleaved rounds
    order = list(fns.items())
    if alternate and r % 2:
      order.reverse()
    for name, (_, make_args) in order:
      fn = compiled[name]
      a = make_args()
      jax.block_until_ready(a)
      t = time.perf_counter()
      for _ in range(reps):
        if name == 'nonprivate_whole':
          a = fn(*a) + tuple(a[2:])
        else:
          state, _ = fn(*a)
          a = (state,) + tuple(a[1:])
      jax.block_until_ready(a)
      times[name].append((time.perf_counter() - t) / reps)
    print(f'round {r + 1}/{rounds} (load {os.getloadavg()[0]:.1f}): ' +
          ', '.join(f'{k} {v[-1]:.2f}s' for k, v in times.items()),
          flush=True)
  med = {k: statistics.median(v) for k, v in times.items()}
  return med, times, compile_s, mem, costs


def bk_ratios(fns, times, mem, bk_mbs, prefix='bk_micro') -> dict:
  """The `ratios` block (shared with the other BK benchmarks)."""
  np_names = [k for k in fns if k.startswith('nonprivate_')]
  bk_names = [k for k in fns if k.startswith(prefix)]
  dp_names = [k for k in fns if k.startswith('dp_micro')]
  best_np = sb.fastest(np_names, times)
  best_bk = sb.fastest(bk_names, times)
  rat = {}
  rat['BK best vs non-private best'] = sb.compare(best_bk, best_np, times,
                                                  mem)
  if dp_names:
    best_dp = sb.fastest(dp_names, times)
    rat['vmap best vs non-private best'] = sb.compare(best_dp, best_np, times,
                                                      mem)
    rat['BK best vs vmap best'] = sb.compare(best_bk, best_dp, times, mem)
  lean_np = min(np_names, key=lambda k: mem[k]['total'])
  lean_bk = min(bk_names, key=lambda k: mem[k]['total'])
  rat['BK leanest vs non-private leanest (memory)'] = sb.compare(
      lean_bk, lean_np, times, mem)
  rat['BK best vs non-private leanest (memory)'] = sb.compare(
      best_bk, lean_np, times, mem)
  for m in bk_mbs:
    if f'nonprivate_micro{m}' in fns:
      rat[f'equal micro-batch {m}'] = sb.compare(
          f'{prefix}{m}', f'nonprivate_micro{m}', times, mem)
  for name in fns:
    if name.startswith('noisednp_micro'):
      m = name[len('noisednp_micro'):]
      rat[f'diagnostic: {name} vs nonprivate best'] = sb.compare(
          name, best_np, times, mem)
      rat[f'diagnostic: BK best vs {name}'] = sb.compare(best_bk, name, times,
                                                          mem)
      if f'{prefix}{m}' in fns:
        rat[f'diagnostic: {prefix}{m} vs {name}'] = sb.compare(
            f'{prefix}{m}', name, times, mem)
    for diag in ('bk_gram_micro', 'bk_instantiate_micro',
                 'bkbatchfwd_micro'):
      if name.startswith(diag):
        m = name[len(diag):]
        rat[f'diagnostic: {name} vs {prefix}{m}'] = sb.compare(
            name, f'{prefix}{m}', times, mem)
        if f'nonprivate_micro{m}' in fns:
          rat[f'diagnostic: {name} vs nonprivate_micro{m}'] = sb.compare(
              name, f'nonprivate_micro{m}', times, mem)
  return rat


def ratio_table(ratios: dict, label: str = '') -> list[str]:
  lines = []
  for key, r in ratios.items():
    lines.append(f"| {label}{key} | `{r['dp']}` / `{r['nonprivate']}` | "
                 f"{r['time']:.2f}x | {r['time_per_round_min']:.2f}-"
                 f"{r['time_per_round_max']:.2f} | {r['memory']:.2f}x |")
  return lines


RATIO_HEADER = ['| comparison | variants | time | per-round time ratios '
                '(min-max) | memory |', '|---|---|---:|---:|---:|']


def choices_lines(choices: dict[str, str]) -> list[str]:
  counts = collections.Counter(choices.values())
  by = collections.defaultdict(list)
  for p, c in choices.items():
    by[c].append(p)
  lines = ["BK per-leaf choice ('auto'): " + ', '.join(
      f'{k}: {v}' for k, v in sorted(counts.items())) + '.', '']
  for c in sorted(by):
    lines.append(f'- {c} ({len(by[c])}): ' + ', '.join(
        f'`{p}`' for p in by[c]))
  return lines


def cost_lines(costs, med) -> list[str]:
  lines = ['| variant | XLA flops (scan body once) | bytes accessed |',
           '|---|---:|---:|']
  for k in med:
    c = costs.get(k, {})
    if 'flops' in c:
      lines.append(f"| {k} | {c['flops'] / 1e9:.2f} G | "
                   f"{c['bytes_accessed'] / 2**30:.2f} GiB |")
  return lines


def run_markdown(result: dict) -> list[str]:
  s = result['setup']
  lines = [
      f"## Batch {s['batch']} x seq {s['seq']}", '',
      f"{s['params']:,} parameters, batch {s['batch']} x seq {s['seq']}, "
      f"float32, AdamW; BK = `steps.make_train_step(grad_engines."
      f"BookkeepingEngine(loss, m), ...)`, the trainer's step; "
      f"{s['rounds']} interleaved rounds x {s['reps_per_round']} steps after "
      "one warm-up call. " + sb.provenance_line(s), '']
  if s.get('note'):
    lines += [s['note'], '']
  t = result['targets']
  lines += ['### Target', '',
            f"BK best / best non-private: time {t['time']:.2f}x (target <= "
            f"{t['time_target']:.2f}x: {'met' if t['time_met'] else 'NOT met'}"
            f"), memory {t['memory']:.3f}x (target <= "
            f"{t['memory_target']:.2f}x: "
            f"{'met' if t['memory_met'] else 'NOT met'}); "
            f"`{t['bk']}` vs `{t['nonprivate']}`.", '']
  lines += ['### Ratios', ''] + RATIO_HEADER + ratio_table(result['ratios'])
  lines += ['', '### Variants', ''] + sb.VARIANT_HEADER + sb.variant_rows(
      result['median_step_seconds'], result['memory_bytes'],
      result['all_step_seconds'])
  lines += ['', '### XLA cost analysis', ''] + cost_lines(
      result['xla_cost'], result['median_step_seconds'])
  lines += [''] + choices_lines(result['bk_choices']) + ['']
  return lines


def markdown(result: dict) -> str:
  runs = result['runs']
  first = next(iter(runs.values()))['setup']
  lines = [f"# Book-keeping DP training step vs non-private step "
           f"({first['params'] / 1e6:.1f}M-parameter decoder)", '']
  if result.get('analysis'):
    lines += [result['analysis'], '']
  for b in sorted(runs, key=int):
    lines += run_markdown(runs[b])
  lines += [sb.FOOTER.format(script='experiments/bookkeeping_benchmark.py'),
            '']
  return '\n'.join(lines)


def write(result: dict, out: str, t0: float) -> None:
  """Merges this batch's run into `out` (other batches' runs kept)."""
  result['wall_seconds'] = time.perf_counter() - t0
  result['setup']['load_average_at_end'] = [round(x, 2)
                                            for x in os.getloadavg()]
  merged = {'runs': {}}
  if os.path.exists(out):
    with open(out) as f:
      old = json.load(f)
    if 'runs' in old:
      merged = old
  merged['runs'][str(result['setup']['batch'])] = result
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(merged, f, indent=2)
  md = markdown(merged)
  with open(os.path.splitext(out)[0] + '.md', 'w') as f:
    f.write(md)
  print(md, flush=True)


def targets(rat, time_target, memory_target=1.0):
  r = rat['BK best vs non-private best']
  return {'bk': r['dp'], 'nonprivate': r['nonprivate'], 'time': r['time'],
          'memory': r['memory'], 'time_target': time_target,
          'memory_target': memory_target,
          'time_met': r['time'] <= time_target,
          'memory_met': r['memory'] <= memory_target}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'bookkeeping_benchmark.json'),
                  help='the run of this --batch is merged into it (the '
                  'other batches\' runs are kept)')
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--seq', type=int, default=128)
  ap.add_argument('--microbatches', default='4,8,16',
                  help='non-private micro-batch sizes')
  ap.add_argument('--dp_microbatches', default='4,8',
                  help='vmap DP engine micro-batch sizes')
  ap.add_argument('--bk_microbatches', default='4,8,16,32')
  ap.add_argument('--method_microbatch', type=int, default=8,
                  help='m of the bk_gram / bk_instantiate diagnostics (0: '
                  'none)')
  ap.add_argument('--batchfwd_microbatches', default='8',
                  help='m of the experimental batch-forward BK ("": none)')
  ap.add_argument('--hidden', type=int, default=256)
  ap.add_argument('--layers', type=int, default=4)
  ap.add_argument('--vocab', type=int, default=8000)
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--reps', type=int, default=2)
  ap.add_argument('--time_target', type=float, default=0.90)
  ap.add_argument('--note', default='')
  args = ap.parse_args()
  out = args.out
  mbs = sb.parse_microbatches(args.microbatches)
  dp_mbs = sb.parse_microbatches(args.dp_microbatches)
  bk_mbs = sb.parse_microbatches(args.bk_microbatches)
  bf_mbs = sb.parse_microbatches(args.batchfwd_microbatches)
  t0 = time.perf_counter()
  info = sb.run_info()

  module, params, batch = sb.build(args)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  loss = sb.record_loss(module)
  fns = sb.variants(loss, params, {}, batch, microbatches=mbs)
  fns = {k: v for k, v in fns.items()
         if not k.startswith('dp_micro') or int(k[8:]) in dp_mbs}
  for m in dp_mbs:
    if f'dp_micro{m}' not in fns:
      fns[f'dp_micro{m}'] = sb.variants(loss, params, {}, batch,
                                        microbatches=(m,))[f'dp_micro{m}']
  for m in bk_mbs:
    fns[f'bk_micro{m}'] = bk_variant(loss, params, {}, batch, m)
  if args.method_microbatch:
    for method in ('gram', 'instantiate'):
      fns[f'bk_{method}_micro{args.method_microbatch}'] = bk_variant(
          loss, params, {}, batch, args.method_microbatch, method=method)
  if bf_mbs:
    old = load_batchfwd_module()
    for m in bf_mbs:
      fns[f'bkbatchfwd_micro{m}'] = batchfwd_variant(old, module, params,
                                                     batch, m)
  m0 = bk_mbs[0]
  plan = bookkeeping.check(
      lambda p, ex, k: loss(p, {}, ex, k), params,
      jax.tree.map(lambda x: x[:m0], batch), jax.random.split(
          jax.random.key(0), m0))
  choices = plan.choices()

  med, times, compile_s, mem, costs = measure(fns, args.rounds, args.reps)
  rat = bk_ratios(fns, times, mem, bk_mbs)
  result = {
      'setup': {'params': int(n_params), 'batch': args.batch, 'seq': args.seq,
                'microbatches': list(mbs), 'dp_microbatches': list(dp_mbs),
                'bk_microbatches': list(bk_mbs),
                'method_microbatch': args.method_microbatch,
                'batchfwd_microbatches': list(bf_mbs),
                'batchfwd_commit': BATCHFWD_COMMIT,
                'hidden': args.hidden, 'layers': args.layers,
                'vocab': args.vocab, 'dtype': 'float32',
                'optimizer': 'adamw lr 1e-3', 'dp_noise_multiplier': 1.0,
                'dp_l2_clip_norm': 1.0, 'rounds': args.rounds,
                'reps_per_round': args.reps,
                'note': sb.rounds_note(args.rounds, ap.get_default('rounds'),
                                       args.note),
                **info},
      'targets': targets(rat, args.time_target),
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
  write(result, out, t0)


if __name__ == '__main__':
  main()
