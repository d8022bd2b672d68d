"""Every family honours the shared dropout rate (rng collection 'dropout')."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import models

TINY = {
    'llama': dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_layers=1, num_heads=4, num_kv_heads=2),
    'qwen2': dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                  num_layers=1, num_heads=4, num_kv_heads=2),
    'gpt2': dict(vocab_size=64, n_positions=16, n_embd=32, n_layer=1,
                 n_head=4),
    'bitnet': dict(vocab_size=64, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=1, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=16),
    'bert': dict(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                 num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=16, num_labels=3),
    'roberta': dict(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=4, intermediate_size=37,
                    max_position_embeddings=16, num_labels=3),
}
TOKENS = jnp.asarray([[5, 9, 2, 7, 3, 11], [8, 4, 6, 10, 12, 13]], jnp.int32)


def _model(family, rate):
  fields = dict(TINY[family], **models.dropout_fields(family, rate))
  module, config = models.build_model(family, **fields)
  # Eager (op by op) everywhere: tiny models run faster than they compile,
  # and both calls take the same path, so rate 0 must match bit for bit.
  params = module.init(jax.random.key(0), TOKENS)['params']
  apply = lambda p, key: module.apply(
      {'params': p}, TOKENS, deterministic=False, rngs={'dropout': key})
  det = module.apply({'params': params}, TOKENS, deterministic=True)
  return config, params, apply, np.asarray(det)


@pytest.mark.parametrize('family', sorted(TINY))
def test_rate_zero_is_deterministic(family):
  config, params, apply, det = _model(family, 0.0)
  assert models.dropout_rate(config) == 0.0
  np.testing.assert_array_equal(apply(params, jax.random.key(1)), det)
  np.testing.assert_array_equal(apply(params, jax.random.key(2)), det)


@pytest.mark.parametrize('family', sorted(TINY))
def test_positive_rate_drops_with_the_key(family):
  config, params, apply, det = _model(family, 0.3)
  assert models.dropout_rate(config) == pytest.approx(0.3)
  for f in models.family_module(family).DROPOUT_FIELDS:
    assert getattr(config, f) == pytest.approx(0.3)
  a = np.asarray(apply(params, jax.random.key(1)))
  b = np.asarray(apply(params, jax.random.key(2)))
  assert np.all(np.isfinite(a))
  assert not np.allclose(a, det)
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(apply(params, jax.random.key(1)), a)


def test_with_dropout_replaces_checkpoint_rates_and_validates():
  _, config = models.build_model('bert', **TINY['bert'])
  assert config.hidden_dropout_prob == 0.1      # the HF default
  zero = models.with_dropout(config, 0.0)
  assert (zero.hidden_dropout_prob, zero.attention_probs_dropout_prob,
          zero.classifier_dropout) == (0.0, 0.0, 0.0)
  assert models.dropout_rate(zero) == 0.0
  _, gpt2 = models.build_model('gpt2', **TINY['gpt2'])
  assert models.dropout_rate(gpt2) == pytest.approx(0.1)   # HF default
  assert models.dropout_rate(models.with_dropout(gpt2, 0.0)) == 0.0
  for bad in (-0.1, 1.0, float('nan'), 'x', None):
    with pytest.raises(ValueError, match='dropout_rate'):
      models.dropout_fields('llama', bad)
