"""Model families, selected by name from configs.

Each family module exposes:
  `ModelConfig`-like frozen dataclass and `build(**fields) -> (module, config)`;
  `from_hf_config(config_json: dict) -> config`, `to_hf_config(config) -> dict`;
  `params_from_hf(tensors: dict[str, np.ndarray], config) -> params`;
  `params_to_hf(params, config) -> dict[str, np.ndarray]`;
  `DROPOUT_FIELDS`: the config fields that `config.model.dropout_rate` sets
  (`dropout_fields`), since each family keeps its Hugging Face names.
Modules are imported lazily so that a family's optional dependencies are only
needed when it is used.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
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


def dropout_fields(family: str, rate: float) -> dict[str, float]:
  """The family's config fields set to the shared `model.dropout_rate`.

  Llama/Qwen2: residual-branch dropout (`dropout_rate`); GPT-2: residual,
  embedding and attention dropout; BitNet: attention dropout; BERT/RoBERTa:
  hidden, attention and classifier dropout. Dropout uses the rng collection
  'dropout' and is applied only when the model is called with
  `deterministic=False`.

  Raises:
    ValueError: `rate` is not in [0, 1).
  """
  try:
    value = float(rate)
  except (TypeError, ValueError):
    value = math.nan
  if isinstance(rate, bool) or not (math.isfinite(value) and
                                    0.0 <= value < 1.0):
    raise ValueError(f'dropout_rate must be a number in [0, 1), got {rate!r}.')
  return dict.fromkeys(family_module(family).DROPOUT_FIELDS, value)


def with_dropout(model_config: Any, rate: float) -> Any:
  """`model_config` (a family config dataclass) with every dropout at `rate`."""
  return dataclasses.replace(model_config,
                             **dropout_fields(model_config.family, rate))


def dropout_rate(model_config: Any) -> float:
  """The largest dropout probability in `model_config` (0: no dropout)."""
  fields = family_module(model_config.family).DROPOUT_FIELDS
  return max((float(getattr(model_config, f) or 0.0) for f in fields),
             default=0.0)
