"""Book-keeping (BK) clipping: the clipped sum without per-example gradients.

`clipped_sum` has the arguments and results of the vmap engine
(`dpjax.clipping.microbatched_clipped_sum`): the trainer's per-record loss
`record_loss(trainable, example, key)`, a padded batch, mask and per-record
keys. Per micro-batch (`lax.scan`, strided as there) the record loss runs
once per example under `jax.vmap`; every tapped layer call
(`flax.linen.intercept_methods`, no model edits) saves its input `a` and adds
a zero perturbation to its output, and one `jax.grad` of the summed losses
w.r.t. the perturbations alone gives each call's output gradient `g` (the
trainable tree is closed over: autodiff never forms a weight gradient).
Running the per-record loss, not a batch forward, reuses the trainer's loss
as is (causal LM or classification, PEFT `combine` included), gives each
record its own dropout key exactly as the vmap engine does (dropout is
exact), and handles inputs that are not batch-shaped (GPT-2's
`wpe(arange(T)[None])`). Example i's gradient of a Dense kernel is
`a_i^T g_i`; from (a, g) alone this module computes
* per-example squared norms per leaf, in the Gram form
  `sum_{t,s} (a_t . a_s)(g_t . g_s)` (cost ~T^2) or by instantiating
  `a_i^T g_i` (~d_in d_out), chosen per leaf (`auto`: Gram when 2 T^2 < leaf
  size, as fastDP), exactly for small ('vector') leaves;
* the clip factors of the style (`dpjax.clipping.style_clip_factors`) from
  the [B, L] per-leaf norms;
* the clipped sum directly, `sum_i a_i^T (c_{i,l} g_i)` in float32.

Taps (exact class and method; any input rank, flattened to tokens):
  * `nn.Dense` (plain dot_general), `dpjax.models.bitnet.BitLinear`: kernel
    (factored; BitLinear's left factor is its quantized input cast to
    `cfg.dtype`, the ternary weight quantization is a straight-through
    identity) and bias (sum_t g_t);
  * LoRA leaves `<path>/lora_a` [in, r], `<path>/lora_b` [r, out] of a
    tapped Dense whose kernel `combine` merged as W + s A B (s =
    `lora_scale`): dA_i = a_i^T (s g_i B^T), dB_i = (s a_i A)^T g_i;
  * `nn.Embed.__call__` (token, position, token-type lookups: a one-hot left
    factor) and `nn.Embed.attend` (tied head: `g^T x`);
  * norms: `llama.RMSNorm`, `layers.RMSNorm` (scale: `sum_t g_t * xhat_t`,
    xhat as each computes it) and `nn.LayerNorm` (default axes, float32
    statistics: scale and bias).
PEFT 'full', 'bias_only', 'norms': trainable paths are module paths plus the
leaf name; frozen leaves cost nothing. A leaf used several times (a tied
embedding) has as per-example gradient the sum of its uses; its Gram norm
runs over all pairs of uses (cross terms included), so it is exact.

Formal guarantees:
  Output S = sum_i sum_l c_{i,l} v_{i,l}, with v_{i,l} the sum over the
  tapped uses of leaf l of example i's contribution, n_{i,l} = ||v_{i,l}||_2
  (to float32 rounding) and c_{i,l} = `clipping.style_clip_factors` of the
  [B, L] norms and the mask: flat m_i min(1, C / n_i) (n_i = root of
  sum_l n_{i,l}^2), per-layer m_i min(1, (C / sqrt L) / n_{i,l}) or
  automatic m_i C / (n_i + gamma); non-finite norms give 0. Hence
  ||sum_l c_{i,l} v_{i,l}||_2 <= C and ||S(D) - S(D')||_2 <= C under adding
  or removing one example, provided (a) no cross-example interaction (no
  batch norm; each record runs alone under vmap with its own key), (b)
  `record_loss` depends on its own example only, and (c) padded rows have
  m_i = 0 (their a and g are zeroed where c = 0, so a NaN cannot leak). LoRA
  factors are leaves like any other: v_{i,A}, v_{i,B} are example i's
  gradients through W + s A B when `lora_scale` is the s `combine` used.
  Given (a)-(c) the bound holds even if a parameter were used outside a tap
  (a use missing from both v_i and n_i: a bias, not a privacy loss);
  exactness needs every use of every trainable leaf to go through a tap.
  `check` verifies at build time that every trainable leaf is touched by a
  tap (else `NotCovered`, naming it); tests/test_bookkeeping.py checks
  equality with the vmap engine for llama (untied, tied, LoRA, bias-only,
  norms, dropout), GPT-2, BitNet and BERT. Norms, factors and the sum are
  float32 whatever the compute dtype (as `dpjax.clipping`).

Refused: L1 norms (ValueError; the Gram trick is L2 only), taps inside a
lifted transform such as `nn.remat` (ValueError; they would leak tracers;
a method-decorator `nn.checkpoint` is not detected and fails at trace time
with UnexpectedTracerError), uncovered leaves (`NotCovered`), LoRA leaves
without `lora_scale`.
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

from dpjax import bk_norms
from dpjax import clipping
from dpjax.models import bitnet
from dpjax.models import layers
from dpjax.models import llama

PyTree = Any
METHODS = ('auto', 'gram', 'instantiate')
_HI = jax.lax.Precision.HIGHEST
_TAPPED = ('nn.Dense, BitLinear, nn.Embed (lookup, attend), RMSNorm, '
           'nn.LayerNorm, LoRA factors of a tapped Dense')


class NotCovered(ValueError):
  """A trainable leaf that no book-keeping tap covers."""


class BKOutput(NamedTuple):
  """The result of `clipped_sum_bk`."""
  clipped_sum: PyTree   # float32, the shapes of `params`
  norms: jax.Array      # [B] float32 per-example L2 gradient norms
  losses: jax.Array     # [B] float32 per-example losses


@dataclasses.dataclass(frozen=True)
class _Call:
  key: str                 # unique id of the call
  kind: str                # 'dense' | 'embed' | 'attend' | 'rms' | 'ln'
  path: tuple[str, ...]    # module scope path
  names: tuple[str, ...]   # the module's leaf names this call uses


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `clipped_sum` will do for one record loss and micro-batch shape.

  Attributes:
    calls: the tapped calls of one record, in forward order.
    leaves: {trainable leaf path '/'-joined: (method, (call keys...))},
      method 'gram', 'instantiate' or 'vector' (small leaves, exact).
    out_shapes: {call key: ShapeDtypeStruct} of one record's tap outputs
      (only the calls that a trainable leaf needs).
    lora_scale: s of the LoRA merge W + s A B (None: no LoRA leaves).
  """
  calls: tuple[_Call, ...]
  leaves: dict[str, tuple[str, tuple[str, ...]]]
  out_shapes: dict[str, jax.ShapeDtypeStruct] = dataclasses.field(
      default_factory=dict)
  lora_scale: float | None = None

  def choices(self) -> dict[str, str]:
    """{leaf path: 'gram' | 'instantiate' | 'vector'}."""
    return {p: c for p, (c, _) in self.leaves.items()}


