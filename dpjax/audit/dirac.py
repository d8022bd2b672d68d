"""White-box "Dirac" canaries: a one-run lower bound on the epsilon that ran.

  python -m dpjax.audit mechanism --config=configs/<name>.py [--canaries=1000]

`audit_mechanism(config)` builds the trainer's step for `config` with the
functions `dpjax.train.train_and_evaluate` uses (`dpjax.run_setup`: model,
data, privacy plan, DP stages, gradient engine, clip style, noise, 1/B,
optimizer, EMA, mesh), adds m canaries to it, trains T steps (default: the
config's `train.steps`) and turns the canaries' scores into a lower bound
on epsilon with the one-run audit of Steinke, Nasr and Jagielski 2023
(`dpjax.accounting.one_run_audit.epsilon_lower_bound`).

The canaries. The trainable tree gets one extra leaf, `audit_canary: f32[m]`
(zeros), and the training set m' extra rows carrying a field
`audit_canary_id` (-1 on real records, k on canary k). The per-record loss
is wrapped (`canary_loss_fn`):

  loss(record) = G * w[k]                  for canary k (w = audit_canary),
                 the model's loss          for a real record,

selected with `jnp.where`, so canary k's per-example gradient is exactly
G e_k (e_k the k-th coordinate of the audit leaf, no gradient on the model)
and a real record's gradient on the audit leaf is exactly 0. G = 1000 C: the
engine's own clipping must bring the canary down to C (a missing or loose
clip shows). Each of the m canaries is included in the training set
independently with probability 1/2 (coins from the audit's seeded secret
material, `--seed`); the included ones are appended after the N real records
and the run's sampler (Poisson at the plan's rate q, or shuffle at the same
fraction) draws from all N + m' rows, padded to one fixed shape with a mask.

The score of canary k is the k-th coordinate of the audit leaf in what the
noise stage RELEASED (the privatized clipped sum; tapped like
`dpjax.audit.noise_probe.tap`), divided by the step's clip norm and summed
over the T steps. Nothing before the noise is read. A canary in the data
scores about (times sampled) + N(0, sigma^2 T); one left out, N(0, sigma^2 T).

The claimed epsilon is the plan's: the ledger of the T steps (the plan's
q_t and sigma, `PrivacyPlan.record_step`) under the run's accountant at the
plan's delta, with N the real data's size (the canaries are not counted).

Engines: vmap, and RGP (the audit leaf is one of RGP's "other" leaves,
clipped jointly with the carriers). Book-keeping taps layers and cannot see
an extra leaf: with `train.grad_engine='auto'` the step falls back to vmap
(printed); `'bookkeeping'` is refused with a ConfigError (the book-keeping
sum is checked equal to vmap's by tests/test_bookkeeping.py and by the
replay audit). User-level configs (`data.user_field`) are refused. With
`train.clip_style='per_layer'` the audit leaf gets C / sqrt(L) only (the
audit is then weaker, still sound).

Formal guarantees:
  PASS (epsilon_lb <= claimed epsilon) means: at confidence 1 - alpha, this
  run gives no statistical evidence that the mechanism that ran is less
  private than the ledger claims. It is one sample and a lower bound: the
  one-run bound is loose (it saturates near ln(r / ln(1/alpha)) for r
  guesses and, for Gaussian noise at moderate epsilon, stays well below
  the true epsilon), so a pass does not prove the claim; small bugs (a
  few percent less noise) pass. Dirac canaries are the worst case for the
  gradient's direction but not for the dataset: they test clipping,
  sampling, the noise scale and its freshness for a record that no other
  record interferes with.
  FAIL (epsilon_lb > claimed epsilon) means, if the statistics module's
  bound is valid (Theorem 3 of the paper, for a mechanism that is
  (epsilon, delta)-DP with respect to each canary), that the mechanism
  that ran is NOT (claimed epsilon, delta)-DP, except with probability at
  most alpha: the ledger under-reports (too little noise, a clip that does
  not bind, a rate higher than accounted, reused noise), a real bug.
  The guarantee needs the coins to be independent of everything else: they
  come from the audit's secret material; the scores read released values
  only (post-processing).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dpjax import configuration
from dpjax import dp_adam_ac
from dpjax import randomness
from dpjax import run_setup
from dpjax import sampling
from dpjax import sharding
from dpjax.accounting import one_run_audit
from dpjax.audit import capture

PyTree = Any
CANARY_LEAF = 'audit_canary'
CANARY_FIELD = 'audit_canary_id'
DEFAULT_CANARIES = 1000
DEFAULT_SCALE = 1e3  # G / C


def with_canary_leaf(trainable: PyTree, num_canaries: int) -> dict:
  """`trainable` (a dict) with the audit leaf `audit_canary: zeros[m]`."""
  if not isinstance(trainable, dict) or CANARY_LEAF in trainable:
    raise ValueError('the mechanism audit needs a dict of trainable leaves '
                     f'without {CANARY_LEAF!r}, got {type(trainable)}')
  return dict(trainable, **{CANARY_LEAF: jnp.zeros((num_canaries,),
                                                   jnp.float32)})


def canary_loss_fn(loss_fn, scale: float):
  """The per-record loss with Dirac canaries (module docstring).

  `loss_fn(trainable, frozen, example, key)` is the model's; the returned
  loss takes the trainable tree with the audit leaf and examples with the
  `audit_canary_id` field. Canary k (id >= 0): loss `scale * w[k]`, so its
  gradient is `scale * e_k` on the audit leaf and exactly 0 on the model's
  leaves; a real record (id -1): the model's loss, gradient exactly 0 on
  the audit leaf.
  """

  def loss(trainable, frozen, example, key):
    params = {k: v for k, v in trainable.items() if k != CANARY_LEAF}
    cid = example[CANARY_FIELD]
    record = {k: v for k, v in example.items() if k != CANARY_FIELD}
    real = loss_fn(params, frozen, record, key)
    w = trainable[CANARY_LEAF]
    canary = scale * w[jnp.clip(cid, 0, w.shape[0] - 1)]
    return jnp.where(cid >= 0, canary.astype(real.dtype), real)

  return loss


def canary_training_set(train: dict[str, np.ndarray],
                        included: np.ndarray) -> dict[str, np.ndarray]:
  """The real records, then one row per included canary (ids ascending).

  A canary row's model fields copy real record 0 (any finite record: its
  model loss is computed and discarded); `audit_canary_id` is -1 on the N
  real rows and k on canary k's row.
  """
  ids = np.flatnonzero(included).astype(np.int32)
  n = next(iter(train.values())).shape[0]
  out = {k: np.concatenate([v, np.repeat(v[:1], ids.size, axis=0)])
         for k, v in train.items()}
  out[CANARY_FIELD] = np.concatenate([np.full((n,), -1, np.int32), ids])
  return out


def released_canary_part(released) -> jax.Array:
  """The audit leaf's coordinates in what a noise stage released."""
  if isinstance(released, dp_adam_ac.Carried):
    released = released.updates
  if CANARY_LEAF in released:
    return released[CANARY_LEAF]
  return released['other'][CANARY_LEAF]   # RGP: {'carriers', 'other'}


