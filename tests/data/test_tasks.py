"""Tests for dpjax.data.tasks: instruction and classification encoders."""

from __future__ import annotations

import numpy as np
import pytest

from dpjax.data import tasks
from dpjax.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
P, E = TOK.pad_id, TOK.eos_id  # 256, 257

CHATML = ('{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}'
          '<|im_end|>\n{% endfor %}'
          '{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}')


def test_instruction_weights_only_on_the_response():
  ds = tasks.encode_instruction([('ab', 'c')], TOK, 6, template='{prompt}>')
  # row: a b > | c eos
  np.testing.assert_array_equal(ds['inputs'], [[97, 98, 62, 99, P, P]])
  np.testing.assert_array_equal(ds['targets'], [[98, 62, 99, E, P, P]])
  np.testing.assert_array_equal(ds['weights'], [[0, 0, 1, 1, 0, 0]])
  assert ds['inputs'].dtype == np.int32 and ds['weights'].dtype == np.float32


def test_instruction_truncates_the_response_end():
  ds = tasks.encode_instruction([{'prompt': 'ab', 'response': 'cdef'}], TOK, 4,
                                template='{prompt}')
  np.testing.assert_array_equal(ds['inputs'], [[97, 98, 99, 100]])
  np.testing.assert_array_equal(ds['targets'], [[98, 99, 100, 101]])
  np.testing.assert_array_equal(ds['weights'], [[0, 1, 1, 1]])
  with pytest.raises(ValueError, match=r'examples\[0\].*prompt has 5 tokens'):
    tasks.encode_instruction([('abcde', 'x')], TOK, 4, template='{prompt}')


def test_default_template_and_callable():
  p, r = tasks.apply_template(None, 'Sum 2+2.', '4')
  assert (p, r) == ('### Instruction:\nSum 2+2.\n\n### Response:\n', '4')
  ds = tasks.encode_instruction([('Sum 2+2.', '4')], TOK, 64)
  assert ds['weights'].sum() == 2  # '4' and eos
  n_prompt = len(p.encode())
  assert ds['targets'][0, n_prompt - 1] == ord('4')
  assert ds['weights'][0, n_prompt - 1] == 1
  assert ds['weights'][0, n_prompt - 2] == 0
  assert tasks.apply_template(lambda q: f'Q: {q}\nA: ', 'hi', 'yo') == (
      'Q: hi\nA: ', 'yo')


def test_jinja_chat_template():
  p, r = tasks.apply_template(CHATML, 'hi', 'yo')
  assert p == '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n'
  assert r == 'yo<|im_end|>\n'
  ds = tasks.encode_instruction([('hi', 'yo')], TOK, 128, template=CHATML)
  assert ds['weights'].sum() == len(r) + 1


def test_bad_templates():
  with pytest.raises(ValueError, match='prompt'):
    tasks.apply_template('no field', 'a', 'b')
  with pytest.raises(ValueError, match=r'examples\[0\]'):
    tasks.encode_instruction([(1, 'b')], TOK, 8)
  with pytest.raises(ValueError, match='empty'):
    tasks.encode_instruction([], TOK, 8)


def test_single_sentence_classification():
  ds = tasks.encode_classification(['ab', 'c'], [1, 0], TOK, 4)
  assert set(ds) == {'inputs', 'attention_mask', 'label'}
  np.testing.assert_array_equal(ds['inputs'], [[97, 98, E, P], [99, E, P, P]])
  np.testing.assert_array_equal(ds['attention_mask'],
                                [[1, 1, 1, 0], [1, 1, 0, 0]])
  np.testing.assert_array_equal(ds['label'], [1, 0])
  assert ds['label'].dtype == np.int32 and ds['inputs'].dtype == np.int32
  # Truncation keeps room for the separator.
  ds = tasks.encode_classification(['abcdef'], [0], TOK, 4, cls_id=1)
  np.testing.assert_array_equal(ds['inputs'], [[1, 97, 98, E]])


def test_pair_classification_longest_first_truncation():
  ds = tasks.encode_classification([('ab', 'xyz')], [2], TOK, 6, cls_id=1,
                                   sep_id=2)
  # budget 3: b -> 'xy', then a -> 'a'.  [cls] a [sep] x y [sep]
  np.testing.assert_array_equal(ds['inputs'], [[1, 97, 2, 120, 121, 2]])
  np.testing.assert_array_equal(ds['token_type_ids'], [[0, 0, 0, 1, 1, 1]])
  np.testing.assert_array_equal(ds['attention_mask'], [[1] * 6])
  ds = tasks.encode_classification([('a', 'b')], [0], TOK, 6)
  np.testing.assert_array_equal(ds['inputs'], [[97, E, 98, E, P, P]])
  np.testing.assert_array_equal(ds['token_type_ids'], [[0, 0, 1, 1, 0, 0]])


def test_classification_errors():
  with pytest.raises(ValueError, match='labels must be integers'):
    tasks.encode_classification(['a'], ['pos'], TOK, 4)
  with pytest.raises(ValueError, match='labels has 2'):
    tasks.encode_classification(['a'], [0, 1], TOK, 4)
  with pytest.raises(ValueError, match='mixes'):
    tasks.encode_classification(['a', ('b', 'c')], [0, 1], TOK, 8)
  with pytest.raises(ValueError, match='seq_len'):
    tasks.encode_classification([('a', 'b')], [0], TOK, 2)


def test_encode_records_dispatches_on_kind(tmp_path):
  from dpjax.data import formats  # pylint: disable=import-outside-toplevel
  lm = formats.LoadedData('text', [{'text': 'ab'}, {'text': 'c'}], None, 'x')
  ds = tasks.encode_records(lm, TOK, 4, pack=True)
  np.testing.assert_array_equal(ds['inputs'], [[97, 98, E, 99]])
  ds = tasks.encode_records(lm, TOK, 4, pack=False)
  np.testing.assert_array_equal(ds['weights'], [[1, 1, 0, 0], [1, 0, 0, 0]])
  ins = formats.LoadedData('instruction', [{'prompt': 'a', 'response': 'b'}],
                           None, 'x')
  ds = tasks.encode_records(ins, TOK, 4, template='{prompt}')
  np.testing.assert_array_equal(ds['weights'], [[1, 1, 0, 0]])
  p = tmp_path / 'q.tsv'
  p.write_text('question\tsentence\tlabel\nx\ty\tnot_entailment\n')
  ds = tasks.encode_records(formats.load_path(p), TOK, 6)
  np.testing.assert_array_equal(ds['inputs'], [[120, E, 121, E, P, P]])
  np.testing.assert_array_equal(ds['label'], [1])
