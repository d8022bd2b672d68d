"""Suite-wide pytest setup: one JAX compilation cache per test session.

Many tests train the same tiny models with the same shapes, in two xdist
workers and in `python -m dpjax.main` subprocesses; XLA compilation is most
of their time. A persistent compilation cache shared by the session's
processes (keyed by the HLO, the flags and the jax version, so a hit is the
same executable) compiles each program once. The cache lives in a fresh
temporary folder per session and is removed at its end: every session starts
cold, as CI does. `DPJAX_TEST_NO_JAX_CACHE=1` turns it off.

XLA:CPU's backend (LLVM) optimisation is turned down to level 0 for the
suite (`--xla_backend_optimization_level=0`, as experiments/ never do): the
HLO passes, hence what is computed, are unchanged; the tiny test programs
compile in about 20% less time and run a little slower.
`DPJAX_TEST_XLA_OPT=1` keeps the default level.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid

_ENV = 'JAX_COMPILATION_CACHE_DIR'
_SETTINGS = {'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
             'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'}


def _cache_dir(config) -> str:
  run = getattr(config, 'workerinput', {}).get('testrunuid') or os.environ.get(
      'DPJAX_TEST_RUN') or uuid.uuid4().hex
  os.environ['DPJAX_TEST_RUN'] = run
  return os.path.join(tempfile.gettempdir(), f'dpjax-test-jax-cache-{run}')


def pytest_configure(config):
  flag = '--xla_backend_optimization_level'
  xla = os.environ.get('XLA_FLAGS', '')
  if not os.environ.get('DPJAX_TEST_XLA_OPT') and flag not in xla:
    os.environ['XLA_FLAGS'] = (xla + f' {flag}=0').strip()
  if os.environ.get('DPJAX_TEST_NO_JAX_CACHE') or _ENV in os.environ:
    return
  path = _cache_dir(config)
  os.makedirs(path, exist_ok=True)
  os.environ[_ENV] = path  # subprocesses (python -m dpjax.main) share it
  os.environ.update(_SETTINGS)
  config._dpjax_jax_cache = path  # pylint: disable=protected-access
  if 'jax' in sys.modules:  # imported by a plugin already: set it live too
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', path)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_unconfigure(config):
  path = getattr(config, '_dpjax_jax_cache', None)
  if path and not hasattr(config, 'workerinput'):  # the controller cleans up
    shutil.rmtree(path, ignore_errors=True)
