"""Book-keeping clipping against the vmap engine (dpjax.clipping)."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import bookkeeping as bk
from dpjax import clipping
from dpjax import models
from dpjax.model_setup import _lm_fns

B, T, V = 6, 16, 48
RTOL = 1e-5
# Unoptimised XLA:CPU: compiles ~3x faster at these tiny shapes.
_FAST = {'xla_backend_optimization_level': 0}


def _jit(fn, *args):
  """`fn(*args)`, jitted and compiled without XLA's backend optimisation."""
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)(*args)


@functools.lru_cache(maxsize=None)
def _setup(tied: bool):
  """A tiny llama (GQA, q/k/v biases), a batch with padding and zero
  weights, and the vmap engine's clipped sum and norms."""
  module, cfg = models.build_model(
      'llama', vocab_size=V, hidden_size=32, intermediate_size=48,
      num_layers=1, num_heads=4, num_kv_heads=2, qkv_bias=True,
      tie_embeddings=tied)
  params = _jit(module.init, jax.random.key(0), jnp.zeros((1, T), jnp.int32))
  # Spread the weights so that per-example norms differ widely.
  leaves, treedef = jax.tree.flatten(params['params'])
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(treedef, [
      x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  rng = np.random.default_rng(0)
  toks = rng.integers(0, V, (B, T + 1))
  w = np.ones((B, T), np.float32)
  w[1, 5:] = 0          # a short record
  w[4, ::2] = 0         # scattered zero weights
  batch = {'inputs': jnp.asarray(toks[:, :-1], jnp.int32),
           'targets': jnp.asarray(toks[:, 1:], jnp.int32),
           'weights': jnp.asarray(w)}
  mask = jnp.asarray([1, 1, 0, 1, 1, 1], jnp.float32)   # row 2 is padding
  loss_fn, _ = _lm_fns(module, cfg, lambda t, f: t)
  record = lambda p, ex, k: loss_fn(p, {}, ex, k)
  # The vmap engine's own functions: per-example grads, then clipped_sum.
  _, grads = _jit(clipping.per_example_grads(record), params, batch,
                  jax.random.split(jax.random.key(2), B))
  # A clip norm that clips about half of the rows.
  clip = float(np.median(np.asarray(clipping.global_norms(grads))))
  ref, ref_norms = _jit(functools.partial(clipping.clipped_sum,
                                          l2_clip_norm=clip), grads, mask)
  return module, params, batch, mask, clip, ref, np.asarray(ref_norms)


def _run(tied, method, microbatch_size=3):
  module, params, batch, mask, clip, _, _ = _setup(tied)
  return _jit(lambda p, b, m: bk.clipped_sum_bk(
      module, p, b, m, clip, method=method, microbatch_size=microbatch_size),
              params, batch, mask)


def _max_rel(tree, ref):
  """max over leaves of max|a - b| / max|b|."""
  return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))) /
                   np.max(np.abs(np.asarray(b))))
             for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref)))


@pytest.mark.parametrize('tied', [False, True])
@pytest.mark.parametrize('method', ['gram', 'instantiate', 'auto'])
def test_equals_vmap_engine(tied, method):
  _, _, _, mask, clip, ref, ref_norms = _setup(tied)
  out = _run(tied, method)
  assert jax.tree.structure(out.clipped_sum) == jax.tree.structure(ref)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(out.clipped_sum))
  norms = np.asarray(out.norms)
  np.testing.assert_allclose(norms, ref_norms, rtol=RTOL)
  # The comparison clips some real rows and leaves others unclipped.
  real = np.asarray(mask) > 0
  assert (norms[real] > clip).any() and (norms[real] < clip).any()
  assert _max_rel(out.clipped_sum, ref) < RTOL


def test_auto_mixes_gram_and_instantiate():
  module, params, batch, _, _, _, _ = _setup(False)
  leaves = bk.plan(module, params, jax.tree.map(lambda x: x[:3], batch)).leaves
  choices = {k: c for k, (c, _) in leaves.items()}
  # 2 T^2 = 512: q_proj 32x32 -> gram, k_proj 32x16 -> instantiate.
  assert choices['layers_0/self_attn/q_proj/kernel'] == 'gram'
  assert choices['layers_0/self_attn/k_proj/kernel'] == 'instantiate'
  assert choices['layers_0/self_attn/k_proj/bias'] == 'vector'
  assert set(leaves) == set(bk._flat_paths(params))


