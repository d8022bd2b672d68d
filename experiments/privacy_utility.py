"""Privacy-utility curve: held-out NLL of SmolLM2 on Shakespeare against epsilon.

  python experiments/privacy_utility.py [--steps 4] [--batch 32]

Runs the quickstart recipe (LoRA r=4 on q,v of SmolLM2-135M, Poisson
sampling, PLD-calibrated sigma, delta 1e-5) at epsilon in {1, 3, 8} and
without DP (epsilon = infinity, same steps, batch and learning rate), and
reports each run's held-out NLL (raw and EMA weights) next to the un-tuned
model's. Writes experiments/results/privacy_utility.{csv,json,png}.
The step budget is what fits on a 2-core CPU, so the curve shows how far a
few DP steps move a pretrained model, not a converged fine-tune.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import quickstart  # pylint: disable=g-import-not-at-top
from dpjax import train  # pylint: disable=g-import-not-at-top

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def run(epsilon, args, workroot):
  config = quickstart.get_config()
  config.train.steps = args.steps
  config.train.batch_size = args.batch
  config.train.max_batch_size = args.max_batch
  config.train.eval_every = args.steps
  config.train.checkpoint_every = args.steps
  config.data.max_eval_records = args.eval_records
  config.export.formats = ()
  config.plot = False
  if epsilon is None:
    config.dp.enabled = False
  else:
    config.dp.target_epsilon = float(epsilon)
  t = time.time()
  out = train.train_and_evaluate(
      config, os.path.join(workroot, f'eps_{epsilon}'))
  rows = out['report']['privacy']['rows'] if out['report']['privacy'] else []
  pld = next((r['epsilon'] for r in rows if r['accountant'] == 'pld'),
             float('inf'))
  final = out['final']
  return {'target_epsilon': 'inf' if epsilon is None else epsilon,
          'pld_epsilon': pld, 'sigma': out['plan'].noise_multiplier,
          'nll_untuned': final['eval_loss_initial'],
          'nll_raw': final['eval_loss'], 'nll_ema': final['eval_loss_ema'],
          'steps': args.steps, 'expected_batch': args.batch,
          'seconds': time.time() - t}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=4)
  ap.add_argument('--batch', type=int, default=32)
  ap.add_argument('--max_batch', type=int, default=56)
  ap.add_argument('--eval_records', type=int, default=64)
  ap.add_argument('--epsilons', default='1,3,8,inf')
  args = ap.parse_args()
  eps = [None if e == 'inf' else float(e) for e in args.epsilons.split(',')]
  os.makedirs(RESULTS, exist_ok=True)
  with tempfile.TemporaryDirectory() as root:
    results = [run(e, args, root) for e in eps]
  with open(os.path.join(RESULTS, 'privacy_utility.json'), 'w') as f:
    json.dump(results, f, indent=2)
  with open(os.path.join(RESULTS, 'privacy_utility.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(results[0]))
    w.writeheader()
    w.writerows(results)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = [str(r['target_epsilon']) for r in results]
  x = range(len(results))
  plt.figure(figsize=(6, 4))
  plt.plot(x, [r['nll_raw'] for r in results], 'o-', label='fine-tuned (raw)')
  plt.plot(x, [r['nll_ema'] for r in results], 's--', label='fine-tuned (EMA)')
  plt.axhline(results[0]['nll_untuned'], color='gray', ls=':',
              label='un-tuned SmolLM2')
  plt.xticks(list(x), labels)
  plt.xlabel('target epsilon (PLD, delta=1e-5)')
  plt.ylabel('held-out NLL (nats/token)')
  plt.legend()
  plt.tight_layout()
  plt.savefig(os.path.join(RESULTS, 'privacy_utility.png'), dpi=100)
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  main()
