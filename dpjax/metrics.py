"""Run outputs: JSON-lines metrics, console progress and the loss/epsilon plot.

Every line is flushed and fsynced as it is written, so nothing written is
lost on a crash; on resume, lines past the restored step are dropped so the
file equals that of an uninterrupted run.

Every epsilon shown (progress line, metrics line, plot) carries its
accountant, kind ('upper bound' or 'estimate'), delta, sampling and
neighbouring relation; an estimate always has an upper bound beside it, and
a run's privacy warnings (NOT PRIVATE modes, an insecure fixed seed) come
first on every line that shows epsilon.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from absl import logging


class NullWriter:
  """What processes other than 0 hold in place of the writer and progress
  line: process 0 alone writes a many-process run's files."""

  def write(self, *unused_args, **unused_kwargs) -> None:
    pass

  def line(self, *unused_args, **unused_kwargs) -> None:
    pass

  def close(self) -> None:
    pass


class MetricsWriter:
  """Appends one JSON object per line to `path`."""

  def __init__(self, path: str, resume_step: int = 0):
    self.path = path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
      self._truncate_after(resume_step)
    self._f = open(path, 'a', encoding='utf-8')

  def _truncate_after(self, step: int) -> None:
    with open(path := self.path, encoding='utf-8') as f:
      lines = [l for l in f if l.strip()]
    kept = []
    for line in lines:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a crash
      if rec.get('step', 0) <= step:
        kept.append(json.dumps(rec) + '\n')
    with open(path, 'w', encoding='utf-8') as f:
      f.writelines(kept)

  def write(self, step: int, values: dict[str, Any]) -> None:
    rec = {'step': int(step)}
    rec.update({k: _jsonable(v) for k, v in values.items()})
    self._f.write(json.dumps(rec) + '\n')
    self._f.flush()
    os.fsync(self._f.fileno())

  def close(self) -> None:
    self._f.close()


def _jsonable(v):
  try:
    f = float(v)
  except (TypeError, ValueError):
    return v
  return f if math.isfinite(f) else str(f)


def read_metrics(path: str) -> list[dict[str, Any]]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(l) for l in f if l.strip()]


EPSILON_KINDS = ('upper bound', 'estimate', 'none (non-private)')


def check_eps_record(rec: dict[str, Any]) -> None:
  """Checks the epsilon fields of a metrics line (train.epsilon_record).

  Args:
    rec: dict with 'epsilon', 'epsilon_accountant', 'epsilon_kind' (one of
      EPSILON_KINDS), 'epsilon_delta', 'sampling', 'neighbouring',
      'privacy_warnings' (list of str), and, when the kind is 'estimate',
      'epsilon_upper_bound' and 'epsilon_upper_bound_accountant'.

  Raises:
    ValueError: an unknown kind, or an estimate without its upper bound.
  """
  kind = rec.get('epsilon_kind')
  if kind not in EPSILON_KINDS:
    raise ValueError(f"eps_record['epsilon_kind'] must be one of "
                     f'{EPSILON_KINDS}, got {kind!r}.')
  if kind == 'estimate' and not isinstance(
      rec.get('epsilon_upper_bound'), (int, float, str)):
    raise ValueError("eps_record['epsilon_upper_bound'] is required when "
                     "epsilon_kind is 'estimate' (an estimate is never shown "
                     'without a bound beside it).')


def _fmt_eps(e: Any) -> str:
  try:
    e = float(e)
  except (TypeError, ValueError):
    return str(e)
  return 'inf' if math.isinf(e) else f'{e:.3f}'


def describe_epsilon(eps_record: dict[str, Any]) -> str:
  """'3.100 (pld upper bound, delta=1e-05, poisson, add_remove)' and the like.

  An estimate reads '2.900 (edgeworth ESTIMATE, not a bound; pld upper bound
  3.400, ...)'; a non-private run 'inf (NOT PRIVATE: no guarantee)'.

  Raises:
    ValueError: the record breaks `check_eps_record`.
  """
  check_eps_record(eps_record)
  kind = eps_record['epsilon_kind']
  eps = _fmt_eps(eps_record.get('epsilon'))
  if kind.startswith('none'):
    return f'{eps} (NOT PRIVATE: no guarantee)'
  acc = eps_record.get('epsilon_accountant')
  delta = eps_record.get('epsilon_delta')
  delta = f'{delta:g}' if isinstance(delta, (int, float)) else str(delta)
  context = (f'delta={delta}, {eps_record.get("sampling")}, '
             f'{eps_record.get("neighbouring")}')
  if kind == 'estimate':
    bound_acc = eps_record.get('epsilon_upper_bound_accountant', 'pld')
    bound = _fmt_eps(eps_record['epsilon_upper_bound'])
    return (f'{eps} ({acc} ESTIMATE, not a bound; {bound_acc} upper bound '
            f'{bound}, {context})')
  return f'{eps} ({acc} upper bound, {context})'


