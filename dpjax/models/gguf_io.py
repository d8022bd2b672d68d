"""Read and write GGUF files (llama.cpp's format) for Llama / Qwen2 models.

`load_gguf` builds the config from the file's metadata, dequantizes every
tensor to float32 (`gguf.quants.dequantize`: Q4_0/1, Q8_0, K-quants, F16,
...), undoes llama.cpp's row permutation of the Q/K projections (architecture
'llama' only; Qwen2 already uses the rotate-half layout) and rebuilds a
byte-level BPE `tokenizers.Tokenizer` from the vocabulary and merges.
`save_gguf` writes float32, float16 or Q8_0 tensors with the metadata and tensor
names llama.cpp's converter uses, so `gguf.GGUFReader` and `load_gguf` read it
back.

Only byte-level BPE vocabularies (`tokenizer.ggml.model == 'gpt2'`, e.g.
SmolLM2, Llama 3, Qwen2) become tokenizers; for a SentencePiece ('llama')
vocabulary `load_gguf` warns and returns the weights without a tokenizer.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import gguf
import numpy as np
import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, processors

from dpjax.models import checks
from dpjax.models import family_module
from dpjax.models import rope as rope_lib
from dpjax.models.tokenizer import HFTokenizer

ARCHITECTURES = ('llama', 'qwen2')

_ROPE_FREQS = 'rope_freqs'
# GGUF per-block tensor name -> HF name (without `model.layers.{i}.`).
_BLOCK = {
    'attn_norm': 'input_layernorm',
    'ffn_norm': 'post_attention_layernorm',
    'attn_q': 'self_attn.q_proj',
    'attn_k': 'self_attn.k_proj',
    'attn_v': 'self_attn.v_proj',
    'attn_output': 'self_attn.o_proj',
    'ffn_gate': 'mlp.gate_proj',
    'ffn_up': 'mlp.up_proj',
    'ffn_down': 'mlp.down_proj',
}
_GLOBAL = {
    'token_embd.weight': 'model.embed_tokens.weight',
    'output_norm.weight': 'model.norm.weight',
    'output.weight': 'lm_head.weight',
    # llama.cpp's per-frequency RoPE divisors (Llama 3.1 style scaling).
    'rope_freqs.weight': _ROPE_FREQS,
}

# llama.cpp pre-tokenizer names -> split regex (byte-level BPE).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
                 r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|"
                 r"\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
                r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {'llama-bpe': _LLAMA3_SPLIT, 'llama3': _LLAMA3_SPLIT,
           'llama-v3': _LLAMA3_SPLIT, 'qwen2': _QWEN2_SPLIT}
_DIGIT_THEN_GPT2 = ('smollm', 'starcoder', 'refact', 'command-r', 'codeshell',
                    'exaone', 'minerva')
_CONTROL, _USER_DEFINED, _UNUSED, _NORMAL = 3, 4, 5, 1
# Export dtypes (`config.export.gguf_dtype`); the default is chosen by the
# measured held-out NLL of each (experiments/results/export_dtypes.md).
DTYPES = ('f32', 'f16', 'q8_0')
DEFAULT_DTYPE = 'q8_0'
_DTYPE_ALIASES = {'float32': 'f32', 'float16': 'f16'}
_FILE_TYPES = {'f32': gguf.LlamaFileType.ALL_F32,
               'f16': gguf.LlamaFileType.MOSTLY_F16,
               'q8_0': gguf.LlamaFileType.MOSTLY_Q8_0}
# `general.*` keys save_gguf accepts -> GGUFWriter method.
_GENERAL = {'basename': 'add_basename', 'finetune': 'add_finetune',
            'description': 'add_description', 'license': 'add_license',
            'base_model': None, 'tags': None}


def _hf_name(gguf_name: str) -> str | None:
  if gguf_name in _GLOBAL:
    return _GLOBAL[gguf_name]
  parts = gguf_name.split('.')
  if len(parts) == 4 and parts[0] == 'blk' and parts[2] in _BLOCK:
    return f'model.layers.{parts[1]}.{_BLOCK[parts[2]]}.{parts[3]}'
  return None


def _gguf_name(hf_name: str) -> str:
  for g, h in _GLOBAL.items():
    if h == hf_name:
      return g
  inverse = {v: k for k, v in _BLOCK.items()}
  rest = hf_name[len('model.layers.'):]
  layer, rest = rest.split('.', 1)
  module, kind = rest.rsplit('.', 1)
  return f'blk.{layer}.{inverse[module]}.{kind}'


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """HF -> llama.cpp row order of a Q/K weight or bias (llama arch)."""
  return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp -> HF row order of a Q/K weight or bias (llama arch)."""
  return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def _reason(e: Exception) -> str:
  """A short one-line reason for a low-level read error."""
  text = ' '.join(str(e).split())
  if len(text) > 160:
    text = text[:157] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
  field = reader.get_field(key)
  return default if field is None else field.contents()