class CanaryTapState(NamedTuple):
  inner: Any
  released: jax.Array   # [m] float32: the audit leaf of the last release


def tap_released(inner: optax.GradientTransformation, num_canaries: int
                 ) -> optax.GradientTransformationExtraArgs:
  """The noise stage `inner`, unchanged, keeping the audit leaf of its
  output (the released, noised sum) in its state."""
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return CanaryTapState(inner.init(params),
                          jnp.zeros((num_canaries,), jnp.float32))

  def update_fn(updates, state, params=None, **extra_args):
    out, inner_state = inner.update(updates, state.inner, params,
                                    **extra_args)
    part = jnp.asarray(released_canary_part(out), jnp.float32)
    return out, CanaryTapState(inner_state, part)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _as_dict(result) -> dict[str, Any]:
  if dataclasses.is_dataclass(result):
    return dataclasses.asdict(result)
  if hasattr(result, '_asdict'):
    return dict(result._asdict())
  return dict(vars(result))


@dataclasses.dataclass
class MechanismAudit:
  """The result (`lines()`, `summary()`, `passed`, `to_dict()`)."""
  path: str
  engine: str
  engine_reason: str
  mechanism: str
  accountant: str
  claimed_epsilon: float
  claimed_kind: str        # 'upper bound' or 'estimate'
  delta: float
  noise_multiplier: float
  q: float
  steps: int
  clip_norm: float
  canary_scale: float
  num_canaries: int
  num_included: int
  rows: int                # the step's fixed batch shape
  result: Any              # one_run_audit.OneRunAudit
  ceiling: float           # max_epsilon_lower_bound(m, r)
  times_sampled_mean: float  # included canaries: mean draws over T steps
  score_mean_in: float
  score_mean_out: float
  score_std_out: float
  seed: int
  notes: tuple[str, ...] = ()
  scores: np.ndarray | None = None
  included: np.ndarray | None = None
  times_sampled: np.ndarray | None = None   # per canary, over the T steps

  @property
  def epsilon_lb(self) -> float:
    return float(self.result.epsilon_lb)

  @property
  def passed(self) -> bool:
    return bool(self.epsilon_lb <= self.claimed_epsilon)

  def lines(self) -> list[str]:
    r = self.result
    out = [
        f'path: {self.path}',
        f'gradient engine: {self.engine} ({self.engine_reason})',
        f'claimed epsilon: {self.claimed_epsilon:.4f} ({self.accountant} '
        f'{self.claimed_kind}, delta={self.delta:g}) for {self.steps} steps, '
        f'{self.mechanism} noise multiplier {self.noise_multiplier:.4g}, '
        f'q={self.q:.4g}, C={self.clip_norm:g}',
        f'canaries: m={self.num_canaries}, included {self.num_included} '
        f'(p=1/2, seed {self.seed}), gradient {self.canary_scale:g} C each '
        f'(the engine clips), each included one drawn '
        f'{self.times_sampled_mean:.2f} times on average; '
        f'{self.rows} rows per step',
        f'scores (released noised sum on e_k / C, summed over steps): mean '
        f'in {self.score_mean_in:.3f}, mean out {self.score_mean_out:.3f}, '
        f'sd out {self.score_std_out:.3f}',
        f'empirical lower bound: epsilon_lb = {self.epsilon_lb:.4f} at '
        f'confidence {1 - float(r.alpha):.0%} ({r.method}; guesses '
        f'r={r.num_guesses} (k+={r.k_plus}, k-={r.k_minus}), correct '
        f'v={r.num_correct}; ceiling for this r: {self.ceiling:.4f})']
    return out + [f'note: {n}' for n in self.notes]

  def summary(self) -> str:
    rel = '<=' if self.passed else '>'
    return (f'{"PASS" if self.passed else "FAIL"}: epsilon_lb '
            f'{self.epsilon_lb:.4f} {rel} claimed epsilon '
            f'{self.claimed_epsilon:.4f} ({self.path})')

  def to_dict(self) -> dict[str, Any]:
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.name not in ('result', 'scores', 'included', 'notes',
                                    'times_sampled')}
    out.update(result=_as_dict(self.result), notes=list(self.notes),
               epsilon_lb=self.epsilon_lb, passed=self.passed,
               alpha=float(self.result.alpha))
    for name in ('scores', 'included', 'times_sampled'):
      v = getattr(self, name)
      out[name] = None if v is None else np.asarray(v).tolist()
    return jax.tree.map(lambda x: x.item() if isinstance(x, np.generic)
                        else x, out)


