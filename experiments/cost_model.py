"""A cost model of the DP step (FLOPs, per-device memory), fitted to compiles.

  python experiments/cost_model.py [--out experiments/results/cost_model.json]
      [--quick]  (6 of the 22 compiles; does not touch docs/scaling.md)
  python experiments/cost_model.py --from_json experiments/results/cost_model.json
      (refit, re-render and regenerate the doc block without compiling)
  python experiments/cost_model.py --check_doc  (exit 1 if the doc is stale)

Fits two small linear models to XLA's analyses of the trainer's DP-Adam-AC
step (`experiments/fsdp_memory.compile_step`: the real step, compiled
abstractly on simulated CPU devices) for Llama-style decoders in the seeds'
setting (bfloat16 compute, float32 parameters, remat, DP-Adam-AC), at small
sizes varying the model (d, layers, vocab), B_max, T, the micro-batch m,
full fine-tuning vs LoRA, the devices n on 'data' and the parameter sharding:

  FLOPs/step (n = 1) = a P_mm N + b P_wg N + c A B + d P_pe B + e P_t
    N = B_max T tokens (padding rows are computed: the step's time does not
    depend on the Poisson draw); P_mm = weight elements of every matmul of the
    forward (kernels, and the LM head: the embedding when tied); P_wg = those
    whose weight gradient is computed per example (all of P_mm under full
    fine-tuning; the LoRA target kernels under LoRA, since dpjax merges
    W + (alpha/r) A B before the forward); A = layers x heads x head_dim x T^2
    (attention); P_pe = per-example gradient elements (P_t, plus the target
    kernels under LoRA); P_t = trainable elements (noise, AdamW, EMA).
  temp bytes/device = sum_j w_j f_j over f = [4 P_t / k, 4 P_pe m/n,
    4 (P_t + P_f) (1 - 1/k), 4 P_f / k, (m/n) T d L 4, (m/n) T V 4, 1]
    k = n under FSDP and 1 when replicated; P_f = frozen elements; m/n is
    the per-device micro-batch; then peak = arguments (exact: state / k +
    frozen / k + batch) + temp.

Both are fitted by non-negative least squares on relative error; every
point's residual is reported. The FLOPs of a step sharded over n devices are
the n = 1 FLOPs / n plus replicated work; the fit reports the measured
sum-over-devices / single-device ratio. The model then PREDICTS the seeds'
steps (Qwen2.5-0.5B full, BitNet b1.58 2B-4T LoRA r=16, at the configs' B,
T, m) on common accelerators from vendor peak bf16 FLOP/s and HBM sizes, at
an ASSUMED model-FLOPs utilisation: predictions, not measurements. The
8-device FSDP compiles of the seeds (experiments/seed_model_compile.py) are
the out-of-sample check. Writes results/cost_model.{json,md} and regenerates
the block between the cost-model markers in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import fsdp_memory  # noqa: E402  pylint: disable=g-import-not-at-top  (sets XLA_FLAGS)
import seed_model_compile  # noqa: E402  pylint: disable=g-import-not-at-top
import step_benchmark  # noqa: E402  pylint: disable=g-import-not-at-top

import jax  # noqa: E402
import numpy as np  # noqa: E402
from scipy import optimize  # noqa: E402

from configs import default  # noqa: E402
from configs import dp_adam_ac_qwen2_0p5b_gpu as qwen_cfg  # noqa: E402
from dpjax import model_setup  # noqa: E402
from dpjax import rgp  # noqa: E402
from dpjax.models import peft as peft_lib  # noqa: E402

GIB = 2.0 ** 30
DOC = os.path.join(REPO, 'docs', 'scaling.md')
BEGIN, END = '<!-- cost_model:begin -->', '<!-- cost_model:end -->'

BASE = dict(vocab=2048, hidden=128, intermediate=384, layers=2, heads=4,
            kv_heads=2, head_dim=32, seq=64, batch=32, microbatch=8,
            peft='full', n=1, preset='replicated')
WIDE = dict(hidden=256, intermediate=768, heads=8)
VARIANTS = [
    {}, WIDE, {'layers': 4}, {'vocab': 8192}, {'seq': 32}, {'seq': 128},
    {'batch': 64}, {'microbatch': 4}, {'microbatch': 16},
    dict(WIDE, layers=4, vocab=8192),
    {'peft': 'lora'}, dict(WIDE, peft='lora'),
    {'n': 2, 'preset': 'fsdp'}, {'n': 4, 'preset': 'fsdp'},
    {'n': 8, 'preset': 'fsdp'}, {'n': 8, 'preset': 'replicated'},
    {'n': 4, 'preset': 'replicated'},
    dict(WIDE, n=8, preset='fsdp'),
    {'n': 8, 'preset': 'fsdp', 'seq': 128},
    {'n': 8, 'preset': 'fsdp', 'microbatch': 16},
    dict(WIDE, n=8, preset='fsdp', peft='lora'),
    dict(WIDE, n=4, preset='fsdp', layers=4, vocab=8192),
]
QUICK = [0, 1, 4, 10, 14, 15]

# Vendor peak dense bf16 FLOP/s (no sparsity) and memory per device.
ACCELERATORS = [
    # name, HBM GiB (as sold, GB -> GiB), peak bf16 TFLOP/s, source
    ('NVIDIA H100 SXM 80GB', 80e9 / GIB, 989.0, 'NVIDIA H100 datasheet'),
    ('NVIDIA A100 80GB', 80e9 / GIB, 312.0, 'NVIDIA A100 datasheet'),
    ('NVIDIA A100 40GB', 40e9 / GIB, 312.0, 'NVIDIA A100 datasheet'),
    ('Google TPU v4 (32 GiB)', 32.0, 275.0, 'Cloud TPU v4 docs'),
    ('Google TPU v5e (16 GiB)', 16.0, 197.0, 'Cloud TPU v5e docs'),
]
ASSUMED_MFU = 0.25   # an assumption, not a measurement (see the notes)
USABLE = 0.9         # fraction of HBM the step may use (runtime, fragmentation)
FLOP_NAMES = ['a (P_mm N)', 'b (P_wg N)', 'c (A B)', 'd (P_pe B)',
              'e (P_t)']
TEMP_NAMES = ['state-sized f32 (4 P_t / k)', 'per-example grads (4 P_pe m/n)',
              'all-gathered weights (4 P (1 - 1/k))', 'frozen-sized (4 P_f / k)',
              'activations ((m/n) T d L 4)', 'logits ((m/n) T V 4)',
              'constant (bytes)']


def fit_config(v: dict):
  """A Llama-style decoder run in the seeds' setting for variant `v`."""
  s = dict(BASE, **v)
  c = default.get_config()
  c.model.update(family='llama', init='random', path='',
                 vocab_size=s['vocab'], hidden_size=s['hidden'],
                 intermediate_size=s['intermediate'], num_layers=s['layers'],
                 num_heads=s['heads'], num_kv_heads=s['kv_heads'],
                 head_dim=s['head_dim'],
                 max_position_embeddings=max(64, s['seq']),
                 dtype='bfloat16', param_dtype='float32', remat=True)
  if s['peft'] == 'lora':
    c.peft.update(mode='lora', lora_rank=16, lora_alpha=32.0,
                  lora_targets=r'.*self_attn/(q|k|v|o)_proj.*')
  c.data.update(seq_len=s['seq'], max_train_records=4096, max_eval_records=32,
                eval_batch_size=32)
  c.train.update(batch_size=s['batch'] // 2, max_batch_size=s['batch'],
                 microbatch_size=s['microbatch'], optimizer='adamw',
                 weight_decay=0.01)
  c.dp.update(noise_multiplier=1.0)
  qwen_cfg.dp_adam_ac_section(c, expected_batch_size=s['batch'] // 2)
  c.mesh.update(data=s['n'], model=1, param_sharding=s['preset'])
  return c


def sizes(config) -> dict:
  """Parameter counts of the model `config` builds (abstractly)."""
  with fsdp_memory.abstract_models():
    model = model_setup.create(config)
  full = (model.trainable if config.peft.mode == 'full' else model.frozen)
  flat = rgp.flat_params(full)
  kernels = {p: int(np.prod(x.shape)) for p, x in flat.items()
             if p.endswith('kernel') and len(x.shape) == 2}
  p_mm = sum(kernels.values())
  if config.model.tie_embeddings:
    p_mm += int(np.prod(flat[next(p for p in flat
                                  if p.endswith('embedding'))].shape))
  p_t = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.trainable))
  p_f = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.frozen))
  if config.peft.mode == 'lora':
    targets = peft_lib.lora_target_paths(full, config.peft.lora_targets)
    p_wg = sum(kernels[t + '/kernel'] for t in targets)
    p_pe = p_wg + p_t
  else:
    p_wg, p_pe = p_mm, p_t
  m = config.model
  return dict(P_mm=p_mm, P_wg=p_wg, P_pe=p_pe, P_t=p_t, P_f=p_f,
              layers=m.num_layers, hidden=m.hidden_size, vocab=m.vocab_size,
              heads=m.num_heads, head_dim=m.head_dim)


