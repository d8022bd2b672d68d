"""Adaptive clip norms: private quantile tracking and the percentile history.

Two controllers of the flat clip norm C_t, both pure functions of a
`AdaptiveClipState` (a NamedTuple that lives in the noise stage of the
DP-Adam-AC chain, see `dpjax.dp_adam_ac`):

* Private quantile tracking (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS
  2021), the default. Each clipping unit reports b_i = 1[||g_i|| <= C_t]; the
  centered count sum_i (b_i - 1/2) is released with N(0, sigma_b^2) noise and

      b~_t = (sum_i b_i - n_t / 2 + N(0, sigma_b^2)) / B_t + 1/2,
      C_{t+1} = C_t * exp(-eta * (b~_t - gamma)),

  where n_t is the realised number of units and B_t the public expected one
  (E[b~_t] equals the unclipped fraction when n_t = B_t). The gradient noise
  multiplier is raised to sigma_Delta = (z^-2 - z_b^-2)^-1/2 with
  z_b = sigma_b / s_b the count's own multiplier (s_b its sensitivity), so
  that gradient and count together are one Gaussian mechanism of multiplier z.
* The percentile history of Yang 2025 (DP-Adam-AC, "paper-faithful"):
  C_{t+1} = clip(Percentile_p(last H raw norms), C_min, C_max). It reads raw,
  un-noised norms and is NOT differentially private; `dpjax.dp_adam_ac` only
  offers it behind `nonprivate_percentile_clipping=True`.

Plus the clip-rate-driven learning-rate multiplier (Yang 2025, as reconstructed
in a third-party re-implementation; the paper's constants are unconfirmed),
driven by the privatized clip rate 1 - b~_t only.

Formal guarantees:
  Count sensitivity. Under add/remove of one record and per-record clipping,
  the centered count changes by exactly 1/2 (s_b = 1/2, z_b = 2 sigma_b). If
  the clipping unit is a group of records (`dpjax.microbatch_groups`), one
  record can flip its group's bit, so s_b = 1 (z_b = sigma_b); so it is for
  the uncentered count sum_i b_i (a record adds 1), which is what you get
  when the realised number of units is not available. Note: the (z^-2 -
  (2 sigma_b)^-2)^-1/2 formula is only valid for the CENTERED count; with the
  raw count it under-accounts.
  Joint mechanism. Let the clipped gradient sum have L2 sensitivity S and
  noise std sigma_Delta * S, and the count sensitivity s_b and noise std
  sigma_b, both drawn independently and the pair released together. After
  whitening (dividing each coordinate by its noise std) the pair is a
  spherical Gaussian whose mean moves by at most
  sqrt(sigma_Delta^-2 + z_b^-2) = 1/z when one record is added or removed,
  so the pair is exactly as private as one Gaussian mechanism of multiplier z
  on a sensitivity-1 query, and with Poisson sampling (shared by both halves)
  as one subsampled Gaussian step (q, z). The ledger records (q, z), never
  sigma_Delta. C_{t+1} and the LR multiplier are functions of b~_t and public
  constants: post-processing.
  The percentile history is not covered by any guarantee: C_{t+1} (and so the
  next step's noise scale) depends on raw per-example norms.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class AdaptiveClipState(NamedTuple):
  """Controller state (lives in the noise stage of the DP-Adam-AC chain).

  Attributes:
    clip_norm: () float32, C_t: the clip norm of the *next* step.
    count_key: typed PRNG key for the count noise, split at every step.
    step: () int32, number of steps taken.
    unclipped_fraction: () float32, the last privatized fraction b~ (the
      target quantile before the first step). Public.
    lr_multiplier: () float32, the current learning-rate multiplier. Public.
    history: [H] float32 ring buffer of raw norms (H = 0 in private mode).
      NOT private: never log or export it.
    history_count: () int32, number of norms ever pushed into `history`.
  """
  clip_norm: jax.Array
  count_key: jax.Array
  step: jax.Array
  unclipped_fraction: jax.Array
  lr_multiplier: jax.Array
  history: jax.Array
  history_count: jax.Array


def init_state(*, initial_clip_norm: float, count_key: jax.Array,
               target_quantile: float, history_size: int = 0
               ) -> AdaptiveClipState:
  """The state before the first step."""
  if not initial_clip_norm > 0:
    raise ValueError('initial_clip_norm must be > 0, got '
                     f'{initial_clip_norm!r}.')
  if not (isinstance(history_size, int) and history_size >= 0):
    raise ValueError(f'history_size must be an int >= 0, got {history_size!r}.')
  return AdaptiveClipState(
      clip_norm=jnp.asarray(initial_clip_norm, jnp.float32),
      count_key=jnp.array(count_key, copy=True),
      step=jnp.zeros((), jnp.int32),
      unclipped_fraction=jnp.asarray(target_quantile, jnp.float32),
      lr_multiplier=jnp.ones((), jnp.float32),
      # At least one (unused) slot: orbax cannot save zero-size arrays.
      history=jnp.zeros((max(history_size, 1),), jnp.float32),
      history_count=jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------------------
# Private quantile tracking (Andrew et al. 2021).


def count_sensitivity(group_size: int = 1, centered: bool = True) -> float:
  """Add/remove sensitivity s_b of the (centered) unclipped count.

  Centered, per-record units: 1/2 (a record's bit enters as +-1/2).
  Grouped units: 1 (a record can flip its group's bit from -1/2 to +1/2).
  Uncentered count sum_i b_i: 1 (a record adds 0 or 1, or flips a group).
  """
  if not (isinstance(group_size, int) and group_size >= 1):
    raise ValueError(f'group_size must be an int >= 1, got {group_size!r}.')
  return 0.5 if (group_size == 1 and centered) else 1.0


def gradient_noise_multiplier(noise_multiplier: float, count_noise_std: float,
                              count_sens: float = 0.5) -> float:
  """sigma_Delta = (z^-2 - z_b^-2)^-1/2 with z_b = count_noise_std / s_b.

  With the default s_b = 1/2 this is Andrew et al.'s
  (z^-2 - (2 sigma_b)^-2)^-1/2.

  Args:
    noise_multiplier: z > 0, the multiplier the run is accounted with.
    count_noise_std: sigma_b > 0, std of the noise on the unclipped count.
    count_sens: s_b, sensitivity of the centered count (`count_sensitivity`).

  Returns:
    The multiplier of the gradient noise, sigma_Delta >= z.

  Raises:
    ValueError: if z >= z_b (the count alone would use the whole budget).
  """
  z, sb = float(noise_multiplier), float(count_noise_std)
  if not (z > 0 and math.isfinite(z)):
    raise ValueError(f'noise_multiplier must be finite and > 0 for private '
                     f'adaptive clipping, got {noise_multiplier!r}.')
  if not (sb > 0 and math.isfinite(sb)):
    raise ValueError(f'count_noise_std must be finite and > 0, got '
                     f'{count_noise_std!r}.')
  zb = sb / count_sens
  if z >= zb:
    raise ValueError(
        f'noise_multiplier z={z:g} must be < count_noise_std / '
        f'count_sensitivity = {sb:g} / {count_sens:g} = {zb:g} (Andrew et al.: '
        f'z < 2 sigma_b): the count query alone would spend the whole budget. '
        f'Raise count_noise_std above {z * count_sens:g}.')
  return (z ** -2 - zb ** -2) ** -0.5


def privatized_unclipped_fraction(num_unclipped: jax.Array,
                                  num_units: jax.Array | None, *,
                                  count_noise_std: float | jax.Array,
                                  expected_units: float | jax.Array,
                                  key: jax.Array) -> jax.Array:
  """b~ = (num_unclipped - num_units/2 + N(0, sigma_b^2)) / B + 1/2.

  With `num_units=None` the uncentered form (num_unclipped + N(0,
  sigma_b^2)) / B (count sensitivity 1 instead of 1/2).

  Args:
    num_unclipped: sum of b_i over real units (not private).
    num_units: realised number of real units n (not private), or None.
    count_noise_std: sigma_b.
    expected_units: B, the public expected number of units.
    key: typed PRNG key (use once).

  Returns:
    () float32, the privatized unclipped fraction (may leave [0, 1]).
  """
  noise = count_noise_std * jax.random.normal(key, (), jnp.float32)
  count = jnp.asarray(num_unclipped, jnp.float32)
  if num_units is None:
    return (count + noise) / expected_units
  centered = count - 0.5 * jnp.asarray(num_units, jnp.float32)
  return (centered + noise) / expected_units + 0.5


def geometric_update(clip_norm: jax.Array, unclipped_fraction: jax.Array, *,
                     target_quantile: float, learning_rate: float
                     ) -> jax.Array:
  """C_{t+1} = C_t * exp(-eta * (b~ - gamma)) (Andrew et al., geometric)."""
  return clip_norm * jnp.exp(-learning_rate *
                             (unclipped_fraction - target_quantile))


# ---------------------------------------------------------------------------
# Percentile history (Yang 2025; NOT private).


def push_history(history: jax.Array, history_count: jax.Array,
                 norms: jax.Array, valid: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Appends the valid entries of `norms` (in order) to a ring buffer.

  Args:
    history: [H] ring buffer; slot (k mod H) holds the k-th norm pushed.
    history_count: () int32, norms pushed so far.
    norms: [B] raw norms.
    valid: [B] bool, which entries to push (real, finite units).

  Returns:
    (new history, new count).
  """
  size = history.shape[0]
  if size == 0:
    return history, history_count
  valid = valid.astype(bool)
  n_valid = jnp.sum(valid.astype(jnp.int32))
  rank = jnp.cumsum(valid.astype(jnp.int32)) - 1
  # Only the last H valid norms of a large batch land (no duplicate writes).
  keep = valid & (rank >= n_valid - size)
  pos = jnp.where(keep, (history_count + rank) % size, size)
  history = history.at[pos].set(norms.astype(jnp.float32), mode='drop')
  return history, history_count + n_valid


def history_percentile(history: jax.Array, history_count: jax.Array,
                       percentile: float) -> jax.Array:
  """np.percentile (linear interpolation) of the filled part of the buffer.

  NaN while the buffer is empty.
  """
  size = history.shape[0]
  filled = jnp.arange(size) < jnp.minimum(history_count, size)
  return jnp.nanpercentile(jnp.where(filled, history, jnp.nan), percentile)


def percentile_update(clip_norm: jax.Array, history: jax.Array,
                      history_count: jax.Array, *, target_quantile: float,
                      min_clip_norm: float, max_clip_norm: float
                      ) -> jax.Array:
  """C_{t+1} = clip(Percentile_{100 gamma}(history), C_min, C_max).

  Keeps C_t while the history is empty. Not private (see module docstring).
  """
  p = history_percentile(history, history_count, 100.0 * target_quantile)
  p = jnp.where(jnp.isfinite(p), p, clip_norm)
  return jnp.clip(p, min_clip_norm, max_clip_norm)


# ---------------------------------------------------------------------------
# Clip-rate-driven learning-rate multiplier.


class LrMultiplierRule(NamedTuple):
  """gamma <- min(hi, gamma*up) if rate < target - band;
  gamma <- max(lo, gamma*down) if rate > target + band; else unchanged.

  Defaults follow the third-party reconstruction of Yang 2025 (Alg. 1 lines
  24-28): band 0.10, up 1.01, down 0.995, gamma in [0.1, 2.0].
  """
  target_clip_rate: float
  band: float = 0.10
  up: float = 1.01
  down: float = 0.995
  min_multiplier: float = 0.1
  max_multiplier: float = 2.0

  def validate(self) -> 'LrMultiplierRule':
    if not 0.0 <= self.target_clip_rate <= 1.0:
      raise ValueError('lr multiplier target_clip_rate must be in [0, 1], got '
                       f'{self.target_clip_rate!r}.')
    if not self.band >= 0:
      raise ValueError(f'lr multiplier band must be >= 0, got {self.band!r}.')
    if not (self.up >= 1.0 and 0.0 < self.down <= 1.0):
      raise ValueError('lr multiplier needs up >= 1 and 0 < down <= 1, got '
                       f'up={self.up!r}, down={self.down!r}.')
    if not 0.0 < self.min_multiplier <= 1.0 <= self.max_multiplier:
      raise ValueError('lr multiplier bounds need 0 < min_multiplier <= 1 <= '
                       f'max_multiplier, got [{self.min_multiplier!r}, '
                       f'{self.max_multiplier!r}].')
    return self


def lr_multiplier_update(multiplier: jax.Array, clip_rate: jax.Array,
                         rule: LrMultiplierRule) -> jax.Array:
  """One step of the clip-rate rule; `clip_rate` must be privatized."""
  low = clip_rate < rule.target_clip_rate - rule.band
  high = clip_rate > rule.target_clip_rate + rule.band
  raised = jnp.minimum(rule.max_multiplier, multiplier * rule.up)
  lowered = jnp.maximum(rule.min_multiplier, multiplier * rule.down)
  return jnp.where(low, raised, jnp.where(high, lowered, multiplier))


def find_state(opt_state) -> AdaptiveClipState | None:
  """The first AdaptiveClipState inside an optimizer state, if any."""
  found = [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, AdaptiveClipState))
           if isinstance(s, AdaptiveClipState)]
  return found[0] if found else None
