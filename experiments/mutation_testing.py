"""Mutation testing of the privacy-critical code: `make test-mutation`.

Applies each one-line mutation of `experiments/mutations.py` alone to a
temporary copy of the repository, runs that mutation's fast tests there and
classifies the outcome:

  caught    the tests failed (the mutation is detected),
  survived  the tests passed (a gap in the fast suite, unless the mutation
            is listed as 'equivalent'),
  timeout   the tests ran past the per-mutation limit,
  error     the mutation could not be applied, or none of its tests exist.

The copy holds dpjax/, tests/, configs/, the root conftest.py, setup.cfg and
pyproject.toml; pytest runs with cwd = the copy and PYTHONPATH = the copy, so
the mutated package shadows the editable install (checked by `--self-check`,
which plants a mutation that raises at import and requires the tests to
fail). The repository itself is never modified.

Usage:
  python experiments/mutation_testing.py                  # the whole list
  python experiments/mutation_testing.py --only id1,id2   # a subset
  python experiments/mutation_testing.py --check-list     # snippets only
  python experiments/mutation_testing.py --self-check     # shadowing check
  python experiments/mutation_testing.py --only id --update  # rerun, merge
Writes experiments/results/mutation_report.{json,md} (unless --no-report),
after every mutation, so an interrupted run leaves its partial results.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'experiments', 'results')
COPIED = ('dpjax', 'tests', 'configs', 'conftest.py', 'setup.cfg',
          'pyproject.toml')
OUTCOMES = ('caught', 'survived', 'timeout', 'error')


def load_mutations() -> list[dict[str, Any]]:
  """The list in experiments/mutations.py (loaded by path)."""
  path = os.path.join(ROOT, 'experiments', 'mutations.py')
  spec = importlib.util.spec_from_file_location('dpjax_mutations', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.MUTATIONS, mod.EFFECTS


def check_entry(m: dict[str, Any], effects, root: str = ROOT) -> str | None:
  """None if `m` is well formed and its `old` occurs exactly once, else why."""
  need = ('id', 'file', 'old', 'new', 'effect', 'why', 'tests')
  missing = [k for k in need if not m.get(k)]
  if missing:
    return f'missing fields {missing}'
  if m['effect'] not in effects:
    return f'effect {m["effect"]!r} is not one of {effects}'
  if m['old'] == m['new']:
    return 'old == new'
  path = os.path.join(root, m['file'])
  if not os.path.isfile(path):
    return f'file {m["file"]} does not exist'
  with open(path, encoding='utf-8') as f:
    text = f.read()
  n = text.count(m['old'])
  if n != 1:
    return (f'`old` occurs {n} times in {m["file"]} (must be exactly once): '
            f'{m["old"]!r}')
  return None


def check_list(mutations, effects, root: str = ROOT) -> list[str]:
  """Problems with the list (empty when every entry applies)."""
  problems = []
  seen = set()
  for m in mutations:
    if m.get('id') in seen:
      problems.append(f'{m.get("id")}: duplicate id')
    seen.add(m.get('id'))
    why = check_entry(m, effects, root)
    if why:
      problems.append(f'{m.get("id")}: {why}')
  return problems


def _copy_tree(dst: str) -> None:
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '.pytest_cache')
  for name in COPIED:
    src = os.path.join(ROOT, name)
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(dst, name), ignore=ignore)
    elif os.path.exists(src):
      shutil.copy2(src, os.path.join(dst, name))


def _first_failure(output: str) -> str | None:
  """The first failing test id in pytest's -rA/-ra summary or progress."""
  for pat in (r'^(?:FAILED|ERROR) (\S+)', r'^_{3,} (\S+) _{3,}$'):
    hit = re.search(pat, output, re.M)
    if hit:
      return hit.group(1)
  return None


def run_one(m: dict[str, Any], effects, *, timeout: float, python: str,
            cache_dir: str | None) -> dict[str, Any]:
  """Applies `m` in a fresh copy, runs its tests; returns the result row."""
  row = {k: m[k] for k in ('id', 'file', 'old', 'new', 'effect', 'why')}
  present = [t for t in m['tests']
             if os.path.exists(os.path.join(ROOT, t.split('::')[0]))]
  row.update(tests=list(m['tests']), tests_run=present,
             tests_missing=[t for t in m['tests'] if t not in present],
             outcome=None, seconds=0.0, first_failure=None, detail='')
  problem = check_entry(m, effects)
  if problem or not present:
    row.update(outcome='error',
               detail=problem or 'none of its tests exist (yet)')
    return row
  start = time.time()
  with tempfile.TemporaryDirectory(prefix=f'dpjax-mut-{m["id"]}-') as tmp:
    _copy_tree(tmp)
    path = os.path.join(tmp, m['file'])
    with open(path, encoding='utf-8') as f:
      text = f.read()
    with open(path, 'w', encoding='utf-8') as f:
      f.write(text.replace(m['old'], m['new'], 1))
    env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE='1')
    if cache_dir:
      env['JAX_COMPILATION_CACHE_DIR'] = cache_dir
    cmd = [python, '-m', 'pytest', '-x', '-q', '-m', 'not slow',
           '-p', 'no:cacheprovider', '-p', 'no:randomly'] + present
    try:
      proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True,
                            text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
      row.update(outcome='timeout', seconds=round(time.time() - start, 1),
                 detail=f'ran past {timeout:g} s')
      return row
  out = proc.stdout + proc.stderr
  row['seconds'] = round(time.time() - start, 1)
  tail = out.strip().splitlines()[-1:] or ['']
  row['detail'] = tail[0][:300]
  if proc.returncode == 0:
    row['outcome'] = 'survived'
  elif proc.returncode in (1, 2):  # tests failed / collection error
    row['outcome'] = 'caught'
    row['first_failure'] = _first_failure(out)
  elif proc.returncode == 5:  # nothing collected
    row.update(outcome='error', detail='no tests collected: ' + row['detail'])
  else:
    row.update(outcome='error',
               detail=f'pytest exit {proc.returncode}: {row["detail"]}')
  return row


