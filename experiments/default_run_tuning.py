"""Tuning the default run (`make run`, configs/quickstart.py) for DP / non-private gain.

  python experiments/default_run_tuning.py --settings today,b128_t8 [--heldout tuning]
  python experiments/default_run_tuning.py --settings CHOSEN --heldout reported --choose CHOSEN
  python experiments/default_run_tuning.py --make_run      # time the whole quickstart

Each setting is run twice with `python -m dpjax.main --config=configs/quickstart.py`
and explicit overrides (every tuned field is set, so a setting does not depend
on what quickstart.py holds today): once with DP (epsilon = 8, delta = 1e-5,
PLD-calibrated sigma, Poisson sampling, one packed sequence per record; these
are never changed here) and once non-private (dp.enabled=False) at the same
steps, batch, learning rate and everything else. The figure of merit is

  ratio = DP gain / non-private gain,  gain = initial held-out NLL - final held-out NLL

on the raw (not EMA) weights, as the run's report prints it (the EMA ratio is
recorded beside it). Tuning runs use held-out works other than the ones the
report evaluates (`--heldout tuning`: TUNING_HELDOUT), so the reported figure
is not tuned to; the chosen setting is then run once on the reported works
(`--heldout reported`, the config default) as the confirmation.

Tuning runs skip export and the plot (export.formats=(), plot=False) and
report only the PLD accountant (the calibration accountant; RDP and Edgeworth
are report-only). Results are appended to
experiments/results/default_run_tuning.json after every run (a run already
recorded for the same setting, mode and held-out set is skipped unless
--force), and the Markdown table is rewritten from it.

Wall seconds are for the whole `python -m dpjax.main` process (model load,
tokenization, compilation, steps, evaluations) on a 2-core machine shared with
other engineers' test suites: the 1-minute load averages at the start and end
of each run are recorded with it; compare times only at similar loads.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'experiments', 'results')
JSON_PATH = os.path.join(RESULTS, 'default_run_tuning.json')
MD_PATH = os.path.join(RESULTS, 'default_run_tuning.md')
PY = sys.executable

REPORTED_HELDOUT = ('twelfth_night', 'antony_and_cleopatra', 'richard_ii')
# One comedy, one tragedy, one history, like the reported set; disjoint from it.
TUNING_HELDOUT = ('much_ado_about_nothing', 'macbeth', 'henry_v')

# Every tuned field, explicitly. 'today' is quickstart.py before this work.
_BASE = dict(steps=8, batch_size=64, max_batch_size=96, microbatch_size=8,
             learning_rate=1e-2, warmup_steps=0, ema_decay=0.5,
             lora_rank=4, lora_alpha=8.0, lora_targets=r'.*self_attn/(q|v)_proj',
             l2_clip_norm=1.0, seq_len=64)


def _s(**kw):
  return dict(_BASE, **kw)


# max_batch_size: the static padded shape (every step computes all of it);
# about B + 3 sqrt(B), rounded to the micro-batch, so an overflow (two chunks and
# one more compilation) is rare (report: poisson_overflow_probability_per_step).
SETTINGS = {
    'today': _s(),
    'b128_t8': _s(batch_size=128, max_batch_size=168),
    'b256_t4': _s(steps=4, batch_size=256, max_batch_size=304),
    'b256_t4_lr2e-2': _s(steps=4, batch_size=256, max_batch_size=304,
                         learning_rate=2e-2),
    'b128_t8_r1': _s(batch_size=128, max_batch_size=168, lora_rank=1,
                     lora_alpha=2.0),
    'b192_t6': _s(steps=6, batch_size=192, max_batch_size=232),
    'b128_t8_lr5e-3': _s(batch_size=128, max_batch_size=168,
                         learning_rate=5e-3),
    'b256_t4_r1': _s(steps=4, batch_size=256, max_batch_size=304, lora_rank=1,
                     lora_alpha=2.0),
    'b256_t4_lr2e-2_r1': _s(steps=4, batch_size=256, max_batch_size=304,
                            learning_rate=2e-2, lora_rank=1, lora_alpha=2.0),
    'b128_t8_w2': _s(batch_size=128, max_batch_size=168, warmup_steps=2),
    'b256_t4_lr5e-3': _s(steps=4, batch_size=256, max_batch_size=304,
                         learning_rate=5e-3),
    'b128_t8_lr5e-3': _s(batch_size=128, max_batch_size=168,
                         learning_rate=5e-3),
    'b256_t4_lr3e-3': _s(steps=4, batch_size=256, max_batch_size=304,
                         learning_rate=3e-3),
}

_FIELD = {  # setting key -> config path
    'steps': 'train.steps', 'batch_size': 'train.batch_size',
    'max_batch_size': 'train.max_batch_size',
    'microbatch_size': 'train.microbatch_size',
    'learning_rate': 'train.learning_rate',
    'warmup_steps': 'train.warmup_steps', 'ema_decay': 'train.ema_decay',
    'lora_rank': 'peft.lora_rank', 'lora_alpha': 'peft.lora_alpha',
    'lora_targets': 'peft.lora_targets', 'l2_clip_norm': 'dp.l2_clip_norm',
    'seq_len': 'data.seq_len',
}


def _load():
  if os.path.exists(JSON_PATH):
    with open(JSON_PATH, encoding='utf-8') as f:
      return json.load(f)
  return {'runs': [], 'chosen': None, 'make_run': []}


def _save(db):
  os.makedirs(RESULTS, exist_ok=True)
  tmp = JSON_PATH + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(db, f, indent=1)
  os.replace(tmp, JSON_PATH)
  with open(MD_PATH, 'w', encoding='utf-8') as f:
    f.write(markdown(db))


def _git_commit():
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT,
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return '?'


def _child_cpu():
  """User + system CPU seconds of the finished child processes so far (on a
  shared machine a steadier measure of the work than wall time)."""
  ru = resource.getrusage(resource.RUSAGE_CHILDREN)
  return ru.ru_utime + ru.ru_stime


def _load1():
  return round(os.getloadavg()[0], 2)


def _tuple_literal(works):
  return '(' + ''.join(f"'{w}'," for w in works) + ')'


def snapshot(workroot):
  """A clean copy of the committed tree (git archive HEAD), so that runs never
  see another engineer's half-made edits in the shared working tree."""
  dest = os.path.join(workroot, 'code')
  os.makedirs(dest)
  archive = subprocess.run(['git', 'archive', 'HEAD'], cwd=ROOT,
                           capture_output=True, check=True).stdout
  subprocess.run(['tar', '-x', '-C', dest], input=archive, check=True)
  return dest