def lm_loss(logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
  """Per-example mean next-token CE weighted by `batch['weights']`: [B].

  The same per-record loss as `dpjax.model_setup._lm_fns`.
  """
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch['targets'])
  w = batch['weights'].astype(jnp.float32)
  return jnp.sum(ce * w, -1) / jnp.maximum(jnp.sum(w, -1), 1.0)


def _kind(module: nn.Module, method: str, kwargs) -> str | None:
  """The tap kind of a call (None: not tapped). Exact classes only."""
  cls = type(module)
  if method == 'attend':
    return 'attend' if cls is nn.Embed else None
  if method != '__call__':
    return None
  if cls is nn.Dense:
    plain = module.dot_general is None and module.dot_general_cls is None
    return 'dense' if plain else None
  if cls is bitnet.BitLinear:
    return 'dense'
  if cls is nn.Embed:
    return 'embed'
  if cls in (llama.RMSNorm, layers.RMSNorm):
    return 'rms'
  if cls is nn.LayerNorm:
    plain = (module.reduction_axes in (-1, (-1,)) and
             module.feature_axes in (-1, (-1,)) and
             module.axis_name is None and module.force_float32_reductions
             and kwargs.get('mask') is None)
    return 'ln' if plain else None
  return None


def _left(kind, module, x):
  """What a tap saves: the left factor, ids, or the normalised input."""
  if kind == 'dense' and type(module) is bitnet.BitLinear:
    cfg = module.config
    if cfg.quantization == 'online':
      x = layers.activation_quant(x)
    return x.astype(cfg.dtype)
  if kind in ('dense', 'attend'):
    return x.astype(module.dtype or jnp.promote_types(x.dtype,
                                                      module.param_dtype))
  if kind == 'rms':
    xf = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(xf), axis=-1, keepdims=True)
    xhat = xf * jax.lax.rsqrt(var + module.eps)
    return xhat.astype(module.dtype if type(module) is llama.RMSNorm
                       else x.dtype)
  if kind == 'ln':   # flax's _compute_stats/_normalize, float32 statistics
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    if module.use_fast_variance:
      var = jnp.maximum(0.0, jnp.mean(xf * xf, -1, keepdims=True) - mean ** 2)
    else:
      var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(var + module.epsilon)
  return x   # embed: the ids


