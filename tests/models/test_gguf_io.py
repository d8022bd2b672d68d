"""Tests for dpjax.models.gguf_io: round trips, transformers, real SmolLM2."""

from __future__ import annotations

import dataclasses
import os

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from dpjax.models import gguf_io
from dpjax.models import llama
from dpjax.models import pretrained
from dpjax.models.tokenizer import HFTokenizer

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
            num_heads=4, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
            max_position_embeddings=64)


def _tiny_tokenizer(digits=False):
  """A byte-level BPE (optionally SmolLM2-style digit split), 64 ids."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.pre_tokenizer = (tokenizers.pre_tokenizers.Sequence(
      [tokenizers.pre_tokenizers.Digits(individual_digits=True), byte_level])
                       if digits else byte_level)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=60, special_tokens=['<|endoftext|>', '<|im_end|>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()[:40],
      show_progress=False)
  tok.train_from_iterator(['to be or not to be that is the question 1623'] * 5,
                          trainer)
  return HFTokenizer(tok, eos_token='<|im_end|>')


def _random_params(config):
  module, _ = llama.build(**dataclasses.asdict(config))
  params = module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  return module, jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * jax.random.normal(jax.random.key(len(str(p))),
                                               x.shape), params['params'])


@pytest.mark.parametrize('family,tie,dtype', [('llama', True, 'float32'),
                                              ('qwen2', False, 'float16')])
def test_round_trip(tmp_path, family, tie, dtype):
  config = llama.LlamaConfig(family=family, tie_embeddings=tie, **TINY)
  module, params = _random_params(config)
  tokenizer = _tiny_tokenizer(digits=family == 'llama')
  path = str(tmp_path / 'm.gguf')
  gguf_io.save_gguf(path, family, config, params, tokenizer, dtype=dtype)

  reader = gguf.GGUFReader(path)
  assert reader.get_field('general.architecture').contents() == family
  names = {t.name: t for t in reader.tensors}
  assert ('output.weight' in names) == (not tie)
  q = names['blk.0.attn_q.weight']
  assert list(q.shape) == [32, 32]  # ggml order: [in, out]
  assert q.tensor_type == (gguf.GGMLQuantizationType.F16 if dtype == 'float16'
                           else gguf.GGMLQuantizationType.F32)
  assert names['blk.0.attn_norm.weight'].tensor_type == (
      gguf.GGMLQuantizationType.F32)
  assert (reader.get_field('tokenizer.ggml.pre').contents() ==
          ('smollm' if family == 'llama' else 'gpt-2'))

  fam, config2, params2, tok2 = gguf_io.load_gguf(path)
  assert fam == family and config2 == config
  atol = 1e-3 if dtype == 'float16' else 0.0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=atol),
               params, params2)
  for text in ('to be or not to be', 'the question 1623 <|endoftext|>'):
    assert tok2.encode(text) == tokenizer.encode(text)
  assert tok2.eos_id == tokenizer.eos_id and tok2.pad_id == tokenizer.pad_id
  assert tok2.vocab_size == config.vocab_size
  assert tok2.decode(tok2.encode('to be 16')) == 'to be 16'


def test_transformers_reads_our_llama_gguf(tmp_path):
  """transformers' own GGUF loader (incl. the Q/K un-permutation) agrees."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  pytest.importorskip('accelerate')
  config = llama.LlamaConfig(family='llama', **TINY)
  module, params = _random_params(config)
  gguf_io.save_gguf(str(tmp_path / 'm.gguf'), 'llama', config, params,
                    _tiny_tokenizer(), dtype='f32')
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), gguf_file='m.gguf', dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(0, 64, (2, 8))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  got = jax.jit(module.apply)({'params': params}, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


def test_q8_0_export_dequantizes_close(tmp_path):
  config = llama.LlamaConfig(family='llama', **TINY)
  module, params = _random_params(config)
  path = str(tmp_path / 'q.gguf')
  gguf_io.save_gguf(path, 'llama', config, params, None, dtype='q8_0')
  types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
  assert types['blk.1.ffn_up.weight'] == gguf.GGMLQuantizationType.Q8_0
  assert types['output_norm.weight'] == gguf.GGMLQuantizationType.F32
  _, config2, params2, tok = gguf_io.load_gguf(path)
  assert config2 == config and tok is None
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    # Q8_0: 8-bit codes with one scale per 32 values -> error <= max|w|/254.
    np.testing.assert_allclose(a, b, atol=float(np.abs(a).max()) / 200)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (1, 8)))
  np.testing.assert_allclose(jax.jit(module.apply)({'params': params2}, tokens),
                             jax.jit(module.apply)({'params': params}, tokens),
                             atol=0.05)


