"""GPT-2 causal LM (family 'gpt2') in Flax linen.

Matches `transformers` `GPT2LMHeadModel`: learned positions, pre-LN blocks,
GELU-new MLP, fused `c_attn` projection, language-model head tied to `wte`
(unless `tie_word_embeddings=False`, then `lm_head`). The parameter tree
follows the torch module names without the `transformer.` prefix: `wte`,
`wpe`, `h_{i}/{ln_1,attn/c_attn,attn/c_proj,ln_2,mlp/c_fc,mlp/c_proj}`,
`ln_f`. HF's `Conv1D` weights are already `[in, out]`, so kernels are copied
untransposed.

`module.apply({'params': p}, tokens[B, T], deterministic=True)` returns
float32 logits `[B, T, V]`; dropout uses the rng collection 'dropout'.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.models import layers

_BUFFERS = ('.attn.bias', '.attn.masked_bias')
# The fields that carry `config.model.dropout_rate` (see
# `dpjax.models.dropout_fields`): residual, embedding and attention dropout.
DROPOUT_FIELDS = ('resid_pdrop', 'embd_pdrop', 'attn_pdrop')


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """Configuration of a GPT-2 model (HF field names).

  Attributes:
    family: always 'gpt2'.
    n_inner: MLP width (None: 4 * n_embd).
    scale_attn_by_inverse_layer_idx: divide layer i's attention logits by
      i + 1 as well (HF option, off for the released models).
    param_dtype, dtype: parameter and computation dtypes.
  """
  family: str = 'gpt2'
  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None
  activation_function: str = 'gelu_new'
  resid_pdrop: float = 0.1
  embd_pdrop: float = 0.1
  attn_pdrop: float = 0.1
  layer_norm_epsilon: float = 1e-5
  initializer_range: float = 0.02
  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  tie_word_embeddings: bool = True
  bos_token_id: int | None = 50256
  eos_token_id: int | None = 50256
  param_dtype: str = 'float32'
  dtype: str = 'float32'

  def __post_init__(self):
    if self.family != 'gpt2':
      raise ValueError(f"family must be 'gpt2', got {self.family!r}.")
    if self.n_embd % self.n_head:
      raise ValueError(f'n_embd ({self.n_embd}) must be divisible by n_head '
                       f'({self.n_head}).')
    layers.activation(self.activation_function, 'activation_function')
    for field in ('param_dtype', 'dtype'):
      object.__setattr__(self, field,
                         layers.canonical_dtype(getattr(self, field), field))

  @property
  def inner(self) -> int:
    return self.n_inner or 4 * self.n_embd


def _dense(cfg: GPT2Config, features: int, name: str) -> nn.Dense:
  return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  kernel_init=nn.initializers.normal(cfg.initializer_range),
                  name=name)


def _layer_norm(cfg: GPT2Config, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, use_fast_variance=False,
                      name=name)


class GPT2Attention(nn.Module):
  """Causal self-attention with the fused `c_attn` projection."""
  config: GPT2Config
  layer_idx: int

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg = self.config
    qkv = _dense(cfg, 3 * cfg.n_embd, 'c_attn')(x)
    shape = x.shape[:2] + (cfg.n_head, cfg.n_embd // cfg.n_head)
    q, k, v = (t.reshape(shape) for t in jnp.split(qkv, 3, axis=-1))
    scale = 1.0 / math.sqrt(shape[-1]) if cfg.scale_attn_weights else 1.0
    if cfg.scale_attn_by_inverse_layer_idx:
      scale /= self.layer_idx + 1
    drop = nn.Dropout(cfg.attn_pdrop)
    out = layers.dot_product_attention(
        q, k, v, bias, lambda p: drop(p, deterministic=deterministic), scale)
    out = _dense(cfg, cfg.n_embd, 'c_proj')(out.reshape(x.shape))
    return nn.Dropout(cfg.resid_pdrop)(out, deterministic=deterministic)


class GPT2MLP(nn.Module):
  """`c_fc` -> GELU-new -> `c_proj` -> dropout."""
  config: GPT2Config

  @nn.compact
  def __call__(self, x, deterministic):
    cfg = self.config
    h = layers.activation(cfg.activation_function)(
        _dense(cfg, cfg.inner, 'c_fc')(x))
    h = _dense(cfg, cfg.n_embd, 'c_proj')(h)
    return nn.Dropout(cfg.resid_pdrop)(h, deterministic=deterministic)


class GPT2Block(nn.Module):
  """Pre-LN block `h_{i}`."""
  config: GPT2Config
  layer_idx: int

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg = self.config
    x = x + GPT2Attention(cfg, self.layer_idx, name='attn')(
        _layer_norm(cfg, 'ln_1')(x), bias, deterministic)
    return x + GPT2MLP(cfg, name='mlp')(_layer_norm(cfg, 'ln_2')(x),
                                        deterministic)


class GPT2LMHeadModel(nn.Module):
  """GPT-2 with its (tied) language-model head."""
  config: GPT2Config

  @nn.compact
  def __call__(self, tokens: jax.Array, deterministic: bool = True,
               return_hidden: bool = False) -> jax.Array:
    """Next-token logits.

    Args:
      tokens: token ids [B, T] int, T <= n_positions.
      deterministic: disables dropout when True.
      return_hidden: return the final hidden states [B, T, n_embd] instead.

    Returns:
      float32 logits [B, T, vocab_size] (or the hidden states).
    """
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    wte = nn.Embed(cfg.vocab_size, cfg.n_embd, dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, embedding_init=init,
                   name='wte')
    wpe = nn.Embed(cfg.n_positions, cfg.n_embd, dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, embedding_init=init,
                   name='wpe')
    length = tokens.shape[1]
    if length > cfg.n_positions:
      raise ValueError(f'tokens has {length} positions; n_positions is '
                       f'{cfg.n_positions}.')
    x = wte(tokens) + wpe(jnp.arange(length)[None, :])
    x = nn.Dropout(cfg.embd_pdrop)(x, deterministic=deterministic)
    bias = layers.causal_bias(length, jnp.dtype(cfg.dtype))
    for i in range(cfg.n_layer):
      x = GPT2Block(cfg, i, name=f'h_{i}')(x, bias, deterministic)
    x = _layer_norm(cfg, 'ln_f')(x)
    if return_hidden:
      return x
    if cfg.tie_word_embeddings:
      logits = wte.attend(x)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, kernel_init=init,
                        name='lm_head')(x)
    return logits.astype(jnp.float32)


def build(**fields: Any) -> tuple[GPT2LMHeadModel, GPT2Config]:
  """Builds `(module, config)` from config fields."""
  config = GPT2Config(**fields)
  return GPT2LMHeadModel(config), config


_HF_FIELDS = ('vocab_size', 'n_positions', 'n_embd', 'n_layer', 'n_head',
              'n_inner', 'activation_function', 'resid_pdrop', 'embd_pdrop',
              'attn_pdrop', 'layer_norm_epsilon', 'initializer_range',
              'scale_attn_weights', 'scale_attn_by_inverse_layer_idx',
              'tie_word_embeddings', 'bos_token_id', 'eos_token_id')


def from_hf_config(config_json: dict) -> GPT2Config:
  """Config from a HF `config.json` with model_type 'gpt2'."""
  kind = config_json.get('model_type', 'gpt2')
  if kind != 'gpt2':
    raise ValueError(f"config_json['model_type'] must be 'gpt2', got "
                     f'{kind!r}.')
  if config_json.get('add_cross_attention'):
    raise ValueError("config_json['add_cross_attention'] must be false: "
                     'the encoder-decoder GPT-2 is not supported.')
  fields = {k: config_json[k] for k in _HF_FIELDS if k in config_json}
  fields.update(layers.hf_dtype_fields(config_json))
  return GPT2Config(**fields)


def to_hf_config(config: GPT2Config) -> dict:
  """The HF `config.json` dict for `config`."""
  out = {k: getattr(config, k) for k in _HF_FIELDS}
  out.update(model_type='gpt2', architectures=['GPT2LMHeadModel'],
             torch_dtype=config.param_dtype)
  return out


def _spec(cfg: GPT2Config) -> layers.Spec:
  """Torch-name <-> params-path table (Conv1D weights are [in, out])."""
  d = cfg.n_embd
  spec: layers.Spec = [
      ('transformer.wte.weight', ('wte', 'embedding'), (cfg.vocab_size, d),
       False),
      ('transformer.wpe.weight', ('wpe', 'embedding'), (cfg.n_positions, d),
       False)]

  def conv(hf, path, n_in, n_out):
    spec.append((f'{hf}.weight', path + ('kernel',), (n_in, n_out), False))
    spec.append((f'{hf}.bias', path + ('bias',), (n_out,), False))

  def norm(hf, path):
    spec.append((f'{hf}.weight', path + ('scale',), (d,), False))
    spec.append((f'{hf}.bias', path + ('bias',), (d,), False))

  for i in range(cfg.n_layer):
    hf, p = f'transformer.h.{i}', (f'h_{i}',)
    norm(f'{hf}.ln_1', p + ('ln_1',))
    conv(f'{hf}.attn.c_attn', p + ('attn', 'c_attn'), d, 3 * d)
    conv(f'{hf}.attn.c_proj', p + ('attn', 'c_proj'), d, d)
    norm(f'{hf}.ln_2', p + ('ln_2',))
    conv(f'{hf}.mlp.c_fc', p + ('mlp', 'c_fc'), d, cfg.inner)
    conv(f'{hf}.mlp.c_proj', p + ('mlp', 'c_proj'), cfg.inner, d)
  norm('transformer.ln_f', ('ln_f',))
  if not cfg.tie_word_embeddings:
    spec.append(('lm_head.weight', ('lm_head', 'kernel'),
                 (cfg.vocab_size, d), True))
  return spec


def params_from_hf(tensors: dict[str, np.ndarray], config: GPT2Config) -> dict:
  """Converts a torch `GPT2LMHeadModel`/`GPT2Model` state dict to params.

  Keys may carry the `transformer.` prefix or not (the original `gpt2`
  checkpoints have none). The tied `lm_head.weight` and the causal-mask
  buffers (`attn.bias`, `attn.masked_bias`) are ignored.
  """
  body = {(k if k.startswith(('transformer.', 'lm_head.'))
           else 'transformer.' + k): v for k, v in tensors.items()}
  if config.tie_word_embeddings:
    body.pop('lm_head.weight', None)
  params = layers.params_from_spec(body, _spec(config),
                                   jnp.dtype(config.param_dtype))
  layers.check_consumed(body, _BUFFERS)
  return params


def params_to_hf(params: dict, config: GPT2Config) -> dict[str, np.ndarray]:
  """Flax params -> `GPT2LMHeadModel` state dict as `save_pretrained` writes
  it (`transformer.` prefix; no tied `lm_head.weight`, no buffers)."""
  return layers.params_to_spec(params, _spec(config))
