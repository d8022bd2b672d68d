"""Renders README.md's "Measured" section from the committed result files.

  python experiments/readme_measured.py          # rewrite the section
  python experiments/readme_measured.py --check  # exit 1 (with a diff) if
                                                 # README.md differs

Every number in the section is read or computed from a file under
experiments/results/; nothing here types in a measured figure. The section
lies between the markers `<!-- measured:begin -->` and
`<!-- measured:end -->` in README.md (the heading stays outside them).

To add a figure: write a function `row_<name>(results) -> list[Row]` that
reads its file(s) with `results.json(...)`, `results.csv(...)` or
`results.jsonl(...)`, takes values with `get(data, file, 'a', 'b', ...)`
(a missing key raises `ResultKeyError` naming the file and the key), and
append it to `RENDERERS`. Then run this script and commit README.md with the
result file. Measured figures belong in this one table; other sections of
README.md point to it rather than repeat them (`BLOCKS` can still name another
generated block with its own markers, but none is used).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import difflib
import json
import math
import pathlib
import re
import statistics
import sys
from typing import Any, Callable

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / 'experiments' / 'results'
README = ROOT / 'README.md'
BEGIN = '<!-- measured:begin -->'
END = '<!-- measured:end -->'
_MISSING = object()
# id(container) -> its key path in its file, so that an error in a sub-dict
# names the whole path; cleared before each renderer runs (see render()).
_PATHS: dict[int, str] = {}


class ResultKeyError(KeyError):
  """A result file lacks a key (or a row) that the README section needs."""

  def __str__(self) -> str:
    return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the Measured table.

  Attributes:
    what: what was measured (and on what).
    figure: the figure(s), with their qualifiers.
    files: result file names under experiments/results/.
  """
  what: str
  figure: str
  files: tuple[str, ...]


class Results:
  """Reads result files from one directory, naming the file in every error.

  Args:
    directory: the results directory (experiments/results/ by default).
  """

  def __init__(self, directory: pathlib.Path | str = RESULTS_DIR):
    self.directory = pathlib.Path(directory)

  def exists(self, name: str) -> bool:
    """Whether the result file `name` exists."""
    return (self.directory / name).is_file()

  def _path(self, name: str) -> pathlib.Path:
    path = self.directory / name
    if not path.is_file():
      raise FileNotFoundError(f'experiments/results/{name}: no such result '
                              f'file (looked in {self.directory})')
    return path

  def json(self, name: str) -> Any:
    """Parsed JSON (NaN and Infinity allowed, as Python writes them)."""
    return json.loads(self._path(name).read_text())

  def jsonl(self, name: str) -> list[dict[str, Any]]:
    """One parsed JSON object per non-empty line."""
    lines = self._path(name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]

  def csv(self, name: str) -> list[dict[str, str]]:
    """CSV rows as dicts of strings (empty cells are '')."""
    with self._path(name).open(newline='') as f:
      return list(csv.DictReader(f))


def get(data: Any, file: str, *keys: str | int) -> Any:
  """data[k0][k1]..., raising ResultKeyError naming the file and key path.

  Args:
    data: parsed file contents (or a part of them).
    file: the file's name, for the error message.
    *keys: dict keys or list indices, outermost first.

  Returns:
    The value at that path. Empty CSV cells count as missing.

  Raises:
    ResultKeyError: when any key on the path is absent.
  """
  node = data
  prefix = _PATHS.get(id(data))
  for i, key in enumerate(keys):
    try:
      node = node[key]
    except (KeyError, IndexError, TypeError):
      node = _MISSING
    path = '.'.join(([prefix] if prefix else [])
                    + [str(k) for k in keys[:i + 1]])
    if isinstance(node, (dict, list)):
      _PATHS[id(node)] = path
    if node is _MISSING or node == '':
      raise ResultKeyError(
          f'experiments/results/{file}: missing key {path!r} '
          '(needed by experiments/readme_measured.py; rerun the experiment '
          'or adapt its renderer)')
  return node


def num(data: Any, file: str, *keys: str | int) -> float:
  """get(...) converted to float ('inf', 'nan' strings allowed)."""
  value = get(data, file, *keys)
  try:
    return float(value)
  except (TypeError, ValueError) as e:
    path = '.'.join(str(k) for k in keys)
    raise ResultKeyError(f'experiments/results/{file}: key {path!r} is '
                         f'{value!r}, not a number') from e


def select(rows: list[dict[str, Any]], file: str,
           **where: Any) -> list[dict[str, Any]]:
  """The rows whose fields equal `where` (at least one, else ResultKeyError)."""
  out = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
  if not out:
    cond = ', '.join(f'{k}={v!r}' for k, v in where.items())
    raise ResultKeyError(f'experiments/results/{file}: no row with {cond}')
  return out


def g3(x: float) -> str:
  """Three significant digits, no exponent for ordinary magnitudes."""
  if math.isinf(x):
    return '∞'
  if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
    mantissa, exp = f'{x:.1e}'.split('e')
    return f'{mantissa.removesuffix(".0")}e{int(exp)}'
  return f'{x:.3g}'


def sci(x: float) -> str:
  """A small setting such as δ as '1e-5' (not Python's '1e-05')."""
  mantissa, exp = f'{x:g}'.split('e') if 'e' in f'{x:g}' else (f'{x:g}', '')
  return f'{mantissa}e{int(exp)}' if exp else mantissa


def x2(ratio: float) -> str:
  """A ratio as '1.04×'."""
  return f'{ratio:.2f}×'


def fixed(digits: int) -> Callable[[float], str]:
  """A formatter with `digits` decimals."""
  return lambda v: f'{v:.{digits}f}'


def span(values: list[float], fmt: Callable[[float], str] = g3) -> str:
  """'lo–hi' (or one value when they format alike)."""
  lo, hi = fmt(min(values)), fmt(max(values))
  if lo == hi:
    return lo
  return f'{lo} to {hi}' if min(values) < 0 else f'{lo}–{hi}'


# --------------------------------------------------------------------------
# One renderer per figure. Each returns a list of Rows (empty to skip).
# --------------------------------------------------------------------------


def row_quickstart(results: Results) -> list[Row]:
  """`make run`: NLL before/after (raw, EMA), ε with its accountant, δ."""
  rf, mf = 'quickstart_privacy_report.json', 'quickstart_metrics.jsonl'
  report, metrics = results.json(rf), results.jsonl(mf)
  evals = [m for m in metrics if 'eval_loss' in m]
  if not evals:
    raise ResultKeyError(f'experiments/results/{mf}: no line with '
                         "key 'eval_loss'")
  first, last = evals[0], evals[-1]
  final = get(report, rf, 'evaluation')
  for key in ('eval_loss', 'eval_loss_ema'):
    if num(final, rf, key) != num(last, mf, key):
      raise ValueError(f'{rf} evaluation.{key} = {final[key]} but the last '
                       f'line of {mf} has {last[key]}: not the same run')
  mech = get(report, rf, 'mechanism')
  accountant = get(mech, rf, 'calibration_accountant')
  rows = get(report, rf, 'privacy', 'rows')
  (bound,) = select(rows, rf, accountant=accountant)
  others = [r for r in rows
            if r is not bound and r.get('kind') == 'upper bound']
  other = ''.join(f'; {get(r, rf, "accountant").upper()} bound '
                  f'{num(r, rf, "epsilon"):.3g}' for r in others)
  source = get(report, rf, 'randomness', 'source')
  source = {'os_entropy': 'OS-entropy noise'}.get(source, f'{source} noise')
  private = 'private' if get(report, rf, 'private') else 'NOT private'
  return [Row(
      'make run (quickstart: '
      f'{num(mech, rf, "steps"):.0f} steps, expected batch '
      f'{num(mech, rf, "expected_batch_size"):.0f}, {private}, {source})',
      f'held-out NLL {num(first, mf, "eval_loss"):.3f} → '
      f'{num(final, rf, "eval_loss"):.3f} (raw) / '
      f'{num(final, rf, "eval_loss_ema"):.3f} (EMA) nats/token at '
      f'ε = {num(bound, rf, "epsilon"):.2f} ({accountant.upper()} '
      f'{get(bound, rf, "kind")}, δ = {sci(num(bound, rf, "delta"))}{other}); '
      'another run draws other noise and batches, so the last digits vary. '
      'Wall time: not recorded in these files',
      (rf, mf))]


