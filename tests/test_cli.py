"""Tests for the `dpjax` command (dpjax.cli) and dpjax.cli_flags."""

import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

from dpjax import cli
from dpjax import cli_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), 'dpjax')


def _dpjax():
  """The installed `dpjax` script, else `python -m dpjax.cli`."""
  if os.access(SCRIPT, os.X_OK):
    return [SCRIPT]
  found = shutil.which('dpjax')
  return [found] if found else [sys.executable, '-m', 'dpjax.cli']


def _run(*args, timeout=120):
  return subprocess.run([*_dpjax(), *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, check=False)


@pytest.mark.parametrize('command', [(), ('train',), ('account',),
                                     ('generate',), ('audit',), ('report',)])
def test_help_of_each_command_exits_0(command):
  out = _run(*command, '--help')
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip()
  assert 'Traceback' not in out.stderr


def test_no_command_and_unknown_command_exit_2():
  out = _run()
  assert out.returncode == 2 and 'usage: dpjax' in out.stderr
  out = _run('trian')
  assert out.returncode == 2
  assert "unknown command 'trian' (did you mean 'train'?)" in out.stderr


@pytest.mark.parametrize('override,field,suggestion', [
    ('--config.nonexistent=3', 'config.nonexistent',
     'the fields of config: audit, data, dp'),
    ('--config.train.stepz=3', 'config.train.stepz', 'config.train.steps'),
])
def test_mistyped_override_is_one_line_with_exit_2(override, field,
                                                   suggestion):
  out = _run('train', '--config=configs/default.py', '--workdir=/nonexistent',
             override)
  assert out.returncode == 2, out.stderr[-2000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr[-2000:]
  assert lines[0].startswith(f'dpjax: invalid configuration: {field}: '
                             'unknown field')
  assert suggestion in lines[0]
  assert 'Traceback' not in out.stderr


def test_python_m_main_gives_the_same_line():
  out = subprocess.run(
      [sys.executable, '-m', 'dpjax.main', '--config=configs/default.py',
       '--workdir=/nonexistent', '--config.train.stepz=3'], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 2
  assert out.stderr.strip() == (
      'dpjax: invalid configuration: config.train.stepz: unknown field '
      '(--config.train.stepz); valid: the closest fields are '
      'config.train.steps')


def test_report_reprints_the_text_and_refuses_a_missing_report(tmp_path):
  from tests import test_model_card  # pylint: disable=g-import-not-at-top
  test_model_card._write_report(tmp_path)
  out = _run('report', str(tmp_path))
  assert out.returncode == 0, out.stderr
  assert out.stdout == (tmp_path / 'privacy_report.txt').read_text()
  out = _run('report', str(tmp_path / 'absent'))
  assert out.returncode == 2 and 'privacy_report.json' in out.stderr


def _config():
  return ml_collections.ConfigDict({
      'seed': 0, 'train': {'steps': 8, 'batch_size': 4, 'eps': 1e-8},
      'dp': {'enabled': True}, 'data': {'genres': ('a', 'b')}})


@pytest.mark.parametrize('path,expect', [
    ('train.steps', None),
    ('data.genres', None),
    ('dp.enabld', 'the closest fields are config.dp.enabled'),
    ('steps', 'the closest fields are config.train.steps'),
    ('train.steps.x', 'config.train.steps is a value of type int'),
    ('train.foo', 'the fields of config.train: batch_size, eps, steps'),
    ('data.genres.0', "'0' is not a field name"),
])
def test_check_path(path, expect):
  problem = cli_flags.check_path(_config(), path)
  if expect is None:
    assert problem is None
  else:
    assert problem.startswith(f'config.{path}: ')
    assert expect in problem


def test_unknown_override_reads_argv_as_absl_does():
  base = ['prog', '--config', 'configs/debug.py']
  assert cli_flags.unknown_override(base + ['--config.train.steps=3']) is None
  assert cli_flags.unknown_override(base + ['--noconfig.dp.enabled']) is None
  assert 'config.dp.enabld' in cli_flags.unknown_override(
      base + ['--noconfig.dp.enabld'])
  # After a lone '--' nothing is a flag; help wins; no config: no check.
  assert cli_flags.unknown_override(base + ['--', '--config.x=1']) is None
  assert cli_flags.unknown_override(base + ['--config.x=1', '--help']) is None
  assert cli_flags.unknown_override(['prog', '--config.x=1']) is None


def test_main_dispatch_in_process(capsys):
  assert cli.main(['--help']) == 0
  assert 'train' in capsys.readouterr().out
  assert cli.main(['report', '/nonexistent/run']) == 2
