"""LMO-DP's parameter table with paper-faithful and sound accounting.

    .venv/bin/python experiments/lmo_table.py

Part 1 (per step, delta = 1e-10, ALGORITHMS.md §5.4 and §5.9a): for the
artifact's four parameter files, the artifact's per-step eps_LMO (reproduced;
reference values from §5.4), the MGF-RDP restricted to its domain (the
corrected values of §5.9a), the pure-DP bound, the sound per-step eps (the
minimum), the exact pure-DP level of one coordinate, the sound eps of the
noise the artifact actually drew (its Exponential used scale lam, §5.9b), the
usefulness and mean noise magnitudes.

Part 2 (overall, §5.5): batch 2048, 6 epochs, delta = 1e-10 on SST-2, QNLI,
QQP, MNLI: the artifact's "overall eps" (Gaussian equivalence, reproduced;
reference values from §5.5) beside the sound composed eps of the LMO
mechanism (Poisson subsampling, add/remove) if its L1 sensitivity were 1
(L1 clipping at the noise scale), and with the L1 sensitivity that L2
clipping at C = 1 implies for RoBERTa-large (d = 355,359,744 trained
coordinates assumed: sqrt(d) ~ 18,851).

Part 3: the paper's grid search under the artifact's accounting and under the
sound accounting, and the fast search, for the same four per-step thresholds.

Writes experiments/results/lmo_table.{csv,md}.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys

import numpy as np
from scipy import integrate

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))

from dpjax import lmo_search  # noqa: E402
from dpjax.accounting import lmo  # noqa: E402

RESULTS = os.path.join(os.path.dirname(__file__), 'results')
DELTA = 1e-10
ARTIFACT_EPS = {0.3: 0.2932, 0.7: 0.6932, 2.0: 1.9281, 3.0: 2.9965}   # §5.4
CORRECTED = {0.3: 1.31, 0.7: 1.71, 2.0: 4.16, 3.0: 5.12}             # §5.9a
TASKS = {'SST-2': 67349, 'QNLI': 104743, 'QQP': 363849, 'MNLI': 392702}
OVERALL_REF = {   # §5.5
    0.3: (0.157, 0.150, 0.139, 0.139), 0.7: (0.261, 0.217, 0.158, 0.157),
    2.0: (0.823, 0.654, 0.335, 0.322), 3.0: (1.347, 1.061, 0.555, 0.536)}
ROBERTA_LARGE_DIM = 355_359_744


def mean_abs_noise(p: lmo.LMOParams) -> float:
  """E|Laplace(1/eps')| = E[1/eps'] = int_0^inf M(-s) ds."""
  return integrate.quad(lambda s: float(p.mgf(-s)), 0, np.inf, limit=200)[0]


def per_step_rows() -> list[dict]:
  rows = []
  for eps0, p in lmo.ARTIFACT_PARAMS.items():
    drawn = dataclasses.replace(p, lam=1.0 / p.lam)   # scale lam = rate 1/lam
    faithful, order = lmo.epsilon_per_step_paper_faithful_not_private(p, DELTA)
    rows.append({
        'eps0': eps0, **{k: v for k, v in p.to_dict().items()},
        'faithful_eps': faithful, 'faithful_order': order,
        'artifact_eps_ref': ARTIFACT_EPS[eps0],
        'sound_mgf_rdp_eps': lmo.epsilon_per_step_sound(p, DELTA,
                                                        method='mgf_rdp'),
        'corrected_ref': CORRECTED[eps0],
        'sound_pure_eps': lmo.pure_dp_epsilon(p),
        'sound_eps': lmo.epsilon_per_step_sound(p, DELTA),
        'exact_pure_one_coordinate': lmo.pure_dp_epsilon_one_coordinate(p, 1.0),
        'sound_eps_as_drawn': lmo.epsilon_per_step_sound(drawn, DELTA),
        'usefulness': p.usefulness(),
        'mean_abs_noise': mean_abs_noise(p),
        'mean_abs_noise_as_drawn': mean_abs_noise(drawn),
        'mean_abs_gaussian': lmo.gaussian_sigma_paper_faithful(eps0, DELTA) *
                             math.sqrt(2 / math.pi),
    })
  return rows


def overall_rows() -> list[dict]:
  rows = []
  r_l2 = lmo.l1_sensitivity_of_l2_clip(1.0, ROBERTA_LARGE_DIM)
  for eps0, p in lmo.ARTIFACT_PARAMS.items():
    for (task, n), ref in zip(TASKS.items(), OVERALL_REF[eps0]):
      q, steps = 2048 / n, 6 * (n // 2048)
      rows.append({
          'eps0': eps0, 'task': task, 'q': q, 'steps': steps,
          'faithful_overall_eps': lmo.epsilon_paper_faithful_not_private(
              eps0, q=q, steps=steps, delta=DELTA),
          'faithful_ref': ref,
          'sound_eps_l1_sensitivity_1': lmo.epsilon_sound(
              [lmo.LMOPhase(p, q, steps)], DELTA),
          'sound_eps_l2_clip_roberta_large': lmo.epsilon_sound(
              [lmo.LMOPhase(p, q, steps, r_l2)], DELTA),
      })
  return rows


def search_rows() -> list[dict]:
  """The paper's grid under both accountings, and the fast search."""
  rows = []
  for eps0 in lmo.ARTIFACT_PARAMS:
    faithful = lmo_search.grid_search(lmo_search.Target(
        epsilon=eps0, delta=DELTA, accounting='paper_faithful_not_private'))
    grid = lmo_search.grid_search(lmo_search.Target(epsilon=eps0, delta=DELTA))
    fast = lmo_search.fast_search(lmo_search.Target(epsilon=eps0, delta=DELTA))
    lower = lmo.monte_carlo_epsilon_lower(
        faithful.params, q=1.0, steps=1, delta=1e-3,
        rng=np.random.default_rng(0), num_samples=100_000)
    for name, r in (('grid, paper-faithful', faithful), ('grid, sound', grid),
                    ('fast, sound', fast)):
      rows.append({
          'eps0': eps0, 'search': name, 'params': r.params.to_dict(),
          'claimed_eps': r.epsilon,
          'sound_eps': lmo.epsilon_per_step_sound(r.params, DELTA),
          'mc_lower_eps_delta_1e-3': (lower if name.endswith('faithful')
                                      else None),
          'usefulness': r.usefulness, 'evaluations': r.evaluations,
          'seconds': r.seconds})
  return rows


