"""Measures the noise the trainer's step adds against what the ledger accounts.

  python -m dpjax.audit noise --config=configs/<name>.py [--config.F=V ...]

`probe_config(config)` builds the model, data, privacy plan, DP stages and
jitted step with the functions `dpjax.train.train_and_evaluate` uses
(`dpjax.run_setup`), with fixed-seed secret randomness, and changes only what
comes after the noise:

  noise      -> `tap(noise)`: the real noise stage, recording what it
                received (the clipped sum) and what it released;
  normalize  -> unchanged (1/B or 1/B_t);
  optimizer  -> pass-through, EMA -> identity: the parameter change of a step
                is then the released, normalised update itself.

It draws batches with the trainer's sampler (`dpjax.train.draw_batch`), runs
the step until at least `min_coordinates` noise coordinates are pooled,
records every step in a ledger through `PrivacyPlan.record_step` (the
trainer's one call), and compares:

* Gaussian noise: the root mean square of (released - received) / S, pooled
  over coordinates and steps (S the sensitivity of the sum: C, or C_t for
  DP-Adam-AC read from the state before the step), with the noise multiplier
  the ledger recorded for those steps. For DP-Adam-AC, whose gradient and
  count noise are accounted together as ONE Gaussian of multiplier z, the
  count noise std sigma_b is measured too (`count_samples` draws from the
  real noise stage) and the gradient multiplier is compared with the one the
  pair needs, (z^-2 - (Delta_b / sigma_b)^-2)^(-1/2) (Delta_b = 1/2 for the
  centered count, 1 for the raw count); the joint multiplier
  (sigma_grad^-2 + (Delta_b / sigma_b)^-2)^(-1/2) must reach z.
* LMO noise: the quartiles of |noise| / (sigma S_1) against those of the
  unit LMO law with the ledger's parameters, computed here from the law's
  definition (P(|X| > x) = E exp(-eps' x), a product of the Gamma,
  Exponential and Uniform Laplace transforms), not from the sampler.
* The released update: the parameter change times B_t equals what the noise
  stage released (for RGP: the reconstruction of the released carriers with
  the step's public bases, and the leaves updated directly).
* Fresh noise at every step: consecutive steps' noise vectors are
  uncorrelated (|r| < 6/sqrt(d); a reused key gives r = 1).

Formal statement of what a pass shows: for this config's compiled step, with
the fixed seed, the noise in the released update has (to the stated relative
tolerance, default 1%, with pooled coordinates enough that the standard error
is well below it) at least the scale the ledger's mechanism assumes, so the
ledger's epsilon does not under-report the noise that ran. It does not check
the sensitivity of the sum (that is `dpjax.audit.replay`) nor the accountant
(tests/accounting), and a fixed seed is one sample of the noise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize

from dpjax import configuration
from dpjax import dp_adam_ac
from dpjax import randomness
from dpjax import rgp_step
from dpjax import run_setup
from dpjax import sharding
from dpjax import train as train_lib
from dpjax import user_level
from dpjax.audit import capture

PyTree = Any
QUARTILES = (0.25, 0.5, 0.75)


class NoiseTapState(NamedTuple):
  """The tapped stage's state: the real stage's state, and its last in/out."""
  inner: Any
  received: PyTree
  released: PyTree


def tap(inner: optax.GradientTransformation
        ) -> optax.GradientTransformationExtraArgs:
  """The noise stage `inner`, unchanged, recording its input and output.

  DP-Adam-AC's records are unpacked: the received value is a `ClippedSum`'s
  `total`, the released value a `Carried`'s `updates`.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return NoiseTapState(inner=inner.init(params), received=(), released=())

  def update_fn(updates, state, params=None, **extra_args):
    out, inner_state = inner.update(updates, state.inner, params,
                                    **extra_args)
    received = (updates.total if isinstance(updates, dp_adam_ac.ClippedSum)
                else updates)
    released = (out.updates if isinstance(out, dp_adam_ac.Carried) else out)
    received = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), received)
    released = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), released)
    return out, NoiseTapState(inner=inner_state, received=received,
                              released=released)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def pass_through() -> optax.GradientTransformation:
  """The optimizer slot: returns the (normalised) released update itself."""

  def update_fn(updates, state, params=None):
    del params
    if isinstance(updates, dp_adam_ac.Carried):
      updates = updates.updates
    return updates, state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def lmo_abs_quantiles(params: dict[str, float],
                      probs=QUARTILES) -> np.ndarray:
  """Quantiles of |X| for unit LMO noise X = Laplace(0, 1) / eps'.

  P(|X| > x) = E[exp(-eps' x)] = L_G(x) L_E(x) L_U(x), the Laplace
  transforms of a1 Gamma(k, theta), a3 Exponential(rate lam) and
  a4 U[u_a, u_b] (independent terms; a zero weight contributes 1).
  """
  p = {k: float(v) for k, v in params.items()}

  def survival(x):
    s = 1.0
    if p['a1'] > 0:
      s *= (1.0 + p['a1'] * p['theta'] * x) ** (-p['k'])
    if p['a3'] > 0:
      s *= 1.0 / (1.0 + p['a3'] * x / p['lam'])
    if p['a4'] > 0:
      lo, hi = p['a4'] * p['u_a'], p['a4'] * p['u_b']
      s *= ((math.exp(-x * lo) - math.exp(-x * hi)) / (x * (hi - lo))
            if hi > lo else math.exp(-x * lo))
    return s

  out = []
  for prob in probs:
    hi = 1.0
    while survival(hi) > 1 - prob:
      hi *= 2
    out.append(optimize.brentq(lambda x: survival(x) - (1 - prob), 1e-12, hi,
                               xtol=1e-14, rtol=1e-12))
  return np.asarray(out)


