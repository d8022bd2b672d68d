"""Run outputs: JSON-lines metrics, TensorBoard scalars, the loss/eps plot.

Every line is flushed and fsynced as it is written, so nothing written is
lost on a crash; on resume, lines past the restored step are dropped so the
file equals that of an uninterrupted run.

With `tensorboard_dir`, the writer also writes each line's numbers as
TensorBoard scalars (tensorboardX event files; `tensorboard --logdir runs/`),
under the tags of `tensorboard_tag`: what it is given, nothing more (the
caller, `dpjax.train`, decides what a line holds: statistics of private
batches only with `train.log_nonprivate_stats`, tagged NOT covered by
epsilon). On resume the event files are cut back to the restored step as
TensorBoard reads them (a purge step).

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
import re
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
  """Appends one JSON object per line to `path` (and, with `tensorboard_dir`,
  its numbers as TensorBoard scalars)."""

  def __init__(self, path: str, resume_step: int = 0,
               tensorboard_dir: str | None = None):
    self.path = path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
      self._truncate_after(resume_step)
    self._f = open(path, 'a', encoding='utf-8')
    self._tb = (_tensorboard_writer(tensorboard_dir, resume_step)
                if tensorboard_dir else None)

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
    if self._tb is not None:
      for tag, value in tensorboard_scalars(rec).items():
        self._tb.add_scalar(tag, value, global_step=int(step))
      self._tb.flush()

  def close(self) -> None:
    self._f.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _tensorboard_writer(logdir: str, resume_step: int):
  """A tensorboardX SummaryWriter on `logdir`, or None (with a warning)
  where tensorboardX is not installed."""
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('tensorboardX is not installed: no TensorBoard files '
                    '(pip install tensorboardX); metrics.jsonl is written.')
    return None
  # A resumed run: TensorBoard drops the earlier files' events from
  # resume_step + 1 on (those of the steps the run takes again).
  return SummaryWriter(logdir=logdir, flush_secs=10,
                       purge_step=resume_step + 1 if resume_step else None)


# metrics.jsonl key -> TensorBoard tag. Held-out data is public; epsilon's
# tag names its accountant and kind (tensorboard_scalars); the statistics of
# private batches are tagged NOT covered by epsilon.
PRIVATE_TAG = 'private_batches_NOT_covered_by_epsilon'
TENSORBOARD_TAGS = {
    'eval_loss': 'heldout/loss',
    'eval_loss_ema': 'heldout/loss_ema',
    'eval_accuracy': 'heldout/accuracy',
    'eval_accuracy_ema': 'heldout/accuracy_ema',
    'eval_subset_loss': 'heldout_subset/loss',
    'eval_subset_loss_ema': 'heldout_subset/loss_ema',
    'eval_subset_accuracy': 'heldout_subset/accuracy',
    'eval_subset_accuracy_ema': 'heldout_subset/accuracy_ema',
    'learning_rate': 'train/learning_rate',
    'clip_norm': 'train/clip_norm',
    'train_loss': f'{PRIVATE_TAG}/train_loss',
    'batch_size': f'{PRIVATE_TAG}/batch_size',
    'clip_fraction': f'{PRIVATE_TAG}/clip_fraction',
    'mean_grad_norm': f'{PRIVATE_TAG}/mean_grad_norm',
}
# Keys that are counts or settings, not curves.
_NOT_SCALARS = ('step', 'epsilon_delta', 'eval_subset_records')


def _tag_part(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', str(text)).strip('_')


def tensorboard_scalars(rec: dict[str, Any]) -> dict[str, float]:
  """The TensorBoard scalars of a metrics line: {tag: finite value}.

  Epsilon so far is tagged with its accountant and kind, e.g.
  'privacy/epsilon_pld_upper_bound' or 'privacy/epsilon_edgeworth_ESTIMATE'
  beside 'privacy/epsilon_pld_upper_bound' of its bound; a known key gets
  its tag from TENSORBOARD_TAGS, another number 'other/<key>'. Non-finite
  values (a non-private run's epsilon) are left out.
  """
  out = {}
  kind = rec.get('epsilon_kind', '')
  for key, value in rec.items():
    if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(
        value, (int, float)) or not math.isfinite(value):
      continue
    if key == 'epsilon':
      if kind.startswith('none'):
        continue
      label = 'ESTIMATE' if kind == 'estimate' else _tag_part(kind)
      tag = (f'privacy/epsilon_{_tag_part(rec.get("epsilon_accountant"))}_'
             f'{label}')
    elif key == 'epsilon_upper_bound':
      acc = _tag_part(rec.get('epsilon_upper_bound_accountant', 'pld'))
      tag = f'privacy/epsilon_{acc}_upper_bound'
    else:
      tag = TENSORBOARD_TAGS.get(key, f'other/{_tag_part(key)}')
    out[tag] = float(value)
  return out


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
  sub = next((r['eval_subset_records'] for r in recs
              if 'eval_subset_records' in r), None)
  for key, label in (('train_loss', 'train (NOT privatized statistic)'),
                     ('eval_loss', 'held-out, raw weights'),
                     ('eval_loss_ema', 'held-out, EMA weights'),
                     ('eval_subset_loss', f'held-out (first {sub}), raw'),
                     ('eval_subset_loss_ema', f'held-out (first {sub}), EMA')):
    x, y = _series(recs, key)
    if x:  # with a subset, the whole set is evaluated at the ends alone
      ax1.plot(x, y, marker='o' if sub and key.startswith('eval_loss')
               else '.', linestyle='' if sub and key.startswith('eval_loss')
               else '-', label=label)
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
