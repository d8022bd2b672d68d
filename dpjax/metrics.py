"""Run outputs: JSON-lines metrics, console progress and the loss/epsilon plot.

Every line is flushed and fsynced as it is written, so nothing written is
lost on a crash; on resume, lines past the restored step are dropped so the
file equals that of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from absl import logging


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


class Progress:
  """Console progress: step, loss, epsilon so far and ETA."""

  def __init__(self, total_steps: int, start_step: int):
    self.total = total_steps
    self.start_step = start_step
    self.t0 = time.time()

  def line(self, step: int, loss: float, epsilon: float,
           accountant: str, context: str = '', loss_label: str = 'loss') -> str:
    done = step - self.start_step
    elapsed = time.time() - self.t0
    eta = elapsed / done * (self.total - step) if done > 0 else float('nan')
    msg = (f'step {step}/{self.total}  {loss_label} {loss:.4f}  '
           f'eps so far {epsilon:.3f} ({accountant}{context})  '
           f'elapsed {elapsed:.0f}s  ETA {eta:.0f}s')
    logging.info(msg)
    print(msg, flush=True)
    return msg


def plot_run(metrics_path: str, out_path: str) -> None:
  """PNG of train / held-out loss and epsilon against steps."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  recs = read_metrics(metrics_path)
  def series(key):
    pts = [(r['step'], r[key]) for r in recs
           if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for key, label in (('train_loss', 'train (non-private statistic)'),
                     ('eval_loss', 'held-out, raw weights'),
                     ('eval_loss_ema', 'held-out, EMA weights')):
    x, y = series(key)
    if x:
      ax1.plot(x, y, marker='.', label=label)
  ax1.set_xlabel('step')
  ax1.set_ylabel('loss (nats/token)')
  ax1.legend()
  x, y = series('epsilon')
  if x:
    ax2.plot(x, y, color='C3')
  ax2.set_xlabel('step')
  ax2.set_ylabel('epsilon so far')
  fig.tight_layout()
  fig.savefig(out_path, dpi=100)
  plt.close(fig)
