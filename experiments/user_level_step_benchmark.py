"""User-level (ULS) DP step versus record-level DP step, same records per step.

  python experiments/user_level_step_benchmark.py
      [--out experiments/results/user_level_step_benchmark.json]
      [--records 32] [--ks 4,8] [--record_microbatches 4,8,16]
      [--rounds 5] [--reps 2]

The target (issue 15): the user-level step costs at most 1.1x the
record-level step at the same number of records per step.

Model: the same Llama-style decoder as experiments/step_benchmark.py (its
`build` and `record_loss`: 4 layers, d 256, SwiGLU, RoPE, untied 8000-way
head, ~7.3M parameters), seq 128, float32, AdamW through the same DP chain
(`optimizers.dp_stages`, sigma 1, C 1, no EMA). R = --records records per
step. Variants, each jitted once (state donated) and timed in interleaved
rounds with `step_benchmark.measure`:

  record_m{m}:     the record-level DP step (`steps.make_train_step` on
                   `step_benchmark.record_loss`): R records, per-example
                   gradients m records at a time.
  user_k{k}_m{u}:  the ULS DP step exactly as the trainer builds it
                   (`run_setup.make_step`): `steps.make_train_step` on
                   `user_level.user_loss_fn(record_loss)`, R/k users of k
                   records each (every slot real, so the same R records per
                   step), batch from `user_level.gather_batch` with [R/k, k]
                   record indices, per-record dropout keys from
                   `steps.record_keys` on those 2-D ids; per-user gradients
                   (the gradient of the mean of the user's k record losses)
                   u users at a time, i.e. u*k records per micro-batch. The
                   DP chain's expected batch size is R/k users.

User micro-batches u, for each k in --ks:
  * equal records per micro-batch: u = m/k for every record micro-batch m
    (in --record_microbatches) that k divides (e.g. record m 8 <-> 2 users
    of k 4 <-> 1 user of k 8);
  * the trainer's setting unchanged: u = m users for each record m that
    divides R/k (under ULS `train.microbatch_size` counts users, so keeping
    a record-level config's micro-batch of m gives m*k records per
    micro-batch); the record-level variant with m*k records per micro-batch
    is then added too (if m*k <= R) so that it also has an
    equal-records partner.

Each round times the variants grouped by records per micro-batch (the
record-level step, then the user-level steps with the same number of
records per micro-batch), so the equal-records ratio of one round compares
steps run seconds apart.

Ratios (`ratios` in the JSON, all user-level / record-level):

  equal_records_per_microbatch["k{k}_r{r}"]: user_k{k}_m{r/k} / record_m{r}:
      time (ratio of medians, plus min and max of the per-round ratios) and
      memory.
  same_microbatch_setting["k{k}_m{m}"]: user_k{k}_m{m} / record_m{m}.
  best_vs_best["k{k}"]: the fastest user-level variant of each k against
      the fastest record-level variant, naming each one's micro-batch.
  leanest_vs_leanest["k{k}"]: the same by memory.

`target` states whether every equal-records ratio and every best-vs-best
ratio (time, ratio of medians) is at most 1.1.

Memory is XLA's compiled memory analysis (arguments + outputs + temporaries
- aliased donated buffers), `step_benchmark.compiled_memory`. Writes the
JSON and a Markdown summary next to it (same name, .md). Only ratios within
one run mean anything: this machine's speed drifts 2-5x within minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import step_benchmark  # pylint: disable=g-import-not-at-top
from dpjax import optimizers  # pylint: disable=g-import-not-at-top
from dpjax import steps as steps_lib  # pylint: disable=g-import-not-at-top
from dpjax import user_level  # pylint: disable=g-import-not-at-top

TARGET = 1.1
SCRIPT = 'experiments/user_level_step_benchmark.py'


def plan_variants(records: int, ks, record_microbatches):
  """{name: (k, micro-batch in units, records per micro-batch)}, in timing
  order (grouped by records per micro-batch; k = 1 for the record step)."""
  for k in ks:
    if records % k:
      raise ValueError(f'k {k} does not divide {records} records')
  for m in record_microbatches:
    if records % m:
      raise ValueError(f'micro-batch {m} does not divide {records} records')
  record_mbs = set(record_microbatches)
  users = {}
  for k in ks:
    n_users = records // k
    us = {m // k for m in record_microbatches if m % k == 0}
    us |= {m for m in record_microbatches if n_users % m == 0}
    us = {u for u in us if n_users % u == 0}
    users[k] = sorted(us)
    record_mbs |= {u * k for u in us if records % (u * k) == 0}
  plan = {}
  for r in sorted(record_mbs | {u * k for k in ks for u in users[k]}):
    if r in record_mbs:
      plan[f'record_m{r}'] = (1, r, r)
    for k in ks:
      if r % k == 0 and r // k in users[k]:
        plan[f'user_k{k}_m{r // k}'] = (k, r // k, r)
  return plan


def variants(loss, trainable, frozen, train, plan):
  """{name: (jitted step, make_args)} in `step_benchmark.measure`'s layout.

  `train` holds R records (numpy, leading axis R); every user-level variant
  groups them into R/k users of k consecutive records.
  """
  n = next(iter(train.values())).shape[0]
  dkey = jax.random.key(2)
  out = {}
  for name, (k, micro, _) in plan.items():
    units = n // k
    stages = optimizers.dp_stages(l2_clip_norm=1.0, noise_multiplier=1.0,
                                  expected_batch_size=units,
                                  learning_rate=1e-3, key=jax.random.key(1),
                                  ema_decay=0.0)
    if name.startswith('record_'):
      step_loss = loss
      batch = {key: jnp.asarray(v) for key, v in train.items()}
      ids = jnp.arange(n, dtype=jnp.int32)
    else:
      # What run_setup.make_step and train.py do for dp.user_sampling='uls'.
      step_loss = user_level.user_loss_fn(loss)
      idx = np.arange(n).reshape(units, k)
      batch = {key: jnp.asarray(v) for key, v in
               user_level.gather_batch(train, idx).items()}
      ids = jnp.asarray(idx, jnp.int32)
    mask = jnp.ones((units,), jnp.float32)
    step = steps_lib.vmap_train_step(step_loss, stages,
                                     l2_clip_norm=1.0, microbatch_size=micro,
                                     private=True)

    def make_args(stages=stages, batch=batch, mask=mask, ids=ids):
      tx = optimizers.chain(stages)
      p = jax.tree.map(jnp.copy, trainable)
      state = steps_lib.TrainState(jnp.zeros((), jnp.int32), p, tx.init(p))
      return state, frozen, batch, mask, dkey, ids

    out[name] = (jax.jit(step, donate_argnums=(0,)), make_args)
  return out


def check_batch_sizes(fns, plan, records):
  """Each variant's step sees R/k real units (its `batch_size` metric)."""
  got = {}
  for name, (fn, make_args) in fns.items():
    _, metrics = fn(*make_args())
    got[name] = float(metrics['batch_size'])
    want = records // plan[name][0]
    if got[name] != want:
      raise AssertionError(f'{name}: batch_size {got[name]}, want {want}')
  return got


