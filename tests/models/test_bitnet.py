"""BitNet b1.58 against the `transformers` PyTorch reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from dpjax.models import bitnet  # pylint: disable=g-import-not-at-top
from dpjax.models import build_model  # pylint: disable=g-import-not-at-top
from dpjax.models import layers  # pylint: disable=g-import-not-at-top
# pylint: disable-next=g-import-not-at-top
from transformers.integrations import bitnet as hf_bitnet

TOL = 1e-4
TINY = dict(vocab_size=100, hidden_size=32, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64, rope_theta=10000.0,
            bos_token_id=1, eos_token_id=2)


@pytest.fixture(autouse=True)
def _eager_torch():
  # transformers' quantized layers are @torch.compile'd; run them eagerly.
  old = torch._dynamo.config.disable  # pylint: disable=protected-access
  torch._dynamo.config.disable = True  # pylint: disable=protected-access
  yield
  torch._dynamo.config.disable = old  # pylint: disable=protected-access


def _hf_config(**extra):
  fields = dict(TINY)
  fields['rope_parameters'] = {'rope_type': 'default',
                               'rope_theta': fields.pop('rope_theta')}
  return transformers.BitNetConfig(**fields, attn_implementation='eager',
                                   **extra)


def _plain_model(seed=0, **extra):
  torch.manual_seed(seed)
  return transformers.BitNetForCausalLM(_hf_config(**extra)).eval()


def _state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _quantized(state, hf_config, linear_class, mode):
  """A transformers model whose linears are BitLinear/AutoBitLinear."""
  quant = transformers.BitNetQuantConfig(linear_class=linear_class,
                                         quantization_mode=mode)
  model = transformers.BitNetForCausalLM(hf_config).eval()
  hf_bitnet.replace_with_bitnet_linear(model, ['lm_head'], quant)
  model.load_state_dict({k: torch.tensor(v) for k, v in state.items()},
                        strict=False, assign=True)
  if hf_config.tie_word_embeddings:  # assign=True broke the tie
    model.lm_head.weight = model.model.embed_tokens.weight
  return model.eval()


def _tokens(seed=0, shape=(2, 10)):
  return np.random.default_rng(seed).integers(0, 100, size=shape)


def _logits(model, tokens):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens)).logits.numpy()


def test_unquantized_matches_plain_transformers():
  model = _plain_model()
  config = bitnet.from_hf_config(model.config.to_dict())
  assert config.quantization == 'none' and config.num_key_value_heads == 2
  params = bitnet.params_from_hf(_state(model), config)
  tokens = _tokens()
  with torch.no_grad():
    want_logits = model(input_ids=torch.tensor(tokens)).logits.numpy()
    want_hidden = model.model(
        input_ids=torch.tensor(tokens)).last_hidden_state.numpy()
  module = bitnet.BitNetForCausalLM(config)
  logits = module.apply({'params': params}, jnp.asarray(tokens))
  hidden = module.apply({'params': params}, jnp.asarray(tokens),
                        return_hidden=True)
  assert logits.shape == (2, 10, 100) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, want_logits, atol=TOL, rtol=0)
  np.testing.assert_allclose(hidden, want_hidden, atol=TOL, rtol=0)


def test_online_quantization_and_ste_gradients_match_autobitlinear():
  plain = _plain_model(seed=1)
  state = _state(plain)
  model = _quantized(state, plain.config, 'autobitlinear', 'online')
  hf_json = plain.config.to_dict()
  hf_json['quantization_config'] = {'quant_method': 'bitnet',
                                    'linear_class': 'autobitlinear',
                                    'quantization_mode': 'online'}
  config = bitnet.from_hf_config(hf_json)
  assert config.quantization == 'online' and config.weight_format == 'float'
  params = bitnet.params_from_hf(state, config)
  module = bitnet.BitNetForCausalLM(config)
  tokens = _tokens(1)
  logits = module.apply({'params': params}, jnp.asarray(tokens))
  want = _logits(model, tokens)
  np.testing.assert_allclose(logits, want, atol=TOL, rtol=0)
  # Quantization really changes the function.
  assert np.abs(want - _logits(plain, tokens)).max() > 1e-2

  # Straight-through gradients w.r.t. the latent weights agree with torch.
  weights = np.random.default_rng(2).normal(size=want.shape)

  def loss(p):
    return jnp.sum(module.apply({'params': p}, jnp.asarray(tokens)) * weights)

  grads = jax.jit(jax.grad(loss))(params)
  out = model(input_ids=torch.tensor(tokens)).logits
  (out * torch.tensor(weights, dtype=torch.float32)).sum().backward()
  for name in ('q_proj', 'o_proj'):
    got = grads['layers_1']['self_attn'][name]['kernel']
    ref = getattr(model.model.layers[1].self_attn, name).weight.grad.numpy().T
    assert np.abs(got).max() > 0
    np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())
  got = grads['layers_0']['mlp']['down_proj']['kernel']
  ref = model.model.layers[0].mlp.down_proj.weight.grad.numpy().T
  np.testing.assert_allclose(got, ref, atol=1e-4 * np.abs(ref).max())


def test_packed_checkpoint_matches_bitlinear_and_round_trips():
  plain = _plain_model(seed=3, tie_word_embeddings=True)
  state = _state(plain)
  packed_state = {}
  for k, v in state.items():
    if k.endswith('_proj.weight'):
      w = torch.tensor(v)
      scale = 1.0 / w.abs().mean().clamp(min=1e-5)
      t = (w * scale).round().clamp(-1, 1)
      packed = hf_bitnet.pack_weights(t.clone()).numpy()
      np.testing.assert_array_equal(layers.pack_ternary(t.numpy()), packed)
      np.testing.assert_array_equal(layers.unpack_ternary(packed), t.numpy())
      packed_state[k] = packed
      packed_state[k + '_scale'] = np.asarray([scale.item()], np.float32)
    elif k != 'lm_head.weight':
      packed_state[k] = v
  model = _quantized(packed_state, plain.config, 'bitlinear', 'offline')
  hf_json = plain.config.to_dict()
  hf_json['quantization_config'] = {'quant_method': 'bitnet',
                                    'linear_class': 'bitlinear',
                                    'quantization_mode': 'offline'}
  config = bitnet.from_hf_config(hf_json)
  assert config.weight_format == 'packed' and config.tie_word_embeddings
  params = bitnet.params_from_hf(packed_state, config)
  assert 'lm_head' not in params
  tokens = _tokens(4)
  logits = bitnet.BitNetForCausalLM(config).apply({'params': params},
                                                  jnp.asarray(tokens))
  np.testing.assert_allclose(logits, _logits(model, tokens), atol=TOL, rtol=0)

  back = bitnet.params_to_hf(params, config)
  assert sorted(back) == sorted(packed_state)
  for k, v in packed_state.items():
    if k.endswith('weight_scale'):
      np.testing.assert_allclose(back[k], v, rtol=1e-6, err_msg=k)
    else:
      np.testing.assert_array_equal(back[k], v, err_msg=k)
  assert bitnet.to_hf_config(config)['quantization_config'][
      'linear_class'] == 'bitlinear'


def test_float_round_trip_and_hf_config():
  model = _plain_model(seed=5)
  config = bitnet.from_hf_config(model.config.to_dict())
  state = _state(model)
  back = bitnet.params_to_hf(bitnet.params_from_hf(state, config), config)
  assert sorted(back) == sorted(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  hf_json = bitnet.to_hf_config(config)
  assert 'quantization_config' not in hf_json
  assert bitnet.from_hf_config(hf_json) == config
  reparsed = transformers.BitNetConfig.from_dict(hf_json).to_dict()
  assert bitnet.from_hf_config(reparsed) == config


def test_released_2b4t_style_config():
  # The shape of microsoft/bitnet-b1.58-2B-4T's config.json (older format:
  # top-level rope_theta, packed bitlinear quantization).
  hf_json = dict(
      architectures=['BitNetForCausalLM'], model_type='bitnet',
      hidden_act='relu2', hidden_size=2560, intermediate_size=6912,
      num_attention_heads=20, num_hidden_layers=30, num_key_value_heads=5,
      max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500000.0,
      tie_word_embeddings=True, torch_dtype='bfloat16', vocab_size=128256,
      bos_token_id=128000, eos_token_id=128001,
      quantization_config={'quant_method': 'bitnet',
                           'linear_class': 'bitlinear',
                           'quantization_mode': 'offline'})
  config = bitnet.from_hf_config(hf_json)
  assert (config.head_dim, config.num_key_value_heads) == (128, 5)
  assert config.weight_format == 'packed' and config.param_dtype == 'bfloat16'
  parsed = transformers.BitNetConfig.from_dict(hf_json).to_dict()
  assert parsed['rope_parameters']['rope_theta'] == config.rope_theta
  assert bitnet.from_hf_config(parsed) == config
  assert bitnet.from_hf_config(bitnet.to_hf_config(config)) == config


def test_vmap_grad_ste_nonzero_latent_grads():
  module, config = build_model('bitnet', **TINY)
  assert config.quantization == 'online'
  tokens = jnp.asarray(_tokens(6, (3, 1, 8)))
  params = jax.jit(module.init)(jax.random.key(0), tokens[0])['params']

  def loss(p, x):
    logp = jax.nn.log_softmax(module.apply({'params': p}, x)[:, :-1])
    return -jnp.take_along_axis(logp, x[:, 1:, None], -1).mean()

  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params,
                                                                  tokens)
  for name in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
    g = grads['layers_0']['self_attn'][name]['kernel']
    assert g.shape[0] == 3 and bool(jnp.all(jnp.isfinite(g)))
    assert bool(jnp.all(jnp.abs(g).max(axis=(1, 2)) > 0)), name
  for name in ('gate_proj', 'up_proj', 'down_proj'):
    g = grads['layers_1']['mlp'][name]['kernel']
    assert bool(jnp.all(jnp.abs(g).max(axis=(1, 2)) > 0)), name
  # Ternary forward: the effective weight takes three values.
  w = params['layers_0']['mlp']['up_proj']['kernel']
  assert len(np.unique(np.asarray(layers.weight_quant(w)))) == 3


def test_bad_configs_raise():
  with pytest.raises(ValueError, match='quantization'):
    build_model('bitnet', quantization='int4', **TINY)
  with pytest.raises(ValueError, match='num_key_value_heads'):
    build_model('bitnet', **dict(TINY, num_key_value_heads=3))
  with pytest.raises(ValueError, match='quantization_config'):
    bitnet.from_hf_config({'model_type': 'bitnet', 'quantization_config': {
        'linear_class': 'autobitlinear', 'quantization_mode': 'offline'}})
