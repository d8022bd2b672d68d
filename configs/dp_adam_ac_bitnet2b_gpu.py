"""DP-Adam-AC on BitNet b1.58 2B-4T (full size, one 80 GB GPU).

A documentation config: the GPU settings, not run in this session.

  python -m dpjax.main --config=configs/dp_adam_ac_bitnet2b_gpu.py \
      --config.model.path=/path/to/bitnet-b1.58-2B-4T --workdir=/tmp/ac_bitnet

The paper's Figure 2 (noise-level sweep) on BitNet: rerun with
`--config.dp.noise_multiplier=...`. CPU-sized version:
`experiments/dp_adam_ac_figures.py` (tiny BitNet b1.58 decoder, synthetic
Markov-chain corpus); results in `experiments/results/dp_adam_ac_summary.md`.

Settings. BitNet b1.58 2B-4T (microsoft/bitnet-b1.58-2B-4T): vocab 128256,
hidden 2560, relu^2 MLP 6912, 30 layers, 20 query / 5 KV heads of 128, RoPE
theta 5e5, ternary absmean weights and 8-bit activations with a
straight-through estimator (`dpjax.models.bitnet`, quantization 'online';
the packed checkpoint is unpacked to latent weights). The shape fields below
document the model; with `model.init='hf'` they are read from the folder.
Per-example gradients of all 2.4B latent weights do not fit 8 at a time
(8 x 2.4B x 4 B = 77 GB), so LoRA r=16 on q,k,v,o trains (the paper does not
say whether it used LoRA). Optimizer, EMA, LR rule and clipping as in
`configs/dp_adam_ac_qwen2_0p5b_gpu.py`.

Sharding: mesh.param_sharding='fsdp' (the frozen 2.7B base weights and the
LoRA state over the data axis when there are several devices). Compiled for 8
simulated devices (XLA:CPU analyses, estimates for a GPU/TPU compiler):
6.22 GiB peak and 68.5 TFLOP per device per step
(`experiments/results/seed_model_compile.md`); `docs/scaling.md` predicts
~42 GiB on one device (a prediction). No GPU was lent to measure it.
"""

from configs import default
from configs import dp_adam_ac_qwen2_0p5b_gpu as qwen_cfg


def get_config():
  config = default.get_config()
  config.model.update(
      family='bitnet', init='hf', path='models/bitnet-b1.58-2B-4T',
      vocab_size=128256, hidden_size=2560, intermediate_size=6912,
      num_layers=30, num_heads=20, num_kv_heads=5, head_dim=128,
      rope_theta=500000.0, rms_norm_eps=1e-5, qkv_bias=False,
      tie_embeddings=False, max_position_embeddings=4096,
      dtype='bfloat16', param_dtype='float32', remat=True)
  config.mesh.param_sharding = 'fsdp'
  config.peft.update(mode='lora', lora_rank=16, lora_alpha=32.0,
                     lora_targets=r'.*self_attn/(q|k|v|o)_proj.*')
  config.data.update(tokenizer='model', seq_len=128, max_eval_records=512,
                     eval_batch_size=32)
  config.train.update(steps=1000, batch_size=256, max_batch_size=384,
                      microbatch_size=8, optimizer='adamw',
                      learning_rate=3e-4, warmup_steps=0, b1=0.9, b2=0.999,
                      eps=1e-8, weight_decay=0.01, ema_decay=0.999,
                      log_every=10, eval_every=100, checkpoint_every=200)
  config.dp.update(target_epsilon=8.0, noise_multiplier=-1.0, delta=1e-5,
                   l2_clip_norm=1.0, accountant='pld')
  return qwen_cfg.dp_adam_ac_section(config, expected_batch_size=256)
