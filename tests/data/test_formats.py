"""Tests for dpjax.data.formats on small hand-written files."""

from __future__ import annotations

import pytest

from dpjax.data import formats


def _write(tmp_path, name, text):
  p = tmp_path / name
  p.write_text(text, encoding='utf-8')
  return p


def test_sst2_tsv_with_unbalanced_quote(tmp_path):
  p = _write(tmp_path, 'train.tsv',
             'sentence\tlabel\nit \'s a charming journey \t1\nbad " movie\t0\n')
  d = formats.load_table(p)
  assert d.kind == 'classification' and len(d) == 2
  assert d.records == [{'text_a': "it 's a charming journey ", 'label': 1},
                       {'text_a': 'bad " movie', 'label': 0}]


def test_qnli_qqp_mnli_layouts(tmp_path):
  qnli = _write(tmp_path, 'qnli.tsv',
                'index\tquestion\tsentence\tlabel\n'
                '0\tWho?\tHe did.\tentailment\n'
                '1\tWhen?\tBlue.\tnot_entailment\n')
  d = formats.load_table(qnli)
  assert [r['label'] for r in d.records] == [0, 1]
  assert d.records[0] == {'text_a': 'Who?', 'text_b': 'He did.', 'label': 0}
  assert d.label_names == ('entailment', 'not_entailment')

  qqp = _write(tmp_path, 'qqp.tsv',
               'id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n'
               '7\t1\t2\tHow old?\tWhat age?\t1\n')
  assert formats.load_table(qqp).records == [
      {'text_a': 'How old?', 'text_b': 'What age?', 'label': 1}]

  mnli = _write(tmp_path, 'dev_matched.tsv',
                'index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n'
                '0\tfiction\tA man sleeps.\tA man is awake.\tcontradiction\t'
                'contradiction\n'
                '1\tfiction\tIt rains.\tIt is wet.\tentailment\tentailment\n'
                '2\tfiction\tShe sings.\tShe is famous.\tneutral\tneutral\n')
  d = formats.load_table(mnli)
  assert [r['label'] for r in d.records] == [2, 0, 1]
  assert formats.detect_layout(['sentence1', 'sentence2', 'label']) == 'mnli'

  csv_file = _write(tmp_path, 'mnli.csv',
                    'sentence1,sentence2,label\n"A, b.",C.,2\n')
  assert formats.load_table(csv_file).records == [
      {'text_a': 'A, b.', 'text_b': 'C.', 'label': 2}]


def test_table_errors_name_file_line_and_field(tmp_path):
  p = _write(tmp_path, 'bad.tsv', 'sentence\tlabel\nok\t1\ntoo\tmany\tcols\n')
  with pytest.raises(formats.DataFormatError, match=r'bad\.tsv:3: 3 columns'):
    formats.load_table(p)
  p = _write(tmp_path, 'bad2.tsv',
             'sentence1\tsentence2\tgold_label\n'
             'a\tb\tentailment\nc\td\tmaybe\n')
  with pytest.raises(formats.DataFormatError,
                     match=r"bad2\.tsv:3: field 'gold_label': label 'maybe'"):
    formats.load_table(p)
  p = _write(tmp_path, 'bad3.csv', 'sentence,label\n,1\n')
  with pytest.raises(formats.DataFormatError,
                     match=r"bad3\.csv:2: field 'sentence': is empty"):
    formats.load_table(p)
  p = _write(tmp_path, 'bad4.csv', 'foo,bar\n1,2\n')
  with pytest.raises(formats.DataFormatError,
                     match=r'bad4\.csv:1: unknown table layout'):
    formats.load_table(p)
  p = _write(tmp_path, 'header_only.tsv', 'sentence\tlabel\n')
  with pytest.raises(formats.DataFormatError, match='empty dataset'):
    formats.load_table(p)


def test_label_map_for_string_labels(tmp_path):
  p = _write(tmp_path, 'sent.csv', 'sentence,label\ngood,pos\nbad,neg\n')
  with pytest.raises(formats.DataFormatError, match='label_map'):
    formats.load_table(p)
  d = formats.load_table(p, label_map={'neg': 0, 'pos': 1})
  assert [r['label'] for r in d.records] == [1, 0]
  assert d.label_names == ('neg', 'pos')


