"""Parameter-efficient fine-tuning as parameter transforms: LoRA, bias-only,
norm scales only, and the parameter split for RGP.

Nothing here rewrites a module. Training keeps two trees: a small `trainable`
one and a `frozen` one, and `combine(trainable, frozen)` builds the full
parameter tree the unchanged model consumes. `combine` is differentiable, so
the trainer takes per-example gradients w.r.t. `trainable` only, closing over
`frozen` (which is therefore neither vmapped nor copied per example):

  peft = Peft('lora', rank=4, alpha=8, targets=('.*self_attn/(q|v)_proj',))
  trainable, frozen = peft.split(params, key=jax.random.key(0))
  def loss(t, x):  # one example
    logits = module.apply({'params': peft.combine(t, frozen)}, x[None])
    ...
  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))(trainable, batch)
  export = peft.export(trainable, frozen)  # a plain tree, LoRA merged in

Memory: under `vmap`, LoRA's merged kernel `W + s·A@B` exists once per example
for the targeted matrices only (e.g. q and v projections), not for the whole
model.

Parameter paths are the '/'-joined keys of the tree, e.g.
'layers_0/self_attn/q_proj/kernel'; LoRA targets match the module path (the
kernel's parent, 'layers_0/self_attn/q_proj') by `re.fullmatch`, or by its
last component when the pattern is a plain name ('q_proj').

RGP ('rgp', see `dpjax.rgp` and `dpjax.rgp_step`): `trainable` holds the full
2-D kernels of the target modules (same `targets` convention as LoRA) plus
any leaves whose '/'-joined path fully matches an `extra_trainable` regex
(e.g. a classification head, 'classifier/.*'); `combine` is a plain union.
The low-rank part lives in the training step, not in the parameters:
`rgp_target_paths(trainable)` tells the step which leaves to reparametrize.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp

Params = Mapping[str, Any]
MODES = ('full', 'lora', 'bias_only', 'norms', 'rgp')


def _flatten(tree: Params, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    path = f'{prefix}/{k}' if prefix else str(k)
    if isinstance(v, Mapping):
      out.update(_flatten(v, path))
    else:
      out[path] = v
  return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for path, v in flat.items():
    keys = path.split('/')
    node = out
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = v
  return out


def _matches(pattern: str, module_path: str) -> bool:
  return (re.fullmatch(pattern, module_path) is not None or
          module_path.rsplit('/', 1)[-1] == pattern)


def lora_target_paths(base_params: Params, targets: Sequence[str] | str
                      ) -> list[str]:
  """Module paths (sorted) whose 2-D `kernel` matches one of `targets`.

  Raises:
    ValueError: no kernel matches, listing the module paths there are.
  """
  if isinstance(targets, str):
    targets = (targets,)
  modules = sorted(p[:-len('/kernel')] for p, v in _flatten(base_params).items()
                   if p.endswith('/kernel') and jnp.ndim(v) == 2)
  chosen = [m for m in modules if any(_matches(t, m) for t in targets)]
  if not chosen:
    raise ValueError(f'lora targets {list(targets)} match no Dense kernel; '
                     f'module paths are e.g. {modules[:8]}')
  return chosen


def lora_init(key: jax.Array, base_params: Params, *, rank: int,
              alpha: float | None = None,
              targets: Sequence[str] | str) -> dict[str, Any]:
  """LoRA factors for every targeted kernel `W[in, out]`.

  `lora_a[in, rank]` ~ Normal(0, 1/in) and `lora_b[rank, out] = 0`, so the
  adapted model starts equal to the base model.

  Args:
    key: a typed PRNG key.
    base_params: the frozen parameter tree.
    rank: LoRA rank r (positive int).
    alpha: unused here (see `lora_merge`); accepted so both take the same
      settings.
    targets: regexes (full match) or plain names of module paths.

  Returns:
    A tree `{module path...: {'lora_a': ..., 'lora_b': ...}}`.
  """
  del alpha
  if not isinstance(rank, int) or rank <= 0:
    raise ValueError(f'rank must be a positive int, got {rank!r}')
  flat = _flatten(base_params)
  out = {}
  for i, module in enumerate(lora_target_paths(base_params, targets)):
    w = flat[module + '/kernel']
    n_in, n_out = w.shape
    a = jax.random.normal(jax.random.fold_in(key, i), (n_in, rank), jnp.float32)
    out[module + '/lora_a'] = (a / jnp.sqrt(n_in)).astype(w.dtype)
    out[module + '/lora_b'] = jnp.zeros((rank, n_out), w.dtype)
  return _unflatten(out)


def lora_merge(base_params: Params, lora_params: Params, *, alpha: float,
               rank: int) -> dict[str, Any]:
  """Full parameters with `W + (alpha / rank) · A @ B` on every LoRA module.

  Differentiable in both arguments; the other parameters pass through.

  Raises:
    ValueError: a LoRA module with no kernel in `base_params`.
  """
  scale = float(alpha) / float(rank)
  flat = _flatten(base_params)
  lora = _flatten(lora_params)
  modules = sorted({p.rsplit('/', 1)[0] for p in lora})
  missing = [m for m in modules if m + '/kernel' not in flat]
  if missing:
    raise ValueError(f'lora_params name modules with no kernel in the base '
                     f'params: {missing}')
  out = dict(flat)
  for m in modules:
    w = flat[m + '/kernel']
    delta = jnp.matmul(lora[m + '/lora_a'], lora[m + '/lora_b'],
                       preferred_element_type=jnp.float32)
    out[m + '/kernel'] = (w.astype(jnp.float32) + scale * delta).astype(w.dtype)
  return _unflatten(out)


def split_by(params: Params, predicate: Callable[[str], bool]
             ) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(trainable, frozen)`: leaves whose path satisfies `predicate`, rest."""
  flat = _flatten(params)
  trainable = {p: v for p, v in flat.items() if predicate(p)}
  frozen = {p: v for p, v in flat.items() if not predicate(p)}
  return _unflatten(trainable), _unflatten(frozen)


