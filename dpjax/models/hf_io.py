"""Read and write Hugging Face model folders (config.json + safetensors).

`load_hf_folder` reads a local folder as `transformers.save_pretrained`
writes it: `config.json`, one `model.safetensors` or shards listed in
`model.safetensors.index.json`, and optionally `tokenizer.json`. The family
is chosen by `config.json`'s `model_type` through `dpjax.models`.
`save_hf_folder` writes a folder that `transformers.AutoModelForCausalLM.
from_pretrained` loads. Nothing is downloaded: this works offline only.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from typing import Any

import jax.numpy as jnp
import numpy as np
import safetensors
from safetensors import numpy as safetensors_np

from dpjax.models import FAMILIES
from dpjax.models import checks
from dpjax.models import family_module
from dpjax.models.tokenizer import HFTokenizer

_INDEX = 'model.safetensors.index.json'

# What `config.json`'s `architectures` may name, per family: decoders load as
# causal LMs (also a bare `*Model` body, which ties its embeddings); encoders
# as a body (MLM/NSP heads are dropped) or a sequence classifier.
_LOADS_AS = {
    'llama': 'LlamaForCausalLM', 'qwen2': 'Qwen2ForCausalLM',
    'bitnet': 'BitNetForCausalLM', 'gpt2': 'GPT2LMHeadModel',
    'bert': 'BertModel, BertForMaskedLM or BertForSequenceClassification',
    'roberta': ('RobertaModel, RobertaForMaskedLM or '
                'RobertaForSequenceClassification'),
}
# Heads whose tensors no family can take (e.g. `LlamaForSequenceClassification`
# would otherwise load as a causal LM without its `score` head).
_DECODER_HEAD = re.compile(r'For(?!CausalLM$)[A-Z]\w*$|DoubleHeadsModel$')
_ENCODER_HEAD = re.compile(
    r'For(TokenClassification|QuestionAnswering|MultipleChoice)$')


def _check_folder(path: str) -> str:
  path = os.fspath(path)
  if os.path.isdir(path):
    return path
  looks_like_id = (path.count('/') == 1 and not path.startswith(('.', '/', '~'))
                   and not os.path.exists(path))
  if looks_like_id:
    raise ValueError(
        f'path {path!r} looks like a Hugging Face Hub model id, but only local '
        f'folders work offline. Download it elsewhere (e.g. `huggingface-cli '
        f'download {path} --local-dir DIR`) and pass DIR.')
  raise ValueError(f'path {path!r} is not a folder; expected a local folder '
                   f'with config.json and *.safetensors')


def read_safetensors(folder: str, *, check_finite: bool = False
                     ) -> dict[str, np.ndarray]:
  """All tensors of a folder: sharded (via the index) or single-file.

  Args:
    folder: the model folder.
    check_finite: refuse a file whose floating-point tensors hold NaN or inf.

  Raises:
    ValueError: no safetensors file, a bad index or a shard it names is
      absent, a file that is not readable safetensors (truncated, corrupt),
      or (with `check_finite`) non-finite values. The message names the file.
  """
  index_path = os.path.join(folder, _INDEX)
  if os.path.isfile(index_path):
    index = checks.read_json_object(index_path)
    weight_map = index.get('weight_map')
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) for v in weight_map.values()):
      raise ValueError(f'{index_path}: expected a "weight_map" object of '
                       f'tensor name -> shard file name, got '
                       f'{weight_map!r:.80}')
    files = sorted(set(weight_map.values()))
    absent = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if absent:
      raise ValueError(f'{index_path}: names shards that are absent from '
                       f'{folder}: {absent}; a sharded checkpoint needs every '
                       f'shard file the index lists')
  else:
    files = sorted(os.path.basename(p)
                   for p in glob.glob(os.path.join(folder, '*.safetensors')))
    if not files:
      raise ValueError(f'no *.safetensors file in {folder!r} (PyTorch .bin '
                       f'checkpoints are not supported; convert them first)')
  tensors: dict[str, np.ndarray] = {}
  for name in files:
    file_path = os.path.join(folder, name)
    try:
      part = safetensors_np.load_file(file_path)
    except (safetensors.SafetensorError, OSError, ValueError) as e:
      raise ValueError(f'{file_path}: not a readable safetensors file ({e}); '
                       f'the file may be truncated or corrupt') from e
    if check_finite:
      checks.check_finite(part, file_path)
    dup = sorted(set(part) & set(tensors))
    if dup:
      raise ValueError(f'tensors {dup} appear in more than one shard of '
                       f'{folder!r}')
    tensors.update(part)
  return tensors


def _check_architectures(config_path: str, family: str, archs: Any) -> None:
  """Refuses `architectures` naming a head dpjax cannot build for `family`."""
  if archs is None:
    return
  if isinstance(archs, str):
    archs = [archs]
  if not (isinstance(archs, list) and
          all(isinstance(a, str) for a in archs)):
    raise ValueError(f'{config_path}: "architectures" must be a list of '
                     f'class names, got {archs!r:.80}')
  head = _ENCODER_HEAD if family in ('bert', 'roberta') else _DECODER_HEAD
  bad = [a for a in archs if head.search(a)]
  if bad:
    raise ValueError(f'{config_path}: architectures {bad} is not supported '
                     f'for model_type {family!r}; dpjax loads {family} '
                     f'checkpoints saved as {_LOADS_AS[family]}')


def load_hf_folder(path: str, *, dtype: str | None = None
                   ) -> tuple[str, Any, Any, HFTokenizer | None]:
  """Loads a local Hugging Face model folder.

  Args:
    path: a local folder with `config.json` and `*.safetensors`.
    dtype: parameter dtype name (e.g. 'float32', 'bfloat16'); default the
      family config's `param_dtype` (float32). The returned config carries it.

  Returns:
    `(family, config, params, tokenizer)`; tokenizer is an `HFTokenizer`, or
    None when the folder has no `tokenizer.json`.

  Raises:
    ValueError: not a local folder (e.g. a Hub model id), a missing or
      invalid `config.json` (bad JSON, an unsupported `model_type` or
      `architectures` head), a weight file that is truncated, corrupt or
      holds NaN/inf, tensors that do not match the config (the message lists
      every missing, unexpected and mis-shaped tensor) or a bad tokenizer.
      Every message names the file.
  """
  folder = _check_folder(path)
  config_path = os.path.join(folder, 'config.json')
  if not os.path.isfile(config_path):
    raise ValueError(f'{config_path}: no such file; a Hugging Face model '
                     f'folder needs config.json beside its *.safetensors')
  config_json = checks.read_json_object(config_path)
  family = config_json.get('model_type')
  if family is None:
    raise ValueError(f'{config_path}: no "model_type" field')
  if not isinstance(family, str) or family not in FAMILIES:
    raise ValueError(f'{config_path}: model_type {family!r} is not '
                     f'supported; dpjax reads {", ".join(FAMILIES)}')
  _check_architectures(config_path, family, config_json.get('architectures'))
  module = family_module(family)
  try:
    config = module.from_hf_config(config_json)
  except KeyError as e:
    raise ValueError(f'{config_path}: missing field {e}') from e
  except (TypeError, ValueError) as e:
    problem = re.sub(r'^config\.json:? ', '', str(e))
    raise ValueError(f'{config_path}: {problem}') from e
  if dtype is not None:
    if not any(f.name == 'param_dtype' for f in dataclasses.fields(config)):
      raise ValueError(f'dtype: the {family} config has no param_dtype field')
    try:
      dtype_name = jnp.dtype(dtype).name
    except TypeError as e:
      raise ValueError(f'dtype must name a dtype such as "float32", got '
                       f'{dtype!r}') from e
    config = dataclasses.replace(config, param_dtype=dtype_name)
  tensors = read_safetensors(folder, check_finite=True)
  try:
    params = module.params_from_hf(tensors, config)
  except ValueError as e:
    raise ValueError(f'{folder}: the weights do not match config.json: '
                     f'{e}') from e
  tokenizer = None
  if os.path.isfile(os.path.join(folder, 'tokenizer.json')):
    tokenizer = HFTokenizer.from_folder(folder, config_json)
  return family, config, params, tokenizer


def _np_for_safetensors(arr: np.ndarray) -> np.ndarray:
  arr = np.ascontiguousarray(arr)
  if arr.dtype.name not in ('float32', 'float16', 'bfloat16', 'float64',
                            'int32', 'int64', 'int8', 'uint8', 'bool'):
    arr = arr.astype(np.float32)
  return arr


def save_hf_folder(path: str, family: str, config: Any, params: Any,
                   tokenizer: HFTokenizer | None = None, *,
                   readme: str | None = None) -> None:
  """Writes `config.json`, `model.safetensors` (and the tokenizer files).

  The folder loads with `transformers.AutoModelForCausalLM.from_pretrained`.
  Tied embeddings are written once (`transformers` re-ties them).

  Args:
    path: output folder (created if absent; files are overwritten).
    family: model family name, e.g. 'llama', 'qwen2'.
    config: the family's config.
    params: the Flax parameter tree.
    tokenizer: an `HFTokenizer` to save alongside, optional.
    readme: the model card (`README.md`, e.g. `dpjax.model_card.
      render_card`), optional; None leaves any README.md there as it is.
  """
  module = family_module(family)
  os.makedirs(path, exist_ok=True)
  config_json = module.to_hf_config(config)
  if tokenizer is not None:
    config_json.setdefault('eos_token_id', tokenizer.eos_id)
    config_json.setdefault('pad_token_id', tokenizer.pad_id)
    if tokenizer.bos_id is not None:
      config_json.setdefault('bos_token_id', tokenizer.bos_id)
  tensors = {k: _np_for_safetensors(v)
             for k, v in module.params_to_hf(params, config).items()}
  dtypes = {v.dtype.name for v in tensors.values()}
  if len(dtypes) == 1:
    config_json['torch_dtype'] = dtypes.pop()
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config_json, f, indent=2)
  stale = os.path.join(path, _INDEX)
  if os.path.isfile(stale):
    os.remove(stale)
  weights = os.path.join(path, 'model.safetensors')
  safetensors_np.save_file(tensors, weights, metadata={'format': 'pt'})
  checks.make_readable(weights)  # safetensors writes 0600
  if tokenizer is not None:
    tokenizer.save(path)
  if readme is not None:
    card = os.path.join(path, 'README.md')
    with open(card, 'w', encoding='utf-8') as f:
      f.write(readme)