def row_default_run(results: Results) -> list[Row]:
  """The default run's DP / non-private gain ratio at equal steps
  (default_run_tuning.json): the chosen setting on the reported works."""
  f = 'default_run_tuning.json'
  d = results.json(f)
  chosen = get(d, f, 'chosen', 'setting')
  runs = [r for r in get(d, f, 'runs') if r.get('returncode') == 0]

  def gains(heldout, setting):
    pair = {}
    for r in runs:
      if r.get('setting') == setting and r.get('heldout') == heldout:
        pair[bool(get(r, f, 'private'))] = r
    if set(pair) != {True, False}:
      return None
    return tuple(num(pair[p], f, 'nll_initial') - num(pair[p], f, key)
                 for key in ('nll_final', 'nll_final_ema')
                 for p in (True, False))

  rep = gains('reported', chosen)
  if rep is None:
    raise ResultKeyError(f'experiments/results/{f}: no DP and non-private '
                         f'run of the chosen setting {chosen!r} on the '
                         'reported works')
  dp, np_, dp_ema, np_ema = rep
  tried = sorted({r['setting'] for r in runs if r.get('heldout') == 'tuning'})
  tuning = {s: g for s in tried if (g := gains('tuning', s)) is not None}
  others = ', '.join(f'{s} {g[0] / g[1]:.0%}' for s, g in tuning.items())
  mr = get(d, f, 'make_run')[-1]
  return [Row(
      f'Default run vs its non-private twin at equal steps ({chosen}, ε = 8)',
      f'held-out gain (nats/token) on the reported works, not tuned on: DP '
      f'{dp:.3f}, non-private {np_:.3f}: {dp / np_:.0%} raw, '
      f'{dp_ema / np_ema:.0%} EMA (target ≥ 80%); tuning works, raw: '
      f'{others}; make run {num(mr, f, "wall_s") / 60:.1f} min wall '
      f'(load {num(mr, f, "load1_start"):.1f}–{num(mr, f, "load1_end"):.1f})',
      (f, 'default_run_tuning.md'))]


def _cmp(r: dict[str, Any], file: str) -> str:
  """One `compare` block: 'T× time (per-round lo–hi), M× memory'."""
  return (f'{x2(num(r, file, "time"))} time '
          f'({num(r, file, "time_per_round_min"):.2f}–'
          f'{num(r, file, "time_per_round_max"):.2f} per round), '
          f'{x2(num(r, file, "memory"))} memory')


def _best(r: dict[str, Any], file: str, what: str) -> str:
  """A best-vs-best block, naming the micro-batch each side used."""
  return (f'{what}, DP micro-batch {num(r, file, "dp_microbatch"):.0f} vs '
          f'non-private {num(r, file, "nonprivate_microbatch"):.0f}: '
          f'{_cmp(r, file)}')


def _step_ratios(bench: dict[str, Any], file: str, *prefix: str) -> str:
  """DP vs non-private ratios of step_benchmark-style results.

  With the `ratios` block of experiments/step_benchmark.py (`equal_microbatch`,
  `best_vs_best`, `leanest_vs_leanest`) it reports all three; files from
  before that block compute the equal-micro-batch ratio (dp_micro vs
  nonprivate_micro) from the medians and memory.
  """
  node = get(bench, file, *prefix) if prefix else bench
  ratios = get(node, file, 'ratios')
  if 'equal_microbatch' in ratios:
    equal = get(ratios, file, 'equal_microbatch')
    parts = [f'equal micro-batch {m}: {_cmp(get(equal, file, m), file)}'
             for m in sorted(equal, key=float)]
    best = get(ratios, file, 'best_vs_best')
    lean = get(ratios, file, 'leanest_vs_leanest')
    same = (get(best, file, 'dp'), get(best, file, 'nonprivate')) == (
        get(lean, file, 'dp'), get(lean, file, 'nonprivate'))
    parts.append(_best(best, file, 'best vs best (fastest and leanest of '
                       'each)' if same else 'best vs best (fastest of each)'))
    if not same:
      parts.append(_best(lean, file, 'leanest of each'))
    return 'DP vs non-private, ' + '; '.join(parts)
  med = get(node, file, 'median_step_seconds')
  mem = get(node, file, 'memory_bytes')
  time = num(med, file, 'dp_micro') / num(med, file, 'nonprivate_micro')
  memory = (num(mem, file, 'dp_micro', 'total')
            / num(mem, file, 'nonprivate_micro', 'total'))
  return (f'DP vs non-private at equal micro-batch: {x2(time)} time, '
          f'{x2(memory)} memory')


def _present(results: Results, *names: str) -> tuple[str, ...]:
  """The first name, and those of the others that exist (companion files)."""
  return names[:1] + tuple(n for n in names[1:] if results.exists(n))


def _microbatch_text(setup: dict[str, Any], file: str, *keys: str) -> str:
  """'micro-batch 8' or 'micro-batches 4, 8' from whichever key exists."""
  if 'microbatches' in setup:
    mbs = get(setup, file, 'microbatches')
    return 'micro-batches ' + ', '.join(f'{float(m):.0f}' for m in mbs)
  for key in keys:
    if key in setup:
      return f'micro-batch {num(setup, file, key):.0f}'
  return f'micro-batch {num(setup, file, keys[0]):.0f}'


def row_step_benchmark(results: Results) -> list[Row]:
  """DP step vs non-private step, 7.3M decoder (step_benchmark.json)."""
  f = 'step_benchmark.json'
  d = results.json(f)
  s = get(d, f, 'setup')
  return [Row(
      f'DP step vs non-private step, {num(s, f, "params") / 1e6:.1f}M-'
      f'parameter decoder, batch {num(s, f, "batch"):.0f} × '
      f'{num(s, f, "seq"):.0f}, {_microbatch_text(s, f, "microbatch")}',
      _step_ratios(d, f), _present(results, f, 'step_benchmark.md'))]


def row_smollm2_step_benchmark(results: Results) -> list[Row]:
  """The same on SmolLM2-135M, LoRA and full (smollm2_step_benchmark.json)."""
  f = 'smollm2_step_benchmark.json'
  d = results.json(f)
  s = get(d, f, 'setup')
  modes = [m for m in ('lora', 'full') if m in d]   # kept modes included
  names = {'lora': 'LoRA', 'full': 'full fine-tuning'}
  figure = ' — '.join(
      f'{names.get(m, m)} ({num(d, f, m, "trainable_params") / 1e6:.3g}M '
      f'trainable): {_step_ratios(d, f, m)}' for m in modes)
  return [Row(
      f'DP step vs non-private step, {get(s, f, "model")}, batch '
      f'{num(s, f, "batch"):.0f} × {num(s, f, "seq"):.0f}, '
      f'{_microbatch_text(s, f, "micro")}', figure,
      _present(results, f, 'smollm2_step_benchmark.md'))]


