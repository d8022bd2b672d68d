"""The console of a run: one line per event, printed once, by process 0 only.

Events (each one line on stdout; `Console`): the start (model, trainable
parameters, N, q, sigma, C, delta, target epsilon, where the outputs go), a
progress line per `train.log_every` (step/total, steps per second, ETA,
epsilon so far with its accountant and kind, the latest held-out loss), an
evaluation line per evaluation and the end summary (epsilon, held-out loss
before -> after, the files written). Before the end line, the privacy block
(`dpjax.reporting.format_summary`: every accountant's epsilon with delta,
kind, sampling, relation and unit) and the path of the whole report.

Logging (`setup_logging`, called by `dpjax.main`): the log records of the
libraries (orbax, absl, gguf, JAX's backend probe...) and dpjax's own INFO
lines go to `workdir/dpjax.log`, not to the console (processes other than 0
write no file, as for every output of the run: their console keeps
warnings and errors, and with `-v` the rest). Warnings and errors still
reach the console (stderr). The rule: `--verbosity` (`-v`), `--logtostderr` or `--alsologtostderr` on
the command line bring every log record the verbosity selects back to the
console, as absl prints them (`-v 0`: INFO, `-v 1`: DEBUG); the log file
always holds INFO and above (and DEBUG with `-v 1`).

Data-validation lines of `data.corpus='files'` (`dpjax.input_pipeline`:
records read, truncated, users) are computed from the private data: they
stay on the console for the data owner and are kept out of the log file,
like out of every other file of the run (the report's threat model).

Nothing here prints a statistic of private batches: what a progress line
shows is chosen in `dpjax.train` (`train.log_nonprivate_stats`), and such a
statistic is labelled NOT covered by epsilon.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import os
import time
from typing import Any, Callable, Iterable

from dpjax import metrics as metrics_lib

LOG_FILE = 'dpjax.log'
CONSOLE_LOGGER = 'dpjax.console'  # the console's lines, copied to the log
# Log records printed to the console at INFO without --verbosity: the
# data-validation lines the data owner needs, never written to a file.
_DATA_OWNER_MODULES = (os.path.join('dpjax', 'input_pipeline.py'),)
PRIVATE_LABEL = 'NOT covered by eps'


def _is_data_owner_line(record: logging.LogRecord) -> bool:
  return any(record.pathname.endswith(m) for m in _DATA_OWNER_MODULES)


class _ConsoleFilter(logging.Filter):
  """The console handler's rule: warnings and errors (and data-owner lines),
  or all that the verbosity selects; never a console line twice."""

  def __init__(self, verbose: bool):
    super().__init__()
    self.verbose = verbose

  def filter(self, record: logging.LogRecord) -> bool:
    if record.name == CONSOLE_LOGGER:
      return False  # printed already
    return (self.verbose or record.levelno >= logging.WARNING or
            _is_data_owner_line(record))


class _FileFilter(logging.Filter):
  """Everything but the data-validation lines (private data, console only)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not _is_data_owner_line(record)


def verbose_requested(flag_values) -> bool:
  """Whether the command line asks for library logs on the console:
  `--verbosity`/`-v` given, `--logtostderr` or `--alsologtostderr`."""
  def get(name, attr='value'):
    try:
      return getattr(flag_values[name], attr)
    except (KeyError, AttributeError):
      return None
  return bool(get('verbosity', 'present') or get('logtostderr') or
              get('alsologtostderr'))


def _console_handlers() -> list[logging.Handler]:
  """The handlers on the root logger that write to the console: absl's
  (`app.run` installs it) or plain stream handlers to stdout/stderr."""
  import sys  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  out = []
  for h in logging.getLogger().handlers:
    if h is absl_logging.get_absl_handler() or (
        type(h) is logging.StreamHandler and  # pylint: disable=unidiomatic-typecheck
        getattr(h, 'stream', None) in (sys.stderr, sys.stdout)):
      out.append(h)
  return out