# ----------------------------------------------------------------------------
# Tokenizer.


def _pre_tokenizer(pre: str | None):
  if pre in _DIGIT_THEN_GPT2:
    # llama.cpp: each digit alone, then the GPT-2 split (as SmolLM2's HF
    # tokenizer.json: Digits(individual) + ByteLevel). transformers' GGUF
    # tokenizer omits the digit split, so multi-digit numbers differ there.
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  if pre in _SPLITS:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior='isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  if pre not in (None, 'gpt2', 'gpt-2', 'default'):
    warnings.warn(f'GGUF tokenizer.ggml.pre={pre!r} is not known to dpjax; '
                  f'using the GPT-2 split, which may tokenize some text '
                  f'differently from llama.cpp')
  return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def tokenizer_from_gguf(reader: gguf.GGUFReader) -> HFTokenizer | None:
  """Rebuilds the tokenizer from GGUF metadata; None when there is none.

  A vocabulary that is not byte-level BPE (e.g. SentencePiece) gives a
  warning and None.
  """
  kind = _field(reader, 'tokenizer.ggml.model')
  if kind is None:
    return None
  if kind != 'gpt2':
    warnings.warn(f'GGUF tokenizer.ggml.model={kind!r} is not supported (only '
                  f'byte-level BPE, "gpt2"); returning no tokenizer')
    return None
  tokens = _field(reader, 'tokenizer.ggml.tokens')
  types = _field(reader, 'tokenizer.ggml.token_type') or [_NORMAL] * len(tokens)
  merges = _field(reader, 'tokenizer.ggml.merges') or []
  vocab = {}
  for i, tok in enumerate(tokens):
    vocab.setdefault(tok, i)
  tok = tokenizers.Tokenizer(models.BPE(
      vocab=vocab, merges=[tuple(m.split(' ', 1)) for m in merges],
      fuse_unk=False))
  tok.pre_tokenizer = _pre_tokenizer(_field(reader, 'tokenizer.ggml.pre'))
  tok.decoder = decoders.ByteLevel()
  special = [tokenizers.AddedToken(t, special=True, normalized=False)
             for t, ty in zip(tokens, types) if ty == _CONTROL]
  user = [tokenizers.AddedToken(t, special=False, normalized=False)
          for t, ty in zip(tokens, types) if ty == _USER_DEFINED]
  if special:
    tok.add_special_tokens(special)
  if user:
    tok.add_tokens(user)
  bos = _field(reader, 'tokenizer.ggml.bos_token_id')
  eos = _field(reader, 'tokenizer.ggml.eos_token_id')
  pad = _field(reader, 'tokenizer.ggml.padding_token_id')
  add_bos = bool(_field(reader, 'tokenizer.ggml.add_bos_token', False))
  if add_bos and bos is not None:
    bos_tok = tokens[bos]
    tok.post_processor = processors.TemplateProcessing(
        single=f'{bos_tok} $A', pair=f'{bos_tok} $A {bos_tok} $B',
        special_tokens=[(bos_tok, int(bos))])
  return HFTokenizer(tok, eos_token=None if eos is None else int(eos),
                     pad_token=None if pad is None else int(pad),
                     bos_token=None if bos is None else int(bos),
                     add_special_tokens=add_bos,
                     chat_template=_field(reader, 'tokenizer.chat_template'))


