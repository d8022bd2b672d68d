"""The committed export-dtype measurement is complete and self-consistent.

Reads experiments/results/export_dtypes.json (written by
experiments/export_dtypes.py); runs no model.
"""

from __future__ import annotations

import json
import os

import pytest

RESULT = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments', 'results',
                      'export_dtypes.json')
GGUF_DTYPES = ('float32', 'float16', 'q8_0')


@pytest.fixture(scope='module')
def result():
  with open(RESULT) as f:
    return json.load(f)


def _ran(row):
  return {k: v for k, v in row['readers'].items() if isinstance(v, dict)}


def _exports(result):
  return {r['dtype']: r for r in result['rows']
          if r['format'] == 'gguf' and r.get('exported')}


def test_keys_and_setup(result):
  for key in ('records', 'seq_len', 'tokens', 'tolerance_nats_per_token',
              'heldout', 'reference', 'rows', 'recommendation', 'llama_cpp',
              'provenance', 'wall_seconds'):
    assert key in result, key
  assert result['tokens'] == result['records'] * result['seq_len']
  assert result['tolerance_nats_per_token'] == 0.01
  assert len(result['provenance']['git_commit']) == 40
  assert 0.0 < result['reference']['nll'] < 10.0
  assert set(_exports(result)) == set(GGUF_DTYPES)
  assert any(r['format'] == 'hf' for r in result['rows'])


def test_every_export_read_by_dpjax_and_transformers(result):
  for row in result['rows']:
    if row.get('context_only'):
      continue
    assert {'dpjax', 'transformers'} <= set(_ran(row)), row['label']
    if result['llama_cpp']['ran'] and row['format'] == 'gguf':
      assert 'llama_cpp' in _ran(row), row['dtype']


def test_deltas_and_verdicts_match_the_numbers(result):
  ref = result['reference']['nll']
  tol = result['tolerance_nats_per_token']
  for row in result['rows']:
    ran = _ran(row)
    for entry in ran.values():
      assert entry['delta_vs_reference'] == pytest.approx(
          entry['nll'] - ref, abs=1e-9)
    if not ran:
      continue
    worst = max(abs(e['delta_vs_reference']) for e in ran.values())
    assert row['max_abs_delta'] == pytest.approx(worst)
    assert row['within_tolerance'] == (worst <= tol)


def test_float32_exports_reproduce_the_reference(result):
  for row in result['rows']:
    if row['dtype'] == 'float32':
      for reader, entry in _ran(row).items():
        assert abs(entry['delta_vs_reference']) < 1e-3, (row['label'], reader)


def test_sizes_ordered(result):
  ex = _exports(result)
  assert (ex['float32']['size_bytes'] > ex['float16']['size_bytes']
          > ex['q8_0']['size_bytes'])


def test_recommendation_is_smallest_within_tolerance(result):
  ex = _exports(result)
  ok = [r for r in ex.values() if r['within_tolerance']]
  rec = result['recommendation']['dtype']
  if not ok:
    assert rec is None
    return
  assert rec == min(ok, key=lambda r: r['size_bytes'])['dtype']
  assert ex[rec]['max_abs_delta'] <= result['tolerance_nats_per_token']


def test_shipped_default_is_the_measured_recommendation(result):
  """configs/default.py and gguf_io default to the dtype the table chose."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from dpjax.models import gguf_io  # pylint: disable=g-import-not-at-top
  chosen = {'float32': 'f32', 'float16': 'f16'}.get(
      result['recommendation']['dtype'], result['recommendation']['dtype'])
  assert default.get_config().export.gguf_dtype == chosen
  assert gguf_io.DEFAULT_DTYPE == chosen
