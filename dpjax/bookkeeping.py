"""Book-keeping (BK) clipping: the clipped sum without per-example gradients.

One forward and one backward pass of the *batch* loss give, for every tapped
layer call, its input `a` [B, T, d_in] (kept from the forward pass) and the
gradient `g` [B, T, d_out] of the batch loss w.r.t. its output (a zero
perturbation added to the output is differentiated instead of the weights).
Because the batch loss is the sum of the examples' own losses and examples
do not interact, `g[i]` is example i's output gradient, so example i's
gradient of a Dense kernel is `a[i]^T g[i]`. From (a, g) alone this module
computes

* per-example squared norms, per leaf either in the Gram form
  `sum_{t,s} (a_t . a_s)(g_t . g_s)` (cost ~T^2) or by instantiating
  `a_i^T g_i` (cost ~d_in d_out), chosen per leaf (`auto`: Gram when
  2 T^2 < d_in d_out, as fastDP does);
* the clip factors `c_i = m_i min(1, C / ||grad_i||)` (`dpjax.clipping`);
* the clipped sum directly, `sum_i a_i^T (c_i g_i)` in float32: no second
  backward pass and no per-example gradient of a large leaf.

Taps (via `flax.linen.intercept_methods`, no model edits):
  * `nn.Dense.__call__`: kernel (factored) and bias (sum_t g_t, instantiated);
  * `nn.Embed.__call__`: the lookup is `onehot(ids)^T g`, a factored use of
    the embedding with an implicit one-hot left factor;
  * `nn.Embed.attend` (tied LM head): `logits = x E^T`, i.e. the use
    `g_logits^T x` of the same leaf;
  * `dpjax.models.llama.RMSNorm`: scale, per-example `sum_t g_t * xhat_t`.
A leaf used several times (a tied embedding, a Dense called twice) has as
per-example gradient the sum of its uses; its squared norm includes every
cross term (the Gram form runs over all pairs of uses), so it is exact.

Formal guarantees:
  Output S = sum_i c_i v_i with v_i = (the sum over every tap of example i's
  contribution), ||v_i||_2 = n_i the returned norm (up to float32 rounding),
  and c_i = m_i min(1, C / n_i), with non-finite n_i mapped to c_i = 0 and
  padded rows (m_i = 0) contributing exactly 0 (their a and g are zeroed,
  so a NaN cannot leak). Hence ||S(D) - S(D')||_2 <= C under adding or
  removing one example, provided (a) the model has no cross-example
  interaction (no batch norm; dropout is refused here), (b) `loss_fn`
  returns per-example losses each depending only on its own example, and
  (c) padded rows have m_i = 0. Given (a)-(c) the bound holds even if a
  parameter were used outside a tap (that use would be missing from both
  v_i and n_i, a bias, not a privacy loss); exactness (v_i = example i's
  full gradient) needs every use of every trainable leaf to go through a
  tapped method. `plan` checks at build time that every leaf of `params` is
  touched by a tap (else ValueError naming the leaf); the tests check
  equality with the vmap engine (`dpjax.clipping`) for the llama family.
  Float32 rule as in `dpjax.clipping`: norms, factors and the sum are
  float32 whatever the compute dtype.

Not yet covered (ValueError or coverage error): LoRA / BitNet / BERT /
GPT-2 layers, LayerNorm, nn.remat (taps inside a checkpoint would leak
tracers), dropout, L1 norms.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dpjax import clipping
from dpjax.models import llama

PyTree = Any
METHODS = ('auto', 'gram', 'instantiate')
_HI = jax.lax.Precision.HIGHEST


class BKOutput(NamedTuple):
  """The result of `clipped_sum_bk`."""
  clipped_sum: PyTree   # float32, the shapes of `params`
  norms: jax.Array      # [B] float32 per-example L2 gradient norms
  losses: jax.Array     # [B] float32 per-example losses


@dataclasses.dataclass(frozen=True)
class _Call:
  key: str                 # unique id of the call
  kind: str                # 'dense' | 'embed' | 'attend' | 'scale'
  path: tuple[str, ...]    # module scope path
  use_bias: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `clipped_sum_bk` will do for one module and input shape.

  Attributes:
    calls: the tapped calls in forward order.
    leaves: {leaf path '/'-joined: (method, [call keys])}, method 'gram',
      'instantiate' or 'vector' (small leaves, always instantiated).
  """
  calls: tuple[_Call, ...]
  leaves: dict[str, tuple[str, tuple[str, ...]]]