def _names(kind, module) -> tuple[str, ...]:
  if kind == 'dense':
    return ('kernel',) + (('bias',) if module.use_bias else ())
  if kind in ('embed', 'attend'):
    return ('embedding',)
  if kind == 'rms':
    return ('scale',)
  return ((('scale',) if module.use_scale else ()) +
          (('bias',) if module.use_bias else ()))


class _Tapper:
  """Interceptor: records each tapped call's input, perturbs its output.

  Only the calls in `needed` (all when None) are saved and perturbed.
  """

  def __init__(self, perturb=None, needed=None):
    self.perturb, self.needed = perturb, needed
    self.calls: list[_Call] = []
    self.saved: dict[str, jax.Array] = {}
    self.outs: dict[str, jax.Array] = {}
    self.counts: collections.Counter = collections.Counter()

  def __call__(self, next_fun, args, kwargs, context):
    module, method = context.module, context.method_name
    if type(module).__module__ == 'flax.linen.transforms':
      # A lifted transform (nn.remat, nn.scan, ...): taps inside would leak.
      raise ValueError(
          f'book-keeping clipping cannot tap layers inside the lifted '
          f'transform {type(module).__name__} (e.g. nn.remat: jax.checkpoint '
          'would leak the taps\' tracers); set model.remat=False or use the '
          'vmap engine.')
    kind = _kind(module, method, kwargs)
    if kind is None:
      return next_fun(*args, **kwargs)
    path = tuple(module.scope.path)
    n = self.counts[(path, method)]
    self.counts[(path, method)] += 1
    key = f"{'/'.join(path)}:{method}:{n}"
    y = next_fun(*args, **kwargs)
    if self.needed is not None and key not in self.needed:
      return y
    x = args[0] if args else next(iter(kwargs.values()))
    self.saved[key] = _left(kind, module, x)
    self.calls.append(_Call(key, kind, path, _names(kind, module)))
    self.outs[key] = y
    if self.perturb is not None:
      y = y + self.perturb[key].astype(y.dtype)
    return y


def _flat_paths(tree) -> dict[str, Any]:
  """{'/'-joined path: leaf} in `jax.tree.leaves` order."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(str(getattr(k, 'key', k)) for k in path): x
          for path, x in flat}


def _leaf_uses(calls, trainable_paths) -> dict[str, list[_Call]]:
  """{leaf path: [calls using it]}, LoRA factors included."""
  uses = collections.defaultdict(list)
  for c in calls:
    p = '/'.join(c.path)
    names = c.names
    if c.kind == 'dense' and p + '/lora_a' in trainable_paths:
      names += ('lora_a', 'lora_b')
    for name in names:
      uses[p + '/' + name].append(c)
  return uses


def _is_vector(path):
  return path.rsplit('/', 1)[-1] in ('bias', 'scale')


def _check_args(method, norm_ord):
  if norm_ord == 1:
    raise ValueError("book-keeping clipping supports L2 norms only; L1 "
                     "clipping (dp.mechanism='lmo') needs the vmap engine.")
  if norm_ord != 2:
    raise ValueError(f'norm_ord must be 2 for book-keeping, got {norm_ord!r}.')
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}.')


def _one(record_loss, trainable, ex, key, perturb=None, needed=None,
         box=None):
  """One record's loss under the taps: (loss, saved inputs, tap outputs)."""
  tapper = _Tapper(perturb, needed)
  if box is not None:
    box.append(tapper)
  with nn.intercept_methods(tapper):
    loss = record_loss(trainable, ex, key)
  return loss, dict(tapper.saved), dict(tapper.outs)