def _pre_name(pre_json: Any) -> str:
  """llama.cpp pre-tokenizer name for a tokenizers pre_tokenizer JSON."""
  if not pre_json:
    return 'default'
  if pre_json.get('type') == 'ByteLevel':
    return 'gpt-2'  # llama.cpp's name (it refuses 'gpt2')
  if pre_json.get('type') == 'Sequence':
    steps = pre_json.get('pretokenizers', [])
    kinds = [s.get('type') for s in steps]
    if kinds == ['Digits', 'ByteLevel'] and steps[0].get('individual_digits'):
      return 'smollm'
    if kinds == ['Split', 'ByteLevel']:
      regex = steps[0].get('pattern', {}).get('Regex')
      for name, split in _SPLITS.items():
        if regex == split:
          return name
  warnings.warn(f'pre-tokenizer {json.dumps(pre_json)[:200]} has no llama.cpp '
                f'name known to dpjax; writing "default"')
  return 'default'


def _tokenizer_metadata(tokenizer: HFTokenizer, vocab_size: int) -> dict:
  spec = json.loads(tokenizer.tokenizer.to_str())
  model = spec['model']
  if model.get('type') != 'BPE':
    raise ValueError(f'tokenizer: only BPE tokenizers can be written to GGUF, '
                     f'got {model.get("type")!r}')
  n = max(tokenizer.vocab_size, vocab_size)
  tokens: list[str | None] = [None] * n
  types = [_NORMAL] * n
  for tok, i in model['vocab'].items():
    tokens[i] = tok
  for added in spec.get('added_tokens', []):
    tokens[added['id']] = added['content']
    types[added['id']] = _CONTROL if added.get('special') else _USER_DEFINED
  for i, tok in enumerate(tokens):
    if tok is None:
      tokens[i], types[i] = f'[PAD{i}]', _UNUSED
  merges = [m if isinstance(m, str) else ' '.join(m) for m in model['merges']]
  return dict(tokens=tokens, types=types, merges=merges,
              pre=_pre_name(spec.get('pre_tokenizer')))


# ----------------------------------------------------------------------------
# Model.


def _rope_from_gguf(reader, arch: str, path: str, freq_factors,
                    context: int) -> rope_lib.RopeScaling | None:
  """The RoPE scaling a GGUF file describes, or a clear refusal.

  llama.cpp applies `theta = pos * freq_scale * base^(-2i/d) / ff[i]`: a
  'linear' type sets `freq_scale = 1 / factor`, a `rope_freqs` tensor
  (Llama 3.1's converter output) sets the divisors `ff`, which is exactly
  `transformers`' LongRoPE with equal short and long factors and no
  attention scaling.
  """
  kind = _field(reader, f'{arch}.rope.scaling.type')
  kind = None if kind in (None, 'none') else kind
  attn = _field(reader, f'{arch}.rope.scaling.attn_factor')
  if attn is not None and float(attn) != 1.0:
    raise ValueError(f'{path}: GGUF rope.scaling.attn_factor={attn} is not '
                     f'supported; dpjax reads plain, linear and rope_freqs '
                     f'RoPE from GGUF (load the Hugging Face folder for '
                     f'other scalings)')
  if kind is not None and freq_factors is not None:
    raise ValueError(f'{path}: GGUF has both rope.scaling.type={kind!r} and '
                     f'a rope_freqs tensor; dpjax reads one or the other')
  if kind == 'linear':
    factor = float(_field(reader, f'{arch}.rope.scaling.factor', 1.0))
    return rope_lib.RopeScaling('linear', factor=factor)
  if kind is not None:
    raise ValueError(f'{path}: GGUF rope.scaling.type={kind!r} is not '
                     f"supported; dpjax reads 'none' and 'linear' (and a "
                     f'rope_freqs tensor) from GGUF; load the Hugging Face '
                     f'folder for {kind!r}')
  if freq_factors is None:
    return None
  ff = tuple(float(v) for v in np.asarray(freq_factors).reshape(-1))
  return rope_lib.RopeScaling(
      'longrope', short_factor=ff, long_factor=ff, attention_factor=1.0,
      original_max_position_embeddings=context,
      max_position_embeddings=context)


