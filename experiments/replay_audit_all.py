"""The neighbouring-dataset replay check on every shipped config.

  python experiments/replay_audit_all.py [--configs debug,quickstart,...]
      [--reuse DIR]   # summarize `--json` files already written there

Runs `python -m dpjax.audit replay --config=configs/<name>.py --json=...` for
each config (one subprocess each; the big pretrained configs take minutes on
two CPU cores) and writes experiments/results/replay_audit.{json,md}: per
config, pass/fail, the worst ratio ||S(D) - S(D')|| / sensitivity and the
wall time. Configs that cannot run here (no local weights, or a delta the
trainer itself refuses) are listed with the reason.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'experiments', 'results')


def shipped() -> list[str]:
  return sorted(os.path.basename(p)[:-3]
                for p in glob.glob(os.path.join(ROOT, 'configs', '*.py'))
                if not p.endswith('__init__.py'))


def run(name: str, out_dir: str) -> dict:
  path = os.path.join(out_dir, f'{name}.json')
  t = time.time()
  proc = subprocess.run(
      [sys.executable, '-m', 'dpjax.audit', 'replay',
       f'--config=configs/{name}.py', f'--json={path}'],
      cwd=ROOT, capture_output=True, text=True, check=False)
  with open(os.path.join(out_dir, f'{name}.err'), 'w') as f:
    f.write(proc.stderr)
  return {'rc': proc.returncode, 'wall_seconds': time.time() - t}


def summarize(name: str, out_dir: str, rc: int | None,
              wall: float | None) -> dict:
  path = os.path.join(out_dir, f'{name}.json')
  if not os.path.exists(path):
    err = ''
    err_path = os.path.join(out_dir, f'{name}.err')
    if os.path.exists(err_path):
      lines = [l for l in open(err_path).read().splitlines() if l.strip()]
      err = lines[-1] if lines else ''
    return {'config': name, 'ran': False, 'exit_code': rc, 'reason': err}
  d = json.load(open(path))
  rep = d['report']
  return {'config': name, 'ran': True, 'passed': d['passed'],
          'exit_code': rc, 'path': rep['path'], 'norm': rep['norm'],
          'sensitivity': rep['sensitivity'],
          'max_ratio': rep['max_ratio'],
          'max_count_ratio': rep.get('max_count_ratio'),
          'cases': len(rep['cases']), 'violations': rep['violations'],
          'sum_dtype': rep['sum_dtype'],
          'seconds': wall if wall is not None else d.get('total_seconds')}


NOTES = """
Not runnable here: `default` is the base config (its full corpus needs dp.delta < 1/N; the trainer refuses
it the same way: with --config.dp.delta=1e-6 the check passes, worst ratio 1.000000328); the two GPU
configs need local Qwen2.5-0.5B / BitNet-2B folders. Proxies with each GPU config's DP, DP-Adam-AC and
batch settings (B_max 384) on a tiny random-init model (--config.model.init=random and tiny shapes):
Qwen2 proxy PASS, worst ratio 1.00000046; BitNet proxy (14k LoRA parameters, 383 records) FAILS the strict
tolerance at 1.00000118. That excess is float32 summation order, not a coupling bug: the residual
||S(D) - S(D') - clip(g_r)|| is 2.45e-5, about 1.5 * 2^-24 * ||S||, nearly orthogonal to the removed
record; it passes with --rounding_allowance=1 (one 2^-24 ||S|| / C of slack; the planted bfloat16
rounding exceeds that by 1e3-1e4x). Large batches on small models approach the 1e-6 tolerance.
"""


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--configs', default=','.join(shipped()))
  ap.add_argument('--reuse', default='')
  ap.add_argument('--out_dir', default='/tmp/dpjax_replay_audit')
  args = ap.parse_args()
  names = [n for n in args.configs.split(',') if n]
  out_dir = args.reuse or args.out_dir
  os.makedirs(out_dir, exist_ok=True)
  rows = []
  for name in names:
    rc = wall = None
    if not args.reuse:
      r = run(name, out_dir)
      rc, wall = r['rc'], r['wall_seconds']
    rows.append(summarize(name, out_dir, rc, wall))
    print(json.dumps(rows[-1]), flush=True)
  with open(os.path.join(RESULTS, 'replay_audit.json'), 'w') as f:
    json.dump(rows, f, indent=2)
  lines = ['# Neighbouring-dataset replay check on the shipped configs', '',
           '`python -m dpjax.audit replay --config=configs/<name>.py` '
           '(tolerance 1e-6; 2 CPU cores). Ratio: worst '
           '||S(D) - S(D\')|| / sensitivity over all removals and additions.',
           '', '| config | path | result | worst ratio | cases | time (s) |',
           '|---|---|---|---|---|---|']
  for r in rows:
    if r['ran']:
      lines.append(f"| {r['config']} | {r['path']} | "
                   f"{'PASS' if r['passed'] else 'FAIL'} | "
                   f"{r['max_ratio']:.9f} | {r['cases']} | "
                   f"{r['seconds']:.0f} |")
    else:
      lines.append(f"| {r['config']} | - | not run: {r['reason']} | - | - "
                   '| - |')
  with open(os.path.join(RESULTS, 'replay_audit.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n' + NOTES)


if __name__ == '__main__':
  main()
