"""Sampling from a decoder and from a finished run (dpjax.generation and the
`python -m dpjax.generate` command)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import debug
from dpjax import generate
from dpjax import generation
from dpjax import steps as steps_lib
from dpjax import train
from dpjax.data import tasks
from dpjax.data import tokenizers
from dpjax.models import llama
from dpjax.models.tokenizer import HFTokenizer
from tests.models.test_gguf_io import _tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = [3, 14, 15, 9, 2]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
            "{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope='module')
def tiny():
  """A tiny random Llama with spread-out logits (no near ties)."""
  module, _ = llama.build(vocab_size=48, hidden_size=32, intermediate_size=64,
                          num_layers=2, num_heads=4, num_kv_heads=2,
                          max_position_embeddings=64)
  params = jax.jit(module.init)(jax.random.key(0),
                                jnp.zeros((1, 4), jnp.int32))['params']
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * jax.random.normal(
          jax.random.key(len(jax.tree_util.keystr(p))), x.shape), params)
  return module, params


def _sample(tiny, **kw):
  module, params = tiny
  kw.setdefault('max_tokens', 12)
  kw.setdefault('key', jax.random.key(0))
  return generation.sample(module, params, PROMPT, **kw)


def test_sampling_is_a_function_of_the_key(tiny):
  a = _sample(tiny, temperature=1.0)
  assert a == _sample(tiny, temperature=1.0)
  assert a != _sample(tiny, temperature=1.0, key=jax.random.key(1))
  assert len(a) == 12 and all(0 <= t < 48 for t in a)


def test_greedy_is_the_argmax_of_a_plain_loop(tiny):
  module, params = tiny
  apply = jax.jit(module.apply)
  ids = list(PROMPT)
  for _ in range(8):  # the unpadded sequence, one token longer each step
    logits = apply({'params': params}, jnp.asarray([ids]))
    ids.append(int(jnp.argmax(logits[0, -1])))
  want = ids[len(PROMPT):]
  assert _sample(tiny, temperature=0.0, max_tokens=8) == want
  # Any key: greedy ignores it. A tiny nucleus keeps only the top token.
  assert _sample(tiny, temperature=0.0, max_tokens=8,
                 key=jax.random.key(5)) == want
  assert _sample(tiny, temperature=1.0, top_p=1e-6, max_tokens=8) == want
  assert _sample(tiny, temperature=1.0, top_p=1e-6, max_tokens=8,
                 key=jax.random.key(7)) == want


def test_eos_stops_early_and_is_not_returned(tiny):
  full = _sample(tiny, temperature=1.0)
  # The first token whose first occurrence is not at position 0.
  k = next((i for i, t in enumerate(full) if i and t not in full[:i]), 0)
  # Step t draws with fold_in(key, t): the prefix is the same draw.
  assert _sample(tiny, temperature=1.0, eos_ids=[full[k], 47 + 100]) == (
      full[:k])
  assert _sample(tiny, temperature=1.0, eos_ids=[full[0]]) == []


def test_many_samples_buffer_limit_and_bad_arguments(tiny):
  module, params = tiny
  key = jax.random.key(3)
  many = generation.sample_many(module, params, PROMPT, num_samples=3,
                                max_tokens=12, key=key, temperature=1.0)
  assert many[0] == _sample(tiny, temperature=1.0, key=key)
  assert len({tuple(m) for m in many}) == 3
  # The buffer never exceeds max_len positions, prompt included.
  assert len(_sample(tiny, max_tokens=50, max_len=9)) == 9 - len(PROMPT)
  with pytest.raises(ValueError, match='at most 5 positions'):
    _sample(tiny, max_len=5)
  with pytest.raises(ValueError, match='typed PRNG key'):
    _sample(tiny, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match='empty'):
    generation.sample(module, params, [], max_tokens=4, key=key)
  with pytest.raises(ValueError, match='top_p'):
    _sample(tiny, top_p=0.0)


def _config(task):
  return ml_collections.ConfigDict({'data': {'task': task}})


def test_prompt_templates_and_stop_tokens():
  hf = _tiny_tokenizer()
  chat = HFTokenizer(hf.tokenizer, eos_token='<|endoftext|>',
                     chat_template=TEMPLATE)
  end_of_text = hf.tokenizer.token_to_id('<|endoftext|>')
  end_of_turn = hf.tokenizer.token_to_id('<|im_end|>')
  byte = tokenizers.ByteTokenizer()
  lm, inst = _config('lm'), _config('instruction')

  assert generation.prompt_template(lm, chat, 'auto') == ''
  assert generation.prompt_template(inst, chat, 'off') == ''
  template = generation.prompt_template(inst, chat, 'auto')
  assert template == TEMPLATE == generation.prompt_template(lm, chat, 'on')
  text = generation.render_prompt(template, 'to be', chat)
  assert text == tasks.apply_template(TEMPLATE, 'to be', '')[0]
  assert text.endswith('<|im_start|>assistant\n')
  assert generation.stop_ids(chat, template) == sorted(
      {end_of_text, end_of_turn})
  assert generation.stop_ids(chat, '') == [end_of_text]

  # A byte-tokenized instruction run: the default instruction format.
  template = generation.prompt_template(inst, byte, 'auto')
  assert generation.render_prompt(template, 'to be', byte) == (
      tasks.DEFAULT_TEMPLATE.replace('{prompt}', 'to be'))
  assert generation.stop_ids(byte, template) == [byte.eos_id]
  with pytest.raises(generation.GenerationError, match='no chat template'):
    generation.prompt_template(lm, byte, 'on')


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('gen_run'))
  config = debug.get_config()
  config.train.steps = 2
  config.plot = False
  out = train.train_and_evaluate(config, workdir)
  return workdir, out


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _files(workdir):
  return sorted((os.path.join(d, f), os.path.getmtime(os.path.join(d, f)))
                for d, _, fs in os.walk(workdir) for f in fs)


def test_restores_the_trained_ema_and_raw_weights(run_dir):
  workdir, out = run_dir
  state = out['state']
  files = _files(workdir)
  for weights, want in (('ema', steps_lib.ema_trainable(state)),
                        ('raw', state.trainable)):
    run = generation.load_run(workdir, weights)
    assert run.step == 2 and run.has_ema
    got = _leaves(run.params)
    assert len(got) == len(_leaves(want))
    for a, b in zip(got, _leaves(want)):
      np.testing.assert_array_equal(a, b)
  # The secret store (deleted when the run completed) is not needed, and
  # nothing in the work directory is written.
  assert not os.path.exists(os.path.join(workdir, 'secret'))
  assert _files(workdir) == files


def _main(capsys, *args):
  code = generate.main(['generate', *args])
  out = capsys.readouterr()
  return code, out.out, out.err


def test_cli_same_seed_same_text(run_dir, capsys):
  workdir, _ = run_dir
  args = (f'--workdir={workdir}', '--prompt=To be', '--max_tokens=20')
  code, first, _ = _main(capsys, *args, '--seed=1')
  assert code == 0 and first.strip()
  assert _main(capsys, *args, '--seed=1')[1] == first
  assert _main(capsys, *args, '--seed=2')[1] != first
  code, many, _ = _main(capsys, *args, '--seed=1', '--num_samples=2')
  assert code == 0 and many.startswith('--- sample 1/2 ---\n')
  assert '\n--- sample 2/2 ---\n' in many
  code, _, err = _main(capsys, *args, '--top_p=0')
  assert code == 2 and err.count('\n') == 1 and '--top_p' in err
  code, _, err = _main(capsys, *args, '--chat=on')  # a byte-level run
  assert code == 2 and err.count('\n') == 1 and 'no chat template' in err


def test_python_m_generate_prints_the_library_text(run_dir):
  workdir, _ = run_dir
  env = dict(os.environ, PYTHONIOENCODING='utf-8')
  proc = subprocess.run(
      [sys.executable, '-m', 'dpjax.generate', f'--workdir={workdir}',
       '--prompt=To be', '--seed=1', '--max_tokens=20', '--temperature=1'],
      cwd=ROOT, capture_output=True, env=env, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr.decode(errors='replace')
  run = generation.load_run(workdir)
  want = generation.generate(run, 'To be', seed=1, max_tokens=20,
                             temperature=1.0)
  assert proc.stdout == (want[0] + '\n').encode('utf-8')


def test_missing_workdir_exits_2_with_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, '-m', 'dpjax.generate',
       f'--workdir={tmp_path / "absent"}', '--prompt=x'],
      cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr.count('\n') == 1 and 'config.json' in proc.stderr


def test_no_checkpoint_or_encoder_exits_2(tmp_path, capsys):
  config = debug.get_config()
  train.save_config(config, str(tmp_path))
  code, _, err = _main(capsys, f'--workdir={tmp_path}', '--prompt=x')
  assert code == 2 and err.count('\n') == 1 and 'no checkpoint' in err
  os.makedirs(tmp_path / 'checkpoints' / '1')
  with open(tmp_path / 'config.json') as f:
    saved = json.load(f)
  saved['model'].update(family='bert', init='hf', path='/nowhere')
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(saved, f)
  code, _, err = _main(capsys, f'--workdir={tmp_path}', '--prompt=x')
  assert code == 2 and err.count('\n') == 1 and 'decoder' in err