def compare(user: str, record: str, times, mem) -> dict:
  r = step_benchmark.compare(user, record, times, mem)
  return {'user': r.pop('dp'), 'record': r.pop('nonprivate'), **r}


def ratios(times, mem, plan, ks) -> dict:
  records_of = {name: v[2] for name, v in plan.items()}
  rec = {v[1]: name for name, v in plan.items() if v[0] == 1}
  equal, same, best, lean = {}, {}, {}, {}
  for k in ks:
    users = [name for name, v in plan.items() if v[0] == k]
    for name in users:
      r = records_of[name]
      if r in rec:
        equal[f'k{k}_r{r}'] = {'k': k, 'records_per_microbatch': r,
                               'user_microbatch': plan[name][1],
                               **compare(name, rec[r], times, mem)}
      if plan[name][1] in rec:
        m = plan[name][1]
        same[f'k{k}_m{m}'] = {
            'k': k, 'microbatch_setting': m,
            'user_records_per_microbatch': r,
            **compare(name, rec[m], times, mem)}
    fu = step_benchmark.fastest(users, times)
    fr = step_benchmark.fastest(list(rec.values()), times)
    best[f'k{k}'] = {'criterion': 'fastest median step of each',
                     'user_microbatch': plan[fu][1],
                     'user_records_per_microbatch': records_of[fu],
                     'record_microbatch': plan[fr][1],
                     **compare(fu, fr, times, mem)}
    lu = min(users, key=lambda x: mem[x]['total'])
    lr = min(rec.values(), key=lambda x: mem[x]['total'])
    lean[f'k{k}'] = {'criterion': 'smallest memory of each',
                     'user_microbatch': plan[lu][1],
                     'user_records_per_microbatch': records_of[lu],
                     'record_microbatch': plan[lr][1],
                     **compare(lu, lr, times, mem)}
  return {'equal_records_per_microbatch': equal,
          'same_microbatch_setting': same,
          'best_vs_best': best, 'leanest_vs_leanest': lean}