class Progress:
  """Console progress: warnings, step, loss, epsilon so far and ETA."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self.start_step = start_step
    self.t0 = time.time()

  def line(self, step: int, loss: float, eps_record: dict[str, Any],
           loss_label: str = 'loss') -> str:
    """Logs, prints and returns one progress line.

    Args:
      step: the step just taken.
      loss: the loss to show.
      eps_record: the metrics line's epsilon fields (`check_eps_record`).
      loss_label: what `loss` is ('train loss', 'last held-out loss').

    Returns:
      The line: every privacy warning in brackets first, then e.g.
      'step 4/6  last held-out loss 5.1200  eps so far 3.100 (pld upper
      bound, delta=1e-05, poisson, add_remove)  elapsed 3s  ETA 2s'.

    Raises:
      ValueError: an estimate without its upper bound, or an unknown kind.
    """
    done = step - self.start_step
    elapsed = time.time() - self.t0
    eta = elapsed / done * (self.total - step) if done > 0 else float('nan')
    warn = ''.join(f'[{w}] ' for w in eps_record.get('privacy_warnings', ()))
    msg = (f'{warn}step {step}/{self.total}  {loss_label} {loss:.4f}  '
           f'eps so far {describe_epsilon(eps_record)}  '
           f'elapsed {elapsed:.0f}s  ETA {eta:.0f}s')
    logging.info(msg)
    print(msg, flush=True)
    return msg


def _series(recs, key):
  pts = [(r['step'], r[key]) for r in recs
         if isinstance(r.get(key), (int, float)) and
         not isinstance(r.get(key), bool)]
  return [p[0] for p in pts], [p[1] for p in pts]


def epsilon_curves(recs: list[dict[str, Any]]
                   ) -> list[tuple[str, list[int], list[float]]]:
  """The epsilon curves of a run's metrics: [(label, steps, values)].

  The run's own epsilon is labelled with its accountant and kind; beside an
  estimate comes the upper bound it is never shown without.
  """
  last = next((r for r in reversed(recs) if 'epsilon_kind' in r), {})
  acc = last.get('epsilon_accountant', 'accountant not recorded')
  kind = last.get('epsilon_kind', 'kind not recorded')
  label = (f'{acc} ESTIMATE (not a bound)' if kind == 'estimate'
           else f'{acc} {kind}')
  curves = []
  x, y = _series(recs, 'epsilon')
  if x:
    curves.append((label, x, y))
  x, y = _series(recs, 'epsilon_upper_bound')
  if x:
    bound_acc = last.get('epsilon_upper_bound_accountant', 'pld')
    curves.append((f'{bound_acc} upper bound', x, y))
  return curves


def plot_title(recs: list[dict[str, Any]]) -> str:
  """The plot's title: every privacy warning the run logged, else ''."""
  seen = []
  for r in recs:
    for w in r.get('privacy_warnings') or ():
      if w not in seen:
        seen.append(w)
  return '\n'.join(seen)


def plot_run(metrics_path: str, out_path: str) -> None:
  """PNG of train / held-out loss and epsilon against steps."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  recs = read_metrics(metrics_path)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for key, label in (('train_loss', 'train (NOT privatized statistic)'),
                     ('eval_loss', 'held-out, raw weights'),
                     ('eval_loss_ema', 'held-out, EMA weights')):
    x, y = _series(recs, key)
    if x:
      ax1.plot(x, y, marker='.', label=label)
  ax1.set_xlabel('step')
  ax1.set_ylabel('loss (nats/token)')
  ax1.legend()
  curves = epsilon_curves(recs)
  for i, (label, x, y) in enumerate(curves):
    ax2.plot(x, y, color=f'C{3 + i}', linestyle='--' if i else '-',
             label=label)
  if curves:
    ax2.legend()
  else:
    ax2.text(0.5, 0.5, 'no finite epsilon (NOT PRIVATE)', ha='center',
             va='center', transform=ax2.transAxes)
  last = next((r for r in reversed(recs) if 'epsilon_delta' in r), {})
  ax2.set_xlabel('step')
  ax2.set_ylabel('epsilon so far' + (f" (delta={last['epsilon_delta']:g})"
                                     if isinstance(last.get('epsilon_delta'),
                                                   (int, float)) else ''))
  title = plot_title(recs)
  if title:
    fig.suptitle(title, color='C3', fontsize=9)
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
