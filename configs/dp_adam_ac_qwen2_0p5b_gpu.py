"""DP-Adam-AC on Qwen2.5-0.5B (full size, one 80 GB GPU).

A documentation config: the GPU settings, not run in this session.

  python -m dpjax.main --config=configs/dp_adam_ac_qwen2_0p5b_gpu.py \
      --config.model.path=/path/to/Qwen2.5-0.5B --workdir=/tmp/ac_qwen

The paper's Figure 1 sweeps the noise level: rerun with
`--config.dp.noise_multiplier=0.5` (1.0, 2.0, ...) or with
`--config.dp.target_epsilon=...`. The CPU-sized version of the same experiment
(tiny Qwen2-architecture model, synthetic Markov-chain corpus, DP-Adam-AC vs
DP-AdamW at equal epsilon, EMA vs raw weights) is
`experiments/dp_adam_ac_figures.py`; its measured results are in
`experiments/results/dp_adam_ac_summary.md`.

Settings. Qwen2.5-0.5B: vocab 151936, hidden 896, MLP 4864, 24 layers, 14
query / 2 KV heads of 64, RoPE theta 1e6, QKV bias, tied embeddings (read from
the HF folder; the shape fields below document it and are used only for
`model.init='random'`). Full fine-tuning, bfloat16 compute, float32 master
weights, per-example gradients 8 at a time (8 x 0.5B x 4 B = 16 GB). AdamW
lr 3e-4, weight decay 0.01, EMA 0.999 and the clip-rate LR rule follow the
third-party reconstruction of the paper (ALGORITHMS.md 4.9; the paper's own
values are unknown). Clipping: private quantile tracking (Andrew et al.),
median target, eta 0.2, sigma_b = B/20, C_0 = 1, accounted as one Gaussian
of multiplier z; the paper's non-private percentile rule is
`--config.dp_adam_ac.nonprivate_percentile_clipping=True` (the report then
says NOT private).

Sharding: mesh.param_sharding='fsdp' shards the parameters and AdamW state
over the data axis when there are several devices (one device: nothing to
shard). Compiled for 8 simulated devices (XLA:CPU analyses, estimates for a
GPU/TPU compiler): 4.51 GiB peak and 22.0 TFLOP per device per step
(`experiments/results/seed_model_compile.md`); `docs/scaling.md` predicts
~29 GiB and ~0.7 s/step on one H100 at an assumed 25% utilisation (a
prediction, not a measurement). No GPU was lent to measure it; fill in the
measured loss and step time when run.
"""

from configs import default


def dp_adam_ac_section(config, *, expected_batch_size):
  """Adds `config.dp_adam_ac` (field names = `dp_adam_ac_stages` kwargs)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  ac = ml_collections.ConfigDict()
  ac.enabled = True                    # Use DP-Adam-AC instead of DP-AdamW.
  ac.initial_clip_norm = 1.0           # C_0 (dp.l2_clip_norm is then unused).
  ac.target_quantile = 0.5             # Target unclipped fraction gamma.
  ac.clip_learning_rate = 0.2          # eta of C <- C exp(-eta (b~ - gamma)).
  ac.count_noise_std = expected_batch_size / 20.0  # sigma_b (Andrew et al.).
  ac.count_centered = True             # Centered count (needs num_examples).
  ac.min_clip_norm = 1e-3              # Clamp of C_t.
  ac.max_clip_norm = 100.0
  ac.nonprivate_percentile_clipping = False  # Paper rule; NOT private.
  ac.history_size = 1000               # H of the percentile rule.
  # Each record is clipped on its own (micro-batch groups are a library path,
  # dpjax.microbatch_groups); batch-size schedules are train.batch_schedule.
  ac.adapt_learning_rate = True        # Clip-rate-driven LR multiplier.
  ac.lr_band = 0.10
  ac.lr_up = 1.01
  ac.lr_down = 0.995
  ac.lr_min_multiplier = 0.1
  ac.lr_max_multiplier = 2.0
  config.dp_adam_ac = ac
  return config


def get_config():
  config = default.get_config()
  config.model.update(
      family='qwen2', init='hf', path='models/Qwen2.5-0.5B',
      vocab_size=151936, hidden_size=896, intermediate_size=4864,
      num_layers=24, num_heads=14, num_kv_heads=2, head_dim=64,
      rope_theta=1000000.0, rms_norm_eps=1e-6, qkv_bias=True,
      tie_embeddings=True, max_position_embeddings=32768,
      dtype='bfloat16', param_dtype='float32', remat=True)
  config.mesh.param_sharding = 'fsdp'
  config.peft.mode = 'full'
  config.data.update(tokenizer='model', seq_len=128, max_eval_records=512,
                     eval_batch_size=64)
  config.train.update(steps=1000, batch_size=256, max_batch_size=384,
                      microbatch_size=8, optimizer='adamw',
                      learning_rate=3e-4, warmup_steps=0, b1=0.9, b2=0.999,
                      eps=1e-8, weight_decay=0.01, ema_decay=0.999,
                      log_every=10, eval_every=100, checkpoint_every=200)
  config.dp.update(target_epsilon=8.0, noise_multiplier=-1.0, delta=1e-5,
                   l2_clip_norm=1.0, accountant='pld')
  return dp_adam_ac_section(config, expected_batch_size=256)
