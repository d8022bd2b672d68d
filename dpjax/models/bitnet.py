"""BitNet b1.58 causal LM (family 'bitnet') in Flax linen.

Matches `transformers` `BitNetForCausalLM` (microsoft/bitnet-b1.58-2B-4T):
a Llama-like decoder (RoPE, grouped-query attention, RMSNorm) with the
sub-layer norms of the 2B-4T model (`attn_sub_norm` before `o_proj`,
`ffn_sub_norm` before `down_proj`) and the relu² (`hidden_act='relu2'`)
gated MLP `down(sub_norm(relu(gate(x))**2 * up(x)))`.

Quantization (`config.quantization`):
  'online': every linear layer except `lm_head` quantizes its latent float
    weight to ternary absmean, `W~ = clip(round(W / mean|W|), -1, 1) *
    mean|W|`, and its input to 8-bit absmax per token, `x~ = clip(round(x *
    127 / max|x|), -128, 127) * max|x| / 127`, both with a straight-through
    estimator (identity gradient), as `transformers`' `AutoBitLinear` with
    `quantization_mode='online'` (the BitNet b1.58 training recipe).
  'none': plain linear layers. This is what `transformers` computes for a
    BitNet config without `quantization_config`: its plain (non-packed)
    `BitNetForCausalLM` uses `nn.Linear`, i.e. no quantization at all.

Packed checkpoints (`quantization_config.linear_class='bitlinear'`, offline,
as released for 2B-4T) store ternary weights `t` as 2-bit codes (uint8
`[out/4, in]`) with `weight_scale` s, and compute `(x~ @ t) / s`.
`params_from_hf` turns them into latent weights `t / (s * mean|t|)`, whose
online absmean quantization gives back exactly `t / s`; `params_to_hf`
re-packs (`config.weight_format='packed'`). Note that `mean|t / s|` is
`mean|t| / s`, not `1 / s`, so requantizing the dequantized `t / s` directly
would shrink every layer by the fraction of non-zero weights. transformers'
`autobitlinear`/offline mode (ternary weights times `weight_scale`, where
`bitlinear` divides by it) is rejected rather than guessed at.

Parameter names follow HF without the `model.` prefix: `embed_tokens`,
`layers_{i}/self_attn/{q,k,v,o}_proj`, `layers_{i}/self_attn/attn_sub_norm`,
`layers_{i}/mlp/{gate,up,down}_proj`, `layers_{i}/mlp/ffn_sub_norm`,
`layers_{i}/{input,post_attention}_layernorm`, `norm`, `lm_head`; RMSNorm
weights are called `scale`, Dense kernels are `[in, out]`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.models import layers
from dpjax.models import rope as rope_lib

_QUANTIZATIONS = ('online', 'none')
_WEIGHT_FORMATS = ('float', 'packed')
# The fields that carry `config.model.dropout_rate` (see
# `dpjax.models.dropout_fields`): BitNet (as in transformers) has dropout on
# the attention probabilities only.
DROPOUT_FIELDS = ('attention_dropout',)


@dataclasses.dataclass(frozen=True)
class BitNetConfig:
  """Configuration of a BitNet b1.58 model (HF field names).

  Attributes:
    family: always 'bitnet'.
    head_dim: per-head width (None: hidden_size // num_attention_heads).
    quantization: 'online' (ternary weights, 8-bit activations, STE) or
      'none' (plain linears, transformers without quantization_config).
    weight_format: how `params_to_hf` writes linear weights: 'float' (latent
      weights) or 'packed' (2-bit ternary codes plus `weight_scale`, as the
      released 2B-4T checkpoint).
    param_dtype, dtype: parameter and computation dtypes.
  """
  family: str = 'bitnet'
  vocab_size: int = 128256
  hidden_size: int = 2560
  intermediate_size: int = 6912
  num_hidden_layers: int = 30
  num_attention_heads: int = 20
  num_key_value_heads: int | None = 5
  head_dim: int | None = None
  hidden_act: str = 'relu2'
  max_position_embeddings: int = 2048
  initializer_range: float = 0.02
  rms_norm_eps: float = 1e-5
  rope_theta: float = 500000.0
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  attention_dropout: float = 0.0
  bos_token_id: int | None = 128000
  eos_token_id: int | None = 128001
  pad_token_id: int | None = None
  quantization: str = 'online'
  weight_format: str = 'float'
  param_dtype: str = 'float32'
  dtype: str = 'float32'

  def __post_init__(self):
    if self.family != 'bitnet':
      raise ValueError(f"family must be 'bitnet', got {self.family!r}.")
    if self.num_key_value_heads is None:
      object.__setattr__(self, 'num_key_value_heads',
                         self.num_attention_heads)
    if self.head_dim is None:
      object.__setattr__(self, 'head_dim',
                         self.hidden_size // self.num_attention_heads)
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(f'num_attention_heads ({self.num_attention_heads}) '
                       'must be a multiple of num_key_value_heads '
                       f'({self.num_key_value_heads}).')
    if self.head_dim % 2:
      raise ValueError(f'head_dim must be even for RoPE, got {self.head_dim}.')
    if self.quantization not in _QUANTIZATIONS:
      raise ValueError(f'quantization must be one of {_QUANTIZATIONS}, got '
                       f'{self.quantization!r}.')
    if self.weight_format not in _WEIGHT_FORMATS:
      raise ValueError(f'weight_format must be one of {_WEIGHT_FORMATS}, '
                       f'got {self.weight_format!r}.')
    if self.weight_format == 'packed' and self.quantization != 'online':
      raise ValueError("weight_format='packed' needs quantization='online' "
                       f'(got {self.quantization!r}).')
    layers.activation(self.hidden_act)
    for field in ('param_dtype', 'dtype'):
      object.__setattr__(self, field,
                         layers.canonical_dtype(getattr(self, field), field))


class BitLinear(nn.Module):
  """Linear layer with optional online BitNet b1.58 quantization."""
  features: int
  config: BitNetConfig
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kernel = self.param('kernel',
                        nn.initializers.normal(cfg.initializer_range),
                        (x.shape[-1], self.features), cfg.param_dtype)
    if cfg.quantization == 'online':
      kernel = layers.weight_quant(kernel)
      x = layers.activation_quant(x)
    y = jnp.dot(x.astype(cfg.dtype), kernel.astype(cfg.dtype))
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (self.features,),
                         cfg.param_dtype).astype(cfg.dtype)
    return y


class BitNetAttention(nn.Module):
  """Grouped-query attention with `attn_sub_norm` before `o_proj`."""
  config: BitNetConfig

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg = self.config
    heads, kv, d = (cfg.num_attention_heads, cfg.num_key_value_heads,
                    cfg.head_dim)

    def proj(n, name):
      out = BitLinear(n * d, cfg, cfg.attention_bias, name=name)(x)
      return out.reshape(x.shape[:2] + (n, d))

    q = layers.rope(proj(heads, 'q_proj'), cfg.rope_theta)
    k = layers.rope(proj(kv, 'k_proj'), cfg.rope_theta)
    v = proj(kv, 'v_proj')
    drop = nn.Dropout(cfg.attention_dropout)
    out = layers.dot_product_attention(
        q, k, v, bias, lambda p: drop(p, deterministic=deterministic))
    out = out.reshape(x.shape[:2] + (heads * d,))
    out = layers.RMSNorm(cfg.rms_norm_eps, cfg.param_dtype,
                         name='attn_sub_norm')(out)
    return BitLinear(cfg.hidden_size, cfg, cfg.attention_bias,
                     name='o_proj')(out)


class BitNetMLP(nn.Module):
  """`down(ffn_sub_norm(act(gate(x)) * up(x)))` with act relu²."""
  config: BitNetConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    act = layers.activation(cfg.hidden_act)
    h = (act(BitLinear(cfg.intermediate_size, cfg, name='gate_proj')(x))
         * BitLinear(cfg.intermediate_size, cfg, name='up_proj')(x))
    h = layers.RMSNorm(cfg.rms_norm_eps, cfg.param_dtype,
                       name='ffn_sub_norm')(h)
    return BitLinear(cfg.hidden_size, cfg, name='down_proj')(h)


class BitNetDecoderLayer(nn.Module):
  """Pre-norm decoder layer `layers_{i}`."""
  config: BitNetConfig

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg = self.config

    def norm(name):
      return layers.RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name=name)

    x = x + BitNetAttention(cfg, name='self_attn')(
        norm('input_layernorm')(x), bias, deterministic)
    return x + BitNetMLP(cfg, name='mlp')(norm('post_attention_layernorm')(x))


class BitNetForCausalLM(nn.Module):
  """BitNet b1.58 decoder with its (unquantized) `lm_head`."""
  config: BitNetConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True,
               return_hidden: bool = False) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: token ids [B, T] int.
      deterministic: disables (attention) dropout when True.
      return_hidden: return the final normed hidden states [B, T, H].

    Returns:
      float32 logits [B, T, vocab_size] (or the hidden states).
    """
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                     param_dtype=cfg.param_dtype, embedding_init=init,
                     name='embed_tokens')
    x = embed(tokens)
    bias = layers.causal_bias(tokens.shape[1], jnp.dtype(cfg.dtype))
    for i in range(cfg.num_hidden_layers):
      x = BitNetDecoderLayer(cfg, name=f'layers_{i}')(x, bias, deterministic)
    x = layers.RMSNorm(cfg.rms_norm_eps, cfg.param_dtype, name='norm')(x)
    if return_hidden:
      return x
    if cfg.tie_word_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, kernel_init=init,
                        name='lm_head')(x)
    return logits.astype(jnp.float32)