def check(record_loss: Callable[..., jax.Array], trainable: PyTree,
          example_batch: dict[str, Any], keys: Any, *, method: str = 'auto',
          lora_scale: float | None = None, norm_ord: int = 2) -> Plan:
  """Discovers the taps (shapes only, `jax.eval_shape`) and checks coverage.

  Args:
    record_loss: `record_loss(trainable, example, key) -> scalar`, ONE record.
    trainable: the differentiated tree (arrays or ShapeDtypeStructs).
    example_batch: a micro-batch (leading axis m) or its ShapeDtypeStructs.
    keys: its [m] typed PRNG keys (or their ShapeDtypeStruct).
    method: 'auto' (per leaf: Gram when 2 T^2 < leaf size, T the tokens per
      example summed over the leaf's uses), 'gram' or 'instantiate'.
    lora_scale: alpha / rank when `trainable` holds LoRA factors.
    norm_ord: must be 2.

  Raises:
    NotCovered: a trainable leaf that no tap covers (named, with the list).
    ValueError: L1 norms, an unknown method, remat, LoRA without lora_scale.
  """
  _check_args(method, norm_ord)
  flat = _flat_paths(trainable)
  if lora_scale is None and any(p.endswith(('/lora_a', '/lora_b'))
                                for p in flat):
    raise ValueError('book-keeping clipping: the trainable tree holds LoRA '
                     'factors; pass lora_scale=alpha/rank.')
  box = []

  def probe(t, b, k):
    return jax.vmap(lambda ex, key: _one(record_loss, t, ex, key,
                                         box=box)[1:])(b, k)

  saved, outs = jax.eval_shape(probe, trainable, example_batch, keys)
  calls = box[-1].calls
  uses = _leaf_uses(calls, flat)
  uncovered = [p for p in flat if p not in uses]
  if uncovered:
    raise NotCovered(f'book-keeping clipping: trainable leaf {uncovered[0]!r} '
                     f'is not covered by any tap ({_TAPPED}); uncovered: '
                     f'{uncovered}. Use the vmap engine.')
  leaves, needed = {}, set()
  for path in flat:
    cs = uses[path]
    keys_ = tuple(c.key for c in cs)
    needed.update(keys_)
    if _is_vector(path):
      leaves[path] = ('vector', keys_)
      continue
    tokens = sum(math.prod(saved[c.key].shape[1:] if c.kind == 'embed'
                           else saved[c.key].shape[1:-1]) for c in cs)
    choice = method
    if method == 'auto':
      choice = ('gram' if 2 * tokens ** 2 < math.prod(flat[path].shape)
                else 'instantiate')
    leaves[path] = (choice, keys_)
  out_shapes = {k: jax.ShapeDtypeStruct(s.shape[1:], s.dtype)
                for k, s in outs.items() if k in needed}
  return Plan(tuple(c for c in calls if c.key in needed), leaves, out_shapes,
              lora_scale)