def _claimed_epsilon(plan, data, steps: int) -> tuple[float, str, str]:
  """(epsilon, accountant name, kind) of the plan's ledger after `steps`."""
  ledger = plan.new_ledger(plan.unit(data.unit))
  for t in range(1, steps + 1):
    plan.record_step(ledger, t)
  acct = plan.accountant_obj()
  eps = float(acct.epsilon(ledger.accountable_phases(), plan.delta))
  bound = getattr(acct, 'is_upper_bound', True)
  return eps, acct.name, 'upper bound' if bound else 'estimate'


def _refuse(config) -> None:
  configuration.validate(config)
  if not config.dp.enabled:
    raise configuration.ConfigError(
        'dp.enabled', 'False: a non-private run has no epsilon to audit',
        'True')
  if config.data.get('user_field', ''):
    raise configuration.ConfigError(
        'data.user_field', f'{config.data.user_field!r}: the mechanism audit '
        'inserts record-level canaries', "'' (record-level runs)")
  if config.train.grad_engine == 'bookkeeping':
    raise configuration.ConfigError(
        'train.grad_engine', "'bookkeeping' cannot tap the mechanism audit's "
        'canary leaf (book-keeping taps layers; the Dirac canaries live in an '
        'extra leaf, audit_canary, that no layer uses). Its clipped sum is '
        'checked equal to the vmap engine\'s by the replay audit',
        "'auto' (falls back to vmap for this audit) or 'vmap'")


