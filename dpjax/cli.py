"""The `dpjax` command: one tool for the package's entry points.

  dpjax train ARGS      = python -m dpjax.main ARGS        (--config, --workdir)
  dpjax account ARGS    = python -m dpjax.accounting ARGS  (epsilon, calibrate...)
  dpjax generate ARGS   = python -m dpjax.generate ARGS    (--workdir, --prompt)
  dpjax audit ARGS      = python -m dpjax.audit ARGS       (replay, noise)
  dpjax report WORKDIR  the run's privacy report, re-rendered from
                        WORKDIR/privacy_report.json (--json: the JSON;
                        --card: the model card its exports carry)

Each subcommand runs its module exactly as `python -m` does (same flags,
output and exit codes; the current directory first on sys.path, so config
files can import `configs`); `python -m dpjax.main --config=...` stays the
documented launch. `dpjax SUBCOMMAND --help` prints that command's help.
Installed by the package (setup.cfg console_scripts); also
`python -m dpjax.cli`.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import importlib.util
import json
import os
import runpy
import sys
from typing import Sequence

# subcommand -> (module run as __main__, one line of help)
COMMANDS = {
    'train': ('dpjax.main', 'train a model with DP (python -m dpjax.main)'),
    'account': ('dpjax.accounting', 'epsilon, delta and noise calibration '
                '(python -m dpjax.accounting)'),
    'generate': ('dpjax.generate', "sample text from a run's weights "
                 '(python -m dpjax.generate)'),
    'audit': ('dpjax.audit', "replay the trainer's step on neighbouring "
              'datasets (python -m dpjax.audit)'),
    'report': (None, "print a run's privacy report (from "
               'WORKDIR/privacy_report.json)'),
}


def usage() -> str:
  lines = ['usage: dpjax {' + ','.join(COMMANDS) + '} [ARGS ...]', '',
           'Differentially private fine-tuning of language models in JAX.',
           '', 'commands:']
  lines += [f'  {name:<10}{text}' for name, (_, text) in COMMANDS.items()]
  lines += ['', "'dpjax COMMAND --help' prints a command's flags."]
  return '\n'.join(lines)


def _module_doc(module: str) -> str:
  """The docstring of package `module`'s `__main__.py`, read, not imported
  (importing the package would import JAX)."""
  root = importlib.util.find_spec('dpjax').submodule_search_locations[0]
  path = os.path.join(root, *module.split('.')[1:], '__main__.py')
  with open(path, encoding='utf-8') as f:
    return ast.get_docstring(ast.parse(f.read())) or ''


def _run_module(module: str, command: str, args: list[str]) -> int:
  """Runs `module` as `python -m module args` would."""
  from dpjax import cli_flags  # pylint: disable=g-import-not-at-top
  if command == 'audit' and cli_flags.help_requested(['', *args]):
    # dpjax.audit answers --help with exit code 2; print its docstring.
    print(_module_doc(module))
    return 0
  cwd = os.getcwd()
  if not sys.path or sys.path[0] not in ('', cwd):
    sys.path.insert(0, cwd)  # as `python -m` does
  sys.argv = [module, *args]
  runpy.run_module(module, run_name='__main__', alter_sys=True)
  return 0


def _report(args: list[str]) -> int:
  """`dpjax report WORKDIR [--json | --card]`."""
  parser = argparse.ArgumentParser(
      prog='dpjax report',
      description="Prints a run's privacy report, re-rendered from "
                  'WORKDIR/privacy_report.json (the source of truth).')
  parser.add_argument('workdir', help="the run's work directory.")
  what = parser.add_mutually_exclusive_group()
  what.add_argument('--json', action='store_true',
                    help='print the JSON report as it is.')
  what.add_argument('--card', action='store_true',
                    help="print the model card (README.md) the run's HF "
                         'export carries.')
  ns = parser.parse_args(args)
  path = os.path.join(ns.workdir, 'privacy_report.json')
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
    report = json.loads(text)
  except OSError as e:
    print(f'dpjax report: cannot read {path}: {e.strerror or e}',
          file=sys.stderr)
    return 2
  except ValueError as e:
    print(f'dpjax report: {path} is not JSON: {e}', file=sys.stderr)
    return 2
  if ns.json:
    print(text.rstrip('\n'))
    return 0
  if ns.card:
    return _card(ns.workdir)
  from dpjax import reporting  # pylint: disable=g-import-not-at-top
  try:
    sys.stdout.write(reporting.format_text(report))
  except (KeyError, TypeError, AttributeError) as e:
    print(f'dpjax report: {path} is not a dpjax privacy report '
          f'({type(e).__name__}: {e})', file=sys.stderr)
    return 2
  return 0


def _card(workdir: str) -> int:
  """Prints the model card of the run in `workdir` (needs config.json)."""
  # pylint: disable=g-import-not-at-top
  import ml_collections
  from dpjax import model_card
  # pylint: enable=g-import-not-at-top
  path = os.path.join(workdir, 'config.json')
  try:
    with open(path, encoding='utf-8') as f:
      config = ml_collections.ConfigDict(json.load(f))
    info = model_card.source_info(config)
  except (OSError, ValueError, AttributeError, KeyError) as e:
    print(f'dpjax report: --card needs the run\'s {path}: {e}',
          file=sys.stderr)
    return 2
  print(model_card.render_card(model_card.load_facts(workdir), info))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs `dpjax COMMAND ARGS`; returns the exit code."""
  args = list(sys.argv[1:] if argv is None else argv)
  if not args:
    print(usage(), file=sys.stderr)
    return 2
  command, rest = args[0], args[1:]
  if command in ('-h', '--help', 'help'):
    print(usage())
    return 0
  if command == '--version':
    from dpjax import __version__  # pylint: disable=g-import-not-at-top
    print(f'dpjax {__version__}')
    return 0
  if command not in COMMANDS:
    near = difflib.get_close_matches(command, list(COMMANDS), n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ''
    print(f'dpjax: unknown command {command!r}{hint}; valid: '
          f"{', '.join(COMMANDS)}\n{usage()}", file=sys.stderr)
    return 2
  if command == 'report':
    try:
      return _report(rest)
    except BrokenPipeError:  # e.g. `dpjax report DIR | head`
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
      return 0
  return _run_module(COMMANDS[command][0], command, rest)


if __name__ == '__main__':
  sys.exit(main())
