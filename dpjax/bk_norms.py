"""Book-keeping per-example norms and clipped sums from a layer's factors.

`dpjax.bookkeeping` taps each covered layer's input a and output gradient g;
this module turns them into (i) each example's squared gradient norm of a
trainable leaf, over every use of the leaf (a tied weight's cross terms
included), either from Gram matrices (sum over t, s of (a_t . a_s)(g_t . g_s))
or from the instantiated per-example gradient a^T g, and (ii) the pieces of
the clipped sum sum_i c_i a_i^T g_i. Everything is float32.

Formal guarantees: see `dpjax.bookkeeping` (the norms are exact, so the
clipped sum has the sensitivity of the clip style in use).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


def seq(x, b, ids=False):
  """[B, ..., d] -> [B, T, d] (ids: [B, ...] -> [B, T])."""
  return x.reshape((b, -1)) if ids else x.reshape((b, -1, x.shape[-1]))


def f32(x):
  return x.astype(jnp.float32)


def factor(path, call, saved, grads, b, flat, s):
  """(left kind, left [B, T, n] or ids [B, T], right [B, T, d]) of one use,
  with per-example gradient left^T right."""
  a, g = saved[call.key], seq(grads[call.key], b)
  if call.kind == 'embed':
    return 'onehot', seq(a, b, ids=True), g
  a = seq(a, b)
  if call.kind == 'attend':                   # logits = x E^T
    return 'dense', g, a
  name = path.rsplit('/', 1)[-1]
  mod = path.rsplit('/', 1)[0]
  if name == 'lora_a':                        # dA = a^T (s g B^T)
    right = s * jnp.einsum('btd,rd->btr', f32(g), f32(flat[mod + '/lora_b']),
                           precision=_HI)
    return 'dense', a, right
  if name == 'lora_b':                        # dB = (s a A)^T g
    left = s * jnp.einsum('btn,nr->btr', f32(a), f32(flat[mod + '/lora_a']),
                          precision=_HI)
    return 'dense', left, g
  return 'dense', a, g


def vector(path, call, saved, grads, b):
  """Per-example gradient [B, d] of a bias or a norm scale."""
  g = f32(seq(grads[call.key], b))
  if path.endswith('/scale'):
    g = g * f32(seq(saved[call.key], b))
  return jnp.sum(g, axis=1)


def left_gram(u, v):
  """[B, T_u, T_v] inner products of the left factors of two uses."""
  (ku, lu), (kv, lv) = u, v
  if ku == 'dense' and kv == 'dense':
    return jnp.einsum('btn,bsn->bts', f32(lu), f32(lv), precision=_HI)
  if ku == 'onehot' and kv == 'onehot':
    return (lu[:, :, None] == lv[:, None, :]).astype(jnp.float32)
  if ku == 'onehot':
    return jax.vmap(lambda ids, l: f32(l)[:, ids].T)(lu, lv)
  return jax.vmap(lambda l, ids: f32(l)[:, ids])(lu, lv)


def instantiate(fs, shape):
  """Per-example gradient [B, n, d] of a leaf from its uses."""
  total = 0
  for kind, left, right in fs:
    if kind == 'dense':
      total = total + jnp.einsum('btn,btd->bnd', f32(left), f32(right),
                                 precision=_HI)
    else:
      total = total + jax.vmap(
          lambda ids, r: jnp.zeros(shape, jnp.float32).at[ids].add(f32(r))
      )(left, right)
  return total


def sq_norms(choice, fs, shape):
  """Per-example squared norms [B] of one factored leaf."""
  if choice == 'instantiate':
    return jnp.sum(instantiate(fs, shape) ** 2, axis=(1, 2))
  total = 0
  for i, (ku, lu, ru) in enumerate(fs):
    for j in range(i, len(fs)):
      kv, lv, rv = fs[j]
      right = jnp.einsum('btd,bsd->bts', f32(ru), f32(rv), precision=_HI)
      term = jnp.sum(left_gram((ku, lu), (kv, lv)) * right, axis=(1, 2))
      total = total + (term if i == j else 2.0 * term)
  return total


def rows(x, keep, scale=None):
  """Rows of x (axis 0) zeroed where not `keep` and optionally scaled."""
  shape = (-1,) + (1,) * (x.ndim - 1)
  x = jnp.where(keep.reshape(shape), f32(x), 0.0)
  return x if scale is None else x * scale.reshape(shape)