def _bk_target(t: dict[str, Any], ratios: dict[str, Any], f: str) -> str:
  """'1.08× time (NOT met ≤ 0.90×), 1.11× memory (...); leanest: ...'."""
  met = lambda ok: 'met' if ok else 'NOT met'
  lean = num(ratios, f, 'BK leanest vs non-private leanest (memory)',
             'memory')
  cap = num(t, f, 'memory_target')
  return (f'fastest vs fastest {x2(num(t, f, "time"))} time '
          f'({met(get(t, f, "time_met"))} ≤ {x2(num(t, f, "time_target"))}) '
          f'at {num(t, f, "memory"):.3f}× memory, leanest vs leanest '
          f'{lean:.3f}× memory ({met(lean <= cap)} ≤ {x2(cap)})')


def row_bookkeeping(results: Results) -> list[Row]:
  """Book-keeping DP step vs the best non-private step, three models."""
  f, fs, fm = ('bookkeeping_benchmark.json', 'smollm2_step_benchmark.json',
               'minilm_step_benchmark.json')
  d, ds, dm = results.json(f), results.json(fs), results.json(fm)
  parts = []
  for key, r in sorted(get(d, f, 'runs').items(), key=lambda kv: int(kv[0])):
    s = get(r, f, 'setup')
    parts.append(f'{num(s, f, "params") / 1e6:.1f}M decoder, batch '
                 f'{num(s, f, "batch"):.0f} × {num(s, f, "seq"):.0f}: '
                 + _bk_target(get(r, f, 'targets'), get(r, f, 'ratios'), f))
  for mode in ('lora', 'full'):
    parts.append(f'SmolLM2-135M {mode}: '
                 + _bk_target(get(ds, fs, mode, 'bk_target'),
                              get(ds, fs, mode, 'bk_ratios'), fs))
  parts.append('MiniLM-L6 full (classification): '
               + _bk_target(get(dm, fm, 'targets'), get(dm, fm, 'ratios'), fm))
  noise = get(ds, fs, 'full', 'bk_ratios')
  key = 'diagnostic: noisednp_micro4 vs nonprivate best'
  if key in noise:
    parts.append('SmolLM2 full, the noise stage alone (unclipped sum + noise, '
                 f'not private) vs the fastest non-private step: '
                 f'{x2(num(noise, fs, key, "time"))} time; BK vs it: '
                 + x2(num(noise, fs, 'diagnostic: BK best vs noisednp_micro4',
                          'time')))
  return [Row(
      'Book-keeping (BK) DP step vs the best non-private step (micro-batched '
      'accumulation), best BK micro-batch', '; '.join(parts),
      _present(results, f, 'bookkeeping_benchmark.md', fs, fm,
               'minilm_step_benchmark.md'))]


def _rgp_old(d: dict[str, Any], f: str, micro: float) -> str:
  """rgp_step_benchmark.json before its `ratios` block."""
  table = get(d, f, 'table')
  rgp, rgp_np = f'dp_rgp_micro{micro:.0f}', f'rgp_nonprivate_micro{micro:.0f}'
  full = f'dp_full_micro{micro:.0f}'
  control = f'dp_rgp_trainable_no_carriers_micro{micro:.0f}'
  med = get(d, f, 'median_step_seconds')
  mem = get(d, f, 'memory_bytes')

  def vs(a: str, b: str) -> str:
    return (f'{x2(num(med, f, a) / num(med, f, b))} time, '
            f'{x2(num(mem, f, a, "total") / num(mem, f, b, "total"))} memory')

  saving = 1 - (num(mem, f, rgp, 'temp') / num(mem, f, control, 'temp'))
  best = get(d, f, 'best_nonprivate')
  return (
      f'DP-RGP vs non-private RGP: {vs(rgp, rgp_np)}; DP-RGP vs the best '
      f'non-private full fine-tuning step: '
      f'{x2(num(table, f, rgp, "time_vs_best_nonprivate"))} time, '
      f'{x2(num(table, f, rgp, "memory_vs_best_nonprivate"))} memory '
      f'(DP full fine-tuning: {vs(full, best)}); most of the saving is RGP\'s '
      f'{num(d, f, "rgp_frozen_params") / 1e6:.1f}M frozen parameters, the '
      f'carriers save a further {saving:.0%} of temporaries')


def _rgp_new(d: dict[str, Any], f: str) -> str:
  """rgp_step_benchmark.json with its `ratios` block."""
  r = get(d, f, 'ratios')
  equal = get(r, f, 'dp_rgp_vs_nonprivate_rgp')
  off = get(r, f, 'dp_rgp_vs_rgp_clipping_off')
  ft = get(r, f, 'full_ft')
  ft_equal = get(ft, f, 'dp_full_vs_nonprivate_full')
  mem = get(d, f, 'memory_bytes')
  ctl = get(r, f, 'carriers_vs_no_carriers')
  saving = 1 - (num(mem, f, get(ctl, f, 'dp'), 'temp')
                / num(mem, f, get(ctl, f, 'nonprivate'), 'temp'))
  m0 = min(equal, key=float)
  return (
      'DP-RGP vs non-private RGP (batch gradients), '
      + '; '.join(f'equal micro-batch {m}: {_cmp(get(equal, f, m), f)}'
                  for m in sorted(equal, key=float))
      + '; ' + _best(get(r, f, 'dp_rgp_vs_nonprivate_rgp_best_vs_best'), f,
                     'best vs best (fastest of each)')
      + f'. DP-RGP vs the RGP step with clipping and noise off, micro-batch '
      f'{m0}: {_cmp(get(off, f, m0), f)}. Secondary, vs full fine-tuning: '
      f'DP full vs non-private full at micro-batch {m0}: '
      f'{_cmp(get(ft_equal, f, m0), f)}; '
      + _best(get(ft, f, 'dp_rgp_vs_best_nonprivate_full'), f,
              'fastest DP-RGP vs fastest non-private full')
      + f'. RGP freezes {num(d, f, "rgp_frozen_params") / 1e6:.1f}M '
      f'parameters ({num(d, f, "rgp_frozen_word_embedding_params") / 1e6:.1f}M '
      f'embeddings); at the same trainable set the carriers '
      f'{"save" if saving >= 0 else "add"} {abs(saving):.0%} of temporaries')


def row_noise_memory(results: Results) -> list[Row]:
  """Memory of the noise stage, fenced vs unfenced (noise_memory.json)."""
  f = 'noise_memory.json'
  d = results.json(f)
  s, rows = get(d, f, 'setup'), get(d, f, 'rows')
  base = num(rows, f, 'nonprivate_micro4 (no noise stage)', 'total')

  def ratio(name: str) -> str:
    return x2(num(rows, f, name, 'total') / base)
  return [Row(
      'Memory of the Gaussian noise stage (XLA compiled analysis), '
      f'SmolLM2-135M full fine-tuning ({num(s, f, "trainable_params") / 1e6:.1f}M '
      'trainable), batch 16 × 64, micro-batch 4',
      'vs the non-private step: noise + 1/B + AdamW on the unclipped sum '
      f'{ratio("noisednp_micro4 (rbg, fenced)")} fenced (what runs) vs '
      f'{ratio("noisednp_micro4 (rbg, unfenced)")} unfenced; book-keeping DP '
      f'step {ratio("bk_micro4 (rbg, fenced)")} vs '
      f'{ratio("bk_micro4 (rbg, unfenced)")}; vmap DP step '
      f'{ratio("dp_micro4 (rbg, fenced)")}',
      (f, 'noise_memory.md'))]


