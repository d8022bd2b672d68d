"""Shared test helpers for the audits (dpjax.audit): a tiny debug config."""

from configs import debug


def tiny_config(**overrides):
  """configs/debug.py with one layer and a fixed sigma (no calibration);
  `overrides` maps dotted field names ('dp.noise_multiplier') to values."""
  config = debug.get_config()
  config.model.num_layers = 1
  config.data.update(max_train_records=128, max_eval_records=8,
                     eval_batch_size=8)
  config.train.update(batch_size=8, max_batch_size=16, microbatch_size=8)
  config.dp.noise_multiplier = 1.0
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