def summarize(rows, effects) -> dict[str, dict[str, int]]:
  table = {e: collections.Counter() for e in effects}
  for r in rows:
    table[r['effect']][r['outcome']] += 1
  return {e: {o: c[o] for o in OUTCOMES} for e, c in table.items() if c}


def _md_escape(s: str) -> str:
  return s.replace('|', '\\|').replace('\n', '⏎ ')


def write_report(rows, effects, meta, directory: str = RESULTS) -> None:
  os.makedirs(directory, exist_ok=True)
  summary = summarize(rows, effects)
  data = dict(meta, summary=summary, mutations=rows)
  with open(os.path.join(directory, 'mutation_report.json'), 'w') as f:
    json.dump(data, f, indent=1)
  lines = ['# Mutation testing report', '',
           f'Generated by `make test-mutation` '
           f'(`experiments/mutation_testing.py`) on {meta["date"]}; '
           f'{len(rows)} mutations from `experiments/mutations.py`; '
           f'{sum(r["seconds"] for r in rows):.0f} s of pytest in all '
           f'({meta["total_seconds"]:.0f} s wall'
           + (', including reruns merged with --update' if
              meta.get('merged_into_previous') else '') +
           f'), per-mutation timeout {meta["timeout_s"]:g} s.'
           + ('' if meta.get('complete') else
              ' **PARTIAL: the run was still going or was interrupted.**'),
           '',
           'Each mutation is applied alone to a copy of the repository and '
           'only its listed fast tests run (`pytest -x -m "not slow"`). '
           '"caught": the tests failed; "survived": they passed.', '',
           '## Summary', '', '| effect | caught | survived | timeout | error |',
           '|---|---|---|---|---|']
  for e, c in summary.items():
    lines.append(f'| {e} | ' + ' | '.join(str(c[o]) for o in OUTCOMES) + ' |')
  tot = collections.Counter(r['outcome'] for r in rows)
  lines.append('| **all** | ' + ' | '.join(str(tot[o]) for o in OUTCOMES) +
               ' |')
  surv = [r for r in rows if r['outcome'] == 'survived' and
          r['effect'] != 'equivalent']
  lines += ['', '## Survivors that change the guarantee', '']
  lines += ([f'- `{r["id"]}` ({r["effect"]}): {r["why"]}' for r in surv] or
            ['None.'])
  eq = [r for r in rows if r['effect'] == 'equivalent']
  lines += ['', '## Equivalent mutations (cannot change epsilon)', '']
  lines += [f'- `{r["id"]}` ({r["outcome"]}): {r["why"]}' for r in eq] or [
      'None.']
  other = [r for r in rows if r['outcome'] in ('timeout', 'error')]
  if other:
    lines += ['', '## Timeouts and errors', '']
    lines += [f'- `{r["id"]}` ({r["outcome"]}): {r["detail"]}' for r in other]
  lines += ['', '## All mutations', '',
            '| id | file | old → new | effect | outcome | s | first failure '
            '/ note | tests run |', '|---|---|---|---|---|---|---|---|']
  for r in rows:
    change = (f'`{_md_escape(r["old"])}` → `{_md_escape(r["new"])}`')
    note = r['first_failure'] or (r['detail'] if r['outcome'] != 'survived'
                                  else '')
    tests = ', '.join(f'`{t}`' for t in r['tests_run'])
    if r['tests_missing']:
      tests += ' (not yet present: ' + ', '.join(
          f'`{t}`' for t in r['tests_missing']) + ')'
    lines.append(f'| `{r["id"]}` | {r["file"]} | {change} | {r["effect"]} | '
                 f'{r["outcome"]} | {r["seconds"]:.0f} | '
                 f'{_md_escape(note or "")} | {tests} |')
  lines += ['', 'Why each mutation matters:', '']
  lines += [f'- `{r["id"]}`: {r["why"]}' for r in rows]
  with open(os.path.join(directory, 'mutation_report.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def self_check(python: str, timeout: float) -> bool:
  """A mutation that raises at import must make a test fail in the copy."""
  m = dict(id='self_check_import_raises', file='dpjax/noise.py',
           old='from __future__ import annotations',
           new="from __future__ import annotations\nraise RuntimeError("
               "'mutated copy imported')",
           effect='equivalent', why='shadowing check',
           tests=['tests/test_noise.py'])
  row = run_one(m, ('equivalent',), timeout=timeout, python=python,
                cache_dir=None)
  ok = row['outcome'] == 'caught'
  print(f'self-check: planted import error -> {row["outcome"]} '
        f'({row["detail"]}); shadowing {"works" if ok else "FAILS"}')
  return ok


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--only', default='', help='comma-separated mutation ids')
  p.add_argument('--check-list', action='store_true',
                 help='only verify that every `old` snippet applies')
  p.add_argument('--self-check', action='store_true',
                 help='verify that the mutated copy shadows the install')
  p.add_argument('--timeout', type=float, default=300.0,
                 help='seconds per mutation (default 300)')
  p.add_argument('-j', '--jobs', type=int, default=1,
                 help='mutations run in parallel (default 1: sequential)')
  p.add_argument('--python', default=sys.executable)
  p.add_argument('--no-report', action='store_true')
  p.add_argument('--update', action='store_true',
                 help='merge the results into the existing report (rows of '
                 'the mutations run are replaced, others kept)')
  p.add_argument('--out', default=RESULTS, help='report directory')
  args = p.parse_args(argv)

  mutations, effects = load_mutations()
  problems = check_list(mutations, effects)
  if args.check_list:
    for pr in problems:
      print('ERROR', pr)
    print(f'{len(mutations)} mutations, {len(problems)} problems')
    return 1 if problems else 0
  if args.self_check:
    return 0 if self_check(args.python, args.timeout) else 1
  if args.only:
    wanted = [s.strip() for s in args.only.split(',') if s.strip()]
    unknown = set(wanted) - {m['id'] for m in mutations}
    if unknown:
      print(f'unknown ids: {sorted(unknown)}', file=sys.stderr)
      return 2
    mutations = [m for m in mutations if m['id'] in wanted]
  for pr in problems:
    print('WARNING (will be reported as error):', pr, flush=True)

  # SIGTERM ends the run like Ctrl-C (subprocess.run then kills pytest).
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  previous = {}
  previous_seconds = 0.0
  report_json = os.path.join(args.out, 'mutation_report.json')
  if args.update and os.path.exists(report_json):
    with open(report_json) as f:
      old = json.load(f)
    previous = {r['id']: r for r in old['mutations']}
    previous_seconds = float(old.get('total_seconds', 0.0))
  order = [m['id'] for m in load_mutations()[0]]

  start = time.time()
  cache_dir = tempfile.mkdtemp(prefix='dpjax-mut-xla-cache-')
  rows: list[dict[str, Any]] = [None] * len(mutations)  # type: ignore

  def merged(rows_now):
    done = dict(previous)
    done.update({r['id']: r for r in rows_now if r is not None})
    return [done[i] for i in order if i in done]

  def save(rows_now, final):
    if args.no_report:
      return
    meta = {'date': datetime.datetime.now().isoformat(timespec='seconds'),
            'total_seconds': round(previous_seconds + time.time() - start, 1),
            'timeout_s': args.timeout, 'only': args.only or None,
            'jobs': args.jobs, 'complete': final,
            'merged_into_previous': bool(previous)}
    write_report(merged(rows_now), effects, meta, args.out)

  try:
    def go(i):
      r = run_one(mutations[i], effects, timeout=args.timeout,
                  python=args.python, cache_dir=cache_dir)
      print(f'[{time.time() - start:6.0f}s] {r["id"]}: {r["outcome"]} '
            f'({r["seconds"]:.0f} s) {r["first_failure"] or r["detail"]}',
            flush=True)
      rows[i] = r
      save(rows, final=False)
      return i, r
    if args.jobs <= 1:
      for i in range(len(mutations)):
        go(i)
    else:
      with concurrent.futures.ThreadPoolExecutor(args.jobs) as ex:
        list(ex.map(go, range(len(mutations))))
  finally:
    shutil.rmtree(cache_dir, ignore_errors=True)
  total = time.time() - start
  all_rows = merged(rows)
  summary = summarize(all_rows, effects)
  print(json.dumps(summary, indent=1))
  surv = [r['id'] for r in all_rows
          if r['outcome'] == 'survived' and r['effect'] != 'equivalent']
  print(f'survivors (non-equivalent): {surv}')
  print(f'total {total:.0f} s')
  save(rows, final=True)
  if not args.no_report:
    print(f'wrote {args.out}/mutation_report.{{json,md}}')
  return 1 if surv else 0


if __name__ == '__main__':
  sys.exit(main())
