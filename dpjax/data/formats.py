"""User data files: a folder of .txt files, JSON lines, CSV/TSV (GLUE layouts).

Every loader returns a `LoadedData(kind, records, label_names, source)` where
`kind` is one of
  'text'           records `{'text'}`                      (causal LM)
  'instruction'    records `{'prompt', 'response'}`        (loss on response)
  'classification' records `{'text_a', 'label'}` (+ `'text_b'` for pairs)
Labels are ints; string labels are mapped with the layout's known names (MNLI,
QNLI, as in the Hugging Face GLUE datasets) or a `label_map` argument.

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
import json
import pathlib
import sys
from typing import Any, Mapping

KINDS = ('text', 'instruction', 'classification')

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


@dataclasses.dataclass
class LoadedData:
  """Records read from a user file or folder.

  Attributes:
    kind: one of `KINDS`.
    records: one dict per record (see the module docstring).
    label_names: names of label ids 0..K-1 when known, else None.
    source: the path read.
  """
  kind: str
  records: list[dict[str, Any]]
  label_names: tuple[str, ...] | None
  source: str

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


def load_text_folder(path: str | pathlib.Path, *, suffix: str = '.txt',
                     encoding: str = 'utf-8') -> LoadedData:
  """Reads every `*suffix` file of a folder (sorted by name), one record each.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise DataFormatError(f'{root}: not a folder')
  records = []
  for f in sorted(root.glob(f'*{suffix}')):
    try:
      text = f.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
      raise DataFormatError(f'{f}: not valid {encoding} ({e.reason} at byte '
                            f'{e.start})') from e
    if text.strip():
      records.append({'text': text})
  if not records:
    raise DataFormatError(
        f'{root}: no non-empty {suffix} files (empty dataset)')
  return LoadedData('text', records, None, str(root))


def _kind_of_fields(fields) -> str | None:
  if 'prompt' in fields or 'response' in fields:
    return 'instruction'
  if 'label' in fields or 'sentence' in fields:
    return 'classification'
  if 'text' in fields:
    return 'text'
  return None


def load_jsonl(path: str | pathlib.Path, *,
               label_map: Mapping[str, int] | None = None) -> LoadedData:
  """Reads JSON lines: `text`, or `prompt`/`response`, or `sentence`/`label`.

  The first record fixes the kind; every later line must have the same
  fields. `text`/`label` lines are also read as classification. Blank lines
  are skipped.
  """
  path = pathlib.Path(path)
  records, kind = [], None
  with open(path, encoding='utf-8') as fh:
    for line_no, line in enumerate(fh, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataFormatError(
            f'{path}:{line_no}: invalid JSON ({e.msg})') from e
      if not isinstance(obj, dict):
        raise DataFormatError(f'{path}:{line_no}: expected a JSON object, got '
                              f'{type(obj).__name__}')
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
  names = _names_from_map(label_map)
  return _nonempty(LoadedData(kind or 'text', records, names, str(path)))


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
               label_map: Mapping[str, int] | None = None) -> LoadedData:
  """Reads a CSV or TSV file with a header row (GLUE layouts included).

  TSV files are read without quote processing, as GLUE's MNLI/QNLI files
  contain unbalanced quotes; CSV files use standard quoting. Extra columns
  (GLUE's index, parses, genre, ...) are ignored.

  Args:
    path: the file.
    delimiter: ',' or '\\t'; by default '\\t' for .tsv and ',' otherwise.
    label_map: label name -> id for string labels not in `GLUE_LABELS`.

  Returns:
    `LoadedData` of kind 'classification', 'instruction' or 'text'.
  """
  path = pathlib.Path(path)
  if delimiter is None:
    delimiter = '\t' if path.suffix.lower() == '.tsv' else ','
  quoting = csv.QUOTE_NONE if delimiter == '\t' else csv.QUOTE_MINIMAL
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
  with open(path, encoding='utf-8', newline='') as fh:
    reader = csv.reader(fh, delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if header is None:
      raise DataFormatError(f'{path}: empty file (no header row)')
    header = [h.strip().lstrip('\ufeff') for h in header]
    try:
      layout = detect_layout(header)
    except ValueError as e:
      raise DataFormatError(f'{path}:1: {e}') from None
    col = {h: i for i, h in enumerate(header)}
    records = []
    if layout in LAYOUTS:
      a, b, label_cols = LAYOUTS[layout]
      label_col = next(l for l in label_cols if l in col)
      names = GLUE_LABELS.get(layout)
      kind = 'classification'
    else:
      kind, names = layout, None
    for row in reader:
      line = reader.line_num
      if not row or (len(row) == 1 and not row[0].strip()):
        continue
      if len(row) != len(header):
        raise DataFormatError(f'{path}:{line}: {len(row)} columns, the header '
                              f'has {len(header)} ({delimiter!r}-separated)')
      get = lambda f: row[col[f]]  # pylint: disable=cell-var-from-loop
      if kind == 'classification':
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
  if label_map is not None:
    names = _names_from_map(label_map)
  return _nonempty(LoadedData(kind, records, names, str(path)))


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