def build(**fields: Any) -> tuple[BitNetForCausalLM, BitNetConfig]:
  """Builds `(module, config)` from config fields."""
  config = BitNetConfig(**fields)
  return BitNetForCausalLM(config), config


_HF_FIELDS = ('vocab_size', 'hidden_size', 'intermediate_size',
              'num_hidden_layers', 'num_attention_heads',
              'num_key_value_heads', 'head_dim', 'hidden_act',
              'max_position_embeddings', 'initializer_range', 'rms_norm_eps',
              'tie_word_embeddings', 'attention_bias', 'attention_dropout',
              'bos_token_id', 'eos_token_id', 'pad_token_id')


def from_hf_config(config_json: dict) -> BitNetConfig:
  """Config from a HF `config.json` with model_type 'bitnet'.

  No `quantization_config` gives `quantization='none'` (what transformers
  computes then); `bitlinear`/offline (the released packed 2B-4T) gives
  online quantization with `weight_format='packed'`; `autobitlinear`/online
  gives online quantization of float weights.
  """
  kind = config_json.get('model_type', 'bitnet')
  if kind != 'bitnet':
    raise ValueError(f"config_json['model_type'] must be 'bitnet', got "
                     f'{kind!r}.')
  fields = {k: config_json[k] for k in _HF_FIELDS if k in config_json}
  if isinstance(fields.get('eos_token_id'), list):
    fields['eos_token_id'] = fields['eos_token_id'][0]
  theta, scaling = rope_lib.from_hf_config(config_json)
  if scaling is not None:
    raise ValueError(f'config.json: a {scaling.rope_type!r} RoPE is not '
                     f"supported for bitnet; only 'default' (BitNet b1.58 "
                     f'uses plain RoPE)')
  if any(k in config_json for k in ('rope_theta', 'rope_parameters',
                                    'rope_scaling')):
    fields['rope_theta'] = theta
  quant = config_json.get('quantization_config')
  if not quant:
    fields.update(quantization='none', weight_format='float')
  else:
    linear = quant.get('linear_class', 'bitlinear')
    mode = quant.get('quantization_mode', 'offline')
    skip = set(quant.get('modules_to_not_convert') or []) - {'lm_head'}
    if quant.get('use_rms_norm') or skip:
      raise ValueError("config_json['quantization_config'] with use_rms_norm "
                       'or modules_to_not_convert other than lm_head is not '
                       'supported.')
    if (linear, mode) == ('bitlinear', 'offline'):
      fields.update(quantization='online', weight_format='packed')
    elif (linear, mode) == ('autobitlinear', 'online'):
      fields.update(quantization='online', weight_format='float')
    else:
      raise ValueError("config_json['quantization_config'] must be bitlinear/"
                       'offline or autobitlinear/online, got '
                       f'{linear}/{mode}.')
  fields.update(layers.hf_dtype_fields(config_json))
  return BitNetConfig(**fields)


