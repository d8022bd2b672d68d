"""Llama / Qwen2 decoder-only language models in Flax linen.

One module covers both families: RMSNorm, rotary position embeddings (the
Hugging Face "rotate_half" convention), grouped-query attention with a causal
mask, a SwiGLU MLP, optional biases on the Q/K/V projections (Qwen2) and
optional tied input/output embeddings (SmolLM2, Qwen2.5-0.5B).

Parameter names follow Hugging Face (`embed_tokens`, `layers_{i}/self_attn/
q_proj`, ...) with Dense kernels stored `[in, out]` (the transpose of torch's
`weight`), so `params_from_hf` / `params_to_hf` are renames and transposes.

Usage:
  module, config = build(family='llama', vocab_size=64, hidden_size=32, ...)
  params = module.init(jax.random.key(0), tokens)['params']
  logits = module.apply({'params': params}, tokens)  # [B, T, V] float32
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.models import rope as rope_lib

FAMILIES = ('llama', 'qwen2')
# The fields that carry `config.model.dropout_rate` (see
# `dpjax.models.dropout_fields`): residual-branch dropout.
DROPOUT_FIELDS = ('dropout_rate',)
_ARCHITECTURES = {'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM'}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Hyper-parameters of a Llama / Qwen2 decoder.

  Attributes:
    family: 'llama' or 'qwen2'.
    vocab_size: number of token ids.
    hidden_size: width of the residual stream.
    intermediate_size: width of the SwiGLU MLP.
    num_layers: number of decoder blocks.
    num_heads: number of query heads.
    num_kv_heads: number of key/value heads (divides `num_heads`); None means
      `num_heads` (plain multi-head attention).
    head_dim: per-head width; None means `hidden_size // num_heads`.
    rope_theta: base of the rotary frequencies.
    rope_scaling: a `dpjax.models.rope.RopeScaling` (linear, llama3, yarn,
      longrope, dynamic) or None for plain RoPE; a dict of its fields is
      accepted (what `dataclasses.asdict` gives).
    rms_norm_eps: epsilon of every RMSNorm.
    qkv_bias: biases on q/k/v projections; None means the family default
      (True for qwen2, False for llama).
    o_bias: bias on the output projection (Llama's `attention_bias` puts a
      bias on all four projections; Qwen2 never has one here).
    tie_embeddings: the output projection reuses `embed_tokens`.
    max_position_embeddings: longest sequence the model was trained for
      (recorded for export; RoPE itself has no limit).
    dropout_rate: dropout on the attention and MLP residual branches (rng
      collection 'dropout'; only when `deterministic=False`).
    dtype: compute dtype name ('float32', 'bfloat16', ...). Logits are always
      returned in float32.
    param_dtype: parameter dtype name.
    remat: rematerialize each decoder block in the backward pass.
  """
  family: str = 'llama'
  vocab_size: int = 64
  hidden_size: int = 32
  intermediate_size: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int | None = None
  head_dim: int | None = None
  rope_theta: float = 10000.0
  rope_scaling: rope_lib.RopeScaling | None = None
  rms_norm_eps: float = 1e-5
  qkv_bias: bool | None = None
  o_bias: bool = False
  tie_embeddings: bool = False
  max_position_embeddings: int = 2048
  dropout_rate: float = 0.0
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: bool = False

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f'family must be one of {FAMILIES}, got {self.family!r}')
    for name in ('vocab_size', 'hidden_size', 'intermediate_size', 'num_layers',
                 'num_heads'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f'{name} must be a positive int, got {value!r}')
    if self.num_kv_heads is None:
      object.__setattr__(self, 'num_kv_heads', self.num_heads)
    if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_kv_heads must be a positive divisor of num_heads='
                       f'{self.num_heads}, got {self.num_kv_heads}')
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise ValueError(f'hidden_size={self.hidden_size} is not divisible by '
                         f'num_heads={self.num_heads}; give head_dim '
                         f'explicitly')
      object.__setattr__(self, 'head_dim', self.hidden_size // self.num_heads)
    if self.head_dim <= 0 or self.head_dim % 2:
      raise ValueError(f'head_dim must be a positive even int, got '
                       f'{self.head_dim}')
    if self.qkv_bias is None:
      object.__setattr__(self, 'qkv_bias', self.family == 'qwen2')
    object.__setattr__(self, 'rope_scaling',
                       rope_lib.scaling_from_fields(self.rope_scaling))
    rope_lib.inv_freqs(self.rope_scaling, self.rope_theta, self.head_dim)
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'dropout_rate must be in [0, 1), got '
                       f'{self.dropout_rate}')
    for name in ('dtype', 'param_dtype'):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f'{name} must name a dtype such as "float32" or '
                         f'"bfloat16", got {getattr(self, name)!r}') from e