def row_rgp_step_benchmark(results: Results) -> list[Row]:
  """DP-RGP vs non-private RGP, and vs full fine-tuning (rgp_step_benchmark)."""
  f = 'rgp_step_benchmark.json'
  d = results.json(f)
  s = get(d, f, 'setup')
  micro = num(s, f, 'microbatch')
  mbs = (f'micro-batches {micro:.0f}, {num(s, f, "microbatch_large"):.0f}'
         if 'ratios' in d and 'microbatch_large' in s
         else f'micro-batch {micro:.0f}')
  figure = _rgp_new(d, f) if 'ratios' in d else _rgp_old(d, f, micro)
  return [Row(
      f'RGP rank {num(s, f, "rgp_rank"):.0f}, {get(s, f, "model")}, batch '
      f'{num(s, f, "batch"):.0f} × {num(s, f, "seq_len"):.0f}, {mbs}',
      figure, (f, 'rgp_step_benchmark.md'))]


def row_privacy_utility(results: Results) -> list[Row]:
  """Held-out NLL at several ε (privacy_utility.json)."""
  f = 'privacy_utility.json'
  rows = results.json(f)
  if not isinstance(rows, list) or not rows:
    raise ResultKeyError(f'experiments/results/{f}: expected a list of rows')
  private = [r for r in rows if math.isfinite(num(r, f, 'pld_epsilon'))]
  nonprivate = [r for r in rows if not math.isfinite(num(r, f, 'pld_epsilon'))]
  untuned = {num(r, f, 'nll_untuned') for r in rows}
  steps = {num(r, f, 'steps') for r in rows}
  batch = {num(r, f, 'expected_batch') for r in rows}
  if len(untuned) != 1 or len(steps) != 1 or len(batch) != 1:
    raise ValueError(f'{f}: rows differ in nll_untuned, steps or '
                     'expected_batch; the README row assumes one setting')
  figure = (f'held-out NLL {untuned.pop():.3f} un-tuned → '
            + ' / '.join(f'{num(r, f, "nll_raw"):.3f}' for r in private)
            + ' at PLD ε = '
            + ' / '.join(f'{num(r, f, "pld_epsilon"):.3g}' for r in private)
            + ''.join(f' → {num(r, f, "nll_raw"):.3f} non-private'
                      for r in nonprivate)
            + ' (raw weights, one run each)')
  return [Row(f'Privacy–utility, SmolLM2, {steps.pop():.0f} steps × expected '
              f'batch {batch.pop():.0f}', figure,
              (f, 'privacy_utility.csv', 'privacy_utility.png'))]


def row_canary_exposure(results: Results) -> list[Row]:
  """Canary exposure with and without DP (canary_exposure.json).

  With the sampled-ceiling fields (`exposure_rank_bits`,
  `sampled_ceiling_bits`, ...) the measured rank exposure among the scored
  candidates leads and the full-space figure is labelled an extrapolation;
  files without them give the earlier single exposure figure.
  """
  f = 'canary_exposure.json'
  rows = results.json(f)
  dp_rows = select(rows, f, dp=True)

  def one(key: str) -> float:
    values = {round(num(r, f, key), 9) for r in rows}
    if len(values) != 1:
      raise ValueError(f'{f}: rows differ in {key}')
    return values.pop()

  def bits(dp: bool, key: str, digits: int = 1) -> str:
    sel = sorted(select(rows, f, dp=dp), key=lambda r: num(r, f, 'repetitions'))
    return ', '.join(f'{num(r, f, "repetitions"):.0f}× '
                     f'{num(r, f, key):.{digits}f}' for r in sel)

  eps = {round(num(r, f, 'pld_epsilon'), 6) for r in dp_rows}
  if len(eps) != 1:
    raise ValueError(f'{f}: DP rows differ in pld_epsilon')
  eps_text = g3(eps.pop())
  tail = ': the guarantee is per record, and k copies are a group of k'
  if 'exposure_rank_bits' not in rows[0]:
    return [Row(
        'Canary exposure (bits, by times a canary is seen)',
        f'without DP: {bits(False, "exposure_bits")}; with DP at PLD ε = '
        f'{eps_text}: {bits(True, "exposure_bits")} (ceiling '
        f'{one("max_exposure_bits"):.1f}, chance '
        f'{one("chance_exposure_bits"):.1f})' + tail,
        (f, 'canary_exposure.csv', 'canary_exposure.png'))]
  return [Row(
      'Canary exposure (bits, by times a canary is seen), measured as the '
      f'rank among {one("sampled_candidates"):,.0f} scored texts',
      f'without DP: {bits(False, "exposure_rank_bits", 2)}; with DP at PLD ε = '
      f'{eps_text}: {bits(True, "exposure_rank_bits", 2)} (ceiling '
      f'{one("sampled_ceiling_bits"):.2f}, chance '
      f'{one("sampled_chance_bits"):.1f}). Extrapolated to all '
      f'{g3(one("full_space_size"))} candidates (an extrapolation, ceiling '
      f'{one("full_space_max_bits"):.1f}): without DP '
      f'{bits(False, "exposure_extrapolated_bits")}; with DP '
      f'{bits(True, "exposure_extrapolated_bits")}' + tail,
      (f, 'canary_exposure.csv', 'canary_exposure.png'))]


def row_ewtune(results: Results) -> list[Row]:
  """EW-Tune's Edgeworth σ vs the PLD bound (ewtune_sigma_table.csv)."""
  f = 'ewtune_sigma_table.csv'
  rows = results.csv(f)
  if not rows:
    raise ResultKeyError(f'experiments/results/{f}: no rows')
  target = {num(r, f, 'target_eps') for r in rows}
  if len(target) != 1:
    raise ValueError(f'{f}: several target_eps values')
  tasks = list(dict.fromkeys(get(r, f, 'task') for r in rows))
  deltas = sorted({num(r, f, 'delta') for r in rows})
  return [Row(
      f'EW-Tune σ table ({", ".join(tasks)}; δ '
      f'{" / ".join(sci(v) for v in deltas)})',
      f'the Edgeworth σ for ε = {g3(target.pop())} is '
      f'{span([-num(r, f, "ew_vs_pld_pct") for r in rows], fixed(1))}'
      '% below the tight PLD σ, but at that σ the PLD upper bound is '
      f'ε = {span([num(r, f, "eps_pld_at_sigma_ew") for r in rows], fixed(2))}'
      ': the '
      '"saving" is the estimate understating ε',
      (f, 'ewtune_sigma_table.md'))]


def row_lmo(results: Results) -> list[Row]:
  """LMO-DP: the artifact's search vs sound accounting (lmo_table.csv)."""
  f = 'lmo_table.csv'
  rows = select(results.csv(f), f, table='search',
                search='grid, paper-faithful')
  mc_key = next((k for k in rows[0] if k.startswith('mc_lower_eps_delta_')),
                None)
  if mc_key is None:
    raise ResultKeyError(f"experiments/results/{f}: missing key "
                         "'mc_lower_eps_delta_*'")
  mc_delta = mc_key.removeprefix('mc_lower_eps_delta_')
  return [Row(
      "LMO-DP, the artifact's parameter search (paper-faithful grid, per "
      'step)',
      f'claimed ε {span([num(r, f, "claimed_eps") for r in rows])}; sound '
      f'upper bound {span([num(r, f, "sound_eps") for r in rows])}; a '
      f'Monte-Carlo lower estimate (δ = {mc_delta}) of '
      f'{span([num(r, f, mc_key) for r in rows])} refutes the claims',
      (f, 'lmo_table.md'))]