def to_hf_config(config: BitNetConfig) -> dict:
  """The HF `config.json` dict for `config`."""
  out = {k: getattr(config, k) for k in _HF_FIELDS}
  out.update(model_type='bitnet', architectures=['BitNetForCausalLM'],
             rope_parameters={'rope_type': 'default',
                              'rope_theta': config.rope_theta},
             torch_dtype=config.param_dtype)
  if config.weight_format == 'packed':
    out['quantization_config'] = {'quant_method': 'bitnet',
                                  'linear_class': 'bitlinear',
                                  'quantization_mode': 'offline'}
  elif config.quantization == 'online':
    out['quantization_config'] = {'quant_method': 'bitnet',
                                  'linear_class': 'autobitlinear',
                                  'quantization_mode': 'online'}
  return out


def _linears(cfg: BitNetConfig):
  """(hf_module, params_path, out, in, has_bias) of the quantized linears."""
  h, d = cfg.hidden_size, cfg.head_dim
  q, kv = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
  inter, b = cfg.intermediate_size, cfg.attention_bias
  for i in range(cfg.num_hidden_layers):
    hf, p = f'model.layers.{i}', (f'layers_{i}',)
    yield f'{hf}.self_attn.q_proj', p + ('self_attn', 'q_proj'), q, h, b
    yield f'{hf}.self_attn.k_proj', p + ('self_attn', 'k_proj'), kv, h, b
    yield f'{hf}.self_attn.v_proj', p + ('self_attn', 'v_proj'), kv, h, b
    yield f'{hf}.self_attn.o_proj', p + ('self_attn', 'o_proj'), h, q, b
    yield f'{hf}.mlp.gate_proj', p + ('mlp', 'gate_proj'), inter, h, False
    yield f'{hf}.mlp.up_proj', p + ('mlp', 'up_proj'), inter, h, False
    yield f'{hf}.mlp.down_proj', p + ('mlp', 'down_proj'), h, inter, False


