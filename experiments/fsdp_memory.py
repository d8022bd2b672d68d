"""Per-device memory of the real DP training step: replicated vs FSDP, 1-8 devices.

  python experiments/fsdp_memory.py [--devices 1,2,4,8]
      [--out experiments/results/fsdp_memory.json]

The step is the one `dpjax.train` runs: `run_setup.build_inputs` (config
validation, data, privacy plan, mesh), `run_setup.build_stages` (DP-AdamW:
clip, Gaussian noise, 1/B, AdamW, EMA), `run_setup.make_step`, jitted with the
state donated, its TrainState and frozen parameters placed with
`sharding.config_shardings` and the batch with `sharding.batch_sharding`. The
model is built abstractly (`jax.eval_shape` around `model_setup.create`) and
the step is lowered with `jax.ShapeDtypeStruct` arguments that carry their
shardings, so nothing of the model is allocated: the figures are XLA's
compiled memory analysis (`compiled.memory_analysis()`) of the per-device SPMD
program on simulated CPU devices (`--xla_force_host_platform_device_count=8`).

Model: a Llama-style decoder of ~32M parameters (8 layers, d 512, MLP 1408,
vocab 8192, untied head), full fine-tuning, float32, batch B_max 32 x seq
64, micro-batch m = 8 (global: with n devices on 'data' each device holds
m / n examples of a micro-batch). Per device we report the parameters +
optimizer state (AdamW mu, nu and the EMA) computed from the shardings, and
XLA's argument / output / temporary / generated-code sizes and the peak
(arguments + outputs + temporaries - donated aliases).

The noise stage is compiled in its GPU/TPU form (no XLA:CPU fence, see
`dpjax.noise.noised_float32`), as these figures estimate those programs.

`compile_step` and `abstract_models` are shared with
experiments/seed_model_compile.py and experiments/cost_model.py.
"""

from __future__ import annotations

import os
import sys

_FLAG = '--xla_force_host_platform_device_count'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' {_FLAG}=8').strip()

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import step_benchmark  # noqa: E402  pylint: disable=g-import-not-at-top
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top
from dpjax import clipping  # noqa: E402  pylint: disable=g-import-not-at-top
from dpjax import model_setup  # noqa: E402  pylint: disable=g-import-not-at-top
from dpjax import noise  # noqa: E402  pylint: disable=g-import-not-at-top
from dpjax import optimizers  # noqa: E402  pylint: disable=g-import-not-at-top
from dpjax import run_setup  # noqa: E402  pylint: disable=g-import-not-at-top
from dpjax import sharding  # noqa: E402  pylint: disable=g-import-not-at-top
from dpjax import steps as steps_lib  # noqa: E402  pylint: disable=g-import-not-at-top
from dpjax.randomness import SecretRandomness  # noqa: E402  pylint: disable=g-import-not-at-top

# These figures estimate the programs GPU/TPU run, where
# `noise.noised_float32` does not fence the noise: the fence is an
# XLA:CPU-only workaround that lowers the CPU program's temporaries. Applies
# to every script importing this module (seed_model_compile.py,
# cost_model.py).
noise._fence_on = lambda: False  # pylint: disable=protected-access

GIB = 2.0 ** 30
MIB = 2.0 ** 20


@contextlib.contextmanager
def abstract_models():
  """`model_setup.create` builds shapes only (`jax.eval_shape`) inside.

  The returned `Model` has `ShapeDtypeStruct` trainable and frozen trees; its
  module, losses and combine are the real ones.
  """
  real = model_setup.create

  def create(config):
    holder = {}

    def build():
      model = real(config)
      holder['model'] = model
      return model.trainable, model.frozen

    trainable, frozen = jax.eval_shape(build)
    return dataclasses.replace(holder['model'], trainable=trainable,
                               frozen=frozen)

  model_setup.create = create
  try:
    yield
  finally:
    model_setup.create = real


def _leaf_bytes(leaf, sh=None) -> int:
  """Bytes of `leaf` (a ShapeDtypeStruct), per device under sharding `sh`."""
  shape = tuple(leaf.shape)
  if sh is not None:
    shape = tuple(sh.shard_shape(shape))
  dtype = leaf.dtype
  if jnp.issubdtype(dtype, jax.dtypes.prng_key):
    data = jax.eval_shape(jax.random.key_data,
                          jax.ShapeDtypeStruct((), dtype))
    return int(np.prod(shape, dtype=np.int64)) * int(
        np.prod(data.shape)) * data.dtype.itemsize
  return int(np.prod(shape, dtype=np.int64)) * jnp.dtype(dtype).itemsize


