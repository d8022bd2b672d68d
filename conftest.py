"""Makes `configs` importable in tests and keeps absl flags parsed."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

# One persistent XLA compilation cache per test session (shared by the xdist
# workers): the many tiny end-to-end runs compile the same steps again and
# again. It lives in a fresh temporary folder, so nothing stale is reused.
import tempfile  # noqa: E402

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='dpjax-xla-cache-')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