def row_dp_adam_ac(results: Results) -> list[Row]:
  """DP-Adam-AC minus DP-AdamW, paired (dp_adam_ac_summary.csv)."""
  f = 'dp_adam_ac_summary.csv'
  rows = select(results.csv(f), f, formally_private='yes')
  ac = {(r['model'], r['target_epsilon'], r['clip0'], r['rep']): r
        for r in rows if r.get('method') == 'dp_adam_ac'}
  fixed = {(r['model'], r['target_epsilon'], r['clip0'], r['rep']): r
           for r in rows if r.get('method') == 'dp_adamw_fixed_c'}
  pairs = sorted(set(ac) & set(fixed))
  if not pairs:
    raise ResultKeyError(f'experiments/results/{f}: no dp_adam_ac / '
                         'dp_adamw_fixed_c pair')
  diff = {k: num(ac[k], f, 'eval_ema') - num(fixed[k], f, 'eval_ema')
          for k in pairs}
  clips = sorted({k[2] for k in pairs}, key=float)
  parts = []
  for clip in clips:
    ds = [v for k, v in diff.items() if k[2] == clip]
    models = sorted({k[0] for k in pairs if k[2] == clip})
    parts.append(f'C₀ = {g3(float(clip))}: {span(ds, lambda v: f"{v:+.3f}")} '
                 f'({len(ds)} pairs, {", ".join(models)})')
  eps = sorted({float(k[1]) for k in pairs})
  return [Row(
      'DP-Adam-AC minus DP-AdamW (fixed C), held-out EMA loss, same seed, '
      f'PLD ε {" / ".join(g3(e) for e in eps)}, small synthetic CPU '
      'reproduction',
      '; '.join(parts) + ' nats (negative: DP-Adam-AC better)',
      (f, 'dp_adam_ac_summary.md'))]


def row_mechanism_comparison(results: Results) -> list[Row]:
  """Gaussian vs Edgeworth-calibrated vs LMO (mechanism_comparison.json).

  Reports each run present (mean over its seeds, with the seed count), so a
  file written before every planned (run, seed) finished still renders.
  """
  f = 'mechanism_comparison.json'
  d = results.json(f)
  runs = get(d, f, 'results')
  names = list(dict.fromkeys(str(get(r, f, 'run')) for r in runs))
  of = {n: select(runs, f, run=n) for n in names}

  def mean(run: str, *key: str) -> float:
    return statistics.mean(num(r, f, *key) for r in of[run])

  def seeds(run: str) -> str:
    n = len(of[run])
    return f'{n} seed{"s" if n != 1 else ""}'

  def accs(run: str) -> list[float]:
    return [num(r, f, 'accuracy') for r in of[run]]

  def label(run: str) -> str:
    sound = g3(mean(run, 'sound_epsilon'))
    if run == 'gaussian_pld':
      return f'Gaussian, PLD ε {sound}'
    if run == 'gaussian_edgeworth':
      return (f'Edgeworth-calibrated to an estimated ε '
              f'{g3(mean(run, "epsilon_rows", "edgeworth"))}: its PLD bound '
              f'is **{sound}**')
    if run == 'lmo_sound':
      below = ('gaussian_pld' in of and len(accs(run)) > 1
               and len(accs('gaussian_pld')) > 1
               and max(accs(run)) < min(accs('gaussian_pld')))
      return (f'LMO, sound ε {sound}'
              + ('; every seed below every Gaussian seed' if below else ''))
    if run == 'lmo_paper_faithful_not_private':
      paper = g3(mean(run, 'epsilon_rows', 'lmo_paper_faithful_not_private'))
      return (f'LMO as the paper runs it, NOT private: sound bound {sound} '
              f"for the paper's {paper}")
    if run == 'nonprivate':
      return 'without DP'
    private = all(get(r, f, 'formally_private') for r in of[run])
    return f'{run}, sound ε {sound}' + ('' if private else ', NOT private')

  first = names[0] if names else None
  if first is None:
    raise ResultKeyError(f'experiments/results/{f}: no results')
  return [Row(
      'Gaussian vs Edgeworth-calibrated Gaussian vs LMO, MiniLM with RGP, '
      f'{num(d, f, "args", "steps"):.0f} steps, held-out accuracy (mean over '
      'seeds)',
      f'{mean(first, "accuracy_initial"):.3f} before → '
      + ', '.join(f'{mean(n, "accuracy"):.3f} ({label(n)}; {seeds(n)})'
                  for n in names)
      + f'; the accuracy of one run on {num(d, f, "args", "eval_records"):.0f}'
      f' held-out passages has a standard error of about '
      f'{math.sqrt(0.25 / num(d, f, "args", "eval_records")):.3f}',
      (f, 'mechanism_comparison.md'))]


def row_secret_randomness(results: Results) -> list[Row]:
  """Cost of secret randomness and float32 sums (secret_randomness_cost)."""
  f = 'secret_randomness_cost.json'
  d = results.json(f)
  s, r = get(d, f, 'setup'), get(d, f, 'ratios')
  return [Row(
      'Secret randomness and float32 clipped sums, '
      f'{num(s, f, "layers"):.0f}-layer decoder, dropout '
      f'{num(s, f, "dropout"):g}, batch {num(s, f, "batch"):.0f} × '
      f'{num(s, f, "seq"):.0f}, micro-batch {num(s, f, "micro"):.0f}, '
      'interleaved',
      'OS-entropy rbg key with per-record dropout keys vs public-seed '
      f'threefry with slot keys: {x2(num(r, f, "secret_vs_previous_time"))} '
      f'time, {x2(num(r, f, "secret_vs_previous_memory"))} memory; float32 '
      'vs bfloat16-rounded clipped sum (bfloat16 parameters): '
      f'{x2(num(r, f, "f32_sum_vs_bf16_sum_time"))} time, '
      f'{x2(num(r, f, "f32_sum_vs_bf16_sum_memory"))} memory; drawing the '
      f'secret: {num(d, f, "secret_seeding_seconds_once_per_run"):.2f} s '
      'once per run',
      (f,))]


def row_accounting(results: Results) -> list[Row]:
  """dpjax accountants vs dp-accounting (accounting_benchmark.json)."""
  f = 'accounting_benchmark.json'
  d = results.json(f)
  rows = get(d, f, 'rows')

  def steps(r: dict[str, Any]) -> int:
    m = re.search(r'steps=(\d+)', str(get(r, f, 'setting')))
    if not m:
      raise ResultKeyError(f'experiments/results/{f}: setting '
                           f'{r["setting"]!r} names no steps=')
    return int(m.group(1))

  pld = max(select(rows, f, task='pld_epsilon'), key=steps)
  cal = select(rows, f, task='pld_calibrate_sigma')
  return [Row(
      'Accountants, dpjax vs dp-accounting '
      f'{get(d, f, "versions", "dp_accounting")} (median of '
      f'{num(d, f, "setting", "repeats"):.0f}, q = '
      f'{num(d, f, "setting", "q"):g})',
      f'PLD ε for {steps(pld):,} steps in {num(pld, f, "dpjax_s"):.2f} s '
      f'({num(pld, f, "speedup"):.0f}× faster); σ calibration '
      f'{span([num(r, f, "dpjax_s") for r in cal], lambda v: f"{v:.2f}")} s '
      f'({span([num(r, f, "speedup") for r in cal], lambda v: f"{v:.0f}")}×)',
      (f, 'accounting_benchmark.md'))]