def _with_shardings(tree, shardings):
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree,
      shardings)


_COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all',
                'collective-permute')


def hlo_summary(lowered_text: str, compiled_text: str) -> dict:
  """Dot dtypes asked for by JAX (lowered) and run by XLA (compiled), and
  the collectives in the compiled per-device program.

  Lowered dots whose left operand is a rank-1 float32 vector contracted on
  axis 0 against a float32 operand are the masked clipped sum (weights [m]
  times per-example gradients [m, ...], `dpjax.clipping`): counted apart as
  `f32_clipped_sum`, so `bf16`/`f32` count the model's own matmuls.
  """
  lowered = collections.Counter()
  for line in lowered_text.splitlines():
    if 'stablehlo.dot_general' not in line:
      continue
    out = re.search(r'->\s*tensor<[^>]*x(bf16|f32|f16)>', line)
    if not out:
      continue
    kind = out.group(1)
    if (kind == 'f32' and 'contracting_dims = [0] x [0]' in line and
        re.search(r':\s*\(tensor<\d+xf32>,', line)):
      kind = 'f32_clipped_sum'
    lowered[kind] += 1
  compiled = collections.Counter(
      re.findall(r'= (bf16|f32|f16)\[[^\]]*\][^ ]* dot\(', compiled_text))
  count = lambda c, text: len(re.findall(rf'\b{c}(?:-start)?\(', text))
  coll = {c: count(c, compiled_text) for c in _COLLECTIVES}
  # Collectives inside while-loop bodies run once per micro-batch.
  bodies = set(re.findall(r'body=%?([\w.\-]+)', compiled_text))
  in_loop = collections.Counter()
  for comp in re.split(r'\n(?=(?:ENTRY )?%?[\w.\-]+ \(.*\) -> .*\{)',
                       compiled_text):
    name = re.match(r'\s*(?:ENTRY )?%?([\w.\-]+)', comp)
    if name and name.group(1) in bodies:
      for c in _COLLECTIVES:
        in_loop[c] += count(c, comp)
  return {'lowered_dot_result_dtypes': dict(sorted(lowered.items())),
          'compiled_dot_result_dtypes': dict(sorted(compiled.items())),
          'collectives': {k: v for k, v in coll.items() if v},
          'collectives_in_loop_bodies': {k: v for k, v in in_loop.items()
                                         if v}}


@contextlib.contextmanager
def unrolled_scans():
  """Every `jax.lax.scan` traced inside is fully unrolled (validation only:
  XLA's cost analysis then sees every micro-batch)."""
  real = jax.lax.scan

  def scan(*args, **kwargs):
    kwargs['unroll'] = True
    return real(*args, **kwargs)

  jax.lax.scan = scan
  try:
    yield
  finally:
    jax.lax.scan = real


def _cost(compiled) -> tuple[float, float]:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  return (float(ca.get('flops', float('nan'))),
          float(ca.get('bytes accessed', float('nan'))))