def _has_field(code, name):
  with open(os.path.join(code, 'configs', 'default.py'), encoding='utf-8') as f:
    return f'config.{name} =' in f.read()


def run_one(name, setting, private, heldout_name, workroot, tail_lines=40,
            code=ROOT):
  heldout = TUNING_HELDOUT if heldout_name == 'tuning' else REPORTED_HELDOUT
  workdir = os.path.join(workroot, f"{name}_{'dp' if private else 'np'}_"
                         f'{heldout_name}')
  shutil.rmtree(workdir, ignore_errors=True)
  args = [PY, '-m', 'dpjax.main', '--config=configs/quickstart.py',
          f'--workdir={workdir}']
  for key, path in _FIELD.items():
    args.append(f'--config.{path}={setting[key]}')
  steps = setting['steps']
  args += [f'--config.data.heldout_works={_tuple_literal(heldout)}',
           f'--config.dp.enabled={private}',
           f'--config.train.eval_every={steps}',
           f'--config.train.checkpoint_every={steps}',
           "--config.dp.report_accountants=('pld',)",
           '--config.export.formats=()', '--config.plot=False']
  # Later code evaluates during the run and writes TensorBoard files: off here
  # (evaluation does not change training; the runs stay comparable).
  if _has_field(code, 'train.evals_during_run'):
    args.append('--config.train.evals_during_run=0')
  if _has_field(code, 'tensorboard'):
    args.append('--config.tensorboard=False')
  load0, t0 = _load1(), time.time()
  started = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')
  cpu0 = _child_cpu()
  proc = subprocess.run(args, cwd=code, capture_output=True, text=True,
                        check=False)
  wall = time.time() - t0
  rec = {'setting': name, 'private': private, 'heldout': heldout_name,
         'heldout_works': list(heldout), 'overrides': setting,
         'started_utc': started, 'wall_s': round(wall, 1),
         'cpu_s': round(_child_cpu() - cpu0, 1),
         'load1_start': load0, 'load1_end': _load1(),
         'returncode': proc.returncode, 'commit': _git_commit(),
         'code': 'git archive HEAD' if code != ROOT else 'working tree'}
  if proc.returncode != 0:
    rec['error_tail'] = '\n'.join(
        (proc.stdout + proc.stderr).splitlines()[-tail_lines:])
    return rec
  with open(os.path.join(workdir, 'privacy_report.json'),
            encoding='utf-8') as f:
    rep = json.load(f)
  ev, mech = rep['evaluation'], rep['mechanism']
  rows = rep['privacy']['rows'] if rep['privacy'] else []
  rec.update(
      nll_initial=ev['eval_loss_initial'], nll_final=ev['eval_loss'],
      nll_final_ema=ev['eval_loss_ema'],
      epsilon_pld=next((r['epsilon'] for r in rows
                        if r['accountant'] == 'pld'), None),
      sigma=mech['noise_multiplier'] if private else None,
      sampling_rate_q=mech['sampling_rate_q'],
      dataset_size=mech['dataset_size'],
      overflow_probability_per_step=mech.get(
          'poisson_overflow_probability_per_step'),
      steps_run=mech['steps'], delta=rep['delta'] if private else None)
  shutil.rmtree(workdir, ignore_errors=True)
  return rec


