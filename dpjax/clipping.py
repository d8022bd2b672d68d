"""Per-example gradients, flat L2 clipping and the masked clipped sum.

One definition of the mechanism's first half, two ways to drive it:

* `clip_and_sum(l2_clip_norm)`: an optax transformation whose input is a
  pytree of per-example gradients (leading batch axis) and whose output is the
  masked sum of the clipped gradients. It is the first stage of the DP chains
  in `dpjax.optimizers` and works on any parameter pytree.
* `microbatched_clipped_sum(...)`: the training step's driver. It computes
  per-example gradients with `jax.vmap(jax.grad(loss))` one micro-batch at a
  time inside `lax.scan`, and feeds each micro-batch to the same
  `clipped_sum` function, so memory is bounded by the micro-batch size.

Formal guarantees:
  Let g_i be example i's gradient and m_i in {0, 1} its mask (0 = padding).
  The output S = sum_i m_i * g_i * min(1, C / ||g_i||_2) satisfies
  ||S(D) - S(D')||_2 <= C for datasets D, D' differing by adding or removing
  one example, provided (a) example i's gradient depends only on example i
  (no cross-example interaction in the model: no batch norm, per-example
  dropout keys), and (b) padded rows have m_i = 0. The flat norm is taken
  over *all* leaves that are differentiated, so every trained parameter is
  covered. Non-finite per-example norms are treated as infinite (the example
  contributes 0), so a NaN cannot escape the bound.
  With `norm_ord=1` the same holds with L1 norms: ||S(D) - S(D')||_1 <= C.

  Clip styles (`CLIP_STYLES`, the same in every engine of
  `dpjax.grad_engines`), with g_{i,l} example i's gradient of leaf l
  (L trainable leaves) and n_i its flat norm:
  * 'flat' (default): the factor above, one per example.
  * 'per_layer': each leaf is clipped on its own to the bound C_l = C /
    sqrt(L) (L2; C / L for L1), c_{i,l} = m_i min(1, C_l / ||g_{i,l}||).
    Example i's clipped contribution has squared L2 norm <= sum_l C_l^2 =
    C^2 (the L2 sensitivity of the concatenated sum is the root of the sum
    of squared group bounds), so the bound C and the noise sigma C are
    unchanged.
  * 'automatic' (Bu et al. 2023, "normalize"): c_i = m_i C / (n_i + gamma),
    gamma > 0; ||c_i g_i|| = C n_i / (n_i + gamma) < C.
  Non-finite norms give factor 0 in every style.

  Float32 rule: the norms, the clip factors, the clipped sum and its
  accumulation across micro-batches are float32 whatever the parameter,
  gradient or compute dtype (per-example gradients are cast to float32 before
  they are scaled and summed), and the sum is returned in float32. It is cast
  to the parameter dtype only after the noise (`dpjax.noise`). The bound
  above is for exact arithmetic; float32 summation keeps the deviation at
  float32 rounding of the sum (relative ~1e-7 of |S|), whereas rounding a sum
  of magnitude ~B C to bfloat16 (8 significant bits) could let one record
  move it by up to ~B C / 256, far more than C.

Timing: by default every micro-batch is computed, so the step time does not
depend on how many real records the (Poisson) batch holds.
`microbatched_clipped_sum(..., skip_padding_microbatches=True)` skips
micro-batches that are all padding: faster, but the step time then reveals
the realised batch size (a timing side channel outside the guarantee).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any


class ClipStats(NamedTuple):
  """Per-batch statistics of clipping (sums over real examples).

  These are *not* private: only their privatized versions may feed back into
  training (see `dpjax.adaptive`).
  """
  num_examples: jax.Array   # () float32: sum of the mask
  num_clipped: jax.Array    # () float32: real examples with norm > C
  norm_sum: jax.Array       # () float32: sum of per-example norms
  loss_sum: jax.Array       # () float32: sum of per-example losses


NORM_ORDS = (1, 2)
CLIP_STYLES = ('flat', 'per_layer', 'automatic')
AUTOMATIC_GAMMA = 0.01   # Bu et al.'s default stability constant


def global_norms(per_example: PyTree, norm_ord: int = 2) -> jax.Array:
  """L2 (or, with norm_ord=1, L1) norm of each example's gradient over all
  leaves: shape [B]."""
  leaves = jax.tree.leaves(per_example)
  if norm_ord == 1:
    return sum(jnp.sum(jnp.abs(jnp.reshape(x.astype(jnp.float32),
                                           (x.shape[0], -1))), axis=1)
               for x in leaves)
  if norm_ord != 2:
    raise ValueError(f'norm_ord must be one of {NORM_ORDS}, got {norm_ord!r}.')
  sq = sum(jnp.sum(jnp.reshape(x.astype(jnp.float32), (x.shape[0], -1)) ** 2,
                   axis=1) for x in leaves)
  return jnp.sqrt(sq)


def clip_factors(norms: jax.Array, mask: jax.Array,
                 l2_clip_norm: float | jax.Array) -> jax.Array:
  """m_i * min(1, C / ||g_i||), with non-finite norms mapped to 0."""
  finite = jnp.isfinite(norms)
  safe = jnp.where(finite, norms, 1.0)
  factor = jnp.minimum(1.0, l2_clip_norm / jnp.maximum(safe, 1e-30))
  factor = jnp.where(finite, factor, 0.0)
  return factor * mask.astype(jnp.float32)


def leaf_norms(per_example: PyTree, norm_ord: int = 2) -> jax.Array:
  """[B, L]: each example's L2 (or L1) norm of each leaf, in tree order."""
  if norm_ord not in NORM_ORDS:
    raise ValueError(f'norm_ord must be one of {NORM_ORDS}, got {norm_ord!r}.')
  cols = []
  for x in jax.tree.leaves(per_example):
    x = jnp.reshape(x.astype(jnp.float32), (x.shape[0], -1))
    cols.append(jnp.sum(jnp.abs(x), axis=1) if norm_ord == 1
                else jnp.sqrt(jnp.sum(x * x, axis=1)))
  return jnp.stack(cols, axis=1)


