"""Command line: `python -m dpjax.accounting {epsilon,delta,calibrate,report}`.

Examples:
  python -m dpjax.accounting epsilon --q 0.01 --sigma 1.0 --steps 10000 \
      --delta 1e-5
  python -m dpjax.accounting epsilon --phase 0.01 1.0 500 \
      --phase 0.02 1.2 300 --delta 1e-6 --accountant all --json
  python -m dpjax.accounting calibrate --target-epsilon 3 --delta 1e-5 \
      --q 0.01 --steps 10000 --json
  python -m dpjax.accounting calibrate --solve-for steps --target-epsilon 2 \
      --delta 1e-6 --q 0.1 --sigma 3
  python -m dpjax.accounting report --ledger workdir/privacy_ledger.json \
      --delta 1e-5

Pure NumPy/SciPy (no JAX import): usable without training with dpjax.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any, Sequence

from dpjax.accounting import ACCOUNTANTS
from dpjax.accounting import calibration
from dpjax.accounting import get_accountant
from dpjax.accounting import report as report_lib
from dpjax.accounting.ledger import Phase
from dpjax.accounting.ledger import PrivacyLedger

NEIGHBOURING = ('add_remove', 'replace_one')


def _json_float(x: float) -> Any:
  """JSON has no inf/nan: they are written as the strings 'inf', 'nan'."""
  if not math.isfinite(x):
    return 'nan' if math.isnan(x) else ('inf' if x > 0 else '-inf')
  return x


def _accountant_names(name: str) -> list[str]:
  return list(ACCOUNTANTS) if name == 'all' else [name]


def _make(name: str, args) -> Any:
  opts = {}
  if name == 'pld' and args.pld_interval is not None:
    opts['value_discretization_interval'] = args.pld_interval
  if name == 'edgeworth' and args.edgeworth_order is not None:
    opts['order'] = args.edgeworth_order
  if name == 'rdp' and args.rdp_conversion is not None:
    opts['conversion'] = args.rdp_conversion
  return get_accountant(name, **opts)


def _phases(args, parser) -> list[Phase]:
  phases: list[Phase] = []
  if args.schedule:
    with open(args.schedule) as f:
      data = json.load(f)
    if isinstance(data, dict):
      data = data.get('phases', [])
    phases += [Phase(float(p['q']), float(p['sigma']), int(p['count']))
               for p in data]
  for q, sigma, count in args.phase or []:
    phases.append(Phase(float(q), float(sigma), int(count)))
  single = (args.q, args.sigma, args.steps)
  if any(v is not None for v in single):
    if any(v is None for v in single):
      parser.error('--q, --sigma and --steps go together.')
    phases.append(Phase(args.q, args.sigma, args.steps))
  if not phases:
    parser.error('give --q/--sigma/--steps, --phase Q SIGMA COUNT (repeatable)'
                 ' or --schedule FILE.json.')
  return phases


def _add_common(p: argparse.ArgumentParser, accountant_all: bool) -> None:
  p.add_argument('--accountant', default='pld',
                 choices=list(ACCOUNTANTS) + (['all'] if accountant_all
                                              else []),
                 help="accountant (default 'pld', the tight upper bound; "
                      "'edgeworth' is an estimate, not a bound).")
  p.add_argument('--neighbouring', default='add_remove', choices=NEIGHBOURING)
  p.add_argument('--json', action='store_true', help='print JSON.')
  p.add_argument('--pld-interval', type=float, default=None,
                 help='PLD value discretization interval (default 1e-4).')
  p.add_argument('--edgeworth-order', type=int, default=None,
                 choices=(1, 2, 3))
  p.add_argument('--rdp-conversion', default=None,
                 choices=('improved', 'classic'))


def _add_phases(p: argparse.ArgumentParser) -> None:
  p.add_argument('--q', type=float, help='Poisson sampling rate in (0, 1].')
  p.add_argument('--sigma', type=float, help='noise multiplier (>= 0).')
  p.add_argument('--steps', type=int, help='number of steps (>= 0).')
  p.add_argument('--phase', nargs=3, action='append',
                 metavar=('Q', 'SIGMA', 'COUNT'),
                 help='a phase of COUNT identical steps; repeatable.')
  p.add_argument('--schedule', help='JSON file: a list of {q, sigma, count} '
                 '(or a ledger dict with "phases").')


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m dpjax.accounting',
      description='Differential privacy accounting for DP-SGD-style training '
                  '(Poisson-subsampled Gaussian): epsilon, delta, noise '
                  'calibration and reports, under PLD, RDP or Edgeworth.')
  sub = parser.add_subparsers(dest='command', required=True)

  p = sub.add_parser('epsilon', help='epsilon for given steps and delta.')
  _add_phases(p)
  p.add_argument('--delta', type=float, required=True)
  _add_common(p, accountant_all=True)

  p = sub.add_parser('delta', help='delta for given steps and epsilon.')
  _add_phases(p)
  p.add_argument('--epsilon', type=float, required=True)
  _add_common(p, accountant_all=True)

  p = sub.add_parser('calibrate',
                     help='noise multiplier (or steps, q, batch size) for a '
                          'target epsilon; the result is verified.')
  p.add_argument('--solve-for', default='sigma',
                 choices=('sigma', 'steps', 'q', 'batch-size'))
  p.add_argument('--target-epsilon', type=float, required=True)
  p.add_argument('--delta', type=float, required=True)
  p.add_argument('--q', type=float)
  p.add_argument('--sigma', type=float)
  p.add_argument('--steps', type=int)
  p.add_argument('--dataset-size', type=int,
                 help='N (for --solve-for batch-size, or with --batch-size '
                      'to give q = batch / N).')
  p.add_argument('--batch-size', type=int, help='expected batch size.')
  _add_common(p, accountant_all=False)

  p = sub.add_parser('report', help='privacy report of a saved ledger.')
  p.add_argument('--ledger', required=True,
                 help='JSON file written from PrivacyLedger.to_dict().')
  p.add_argument('--delta', type=float, required=True)
  p.add_argument('--accountants', default='pld,rdp,edgeworth')
  p.add_argument('--json', action='store_true')
  return parser


# Every phase is a subsampled Gaussian with Poisson rate q (q = 1: no
# subsampling); printed with every number so no epsilon lacks its scheme.
_SAMPLING = 'poisson (rate q per step; q = 1 means every record, every step)'


def _cmd_epsilon(args, parser, what: str) -> dict:
  phases = _phases(args, parser)
  rows = []
  for name in _accountant_names(args.accountant):
    acc = _make(name, args)
    t = time.perf_counter()
    if what == 'epsilon':
      value = acc.epsilon(phases, args.delta, args.neighbouring)
      row = {'epsilon': value, 'delta': args.delta}
    else:
      value = acc.delta(phases, args.epsilon, args.neighbouring)
      row = {'epsilon': args.epsilon, 'delta': value}
    row.update({'accountant': acc.name,
                'kind': 'upper bound' if acc.is_upper_bound else 'estimate',
                'neighbouring': args.neighbouring, 'sampling': _SAMPLING,
                'seconds': time.perf_counter() - t,
                'details': acc.describe()})
    rows.append(row)
  out = dict(rows[0]) if len(rows) == 1 else {'results': rows}
  out['phases'] = [{'q': p.q, 'sigma': p.sigma, 'count': p.count}
                   for p in phases]
  return out


def _cmd_calibrate(args, parser) -> dict:
  acc = _make(args.accountant, args)
  q = args.q
  if q is None and args.batch_size and args.dataset_size:
    q = args.batch_size / args.dataset_size
  kw = dict(target_epsilon=args.target_epsilon, delta=args.delta,
            neighbouring=args.neighbouring)
  out: dict[str, Any] = {}
  if args.solve_for == 'sigma':
    if q is None or args.steps is None:
      parser.error('--solve-for sigma needs --q (or --batch-size and '
                   '--dataset-size) and --steps.')
    sigma = calibration.calibrate_sigma(acc, q=q, steps=args.steps, **kw)
    steps = args.steps
  elif args.solve_for == 'steps':
    if q is None or args.sigma is None:
      parser.error('--solve-for steps needs --q and --sigma.')
    sigma = args.sigma
    steps = calibration.calibrate_steps(acc, q=q, sigma=sigma, **kw)
  else:
    if args.sigma is None or args.steps is None:
      parser.error(f'--solve-for {args.solve_for} needs --sigma and --steps.')
    sigma, steps = args.sigma, args.steps
    if args.solve_for == 'batch-size':
      if not args.dataset_size:
        parser.error('--solve-for batch-size needs --dataset-size.')
      b = calibration.calibrate_batch_size(
          acc, sigma=sigma, steps=steps, dataset_size=args.dataset_size, **kw)
      out['batch_size'] = b
      q = b / args.dataset_size
    else:
      q = calibration.calibrate_sampling_rate(acc, sigma=sigma, steps=steps,
                                              **kw)
  eps = acc.epsilon([Phase(q, sigma, steps)], args.delta, args.neighbouring)
  out.update({'sigma': sigma, 'q': q, 'steps': steps, 'epsilon': eps,
              'target_epsilon': args.target_epsilon, 'delta': args.delta,
              'accountant': acc.name,
              'kind': 'upper bound' if acc.is_upper_bound else 'estimate',
              'neighbouring': args.neighbouring, 'sampling': _SAMPLING,
              'details': acc.describe()})
  return out


def _print_text(out: dict, command: str) -> None:
  rows = out.get('results', [out])
  if command == 'calibrate':
    extra = (f"  batch_size={out['batch_size']}" if 'batch_size' in out
             else '')
    print(f"sigma={out['sigma']:.6g}  q={out['q']:.6g}  steps={out['steps']}"
          f"{extra}  ->  epsilon={out['epsilon']:.7g} <= "
          f"{out['target_epsilon']:g} at delta={out['delta']:g} "
          f"[{out['accountant']}, {out['kind']}, {out['neighbouring']}, "
          f"{_SAMPLING}]")
    return
  for r in rows:
    print(f"{r['accountant']:<10} epsilon={r['epsilon']:.6g}  "
          f"delta={r['delta']:.6g}  ({r['kind']}, {r['neighbouring']}, "
          f"{_SAMPLING})")
  if any(r['kind'] == 'estimate' for r in rows):
    print('note: the Edgeworth value is an estimate, not a bound.')


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    if args.command in ('epsilon', 'delta'):
      out = _cmd_epsilon(args, parser, args.command)
    elif args.command == 'calibrate':
      out = _cmd_calibrate(args, parser)
    else:
      with open(args.ledger) as f:
        ledger = PrivacyLedger.from_dict(json.load(f))
      accountants = tuple(args.accountants.split(','))
      if ledger.mechanism == 'lmo':  # the ledger names its own accounting
        from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
        accountants = (lmo.LMOAccountant(
            lmo.LMOParams(**ledger.mechanism_params)),)
      rep = report_lib.privacy_report(ledger, args.delta,
                                      accountants=accountants)
      if args.json:
        print(json.dumps(_sanitize(rep), indent=1))
      else:
        print(report_lib.format_report(rep))
      return 0
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.json:
    print(json.dumps(_sanitize(out), indent=1))
  else:
    _print_text(out, args.command)
  return 0


def _sanitize(obj):
  if isinstance(obj, dict):
    return {k: _sanitize(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_sanitize(v) for v in obj]
  if isinstance(obj, float):
    return _json_float(obj)
  if hasattr(obj, 'item'):  # NumPy scalars
    return _sanitize(obj.item())
  return obj