def target(rat: dict) -> dict:
  checked = {f'equal_records_per_microbatch[{key}]': r['time']
             for key, r in rat['equal_records_per_microbatch'].items()}
  checked.update({f'best_vs_best[{key}]': r['time']
                  for key, r in rat['best_vs_best'].items()})
  worst = max(checked, key=checked.get)
  return {'max_time_ratio': TARGET,
          'checked': 'time ratio of medians, user / record, for every '
                     'equal-records-per-micro-batch pair and every k\'s '
                     'best vs best',
          'worst': worst, 'worst_time_ratio': checked[worst],
          'met': all(v <= TARGET for v in checked.values())}


def _row(label, r):
  return (f'| {label} | `{r["user"]}` / `{r["record"]}` | {r["time"]:.2f}x | '
          f'{r["time_per_round_min"]:.2f}-{r["time_per_round_max"]:.2f} | '
          f'{r["memory"]:.2f}x |')


def markdown(result: dict) -> str:
  s = result['setup']
  rat, tgt = result['ratios'], result['target']
  shapes = ', '.join(f"{s['records'] // k} users x k={k}" for k in s['ks'])
  lines = [
      f"# User-level (ULS) DP step vs record-level DP step "
      f"({s['params'] / 1e6:.1f}M-parameter decoder)", '',
      f"{s['params']:,} parameters (Llama-style, {s['layers']} layers, d "
      f"{s['hidden']}, vocab {s['vocab']}), {s['records']} records per step "
      f"x seq {s['seq']}, float32, DP AdamW (sigma 1, C 1); user-level: "
      f"{shapes} "
      f"records (every slot real); {s['rounds']} interleaved rounds x "
      f"{s['reps_per_round']} steps after one warm-up call. "
      + step_benchmark.provenance_line(s), '']
  if s.get('note'):
    lines += [s['note'], '']
  verdict = 'met' if tgt['met'] else 'NOT met'
  lines += [f"**Target (user-level step at most {tgt['max_time_ratio']}x the "
            f"record-level step at the same records per step): {verdict}.** "
            f"Worst checked time ratio {tgt['worst_time_ratio']:.2f}x "
            f"({tgt['worst']}); checked: {tgt['checked']}.", '']
  header = ['| comparison | variants (user / record) | time | per-round time '
            'ratios (min-max) | memory |', '|---|---|---:|---:|---:|']
  lines += ['## Ratios (user-level / record-level)', ''] + header
  for r in rat['equal_records_per_microbatch'].values():
    lines.append(_row(f"k {r['k']}: equal records per micro-batch "
                      f"({r['records_per_microbatch']} = "
                      f"{r['user_microbatch']} user"
                      f"{'s' if r['user_microbatch'] > 1 else ''})", r))
  for key, what in (('best_vs_best', 'best vs best (fastest)'),
                    ('leanest_vs_leanest', 'leanest vs leanest (memory)')):
    for k, r in rat[key].items():
      lines.append(_row(
          f"{k[0]} {k[1:]}: {what}: user mb {r['user_microbatch']} "
          f"({r['user_records_per_microbatch']} records) vs record mb "
          f"{r['record_microbatch']}", r))
  for r in rat['same_microbatch_setting'].values():
    lines.append(_row(f"k {r['k']}: same micro-batch setting "
                      f"{r['microbatch_setting']} (users vs records; "
                      f"{r['user_records_per_microbatch']} vs "
                      f"{r['microbatch_setting']} records)", r))
  lines += ['', '## Variants', '',
            '| variant | records per micro-batch | median s/step | round '
            'spread (max-min)/median | memory MB (temp) |',
            '|---|---:|---:|---:|---:|']
  med, mem = result['median_step_seconds'], result['memory_bytes']
  times = result['all_step_seconds']
  for name in med:
    spread = (max(times[name]) - min(times[name])) / med[name]
    lines.append(f"| {name} | {result['records_per_microbatch'][name]} | "
                 f"{med[name]:.3f} | {spread * 100:.0f}% | "
                 f"{mem[name]['total'] / 2**20:.0f} "
                 f"({mem[name]['temp'] / 2**20:.0f}) |")
  lines += ['', step_benchmark.FOOTER.format(script=SCRIPT), '']
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(
      os.path.dirname(__file__), 'results', 'user_level_step_benchmark.json'))
  ap.add_argument('--records', type=int, default=32,
                  help='R, records per step (every variant)')
  ap.add_argument('--ks', default='4,8', help='records per user')
  ap.add_argument('--record_microbatches', default='4,8,16')
  ap.add_argument('--seq', type=int, default=128)
  ap.add_argument('--hidden', type=int, default=256)
  ap.add_argument('--layers', type=int, default=4)
  ap.add_argument('--vocab', type=int, default=8000)
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--reps', type=int, default=2)
  ap.add_argument('--note', default='',
                  help='free text recorded in the JSON and the .md')
  args = ap.parse_args()
  ks = step_benchmark.parse_microbatches(args.ks)
  rmbs = step_benchmark.parse_microbatches(args.record_microbatches)
  t0 = time.perf_counter()
  info = step_benchmark.run_info()

  args.batch = args.records   # step_benchmark.build's name for R
  module, params, batch = step_benchmark.build(args)
  train = {key: np.asarray(v) for key, v in batch.items()}
  n_params = sum(x.size for x in jax.tree.leaves(params))
  plan = plan_variants(args.records, ks, rmbs)
  print('variants: ' + ', '.join(plan), flush=True)
  fns = variants(step_benchmark.record_loss(module), params, {}, train, plan)
  med, times, compile_s, mem = step_benchmark.measure(fns, args.rounds,
                                                      args.reps)
  sizes = check_batch_sizes(fns, plan, args.records)
  rat = ratios(times, mem, plan, ks)
  result = {
      'setup': {'params': int(n_params), 'records': args.records,
                'seq': args.seq, 'ks': list(ks),
                'record_microbatches': list(rmbs),
                'hidden': args.hidden, 'layers': args.layers,
                'vocab': args.vocab, 'dtype': 'float32',
                'optimizer': 'adamw lr 1e-3 (optimizers.dp_stages)',
                'dp_noise_multiplier': 1.0, 'dp_l2_clip_norm': 1.0,
                'user_sampling': 'uls',
                'rounds': args.rounds, 'reps_per_round': args.reps,
                'note': step_benchmark.rounds_note(
                    args.rounds, ap.get_default('rounds'), args.note),
                **info},
      'target': None,
      'ratios': rat,
      'variants': {name: {'k': v[0], 'microbatch': v[1],
                          'records_per_microbatch': v[2],
                          'units_per_step': args.records // v[0]}
                   for name, v in plan.items()},
      'records_per_microbatch': {name: v[2] for name, v in plan.items()},
      'batch_size_metric': sizes,
      'median_step_seconds': med,
      'all_step_seconds': times,
      'first_call_seconds_incl_compile': compile_s,
      'memory_bytes': mem,
      'wall_seconds': None,
  }
  result['target'] = target(rat)
  step_benchmark.write_result(result, args.out, markdown, t0)


if __name__ == '__main__':
  main()
