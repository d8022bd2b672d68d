"""Makes `configs` importable in tests and keeps absl flags parsed."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