def _spec(cfg: BitNetConfig) -> layers.Spec:
  """Torch-name <-> params-path table for everything but linear weights."""
  h = cfg.hidden_size
  spec: layers.Spec = [('model.embed_tokens.weight', ('embed_tokens',
                                                       'embedding'),
                        (cfg.vocab_size, h), False),
                       ('model.norm.weight', ('norm', 'scale'), (h,), False)]
  for i in range(cfg.num_hidden_layers):
    hf, p = f'model.layers.{i}', (f'layers_{i}',)
    for n in ('input_layernorm', 'post_attention_layernorm'):
      spec.append((f'{hf}.{n}.weight', p + (n, 'scale'), (h,), False))
    spec.append((f'{hf}.self_attn.attn_sub_norm.weight',
                 p + ('self_attn', 'attn_sub_norm', 'scale'),
                 (cfg.num_attention_heads * cfg.head_dim,), False))
    spec.append((f'{hf}.mlp.ffn_sub_norm.weight',
                 p + ('mlp', 'ffn_sub_norm', 'scale'),
                 (cfg.intermediate_size,), False))
  for hf, path, n_out, _, bias in _linears(cfg):
    if bias:
      spec.append((f'{hf}.bias', path + ('bias',), (n_out,), False))
  if not cfg.tie_word_embeddings:
    spec.append(('lm_head.weight', ('lm_head', 'kernel'), (cfg.vocab_size, h),
                 True))
  return spec


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def params_from_hf(tensors: dict[str, np.ndarray],
                   config: BitNetConfig) -> dict:
  """Converts a torch `BitNetForCausalLM` state dict to Flax params.

  Linear weights may be float (latent) or packed uint8 `[out/4, in]` with
  `weight_scale` (then converted to latent weights that the online
  quantization maps back onto exactly `t / weight_scale`). A tied
  `lm_head.weight` is ignored.
  """
  body = dict(tensors)
  dtype = jnp.dtype(config.param_dtype)
  if config.tie_word_embeddings:
    body.pop('lm_head.weight', None)
  params = layers.params_from_spec(body, _spec(config), dtype)
  for hf, path, n_out, n_in, _ in _linears(config):
    key = f'{hf}.weight'
    weight = body.get(key)
    if weight is not None and np.asarray(weight).dtype == np.uint8:
      if config.quantization != 'online':
        raise ValueError(f'tensors[{key!r}] is packed ternary: use '
                         "quantization='online'.")
      rows = n_out // layers.TERNARY_PER_BYTE
      packed = layers.take(body, key, (rows, n_in), np.uint8)
      scale = layers.take(body, f'{hf}.weight_scale', (1,), np.float32)
      t = layers.unpack_ternary(packed).astype(np.float64)
      nonzero = np.mean(np.abs(t))
      latent = t / (float(scale[0]) * nonzero) if nonzero else t
      kernel = latent.T
    else:
      kernel = layers.take(body, key, (n_out, n_in), np.float32).T
    _set(params, path + ('kernel',), np.ascontiguousarray(kernel, dtype))
  layers.check_consumed(body, ('rotary_emb.inv_freq',))
  return params


