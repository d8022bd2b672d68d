"""Model loader failures: one `ValueError` naming the file and the problem.

Tiny checkpoints only (one layer, 32 wide), written with dpjax's own savers.
Each test damages one thing and checks that the message names the file and
says what is wrong; the last ones check that `python -m dpjax.main` reports
it in one stderr line with exit code 2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from safetensors import numpy as safetensors_np

from dpjax.models import checks
from dpjax.models import gguf_io
from dpjax.models import hf_io
from dpjax.models import llama
from dpjax.models.tokenizer import HFTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1,
            num_heads=4, num_kv_heads=2, max_position_embeddings=64)
_CORRUPT = 'may be truncated or corrupt'


def _params(config, bad=None):
  """Random params of `config`; `bad` (a float) is put into one kernel."""
  module, _ = llama.build(**{k: getattr(config, k)
                             for k in config.__dataclass_fields__})
  params = module.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
  params = jax.tree.map(np.array, params['params'])
  if bad is not None:
    kernel = params['layers_0']['mlp']['up_proj']['kernel']
    kernel[1, 2] = kernel[3, 4] = bad
  return params


def _tokenizer():
  vocab = {'<|endoftext|>': 0, 'a': 1, 'b': 2}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab,
                                                         unk_token='a'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  return HFTokenizer(tok)


def _hf_folder(path, bad=None, tokenizer=False):
  config = llama.LlamaConfig(**TINY)
  hf_io.save_hf_folder(str(path), 'llama', config, _params(config, bad),
                       _tokenizer() if tokenizer else None)
  return path


def _gguf_file(path, bad=None):
  config = llama.LlamaConfig(**TINY)
  gguf_io.save_gguf(str(path), 'llama', config, _params(config, bad),
                    dtype='float32')
  return path


def _edit_config(folder, **changes):
  path = folder / 'config.json'
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))
  return path


def _raises(fn, *parts):
  """Runs `fn`, expecting a ValueError whose message has `parts` in order."""
  pattern = '.*'.join(re.escape(str(p)) for p in parts)
  with pytest.raises(ValueError, match=pattern) as e:
    fn()
  assert '\n' not in str(e.value)
  return str(e.value)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """A valid tiny Llama folder with a tokenizer (copied per test)."""
  return _hf_folder(tmp_path_factory.mktemp('hf'), tokenizer=True)


@pytest.fixture
def hf(folder, tmp_path):
  out = tmp_path / 'model'
  out.mkdir()
  for name in os.listdir(folder):
    (out / name).write_bytes((folder / name).read_bytes())
  return out


@pytest.fixture(scope='module')
def gguf_bytes(tmp_path_factory):
  return _gguf_file(tmp_path_factory.mktemp('gguf') / 'm.gguf').read_bytes()


# ---------------------------------------------------------------------------
# Hugging Face folders.


def test_valid_folder_loads(hf):
  family, _, _, tok = hf_io.load_hf_folder(str(hf))
  assert family == 'llama' and tok is not None


def test_missing_config_json(hf):
  (hf / 'config.json').unlink()
  _raises(lambda: hf_io.load_hf_folder(str(hf)), hf / 'config.json',
          'no such file')


@pytest.mark.parametrize('name', ['config.json', 'tokenizer_config.json',
                                  'model.safetensors.index.json'])
def test_bad_json(hf, name):
  (hf / name).write_text('{\n  "model_type": "llama",\n  oops\n}\n')
  _raises(lambda: hf_io.load_hf_folder(str(hf)), hf / name,
          'not valid JSON', 'line 3 column 3')


def test_json_that_is_not_an_object(hf):
  (hf / 'config.json').write_text('["llama"]')
  _raises(lambda: hf_io.load_hf_folder(str(hf)), hf / 'config.json',
          'expected a JSON object')


def test_unsupported_model_type(hf):
  path = _edit_config(hf, model_type='mistral')
  msg = _raises(lambda: hf_io.load_hf_folder(str(hf)), path,
                "model_type 'mistral' is not supported",
                'llama, qwen2, bitnet, bert, roberta, gpt2')
  assert 'model.family' not in msg


def test_unsupported_architectures_head(hf):
  path = _edit_config(hf, architectures=['LlamaForSequenceClassification'])
  _raises(lambda: hf_io.load_hf_folder(str(hf)), path,
          "['LlamaForSequenceClassification'] is not supported",
          'LlamaForCausalLM')


def test_encoder_question_answering_head_is_refused(tmp_path):
  path = tmp_path / 'config.json'
  path.write_text(json.dumps({'model_type': 'bert',
                              'architectures': ['BertForQuestionAnswering']}))
  _raises(lambda: hf_io.load_hf_folder(str(tmp_path)), path,
          'BertForQuestionAnswering', 'not supported',
          'BertForSequenceClassification')


@pytest.mark.parametrize('family,archs', [
    ('llama', ['LlamaForCausalLM']), ('llama', ['LlamaModel']),
    ('qwen2', ['Qwen2ForCausalLM']), ('gpt2', ['GPT2LMHeadModel']),
    ('bitnet', ['BitNetForCausalLM']), ('bert', ['BertModel']),
    ('bert', ['BertForMaskedLM']), ('bert', ['BertForPreTraining']),
    ('roberta', ['RobertaForSequenceClassification']), ('llama', None)])
def test_loadable_architectures_pass(family, archs):
  # pylint: disable-next=protected-access
  hf_io._check_architectures('config.json', family, archs)


def test_config_field_error_names_the_file(hf):
  path = _edit_config(hf, hidden_act='gelu')
  _raises(lambda: hf_io.load_hf_folder(str(hf)), path, 'hidden_act')


@pytest.mark.parametrize('damage', ['random', 'truncated'])
def test_corrupt_safetensors(hf, damage):
  path = hf / 'model.safetensors'
  data = path.read_bytes()
  path.write_bytes(np.random.default_rng(0).bytes(len(data))
                   if damage == 'random' else data[:len(data) // 2])
  _raises(lambda: hf_io.load_hf_folder(str(hf)), path,
          'not a readable safetensors file', _CORRUPT)


def test_index_names_an_absent_shard(hf):
  tensors = safetensors_np.load_file(hf / 'model.safetensors')
  shard = 'model-00002-of-00002.safetensors'
  weight_map = {k: 'model.safetensors' for k in tensors}
  weight_map['lm_head.weight'] = shard
  index = hf / 'model.safetensors.index.json'
  index.write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
  _raises(lambda: hf_io.load_hf_folder(str(hf)), index, 'absent', shard)


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_hf_weights(tmp_path, bad):
  folder = _hf_folder(tmp_path, bad=bad)
  msg = _raises(lambda: hf_io.load_hf_folder(str(folder)),
                folder / 'model.safetensors', 'NaN or inf',
                'model.layers.0.mlp.up_proj.weight (2 of 2048)')
  assert 'q_proj' not in msg


def test_corrupt_tokenizer_json(hf):
  path = hf / 'tokenizer.json'
  path.write_text(path.read_text()[:200])
  _raises(lambda: hf_io.load_hf_folder(str(hf)), path,
          'not a readable tokenizers file', _CORRUPT)


def test_tokenizer_config_naming_absent_eos_id(hf):
  (hf / 'tokenizer_config.json').write_text('{"eos_token": "<none>"}')
  _edit_config(hf, eos_token_id=999)
  _raises(lambda: hf_io.load_hf_folder(str(hf)),
          hf / 'tokenizer_config.json', 'eos_token', '999')


# ---------------------------------------------------------------------------
# GGUF files.


def test_valid_gguf_loads(gguf_bytes, tmp_path):
  path = tmp_path / 'm.gguf'
  path.write_bytes(gguf_bytes)
  assert gguf_io.load_gguf(str(path))[0] == 'llama'


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_gguf_weights(tmp_path, bad):
  path = _gguf_file(tmp_path / 'm.gguf', bad=bad)
  _raises(lambda: gguf_io.load_gguf(str(path)), path, 'NaN or inf',
          'model.layers.0.mlp.up_proj.weight (2 of 2048)')


@pytest.mark.parametrize('keep', [0.5, 0.9, 30, 8])
def test_truncated_gguf(gguf_bytes, tmp_path, keep):
  path = tmp_path / 'm.gguf'
  n = keep if isinstance(keep, int) else int(len(gguf_bytes) * keep)
  path.write_bytes(gguf_bytes[:n])
  _raises(lambda: gguf_io.load_gguf(str(path)), path,
          'not a readable GGUF file', _CORRUPT)


def test_random_bytes_gguf(tmp_path):
  path = tmp_path / 'm.gguf'
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  _raises(lambda: gguf_io.load_gguf(str(path)), path,
          'not a readable GGUF file', _CORRUPT)


def test_tensor_that_fails_to_dequantize(gguf_bytes, tmp_path, monkeypatch):
  path = tmp_path / 'm.gguf'
  path.write_bytes(gguf_bytes)

  def broken(data, qtype):
    raise IndexError(f'bad block of {qtype!r} ({data.size})')

  monkeypatch.setattr(gguf.quants, 'dequantize', broken)
  _raises(lambda: gguf_io.load_gguf(str(path)), path,
          'not a readable GGUF file (tensor ', 'IndexError', _CORRUPT)


def test_unsupported_gguf_architecture(tmp_path):
  path = tmp_path / 'm.gguf'
  writer = gguf.GGUFWriter(str(path), 'mamba')
  writer.add_tensor('token_embd.weight', np.zeros((4, 8), np.float32))
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  _raises(lambda: gguf_io.load_gguf(str(path)), path,
          "architecture='mamba' is not supported", 'llama, qwen2')


def test_check_finite_names_at_most_five():
  tensors = {f't{i}': np.array([np.nan, 1.0, -np.inf], np.float32)
             for i in range(7)}
  tensors['ids'] = np.arange(3)
  msg = _raises(lambda: checks.check_finite(tensors, 'f.bin'), 'f.bin',
                '7 tensor(s)', 't0 (2 of 3)', 't4 (2 of 3)', 'and 2 more')
  assert 't5' not in msg
  checks.check_finite({'ok': np.ones(3, np.float32), 'ids': np.arange(2)},
                      'f.bin')


# ---------------------------------------------------------------------------
# Through the command line.


@pytest.mark.parametrize('init', ['hf', 'gguf'])
def test_command_line_reports_one_line(hf, tmp_path, init):
  if init == 'hf':
    path = hf / 'model.safetensors'
    path.write_bytes(path.read_bytes()[:100])
    model_path = hf
  else:
    path = model_path = tmp_path / 'm.gguf'
    path.write_bytes(b'GGUF' + bytes(40))
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run(
      [sys.executable, '-m', 'dpjax.main',
       '--config=' + os.path.join(ROOT, 'configs', 'default.py'),
       f'--workdir={tmp_path / "work"}', f'--config.model.init={init}',
       f'--config.model.path={model_path}'],
      capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  lines = proc.stderr.splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr
  assert lines[0].startswith('dpjax: invalid configuration: '
                             'config.model.path: ' + str(path) + ': ')
  assert _CORRUPT in lines[0] and '; valid: ' in lines[0]
  assert not os.path.exists(tmp_path / 'work')
