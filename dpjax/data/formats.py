"""User data files: a folder of .txt files, JSON lines, CSV/TSV (GLUE layouts).

Every loader returns a `LoadedData(kind, records, label_names, source)` where
`kind` is one of
  'text'           records `{'text'}`                      (causal LM)
  'instruction'    records `{'prompt', 'response'}`        (loss on response)
  'classification' records `{'text_a', 'label'}` (+ `'text_b'` for pairs)
Labels are ints; string labels are mapped with the layout's known names (MNLI,
QNLI, as in the Hugging Face GLUE datasets) or a `label_map` argument.

With `fields=Fields(...)` the JSON-lines and table loaders read the named
fields (nothing is inferred) and, when `Fields.user` is set, carry each
record's user id in `LoadedData.users`; `LoadedData.locations` names each
record's file:line (or file) and `LoadedData.notes` says what was skipped
(blank lines, empty or other files), so nothing is dropped silently.

Malformed input raises `DataFormatError` (a `ValueError`) naming the file,
the line number and the field. Row order is the file's; nothing is shuffled
or deduplicated.

Privacy unit:
  One record is one line (JSON lines, CSV/TSV row) or one file (text
  folder). If the same person's data sits in several records, the guarantee
  per record is not a guarantee per person: group them before loading.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import pathlib
import sys
from typing import Any, Mapping

KINDS = ('text', 'instruction', 'classification')

# Explicit formats and the suffixes they are inferred from ('' = infer).
FORMATS = ('jsonl', 'csv', 'tsv', 'text_folder')
_SUFFIX_FORMAT = {'.jsonl': 'jsonl', '.json': 'jsonl', '.csv': 'csv',
                  '.tsv': 'tsv'}

# Label names of the GLUE tasks (order as in the Hugging Face `glue` datasets).
GLUE_LABELS = {
    'mnli': ('entailment', 'neutral', 'contradiction'),
    'qnli': ('entailment', 'not_entailment'),
}

# layout -> (text_a column, text_b column or None, label columns by preference)
LAYOUTS = {
    'qqp': ('question1', 'question2', ('is_duplicate',)),
    'qnli': ('question', 'sentence', ('label',)),
    'mnli': ('sentence1', 'sentence2', ('gold_label', 'label')),
    'sst2': ('sentence', None, ('label',)),
    'text_label': ('text', None, ('label',)),
}


class DataFormatError(ValueError):
  """Malformed data file; the message names file, line and field."""


class UnknownFormatError(DataFormatError):
  """A path whose format is neither named nor known from its suffix."""


@dataclasses.dataclass(frozen=True)
class Fields:
  """The fields (JSON keys, table columns) a loader reads, named explicitly.

  Attributes:
    kind: one of `KINDS`; it fixes which of the names below are read.
    text: the text ('text' and 'classification').
    prompt: the instruction ('instruction').
    response: the answer, where the loss counts ('instruction').
    label: the class label ('classification').
    label_names: the label set: a label is one of these names (its index is
      the id) or an integer in [0, K). Empty: integers >= 0.
    user: the field naming the person a record belongs to; '' for none.
      Ids are compared as stripped text (7 and "7" are one user).
  """
  kind: str
  text: str = 'text'
  prompt: str = 'prompt'
  response: str = 'response'
  label: str = 'label'
  label_names: tuple[str, ...] = ()
  user: str = ''

  def names(self) -> tuple[str, ...]:
    """The field names read, the user field last (if any)."""
    by_kind = {'text': (self.text,), 'instruction': (self.prompt,
                                                      self.response),
               'classification': (self.text, self.label)}
    if self.kind not in by_kind:
      raise ValueError(f'kind={self.kind!r}: expected one of {KINDS}')
    return by_kind[self.kind] + ((self.user,) if self.user else ())


@dataclasses.dataclass
class LoadedData:
  """Records read from a user file or folder.

  Attributes:
    kind: one of `KINDS`.
    records: one dict per record (see the module docstring).
    label_names: names of label ids 0..K-1 when known, else None.
    source: the path read.
    locations: each record's 'file:line' (or file), when known.
    users: each record's user id (read with `Fields.user`), else None.
    notes: what was skipped while reading (counts), for the log.
  """
  kind: str
  records: list[dict[str, Any]]
  label_names: tuple[str, ...] | None
  source: str
  locations: list[str] | None = None
  users: list[str] | None = None
  notes: list[str] = dataclasses.field(default_factory=list)

  def __len__(self) -> int:
    return len(self.records)


def check_dataset_size(n_records: int, expected_batch_size: float,
                       field: str = 'data.batch_size') -> float:
  """Refuses an empty dataset or one smaller than the expected batch size.

  Args:
    n_records: N, the number of records (privacy units).
    expected_batch_size: the expected (Poisson) batch size B.
    field: the config field that set B, for the message.

  Returns:
    The sampling rate q = B / N (in (0, 1]).

  Raises:
    ValueError: N == 0, B <= 0, or B > N (q would exceed 1).
  """
  if n_records <= 0:
    raise ValueError('the dataset is empty (0 records): nothing to train on; '
                     'check the data path and its format')
  if expected_batch_size <= 0:
    raise ValueError(f'{field}={expected_batch_size} must be positive')
  if expected_batch_size > n_records:
    raise ValueError(
        f'{field}={expected_batch_size} is larger than the dataset '
        f'({n_records} records): the sampling rate q = batch/N would exceed 1; '
        f'use {field} <= {n_records} or more data')
  return expected_batch_size / n_records


def _err(path, line, field, what) -> DataFormatError:
  where = f'{path}:{line}' if line is not None else str(path)
  return DataFormatError(f'{where}: field {field!r}: {what}')


def _parse_label(value: Any, path, line, field, names, label_map) -> int:
  if isinstance(value, bool):
    return int(value)
  if isinstance(value, int):
    return value
  if isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(value, str):
    v = value.strip()
    if label_map is not None and v in label_map:
      return int(label_map[v])
    if v.lstrip('-').isdigit():
      return int(v)
    if label_map is None and names is not None and v in names:
      return names.index(v)
    valid = sorted(label_map) if label_map is not None else names
    raise _err(path, line, field, f'label {value!r} is not an integer'
               + (f' nor one of {list(valid)}' if valid else
                  '; pass label_map={name: id}'))
  raise _err(path, line, field, f'label {value!r} must be an int or a string')


def _text(value: Any, path, line, field) -> str:
  if value is None:
    raise _err(path, line, field, 'missing')
  if not isinstance(value, str):
    raise _err(path, line, field,
               f'expected a string, got {type(value).__name__}')
  if not value.strip():
    raise _err(path, line, field, 'is empty')
  return value


def _nonempty(data: LoadedData) -> LoadedData:
  if not data.records:
    raise DataFormatError(f'{data.source}: no records (empty dataset)')
  return data


def read_text(path: str | pathlib.Path, *, encoding: str = 'utf-8',
              allow_empty: bool = False) -> str:
  """A file's text; a leading byte-order mark is dropped.

  Raises:
    DataFormatError: no such file, a folder, an empty file (unless
      `allow_empty`), or bytes that do not decode (naming the line and the
      byte offset).
  """
  p = pathlib.Path(path)
  if not p.exists():
    raise DataFormatError(f'{p}: no such file or folder')
  if p.is_dir():
    raise DataFormatError(f'{p}: is a folder, expected a file')
  raw = p.read_bytes()
  if not allow_empty and not raw.strip():
    raise DataFormatError(f'{p}: the file is empty (empty dataset)')
  try:
    text = raw.decode(encoding)
  except UnicodeDecodeError as e:
    line = raw.count(b'\n', 0, e.start) + 1
    raise DataFormatError(
        f'{p}: not valid {encoding} at line {line}, byte offset {e.start} '
        f'({e.reason}); save the file as {encoding}') from e
  return text[1:] if text.startswith('\ufeff') else text


def _user_id(value: Any, path, line, field) -> str:
  if value is None:
    raise _err(path, line, field, 'missing (a user field is set: every '
               'record needs the id of the person it belongs to)')
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise _err(path, line, field, f'user id {value!r} must be a string or '
               'an integer')
  uid = str(value).strip()
  if not uid:
    raise _err(path, line, field, 'is empty (every record needs a user id)')
  return uid


def _label_in_set(value: Any, path, line, field, names) -> int:
  """A label under `Fields.label_names`: a name, or an id in [0, K)."""
  if value is None or (isinstance(value, str) and not value.strip()):
    raise _err(path, line, field, 'missing' if value is None else 'is empty')
  if names and isinstance(value, str) and value.strip() in names:
    return names.index(value.strip())
  k = len(names)
  valid = (f'one of {list(names)} or an integer in [0, {k})' if names
           else 'an integer >= 0')
  try:
    label = _parse_label(value, path, line, field, None, None)
  except DataFormatError:
    raise _err(path, line, field, f'label {value!r} is not {valid}') from None
  if label < 0 or (names and label >= k):
    raise _err(path, line, field, f'label {value!r} is not {valid}')
  return label


def _extract(get, fields: Fields, path, line) -> tuple[dict[str, Any],
                                                       str | None]:
  """One record (and its user id) from a row/object read by `fields`."""
  if fields.kind == 'text':
    rec = {'text': _text(get(fields.text), path, line, fields.text)}
  elif fields.kind == 'instruction':
    rec = {'prompt': _text(get(fields.prompt), path, line, fields.prompt),
           'response': _text(get(fields.response), path, line,
                             fields.response)}
  else:
    rec = {'text_a': _text(get(fields.text), path, line, fields.text),
           'label': _label_in_set(get(fields.label), path, line, fields.label,
                                  tuple(fields.label_names))}
  user = (_user_id(get(fields.user), path, line, fields.user)
          if fields.user else None)
  return rec, user


def _blank_note(n: int) -> list[str]:
  return [f'skipped {n} blank line{"s" * (n != 1)}'] if n else []


def _loaded(fields: Fields, records, locations, users, source,
            notes) -> LoadedData:
  names = tuple(fields.label_names) or None
  return _nonempty(LoadedData(
      fields.kind, records, names if fields.kind == 'classification' else None,
      source, locations, users if fields.user else None, notes))


def load_text_folder(path: str | pathlib.Path, *, suffix: str = '.txt',
                     encoding: str = 'utf-8') -> LoadedData:
  """Reads every `*suffix` file of a folder (sorted by name), one record each.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise DataFormatError(f'{root}: not a folder')
  records, locations, empty = [], [], 0
  files = sorted(root.glob(f'*{suffix}'))
  for f in files:
    text = read_text(f, encoding=encoding, allow_empty=True)
    if text.strip():
      records.append({'text': text})
      locations.append(str(f))
    else:
      empty += 1
  if not records:
    raise DataFormatError(
        f'{root}: no non-empty {suffix} files (empty dataset)')
  others = sum(1 for f in root.iterdir() if f not in files)
  notes = [f'skipped {empty} empty {suffix} files'] if empty else []
  if others:
    notes.append(f'ignored {others} entries not matching *{suffix}')
  return LoadedData('text', records, None, str(root), locations, None, notes)