def row_replay_audit(results: Results) -> list[Row]:
  """The neighbouring-dataset replay on the shipped configs (replay_audit)."""
  f = 'replay_audit.json'
  rows = results.json(f)
  ran = [r for r in rows if get(r, f, 'ran')]
  passed = [r for r in ran if get(r, f, 'passed')]
  skipped = [get(r, f, 'config') for r in rows if not r['ran']]
  worst = max(num(r, f, 'max_ratio') for r in ran)
  cases = sum(num(r, f, 'cases') for r in ran)
  violations = sum(num(r, f, 'violations') for r in ran)
  return [Row(
      'Neighbouring-dataset replay check on the shipped configs',
      f'{len(passed)} of {len(ran)} runnable configs pass ({cases:.0f} cases, '
      f'{violations:.0f} violations); worst ‖S(D) − S(D′)‖ / sensitivity '
      f'{worst:.7f}; not runnable here: {", ".join(skipped) or "none"}',
      (f, 'replay_audit.md'))]


def _mechanism_audit_row(results: Results, f: str) -> Row:
  """One white-box (Dirac canary) audit file as a Row."""
  d = results.json(f)
  setup = get(d, f, 'setup')
  rows = get(d, f, 'rows')
  model = setup.get('model_text') or 'debug model (configs/debug.py, full)'

  def lbs(r: dict[str, Any]) -> list[float]:
    return [num(s, f, 'epsilon_lb') for s in get(r, f, 'seeds')]

  def verdict(r: dict[str, Any]) -> str:
    claimed = num(r, f, 'claimed_epsilon')
    fails = sum(1 for v in lbs(r) if v > claimed)
    n = len(lbs(r))
    if fails == n:
      return 'FAIL'
    return 'pass' if not fails else f'FAIL in {fails} of {n}'

  correct = [r for r in rows if r.get('bug') is None]
  if not correct:
    raise ResultKeyError(f'experiments/results/{f}: no row without a '
                         'planted bug')
  parts = [
      'correct step at claimed ε '
      + ' / '.join(g3(num(r, f, 'claimed_epsilon')) for r in correct)
      + ': max ε_lb ' + ' / '.join(g3(max(lbs(r))) for r in correct)
      + ' (' + ', '.join(verdict(r) for r in correct) + ')']
  names = {'noise/10': 'noise 10× below the ledger', 'noclip': 'no clipping'}
  for r in rows:
    bug = r.get('bug')
    if bug is None:
      continue
    text = (f'{names.get(bug, bug)} at claimed ε '
            f'{g3(num(r, f, "claimed_epsilon"))}: ε_lb {span(lbs(r))} '
            f'{verdict(r)}')
    if verdict(r) == 'pass':
      ceiling = max(num(s, f, 'ceiling') for s in get(r, f, 'seeds'))
      text += (f' (the bound\'s ceiling, {g3(ceiling)}, leaves no room '
               'above the claim)')
    parts.append(text)
  seeds = num(setup, f, 'seeds')
  return Row(
      f'White-box audit (`dpjax.audit mechanism`), {model}: '
      f'{num(setup, f, "canaries"):.0f} Dirac canaries, N = '
      f'{num(setup, f, "n"):.0f}, expected batch {num(setup, f, "batch"):.0f},'
      f' {num(setup, f, "steps"):.0f} steps, {seeds:.0f} '
      f'seed{"s" if seeds != 1 else ""} per row; ε_lb is an empirical lower '
      'bound on ε',
      '; '.join(parts), (f, f.removesuffix('.json') + '.md'))


def row_audit_mechanism(results: Results) -> list[Row]:
  """White-box audits: claimed ε vs ε_lb, planted bugs (audit_mechanism*)."""
  rows = [_mechanism_audit_row(results, 'audit_mechanism.json')]
  if results.exists('audit_mechanism_smollm2.json'):
    rows.append(_mechanism_audit_row(results, 'audit_mechanism_smollm2.json'))
  return rows


# The audit_epsilon.json runs computed with the one-run bound's earlier
# default search (correction='hull', data-dependent; before commit 97e4618),
# keyed by the file's stamp so that a rerun drops the note.
_HULL_AUDIT_RUNS = {'Commit 75ef9bef34': ('debug', 'smollm2')}


def row_audit_epsilon(results: Results) -> list[Row]:
  """Black-box audits: claimed ε vs ε_lb, one run each (audit_epsilon.json)."""
  f = 'audit_epsilon.json'
  d = results.json(f)
  runs = get(d, f, 'runs')
  models = list(dict.fromkeys(str(get(r, f, 'model')) for r in runs))
  conf = {num(r, f, 'confidence') for r in runs}
  if len(conf) != 1:
    raise ValueError(f'{f}: runs differ in confidence')
  accountants = {str(get(r, f, 'claimed_epsilon_accountant')).upper()
                 for r in runs if math.isfinite(num(r, f, 'claimed_epsilon'))}
  claimed = f'claimed {"/".join(sorted(accountants))} ε'
  parts = []
  for model in models:
    of = select(runs, f, model=model)
    private = sorted((r for r in of
                      if math.isfinite(num(r, f, 'claimed_epsilon'))),
                     key=lambda r: num(r, f, 'claimed_epsilon'))
    public = [r for r in of if not math.isfinite(num(r, f, 'claimed_epsilon'))]
    st = get(of[0], f, 'settings')
    text = (f'{model} ({get(st, f, "model")}, {get(st, f, "peft")}, '
            f'{num(st, f, "steps"):.0f} steps, '
            f'{num(st, f, "canaries"):.0f} canaries): ')
    if private:
      text += ('ε_lb ' + ' / '.join(g3(num(r, f, 'epsilon_lb'))
                                    for r in private)
               + f' at {claimed} '
               + ' / '.join(g3(num(r, f, 'claimed_epsilon'))
                            for r in private))
    for r in public:
      before = num(r, f, 'heldout_nll_before')
      after = num(r, f, 'heldout_nll_after')
      text += (f'{", " if private else ""}{g3(num(r, f, "epsilon_lb"))} '
               'non-private')
      if after > before:
        text += (f' (that run diverged: held-out NLL {before:.2f} → '
                 f'{after:.2f}, not a reference)')
    parts.append(text)
  above = sum(1 for r in runs if num(r, f, 'epsilon_lb')
              > num(r, f, 'claimed_epsilon'))
  figure = '; '.join(parts) + (
      f'. {above or "No"} private run{"" if above < 2 else "s"} above '
      'its claim')
  hull = _HULL_AUDIT_RUNS.get(str(d.get('stamp', '')).split(',')[0])
  if hull:
    figure += (f'. The {" and ".join(hull)} runs used the older \'hull\' '
               'search (before commit 97e4618, data-dependent correction); '
               'the others the current fixed grid')
  return [Row(
      'Black-box audit (`audit.enabled=True`), one run per row: secret '
      'random-token canaries scored by the final model\'s loss; ε_lb is an '
      f'empirical lower bound ({next(iter(conf)):.0%} confidence)',
      figure, _present(results, f, 'audit_epsilon.md'))]


def row_mutation_report(results: Results) -> list[Row]:
  """Planted one-line bugs caught by the tests (mutation_report.json).

  Skipped (no row) while the file does not exist.
  """
  f = 'mutation_report.json'
  if not results.exists(f):
    return []
  d = results.json(f)
  rows = get(d, f, 'mutations')
  summary = get(d, f, 'summary')
  outcomes = [str(get(r, f, 'outcome')) for r in rows]
  count = {o: outcomes.count(o) for o in dict.fromkeys(outcomes)}
  # The summary block and the rows must tell the same story.
  for outcome, n in count.items():
    total = sum(num(summary, f, effect, outcome) for effect in summary)
    if total != n:
      raise ValueError(f'{f}: summary counts {total:.0f} {outcome}, the '
                       f'mutations list {n}')
  harmful = sum(1 for r in rows if r['outcome'] == 'survived'
                and get(r, f, 'effect') != 'equivalent')
  equivalent = count.get('survived', 0) - harmful
  other = ', '.join(f'{count[o]} {o}' for o in count
                    if o not in ('caught', 'survived'))
  subset = (' (a subset: --only)'
            if d.get('only') and not d.get('merged_into_previous') else '')
  if d.get('complete') is False:
    subset += ' (incomplete run)'
  return [Row(
      f'Mutation testing, one-line mutations of the privacy-critical '
      f'code{subset}',
      f'{len(rows)} mutations: {count.get("caught", 0)} caught, '
      f'{count.get("survived", 0)} survived ({harmful} that change the '
      f'guarantee, {equivalent} equivalent)' + (f', {other}' if other else ''),
      (f, 'mutation_report.md'))]


