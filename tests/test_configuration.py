"""Every invalid config field is refused with an error naming it."""

import pytest

from configs import debug
from configs import default
from dpjax import configuration


def test_shipped_configs_are_valid():
  import glob
  import importlib
  import os
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(
      os.path.join(root, 'configs', '*.py')) if not p.endswith('__init__.py'))
  assert {'default', 'debug', 'quickstart', 'ewtune_minilm',
          'lmo_minilm'} <= set(names)
  def fields(c, prefix=''):
    out = set()
    for k, v in c.items():
      if hasattr(v, 'items') and k != 'lmo':
        out |= fields(v, prefix + k + '.')
      else:
        out.add(prefix + k)
    return out
  known = fields(default.get_config())
  for name in names:
    config = importlib.import_module(f'configs.{name}').get_config()
    configuration.validate(config)
    # No field the trainer does not read (it would be silently ignored).
    assert fields(config) <= known, (name, sorted(fields(config) - known))


def test_lmo_config_l1_clip_norm_matches_its_noised_coordinates():
  import math
  from configs import lmo_minilm
  from dpjax import model_setup
  from dpjax import rgp
  config = lmo_minilm.get_config()
  model = model_setup.create(config)
  flat = rgp.flat_params(model.trainable)
  r = config.peft.rgp_rank
  # Counted by hand: carriers r (in + out) per target kernel, others whole.
  d = sum(r * (x.shape[0] + x.shape[1]) if p in model.rgp_targets else x.size
          for p, x in flat.items())
  assert d == lmo_minilm.NOISED_COORDINATES
  assert model_setup.noised_coordinates(model, r) == d
  assert d < sum(x.size for x in flat.values()) / 10
  assert config.dp.l1_clip_norm == math.sqrt(2 * d / math.pi)


BAD = [
    ('dp.noise_multiplier', -1.0, 'dp.target_epsilon', {'dp.target_epsilon': -3.0}),
    ('dp.delta', 0.0, None, {}),
    ('dp.delta', 1.0, None, {}),
    ('dp.l2_clip_norm', 0.0, None, {}),
    ('dp.l2_clip_norm', -1.0, None, {}),
    ('dp.accountant', 'moments', None, {}),
    ('dp.sampling', 'uniform', None, {}),
    ('dp.report_accountants', ('pld', 'gdp'), None, {}),
    ('dp.target_epsilon', float('nan'), None, {'dp.noise_multiplier': -1.0}),
    ('train.batch_size', 0, None, {}),
    ('train.max_batch_size', 8, None, {'train.batch_size': 16}),
    ('train.microbatch_size', 5, None, {}),
    ('train.steps', 0, None, {}),
    ('train.learning_rate', -1e-3, None, {}),
    ('train.ema_decay', 1.0, None, {}),
    ('train.optimizer', 'lamb', None, {}),
    ('model.family', 'mamba', None, {}),
    ('model.init', 'hub', None, {}),
    ('model.path', '', None, {'model.init': 'hf'}),
    ('peft.mode', 'prefix', None, {}),
    ('data.seq_len', 1, None, {}),
    ('mesh.data', 0, None, {}),
    ('export.formats', ('onnx',), None, {}),
]


def _set(config, path, value):
  node = config
  parts = path.split('.')
  for p in parts[:-1]:
    node = node[p]
  node[parts[-1]] = value


@pytest.mark.parametrize('field,value,named,extra', BAD,
                         ids=[f'{b[0]}={b[1]!r}' for b in BAD])
def test_bad_field_is_named(field, value, named, extra):
  config = debug.get_config()
  for k, v in extra.items():
    _set(config, k, v)
  _set(config, field, value)
  with pytest.raises(configuration.ConfigError) as e:
    configuration.validate(config)
  assert f'config.{named or field}' in str(e.value)
  assert 'valid:' in str(e.value)


def test_shuffle_needs_fixed_batch():
  config = debug.get_config()
  config.dp.sampling = 'shuffle'
  with pytest.raises(configuration.ConfigError, match='train.max_batch_size'):
    configuration.validate(config)


def test_data_dependent_checks():
  config = debug.get_config()
  with pytest.raises(configuration.ConfigError, match='train.batch_size'):
    configuration.validate_against_data(config, 10)
  config.dp.delta = 1e-2
  with pytest.raises(configuration.ConfigError, match='dp.delta'):
    configuration.validate_against_data(config, 1000)
  with pytest.raises(configuration.ConfigError, match='empty'):
    configuration.validate_against_data(config, 0)
