"""Tokenizers with the dpjax contract: encode, decode, vocab_size, eos/pad ids.

A Hugging Face tokenizer that follows the same contract can be used wherever a
tokenizer is expected; `ByteTokenizer` needs no files and is what the tests and
the tiny models use. `PlainTokens` wraps a Hugging Face tokenizer without its
special tokens, for classification rows that add [CLS]/[SEP] themselves.
"""

from __future__ import annotations

import copy
from typing import Sequence


class ByteTokenizer:
  """UTF-8 bytes as tokens 0-255, plus pad (256) and eos (257).

  `decode` drops the special ids and replaces malformed UTF-8 (e.g. a sequence
  cut in the middle of a multi-byte character) with U+FFFD.
  """

  pad_id = 256
  eos_id = 257
  vocab_size = 258

  def encode(self, text: str) -> list[int]:
    """Returns the UTF-8 bytes of `text` as ints in [0, 256)."""
    if not isinstance(text, str):
      raise ValueError(f'text must be a str, got {type(text).__name__}')
    return list(text.encode('utf-8'))

  def decode(self, ids: Sequence[int]) -> str:
    """Inverse of `encode`; pad and eos ids are skipped.

    Raises:
      ValueError: an id outside [0, vocab_size).
    """
    out = bytearray()
    for i in ids:
      i = int(i)
      if 0 <= i < 256:
        out.append(i)
      elif i not in (self.pad_id, self.eos_id):
        raise ValueError(f'ids: token id {i} is outside [0, {self.vocab_size})')
    return out.decode('utf-8', errors='replace')

  def __repr__(self) -> str:
    return 'ByteTokenizer(pad_id=256, eos_id=257, vocab_size=258)'


class PlainTokens:
  """A Hugging Face tokenizer's plain tokens: no special tokens, no padding.

  Classification rows add [CLS]/[SEP] themselves
  (`tasks.encode_classification`), so the wrapped tokenizer's
  post-processor must not.
  """

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

  def cls_sep_ids(self) -> tuple[int | None, int | None]:
    """([CLS] or <s>, [SEP] or </s>) ids: BERT's, else RoBERTa's names."""
    cls_id = self.token_id('[CLS]')
    if cls_id is None:
      cls_id = self.token_id('<s>')
    sep_id = self.token_id('[SEP]')
    if sep_id is None:
      sep_id = self.token_id('</s>')
    return cls_id, sep_id


def classification_tokens(tokenizer) -> tuple[object, int | None, int | None]:
  """(plain tokenizer, cls id, sep id) for `tasks.encode_classification`.

  A Hugging Face tokenizer (with `.tokenizer`) gives its plain tokens and
  [CLS]/[SEP] (or <s>/</s>); any other tokenizer is used as is, with no cls
  token and its eos as the separator.
  """
  if hasattr(tokenizer, 'tokenizer'):
    plain = PlainTokens(tokenizer)
    return (plain,) + plain.cls_sep_ids()
  return tokenizer, None, None
