"""Tests for dpjax.models.llama against transformers' torch models."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.models import build_model
from dpjax.models import llama

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
            num_heads=4, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
            max_position_embeddings=128)


def _torch_model(family, tie=False, seed=0, **overrides):
  """A random HF model of the tiny shape, with non-trivial norms and biases."""
  torch.manual_seed(seed)
  fields = dict(TINY, **overrides)
  config = llama.LlamaConfig(family=family, tie_embeddings=tie, **fields)
  hf_config_cls = (transformers.LlamaConfig if family == 'llama'
                   else transformers.Qwen2Config)
  hf_config = hf_config_cls(**llama.to_hf_config(config))
  hf_config._attn_implementation = 'eager'
  model_cls = (transformers.LlamaForCausalLM if family == 'llama'
               else transformers.Qwen2ForCausalLM)
  model = model_cls(hf_config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('norm.weight'):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith('.bias'):
        p.copy_(0.1 * torch.randn_like(p))
      else:
        p.copy_(0.2 * torch.randn_like(p))
  return model, config


def _state(model):
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _tokens(b=2, t=11, seed=1):
  return np.random.default_rng(seed).integers(0, TINY['vocab_size'], (b, t))


@pytest.mark.parametrize('family,tie', [('llama', False), ('llama', True),
                                        ('qwen2', False), ('qwen2', True)])
def test_logits_match_transformers(family, tie):
  model, config = _torch_model(family, tie)
  tokens = _tokens()
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  module, _ = build_model(**dataclass_fields(config))
  params = llama.params_from_hf(_state(model), config)
  got = jax.jit(module.apply)({'params': params},
                              jnp.asarray(tokens, jnp.int32))
  assert got.dtype == jnp.float32 and got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


def test_llama_attention_bias_and_explicit_head_dim():
  _, config = _torch_model('llama', head_dim=16)
  # attention_bias on every projection (HF llama) -> qkv_bias and o_bias.
  hf_cfg = dict(llama.to_hf_config(config), attention_bias=True)
  config = llama.from_hf_config(hf_cfg)
  assert config.qkv_bias and config.o_bias and config.head_dim == 16
  torch.manual_seed(3)
  hf = transformers.LlamaConfig(**hf_cfg)
  hf._attn_implementation = 'eager'
  model = transformers.LlamaForCausalLM(hf).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_((0.1 if name.endswith('.bias') else 0.2) * torch.randn_like(p))
  tokens = _tokens(1, 7)
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  module, _ = llama.build(**dataclass_fields(config))
  params = llama.params_from_hf(_state(model), config)
  got = jax.jit(module.apply)({'params': params}, jnp.asarray(tokens))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-4)


def test_padding_mask_matches_transformers():
  model, config = _torch_model('qwen2')
  tokens = _tokens(2, 9)
  mask = np.ones_like(tokens)
  mask[1, 6:] = 0  # right padding on the second row
  with torch.no_grad():
    want = model(torch.tensor(tokens),
                 attention_mask=torch.tensor(mask)).logits.numpy()
  module, _ = llama.build(**dataclass_fields(config))
  params = llama.params_from_hf(_state(model), config)
  apply = jax.jit(module.apply)
  got = np.asarray(apply({'params': params}, jnp.asarray(tokens),
                         attention_mask=jnp.asarray(mask)))
  real = mask.astype(bool)
  np.testing.assert_allclose(got[real], want[real], atol=1e-4, rtol=1e-4)
  # Left padding: the real tokens' logits equal the unpadded row's.
  left = np.concatenate([np.zeros((1, 3), int), tokens[:1, :6]], axis=1)
  left_mask = np.concatenate([np.zeros((1, 3), int), np.ones((1, 6), int)], 1)
  got_left = np.asarray(apply({'params': params}, jnp.asarray(left),
                              attention_mask=jnp.asarray(left_mask)))
  plain = np.asarray(apply({'params': params}, jnp.asarray(tokens[:1, :6])))
  assert np.all(np.isfinite(got_left))
  np.testing.assert_allclose(got_left[0, 3:], plain[0], atol=1e-5)


def test_params_tree_and_round_trip():
  model, config = _torch_model('qwen2', tie=False)
  module, _ = llama.build(**dataclass_fields(config))
  init = module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
  params = llama.params_from_hf(_state(model), config)
  assert (jax.tree.structure(init) == jax.tree.structure(params))
  for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(params)):
    assert a.shape == b.shape
  assert init['layers_0']['self_attn']['q_proj']['kernel'].shape == (32, 32)
  assert init['layers_0']['self_attn']['k_proj']['kernel'].shape == (32, 16)
  assert 'bias' in init['layers_1']['self_attn']['v_proj']
  assert 'bias' not in init['layers_1']['self_attn']['o_proj']
  back = llama.params_to_hf(params, config)
  state = _state(model)
  assert set(back) == set(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k])


def test_tied_has_no_lm_head_and_mismatch_errors():
  model, config = _torch_model('llama', tie=True)
  module, _ = llama.build(**dataclass_fields(config))
  init = module.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))['params']
  assert 'lm_head' not in init
  state = _state(model)
  state.pop('model.norm.weight')
  state['model.extra.weight'] = np.zeros(3)
  state['model.layers.0.mlp.up_proj.weight'] = np.zeros((2, 2))
  with pytest.raises(ValueError) as e:
    llama.params_from_hf(state, config)
  msg = str(e.value)
  assert 'model.norm.weight' in msg and 'model.extra.weight' in msg
  assert 'model.layers.0.mlp.up_proj.weight' in msg


def test_hf_config_round_trip():
  for family in ('llama', 'qwen2'):
    config = llama.LlamaConfig(family=family, tie_embeddings=True, **TINY)
    assert llama.from_hf_config(llama.to_hf_config(config)) == config
  with pytest.raises(ValueError, match='rope_scaling'):
    llama.from_hf_config(dict(llama.to_hf_config(config),
                              rope_scaling={'rope_type': 'llama3'}))


def test_published_configs():
  """Config fields of two published config.json files (Hub model cards)."""
  qwen = llama.from_hf_config({
      'architectures': ['Qwen2ForCausalLM'], 'attention_dropout': 0.0,
      'bos_token_id': 151643, 'eos_token_id': 151643, 'hidden_act': 'silu',
      'hidden_size': 896, 'initializer_range': 0.02,
      'intermediate_size': 4864, 'max_position_embeddings': 32768,
      'max_window_layers': 24, 'model_type': 'qwen2',
      'num_attention_heads': 14, 'num_hidden_layers': 24,
      'num_key_value_heads': 2, 'rms_norm_eps': 1e-06,
      'rope_theta': 1000000.0, 'sliding_window': 32768,
      'tie_word_embeddings': True, 'torch_dtype': 'bfloat16',
      'use_cache': True, 'use_sliding_window': False, 'vocab_size': 151936})
  assert (qwen.family, qwen.head_dim, qwen.num_kv_heads) == ('qwen2', 64, 2)
  assert qwen.qkv_bias and not qwen.o_bias and qwen.tie_embeddings
  smol = llama.from_hf_config({
      'architectures': ['LlamaForCausalLM'], 'attention_bias': False,
      'hidden_act': 'silu', 'hidden_size': 576, 'intermediate_size': 1536,
      'max_position_embeddings': 8192, 'model_type': 'llama',
      'num_attention_heads': 9, 'num_hidden_layers': 30,
      'num_key_value_heads': 3, 'rms_norm_eps': 1e-05, 'rope_scaling': None,
      'rope_theta': 100000, 'tie_word_embeddings': True,
      'vocab_size': 49152})
  assert (smol.head_dim, smol.qkv_bias, smol.rope_theta) == (64, False, 1e5)
  with pytest.raises(ValueError, match='use_sliding_window'):
    llama.from_hf_config(dict(llama.to_hf_config(qwen),
                              use_sliding_window=True))


def test_bad_config_raises():
  with pytest.raises(ValueError, match='num_kv_heads'):
    llama.build(**dict(TINY, num_kv_heads=3))
  with pytest.raises(ValueError, match='unknown field'):
    llama.build(**dict(TINY, n_layer=2))


def test_per_example_grads_under_vmap_and_dropout_and_remat():
  config_fields = dict(TINY, dropout_rate=0.1)
  module, _ = llama.build(**config_fields)
  tokens = jnp.asarray(_tokens(3, 8), jnp.int32)
  params = module.init(jax.random.key(0), tokens[:1])['params']

  def loss(p, x, key):
    logits = module.apply({'params': p}, x[None], deterministic=False,
                          rngs={'dropout': key})
    logp = jax.nn.log_softmax(logits[0, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, x[1:, None], -1))

  keys = jax.random.split(jax.random.key(1), 3)
  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(
      params, tokens, keys)
  leaf = grads['layers_0']['self_attn']['q_proj']['kernel']
  assert leaf.shape == (3, 32, 32) and np.all(np.isfinite(leaf))
  # Per-example grads equal grads of each example alone.
  g1 = jax.jit(jax.grad(loss))(params, tokens[1], keys[1])
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b[1], atol=1e-5, rtol=1e-4)
  # Remat gives the same gradients.
  remat_module, _ = llama.build(**config_fields, remat=True)

  def loss_remat(p, x, key):
    logits = remat_module.apply({'params': p}, x[None], deterministic=False,
                                rngs={'dropout': key})
    logp = jax.nn.log_softmax(logits[0, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, x[1:, None], -1))

  g1_remat = jax.jit(jax.grad(loss_remat))(params, tokens[1], keys[1])
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g1_remat)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
  # The default (deterministic) call needs no dropout rng.
  assert np.all(np.isfinite(jax.jit(module.apply)({'params': params}, tokens)))


def test_bfloat16_compute_close_to_float32():
  module32, _ = llama.build(**TINY)
  module16, _ = llama.build(**dict(TINY, dtype='bfloat16'))
  tokens = jnp.asarray(_tokens(1, 6), jnp.int32)
  params = module32.init(jax.random.key(0), tokens)['params']
  a = jax.jit(module32.apply)({'params': params}, tokens)
  b = jax.jit(module16.apply)({'params': params}, tokens)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(a, b, atol=0.05)


def dataclass_fields(config):
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