def test_permutation_inverts():
  # pylint: disable=protected-access
  w = np.arange(8 * 3 * 5, dtype=np.float32).reshape(24, 5)
  np.testing.assert_array_equal(
      gguf_io._unpermute(gguf_io._permute(w, 3), 3), w)
  assert not np.array_equal(gguf_io._permute(w, 3), w)


def test_errors(tmp_path):
  with pytest.raises(ValueError, match='no GGUF file'):
    gguf_io.load_gguf(str(tmp_path / 'absent.gguf'))
  with pytest.raises(ValueError, match='family'):
    gguf_io.save_gguf(str(tmp_path / 'x.gguf'), 'bert', None, {}, None)


def test_smollm2_path():
  path = pretrained.smollm2_gguf_path()
  assert path.endswith('.gguf') and os.path.isfile(path)
  assert pretrained.source_format('smollm2') == 'gguf'
  assert pretrained.source_format('/some/folder') == 'hf'
  # The Instruct model's chat template is read (and so exported) with it.
  tok = gguf_io.tokenizer_from_gguf(gguf.GGUFReader(path))
  assert tok.chat_template.startswith('{% for message in messages %}')
  assert '<|im_start|>' in tok.chat_template


def test_pretrained_load_save_dispatch(tmp_path):
  config = llama.LlamaConfig(family='qwen2', **TINY)
  _, params = _random_params(config)
  for fmt, name in (('gguf', 'm.gguf'), ('hf', 'folder')):
    path = str(tmp_path / name)
    pretrained.save(path, fmt, 'qwen2', config, params, _tiny_tokenizer())
    family, config2, params2, tok = pretrained.load(path, dtype='bfloat16')
    assert family == 'qwen2' and tok is not None
    assert config2 == dataclasses.replace(config, param_dtype='bfloat16')
    assert params2['norm']['scale'].dtype == jnp.bfloat16


@pytest.mark.slow
def test_smollm2_nll_matches_transformers():
  """SmolLM2-135M from its Q4_1 GGUF: dpjax vs transformers on Shakespeare."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  pytest.importorskip('accelerate')
  import shksprdata  # pylint: disable=g-import-not-at-top
  path = pretrained.smollm2_gguf_path()
  family, config, params, tok = gguf_io.load_gguf(path)
  assert family == 'llama' and config.num_layers == 30
  assert config.tie_embeddings and config.num_kv_heads == 3
  texts = os.path.join(os.path.dirname(shksprdata.__file__), 'texts')
  with open(os.path.join(texts, 'tempest_gut.txt')) as f:
    passage = f.read()[20000:22000]
  hf_tok = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path))
  ids = tok.encode(passage)
  assert ids == hf_tok(passage)['input_ids']
  ids = np.asarray(ids[:256])
  module, _ = llama.build(**dataclasses.asdict(config))
  logits = module.apply({'params': params}, jnp.asarray(ids[None]))
  logp = jax.nn.log_softmax(logits[0, :-1])
  nll = -float(jnp.mean(jnp.take_along_axis(logp, jnp.asarray(ids[1:, None]),
                                            -1)))
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path),
      dtype=torch.float32).eval()
  with torch.no_grad():
    want = float(model(torch.tensor(ids[None]),
                       labels=torch.tensor(ids[None])).loss)
  print(f'SmolLM2 NLL on 256 Tempest tokens: dpjax {nll:.6f}, '
        f'transformers {want:.6f}')
  assert 2.0 < want < 6.0
  assert abs(nll - want) / want < 0.01


@pytest.mark.slow
def test_smollm2_exports_to_hf_folder(tmp_path):
  """SmolLM2 from GGUF -> save_hf_folder -> transformers: same logits/ids."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from dpjax.models import hf_io  # pylint: disable=g-import-not-at-top
  family, config, params, tok = pretrained.load('smollm2')
  hf_io.save_hf_folder(str(tmp_path), family, config, params, tok)
  text = 'Full fathom five thy father lies, in 1623 and 42 ways.'
  hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  ids = tok.encode(text)
  assert hf_tok(text)['input_ids'] == ids
  assert hf_tok.decode(ids) == tok.decode(ids) == text
  model = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), dtype=torch.float32).eval()
  with torch.no_grad():
    want = model(torch.tensor([ids])).logits.numpy()
  module, _ = llama.build(**dataclasses.asdict(config))
  got = np.asarray(module.apply({'params': params}, jnp.asarray([ids])))
  np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
