"""Tests for dpjax.models.peft (LoRA, bias-only, norms) on a tiny Qwen2."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax.models import llama
from dpjax.models import peft

TINY = dict(family='qwen2', vocab_size=64, hidden_size=32,
            intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)
TARGETS = ('.*self_attn/(q|v)_proj',)


@pytest.fixture(scope='module')
def model():
  module, _ = llama.build(**TINY)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (3, 8)),
                       jnp.int32)
  params = module.init(jax.random.key(0), tokens)['params']
  return module, params, tokens


def test_targets():
  module, _ = llama.build(**TINY)
  params = module.init(jax.random.key(0),
                       jnp.zeros((1, 2), jnp.int32))['params']
  assert peft.lora_target_paths(params, TARGETS) == [
      'layers_0/self_attn/q_proj', 'layers_0/self_attn/v_proj',
      'layers_1/self_attn/q_proj', 'layers_1/self_attn/v_proj']
  assert peft.lora_target_paths(params, 'down_proj') == [
      'layers_0/mlp/down_proj', 'layers_1/mlp/down_proj']
  with pytest.raises(ValueError, match='match no Dense kernel'):
    peft.lora_target_paths(params, 'nothing_proj')


def test_lora_zero_b_is_base_exactly(model):
  module, params, tokens = model
  lora = peft.lora_init(jax.random.key(1), params, rank=4, alpha=8.0,
                        targets=TARGETS)
  a = lora['layers_0']['self_attn']['q_proj']['lora_a']
  b = lora['layers_0']['self_attn']['q_proj']['lora_b']
  assert a.shape == (32, 4) and b.shape == (4, 32) and not np.any(b)
  assert lora['layers_1']['self_attn']['v_proj']['lora_b'].shape == (4, 16)
  assert np.std(a) > 0
  merged = peft.lora_merge(params, lora, alpha=8.0, rank=4)
  np.testing.assert_array_equal(
      jax.jit(module.apply)({'params': merged}, tokens),
      jax.jit(module.apply)({'params': params}, tokens))


def test_lora_merge_formula_and_export(model):
  _, params, _ = model
  p = peft.Peft('lora', rank=2, alpha=6.0, targets=TARGETS)
  trainable, frozen = p.split(params, key=jax.random.key(2))
  trainable = jax.tree.map(
      lambda x: jax.random.normal(jax.random.key(3), x.shape), trainable)
  exported = p.export(trainable, frozen)
  assert jax.tree.structure(exported) == jax.tree.structure(params)
  for layer in ('layers_0', 'layers_1'):
    for proj in ('q_proj', 'v_proj', 'k_proj', 'o_proj'):
      w = np.asarray(params[layer]['self_attn'][proj]['kernel'])
      got = np.asarray(exported[layer]['self_attn'][proj]['kernel'])
      if proj in ('q_proj', 'v_proj'):
        ab = trainable[layer]['self_attn'][proj]
        want = w + 3.0 * np.asarray(ab['lora_a']) @ np.asarray(ab['lora_b'])
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
      else:
        np.testing.assert_array_equal(got, w)
  np.testing.assert_array_equal(exported['norm']['scale'],
                                params['norm']['scale'])


def test_per_example_grads_wrt_lora_only(model):
  module, params, tokens = model
  p = peft.Peft('lora', rank=4, alpha=8.0, targets=TARGETS)
  trainable, frozen = p.split(params, key=jax.random.key(4))

  def loss(t, x):
    logits = module.apply({'params': p.combine(t, frozen)}, x[None])
    logp = jax.nn.log_softmax(logits[0, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, x[1:, None], -1))

  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(trainable,
                                                                tokens)
  g = grads['layers_1']['self_attn']['v_proj']
  assert g['lora_a'].shape == (3, 32, 4) and g['lora_b'].shape == (3, 4, 16)
  # With B = 0 the gradient reaches B but not A.
  assert not np.any(g['lora_a']) and np.all(np.any(g['lora_b'], axis=(1, 2)))
  one = jax.jit(jax.grad(loss))(trainable, tokens[2])
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b[2], atol=1e-6, rtol=1e-5)
  # LoRA gradient of B equals A^T (scale * dL/dW) by the chain rule.
  def base_loss(prm, x):
    logits = module.apply({'params': prm}, x[None])
    logp = jax.nn.log_softmax(logits[0, :-1])
    return -jnp.mean(jnp.take_along_axis(logp, x[1:, None], -1))
  gw = jax.jit(jax.grad(base_loss))(params, tokens[2])
  a = trainable['layers_1']['self_attn']['v_proj']['lora_a']
  np.testing.assert_allclose(
      one['layers_1']['self_attn']['v_proj']['lora_b'],
      2.0 * a.T @ gw['layers_1']['self_attn']['v_proj']['kernel'],
      atol=1e-6, rtol=1e-4)


def test_bias_only_and_norms_split_combine(model):
  _, params, _ = model
  trainable, frozen = peft.bias_only_split(params)
  paths = peft.trainable_paths(trainable)
  assert paths and all(x.endswith('/bias') for x in paths)
  assert len(paths) == 6  # q, k, v biases in 2 layers (Qwen2)
  assert not any(x.endswith('/bias') for x in peft.trainable_paths(frozen))
  back = peft.bias_only_merge(trainable, frozen)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  jax.tree.map(np.testing.assert_array_equal, back, params)

  norms = peft.Peft('norms')
  t, f = norms.split(params)
  assert peft.trainable_paths(t) == [
      'layers_0/input_layernorm/scale',
      'layers_0/post_attention_layernorm/scale',
      'layers_1/input_layernorm/scale',
      'layers_1/post_attention_layernorm/scale', 'norm/scale']
  jax.tree.map(np.testing.assert_array_equal, norms.combine(t, f), params)

  full = peft.Peft('full')
  t, f = full.split(params)
  assert peft.count(t) == peft.count(params) and not f
  with pytest.raises(ValueError, match='overlap'):
    peft.merge_trees(params, params)


def test_bias_only_on_llama_raises_and_bad_modes():
  module, _ = llama.build(**dict(TINY, family='llama'))
  params = module.init(jax.random.key(0),
                       jnp.zeros((1, 2), jnp.int32))['params']
  with pytest.raises(ValueError, match='no bias'):
    peft.Peft('bias_only').split(params)
  with pytest.raises(ValueError, match='mode'):
    peft.Peft('prefix')
  with pytest.raises(ValueError, match='key'):
    peft.Peft('lora').split(params)
  with pytest.raises(ValueError, match='rank'):
    peft.Peft('lora', rank=0)