def compile_step(config, *, keep_text: bool = False,
                 body_cost: bool = True, unroll: bool = False) -> dict:
  """Lowers and compiles the trainer's DP step for `config`, abstractly.

  Returns a dict with the per-device state bytes (from the shardings), XLA's
  memory analysis (per device), its cost analysis (FLOPs, bytes accessed:
  per device, of the SPMD program), parameter counts, HLO dtype/collective
  summary and the lowering/compilation seconds.

  XLA's cost analysis counts the body of a while loop once, whatever its
  trip count, so the step's `lax.scan` over n_micro = B_max / m micro-batches
  is under-counted. With `body_cost`, one micro-batch of the same clipped
  sum (per-example gradients, norms, clip, masked sum: the scan's body) is
  compiled on its own with the same shardings, and
  `flops_step_per_device = flops + (n_micro - 1) * flops_body` (the same for
  bytes accessed). `unroll=True` unrolls the scan instead (small models only:
  the check of that correction in experiments/cost_model.py).
  """
  t0 = time.perf_counter()
  with abstract_models():
    model, data, plan, mesh = run_setup.build_inputs(config)
  secret = SecretRandomness.from_insecure_seed(0)
  stages, clip_norm_fn, _ = run_setup.build_stages(config, plan,
                                                   secret.noise_key())
  tx = optimizers.chain(stages)
  state = steps_lib.TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32), trainable=model.trainable,
      opt_state=jax.eval_shape(tx.init, model.trainable))
  state_sh = sharding.config_shardings(state, mesh, config)
  frozen_sh = sharding.config_shardings(model.frozen, mesh, config)
  state_in = _with_shardings(state, state_sh)
  frozen_in = _with_shardings(model.frozen, frozen_sh)
  bmax, seq = config.train.max_batch_size, config.data.seq_len
  bsh = sharding.batch_sharding(mesh)
  if config.data.task != 'lm':
    raise ValueError('compile_step builds causal-LM batches only')
  batch = {'inputs': jax.ShapeDtypeStruct((bmax, seq), jnp.int32, sharding=bsh),
           'targets': jax.ShapeDtypeStruct((bmax, seq), jnp.int32,
                                           sharding=bsh),
           'weights': jax.ShapeDtypeStruct((bmax, seq), jnp.float32,
                                           sharding=bsh)}
  mask = jax.ShapeDtypeStruct((bmax,), jnp.float32, sharding=bsh)
  ids = jax.ShapeDtypeStruct((bmax,), jnp.int32, sharding=bsh)
  dkey = jax.device_put(secret.dropout_key(), sharding.replicated(mesh))
  step = jax.jit(run_setup.make_step(config, model, stages, plan,
                                     clip_norm_fn, run_setup.rgp_key(config),
                                     data),
                 donate_argnums=(0,))
  t1 = time.perf_counter()
  with unrolled_scans() if unroll else contextlib.nullcontext():
    lowered = step.lower(state_in, frozen_in, batch, mask, dkey, ids)
  t2 = time.perf_counter()
  compiled = lowered.compile()
  t3 = time.perf_counter()
  ma = compiled.memory_analysis()
  flops, bytes_accessed = _cost(compiled)
  mem = {k: int(getattr(ma, f'{k}_size_in_bytes')) for k in
         ('argument', 'output', 'temp', 'alias', 'generated_code')}
  mem['peak'] = mem['argument'] + mem['output'] + mem['temp'] - mem['alias']

  def tree_bytes(tree, shs):
    leaves = jax.tree.leaves(tree)
    shs = [None] * len(leaves) if shs is None else jax.tree.leaves(shs)
    return sum(_leaf_bytes(x, s) for x, s in zip(leaves, shs))

  n_train = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      model.trainable))
  n_frozen = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.frozen))
  specs = [s.spec for s in jax.tree.leaves(state_sh.trainable)]
  out = {
      'devices_data': int(mesh.shape['data']),
      'devices_model': int(mesh.shape['model']),
      'param_sharding': config.mesh.param_sharding,
      'trainable_params': n_train, 'frozen_params': n_frozen,
      'trainable_leaves': len(specs),
      'trainable_leaves_sharded': sum(1 for s in specs if any(s)),
      'state_bytes_global': tree_bytes(state, None),
      'state_bytes_per_device': tree_bytes(state, state_sh),
      'params_bytes_per_device': tree_bytes(state.trainable,
                                            state_sh.trainable),
      'opt_state_bytes_per_device': tree_bytes(state.opt_state,
                                               state_sh.opt_state),
      'frozen_bytes_per_device': tree_bytes(model.frozen, frozen_sh),
      'memory_per_device': mem,
      'flops_per_device_xla': flops,
      'bytes_accessed_per_device_xla': bytes_accessed,
      'lower_seconds': t2 - t1, 'compile_seconds': t3 - t2,
      'build_seconds': t1 - t0,
      'noise_multiplier': plan.noise_multiplier,
  }
  n_micro = bmax // config.train.microbatch_size
  out['n_micro'] = n_micro
  if unroll or n_micro == 1:
    out['flops_step_per_device'] = flops
    out['bytes_accessed_step_per_device'] = bytes_accessed
  elif body_cost:
    fb, bb = _body_cost(config, model, plan, mesh, state_in.trainable,
                        frozen_in, dkey)
    out['flops_body_per_device'] = fb
    out['bytes_accessed_body_per_device'] = bb
    out['flops_step_per_device'] = flops + (n_micro - 1) * fb
    out['bytes_accessed_step_per_device'] = bytes_accessed + (n_micro - 1) * bb
  lowered_text = lowered.as_text()
  compiled_text = compiled.as_text()
  out['hlo'] = hlo_summary(lowered_text, compiled_text)
  if keep_text:
    out['_lowered_text'] = lowered_text
    out['_compiled_text'] = compiled_text
  return out


