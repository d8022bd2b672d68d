"""Tokenizers with the dpjax contract: encode, decode, vocab_size, eos/pad ids.

A Hugging Face tokenizer that follows the same contract can be used wherever a
tokenizer is expected; `ByteTokenizer` needs no files and is what the tests and
the tiny models use.
"""

from __future__ import annotations

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
