"""The jitted RGP training step (reparametrized gradient perturbation).

`RGPEngine` is RGP's gradient engine (`dpjax.grad_engines`) and
`make_rgp_train_step` the one training step `dpjax.steps.make_train_step`
driven by it (Yu et al. 2021, as used by EW-Tune): same `step(state, frozen,
batch, mask, dropout_key, record_ids) -> (state, metrics)` interface, same `TrainState` (the trainable
tree holds the FULL target kernels, see peft mode 'rgp'), same chain state
(`optimizers.chain(stages).init(trainable)`), same metrics. Per step:

  1. Bases. For every target kernel W [in, out], (L [in, r], R [r, out]) by
     power iteration on the current weights (`dpjax.rgp.power_bases`, EW-Tune's
     source='weights') from a Gaussian start keyed by
     `fold_in(key, state.step)`: stateless, nothing extra to checkpoint
     (`step_bases` recomputes them).
  2. Per-example gradients of the carriers (L', R') of W - L R + L' R'
     (`dpjax.rgp.merge`) and of the other trainable leaves, jointly clipped
     in L2 and summed micro-batch by micro-batch
     (`dpjax.clipping.microbatched_clipped_sum`). The carrier gradients are
     dL = dW R^T [in, r] and dR = L^T dW [r, out].
  3. `stages.noise` then `stages.normalize` (1/B) on that carrier-space sum.
  4. `dpjax.rgp.reconstruct` maps the noised carriers back to full-shape
     kernel gradients (dL R + L dR + cross_sign L L^T dL R); with the other
     leaves as they are this is a trainable-shaped gradient, fed to
     `stages.optimizer` and `stages.ema` exactly as `optax.chain` would
     (both receive the pre-update parameters). The clip stage's state is
     carried through unchanged.

Memory: the per-example tensors that are clipped and summed are the carriers
([in, r] + [r, out] per target), not [B, in, out]. The backward pass through
`merge` still forms each example's kernel cotangent inside one micro-batch
(at most [microbatch_size, in, out] per target, like ordinary DP-SGD on the
same kernel), unless XLA reassociates the products.

Differences from EW-Tune's code, not reproduced by default: EW-Tune adds the
L L^T dL R term (`cross_sign=+1` gives its sign; the default -1 is the RGP
paper's and reconstructs dW exactly at full rank), and EW-Tune divides the
classification head's gradient by 10 (not done here; scale the head's
learning rate instead if wanted).

Formal guarantees:
  The bases depend only on the current weights, which are themselves
  post-processing of previously released (privatized) updates, and on fresh
  randomness independent of the data. Conditioned on them, each example's
  carriers are a fixed function of that example alone; the concatenation of
  all carriers and all other trainable leaves is clipped to L2 norm C, so the
  masked sum has add/remove L2 sensitivity C in carrier space, exactly as in
  `dpjax.steps`. `stages.noise` (the Gaussian mechanism with std sigma C for
  `optimizers.dp_stages`) is applied to that sum, so one step is the same
  (subsampled) mechanism as a DP-SGD step with the same (q, sigma) and the
  ledger records it the same way. Division by the public expected batch
  size, reconstruction, the optimizer and the EMA are post-processing. Padded
  rows (mask 0) contribute nothing. The usual conditions of
  `dpjax.clipping` apply (one record per example, Poisson or fixed-size
  sampling as accounted). The metrics are not privatized, as in
  `dpjax.steps`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from dpjax import clipping
from dpjax import grad_engines
from dpjax import optimizers
from dpjax import rgp
from dpjax import steps

PyTree = Any


def _check_targets(trainable: PyTree, targets: Sequence[str], rank: int
                   ) -> dict[str, jax.Array]:
  flat = rgp.flat_params(trainable)
  for t in targets:
    if t not in flat:
      raise ValueError(f'rgp targets: no trainable leaf {t!r}; trainable '
                       f'leaves are e.g. {sorted(flat)[:12]}')
    if jnp.ndim(flat[t]) != 2:
      raise ValueError(f'rgp targets: {t!r} has shape {jnp.shape(flat[t])}, '
                       'RGP needs a 2-D kernel [in, out].')
    if rank > min(jnp.shape(flat[t])):
      raise ValueError(f'rgp rank={rank} exceeds min(in, out) of {t!r} '
                       f'{jnp.shape(flat[t])}.')
  return flat


def step_bases(key: jax.Array, step: jax.Array, trainable: PyTree,
               targets: Sequence[str], rank: int, power_iters: int = 1
               ) -> rgp.Bases:
  """The bases the RGP step uses at update `step` (from the current weights).

  Target i uses `jax.random.split(jax.random.fold_in(key, step),
  len(targets))[i]`, in the order of `targets`.
  """
  flat = _check_targets(trainable, targets, rank)
  keys = jax.random.split(jax.random.fold_in(key, step), len(targets))
  return {t: rgp.power_bases(k, jax.lax.stop_gradient(flat[t]), rank,
                             power_iters)
          for k, t in zip(keys, targets)}


def carrier_clipped_sum(loss_fn: Callable[..., jax.Array], trainable: PyTree,
                        frozen: PyTree, bases: rgp.Bases,
                        batch: dict[str, jax.Array], mask: jax.Array,
                        keys: jax.Array, *, l2_clip_norm: float | jax.Array,
                        microbatch_size: int, clip_norm_ord: int = 2,
                        extra_grad_scale: float = 1.0,
                        skip_padding_microbatches: bool = False,
                        clip_style: str = 'flat'
                        ) -> tuple[PyTree, clipping.ClipStats, jax.Array]:
  """The clipped sum that RGP privatizes, in carrier space.

  Differentiates `{'carriers': carriers_of(bases), 'other': {path: leaf}}`
  (`other`: the trainable leaves that are not targets, keyed by their
  '/'-joined path) through `loss_fn(trainable with the targets replaced by
  merge(...), frozen, example, key)`, clipping each example's concatenation
  of carriers and other leaves jointly to L2 norm C.

  Returns:
    (the clipped sum, a tree `{'carriers': {path: (dL, dR)}, 'other':
    {path: g}}`; ClipStats; per-example norms [B]).
  """
  flat = rgp.flat_params(trainable)
  other = {p: x for p, x in flat.items() if p not in bases}
  diff = {'carriers': rgp.carriers_of(bases), 'other': other}

  def rebuild(c):
    def fn(path, x):
      p = rgp.path_str(path)
      if p not in c['other']:
        return x
      v = c['other'][p]
      if extra_grad_scale == 1.0:
        return v
      # Same value, gradient times extra_grad_scale (EW-Tune divides the
      # head's per-example gradients by 10 before clipping).
      return jax.lax.stop_gradient(v) + extra_grad_scale * (
          v - jax.lax.stop_gradient(v))
    return rgp.merge(jax.tree_util.tree_map_with_path(fn, trainable), bases,
                     c['carriers'])

  record_loss = lambda c, ex, k: loss_fn(rebuild(c), frozen, ex, k)
  return clipping.microbatched_clipped_sum(
      record_loss, diff, batch, mask, keys, l2_clip_norm=l2_clip_norm,
      microbatch_size=microbatch_size, norm_ord=clip_norm_ord,
      skip_padding_microbatches=skip_padding_microbatches,
      clip_style=clip_style)


def make_rgp_train_step(loss_fn: Callable[..., jax.Array],
                        stages: optimizers.DPStages, *,
                        targets: Sequence[str], rank: int,
                        l2_clip_norm: float, microbatch_size: int,
                        key: jax.Array, power_iters: int = 1,
                        cross_sign: float = -1.0,
                        clip_norm_ord: int = 2,
                        extra_grad_scale: float = 1.0,
                        skip_padding_microbatches: bool = False,
                        clip_style: str = 'flat'
                        ) -> Callable[..., tuple]:
  """`step(state, frozen, batch, mask, dropout_key, record_ids) -> (state, metrics)`.

  `steps.make_train_step(rgp_engine(...), stages, ...)`. Per-record dropout
  keys as in `dpjax.steps.record_keys`.

  Args:
    loss_fn: `loss_fn(trainable, frozen, example, key) -> scalar` for one
      record, over the FULL trainable tree (target kernels and other leaves).
    stages: the DP stages; `state.opt_state` is
      `optimizers.chain(stages).init(trainable)`. `stages.clip` is not
      called (clipping happens in carrier space); `stages.noise` and
      `stages.normalize` must accept any tree (true of `dp_stages`).
    targets: '/'-joined paths (`dpjax.rgp.path_str`) of the 2-D kernels in
      the trainable tree to reparametrize, e.g.
      `Peft(mode='rgp', ...).rgp_target_paths(trainable)`.
    rank: carrier rank r (<= min(in, out) of every target).
    l2_clip_norm: C, the joint per-example L2 clip norm in carrier space; the
      noise stage must have been built with the same C.
    microbatch_size: per-example gradients are computed m at a time.
    key: typed PRNG key for the bases' random starts (use a key independent
      of the noise key); step t uses `fold_in(key, t)`.
    power_iters: power iterations per basis (EW-Tune: 1).
    cross_sign: sign of the L L^T dL R term in the reconstruction (-1: the
      RGP paper, exact at full rank; +1: EW-Tune's code).
    clip_norm_ord: 2 (joint L2 clipping, Gaussian noise) or 1 (joint L1
      clipping in carrier space, for LMO noise).
    extra_grad_scale: per-example gradients of the non-target trainable
      leaves are multiplied by this before clipping (EW-Tune: 0.1 for the
      classification head). Any value keeps the sensitivity: clipping comes
      after it.

  The caller jits the returned function (with donation of `state`).
  """
  if not l2_clip_norm > 0:
    raise ValueError(f'l2_clip_norm must be > 0, got {l2_clip_norm!r}.')
  engine = rgp_engine(
      loss_fn, targets=targets, rank=rank, microbatch_size=microbatch_size,
      key=key, power_iters=power_iters, cross_sign=cross_sign,
      clip_norm_ord=clip_norm_ord, extra_grad_scale=extra_grad_scale,
      skip_padding_microbatches=skip_padding_microbatches,
      clip_style=clip_style)
  return steps.make_train_step(engine, stages, l2_clip_norm=l2_clip_norm)


def rgp_engine(loss_fn: Callable[..., jax.Array], *, targets: Sequence[str],
               rank: int, microbatch_size: int, key: jax.Array,
               power_iters: int = 1, cross_sign: float = -1.0,
               clip_norm_ord: int = 2, extra_grad_scale: float = 1.0,
               skip_padding_microbatches: bool = False,
               clip_style: str = 'flat') -> 'RGPEngine':
  """A validated `RGPEngine` (arguments as `make_rgp_train_step`)."""
  targets = tuple(targets)
  if not targets:
    raise ValueError('rgp targets is empty: name at least one 2-D kernel.')
  if len(set(targets)) != len(targets):
    raise ValueError(f'rgp targets has duplicates: {targets}')
  if not (isinstance(rank, int) and rank >= 1):
    raise ValueError(f'rgp rank must be an integer >= 1, got {rank!r}.')
  if not (isinstance(power_iters, int) and power_iters >= 1):
    raise ValueError(f'power_iters must be an integer >= 1, got '
                     f'{power_iters!r}.')
  if not (isinstance(microbatch_size, int) and microbatch_size >= 1):
    raise ValueError(f'microbatch_size must be an integer >= 1, got '
                     f'{microbatch_size!r}.')
  if not (isinstance(key, jax.Array) and
          jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
    raise TypeError('the RGP engine needs a typed PRNG key from '
                    'jax.random.key().')
  if not (isinstance(extra_grad_scale, (int, float)) and
          extra_grad_scale > 0):
    raise ValueError(f'extra_grad_scale must be > 0, got '
                     f'{extra_grad_scale!r}.')
  if cross_sign not in (-1.0, 1.0):
    raise ValueError(f'cross_sign must be -1 or +1, got {cross_sign!r}.')
  cross_sign = float(cross_sign)

  clipping.check_style(clip_style)
  return RGPEngine(loss_fn, targets=targets, rank=rank, key=key,
                   microbatch_size=microbatch_size, power_iters=power_iters,
                   cross_sign=cross_sign, norm_ord=clip_norm_ord,
                   extra_grad_scale=float(extra_grad_scale),
                   skip_padding_microbatches=skip_padding_microbatches,
                   clip_style=clip_style)


@dataclasses.dataclass(frozen=True)
class RGPEngine:
  """RGP's clipped sum in carrier space (`dpjax.grad_engines` interface).

  `clipped_sum` computes the step's bases (`step_bases`) and the clipped
  carrier sum (`carrier_clipped_sum`); `to_gradient` maps the privatized
  carriers back to full-shape kernel gradients (`dpjax.rgp.reconstruct`),
  the other leaves as they are. Build it with `make_rgp_train_step`, which
  or `rgp_engine`, which validate the arguments.
  """
  loss_fn: Callable[..., jax.Array]
  targets: tuple[str, ...]
  rank: int
  key: jax.Array
  microbatch_size: int
  power_iters: int = 1
  cross_sign: float = -1.0
  norm_ord: int = 2
  extra_grad_scale: float = 1.0
  skip_padding_microbatches: bool = False
  clip_style: str = 'flat'
  name: str = 'rgp'

  def clipped_sum(self, trainable, frozen, batch, mask, keys, *, clip_norm,
                  step):
    bases = step_bases(self.key, step, trainable, self.targets, self.rank,
                       self.power_iters)
    total, stats, norms = carrier_clipped_sum(
        self.loss_fn, trainable, frozen, bases, batch, mask, keys,
        l2_clip_norm=clip_norm, microbatch_size=self.microbatch_size,
        clip_norm_ord=self.norm_ord, extra_grad_scale=self.extra_grad_scale,
        skip_padding_microbatches=self.skip_padding_microbatches,
        clip_style=self.clip_style)
    return grad_engines.EngineOutput(total, stats, norms, bases)

  def to_gradient(self, privatized, aux, trainable):
    recon = rgp.reconstruct(privatized['carriers'], aux, self.cross_sign)

    def grad_leaf(path, x):
      p = rgp.path_str(path)
      g = recon[p] if p in recon else privatized['other'][p]
      return g.astype(x.dtype)
    return jax.tree_util.tree_map_with_path(grad_leaf, trainable)