def flop_features(z: dict, batch: int, seq: int) -> list[float]:
  n_tok = batch * seq
  attn = z['layers'] * z['heads'] * z['head_dim'] * seq ** 2
  return [z['P_mm'] * n_tok, z['P_wg'] * n_tok, attn * batch,
          z['P_pe'] * batch, z['P_t']]


def temp_features(z: dict, *, seq: int, micro: int, n: int,
                  preset: str) -> list[float]:
  k = n if preset == 'fsdp' else 1
  md = micro / n
  return [4 * z['P_t'] / k, 4 * z['P_pe'] * md,
          4 * (z['P_t'] + z['P_f']) * (1 - 1 / k), 4 * z['P_f'] / k,
          md * seq * z['hidden'] * z['layers'] * 4, md * seq * z['vocab'] * 4,
          1.0]


def nnls_relative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Non-negative w minimising sum ((x w - y) / y)^2."""
  scale = x.max(axis=0)
  scale[scale == 0] = 1.0
  w, _ = optimize.nnls((x / scale) / y[:, None], np.ones_like(y))
  return w / scale


def measure(quick: bool) -> list[dict]:
  rows = []
  variants = [VARIANTS[i] for i in QUICK] if quick else VARIANTS
  for v in variants:
    s = dict(BASE, **v)
    c = fit_config(v)
    rec = fsdp_memory.compile_step(c)
    z = sizes(c)
    row = dict(variant=v, settings=s, sizes=z,
               flops_step_per_device=rec['flops_step_per_device'],
               bytes_accessed_step_per_device=rec[
                   'bytes_accessed_step_per_device'],
               memory_per_device=rec['memory_per_device'],
               state_bytes_per_device=rec['state_bytes_per_device'],
               frozen_bytes_per_device=rec['frozen_bytes_per_device'],
               compile_seconds=rec['compile_seconds'])
    rows.append(row)
    print(f"{v}: {row['flops_step_per_device'] / 1e9:.2f} GFLOP/device, "
          f"temp {row['memory_per_device']['temp'] / 2**20:.1f} MiB",
          flush=True)
  return rows


def unroll_check() -> dict:
  """The scan-body correction of compile_step against a fully unrolled scan."""
  c = fit_config({})
  a = fsdp_memory.compile_step(c)
  b = fsdp_memory.compile_step(c, unroll=True, body_cost=False)
  return {'corrected_flops': a['flops_step_per_device'],
          'unrolled_flops': b['flops_step_per_device'],
          'xla_flops_uncorrected': a['flops_per_device_xla'],
          'relative_difference': (a['flops_step_per_device'] /
                                  b['flops_step_per_device'] - 1)}


def fit(rows: list[dict]) -> dict:
  one = [r for r in rows if r['settings']['n'] == 1]
  xf = np.array([flop_features(r['sizes'], r['settings']['batch'],
                               r['settings']['seq']) for r in one])
  yf = np.array([r['flops_step_per_device'] for r in one])
  wf = nnls_relative(xf, yf)
  for r, pred in zip(one, xf @ wf):
    r['flops_predicted'] = float(pred)
    r['flops_residual'] = float(pred / r['flops_step_per_device'] - 1)
  # Sharded steps: the devices' FLOPs together against the one-device FLOPs.
  for r in rows:
    s = r['settings']
    if s['n'] > 1:
      total = float(np.dot(flop_features(r['sizes'], s['batch'], s['seq']),
                           wf))
      r['flops_sum_over_devices_vs_predicted_total'] = (
          r['flops_step_per_device'] * s['n'] / total)
  xt = np.array([temp_features(r['sizes'], seq=r['settings']['seq'],
                               micro=r['settings']['microbatch'],
                               n=r['settings']['n'],
                               preset=r['settings']['preset']) for r in rows])
  yt = np.array([r['memory_per_device']['temp'] for r in rows], float)
  wt = nnls_relative(xt, yt)
  for r, pred in zip(rows, xt @ wt):
    m = r['memory_per_device']
    r['temp_predicted'] = float(pred)
    r['temp_residual'] = float(pred / m['temp'] - 1)
    r['peak_residual'] = float((m['peak'] - m['temp'] + pred) / m['peak'] - 1)
  res = lambda key: [abs(r[key]) for r in rows if key in r]
  return {
      'flops_coefficients': dict(zip(FLOP_NAMES, map(float, wf))),
      'temp_coefficients': dict(zip(TEMP_NAMES, map(float, wt))),
      'flops_abs_residual': {'max': max(res('flops_residual')),
                             'median': float(np.median(res(
                                 'flops_residual')))},
      'temp_abs_residual': {'max': max(res('temp_residual')),
                            'median': float(np.median(res('temp_residual')))},
      'peak_abs_residual': {'max': max(res('peak_residual')),
                            'median': float(np.median(res('peak_residual')))},
      'sharded_flops_ratio': [r['flops_sum_over_devices_vs_predicted_total']
                              for r in rows if r['settings']['n'] > 1],
  }


def predict(z: dict, wf, wt, *, batch: int, seq: int, micro: int, n: int,
            preset: str) -> dict:
  """Predicted FLOPs (total, per device) and per-device peak bytes."""
  total = float(np.dot(flop_features(z, batch, seq), wf))
  k = n if preset == 'fsdp' else 1
  args = (16 * z['P_t'] + 4 * z['P_f']) / k + batch / n * seq * 12
  temp = float(np.dot(temp_features(z, seq=seq, micro=micro, n=n,
                                    preset=preset), wt))
  return {'flops_total': total, 'flops_per_device': total / n,
          'arguments': args, 'temp': temp, 'peak': args + temp}


def seed_predictions(fitted: dict) -> dict:
  wf = np.array(list(fitted['flops_coefficients'].values()))
  wt = np.array(list(fitted['temp_coefficients'].values()))
  measured = {}
  path = os.path.join(HERE, 'results', 'seed_model_compile.json')
  if os.path.exists(path):
    with open(path) as f:
      measured = json.load(f)
  out = {}
  for name, (_, label) in seed_model_compile.SEEDS.items():
    c = seed_model_compile.seed_config(name, devices=1)
    z = sizes(c)
    t = c.train
    kw = dict(batch=t.max_batch_size, seq=c.data.seq_len,
              micro=t.microbatch_size)
    entry = {'label': label, 'sizes': z, 'batch_size': t.batch_size,
             'max_batch_size': t.max_batch_size, 'seq_len': c.data.seq_len,
             'microbatch_size': t.microbatch_size, 'peft': c.peft.mode,
             'family': c.model.family}
    p8 = predict(z, wf, wt, n=8, preset='fsdp', **kw)
    entry['predicted_8_fsdp'] = p8
    if name in measured and not measured['setup'].get('layers'):
      mr = measured[name]
      entry['measured_8_fsdp'] = {
          'flops_per_device': mr['flops_step_per_device'],
          'peak': mr['memory_per_device']['peak'],
          'temp': mr['memory_per_device']['temp']}
      entry['check_8_fsdp'] = {
          'flops_ratio': p8['flops_per_device'] / mr['flops_step_per_device'],
          'peak_ratio': p8['peak'] / mr['memory_per_device']['peak']}
    table = []
    for acc, hbm, tflops, _ in ACCELERATORS:
      choice = None
      for n in (1, 2, 4, 8, 16, 32, 64):
        # m >= n: at least one example per device in each micro-batch.
        kw_n = dict(kw, micro=max(kw['micro'], n))
        if t.max_batch_size % kw_n['micro']:
          continue
        for preset in ('replicated', 'fsdp'):
          if n == 1 and preset == 'fsdp':
            continue
          p = predict(z, wf, wt, n=n, preset=preset, **kw_n)
          p['microbatch_size'] = kw_n['micro']
          if p['peak'] <= USABLE * hbm * GIB:
            choice = (n, preset, p)
            break
        if choice:
          break
      if choice is None:
        table.append({'accelerator': acc, 'fits': False})
        continue
      n, preset, p = choice
      secs = p['flops_total'] / (n * tflops * 1e12 * ASSUMED_MFU)
      table.append({'accelerator': acc, 'fits': True, 'devices': n,
                    'param_sharding': preset,
                    'microbatch_size': p['microbatch_size'],
                    'peak_gib_per_device': p['peak'] / GIB,
                    'hbm_gib': hbm, 'flops_per_step': p['flops_total'],
                    'seconds_per_step_at_assumed_mfu': secs,
                    'expected_batch_per_second': t.batch_size / secs})
    entry['accelerators'] = table
    entry['one_device'] = predict(z, wf, wt, n=1, preset='replicated', **kw)
    out[name] = entry
  return out


def markdown(result: dict, *, heading: bool = True) -> str:
  f = result['fit']
  lines = []
  if heading:
    lines += ['# Cost model of the DP step (fitted to compiled analyses)', '',
              step_benchmark.provenance_line(result['setup']), '']
  lines += [
      f"Fitted on {len(result['rows'])} compiles of the trainer's DP-Adam-AC "
      'step (Llama-style decoders, bf16 compute, f32 parameters, remat; '
      f"{sum(1 for r in result['rows'] if r['settings']['n'] == 1)} on one "
      'device for FLOPs, all for memory), by non-negative least squares on '
      'relative error.', '',
      '**FLOPs per step** (one device; N = B_max T tokens, padding included):',
      '', '| term | coefficient |', '|---|---|']
  lines += [f'| {k} | {v:.3g} |' for k, v in f['flops_coefficients'].items()]
  lines += ['', f"Residuals: max {f['flops_abs_residual']['max']:.1%}, median "
            f"{f['flops_abs_residual']['median']:.1%}. Over n devices the "
            'devices together execute '
            f"{min(f['sharded_flops_ratio']):.2f}-"
            f"{max(f['sharded_flops_ratio']):.2f}x the one-device FLOPs "
            '(replicated optimizer work, the full-shape noise generator, '
            'resharding).', '',
            '**Temporary bytes per device** (peak = arguments + temp; '
            'arguments = (16 P_t + 4 P_f) / k + batch):', '',
            '| term | coefficient |', '|---|---|']
  lines += [f'| {k} | {v:.3g} |' for k, v in f['temp_coefficients'].items()]
  lines += ['', f"Residuals: temp max {f['temp_abs_residual']['max']:.1%}, "
            f"median {f['temp_abs_residual']['median']:.1%}; peak max "
            f"{f['peak_abs_residual']['max']:.1%}, median "
            f"{f['peak_abs_residual']['median']:.1%}.", '']
  u = result.get('unroll_check')
  if u:
    lines += [f"Scan correction check: XLA counts the micro-batch loop's body "
              f"once ({u['xla_flops_uncorrected'] / 1e9:.2f} GFLOP); the "
              f"corrected {u['corrected_flops'] / 1e9:.2f} GFLOP matches a "
              f"fully unrolled compile ({u['unrolled_flops'] / 1e9:.2f} "
              f"GFLOP) to {u['relative_difference']:+.2%}.", '']
  lines += ['<details><summary>Every fitted point</summary>', '',
            '| variant | n | sharding | GFLOP/device | FLOPs residual | temp MiB '
            '| temp residual | peak residual |', '|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    s = r['settings']
    v = ', '.join(f'{k}={x}' for k, x in r['variant'].items()
                  if k not in ('n', 'preset')) or 'base'
    fr = f"{r['flops_residual']:+.1%}" if 'flops_residual' in r else '-'
    lines.append(f"| {v} | {s['n']} | {s['preset']} | "
                 f"{r['flops_step_per_device'] / 1e9:.2f} | {fr} | "
                 f"{r['memory_per_device']['temp'] / 2**20:.1f} | "
                 f"{r['temp_residual']:+.1%} | {r['peak_residual']:+.1%} |")
  lines += ['', '</details>', '',
            '**PREDICTIONS for the seeds\' steps** (not measurements). '
            f'Step time = FLOPs / (n x peak bf16 FLOP/s x {ASSUMED_MFU:.0%}): '
            f'the {ASSUMED_MFU:.0%} model-FLOPs utilisation is an ASSUMPTION '
            '(per-example weight gradients are batched outer products of '
            'low arithmetic intensity; measure before planning a budget). '
            f'Smallest n (replicated first, then FSDP) whose predicted peak '
            f'fits {USABLE:.0%} of the device memory; the micro-batch m is '
            "the config's, raised to n when n is larger (one example per "
            'device per micro-batch).', '']
  for name, e in result['seeds'].items():
    z = e['sizes']
    lines += [f"*{e['label']}* ({e['peft']}, {z['P_t'] / 1e6:,.1f}M trainable"
              f" / {(z['P_t'] + z['P_f']) / 1e6:,.1f}M, B {e['batch_size']} "
              f"(B_max {e['max_batch_size']}) x T {e['seq_len']}, m "
              f"{e['microbatch_size']}): "
              f"{e['one_device']['flops_total'] / 1e12:,.0f} TFLOP per step; "
              f"one device would need "
              f"{e['one_device']['peak'] / GIB:.1f} GiB.", '']
    chk = e.get('check_8_fsdp')
    if chk:
      mr, pr = e['measured_8_fsdp'], e['predicted_8_fsdp']
      lines += [f"Out-of-sample check, 8 devices FSDP: predicted "
                f"{pr['flops_per_device'] / 1e12:.1f} TFLOP and "
                f"{pr['peak'] / GIB:.2f} GiB per device vs compiled "
                f"{mr['flops_per_device'] / 1e12:.1f} TFLOP and "
                f"{mr['peak'] / GIB:.2f} GiB (ratios "
                f"{chk['flops_ratio']:.2f}, {chk['peak_ratio']:.2f}).", '']
    lines += ['| accelerator | devices | sharding | m | predicted GiB/device | '
              's/step | expected records/s |', '|---|---|---|---|---|---|---|']
    for a in e['accelerators']:
      if not a['fits']:
        lines.append(f"| {a['accelerator']} | > 64 | - | - | - | - | - |")
        continue
      lines.append(f"| {a['accelerator']} | {a['devices']} | "
                   f"{a['param_sharding']} | {a['microbatch_size']} | "
                   f"{a['peak_gib_per_device']:.1f} "
                   f"of {a['hbm_gib']:.0f} | "
                   f"{a['seconds_per_step_at_assumed_mfu']:.2f} | "
                   f"{a['expected_batch_per_second']:.0f} |")
    lines.append('')
  lines.append('Peak bf16 FLOP/s (dense): ' + '; '.join(
      f'{a[0]} {a[2]:.0f} TFLOP/s ({a[3]})' for a in ACCELERATORS) + '.')
  lines.append('')
  return '\n'.join(lines)


def doc_block(text: str) -> str | None:
  """The generated block between the cost-model markers of `text`."""
  if BEGIN not in text or END not in text:
    return None
  return text.split(BEGIN, 1)[1].split(END, 1)[0]


def update_doc(result: dict) -> bool:
  """Regenerates the cost-model block of docs/scaling.md (if it has one)."""
  if not os.path.exists(DOC):
    return False
  text = open(DOC).read()
  if doc_block(text) is None:
    return False
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  body = markdown(result, heading=False)
  with open(DOC, 'w') as f:
    f.write(head + BEGIN + '\n' + body + END + tail)
  return True


def check_doc(path: str) -> int:
  """0 when docs/scaling.md's block is the rendering of the saved result."""
  with open(path) as f:
    result = json.load(f)
  block = doc_block(open(DOC).read())
  if block is None or block.strip() != markdown(result,
                                                heading=False).strip():
    print(f'{DOC} is not the rendering of {path}: run '
          'experiments/cost_model.py --from_json ' + path)
    return 1
  return 0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--out', default=os.path.join(HERE, 'results',
                                                'cost_model.json'))
  ap.add_argument('--quick', action='store_true')
  ap.add_argument('--from_json', default='',
                  help='refit and re-render from saved rows (no compiles)')
  ap.add_argument('--check_doc', action='store_true',
                  help='exit 1 unless docs/scaling.md renders --out')
  args = ap.parse_args()
  if args.check_doc:
    sys.exit(check_doc(args.out))
  t0 = time.perf_counter()
  if args.from_json:
    with open(args.from_json) as f:
      result = json.load(f)
  else:
    result = {'setup': dict(step_benchmark.run_info(), quick=args.quick,
                            assumed_mfu=ASSUMED_MFU, usable_hbm=USABLE),
              'rows': measure(args.quick), 'unroll_check': unroll_check()}
  result['fit'] = fit(result['rows'])
  result['seeds'] = seed_predictions(result['fit'])
  result['accelerators'] = [dict(zip(('name', 'hbm_gib', 'peak_bf16_tflops',
                                      'source'), a)) for a in ACCELERATORS]
  step_benchmark.write_result(result, args.out, markdown, t0)
  if result['setup'].get('quick'):
    print('--quick: docs/scaling.md not updated')
  else:
    print('docs/scaling.md updated' if update_doc(result) else
          'docs/scaling.md has no cost-model markers: not updated')


if __name__ == '__main__':
  main()