def lm_loss(logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
  """Per-example mean next-token CE weighted by `batch['weights']`: [B].

  The same per-record loss as `dpjax.model_setup._lm_fns`.
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch['targets'])
  w = batch['weights'].astype(jnp.float32)
  return jnp.sum(ce * w, -1) / jnp.maximum(jnp.sum(w, -1), 1.0)


def _kind(module: nn.Module, method: str) -> str | None:
  if isinstance(module, nn.Dense) and method == '__call__':
    return 'dense'
  if isinstance(module, nn.Embed) and method == '__call__':
    return 'embed'
  if isinstance(module, nn.Embed) and method == 'attend':
    return 'attend'
  if isinstance(module, llama.RMSNorm) and method == '__call__':
    return 'scale'
  return None


class _Tapper:
  """Interceptor: records each tapped call's inputs, perturbs its output."""

  def __init__(self, perturb: dict[str, jax.Array] | None = None):
    self.perturb = perturb
    self.calls: list[_Call] = []
    self.saved: dict[str, jax.Array] = {}
    self.outs: dict[str, jax.Array] = {}
    self.counts: collections.Counter = collections.Counter()

  def __call__(self, next_fun, args, kwargs, context):
    module, method = context.module, context.method_name
    kind = _kind(module, method)
    if kind is None:
      return next_fun(*args, **kwargs)
    path = tuple(module.scope.path)
    n = self.counts[(path, method)]
    self.counts[(path, method)] += 1
    key = f"{'/'.join(path)}:{method}:{n}"
    x = args[0] if args else next(iter(kwargs.values()))
    y = next_fun(*args, **kwargs)
    if kind == 'scale':
      xf = x.astype(jnp.float32)
      var = jnp.mean(xf * xf, axis=-1, keepdims=True)
      x = (xf * jax.lax.rsqrt(var + module.eps)).astype(module.dtype)
    elif kind == 'dense':
      x = x.astype(module.dtype or x.dtype)
    self.saved[key] = x
    self.calls.append(_Call(key, kind, path,
                            bool(getattr(module, 'use_bias', False))))
    self.outs[key] = y
    if self.perturb is not None:
      y = y + self.perturb[key].astype(y.dtype)
    return y


def _leaf_uses(calls) -> dict[str, list[tuple[str, _Call]]]:
  """{leaf path: [(role, call)]}, role 'factor' or 'vector'."""
  leaves = collections.defaultdict(list)
  for c in calls:
    p = '/'.join(c.path)
    if c.kind == 'dense':
      leaves[p + '/kernel'].append(('factor', c))
      if c.use_bias:
        leaves[p + '/bias'].append(('vector', c))
    elif c.kind in ('embed', 'attend'):
      leaves[p + '/embedding'].append(('factor', c))
    else:
      leaves[p + '/scale'].append(('vector', c))
  return leaves


def _flat_paths(tree) -> dict[str, Any]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): x
          for path, x in flat}


def _check_module(module):
  cfg = getattr(module, 'config', None)
  if cfg is not None and float(getattr(cfg, 'dropout_rate', 0.0) or 0.0) > 0:
    raise ValueError('book-keeping clipping does not support dropout yet '
                     f'(model dropout_rate={cfg.dropout_rate}); use the vmap '
                     'engine (dpjax.clipping).')
  if cfg is not None and getattr(cfg, 'remat', False):
    raise ValueError('book-keeping clipping does not support remat=True yet '
                     '(taps inside jax.checkpoint); use remat=False or the '
                     'vmap engine.')


def _default_apply(module):
  return lambda p, batch: module.apply({'params': p}, batch['inputs'])