def _rope_to_gguf(config, family: str):
  """`(metadata, rope_freqs or None)` for `config.rope_scaling`.

  Raises:
    ValueError: a scaling llama.cpp cannot express for this architecture.
  """
  s = config.rope_scaling
  if s is None:
    return {}, None
  if s.rope_type == 'linear':
    return {'type': gguf.RopeScalingType.LINEAR, 'factor': s.factor}, None
  short, long, attention = rope_lib.inv_freqs(s, config.rope_theta,
                                              config.head_dim)
  exact = (s.rope_type == 'llama3' or
           (s.rope_type == 'longrope' and attention == 1.0 and
            np.array_equal(short, long)))
  if family == 'llama' and exact:
    base, _, _ = rope_lib.inv_freqs(None, config.rope_theta, config.head_dim)
    return {}, (base / short).astype(np.float32)
  raise ValueError(
      f'export.formats: GGUF cannot carry this model\'s {s.rope_type!r} RoPE '
      f'for architecture {family!r} (dpjax writes plain, linear, and for '
      f'llama also llama3 RoPE to GGUF); export \'hf\' and convert that '
      f'folder with llama.cpp\'s convert_hf_to_gguf.py')


def load_gguf(path: str) -> tuple[str, Any, Any, HFTokenizer | None]:
  """Loads a GGUF file of a Llama / Qwen2 model.

  Args:
    path: the `.gguf` file.

  Returns:
    `(family, config, params, tokenizer)`, params float32, tokenizer an
    `HFTokenizer` (None when the file has no vocabulary).

  Raises:
    ValueError: a missing file, a file that is not readable GGUF (truncated,
      corrupt), an unsupported architecture or tokenizer, tensors that do not
      match the metadata or hold NaN/inf. The message names the file.
  """
  if not os.path.isfile(path):
    raise ValueError(f'path: no GGUF file at {path!r}')
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # pylint: disable=broad-except
    # gguf raises ValueError, struct/numpy errors, ... on a damaged file.
    raise ValueError(f'{path}: not a readable GGUF file ({_reason(e)}); the '
                     f'file may be truncated or corrupt') from e
  arch = _field(reader, 'general.architecture')
  if arch not in ARCHITECTURES:
    raise ValueError(f'{path}: GGUF general.architecture={arch!r} is not '
                     f'supported; dpjax reads {", ".join(ARCHITECTURES)}')
  raw = {}
  unknown = []
  current = None
  try:
    for t in reader.tensors:
      current = t.name
      name = _hf_name(t.name)
      if name is None:
        unknown.append(t.name)
        continue
      arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type),
                       dtype=np.float32)
      raw[name] = arr.reshape(tuple(int(d) for d in reversed(t.shape)))
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{path}: not a readable GGUF file (tensor {current}: '
                     f'{_reason(e)}); the file may be truncated or '
                     f'corrupt') from e
  if unknown:
    raise ValueError(f'{path}: GGUF tensors not understood by dpjax: '
                     f'{unknown}')

  def need(key):
    value = _field(reader, f'{arch}.{key}')
    if value is None:
      raise ValueError(f'{path}: GGUF metadata lacks {arch}.{key}')
    return value

  hidden = int(need('embedding_length'))
  heads = int(need('attention.head_count'))
  kv_heads = int(_field(reader, f'{arch}.attention.head_count_kv', heads))
  head_dim = int(_field(reader, f'{arch}.attention.key_length',
                        _field(reader, f'{arch}.rope.dimension_count',
                               hidden // heads)))
  embed = raw.get('model.embed_tokens.weight')
  vocab_size = _field(reader, f'{arch}.vocab_size')
  if vocab_size is None:
    vocab_size = embed.shape[0] if embed is not None else len(
        _field(reader, 'tokenizer.ggml.tokens'))
  fields = dict(
      family=arch,
      vocab_size=int(vocab_size),
      hidden_size=hidden,
      intermediate_size=int(need('feed_forward_length')),
      num_layers=int(need('block_count')),
      num_heads=heads,
      num_kv_heads=kv_heads,
      head_dim=head_dim,
      rope_theta=float(f"{_field(reader, f'{arch}.rope.freq_base', 1e4):.7g}"),
      rms_norm_eps=float(f"{need('attention.layer_norm_rms_epsilon'):.7g}"),
      qkv_bias='model.layers.0.self_attn.q_proj.bias' in raw,
      o_bias='model.layers.0.self_attn.o_proj.bias' in raw,
      tie_embeddings='lm_head.weight' not in raw,
      max_position_embeddings=int(_field(reader, f'{arch}.context_length',
                                         2048)),
  )
  fields['rope_scaling'] = _rope_from_gguf(
      reader, arch, path, raw.pop(_ROPE_FREQS, None),
      fields['max_position_embeddings'])
  module = family_module(arch)
  config = module.LlamaConfig(**fields)
  if arch == 'llama':
    for name in list(raw):
      if '.self_attn.q_proj.' in name:
        raw[name] = _unpermute(raw[name], heads)
      elif '.self_attn.k_proj.' in name:
        raw[name] = _unpermute(raw[name], kv_heads)
  checks.check_finite(raw, path)
  try:
    params = module.params_from_hf(raw, config)
  except ValueError as e:
    raise ValueError(f'{path}: the tensors do not match the GGUF metadata: '
                     f'{e}') from e
  return arch, config, params, tokenizer_from_gguf(reader)


def _check_metadata(metadata: dict[str, Any], family: str) -> None:
  reserved = ('general.', 'tokenizer.', f'{family}.')
  for key, value in metadata.items():
    if (not isinstance(key, str) or '.' not in key or
        key.startswith(reserved)):
      raise ValueError(f'metadata: key {key!r} must be namespaced (e.g. '
                       f'"dpjax.epsilon") and not start with {reserved}')
    if not isinstance(value, (str, bool, int, float)):
      raise ValueError(f'metadata: {key}={value!r}; valid: str, bool, int '
                       'or float')


def _add_metadata(w: gguf.GGUFWriter, key: str, value: Any) -> None:
  if isinstance(value, bool):
    w.add_bool(key, value)
  elif isinstance(value, int):
    w.add_int64(key, value)
  elif isinstance(value, float):
    w.add_float64(key, value)
  else:
    w.add_string(key, value)


def read_metadata(path: str, prefix: str = '') -> dict[str, Any]:
  """The GGUF file's metadata keys starting with `prefix`, as Python values.

  Args:
    path: a `.gguf` file.
    prefix: e.g. 'dpjax.' or 'general.'; '' reads every key (the token lists
      included).

  Returns:
    {key: value}: str, bool, int, float or a list of them.
  """
  reader = gguf.GGUFReader(os.fspath(path))
  return {key: field.contents() for key, field in reader.fields.items()
          if key.startswith(prefix) and not key.startswith('GGUF.')}


def save_gguf(path: str, family: str, config: Any, params: Any,
              tokenizer: HFTokenizer | None = None, *,
              dtype: str = DEFAULT_DTYPE, name: str | None = None,
              general: dict[str, Any] | None = None,
              metadata: dict[str, Any] | None = None) -> None:
  """Writes a GGUF file in llama.cpp's layout.

  Args:
    path: output `.gguf` file (readable by all, like the other outputs).
    family: 'llama' or 'qwen2' (the GGUF architecture).
    config: the `LlamaConfig`.
    params: the Flax parameter tree.
    tokenizer: an `HFTokenizer` with a byte-level BPE model, optional; its
      chat template becomes `tokenizer.chat_template`.
    dtype: 'f32', 'f16' or 'q8_0' (or 'float32', 'float16') for matrices.
      Vectors (norms, biases, rope_freqs) stay float32, as llama.cpp writes
      them; under 'q8_0' a matrix whose rows are not a multiple of 32 long
      is written float16.
    name: `general.name`; default 'dpjax <family> model'.
    general: more `general.*` keys of the GGUF spec, by suffix: 'basename',
      'finetune', 'description', 'license', 'base_model' (a name), 'tags'
      (a list of str); `general.type`, `general.size_label`,
      `general.quantized_by` and `general.quantization_version` are always
      written.
    metadata: more keys in their own namespace (e.g. `dpjax.epsilon`): str,
      bool, int (written int64) or float (float64) values; `read_metadata`
      reads them back.

  Raises:
    ValueError: an unknown dtype or family, a RoPE scaling llama.cpp
      cannot express for this architecture, or a metadata key in a reserved
      namespace or with an unsupported value type.
  """
  if family not in ARCHITECTURES:
    raise ValueError(f'family must be one of {ARCHITECTURES} for GGUF, got '
                     f'{family!r}')
  file_type = _FILE_TYPES.get(_DTYPE_ALIASES.get(dtype, dtype))
  if file_type is None:
    raise ValueError(f'dtype must be one of {list(DTYPES)}, got {dtype!r}')
  dtype = _DTYPE_ALIASES.get(dtype, dtype)
  general = dict(general or {})
  unknown = sorted(set(general) - set(_GENERAL))
  if unknown:
    raise ValueError(f'general: unknown key(s) {unknown}; valid: '
                     f'{sorted(_GENERAL)}')
  metadata = dict(metadata or {})
  _check_metadata(metadata, family)
  rope_meta, rope_freqs = _rope_to_gguf(config, family)
  module = family_module(family)
  tensors = module.params_to_hf(params, config)
  n_params = sum(int(np.prod(np.shape(v))) for v in tensors.values())
  w = gguf.GGUFWriter(os.fspath(path), family)
  w.add_type(gguf.GGUFType.MODEL)
  w.add_name(name or f'dpjax {family} model')
  w.add_size_label(gguf.size_label(n_params, 0, 0, 0))
  w.add_quantized_by('dpjax')
  for key, value in general.items():
    if value in (None, '', [], ()):
      continue
    if key == 'base_model':
      w.add_base_model_count(1)
      w.add_base_model_name(0, str(value))
    elif key == 'tags':
      w.add_tags([str(t) for t in value])
    else:
      getattr(w, _GENERAL[key])(str(value))
  for key, value in metadata.items():
    _add_metadata(w, key, value)
  w.add_context_length(config.max_position_embeddings)
  w.add_embedding_length(config.hidden_size)
  w.add_block_count(config.num_layers)
  w.add_feed_forward_length(config.intermediate_size)
  w.add_head_count(config.num_heads)
  w.add_head_count_kv(config.num_kv_heads)
  w.add_rope_freq_base(float(config.rope_theta))
  if rope_meta:
    w.add_rope_scaling_type(rope_meta['type'])
    w.add_rope_scaling_factor(float(rope_meta['factor']))
  w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
  w.add_rope_dimension_count(config.head_dim)
  if config.head_dim * config.num_heads != config.hidden_size:
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
  w.add_vocab_size(config.vocab_size)
  w.add_file_type(file_type)
  w.add_quantization_version(gguf.GGML_QUANT_VERSION)
  if tokenizer is not None:
    meta = _tokenizer_metadata(tokenizer, config.vocab_size)
    w.add_tokenizer_model('gpt2')
    w.add_tokenizer_pre(meta['pre'])
    w.add_token_list(meta['tokens'])
    w.add_token_types(meta['types'])
    w.add_token_merges(meta['merges'])
    w.add_eos_token_id(tokenizer.eos_id)
    w.add_pad_token_id(tokenizer.pad_id)
    if tokenizer.bos_id is not None:
      w.add_bos_token_id(tokenizer.bos_id)
    w.add_add_bos_token(bool(tokenizer.add_special_tokens and
                             tokenizer.bos_id is not None))
    if getattr(tokenizer, 'chat_template', None):
      w.add_chat_template(tokenizer.chat_template)
  if rope_freqs is not None:
    w.add_tensor('rope_freqs.weight', rope_freqs)
  for hf_name, arr in tensors.items():
    arr = np.asarray(arr, dtype=np.float32)
    if family == 'llama' and '.self_attn.q_proj.' in hf_name:
      arr = _permute(arr, config.num_heads)
    elif family == 'llama' and '.self_attn.k_proj.' in hf_name:
      arr = _permute(arr, config.num_kv_heads)
    tensor_name = _gguf_name(hf_name)
    if arr.ndim > 1 and dtype == 'q8_0' and arr.shape[-1] % 32 == 0:
      q8 = gguf.GGMLQuantizationType.Q8_0
      w.add_tensor(tensor_name, gguf.quants.quantize(arr, q8), raw_dtype=q8)
      continue
    if arr.ndim > 1 and dtype != 'f32':
      arr = arr.astype(np.float16)
    w.add_tensor(tensor_name, np.ascontiguousarray(arr))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  checks.make_readable(path)
