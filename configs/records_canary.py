"""Memorization probe: a small byte-level decoder on synthetic clinical notes with canaries.

  python -m dpjax.main --config=configs/records_canary.py --workdir=runs/canary
  python -m dpjax.main --config=configs/records_canary.py --workdir=runs/canary_np \
      --config.dp.enabled=False

2,000 fictitious notes (`dpjax.data.records`) plus secret canaries ("My ID
number is d d d d d d") inserted 1, 10 and 100 times, each copy its own
record. At the end the report gives each canary's exposure (rank of the true
secret among sampled candidates, Carlini et al. 2019). The guarantee is per
record: a canary repeated k times is protected only at group size k.
experiments/canary_exposure.py runs both and commits the comparison.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.update(family='llama', init='random', vocab_size=258,
                      hidden_size=128, intermediate_size=256, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=32,
                      max_position_embeddings=256)
  config.data.update(corpus='records', tokenizer='byte', seq_len=192,
                     records_n=2000, canary_repetitions=(1, 10, 100),
                     exposure_samples=2000, max_eval_records=128,
                     eval_batch_size=64)
  config.train.update(steps=300, batch_size=64, max_batch_size=96,
                      microbatch_size=16, learning_rate=3e-3, ema_decay=0.9,
                      log_every=25, eval_every=100, checkpoint_every=100)
  config.dp.update(target_epsilon=8.0, noise_multiplier=-1.0, delta=1e-5,
                   l2_clip_norm=1.0, accountant='pld')
  return config
