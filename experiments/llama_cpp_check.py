"""dpjax's GGUF exports run in real llama.cpp with dpjax's logits.

For tiny random Llama and Qwen2 models with plain, linear and Llama-3.1
(`rope_freqs`) RoPE, in every export dtype, this writes the GGUF with
`gguf_io.save_gguf`, evaluates it in llama.cpp (llama-cpp-python, run in
its own interpreter: it is not a dpjax dependency) and compares the logits
with dpjax's on the float32 weights and on the weights dpjax's reader
gets back from the same file. It also checks that llama.cpp sees the chat
template and `general.name`.

  python experiments/llama_cpp_check.py --llama_cpp_python /tmp/llcpp/bin/python

Writes experiments/results/llama_cpp_check.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from dpjax.models import gguf_io  # pylint: disable=wrong-import-position
from dpjax.models import llama  # pylint: disable=wrong-import-position
from dpjax.models import rope  # pylint: disable=wrong-import-position
from tests.models.test_exports import TEMPLATE  # pylint: disable=wrong-import-position
from tests.models.test_gguf_io import _tiny_tokenizer  # pylint: disable=wrong-import-position

SHAPE = dict(vocab_size=64, hidden_size=64, intermediate_size=128,
             num_layers=2, num_heads=4, num_kv_heads=2, rope_theta=10000.0,
             rms_norm_eps=1e-5, max_position_embeddings=256)
ROPES = {
    'plain': None,
    'linear': rope.RopeScaling('linear', factor=4.0),
    'llama3': rope.RopeScaling('llama3', factor=8.0, low_freq_factor=1.0,
                               high_freq_factor=4.0,
                               original_max_position_embeddings=64),
}
CASES = [('llama', r) for r in ROPES] + [('qwen2', 'plain'),
                                         ('qwen2', 'linear')]
T = 160

_RUNNER = r'''
import json, sys
import numpy as np
import llama_cpp
path, tokens_path, out_path = sys.argv[1:4]
tokens = json.load(open(tokens_path))
llm = llama_cpp.Llama(model_path=path, logits_all=True, n_ctx=len(tokens),
                      n_threads=2, verbose=False)
llm.eval(tokens)
np.save(out_path, np.asarray(llm.scores[:len(tokens)], np.float32))
meta = llm.metadata
print(json.dumps({'chat_template': meta.get('tokenizer.chat_template'),
                  'name': meta.get('general.name'),
                  'version': llama_cpp.__version__}))
'''


def _model(family, rope_name, seed):
  config = llama.LlamaConfig(family=family, rope_scaling=ROPES[rope_name],
                             **SHAPE)
  module, _ = llama.build(**dataclasses.asdict(config))
  params = module.init(jax.random.key(seed),
                       jnp.zeros((1, 4), jnp.int32))['params']
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * jax.random.normal(
          jax.random.key(seed + len(str(p))), x.shape), params)
  return module, config, params


def _rel(a, b):
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--llama_cpp_python', default='/tmp/llcpp/bin/python')
  parser.add_argument('--out', default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), 'results',
      'llama_cpp_check'))
  args = parser.parse_args(argv)
  tok = type(_tiny_tokenizer())(_tiny_tokenizer().tokenizer,
                                eos_token='<|im_end|>',
                                chat_template=TEMPLATE)
  tokens = [int(t) for t in
            np.random.default_rng(0).integers(0, 60, T)]
  rows = []
  version = None
  with tempfile.TemporaryDirectory() as tmp:
    tokens_path = os.path.join(tmp, 'tokens.json')
    with open(tokens_path, 'w') as f:
      json.dump(tokens, f)
    for i, (family, rope_name) in enumerate(CASES):
      module, config, params = _model(family, rope_name, i)
      apply = jax.jit(module.apply)
      ref = np.asarray(apply({'params': params},
                             jnp.asarray([tokens])))[0]
      for dtype in gguf_io.DTYPES:
        path = os.path.join(tmp, f'{family}-{rope_name}-{dtype}.gguf')
        gguf_io.save_gguf(path, family, config, params, tok, dtype=dtype,
                          name=f'tiny {family} {rope_name}')
        _, config2, params2, _ = gguf_io.load_gguf(path)
        module2, _ = llama.build(**dataclasses.asdict(config2))
        back = np.asarray(jax.jit(module2.apply)(
            {'params': params2}, jnp.asarray([tokens])))[0]
        out = os.path.join(tmp, 'logits.npy')
        proc = subprocess.run(
            [args.llama_cpp_python, '-c', _RUNNER, path, tokens_path, out],
            capture_output=True, text=True, check=False)
        if proc.returncode:
          raise RuntimeError(f'llama.cpp failed on {path}: {proc.stderr}')
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        version = info['version']
        cpp = np.load(out)
        row = dict(family=family, rope=rope_name, dtype=dtype,
                   rel_err_vs_float32=_rel(cpp, ref),
                   rel_err_vs_dpjax_reader=_rel(cpp, back),
                   reader_vs_float32=_rel(back, ref),
                   argmax_agreement=float(np.mean(
                       cpp.argmax(-1) == ref.argmax(-1))),
                   chat_template_seen=info['chat_template'] == TEMPLATE,
                   name_seen=info['name'] == f'tiny {family} {rope_name}')
        if rope_name != 'plain':
          plain, _ = llama.build(**dict(dataclasses.asdict(config),
                                        rope_scaling=None))
          row['rel_err_if_rope_ignored'] = _rel(
              np.asarray(jax.jit(plain.apply)(
                  {'params': params}, jnp.asarray([tokens])))[0], ref)
        rows.append(row)
        print(json.dumps(row), flush=True)
  commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True,
                          text=True, check=False).stdout.strip()
  result = dict(
      what=('max |logits_llama.cpp - logits_dpjax| / max |logits_dpjax| on '
            f'{T} tokens of a tiny random model (hidden 64, 2 layers, '
            'head_dim 16, max_position_embeddings 256; llama3 RoPE with '
            'original context 64, so positions past 64 use scaled '
            'frequencies)'),
      llama_cpp_python=version, commit=commit,
      date=datetime.date.today().isoformat(), rows=rows)
  with open(args.out + '.json', 'w') as f:
    json.dump(result, f, indent=2)
  lines = ['# dpjax GGUF exports in real llama.cpp', '',
           f'llama-cpp-python {version}; commit {commit[:10]}; '
           f'{result["date"]}. {result["what"]}.', '',
           '| family | RoPE | dtype | vs dpjax float32 | vs dpjax reader '
           '| reader vs float32 | argmax agree | if RoPE ignored '
           '| chat template | general.name |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    ignored = r.get('rel_err_if_rope_ignored')
    lines.append(
        f"| {r['family']} | {r['rope']} | {r['dtype']} | "
        f"{r['rel_err_vs_float32']:.1e} | {r['rel_err_vs_dpjax_reader']:.1e} "
        f"| {r['reader_vs_float32']:.1e} | {r['argmax_agreement']:.3f} | "
        f"{'-' if ignored is None else f'{ignored:.1e}'} | "
        f"{'yes' if r['chat_template_seen'] else 'NO'} | "
        f"{'yes' if r['name_seen'] else 'NO'} |")
  with open(args.out + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(main())
