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

from dpjax.models import family_module
from dpjax.models.tokenizer import HFTokenizer

ARCHITECTURES = ('llama', 'qwen2')

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
_FILE_TYPES = {'float32': gguf.LlamaFileType.ALL_F32,
               'float16': gguf.LlamaFileType.MOSTLY_F16,
               'q8_0': gguf.LlamaFileType.MOSTLY_Q8_0}


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
  if pre not in (None, 'gpt2', 'default'):
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
                     add_special_tokens=add_bos)


def _pre_name(pre_json: Any) -> str:
  """llama.cpp pre-tokenizer name for a tokenizers pre_tokenizer JSON."""
  if not pre_json:
    return 'default'
  if pre_json.get('type') == 'ByteLevel':
    return 'gpt2'
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


def load_gguf(path: str) -> tuple[str, Any, Any, HFTokenizer | None]:
  """Loads a GGUF file of a Llama / Qwen2 model.

  Args:
    path: the `.gguf` file.

  Returns:
    `(family, config, params, tokenizer)`, params float32, tokenizer an
    `HFTokenizer` (None when the file has no vocabulary).

  Raises:
    ValueError: a missing file, an unsupported architecture or tokenizer, or
      tensors that do not match the metadata.
  """
  if not os.path.isfile(path):
    raise ValueError(f'path: no GGUF file at {path!r}')
  reader = gguf.GGUFReader(path)
  arch = _field(reader, 'general.architecture')
  if arch not in ARCHITECTURES:
    raise ValueError(f'GGUF general.architecture={arch!r} is not supported; '
                     f'dpjax reads {ARCHITECTURES}')
  if _field(reader, f'{arch}.rope.scaling.type') not in (None, 'none'):
    raise ValueError('GGUF rope scaling is not supported')
  raw = {}
  unknown = []
  for t in reader.tensors:
    name = _hf_name(t.name)
    if name is None:
      unknown.append(t.name)
      continue
    arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type),
                     dtype=np.float32)
    raw[name] = arr.reshape(tuple(int(d) for d in reversed(t.shape)))
  if unknown:
    raise ValueError(f'GGUF tensors not understood by dpjax: {unknown}')

  def need(key):
    value = _field(reader, f'{arch}.{key}')
    if value is None:
      raise ValueError(f'GGUF metadata lacks {arch}.{key}')
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
  module = family_module(arch)
  config = module.LlamaConfig(**fields)
  if arch == 'llama':
    for name in list(raw):
      if '.self_attn.q_proj.' in name:
        raw[name] = _unpermute(raw[name], heads)
      elif '.self_attn.k_proj.' in name:
        raw[name] = _unpermute(raw[name], kv_heads)
  params = module.params_from_hf(raw, config)
  return arch, config, params, tokenizer_from_gguf(reader)


def save_gguf(path: str, family: str, config: Any, params: Any,
              tokenizer: HFTokenizer | None = None, *,
              dtype: str = 'float32', name: str | None = None) -> None:
  """Writes a GGUF file in llama.cpp's layout.

  Args:
    path: output `.gguf` file.
    family: 'llama' or 'qwen2' (the GGUF architecture).
    config: the `LlamaConfig`.
    params: the Flax parameter tree.
    tokenizer: an `HFTokenizer` with a byte-level BPE model, optional.
    dtype: 'float32', 'float16' or 'q8_0' for matrices (vectors stay
      float32, as llama.cpp writes them; a matrix whose rows are not a
      multiple of 32 long stays float16 under 'q8_0').
    name: `general.name`, optional.
  """
  if family not in ARCHITECTURES:
    raise ValueError(f'family must be one of {ARCHITECTURES} for GGUF, got '
                     f'{family!r}')
  if dtype not in _FILE_TYPES:
    raise ValueError(f'dtype must be one of {sorted(_FILE_TYPES)}, got '
                     f'{dtype!r}')
  module = family_module(family)
  tensors = module.params_to_hf(params, config)
  w = gguf.GGUFWriter(os.fspath(path), family)
  if name:
    w.add_name(name)
  w.add_context_length(config.max_position_embeddings)
  w.add_embedding_length(config.hidden_size)
  w.add_block_count(config.num_layers)
  w.add_feed_forward_length(config.intermediate_size)
  w.add_head_count(config.num_heads)
  w.add_head_count_kv(config.num_kv_heads)
  w.add_rope_freq_base(float(config.rope_theta))
  w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
  w.add_rope_dimension_count(config.head_dim)
  if config.head_dim * config.num_heads != config.hidden_size:
    w.add_key_length(config.head_dim)
    w.add_value_length(config.head_dim)
  w.add_vocab_size(config.vocab_size)
  w.add_file_type(_FILE_TYPES[dtype])
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
  for hf_name, arr in tensors.items():
    arr = np.asarray(arr, dtype=np.float32)
    if family == 'llama' and '.self_attn.q_proj.' in hf_name:
      arr = _permute(arr, config.num_heads)
    elif family == 'llama' and '.self_attn.k_proj.' in hf_name:
      arr = _permute(arr, config.num_kv_heads)
    name = _gguf_name(hf_name)
    if arr.ndim > 1 and dtype == 'q8_0' and arr.shape[-1] % 32 == 0:
      q8 = gguf.GGMLQuantizationType.Q8_0
      w.add_tensor(name, gguf.quants.quantize(arr, q8), raw_dtype=q8)
      continue
    if arr.ndim > 1 and dtype != 'float32':
      arr = arr.astype(np.float16)
    w.add_tensor(name, np.ascontiguousarray(arr))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
