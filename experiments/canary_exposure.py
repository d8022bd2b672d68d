"""Canary exposure with and without DP on synthetic clinical notes.

  python experiments/canary_exposure.py [--steps 300]

Trains configs/records_canary.py twice, at (epsilon = 8, delta = 1e-5, PLD)
and without DP (same steps, batch and learning rate), and reports each
canary's exposure (bits; log2(10^6) = 19.93 is the maximum, ~1.44 chance).
Writes experiments/results/canary_exposure.{csv,json,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import records_canary  # pylint: disable=g-import-not-at-top
from dpjax import train  # pylint: disable=g-import-not-at-top

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=300)
  args = ap.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as root:
    for private in (True, False):
      config = records_canary.get_config()
      config.train.steps = args.steps
      config.dp.enabled = private
      config.plot = False
      out = train.train_and_evaluate(config, os.path.join(root, str(private)))
      priv = out['report']['privacy']
      eps = (next(r['epsilon'] for r in priv['rows']
                  if r['accountant'] == 'pld') if priv else float('inf'))
      for c in out['final']['canary_exposure']:
        rows.append({'dp': private, 'pld_epsilon': eps,
                     'sigma': out['plan'].noise_multiplier,
                     'heldout_nll': out['final']['eval_loss'], **c})
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, 'canary_exposure.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(RESULTS, 'canary_exposure.csv'), 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  plt.figure(figsize=(6, 4))
  for private, marker in ((False, 'o-'), (True, 's-')):
    pts = [(r['repetitions'], r['exposure_bits']) for r in rows
           if r['dp'] == private]
    label = 'non-private' if not private else (
        f"DP, eps={rows[0]['pld_epsilon']:.2f}")
    plt.plot([p[0] for p in pts], [p[1] for p in pts], marker, label=label)
  plt.axhline(rows[0]['max_exposure_bits'], color='gray', ls=':',
              label='maximum (memorized)')
  plt.axhline(rows[0]['chance_exposure_bits'], color='gray', ls='--',
              label='chance')
  plt.xscale('log')
  plt.xlabel('canary repetitions')
  plt.ylabel('exposure (bits)')
  plt.legend()
  plt.tight_layout()
  plt.savefig(os.path.join(RESULTS, 'canary_exposure.png'), dpi=100)
  print(json.dumps(rows, indent=2))


if __name__ == '__main__':
  main()
