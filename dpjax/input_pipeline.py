"""Builds the training and held-out datasets a run's config asks for.

Privacy unit: one record is one packed sequence of `data.seq_len` tokens
(`data.seq_len + 1` with the shifted target). The same passage may appear in
two records when a corpus holds two editions of a work; the guarantee is per
record, and the report names the unit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dpjax.data import packing
from dpjax.data import shakespeare
from dpjax.data import tokenizers


@dataclasses.dataclass
class Datasets:
  train: dict[str, np.ndarray]
  heldout: dict[str, np.ndarray]
  tokenizer: Any
  unit: str

  @property
  def train_size(self) -> int:
    return int(next(iter(self.train.values())).shape[0])


def _take(ds: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
  return {key: v[:k] for key, v in ds.items()} if k else ds


def build(data_config, tokenizer=None) -> Datasets:
  """Datasets from `config.data`; `tokenizer` overrides the byte tokenizer."""
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
