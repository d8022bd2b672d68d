"""The mutation list (experiments/mutations.py) still applies to the code.

Every `old` snippet must occur exactly once in its file, every effect must be
known and every listed test must be a fast one, so that the list used by
`make test-mutation` cannot rot silently as the code changes.
"""

from __future__ import annotations

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _runner():
  path = os.path.join(ROOT, 'experiments', 'mutation_testing.py')
  spec = importlib.util.spec_from_file_location('dpjax_mutation_testing', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_every_mutation_applies_exactly_once():
  runner = _runner()
  mutations, effects = runner.load_mutations()
  assert len(mutations) >= 35
  assert runner.check_list(mutations, effects) == []


def test_every_entry_says_why_and_lists_test_paths():
  mutations, _ = _runner().load_mutations()
  for m in mutations:
    assert len(m['why']) > 20, m['id']
    for t in m['tests']:
      assert t.startswith('tests/') and '.py' in t, (m['id'], t)
      assert 'slow' not in t, (m['id'], t)


def test_check_list_reports_a_snippet_that_no_longer_applies(tmp_path):
  runner = _runner()
  (tmp_path / 'dpjax').mkdir()
  (tmp_path / 'dpjax' / 'x.py').write_text('a = 1\na = 1\n')
  m = dict(id='x', file='dpjax/x.py', old='a = 1', new='a = 2',
           effect='less_noise', why='a test entry of the right length',
           tests=['tests/test_noise.py'])
  assert 'occurs 2 times' in runner.check_entry(m, ('less_noise',),
                                                str(tmp_path))
  m['old'] = 'b = 1'
  assert 'occurs 0 times' in runner.check_entry(m, ('less_noise',),
                                                str(tmp_path))
