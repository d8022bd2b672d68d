"""Builds the training and held-out datasets a run's config asks for.

Privacy unit: one record is one packed sequence of `data.seq_len` tokens
(`data.seq_len + 1` with the shifted target). The same passage may appear in
two records when a corpus holds two editions of a work; the guarantee is per
record, and the report names the unit.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

from dpjax.data import classification
from dpjax.data import packing
from dpjax.data import records
from dpjax.data import shakespeare
from dpjax.data import tasks
from dpjax.data import tokenizers


@dataclasses.dataclass
class Datasets:
  train: dict[str, np.ndarray]
  heldout: dict[str, np.ndarray]
  tokenizer: Any
  unit: str
  canaries: tuple = ()

  @property
  def train_size(self) -> int:
    return int(next(iter(self.train.values())).shape[0])


def _take(ds: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
  return {key: v[:k] for key, v in ds.items()} if k else ds


class _PlainTokens:
  """A Hugging Face tokenizer's plain tokens: no special tokens, no padding."""

  def __init__(self, hf_tokenizer):
    tok = copy.deepcopy(hf_tokenizer.tokenizer)
    tok.no_padding()
    tok.no_truncation()
    self._tok = tok
    self.pad_id = hf_tokenizer.pad_id
    self.eos_id = hf_tokenizer.eos_id

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def token_id(self, token: str):
    return self._tok.token_to_id(token)


def build_genre(data_config, tokenizer, seed: int) -> Datasets:
  """The Shakespeare genre-classification task (split by work, balanced)."""
  task = classification.make_genre_task(
      seed, genres=tuple(data_config.genres),
      passage_chars=data_config.passage_chars)
  plain = _PlainTokens(tokenizer)
  cls_id = plain.token_id('[CLS]')
  if cls_id is None:
    cls_id = plain.token_id('<s>')
  sep_id = plain.token_id('[SEP]')
  if sep_id is None:
    sep_id = plain.token_id('</s>')

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


def build(data_config, tokenizer=None, seed: int = 0) -> Datasets:
  """Datasets from `config.data`; `tokenizer` overrides the byte tokenizer."""
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
