"""Audits of the DP mechanism as it runs: the neighbouring-dataset replay
(the sensitivity of the clipped sum), the noise probe (the noise added) and
the Dirac-canary audit (an empirical lower bound on epsilon).

  python -m dpjax.audit replay --config=configs/<name>.py [--config.F=V ...]
  python -m dpjax.audit noise --config=configs/<name>.py [--config.F=V ...]
  python -m dpjax.audit mechanism --config=configs/<name>.py [--canaries=1000]

`dpjax.audit.dirac.audit_mechanism(config)` trains the trainer's step with m
white-box canaries (per-example gradient G e_k in an extra audit leaf, each
included with probability 1/2), scores them from the released noised sums
and bounds epsilon from below with the one-run audit
(`dpjax.accounting.one_run_audit`); it fails when the bound exceeds the
ledger's claimed epsilon (see that module's "Formal guarantees").

`dpjax.audit.noise_probe.probe_config(config)` runs the trainer's step with
its noise stage tapped and compares the noise in the released update with
the multiplier the ledger records (see that module). The rest of this
docstring is about the replay.

`replay_config(config)` builds the training step exactly as
`dpjax.train.train_and_evaluate` does (same functions, same order, fixed-seed
secret randomness), replaces the noise stage by a capture stage that records
the pre-noise clipped sum (`dpjax.audit.capture`), and replays the step on
neighbouring datasets (`dpjax.audit.neighbouring`):

  D        a batch of records (the run's sampler; two records; B_max - 1);
  D - r    D with one record removed (later records move one slot earlier);
  D + x    D with a new record x appended to the training set at index N,

all with identical randomness. For each pair it prints
||S(D) - S(D')|| / sensitivity in the norm the noise is calibrated for (L2;
L1 for `dp.mechanism='lmo'`), and for DP-Adam-AC also |count(D) - count(D')|
/ count sensitivity. `dpjax.audit.groups` replays the micro-batch-group
library path (sensitivity 2C).

What it checks (formal statement):
  For the step as compiled for this config, on the audited batches, with the
  secret randomness fixed (seed `audit_seed`): every removal and addition
  moves the clipped sum by at most sensitivity * (1 + tolerance) (default
  tolerance 1e-6, for float32 rounding; `rounding_allowance` optionally adds
  a multiple of the float32 rounding scale 2^-24 ||S|| / C, see
  `dpjax.audit.neighbouring`), the released count by at most its
  sensitivity, and the sum reaches the noise stage in float32. Fixing the
  randomness checks the identity coupling: every other record keeps its
  dropout key, group and clip norm. That is a sufficient condition for the
  add/remove sensitivity the accountant assumes, and it is what the code
  promises (`dpjax.clipping`, `dpjax.steps.record_keys`).

What a pass does not prove:
  It is a test, not a proof: other batches, steps, parameters or seeds are
  not covered (though the bound must hold for all of them, so any failure is
  a real bug). It does not look at the noise stage (replaced), at the
  sampler's distribution or at the accountant; the noise scale's match to
  the ledger is the noise probe's check (`dpjax.audit.noise_probe`). Randomness
  that is iid per batch slot (not per record) is distributionally private
  but fails this check by design: a replay cannot couple it.

Exit codes of the command: 0 pass, 1 violation, 2 bad usage or config
(`ConfigError`, message naming the field).
"""

from __future__ import annotations

from dpjax.audit.capture import Captured
from dpjax.audit.capture import StepHarness
from dpjax.audit.capture import audit_seed
from dpjax.audit.capture import build_harness
from dpjax.audit.capture import capture_noise
from dpjax.audit.capture import capture_stages
from dpjax.audit.neighbouring import CaseResult
from dpjax.audit.neighbouring import ReplayReport
from dpjax.audit.neighbouring import Target
from dpjax.audit.neighbouring import replay
from dpjax.audit.neighbouring import target_of
from dpjax.audit.noise_probe import NoiseReport
from dpjax.audit.noise_probe import probe_config

__all__ = ['Captured', 'CaseResult', 'ReplayReport', 'StepHarness', 'Target',
           'audit_seed', 'build_harness', 'capture_noise', 'capture_stages',
           'replay', 'replay_config', 'target_of']


def replay_config(config, *, seed: int | None = None, **replay_kwargs
                  ) -> ReplayReport:
  """Builds the trainer's step for `config` and replays it.

  Args:
    config: a run config (validated; `ConfigError` names a bad field).
    seed: the fixed secret seed (default: `audit_seed(config)`).
    **replay_kwargs: `scenarios`, `removals`, `additions`, `tolerance`,
      `rounding_allowance` of `dpjax.audit.neighbouring.replay`.

  Returns:
    The `ReplayReport`.

  Raises:
    ConfigError: a user-level config (`data.user_field`): the replay
      removes and adds records; the user-level sensitivity is checked in
      tests/test_user_level.py.
  """
  if config.data.get('user_field', ''):
    from dpjax import configuration  # pylint: disable=g-import-not-at-top
    raise configuration.ConfigError(
        'data.user_field', f'{config.data.user_field!r}: the replay audit '
        'replays record-level neighbours only', "'' for the replay audit (the "
        'noise probe, python -m dpjax.audit noise, runs user-level configs)')
  return replay(target_of(build_harness(config, seed=seed)), **replay_kwargs)
