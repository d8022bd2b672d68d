"""Mixed precision: bfloat16 compute on float32 master weights.

`config.model.dtype='bfloat16'` with `param_dtype='float32'` must run the
per-example forward and backward in bfloat16 while the parameters, the
optimizer state, the per-example gradients, the clipped sum, its
accumulation and the noise stay float32 (the float32 rule of
`dpjax.clipping` / `dpjax.noise`), for random init and for loaded HF / GGUF
checkpoints of every family.

Whether a computation ran in bfloat16 is read off the lowered StableHLO of
the jitted function: the result type of every `dot_general` (tracing and
lowering only, no compilation).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import debug
from dpjax import clipping
from dpjax import configuration
from dpjax import model_setup
from dpjax import models
from dpjax import noise
from dpjax import optimizers
from dpjax import run_setup
from dpjax import steps as steps_lib
from dpjax import train
from dpjax.models import gguf_io
from dpjax.models import hf_io

BF16, F32 = 'bfloat16', 'float32'


def _dot_lines(fn, *args) -> list[str]:
  """The `dot_general` ops of `jit(fn)`'s lowered StableHLO."""
  text = jax.jit(fn).lower(*args).as_text()
  return [l for l in text.splitlines() if 'stablehlo.dot_general' in l]


def _is_bf16(line: str) -> bool:
  return 'xbf16>' in line.rsplit('->', 1)[-1]


def _dots(fn, *args) -> tuple[int, int]:
  """(bfloat16 dot_generals, all dot_generals) in `jit(fn)`'s lowered HLO."""
  lines = _dot_lines(fn, *args)
  return sum(map(_is_bf16, lines)), len(lines)


def _dtypes(tree) -> set[str]:
  return {jnp.result_type(x).name for x in jax.tree.leaves(tree)
          if jnp.issubdtype(jnp.result_type(x), jnp.floating)}


def _n_kernels(params) -> int:
  """Matrices of the model: each is one matmul of the forward pass."""
  return sum(x.ndim == 2 and 'embed' not in jax.tree_util.keystr(path)
             and 'wte' not in jax.tree_util.keystr(path)
             and 'wpe' not in jax.tree_util.keystr(path)
             for path, x in jax.tree_util.tree_leaves_with_path(params))


# ----------------------------------------------------------------------------
# (a) The trainer's step: bfloat16 matmuls, float32 everything DP.


def _spy(monkeypatch):
  """Records (at trace time) the dtypes the DP stages see and emit."""
  seen = {'per_example_grads': set(), 'clipped_sum': set(),
          'accumulated_sum': set(), 'noise': set(), 'noised_sum': set(),
          'noise_input': set()}
  pe, cs, mcs = (clipping.per_example_grads, clipping.clipped_sum,
                 clipping.microbatched_clipped_sum)
  tg, add = noise.tree_gaussian, noise.add_float32

  def per_example_grads(loss_fn):
    fn = pe(loss_fn)

    def run(*a):
      losses, grads = fn(*a)
      seen['per_example_grads'] |= _dtypes(grads)
      return losses, grads
    return run

  def clipped_sum(*a, **k):
    out = cs(*a, **k)
    seen['clipped_sum'] |= _dtypes(out[0])
    return out

  def microbatched_clipped_sum(*a, **k):
    out = mcs(*a, **k)
    seen['accumulated_sum'] |= _dtypes(out[0])
    return out

  def tree_gaussian(*a, **k):
    out = tg(*a, **k)
    seen['noise'] |= _dtypes(out)
    return out

  def add_float32(updates, z):
    out = add(updates, z)
    seen['noise_input'] |= _dtypes(updates)
    seen['noised_sum'] |= _dtypes(out)
    return out

  monkeypatch.setattr(clipping, 'per_example_grads', per_example_grads)
  monkeypatch.setattr(clipping, 'clipped_sum', clipped_sum)
  monkeypatch.setattr(clipping, 'microbatched_clipped_sum',
                      microbatched_clipped_sum)
  monkeypatch.setattr(noise, 'tree_gaussian', tree_gaussian)
  monkeypatch.setattr(noise, 'add_float32', add_float32)
  return seen


