"""The one training step and its gradient engines (dpjax.grad_engines)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import clipping
from dpjax import configuration
from dpjax import grad_engines
from dpjax import optimizers
from dpjax import run_setup
from dpjax import steps as steps_lib
from tests.audit_helpers import tiny_config

_FAST = {'xla_backend_optimization_level': 0}


def _loss(params, frozen, example, key):
  del frozen, key
  return jnp.mean((jnp.tanh(example['x'] @ params['w']) - example['y']) ** 2)


def _problem(n=8):
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)}
  batch = {'x': jnp.asarray(3 * rng.normal(size=(n, 5)), jnp.float32),
           'y': jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)}
  return params, batch


def test_step_equals_clipped_sum_then_the_optax_chain():
  """The stage-by-stage step is `optax.chain` of the post-clip stages on the
  engine's clipped sum (the old step), noise included."""
  params, batch = _problem()
  mask = jnp.asarray([1, 1, 0, 1, 1, 1, 1, 0], jnp.float32)
  stages = optimizers.dp_stages(l2_clip_norm=0.5, noise_multiplier=1.0,
                                expected_batch_size=6.0, learning_rate=1e-2,
                                key=jax.random.key(3), ema_decay=0.9)
  step = jax.jit(steps_lib.vmap_train_step(_loss, stages, l2_clip_norm=0.5,
                                           microbatch_size=4))
  opt_state = optimizers.chain(stages).init(params)
  state = steps_lib.TrainState(jnp.zeros((), jnp.int32), params, opt_state)
  ids = jnp.arange(8)
  new, metrics = step(state, {}, batch, mask, jax.random.key(1), ids)

  keys = steps_lib.record_keys(jax.random.key(1), state.step, ids)
  total, _, _ = clipping.microbatched_clipped_sum(
      lambda p, ex, k: _loss(p, {}, ex, k), params, batch, mask, keys,
      l2_clip_norm=0.5, microbatch_size=4)
  updates, post = optimizers.post_clip(stages).update(total, opt_state[1:],
                                                      params)
  np.testing.assert_allclose(new.trainable['w'],
                             optax.apply_updates(params, updates)['w'],
                             rtol=1e-6, atol=1e-7)
  for a, b in zip(jax.tree.leaves(new.opt_state[1:]), jax.tree.leaves(post)):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(metrics['batch_size']) == 6


def test_nonprivate_engine_is_the_plain_gradient_sum():
  params, batch = _problem()
  mask = jnp.ones((8,), jnp.float32)
  keys = jax.random.split(jax.random.key(0), 8)
  out = grad_engines.NonPrivateEngine(_loss, 4).clipped_sum(
      params, {}, batch, mask, keys, clip_norm=1.0, step=jnp.zeros((), int))
  ref = jax.grad(lambda p: sum(_loss(p, {}, {k: v[i] for k, v in
                                             batch.items()}, None)
                               for i in range(8)))(params)
  np.testing.assert_allclose(out.clipped_sum['w'], ref['w'], rtol=1e-5)


class _Temperature(nn.Module):
  """A Dense model with a bare parameter no book-keeping tap covers."""

  @nn.compact
  def __call__(self, x):
    t = self.param('temperature', nn.initializers.ones, ())
    return nn.Dense(3, name='dense')(x) / t


def test_select_auto_falls_back_naming_the_leaf_and_bookkeeping_refuses():
  module = _Temperature()
  params = module.init(jax.random.key(0), jnp.zeros((1, 5)))['params']

  def loss(p, frozen, ex, key):
    del frozen, key
    return jnp.sum((module.apply({'params': p}, ex['x'][None])[0]
                    - ex['y']) ** 2)
  _, batch = _problem(4)
  keys = jax.random.split(jax.random.key(0), 4)
  kw = dict(loss_fn=loss, trainable=params, frozen={}, example_batch=batch,
            keys=keys, microbatch_size=4)
  choice = grad_engines.select('auto', **kw)
  assert choice.engine.name == 'vmap' and 'temperature' in choice.reason
  with pytest.raises(ValueError, match='temperature'):
    grad_engines.select('bookkeeping', **kw)
  covered = {'dense': params['dense']}
  loss2 = lambda p, f, ex, k: loss({**p, 'temperature': 1.0}, f, ex, k)
  choice = grad_engines.select('auto', **dict(kw, loss_fn=loss2,
                                              trainable=covered))
  assert choice.engine.name == 'bookkeeping'
  assert grad_engines.select('vmap', **kw).engine.name == 'vmap'
  l1 = grad_engines.select('auto', **dict(kw, loss_fn=loss2,
                                          trainable=covered), norm_ord=1)
  assert l1.engine.name == 'vmap' and 'L1' in l1.reason
  with pytest.raises(ValueError, match='grad_engine must be'):
    grad_engines.select('ghost', **kw)