@dataclasses.dataclass
class Check:
  """One measured quantity, what the ledger needs, and the accepted range."""
  name: str
  measured: float
  expected: float
  low: float               # passes when low <= measured <= high
  high: float
  standard_error: float    # of `measured`, relative to `expected`

  @classmethod
  def relative(cls, name, measured, expected, se, tolerance,
               deficit_only=False) -> 'Check':
    """Passes when measured/expected is within 1 +- tolerance (or >= 1 -
    tolerance when `deficit_only`)."""
    return cls(name, float(measured), float(expected),
               (1 - tolerance) * expected,
               math.inf if deficit_only else (1 + tolerance) * expected,
               float(se))

  @property
  def ratio(self) -> float:
    return self.measured / self.expected if self.expected else math.inf

  @property
  def passed(self) -> bool:
    return bool(self.low <= self.measured <= self.high)

  def line(self) -> str:
    return (f'{"PASS" if self.passed else "FAIL"} {self.name}: measured '
            f'{self.measured:.6g}, needed {self.expected:.6g} (ratio '
            f'{self.ratio:.4f}, accepted [{self.low:.6g}, {self.high:.6g}], '
            f'standard error {self.standard_error:.2%})')


@dataclasses.dataclass
class NoiseReport:
  """The probe's result (`lines()`, `passed`, `to_dict()`)."""
  path: str
  mechanism: str
  steps: int
  coordinates: int
  ledger: dict[str, Any]
  checks: list[Check]
  notes: tuple[str, ...] = ()

  @property
  def passed(self) -> bool:
    return all(c.passed for c in self.checks)

  def check(self, name: str) -> Check:
    return next(c for c in self.checks if c.name == name)

  def lines(self) -> list[str]:
    return [c.line() for c in self.checks] + [f'note: {n}' for n in self.notes]

  def summary(self) -> str:
    return (f'{"PASS" if self.passed else "FAIL"}: {self.path}, '
            f'{self.mechanism} noise, {self.coordinates:,} coordinates over '
            f'{self.steps} step(s)')

  def to_dict(self) -> dict[str, Any]:
    return {'path': self.path, 'mechanism': self.mechanism,
            'steps': self.steps, 'coordinates': self.coordinates,
            'ledger': self.ledger, 'passed': self.passed,
            'checks': [dict(dataclasses.asdict(c), ratio=c.ratio,
                            passed=c.passed) for c in self.checks],
            'notes': list(self.notes)}


