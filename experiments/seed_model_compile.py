"""The seeds' full-size DP-Adam-AC steps compile on 8 devices with FSDP.

  python experiments/seed_model_compile.py [--models qwen2,bitnet]
      [--layers 0] [--out experiments/results/seed_model_compile.json]

For configs/dp_adam_ac_qwen2_0p5b_gpu.py (Qwen2.5-0.5B, full fine-tuning) and
configs/dp_adam_ac_bitnet2b_gpu.py (BitNet b1.58 2B-4T, LoRA r=16 on q,k,v,o),
the checkpoints are not on this machine, so the model is built with
`model.init='random'` from the same shape fields of the config, abstractly
(`jax.eval_shape`: nothing is allocated), with `data.tokenizer='byte'` (the
byte ids fit in the real vocabulary; the shapes are the config's). Everything
else is the config's: bfloat16 compute with float32 parameters, remat,
B_max 384 x seq 128, micro-batch 8, DP-Adam-AC (adaptive clipping, count
noise, AdamW, EMA), σ calibrated for the config's ε. The mesh is 8 simulated
CPU devices on 'data' with `mesh.param_sharding='fsdp'`.

The step is the trainer's (`experiments/fsdp_memory.compile_step`: run_setup's
build_inputs/build_stages/make_step, jitted with the state donated, inputs as
sharded `ShapeDtypeStruct`s). Reported per device: the parameters and
optimizer state from the shardings, XLA's memory analysis (arguments,
outputs, temporaries, peak) and cost analysis (FLOPs and bytes accessed of the
whole step: XLA counts the micro-batch scan's body once, so the body is
compiled alone and added n_micro - 1 more times). The HLO says what dtype
the dots compute in: as lowered by JAX (what the model asks for) and as
compiled by XLA:CPU (which may upcast bf16 dots to f32; a GPU or TPU keeps
them in bf16).

`--layers K` (K > 0) compiles a K-layer version of each model instead and
says so (the fallback when the full depth does not compile in time here).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import fsdp_memory  # noqa: E402  pylint: disable=g-import-not-at-top  (sets XLA_FLAGS)
import step_benchmark  # noqa: E402  pylint: disable=g-import-not-at-top

GIB = 2.0 ** 30

SEEDS = {
    'qwen2': ('configs.dp_adam_ac_qwen2_0p5b_gpu', 'Qwen2.5-0.5B'),
    'bitnet': ('configs.dp_adam_ac_bitnet2b_gpu', 'BitNet b1.58 2B-4T'),
}


def seed_config(name: str, *, devices: int = 8, layers: int = 0):
  """The seed config with random init of the same shapes, FSDP on `devices`."""
  module, _ = SEEDS[name]
  c = importlib.import_module(module).get_config()
  c.model.update(init='random', path='')
  c.data.tokenizer = 'byte'
  if layers:
    c.model.num_layers = layers
  c.mesh.update(data=devices, model=1, param_sharding='fsdp')
  return c


def run(models, layers: int) -> dict:
  out = {}
  for name in models:
    c = seed_config(name, layers=layers)
    t = time.perf_counter()
    rec = fsdp_memory.compile_step(c)
    rec['wall_seconds'] = time.perf_counter() - t
    rec['label'] = SEEDS[name][1]
    rec['config'] = SEEDS[name][0].replace('.', '/') + '.py'
    rec['settings'] = {
        'family': c.model.family, 'num_layers': c.model.num_layers,
        'hidden_size': c.model.hidden_size, 'vocab_size': c.model.vocab_size,
        'intermediate_size': c.model.intermediate_size,
        'dtype': c.model.dtype, 'param_dtype': c.model.param_dtype,
        'remat': c.model.remat, 'peft': c.peft.mode,
        'max_batch_size': c.train.max_batch_size,
        'batch_size': c.train.batch_size, 'seq_len': c.data.seq_len,
        'microbatch_size': c.train.microbatch_size,
        'dp_adam_ac': bool(c.dp_adam_ac.enabled),
        'mesh': f'{c.mesh.data}x{c.mesh.model}',
        'param_sharding': c.mesh.param_sharding}
    out[name] = rec
    m = rec['memory_per_device']
    print(f"{name}: peak {m['peak'] / GIB:.2f} GiB/device, "
          f"{rec['flops_step_per_device'] / 1e12:.2f} TFLOP/device, compile "
          f"{rec['compile_seconds']:.0f} s", flush=True)
  return out


def markdown(result: dict) -> str:
  s = result['setup']
  lines = [
      "# The seeds' DP-Adam-AC steps on 8 devices with FSDP (compiled)", '',
      'Random init of the configs\' shapes (the HF checkpoints are not on '
      'this machine), built abstractly; the trainer\'s DP-Adam-AC step '
      'lowered and compiled for 8 simulated CPU devices on \'data\' with '
      "mesh.param_sharding='fsdp', model.dtype='bfloat16', "
      "param_dtype='float32'. Per-device figures are XLA's analyses of the "
      'per-device SPMD program (CPU backend: a GPU or TPU compiler fuses and '
      'schedules differently, so read them as estimates of the same program). '
      'FLOPs and bytes accessed include every micro-batch of the scan '
      '(body compiled alone, added n_micro - 1 times). '
      + step_benchmark.provenance_line(s), '']
  if s.get('layers'):
    lines += [f"**Reduced depth: {s['layers']} layers** (see the note).", '']
  lines += [
      '| model | trainable / total params | B_max x T, m | state/device GiB '
      '| frozen/device GiB | arguments GiB | temp GiB | peak GiB | '
      'TFLOP/device/step | TB accessed/device/step | compile s |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  for name in s['models']:
    r = result[name]
    st, m = r['settings'], r['memory_per_device']
    lines.append(
        f"| {r['label']} ({st['peft']}, {st['num_layers']} layers) | "
        f"{r['trainable_params'] / 1e6:,.1f}M / "
        f"{(r['trainable_params'] + r['frozen_params']) / 1e6:,.1f}M | "
        f"{st['max_batch_size']} x {st['seq_len']}, {st['microbatch_size']} | "
        f"{r['state_bytes_per_device'] / GIB:.2f} | "
        f"{r['frozen_bytes_per_device'] / GIB:.2f} | "
        f"{m['argument'] / GIB:.2f} | {m['temp'] / GIB:.2f} | "
        f"{m['peak'] / GIB:.2f} | {r['flops_step_per_device'] / 1e12:.2f} | "
        f"{r['bytes_accessed_step_per_device'] / 1e12:.3f} | "
        f"{r['compile_seconds']:.0f} |")
  lines += ['', '| model | dots as lowered (JAX) | dots as compiled (XLA:CPU) '
            '| collectives (compiled) |', '|---|---|---|---|']
  for name in s['models']:
    h = result[name]['hlo']
    fmt = lambda d: ', '.join(f'{k} {v}' for k, v in d.items()) or '-'
    lines.append(f"| {result[name]['label']} | "
                 f"{fmt(h['lowered_dot_result_dtypes'])} | "
                 f"{fmt(h['compiled_dot_result_dtypes'])} | "
                 f"{fmt(h['collectives'])} |")
  lines += ['', NOTES]
  if result.get('notes'):
    lines += ['', result['notes']]
  lines.append('')
  return '\n'.join(lines)


NOTES = (
    'Dots: `bf16` are the model\'s matmuls (bfloat16 compute, as the config '
    'asks); `f32_clipped_sum` are the masked clipped-sum contractions (mask '
    'x per-example gradients, float32 at HIGHEST precision: the DP sum stays '
    'float32); the other `f32` dots (BitNet, LoRA) are the merges '
    'W + (alpha/r) A B of the 4 x 30 LoRA targets in the float32 parameter '
    'dtype (forward, and the two gradients). XLA:CPU upcasts every bf16 dot '
    'to f32 when it compiles; GPU and TPU compilers keep them bf16, so the '
    'CPU temporaries overstate the bf16 activations. State = trainable '
    'parameters + AdamW mu, nu + EMA (float32, sharded 1/8); frozen = the '
    'LoRA base weights (float32, sharded 1/8). Bytes accessed is XLA:CPU\'s '
    'count (operands and results of every HLO op after CPU fusion), a '
    'rough guide to memory traffic on other backends. With LoRA, dpjax '
    'merges A B into the kernel before the forward, so each example\'s '
    'gradient passes through a full-size gradient of every target kernel '
    '(per-example memory and FLOPs of q, k, v, o as under full '
    'fine-tuning of those kernels).')


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--models', default='qwen2,bitnet')
  ap.add_argument('--layers', type=int, default=0)
  ap.add_argument('--notes', default='')
  ap.add_argument('--out', default=os.path.join(HERE, 'results',
                                                'seed_model_compile.json'))
  ap.add_argument('--render_only', action='store_true',
                  help='re-render the .md from the saved JSON (no compiles)')
  args = ap.parse_args()
  t0 = time.perf_counter()
  if args.render_only:
    fsdp_memory.rerender(args.out, markdown)
    return
  models = args.models.split(',')
  setup = dict(step_benchmark.run_info(), models=models, layers=args.layers)
  result = dict(setup=setup, **run(models, args.layers))
  if args.notes:
    result['notes'] = args.notes
  step_benchmark.write_result(result, args.out, markdown, t0)


if __name__ == '__main__':
  main()
