"""Rotary position embeddings with the scaling types Hugging Face configs use.

`transformers` 5 writes a checkpoint's RoPE under `rope_parameters`
(`{'rope_type': 'llama3', 'rope_theta': 500000.0, 'factor': 8.0, ...}`);
older checkpoints use `rope_scaling` and a top-level `rope_theta`.
`from_hf_config` reads both, with the priority `transformers` gives them
(a non-empty legacy `rope_scaling` wins; `rope_theta` inside the dict wins
over the top-level one), and returns `(theta, RopeScaling | None)`.
`cos_sin` computes the rotation tables as `transformers`' rotary embedding
does, in float32, including the attention scaling of YaRN and LongRoPE.

Supported types: 'default', 'linear', 'llama3', 'yarn', 'longrope' (short or
long factors chosen per call from the longest position, as `transformers`
does) and 'dynamic' (NTK; identical to 'default' up to
`max_position_embeddings` tokens, which is the only range where
`transformers`' result does not depend on the call history, so longer
sequences are refused). Anything else (other types, per-layer RoPE, a
`partial_rotary_factor` below 1) is refused with a `ValueError`: a model
whose RoPE dpjax cannot reproduce is never loaded.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

TYPES = ('default', 'linear', 'dynamic', 'llama3', 'yarn', 'longrope')
# Keys each type needs in the RoPE dict (besides rope_type / rope_theta).
_REQUIRED = {'linear': ('factor',), 'dynamic': ('factor',),
             'llama3': ('factor', 'low_freq_factor', 'high_freq_factor'),
             'yarn': ('factor',), 'longrope': ('short_factor', 'long_factor')}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """A RoPE scaling rule (the non-default part of HF `rope_parameters`).

  Attributes:
    rope_type: one of 'linear', 'dynamic', 'llama3', 'yarn', 'longrope'.
    factor: context extension factor (None: YaRN/LongRoPE derive it from
      `max_position_embeddings / original_max_position_embeddings`).
    original_max_position_embeddings: pre-extension context length
      (llama3, yarn, longrope; for 'dynamic' the model's
      `max_position_embeddings`, beyond which dpjax refuses to run).
    max_position_embeddings: the model's context length (YaRN and LongRoPE
      derive defaults from it).
    low_freq_factor, high_freq_factor: llama3 smoothing band.
    beta_fast, beta_slow, mscale, mscale_all_dim, truncate: YaRN options.
    attention_factor: scale of cos/sin (YaRN, LongRoPE); None: derived.
    short_factor, long_factor: LongRoPE per-frequency divisors.
  """
  rope_type: str
  factor: float | None = None
  original_max_position_embeddings: int | None = None
  max_position_embeddings: int | None = None
  low_freq_factor: float | None = None
  high_freq_factor: float | None = None
  beta_fast: float | None = None
  beta_slow: float | None = None
  mscale: float | None = None
  mscale_all_dim: float | None = None
  truncate: bool = True
  attention_factor: float | None = None
  short_factor: tuple[float, ...] | None = None
  long_factor: tuple[float, ...] | None = None

  def __post_init__(self):
    if self.rope_type not in TYPES[1:]:
      raise ValueError(f'RoPE type {self.rope_type!r} is not supported; dpjax '
                       f'reproduces {list(TYPES)}')
    for name in ('short_factor', 'long_factor'):
      value = getattr(self, name)
      if value is not None:
        object.__setattr__(self, name, tuple(float(v) for v in value))

  def to_hf(self, theta: float) -> dict[str, Any]:
    """The `rope_parameters` dict `transformers` 5 reads."""
    out: dict[str, Any] = {'rope_type': self.rope_type,
                           'rope_theta': float(theta)}
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name in ('rope_type', 'max_position_embeddings') or value is None:
        continue
      if f.name == 'truncate' and (self.rope_type != 'yarn' or value):
        continue
      if (f.name == 'original_max_position_embeddings' and
          self.rope_type == 'dynamic'):
        continue
      out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def scaling_from_fields(value: Any) -> RopeScaling | None:
  """A `RopeScaling` from itself, its `dataclasses.asdict` dict, or None."""
  if value is None or isinstance(value, RopeScaling):
    return value
  if isinstance(value, Mapping):
    return RopeScaling(**value)
  raise ValueError(f'rope_scaling must be a RopeScaling, a dict of its fields '
                   f'or None, got {type(value).__name__}')


def from_hf_config(config_json: Mapping[str, Any],
                   source: str = 'config.json'
                   ) -> tuple[float, RopeScaling | None]:
  """`(theta, scaling)` from a HF `config.json` dict.

  Args:
    config_json: the parsed config.
    source: the file, for error messages.

  Raises:
    ValueError: naming `source`, for a RoPE dpjax cannot reproduce or a
      malformed RoPE dict.
  """
  c = config_json
  legacy, new = c.get('rope_scaling'), c.get('rope_parameters')
  params = legacy or new or {}
  key = 'rope_scaling' if legacy else 'rope_parameters'
  if not isinstance(params, Mapping):
    raise ValueError(f'{source}: {key} must be a JSON object, got '
                     f'{params!r}')
  if any(isinstance(v, Mapping) for v in params.values()):
    raise ValueError(f'{source}: {key} gives a RoPE per layer type '
                     f'({sorted(params)}); dpjax supports one RoPE for all '
                     f'layers')
  rope_type = params.get('rope_type', params.get('type', 'default'))
  theta = params.get('rope_theta')
  if theta is None:
    theta = c.get('rope_theta', 10000.0)
  partial = params.get('partial_rotary_factor',
                       c.get('partial_rotary_factor', 1.0))
  if partial is not None and float(partial) != 1.0:
    raise ValueError(f'{source}: partial_rotary_factor={partial} is not '
                     f'supported; dpjax rotates the whole head (1.0)')
  try:
    theta = float(theta)
  except (TypeError, ValueError):
    raise ValueError(f'{source}: rope_theta must be a number, got '
                     f'{theta!r}') from None
  if rope_type == 'default':
    return theta, None
  if rope_type not in TYPES:
    raise ValueError(f'{source}: {key} rope_type {rope_type!r} is not '
                     f'supported; dpjax reproduces {list(TYPES)}')
  missing = [k for k in _REQUIRED[rope_type] if params.get(k) is None
             and not (k == 'factor' and rope_type == 'yarn')]
  if missing:
    raise ValueError(f'{source}: {key} of type {rope_type!r} lacks {missing}')
  max_pos = int(c.get('max_position_embeddings', 2048))
  if rope_type == 'dynamic':
    original = max_pos
  elif c.get('original_max_position_embeddings') is not None:
    original = int(c['original_max_position_embeddings'])  # Phi-3 style
  else:
    original = int(params.get('original_max_position_embeddings', max_pos))
  fields = {f.name for f in dataclasses.fields(RopeScaling)}
  given = {k: v for k, v in params.items() if k in fields and v is not None}
  given.update(rope_type=rope_type, original_max_position_embeddings=original,
               max_position_embeddings=max_pos)
  head_dim = c.get('head_dim') or (
      int(c.get('hidden_size', 0)) // max(int(c.get('num_attention_heads', 1)),
                                          1))
  try:
    scaling = RopeScaling(**given)
    inv_freqs(scaling, theta, int(head_dim))
  except (TypeError, ValueError) as e:
    raise ValueError(f'{source}: {key} {dict(params)!r} is not a valid '
                     f'{rope_type!r} RoPE: {e}') from None
  return theta, scaling


def _default_inv_freq(theta: float, dim: int) -> np.ndarray:
  exponents = np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)
  return (np.float32(1.0) /
          (np.float32(theta) ** exponents)).astype(np.float32)


def _yarn(s: RopeScaling, theta: float, dim: int):
  factor = s.factor
  if factor is None:
    factor = s.max_position_embeddings / s.original_max_position_embeddings

  def get_mscale(scale, m=1.0):
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

  attention = s.attention_factor
  if attention is None:
    if s.mscale and s.mscale_all_dim:
      attention = float(get_mscale(factor, s.mscale) /
                        get_mscale(factor, s.mscale_all_dim))
    else:
      attention = get_mscale(factor)
  beta_fast, beta_slow = s.beta_fast or 32, s.beta_slow or 1

  def correction_dim(rotations):
    return (dim * math.log(s.original_max_position_embeddings /
                           (rotations * 2 * math.pi))) / (2 * math.log(theta))

  low, high = correction_dim(beta_fast), correction_dim(beta_slow)
  if s.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low))
                 / np.float32(high - low), 0, 1).astype(np.float32)
  extrapolation = np.float32(1) - ramp
  pos_freqs = (np.float32(theta) **
               (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)))
  inv_extra = np.float32(1) / pos_freqs
  inv_inter = np.float32(1) / (np.float32(factor) * pos_freqs)
  inv = inv_inter * (1 - extrapolation) + inv_extra * extrapolation
  return inv.astype(np.float32), float(attention)


def _llama3(s: RopeScaling, theta: float, dim: int) -> np.ndarray:
  inv = _default_inv_freq(theta, dim)
  factor = np.float32(s.factor)
  old = s.original_max_position_embeddings
  low_wavelen = old / s.low_freq_factor
  high_wavelen = old / s.high_freq_factor
  wavelen = np.float32(2 * math.pi) / inv
  scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = ((np.float32(old) / wavelen - np.float32(s.low_freq_factor)) /
            np.float32(s.high_freq_factor - s.low_freq_factor))
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def inv_freqs(scaling: RopeScaling | None, theta: float, dim: int
              ) -> tuple[np.ndarray, np.ndarray, float]:
  """`(short, long, attention_factor)`: inverse frequencies `[dim // 2]`.

  `short` applies while the longest position + 1 is at most
  `original_max_position_embeddings`, `long` beyond (they differ only for
  LongRoPE). cos/sin are multiplied by `attention_factor`.

  Raises:
    ValueError: factors of the wrong length or non-positive.
  """
  if dim <= 0 or dim % 2:
    raise ValueError(f'head_dim must be a positive even int, got {dim}')
  s = scaling
  kind = 'default' if s is None else s.rope_type
  if kind in ('default', 'dynamic'):
    inv = _default_inv_freq(theta, dim)
    return inv, inv, 1.0
  if s.factor is not None and not s.factor > 0:
    raise ValueError(f'factor must be > 0, got {s.factor}')
  if kind == 'linear':
    inv = (_default_inv_freq(theta, dim) / np.float32(s.factor))
    return inv.astype(np.float32), inv.astype(np.float32), 1.0
  if kind == 'llama3':
    if not s.high_freq_factor > s.low_freq_factor > 0:
      raise ValueError('llama3 needs high_freq_factor > low_freq_factor > 0')
    inv = _llama3(s, theta, dim)
    return inv, inv, 1.0
  if kind == 'yarn':
    inv, attention = _yarn(s, theta, dim)
    return inv, inv, attention
  # longrope
  for name in ('short_factor', 'long_factor'):
    value = np.asarray(getattr(s, name), np.float32)
    if value.shape != (dim // 2,) or not np.all(value > 0):
      raise ValueError(f'{name} must be {dim // 2} positive numbers, got '
                       f'{getattr(s, name)}')
  factor = s.factor
  if factor is None:
    factor = s.max_position_embeddings / s.original_max_position_embeddings
  attention = s.attention_factor
  if attention is None:
    attention = 1.0 if factor <= 1.0 else math.sqrt(
        1 + math.log(factor) / math.log(s.original_max_position_embeddings))
  powers = (np.float32(theta) **
            (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)))
  short, long = (
      (np.float32(1) / (np.asarray(f, np.float32) * powers)).astype(np.float32)
      for f in (s.short_factor, s.long_factor))
  return short, long, float(attention)


def cos_sin(positions, head_dim: int, theta: float,
            scaling: RopeScaling | None = None):
  """cos/sin tables `[..., T, head_dim]` (float32) for int `positions[..., T]`.

  Raises:
    ValueError: a 'dynamic' RoPE asked for more than
      `original_max_position_embeddings` positions (see the module doc).
  """
  short, long, attention = inv_freqs(scaling, theta, head_dim)
  if scaling is not None and scaling.rope_type == 'dynamic':
    if positions.shape[-1] > scaling.original_max_position_embeddings:
      raise ValueError(
          f'sequence length {positions.shape[-1]} exceeds '
          f'max_position_embeddings={scaling.original_max_position_embeddings}'
          f' of a dynamic-NTK RoPE model; beyond it transformers\' result '
          f'depends on earlier calls, so dpjax refuses it: use sequences of '
          f'at most that length')
  if scaling is not None and scaling.rope_type == 'longrope':
    longest = jnp.max(positions) + 1
    inv = jnp.where(longest > scaling.original_max_position_embeddings,
                    jnp.asarray(long), jnp.asarray(short))
  else:
    inv = jnp.asarray(short)
  freqs = positions.astype(jnp.float32)[..., None] * inv
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  if attention != 1.0:
    cos, sin = cos * attention, sin * attention
  return cos, sin