def build(**fields: Any) -> tuple[nn.Module, LlamaConfig]:
  """Builds `(module, config)` from `LlamaConfig` fields.

  Raises:
    ValueError: an unknown field or an invalid value.
  """
  known = {f.name for f in dataclasses.fields(LlamaConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'model config: unknown field(s) {unknown} for the llama '
                     f'family; valid fields are {sorted(known)}')
  config = LlamaConfig(**fields)
  return LlamaForCausalLM(config), config


# ----------------------------------------------------------------------------
# Modules.


class RMSNorm(nn.Module):
  """Root-mean-square norm, computed in float32, with a learned `scale`."""
  eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],),
                       self.param_dtype)
    xf = x.astype(jnp.float32)
    var = jnp.mean(xf * xf, axis=-1, keepdims=True)
    xf = xf * jax.lax.rsqrt(var + self.eps)
    return scale.astype(self.dtype) * xf.astype(self.dtype)


def rope_cos_sin(positions, head_dim: int, theta: float,
                 scaling: rope_lib.RopeScaling | None = None):
  """cos/sin tables `[..., T, head_dim]` for integer `positions[..., T]`."""
  return rope_lib.cos_sin(positions, head_dim, theta, scaling)


def _rotate_half(x):
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, cos, sin):
  """Rotates `x[B, T, H, D]` by tables `cos, sin[B, T, D]` (HF convention)."""
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  return x * cos + _rotate_half(x) * sin


def _dense(features, use_bias, cfg, name):
  return nn.Dense(features, use_bias=use_bias, dtype=jnp.dtype(cfg.dtype),
                  param_dtype=jnp.dtype(cfg.param_dtype),
                  kernel_init=nn.initializers.normal(0.02), name=name)