def setup_logging(workdir: str, *, verbose: bool = False,
                  process_index: int | Callable[[], int] = 0) -> str | None:
  """Sends log records to `workdir`'s log file; the console keeps warnings.

  Call once, after flags are parsed (absl's handler is installed) and before
  the run touches JAX, orbax or the data.

  Args:
    workdir: the run's work directory (created if missing).
    verbose: also print every record the verbosity selects on the console
      (`verbose_requested`).
    process_index: this process (0 alone writes `dpjax.log`), or a
      function that returns it (called once the console filters are in
      place: it may start JAX's backends, whose log lines then reach the
      file alone).

  Returns:
    The log file's path (None on processes other than 0).
  """
  root = logging.getLogger()
  if root.level == logging.NOTSET or root.level > logging.INFO:
    root.setLevel(logging.INFO)
  logging.getLogger(CONSOLE_LOGGER).setLevel(logging.INFO)
  for h in _console_handlers():
    for f in [f for f in h.filters if isinstance(f, _ConsoleFilter)]:
      h.removeFilter(f)
    h.addFilter(_ConsoleFilter(verbose))
  for h in [h for h in root.handlers if getattr(h, '_dpjax_log', False)]:
    root.removeHandler(h)
    h.close()
  if callable(process_index):
    held = logging.handlers.MemoryHandler(100_000,
                                          flushLevel=logging.CRITICAL + 1)
    root.addHandler(held)
    try:
      process_index = process_index()
    finally:
      root.removeHandler(held)
  else:
    held = None
  if process_index:
    if held is not None:
      held.close()
    return None
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOG_FILE)
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  handler = logging.FileHandler(path, encoding='utf-8')
  handler.setFormatter(absl_logging.PythonFormatter())
  handler.addFilter(_FileFilter())
  handler._dpjax_log = True  # pylint: disable=protected-access
  root.addHandler(handler)
  if held is not None:  # what was logged while the index was found
    held.setTarget(handler)
    held.close()  # flushes
  return path


def discard_log(workdir: str) -> bool:
  """Undoes `setup_logging` for a run refused before it began: closes the
  log file and removes it, and `workdir` when nothing else is in it (a bad
  input leaves no half-made work directory). Returns whether it did."""
  root = logging.getLogger()
  for h in [h for h in root.handlers if getattr(h, '_dpjax_log', False)]:
    root.removeHandler(h)
    h.close()
  try:
    if set(os.listdir(workdir)) != {LOG_FILE}:
      return False
    os.remove(os.path.join(workdir, LOG_FILE))
    os.rmdir(workdir)
  except OSError:
    return False
  return True


def _n(x: float) -> str:
  """A number, short: 8, 0.03125, 1e-05, 0.4462."""
  return f'{x:.4g}'


def _duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  if seconds < 60:
    return f'{seconds}s'
  m, s = divmod(seconds, 60)
  if m < 60:
    return f'{m}m{s:02d}s'
  h, m = divmod(m, 60)
  return f'{h}h{m:02d}m'


def _warnings(eps_record: dict[str, Any]) -> str:
  return ''.join(f'[{w}] ' for w in eps_record.get('privacy_warnings', ()))


class Progress:
  """Progress lines: step/total, steps per second, ETA, epsilon so far and
  the latest held-out loss (plus, only when `dpjax.train` passes one, a
  private-batch statistic labelled NOT covered by epsilon)."""

  def __init__(self, total_steps: int, start_step: int,
               clock=time.monotonic):
    self.total = total_steps
    self.start_step = start_step
    self._clock = clock
    self.t0 = clock()
    self._first = None  # (step, time) of the first line: after compilation

  def rate(self, step: int, now: float | None = None) -> float:
    """Steps per second: since the first progress line once there is one
    (so compilation does not count), else since the start."""
    now = self._clock() if now is None else now
    if self._first and step > self._first[0]:
      s0, t0 = self._first
    else:
      s0, t0 = self.start_step, self.t0
    return (step - s0) / max(now - t0, 1e-9)

  def line(self, step: int, eps_record: dict[str, Any], *,
           heldout: tuple[int, float] | tuple[int, float, int] | None = None,
           private: dict[str, float] | None = None) -> str:
    """One progress line (not printed: `Console.progress` prints it).

    Args:
      step: the step just taken.
      eps_record: the metrics line's epsilon fields (`check_eps_record`).
      heldout: (step, loss) or (step, loss, records evaluated) of the latest
        held-out evaluation, or None.
      private: statistics of private batches to show, labelled NOT covered by
        epsilon; only when `train.log_nonprivate_stats` (or non-private).

    Returns:
      The privacy warnings in brackets, then e.g. 'step 4/6  2.10 steps/s
      ETA 1s  eps so far 7.405 (pld upper bound, delta=1e-05, poisson,
      add_remove)  held-out loss 5.4983 (step 3)'.

    Raises:
      ValueError: an estimate without its upper bound, or an unknown kind.
    """
    eps = metrics_lib.describe_epsilon(eps_record)
    now = self._clock()
    rate = self.rate(step, now)
    first = self._first is None
    if first:
      self._first = (step, now)
    eta = (self.total - step) / rate if rate > 0 else math.nan
    msg = (f'{_warnings(eps_record)}step {step}/{self.total}  '
           f'{rate:.3g} steps/s' + (' (incl. start-up)' if first else '') +
           f'  ETA {_duration(eta)}  eps so far {eps}')
    if heldout is not None and math.isfinite(heldout[1]):
      on = f', {heldout[2]} records' if len(heldout) > 2 else ''
      msg += f'  held-out loss {heldout[1]:.4f} (step {heldout[0]}{on})'
    if private:
      stats = ', '.join(f'{k} {float(v):.4g}' for k, v in private.items())
      msg += f'  private batch: {stats} ({PRIVATE_LABEL})'
    return msg