def combine_leaf_norms(norms_by_leaf: jax.Array, norm_ord: int = 2
                       ) -> jax.Array:
  """[B, L] leaf norms -> [B] flat norms (root of squares; sum for L1)."""
  if norm_ord == 1:
    return jnp.sum(norms_by_leaf, axis=1)
  return jnp.sqrt(jnp.sum(norms_by_leaf * norms_by_leaf, axis=1))


def check_style(style: str, gamma: float = AUTOMATIC_GAMMA) -> None:
  if style not in CLIP_STYLES:
    raise ValueError(f'clip style must be one of {CLIP_STYLES}, got '
                     f'{style!r}.')
  if style == 'automatic' and not gamma > 0:
    raise ValueError(f'automatic clipping needs gamma > 0, got {gamma!r}.')


def style_clip_factors(norms_by_leaf: jax.Array, mask: jax.Array,
                       clip_norm: float | jax.Array, *, style: str = 'flat',
                       norm_ord: int = 2, gamma: float = AUTOMATIC_GAMMA
                       ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Clip factors of a clip style (module docstring) from per-leaf norms.

  Args:
    norms_by_leaf: [B, L] float32, example i's norm of leaf l.
    mask: [B], 1 for real examples.
    clip_norm: C > 0, the bound on each example's whole contribution.
    style: 'flat', 'per_layer' or 'automatic'.
    norm_ord: 2 or 1 (the norm of `norms_by_leaf` and of the bound).
    gamma: automatic clipping's stability constant (> 0).

  Returns:
    (factors [B, L] float32, flat norms [B], clipped [B] float32: 1 where a
    real example was scaled down).
  """
  check_style(style, gamma)
  m = mask.astype(jnp.float32)
  norms = combine_leaf_norms(norms_by_leaf, norm_ord)
  num_leaves = norms_by_leaf.shape[1]
  if style == 'flat':
    f = clip_factors(norms, mask, clip_norm)
    clipped = m * (norms > clip_norm)
    return jnp.broadcast_to(f[:, None], norms_by_leaf.shape), norms, clipped
  if style == 'per_layer':
    split = (num_leaves if norm_ord == 1 else num_leaves ** 0.5)
    bound = clip_norm / split
    f = clip_factors(norms_by_leaf, m[:, None], bound)
    clipped = m * jnp.any(norms_by_leaf > bound, axis=1)
    return f, norms, clipped
  finite = jnp.isfinite(norms)
  f = clip_norm / (jnp.where(finite, norms, 0.0) + gamma)
  f = jnp.where(finite, f, 0.0) * m
  clipped = m * (norms > clip_norm)
  return jnp.broadcast_to(f[:, None], norms_by_leaf.shape), norms, clipped


def styled_clipped_sum(per_example: PyTree, mask: jax.Array,
                       clip_norm: float | jax.Array, *, style: str = 'flat',
                       norm_ord: int = 2, gamma: float = AUTOMATIC_GAMMA
                       ) -> tuple[PyTree, jax.Array, jax.Array]:
  """`clipped_sum` for any clip style: (sum, norms [B], clipped [B])."""
  if style == 'flat':
    total, norms = clipped_sum(per_example, mask, clip_norm, norm_ord)
    m = mask.astype(jnp.float32)
    return total, norms, m * (norms > clip_norm)
  factors, norms, clipped = style_clip_factors(
      leaf_norms(per_example, norm_ord), mask, clip_norm, style=style,
      norm_ord=norm_ord, gamma=gamma)
  leaves, treedef = jax.tree.flatten(per_example)
  summed = [jnp.tensordot(factors[:, j],
                          jnp.where(jnp.isfinite(x), x, 0).astype(jnp.float32),
                          axes=1, precision=jax.lax.Precision.HIGHEST)
            for j, x in enumerate(leaves)]
  return jax.tree.unflatten(treedef, summed), norms, clipped


def clipped_sum(per_example: PyTree, mask: jax.Array,
                l2_clip_norm: float | jax.Array, norm_ord: int = 2
                ) -> tuple[PyTree, jax.Array]:
  """Masked sum of flat-L2-clipped per-example gradients.

  Args:
    per_example: pytree of arrays with a leading batch axis B.
    mask: [B] (bool or float) with 1 for real examples and 0 for padding.
    l2_clip_norm: C > 0 (the clip norm in the norm `norm_ord`).
    norm_ord: 2 (default) or 1: clip the flat L1 norm instead, which bounds
      the sum's add/remove L1 sensitivity by C (for Laplace-type noise such
      as `dpjax.lmo_noise`).

  Returns:
    (float32 sum of clipped gradients with the shapes of one example,
    float32 norms [B]). The sum stays float32 whatever the dtype of
    `per_example` (see "Float32 rule" in the module docstring).
  """
  norms = global_norms(per_example, norm_ord)
  factors = clip_factors(norms, mask, l2_clip_norm)

  def contract(x):
    # A weighted contraction over the batch axis; XLA:CPU runs a plain
    # jnp.sum(axis=0) of the scaled stack far slower at these shapes.
    x32 = jnp.where(jnp.isfinite(x), x, 0).astype(jnp.float32)
    return jnp.tensordot(factors, x32, axes=1,
                         precision=jax.lax.Precision.HIGHEST)

  return jax.tree.map(contract, per_example), norms


def clip_and_sum(l2_clip_norm: float) -> optax.GradientTransformationExtraArgs:
  """Optax stage: per-example gradients and a mask in, the clipped sum out.

  Usage: `tx.update(per_example_grads, state, params, mask=mask)`. Without a
  mask every row counts.

  .. warning:: This must be the first stage of a chain: its input must be
    per-example gradients with the batch on axis 0. Stages after it receive
    the *sum* (sensitivity C under add/remove).

  Formal guarantees: see the module docstring; the output's add/remove L2
  sensitivity is `l2_clip_norm`. The output is float32 whatever the dtype
  of the per-example gradients.

  Args:
    l2_clip_norm: C > 0.

  Returns:
    An `optax.GradientTransformationExtraArgs`.
  """
  if not l2_clip_norm > 0:
    raise ValueError(f'l2_clip_norm must be > 0, got {l2_clip_norm!r}.')

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, mask=None, **extra_args):
    del params, extra_args
    leaves = jax.tree.leaves(updates)
    if not leaves:
      return updates, state
    batch = leaves[0].shape[0] if leaves[0].ndim else None
    if batch is None or any(x.ndim == 0 or x.shape[0] != batch
                            for x in leaves):
      raise ValueError('clip_and_sum expects per-example gradients with a '
                       'common leading batch axis on every leaf.')
    if mask is None:
      mask = jnp.ones((batch,), jnp.float32)
    summed, _ = clipped_sum(updates, mask, l2_clip_norm)
    return summed, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def per_example_grads(loss_fn: Callable[..., jax.Array]
                      ) -> Callable[..., tuple[jax.Array, PyTree]]:
  """`jax.vmap(jax.value_and_grad(loss_fn))` over (example, key).

  `loss_fn(trainable, example, key) -> scalar`, where `example` is one record
  (no batch axis) and `key` its own dropout key.
  """
  return jax.vmap(jax.value_and_grad(loss_fn), in_axes=(None, 0, 0))


def microbatched_clipped_sum(
    loss_fn: Callable[..., jax.Array],
    trainable: PyTree,
    batch: dict[str, jax.Array],
    mask: jax.Array,
    keys: jax.Array,
    *,
    l2_clip_norm: float | jax.Array,
    microbatch_size: int,
    norm_ord: int = 2,
    skip_padding_microbatches: bool = False,
    clip_style: str = 'flat',
    gamma: float = AUTOMATIC_GAMMA,
) -> tuple[PyTree, ClipStats, jax.Array]:
  """Clipped sum over a padded batch, micro-batch by micro-batch.

  Args:
    loss_fn: `loss_fn(trainable, example, key) -> scalar` for ONE record.
    trainable: the differentiated parameters (frozen ones are closed over in
      `loss_fn`, so they are never copied per example).
    batch: dict of arrays with leading axis B (a multiple of
      `microbatch_size`).
    mask: [B] with 1 for real examples.
    keys: [B] typed PRNG keys, one per example (dropout).
    l2_clip_norm: C.
    microbatch_size: m, with B % m == 0.
    norm_ord: 2 (flat L2 clipping) or 1 (flat L1 clipping), see
      `clipped_sum`.
    skip_padding_microbatches: False (default) computes every micro-batch,
      so the step's running time does not depend on the data. True skips
      micro-batches that are all padding (`lax.cond`): faster for small
      Poisson draws, but the step time then reveals the realised batch size
      (how many micro-batches held a real record) to anyone who can time the
      step. That timing channel is outside the formal guarantee; use True
      only where step times are not observable. The sums are equal.
    clip_style: 'flat', 'per_layer' (each trainable leaf to C / sqrt(L)) or
      'automatic' (C / (norm + gamma)); see the module docstring.
    gamma: automatic clipping's stability constant.

  Returns:
    (float32 clipped sum, ClipStats, float32 per-example norms [B]). The sum
    is accumulated across micro-batches in float32 whatever the dtype of
    `trainable`.
  """
  check_style(clip_style, gamma)
  size = mask.shape[0]
  if size % microbatch_size:
    raise ValueError(f'batch of {size} is not a multiple of microbatch_size '
                     f'{microbatch_size}.')
  n_micro = size // microbatch_size
  grad_fn = per_example_grads(loss_fn)

  def to_micro(x):
    # Row i of the [m, n] view holds examples i*n .. i*n + n - 1, so a batch
    # sharded in contiguous blocks stays sharded along the micro-batch axis.
    x = x.reshape((microbatch_size, n_micro) + x.shape[1:])
    return jnp.moveaxis(x, 1, 0)

  xs = (jax.tree.map(to_micro, batch), to_micro(mask), to_micro(keys))
  # Float32 accumulator, whatever the parameter dtype (see module docstring).
  zeros = jax.tree.map(lambda x: jnp.zeros_like(x, jnp.float32), trainable)

  def body(acc, micro):
    mb, mmask, mkeys = micro

    def compute(_):
      losses, grads = grad_fn(trainable, mb, mkeys)
      summed, norms, clipped = styled_clipped_sum(
          grads, mmask, l2_clip_norm, style=clip_style, norm_ord=norm_ord,
          gamma=gamma)
      m = mmask.astype(jnp.float32)
      stats = ClipStats(
          num_examples=jnp.sum(m),
          num_clipped=jnp.sum(clipped),
          norm_sum=jnp.sum(m * jnp.where(jnp.isfinite(norms), norms, 0.)),
          loss_sum=jnp.sum(m * jnp.where(jnp.isfinite(losses), losses, 0.)))
      return summed, stats, norms

    def skip(_):
      z = jnp.zeros((), jnp.float32)
      return zeros, ClipStats(z, z, z, z), jnp.zeros(mmask.shape, jnp.float32)

    if skip_padding_microbatches:
      # A micro-batch that is all padding costs nothing: a timing channel.
      summed, stats, norms = jax.lax.cond(jnp.any(mmask > 0), compute, skip,
                                          None)
    else:
      summed, stats, norms = compute(None)
    acc_sum, acc_stats = acc
    acc_sum = jax.tree.map(jnp.add, acc_sum, summed)
    acc_stats = jax.tree.map(jnp.add, acc_stats, stats)
    return (acc_sum, acc_stats), norms

  z = jnp.zeros((), jnp.float32)
  (total, stats), norms = jax.lax.scan(body, (zeros, ClipStats(z, z, z, z)),
                                       xs)
  norms = jnp.moveaxis(norms, 0, 1).reshape((size,))
  return total, stats, norms
