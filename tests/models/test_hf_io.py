"""Tests for dpjax.models.hf_io against transformers' own save/load."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from safetensors import numpy as safetensors_np

from dpjax.models import hf_io
from dpjax.models import llama
from dpjax.models.tokenizer import HFTokenizer

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
            num_heads=4, num_kv_heads=2, max_position_embeddings=64)


def _tiny_tokenizer():
  """A byte-level BPE with 64 ids trained offline on a short text."""
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=64, special_tokens=['<|endoftext|>'],
      initial_alphabet=list('abcdefghijklmnopqrstuvwxyz Ġ'),
      show_progress=False)
  tok.train_from_iterator(['to be or not to be that is the question'] * 5,
                          trainer)
  return HFTokenizer(tok)


def _logits_torch(path, tokens):
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, attn_implementation='eager').eval()
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.numpy()


@pytest.mark.parametrize('family,tie', [('llama', True), ('qwen2', False)])
def test_save_loads_in_transformers_and_round_trips(tmp_path, family, tie):
  module, config = llama.build(family=family, tie_embeddings=tie, **TINY)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 9)))
  params = module.init(jax.random.key(0), tokens)['params']
  # Make norms and biases non-trivial so a mix-up would show.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * jax.random.normal(jax.random.key(len(str(p))),
                                               x.shape), params)
  tokenizer = _tiny_tokenizer()
  hf_io.save_hf_folder(tmp_path, family, config, params, tokenizer)
  ours = np.asarray(jax.jit(module.apply)({'params': params}, tokens))
  np.testing.assert_allclose(_logits_torch(tmp_path, tokens), ours,
                             atol=1e-4, rtol=1e-4)
  fam, config2, params2, tok2 = hf_io.load_hf_folder(str(tmp_path))
  assert fam == family and config2 == config
  jax.tree.map(np.testing.assert_array_equal, params, params2)
  text = 'to be or not to be'
  assert tok2.encode(text) == tokenizer.encode(text)
  assert tok2.decode(tok2.encode(text)) == text
  assert tok2.eos_id == tokenizer.eos_id
  assert tok2.vocab_size == tokenizer.vocab_size <= 64
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path)
  assert hf_tok(text)['input_ids'] == tok2.encode(text)


def test_loads_sharded_transformers_checkpoint(tmp_path):
  torch.manual_seed(0)
  config = llama.LlamaConfig(family='qwen2', **TINY)
  hf_config = transformers.Qwen2Config(**llama.to_hf_config(config))
  model = transformers.Qwen2ForCausalLM(hf_config).eval()
  model.save_pretrained(tmp_path, max_shard_size='20KB')
  assert os.path.isfile(tmp_path / 'model.safetensors.index.json')
  tokens = np.random.default_rng(1).integers(0, 64, (1, 7))
  fam, config2, params, tok = hf_io.load_hf_folder(str(tmp_path))
  assert fam == 'qwen2' and tok is None and config2.qkv_bias
  module, _ = llama.build(**{k: getattr(config2, k)
                             for k in config2.__dataclass_fields__})
  got = np.asarray(jax.jit(module.apply)({'params': params},
                                         jnp.asarray(tokens)))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
  _, config16, params16, _ = hf_io.load_hf_folder(str(tmp_path),
                                                  dtype='bfloat16')
  assert config16.param_dtype == 'bfloat16'
  assert params16['norm']['scale'].dtype == jnp.bfloat16


def test_errors(tmp_path):
  with pytest.raises(ValueError, match='only local folders work offline'):
    hf_io.load_hf_folder('Qwen/Qwen2.5-0.5B')
  module, config = llama.build(**TINY)
  params = module.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
  hf_io.save_hf_folder(tmp_path, 'llama', config, params['params'])
  path = tmp_path / 'model.safetensors'
  tensors = safetensors_np.load_file(path)
  tensors.pop('model.layers.1.mlp.up_proj.weight')
  tensors.pop('lm_head.weight')
  tensors['model.layers.0.self_attn.q_proj.weight'] = np.zeros((3, 3),
                                                               np.float32)
  tensors['model.surprise'] = np.zeros(2, np.float32)
  safetensors_np.save_file(tensors, path)
  with pytest.raises(ValueError) as e:
    hf_io.load_hf_folder(str(tmp_path))
  for name in ('model.layers.1.mlp.up_proj.weight', 'lm_head.weight',
               'model.layers.0.self_attn.q_proj.weight', 'model.surprise'):
    assert name in str(e.value)
  with open(tmp_path / 'config.json') as f:
    cfg = json.load(f)
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(dict(cfg, model_type='mamba'), f)
  with pytest.raises(ValueError, match="model_type 'mamba' is not supported"):
    hf_io.load_hf_folder(str(tmp_path))
