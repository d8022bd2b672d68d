"""Book-keeping clipping against the vmap engine (dpjax.clipping).

Every case runs `bookkeeping.clipped_sum` and the vmap engine
`clipping.microbatched_clipped_sum` on the trainer's own per-record loss
(`dpjax.model_setup._lm_fns` / `_classification_fns`), the same keys, mask
(one padded row) and clip style, with a clip norm that clips some rows and
not others; float32, max|a-b|/max|b| per leaf <= 1e-5, norms <= 1e-5.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import bk_norms
from dpjax import bookkeeping as bk
from dpjax import clipping
from dpjax import models
from dpjax.model_setup import _classification_fns, _lm_fns
from dpjax.models import peft as peft_lib

B, T, V = 6, 16, 48
RTOL = 1e-5
# Unoptimised XLA:CPU: compiles ~3x faster at these tiny shapes.
_FAST = {'xla_backend_optimization_level': 0}
_LLAMA = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_layers=1,
              num_heads=4, num_kv_heads=2, qkv_bias=True)


def _jit(fn, *args):
  """`fn(*args)`, jitted and compiled without XLA's backend optimisation."""
  return jax.jit(fn).lower(*args).compile(compiler_options=_FAST)(*args)


def _build(name):
  """(module, model config, classification?) of a tiny model."""
  if name.startswith('llama'):
    fields = dict(_LLAMA, tie_embeddings=name == 'llama_tied',
                  dropout_rate=0.1 if name == 'llama_dropout' else 0.0)
    return models.build_model('llama', **fields) + (False,)
  if name == 'gpt2':
    return models.build_model(
        'gpt2', vocab_size=V, n_positions=T, n_embd=32, n_layer=1, n_head=4,
        n_inner=48, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0) + (False,)
  if name == 'bitnet':
    return models.build_model(
        'bitnet', vocab_size=V, hidden_size=32, intermediate_size=48,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=T, attention_bias=True,
        quantization='online') + (False,)
  assert name == 'bert'
  return models.build_model(
      'bert', vocab_size=V, hidden_size=32, num_hidden_layers=1,
      num_attention_heads=4, intermediate_size=48, max_position_embeddings=T,
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      num_labels=3) + (True,)


def _spread(tree, seed):
  """Host-drawn weights (no compile), spread so that per-example norms
  differ widely: 1 + 0.2 N(0, 1) for norm scales, 0.2 N(0, 1) elsewhere."""
  rng = np.random.default_rng(seed)
  return {k: _spread(v, seed + 1) if isinstance(v, dict) else jnp.asarray(
      (k == 'scale') + 0.2 * rng.standard_normal(v.shape), jnp.float32)
          for k, v in tree.items()}


def _batch(cls):
  rng = np.random.default_rng(0)
  toks = rng.integers(0, V, (B, T + 1))
  if cls:
    am = np.ones((B, T), np.int32)
    am[1, 5:] = 0
    am[4, 9:] = 0
    types = np.zeros((B, T), np.int32)
    types[:, 8:] = 1
    return {'inputs': jnp.asarray(toks[:, :-1] * am, jnp.int32),
            'attention_mask': jnp.asarray(am),
            'token_type_ids': jnp.asarray(types),
            'label': jnp.asarray(rng.integers(0, 3, (B,)), jnp.int32)}
  w = np.ones((B, T), np.float32)
  w[1, 5:] = 0          # a short record
  w[4, ::2] = 0         # scattered zero weights
  return {'inputs': jnp.asarray(toks[:, :-1], jnp.int32),
          'targets': jnp.asarray(toks[:, 1:], jnp.int32),
          'weights': jnp.asarray(w)}


MASK = jnp.asarray([1, 1, 0, 1, 1, 1], jnp.float32)   # row 2 is padding
KEYS = jax.random.split(jax.random.key(2), B)


