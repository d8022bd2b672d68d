"""The end-of-run privacy report (JSON and readable text), from the ledger.

Every epsilon in it names its accountant, delta, sampling scheme and
neighbouring relation, and is labelled 'upper bound' or 'estimate'.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from dpjax.accounting import report as acc_report


def build_report(plan, ledger, sampler, final: dict[str, Any],
                 accountants=('pld', 'rdp', 'edgeworth'),
                 extra_rows=None, mechanism_notes=None) -> dict[str, Any]:
  """The report as a dict (what `report.json` holds)."""
  lmo = getattr(plan, 'mechanism', 'gaussian') == 'lmo'
  clip_ord = getattr(plan, 'clip_norm_ord', 2)
  out: dict[str, Any] = {
      'private': plan.enabled,
      'mechanism': {
          'noise': (('lmo' if lmo else 'gaussian') if plan.enabled
                    else 'none'),
          'noise_multiplier': plan.noise_multiplier,
          'noise_multiplier_means': (
              'LMO noise scale / L1 sensitivity of the clipped sum' if lmo
              else 'noise std / L2 sensitivity of the clipped sum'),
          'clip_norm': plan.clip_norm if plan.enabled else None,
          'clipping': f'flat per-example L{clip_ord}',
          'sampling': plan.sampling,
          'sampling_rate_q': (plan.q if plan.batch_schedule is None else
                              'variable: q_t = B_t / N per step, see phases'),
          'expected_batch_size': plan.expected_batch_size,
          'dataset_size': plan.dataset_size,
          'steps': ledger.steps,
          'neighbouring': plan.neighbouring,
          'unit': ledger.unit,
          'calibrated_for_epsilon': plan.calibrated_for_epsilon,
          'calibration_accountant': plan.accountant,
          'poisson_overflow_draws': getattr(sampler, 'overflows', 0),
      },
      'delta': plan.delta,
      'evaluation': final,
      'notes': [
          'Training-loss, batch-size and clip-fraction statistics are '
          'computed on private batches and are NOT privatized: they are '
          'logged only with train.log_nonprivate_stats=True, and are then '
          'not covered by epsilon.',
      ],
  }
  if mechanism_notes:
    out['mechanism_notes'] = mechanism_notes
    if mechanism_notes.get('formally_private') is False:
      out['formally_private'] = False
      out['notes'].insert(0, mechanism_notes.get('warning', 'NOT PRIVATE'))
  if plan.enabled:
    out['privacy'] = acc_report.privacy_report(
        ledger, plan.delta, accountants=tuple(accountants),
        extra_rows=extra_rows or ())
  else:
    out['privacy'] = None
    out['notes'].append('Non-private run: no privacy guarantee (epsilon = '
                        'infinity).')
  return out


def format_text(report: dict[str, Any]) -> str:
  m = report['mechanism']
  lines = ['dpjax privacy report', '=' * 20]
  if report.get('formally_private') is False:
    lines += ['*** ' + report['notes'][0] + ' ***', '']
  if report['private']:
    lines.append(acc_report.format_report(report['privacy']))
  else:
    lines.append('NON-PRIVATE RUN: epsilon = infinity (no guarantee).')
  lines += ['', 'Mechanism:'] + [f'  {k}: {v}' for k, v in m.items()]
  for k, v in report.get('mechanism_notes', {}).items():
    lines.append(f'  {k}: {v}')
  lines += ['', 'Held-out evaluation (loss in nats per token or example):']
  for k, v in report['evaluation'].items():
    if isinstance(v, list):
      lines.append(f'  {k} (empirical, not a guarantee):')
      lines += [f'    {item}' for item in v]
    else:
      lines.append(f'  {k}: {v}')
  lines += [''] + [f'Note: {n}' for n in report['notes']]
  return '\n'.join(lines) + '\n'


def write_report(workdir: str, plan, ledger, sampler, final,
                 accountants=('pld', 'rdp', 'edgeworth'),
                 extra_rows=None, mechanism_notes=None) -> dict[str, Any]:
  """Writes `privacy_report.json` and `privacy_report.txt`; returns the dict."""
  report = build_report(plan, ledger, sampler, final, accountants, extra_rows,
                        mechanism_notes)
  _atomic_write(os.path.join(workdir, 'privacy_report.json'),
                json.dumps(report, indent=2, default=_default))
  text = format_text(report)
  _atomic_write(os.path.join(workdir, 'privacy_report.txt'), text)
  print(text, flush=True)
  return report


def _default(o):
  if dataclasses.is_dataclass(o):
    return dataclasses.asdict(o)
  try:
    return float(o)
  except (TypeError, ValueError):
    return str(o)


def _atomic_write(path: str, text: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
