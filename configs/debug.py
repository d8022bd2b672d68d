"""Tiny DP run used by the tests and for quick checks (seconds on a CPU).

  python -m dpjax.main --config=configs/debug.py --workdir=/tmp/dpjax_debug

A 2-layer Llama-style decoder from random init on byte-tokenized Shakespeare,
DP-AdamW with Poisson sampling, sigma calibrated for (epsilon=8, delta=1e-5)
under the PLD accountant.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.update(
      family='llama', init='random', path='', vocab_size=258,
      hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=8, max_position_embeddings=64)
  config.data.update(seq_len=32, max_train_records=512, max_eval_records=32,
                     eval_batch_size=32)
  config.train.update(steps=6, batch_size=16, max_batch_size=32,
                      microbatch_size=8, learning_rate=3e-3, log_every=2,
                      eval_every=3, checkpoint_every=3)
  config.dp.update(target_epsilon=8.0, noise_multiplier=-1.0, delta=1e-5,
                   l2_clip_norm=1.0, accountant='pld')
  return config