class Case:
  """A model, its trainable/frozen split, record loss and batch."""

  def __init__(self, name, peft='full'):
    module, cfg, cls = _build(name)
    self.module, self.cfg = module, cfg
    params = _spread(jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(
        (1, T), jnp.int32))['params'], 1)
    self.lora_scale = None
    if peft == 'full':
      trainable, frozen, combine = params, {}, lambda t, f: t
    else:
      spec = peft_lib.Peft(mode=peft, rank=4, alpha=8.0,
                           targets=('.*self_attn/(q|v)_proj',))
      trainable, frozen = spec.split(params, jax.random.key(3))
      combine = spec.combine
      if peft == 'lora':   # B = 0 at init: spread it too
        trainable = _spread(trainable, 4)
        self.lora_scale = spec.alpha / spec.rank
    fns = _classification_fns if cls else _lm_fns
    loss_fn, _ = fns(module, cfg, combine)
    self.record = lambda t, ex, k: loss_fn(t, frozen, ex, k)
    self.trainable, self.batch = trainable, _batch(cls)
    self._refs = {}
    self.clip = None

  def ref(self, style, keys=KEYS, mask=MASK):
    """The vmap engine's (sum, stats, norms), one compile per style.

    The first call sets the clip norm: the median real norm (any style
    returns the flat norms), so that some real rows are clipped and some
    not.
    """
    if style not in self._refs:
      self._refs[style] = jax.jit(lambda t, b, m, k, c: (
          clipping.microbatched_clipped_sum(
              self.record, t, b, m, k, l2_clip_norm=c, microbatch_size=B,
              clip_style=style))).lower(
                  self.trainable, self.batch, mask, keys, 1.0).compile(
                      compiler_options=_FAST)
    if self.clip is None:
      norms = np.asarray(self._refs[style](self.trainable, self.batch, MASK,
                                           KEYS, 1.0)[2])
      self.clip = float(np.median(norms[np.asarray(MASK) > 0]))
    out = self._refs[style](self.trainable, self.batch, mask, keys,
                            self.clip)
    return jax.tree.map(np.array, out)

  def bk(self, style='flat', method='auto', microbatch_size=3, keys=KEYS,
         mask=MASK, **kw):
    out = _jit(lambda t, b, m, k: bk.clipped_sum(
        self.record, t, b, m, k, clip_norm=self.clip,
        microbatch_size=microbatch_size, clip_style=style, method=method,
        lora_scale=self.lora_scale, **kw), self.trainable, self.batch, mask,
               keys)
    return jax.tree.map(np.array, out)


@functools.lru_cache(maxsize=None)
def _case(name, peft='full'):
  return Case(name, peft)


def _max_rel(tree, ref):
  """max over leaves of max|a - b| / max|b|.

  A leaf whose exact gradient is 0 (BERT's key bias: softmax ignores a shift
  shared by all keys) holds only rounding noise (max|b| < 1e-5 of the
  largest leaf's); it is compared relative to the largest leaf instead.
  """
  leaves = list(zip(jax.tree.leaves(tree), jax.tree.leaves(ref)))
  top = max(float(np.max(np.abs(b))) for _, b in leaves)
  scale = lambda b: float(np.max(np.abs(b)))
  return max(float(np.max(np.abs(a - b))) / (
      scale(b) if scale(b) >= 1e-5 * top else top) for a, b in leaves)


def _assert_equal(out, ref, clip=None):
  (s, stats, norms), (rs, rstats, rnorms) = out, ref
  assert jax.tree.structure(s) == jax.tree.structure(rs)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(s))
  np.testing.assert_allclose(norms, rnorms, rtol=RTOL)
  assert _max_rel(s, rs) < RTOL, _max_rel(s, rs)
  np.testing.assert_allclose(np.asarray(stats), np.asarray(rstats), rtol=RTOL)
  if clip is not None:    # some real rows clipped, some not
    real = np.asarray(MASK) > 0
    assert (norms[real] > clip).any() and (norms[real] < clip).any()
  return _max_rel(s, rs)