def _flat(tree) -> np.ndarray:
  leaves = jax.tree.leaves(tree)
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in leaves])


def _count_params(config):
  """(uses_count, Delta_b) of a DP-Adam-AC config, from its definition."""
  ac = config.dp_adam_ac
  uses = bool(ac.nonprivate_percentile_clipping or ac.clip_learning_rate > 0
              or ac.adapt_learning_rate)
  return uses, (0.5 if ac.count_centered else 1.0)


def count_samples(noise_stage, *, centered: bool,
                  expected_units: float, n: int, key: jax.Array) -> np.ndarray:
  """n draws of DP-Adam-AC's count noise from the real noise stage.

  Runs the stage's `update` under vmap on n copies of its initial state with
  independent count keys, at num_unclipped = 4 of num_examples = 8 (the
  centered count is then 0), and returns the released count's noise
  (privatized fraction times B_1, minus the exact count).
  """
  tiny = {'x': jnp.zeros((1,), jnp.float32)}
  state = noise_stage.init(tiny)
  keys = jax.random.split(key, n)

  def one(k):
    st = state._replace(control=state.control._replace(count_key=k))
    _, new = noise_stage.update(tiny, st, num_unclipped=jnp.float32(4.0),
                                num_examples=jnp.float32(8.0))
    return new.control.unclipped_fraction

  frac = np.asarray(jax.jit(jax.vmap(one))(keys), np.float64)
  if centered:
    return (frac - 0.5) * expected_units
  return frac * expected_units - 4.0


def _with_tap_shapes(step_fn, state, frozen, data, max_batch, mesh,
                     dropout_key, records_per_row: int | None = None):
  """`state` with the tap's record fields as zeros of their final shapes,
  so the step compiles once (the probe's state is not donated).
  `records_per_row`: k for user-level (ULS) batches of `[B, k]` records."""
  idx = np.zeros((max_batch,) + ((records_per_row,) if records_per_row
                                 else ()), np.int64)
  batch = user_level.gather_batch(data.train, idx)
  mask = np.zeros((max_batch,), np.float32)
  ids = idx.astype(np.int32)
  out, _ = jax.eval_shape(step_fn, state, frozen, batch, mask, dropout_key,
                          ids)
  repl = sharding.replicated(mesh)
  zeros = lambda t: jax.device_put(jax.tree.map(
      lambda x: jnp.zeros(x.shape, x.dtype), t), repl)
  opt_state = tuple(
      s._replace(received=zeros(o.received), released=zeros(o.released))
      if isinstance(s, NoiseTapState) else s
      for s, o in zip(state.opt_state, out.opt_state))
  return state._replace(opt_state=opt_state)


