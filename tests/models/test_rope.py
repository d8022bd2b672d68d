"""RoPE scaling types (dpjax.models.rope) against transformers' rotary code."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.models import build_model
from dpjax.models import hf_io
from dpjax.models import llama
from dpjax.models import rope

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# head_dim 8, theta 1e4: wavelengths 6.3, 63, 628, 6283 tokens, so with a
# 64-token original context llama3 keeps one frequency, smooths one and
# divides two; YaRN's ramp and LongRoPE's factors likewise touch all four.
BASE = {
    'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
    'vocab_size': 64, 'hidden_size': 32, 'intermediate_size': 48,
    'num_hidden_layers': 2, 'num_attention_heads': 4,
    'num_key_value_heads': 2, 'head_dim': 8, 'hidden_act': 'silu',
    'rms_norm_eps': 1e-5, 'max_position_embeddings': 256,
    'tie_word_embeddings': False, 'rope_theta': 10000.0,
}
SCALINGS = {
    'linear': {'rope_type': 'linear', 'factor': 4.0},
    'llama3': {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
               'high_freq_factor': 4.0,
               'original_max_position_embeddings': 64},
    'yarn': {'rope_type': 'yarn', 'factor': 4.0,
             'original_max_position_embeddings': 64},
    'yarn_mscale': {'rope_type': 'yarn', 'factor': 4.0, 'beta_fast': 16,
                    'beta_slow': 2, 'mscale': 0.707, 'mscale_all_dim': 0.707,
                    'truncate': False,
                    'original_max_position_embeddings': 64},
    'longrope': {'rope_type': 'longrope', 'short_factor': [1.0, 1.5, 2., 3.],
                 'long_factor': [1.0, 2.0, 4.0, 16.0],
                 'original_max_position_embeddings': 16},
    'dynamic': {'rope_type': 'dynamic', 'factor': 2.0},
}


def _hf_dict(name, key='rope_parameters', family='llama'):
  out = dict(BASE)
  if family == 'qwen2':
    out.update(model_type='qwen2', architectures=['Qwen2ForCausalLM'])
  if name is not None:
    params = dict(SCALINGS[name])
    if key == 'rope_parameters':
      params['rope_theta'] = out.pop('rope_theta')
    out[key] = params
  return out


def _torch_model(hf_dict, seed=0):
  torch.manual_seed(seed)
  cls = (transformers.LlamaForCausalLM if hf_dict['model_type'] == 'llama'
         else transformers.Qwen2ForCausalLM)
  config = transformers.AutoConfig.for_model(**hf_dict)
  config._attn_implementation = 'eager'
  model = cls(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('norm.weight'):
        p.copy_(1.0 + 0.1 * torch.randn_like(p))
      elif name.endswith('.bias'):
        p.copy_(0.05 * torch.randn_like(p))
      else:
        p.copy_(0.1 * torch.randn_like(p))
  return model


def _ours(hf_dict, state, tokens):
  config = llama.from_hf_config(hf_dict)
  module, _ = build_model(**{f: getattr(config, f)
                             for f in config.__dataclass_fields__})
  params = llama.params_from_hf(state, config)
  return np.asarray(jax.jit(module.apply)({'params': params},
                                          jnp.asarray(tokens, jnp.int32)))


def _logits(hf_dict, t, seed=0):
  model = _torch_model(hf_dict, seed)
  tokens = np.random.default_rng(1).integers(0, 64, (2, t))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return _ours(hf_dict, state, tokens), want


@pytest.mark.parametrize('name', sorted(SCALINGS))
def test_cos_sin_match_transformers(name):
  hf_dict = _hf_dict(name)
  hf_config = transformers.AutoConfig.for_model(**hf_dict)
  rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(
      hf_config)
  theta, scaling = rope.from_hf_config(hf_dict)
  for t in (12, 40, 200):
    positions = np.broadcast_to(np.arange(t), (1, t))
    x = torch.zeros(1, t, 8)
    want_cos, want_sin = (v.numpy() for v in rotary(
        x, torch.tensor(positions)))
    cos, sin = rope.cos_sin(jnp.asarray(positions), 8, theta, scaling)
    np.testing.assert_allclose(np.asarray(cos), want_cos, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(sin), want_sin, atol=1e-5, rtol=0)


@pytest.mark.parametrize('name,key,family,t', [
    ('linear', 'rope_parameters', 'llama', 24),
    ('llama3', 'rope_parameters', 'llama', 24),
    ('llama3', 'rope_scaling', 'qwen2', 24),
    ('yarn', 'rope_parameters', 'qwen2', 24),
    ('yarn_mscale', 'rope_scaling', 'llama', 24),
    ('longrope', 'rope_parameters', 'llama', 12),   # short factors
    ('longrope', 'rope_parameters', 'llama', 24),   # long factors
    ('dynamic', 'rope_scaling', 'llama', 24),
])
def test_logits_match_transformers(name, key, family, t):
  hf_dict = _hf_dict(name, key, family)
  got, want = _logits(hf_dict, t)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  # Power: plain RoPE would be far outside the tolerance (except 'dynamic',
  # which equals plain RoPE within max_position_embeddings).
  plain, _ = _logits(_hf_dict(None, family=family), t)
  gap = np.max(np.abs(plain - want))
  assert gap < 1e-4 if name == 'dynamic' else gap > 1e-2


def test_llama3_checkpoint_saved_by_transformers_loads_exactly(tmp_path):
  """A Llama 3.x-style folder as `save_pretrained` writes it."""
  hf_dict = _hf_dict('llama3')
  model = _torch_model(hf_dict)
  model.save_pretrained(tmp_path, safe_serialization=True)
  with open(os.path.join(tmp_path, 'config.json')) as f:
    written = json.load(f)
  assert (written.get('rope_parameters') or
          written.get('rope_scaling'))['rope_type'] == 'llama3'
  family, config, params, _ = hf_io.load_hf_folder(str(tmp_path))
  assert family == 'llama' and config.rope_scaling.rope_type == 'llama3'
  tokens = np.random.default_rng(2).integers(0, 64, (2, 30))
  module, _ = llama.build(**{f: getattr(config, f)
                             for f in config.__dataclass_fields__})
  got = np.asarray(module.apply({'params': params}, jnp.asarray(tokens)))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('name', sorted(SCALINGS))
def test_export_round_trips_and_transformers_reads_it(name, tmp_path):
  config = llama.from_hf_config(_hf_dict(name))
  out = llama.to_hf_config(config)
  assert llama.from_hf_config(out) == config
  module, _ = llama.build(**{f: getattr(config, f)
                             for f in config.__dataclass_fields__})
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (1, 20)))
  params = module.init(jax.random.key(0), tokens)['params']
  hf_io.save_hf_folder(str(tmp_path), 'llama', config, params)
  model = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, attn_implementation='eager').eval()
  assert model.config.rope_parameters['rope_type'] == SCALINGS[name][
      'rope_type']
  with torch.no_grad():
    want = model(torch.tensor(np.asarray(tokens))).logits.numpy()
  np.testing.assert_allclose(np.asarray(module.apply({'params': params},
                                                     tokens)),
                             want, atol=1e-5, rtol=1e-5)


def test_priority_of_keys_follows_transformers():
  # A non-empty legacy rope_scaling wins over rope_parameters.
  both = dict(_hf_dict('linear'), rope_scaling=SCALINGS['llama3'])
  assert rope.from_hf_config(both)[1].rope_type == 'llama3'
  # rope_theta inside the dict wins over the top-level one.
  d = dict(BASE, rope_theta=1.0, rope_parameters={'rope_type': 'default',
                                                  'rope_theta': 5e5})
  assert rope.from_hf_config(d) == (5e5, None)
  assert rope.from_hf_config(dict(BASE)) == (1e4, None)
  # Phi-3 style: a top-level original_max_position_embeddings wins.
  d = dict(_hf_dict('longrope'), original_max_position_embeddings=32)
  assert rope.from_hf_config(d)[1].original_max_position_embeddings == 32


@pytest.mark.parametrize('change,match', [
    ({'rope_parameters': {'rope_type': 'proportional', 'rope_theta': 1e4}},
     "rope_type 'proportional' is not supported"),
    ({'rope_scaling': {'type': 'su', 'factor': 2.0}},
     "rope_type 'su' is not supported"),
    ({'rope_parameters': {'full_attention': {'rope_type': 'default'},
                          'sliding_attention': {'rope_type': 'default'}}},
     'per layer type'),
    ({'partial_rotary_factor': 0.5}, 'partial_rotary_factor'),
    ({'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0}},
     r"lacks \['low_freq_factor', 'high_freq_factor'\]"),
    ({'rope_scaling': {'rope_type': 'longrope', 'short_factor': [1.0],
                       'long_factor': [1.0]}}, 'short_factor must be 4'),
    ({'rope_scaling': {'rope_type': 'linear', 'factor': -1.0}},
     'factor must be > 0'),
    ({'rope_scaling': 'linear'}, 'must be a JSON object'),
])
def test_unsupported_rope_is_refused(change, match):
  with pytest.raises(ValueError, match=match) as e:
    llama.from_hf_config(dict(BASE, **change))
  assert 'config.json' in str(e.value)


def test_dynamic_refuses_sequences_past_its_context():
  config = llama.from_hf_config(dict(_hf_dict('dynamic'),
                                     max_position_embeddings=16))
  module, _ = llama.build(**{f: getattr(config, f)
                             for f in config.__dataclass_fields__})
  tokens = jnp.zeros((1, 16), jnp.int32)
  params = module.init(jax.random.key(0), tokens)['params']
  module.apply({'params': params}, tokens)
  with pytest.raises(ValueError, match='dynamic-NTK'):
    module.apply({'params': params}, jnp.zeros((1, 17), jnp.int32))


def test_longrope_picks_factors_from_the_longest_real_position():
  """With padding, transformers uses max(position_ids) + 1, as dpjax does."""
  _, scaling = rope.from_hf_config(_hf_dict('longrope'))
  short, long, _ = rope.inv_freqs(scaling, 1e4, 8)
  positions = jnp.asarray([[0, 0, 0, 0, 0] + list(range(15))])  # max 14
  cos, _ = rope.cos_sin(positions, 8, 1e4, scaling)
  attention = rope.inv_freqs(scaling, 1e4, 8)[2]
  np.testing.assert_allclose(np.asarray(cos)[0, -1, :4],
                             np.cos(14 * short) * attention, rtol=1e-6)
  positions = jnp.asarray([list(range(20))])
  cos, _ = rope.cos_sin(positions, 8, 1e4, scaling)
  np.testing.assert_allclose(np.asarray(cos)[0, -1, :4],
                             np.cos(19 * long) * attention, rtol=1e-6)


def test_bitnet_reads_theta_and_refuses_scaling():
  from dpjax.models import bitnet  # pylint: disable=g-import-not-at-top
  d = dict(BASE, model_type='bitnet', rope_theta=1.0,
           rope_parameters={'rope_type': 'default', 'rope_theta': 5e5})
  assert bitnet.from_hf_config(d).rope_theta == 5e5
  with pytest.raises(ValueError, match="'llama3' RoPE is not supported for "
                     'bitnet'):
    bitnet.from_hf_config(dict(BASE, model_type='bitnet',
                               rope_scaling=SCALINGS['llama3']))


# Published config.json files (Hub model cards), as a user's folder has them.
LLAMA_3_2_1B = {
    'architectures': ['LlamaForCausalLM'], 'attention_bias': False,
    'bos_token_id': 128000, 'eos_token_id': 128001, 'head_dim': 64,
    'hidden_act': 'silu', 'hidden_size': 2048, 'intermediate_size': 8192,
    'max_position_embeddings': 131072, 'mlp_bias': False,
    'model_type': 'llama', 'num_attention_heads': 32,
    'num_hidden_layers': 16, 'num_key_value_heads': 8, 'pretraining_tp': 1,
    'rms_norm_eps': 1e-05,
    'rope_scaling': {'factor': 32.0, 'high_freq_factor': 4.0,
                     'low_freq_factor': 1.0,
                     'original_max_position_embeddings': 8192,
                     'rope_type': 'llama3'},
    'rope_theta': 500000.0, 'tie_word_embeddings': True,
    'torch_dtype': 'bfloat16', 'vocab_size': 128256}
# Qwen2.5-7B-Instruct with the YaRN block its model card tells users to add.
QWEN_2_5_7B_YARN = {
    'architectures': ['Qwen2ForCausalLM'], 'hidden_act': 'silu',
    'hidden_size': 3584, 'intermediate_size': 18944,
    'max_position_embeddings': 32768, 'max_window_layers': 28,
    'model_type': 'qwen2', 'num_attention_heads': 28,
    'num_hidden_layers': 28, 'num_key_value_heads': 4, 'rms_norm_eps': 1e-06,
    'rope_theta': 1000000.0, 'sliding_window': 131072,
    'tie_word_embeddings': False, 'use_sliding_window': False,
    'vocab_size': 152064,
    'rope_scaling': {'factor': 4.0, 'original_max_position_embeddings': 32768,
                     'type': 'yarn'}}


@pytest.mark.parametrize('published', [LLAMA_3_2_1B, QWEN_2_5_7B_YARN],
                         ids=['llama-3.2-1b', 'qwen2.5-7b-yarn'])
def test_published_scaled_configs_give_transformers_tables(published):
  config = llama.from_hf_config(published)
  assert config.rope_scaling.rope_type == published['rope_scaling'].get(
      'rope_type', published['rope_scaling'].get('type'))
  hf_config = transformers.AutoConfig.for_model(**published)
  rotary = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(
      hf_config)
  positions = np.asarray([[0, 1, 7, 100, 2047, 8191, 8192, 30000, 120000]])
  want_cos, want_sin = (v.numpy() for v in rotary(
      torch.zeros(1, 9, config.head_dim), torch.tensor(positions)))
  cos, sin = rope.cos_sin(jnp.asarray(positions), config.head_dim,
                          config.rope_theta, config.rope_scaling)
  # The inverse frequencies agree to float32 rounding (numpy's and torch's
  # powf may differ in the last bit) ...
  short = rope.inv_freqs(config.rope_scaling, config.rope_theta,
                         config.head_dim)[0]
  np.testing.assert_allclose(short, rotary.inv_freq.numpy(), rtol=3e-7)
  # ... so the float32 angles p * inv_freq (up to 1.2e5 rad) may differ by a
  # few ulp of p * inv_freq; the tables must agree to that and no more.
  angle = positions[0, :, None] * np.concatenate([short, short])[None, :]
  atol = 1e-5 + 4 * np.finfo(np.float32).eps * angle[None]
  for got, want in ((cos, want_cos), (sin, want_sin)):
    excess = np.abs(np.asarray(got) - want) - atol
    assert np.max(excess) <= 0, np.unravel_index(np.argmax(excess), excess.shape)
    np.testing.assert_allclose(np.asarray(got)[:, :4], want[:, :4], atol=1e-5)
  plain = rope.cos_sin(jnp.asarray(positions), config.head_dim,
                       config.rope_theta, None)[0]
  assert np.max(np.abs(np.asarray(plain) - want_cos)) > 0.1
