"""A real classification task from the Shakespeare corpus: passage -> genre.

Each play's spoken text is cut into passages of consecutive lines (about
`passage_chars` characters; speaker names, act/scene headings and stage
directions removed), labelled with the play's First Folio genre
(`dpjax.data.shakespeare`). The split is by work: no passage of a held-out
play, in any edition, is in train. Classes are balanced in each split by
sampling the same number of passages per class (the smallest class's pool,
or `per_class` if smaller), with a seeded NumPy generator, so the task is a
deterministic function of its arguments.

Default label set: comedy vs tragedy, romances excluded (Cymbeline is a
Folio tragedy but a late romance, and Pericles, The Winter's Tale and The
Tempest are Folio comedies that read otherwise), modern edition only (its
spelling is what a pretrained LM knows). Chance is 1/len(genres).

Privacy unit:
  One passage (one row) is one record. Passages of the same play are
  correlated (same characters, same plot), so a guarantee per passage is not
  a guarantee per play.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from dpjax.data import shakespeare

# Two works per genre, held out by default (one of them from the LM split's
# default held-out set).
DEFAULT_HELDOUT = {
    'comedy': ('twelfth_night', 'merchant_of_venice'),
    'tragedy': ('antony_and_cleopatra', 'macbeth'),
    'history': ('richard_ii', 'henry_v'),
}

_HEADING = re.compile(r'^(ACT|SCENE|SCENA|SCOENA|ACTUS|PROLOGUE|EPILOGUE|'
                      r'DRAMATIS|PERSONS|FINIS)\b', re.I)
_SPEAKER = re.compile(r"^[A-Z][A-Za-z' .,-]{0,30}\.$")  # 'KENT.', 'First Gent.'
# Folio speaker prefixes: '  Bar. Long liue', '  1.Sen. Bring vs'.
_FOLIO_SPEAKER = re.compile(r'^\s+(?:\d\.\s?)?[A-Z][a-z]{0,12}\.\s')
_STAGE = re.compile(r'^\s*(\[|\(|Enter\b|Exit\b|Exeunt\b|Flourish\b|Manet\b)')


@dataclasses.dataclass(frozen=True)
class Passage:
  """One example: the text, its label id and the work it comes from."""
  text: str
  label: int
  work_id: str


@dataclasses.dataclass
class GenreTask:
  """Train and held-out passages of the genre task.

  Attributes:
    train: training passages (balanced, in random order).
    heldout: held-out passages (balanced, in random order).
    label_names: genre of each label id.
    train_works: works the training passages come from.
    heldout_works: works the held-out passages come from.
  """
  train: list[Passage]
  heldout: list[Passage]
  label_names: tuple[str, ...]
  train_works: tuple[str, ...]
  heldout_works: tuple[str, ...]

  @staticmethod
  def arrays(passages: Sequence[Passage]) -> tuple[list[str], np.ndarray]:
    """(texts, labels int32) of a list of passages."""
    labels = np.array([p.label for p in passages], np.int32)
    return [p.text for p in passages], labels


def spoken_lines(text: str) -> list[str]:
  """The spoken lines of a play text, without headings, speakers, directions.

  A heuristic for both editions: drops blank lines, all-caps lines, lines
  that are only a speaker name ('Kent.' after a blank line), headings
  (ACT/SCENE/Actus...),
  stage directions ('[...]', 'Enter ...', 'Exit', 'Exeunt'), and the Folio's
  leading speaker abbreviations ('  Bar. Long liue the King' -> 'Long liue
  the King').
  """
  out = []
  raws = text.splitlines()
  for i, raw in enumerate(raws):
    line = raw.strip()
    if not line or _HEADING.match(line) or _STAGE.match(raw):
      continue
    # 'Kent.' on its own line after a blank line names the speaker; after a
    # speaker line, the same shape is a short speech ('It did.').
    if _SPEAKER.match(line) and (i == 0 or not raws[i - 1].strip()):
      continue
    letters = [c for c in line if c.isalpha()]
    if letters and all(c.isupper() for c in letters):
      continue
    m = _FOLIO_SPEAKER.match(raw)
    if m:
      line = raw[m.end():].strip()
    if line:
      out.append(line)
  return out


def passages_of(text: str, passage_chars: int = 200) -> list[str]:
  """Cuts a text's spoken lines into disjoint passages of >= passage_chars.

  Consecutive lines are joined with ' ' until the passage reaches
  `passage_chars` characters; a final shorter remainder is dropped.
  """
  out, cur = [], []
  size = -1  # length of ' '.join(cur)
  for line in spoken_lines(text):
    cur.append(line)
    size += len(line) + 1
    if size >= passage_chars:
      out.append(' '.join(cur))
      cur, size = [], -1
  return out


def make_genre_task(
    seed: int = 0,
    *,
    genres: Sequence[str] = ('comedy', 'tragedy'),
    heldout_works: Sequence[str] | None = None,
    exclude_romances: bool = True,
    editions: Sequence[str] = ('modern',),
    passage_chars: int = 200,
    per_class: int | None = None,
    heldout_per_class: int | None = None,
) -> GenreTask:
  """Builds the balanced, split-by-work genre classification task.

  Args:
    seed: seeds the sampling and the order of passages.
    genres: label set, label id = position in this tuple ('comedy',
      'tragedy', 'history'; 'poem' is refused: poems are not plays).
    heldout_works: works to hold out; default `DEFAULT_HELDOUT` of `genres`.
    exclude_romances: drop the four late romances from both sides.
    editions: editions used ('modern', 'folio').
    passage_chars: minimum passage length in characters.
    per_class: cap on training passages per class (default: all of the
      smallest class).
    heldout_per_class: the same for held-out passages.

  Returns:
    A `GenreTask`.

  Raises:
    ValueError: bad genres, an unknown held-out work, a held-out work outside
      `genres` (or a romance when excluded), or a class with no passages.
  """
  genres = tuple(genres)
  if len(genres) < 2 or len(set(genres)) != len(genres) or any(
      g not in ('comedy', 'tragedy', 'history') for g in genres):
    raise ValueError(f'genres={genres}: need >= 2 distinct of comedy, tragedy, '
                     'history')
  works = {w.work_id: w for w in shakespeare.list_works()
           if w.genre in genres and not (exclude_romances and w.romance)}
  if heldout_works is None:
    heldout_works = [w for g in genres for w in DEFAULT_HELDOUT[g]]
  heldout = tuple(heldout_works)
  for w in heldout:
    if w not in works:
      raise ValueError(f'heldout_works: {w!r} is not a usable work for genres='
                       f'{genres} (exclude_romances={exclude_romances}); '
                       f'choose from {sorted(works)}')
  train_ids = tuple(w for w in works if w not in heldout)
  pools = {True: [[] for _ in genres], False: [[] for _ in genres]}
  for doc in shakespeare.load_documents(list(works), editions=editions):
    label = genres.index(works[doc.work_id].genre)
    for p in passages_of(doc.text, passage_chars):
      pool = pools[doc.work_id in heldout][label]
      pool.append(Passage(p, label, doc.work_id))
  rng = np.random.default_rng(seed)

  def balance(by_class, cap, name):
    sizes = [len(c) for c in by_class]
    if min(sizes) == 0:
      raise ValueError(f'{name}: a class has no passages (sizes {sizes} '
                       f'for {genres})')
    n = min(sizes) if cap is None else min(min(sizes), cap)
    chosen = []
    for c in by_class:
      idx = rng.choice(len(c), size=n, replace=False)
      chosen.extend(c[i] for i in sorted(idx))
    return [chosen[i] for i in rng.permutation(len(chosen))]

  train = balance(pools[False], per_class, 'train')
  held = balance(pools[True], heldout_per_class, 'heldout')
  return GenreTask(train, held, genres, train_ids, heldout)
