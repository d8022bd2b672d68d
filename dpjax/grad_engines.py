"""How the clipped sum is computed: one interface, several engines.

The training step (`dpjax.steps.make_train_step`) is written once: it asks a
*gradient engine* for the clipped sum of a batch, privatizes it (noise, then
1/B), asks the engine to map the privatized sum back to a gradient of the
trainable tree, and runs the optimizer and the EMA. Engines:

  * `VmapEngine`: per-example gradients with `jax.vmap(jax.grad)`,
    micro-batched in `lax.scan` (`dpjax.clipping.microbatched_clipped_sum`).
    Covers every model and loss; L2 or L1 norms.
  * `BookkeepingEngine`: book-keeping clipping (`dpjax.bookkeeping`): one
    forward and one backward pass per micro-batch, per-example norms from
    each layer's input and output gradient, the clipped sum formed directly;
    no per-example gradient of a large leaf. L2 only, tapped layers only
    (`dpjax.bookkeeping.check` refuses anything else at build time).
  * `NonPrivateEngine`: the plain gradient sum (no clipping), micro-batched:
    the best non-private step, the baseline of every benchmark.
  * `dpjax.rgp_step.RGPEngine`: RGP's carrier-space clipped sum; its
    `to_gradient` reconstructs full-shape kernel gradients after the noise.

Every engine returns `EngineOutput(clipped_sum, stats, norms, aux)` for the
same per-record loss, mask, per-record keys and clip norm, so the noise,
normalisation, optimizer, ledger and metrics exist once, in the step.
`select` turns `config.train.grad_engine` ('vmap' | 'bookkeeping' | 'auto')
into an engine at build time.

Formal guarantees:
  Every private engine returns a float32 sum S = sum_i c_i v_i over the
  examples of the batch, where v_i is example i's gradient of the trainable
  leaves (in the engine's space: carriers for RGP) and the clip factors
  c_i come from `dpjax.clipping.style_clip_factors` (flat, per-layer or
  automatic), so ||c_i v_i|| <= C and S has add/remove sensitivity C in the
  engine's norm (L2; L1 for the vmap and RGP engines with `norm_ord=1`).
  Padded rows (mask 0) contribute exactly 0 and non-finite norms give
  c_i = 0. `to_gradient` sees only the privatized sum and public state
  (post-processing). The engines differ in cost, not in the mechanism:
  book-keeping's clipped sum and norms equal the vmap engine's to float32
  rounding (`tests/test_bookkeeping.py`, `tests/test_grad_engines.py`).
  `NonPrivateEngine` is not private (its sum is unclipped).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from dpjax import clipping

PyTree = Any
ENGINES = ('vmap', 'bookkeeping', 'auto')


class EngineOutput(NamedTuple):
  """What an engine computes for one batch."""
  clipped_sum: PyTree        # float32, in the engine's space
  stats: clipping.ClipStats  # not privatized
  norms: jax.Array           # [B] per-example norms (zeros when unclipped)
  aux: Any = None            # whatever `to_gradient` needs (RGP: bases)


class GradEngine(Protocol):
  """The seam between the step and the way the clipped sum is computed."""
  name: str

  def clipped_sum(self, trainable: PyTree, frozen: PyTree,
                  batch: dict[str, jax.Array], mask: jax.Array,
                  keys: jax.Array, *, clip_norm: Any,
                  step: jax.Array) -> EngineOutput:
    """The masked clipped sum of the batch (sensitivity `clip_norm`)."""

  def to_gradient(self, privatized: PyTree, aux: Any,
                  trainable: PyTree) -> PyTree:
    """The trainable-shaped gradient from the noised, normalized sum."""


def _record_loss(loss_fn, frozen):
  return lambda p, ex, k: loss_fn(p, frozen, ex, k)


@dataclasses.dataclass(frozen=True)
class VmapEngine:
  """Per-example gradients by `vmap(grad)` (`dpjax.clipping`).

  Attributes:
    loss_fn: `loss_fn(trainable, frozen, example, key) -> scalar`, one record.
    microbatch_size: per-example gradients are computed m at a time.
    norm_ord: 2 (L2, Gaussian noise) or 1 (L1, LMO noise).
    clip_style: 'flat', 'per_layer' or 'automatic' (`dpjax.clipping`).
    gamma: automatic clipping's stability constant.
    skip_padding_microbatches: see `dpjax.clipping.microbatched_clipped_sum`.
  """
  loss_fn: Callable[..., jax.Array]
  microbatch_size: int
  norm_ord: int = 2
  clip_style: str = 'flat'
  gamma: float = clipping.AUTOMATIC_GAMMA
  skip_padding_microbatches: bool = False
  name: str = 'vmap'

  def clipped_sum(self, trainable, frozen, batch, mask, keys, *, clip_norm,
                  step):
    del step
    total, stats, norms = clipping.microbatched_clipped_sum(
        _record_loss(self.loss_fn, frozen), trainable, batch, mask, keys,
        l2_clip_norm=clip_norm, microbatch_size=self.microbatch_size,
        norm_ord=self.norm_ord,
        skip_padding_microbatches=self.skip_padding_microbatches,
        clip_style=self.clip_style, gamma=self.gamma)
    return EngineOutput(total, stats, norms)

  def to_gradient(self, privatized, aux, trainable):
    del aux, trainable
    return privatized


@dataclasses.dataclass(frozen=True)
class BookkeepingEngine:
  """Book-keeping clipping (`dpjax.bookkeeping`): same output as `VmapEngine`.

  Attributes: as `VmapEngine` (L2 only), plus
    method: 'auto' (per leaf: Gram when 2 T^2 < leaf size, else
      instantiate), 'gram' or 'instantiate'.
    lora_scale: alpha / rank when the trainable tree holds LoRA factors.
  """
  loss_fn: Callable[..., jax.Array]
  microbatch_size: int
  clip_style: str = 'flat'
  gamma: float = clipping.AUTOMATIC_GAMMA
  skip_padding_microbatches: bool = False
  method: str = 'auto'
  lora_scale: float | None = None
  name: str = 'bookkeeping'

  def clipped_sum(self, trainable, frozen, batch, mask, keys, *, clip_norm,
                  step):
    del step
    from dpjax import bookkeeping  # pylint: disable=g-import-not-at-top
    total, stats, norms = bookkeeping.clipped_sum(
        _record_loss(self.loss_fn, frozen), trainable, batch, mask, keys,
        clip_norm=clip_norm, microbatch_size=self.microbatch_size,
        skip_padding_microbatches=self.skip_padding_microbatches,
        clip_style=self.clip_style, gamma=self.gamma, method=self.method,
        lora_scale=self.lora_scale)
    return EngineOutput(total, stats, norms)

  def to_gradient(self, privatized, aux, trainable):
    del aux, trainable
    return privatized


def _micro_view(x, microbatch_size):
  n = x.shape[0] // microbatch_size
  return jnp.moveaxis(x.reshape((microbatch_size, n) + x.shape[1:]), 1, 0)


def nonprivate_grad_sum(loss_fn, trainable, batch, mask, keys, *,
                        microbatch_size):
  """Sum over real examples of their gradients, micro-batched (no clipping).

  `loss_fn(trainable, example, key) -> scalar` for one record.
  """
  def mb_loss(p, mb, mmask, mkeys):
    losses = jax.vmap(loss_fn, in_axes=(None, 0, 0))(p, mb, mkeys)
    losses = jnp.where(mmask > 0, losses, 0.0)
    return jnp.sum(losses)

  grad_fn = jax.value_and_grad(mb_loss)
  xs = (jax.tree.map(lambda x: _micro_view(x, microbatch_size), batch),
        _micro_view(mask.astype(jnp.float32), microbatch_size),
        _micro_view(keys, microbatch_size))
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trainable)

  def body(acc, micro):
    total, loss_sum = acc
    loss, g = grad_fn(trainable, *micro)
    total = jax.tree.map(lambda t, x: t + x.astype(jnp.float32), total, g)
    return (total, loss_sum + loss), None

  (total, loss_sum), _ = jax.lax.scan(body, (zeros, jnp.zeros(())), xs)
  z = jnp.zeros((), jnp.float32)
  stats = clipping.ClipStats(num_examples=jnp.sum(mask.astype(jnp.float32)),
                             num_clipped=z, norm_sum=z, loss_sum=loss_sum)
  return total, stats


@dataclasses.dataclass(frozen=True)
class NonPrivateEngine:
  """The unclipped gradient sum, micro-batched: NOT private (baseline)."""
  loss_fn: Callable[..., jax.Array]
  microbatch_size: int
  name: str = 'nonprivate'

  def clipped_sum(self, trainable, frozen, batch, mask, keys, *, clip_norm,
                  step):
    del clip_norm, step
    total, stats = nonprivate_grad_sum(
        _record_loss(self.loss_fn, frozen), trainable, batch, mask, keys,
        microbatch_size=self.microbatch_size)
    return EngineOutput(total, stats, jnp.zeros(mask.shape, jnp.float32))

  def to_gradient(self, privatized, aux, trainable):
    del aux, trainable
    return privatized


@dataclasses.dataclass(frozen=True)
class Choice:
  """What `select` chose and why (for the log and the report)."""
  engine: Any
  reason: str


def select(requested: str, *, loss_fn, trainable, frozen, example_batch,
           keys, microbatch_size: int, norm_ord: int = 2,
           clip_style: str = 'flat', gamma: float = clipping.AUTOMATIC_GAMMA,
           skip_padding_microbatches: bool = False, method: str = 'auto',
           lora_scale: float | None = None,
           bookkeeping_possible: str | None = None) -> Choice:
  """The private engine for `config.train.grad_engine`.

  Args:
    requested: 'vmap', 'bookkeeping' or 'auto'.
    loss_fn, trainable, frozen: the model's per-record loss and trees.
    example_batch: one micro-batch (arrays or ShapeDtypeStructs) for the
      build-time coverage check.
    keys: the micro-batch's keys (or their shapes).
    bookkeeping_possible: None, or why book-keeping cannot run this step at
      all (user-level sampling, RGP, ...): 'bookkeeping' is then an error,
      'auto' falls back to vmap.

  Raises:
    ValueError: 'bookkeeping' requested where it cannot run, naming why.
  """
  if requested not in ENGINES:
    raise ValueError(f'grad_engine must be one of {ENGINES}, got '
                     f'{requested!r}.')
  vmap = VmapEngine(loss_fn, microbatch_size, norm_ord=norm_ord,
                    clip_style=clip_style, gamma=gamma,
                    skip_padding_microbatches=skip_padding_microbatches)
  if requested == 'vmap':
    return Choice(vmap, 'requested')
  why = bookkeeping_possible
  if why is None and norm_ord != 2:
    why = ('L1 clipping (dp.mechanism=lmo) cannot use the Gram trick; it '
           'needs the vmap engine')
  if why is None:
    from dpjax import bookkeeping  # pylint: disable=g-import-not-at-top
    try:
      bookkeeping.check(_record_loss(loss_fn, frozen), trainable,
                        example_batch, keys, method=method,
                        lora_scale=lora_scale)
    except ValueError as e:
      why = str(e)
  if why is not None:
    if requested == 'bookkeeping':
      raise ValueError(f'grad_engine=bookkeeping cannot run this step: {why}')
    return Choice(vmap, f'auto: vmap, since book-keeping cannot: {why}')
  engine = BookkeepingEngine(
      loss_fn, microbatch_size, clip_style=clip_style, gamma=gamma,
      skip_padding_microbatches=skip_padding_microbatches, method=method,
      lora_scale=lora_scale)
  return Choice(engine, 'requested' if requested == 'bookkeeping' else
                'auto: every trainable leaf is covered by a book-keeping tap')