def merge_trees(a: Params, b: Params) -> dict[str, Any]:
  """Union of two trees with disjoint leaves (inverse of `split_by`).

  Raises:
    ValueError: a leaf present in both.
  """
  fa, fb = _flatten(a), _flatten(b)
  both = sorted(set(fa) & set(fb))
  if both:
    raise ValueError(f'trees overlap at {both[:8]}')
  return _unflatten({**fa, **fb})


def _leaf_name(path: str) -> str:
  return path.rsplit('/', 1)[-1]


def bias_only_split(params: Params) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(trainable, frozen)` with every `bias` leaf trainable."""
  return split_by(params, lambda p: _leaf_name(p) == 'bias')


def bias_only_merge(trainable: Params, frozen: Params) -> dict[str, Any]:
  """Inverse of `bias_only_split`."""
  return merge_trees(trainable, frozen)


def norms_split(params: Params) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(trainable, frozen)` with every norm `scale` (RMSNorm/LayerNorm)."""
  return split_by(params, lambda p: _leaf_name(p) == 'scale')


def _is_rgp_target(path: str, value: Any, targets: Sequence[str]) -> bool:
  if not path.endswith('/kernel') or jnp.ndim(value) != 2:
    return False
  module = path[:-len('/kernel')]
  return any(_matches(t, module) for t in targets)


def _is_extra(path: str, extra_trainable: Sequence[str]) -> bool:
  return any(re.fullmatch(p, path) is not None for p in extra_trainable)


def rgp_split(params: Params, *, targets: Sequence[str] | str, rank: int,
              extra_trainable: Sequence[str] | str = ()
              ) -> tuple[dict[str, Any], dict[str, Any]]:
  """`(trainable, frozen)` for RGP.

  `trainable` = the 2-D `kernel` leaves of the modules matching `targets`
  (as for LoRA) plus the leaves whose '/'-joined path fully matches one of
  the `extra_trainable` regexes; `frozen` = everything else.

  Raises:
    ValueError: no kernel matches `targets`, or `rank` exceeds
      min(in, out) of a target kernel.
  """
  if isinstance(targets, str):
    targets = (targets,)
  if isinstance(extra_trainable, str):
    extra_trainable = (extra_trainable,)
  flat = _flatten(params)
  kernels = sorted(p for p, v in flat.items()
                   if _is_rgp_target(p, v, targets))
  if not kernels:
    modules = sorted(p[:-len('/kernel')] for p, v in flat.items()
                     if p.endswith('/kernel') and jnp.ndim(v) == 2)
    raise ValueError(f'peft mode "rgp": targets {list(targets)} match no 2-D '
                     f'Dense kernel; module paths are e.g. {modules[:8]}')
  too_small = [(p, tuple(jnp.shape(flat[p]))) for p in kernels
               if rank > min(jnp.shape(flat[p]))]
  if too_small:
    raise ValueError(f'peft mode "rgp": rank={rank} exceeds min(in, out) of '
                     f'{too_small[:4]}')
  chosen = set(kernels)
  return split_by(params, lambda p: p in chosen or _is_extra(p,
                                                             extra_trainable))


def rgp_target_paths(trainable: Params, targets: Sequence[str] | str
                     ) -> tuple[str, ...]:
  """Sorted '/'-joined paths (the `dpjax.rgp.path_str` convention) of the
  target kernels inside an RGP `trainable` tree: its 2-D `kernel` leaves whose
  module matches `targets` (leaves trained only through `extra_trainable` are
  not listed). See also `Peft.rgp_target_paths`."""
  if isinstance(targets, str):
    targets = (targets,)
  return tuple(sorted(p for p, v in _flatten(trainable).items()
                      if _is_rgp_target(p, v, targets)))


def count(tree: Params) -> int:
  """Number of scalars in a tree."""
  return int(sum(jnp.size(x) for x in jax.tree.leaves(tree)))


@dataclasses.dataclass(frozen=True)
class Peft:
  """Which parameters train, and how trainable + frozen become full params.

  Attributes:
    mode: 'full' (everything trains), 'lora', 'bias_only' (bias leaves),
      'norms' (norm `scale` leaves) or 'rgp' (target kernels in full, plus
      `extra_trainable`; the training step is `dpjax.rgp_step`).
    rank: LoRA rank, or RGP carrier rank.
    alpha: LoRA alpha; the update is scaled by alpha / rank.
    targets: LoRA / RGP target module patterns (see module docstring).
    extra_trainable: 'rgp' only: regexes (full match) on '/'-joined leaf
      paths of further leaves trained normally (no reparametrization), e.g.
      a classification head.
  """
  mode: str = 'full'
  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ('.*self_attn/(q|v)_proj',)
  extra_trainable: tuple[str, ...] = ()

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f'peft mode must be one of {MODES}, got {self.mode!r}')
    if isinstance(self.targets, str):
      object.__setattr__(self, 'targets', (self.targets,))
    else:
      object.__setattr__(self, 'targets', tuple(self.targets))
    if isinstance(self.extra_trainable, str):
      object.__setattr__(self, 'extra_trainable', (self.extra_trainable,))
    else:
      object.__setattr__(self, 'extra_trainable', tuple(self.extra_trainable))
    if self.extra_trainable and self.mode != 'rgp':
      raise ValueError('peft extra_trainable is only used by mode "rgp", got '
                       f'mode {self.mode!r}')
    for pattern in self.extra_trainable:
      try:
        re.compile(pattern)
      except re.error as e:
        raise ValueError(f'peft extra_trainable: bad regex {pattern!r}: {e}'
                         ) from None
    if self.mode in ('lora', 'rgp'):
      if not isinstance(self.rank, int) or self.rank <= 0:
        raise ValueError(f'peft rank must be a positive int, got {self.rank!r}')
      if not self.targets:
        raise ValueError('peft targets must name at least one module pattern')

  def split(self, params: Params, key: jax.Array | None = None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """`(trainable, frozen)` from full params.

    For 'lora', `trainable` is fresh LoRA factors (needs `key`) and `frozen`
    is all of `params`. For 'rgp', see `rgp_split` (`key` is unused).

    Raises:
      ValueError: 'lora' without a key, or a mode that selects nothing.
    """
    if self.mode == 'full':
      return dict(params), {}
    if self.mode == 'rgp':
      return rgp_split(params, targets=self.targets, rank=self.rank,
                       extra_trainable=self.extra_trainable)
    if self.mode == 'lora':
      if key is None:
        raise ValueError('peft mode "lora" needs key= to initialize A')
      return lora_init(key, params, rank=self.rank, alpha=self.alpha,
                       targets=self.targets), dict(params)
    trainable, frozen = (bias_only_split(params) if self.mode == 'bias_only'
                         else norms_split(params))
    if not trainable:
      what = 'bias' if self.mode == 'bias_only' else 'norm scale'
      raise ValueError(f'peft mode {self.mode!r}: the model has no {what} '
                       f'parameters to train')
    return trainable, frozen

  def combine(self, trainable: Params, frozen: Params) -> dict[str, Any]:
    """Full params for the model; differentiable w.r.t. `trainable`."""
    if self.mode == 'full':
      return merge_trees(trainable, frozen)
    if self.mode == 'lora':
      return lora_merge(frozen, trainable, alpha=self.alpha, rank=self.rank)
    return merge_trees(trainable, frozen)

  def rgp_target_paths(self, trainable: Params) -> tuple[str, ...]:
    """'rgp' only: the target kernels' paths in `trainable` (the `targets`
    argument of `dpjax.rgp_step.make_rgp_train_step`)."""
    if self.mode != 'rgp':
      raise ValueError(f'rgp_target_paths needs peft mode "rgp", got '
                       f'{self.mode!r}')
    return rgp_target_paths(trainable, self.targets)

  def export(self, trainable: Params, frozen: Params) -> dict[str, Any]:
    """A plain parameter tree (LoRA merged into the base) for saving."""
    return jax.tree.map(jnp.asarray, self.combine(trainable, frozen))


def trainable_paths(tree: Params) -> Iterable[str]:
  """The '/'-joined paths of a tree's leaves (for logging)."""
  return sorted(_flatten(tree))
