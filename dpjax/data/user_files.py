"""Your data, your privacy unit: user files read by the fields you name.

`read` loads a file or folder by explicit fields (`formats.Fields`);
`split_heldout` splits off a held-out set by a public rule; `encode`
tokenizes one record per row (records are never packed together), counting
the records it truncates; `user_index` lists each user's records.

Privacy unit:
  Record level (no user field): one record is one line (JSON lines), one row
  (CSV/TSV) or one file (text folder), as truncated to `seq_len` tokens.
  User level (a user field): all of one person's records; `user_index` gives
  each user's record indices. One person must have one id: a person under two
  ids counts as two users, and the guarantee is then per id, not per person.

Held-out data is treated as public: its losses are reported without noise
(the README's threat model). The split is a public rule: a record is held out
when the SHA-256 of its user id (with a user field), else of its content,
maps below `fraction`. So all of a person's records (and all copies of a
duplicated record) fall on one side, and the split is the same in every run
and for every seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

import numpy as np

from dpjax.data import formats
from dpjax.data import packing
from dpjax.data import tasks
from dpjax.data import tokenizers

_CONTENT_KEYS = ('text', 'prompt', 'response', 'text_a', 'text_b')


@dataclasses.dataclass
class Encoded:
  """A tokenized dataset dict and how many records were truncated."""
  arrays: dict[str, np.ndarray]
  truncated: int


def read(path: str, fields: formats.Fields,
         fmt: str = '') -> formats.LoadedData:
  """Reads `fields` from `path` (format `fmt`, '' = by suffix or folder)."""
  return formats.load_fields(path, fields, fmt)


def subset(data: formats.LoadedData,
           indices: Sequence[int]) -> formats.LoadedData:
  """The records at `indices` (in that order), with their locations/users."""
  pick = lambda xs: None if xs is None else [xs[i] for i in indices]
  return dataclasses.replace(data, records=pick(data.records),
                             locations=pick(data.locations),
                             users=pick(data.users))


def heldout_key(data: formats.LoadedData, i: int) -> str:
  """The public split key of record i: its user id, else its content."""
  if data.users is not None:
    return 'user:' + data.users[i]
  rec = data.records[i]
  return 'record:' + json.dumps([rec[k] for k in _CONTENT_KEYS if k in rec],
                                ensure_ascii=False)


def public_uniform(key: str) -> float:
  """A public, seed-free number in [0, 1): the SHA-256 of `key`."""
  digest = hashlib.sha256(('dpjax-heldout:' + key).encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0**64


def split_heldout(
    data: formats.LoadedData,
    fraction: float) -> tuple[formats.LoadedData, formats.LoadedData]:
  """(train, held-out): record i is held out iff its key maps below fraction.

  The rule is public and the same in every run; with a user field every
  user is entirely on one side.
  """
  held = [public_uniform(heldout_key(data, i)) < fraction
          for i in range(len(data))]
  return (subset(data, [i for i, h in enumerate(held) if not h]),
          subset(data, [i for i, h in enumerate(held) if h]))


def user_index(users: Sequence[str]) -> tuple[np.ndarray, ...]:
  """Each user's record indices (int64), users in order of first record."""
  by_user: dict[str, list[int]] = {}
  for i, u in enumerate(users):
    by_user.setdefault(u, []).append(i)
  return tuple(np.asarray(v, np.int64) for v in by_user.values())


def shared_users(a: formats.LoadedData, b: formats.LoadedData) -> int:
  """How many user ids appear in both (0 without user ids)."""
  if a.users is None or b.users is None:
    return 0
  return len(set(a.users) & set(b.users))


def _where(data: formats.LoadedData, i: int) -> str:
  return data.locations[i] if data.locations else f'{data.source} record {i}'