def _bk_micro(record_loss, trainable, plan_, mb, mmask, mkeys, clip_norm,
              style, gamma):
  """BK on one micro-batch: (clipped sum, norms, clipped, losses)."""
  b = mmask.shape[0]
  needed = frozenset(plan_.out_shapes)

  def total_loss(perturb):
    one = lambda ex, key, p: _one(record_loss, trainable, ex, key, p,
                                  needed)[:2]
    losses, saved = jax.vmap(one)(mb, mkeys, perturb)
    return jnp.sum(losses), (losses, saved)

  zeros = {k: jnp.zeros((b,) + s.shape, s.dtype)
           for k, s in plan_.out_shapes.items()}
  grads, (losses, saved) = jax.grad(total_loss, has_aux=True)(zeros)

  flat = _flat_paths(trainable)
  calls = {c.key: c for c in plan_.calls}
  sq, pieces = [], {}
  for path, (choice, keys) in plan_.leaves.items():
    if choice == 'vector':
      per_ex = sum(bk_norms.vector(path, calls[k], saved, grads, b)
                   for k in keys)
      sq.append(jnp.sum(per_ex ** 2, axis=1))
      pieces[path] = ('vector', per_ex)
    else:
      fs = [bk_norms.factor(path, calls[k], saved, grads, b, flat,
                            plan_.lora_scale)
            for k in keys]
      sq.append(bk_norms.sq_norms(choice, fs, flat[path].shape))
      pieces[path] = ('factor', fs)
  factors, norms, clipped = clipping.style_clip_factors(
      jnp.sqrt(jnp.stack(sq, axis=1)), mmask, clip_norm, style=style,
      gamma=gamma)
  out = []
  for j, (path, (kind, val)) in enumerate(pieces.items()):
    c = factors[:, j]
    keep = c > 0
    shape = flat[path].shape
    if kind == 'vector':
      out.append(jnp.tensordot(c, jnp.where(keep[:, None], val, 0.0), axes=1,
                               precision=_HI).reshape(shape))
      continue
    total = jnp.zeros(shape, jnp.float32)
    for lk, left, right in val:
      right = bk_norms.rows(right, keep, c)
      if lk == 'dense':
        total = total + jnp.einsum('btn,btd->nd', bk_norms.rows(left, keep),
                                   right, precision=_HI)
      else:
        total = total.at[left.reshape(-1)].add(
            right.reshape((-1, right.shape[-1])))
    out.append(total)
  summed = jax.tree.unflatten(jax.tree.structure(trainable), out)
  return summed, norms, clipped, bk_norms.f32(losses)


def _run(record_loss, trainable, batch, mask, keys, *, clip_norm,
         microbatch_size, skip_padding_microbatches=False, clip_style='flat',
         gamma=clipping.AUTOMATIC_GAMMA, method='auto', lora_scale=None,
         norm_ord=2):
  """`clipped_sum` plus the per-example losses [B]."""
  _check_args(method, norm_ord)
  clipping.check_style(clip_style, gamma)
  size = mask.shape[0]
  m = microbatch_size
  if size % m:
    raise ValueError(f'batch of {size} is not a multiple of microbatch_size '
                     f'{m}.')
  n = size // m
  to_micro = lambda x: jnp.moveaxis(x.reshape((m, n) + x.shape[1:]), 1, 0)
  xs = (jax.tree.map(to_micro, batch), to_micro(mask), to_micro(keys))
  first = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype),
                       xs)
  plan_ = check(record_loss, trainable, first[0], first[2], method=method,
                lora_scale=lora_scale)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), trainable)
  z = jnp.zeros((), jnp.float32)

  def body(acc, micro):
    mb, mmask, mkeys = micro

    def compute(_):
      s, norms, clipped, losses = _bk_micro(record_loss, trainable, plan_, mb,
                                            mmask, mkeys, clip_norm,
                                            clip_style, gamma)
      mm = mmask.astype(jnp.float32)
      stats = clipping.ClipStats(
          num_examples=jnp.sum(mm), num_clipped=jnp.sum(clipped),
          norm_sum=jnp.sum(mm * jnp.where(jnp.isfinite(norms), norms, 0.)),
          loss_sum=jnp.sum(mm * jnp.where(jnp.isfinite(losses), losses, 0.)))
      return s, stats, norms, losses

    def skip(_):
      zb = jnp.zeros(mmask.shape, jnp.float32)
      return zeros, clipping.ClipStats(z, z, z, z), zb, zb

    if skip_padding_microbatches:   # a timing channel, as in dpjax.clipping
      s, stats, norms, losses = jax.lax.cond(jnp.any(mmask > 0), compute,
                                             skip, None)
    else:
      s, stats, norms, losses = compute(None)
    acc_sum, acc_stats = acc
    return ((jax.tree.map(jnp.add, acc_sum, s),
             jax.tree.map(jnp.add, acc_stats, stats)), (norms, losses))

  (total, stats), (norms, losses) = jax.lax.scan(
      body, (zeros, clipping.ClipStats(z, z, z, z)), xs)
  unmicro = lambda x: jnp.moveaxis(x, 0, 1).reshape((size,))
  return total, stats, unmicro(norms), unmicro(losses)


