"""`python -m dpjax.audit {replay,noise,mechanism} --config=CONFIG [flags]`.

`mechanism` trains the config's step for T steps with m white-box Dirac
canaries (each included with probability 1/2) and prints the claimed epsilon
(accountant, delta), the one-run empirical lower bound epsilon_lb at
confidence 1 - alpha, the guesses r and correct v, the ceiling for that r,
and PASS (epsilon_lb <= claimed) or FAIL (`dpjax.audit.dirac`); flags
--canaries=1000, --steps=-1 (the config's train.steps), --alpha=0.05,
--canary_scale=1000 (G / C), --seed, --json. Exit codes as for `replay`
(1: epsilon_lb > claimed epsilon).

`noise` measures the noise the trainer's step adds against what the ledger
records (`dpjax.audit.noise_probe`) and prints one line per check; flags
--seed, --json, --min_coordinates=200000 (pooled noise coordinates),
--noise_tolerance=0.01 (relative). Exit codes as for `replay`.

`replay`:

Builds the config's training step as the trainer does, replays it on
neighbouring datasets (see `dpjax.audit`) and prints one line per scenario
and case kind with the worst ratio ||S(D) - S(D')|| / sensitivity, then a
summary. Exit code 0: every case passed; 1: a violation; 2: bad usage or an
invalid config (the message names the flag or config field).

Flags:
  --config=PATH          the run config; --config.FIELD=VALUE overrides.
  --removals=8           records removed per scenario (<= 0: all).
  --additions=3          new records added per scenario (0..3; worst kept).
  --scenarios=sampled,small,full
  --tolerance=1e-6       relative slack for float32 rounding.
  --rounding_allowance=0 also allow k float32 rounding scales
                         (2^-24 ||S(D)|| / C) per case: for large batches
                         of small models (see dpjax.audit.neighbouring).
  --seed=-1              fixed secret seed (-1: dp.insecure_fixed_randomness
                         _seed when >= 0, else 0).
  --json=PATH            also write the full report as JSON.
  --verbose              one line per case.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import flags
from ml_collections import config_flags

from dpjax import audit
from dpjax import cli_flags
from dpjax.audit import neighbouring as replay_lib
from dpjax.audit import noise_probe
from dpjax.configuration import ConfigError

USAGE = ('usage: python -m dpjax.audit replay --config=configs/<name>.py '
         '[--config.FIELD=VALUE ...] [--removals=8] [--additions=3] '
         '[--scenarios=sampled,small,full] [--tolerance=1e-6] '
         '[--rounding_allowance=0] [--seed=-1] [--json=PATH] [--verbose]\n'
         '       python -m dpjax.audit noise --config=configs/<name>.py '
         '[--config.FIELD=VALUE ...] [--min_coordinates=200000] '
         '[--noise_tolerance=0.01] [--seed=-1] [--json=PATH]\n'
         '       python -m dpjax.audit mechanism --config=configs/<name>.py '
         '[--config.FIELD=VALUE ...] [--canaries=1000] [--steps=-1] '
         '[--alpha=0.05] [--canary_scale=1000] [--seed=-1] [--json=PATH]')


def _flag_values(argv: list[str]) -> flags.FlagValues:
  fv = flags.FlagValues()
  # sys_argv: config_flags registers the --config.FIELD overrides it finds.
  config_flags.DEFINE_config_file('config', None, 'Path to a run config.',
                                  flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_integer('removals', 8, 'Records removed per scenario (<= 0: '
                       'every record).', flag_values=fv)
  flags.DEFINE_integer('additions', 3, 'New records tried per scenario.',
                       flag_values=fv)
  flags.DEFINE_list('scenarios', ['sampled', 'small', 'full'],
                    'Batches D to replay.', flag_values=fv)
  flags.DEFINE_float('tolerance', 1e-6, 'Relative slack for float32 '
                     'rounding.', flag_values=fv)
  flags.DEFINE_float('rounding_allowance', 0.0, 'Also allow this many '
                     'float32 rounding scales (2^-24 ||S|| / C) per case; '
                     '0: strict.', flag_values=fv)
  flags.DEFINE_integer('seed', -1, 'Fixed secret seed (-1: from the config, '
                       'else 0).', flag_values=fv)
  flags.DEFINE_string('json', None, 'Write the report as JSON here.',
                      flag_values=fv)
  flags.DEFINE_boolean('verbose', False, 'One line per case.',
                       flag_values=fv)
  flags.DEFINE_integer('min_coordinates', 200_000, 'noise: pooled noise '
                       'coordinates.', flag_values=fv)
  flags.DEFINE_float('noise_tolerance', 0.01, 'noise: relative tolerance.',
                     flag_values=fv)
  flags.DEFINE_integer('canaries', 1000, 'mechanism: Dirac canaries m.',
                       flag_values=fv)
  flags.DEFINE_integer('steps', -1, 'mechanism: steps T (-1: the config\'s '
                       'train.steps).', flag_values=fv)
  flags.DEFINE_float('alpha', 0.05, 'mechanism: 1 - confidence.',
                     flag_values=fv)
  flags.DEFINE_float('canary_scale', 1000.0, 'mechanism: canary gradient '
                     'norm / C before clipping.', flag_values=fv)
  return fv


def _usage_error(msg: str) -> int:
  print(f'dpjax.audit: {msg}\n{USAGE}', file=sys.stderr)
  return 2


def _write_json(path: str, out: dict) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(out, f, indent=2)


def _noise(fv, config, argv) -> int:
  """The `noise` command."""
  if not fv.min_coordinates >= 1:
    return _usage_error(f'--min_coordinates={fv.min_coordinates}; valid: >= 1')
  if not 0 < fv.noise_tolerance < 1:
    return _usage_error(f'--noise_tolerance={fv.noise_tolerance}; valid: in '
                        '(0, 1)')
  t0 = time.time()
  try:
    report = noise_probe.probe_config(
        config, seed=fv.seed, min_coordinates=fv.min_coordinates,
        tolerance=fv.noise_tolerance)
  except ConfigError as e:
    print(f'dpjax.audit: invalid configuration: {e}', file=sys.stderr)
    return 2
  for line in report.lines():
    print(line)
  print(report.summary(), flush=True)
  if fv.json:
    _write_json(fv.json, {'config': fv['config'].config_filename,
                          'argv': argv[1:], 'seconds': time.time() - t0,
                          'passed': report.passed,
                          'report': report.to_dict()})
  return 0 if report.passed else 1


def _mechanism(fv, config, argv) -> int:
  """The `mechanism` command (Dirac canaries, `dpjax.audit.dirac`)."""
  from dpjax.audit import dirac  # pylint: disable=g-import-not-at-top
  if fv.canaries < 1:
    return _usage_error(f'--canaries={fv.canaries}; valid: >= 1')
  if fv.steps == 0 or fv.steps < -1:
    return _usage_error(f'--steps={fv.steps}; valid: >= 1, or -1 for the '
                        "config's train.steps")
  if not 0 < fv.alpha < 1:
    return _usage_error(f'--alpha={fv.alpha}; valid: in (0, 1)')
  if not fv.canary_scale > 1:
    return _usage_error(f'--canary_scale={fv.canary_scale}; valid: > 1')
  config_path = fv['config'].config_filename
  t0 = time.time()
  try:
    result = dirac.audit_mechanism(
        config, canaries=fv.canaries,
        steps=None if fv.steps == -1 else fv.steps, alpha=fv.alpha,
        seed=fv.seed, canary_scale=fv.canary_scale)
  except ConfigError as e:
    print(f'dpjax.audit: invalid configuration: {e}', file=sys.stderr)
    return 2
  print(f'dpjax.audit mechanism {config_path}: {result.steps} steps with '
        f'{result.num_canaries} Dirac canaries in {time.time() - t0:.1f} s')
  for line in result.lines():
    print(line)
  print(result.summary(), flush=True)
  if fv.json:
    _write_json(fv.json, {'config': config_path, 'argv': argv[1:],
                          'seconds': time.time() - t0,
                          'passed': result.passed,
                          'report': result.to_dict()})
  return 0 if result.passed else 1


def main(argv: list[str] | None = None) -> int:
  """Runs the command; returns its exit code."""
  argv = list(sys.argv if argv is None else argv)
  if cli_flags.help_requested(argv):
    print(__doc__)
    return 0
  problem = cli_flags.unknown_override(argv)
  if problem:
    print(f'dpjax.audit: invalid configuration: {problem}', file=sys.stderr)
    return 2
  fv = _flag_values(argv)
  try:
    rest = fv(argv)
    config = fv.config
    if config is not None:
      config.keys()  # a config file that failed to load raises here
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError,
          OSError) as e:  # config_flags raises these for bad files/fields
    return _usage_error(f'{type(e).__name__}: {e}')
  if rest[1:] not in (['replay'], ['noise'], ['mechanism']):
    return _usage_error(f'expected the command "replay", "noise" or '
                        f'"mechanism", got {rest[1:]}')
  if config is None:
    return _usage_error('--config is required')
  if rest[1] == 'noise':
    return _noise(fv, config, argv)
  if rest[1] == 'mechanism':
    return _mechanism(fv, config, argv)
  bad = [s for s in fv.scenarios if s not in replay_lib.SCENARIOS]
  if bad or not fv.scenarios:
    return _usage_error(f'--scenarios: {bad or "empty"}; valid: '
                        f'{",".join(replay_lib.SCENARIOS)}')
  if not 0 <= fv.additions <= len(replay_lib.ADDITIONS):
    return _usage_error(f'--additions={fv.additions}; valid: 0 to '
                        f'{len(replay_lib.ADDITIONS)}')
  if not fv.tolerance >= 0:
    return _usage_error(f'--tolerance={fv.tolerance}; valid: >= 0')
  if not fv.rounding_allowance >= 0:
    return _usage_error(f'--rounding_allowance={fv.rounding_allowance}; '
                        'valid: >= 0')
  config_path = fv['config'].config_filename
  t0 = time.time()
  try:
    harness = audit.build_harness(config, seed=fv.seed)
  except ConfigError as e:
    print(f'dpjax.audit: invalid configuration: {e}', file=sys.stderr)
    return 2
  build_s = time.time() - t0
  print(f'dpjax.audit replay {config_path}: built the trainer\'s step in '
        f'{build_s:.1f} s (fixed secret seed '
        f'{harness.secret.insecure_fixed_seed}, B_max {harness.max_batch}, '
        f'{harness.num_devices} device(s))', flush=True)
  report = audit.replay(audit.target_of(harness), scenarios=fv.scenarios,
                        removals=fv.removals, additions=fv.additions,
                        tolerance=fv.tolerance,
                        rounding_allowance=fv.rounding_allowance)
  for line in report.lines(verbose=fv.verbose):
    print(line)
  print(report.summary(), flush=True)
  if fv.json:
    out = {'config': config_path, 'argv': argv[1:],
           'seed': harness.secret.insecure_fixed_seed,
           'build_seconds': build_s, 'total_seconds': time.time() - t0,
           'passed': report.passed, 'report': report.to_dict()}
    _write_json(fv.json, out)
  return 0 if report.passed else 1


if __name__ == '__main__':
  sys.exit(main())