def _encode_text(data, tokenizer, seq_len) -> Encoded:
  ids = [tokenizer.encode(r['text']) for r in data.records]
  arrays = packing.pad_causal_lm(ids, seq_len, eos_id=tokenizer.eos_id,
                                 pad_id=tokenizer.pad_id)
  return Encoded(arrays, sum(len(x) > seq_len for x in ids))


def _encode_instruction(data, tokenizer, seq_len, template,
                        prompt_field) -> Encoded:
  special = tasks.template_specials(tokenizer)
  pairs, truncated = [], 0
  for i, r in enumerate(data.records):
    p_ids, r_ids = tasks.instruction_ids(
        r['prompt'], r['response'], tokenizer, template=template,
        special=special, add_eos=False)
    # A chat template that ends the answer with the eos token (SmolLM2's
    # '<|im_end|>') gets no second one.
    if tokenizer.eos_id not in r_ids:
      r_ids.append(tokenizer.eos_id)
    if not 1 <= len(p_ids) <= seq_len:
      raise formats.DataFormatError(
          f'{_where(data, i)}: field {prompt_field!r}: the prompt takes '
          f'{len(p_ids)} tokens with the template, leaving no room for the '
          f'response in seq_len = {seq_len} tokens; shorten the prompt or '
          'raise the sequence length')
    truncated += len(p_ids) + len(r_ids) > seq_len + 1
    pairs.append((p_ids, r_ids))
  return Encoded(tasks.layout_instruction(pairs, seq_len, tokenizer.pad_id),
                 truncated)


class _Precomputed:
  """Token ids computed once, under the tokenizer contract."""

  def __init__(self, ids: dict[str, list[int]], pad_id: int, eos_id: int):
    self._ids, self.pad_id, self.eos_id = ids, pad_id, eos_id

  def encode(self, text: str) -> list[int]:
    return self._ids[text]


def _encode_classification(data, tokenizer, seq_len) -> Encoded:
  plain, cls_id, sep_id = tokenizers.classification_tokens(tokenizer)
  texts = [r['text_a'] for r in data.records]
  ids = {t: list(plain.encode(t)) for t in texts}
  room = seq_len - (cls_id is not None) - 1
  arrays = tasks.encode_classification(
      texts, [r['label'] for r in data.records],
      _Precomputed(ids, plain.pad_id, plain.eos_id), seq_len, cls_id=cls_id,
      sep_id=sep_id)
  return Encoded(arrays, sum(len(ids[t]) > room for t in texts))


def encode(data: formats.LoadedData, tokenizer: Any, seq_len: int, *,
           template: tasks.Template = None,
           prompt_field: str = 'prompt') -> Encoded:
  """Tokenizes one record per row, by `data.kind`.

  'text': `packing.pad_causal_lm` (one record per row, eos appended, cut to
  `seq_len + 1` tokens). 'instruction': the template (default: the
  tokenizer's `chat_template` if it has one, else `tasks.DEFAULT_TEMPLATE`),
  the loss on the response tokens (and the eos) only, the end of a long
  response cut. 'classification': `tasks.encode_classification` with a
  Hugging Face tokenizer's [CLS]/[SEP] (`tokenizers.classification_tokens`).

  Args:
    data: records from `read`.
    tokenizer: the dpjax tokenizer contract.
    seq_len: T.
    template: overrides the instruction template (see `tasks.apply_template`).
    prompt_field: the prompt's field name, for error messages.

  Returns:
    The dataset dict and the number of records truncated to fit.

  Raises:
    DataFormatError: an instruction prompt leaves no room for its response
      (naming file:line and the field).
  """
  if data.kind == 'text':
    return _encode_text(data, tokenizer, seq_len)
  if data.kind == 'instruction':
    if template is None:
      template = getattr(tokenizer, 'chat_template', None)
    return _encode_instruction(data, tokenizer, seq_len, template,
                               prompt_field)
  if data.kind == 'classification':
    return _encode_classification(data, tokenizer, seq_len)
  raise ValueError(f'data.kind={data.kind!r}: expected one of {formats.KINDS}')
