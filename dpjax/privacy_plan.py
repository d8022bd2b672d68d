"""The privacy plan: the public mechanism parameters a run applies.

`plan_privacy(config, N)` resolves the noise multiplier (given, or calibrated
for `dp.target_epsilon` under the run's accountant and sampling scheme) and
returns a frozen `PrivacyPlan`; the trainer, the replay audit and the report
all read the same plan.

Formal guarantees:
  A calibrated multiplier is verified, not only searched: its epsilon under the
  calibration accountant is <= the target (`dpjax.accounting.calibration`);
  a target needing more than `dp.max_noise_multiplier` is refused. The plan
  holds public parameters only (no data, no secret randomness); the dataset
  size N it uses is treated as public (see the report's threat model).
"""

from __future__ import annotations

import dataclasses
import math

from dpjax import batch_schedule
from dpjax import configuration
from dpjax.accounting import calibration
from dpjax.accounting import get_accountant


@dataclasses.dataclass(frozen=True)
class PrivacyPlan:
  """The mechanism a run applies at every step (public parameters)."""
  enabled: bool
  sampling: str           # 'poisson' | 'shuffle'
  neighbouring: str       # 'add_remove' | 'replace_one'
  dataset_size: int
  expected_batch_size: float
  q: float
  noise_multiplier: float
  l2_clip_norm: float
  delta: float
  accountant: str
  calibrated_for_epsilon: float | None
  batch_schedule: tuple[float, ...] | None = None  # B_t per step (variable q)
  # Noise: 'gaussian' (noise_multiplier = std / L2 sensitivity) or 'lmo'
  # (noise_multiplier = LMO noise scale / L1 sensitivity).
  mechanism: str = 'gaussian'
  clip_norm_ord: int = 2              # 2: L2 clipping; 1: L1 clipping (LMO)
  l1_clip_norm: float | None = None   # LMO with L1 clipping
  lmo_params: tuple[tuple[str, float], ...] | None = None
  lmo_noise_scale: float | None = None  # what the unit LMO noise is scaled by
  lmo_paper_faithful_not_private: bool = False
  # The privacy unit: 'record', or 'user' (config.data.user_field set), with
  # `user_sampling` 'uls' (dataset_size = users, batch = users per step) or
  # 'els' (dataset_size = capped records, batch = records per step, each step
  # recorded as the user-level mechanism; `group_size` = k).
  unit_kind: str = 'record'
  user_sampling: str | None = None
  records_per_user: int | None = None

  @property
  def group_size(self) -> int:
    """k for ELS (a user is a group of <= k sampled records), else 1."""
    return self.records_per_user if self.user_sampling == 'els' else 1

  @property
  def clip_norm(self) -> float:
    """The clip norm the step applies (L1 for LMO with L1 clipping)."""
    return self.l1_clip_norm if self.clip_norm_ord == 1 else self.l2_clip_norm

  def lmo(self):
    """The LMO noise parameters (`dpjax.accounting.lmo.LMOParams`)."""
    from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
    return lmo.LMOParams(**dict(self.lmo_params))

  def unit(self, base: str) -> str:
    """The ledger's unit: `base` (from the data), with the per-user cap."""
    if self.unit_kind != 'user':
      return base
    from dpjax import user_level  # pylint: disable=g-import-not-at-top
    return user_level.user_unit(base, self.user_sampling,
                                self.records_per_user)

  def accountant_obj(self):
    """The accountant that bounds this run's epsilon so far."""
    if self.mechanism == 'lmo':
      from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
      return lmo.LMOAccountant(self.lmo())
    return get_accountant(self.accountant)

  def batch_size_at(self, step: int) -> float:
    """Expected batch size of step `step` (1-based)."""
    if self.batch_schedule is None:
      return self.expected_batch_size
    return self.batch_schedule[min(step, len(self.batch_schedule)) - 1]

  def q_at(self, step: int) -> float:
    return self.batch_size_at(step) / self.dataset_size

  def new_ledger(self, unit: str):
    """An empty ledger for this plan's mechanism (the trainer's and audits')."""
    from dpjax.accounting import ledger as ledger_lib  # pylint: disable=g-import-not-at-top
    return ledger_lib.PrivacyLedger(
        sampling=self.sampling, neighbouring=self.neighbouring, unit=unit,
        dataset_size=self.dataset_size,
        batch_size=int(math.ceil(self.expected_batch_size)),
        mechanism=self.mechanism, mechanism_params=dict(self.lmo_params or ()))

  def record_step(self, ledger, step: int) -> None:
    """Records step `step` (1-based) in `ledger`: (q_t, noise multiplier).

    The one place a step's mechanism enters a ledger; `dpjax.train` calls it
    after every private step and `dpjax.audit.noise_probe` measures the noise
    against what it records.
    """
    if self.enabled:
      q, z = self.q_at(step), self.noise_multiplier
      if self.group_size > 1:  # ELS: the user-level mechanism of the step
        from dpjax import user_level  # pylint: disable=g-import-not-at-top
        q, z = user_level.els_rate(q, self.group_size), z / self.group_size
      ledger.record(q, z)


