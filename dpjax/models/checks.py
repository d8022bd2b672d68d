"""Checks of what the model loaders read: JSON files and tensor values.

Every failure is a `ValueError` whose message names the file, says what is
wrong and, where it helps, what would be valid, so that a bad checkpoint is
reported in one line rather than as a traceback from a parser.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np

# How many offending tensors a message names.
_MAX_NAMED = 5


def read_json(path: str) -> Any:
  """The parsed content of the JSON file `path`.

  Raises:
    ValueError: the file is not valid UTF-8 JSON (the message gives the path,
      line and column), or cannot be read.
  """
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: not valid JSON: {e.msg} at line {e.lineno} '
                     f'column {e.colno}') from e
  except UnicodeDecodeError as e:
    raise ValueError(f'{path}: not valid JSON: not UTF-8 text (byte '
                     f'{e.start}); the file may be corrupt') from e
  except OSError as e:
    raise ValueError(f'{path}: cannot be read ({e.strerror or e})') from e


def read_json_object(path: str) -> dict[str, Any]:
  """`read_json(path)`, which must be a JSON object (a dict).

  Raises:
    ValueError: as `read_json`, or the top level is not an object.
  """
  value = read_json(path)
  if not isinstance(value, dict):
    raise ValueError(f'{path}: expected a JSON object {{...}} at the top '
                     f'level, got a {type(value).__name__}')
  return value


def check_finite(tensors: Mapping[str, np.ndarray], source: str) -> None:
  """Raises if any floating-point tensor holds NaN or +-inf.

  Integer and boolean tensors are skipped (they are always finite).

  Args:
    tensors: tensor name -> array (numpy, including `ml_dtypes` bfloat16).
    source: the file (or folder) the tensors were read from, for the message.

  Raises:
    ValueError: naming `source`, how many tensors are affected and up to five
      of them with their count of non-finite values.
  """
  bad = []
  for name, value in tensors.items():
    arr = np.asarray(value)
    if arr.dtype.kind in 'biu':
      continue
    finite = np.isfinite(arr)
    if not finite.all():
      bad.append((name, arr.size - int(np.count_nonzero(finite)), arr.size))
  if bad:
    shown = ', '.join(f'{name} ({n} of {size})'
                      for name, n, size in bad[:_MAX_NAMED])
    more = (f' and {len(bad) - _MAX_NAMED} more' if len(bad) > _MAX_NAMED
            else '')
    raise ValueError(f'{source}: {len(bad)} tensor(s) hold NaN or inf values: '
                     f'{shown}{more}; a checkpoint must hold finite weights '
                     f'(the file may be corrupt or the model diverged)')


def make_readable(path: str) -> None:
  """Gives a written file the permissions of an ordinary new file.

  `safetensors` creates files 0600; exports are meant to be copied and
  served, so they get 0666 minus the process umask (0644 usually), as
  `open(path, 'w')` would.
  """
  import os  # pylint: disable=g-import-not-at-top
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)