def rel(x: float) -> str:
  """A relative error with two significant digits: '6.4e-4', '0.84'."""
  if x >= 0.01:
    return f'{x:.2f}'
  mantissa, exp = f'{x:.1e}'.split('e')
  return f'{mantissa}e{int(exp)}'


def _export_rows(results: Results):
  f = 'export_dtypes.json'
  d = results.json(f)
  return f, d, [r for r in get(d, f, 'rows')
                if get(r, f, 'format') == 'hf' or r.get('exported')]


def row_export_dtypes(results: Results) -> list[Row]:
  """Size and held-out NLL of each export (export_dtypes.json)."""
  f, d, rows = _export_rows(results)
  parts = [f'{"HF" if get(r, f, "format") == "hf" else "GGUF"} '
           f'{get(r, f, "dtype")} {num(r, f, "size_mib"):.1f} MiB, '
           f'ΔNLL {num(r, f, "max_abs_delta"):.4f}' for r in rows]
  return [Row(
      f'Exports of SmolLM2-135M: size and held-out NLL read back by '
      f'{", ".join(get(d, f, "recommendation", "readers"))} '
      f'({num(d, f, "records"):.0f} × {num(d, f, "seq_len"):.0f} tokens)',
      f'reference {num(d, f, "reference", "nll"):.4f} nats/token; '
      + '; '.join(parts) + ' (largest |ΔNLL| over the readers); default '
      f'GGUF dtype {get(d, f, "recommendation", "dtype")}: the smallest '
      f'within {g3(num(d, f, "tolerance_nats_per_token"))} nats/token',
      (f, 'export_dtypes.md'))]


def row_user_level_step_benchmark(results: Results) -> list[Row]:
  """ULS step vs record-level DP step (user_level_step_benchmark.json)."""
  f = 'user_level_step_benchmark.json'
  d = results.json(f)
  eq = get(d, f, 'ratios', 'equal_records_per_microbatch')
  best = get(d, f, 'ratios', 'best_vs_best')
  times = [num(v, f, 'time') for v in eq.values()]
  mems = [num(v, f, 'memory') for v in eq.values()]
  ks = sorted({int(num(v, f, 'k')) for v in eq.values()})
  best_text = ', '.join(f'k = {name[1:]} {x2(num(v, f, "time"))}'
                        for name, v in best.items())
  target = get(d, f, 'target')
  return [Row(
      f'User-level (ULS) DP step vs record-level DP step, 7.3M-parameter '
      f'decoder, the same {num(d, f, "setup", "records"):.0f} records per '
      f'step (users of k = {", ".join(map(str, ks))} records)',
      f'user / record at equal records per micro-batch: '
      f'{span(times, x2)} time, {span(mems, x2)} memory; best vs best: '
      f'{best_text}; target ≤ {x2(num(target, f, "max_time_ratio"))}: '
      f'{"met" if get(target, f, "met") else "NOT met"}',
      (f, 'user_level_step_benchmark.md'))]


def row_user_level_comparison(results: Results) -> list[Row]:
  """ULS vs ELS at equal user-level epsilon (user_level_comparison.json)."""
  f = 'user_level_comparison.json'
  d = results.json(f)
  summary = get(d, f, 'summary')
  eps = max(num(s, f, 'epsilon_pld') for s in summary)
  by_mode = {}
  for s in summary:
    by_mode.setdefault(get(s, f, 'mode'), []).append(
        f'k = {num(s, f, "k"):.0f} {num(s, f, "eval_loss_mean"):.3f}')
  before = summary[0]['eval_loss_initial']
  return [Row(
      f'User-level DP, ULS vs ELS at equal user-level ε '
      f'({num(d, f, "data", "train_users"):.0f} customers, '
      f'{num(d, f, "data", "train_records"):.0f} tickets, up to '
      f'{num(d, f, "data", "records_per_user_max"):.0f} per customer; tiny '
      f'decoder, {num(d, f, "steps"):.0f} steps, {len(get(d, f, "seeds"))} '
      f'seeds)',
      f'held-out NLL {before:.3f} before → ULS '
      + ', '.join(by_mode.get('uls', [])) + '; ELS '
      + ', '.join(by_mode.get('els', []))
      + f' (PLD ε ≤ {eps:.2f}, one customer): ELS pays for its group '
      'accounting as k grows, ULS does not',
      (f, 'user_level_comparison.md'))]


def row_fsdp_memory(results: Results) -> list[Row]:
  """Per-device memory, replicated vs FSDP, 1-8 devices (fsdp_memory.json)."""
  f = 'fsdp_memory.json'
  d = results.json(f)
  setup = get(d, f, 'setup')
  rows = get(d, f, 'rows')
  mib = 2.0 ** 20

  def at(n, preset):
    return select(rows, f, devices_data=n, param_sharding=preset)[0]
  one = num(at(1, 'replicated'), f, 'state_bytes_per_device')
  ns = [int(n) for n in get(setup, f, 'devices')]
  state = ', '.join(f'{num(at(n, "fsdp"), f, "state_bytes_per_device") / one:.3f}'
                    for n in ns)
  peak = '; '.join(
      f'n = {n}: {num(at(n, "fsdp"), f, "memory_per_device", "peak") / mib:.0f}'
      f' vs {num(at(n, "replicated"), f, "memory_per_device", "peak") / mib:.0f}'
      for n in ns)
  params = num(at(1, 'replicated'), f, 'trainable_params')
  return [Row(
      f'Per-device memory of the DP step (XLA compiled analysis), '
      f'{params / 1e6:.0f}M-parameter decoder, full fine-tuning, float32, '
      f'{num(setup, f, "batch"):.0f} × {num(setup, f, "seq"):.0f}, '
      f'micro-batch {num(setup, f, "microbatch"):.0f}, '
      f'{", ".join(map(str, ns))} simulated devices',
      f'parameters + optimizer state per device with mesh.param_sharding='
      f"'fsdp': {state} of one device's; peak MiB per device, FSDP vs "
      f'replicated: {peak}',
      (f, 'fsdp_memory.md'))]


def row_seed_model_compile(results: Results) -> list[Row]:
  """The seeds' full-size steps on 8 devices (seed_model_compile.json)."""
  f = 'seed_model_compile.json'
  d = results.json(f)
  gib = 2.0 ** 30
  parts = []
  for key, name in (('qwen2', 'Qwen2.5-0.5B'), ('bitnet', 'BitNet b1.58 2B')):
    r = get(d, f, key)
    st = get(r, f, 'settings')
    parts.append(
        f'{name} ({get(st, f, "peft")}): peak '
        f'{num(r, f, "memory_per_device", "peak") / gib:.2f} GiB, '
        f'{num(r, f, "flops_step_per_device") / 1e12:.1f} TFLOP per device '
        f'per step')
  st = get(get(d, f, 'qwen2'), f, 'settings')
  return [Row(
      f"The seeds' DP-Adam-AC steps at full size, compiled for 8 simulated "
      f"devices with mesh.param_sharding='fsdp', bfloat16 compute, float32 "
      f'master weights (B_max {num(st, f, "max_batch_size"):.0f} × '
      f'{num(st, f, "seq_len"):.0f}, micro-batch '
      f'{num(st, f, "microbatch_size"):.0f})',
      '; '.join(parts) + ' (XLA:CPU analyses: estimates for GPU/TPU; '
      'predictions per accelerator in docs/scaling.md)',
      (f, 'seed_model_compile.md', 'cost_model.md'))]


