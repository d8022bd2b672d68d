"""Canary exposure with and without DP on synthetic clinical notes.

  python experiments/canary_exposure.py [--steps 300]
  python experiments/canary_exposure.py --from_saved   # no training

Trains configs/records_canary.py twice, at (epsilon = 8, delta = 1e-5, PLD)
and without DP (same steps, batch and learning rate), and reports each
canary's exposure. Each canary's secret is scored against m = 2,000 random
candidates (K = 2,001 texts scored, `sampled_candidates`), so two figures
are reported and kept apart:

* `exposure_rank_bits`: the rank-based (sampled) exposure among the K scored
  texts, at most the sampled ceiling log2 K = 10.97 bits
  (`sampled_ceiling_bits`); ~1.44 bits at chance.
* `exposure_extrapolated_bits`: the rank extrapolated to the full space of
  |R| = 10^6 six-digit secrets (`extrapolation_method`), whose maximum is
  log2 10^6 = 19.93 bits (`full_space_max_bits`). A canary that beats all
  2,000 sampled candidates gets 19.93 extrapolated bits, but the sample only
  shows its rank is below about |R| / m: the one-sided 95% lower bound
  (`exposure_extrapolated_lower95_bits`) is then 9.38 bits.

`exposure_bits` and `max_exposure_bits` keep their earlier meanings (the
extrapolated figure and the full-space maximum).

--from_saved recomputes every field from the saved JSON's per-canary ranks
without training (the extrapolated rank determines the count k of sampled
candidates that beat the secret), and records that in `provenance`.

Writes experiments/results/canary_exposure.{csv,json,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dpjax import memorization  # pylint: disable=g-import-not-at-top
from dpjax.data import exposure as exposure_lib  # pylint: disable=g-import-not-at-top

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
JSON_PATH = os.path.join(RESULTS, 'canary_exposure.json')
RUN_KEYS = ('dp', 'pld_epsilon', 'sigma', 'heldout_nll', 'repetitions')


def _commit() -> str:
  try:
    return subprocess.run(
        ('git', 'rev-parse', '--short', 'HEAD'), capture_output=True,
        text=True, check=True,
        cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def train_rows(steps: int) -> list[dict]:
  """Trains with and without DP; one row per (setting, canary)."""
  from configs import records_canary  # pylint: disable=g-import-not-at-top
  from dpjax import train  # pylint: disable=g-import-not-at-top
  rows = []
  provenance = f'trained and scored at commit {_commit()}'
  with tempfile.TemporaryDirectory() as root:
    for private in (True, False):
      config = records_canary.get_config()
      config.train.steps = steps
      config.dp.enabled = private
      config.plot = False
      out = train.train_and_evaluate(config, os.path.join(root, str(private)))
      priv = out['report']['privacy']
      eps = (next(r['epsilon'] for r in priv['rows']
                  if r['accountant'] == 'pld') if priv else float('inf'))
      for c in out['final']['canary_exposure']:
        rows.append({'dp': private, 'pld_epsilon': eps,
                     'sigma': out['plan'].noise_multiplier,
                     'heldout_nll': out['final']['eval_loss'], **c,
                     'provenance': provenance})
  return rows


def recompute_rows(saved: list[dict]) -> list[dict]:
  """Every exposure field recomputed from the saved extrapolated ranks.

  rank_hat = 1 + (|R| - 1) k / m, so k = (rank_hat - 1) m / (|R| - 1), a
  multiple of 1/2 (ties count half); the recomputed rank must match.
  """
  rows = []
  for r in saved:
    scored = int(r.get('sampled_candidates', r['candidates_scored']))
    m = scored - 1
    space = int(r.get('full_space_size',
                      round(2**r.get('full_space_max_bits',
                                     r['max_exposure_bits']))))
    k = round(2 * (r['rank'] - 1) * m / (space - 1)) / 2
    res = exposure_lib.ExposureResult.from_sampled_count(k, m, space)
    if not math.isclose(res.rank, r['rank'], rel_tol=1e-9):
      raise ValueError(f'saved rank {r["rank"]} is not 1 + (|R| - 1) k / m '
                       f'for a half-integer k (got {res.rank})')
    prov = r.get('provenance') or (
        'trained and scored by the code of 2026-11-23 (results committed in '
        '6758f1b)')
    if 'recomputed' not in prov:
      prov += ('; exposure fields recomputed from the saved ranks by '
               '`experiments/canary_exposure.py --from_saved` (no retraining)')
    rows.append({**{key: r[key] for key in RUN_KEYS},
                 **memorization.exposure_fields(res), 'provenance': prov})
  return rows


def plot(rows: list[dict], path: str) -> None:
  """Rank-based exposure (solid) and its extrapolation (dotted) per setting."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  r0 = rows[0]
  plt.figure(figsize=(7, 6))
  for private, color in ((False, 'tab:red'), (True, 'tab:blue')):
    pts = [r for r in rows if r['dp'] == private]
    reps = [r['repetitions'] for r in pts]
    label = 'non-private' if not private else (
        f"DP, eps={pts[0]['pld_epsilon']:.2f}")
    plt.plot(reps, [r['exposure_rank_bits'] for r in pts], 'o-', color=color,
             label=f'{label}: rank among {r0["sampled_candidates"]:,} scored')
    plt.plot(reps, [r['exposure_extrapolated_bits'] for r in pts], 's:',
             color=color, mfc='none',
             label=f'{label}: extrapolated to |R| (not measured)')
  plt.axhline(r0['full_space_max_bits'], color='gray', ls=':',
              label=f"full-space maximum log2 |R| = "
              f"{r0['full_space_max_bits']:.2f}")
  plt.axhline(r0['sampled_ceiling_bits'], color='black', ls='-', lw=0.8,
              label=f"sampled ceiling log2 {r0['sampled_candidates']:,} = "
              f"{r0['sampled_ceiling_bits']:.2f}")
  plt.axhline(r0['chance_exposure_bits'], color='gray', ls='--',
              label='chance (~1.44)')
  plt.xscale('log')
  plt.xlabel('canary repetitions')
  plt.ylabel('exposure (bits)')
  plt.title('Canary exposure: sampled rank vs extrapolation', fontsize=10)
  plt.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.15),
             ncol=2)
  plt.tight_layout()
  plt.savefig(path, dpi=100)
  plt.close()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=300)
  ap.add_argument('--from_saved', action='store_true',
                  help='recompute the exposure fields from the saved JSON '
                  'ranks; no training')
  args = ap.parse_args()
  if args.from_saved:
    with open(JSON_PATH) as f:
      rows = recompute_rows(json.load(f))
  else:
    rows = train_rows(args.steps)
  os.makedirs(RESULTS, exist_ok=True)
  with open(JSON_PATH, 'w') as f:
    json.dump(rows, f, indent=2)
  with open(os.path.join(RESULTS, 'canary_exposure.csv'), 'w',
            newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  plot(rows, os.path.join(RESULTS, 'canary_exposure.png'))
  for r in rows:
    print(f"{'DP eps=%.2f' % r['pld_epsilon'] if r['dp'] else 'non-private'}"
          f"  x{r['repetitions']}: rank {r['sampled_rank']:g} of "
          f"{r['sampled_candidates']:,} scored -> "
          f"{r['exposure_rank_bits']:.2f} of {r['sampled_ceiling_bits']:.2f} "
          f"sampled bits; extrapolated {r['exposure_extrapolated_bits']:.2f} "
          f"of {r['full_space_max_bits']:.2f} (95% lower bound "
          f"{r['exposure_extrapolated_lower95_bits']:.2f})")


if __name__ == '__main__':
  main()