def _trainer_step(config):
  """The trainer's jitted step and its arguments (as `train` builds them)."""
  model, data, plan, _ = run_setup.build_inputs(config)
  stages, clip_norm_fn, _ = run_setup.build_stages(config, plan,
                                                   jax.random.key(1))
  tx = optimizers.chain(stages)
  state = steps_lib.TrainState(jnp.zeros((), jnp.int32), model.trainable,
                               tx.init(model.trainable))
  b = config.train.max_batch_size
  batch = {k: jnp.asarray(v[:b]) for k, v in data.train.items()}
  args = (state, model.frozen, batch, jnp.ones((b,), jnp.float32),
          jax.random.key(2), jnp.arange(b, dtype=jnp.int32))
  step = run_setup.make_step(config, model, stages, plan, clip_norm_fn,
                             run_setup.rgp_key(config), data)
  return model, step, args


@pytest.fixture(scope='module')
def trainer_steps():
  """{dtype: (model, step, args)} for debug configs on float32 weights."""
  out = {}
  for dtype in (F32, BF16):
    config = debug.get_config()
    config.model.update(dtype=dtype, param_dtype=F32)
    config.dp.update(noise_multiplier=1.0, accountant='rdp')  # no calibration
    # The per-example-gradient engine (its HIGHEST-precision clip-factor
    # contraction is what this test counts); book-keeping is compared with
    # it in tests/test_bookkeeping.py.
    config.train.grad_engine = 'vmap'
    out[dtype] = _trainer_step(config)
  return out


@pytest.mark.parametrize('dtype', [F32, BF16])
def test_trainer_step_runs_bf16_matmuls_on_float32_dp_state(
    dtype, trainer_steps, monkeypatch):
  model, step, args = trainer_steps[dtype]
  assert model.config.dtype == dtype
  seen = _spy(monkeypatch)   # records while the step is traced below
  lines = _dot_lines(step, *args)
  # The clipped sum contracts the clip factors [m] with each leaf's
  # per-example gradients [m, ...] at HIGHEST precision: one float32
  # dot_general per trainable leaf (dpjax.clipping.clipped_sum).
  summing = [l for l in lines if 'HIGHEST' in l]
  model_dots = [l for l in lines if 'HIGHEST' not in l]
  assert len(summing) == len(jax.tree.leaves(args[0].trainable))
  assert not any(map(_is_bf16, summing))
  assert len(model_dots) > 3 * _n_kernels(args[0].trainable)
  # Forward and backward: every matmul of the model in the compute dtype.
  assert sum(map(_is_bf16, model_dots)) == (len(model_dots) if dtype == BF16
                                            else 0)
  # Master weights, optimizer state and all of the DP arithmetic: float32.
  state = args[0]
  assert _dtypes(state.trainable) == {F32}
  assert _dtypes(state.opt_state) == {F32}
  for what, got in seen.items():
    assert got == {F32}, (what, got)


def test_bf16_logits_are_float32_and_close_to_float32_compute(trainer_steps):
  (m32, _, _), (m16, _, _) = trainer_steps[F32], trainer_steps[BF16]
  # The same float32 parameters (init does not depend on the compute dtype).
  for a, b in zip(jax.tree.leaves(m32.trainable),
                  jax.tree.leaves(m16.trainable)):
    np.testing.assert_array_equal(a, b)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 258, (2, 32)))
  logits = {dtype: jax.jit(m.module.apply)({'params': m.trainable}, tokens)
            for dtype, m in ((F32, m32), (BF16, m16))}
  assert logits[BF16].dtype == jnp.float32
  diff = float(jnp.max(jnp.abs(logits[BF16] - logits[F32])))
  scale = float(jnp.max(jnp.abs(logits[F32])))
  # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per op): the
  # logits move by a few units of 2^-8 of their scale, never by zero.
  assert 0 < diff < 0.05 * scale, (diff, scale)


