"""Model families, selected by name from configs.

Each family module exposes:
  `ModelConfig`-like frozen dataclass and `build(**fields) -> (module, config)`;
  `from_hf_config(config_json: dict) -> config`, `to_hf_config(config) -> dict`;
  `params_from_hf(tensors: dict[str, np.ndarray], config) -> params`;
  `params_to_hf(params, config) -> dict[str, np.ndarray]`.
Modules are imported lazily so that a family's optional dependencies are only
needed when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

FAMILIES = {
    'llama': 'dpjax.models.llama',
    'qwen2': 'dpjax.models.llama',
    'bitnet': 'dpjax.models.bitnet',
    'bert': 'dpjax.models.bert',
    'roberta': 'dpjax.models.bert',
    'gpt2': 'dpjax.models.gpt2',
}


def family_module(family: str):
  """Returns the module implementing `family`, or raises a clear error."""
  if family not in FAMILIES:
    raise ValueError(f'model.family must be one of {sorted(FAMILIES)}, '
                     f'got {family!r}.')
  return importlib.import_module(FAMILIES[family])


def build_model(family: str, **fields: Any):
  """Builds `(flax_module, model_config)` for `family` from config fields."""
  return family_module(family).build(family=family, **fields)