def _body_cost(config, model, plan, mesh, trainable_in, frozen_in, dkey):
  """(FLOPs, bytes accessed) per device of one micro-batch of the scan."""
  m, seq = config.train.microbatch_size, config.data.seq_len
  bsh = sharding.batch_sharding(mesh)
  batch = {k: jax.ShapeDtypeStruct((m, seq), dt, sharding=bsh) for k, dt in
           (('inputs', jnp.int32), ('targets', jnp.int32),
            ('weights', jnp.float32))}
  mask = jax.ShapeDtypeStruct((m,), jnp.float32, sharding=bsh)
  ids = jax.ShapeDtypeStruct((m,), jnp.int32, sharding=bsh)

  def body(trainable, frozen, batch, mask, dropout_key, record_ids):
    keys = steps_lib.record_keys(dropout_key, jnp.zeros((), jnp.int32),
                                 record_ids)
    record_loss = lambda p, ex, k: model.loss_fn(p, frozen, ex, k)
    return clipping.microbatched_clipped_sum(
        record_loss, trainable, batch, mask, keys,
        l2_clip_norm=jnp.float32(plan.clip_norm), microbatch_size=m,
        norm_ord=plan.clip_norm_ord)

  compiled = jax.jit(body).lower(trainable_in, frozen_in, batch, mask, dkey,
                                 ids).compile()
  return _cost(compiled)


def memory_config(n: int, preset: str, *, vocab=8192, hidden=512,
                  intermediate=1408, layers=8, heads=8, kv_heads=4,
                  head_dim=64, seq=64, batch=32, microbatch=8):
  """The ~32M-parameter full fine-tuning run on `n` devices of 'data'."""
  c = default.get_config()
  c.model.update(family='llama', init='random', path='', vocab_size=vocab,
                 hidden_size=hidden, intermediate_size=intermediate,
                 num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                 head_dim=head_dim, max_position_embeddings=max(seq, 64),
                 dtype='float32', param_dtype='float32')
  c.peft.mode = 'full'
  c.data.update(seq_len=seq, max_train_records=4096, max_eval_records=32,
                eval_batch_size=32)
  c.train.update(batch_size=batch // 2, max_batch_size=batch,
                 microbatch_size=microbatch, optimizer='adamw',
                 grad_engine='vmap')   # the per-example-gradient step
  # A fixed multiplier (no calibration): the step's graph is the calibrated
  # one's, with another constant.
  c.dp.update(noise_multiplier=1.0)
  c.mesh.update(data=n, model=1, param_sharding=preset)
  return c


def run(devices) -> dict:
  rows = []
  for n in devices:
    for preset in ('replicated', 'fsdp'):
      rec = compile_step(memory_config(n, preset))
      rows.append(rec)
      print(f"n={n} {preset}: state/device "
            f"{rec['state_bytes_per_device'] / MIB:.1f} MiB, peak "
            f"{rec['memory_per_device']['peak'] / MIB:.1f} MiB, compile "
            f"{rec['compile_seconds']:.1f} s", flush=True)
  base = {r['param_sharding']: r for r in rows if r['devices_data'] == 1}
  for r in rows:
    b = base[r['param_sharding']]
    r['ratio_to_1_device'] = {
        'state': r['state_bytes_per_device'] / b['state_bytes_per_device'],
        'argument': (r['memory_per_device']['argument'] /
                     b['memory_per_device']['argument']),
        'temp': r['memory_per_device']['temp'] / b['memory_per_device']['temp'],
        'peak': r['memory_per_device']['peak'] / b['memory_per_device']['peak'],
    }
  return {'rows': rows}