def params_to_hf(params: dict, config: BitNetConfig) -> dict[str, np.ndarray]:
  """Flax params -> torch `BitNetForCausalLM` state dict.

  `weight_format='packed'` writes quantized linears as the released 2B-4T
  checkpoint does: 2-bit codes (uint8 `[out/4, in]`) and `weight_scale =
  1 / mean|W|`; 'float' writes the latent weights.
  """
  out = layers.params_to_spec(params, _spec(config))
  dtype = jnp.dtype(config.param_dtype)
  for hf, path, n_out, n_in, _ in _linears(config):
    node = params
    for name in path:
      node = node[name]
    weight = layers.to_numpy(node['kernel']).T
    if weight.shape != (n_out, n_in):
      raise ValueError(f'params {"/".join(path)}/kernel has shape '
                       f'{weight.T.shape}, expected {(n_in, n_out)}.')
    if config.weight_format == 'packed':
      if n_out % layers.TERNARY_PER_BYTE:
        raise ValueError(f'{hf} has {n_out} outputs; packing needs a '
                         f'multiple of {layers.TERNARY_PER_BYTE}.')
      w32 = weight.astype(np.float32)
      scale = np.float32(1.0) / np.maximum(np.mean(np.abs(w32)),
                                           np.float32(1e-5))
      t = np.clip(np.round(w32 * scale), -1, 1)
      out[f'{hf}.weight'] = layers.pack_ternary(t)
      out[f'{hf}.weight_scale'] = np.asarray([scale], dtype)
    else:
      out[f'{hf}.weight'] = np.ascontiguousarray(weight)
  return out
