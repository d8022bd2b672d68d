"""README.md's Measured section agrees with the committed result files."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'experiments'))

import readme_measured  # noqa: E402  pylint: disable=g-import-not-at-top


def test_readme_matches_result_files():
  """Fails when a result file changed without rerunning the script."""
  _, body, _ = readme_measured.split_readme(readme_measured.README.read_text())
  rendered = readme_measured.render()
  assert body == rendered, (
      'README.md Measured section differs from experiments/results/; run '
      'python experiments/readme_measured.py')


def test_check_cli_reports_a_diff(tmp_path, capsys):
  readme = tmp_path / 'README.md'
  text = readme_measured.README.read_text()
  assert readme_measured.main(
      ['--check', '--readme', str(readme_measured.README)]) == 0
  head, body, tail = readme_measured.split_readme(text)
  readme.write_text(head + body.replace('→', '->', 1) + tail)
  assert readme_measured.main(['--check', '--readme', str(readme)]) == 1
  assert '-> ' in capsys.readouterr().out
  assert readme_measured.main(['--readme', str(readme)]) == 0
  assert readme.read_text() == text


@pytest.fixture
def results_copy(tmp_path):
  """A writable copy of the JSON/CSV/JSONL result files."""
  dst = tmp_path / 'results'
  dst.mkdir()
  for path in readme_measured.RESULTS_DIR.iterdir():
    if path.suffix in ('.json', '.jsonl', '.csv'):
      shutil.copy(path, dst / path.name)
  return dst


def test_missing_json_key_names_file_and_key(results_copy):
  path = results_copy / 'secret_randomness_cost.json'
  data = json.loads(path.read_text())
  del data['ratios']['secret_vs_previous_memory']
  path.write_text(json.dumps(data))
  with pytest.raises(readme_measured.ResultKeyError) as e:
    readme_measured.render(results_copy)
  assert 'secret_randomness_cost.json' in str(e.value)
  assert 'ratios.secret_vs_previous_memory' in str(e.value)


def test_missing_csv_column_names_file_and_key(results_copy):
  path = results_copy / 'ewtune_sigma_table.csv'
  lines = path.read_text().splitlines()
  header = lines[0].split(',')
  col = header.index('eps_pld_at_sigma_ew')
  rows = [','.join(c for i, c in enumerate(line.split(',')) if i != col)
          for line in lines]
  path.write_text('\n'.join(rows) + '\n')
  with pytest.raises(readme_measured.ResultKeyError,
                     match=r"ewtune_sigma_table\.csv: missing key "
                           r"'eps_pld_at_sigma_ew'"):
    readme_measured.render(results_copy)


def test_missing_result_file_is_loud(results_copy):
  os.remove(results_copy / 'privacy_utility.json')
  with pytest.raises(FileNotFoundError, match='privacy_utility.json'):
    readme_measured.render(results_copy)


def test_mutation_report_is_optional(results_copy):
  (results_copy / 'mutation_report.json').unlink(missing_ok=True)
  body = readme_measured.render(results_copy)
  assert 'mutation_report.json' not in body


def _compare(dp, nonprivate, time, memory):
  return {'dp': dp, 'nonprivate': nonprivate, 'time': time,
          'time_per_round_min': time - 0.1, 'time_per_round_max': time + 0.1,
          'memory': memory}


def test_step_benchmark_ratios_block(results_copy):
  """The `ratios` schema of experiments/step_benchmark.py is reported as
  equal micro-batch and best vs best, naming each side's micro-batch."""
  path = results_copy / 'step_benchmark.json'
  data = json.loads(path.read_text())
  data['setup']['microbatches'] = [4, 8]
  data['ratios'] = {
      'equal_microbatch': {
          '4': _compare('dp_micro4', 'nonprivate_micro4', 1.25, 1.5),
          '8': _compare('dp_micro8', 'nonprivate_micro8', 1.5, 2.25)},
      'best_vs_best': {'dp_microbatch': 4, 'nonprivate_microbatch': 8,
                       **_compare('dp_micro4', 'nonprivate_micro8', 1.75, 0.5)},
      'leanest_vs_leanest': {
          'dp_microbatch': 4, 'nonprivate_microbatch': 4,
          **_compare('dp_micro4', 'nonprivate_micro4', 1.25, 1.5)}}
  path.write_text(json.dumps(data))
  (line,) = [l for l in readme_measured.render(results_copy).splitlines()
             if '`step_benchmark.json`' in l]
  assert 'micro-batches 4, 8' in line
  assert 'equal micro-batch 4: 1.25× time (1.15–1.35 per round), 1.50×' in line
  assert 'equal micro-batch 8: 1.50× time' in line
  assert ('best vs best (fastest of each), DP micro-batch 4 vs non-private 8:'
          ' 1.75× time') in line
  assert 'leanest of each, DP micro-batch 4 vs non-private 4' in line


