"""EW-Tune's noise-multiplier table (Behnia et al. 2022; ALGORITHMS.md §3.4).

    .venv/bin/python experiments/ewtune_sigma_table.py

For SST-2, QNLI, QQP and MNLI (batch 2000, 20 epochs: q = 2000/N and
T = 20 * floor(N / 2000)), target eps = 8 and delta in {1e-5, 1e-6}, it
calibrates sigma with `dpjax.accounting.calibration.calibrate_sigma` under

* 'edgeworth' (order 1, remove direction, point estimate: EW-Tune's choice),
* 'pld' (tight numerical upper bound; stands in for EW-Tune's PRV accountant),
* 'rdp' (dpjax's default: improved conversion, default orders), and
* 'rdp' as EW-Tune ran it (classic conversion, orders 2, 2.1, ..., 31.9),

and reports the noise reduction of the Edgeworth sigma and the PLD epsilon at
the Edgeworth sigma: the Edgeworth number is an estimate, and at its sigma the
tight bound is above 8. The "logs" columns are the sigmas in EW-Tune's
training logs (§3.4; SST-2 at delta = 1e-6 was not run there).

Writes experiments/results/ewtune_sigma_table.{csv,md}.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from dpjax.accounting import get_accountant  # noqa: E402
from dpjax.accounting.calibration import calibrate_sigma  # noqa: E402
from dpjax.accounting.ledger import Phase  # noqa: E402

TASKS = {'SST-2': 67349, 'QNLI': 104743, 'QQP': 363849, 'MNLI': 392702}
BATCH, EPOCHS, TARGET_EPS = 2000, 20, 8.0
DELTAS = (1e-5, 1e-6)
# (sigma_EW, sigma_PRV, sigma_RDP) from EW-Tune's logs (ALGORITHMS.md §3.4).
LOGS = {
    ('SST-2', 1e-5): (0.7865, 0.8170, 0.8775),
    ('QNLI', 1e-5): (0.7110, 0.7295, 0.7930),
    ('QNLI', 1e-6): (0.7395, 0.7680, 0.8290),
    ('QQP', 1e-5): (0.5635, 0.5870, 0.6325),
    ('QQP', 1e-6): (0.5800, 0.6135, 0.6575),
    ('MNLI', 1e-5): (0.5570, 0.5810, 0.6255),
    ('MNLI', 1e-6): (0.5730, 0.6070, 0.6500),
}
EWTUNE_RDP_ORDERS = tuple(float(a) for a in np.round(np.arange(2, 32, 0.1), 1))
RESULTS = os.path.join(os.path.dirname(__file__), 'results')


def pct(a: float, b: float) -> float:
  return 100.0 * (a - b) / b


def run(tasks, deltas) -> list[dict]:
  accs = {
      'edgeworth': get_accountant('edgeworth'),
      'pld': get_accountant('pld'),
      'rdp': get_accountant('rdp'),
      'rdp_ewtune': get_accountant('rdp', orders=EWTUNE_RDP_ORDERS,
                                   conversion='classic'),
  }
  rows = []
  for task in tasks:
    n = TASKS[task]
    q, steps = BATCH / n, EPOCHS * (n // BATCH)
    for delta in deltas:
      t0 = time.perf_counter()
      sig = {name: calibrate_sigma(acc, target_epsilon=TARGET_EPS, delta=delta,
                                   q=q, steps=steps)
             for name, acc in accs.items()}
      at_ew = [Phase(q, sig['edgeworth'], steps)]
      logs = LOGS.get((task, delta), (None, None, None))
      row = {
          'task': task, 'N': n, 'q': round(q, 6), 'steps': steps,
          'delta': delta, 'target_eps': TARGET_EPS,
          'sigma_edgeworth': sig['edgeworth'], 'sigma_pld': sig['pld'],
          'sigma_rdp': sig['rdp'], 'sigma_rdp_ewtune': sig['rdp_ewtune'],
          'ew_vs_pld_pct': pct(sig['edgeworth'], sig['pld']),
          'ew_vs_rdp_pct': pct(sig['edgeworth'], sig['rdp']),
          'ew_vs_rdp_ewtune_pct': pct(sig['edgeworth'], sig['rdp_ewtune']),
          'eps_pld_at_sigma_ew': float(accs['pld'].epsilon(at_ew, delta)),
          'eps_edgeworth_at_sigma_ew': float(
              accs['edgeworth'].epsilon(at_ew, delta)),
          'logs_sigma_ew': logs[0], 'logs_sigma_prv': logs[1],
          'logs_sigma_rdp': logs[2],
          'seconds': time.perf_counter() - t0,
      }
      rows.append(row)
      print({k: (round(v, 4) if isinstance(v, float) else v)
             for k, v in row.items()}, flush=True)
  return rows


def fmt(v, nd=4):
  if v is None:
    return '–'
  if isinstance(v, float):
    return f'{v:.{nd}f}'
  return str(v)


def write(rows: list[dict], out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'ewtune_sigma_table.csv'), 'w',
            newline='') as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  lines = [
      '# EW-Tune noise multipliers for eps = 8 (batch 2000, 20 epochs)',
      '',
      'Produced by `experiments/ewtune_sigma_table.py` (dpjax accountants, '
      '`calibrate_sigma` to rtol 1e-4). sigma_EW: Edgeworth order 1, remove '
      'direction, point estimate (EW-Tune). PLD: tight upper bound '
      '(add/remove). RDP: dpjax default (improved conversion); RDP (EW-Tune): '
      'classic conversion, orders 2..31.9. "logs": EW-Tune training logs '
      '(ALGORITHMS.md §3.4; the PRV column there is their PRV accountant). '
      'Reductions are (sigma_EW - sigma_X) / sigma_X.',
      '',
      '| task | delta | q | T | σ_EW | σ_PLD | σ_RDP | σ_RDP (EW-Tune) | '
      'EW vs PLD | EW vs RDP (EW-Tune) | ε_PLD at σ_EW | logs σ_EW / σ_PRV / '
      'σ_RDP |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in rows:
    logs = ' / '.join(fmt(r[k]) for k in ('logs_sigma_ew', 'logs_sigma_prv',
                                          'logs_sigma_rdp'))
    lines.append(
        f"| {r['task']} | {r['delta']:.0e} | {r['q']:.5f} | {r['steps']} | "
        f"{fmt(r['sigma_edgeworth'])} | {fmt(r['sigma_pld'])} | "
        f"{fmt(r['sigma_rdp'])} | {fmt(r['sigma_rdp_ewtune'])} | "
        f"{r['ew_vs_pld_pct']:+.1f}% | {r['ew_vs_rdp_ewtune_pct']:+.1f}% | "
        f"{fmt(r['eps_pld_at_sigma_ew'], 3)} | {logs} |")
  lines += [
      '',
      'The Edgeworth sigma is calibrated on an estimate: at that sigma the '
      'tight PLD bound exceeds the target eps = 8 (column ε_PLD at σ_EW), '
      'so part of the "noise reduction" is the estimate understating eps.',
      'EW-Tune\'s "up to 5.6%" is its EW vs PRV figure for MNLI at '
      'delta = 1e-6 (logs: 0.5730 vs 0.6070); against the tight PLD '
      'accountant the same comparison is the "EW vs PLD" column. σ_EW and '
      'σ_RDP (EW-Tune) reproduce the logs to EW-Tune\'s search grid (5e-4).',
      '']
  with open(os.path.join(out_dir, 'ewtune_sigma_table.md'), 'w') as f:
    f.write('\n'.join(lines))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--tasks', nargs='+', default=list(TASKS))
  ap.add_argument('--deltas', nargs='+', type=float, default=list(DELTAS))
  ap.add_argument('--out', default=RESULTS)
  args = ap.parse_args(argv)
  rows = run(args.tasks, args.deltas)
  write(rows, args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
