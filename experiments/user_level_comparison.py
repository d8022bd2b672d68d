"""ULS versus ELS at equal user-level epsilon, on skewed users.

  python experiments/user_level_comparison.py [--steps 40 --seeds 0,1
      --ks 2,8 --out experiments/results/user_level_comparison]

Data: the support-ticket generator of examples/support_tickets/, scaled to
2000 fictitious customers filing round(300 / i) tickets each (at least 1):
a few customers hold hundreds of records, most hold one. Task: causal LM
on the customers' messages (byte tokens, 128 per record, one record per
ticket). Model: the tiny Llama-style decoder of configs/debug.py, from
random init, DP-AdamW. Both modes are calibrated to the same user-level
(epsilon, delta) under PLD and train for the same number of steps:

  uls k: Poisson over users, B_u = --users_per_step users a step, up to k
         of a user's records averaged and clipped as one contribution.
  els k: each user keeps at most k records; records are Poisson-sampled at
         the same expected number of records per step as ULS uses, clipped
         one by one; each step is accounted as the user-level mechanism
         (rate 1 - (1 - q)^k, multiplier z / k).

Held-out: customers whose id hashes below 0.1 (dpjax's public split), so
no customer is on both sides. Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'examples', 'support_tickets'))

import numpy as np  # pylint: disable=wrong-import-position

import make_tickets  # pylint: disable=wrong-import-position
from configs import debug  # pylint: disable=wrong-import-position
from dpjax import input_pipeline  # pylint: disable=wrong-import-position
from dpjax import train  # pylint: disable=wrong-import-position

N_CUSTOMERS, TOP = 2000, 300


def write_data(folder: str) -> str:
  make_tickets.N_CUSTOMERS, make_tickets.TOP = N_CUSTOMERS, TOP
  tickets = make_tickets.make_tickets()
  path = os.path.join(folder, 'tickets.jsonl')
  with open(path, 'w', encoding='utf-8') as f:
    for t in tickets:
      f.write(json.dumps({'customer_id': t['customer_id'],
                          'text': t['prompt']}) + '\n')
  return path


def base_config(path: str, steps: int, seed: int):
  config = debug.get_config()
  config.seed = seed
  config.model.max_position_embeddings = 128
  config.data.update(corpus='files', path=path, task='lm',
                     text_field='text', user_field='customer_id',
                     seq_len=128, max_train_records=0, max_eval_records=256,
                     eval_batch_size=64, heldout_fraction=0.1)
  config.train.update(steps=steps, microbatch_size=8, learning_rate=3e-3,
                      log_every=steps, eval_every=steps,
                      checkpoint_every=steps, ema_decay=0.9)
  config.dp.update(target_epsilon=8.0, delta=1e-5, noise_multiplier=-1.0)
  config.plot = False
  return config


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--seeds', default='0,1')
  parser.add_argument('--ks', default='2,8')
  parser.add_argument('--users_per_step', type=int, default=32)
  parser.add_argument('--out', default=os.path.join(
      ROOT, 'experiments', 'results', 'user_level_comparison'))
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  ks = [int(k) for k in args.ks.split(',')]
  start = time.time()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    path = write_data(tmp)
    probe = base_config(path, args.steps, 0)
    data = input_pipeline.build(probe.data, None, seed=0)
    sizes = np.array([len(u) for u in data.users])
    info = dict(train_records=int(data.train_size),
                train_users=int(len(sizes)),
                heldout_records=int(next(iter(data.heldout.values())).shape[0]),
                records_per_user_max=int(sizes.max()),
                records_per_user_median=float(np.median(sizes)),
                users_with_one_record=int(np.sum(sizes == 1)))
    for k in ks:
      capped = np.minimum(sizes, k)
      # Records a ULS step uses on average; ELS samples as many.
      records_per_step = args.users_per_step * float(capped.mean())
      for mode in ('uls', 'els'):
        for seed in seeds:
          config = base_config(path, args.steps, seed)
          config.data.max_records_per_user = k
          config.dp.user_sampling = mode
          if mode == 'uls':
            batch = args.users_per_step
          else:
            batch = max(1, round(records_per_step))
          config.train.batch_size = batch
          config.train.max_batch_size = 8 * int(np.ceil(2 * batch / 8))
          t0 = time.time()
          with tempfile.TemporaryDirectory() as work:
            out = train.train_and_evaluate(config, work)
          pld = {r['accountant']: r for r in
                 out['report']['privacy']['rows']}['pld']
          row = dict(mode=mode, k=k, seed=seed, batch_size=batch,
                     batch_counts='users' if mode == 'uls' else 'records',
                     records_per_step=records_per_step,
                     noise_multiplier=out['plan'].noise_multiplier,
                     epsilon_pld=pld['epsilon'],
                     eval_loss_initial=out['final']['eval_loss_initial'],
                     eval_loss=out['final']['eval_loss'],
                     eval_loss_ema=out['final']['eval_loss_ema'],
                     seconds=round(time.time() - t0, 1))
          rows.append(row)
          print(json.dumps(row), flush=True)
  summary = []
  for k in ks:
    for mode in ('uls', 'els'):
      sel = [r for r in rows if r['k'] == k and r['mode'] == mode]
      summary.append(dict(
          mode=mode, k=k, seeds=len(sel),
          noise_multiplier=sel[0]['noise_multiplier'],
          epsilon_pld=max(r['epsilon_pld'] for r in sel),
          eval_loss_mean=statistics.mean(r['eval_loss'] for r in sel),
          eval_loss_ema_mean=statistics.mean(r['eval_loss_ema']
                                             for r in sel),
          eval_loss_initial=statistics.mean(r['eval_loss_initial']
                                            for r in sel)))
  commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=False, cwd=ROOT).stdout.strip()
  result = dict(
      what=('held-out NLL (nats/byte) after training at equal user-level '
            'epsilon (PLD upper bound, delta 1e-5, one customer with all '
            'of their tickets)'),
      data=dict(info, customers=N_CUSTOMERS, top=TOP,
                generator='examples/support_tickets/make_tickets.py scaled'),
      steps=args.steps, users_per_step=args.users_per_step, seeds=seeds,
      rows=rows, summary=summary, commit=commit,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='minutes'),
      wall_seconds=round(time.time() - start))
  with open(args.out + '.json', 'w') as f:
    json.dump(result, f, indent=2)
  lines = ['# ULS vs ELS at equal user-level epsilon', '',
           f'{result["what"]}. {info["train_users"]} training customers, '
           f'{info["train_records"]} tickets (max {info["records_per_user_max"]}'
           f' per customer, median {info["records_per_user_median"]:g}, '
           f'{info["users_with_one_record"]} with one); {args.steps} steps; '
           f'ULS samples {args.users_per_step} customers a step, ELS the same '
           f'expected number of tickets; tiny decoder from random init; '
           f'mean over seeds {seeds}.', '',
           '| mode | k | noise multiplier z | ε (PLD) | held-out NLL before '
           '| after (raw) | after (EMA) |', '|---|---|---|---|---|---|---|']
  for s in summary:
    lines.append(f"| {s['mode']} | {s['k']} | {s['noise_multiplier']:.3f} | "
                 f"{s['epsilon_pld']:.2f} | {s['eval_loss_initial']:.4f} | "
                 f"{s['eval_loss_mean']:.4f} | {s['eval_loss_ema_mean']:.4f} |")
  lines += ['', f'Commit {commit[:10]}, {result["date"]}, '
            f'{result["wall_seconds"]} s; '
            '`python experiments/user_level_comparison.py`.']
  with open(args.out + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(main())