def _kind_of_fields(fields) -> str | None:
  if 'prompt' in fields or 'response' in fields:
    return 'instruction'
  if 'label' in fields or 'sentence' in fields:
    return 'classification'
  if 'text' in fields:
    return 'text'
  return None


def _lines(text: str):
  """(line number, line) of a text, without the final newline's empty tail."""
  lines = text.split('\n')
  if lines and not lines[-1]:
    lines.pop()
  return enumerate((l.rstrip('\r') for l in lines), 1)


def load_jsonl(path: str | pathlib.Path, *,
               label_map: Mapping[str, int] | None = None,
               fields: Fields | None = None) -> LoadedData:
  """Reads JSON lines: `text`, or `prompt`/`response`, or `sentence`/`label`.

  Without `fields`, the first record fixes the kind; every later line must
  have the same fields. `text`/`label` lines are also read as
  classification. With `fields`, exactly the named fields are read (other
  keys are ignored). Blank lines are skipped (and counted in `notes`).
  """
  path = pathlib.Path(path)
  records, kind, locations, users, blank = [], None, [], [], 0
  for line_no, line in _lines(read_text(path)):
    if not line.strip():
      blank += 1
      continue
    try:
      obj = json.loads(line)
    except json.JSONDecodeError as e:
      hint = ('; expected JSON lines (one object per line), not a JSON array'
              if line.strip() == '[' else '')
      raise DataFormatError(
          f'{path}:{line_no}: invalid JSON ({e.msg}){hint}') from e
    if not isinstance(obj, dict):
      raise DataFormatError(f'{path}:{line_no}: expected a JSON object, got '
                            f'{type(obj).__name__}')
    locations.append(f'{path}:{line_no}')
    if fields is not None:
      rec, user = _extract(obj.get, fields, path, line_no)
      records.append(rec)
      users.append(user)
      continue
    if kind is None:
      kind = _kind_of_fields(obj)
      if kind is None:
        raise DataFormatError(
            f'{path}:{line_no}: no known field; expected "text", or "prompt" '
            f'and "response", or "sentence" and "label" (got {sorted(obj)})')
    if kind == 'text':
      records.append({'text': _text(obj.get('text'), path, line_no, 'text')})
    elif kind == 'instruction':
      records.append({f: _text(obj.get(f), path, line_no, f)
                      for f in ('prompt', 'response')})
    else:
      a = 'sentence' if 'sentence' in obj or 'text' not in obj else 'text'
      rec = {'text_a': _text(obj.get(a), path, line_no, a)}
      if 'label' not in obj:
        raise _err(path, line_no, 'label', 'missing')
      rec['label'] = _parse_label(obj['label'], path, line_no, 'label', None,
                                  label_map)
      records.append(rec)
  if fields is not None:
    return _loaded(fields, records, locations, users, str(path),
                   _blank_note(blank))
  names = _names_from_map(label_map)
  return _nonempty(LoadedData(kind or 'text', records, names, str(path),
                              locations, None, _blank_note(blank)))


