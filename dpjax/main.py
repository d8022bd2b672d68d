"""Entry point: `python -m dpjax.main --config=configs/<name>.py --workdir=DIR`.

Intentionally short; the logic lives in `dpjax.train`. Any config field can
be overridden on the command line, e.g. `--config.train.steps=20`.

Many processes (docs/scaling.md): `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` on each (jax.distributed's names); with
none of them, a Cloud TPU VM or a SLURM job with several tasks is detected.

The console shows the run's own lines (start, progress, evaluations, the
report and the end summary; process 0 only) and warnings; library logs go to
WORKDIR/dpjax.log. `--verbosity=0` (`-v 0`; 1 for DEBUG), `--logtostderr` or
`--alsologtostderr` print them on the console as well (`dpjax.console`).
"""

import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from dpjax import cli_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, '
                    'the privacy report and plots.')
config_flags.DEFINE_config_file('config', None, 'Path to a config file.',
                                lock_config=True)
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0 '
                    '(many processes; jax.distributed.initialize).')
flags.DEFINE_integer('num_processes', None, 'Processes in the run.')
flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes-1.')
flags.DEFINE_integer('initialization_timeout', 300, 'Seconds to wait for all '
                     'processes to join.')
flags.DEFINE_integer('heartbeat_timeout_seconds', 100, 'Seconds without a '
                     "peer's heartbeat before the run stops.")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from dpjax import distributed  # pylint: disable=g-import-not-at-top
  try:  # before anything touches a JAX backend
    distributed.initialize(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
        initialization_timeout=FLAGS.initialization_timeout,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds)
  except ValueError as e:
    print(f'dpjax: invalid command line: {e}', file=sys.stderr)
    sys.exit(2)
  import os  # pylint: disable=g-import-not-at-top
  from dpjax import console  # pylint: disable=g-import-not-at-top
  new_workdir = not os.path.exists(FLAGS.workdir)
  # Library INFO logs to workdir/dpjax.log; the console keeps warnings, the
  # run's own lines and, with --verbosity/-v, every record again.
  console.setup_logging(FLAGS.workdir, verbose=console.verbose_requested(FLAGS),
                        process_index=distributed.process_index)
  from dpjax import configuration  # pylint: disable=g-import-not-at-top
  from dpjax import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except configuration.ConfigError as e:
    if new_workdir:  # refused before it began: leave no work directory
      console.discard_log(FLAGS.workdir)
    print(f'dpjax: invalid configuration: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  # One line and exit code 2 for --config.nonexistent=3; exit code 0 for
  # --help (absl's is 1).
  cli_flags.exit_on_unknown_override(sys.argv)
  jax.config.config_with_absl()
  app.run(main, flags_parser=cli_flags.parse_flags)
