"""Tests for `python -m dpjax.accounting` and the no-JAX contract."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from dpjax.accounting import cli
from dpjax.accounting import get_accountant
from dpjax.accounting.ledger import Phase
from dpjax.accounting.ledger import PrivacyLedger

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(capsys, *argv):
  rc = cli.main(list(argv))
  out = capsys.readouterr()
  return rc, out.out, out.err


def test_epsilon_json(capsys):
  rc, out, _ = _run(capsys, 'epsilon', '--q', '0.1', '--sigma', '3',
                    '--steps', '512', '--delta', '1e-6', '--json')
  assert rc == 0
  d = json.loads(out)
  assert d['accountant'] == 'pld' and d['delta'] == 1e-6
  assert d['epsilon'] == pytest.approx(3.76969, abs=1e-5)
  assert d['kind'] == 'upper bound'


def test_schedule_of_phases_all_accountants(capsys, tmp_path):
  sched = tmp_path / 'phases.json'
  sched.write_text(json.dumps([{'q': 0.01, 'sigma': 1.0, 'count': 300}]))
  rc, out, _ = _run(capsys, 'epsilon', '--schedule', str(sched), '--phase',
                    '0.02', '1.2', '100', '--delta', '1e-5', '--accountant',
                    'all', '--json')
  assert rc == 0
  rows = json.loads(out)['results']
  assert [r['accountant'] for r in rows] == ['pld', 'rdp', 'edgeworth']
  phases = [Phase(0.01, 1.0, 300), Phase(0.02, 1.2, 100)]
  assert rows[0]['epsilon'] == pytest.approx(
      get_accountant('pld').epsilon(phases, 1e-5))
  assert rows[2]['kind'] == 'estimate'


def test_calibrate_json_and_text(capsys):
  rc, out, _ = _run(capsys, 'calibrate', '--target-epsilon', '1',
                    '--delta', '1e-6', '--q', '0.1', '--steps', '512',
                    '--json')
  assert rc == 0
  d = json.loads(out)
  assert d['sigma'] == pytest.approx(9.66183, rel=2e-4)
  assert d['epsilon'] <= 1.0 and d['accountant'] == 'pld'
  rc, out, _ = _run(capsys, 'calibrate', '--solve-for', 'steps',
                    '--target-epsilon', '2', '--delta', '1e-6', '--q', '0.1',
                    '--sigma', '3', '--accountant', 'rdp')
  assert rc == 0 and 'steps=' in out


def test_zero_noise_and_bad_input(capsys):
  rc, out, _ = _run(capsys, 'epsilon', '--q', '0.1', '--sigma', '0',
                    '--steps', '5', '--delta', '1e-5', '--json')
  assert rc == 0 and json.loads(out)['epsilon'] == 'inf'
  rc, _, err = _run(capsys, 'epsilon', '--q', '1.5', '--sigma', '1',
                    '--steps', '5', '--delta', '1e-5')
  assert rc == 2 and 'q (sampling rate)' in err
  rc, _, err = _run(capsys, 'epsilon', '--q', '0.1', '--sigma', '1',
                    '--steps', '5', '--delta', '2')
  assert rc == 2 and 'delta' in err


def test_report_from_ledger_file(capsys, tmp_path):
  ledger = PrivacyLedger(unit='one sequence')
  ledger.record(0.01, 1.0, 200)
  path = tmp_path / 'ledger.json'
  path.write_text(json.dumps(ledger.to_dict()))
  rc, out, _ = _run(capsys, 'report', '--ledger', str(path), '--delta',
                    '1e-5')
  assert rc == 0 and 'upper bound' in out and 'estimate' in out


def test_report_of_an_lmo_ledger_uses_the_sound_lmo_accounting(capsys,
                                                                 tmp_path):
  from dpjax.accounting import lmo
  params = lmo.LMOParams(a1=0.1, k=2, theta=1, a3=0.1, lam=5, a4=0.9,
                         u_a=2, u_b=3)
  ledger = PrivacyLedger(unit='one passage', mechanism='lmo',
                         mechanism_params=params.to_dict())
  ledger.record(0.02, 0.7, 30)
  path = tmp_path / 'ledger.json'
  path.write_text(json.dumps(ledger.to_dict()))
  rc, out, _ = _run(capsys, 'report', '--ledger', str(path), '--delta',
                    '1e-5', '--json')
  assert rc == 0
  rows = json.loads(out)['rows']
  assert [r['accountant'] for r in rows] == ['lmo_sound']
  expected = lmo.epsilon_sound(
      [lmo.LMOPhase(params, 0.02, 30, l1_sensitivity=1 / 0.7)], 1e-5)
  assert rows[0]['epsilon'] == pytest.approx(expected, rel=1e-9)


def test_module_entry_point_never_imports_jax():
  code = ('import sys, runpy; sys.argv = ["x", "epsilon", "--q", "0.01", '
          '"--sigma", "1", "--steps", "100", "--delta", "1e-5", '
          '"--accountant", "all", "--json"]\n'
          'import dpjax.accounting.cli as c\n'
          'import dpjax.accounting.rdp, dpjax.accounting.pld, '
          'dpjax.accounting.edgeworth, dpjax.accounting.calibration, '
          'dpjax.accounting.report\n'
          'rc = c.main()\n'
          'assert "jax" not in sys.modules, "jax was imported"\n'
          'sys.exit(rc)\n')
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, '-c', code], capture_output=True,
                     text=True, env=env, cwd=ROOT, timeout=120, check=False)
  assert r.returncode == 0, r.stderr
  assert len(json.loads(r.stdout)['results']) == 3