def _names_from_map(label_map):
  if not label_map:
    return None
  ids = sorted(label_map.values())
  if ids != list(range(len(ids))):
    return None
  inverse = {v: k for k, v in label_map.items()}
  return tuple(inverse[i] for i in ids)


def detect_layout(header: list[str]) -> str:
  """Names the table layout of a header row (see `LAYOUTS`)."""
  cols = set(header)
  for name, (a, b, labels) in LAYOUTS.items():
    has_label = any(l in cols for l in labels)
    if a in cols and (b is None or b in cols) and has_label:
      if name in ('sst2', 'text_label') and {'sentence1', 'question'} & cols:
        continue
      return name
  if 'prompt' in cols and 'response' in cols:
    return 'instruction'
  if 'text' in cols:
    return 'text'
  raise ValueError(
      f'unknown table layout with columns {header}; expected one of '
      'sentence,label (SST-2) / question,sentence,label (QNLI) / '
      'question1,question2,is_duplicate (QQP) / '
      'sentence1,sentence2,gold_label or label (MNLI) / prompt,response / text')


def load_table(path: str | pathlib.Path, *, delimiter: str | None = None,
               label_map: Mapping[str, int] | None = None,
               fields: Fields | None = None) -> LoadedData:
  """Reads a CSV or TSV file with a header row (GLUE layouts included).

  TSV files are read without quote processing, as GLUE's MNLI/QNLI files
  contain unbalanced quotes; CSV files use standard quoting. Extra columns
  (GLUE's index, parses, genre, ...) are ignored. Blank rows are skipped
  (and counted in `notes`).

  Args:
    path: the file.
    delimiter: ',' or '\\t'; by default '\\t' for .tsv and ',' otherwise.
    label_map: label name -> id for string labels not in `GLUE_LABELS`.
    fields: read exactly these columns (no layout detection).

  Returns:
    `LoadedData` of kind 'classification', 'instruction' or 'text'.
  """
  path = pathlib.Path(path)
  if delimiter is None:
    delimiter = '\t' if path.suffix.lower() == '.tsv' else ','
  quoting = csv.QUOTE_NONE if delimiter == '\t' else csv.QUOTE_MINIMAL
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
  text = read_text(path)
  reader = csv.reader(io.StringIO(text, newline=''), delimiter=delimiter,
                      quoting=quoting)
  try:
    header = next(reader, None)
  except csv.Error as e:
    raise DataFormatError(f'{path}:1: not a valid header row ({e})') from e
  if header is None:
    raise DataFormatError(f'{path}: empty file (no header row)')
  header = [h.strip().lstrip('\ufeff') for h in header]
  col = {h: i for i, h in enumerate(header)}
  if fields is not None:
    for f in fields.names():
      if f not in col:
        raise _err(path, 1, f, f'no such column (the header has {header}, '
                   f'{delimiter!r}-separated)')
    kind, names = fields.kind, None
  else:
    try:
      layout = detect_layout(header)
    except ValueError as e:
      raise DataFormatError(f'{path}:1: {e}') from None
    if layout in LAYOUTS:
      a, b, label_cols = LAYOUTS[layout]
      label_col = next(l for l in label_cols if l in col)
      names = GLUE_LABELS.get(layout)
      kind = 'classification'
    else:
      kind, names = layout, None
  records, locations, users, blank = [], [], [], 0
  while True:
    try:
      row = next(reader, None)
    except csv.Error as e:
      raise DataFormatError(f'{path}:{reader.line_num}: {e}') from e
    if row is None:
      break
    line = reader.line_num
    if not row or (len(row) == 1 and not row[0].strip()):
      blank += 1
      continue
    if len(row) != len(header):
      raise DataFormatError(f'{path}:{line}: {len(row)} columns, the header '
                            f'has {len(header)} ({delimiter!r}-separated)')
    get = lambda f: row[col[f]]  # pylint: disable=cell-var-from-loop
    locations.append(f'{path}:{line}')
    if fields is not None:
      rec, user = _extract(get, fields, path, line)
      users.append(user)
    elif kind == 'classification':
      rec = {'text_a': _text(get(a), path, line, a)}
      if b is not None:
        rec['text_b'] = _text(get(b), path, line, b)
      rec['label'] = _parse_label(get(label_col), path, line, label_col,
                                  names, label_map)
    elif kind == 'instruction':
      rec = {f: _text(get(f), path, line, f) for f in ('prompt', 'response')}
    else:
      rec = {'text': _text(get('text'), path, line, 'text')}
    records.append(rec)
  notes = [f'skipped {blank} blank row{"s" * (blank != 1)}'] if blank else []
  if fields is not None:
    return _loaded(fields, records, locations, users, str(path), notes)
  if label_map is not None:
    names = _names_from_map(label_map)
  return _nonempty(LoadedData(kind, records, names, str(path), locations,
                              None, notes))


