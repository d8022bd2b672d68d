"""Entry point: `python -m dpjax.main --config=configs/<name>.py --workdir=DIR`.

Intentionally short; the logic lives in `dpjax.train`. Any config field can
be overridden on the command line, e.g. `--config.train.steps=20`.
"""

import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, '
                    'the privacy report and plots.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from dpjax import configuration  # pylint: disable=g-import-not-at-top
  from dpjax import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except configuration.ConfigError as e:
    print(f'dpjax: invalid configuration: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main)