def plan(module: nn.Module, params: PyTree, batch: dict[str, jax.Array], *,
         method: str = 'auto', apply_fn: Callable | None = None) -> Plan:
  """Discovers the taps (shapes only) and checks coverage.

  Args:
    module: a Flax linen module.
    params: the trainable parameters (every leaf must be covered).
    batch: a batch (or its shapes) with leading axis B (a micro-batch).
    method: 'auto' (per leaf: Gram when 2 T^2 < leaf size, T the tokens
      per example summed over the leaf's uses), 'gram' or 'instantiate'.
    apply_fn: `apply_fn(params, batch) -> logits`; default
      `module.apply({'params': params}, batch['inputs'])`.

  Raises:
    ValueError: an unknown method, dropout or remat, or a trainable leaf
      that no tap covers (named).
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}.')
  _check_module(module)
  apply_fn = apply_fn or _default_apply(module)
  tapper = _Tapper()

  def probe(p, b):
    with nn.intercept_methods(tapper):
      apply_fn(p, b)
    return dict(tapper.saved)

  shapes = jax.eval_shape(probe, params, batch)
  uses = _leaf_uses(tapper.calls)
  flat = _flat_paths(params)
  uncovered = sorted(set(flat) - set(uses))
  if uncovered:
    raise ValueError(f'book-keeping clipping: trainable leaf {uncovered[0]!r} '
                     f'is not covered by any tap (Dense, Embed, llama RMSNorm)'
                     f'; uncovered: {uncovered}. Use the vmap engine.')
  leaves = {}
  for path, us in uses.items():
    if path not in flat:
      continue   # frozen (not differentiated)
    keys = tuple(c.key for _, c in us)
    if us[0][0] == 'vector':
      leaves[path] = ('vector', keys)
      continue
    tokens = 0
    for _, c in us:
      s = shapes[c.key].shape
      tokens += math.prod(s[1:] if c.kind == 'embed' else s[1:-1])
    choice = method
    if method == 'auto':
      choice = 'gram' if 2 * tokens ** 2 < flat[path].size else 'instantiate'
    leaves[path] = (choice, keys)
  return Plan(tuple(tapper.calls), leaves)


def _seq(x, b, ids=False):
  """[B, ..., d] -> [B, T, d] (ids: [B, ...] -> [B, T])."""
  return x.reshape((b, -1)) if ids else x.reshape((b, -1, x.shape[-1]))


def _factors(call, saved, grads, b):
  """(left kind, left, right) with per-example gradient left^T right."""
  a, g = saved[call.key], grads[call.key]
  if call.kind == 'dense':
    return 'dense', _seq(a, b), _seq(g, b)
  if call.kind == 'embed':
    return 'onehot', _seq(a, b, ids=True), _seq(g, b)
  return 'dense', _seq(g, b), _seq(a, b)     # attend: logits = x E^T


def _f32(x):
  return x.astype(jnp.float32)


def _left_gram(u, v):
  """[B, T_u, T_v] inner products of the left factors of two uses."""
  (ku, lu), (kv, lv) = u, v
  if ku == 'dense' and kv == 'dense':
    return jnp.einsum('btn,bsn->bts', _f32(lu), _f32(lv), precision=_HI)
  if ku == 'onehot' and kv == 'onehot':
    return (lu[:, :, None] == lv[:, None, :]).astype(jnp.float32)
  if ku == 'onehot':
    return jax.vmap(lambda ids, l: _f32(l)[:, ids].T)(lu, lv)
  return jax.vmap(lambda l, ids: _f32(l)[:, ids])(lu, lv)


def _instantiate(fs, shape):
  """Per-example gradient [B, n, d] of a leaf from its uses."""
  total = 0
  for kind, left, right in fs:
    if kind == 'dense':
      total = total + jnp.einsum('btn,btd->bnd', _f32(left), _f32(right),
                                 precision=_HI)
    else:
      total = total + jax.vmap(
          lambda ids, r: jnp.zeros(shape, jnp.float32).at[ids].add(_f32(r))
      )(left, right)
  return total


def _sq_norms(choice, fs, shape):
  """Per-example squared norms [B] of one factored leaf."""
  if choice == 'instantiate':
    return jnp.sum(_instantiate(fs, shape) ** 2, axis=(1, 2))
  total = 0
  for i, (ku, lu, ru) in enumerate(fs):
    for j in range(i, len(fs)):
      kv, lv, rv = fs[j]
      right = jnp.einsum('btd,bsd->bts', _f32(ru), _f32(rv), precision=_HI)
      term = jnp.sum(_left_gram((ku, lu), (kv, lv)) * right, axis=(1, 2))
      total = total + (term if i == j else 2.0 * term)
  return total


def _vector(call, saved, grads, b):
  """Per-example gradient [B, d] of a bias or a norm scale."""
  g = _f32(_seq(grads[call.key], b))
  if call.kind == 'scale':
    g = g * _f32(_seq(saved[call.key], b))
  return jnp.sum(g, axis=1)


def _rows(x, keep, scale=None):
  """Rows of x (axis 0) zeroed where not `keep` and optionally scaled."""
  shape = (-1,) + (1,) * (x.ndim - 1)
  x = jnp.where(keep.reshape(shape), _f32(x), 0.0)
  return x if scale is None else x * scale.reshape(shape)


def _bk_micro(module, params, batch, mask, clip_norm, plan_, loss_fn,
              apply_fn):
  """BK on one micro-batch: (clipped sum, norms, losses)."""
  b = mask.shape[0]
  calls = {c.key: c for c in plan_.calls}

  def total_loss(perturb):
    tapper = _Tapper(perturb)
    with nn.intercept_methods(tapper):
      logits = apply_fn(params, batch)
    losses = loss_fn(logits, batch)
    return jnp.sum(losses), (losses, dict(tapper.saved))

  # Zero perturbations shaped like every tap's output.
  def out_shapes(p):
    tapper = _Tapper()
    with nn.intercept_methods(tapper):
      apply_fn(p, batch)
    return dict(tapper.outs)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       jax.eval_shape(out_shapes, params))
  grads, (losses, saved) = jax.grad(total_loss, has_aux=True)(zeros)

  flat = _flat_paths(params)
  sq = jnp.zeros((b,), jnp.float32)
  pieces = {}
  for path, (choice, keys) in plan_.leaves.items():
    if choice == 'vector':
      per_ex = sum(_vector(calls[k], saved, grads, b) for k in keys)
      sq = sq + jnp.sum(per_ex ** 2, axis=1)
      pieces[path] = ('vector', per_ex)
    else:
      fs = [_factors(calls[k], saved, grads, b) for k in keys]
      sq = sq + _sq_norms(choice, fs, flat[path].shape)
      pieces[path] = ('factor', fs)
  norms = jnp.sqrt(sq)
  c = clipping.clip_factors(norms, mask, clip_norm)
  keep = c > 0
  out = {}
  for path, (kind, val) in pieces.items():
    shape = flat[path].shape
    if kind == 'vector':
      out[path] = jnp.tensordot(c, jnp.where(keep[:, None], val, 0.0), axes=1,
                                precision=_HI).reshape(shape)
      continue
    total = jnp.zeros(shape, jnp.float32)
    for lk, left, right in val:
      right = _rows(right, keep, c)
      if lk == 'dense':
        total = total + jnp.einsum('btn,btd->nd', _rows(left, keep), right,
                                   precision=_HI)
      else:
        total = total.at[left.reshape(-1)].add(
            right.reshape((-1, right.shape[-1])))
    out[path] = total
  summed = _unflatten_like(params, out)
  return summed, norms, _f32(losses)


def _unflatten_like(params, by_path):
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  leaves = [by_path['/'.join(str(getattr(k, 'key', k)) for k in path)]
            for path, _ in flat]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def clipped_sum_bk(module: nn.Module, params: PyTree,
                   batch: dict[str, jax.Array], mask: jax.Array,
                   clip_norm: float | jax.Array, *,
                   loss_fn: Callable[..., jax.Array] = lm_loss,
                   method: str = 'auto',
                   microbatch_size: int | None = None,
                   apply_fn: Callable | None = None) -> BKOutput:
  """Masked sum of flat-L2-clipped per-example gradients, by book-keeping.

  Equal (to float32 rounding) to `dpjax.clipping.clipped_sum` of the
  per-example gradients of `loss_fn`, without forming them for large leaves.

  Args:
    module: a Flax linen causal LM (see the module docstring for the taps).
    params: the trainable parameters (all differentiated, full fine-tuning).
    batch: dict of arrays with leading axis B; `batch['inputs']` [B, T] for
      the default `apply_fn`, plus what `loss_fn` reads.
    mask: [B], 1 for real examples and 0 for padding.
    clip_norm: C > 0.
    loss_fn: `loss_fn(logits, batch) -> [B]` per-example losses, each
      depending on its own example only (default `lm_loss`).
    method: 'auto', 'gram' or 'instantiate' for every factored leaf.
    microbatch_size: m dividing B; the batch is processed m at a time in
      `lax.scan` (strided as in `dpjax.clipping`). None: all at once.
    apply_fn: `apply_fn(params, batch) -> logits` (default: the module on
      `batch['inputs']`).

  Returns:
    BKOutput(float32 clipped sum shaped like `params`, norms [B], losses
    [B]).

  Raises:
    ValueError: see `plan`; or B not a multiple of `microbatch_size`.

  Formal guarantees: see the module docstring (add/remove L2 sensitivity C).
  """
  apply_fn = apply_fn or _default_apply(module)
  size = mask.shape[0]
  m = microbatch_size or size
  if size % m:
    raise ValueError(f'batch of {size} is not a multiple of microbatch_size '
                     f'{m}.')
  n = size // m
  to_micro = lambda x: jnp.moveaxis(x.reshape((m, n) + x.shape[1:]), 1, 0)
  micro = jax.tree.map(to_micro, batch)
  plan_ = plan(module, params, jax.tree.map(lambda x: x[0], micro),
               method=method, apply_fn=apply_fn)

  def body(acc, xs):
    mb, mmask = xs
    s, norms, losses = _bk_micro(module, params, mb, mmask, clip_norm, plan_,
                                 loss_fn, apply_fn)
    return jax.tree.map(jnp.add, acc, s), (norms, losses)

  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), params)
  total, (norms, losses) = jax.lax.scan(body, zeros, (micro, to_micro(mask)))
  unmicro = lambda x: jnp.moveaxis(x, 0, 1).reshape((size,))
  return BKOutput(total, unmicro(norms), unmicro(losses))