class Attention(nn.Module):
  """Grouped-query causal self-attention with rotary embeddings."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x, cos, sin, bias):
    cfg = self.config
    b, t, _ = x.shape
    h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = _dense(h * d, cfg.qkv_bias, cfg, 'q_proj')(x).reshape(b, t, h, d)
    k = _dense(kv * d, cfg.qkv_bias, cfg, 'k_proj')(x).reshape(b, t, kv, d)
    v = _dense(kv * d, cfg.qkv_bias, cfg, 'v_proj')(x).reshape(b, t, kv, d)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    q = q.reshape(b, t, kv, h // kv, d)
    scores = jnp.einsum('btkgd,bskd->bkgts', q, k).astype(jnp.float32)
    scores = scores / np.sqrt(d).astype(np.float32) + bias[:, None, None]
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum('bkgts,bskd->btkgd', probs, v).reshape(b, t, h * d)
    return _dense(cfg.hidden_size, cfg.o_bias, cfg, 'o_proj')(out)


class MLP(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    gate = _dense(cfg.intermediate_size, False, cfg, 'gate_proj')(x)
    up = _dense(cfg.intermediate_size, False, cfg, 'up_proj')(x)
    return _dense(cfg.hidden_size, False, cfg, 'down_proj')(nn.silu(gate) * up)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, x, cos, sin, bias, deterministic: bool = True):
    cfg = self.config
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    drop = nn.Dropout(cfg.dropout_rate)
    y = RMSNorm(cfg.rms_norm_eps, dt, pdt, name='input_layernorm')(x)
    y = Attention(cfg, name='self_attn')(y, cos, sin, bias)
    x = x + drop(y, deterministic=deterministic)
    y = RMSNorm(cfg.rms_norm_eps, dt, pdt, name='post_attention_layernorm')(x)
    y = MLP(cfg, name='mlp')(y)
    return x + drop(y, deterministic=deterministic)


class LlamaForCausalLM(nn.Module):
  """Decoder-only LM: tokens `[B, T]` int32 -> logits `[B, T, V]` float32."""
  config: LlamaConfig

  @nn.compact
  def __call__(self, tokens, deterministic: bool = True, attention_mask=None):
    """Returns float32 logits.

    Args:
      tokens: `[B, T]` int token ids.
      deterministic: False enables dropout (needs rngs={'dropout': key}).
      attention_mask: optional `[B, T]`, 1 for real tokens and 0 for padding
        (left or right). Padding keys are never attended to and positions
        count real tokens only; logits at padded positions are meaningless.
    """
    cfg = self.config
    dt, pdt = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    if tokens.ndim != 2:
      raise ValueError(f'tokens must have shape [B, T], got {tokens.shape}')
    b, t = tokens.shape
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))[None]
    if attention_mask is None:
      positions = jnp.broadcast_to(jnp.arange(t), (b, t))
      allowed = jnp.broadcast_to(causal, (b, t, t))
    else:
      mask = attention_mask.astype(bool)
      positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
      allowed = causal & mask[:, None, :]
      # A query with no visible key (left padding) may see itself: avoids NaN.
      allowed = allowed | (jnp.eye(t, dtype=bool)[None] & ~mask[:, :, None])
    bias = jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min / 2)
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta,
                            cfg.rope_scaling)

    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=dt,
                     param_dtype=pdt,
                     embedding_init=nn.initializers.normal(0.02),
                     name='embed_tokens')
    x = embed(tokens.astype(jnp.int32))
    layer_cls = DecoderLayer
    if cfg.remat:
      layer_cls = nn.remat(DecoderLayer, static_argnums=(5,))
    for i in range(cfg.num_layers):
      x = layer_cls(cfg, name=f'layers_{i}')(x, cos, sin, bias, deterministic)
    x = RMSNorm(cfg.rms_norm_eps, dt, pdt, name='norm')(x)
    if cfg.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = _dense(cfg.vocab_size, False, cfg, 'lm_head')(x)
    return logits.astype(jnp.float32)


# ----------------------------------------------------------------------------
# Hugging Face config and tensors.


def from_hf_config(config_json: Mapping[str, Any]) -> LlamaConfig:
  """Builds a `LlamaConfig` from a Hugging Face `config.json` dict.

  Raises:
    ValueError: an unsupported model type or feature (a RoPE that
      `dpjax.models.rope` cannot reproduce, MLP bias, an activation other
      than SiLU).
  """
  c = dict(config_json)
  family = c.get('model_type', 'llama')
  if family not in FAMILIES:
    raise ValueError(f'config.json model_type must be one of {FAMILIES} for '
                     f'dpjax.models.llama, got {family!r}')
  act = c.get('hidden_act', 'silu')
  if act not in ('silu', 'swish'):
    raise ValueError(f'config.json hidden_act={act!r} is not supported; only '
                     f'"silu"')
  rope_theta, rope_scaling = rope_lib.from_hf_config(c)
  if c.get('mlp_bias'):
    raise ValueError('config.json mlp_bias=true is not supported')
  if c.get('use_sliding_window'):
    raise ValueError('config.json use_sliding_window=true is not supported; '
                     'only full causal attention')
  if family == 'qwen2':
    qkv_bias, o_bias = True, False
  else:
    qkv_bias = o_bias = bool(c.get('attention_bias', False))
  return LlamaConfig(
      family=family,
      vocab_size=int(c['vocab_size']),
      hidden_size=int(c['hidden_size']),
      intermediate_size=int(c['intermediate_size']),
      num_layers=int(c['num_hidden_layers']),
      num_heads=int(c['num_attention_heads']),
      num_kv_heads=int(c.get('num_key_value_heads') or
                       c['num_attention_heads']),
      head_dim=c.get('head_dim'),
      rope_theta=rope_theta,
      rope_scaling=rope_scaling,
      rms_norm_eps=float(c.get('rms_norm_eps', 1e-6)),
      qkv_bias=qkv_bias,
      o_bias=o_bias,
      tie_embeddings=bool(c.get('tie_word_embeddings', False)),
      max_position_embeddings=int(c.get('max_position_embeddings', 2048)),
  )


def to_hf_config(config: LlamaConfig) -> dict[str, Any]:
  """Returns a `config.json` dict that `transformers` loads."""
  if config.family == 'qwen2' and (not config.qkv_bias or config.o_bias):
    raise ValueError('a qwen2 config exports only with qkv_bias=True and '
                     'o_bias=False (the Qwen2 layout)')
  if config.family == 'llama' and config.qkv_bias != config.o_bias:
    raise ValueError('a llama config exports only with qkv_bias == o_bias '
                     '(HF attention_bias covers all four projections)')
  out = {
      'architectures': [_ARCHITECTURES[config.family]],
      'model_type': config.family,
      'vocab_size': config.vocab_size,
      'hidden_size': config.hidden_size,
      'intermediate_size': config.intermediate_size,
      'num_hidden_layers': config.num_layers,
      'num_attention_heads': config.num_heads,
      'num_key_value_heads': config.num_kv_heads,
      'head_dim': config.head_dim,
      'hidden_act': 'silu',
      'rope_theta': config.rope_theta,
      'rope_scaling': None,
      'rope_parameters': {'rope_type': 'default',
                          'rope_theta': config.rope_theta},
      'rms_norm_eps': config.rms_norm_eps,
      'tie_word_embeddings': config.tie_embeddings,
      'max_position_embeddings': config.max_position_embeddings,
      'attention_dropout': 0.0,
      'torch_dtype': 'float32',
  }
  if config.rope_scaling is not None:
    out['rope_parameters'] = config.rope_scaling.to_hf(config.rope_theta)
    out['rope_scaling'] = dict(out['rope_parameters'])
  if config.family == 'llama':
    out['attention_bias'] = bool(config.qkv_bias)
    out['mlp_bias'] = False
  else:
    out['use_sliding_window'] = False
  return out


def _hf_layout(config: LlamaConfig) -> dict[str, tuple[tuple[str, ...], bool,
                                                       tuple[int, ...]]]:
  """HF tensor name -> (flax path, transposed, HF shape)."""
  c = config
  q_out, kv_out = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  out = {'model.embed_tokens.weight': (('embed_tokens', 'embedding'), False,
                                       (c.vocab_size, c.hidden_size)),
         'model.norm.weight': (('norm', 'scale'), False, (c.hidden_size,))}
  if not c.tie_embeddings:
    out['lm_head.weight'] = (('lm_head', 'kernel'), True,
                             (c.vocab_size, c.hidden_size))
  for i in range(c.num_layers):
    hf, fx = f'model.layers.{i}.', f'layers_{i}'
    projs = {'self_attn.q_proj': (q_out, c.hidden_size, c.qkv_bias),
             'self_attn.k_proj': (kv_out, c.hidden_size, c.qkv_bias),
             'self_attn.v_proj': (kv_out, c.hidden_size, c.qkv_bias),
             'self_attn.o_proj': (c.hidden_size, q_out, c.o_bias),
             'mlp.gate_proj': (c.intermediate_size, c.hidden_size, False),
             'mlp.up_proj': (c.intermediate_size, c.hidden_size, False),
             'mlp.down_proj': (c.hidden_size, c.intermediate_size, False)}
    for name, (n_out, n_in, has_bias) in projs.items():
      path = (fx,) + tuple(name.split('.'))
      out[hf + name + '.weight'] = (path + ('kernel',), True, (n_out, n_in))
      if has_bias:
        out[hf + name + '.bias'] = (path + ('bias',), False, (n_out,))
    for norm in ('input_layernorm', 'post_attention_layernorm'):
      out[hf + norm + '.weight'] = ((fx, norm, 'scale'), False,
                                    (c.hidden_size,))
  return out


# Tensors some checkpoints carry that the model does not need.
_IGNORED = re.compile(r'(.*\.rotary_emb\.inv_freq$)')


def params_from_hf(tensors: Mapping[str, np.ndarray],
                   config: LlamaConfig,
                   dtype: Any = None) -> dict[str, Any]:
  """Converts HF tensors (torch names, `[out, in]` weights) to Flax params.

  Names may carry the `model.` prefix of `*ForCausalLM` or not. A tied model
  tolerates a redundant `lm_head.weight`.

  Args:
    tensors: name -> array (NumPy or anything `np.asarray` accepts).
    config: the model's config.
    dtype: parameter dtype; default `config.param_dtype`.

  Returns:
    A nested dict of `jnp` arrays matching `module.init(...)['params']`.

  Raises:
    ValueError: listing every missing, unexpected and mis-shaped tensor.
  """
  dtype = jnp.dtype(dtype or config.param_dtype)
  layout = _hf_layout(config)
  given = {}
  for name, value in tensors.items():
    if name != 'lm_head.weight' and not name.startswith('model.'):
      name = 'model.' + name
    given[name] = value
  missing = sorted(set(layout) - set(given))
  extra = sorted(n for n in set(given) - set(layout)
                 if not _IGNORED.match(n) and
                 not (n == 'lm_head.weight' and config.tie_embeddings))
  bad_shape = sorted(
      f'{n}: expected {layout[n][2]}, got {tuple(np.shape(given[n]))}'
      for n in set(layout) & set(given)
      if tuple(np.shape(given[n])) != layout[n][2])
  if missing or extra or bad_shape:
    raise ValueError(
        f'checkpoint tensors do not match the {config.family} config: '
        f'missing {missing}; unexpected {extra}; wrong shape {bad_shape}')
  params: dict[str, Any] = {}
  for name, (path, transpose, _) in layout.items():
    arr = np.asarray(given[name])
    if transpose:
      arr = arr.T
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(arr, dtype=dtype)
  return params


def params_to_hf(params: Mapping[str, Any],
                 config: LlamaConfig) -> dict[str, np.ndarray]:
  """Converts Flax params to HF tensor names and `[out, in]` layouts.

  Raises:
    ValueError: a parameter the config expects is absent.
  """
  out = {}
  missing = []
  for name, (path, transpose, _) in _hf_layout(config).items():
    node = params
    try:
      for key in path:
        node = node[key]
    except (KeyError, TypeError):
      missing.append('/'.join(path))
      continue
    arr = np.asarray(jax.device_get(node))
    out[name] = np.ascontiguousarray(arr.T if transpose else arr)
  if missing:
    raise ValueError(f'params lack {missing} for the {config.family} config')
  return out
