"""Tests for dpjax.data.records: synthetic notes and canary insertion."""

from __future__ import annotations

import collections
import re

import pytest

from dpjax.data import records


def test_records_are_deterministic_and_carry_their_fields():
  a = records.make_records(50, seed=3)
  assert a == records.make_records(50, seed=3)
  b = records.make_records(50, seed=4)
  assert [r.text for r in a] != [r.text for r in b]
  for r in a:
    for field in (r.name, r.mrn, r.address, r.condition, r.medication):
      assert field in r.text
    assert re.fullmatch(r'\d{3}-\d{2}-\d{4}', r.mrn)
    assert re.fullmatch(r'\d{4}-\d{2}-\d{2}', r.dob)
  assert len({r.name for r in a}) > 25  # varied
  assert records.make_records(0, seed=0) == []


def test_canaries_have_distinct_secrets_of_the_format():
  cans = records.make_canaries([1, 10, 100, 0], seed=0)
  assert [c.repetitions for c in cans] == [1, 10, 100, 0]
  assert len({c.secret for c in cans}) == 4
  for c in cans:
    assert re.fullmatch(r'\d( \d){5}', c.secret)
    assert c.text == 'My ID number is ' + c.secret
  assert cans == records.make_canaries([1, 10, 100, 0], seed=0)
  short = records.make_canaries([1] * 10, seed=1, n_digits=1, sep='')
  assert sorted(c.secret for c in short) == [str(d) for d in range(10)]
  with pytest.raises(ValueError, match='do not fit'):
    records.make_canaries([1] * 11, seed=1, n_digits=1)


def test_insertion_counts_and_order():
  notes = [f'note {i}' for i in range(30)]
  cans = records.make_canaries([1, 5, 0], seed=2, n_digits=4)
  texts = records.insert_canaries(notes, cans, seed=2)
  assert len(texts) == 36
  counts = collections.Counter(texts)
  for c in cans:
    assert counts[c.text] == c.repetitions
  assert [t for t in texts if t.startswith('note')] == notes
  assert texts == records.insert_canaries(notes, cans, seed=2)
  assert texts != records.insert_canaries(notes, cans, seed=3)


def test_private_corpus():
  texts, cans = records.make_private_corpus(200, seed=0)
  assert len(texts) == 200 + 111
  assert [c.repetitions for c in cans] == [1, 10, 100]
  assert all(texts.count(c.text) == c.repetitions for c in cans)