def row_mixed_precision(results: Results) -> list[Row]:
  """bfloat16 vs float32 compute, DP step and short run (mixed_precision.json)."""
  f = 'mixed_precision.json'
  d = results.json(f)
  setup, ratio = get(d, f, 'setup'), get(d, f, 'ratio')
  loss = get(d, f, 'loss_comparison')
  return [Row(
      f'bfloat16 vs float32 compute (float32 master weights, clipped sum and '
      f'noise), {num(setup, f, "params") / 1e6:.1f}M-parameter decoder, '
      f'batch {num(setup, f, "max_batch"):.0f} × {num(setup, f, "seq"):.0f}',
      f'{x2(num(ratio, f, "time"))} time '
      f'({x2(num(ratio, f, "time_per_round_min"))}–'
      f'{x2(num(ratio, f, "time_per_round_max"))} per round), '
      f'{x2(num(ratio, f, "memory"))} memory on XLA:CPU (it upcasts bf16 '
      f'matmuls: the gain is an accelerator property); after '
      f'{num(setup, f, "loss_steps"):.0f} steps the train loss differs by at '
      f'most {num(loss, f, "max_abs_train_loss_diff"):.1e}, the held-out '
      f'loss by {abs(num(loss, f, "final_eval_loss_diff")):.1e}',
      (f, 'mixed_precision.md'))]


def row_llama_cpp_check(results: Results) -> list[Row]:
  """dpjax's GGUF exports in real llama.cpp (llama_cpp_check.json)."""
  f = 'llama_cpp_check.json'
  d = results.json(f)
  rows = get(d, f, 'rows')
  if not rows:
    raise ResultKeyError(f'experiments/results/{f}: no rows')

  def worst(dtype: str, key: str) -> float:
    return max(num(r, f, key) for r in rows if get(r, f, 'dtype') == dtype)

  dtypes = list(dict.fromkeys(get(r, f, 'dtype') for r in rows))
  ropes = list(dict.fromkeys(get(r, f, 'rope') for r in rows))
  families = list(dict.fromkeys(get(r, f, 'family') for r in rows))
  ignored = [num(r, f, 'rel_err_if_rope_ignored') for r in rows
             if 'rel_err_if_rope_ignored' in r]
  seen = all(get(r, f, 'chat_template_seen') and get(r, f, 'name_seen')
             for r in rows)
  return [Row(
      f'GGUF exports in real llama.cpp (llama-cpp-python '
      f'{get(d, f, "llama_cpp_python")}), tiny random {" and ".join(families)}'
      f' models, RoPE {", ".join(ropes)}',
      'max |logits llama.cpp − logits dpjax| / max |logits dpjax|: '
      + ', '.join(f'{dt} {rel(worst(dt, "rel_err_vs_float32"))}'
                  for dt in dtypes)
      + f' (with the RoPE scaling ignored: {span(ignored, rel)}); chat '
      f'template and general.name read by llama.cpp: '
      f'{"all" if seen else "NOT all"} {len(rows)} files',
      (f, 'llama_cpp_check.md'))]


RENDERERS: list[Callable[[Results], list[Row]]] = [
    row_quickstart,
    row_default_run,
    row_step_benchmark,
    row_smollm2_step_benchmark,
    row_bookkeeping,
    row_noise_memory,
    row_rgp_step_benchmark,
    row_privacy_utility,
    row_canary_exposure,
    row_mechanism_comparison,
    row_secret_randomness,
    row_accounting,
    row_ewtune,
    row_lmo,
    row_dp_adam_ac,
    row_replay_audit,
    row_audit_mechanism,
    row_audit_epsilon,
    row_mutation_report,
    row_export_dtypes,
    row_llama_cpp_check,
    row_user_level_step_benchmark,
    row_user_level_comparison,
    row_fsdp_memory,
    row_seed_model_compile,
    row_mixed_precision,
]
# Other generated README blocks: (begin marker, end marker, renderer). None
# now: README.md keeps every measured figure in the one Measured table (issue
# 19); other sections point to it.
BLOCKS: tuple[tuple[str, str, Callable[[pathlib.Path | str], str]], ...] = ()


def _cell(text: str) -> str:
  return text.replace('|', '\\|').replace('\n', ' ')


def render(results_dir: pathlib.Path | str = RESULTS_DIR) -> str:
  """The Measured section's body (between the markers), as markdown.

  Args:
    results_dir: the directory holding the result files.

  Returns:
    The body, starting and ending with a newline.

  Raises:
    ResultKeyError: a result file lacks a key a renderer needs.
    FileNotFoundError: a required result file is missing.
  """
  results = Results(results_dir)
  lines = [
      '',
      '',
      'Generated by `python experiments/readme_measured.py` from the files '
      'named in each row (do not edit by hand; `--check` fails when they '
      'disagree). Time and memory are ratios within one run on a shared '
      'machine; ε values are upper bounds unless marked otherwise.',
      '',
      '| What | Measured | File |',
      '|---|---|---|',
  ]
  for renderer in RENDERERS:
    _PATHS.clear()
    rows = renderer(results)
    _PATHS.clear()
    for row in rows:
      files = ', '.join(f'`{name}`' for name in row.files)
      lines.append(f'| {_cell(row.what)} | {_cell(row.figure)} | {files} |')
  lines.append('')
  return '\n'.join(lines) + '\n'


def split_readme(text: str, begin: str = BEGIN, end: str = END
                 ) -> tuple[str, str, str]:
  """(before and including `begin`, body, from `end` on) of README text.

  Raises:
    ValueError: when the markers are missing or out of order.
  """
  start, stop = text.find(begin), text.find(end)
  if start < 0 or stop < 0 or stop < start:
    raise ValueError(f'README.md: markers {begin} ... {end} not found')
  start += len(begin)
  return text[:start], text[start:stop], text[stop:]


def render_all(text: str, results_dir: pathlib.Path | str = RESULTS_DIR
               ) -> str:
  """README text with the Measured section and every BLOCKS body rendered."""
  head, _, tail = split_readme(text)
  text = head + render(results_dir) + tail
  for begin, end, renderer in BLOCKS:
    head, _, tail = split_readme(text, begin, end)
    text = head + renderer(results_dir) + tail
  return text


def main(argv: list[str] | None = None) -> int:
  """Rewrites README.md's section, or with --check compares it."""
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--check', action='store_true',
                  help='exit 1 with a diff if README.md differs')
  ap.add_argument('--readme', default=str(README))
  ap.add_argument('--results', default=str(RESULTS_DIR))
  args = ap.parse_args(argv)
  readme = pathlib.Path(args.readme)
  text = readme.read_text()
  new = render_all(text, args.results)
  if args.check:
    if text == new:
      return 0
    sys.stdout.writelines(difflib.unified_diff(
        text.splitlines(keepends=True), new.splitlines(keepends=True),
        'README.md', 'from experiments/results/'))
    print('README.md generated sections differ from the result files; run '
          'python experiments/readme_measured.py', file=sys.stderr)
    return 1
  if text != new:
    readme.write_text(new)
  return 0


if __name__ == '__main__':
  sys.exit(main())
