"""The privacy ledger: what a run did, step by step, as accountable mechanisms.

The ledger is the single source of every privacy number dpjax reports. The
training loop records each step's mechanism (sampling rate q_t and noise
multiplier sigma_t) as it runs; checkpoints save the ledger; the report and
every accountant read it. Consecutive identical steps are run-length
compressed into `Phase`s, so a 10,000-step run is usually one phase.

Pure Python/NumPy: no JAX import.

Formal guarantees:
  The ledger makes no privacy claim by itself. It records, for each step, the
  Poisson rate q_t with which every example entered that step's batch and the
  ratio sigma_t = (noise std) / (L2 sensitivity of the clipped sum to adding or
  removing one example). An accountant composing `accountable_phases()` gives a
  valid bound only if both facts hold for the code that ran: that is the
  training step's contract (see `dpjax.clipping` and `dpjax.sampling`).

  For shuffled fixed-size batches (`sampling='shuffle'`) no amplification by
  subsampling is claimed: `accountable_phases()` returns one full-batch
  Gaussian per epoch that an example can take part in, with the sensitivity of
  the replace-one relation (2C), which is what fixed-size batches allow.
  `poisson_equivalent_phases()` gives the commonly reported (not formally
  justified) Poisson figure, which the report labels as such.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

SAMPLINGS = ('poisson', 'shuffle')
NEIGHBOURING = ('add_remove', 'replace_one')
MECHANISMS = ('gaussian', 'lmo')


@dataclasses.dataclass(frozen=True)
class Phase:
  """`count` consecutive steps of one subsampled Gaussian mechanism.

  Attributes:
    q: probability that each example is in a step's batch (1.0: every
      example, i.e. no amplification by subsampling).
    sigma: noise multiplier, the noise standard deviation divided by the L2
      sensitivity of the noised sum under the ledger's neighbouring relation.
    count: number of identical steps.
  """
  q: float
  sigma: float
  count: int = 1

  def __post_init__(self):
    validate_mechanism(q=self.q, sigma=self.sigma, steps=self.count)


def validate_mechanism(*, q: float, sigma: float, steps: int) -> None:
  """Raises ValueError naming the bad argument."""
  if not (isinstance(q, (int, float)) and 0.0 < q <= 1.0 and math.isfinite(q)):
    raise ValueError(f'q (sampling rate) must be in (0, 1], got {q!r}.')
  if not (isinstance(sigma, (int, float)) and sigma >= 0 and
          not math.isnan(sigma)):
    raise ValueError(f'sigma (noise multiplier) must be >= 0, got {sigma!r}.')
  if not (isinstance(steps, int) and steps >= 0):
    raise ValueError(f'steps (count) must be an integer >= 0, got {steps!r}.')


@dataclasses.dataclass
class PrivacyLedger:
  """Run-length-compressed record of the mechanisms a training run applied.

  Attributes:
    sampling: 'poisson' (each example independently with probability q) or
      'shuffle' (shuffled fixed-size batches, epochs without replacement).
    neighbouring: 'add_remove' (Poisson) or 'replace_one' (fixed-size).
    unit: what one record is (e.g. 'one packed sequence of 128 tokens').
    dataset_size: N, needed to count epochs under 'shuffle'.
    batch_size: expected (Poisson) or fixed (shuffle) batch size.
    phases: the compressed history.
    mechanism: the noise every step adds: 'gaussian' (sigma = noise std / L2
      sensitivity) or 'lmo' (LMO Laplace mixture; sigma = noise scale / L1
      sensitivity, see `dpjax.accounting.lmo.LMOAccountant`).
    mechanism_params: the noise's fixed parameters (LMO: `LMOParams` as a
      dict), so a checkpointed ledger can be accounted on its own.
  """
  sampling: str = 'poisson'
  neighbouring: str = 'add_remove'
  unit: str = 'one training example'
  dataset_size: int = 0
  batch_size: int = 0
  phases: list[Phase] = dataclasses.field(default_factory=list)
  mechanism: str = 'gaussian'
  mechanism_params: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.mechanism not in MECHANISMS:
      raise ValueError(f'mechanism must be one of {MECHANISMS}, '
                       f'got {self.mechanism!r}.')
    if self.sampling not in SAMPLINGS:
      raise ValueError(f'sampling must be one of {SAMPLINGS}, '
                       f'got {self.sampling!r}.')
    if self.neighbouring not in NEIGHBOURING:
      raise ValueError(f'neighbouring must be one of {NEIGHBOURING}, '
                       f'got {self.neighbouring!r}.')
    self.phases = [p if isinstance(p, Phase) else Phase(**p)
                   for p in self.phases]

  @property
  def steps(self) -> int:
    return sum(p.count for p in self.phases)

  def record(self, q: float, sigma: float, count: int = 1) -> None:
    """Appends `count` steps of (q, sigma), merging with the last phase."""
    q, sigma = float(q), float(sigma)
    validate_mechanism(q=q, sigma=sigma, steps=count)
    if count == 0:
      return
    if self.phases and self.phases[-1].q == q and self.phases[-1].sigma == sigma:
      last = self.phases.pop()
      self.phases.append(Phase(q, sigma, last.count + count))
    else:
      self.phases.append(Phase(q, sigma, count))

  def accountable_phases(self) -> list[Phase]:
    """Phases whose composition is a valid bound for the sampling used."""
    if self.sampling == 'poisson':
      return list(self.phases)
    # Shuffled fixed-size batches: an example is in exactly one batch per
    # epoch, with no amplification; use the worst sigma seen in each epoch.
    if self.dataset_size <= 0 or self.batch_size <= 0:
      raise ValueError('A shuffle ledger needs dataset_size and batch_size.')
    steps_per_epoch = max(1, self.dataset_size // self.batch_size)
    sigmas = [p.sigma for p in self.phases for _ in range(p.count)]
    out: list[Phase] = []
    for start in range(0, len(sigmas), steps_per_epoch):
      s = min(sigmas[start:start + steps_per_epoch])
      # Each step's sigma is relative to the add/remove sensitivity C; under
      # replace-one the sensitivity is 2C.
      factor = 0.5 if self.neighbouring == 'replace_one' else 1.0
      if out and out[-1].sigma == s * factor:
        out[-1] = Phase(1.0, s * factor, out[-1].count + 1)
      else:
        out.append(Phase(1.0, s * factor, 1))
    return out

  def poisson_equivalent_phases(self) -> list[Phase]:
    """The phases as if batches had been Poisson-sampled (not a guarantee

    under 'shuffle'; identical to `phases` under 'poisson').
    """
    return list(self.phases)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d['phases'] = [dataclasses.asdict(p) for p in self.phases]
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'PrivacyLedger':
    d = dict(d)
    d['phases'] = [Phase(float(p['q']), float(p['sigma']), int(p['count']))
                   for p in d.get('phases', [])]
    d['mechanism_params'] = {k: float(v) for k, v in
                             dict(d.get('mechanism_params') or {}).items()}
    return cls(**d)


def phases_from(q: float, sigma: float, steps: int) -> list[Phase]:
  """One-phase history, for the command line and calibration."""
  return [Phase(float(q), float(sigma), int(steps))] if steps else []


def total_steps(phases: Sequence[Phase]) -> int:
  return sum(p.count for p in phases)


def has_noiseless_step(phases: Sequence[Phase]) -> bool:
  """True if some step adds no noise (sigma = 0): epsilon = inf, delta = 1.

  The one rule every accountant applies before composing.
  """
  return any(p.sigma == 0 and p.count > 0 for p in phases)
