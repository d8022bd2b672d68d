"""Synthetic private records (fictitious patients) and secret canaries.

`make_records` writes short clinical-style notes about fictitious people
(names, record numbers, birth dates, addresses, conditions, medications),
deterministic from a seed. All content is drawn from small built-in lists and
random digits; any resemblance to a real person is chance.

`make_canaries` draws random digit secrets ("My ID number is 7 3 9 1 8 2",
as in Carlini et al., "The Secret Sharer", USENIX Security 2019) and
`insert_canaries` adds each canary to a list of texts as `repetitions`
separate records at seeded random positions. `make_private_corpus` does
both. Exposure of the canaries after training is measured with
`dpjax.data.exposure`.

Privacy unit:
  Each note and each inserted canary copy is one record. A canary inserted
  r times sits in r records, so a per-record (epsilon, delta) guarantee
  bounds its exposure only through group privacy over r records: canaries
  with r = 1 test the per-record guarantee, larger r show how it degrades.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

DEFAULT_PREFIX = 'My ID number is '

_FIRST = ('Alma', 'Bruno', 'Carmen', 'Dmitri', 'Elif', 'Farah', 'Gustav',
          'Hana', 'Igor', 'Jonas', 'Kaia', 'Lucien', 'Maren', 'Nikhil',
          'Odette', 'Pavel', 'Quinn', 'Rosa', 'Soren', 'Tamsin', 'Ulla',
          'Viktor', 'Wanda', 'Xavier', 'Yara', 'Zeno', 'Ines', 'Mateo', 'Lena',
          'Omar')
_LAST = ('Abernathy', 'Bellweather', 'Castellano', 'Dunmore', 'Esterhazy',
         'Fairbrook', 'Grimaldi', 'Holloway', 'Ivanova', 'Jankowski',
         'Kettering',
         'Lindqvist', 'Marchetti', 'Nakashima', 'Okonkwo', 'Pemberton', 'Quist',
         'Rasmussen', 'Saltonstall', 'Thackeray', 'Underhill', 'Valcourt',
         'Whitlock', 'Yardley', 'Zabrowski')
_STREETS = ('Alder Lane', 'Birch Road', 'Cedar Court', 'Dove Street',
            'Elm Terrace', 'Fern Avenue', 'Garnet Way', 'Heron Close',
            'Juniper Row', 'Larch Drive', 'Mill Street', 'Orchard Place')
_CITIES = ('Northfield', 'Easthaven', 'Westmoor', 'Southbridge', 'Lakeview',
           'Riverton', 'Hillcrest', 'Fairport')
_CONDITIONS = ('type 2 diabetes', 'hypertension', 'asthma', 'migraine',
               'hypothyroidism', 'atrial fibrillation',
               'chronic kidney disease',
               'major depressive disorder', 'rheumatoid arthritis', 'epilepsy',
               'COPD', 'iron-deficiency anaemia', 'psoriasis', 'gout')
_MEDS = ('metformin 500 mg', 'lisinopril 10 mg', 'salbutamol inhaler',
         'sumatriptan 50 mg', 'levothyroxine 75 mcg', 'apixaban 5 mg',
         'sertraline 50 mg', 'methotrexate 15 mg', 'levetiracetam 500 mg',
         'allopurinol 100 mg', 'ferrous sulfate 200 mg')
_TEMPLATES = (
    'Patient {name}, MRN {mrn}, born {dob}, lives at {addr}. Seen today for '
    '{cond}. Continues {med}. Follow-up in {weeks} weeks.',
    '{name} (DOB {dob}, record {mrn}) presented with worsening {cond}. '
    'Address on file: {addr}. Started {med}.',
    'Clinic note: {name}, {age}-year-old, MRN {mrn}. History of {cond}. '
    'Current medication: {med}. Contact address {addr}.',
    'Discharge summary for {name}, MRN {mrn}. Admitted with {cond}; stable on '
    '{med}. Home address: {addr}. Review in {weeks} weeks.',
)


@dataclasses.dataclass(frozen=True)
class PatientRecord:
  """One fictitious person and the note written about them."""
  name: str
  mrn: str
  dob: str
  address: str
  condition: str
  medication: str
  text: str


@dataclasses.dataclass(frozen=True)
class Canary:
  """A secret inserted into the training data.

  Attributes:
    prefix: the known context, e.g. 'My ID number is '.
    secret: the digits with their separator, e.g. '7 3 9 1 8 2'.
    repetitions: how many records carry it.
  """
  prefix: str
  secret: str
  repetitions: int

  @property
  def text(self) -> str:
    return self.prefix + self.secret


def format_secret(digits: Sequence[int], sep: str = ' ') -> str:
  """'7 3 9' from [7, 3, 9]."""
  return sep.join(str(int(d)) for d in digits)


def make_records(n: int, seed: int) -> list[PatientRecord]:
  """Generates `n` fictitious clinical notes, deterministic from `seed`."""
  if n < 0:
    raise ValueError(f'n={n} must be >= 0')
  rng = np.random.default_rng([seed, 0x5EC0])
  out = []
  for _ in range(n):
    name = f'{rng.choice(_FIRST)} {rng.choice(_LAST)}'
    mrn = (f'{rng.integers(100, 1000)}-{rng.integers(10, 100)}-'
           f'{rng.integers(1000, 10000)}')
    year = int(rng.integers(1930, 2006))
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    dob = f'{year}-{month:02d}-{day:02d}'
    addr = (f'{int(rng.integers(1, 300))} {rng.choice(_STREETS)}, '
            f'{rng.choice(_CITIES)}')
    cond, med = str(rng.choice(_CONDITIONS)), str(rng.choice(_MEDS))
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    text = template.format(name=name, mrn=mrn, dob=dob, addr=addr, cond=cond,
                           med=med, weeks=int(rng.integers(2, 13)),
                           age=2026 - year)
    out.append(PatientRecord(name, mrn, dob, addr, cond, med, text))
  return out


def make_canaries(repetitions: Sequence[int], seed: int, *, n_digits: int = 6,
                  prefix: str = DEFAULT_PREFIX, sep: str = ' ') -> list[Canary]:
  """Draws one distinct random secret per entry of `repetitions`.

  Args:
    repetitions: insertion count of each canary (>= 0; 0 = a reference
      canary that is never inserted, useful as a control).
    seed: seeds the secrets.
    n_digits: digits per secret (candidate space 10**n_digits).
    prefix: the context before the secret.
    sep: separator between digits.

  Returns:
    The canaries, in the order of `repetitions`.
  """
  if n_digits < 1:
    raise ValueError(f'n_digits={n_digits} must be >= 1')
  if any(r < 0 for r in repetitions):
    raise ValueError(f'repetitions={list(repetitions)} must be >= 0')
  if len(repetitions) > 10**n_digits:
    raise ValueError(f'{len(repetitions)} distinct secrets do not fit in '
                     f'{n_digits} digits')
  rng = np.random.default_rng([seed, 0xCA7A])
  seen, out = set(), []
  for r in repetitions:
    while True:
      digits = tuple(int(d) for d in rng.integers(0, 10, size=n_digits))
      if digits not in seen:
        break
    seen.add(digits)
    out.append(Canary(prefix, format_secret(digits, sep), int(r)))
  return out


def insert_canaries(texts: Sequence[str], canaries: Sequence[Canary],
                    seed: int) -> list[str]:
  """Returns `texts` with each canary added as `repetitions` separate records.

  The copies go to seeded random positions; the original texts keep their
  relative order.
  """
  extra = [c.text for c in canaries for _ in range(c.repetitions)]
  out = list(texts) + extra
  rng = np.random.default_rng([seed, 0x1235])
  # Random positions for the copies, original order kept for the rest.
  is_extra = np.zeros(len(out), bool)
  is_extra[rng.choice(len(out), size=len(extra), replace=False)] = True
  originals, copies = iter(texts), iter(rng.permutation(extra).tolist())
  return [next(copies) if e else next(originals) for e in is_extra]


def make_private_corpus(n_records: int, seed: int, *,
                        canary_repetitions: Sequence[int] = (1, 10, 100),
                        n_digits: int = 6, prefix: str = DEFAULT_PREFIX,
                        ) -> tuple[list[str], list[Canary]]:
  """Fictitious notes plus inserted canaries: (texts, canaries).

  `len(texts) == n_records + sum(canary_repetitions)`.
  """
  notes = [r.text for r in make_records(n_records, seed)]
  canaries = make_canaries(canary_repetitions, seed, n_digits=n_digits,
                           prefix=prefix)
  return insert_canaries(notes, canaries, seed), canaries