class Console:
  """Process 0's console lines: printed once on stdout, copied to the log
  file (the `dpjax.console` logger, which the console handler skips).
  `enabled=False` (processes other than 0) prints nothing."""

  def __init__(self, enabled: bool = True):
    self.enabled = enabled
    self._log = logging.getLogger(CONSOLE_LOGGER)

  def emit(self, line: str) -> str:
    if self.enabled:
      print(line, flush=True)
      self._log.info('%s', line)
    return line

  def start(self, *, model: str, trainable: int, total: int, peft: str,
            plan, unit: str, steps: int, start_step: int, workdir: str,
            warnings: Iterable[str] = ()) -> str:
    """The start line."""
    warn = ''.join(f'[{w}] ' for w in warnings)
    what = (f'start  {model}, {trainable:,} of {total:,} parameters trainable'
            f' ({peft})')
    data = f'N={plan.dataset_size:,} {unit}'
    if not plan.enabled:
      dp = 'NOT PRIVATE (dp.enabled=False)'
    else:
      dp = (f'q={_n(plan.q)} (B={_n(plan.expected_batch_size)}, '
            f'{plan.sampling})  sigma={_n(plan.noise_multiplier)}  '
            f'C={_n(plan.clip_norm)}  delta={_n(plan.delta)}  ')
      if plan.calibrated_for_epsilon is not None:
        dp += (f'target eps={_n(plan.calibrated_for_epsilon)} '
               f'({plan.accountant})')
      else:
        dp += 'target eps: none (sigma fixed)'
    run = f'{steps} steps' + (f' (resumed at step {start_step})'
                              if start_step else '')
    return self.emit(f'{warn}{what}  {data}  {dp}  {run}  outputs in '
                     f'{workdir} (log: {LOG_FILE})')

  def progress(self, line: str) -> str:
    return self.emit(line)

  def evaluation(self, step: int, total: int, ev: dict[str, Any],
                 heldout_records: int) -> str:
    """An evaluation line: held-out loss and accuracy of the raw and EMA
    weights, on how many of the held-out records (public data: shown as
    it is; `dpjax.train.evaluate_both`'s keys)."""
    sub = 'eval_loss' not in ev  # the subset alone, during the run
    pre = 'eval_subset_' if sub else 'eval_'
    n = ev['eval_subset_records'] if sub else heldout_records
    def ema(key, fmt):
      v = ev.get(pre + key + '_ema')
      return f' (EMA {v:{fmt}})' if v is not None else ''
    msg = (f'eval  step {step}/{total}  held-out loss {ev[pre + "loss"]:.4f}'
           f'{ema("loss", ".4f")}  accuracy {ev[pre + "accuracy"]:.3f}'
           f'{ema("accuracy", ".3f")}  on {n}' +
           (f' of {heldout_records}' if n != heldout_records else '') +
           ' held-out records')
    if not sub and 'eval_subset_loss' in ev:
      msg += (f' (first {ev["eval_subset_records"]}: '
              f'{ev["eval_subset_loss"]:.4f})')
    return self.emit(msg)

  def end(self, *, steps: int, seconds: float, eps_record: dict[str, Any],
          initial: float | None, final: dict[str, Any], workdir: str,
          written: Iterable[str]) -> str:
    """The end summary: epsilon, held-out loss before -> after, files."""
    eps = metrics_lib.describe_epsilon(eps_record)
    msg = (f'{_warnings(eps_record)}done  {steps} steps in '
           f'{_duration(seconds)}  eps {eps}')
    after = final.get('eval_loss')
    if after is not None:
      before = (f'{initial:.4f} -> ' if isinstance(initial, (int, float))
                else '')
      msg += f'  held-out loss {before}{after:.4f}'
      if final.get('eval_loss_ema') is not None:
        msg += f' (EMA {final["eval_loss_ema"]:.4f})'
    msg += f'  wrote {workdir}: ' + ', '.join(written)
    return self.emit(msg)


def written_files(workdir: str, log_file: str | None = LOG_FILE
                  ) -> list[str]:
  """The run's outputs present in `workdir`, as the end summary names them."""
  names = ('privacy_report.txt', 'privacy_report.json', 'metrics.jsonl',
           'training.png', 'tensorboard/', 'checkpoints/', 'export/hf/',
           'export/model.gguf', log_file)
  return [n for n in names
          if n and os.path.exists(os.path.join(workdir, n.rstrip('/')))]
