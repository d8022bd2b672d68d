"""Model setup: random init from the shared fields, dropout, checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import debug
from dpjax import configuration
from dpjax import model_setup
from dpjax import models
from dpjax import train
from dpjax.models import hf_io


@pytest.mark.parametrize('family', ['gpt2', 'bitnet', 'qwen2'])
def test_random_init_uses_the_shared_fields(family):
  config = debug.get_config()
  config.model.family = family
  model = model_setup.create(config)
  cfg = model.config
  hidden = {'gpt2': 'n_embd', 'bitnet': 'hidden_size',
            'qwen2': 'hidden_size'}[family]
  layers = {'gpt2': 'n_layer', 'bitnet': 'num_hidden_layers',
            'qwen2': 'num_layers'}[family]
  assert getattr(cfg, hidden) == config.model.hidden_size
  assert getattr(cfg, layers) == config.model.num_layers
  assert cfg.vocab_size == config.model.vocab_size
  # The per-record loss runs and is near log(vocab) at init.
  data = {'inputs': np.zeros((32,), np.int32) + 65,
          'targets': np.zeros((32,), np.int32) + 66,
          'weights': np.ones((32,), np.float32)}
  loss = model.loss_fn(model.trainable, model.frozen, data, jax.random.key(0))
  assert abs(float(loss) - np.log(config.model.vocab_size)) < 1.5


@pytest.mark.slow  # 14 s; test_families_train trains gpt2 with DP
def test_gpt2_random_init_trains_with_dp(tmp_path):
  config = debug.get_config()
  config.model.family = 'gpt2'
  config.train.steps = 2
  out = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(out['final']['eval_loss'])


def test_encoder_random_init_is_refused_with_the_field():
  config = debug.get_config()
  config.model.family = 'bert'
  with pytest.raises(configuration.ConfigError, match='model.init'):
    model_setup.create(config)


def _lm_record():
  return {'inputs': np.arange(16, dtype=np.int32) + 65,
          'targets': np.arange(16, dtype=np.int32) + 66,
          'weights': np.ones((16,), np.float32)}


@pytest.mark.parametrize('family', ['llama', 'gpt2', 'bitnet'])
@pytest.mark.parametrize('rate', [0.0, 0.3])
def test_dropout_rate_reaches_every_decoder_family(family, rate):
  config = debug.get_config()
  config.model.update(family=family, num_layers=1, dropout_rate=rate)
  model = model_setup.create(config)
  assert models.dropout_rate(model.config) == pytest.approx(rate)
  loss = lambda seed: float(model.loss_fn(model.trainable, model.frozen,
                                          _lm_record(), jax.random.key(seed)))
  if rate == 0:
    assert loss(1) == loss(2)
  else:
    assert loss(1) != loss(2) and loss(1) == loss(1)


@pytest.mark.parametrize('rate', [0.0, 0.3])
def test_dropout_rate_replaces_a_bert_checkpoints_own(tmp_path, rate):
  module, cfg = models.build_model(
      'bert', vocab_size=300, hidden_size=32, num_hidden_layers=1,
      num_attention_heads=4, intermediate_size=37,
      max_position_embeddings=40, head='none')
  assert cfg.hidden_dropout_prob == 0.1
  params = module.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
  hf_io.save_hf_folder(str(tmp_path), 'bert', cfg, params['params'])
  config = debug.get_config()
  config.model.update(family='bert', init='hf', path=str(tmp_path),
                      dropout_rate=rate)
  config.data.task = 'genre'
  model = model_setup.create(config)
  c = model.config
  assert (c.hidden_dropout_prob, c.attention_probs_dropout_prob,
          c.classifier_dropout) == (rate, rate, rate)
  example = {'inputs': np.arange(10, dtype=np.int32) + 5,
             'attention_mask': np.ones((10,), np.int32),
             'label': np.int32(1)}
  loss = lambda seed: float(model.loss_fn(model.trainable, model.frozen,
                                          example, jax.random.key(seed)))
  if rate == 0:
    assert loss(1) == loss(2)
  else:
    assert loss(1) != loss(2) and loss(1) == loss(1)