CLAIMS = os.path.join(tempfile.gettempdir(), 'default_run_tuning_claims')


def _claim(name, mode, heldout):
  """A claim file so that two invocations (e.g. DP and non-private run side
  by side) never run the same run; None if a live process holds it."""
  os.makedirs(CLAIMS, exist_ok=True)
  path = os.path.join(CLAIMS, f'{name}_{mode}_{heldout}')
  try:
    with open(path, encoding='utf-8') as f:
      os.kill(int(f.read()), 0)
    return None
  except (OSError, ValueError):
    pass
  with open(path, 'w', encoding='utf-8') as f:
    f.write(str(os.getpid()))
  return path


def _find(db, name, private, heldout):
  for r in db['runs']:
    if (r['setting'] == name and r['private'] == private and
        r['heldout'] == heldout and r['returncode'] == 0):
      return r
  return None


def pairs(db):
  """One row per (setting, held-out set) with both runs."""
  out, seen = [], set()
  for r in db['runs']:
    key = (r['setting'], r['heldout'])
    if key in seen:
      continue
    seen.add(key)
    dp, np_ = _find(db, key[0], True, key[1]), _find(db, key[0], False,
                                                         key[1])
    row = {'setting': key[0], 'heldout': key[1], 'dp': dp, 'np': np_}
    if not dp and not np_:  # only failed runs (listed below the table)
      continue
    if dp and np_:
      g_dp = dp['nll_initial'] - dp['nll_final']
      g_np = np_['nll_initial'] - np_['nll_final']
      e_dp = dp['nll_initial'] - dp['nll_final_ema']
      e_np = np_['nll_initial'] - np_['nll_final_ema']
      row.update(gain_dp=g_dp, gain_np=g_np,
                 ratio=g_dp / g_np if g_np > 0 else None,
                 ratio_ema=e_dp / e_np if e_np > 0 else None)
    out.append(row)
  return out


def _fmt(x, spec):
  return '' if x is None else format(x, spec)


def _pct(x):
  return '' if x is None else f'{100 * x:.1f}%'


def _describe(s):
  b = _BASE
  parts = [f"T={s['steps']}", f"B={s['batch_size']:g} (pad {s['max_batch_size']})",
           f"lr={s['learning_rate']:g}"]
  if s['warmup_steps']:
    parts.append(f"warmup {s['warmup_steps']}")
  if (s['lora_rank'], s['lora_targets']) != (b['lora_rank'], b['lora_targets']):
    parts.append(f"LoRA r={s['lora_rank']} on {s['lora_targets']}")
  for k in ('ema_decay', 'l2_clip_norm', 'seq_len', 'microbatch_size'):
    if s[k] != b[k]:
      parts.append(f'{k}={s[k]}')
  return ', '.join(parts).replace('|', '\\|')  # Markdown table cell