CASES = [  # (model, peft, clip style, method, micro-batch size)
    ('llama', 'full', 'flat', 'gram', 3),
    ('llama', 'full', 'flat', 'instantiate', 2),
    ('llama_tied', 'full', 'flat', 'module_api', 3),   # clipped_sum_bk
    ('gpt2', 'full', 'per_layer', 'auto', 3),
    ('bitnet', 'full', 'flat', 'auto', 2),
    ('bert', 'full', 'automatic', 'auto', 3),
    ('llama', 'lora', 'per_layer', 'auto', 3),
    ('llama', 'bias_only', 'flat', 'auto', 3),
    ('llama', 'norms', 'flat', 'auto', 2),
    ('llama_dropout', 'full', 'flat', 'auto', 3),
]


@pytest.mark.parametrize('name,peft,style,method,micro', CASES)
def test_equals_vmap_engine(name, peft, style, method, micro):
  case = _case(name, peft)
  ref = case.ref(style)
  if method == 'module_api':   # the module + batch-loss API, method 'gram'
    out = _jit(lambda p, b, m: bk.clipped_sum_bk(
        case.module, p, b, m, case.clip, method='gram',
        microbatch_size=micro), case.trainable, case.batch, MASK)
    out = (out.clipped_sum, ref[1], np.asarray(out.norms))
  else:
    out = case.bk(style, method, micro)
  _assert_equal(out, ref, case.clip)


def test_plans():
  """auto mixes Gram and instantiate; tied uses; LoRA leaves; BERT's taps."""
  llama = _case('llama')
  shapes = jax.tree.map(lambda x: x[:3], llama.batch)
  p = bk.check(llama.record, llama.trainable, shapes, KEYS[:3])
  choices = p.choices()
  # 2 T^2 = 512: q_proj 32x32 -> gram, k_proj 32x16 -> instantiate.
  assert choices['layers_0/self_attn/q_proj/kernel'] == 'gram'
  assert choices['layers_0/self_attn/k_proj/kernel'] == 'instantiate'
  assert choices['layers_0/self_attn/k_proj/bias'] == 'vector'
  assert list(choices) == list(bk._flat_paths(llama.trainable))
  tied = _case('llama_tied')
  _, keys = bk.check(tied.record, tied.trainable, shapes, KEYS[:3]).leaves[
      'embed_tokens/embedding']
  assert keys == ('embed_tokens:__call__:0', 'embed_tokens:attend:0')
  lora = _case('llama', 'lora')
  p = bk.check(lora.record, lora.trainable, shapes, KEYS[:3], lora_scale=2.0)
  assert set(p.choices()) == {f'layers_0/self_attn/{m}_proj/lora_{x}'
                              for m in 'qv' for x in 'ab'}
  assert {c.path[-1] for c in p.calls} == {'q_proj', 'v_proj'}  # only those
  with pytest.raises(ValueError, match='lora_scale'):
    bk.check(lora.record, lora.trainable, shapes, KEYS[:3])
  bert = _case('bert')
  p = bk.check(bert.record, bert.trainable,
               jax.tree.map(lambda x: x[:3], bert.batch), KEYS[:3])
  kinds = collections_count(c.kind for c in p.calls)
  assert kinds == {'embed': 3, 'ln': 3, 'dense': 8}


def collections_count(xs):
  out = {}
  for x in xs:
    out[x] = out.get(x, 0) + 1
  return out


def test_dropout_keys_matter():
  case = _case('llama_dropout')
  other = jax.random.split(jax.random.key(9), B)
  ref = case.ref('flat', keys=other)
  out = case.bk(keys=other)
  _assert_equal(out, ref)
  assert _max_rel(out[0], case.ref('flat')[0]) > 1e-3