def _batch_sizes(config) -> tuple[float, ...] | None:
  """The per-step expected batch sizes, or None when constant."""
  t = config.train
  if t.batch_schedule == 'constant':
    return None
  sizes = batch_schedule.linear_ramp(
      start=float(t.batch_schedule_start), end=float(t.batch_size),
      steps=t.steps, ramp_steps=t.batch_schedule_ramp_steps or None)
  return tuple(float(b) for b in sizes)


def _unit_fields(config) -> dict:
  """PrivacyPlan's unit fields from `config.data.user_field` and `dp`."""
  if not config.data.get('user_field', ''):
    return {}
  return dict(unit_kind='user', user_sampling=config.dp.user_sampling,
              records_per_user=int(config.data.max_records_per_user))


def plan_privacy(config, dataset_size: int,
                 num_noised_coordinates: int | None = None) -> PrivacyPlan:
  """Resolves sigma (given or calibrated) for the run's sampling scheme.

  `dataset_size` is the number of units sampled from: records, users (ULS)
  or the records kept at most k per user (ELS). `num_noised_coordinates` (d)
  is needed only for the paper-faithful LMO mode, whose true L1 sensitivity
  after L2 clipping to C is C sqrt(d).
  """
  dp = config.dp
  if dp.enabled and dp.mechanism == 'lmo':
    plan = _plan_lmo(config, dataset_size, num_noised_coordinates)
    return dataclasses.replace(plan, **_unit_fields(config))
  unit = _unit_fields(config)
  group = unit.get('records_per_user', 1) if unit.get(
      'user_sampling') == 'els' else 1
  batch = float(config.train.batch_size)
  q = batch / dataset_size
  neighbouring = 'add_remove' if dp.sampling == 'poisson' else 'replace_one'
  sizes = _batch_sizes(config)
  if not dp.enabled:
    return PrivacyPlan(False, dp.sampling, neighbouring, dataset_size, batch,
                       q, 0.0, math.inf, dp.delta, dp.accountant, None, sizes,
                       **unit)
  sigma = float(dp.noise_multiplier)
  target = None
  if sigma < 0:
    target = float(dp.target_epsilon)
    accountant = get_accountant(dp.accountant)
    if dp.sampling == 'poisson':
      sigma = _calibrate(config, accountant, dataset_size, sizes,
                         neighbouring, 'noise multiplier', group)
    else:
      # Fixed-size shuffled batches: one full-batch Gaussian per epoch an
      # example takes part in, at replace-one sensitivity 2C.
      steps = config.train.steps
      epochs = math.ceil(steps / max(1, dataset_size // int(batch)))
      try:
        sigma = 2.0 * calibration.calibrate_sigma(
            accountant, target_epsilon=target, delta=dp.delta, q=1.0,
            steps=epochs, neighbouring='add_remove')
      except ValueError as e:
        raise _unreachable(config, q, e) from e
      _check_max_multiplier(config, sigma, q, 'noise multiplier')
  return PrivacyPlan(True, dp.sampling, neighbouring, dataset_size, batch, q,
                     sigma, float(dp.l2_clip_norm), float(dp.delta),
                     dp.accountant, target, sizes, **unit)


def _plan_lmo(config, dataset_size: int, dim: int | None) -> PrivacyPlan:
  """The LMO mechanism's plan: sound (L1 clipping, calibrated scale) by
  default, or the artifact's setting behind the not-private flag."""
  from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
  dp = config.dp
  params = lmo.LMOParams(**{k: float(v) for k, v in dp.lmo.items()})
  batch = float(config.train.batch_size)
  q = batch / dataset_size
  sizes = _batch_sizes(config)
  acc = lmo.LMOAccountant(params)
  common = dict(enabled=True, sampling='poisson', neighbouring='add_remove',
                dataset_size=dataset_size, expected_batch_size=batch, q=q,
                delta=float(dp.delta), accountant=acc.name,
                batch_schedule=sizes, mechanism='lmo',
                lmo_params=tuple(sorted(params.to_dict().items())))
  if dp.lmo_paper_faithful_not_private:
    # The artifact: L2 clipping to C, unit-scale LMO noise on the sum, the
    # parameters' per-step eps taken as the guarantee. The L1 sensitivity of
    # an L2-clipped sum is C sqrt(d), so the sound multiplier is 1/(C sqrt d).
    if not dim:
      raise ValueError('the paper-faithful LMO plan needs the number of '
                       'noised coordinates')
    c = float(dp.l2_clip_norm)
    return PrivacyPlan(noise_multiplier=1.0 / (c * math.sqrt(dim)),
                       l2_clip_norm=c, calibrated_for_epsilon=None,
                       clip_norm_ord=2, lmo_noise_scale=1.0,
                       lmo_paper_faithful_not_private=True, **common)
  c1 = float(dp.l1_clip_norm)
  m = float(dp.noise_multiplier)
  target = None
  if m < 0:
    target = float(dp.target_epsilon)
    m = _calibrate(config, acc, dataset_size, sizes, 'add_remove',
                   'LMO noise scale / L1 clip norm')
  return PrivacyPlan(noise_multiplier=m, l2_clip_norm=math.inf,
                     calibrated_for_epsilon=target, clip_norm_ord=1,
                     l1_clip_norm=c1, lmo_noise_scale=m * c1, **common)


def _calibrate(config, accountant, dataset_size: int, sizes, neighbouring,
               what: str, group: int = 1) -> float:
  """The smallest multiplier meeting dp.target_epsilon under Poisson
  sampling (over the batch schedule when there is one).

  `group` > 1 (ELS): the ledger records each step at rate 1 - (1 - q)^k
  and multiplier z / k, so z / k is calibrated at that rate.
  """
  from dpjax import user_level  # pylint: disable=g-import-not-at-top
  dp = config.dp
  target = float(dp.target_epsilon)
  q = float(config.train.batch_size) / dataset_size
  rate = lambda r: user_level.els_rate(r, group) if group > 1 else r  # noqa: E731
  try:
    if sizes is not None:
      m = batch_schedule.calibrate_sigma_for_schedule(
          accountant, target_epsilon=target, delta=dp.delta,
          rates=[rate(b / dataset_size) for b in sizes],
          neighbouring=neighbouring)
    else:
      m = calibration.calibrate_sigma(
          accountant, target_epsilon=target, delta=dp.delta, q=rate(q),
          steps=config.train.steps, neighbouring=neighbouring)
    m *= group
  except ValueError as e:
    raise _unreachable(config, q, e) from e
  _check_max_multiplier(config, m, q, what)
  return m


def _unreachable(config, q: float, e: Exception) -> configuration.ConfigError:
  dp = config.dp
  return configuration.ConfigError(
      'dp.target_epsilon', f'{dp.target_epsilon} cannot be reached with '
      f'{dp.mechanism} noise over {config.train.steps} steps at q={q:.4g}, '
      f'delta={dp.delta} ({e})', 'a larger target, fewer steps or a smaller '
      'batch')


def _check_max_multiplier(config, m: float, q: float, what: str) -> None:
  dp = config.dp
  if m > dp.max_noise_multiplier:
    raise configuration.ConfigError(
        'dp.target_epsilon', f'{dp.target_epsilon} needs {what} {m:.4g} > '
        f'dp.max_noise_multiplier ({dp.max_noise_multiplier}) with '
        f'{config.train.steps} steps at q={q:.4g}, delta={dp.delta}',
        'a larger target, fewer steps, a smaller batch or a larger '
        'dp.max_noise_multiplier')