def audit_mechanism(config, *, canaries: int = DEFAULT_CANARIES,
                    steps: int | None = None, alpha: float = 0.05,
                    seed: int | None = None,
                    canary_scale: float = DEFAULT_SCALE,
                    guesses: str = 'search') -> MechanismAudit:
  """Trains `config`'s step with Dirac canaries and bounds epsilon from below.

  Args:
    config: a run config (validated; `ConfigError` names a bad field).
    canaries: m, the number of canaries (each included with probability 1/2).
    steps: T (default `config.train.steps`).
    alpha: 1 - confidence of the bound.
    seed: the audit's fixed secret seed (`capture.audit_seed`): canary
      coins, sampler, noise and dropout keys.
    canary_scale: G / C, the canary's gradient norm before clipping.
    guesses: passed to `epsilon_lower_bound`.

  Returns:
    A `MechanismAudit`.

  Raises:
    ConfigError: an invalid, non-private or unsupported config.
    ValueError: bad arguments.
  """
  if canaries < 1 or not 0 < alpha < 1 or not canary_scale > 1:
    raise ValueError(f'need canaries >= 1, 0 < alpha < 1, canary_scale > 1; '
                     f'got {canaries}, {alpha}, {canary_scale}')
  _refuse(config)
  steps = int(config.train.steps if steps is None or steps < 1 else steps)
  model, data, plan, mesh = run_setup.build_inputs(config)
  seed = capture.audit_seed(config, seed)
  secret = randomness.SecretRandomness.from_insecure_seed(seed)
  material = secret._derive('audit/dirac-canary-coins', 32)  # pylint: disable=protected-access
  coins = np.random.default_rng(np.random.SeedSequence(
      int.from_bytes(material, 'little')))
  included = coins.random(canaries) < 0.5
  n_real = data.train_size
  arrays = canary_training_set(data.train, included)
  n_all = n_real + int(included.sum())

  stages, clip_norm_fn, _ = run_setup.build_stages(config, plan,
                                                   secret.noise_key())
  c_max = float(plan.clip_norm)
  if config.dp_adam_ac.enabled:
    c_max = max(c_max, float(config.dp_adam_ac.max_clip_norm))
  scale = float(canary_scale) * c_max
  audited_model = dataclasses.replace(
      model, trainable=with_canary_leaf(model.trainable, canaries),
      loss_fn=canary_loss_fn(model.loss_fn, scale))
  audited_data = dataclasses.replace(data, train=arrays)
  stages = stages._replace(noise=tap_released(stages.noise, canaries))
  engine = run_setup.build_engine(config, audited_model, plan,
                                  run_setup.rgp_key(config), audited_data)
  state, frozen, step_fn, dropout_key = capture.placed_step(
      config, audited_model, stages, plan, clip_norm_fn, mesh, secret,
      audited_data, choice=engine)
  tap_index = next(i for i, s in enumerate(state.opt_state)
                   if isinstance(s, CanaryTapState))

  # The run's sampler over N + m' rows at the plan's rate (a fixed shape).
  mult = int(config.train.max_batch_size)
  grow = n_all / n_real
  b_max = max(plan.batch_size_at(t) for t in range(1, steps + 1)) * grow
  rows = sampling.default_max_batch_size(n_all, b_max, mult)
  if plan.sampling == 'poisson':
    sampler = sampling.PoissonSampler(n_all, plan.expected_batch_size * grow,
                                      rows, secret.sampler_seed())
  else:
    b = max(1, int(round(config.train.batch_size * grow)))
    rows = int(math.ceil(b / mult) * mult)
    sampler = sampling.ShuffleSampler(n_all, b, secret.sampler_seed())
  batch_sh = sharding.batch_sharding(mesh)

  scores = np.zeros((canaries,), np.float64)
  drawn = np.zeros((canaries,), np.int64)
  canary_of_row = arrays[CANARY_FIELD]
  for t in range(1, steps + 1):
    clip = (float(clip_norm_fn(state.opt_state)) if clip_norm_fn is not None
            else float(plan.clip_norm))
    if plan.batch_schedule and plan.sampling == 'poisson':
      idx, mask = sampler.draw(plan.batch_size_at(t) * grow)
    else:
      idx, mask = sampler.draw()
    pad = (-idx.shape[0]) % rows
    idx = np.concatenate([idx, np.zeros((pad,), idx.dtype)])
    mask = np.concatenate([mask, np.zeros((pad,), mask.dtype)])
    ids = canary_of_row[idx][mask > 0]
    np.add.at(drawn, ids[ids >= 0], 1)
    batch = {k: v[idx] for k, v in arrays.items()}
    batch, mask_d, rec = jax.device_put(
        (batch, mask.astype(np.float32), idx.astype(np.int32)), batch_sh)
    state, _ = step_fn(state, frozen, batch, mask_d, dropout_key, rec)
    released = jax.device_get(state.opt_state[tap_index].released)
    scores += np.asarray(released, np.float64) / clip

  claimed, acct_name, kind = _claimed_epsilon(plan, data, steps)
  res = one_run_audit.epsilon_lower_bound(scores, included, alpha=alpha,
                                          delta=plan.delta, guesses=guesses)
  ceiling = float(one_run_audit.max_epsilon_lower_bound(
      canaries, int(res.num_guesses), alpha=alpha, delta=plan.delta))
  notes = []
  if engine.engine.name == 'vmap' and config.train.grad_engine == 'auto':
    notes.append('grad_engine=auto: the audit runs the vmap engine (book-'
                 'keeping cannot tap the canary leaf); the trainer may run '
                 'book-keeping, whose sum the replay audit checks')
  if config.train.clip_style == 'per_layer':
    notes.append('per_layer clipping: a canary gets C/sqrt(L) of its leaf '
                 'only, so this audit is weaker than for flat clipping')
  if kind != 'upper bound':
    notes.append(f'the claimed epsilon is an estimate ({acct_name})')
  if secret.is_insecure:
    notes.append('fixed audit seed: the canary coins, sampler and noise are '
                 'reproducible (an audit, not a private run)')
  out_scores = scores[~included]
  return MechanismAudit(
      path=capture.path_name(config, mesh.shape['data'], engine.engine.name),
      engine=engine.engine.name, engine_reason=engine.reason,
      mechanism=plan.mechanism, accountant=acct_name,
      claimed_epsilon=claimed, claimed_kind=kind, delta=float(plan.delta),
      noise_multiplier=float(plan.noise_multiplier), q=float(plan.q),
      steps=steps, clip_norm=float(plan.clip_norm),
      canary_scale=float(canary_scale), num_canaries=canaries,
      num_included=int(included.sum()), rows=rows, result=res,
      ceiling=ceiling,
      times_sampled_mean=float(drawn[included].mean()) if included.any()
      else 0.0,
      score_mean_in=float(scores[included].mean()) if included.any()
      else math.nan,
      score_mean_out=float(out_scores.mean()) if out_scores.size
      else math.nan,
      score_std_out=float(out_scores.std()) if out_scores.size else math.nan,
      seed=seed, notes=tuple(notes), scores=scores, included=included,
      times_sampled=drawn)