def markdown(db):
  lines = [
      '# Default run tuning: DP gain / non-private gain at equal steps',
      '',
      'Source: `experiments/default_run_tuning.py`. SmolLM2-135M-Instruct '
      '(GGUF Q4_1 dequantized), Shakespeare, LoRA (rank 4 on q, v unless '
      'stated), DP-AdamW, epsilon = 8 (PLD), delta = 1e-5, Poisson '
      'sampling, one packed 64-token sequence per record; each DP run '
      'has a non-private twin (dp.enabled=False) with every other field '
      'equal. gain = initial - final held-out NLL (nats/token, raw '
      'weights, 64 held-out records); ratio = DP gain / non-private gain '
      '(EMA weights in the last ratio column).',
      '',
      f'Tuning held-out works: {", ".join(TUNING_HELDOUT)}. Reported '
      f'(confirmation) held-out works: {", ".join(REPORTED_HELDOUT)}: run '
      'only for the chosen setting (and today\'s for reference), never tuned on.',
      '',
      'Wall seconds: the whole `python -m dpjax.main` process without '
      'export or plot; 2 CPU cores shared with other engineers\' test '
      'suites (1-minute load average at start/end beside each time), so '
      'times are indicative only; CPU s (user + system of the process) '
      'is steadier (the first runs predate its recording).',
      '',
      '| setting | held-out | what | sigma | eps (PLD) | NLL initial | DP final | '
      'non-private final | DP gain | non-private gain | ratio | ratio (EMA) | '
      'wall s (CPU s) DP / non-private | load DP / non-private |',
      '|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|',
  ]
  for row in pairs(db):
    dp, np_ = row['dp'], row['np']
    s = (dp or np_ or {}).get('overrides') or SETTINGS.get(row['setting'])
    def g(r, k, spec='.4f'):
      return _fmt(r.get(k), spec) if r else ''
    lines.append(
        f"| {row['setting']} | {row['heldout']} | {_describe(s)} | "
        f"{g(dp, 'sigma')} | {g(dp, 'epsilon_pld', '.3f')} | "
        f"{g(dp or np_, 'nll_initial')} | {g(dp, 'nll_final')} | "
        f"{g(np_, 'nll_final')} | {_fmt(row.get('gain_dp'), '.4f')} | "
        f"{_fmt(row.get('gain_np'), '.4f')} | "
        f"{_pct(row.get('ratio'))} | {_pct(row.get('ratio_ema'))} | "
        f"{g(dp, 'wall_s', '.0f')} ({g(dp, 'cpu_s', '.0f')}) / "
        f"{g(np_, 'wall_s', '.0f')} ({g(np_, 'cpu_s', '.0f')}) | "
        f"{g(dp, 'load1_start', '.1f')}-{g(dp, 'load1_end', '.1f')} / "
        f"{g(np_, 'load1_start', '.1f')}-{g(np_, 'load1_end', '.1f')} |")
  failed = [r for r in db['runs'] if r['returncode'] != 0]
  if failed:
    lines += ['', 'Failed runs: ' + '; '.join(
        f"{r['setting']} ({'DP' if r['private'] else 'non-private'}, "
        f"{r['heldout']}, rc {r['returncode']})" for r in failed)]
  if db.get('chosen'):
    lines += ['', '## Chosen setting', '', db['chosen']['text']]
  if db.get('make_run'):
    lines += ['', '## `make run` wall time (whole command, chosen setting)', '']
    for m in db['make_run']:
      lines.append(
          f"- {m['started_utc']}: `{m['command']}`: {m['wall_s']:.0f} s "
          f"({m['wall_s'] / 60:.1f} min) wall, {m.get('cpu_s', 0):.0f} CPU s, "
          f"rc {m['returncode']}; 1-minute "
          f"load average {m['load1_start']:.2f} at the start, "
          f"{m['load1_end']:.2f} at the end. {m.get('note', '')}")
  if db.get('notes'):
    lines += ['', '## Notes', ''] + [f'- {n}' for n in db['notes']]
  return '\n'.join(lines) + '\n'


