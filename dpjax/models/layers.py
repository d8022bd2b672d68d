"""Small layers shared by the BERT/RoBERTa, GPT-2 and BitNet families.

Everything here mirrors the numerics of the PyTorch reference in
`transformers` (activation formulas, float32 softmax and norm statistics,
additive masks of `finfo(dtype).min`), so that the families built on it
match their references to float32 rounding.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def relu2(x: jax.Array) -> jax.Array:
  """Squared ReLU (`transformers` 'relu2'): `relu(x) ** 2`."""
  return jnp.square(jax.nn.relu(x))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),
    'gelu_new': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_pytorch_tanh': lambda x: jax.nn.gelu(x, approximate=True),
    'relu': jax.nn.relu,
    'relu2': relu2,
    'silu': jax.nn.silu,
    'swish': jax.nn.silu,
    'tanh': jnp.tanh,
}


def activation(name: str, field: str = 'hidden_act') -> Callable:
  """Returns the activation `transformers` calls `name` (ACT2FN)."""
  if name not in ACTIVATIONS:
    raise ValueError(f'{field} must be one of {sorted(ACTIVATIONS)}, '
                     f'got {name!r}.')
  return ACTIVATIONS[name]


def canonical_dtype(value: Any, field: str) -> str:
  """Normalizes a dtype given as a string or numpy/jax dtype to its name."""
  if value is None:
    return 'float32'
  name = np.dtype(value).name if not isinstance(value, str) else value
  if name not in ('float32', 'bfloat16', 'float16'):
    raise ValueError(f'{field} must be float32, bfloat16 or float16, '
                     f'got {value!r}.')
  return name


class RMSNorm(nn.Module):
  """RMSNorm as in `transformers` Llama/BitNet: float32 statistics.

  `y = scale * (x32 * rsqrt(mean(x32**2) + eps)).astype(x.dtype)`; the
  parameter is called `scale` (HF `weight`).
  """
  eps: float = 1e-6
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
    return scale.astype(x.dtype) * y


def padding_bias(attention_mask: jax.Array | None, dtype: Dtype
                 ) -> jax.Array | None:
  """Additive key bias [B, 1, 1, T] from a {0,1} mask [B, T] (None: none)."""
  if attention_mask is None:
    return None
  keep = attention_mask.astype(bool)[:, None, None, :]
  return jnp.where(keep, 0.0, jnp.finfo(dtype).min).astype(dtype)


def causal_bias(length: int, dtype: Dtype) -> jax.Array:
  """Additive causal bias [1, 1, T, T]: `finfo.min` above the diagonal."""
  allowed = jnp.tril(jnp.ones((length, length), dtype=bool))
  return jnp.where(allowed, 0.0, jnp.finfo(dtype).min).astype(dtype)[
      None, None]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          bias: jax.Array | None,
                          dropout: Callable[[jax.Array], jax.Array] | None
                          = None, scale: float | None = None) -> jax.Array:
  """Scaled dot-product attention with float32 softmax.

  Args:
    q: queries [B, T, H, D].
    k: keys [B, S, Hk, D]; `H % Hk == 0` (grouped-query heads are repeated).
    v: values [B, S, Hk, D].
    bias: additive bias broadcastable to [B, H, T, S], or None.
    dropout: applied to the attention probabilities (None: no dropout).
    scale: multiplies the logits (None: `1 / sqrt(D)`).

  Returns:
    The attended values [B, T, H, D] in q's dtype.
  """
  heads, kv_heads = q.shape[2], k.shape[2]
  if heads != kv_heads:
    k = jnp.repeat(k, heads // kv_heads, axis=2)
    v = jnp.repeat(v, heads // kv_heads, axis=2)
  if scale is None:
    scale = 1.0 / math.sqrt(q.shape[-1])
  logits = jnp.einsum('bthd,bshd->bhts', q, k) * jnp.asarray(scale, q.dtype)
  if bias is not None:
    logits = logits + bias.astype(logits.dtype)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
  if dropout is not None:
    probs = dropout(probs)
  return jnp.einsum('bhts,bshd->bthd', probs, v)


def take(tensors: dict[str, np.ndarray], key: str, shape: tuple[int, ...],
         dtype: Any) -> np.ndarray:
  """Pops `key` from `tensors` checking its shape; casts to `dtype`."""
  if key not in tensors:
    raise ValueError(f'tensors is missing {key!r} (have e.g. '
                     f'{sorted(tensors)[:5]}).')
  value = np.asarray(tensors.pop(key))
  if tuple(value.shape) != tuple(shape):
    raise ValueError(f'tensors[{key!r}] has shape {tuple(value.shape)}, '
                     f'expected {tuple(shape)} from the model config.')
  return value.astype(dtype)


def check_consumed(tensors: dict[str, np.ndarray], ignore: tuple[str, ...] = ()
                   ) -> None:
  """Raises if tensors other than known buffers were left unconverted."""
  left = sorted(k for k in tensors if not any(s in k for s in ignore))
  if left:
    raise ValueError(f'tensors has {len(left)} entries the model config does '
                     f'not use, e.g. {left[:5]}; check the config (number of '
                     'layers, head type) against the checkpoint.')


def hf_dtype_fields(config_json: dict) -> dict:
  """`param_dtype`/`dtype` fields for a bf16/fp16 HF config (else none)."""
  dtype = config_json.get('torch_dtype') or config_json.get('dtype')
  if dtype in ('bfloat16', 'float16'):
    return {'param_dtype': dtype, 'dtype': dtype}
  return {}


def to_numpy(x: Any) -> np.ndarray:
  """A host NumPy copy of a (possibly bfloat16) jax array."""
  return np.asarray(jax.device_get(x))


# A conversion spec is a list of `(hf_key, flax_path, hf_shape, transpose)`:
# `hf_key` names the torch tensor, `flax_path` the leaf in the params tree,
# `hf_shape` the torch shape the config implies, `transpose` whether the leaf
# is the transpose of the torch tensor (nn.Linear weights).
Spec = list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]


def params_from_spec(tensors: dict[str, np.ndarray], spec: Spec,
                     dtype: Any) -> dict:
  """Builds a nested params dict from `tensors` (popped) following `spec`."""
  params: dict = {}
  for hf_key, path, shape, transpose in spec:
    value = take(tensors, hf_key, shape, dtype)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.ascontiguousarray(value.T) if transpose else value
  return params


def params_to_spec(params: Any, spec: Spec) -> dict[str, np.ndarray]:
  """Inverse of `params_from_spec`: the torch-named host arrays."""
  out = {}
  for hf_key, path, shape, transpose in spec:
    node = params
    for name in path:
      if name not in node:
        raise ValueError(f'params is missing {"/".join(path)} (for '
                         f'{hf_key!r}).')
      node = node[name]
    value = to_numpy(node)
    value = np.ascontiguousarray(value.T) if transpose else value
    if tuple(value.shape) != tuple(shape):
      raise ValueError(f'params {"/".join(path)} has shape {value.shape}, '
                       f'expected {shape} (torch layout) from the config.')
    out[hf_key] = value
  return out


def rope(x: jax.Array, theta: float) -> jax.Array:
  """Rotate-half RoPE at positions 0..T-1 for x [B, T, H, D]."""
  dim = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  freqs = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * inv_freq
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  cos = jnp.cos(emb).astype(x.dtype)[None, :, None, :]
  sin = jnp.sin(emb).astype(x.dtype)[None, :, None, :]
  half = dim // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos + rotated * sin


# BitNet b1.58 quantization (transformers.integrations.bitnet numerics).

def straight_through(x: jax.Array, q: jax.Array) -> jax.Array:
  """Forward value exactly `q`; gradient identity with respect to `x`."""
  return (x - jax.lax.stop_gradient(x)) + jax.lax.stop_gradient(q)


def weight_quant(w: jax.Array) -> jax.Array:
  """Ternary absmean quantization with STE (transformers `WeightQuant`)."""
  w32 = w.astype(jnp.float32)
  scale = 1.0 / jnp.maximum(jnp.mean(jnp.abs(w32)), 1e-5)
  q = (jnp.clip(jnp.round(w32 * scale), -1, 1) / scale).astype(w.dtype)
  return straight_through(w, q)


def activation_quant(x: jax.Array) -> jax.Array:
  """8-bit absmax per-token quantization with STE (`ActQuant`)."""
  x32 = x.astype(jnp.float32)
  peak = jnp.max(jnp.abs(x32), axis=-1, keepdims=True)
  scale = 127.0 / jnp.maximum(peak, 1e-5)
  q = (jnp.clip(jnp.round(x32 * scale), -128, 127) / scale).astype(x.dtype)
  return straight_through(x, q)


TERNARY_PER_BYTE = 4  # 2-bit codes, packed along the output axis.


def pack_ternary(t: np.ndarray) -> np.ndarray:
  """Packs ternary [out, in] to uint8 [out/4, in] as transformers does."""
  rows = -(-t.shape[0] // TERNARY_PER_BYTE)
  codes = (np.asarray(t) + 1).astype(np.uint8)
  packed = np.zeros((rows,) + t.shape[1:], np.uint8)
  for i in range(TERNARY_PER_BYTE):
    chunk = codes[i * rows:(i + 1) * rows]
    packed[:len(chunk)] |= chunk << (2 * i)
  return packed


def unpack_ternary(packed: np.ndarray) -> np.ndarray:
  """Inverse of `pack_ternary`: float32 [4 * rows, in] in {-1, 0, 1}."""
  packed = np.asarray(packed, np.uint8)
  parts = [(packed >> (2 * i)) & 3 for i in range(TERNARY_PER_BYTE)]
  return np.concatenate(parts, axis=0).astype(np.float32) - 1.0
