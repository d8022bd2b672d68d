"""Causal-LM records from token lists: packed chunks or one document per row.

Both functions return the dpjax causal-LM dataset
`{'inputs': [N, T] int32, 'targets': [N, T] int32, 'weights': [N, T] float32}`
with `targets[n, t]` the token that follows `inputs[n, t]` and `weights` 1
exactly where the loss counts (a real target), 0 on padding. The weights, not
the ids, mark padding: `pad_id` may equal `eos_id` (tokenizers without a pad
token), and an eos target still counts.

Privacy unit:
  Each row is one record, the unit of the neighbouring relation (what the
  Poisson sampler includes or leaves out, and whose gradient is clipped).
  `pack_causal_lm` cuts the stream into disjoint chunks, so every token of the
  stream belongs to exactly one record; but one document can span several
  records and one record can hold parts of several documents, so the
  guarantee is per chunk, not per document. `pad_causal_lm` keeps one
  document per record, so its guarantee is per document (as truncated).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check_common(token_lists, seq_len: int):
  if (isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer))
      or seq_len < 1):
    raise ValueError(f'seq_len must be a positive int, got {seq_len!r}')
  if len(token_lists) == 0:
    raise ValueError('token_lists is empty: no documents to build records from')


def _make(rows: list[list[int]], seq_len: int,
          pad_id: int) -> dict[str, np.ndarray]:
  """Rows of length 2..T+1 -> shifted, padded inputs/targets/weights."""
  n = len(rows)
  inputs = np.full((n, seq_len), pad_id, np.int32)
  targets = np.full((n, seq_len), pad_id, np.int32)
  weights = np.zeros((n, seq_len), np.float32)
  for i, row in enumerate(rows):
    m = len(row) - 1
    if m <= 0:
      continue
    inputs[i, :m] = row[:-1]
    targets[i, :m] = row[1:]
    weights[i, :m] = 1.0
  return {'inputs': inputs, 'targets': targets, 'weights': weights}


def pack_causal_lm(
    token_lists: Sequence[Sequence[int]],
    seq_len: int,
    *,
    eos_id: int,
    pad_id: int,
    bos_id: int | None = None,
    drop_remainder: bool = True,
) -> dict[str, np.ndarray]:
  """Concatenates documents and cuts the stream into fixed-length records.

  The stream is `[bos] doc_0 eos [bos] doc_1 eos ...` (bos only if given).
  It is cut into disjoint chunks of `seq_len + 1` tokens (stride `seq_len + 1`,
  so no token is shared between records); chunk c gives
  `inputs = c[:-1]`, `targets = c[1:]`, all weights 1. The last, shorter chunk
  is dropped if `drop_remainder`, else padded with `pad_id` and weighted 0
  after its real targets (a final chunk of a single token has no target and
  is always dropped).

  Args:
    token_lists: the documents, each a sequence of token ids.
    seq_len: T, the model's sequence length.
    eos_id: appended after every document.
    pad_id: fills padded positions (of inputs and targets).
    bos_id: if given, prepended to every document.
    drop_remainder: drop (True) or pad (False) the final partial chunk.

  Returns:
    The causal-LM dataset dict; N = number of chunks.

  Raises:
    ValueError: bad `seq_len`, no documents, or a stream too short for a
      single record (the message gives the counts).
  """
  _check_common(token_lists, seq_len)
  parts = []
  for doc in token_lists:
    if bos_id is not None:
      parts.append(np.array([bos_id], np.int64))
    parts.append(np.asarray(doc, np.int64).reshape(-1))
    parts.append(np.array([eos_id], np.int64))
  stream = np.concatenate(parts)
  chunk = seq_len + 1
  n_full = len(stream) // chunk
  rest = stream[n_full * chunk:]
  keep_rest = not drop_remainder and len(rest) >= 2
  if n_full == 0 and not keep_rest:
    raise ValueError(
        f'pack_causal_lm: the stream of {len(token_lists)} documents has '
        f'{len(stream)} tokens (with eos), fewer than seq_len + 1 = {chunk}; '
        'use a shorter seq_len, more text, or drop_remainder=False')
  full = stream[:n_full * chunk].reshape(n_full, chunk)
  out = _make([rest.tolist()] if keep_rest else [], seq_len, pad_id)
  return {
      'inputs': np.concatenate([full[:, :-1].astype(np.int32),
                                out['inputs']]),
      'targets': np.concatenate([full[:, 1:].astype(np.int32),
                                 out['targets']]),
      'weights': np.concatenate([np.ones((n_full, seq_len), np.float32),
                                 out['weights']]),
  }


def pad_causal_lm(
    token_lists: Sequence[Sequence[int]],
    seq_len: int,
    *,
    eos_id: int,
    pad_id: int,
    bos_id: int | None = None,
    truncate: bool = True,
) -> dict[str, np.ndarray]:
  """One document per record, padded: the non-packed variant.

  Row i is `[bos] doc_i eos`, truncated to `seq_len + 1` tokens if `truncate`,
  shifted into inputs/targets and padded with `pad_id`; weights are 1 on the
  real targets only (so the eos is a target unless truncated away). An empty
  document without bos gives a row with all weights 0: still a record.

  Args:
    token_lists: the documents.
    seq_len: T.
    eos_id: appended to every document.
    pad_id: fills padded positions.
    bos_id: if given, prepended to every document.
    truncate: cut long documents (True) or refuse them (False).

  Returns:
    The causal-LM dataset dict; N = number of documents.

  Raises:
    ValueError: bad arguments, or (with truncate=False) a document longer
      than the row, naming its index.
  """
  _check_common(token_lists, seq_len)
  rows = []
  for i, doc in enumerate(token_lists):
    row = ([int(bos_id)] if bos_id is not None else []) + [int(t) for t in doc]
    row.append(int(eos_id))
    if len(row) > seq_len + 1:
      if not truncate:
        raise ValueError(
            f'token_lists[{i}] has {len(row)} tokens with bos/eos, more than '
            f'seq_len + 1 = {seq_len + 1}; raise seq_len or pass truncate=True')
      row = row[:seq_len + 1]
    rows.append(row)
  return _make(rows, seq_len, pad_id)