def markdown(result: dict) -> str:
  s = result['setup']
  rows = result['rows']
  lines = [
      '# Per-device memory of the DP step: replicated vs FSDP', '',
      f"The trainer's DP-AdamW step (per-example gradients in micro-batches "
      f"of {s['microbatch']}, clip, Gaussian noise, 1/B, AdamW, EMA) for a "
      f"Llama-style decoder of {rows[0]['trainable_params'] / 1e6:.1f}M "
      f"parameters ({s['layers']} layers, d {s['hidden']}, vocab "
      f"{s['vocab']}), full fine-tuning, float32, B_max {s['batch']} x seq "
      f"{s['seq']}; compiled abstractly for n simulated CPU devices on "
      "'data' (XLA memory analysis of the per-device program; nothing "
      'allocated). State = parameters + AdamW mu, nu + EMA, from the '
      'shardings. Peak = arguments + outputs + temporaries - donated aliases. '
      + step_benchmark.provenance_line(s), '',
      '| n | sharding | state/device MiB | ratio to n=1 | arguments MiB | '
      'temp MiB | peak MiB | peak ratio | sharded leaves | collectives |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    m = r['memory_per_device']
    coll = ', '.join(f'{k} {v}' for k, v in r['hlo']['collectives'].items())
    lines.append(
        f"| {r['devices_data']} | {r['param_sharding']} | "
        f"{r['state_bytes_per_device'] / MIB:.1f} | "
        f"{r['ratio_to_1_device']['state']:.3f} | {m['argument'] / MIB:.1f} | "
        f"{m['temp'] / MIB:.1f} | {m['peak'] / MIB:.1f} | "
        f"{r['ratio_to_1_device']['peak']:.3f} | "
        f"{r['trainable_leaves_sharded']}/{r['trainable_leaves']} | "
        f"{coll or '-'} |")
  lines += ['', notes(result), '']
  return '\n'.join(lines)


def notes(result: dict) -> str:
  """What the table shows, computed from its rows."""
  rows = result['rows']
  s = result['setup']
  by = {(r['devices_data'], r['param_sharding']): r for r in rows}
  n_max = max(r['devices_data'] for r in rows)
  f, rep = by[(n_max, 'fsdp')], by[(n_max, 'replicated')]
  one = by[(1, 'replicated')]
  p_bytes = one['params_bytes_per_device']
  ag_all = f['hlo']['collectives'].get('all-gather', 0)
  ag_out = ag_all - f['hlo'].get('collectives_in_loop_bodies', {}).get(
      'all-gather', 0)
  ratios = ', '.join(f"{r['ratio_to_1_device']['state']:.3f}" for r in rows
                     if r['param_sharding'] == 'fsdp')
  return (
      'Parameters + optimizer state per device under FSDP: '
      f'{ratios} of the one-device state (n = '
      f"{', '.join(str(r['devices_data']) for r in rows if r['param_sharding'] == 'fsdp')}"
      '): exactly 1/n for the sharded leaves; the '
      f"{f['trainable_leaves'] - f['trainable_leaves_sharded']} RMSNorm scales "
      f"(< {s['fsdp_min_size']} elements) stay replicated. Temporaries fall "
      'with n under both presets because the micro-batch is global: each '
      f"device holds the full-size per-example gradients of m / n = "
      f"{s['microbatch']} / n records. Replicated, they stop falling at "
      f"{rep['memory_per_device']['temp'] / p_bytes:.1f}x the parameter bytes "
      '(state-sized float32 buffers of the whole step); with FSDP at '
      f"n = {n_max} they are {f['memory_per_device']['temp'] / p_bytes:.1f}x "
      "the parameter bytes (XLA's analysis does not label its buffers). "
      f"The FSDP program runs {ag_out} of its {ag_all} all-gathers once per "
      'step, before the micro-batch loop (those gathered weights stay alive '
      f'through the loop), and {ag_all - ag_out} all-gathers and '
      f"{f['hlo'].get('collectives_in_loop_bodies', {}).get('all-reduce', 0)}"
      ' all-reduces in every micro-batch. Peak per device at n = '
      f"{n_max}: {f['memory_per_device']['peak'] / MIB:.0f} MiB with FSDP vs "
      f"{rep['memory_per_device']['peak'] / MIB:.0f} MiB replicated "
      f"({f['memory_per_device']['peak'] / rep['memory_per_device']['peak']:.2f}x).")


def rerender(path: str, render) -> None:
  """Rewrites the .md beside the result JSON `path` with `render` (no
  compiles): `--render_only` of this script and seed_model_compile.py."""
  with open(path) as f:
    result = json.load(f)
  with open(os.path.splitext(path)[0] + '.md', 'w') as f:
    f.write(render(result))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--devices', default='1,2,4,8')
  ap.add_argument('--out', default=os.path.join(HERE, 'results',
                                                'fsdp_memory.json'))
  ap.add_argument('--render_only', action='store_true',
                  help='re-render the .md from the saved JSON (no compiles)')
  args = ap.parse_args()
  t0 = time.perf_counter()
  if args.render_only:
    rerender(args.out, markdown)
    return
  devices = [int(x) for x in args.devices.split(',')]
  cfg = memory_config(1, 'fsdp')
  setup = dict(step_benchmark.run_info(), vocab=cfg.model.vocab_size,
               hidden=cfg.model.hidden_size, layers=cfg.model.num_layers,
               intermediate=cfg.model.intermediate_size,
               seq=cfg.data.seq_len, batch=cfg.train.max_batch_size,
               microbatch=cfg.train.microbatch_size,
               fsdp_min_size=cfg.mesh.fsdp_min_size, devices=devices)
  result = dict(setup=setup, **run(devices))
  step_benchmark.write_result(result, args.out, markdown, t0)


if __name__ == '__main__':
  main()