def clipped_sum(record_loss: Callable[..., jax.Array], trainable: PyTree,
                batch: dict[str, jax.Array], mask: jax.Array, keys: jax.Array,
                *, clip_norm: float | jax.Array, microbatch_size: int,
                norm_ord: int = 2, skip_padding_microbatches: bool = False,
                clip_style: str = 'flat',
                gamma: float = clipping.AUTOMATIC_GAMMA, method: str = 'auto',
                lora_scale: float | None = None
                ) -> tuple[PyTree, clipping.ClipStats, jax.Array]:
  """The vmap engine's clipped sum (`dpjax.clipping.microbatched_clipped_sum`,
  same arguments and results) computed by book-keeping.

  Args:
    record_loss: `record_loss(trainable, example, key) -> scalar` for ONE
      record (no batch axis), e.g. `dpjax.model_setup`'s loss with `frozen`
      closed over.
    trainable, batch, mask, keys, microbatch_size, skip_padding_microbatches,
      clip_style, gamma: as `dpjax.clipping.microbatched_clipped_sum`.
    clip_norm: C.
    norm_ord: must be 2 (L1 needs the vmap engine).
    method: 'auto', 'gram' or 'instantiate' (see `check`).
    lora_scale: alpha / rank when `trainable` holds LoRA factors.

  Returns:
    (float32 clipped sum shaped like `trainable`, ClipStats, float32 norms
    [B]), equal to the vmap engine's to float32 rounding.

  Raises:
    NotCovered, ValueError: see `check`; B not a multiple of m.
  """
  total, stats, norms, _ = _run(
      record_loss, trainable, batch, mask, keys, clip_norm=clip_norm,
      microbatch_size=microbatch_size, norm_ord=norm_ord,
      skip_padding_microbatches=skip_padding_microbatches,
      clip_style=clip_style, gamma=gamma, method=method, lora_scale=lora_scale)
  return total, stats, norms


# The module + batch-loss API (experiments/bookkeeping_benchmark.py).

def _default_apply(module):
  return lambda p, batch: module.apply({'params': p}, batch['inputs'])


def _module_record(module, loss_fn, apply_fn):
  """A record loss from a batch `apply_fn` and a [B] `loss_fn`."""
  apply_fn = apply_fn or _default_apply(module)

  def record(p, ex, key):
    del key
    one = jax.tree.map(lambda x: x[None], ex)
    return loss_fn(apply_fn(p, one), one)[0]
  return record


def _keys(n):
  return jax.random.split(jax.random.key(0), n)


def plan(module: nn.Module, params: PyTree, batch: dict[str, jax.Array], *,
         method: str = 'auto', apply_fn: Callable | None = None,
         loss_fn: Callable[..., jax.Array] = lm_loss) -> Plan:
  """`check` for a module and a batch loss (see `clipped_sum_bk`)."""
  b = jax.tree.leaves(batch)[0].shape[0]
  return check(_module_record(module, loss_fn, apply_fn), params, batch,
               _keys(b), method=method)


def clipped_sum_bk(module: nn.Module, params: PyTree,
                   batch: dict[str, jax.Array], mask: jax.Array,
                   clip_norm: float | jax.Array, *,
                   loss_fn: Callable[..., jax.Array] = lm_loss,
                   method: str = 'auto',
                   microbatch_size: int | None = None,
                   apply_fn: Callable | None = None) -> BKOutput:
  """Flat-L2 `clipped_sum` of a module with a batch loss (full params).

  Args:
    module: a Flax linen module; `apply_fn(params, batch) -> logits` (default
      `module.apply({'params': params}, batch['inputs'])`, deterministic).
    params: the trainable parameters (all differentiated).
    batch, mask, clip_norm, method: as `clipped_sum`.
    loss_fn: `loss_fn(logits, batch) -> [B]` per-example losses (default
      `lm_loss`), run here on one record at a time.
    microbatch_size: m dividing B (None: all at once).

  Returns:
    BKOutput(float32 clipped sum, norms [B], losses [B]).
  """
  size = mask.shape[0]
  total, _, norms, losses = _run(
      _module_record(module, loss_fn, apply_fn), params, batch, mask,
      _keys(size), clip_norm=clip_norm, microbatch_size=microbatch_size or size,
      method=method)
  return BKOutput(total, norms, losses)
