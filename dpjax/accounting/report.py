"""The privacy report of a run: epsilon under every accountant, one table.

Pure NumPy/SciPy.

Formal guarantees:
  Rows of kind 'upper bound' (PLD, RDP) computed from
  `ledger.accountable_phases()` are DP guarantees for the recorded mechanisms,
  provided the ledger's contract holds (see `ledger.py`). Rows of kind
  'estimate' (Edgeworth) are not guarantees. Rows in the set labelled "not a
  guarantee" (shuffled batches accounted as if Poisson-sampled) are the
  commonly reported figure only. A report with no upper-bound row (an
  estimate alone) is refused with `NoUpperBoundError`.

Neighbouring relation passed to the accountants: for a Poisson ledger, the
ledger's own relation (phases' sigma is relative to the add/remove
sensitivity C, and the accountants handle replace-one themselves). For a
shuffle ledger, `accountable_phases()` already divides sigma by the
replace-one sensitivity factor and sets q = 1 (one full-batch Gaussian per
epoch), so those phases are accounted as plain Gaussians ('add_remove'
pair, which for q = 1 is the Gaussian of sensitivity 1); the
Poisson-equivalent rows use 'add_remove', the figure commonly reported.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from dpjax.accounting import ledger as ledger_lib

GUARANTEE = 'accountable phases'
NOT_A_GUARANTEE = 'not a guarantee (shuffled batches accounted as Poisson)'


GAUSSIAN_ACCOUNTANTS = ('pld', 'rdp', 'edgeworth')


class NoUpperBoundError(ValueError):
  """A report would hold no upper bound on epsilon (only estimates or n/a)."""


def is_guarantee_row(row: dict) -> bool:
  """Whether a report row is an upper bound that applies to the run.

  Args:
    row: one of `privacy_report(...)['rows']`.

  Returns:
    True for a row of kind 'upper bound' with a number (not n/a) as epsilon,
    computed on the accountable phases (not the shuffle-as-Poisson figure).
  """
  eps = row.get('epsilon')
  return (row.get('kind') == 'upper bound' and
          row.get('basis') != NOT_A_GUARANTEE and
          isinstance(eps, (int, float)) and not math.isnan(eps))


def _rows(phases, delta, accountants, neighbouring, basis,
          mechanism='gaussian') -> list[dict]:
  from dpjax.accounting import get_accountant  # pylint: disable=g-import-not-at-top
  rows = []
  for spec in accountants:
    acc = get_accountant(spec) if isinstance(spec, str) else spec
    row = {'accountant': acc.name, 'delta': delta,
           'kind': 'upper bound' if acc.is_upper_bound else 'estimate',
           'basis': basis}
    if mechanism != 'gaussian' and acc.name in GAUSSIAN_ACCOUNTANTS:
      # A Gaussian accountant says nothing about other noise.
      row['epsilon'] = math.nan
      row['details'] = {'not_available': f'{acc.name} accounts Gaussian '
                                         f'noise; this run added '
                                         f'{mechanism} noise'}
      rows.append(row)
      continue
    try:
      row['epsilon'] = float(acc.epsilon(phases, delta, neighbouring))
      row['details'] = acc.describe()
      if hasattr(acc, 'error_bounds'):
        b = acc.error_bounds(phases, delta, neighbouring)
        row['details']['error_bound'] = (
            b.get('message') or b.get('reason') or
            f"eps in [{b['eps_lower']:.4g}, {b['eps_upper']:.4g}]")
    except NotImplementedError as e:
      row['epsilon'] = math.nan
      row['details'] = {'not_available': str(e)}
    rows.append(row)
  # Show the bound beside any estimate.
  bounds = [r for r in rows if r['kind'] == 'upper bound' and
            not math.isnan(r['epsilon'])]
  for r in rows:
    if r['kind'] == 'estimate' and bounds:
      r['details'] = dict(r['details'])
      r['details']['upper_bound_beside'] = {b['accountant']: b['epsilon']
                                            for b in bounds}
  return rows


def privacy_report(ledger: ledger_lib.PrivacyLedger, delta: float,
                   accountants: Sequence[Any] = ('pld', 'rdp', 'edgeworth'),
                   extra_rows: Iterable[dict] = ()) -> dict:
  """Epsilon of a run's ledger under each accountant.

  Args:
    ledger: the run's PrivacyLedger.
    delta: the delta of the guarantee, in (0, 1).
    accountants: names or accountant objects.
    extra_rows: rows added verbatim (e.g. by the trainer for a
      paper-faithful but not private mode); each a dict with at least
      'accountant', 'epsilon', 'delta', 'kind' and optionally 'details',
      'basis'.

  Raises:
    ValueError: `delta` is not in (0, 1).
    NoUpperBoundError (a ValueError): no row is an upper bound with a
      number as epsilon (`is_guarantee_row`): e.g. accountants=('edgeworth',)
      alone, or only Gaussian accountants on an LMO ledger. An estimate is
      never reported without a bound beside it.

  Returns:
    dict with 'rows' (list of {'accountant', 'epsilon', 'delta', 'kind',
    'details', 'basis'}), 'sampling', 'neighbouring', 'unit', 'steps',
    'phases', 'delta', and 'notes'.
  """
  if not (isinstance(delta, (int, float)) and 0 < delta < 1):
    raise ValueError(f'delta must be in (0, 1), got {delta!r}.')
  notes = []
  if ledger.sampling == 'poisson':
    phases = ledger.accountable_phases()
    rows = _rows(phases, delta, accountants, ledger.neighbouring, GUARANTEE,
                 ledger.mechanism)
  else:
    phases = ledger.accountable_phases()
    rows = _rows(phases, delta, accountants, 'add_remove', GUARANTEE)
    notes.append('Shuffled fixed-size batches: the guarantee rows use no '
                 'amplification by subsampling (one full-batch Gaussian per '
                 'epoch, replace-one sensitivity where applicable).')
    rows += _rows(ledger.poisson_equivalent_phases(), delta, accountants,
                  'add_remove', NOT_A_GUARANTEE)
  if any(r['kind'] == 'estimate' for r in rows):
    notes.append('Edgeworth epsilon is an estimate (an Edgeworth expansion '
                 'of the composed privacy loss), not a bound; the PLD upper '
                 'bound is shown beside it.')
  for r in extra_rows:
    r = dict(r)
    r.setdefault('details', {})
    r.setdefault('basis', '')
    rows.append(r)
  if not any(is_guarantee_row(r) for r in rows):
    names = [r.get('accountant') for r in rows]
    raise NoUpperBoundError(
        f'privacy_report: no row is an upper bound on epsilon (rows: '
        f'{names}); an estimate is never reported alone. Pass an upper-bound '
        "accountant ('pld' or 'rdp' for Gaussian noise, an LMOAccountant for "
        "LMO noise) in accountants, or an extra row of kind 'upper bound'.")
  return {
      'rows': rows,
      'delta': delta,
      'sampling': ledger.sampling,
      'neighbouring': ledger.neighbouring,
      'unit': ledger.unit,
      'steps': ledger.steps,
      'phases': [{'q': p.q, 'sigma': p.sigma, 'count': p.count}
                 for p in ledger.phases],
      'mechanism': ledger.mechanism,
      'mechanism_params': dict(ledger.mechanism_params),
      'notes': notes,
  }


def _fmt_eps(e: Any) -> str:
  if isinstance(e, (int, float)):
    if math.isnan(e):
      return 'n/a'
    if math.isinf(e):
      return 'inf'
    return f'{e:.4f}'
  return str(e)


def _short_details(d: dict) -> str:
  if not d:
    return ''
  keep = []
  for k in ('conversion', 'optimal_order', 'value_discretization_interval',
            'interval_used', 'expansion_order', 'error_bound',
            'not_available', 'upper_bound_beside'):
    if k in d and d[k] is not None:
      v = d[k]
      if isinstance(v, dict):
        v = ', '.join(f'{a}={_fmt_eps(b)}' for a, b in v.items())
      keep.append(f'{k}={v}')
  if not keep:
    keep = [f'{k}={v}' for k, v in d.items()
            if isinstance(v, (str, int, float))][:3]
  return '; '.join(keep)


def format_report(report: dict) -> str:
  """A readable text table of `privacy_report`'s output."""
  lines = [
      'Privacy report',
      f"  sampling: {report.get('sampling')}   neighbouring: "
      f"{report.get('neighbouring')}   unit: {report.get('unit')}",
      f"  steps: {report.get('steps')}   delta: {report.get('delta')}",
  ]
  phases = report.get('phases') or []
  if phases:
    shown = ', '.join(f"{p['count']} x (q={p['q']:.6g}, sigma={p['sigma']:.6g})"
                      for p in phases[:6])
    if len(phases) > 6:
      shown += f', ... ({len(phases)} phases)'
    lines.append(f'  phases: {shown}')
  header = ('accountant', 'epsilon', 'delta', 'kind', 'basis', 'details')
  table = [header]
  for r in report['rows']:
    table.append((str(r.get('accountant')), _fmt_eps(r.get('epsilon')),
                  f"{r.get('delta'):.3g}" if isinstance(r.get('delta'), float)
                  else str(r.get('delta')),
                  str(r.get('kind')), str(r.get('basis', '')),
                  _short_details(r.get('details') or {})))
  widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
  lines.append('')
  for i, row in enumerate(table):
    cells = [row[j].ljust(widths[j]) for j in range(len(header) - 1)]
    lines.append('  ' + '  '.join(cells) + '  ' + row[-1])
    if i == 0:
      lines.append('  ' + '  '.join('-' * w for w in widths) + '  -------')
  for n in report.get('notes', []):
    lines.append(f'  note: {n}')
  return '\n'.join(lines)
