"""GPT-2 against the `transformers` PyTorch reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from dpjax.models import build_model  # pylint: disable=g-import-not-at-top
from dpjax.models import gpt2  # pylint: disable=g-import-not-at-top

TOL = 1e-4
TINY = dict(vocab_size=100, n_positions=24, n_embd=32, n_layer=2, n_head=4,
            bos_token_id=0, eos_token_id=0)


def _model(seed=0, **extra):
  torch.manual_seed(seed)
  config = transformers.GPT2Config(**TINY, attn_implementation='eager',
                                   **extra)
  return transformers.GPT2LMHeadModel(config).eval()


def _state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _compare(model, tokens):
  config = gpt2.from_hf_config(model.config.to_dict())
  params = gpt2.params_from_hf(_state(model), config)
  module = gpt2.GPT2LMHeadModel(config)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(tokens), output_hidden_states=True)
  logits = module.apply({'params': params}, jnp.asarray(tokens))
  hidden = module.apply({'params': params}, jnp.asarray(tokens),
                        return_hidden=True)
  assert logits.shape == tokens.shape + (100,)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, out.logits.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(hidden, out.hidden_states[-1].numpy(), atol=TOL,
                             rtol=0)
  return config, params


def test_logits_and_hidden_match_transformers():
  tokens = np.random.default_rng(0).integers(0, 100, size=(2, 11))
  _compare(_model(), tokens)


def test_untied_head_and_inverse_layer_scaling_match():
  tokens = np.random.default_rng(1).integers(0, 100, size=(1, 24))
  config, params = _compare(
      _model(seed=1, tie_word_embeddings=False,
             scale_attn_by_inverse_layer_idx=True, n_inner=48,
             activation_function='gelu'), tokens)
  assert 'lm_head' in params and config.n_inner == 48


def test_round_trip_and_unprefixed_keys():
  model = _model(seed=2)
  state = {k: v for k, v in _state(model).items()
           if not k.endswith(('.attn.bias', '.attn.masked_bias'))
           and k != 'lm_head.weight'}
  config = gpt2.from_hf_config(model.config.to_dict())
  params = gpt2.params_from_hf(state, config)
  back = gpt2.params_to_hf(params, config)
  assert sorted(back) == sorted(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  bare = {k.removeprefix('transformer.'): v for k, v in state.items()}
  again = gpt2.params_from_hf(bare, config)
  assert jax.tree.all(jax.tree.map(np.array_equal, again, params))
  hf_json = gpt2.to_hf_config(config)
  assert gpt2.from_hf_config(hf_json) == config
  transformers.GPT2LMHeadModel(
      transformers.GPT2Config.from_dict(hf_json)).load_state_dict(
          {k: torch.tensor(v) for k, v in back.items()}, strict=False)


def test_vmap_grad_with_dropout():
  module, config = build_model('gpt2', **dict(TINY, n_layer=1))
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 100, (3, 1, 8)))
  params = jax.jit(module.init)(jax.random.key(0), tokens[0])['params']

  def loss(p, x, key):
    logits = module.apply({'params': p}, x, deterministic=False,
                          rngs={'dropout': key})
    logp = jax.nn.log_softmax(logits[:, :-1])
    return -jnp.take_along_axis(logp, x[:, 1:, None], -1).mean()

  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(
      params, tokens, jax.random.split(jax.random.key(1), 3))
  g = grads['h_0']['attn']['c_attn']['kernel']
  assert g.shape == (3, 32, 96) and bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(grads['wte']['embedding']).max()) > 0
  with pytest.raises(ValueError, match='n_positions'):
    module.apply({'params': params}, jnp.zeros((1, 25), jnp.int32))
  with pytest.raises(ValueError, match='n_embd'):
    build_model('gpt2', n_embd=30, n_head=4)


def test_bfloat16_params():
  module, config = build_model('gpt2', param_dtype='bfloat16',
                               dtype='bfloat16', **dict(TINY, n_layer=1))
  tokens = jnp.zeros((1, 5), jnp.int32)
  params = jax.jit(module.init)(jax.random.key(0), tokens)['params']
  assert params['wte']['embedding'].dtype == jnp.bfloat16
  logits = module.apply({'params': params}, tokens)
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
  hf = gpt2.params_to_hf(params, config)
  assert hf['transformer.wte.weight'].dtype == jnp.bfloat16