def test_tied_embedding_has_both_uses():
  module, params, batch, _, _, _, _ = _setup(True)
  leaves = bk.plan(module, params, batch).leaves
  _, keys = leaves['embed_tokens/embedding']
  assert keys == ('embed_tokens:__call__:0', 'embed_tokens:attend:0')


def test_planted_bugs_are_caught(monkeypatch):
  """Dropping the tied cross term, or the mask, breaks the equality."""
  _, _, _, _, _, ref, ref_norms = _setup(True)
  real = bk._sq_norms

  def no_cross(choice, fs, shape):
    return sum(real(choice, [f], shape) for f in fs)
  monkeypatch.setattr(bk, '_sq_norms', no_cross)
  out = _run(True, 'gram')
  assert np.max(np.abs(np.asarray(out.norms) - ref_norms) / ref_norms) > 1e-3
  monkeypatch.undo()

  monkeypatch.setattr(bk.clipping, 'clip_factors',
                      lambda n, m, c: jnp.minimum(1.0, c / n))  # no mask
  out = _run(True, 'gram')
  assert _max_rel(out.clipped_sum, ref) > 1e-3


class _Uncovered(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(V, 8, name='embed')(tokens)
    temperature = self.param('temperature', nn.initializers.ones, ())
    return nn.Dense(V, name='head')(x) / temperature


def test_coverage_check_names_uncovered_leaf():
  module = _Uncovered()
  tokens = jnp.zeros((2, 4), jnp.int32)
  params = module.init(jax.random.key(0), tokens)['params']
  batch = {'inputs': tokens, 'targets': tokens,
           'weights': jnp.ones((2, 4), jnp.float32)}
  with pytest.raises(ValueError, match='temperature'):
    bk.clipped_sum_bk(module, params, batch, jnp.ones((2,)), 1.0)
  # Without the extra leaf (frozen), the rest is covered.
  rest = {k: v for k, v in params.items() if k != 'temperature'}
  with pytest.raises(ValueError, match='not covered'):
    bk.plan(module, params, batch)
  assert set(bk.plan(module, rest, batch, apply_fn=lambda p, b: module.apply(
      {'params': {**p, 'temperature': params['temperature']}},
      b['inputs'])).leaves) == set(bk._flat_paths(rest))


def test_refuses_dropout_and_bad_method():
  module, _ = models.build_model('llama', vocab_size=V, hidden_size=32,
                                 intermediate_size=48, num_layers=1,
                                 num_heads=4, dropout_rate=0.1)
  tokens = jnp.zeros((2, 4), jnp.int32)
  params = jax.eval_shape(module.init, jax.random.key(0), tokens)['params']
  batch = {'inputs': tokens, 'targets': tokens,
           'weights': jnp.ones((2, 4), jnp.float32)}
  with pytest.raises(ValueError, match='dropout'):
    bk.plan(module, params, batch)
  with pytest.raises(ValueError, match='method'):
    bk.plan(module, params, batch, method='ghost')


def test_nan_in_padded_row_does_not_leak():
  """A NaN loss on the padded row (mask 0) leaves the sum equal and finite."""
  module, params, batch, mask, clip, ref, ref_norms = _setup(False)

  def nan_row_loss(logits, b):
    bad = jnp.arange(B) == 2                      # the padded row
    return jnp.where(bad, jnp.nan, 1.0) * bk.lm_loss(logits, b)
  out = _jit(lambda p, b, m: bk.clipped_sum_bk(
      module, p, b, m, clip, loss_fn=nan_row_loss, method='gram'),
             params, batch, mask)
  assert np.isnan(np.asarray(out.norms)[2])
  np.testing.assert_allclose(np.delete(np.asarray(out.norms), 2),
                             np.delete(ref_norms, 2), rtol=RTOL)
  assert _max_rel(out.clipped_sum, ref) < RTOL
