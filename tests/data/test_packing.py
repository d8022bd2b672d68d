"""Tests for dpjax.data.packing and dpjax.data.tokenizers, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dpjax.data import packing
from dpjax.data.tokenizers import ByteTokenizer

EOS, PAD, BOS = 9, 0, 8


def _check(ds, inputs, targets, weights):
  assert set(ds) == {'inputs', 'targets', 'weights'}
  assert ds['inputs'].dtype == np.int32 and ds['targets'].dtype == np.int32
  assert ds['weights'].dtype == np.float32
  np.testing.assert_array_equal(ds['inputs'], np.array(inputs, np.int32))
  np.testing.assert_array_equal(ds['targets'], np.array(targets, np.int32))
  np.testing.assert_array_equal(ds['weights'], np.array(weights, np.float32))


def test_pack_drops_the_remainder():
  # stream: 1 2 3 9 | 4 5 9  (chunks of T+1 = 4)
  ds = packing.pack_causal_lm([[1, 2, 3], [4, 5]], 3, eos_id=EOS, pad_id=PAD)
  _check(ds, [[1, 2, 3]], [[2, 3, 9]], [[1, 1, 1]])


def test_pack_pads_the_remainder():
  ds = packing.pack_causal_lm([[1, 2, 3], [4, 5]], 3, eos_id=EOS, pad_id=PAD,
                              drop_remainder=False)
  _check(ds, [[1, 2, 3], [4, 5, 0]], [[2, 3, 9], [5, 9, 0]],
         [[1, 1, 1], [1, 1, 0]])


def test_pack_chunks_are_disjoint_and_bos_is_inserted():
  # stream: 8 1 2 3 | 9 8 4 5 | 9  -> the lone last token has no target.
  ds = packing.pack_causal_lm([[1, 2, 3], [4, 5]], 3, eos_id=EOS, pad_id=PAD,
                              bos_id=BOS, drop_remainder=False)
  _check(ds, [[8, 1, 2], [9, 8, 4]], [[1, 2, 3], [8, 4, 5]],
         [[1, 1, 1], [1, 1, 1]])


def test_pack_exact_fit_and_long_document():
  # One document of 7 tokens + eos = 8 = 2 chunks of 4 exactly.
  ds = packing.pack_causal_lm([[1, 2, 3, 4, 5, 6, 7]], 3, eos_id=EOS,
                              pad_id=PAD)
  _check(ds, [[1, 2, 3], [5, 6, 7]], [[2, 3, 4], [6, 7, 9]],
         [[1, 1, 1], [1, 1, 1]])


def test_pack_refuses_too_little_text_and_bad_ids():
  with pytest.raises(ValueError, match='fewer than seq_len'):
    packing.pack_causal_lm([[1, 2]], 8, eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match='token_lists is empty'):
    packing.pack_causal_lm([], 8, eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match='seq_len'):
    packing.pack_causal_lm([[1, 2]], 0, eos_id=EOS, pad_id=PAD)


def test_pad_one_document_per_row():
  ds = packing.pad_causal_lm([[1, 2, 3], [4], []], 3, eos_id=EOS, pad_id=PAD)
  _check(ds,
         [[1, 2, 3], [4, 0, 0], [0, 0, 0]],
         [[2, 3, 9], [9, 0, 0], [0, 0, 0]],
         [[1, 1, 1], [1, 0, 0], [0, 0, 0]])


def test_pad_with_bos_truncates_long_documents():
  ds = packing.pad_causal_lm([[1, 2, 3, 4, 5], [6]], 3, eos_id=EOS, pad_id=PAD,
                             bos_id=BOS)
  # rows: 8 1 2 3 (truncated) and 8 6 9
  _check(ds, [[8, 1, 2], [8, 6, 0]], [[1, 2, 3], [6, 9, 0]],
         [[1, 1, 1], [1, 1, 0]])
  with pytest.raises(ValueError, match=r'token_lists\[0\]'):
    packing.pad_causal_lm([[1, 2, 3, 4, 5]], 3, eos_id=EOS, pad_id=PAD,
                          truncate=False)


def test_pad_equal_to_eos_keeps_eos_targets():
  # Tokenizers without a pad token use pad_id == eos_id: weights decide.
  ds = packing.pad_causal_lm([[1], [1, 2, 3]], 3, eos_id=EOS, pad_id=EOS)
  _check(ds, [[1, 9, 9], [1, 2, 3]], [[9, 9, 9], [2, 3, 9]],
         [[1, 0, 0], [1, 1, 1]])


def test_weights_count_exactly_the_real_targets():
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 12, size=20)
  docs = [list(rng.integers(1, 7, size=n)) for n in lengths]
  n_tokens = sum(len(d) + 1 for d in docs)  # with eos
  ds = packing.pad_causal_lm(docs, 16, eos_id=EOS, pad_id=PAD)
  # every document fits: targets are its tokens after the first, plus eos.
  assert ds['weights'].sum() == n_tokens - len(docs)
  packed = packing.pack_causal_lm(docs, 5, eos_id=EOS, pad_id=PAD,
                                  drop_remainder=False)
  chunks = -(-n_tokens // 6)  # chunks of T+1 = 6, the last maybe shorter
  last = n_tokens - 6 * (chunks - 1)
  kept = chunks if last >= 2 else chunks - 1  # a 1-token chunk has no target
  assert packed['inputs'].shape == (kept, 5)
  # each chunk of length L gives L - 1 targets
  assert packed['weights'].sum() == n_tokens - chunks
  # Padding positions hold pad ids and nothing else has weight 0.
  assert np.all(packed['targets'][packed['weights'] == 0] == PAD)


def test_byte_tokenizer():
  tok = ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.eos_id) == (258, 256, 257)
  assert tok.encode('hé!') == [104, 0xC3, 0xA9, 33]
  assert tok.decode([104, 256, 0xC3, 0xA9, 257, 33]) == 'hé!'
  text = 'Full fathom five thy father lies; Ærial ♪'
  assert tok.decode(tok.encode(text)) == text
  assert tok.decode([0xC3]) == '\ufffd'
  with pytest.raises(ValueError, match='258'):
    tok.decode([300])
  with pytest.raises(ValueError, match='str'):
    tok.encode(b'bytes')


def test_tokenizer_and_packing_together():
  tok = ByteTokenizer()
  ds = packing.pack_causal_lm([tok.encode('ab'), tok.encode('c')], 4,
                              eos_id=tok.eos_id, pad_id=tok.pad_id,
                              drop_remainder=False)
  # stream a b eos c eos -> one chunk of 5 tokens.
  _check(ds, [[97, 98, 257, 99]], [[98, 257, 99, 257]], [[1, 1, 1, 1]])