def test_planted_bugs_are_caught(monkeypatch):
  """Dropping the tied cross term, the mask, or one leaf's per-layer factor
  breaks the equality."""
  case = _case('llama_tied')
  ref = case.ref('flat')
  real = bk_norms.sq_norms
  monkeypatch.setattr(bk_norms, 'sq_norms', lambda choice, fs, shape: sum(
      real(choice, [f], shape) for f in fs))
  out = case.bk(method='gram')
  assert np.max(np.abs(out[2] - ref[2]) / ref[2]) > 1e-3
  monkeypatch.undo()

  lora = _case('llama', 'lora')
  ref = lora.ref('per_layer')
  styles = clipping.style_clip_factors
  monkeypatch.setattr(bk.clipping, 'style_clip_factors',
                      lambda n, m, c, **kw: styles(n, jnp.ones_like(m), c,
                                                   **kw))   # mask ignored
  assert _max_rel(lora.bk('per_layer')[0], ref[0]) > 1e-3
  monkeypatch.undo()

  def flat_for_leaf0(n, m, c, **kw):
    f, norms, clipped = styles(n, m, c, **kw)
    flat, _, _ = styles(n, m, c, style='flat')
    return f.at[:, 0].set(flat[:, 0]), norms, clipped
  monkeypatch.setattr(bk.clipping, 'style_clip_factors', flat_for_leaf0)
  assert _max_rel(lora.bk('per_layer')[0], ref[0]) > 1e-3


def test_skip_padding_and_nan_in_padded_row():
  """With m=2 the strided micro-batch {2, 5} is all padding: skipped (zero
  norms) and the sum is unchanged; a NaN loss on padded row 1 (computed
  with real row 4) leaves the sum finite and equal."""
  case = _case('llama')
  mask = jnp.asarray([1, 0, 0, 1, 1, 0], jnp.float32)
  ref = case.ref('flat', mask=mask)
  batch = dict(case.batch, bad=jnp.arange(B) == 1)
  record = lambda t, ex, k: jnp.where(ex['bad'], jnp.nan, 1.0) * case.record(
      t, ex, k)
  out = _jit(lambda t, b: bk.clipped_sum(
      record, t, b, mask, KEYS, clip_norm=case.clip, microbatch_size=2,
      skip_padding_microbatches=True), case.trainable, batch)
  out = jax.tree.map(np.array, out)
  assert np.isnan(out[2][1]) and np.all(out[2][[2, 5]] == 0)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(out[0]))
  ref[2][[1, 2, 5]] = out[2][[1, 2, 5]]
  _assert_equal(out, ref)


class _Uncovered(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(V, 8, name='embed')(tokens)
    temperature = self.param('temperature', nn.initializers.ones, ())
    return nn.Dense(V, name='head')(x) / temperature


def test_refusals():
  """NotCovered names the leaf; L1, remat, a bad method are refused."""
  module = _Uncovered()
  tokens = jnp.zeros((2, 4), jnp.int32)
  params = module.init(jax.random.key(0), tokens)['params']
  batch = {'inputs': tokens, 'targets': tokens,
           'weights': jnp.ones((2, 4), jnp.float32)}
  with pytest.raises(bk.NotCovered, match="'temperature'.*not covered"):
    bk.clipped_sum_bk(module, params, batch, jnp.ones((2,)), 1.0)
  rest = {k: v for k, v in params.items() if k != 'temperature'}
  apply = lambda p, b: module.apply(
      {'params': {**p, 'temperature': params['temperature']}}, b['inputs'])
  assert set(bk.plan(module, rest, batch, apply_fn=apply).leaves) == set(
      bk._flat_paths(rest))

  case = _case('llama')
  shapes = jax.tree.map(lambda x: x[:3], case.batch)
  with pytest.raises(ValueError, match='L2 norms only.*vmap engine'):
    case.bk(norm_ord=1)
  with pytest.raises(ValueError, match='method'):
    bk.check(case.record, case.trainable, shapes, KEYS[:3], method='ghost')
  module, cfg = models.build_model('llama', **_LLAMA, remat=True)
  loss_fn, _ = _lm_fns(module, cfg, lambda t, f: t)
  with pytest.raises(ValueError, match='remat'):
    bk.check(lambda t, ex, k: loss_fn(t, {}, ex, k), case.trainable, shapes,
             KEYS[:3])