def test_mutation_report_row(results_copy):
  report = {
      'only': None,
      'summary': {'breaks': {'caught': 2, 'survived': 1, 'timeout': 0,
                             'error': 0},
                  'equivalent': {'caught': 0, 'survived': 1, 'timeout': 0,
                                 'error': 0}},
      'mutations': [{'outcome': 'caught', 'effect': 'breaks'}] * 2 + [
          {'outcome': 'survived', 'effect': 'breaks'},
          {'outcome': 'survived', 'effect': 'equivalent'}]}
  (results_copy / 'mutation_report.json').write_text(json.dumps(report))
  body = readme_measured.render(results_copy)
  assert ('4 mutations: 2 caught, 2 survived (1 that change the guarantee, '
          '1 equivalent)') in body
  del report['summary']['breaks']['survived']
  (results_copy / 'mutation_report.json').write_text(json.dumps(report))
  with pytest.raises(readme_measured.ResultKeyError,
                     match=r"mutation_report\.json: missing key "
                           r"'summary\.breaks\.survived'"):
    readme_measured.render(results_copy)


def test_every_generated_block_matches_result_files():
  """Any other generated block (BLOCKS) agrees with its files."""
  text = readme_measured.README.read_text()
  assert readme_measured.render_all(text) == text, (
      'a generated README block differs from experiments/results/; run '
      'python experiments/readme_measured.py')
  for begin, end, _ in readme_measured.BLOCKS:
    assert readme_measured.split_readme(text, begin, end)[1].strip()


def test_measured_figures_are_in_one_table():
  """Issue 19: one Measured table, each row naming result files that exist."""
  text = readme_measured.README.read_text()
  _, body, _ = readme_measured.split_readme(text)
  assert body.count('| What | Measured | File |') == 1
  assert text.count('| What | Measured | File |') == 1
  assert 'export-dtypes:begin' not in text
  rows = [l for l in body.splitlines() if l.startswith('| ')][1:]
  assert rows
  for line in rows:
    files = line.rstrip(' |').rsplit(' | ', 1)[1]
    names = [n.strip().strip('`') for n in files.split(',')]
    assert names and all(
        (readme_measured.RESULTS_DIR / n).is_file() for n in names), line


def test_audit_rows_come_from_the_audit_files():
  body = readme_measured.render()
  (white,) = [l for l in body.splitlines() if '`audit_mechanism.json`' in l]
  assert 'correct step at claimed ε 1 / 4 / 8' in white
  assert 'FAIL' in white and '(pass, pass, pass)' in white
  (black,) = [l for l in body.splitlines() if '`audit_epsilon.json`' in l]
  assert 'non-private' in black and 'No private run above its claim' in black
  assert "'hull'" in black


def test_audit_epsilon_row_reads_its_file(results_copy):
  path = results_copy / 'audit_epsilon.json'
  data = json.loads(path.read_text())
  data['stamp'] = 'Commit 0000000000, a rerun'
  data['runs'] = [r for r in data['runs'] if r['model'] == 'debug']
  data['runs'][1]['epsilon_lb'] = 2.5  # above its claim of 1
  path.write_text(json.dumps(data))
  (line,) = [l for l in readme_measured.render(results_copy).splitlines()
             if '`audit_epsilon.json`' in l]
  assert 'ε_lb 2.5 / 0.276 / 0.36 at claimed PLD ε 1 / 4 / 8' in line
  assert '1 private run above its claim' in line
  assert "'hull'" not in line and 'smollm2' not in line
  del data['runs'][0]['settings']['canaries']
  path.write_text(json.dumps(data))
  with pytest.raises(readme_measured.ResultKeyError,
                     match=r"audit_epsilon\.json: missing key "
                           r"'settings\.canaries'"):
    readme_measured.render(results_copy)


def test_audit_mechanism_row_verdicts(results_copy):
  path = results_copy / 'audit_mechanism.json'
  data = json.loads(path.read_text())
  data['rows'][0]['seeds'][1]['epsilon_lb'] = 1.5  # a correct row failing
  path.write_text(json.dumps(data))
  (line,) = [l for l in readme_measured.render(results_copy).splitlines()
             if '`audit_mechanism.json`' in l]
  assert 'max ε_lb 1.5 / 0.518 / 1.03 (FAIL in 1 of 3, pass, pass)' in line


def test_default_run_row_computes_the_ratio(results_copy):
  path = results_copy / 'default_run_tuning.json'
  data = json.loads(path.read_text())
  chosen = data['chosen']['setting']
  (dp,) = [r for r in data['runs'] if r['setting'] == chosen and
           r['heldout'] == 'reported' and r['private']]
  (np_,) = [r for r in data['runs'] if r['setting'] == chosen and
            r['heldout'] == 'reported' and not r['private']]
  # DP gains exactly half the non-private gain: the row says 50%.
  dp['nll_final'] = dp['nll_initial'] - (np_['nll_initial'] -
                                         np_['nll_final']) / 2
  path.write_text(json.dumps(data))
  (line,) = [l for l in readme_measured.render(results_copy).splitlines()
             if '`default_run_tuning.json`' in l]
  assert ': 50% raw,' in line and f'({chosen}, ε = 8)' in line
  data['runs'].remove(np_)  # no non-private twin: loud
  path.write_text(json.dumps(data))
  with pytest.raises(readme_measured.ResultKeyError, match='reported works'):
    readme_measured.render(results_copy)