def probe_config(config, *, seed: int | None = None,
                 min_coordinates: int = 200_000, max_steps: int = 400,
                 count_draws: int = 40_000,
                 tolerance: float = 0.01) -> NoiseReport:
  """Runs the trainer's step with the tapped noise stage (see module doc).

  Args:
    config: a run config, validated here; must be private.
    seed: the fixed secret seed (`dpjax.audit.capture.audit_seed`).
    min_coordinates: pool at least this many noise coordinates (the relative
      standard error of a Gaussian scale is then ~1/sqrt(2 n) = 0.16%).
    max_steps: stop after this many steps even if fewer were pooled.
    count_draws: DP-Adam-AC count-noise draws.
    tolerance: relative tolerance of every check.

  Returns:
    A `NoiseReport`.

  Raises:
    ConfigError: invalid or non-private config.
  """
  configuration.validate(config)
  if not config.dp.enabled:
    raise configuration.ConfigError(
        'dp.enabled', 'False: a non-private run adds no noise to measure',
        'True')
  if config.peft.mode == 'rgp' and config.dp_adam_ac.enabled:
    raise configuration.ConfigError('peft.mode', 'rgp with DP-Adam-AC is not '
                                    'a trainer path', "'full' or 'lora'")
  model, data, plan, mesh = run_setup.build_inputs(config)
  secret = randomness.SecretRandomness.from_insecure_seed(
      capture.audit_seed(config, seed))
  stages, clip_norm_fn, _ = run_setup.build_stages(config, plan,
                                                   secret.noise_key())
  real_noise = stages.noise
  probe = stages._replace(noise=tap(real_noise), optimizer=pass_through(),
                          ema=optax.identity())
  state, frozen, step_fn, dropout_key = capture.placed_step(
      config, model, probe, plan, clip_norm_fn, mesh, secret, data)
  batch_sh = sharding.batch_sharding(mesh)
  sampler = train_lib.make_sampler(config, plan, secret.sampler_seed(),
                                   run_setup.data_users(data))
  state = _with_tap_shapes(
      step_fn, state, frozen, data, int(config.train.max_batch_size), mesh,
      dropout_key, plan.records_per_user if plan.user_sampling == 'uls'
      else None)
  ledger = plan.new_ledger(plan.unit(data.unit))
  rgp = config.peft.mode == 'rgp'

  noise_units, release_err = [], 0.0
  pooled, step = 0, 0
  while pooled < min_coordinates and step < max_steps:
    step += 1
    sens = (float(clip_norm_fn(state.opt_state)) if clip_norm_fn is not None
            else plan.clip_norm)
    if plan.lmo_paper_faithful_not_private:
      from dpjax.accounting import lmo  # pylint: disable=g-import-not-at-top
      sens = lmo.l1_sensitivity_of_l2_clip(
          plan.l2_clip_norm, int(sum(x.size for x in jax.tree.leaves(
              model.trainable))))
    idx, mask = train_lib.draw_batch(sampler, plan, step)
    batch = user_level.gather_batch(data.train, idx)
    batch, mask_d, ids = jax.device_put(
        (batch, mask.astype(np.float32), idx.astype(np.int32)), batch_sh)
    before, step_before = state.trainable, state.step
    state, _ = step_fn(state, frozen, batch, mask_d, dropout_key, ids)
    plan.record_step(ledger, step)
    tapped = jax.device_get(
        next(s for s in state.opt_state if isinstance(s, NoiseTapState)))
    received, released = _flat(tapped.received), _flat(tapped.released)
    noise_units.append((released - received) / sens)
    pooled += received.size
    # The released update: parameter change x B_t == released noisy sum.
    b_t = plan.batch_size_at(step)
    delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) -
                         np.asarray(b, np.float64),
                         jax.device_get(state.trainable),
                         jax.device_get(before))
    if rgp:
      from dpjax import rgp as rgp_lib  # pylint: disable=g-import-not-at-top
      flat_delta = rgp_lib.flat_params(delta)
      # Target kernels: the reconstruction of the released carriers with
      # the bases of this step (public: from the weights and config.seed).
      bases = rgp_step.step_bases(
          run_setup.rgp_key(config), step_before, before,
          tuple(model.rgp_targets), int(config.peft.rgp_rank),
          int(config.peft.rgp_power_iters))
      recon = jax.device_get(rgp_lib.reconstruct(
          tapped.released['carriers'], bases,
          float(config.peft.rgp_cross_sign)))
      rel = {p: np.asarray(v, np.float64)
             for p, v in list(tapped.released['other'].items()) +
             list(recon.items())}
      got = np.concatenate([flat_delta[p].ravel() * b_t for p in sorted(rel)])
      want = np.concatenate([rel[p].ravel() for p in sorted(rel)])
    else:
      got, want = _flat(delta) * b_t, released
    # Float32 parameters round the change by <= 2^-24 |param| per update.
    p_max = max(float(np.max(np.abs(_flat(jax.device_get(t)))))
                for t in (before, state.trainable))
    # (RGP's reconstruction is float32 einsums: 1e-4 relative.)
    allowed = b_t * 2.0 ** -22 * p_max + (1e-4 if rgp else 1e-6) * float(
        np.max(np.abs(want), initial=0.0))
    release_err = max(release_err, float(np.max(np.abs(got - want),
                                                initial=0.0)) /
                      max(allowed, 1e-30))

  # Fresh noise every step: consecutive steps' noise vectors uncorrelated
  # (a reused key gives correlation 1).
  corr = max((abs(float(np.corrcoef(a, b)[0, 1]))
              for a, b in zip(noise_units, noise_units[1:])
              if a.size == b.size and a.size > 1), default=0.0)
  min_d = min(u.size for u in noise_units)
  noise = np.concatenate(noise_units)
  phases = ledger.phases
  sigmas = {float(p.sigma) for p in phases}
  if len(sigmas) != 1:
    raise ValueError(f'the ledger recorded several multipliers {sigmas}; the '
                     'probe expects one per run')
  z = sigmas.pop()
  checks, notes = [], []
  ledger_info = {'steps': ledger.steps, 'noise_multiplier': z,
                 'q': [float(p.q) for p in phases], 'mechanism':
                 plan.mechanism}
  n = noise.size
  if plan.mechanism == 'lmo':
    want_q = lmo_abs_quantiles(dict(ledger.mechanism_params)) * z
    got_q = np.quantile(np.abs(noise), QUARTILES)
    for prob, g, w in zip(QUARTILES, got_q, want_q):
      checks.append(Check.relative(
          f'LMO |noise| / S_1, {int(prob * 100)}th percentile', g, w,
          2.0 / math.sqrt(n), tolerance))
  else:
    rms = float(np.sqrt(np.mean(noise ** 2)))
    mean = float(np.mean(noise))
    need = z
    if config.dp_adam_ac.enabled:
      uses_count, delta_b = _count_params(config)
      if uses_count:
        cnt = count_samples(real_noise,
                            centered=bool(config.dp_adam_ac.count_centered),
                            expected_units=plan.batch_size_at(1),
                            n=count_draws, key=jax.random.key(
                                capture.audit_seed(config, seed) + 1))
        sigma_b = float(np.sqrt(np.mean(cnt ** 2)))
        inv = z ** -2 - (delta_b / sigma_b) ** 2
        need = inv ** -0.5 if inv > 0 else math.inf
        joint = (rms ** -2 + (delta_b / sigma_b) ** 2) ** -0.5
        checks.append(Check.relative(
            'joint multiplier of gradient and count noise', joint, z,
            1.0 / math.sqrt(2 * n), tolerance, deficit_only=True))
        ledger_info.update(count_noise_std_measured=sigma_b,
                           count_sensitivity=delta_b)
        notes.append(f'count noise std {sigma_b:.4g} measured over '
                     f'{count_draws:,} draws of the real noise stage')
      else:
        notes.append('DP-Adam-AC releases no count here (fixed C, no LR '
                     'rule): the gradient noise alone is the mechanism')
    checks.append(Check.relative('gaussian noise std / S (multiplier)', rms,
                                 need, 1.0 / math.sqrt(2 * n), tolerance))
    se_mean = rms / math.sqrt(n)
    checks.append(Check('gaussian noise mean / S', mean, 0.0, -5 * se_mean,
                        5 * se_mean, se_mean))
  checks.append(Check('released update x B_t - released sum, max abs / '
                      'float32 rounding allowance', release_err, 0.0, 0.0,
                      1.0, 0.0))
  if len(noise_units) > 1:
    checks.append(Check('max |correlation| of consecutive steps\' noise',
                        corr, 0.0, 0.0, 6.0 / math.sqrt(min_d),
                        1.0 / math.sqrt(min_d)))
  else:
    notes.append('one step only: independence across steps not checked')
  return NoiseReport(path=capture.path_name(config, mesh.shape['data']),
                     mechanism=plan.mechanism, steps=step, coordinates=n,
                     ledger=ledger_info, checks=checks, notes=tuple(notes))