def make_run(db, note, as_setting='', code=ROOT):
  workdir = '/tmp/qs_time'
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = [PY, '-m', 'dpjax.main', '--config=configs/quickstart.py',
         f'--workdir={workdir}']
  load0, t0 = _load1(), time.time()
  started = datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')
  cpu0 = _child_cpu()
  proc = subprocess.run(cmd, cwd=code, capture_output=True, text=True,
                        check=False)
  wall = time.time() - t0
  cpu = _child_cpu() - cpu0
  db = _load()  # other invocations may have written while this one ran
  rec = {'command': '.venv/bin/python -m dpjax.main '
                    '--config=configs/quickstart.py --workdir=/tmp/qs_time',
         'started_utc': started, 'wall_s': round(wall, 1),
         'cpu_s': round(cpu, 1),
         'load1_start': load0, 'load1_end': _load1(),
         'returncode': proc.returncode, 'commit': _git_commit(), 'note': note,
         'code': ('git archive HEAD (a fresh clone\'s files)' if code != ROOT
                  else 'working tree')}
  rep_path = os.path.join(workdir, 'privacy_report.json')
  if proc.returncode == 0 and os.path.exists(rep_path):
    with open(rep_path, encoding='utf-8') as f:
      rep = json.load(f)
    rec['evaluation'] = rep['evaluation']
    rec['sigma'] = rep['mechanism']['noise_multiplier']
    rec['privacy_rows'] = rep['privacy']['rows'] if rep['privacy'] else None
    if as_setting:
      # The timing run is the chosen setting's DP run on the reported works
      # (export on, all report accountants): recorded as its confirmation.
      mech, ev = rep['mechanism'], rep['evaluation']
      db['runs'].append({
          'setting': as_setting, 'private': True, 'heldout': 'reported',
          'heldout_works': list(REPORTED_HELDOUT),
          'overrides': SETTINGS[as_setting], 'started_utc': started,
          'wall_s': rec['wall_s'], 'cpu_s': rec['cpu_s'],
          'load1_start': load0, 'load1_end': rec['load1_end'],
          'returncode': 0, 'commit': rec['commit'],
          'source': 'the make-run timing run (quickstart.py as committed, '
                    'HF + GGUF export on)',
          'nll_initial': ev['eval_loss_initial'], 'nll_final': ev['eval_loss'],
          'nll_final_ema': ev['eval_loss_ema'],
          'epsilon_pld': next((r['epsilon'] for r in rec['privacy_rows']
                               if r['accountant'] == 'pld'), None),
          'sigma': mech['noise_multiplier'],
          'sampling_rate_q': mech['sampling_rate_q'],
          'dataset_size': mech['dataset_size'],
          'overflow_probability_per_step': mech.get(
              'poisson_overflow_probability_per_step'),
          'steps_run': mech['steps'], 'delta': rep['delta']})
  else:
    rec['error_tail'] = '\n'.join((proc.stdout + proc.stderr).splitlines()[-40:])
  db['make_run'].append(rec)
  _save(db)
  print(json.dumps({k: v for k, v in rec.items() if k != 'privacy_rows'},
                   indent=1))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--settings', default='',
                  help='comma-separated names from SETTINGS (in order)')
  ap.add_argument('--heldout', choices=('tuning', 'reported'),
                  default='tuning')
  ap.add_argument('--modes', default='dp,np', help='dp, np or both')
  ap.add_argument('--force', action='store_true',
                  help='rerun settings already recorded')
  ap.add_argument('--choose', default='', help='record this setting as chosen')
  ap.add_argument('--choose_text', default='', help='why (Markdown)')
  ap.add_argument('--make_run', action='store_true',
                  help='time the whole quickstart run (/tmp/qs_time)')
  ap.add_argument('--as_setting', default='',
                  help='--make_run: record it as this setting\'s DP run on '
                  'the reported works (its overrides must equal quickstart.py)')
  ap.add_argument('--note', default='', help='note for --make_run / --add_note')
  ap.add_argument('--add_note', action='store_true')
  ap.add_argument('--working_tree', action='store_true',
                  help='run the working tree, not a git archive of HEAD')
  ap.add_argument('--render', action='store_true',
                  help='only rewrite the Markdown from the JSON')
  args = ap.parse_args()
  db = _load()
  if args.render:
    _save(db)
    return
  if args.add_note:
    db.setdefault('notes', []).append(args.note)
    _save(db)
    return
  names = [n for n in args.settings.split(',') if n]
  for n in names:
    if n not in SETTINGS:
      raise SystemExit(f'unknown setting {n!r}; known: {sorted(SETTINGS)}')
  modes = [m for m in args.modes.split(',') if m]
  workroot = tempfile.mkdtemp(prefix='default_run_tuning_')
  code = ROOT if args.working_tree else snapshot(workroot)
  try:
    for n in names:
      for m in modes:
        private = m == 'dp'
        if not args.force and _find(_load(), n, private, args.heldout):
          print(f'skip {n} {m} {args.heldout}: recorded', flush=True)
          continue
        claim = _claim(n, m, args.heldout)
        if claim is None:
          print(f'skip {n} {m} {args.heldout}: running elsewhere', flush=True)
          continue
        print(f'run {n} {m} {args.heldout} (load {_load1()})', flush=True)
        try:
          rec = run_one(n, SETTINGS[n], private, args.heldout, workroot,
                      code=code)
        finally:
          os.remove(claim)
        db = _load()  # another invocation may have appended meanwhile
        db['runs'].append(rec)
        _save(db)
        print(json.dumps({k: v for k, v in rec.items()
                          if k not in ('overrides', 'heldout_works')}),
              flush=True)
    if args.make_run:
      make_run(_load(), args.note, args.as_setting, code)
  finally:
    shutil.rmtree(workroot, ignore_errors=True)
  if args.choose:
    db = _load()
    db['chosen'] = {'setting': args.choose,
                    'overrides': SETTINGS[args.choose],
                    'text': args.choose_text or f'`{args.choose}`'}
    _save(db)


if __name__ == '__main__':
  main()