# ----------------------------------------------------------------------------
# (b) Loaded checkpoints and random init honour model.dtype / param_dtype.


_TINY = {
    'llama': dict(vocab_size=258, hidden_size=32, intermediate_size=64,
                  num_layers=1, num_heads=4, num_kv_heads=2),
    'qwen2': dict(vocab_size=258, hidden_size=32, intermediate_size=64,
                  num_layers=1, num_heads=4, num_kv_heads=2),
    'gpt2': dict(vocab_size=258, n_positions=64, n_embd=32, n_layer=1,
                 n_head=4),
    'bitnet': dict(vocab_size=258, hidden_size=32, intermediate_size=48,
                   num_hidden_layers=1, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64),
    'bert': dict(vocab_size=258, hidden_size=32, num_hidden_layers=1,
                 num_attention_heads=4, intermediate_size=37,
                 max_position_embeddings=40, head='none'),
}


def _checkpoint(tmp_path, family, saved_dtype, fmt='hf'):
  """A tiny checkpoint of `family` with weights stored in `saved_dtype`."""
  module, cfg = models.build_model(family, param_dtype=saved_dtype,
                                   **_TINY[family])
  shapes = jax.eval_shape(module.init, jax.random.key(0),
                          jnp.zeros((1, 8), jnp.int32))['params']
  rng = np.random.default_rng(0)   # no compilation: random finite weights
  params = jax.tree.map(
      lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), shapes)
  if fmt == 'gguf':
    path = str(tmp_path / 'm.gguf')
    gguf_io.save_gguf(path, family, cfg, params, None, dtype='f32')
    return path
  hf_io.save_hf_folder(str(tmp_path), family, cfg, params)
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['torch_dtype'] == saved_dtype
  return str(tmp_path)


def _record(family):
  if family == 'bert':
    return {'inputs': np.arange(10, dtype=np.int32) + 5,
            'attention_mask': np.ones((10,), np.int32), 'label': np.int32(1)}
  return {'inputs': np.arange(16, dtype=np.int32) + 5,
          'targets': np.arange(16, dtype=np.int32) + 6,
          'weights': np.ones((16,), np.float32)}


def _load(family, init, path, dtype, param_dtype):
  config = debug.get_config()
  config.model.update(family=family, init=init, path=path, dtype=dtype,
                      param_dtype=param_dtype)
  if family == 'bert':
    config.data.task = 'genre'   # the classifier head on the encoder
  return model_setup.create(config)


def _check(model, family, dtype, param_dtype):
  assert (model.config.dtype, model.config.param_dtype) == (dtype,
                                                            param_dtype)
  assert _dtypes(model.trainable) == {param_dtype}
  example = _record(family)
  n_bf16, n_dots = _dots(model.loss_fn, model.trainable, model.frozen,
                         example, jax.random.key(0))
  assert n_dots >= _n_kernels(model.trainable) > 0
  assert n_bf16 == (n_dots if dtype == BF16 else 0), (n_bf16, n_dots)
  loss = jax.eval_shape(model.loss_fn, model.trainable, model.frozen,
                        example, jax.random.key(0))
  assert loss.dtype == jnp.float32   # the loss sees float32 logits
  grads = jax.eval_shape(jax.grad(model.loss_fn), model.trainable,
                         model.frozen, example, jax.random.key(0))
  assert _dtypes(grads) == {param_dtype}


@pytest.mark.parametrize('family', sorted(_TINY))
def test_hf_checkpoint_honours_dtype_and_param_dtype(tmp_path, family):
  """A float32 checkpoint: bf16 compute on f32 weights, and bf16 weights."""
  path = _checkpoint(tmp_path, family, F32)
  _check(_load(family, 'hf', path, BF16, F32), family, BF16, F32)
  _check(_load(family, 'hf', path, F32, BF16), family, F32, BF16)


