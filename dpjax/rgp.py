"""Reparametrized gradient perturbation (RGP; Yu et al. 2021), as EW-Tune used it.

For every target weight matrix W (a Flax kernel, shape [in, out]) and every
step:

1. Bases. Power iteration from a Gaussian start on a matrix that carries no
   private information beyond what was already released: the current weights
   (`source='weights'`, what EW-Tune's code does) or the running sum of past
   privatized updates (`source='history'`, the RGP paper's "historical
   update"; the weights are used while the history is still zero). It gives
   L [in, r] with orthonormal columns and R [r, out] with orthonormal rows.
2. Reparametrize W = W - L R + L' R' (value unchanged at L' = L, R' = R); the
   gradient carriers are the gradients with respect to L' and R':
     dL = dW R^T   [in, r],     dR = L^T dW   [r, out].
   `project` computes them from per-example gradients of W, `merge` lets a
   trainer take per-example gradients of the carriers directly.
3. Per-example carriers (all targets, plus any other trained leaves) are
   clipped jointly in L2, summed, and Gaussian noise is added (`privatize`).
4. `reconstruct` maps noised carriers back to a full-shape update
     dW~ = dL R + L dR - L L^T dL R,
   which for noise-free carriers is P_L dW + dW P_R - P_L dW P_R with the
   orthogonal projectors P_L = L L^T, P_R = R^T R: exactly dW at full rank
   r = min(in, out). EW-Tune's code adds the last term (`cross_sign=+1`),
   which does not give dW back at full rank; the default is the RGP paper's
   minus sign.

Use in a training step (per-example carrier gradients without [B, in, out]):

    bases, rgp_state = rgp_bases(config, rgp_state, params)
    carriers = carriers_of(bases)
    def loss_c(c, example):
      return loss_fn(merge(params, bases, c), example)
    per_ex = jax.vmap(jax.grad(loss_c), in_axes=(None, 0))(carriers, batch)
    noised = privatize(per_ex, mask, l2_clip_norm=C, noise_multiplier=sigma,
                       key=key)               # add other trained leaves too
    update = full_update(params, reconstruct(noised, bases,
                                             config.cross_sign))
    rgp_state = update_history(config, rgp_state, reconstruct(...))
    # divide by the expected batch size, then Adam on the full weights.

Formal guarantees:
  The bases depend only on previously released values (weights or privatized
  updates) and fresh randomness, so conditioned on them the carriers are a
  fixed linear map of each example's gradient. `privatize` clips each
  example's concatenated carriers (and any other leaves passed with them) to
  L2 norm C and adds N(0, (sigma C)^2) per coordinate: one step is the
  (subsampled) Gaussian mechanism with noise multiplier sigma, accounted by
  `dpjax.accounting` like any DP-SGD step. `reconstruct` and the history are
  post-processing. The usual conditions of `dpjax.clipping` apply, and its
  float32 rule: carriers, their clipped sum and the noise are float32; the
  cast to the parameter dtype happens after reconstruction (`full_update`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from dpjax import clipping
from dpjax import noise as noise_lib

PyTree = Any
Bases = dict[str, tuple[jax.Array, jax.Array]]


@dataclasses.dataclass(frozen=True)
class RGPConfig:
  """Static RGP settings.

  Attributes:
    rank: r, the rank of the gradient carriers.
    targets: '/'-joined parameter paths of the 2-D kernels to reparametrize.
    power_iters: power iterations per step (EW-Tune: 1).
    source: 'weights' (EW-Tune's code) or 'history' (RGP paper).
    history_decay: the history is decay * history + update.
    cross_sign: sign of the L L^T dL R term in `reconstruct` (-1: exact at
      full rank; +1: EW-Tune's code).
  """
  rank: int
  targets: tuple[str, ...]
  power_iters: int = 1
  source: str = 'weights'
  history_decay: float = 1.0
  cross_sign: float = -1.0


class RGPState(NamedTuple):
  key: jax.Array                 # typed PRNG key
  history: dict[str, jax.Array]  # path -> [in, out] sum of privatized updates


def path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx',
                                                                  k)))))
  return '/'.join(parts)


def flat_params(params: PyTree) -> dict[str, jax.Array]:
  """'/'-joined path -> leaf."""
  return {path_str(p): x
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def default_targets(params: PyTree,
                    predicate: Callable[[str, jax.Array], bool] | None = None
                    ) -> tuple[str, ...]:
  """Paths of all 2-D leaves named '.../kernel' (or chosen by `predicate`)."""
  if predicate is None:
    predicate = lambda path, x: path.endswith('kernel') and x.ndim == 2
  return tuple(p for p, x in flat_params(params).items() if predicate(p, x))


def rgp_init(key: jax.Array, params: PyTree, rank: int,
             targets: Sequence[str] | None = None, *, power_iters: int = 1,
             source: str = 'weights', history_decay: float = 1.0,
             cross_sign: float = -1.0) -> tuple[RGPConfig, RGPState]:
  """Validates the settings and returns (static config, initial state)."""
  if not (isinstance(key, jax.Array) and
          jnp.issubdtype(key.dtype, jax.dtypes.prng_key)):
    raise TypeError('rgp_init needs a typed PRNG key from jax.random.key().')
  flat = flat_params(params)
  targets = tuple(default_targets(params) if targets is None else targets)
  if not targets:
    raise ValueError('targets is empty: name at least one 2-D kernel.')
  if not (isinstance(rank, int) and rank >= 1):
    raise ValueError(f'rank must be an integer >= 1, got {rank!r}.')
  for t in targets:
    if t not in flat:
      raise ValueError(f'targets: no parameter {t!r}; available: '
                       f'{sorted(flat)[:20]}...')
    if flat[t].ndim != 2:
      raise ValueError(f'targets: {t!r} has shape {flat[t].shape}, RGP needs '
                       'a 2-D kernel [in, out].')
    if rank > min(flat[t].shape):
      raise ValueError(f'rank={rank} exceeds min(in, out) of {t!r} '
                       f'{flat[t].shape}.')
  if source not in ('weights', 'history'):
    raise ValueError(f"source must be 'weights' or 'history', got {source!r}.")
  if not (isinstance(power_iters, int) and power_iters >= 1):
    raise ValueError(f'power_iters must be an integer >= 1, got '
                     f'{power_iters!r}.')
  config = RGPConfig(rank=rank, targets=targets, power_iters=power_iters,
                     source=source, history_decay=float(history_decay),
                     cross_sign=float(cross_sign))
  history = {t: jnp.zeros(flat[t].shape, jnp.float32) for t in targets}
  return config, RGPState(key=jnp.array(key, copy=True), history=history)


def _orth(x: jax.Array) -> jax.Array:
  """Orthonormal basis of the columns of x (reduced QR)."""
  q, _ = jnp.linalg.qr(x, mode='reduced')
  return q


def power_bases(key: jax.Array, w: jax.Array, rank: int,
                power_iters: int = 1) -> tuple[jax.Array, jax.Array]:
  """(L [in, r], R [r, out]) spanning w's top-r subspaces approximately."""
  w = w.astype(jnp.float32)
  omega = jax.random.normal(key, (w.shape[1], rank), jnp.float32)
  left = _orth(w @ omega)
  right = _orth(w.T @ left)                 # [out, r]
  for _ in range(power_iters - 1):
    left = _orth(w @ right)
    right = _orth(w.T @ left)
  return left, right.T


def rgp_bases(config: RGPConfig, state: RGPState, params: PyTree
              ) -> tuple[Bases, RGPState]:
  """This step's bases for every target, and the state with a fresh key."""
  flat = flat_params(params)
  key, sub = jax.random.split(state.key)
  keys = jax.random.split(sub, len(config.targets))
  bases = {}
  for k, t in zip(keys, config.targets):
    w = jax.lax.stop_gradient(flat[t]).astype(jnp.float32)
    if config.source == 'history':
      h = state.history[t]
      w = jnp.where(jnp.any(h != 0), h, w)
    bases[t] = power_bases(k, w, config.rank, config.power_iters)
  return bases, state._replace(key=key)


def project(grads_w: dict[str, jax.Array], bases: Bases
            ) -> dict[str, tuple[jax.Array, jax.Array]]:
  """Carrier gradients (dW R^T, L^T dW); dW may carry leading batch axes."""
  out = {}
  for t, g in grads_w.items():
    left, right = bases[t]
    g = g.astype(jnp.float32)
    out[t] = (jnp.einsum('...io,ro->...ir', g, right),
              jnp.einsum('ir,...io->...ro', left, g))
  return out


def reconstruct(carriers: dict[str, tuple[jax.Array, jax.Array]],
                bases: Bases, cross_sign: float = -1.0
                ) -> dict[str, jax.Array]:
  """Full-shape update dL R + L dR + cross_sign * L L^T dL R per target."""
  out = {}
  for t, (d_left, d_right) in carriers.items():
    left, right = bases[t]
    inner = jnp.einsum('ir,...is->...rs', left, d_left)     # L^T dL  [r, r]
    out[t] = (jnp.einsum('...ir,ro->...io', d_left, right) +
              jnp.einsum('ir,...ro->...io', left, d_right) +
              cross_sign * jnp.einsum('ir,...rs,so->...io', left, inner,
                                      right))
  return out


def carriers_of(bases: Bases) -> dict[str, tuple[jax.Array, jax.Array]]:
  """The carrier values (L, R) at which `merge` leaves W unchanged."""
  return {t: (left, right) for t, (left, right) in bases.items()}


def merge(params: PyTree, bases: Bases,
          carriers: dict[str, tuple[jax.Array, jax.Array]]) -> PyTree:
  """params with W -> W - L R + L' R' for each target (differentiable in L', R').

  jax.grad of a loss through `merge` at `carriers_of(bases)` gives exactly
  `project` of the gradient with respect to W.
  """
  def fn(path, x):
    t = path_str(path)
    if t not in bases:
      return x
    left, right = jax.lax.stop_gradient(bases[t][0]), jax.lax.stop_gradient(
        bases[t][1])
    c_left, c_right = carriers[t]
    w = x.astype(jnp.float32) - left @ right + c_left @ c_right
    return w.astype(x.dtype)
  return jax.tree_util.tree_map_with_path(fn, params)


def privatize(per_example: PyTree, mask: jax.Array, *, l2_clip_norm: float,
              noise_multiplier: float, key: jax.Array) -> PyTree:
  """Joint L2 clipping of per-example carriers (and any other leaves), masked
  sum, plus N(0, (noise_multiplier * C)^2) per coordinate. Returns the noised
  SUM in float32 (clipping, sum and noise are float32 whatever the gradient
  dtype; `full_update` casts to the parameter dtypes after reconstruction).
  Divide by the expected batch size afterwards."""
  summed, _ = clipping.clipped_sum(per_example, mask, l2_clip_norm)
  if noise_multiplier == 0:
    return summed
  return noise_lib.noised_float32(key, summed,
                                  noise_multiplier * l2_clip_norm)


def full_update(params: PyTree, reconstructed: dict[str, jax.Array],
                others: PyTree | None = None) -> PyTree:
  """A params-shaped update: reconstructed targets, `others` (same structure
  as params, or None) elsewhere, zeros where neither applies."""
  flat_others = flat_params(others) if others is not None else {}

  def fn(path, x):
    t = path_str(path)
    if t in reconstructed:
      return reconstructed[t].astype(x.dtype)
    if t in flat_others and flat_others[t] is not None:
      return flat_others[t].astype(x.dtype)
    return jnp.zeros_like(x)
  return jax.tree_util.tree_map_with_path(fn, params)


def update_history(config: RGPConfig, state: RGPState,
                   reconstructed: dict[str, jax.Array]) -> RGPState:
  """history <- decay * history + privatized update (post-processing)."""
  hist = {t: config.history_decay * state.history[t] +
          reconstructed[t].astype(jnp.float32) for t in config.targets}
  return state._replace(history=hist)


def rgp_private_gradient(config: RGPConfig, state: RGPState, params: PyTree,
                         per_example_grads_w: dict[str, jax.Array],
                         mask: jax.Array, *, l2_clip_norm: float,
                         noise_multiplier: float
                         ) -> tuple[dict[str, jax.Array], RGPState]:
  """One RGP step from per-example gradients of the targets [B, in, out]:
  bases, projection, joint clipping, noise, reconstruction (the noised SUM).
  A reference path for tests and small models; trainers should take
  per-example carrier gradients through `merge` instead of materializing
  [B, in, out]."""
  bases, state = rgp_bases(config, state, params)
  carriers = project(per_example_grads_w, bases)
  key, sub = jax.random.split(state.key)
  noised = privatize(carriers, mask, l2_clip_norm=l2_clip_norm,
                     noise_multiplier=noise_multiplier, key=sub)
  recon = reconstruct(noised, bases, config.cross_sign)
  return recon, state._replace(key=key)
