"""Random init of every decoder family from the shared config fields."""

import jax
import numpy as np
import pytest

from configs import debug
from dpjax import configuration
from dpjax import model_setup
from dpjax import train


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