def test_jsonl_kinds(tmp_path):
  p = _write(tmp_path, 'lm.jsonl', '{"text": "a"}\n\n{"text": "b"}\n')
  d = formats.load_jsonl(p)
  assert (d.kind, d.records) == ('text', [{'text': 'a'}, {'text': 'b'}])
  p = _write(tmp_path, 'ins.jsonl',
             '{"prompt": "q", "response": "r", "id": 3}\n')
  assert formats.load_jsonl(p).records == [{'prompt': 'q', 'response': 'r'}]
  p = _write(tmp_path, 'cls.jsonl', '{"sentence": "s", "label": 1}\n'
             '{"sentence": "t", "label": "0"}\n')
  d = formats.load_jsonl(p)
  assert d.kind == 'classification'
  assert d.records == [{'text_a': 's', 'label': 1}, {'text_a': 't', 'label': 0}]

  p = _write(tmp_path, 'tl.jsonl', '{"text": "s", "label": "pos"}\n')
  d = formats.load_jsonl(p, label_map={'neg': 0, 'pos': 1})
  assert d.records == [{'text_a': 's', 'label': 1}]
  assert d.label_names == ('neg', 'pos')

def test_jsonl_errors(tmp_path):
  p = _write(tmp_path, 'a.jsonl',
             '{"text": "a"}\n{"text": "b"}\n{"text": oops}\n')
  with pytest.raises(formats.DataFormatError,
                     match=r'a\.jsonl:3: invalid JSON'):
    formats.load_jsonl(p)
  p = _write(tmp_path, 'b.jsonl',
             '{"prompt": "q", "response": "r"}\n{"prompt": "q"}\n')
  with pytest.raises(formats.DataFormatError,
                     match=r"b\.jsonl:2: field 'response': missing"):
    formats.load_jsonl(p)
  p = _write(tmp_path, 'c.jsonl', '{"sentence": "s", "label": 1.5}\n')
  with pytest.raises(formats.DataFormatError,
                     match=r"c\.jsonl:1: field 'label'"):
    formats.load_jsonl(p)
  p = _write(tmp_path, 'd.jsonl', '[1, 2]\n')
  with pytest.raises(formats.DataFormatError,
                     match=r'd\.jsonl:1: expected a JSON object'):
    formats.load_jsonl(p)
  p = _write(tmp_path, 'e.jsonl', '\n\n')
  with pytest.raises(formats.DataFormatError, match='empty dataset'):
    formats.load_jsonl(p)


def test_text_folder_and_dispatch(tmp_path):
  folder = tmp_path / 'docs'
  folder.mkdir()
  (folder / 'b.txt').write_text('second', encoding='utf-8')
  (folder / 'a.txt').write_text('first', encoding='utf-8')
  (folder / 'c.md').write_text('ignored', encoding='utf-8')
  (folder / 'd.txt').write_text('  \n', encoding='utf-8')
  d = formats.load_path(folder)
  assert d.records == [{'text': 'first'}, {'text': 'second'}]
  (folder / 'e.txt').write_bytes(b'\xff\xfe bad')
  with pytest.raises(formats.DataFormatError, match=r'e\.txt: not valid utf-8'):
    formats.load_text_folder(folder)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(formats.DataFormatError, match='empty dataset'):
    formats.load_path(empty)
  with pytest.raises(formats.DataFormatError, match='no such file'):
    formats.load_path(tmp_path / 'missing.jsonl')
  with pytest.raises(formats.DataFormatError, match='unknown format'):
    formats.load_path(_write(tmp_path, 'x.parquet', ''))


def test_check_dataset_size():
  assert formats.check_dataset_size(100, 25) == 0.25
  assert formats.check_dataset_size(10, 10) == 1.0
  with pytest.raises(ValueError, match='empty'):
    formats.check_dataset_size(0, 4)
  with pytest.raises(
      ValueError,
      match=r'data\.batch_size=256 is larger than the dataset \(100'):
    formats.check_dataset_size(100, 256)
  with pytest.raises(ValueError, match=r'train\.batch=0'):
    formats.check_dataset_size(100, 0, field='train.batch')
