"""Command-line checks shared by the entry points that take `--config`.

`ml_collections.config_flags` turns a mistyped override such as
`--config.train.stepz=3` into an `AttributeError` traceback. Call
`unknown_override(argv)` (or `exit_on_unknown_override`) before absl parses
the flags: it loads the config file as `config_flags` does, checks that each
`--config.a.b` override names an existing field, and returns one line naming
the unknown field and the closest valid ones.

  if __name__ == '__main__':
    cli_flags.exit_on_unknown_override(sys.argv)
    app.run(main, flags_parser=cli_flags.parse_flags)
"""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any, Sequence

HELP_FLAGS = ('-h', '-?', '--help', '-help', '--helpshort', '-helpshort',
              '--helpfull', '-helpfull')


def _args(argv: Sequence[str]) -> list[str]:
  """argv[1:] up to a lone '--' (absl stops parsing flags there)."""
  args = list(argv[1:])
  return args[:args.index('--')] if '--' in args else args


def help_requested(argv: Sequence[str]) -> bool:
  """Whether argv asks for help (-h, --help, --helpshort, --helpfull)."""
  return any(a in HELP_FLAGS for a in _args(argv))


def _config_path(args: list[str], name: str) -> str | None:
  """The value of --NAME=PATH or --NAME PATH (the last one wins)."""
  path = None
  for i, arg in enumerate(args):
    m = re.match(rf'^--?{re.escape(name)}(=(.*))?$', arg)
    if m and m.group(1) is not None:
      path = m.group(2)
    elif m and i + 1 < len(args):
      path = args[i + 1]
  return path


def _overrides(args: list[str], name: str) -> list[tuple[str, str]]:
  """(dotted field path, the argument as written) of each override."""
  out = []
  for arg in args:
    m = re.match(rf'^--?(?:no)?{re.escape(name)}\.([^=]+)', arg)
    if m:
      out.append((m.group(1), arg))
  return out


def _load(path: str, name: str) -> Any:
  """The config `--NAME=path` gives, loaded as config_flags does; or None."""
  # pylint: disable=g-import-not-at-top
  from absl import flags
  from ml_collections import config_flags
  # pylint: enable=g-import-not-at-top
  argv = ['dpjax', f'--{name}={path}']  # the file alone, no overrides
  try:
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file(name, None, 'The config file.',
                                    flag_values=fv, lock_config=False,
                                    sys_argv=argv)
    fv(argv)
    config = fv[name].value
    config.keys()  # a config that failed to load raises here
  except Exception:  # pylint: disable=broad-except
    return None  # config_flags reports its own loading errors
  return config


def _is_mapping(node: Any) -> bool:
  return hasattr(node, 'keys') and hasattr(node, '__getitem__')


def _leaf_paths(node: Any, prefix: str = '') -> list[str]:
  out = []
  for key in node.keys():
    path = f'{prefix}{key}'
    out.append(path)
    if _is_mapping(node[key]):
      out += _leaf_paths(node[key], path + '.')
  return out


def _closest(name: str, candidates: list[str], n: int = 3) -> list[str]:
  return difflib.get_close_matches(name, candidates, n=n, cutoff=0.6)


def check_path(config: Any, dotted: str, name: str = 'config') -> str | None:
  """None if `dotted` names a field of `config`, else the problem, one line.

  Args:
    config: a ConfigDict (or any nested mapping).
    dotted: e.g. 'train.steps' (an index suffix like 'x[0]' is allowed).
    name: the flag's name, for the message ('config').

  Returns:
    E.g. "config.train.stepz: unknown field (--config.train.stepz); valid:
    the closest fields are config.train.steps" or None.
  """
  node, done = config, []
  for part in dotted.split('.'):
    key = part.split('[', 1)[0]
    if not key.isidentifier():
      return (f'{name}.{dotted}: {key!r} is not a field name '
              f'(--{name}.{dotted}); valid: dotted field names, e.g. '
              f'--{name}.train.steps=20')
    if not _is_mapping(node):
      where = '.'.join([name] + done)
      return (f'{name}.{dotted}: unknown field (--{name}.{dotted}); valid: '
              f'{where} is a value of type {type(node).__name__}, not a '
              'group of fields')
    if key in node.keys():
      node, done = node[key], done + [key]
      continue
    parent = '.'.join([name] + done)
    siblings = [str(k) for k in node.keys()]
    near = [f'{parent}.{k}' for k in _closest(key, siblings)]
    if not near:  # elsewhere, e.g. --config.stepz for config.train.steps
      paths = _leaf_paths(config)
      by_leaf = {}
      for p in paths:
        by_leaf.setdefault(p.rsplit('.', 1)[-1], []).append(p)
      leaves = difflib.get_close_matches(key, list(by_leaf), n=3,
                                         cutoff=0.75)
      near = [f'{name}.{p}' for leaf in leaves for p in by_leaf[leaf]][:3]
    if near:
      valid = 'the closest fields are ' + ', '.join(near)
    else:
      valid = (f'the fields of {parent}: ' +
               ', '.join(sorted(siblings)[:12]) +
               (', ...' if len(siblings) > 12 else ''))
    return f'{name}.{dotted}: unknown field (--{name}.{dotted}); valid: {valid}'
  return None


def unknown_override(argv: Sequence[str], name: str = 'config'
                     ) -> str | None:
  """The first `--NAME.FIELD=...` override that names no field, as a message.

  Reads argv as absl will (with `--flagfile` expanded), loads the file
  `--NAME=PATH` names and checks each override's dotted path. Returns None
  when every override names a field, when argv asks for help, or when the
  config cannot be loaded (config_flags then reports that itself).

  Args:
    argv: the command line, program name first (sys.argv).
    name: the config flag's name.

  Returns:
    One line without a prefix, e.g. "config.nonexistent: unknown field
    (--config.nonexistent); valid: ...", or None.
  """
  if help_requested(argv):
    return None
  try:
    from absl import flags  # pylint: disable=g-import-not-at-top
    argv = flags.FLAGS.read_flags_from_files(list(argv), force_gnu=False)
  except Exception:  # pylint: disable=broad-except
    pass  # absl reports a bad --flagfile itself
  args = _args(argv)
  overrides = _overrides(args, name)
  if not overrides:
    return None
  path = _config_path(args, name)
  config = _load(path, name) if path else None
  if config is None:
    return None
  for dotted, _ in overrides:
    problem = check_path(config, dotted, name)
    if problem:
      return problem
  return None


def exit_on_unknown_override(argv: Sequence[str] | None = None,
                             name: str = 'config', prog: str = 'dpjax'
                             ) -> None:
  """Exits with code 2 and one line on stderr for an unknown override.

  The line reads like every other config error:
  "PROG: invalid configuration: config.x: unknown field ...; valid: ...".
  """
  problem = unknown_override(sys.argv if argv is None else argv, name)
  if problem:
    print(f'{prog}: invalid configuration: {problem}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """`absl.app.run`'s flags parser, except that --help exits with 0.

  absl prints the help of -h/--help/--helpshort/--helpfull and exits with 1;
  this prints the same text and exits with 0. Other arguments are parsed by
  `absl.app.parse_flags_with_usage`.
  """
  from absl import app  # pylint: disable=g-import-not-at-top
  args = _args(argv)
  if help_requested(argv):
    full = any(a in ('--helpfull', '-helpfull') for a in args)
    app.usage(shorthelp=not full, writeto_stdout=True)
    if not full:
      print('\nTry --helpfull to get a list of all flags.')
    sys.exit(0)
  return app.parse_flags_with_usage(argv)
