"""Builds the training and held-out datasets a run's config asks for.

Privacy unit (`Datasets.unit`; the report names it):
  shakespeare: one packed sequence of `data.seq_len` tokens
    (`data.seq_len + 1` with the shifted target). The same passage may appear
    in two records when a corpus holds two editions of a work; the guarantee
    is per record.
  records: one fictitious note (or one canary copy). genre: one passage.
  files (`data.path`, see `dpjax.data.user_files`): one record (line, row or
    file), truncated to `data.seq_len` tokens, never packed with another;
    with `data.user_field`, one user: all the records with that id
    (`Datasets.users` indexes them; the ids themselves are not kept).

Held-out data (for files: `data.heldout_path`, or a public SHA-256 split of
`data.path` by user id or record content) is treated as public: its losses
are released without noise. Errors in the data are `ConfigError`s naming the
config field, the file, the line and the data field.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
import numpy as np

from dpjax import configuration
from dpjax.data import classification
from dpjax.data import formats
from dpjax.data import packing
from dpjax.data import records
from dpjax.data import shakespeare
from dpjax.data import tasks
from dpjax.data import tokenizers
from dpjax.data import user_files

_KIND_OF_TASK = {'lm': 'text', 'instruction': 'instruction',
                 'classification': 'classification'}


@dataclasses.dataclass
class Datasets:
  """A run's training and held-out data.

  Attributes:
    train: the training dataset dict (one row per record).
    heldout: the held-out dataset dict (treated as public).
    tokenizer: the tokenizer used.
    unit: the privacy unit, in words (for the report).
    canaries: secret canaries inserted into `train` (records corpus).
    users: with `data.user_field`, each user's record indices into `train`
      (int64 arrays, users in the order of their first record; every record
      in exactly one); None at record level. The ids are not kept.
  """
  train: dict[str, np.ndarray]
  heldout: dict[str, np.ndarray]
  tokenizer: Any
  unit: str
  canaries: tuple = ()
  users: tuple[np.ndarray, ...] | None = None

  @property
  def train_size(self) -> int:
    """N, the number of training records."""
    return int(next(iter(self.train.values())).shape[0])

  @property
  def num_users(self) -> int | None:
    """The number of users (None without a user field)."""
    return None if self.users is None else len(self.users)


def _take(ds: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
  return {key: v[:k] for key, v in ds.items()} if k else ds


def num_labels(data_config) -> int | None:
  """The classes of a classification task (the head's size), else None."""
  if data_config.task == 'genre':
    return len(data_config.genres)
  if data_config.task == 'classification':
    return len(data_config.label_names)
  return None


def build_genre(data_config, tokenizer, seed: int) -> Datasets:
  """The Shakespeare genre-classification task (split by work, balanced)."""
  task = classification.make_genre_task(
      seed, genres=tuple(data_config.genres),
      passage_chars=data_config.passage_chars)
  plain, cls_id, sep_id = tokenizers.classification_tokens(tokenizer)

  def make(passages):
    texts, labels = classification.GenreTask.arrays(passages)
    return tasks.encode_classification(texts, labels, plain,
                                       data_config.seq_len, cls_id=cls_id,
                                       sep_id=sep_id)

  train = _take(make(task.train), data_config.max_train_records)
  held = _take(make(task.heldout), data_config.max_eval_records)
  unit = (f'one passage of >= {data_config.passage_chars} characters '
          f'labelled {"/".join(task.label_names)} (held-out works '
          f'{", ".join(task.heldout_works)})')
  return Datasets(train=train, heldout=held, tokenizer=tokenizer, unit=unit)


def build_records(data_config, tokenizer, seed: int) -> Datasets:
  """Synthetic clinical notes with secret canaries, one note per record."""
  texts, canaries = records.make_private_corpus(
      data_config.records_n, seed,
      canary_repetitions=tuple(data_config.canary_repetitions))
  held_texts = [r.text for r in records.make_records(
      data_config.max_eval_records, seed + 1)]

  def make(ts):
    return packing.pad_causal_lm([tokenizer.encode(t) for t in ts],
                                 data_config.seq_len, eos_id=tokenizer.eos_id,
                                 pad_id=tokenizer.pad_id)

  train = _take(make(texts), data_config.max_train_records)
  unit = (f'one fictitious clinical note (or one canary copy), padded to '
          f'{data_config.seq_len} tokens')
  return Datasets(train=train, heldout=make(held_texts), tokenizer=tokenizer,
                  unit=unit, canaries=tuple(canaries))


def file_fields(data_config) -> formats.Fields:
  """The fields `config.data` names for `data.corpus='files'`."""
  return formats.Fields(
      kind=_KIND_OF_TASK[data_config.task], text=data_config.text_field,
      prompt=data_config.prompt_field, response=data_config.response_field,
      label=data_config.label_field,
      label_names=tuple(data_config.label_names),
      user=data_config.user_field)


def _expected(data_config, fields: formats.Fields) -> str:
  """What a valid data file looks like under `data_config`, for errors."""
  need = {
      'text': f'a non-empty {fields.text!r} (data.text_field)',
      'instruction': (f'a non-empty {fields.prompt!r} (data.prompt_field) '
                      f'and {fields.response!r} (data.response_field)'),
      'classification': (
          f'a non-empty {fields.text!r} (data.text_field) and a label '
          f'{fields.label!r} (data.label_field) among data.label_names '
          f'{list(fields.label_names)} or an integer in '
          f'[0, {len(fields.label_names)})'),
  }[fields.kind]
  if fields.user:
    need += f' and a user id {fields.user!r} (data.user_field)'
  fmt = data_config.format or 'inferred from the suffix'
  return (f'a UTF-8 file (format {fmt}: JSON lines, CSV/TSV with a header '
          f'row, or a folder of .txt files) whose every record has {need}')


def _read(path: str, data_config, fields, field: str):
  try:
    data = user_files.read(path, fields, data_config.format)
  except formats.UnknownFormatError as e:
    raise configuration.ConfigError(
        'data.format', str(e),
        "'' (from the suffix), 'jsonl', 'csv', 'tsv' or 'text_folder'") from e
  except formats.DataFormatError as e:
    raise configuration.ConfigError(field, str(e),
                                    _expected(data_config, fields)) from e
  logging.info('%s: %d records (%s)%s', path, len(data), data.kind,
               ''.join('; ' + n for n in data.notes))
  return data


def _encode(data, tokenizer, data_config, fields, field: str):
  try:
    enc = user_files.encode(data, tokenizer, data_config.seq_len,
                            prompt_field=fields.prompt)
  except formats.DataFormatError as e:
    raise configuration.ConfigError(
        field, str(e), 'prompts that leave room for a response within '
        f'data.seq_len = {data_config.seq_len} tokens') from e
  if enc.truncated:
    logging.warning('%s: %d of %d records truncated to data.seq_len = %d '
                    'tokens', data.source, enc.truncated, len(data),
                    data_config.seq_len)
  return enc.arrays


def _first(data, k: int):
  return user_files.subset(data, range(min(k, len(data)))) if k else data


def build_files(data_config, tokenizer, seed: int) -> Datasets:
  """Your files (`data.corpus='files'`): one record per row, or one user.

  Raises:
    ConfigError: a missing, empty or malformed file (naming the file, the
      line and the field), or a held-out split with no records on a side.
  """
  del seed  # the held-out split is a public rule, the same for every seed
  tokenizer = tokenizer or tokenizers.ByteTokenizer()
  fields = file_fields(data_config)
  path = data_config.path
  train = _read(path, data_config, fields, 'data.path')
  held_field = 'data.path'
  if data_config.heldout_path:
    held_field = 'data.heldout_path'
    held = _read(data_config.heldout_path, data_config, fields, held_field)
    shared = user_files.shared_users(train, held)
    if shared:
      logging.warning('%d users have records in both data.path and '
                      'data.heldout_path; held-out data is treated as '
                      'public (its losses are released without noise)',
                      shared)
  else:
    frac = data_config.heldout_fraction
    train, held = user_files.split_heldout(train, frac)
    by = 'user id' if fields.user else 'record content'
    logging.info('%s: held-out split by a public SHA-256 rule on the %s '
                 '(fraction %g): %d train, %d held-out records', path, by,
                 frac, len(train), len(held))
    for side, n in (('held-out', len(held)), ('training', len(train))):
      if not n:
        raise configuration.ConfigError(
            'data.heldout_fraction', f'{frac} leaves the {side} split of '
            f'{path} empty (the split hashes each {by})',
            'a fraction that leaves records on both sides, more data, or '
            'data.heldout_path')
  train = _first(train, data_config.max_train_records)
  held = _first(held, data_config.max_eval_records)
  train_arrays = _encode(train, tokenizer, data_config, fields, 'data.path')
  held_arrays = _encode(held, tokenizer, data_config, fields, held_field)
  users = None
  if fields.user:
    users = user_files.user_index(train.users)
    # N (users) is treated as public, like every dataset size; how many
    # records one user holds is not, so it is never logged.
    logging.info('%s: %d users (%s) in the training set', path, len(users),
                 fields.user)
    unit = f'one user ({fields.user}) of {path}'
  else:
    unit = (f'one record of {path} (one line / row / file), truncated to '
            f'{data_config.seq_len} tokens')
  return Datasets(train=train_arrays, heldout=held_arrays,
                  tokenizer=tokenizer, unit=unit, users=users)


def build(data_config, tokenizer=None, seed: int = 0) -> Datasets:
  """Datasets from `config.data`; `tokenizer` overrides the byte tokenizer."""
  if data_config.corpus == 'files':
    return build_files(data_config, tokenizer, seed)
  if data_config.task == 'genre':
    return build_genre(data_config, tokenizer, seed)
  if data_config.corpus == 'records':
    return build_records(data_config, tokenizer or tokenizers.ByteTokenizer(),
                         seed)
  if tokenizer is None:
    tokenizer = tokenizers.ByteTokenizer()
  train_texts, held_texts = shakespeare.load_split(
      tuple(data_config.heldout_works))
  seq_len = data_config.seq_len

  def make(texts):
    return packing.pack_causal_lm([tokenizer.encode(t) for t in texts],
                                  seq_len, eos_id=tokenizer.eos_id,
                                  pad_id=tokenizer.pad_id)

  train = _take(make(train_texts), data_config.max_train_records)
  held = _take(make(held_texts), data_config.max_eval_records)
  unit = (f'one packed sequence of {seq_len} tokens of Shakespeare '
          f'(held-out works {", ".join(data_config.heldout_works)})')
  return Datasets(train=train, heldout=held, tokenizer=tokenizer, unit=unit)
