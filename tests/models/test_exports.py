"""Exports ready for local deployment: GGUF dtypes, general.* keys, chat
template, RoPE scaling and file permissions (dpjax.models.gguf_io, hf_io)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.models import gguf_io
from dpjax.models import hf_io
from dpjax.models import llama
from dpjax.models import rope
from tests.models.test_gguf_io import _tiny_tokenizer

# Rows of 64 and 128: every matrix is Q8_0-quantizable (blocks of 32).
SHAPE = dict(vocab_size=64, hidden_size=64, intermediate_size=128,
             num_layers=2, num_heads=4, num_kv_heads=2, rope_theta=10000.0,
             rms_norm_eps=1e-5, max_position_embeddings=256)
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _model(family='llama', **fields):
  config = llama.LlamaConfig(family=family, **dict(SHAPE, **fields))
  module, _ = llama.build(**dataclasses.asdict(config))
  params = module.init(jax.random.key(0),
                       jnp.zeros((1, 4), jnp.int32))['params']
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * jax.random.normal(jax.random.key(len(str(p))),
                                               x.shape), params)
  return module, config, params


def _tokenizer():
  tok = _tiny_tokenizer()
  return type(tok)(tok.tokenizer, eos_token='<|im_end|>',
                   chat_template=TEMPLATE)


def _logits(module, params, tokens):
  return np.asarray(jax.jit(module.apply)({'params': params}, tokens))


def _tokens(t=40):
  return jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, t)))


def test_each_dtype_round_trips_through_the_reader(tmp_path):
  module, config, params = _model()
  want = _logits(module, params, _tokens())
  sizes, errors = {}, {}
  for dtype in gguf_io.DTYPES:
    path = str(tmp_path / f'{dtype}.gguf')
    gguf_io.save_gguf(path, 'llama', config, params, _tokenizer(),
                      dtype=dtype)
    sizes[dtype] = os.path.getsize(path)
    reader = gguf.GGUFReader(path)
    types = {gguf.GGMLQuantizationType(t.tensor_type).name
             for t in reader.tensors if len(t.shape) > 1}
    assert types == {'f32': {'F32'}, 'f16': {'F16'}, 'q8_0': {'Q8_0'}}[dtype]
    family, config2, params2, _ = gguf_io.load_gguf(path)
    assert (family, config2) == ('llama', config)
    got = jax.tree.leaves(params2)
    ref = jax.tree.leaves(params)
    errors[dtype] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                        for a, b in zip(got, ref))
    gap = np.max(np.abs(_logits(module, params2, _tokens()) - want))
    gap /= np.max(np.abs(want))
    assert gap < {'f32': 1e-7, 'f16': 5e-3, 'q8_0': 5e-2}[dtype], (dtype, gap)
  assert errors['f32'] == 0.0
  # float16: relative rounding 2^-11 of |w| <= ~0.5; q8_0: half a step of a
  # block scale amax/127.
  assert 0 < errors['f16'] < 5e-4 < errors['q8_0'] < 0.6 / 127
  assert sizes['f32'] > 1.8 * sizes['f16'] > 1.8 * 1.7 * sizes['q8_0'] / 1.8
  with pytest.raises(ValueError, match=r"dtype must be one of \['f32', 'f16', "
                     r"'q8_0'\], got 'q4_0'"):
    gguf_io.save_gguf(str(tmp_path / 'x.gguf'), 'llama', config, params,
                      dtype='q4_0')


def test_general_keys_and_chat_template_reach_both_exports(tmp_path):
  module, config, params = _model()
  del module
  tok = _tokenizer()
  path = str(tmp_path / 'm.gguf')
  gguf_io.save_gguf(path, 'llama', config, params, tok, dtype='f16',
                    name='Tiny DP fine-tune',
                    general={'basename': 'tiny', 'finetune': 'dp',
                             'base_model': 'tiny-base', 'license': 'mit',
                             'description': 'a test', 'tags': ['dpjax']})
  reader = gguf.GGUFReader(path)
  field = lambda k: reader.get_field(k).contents()  # noqa: E731
  assert field('general.name') == 'Tiny DP fine-tune'
  assert field('general.type') == 'model'
  assert field('general.basename') == 'tiny'
  assert field('general.finetune') == 'dp'
  assert field('general.license') == 'mit'
  assert field('general.base_model.count') == 1
  assert field('general.base_model.0.name') == 'tiny-base'
  assert field('general.tags') == ['dpjax']
  assert field('general.quantization_version') == gguf.GGML_QUANT_VERSION
  assert field('general.file_type') == gguf.LlamaFileType.MOSTLY_F16
  assert field('general.size_label').endswith('K')
  assert field('tokenizer.chat_template') == TEMPLATE
  assert gguf_io.load_gguf(path)[3].chat_template == TEMPLATE
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['author'\]"):
    gguf_io.save_gguf(path, 'llama', config, params, general={'author': 'x'})

  folder = str(tmp_path / 'hf')
  hf_io.save_hf_folder(folder, 'llama', config, params, tok)
  with open(os.path.join(folder, 'tokenizer_config.json')) as f:
    assert json.load(f)['chat_template'] == TEMPLATE
  assert hf_io.load_hf_folder(folder)[3].chat_template == TEMPLATE
  transformers = pytest.importorskip('transformers')
  hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
  text = hf_tok.apply_chat_template([{'role': 'user', 'content': 'to be'}],
                                    tokenize=False, add_generation_prompt=True)
  assert text == '<|im_start|>user\nto be<|im_end|>\n<|im_start|>assistant\n'


def test_chat_template_jinja_file_is_read(tmp_path):
  _, config, params = _model()
  hf_io.save_hf_folder(str(tmp_path), 'llama', config, params, _tiny_tokenizer())
  assert hf_io.load_hf_folder(str(tmp_path))[3].chat_template is None
  (tmp_path / 'chat_template.jinja').write_text(TEMPLATE)
  assert hf_io.load_hf_folder(str(tmp_path))[3].chat_template == TEMPLATE


def test_exported_files_are_readable_by_others(tmp_path):
  _, config, params = _model()
  old = os.umask(0o022)
  try:
    hf_io.save_hf_folder(str(tmp_path / 'hf'), 'llama', config, params,
                         _tokenizer())
    gguf_io.save_gguf(str(tmp_path / 'm.gguf'), 'llama', config, params)
  finally:
    os.umask(old)
  files = [tmp_path / 'm.gguf'] + sorted((tmp_path / 'hf').iterdir())
  assert any(f.name == 'model.safetensors' for f in files)
  for f in files:
    assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


@pytest.mark.parametrize('scaling', [
    rope.RopeScaling('linear', factor=4.0),
    rope.RopeScaling('llama3', factor=8.0, low_freq_factor=1.0,
                     high_freq_factor=4.0,
                     original_max_position_embeddings=64)])
def test_scaled_rope_survives_the_gguf_round_trip(tmp_path, scaling):
  module, config, params = _model(rope_scaling=scaling)
  path = str(tmp_path / 'm.gguf')
  gguf_io.save_gguf(path, 'llama', config, params, dtype='f32')
  reader = gguf.GGUFReader(path)
  names = {t.name for t in reader.tensors}
  assert ('rope_freqs.weight' in names) == (scaling.rope_type == 'llama3')
  _, config2, params2, _ = gguf_io.load_gguf(path)
  assert config2.rope_scaling is not None
  module2, _ = llama.build(**dataclasses.asdict(config2))
  tokens = _tokens(200)
  want = _logits(module, params, tokens)
  np.testing.assert_allclose(_logits(module2, params2, tokens), want,
                             atol=1e-5, rtol=1e-5)
  # Power: the same weights with plain RoPE are far off.
  plain, _ = llama.build(**dict(dataclasses.asdict(config), rope_scaling=None))
  assert np.max(np.abs(_logits(plain, params, tokens) - want)) > 1e-2
  # And the re-read config exports to transformers (as LongRoPE for llama3).
  folder = str(tmp_path / 'hf')
  hf_io.save_hf_folder(folder, 'llama', config2, params2)
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, attn_implementation='eager').eval()
  with torch.no_grad():
    hf = model(torch.tensor(np.asarray(tokens))).logits.numpy()
  np.testing.assert_allclose(hf, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('family,scaling', [
    ('llama', rope.RopeScaling('yarn', factor=4.0,
                               original_max_position_embeddings=64,
                               max_position_embeddings=256)),
    ('llama', rope.RopeScaling('dynamic', factor=2.0,
                               original_max_position_embeddings=256)),
    ('qwen2', rope.RopeScaling('llama3', factor=8.0, low_freq_factor=1.0,
                               high_freq_factor=4.0,
                               original_max_position_embeddings=64))])
def test_rope_gguf_cannot_carry_is_refused(tmp_path, family, scaling):
  _, config, params = _model(family, rope_scaling=scaling)
  path = tmp_path / 'm.gguf'
  with pytest.raises(ValueError, match=f'GGUF cannot carry this model\'s '
                     f'{scaling.rope_type!r} RoPE'):
    gguf_io.save_gguf(str(path), family, config, params)
  assert not path.exists()


def test_gguf_rope_metadata_dpjax_cannot_read_is_refused(tmp_path):
  path = str(tmp_path / 'm.gguf')
  w = gguf.GGUFWriter(path, 'llama')
  w.add_context_length(256)
  w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
  w.add_rope_scaling_factor(4.0)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match=r"m\.gguf: GGUF rope.scaling.type="
                     r"'yarn' is not supported"):
    gguf_io._rope_from_gguf(gguf.GGUFReader(path), 'llama', path, None, 256)
