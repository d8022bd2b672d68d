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
from typing import Any

import jax.numpy as jnp
import numpy as np
from safetensors import numpy as safetensors_np

from dpjax.models import family_module
from dpjax.models.tokenizer import HFTokenizer

_INDEX = 'model.safetensors.index.json'


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


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
  """All tensors of a folder: sharded (via the index) or single-file.

  Raises:
    ValueError: no safetensors file, or a shard named by the index is absent.
  """
  index_path = os.path.join(folder, _INDEX)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f)['weight_map']
    files = sorted(set(weight_map.values()))
    absent = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
    if absent:
      raise ValueError(f'{_INDEX} in {folder!r} names shards that are absent: '
                       f'{absent}')
  else:
    files = sorted(os.path.basename(p)
                   for p in glob.glob(os.path.join(folder, '*.safetensors')))
    if not files:
      raise ValueError(f'no *.safetensors file in {folder!r} (PyTorch .bin '
                       f'checkpoints are not supported; convert them first)')
  tensors: dict[str, np.ndarray] = {}
  for name in files:
    part = safetensors_np.load_file(os.path.join(folder, name))
    dup = sorted(set(part) & set(tensors))
    if dup:
      raise ValueError(f'tensors {dup} appear in more than one shard of '
                       f'{folder!r}')
    tensors.update(part)
  return tensors


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
    ValueError: not a local folder (e.g. a Hub model id), an unknown
      `model_type`, or tensors that do not match the config (the message
      lists every missing, unexpected and mis-shaped tensor).
  """
  folder = _check_folder(path)
  config_path = os.path.join(folder, 'config.json')
  if not os.path.isfile(config_path):
    raise ValueError(f'no config.json in {folder!r}')
  with open(config_path) as f:
    config_json = json.load(f)
  family = config_json.get('model_type')
  if family is None:
    raise ValueError(f'{config_path}: no "model_type" field')
  module = family_module(family)
  config = module.from_hf_config(config_json)
  if dtype is not None:
    if not any(f.name == 'param_dtype' for f in dataclasses.fields(config)):
      raise ValueError(f'dtype: the {family} config has no param_dtype field')
    try:
      dtype_name = jnp.dtype(dtype).name
    except TypeError as e:
      raise ValueError(f'dtype must name a dtype such as "float32", got '
                       f'{dtype!r}') from e
    config = dataclasses.replace(config, param_dtype=dtype_name)
  params = module.params_from_hf(read_safetensors(folder), config)
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
                   tokenizer: HFTokenizer | None = None) -> None:
  """Writes `config.json`, `model.safetensors` (and the tokenizer files).

  The folder loads with `transformers.AutoModelForCausalLM.from_pretrained`.
  Tied embeddings are written once (`transformers` re-ties them).

  Args:
    path: output folder (created if absent; files are overwritten).
    family: model family name, e.g. 'llama', 'qwen2'.
    config: the family's config.
    params: the Flax parameter tree.
    tokenizer: an `HFTokenizer` to save alongside, optional.
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
  safetensors_np.save_file(tensors, os.path.join(path, 'model.safetensors'),
                           metadata={'format': 'pt'})
  if tokenizer is not None:
    tokenizer.save(path)