def _one_step(config, steps=2):
  model, data, plan, _ = run_setup.build_inputs(config)
  stages, fn, _ = run_setup.build_stages(config, plan, jax.random.key(5))
  choice = run_setup.build_engine(config, model, plan,
                                  run_setup.rgp_key(config), data)
  step = jax.jit(run_setup.make_step(config, model, stages, plan, fn,
                                     run_setup.rgp_key(config), data,
                                     choice=choice))
  state = steps_lib.TrainState(jnp.zeros((), jnp.int32), model.trainable,
                               optimizers.chain(stages).init(model.trainable))
  b = config.train.max_batch_size
  mask = jnp.asarray((np.arange(b) < b - 5).astype(np.float32))
  compiled = None
  for t in range(steps):
    idx = np.arange(t * b, (t + 1) * b)
    batch = {k: jnp.asarray(v[idx]) for k, v in data.train.items()}
    args = (state, model.frozen, batch, mask, jax.random.key(1),
            jnp.asarray(idx))
    # Unoptimised XLA:CPU compiles these tiny steps ~3x faster.
    compiled = compiled or step.lower(*args).compile(compiler_options=_FAST)
    state, metrics = compiled(*args)
  return choice, state, metrics


# The clip styles and LoRA are also covered, faster, by test_bookkeeping
# (clipped sums) and test_audit (replays): those two cases are `slow`.
@pytest.mark.parametrize('overrides', [
    pytest.param({'model.dropout_rate': 0.1}, id='dropout'),
    pytest.param({'peft.mode': 'lora', 'dp.l2_clip_norm': 0.2,
                  'train.clip_style': 'per_layer'}, id='lora_per_layer',
                 marks=pytest.mark.slow),
    pytest.param({'dp_adam_ac.enabled': True,
                  'dp_adam_ac.initial_clip_norm': 1.5,
                  'dp_adam_ac.count_centered': False,
                  'dp_adam_ac.count_noise_std': 5.0}, id='dp_adam_ac'),
    pytest.param({'train.clip_style': 'automatic'}, id='automatic',
                 marks=pytest.mark.slow),
])
def test_bookkeeping_trains_as_the_vmap_engine(overrides):
  """Two trainer steps (noise on, same keys) from the same state: the
  book-keeping engine's parameters and metrics equal the vmap engine's."""
  out = {}
  for engine in ('vmap', 'bookkeeping'):
    config = tiny_config(**dict(overrides, **{'train.grad_engine': engine}))
    choice, state, metrics = _one_step(config)
    assert choice.engine.name == engine
    out[engine] = (state, metrics)
  (a, ma), (b, mb) = out['vmap'], out['bookkeeping']
  scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(a.trainable))
  diff = max(float(jnp.max(jnp.abs(x - y))) for x, y in
             zip(jax.tree.leaves(a.trainable), jax.tree.leaves(b.trainable)))
  assert diff <= 1e-5 * scale, diff
  for k in ('clip_fraction', 'mean_grad_norm', 'train_loss', 'clip_norm'):
    np.testing.assert_allclose(ma[k], mb[k], rtol=1e-5, err_msg=k)


def test_auto_picks_bookkeeping_where_covered_and_vmap_elsewhere():
  auto = lambda **o: _engine(tiny_config(**o))
  assert auto().engine.name == 'bookkeeping'
  assert auto(**{'dp.mechanism': 'lmo', 'dp.l1_clip_norm': 2.0}
              ).engine.name == 'vmap'
  assert auto(**{'peft.mode': 'rgp'}).engine.name == 'rgp'
  assert auto(**{'dp.enabled': False}).engine.name == 'nonprivate'
  with pytest.raises(configuration.ConfigError, match='train.grad_engine'):
    _engine(tiny_config(**{'train.grad_engine': 'bookkeeping',
                           'dp.mechanism': 'lmo', 'dp.l1_clip_norm': 2.0}))
  with pytest.raises(configuration.ConfigError, match='train.grad_engine'):
    _engine(tiny_config(**{'train.grad_engine': 'bookkeeping',
                           'peft.mode': 'rgp'}))
  with pytest.raises(configuration.ConfigError, match='train.clip_style'):
    _engine(tiny_config(**{'train.clip_style': 'per_layer',
                           'dp_adam_ac.enabled': True}))
  with pytest.raises(configuration.ConfigError, match='train.grad_engine'):
    _engine(tiny_config(**{'train.grad_engine': 'ghost'}))


def _engine(config):
  model, data, plan, _ = run_setup.build_inputs(config)
  return run_setup.build_engine(config, model, plan,
                                run_setup.rgp_key(config), data)