def f(v, nd=4):
  return f'{v:.{nd}f}' if isinstance(v, float) and math.isfinite(v) else (
      '∞' if isinstance(v, float) else str(v))


def write(per_step, overall, search, out_dir):
  os.makedirs(out_dir, exist_ok=True)
  fields = sorted({k for r in per_step + overall + search for k in r},
                  key=lambda k: ([*per_step[0], *overall[0],
                                  *search[0]]).index(k))
  with open(os.path.join(out_dir, 'lmo_table.csv'), 'w', newline='') as fh:
    w = csv.DictWriter(fh, fieldnames=['table'] + fields)
    w.writeheader()
    for r in per_step:
      w.writerow({'table': 'per_step', **r})
    for r in overall:
      w.writerow({'table': 'overall', **r})
    for r in search:
      w.writerow({'table': 'search', **r})
  lines = [
      '# LMO-DP: the artifact\'s parameters, paper-faithful vs sound accounting',
      '',
      'Produced by `experiments/lmo_table.py` with `dpjax.accounting.lmo`. '
      'delta = 1e-10. "faithful" = the artifact\'s pipeline (not a privacy '
      'guarantee); "ref" = the values in ALGORITHMS.md (§5.4, §5.9a, §5.5). '
      'Sound numbers are upper bounds under add/remove with the stated L1 '
      'sensitivity (see the module docstring of `dpjax/accounting/lmo.py`).',
      '',
      '## Per step (no subsampling, L1 sensitivity 1)',
      '',
      '| ε0 | a1 a3 a4 | θ k λ | [u_a,u_b] | faithful ε (α) | ref | '
      'MGF-RDP ε (domain) | ref §5.9a | pure-DP ε | sound ε | exact ε, 1 coord. '
      '| sound ε of noise as drawn | usefulness | E\\|noise\\| (as drawn) | '
      'E\\|Gauss σ0\\| |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in per_step:
    lines.append(
        f"| {r['eps0']} | {r['a1']} {r['a3']} {r['a4']} | {r['theta']} {r['k']} "
        f"{r['lam']} | [{r['u_a']:g},{r['u_b']:g}] | {f(r['faithful_eps'])} "
        f"({r['faithful_order']:.0f}) | {r['artifact_eps_ref']} | "
        f"{f(r['sound_mgf_rdp_eps'])} | {r['corrected_ref']} | "
        f"{f(r['sound_pure_eps'])} | {f(r['sound_eps'])} | "
        f"{f(r['exact_pure_one_coordinate'])} | {f(r['sound_eps_as_drawn'])} | "
        f"{f(r['usefulness'], 3)} | {f(r['mean_abs_noise'], 2)} "
        f"({f(r['mean_abs_noise_as_drawn'], 2)}) | "
        f"{f(r['mean_abs_gaussian'], 2)} |")
  lines += [
      '',
      'The per-coordinate LMO noise is pure DP: the likelihood ratio of its '
      'density E[ε\' e^{-ε\'|x|}]/2 peaks at x = 0, giving ε = '
      'log(E[ε\']/E[ε\' e^{-ε\'}]) for one coordinate (exact column) and at '
      'most E[ε\'^2]/E[ε\'] for any vector shift of L1 norm 1 (pure-DP column). '
      'That bound is below both the MGF-RDP value and the artifact\'s '
      'number: per step, at L1 sensitivity 1, the artifact\'s ε is not '
      'violated. What breaks the artifact\'s claims is elsewhere: its sampler '
      'drew smaller noise than it accounted for (§5.9b; "as drawn" columns), '
      'L2 clipping does not give L1 sensitivity 1 (§5.9c), and its overall ε '
      'is that of a different (Gaussian) mechanism (below).',
      '',
      '## Overall (batch 2048, 6 epochs, Poisson rate q = 2048/N)',
      '',
      '| ε0 | task | q | T | faithful overall ε | ref §5.5 | sound ε, L1 sens. 1 '
      '| sound ε, L2 clip C=1 (RoBERTa-large) |',
      '|---|---|---|---|---|---|---|---|',
  ]
  for r in overall:
    lines.append(
        f"| {r['eps0']} | {r['task']} | {r['q']:.5f} | {r['steps']} | "
        f"{f(r['faithful_overall_eps'], 3)} | {r['faithful_ref']} | "
        f"{f(r['sound_eps_l1_sensitivity_1'], 3)} | "
        f"{r['sound_eps_l2_clip_roberta_large']:.3g} |")
  lines += [
      '',
      'With L2 clipping at C = 1 (the artifact\'s setting) the L1 sensitivity '
      f'is sqrt(d) = {math.sqrt(ROBERTA_LARGE_DIM):,.0f} for d = '
      f'{ROBERTA_LARGE_DIM:,} coordinates; the last column is then the sound '
      'bound (the MGF-RDP has no valid order, only the pure-DP route remains).',
      '',
      '## The search (`python -m dpjax.lmo_search`), per-step threshold ε0, '
      'delta = 1e-10',
      '',
      '| ε0 | search | a1 k θ a3 λ a4 [u_a,u_b] | claimed ε | sound ε | '
      'MC lower ε (δ=1e-3) | usefulness | evaluations | seconds |',
      '|---|---|---|---|---|---|---|---|---|',
  ]
  for r in search:
    p = r['params']
    ps = (f"{p['a1']:.3g} {p['k']:g} {p['theta']:g} {p['a3']:.3g} "
          f"{p['lam']:g} {p['a4']:.3g} [{p['u_a']:g},{p['u_b']:g}]")
    mc = r['mc_lower_eps_delta_1e-3']
    lines.append(
        f"| {r['eps0']} | {r['search']} | {ps} | {f(r['claimed_eps'])} | "
        f"{f(r['sound_eps'])} | {f(mc, 2) if mc is not None else ''} | "
        f"{f(r['usefulness'])} | {r['evaluations']} | {r['seconds']:.2f} |")
  lines += [
      '',
      'The artifact\'s search (MGF check at α = 2 only, spurious RDP values '
      'past the MGF domain) selects parameters whose claimed per-step ε is '
      'contradicted by a Monte-Carlo lower estimate for a single pair of '
      'neighbouring inputs. Under the sound accounting the grid\'s best '
      'usefulness is much lower; the fast search (frontier walk plus '
      'continuous refinement) matches or beats it with ~8x fewer '
      'evaluations.',
      '']
  with open(os.path.join(out_dir, 'lmo_table.md'), 'w') as fh:
    fh.write('\n'.join(lines))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--out', default=RESULTS)
  args = ap.parse_args(argv)
  per_step, overall, search = per_step_rows(), overall_rows(), search_rows()
  for r in per_step + overall + search:
    print({k: (round(v, 4) if isinstance(v, float) else v)
           for k, v in r.items()})
  write(per_step, overall, search, args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