def infer_format(path: str | pathlib.Path) -> str:
  """The format of a path: a folder is 'text_folder', else by suffix.

  Raises:
    DataFormatError: no such path, or an unknown suffix.
  """
  p = pathlib.Path(path)
  if p.is_dir():
    return 'text_folder'
  if not p.exists():
    raise DataFormatError(f'{p}: no such file or folder')
  fmt = _SUFFIX_FORMAT.get(p.suffix.lower())
  if fmt is None:
    raise UnknownFormatError(
        f'{p}: unknown format {p.suffix.lower()!r}; expected a folder of '
        '.txt files, .jsonl, .json (JSON lines), .csv or .tsv, or name the '
        f'format ({", ".join(FORMATS)})')
  return fmt


def load_fields(path: str | pathlib.Path, fields: Fields,
                fmt: str = '') -> LoadedData:
  """Reads `fields` from a file or folder in `fmt` ('' = `infer_format`).

  A text folder holds one record per file: only kind 'text', no user field.
  """
  fmt = fmt or infer_format(path)
  if fmt == 'jsonl':
    return load_jsonl(path, fields=fields)
  if fmt in ('csv', 'tsv'):
    return load_table(path, delimiter=',' if fmt == 'csv' else '\t',
                      fields=fields)
  if fmt == 'text_folder':
    if fields.kind != 'text' or fields.user:
      raise DataFormatError(
          f'{path}: a text folder holds plain texts (one record per file): '
          'it has no prompt/response, label or user fields')
    return load_text_folder(path)
  raise UnknownFormatError(f'{path}: unknown format {fmt!r}; expected one of '
                           f'{FORMATS}')


def load_path(path: str | pathlib.Path, **kwargs) -> LoadedData:
  """Dispatches on the path: folder, .jsonl/.json, .csv/.tsv."""
  p = pathlib.Path(path)
  if p.is_dir():
    return load_text_folder(p, **kwargs)
  if not p.exists():
    raise DataFormatError(f'{p}: no such file or folder')
  suffix = p.suffix.lower()
  if suffix in ('.jsonl', '.json'):
    return load_jsonl(p, **kwargs)
  if suffix in ('.csv', '.tsv'):
    return load_table(p, **kwargs)
  raise DataFormatError(f'{p}: unknown format {suffix!r}; expected a folder of '
                        '.txt files, .jsonl, .csv or .tsv')