@pytest.mark.parametrize('family', ['gpt2', 'qwen2'])
def test_bf16_checkpoint_loads_as_float32_master_weights(tmp_path, family):
  """A checkpoint's own torch_dtype does not override the config."""
  path = _checkpoint(tmp_path, family, BF16)
  _check(_load(family, 'hf', path, BF16, F32), family, BF16, F32)
  _check(_load(family, 'hf', path, F32, F32), family, F32, F32)


def test_gguf_checkpoint_honours_dtype_and_param_dtype(tmp_path):
  path = _checkpoint(tmp_path, 'llama', F32, fmt='gguf')
  _check(_load('llama', 'gguf', path, BF16, F32), 'llama', BF16, F32)
  _check(_load('llama', 'gguf', path, BF16, BF16), 'llama', BF16, BF16)


@pytest.mark.parametrize('family', ['gpt2'])   # llama/qwen2: (a) above
def test_random_init_honours_dtype(family):
  config = debug.get_config()
  config.model.update(family=family, num_layers=1, dtype=BF16,
                      param_dtype=F32)
  _check(model_setup.create(config), family, BF16, F32)


@pytest.mark.parametrize('field', ['dtype', 'param_dtype'])
def test_unsupported_dtype_names_the_field(field):
  config = debug.get_config()
  config.model[field] = 'int8'
  with pytest.raises(configuration.ConfigError, match=f'model.{field}'):
    model_setup.create(config)


# ----------------------------------------------------------------------------
# (c) A short DP run: bf16 compute tracks float32 compute.


def _run(tmp_path, dtype):
  config = debug.get_config()
  config.model.update(dtype=dtype, param_dtype=F32, num_layers=1)
  # Research seed, for this comparison only: both runs draw the same Poisson
  # batches, dropout keys and noise, so only the compute dtype differs.
  config.dp.update(insecure_fixed_randomness_seed=0, noise_multiplier=1.0,
                   accountant='rdp', report_accountants=('rdp',))
  config.train.update(steps=4, eval_every=4, log_every=1, learning_rate=1e-2,
                      log_nonprivate_stats=True, checkpoint_every=100)
  workdir = str(tmp_path / dtype)
  out = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    train_loss = [r['train_loss'] for r in map(json.loads, f)
                  if 'train_loss' in r]
  return out, train_loss


@pytest.mark.slow  # 15 s; the step-level bf16 checks above stay fast
def test_short_dp_run_bf16_tracks_float32(tmp_path):
  (o32, l32), (o16, l16) = _run(tmp_path, F32), _run(tmp_path, BF16)
  assert len(l32) == len(l16) == 4
  assert _dtypes(o16['state'].trainable) == {F32}
  assert _dtypes(o16['state'].opt_state) == {F32}
  f32, bf16 = o32['final'], o16['final']
  # Tolerance 1e-2 nats. Measured differences are ~1e-4 (bfloat16 rounds
  # each op to 2^-9 relative; the losses are ~5.5 and the near-uniform
  # logits are small), and the tolerance is below a tenth of what these 4
  # steps train away (checked first), so a bf16 run that trained
  # differently, or not at all, would fail.
  tol = 1e-2
  assert f32['eval_loss_initial'] - f32['eval_loss'] > 5 * tol
  assert l32[0] - l32[-1] > 5 * tol
  np.testing.assert_allclose(l16, l32, rtol=0, atol=tol)
  for k in ('eval_loss_initial', 'eval_loss', 'eval_loss_ema'):
    assert abs(bf16[k] - f32[k]) < tol, (k, bf16[k], f32[k])
  # ... and bfloat16 really ran: the runs are not bitwise equal.
  assert l16 != l32
