"""Per-example gradients, clipping and the clipped sum, against loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import clipping


def _loss(params, example, key):
  del key
  h = jnp.tanh(example['x'] @ params['w1'] + params['b1'])
  pred = h @ params['w2']
  return jnp.mean((pred - example['y']) ** 2)


def _setup(n=12, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  params = {'w1': jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
            'b1': jnp.asarray(rng.normal(size=(7,)), jnp.float32),
            'w2': jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)}
  batch = {'x': jnp.asarray(scale * rng.normal(size=(n, 5)), jnp.float32),
           'y': jnp.asarray(rng.normal(size=(n, 3)), jnp.float32)}
  keys = jax.random.split(jax.random.key(0), n)
  return params, batch, keys


def _loop_grads(params, batch, keys):
  n = batch['x'].shape[0]
  return [jax.grad(_loss)(params, {k: v[i] for k, v in batch.items()},
                          keys[i]) for i in range(n)]


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_per_example_grads_equal_python_loop():
  params, batch, keys = _setup()
  _, vg = clipping.per_example_grads(_loss)(params, batch, keys)
  loop = _loop_grads(params, batch, keys)
  for i, g in enumerate(loop):
    np.testing.assert_allclose(
        _flat(jax.tree.map(lambda x: x[i], vg)), _flat(g), rtol=1e-5,
        atol=1e-6)


@pytest.mark.parametrize('clip', [0.01, 0.5, 1e6])
def test_clipped_sum_equals_loop(clip):
  params, batch, keys = _setup(scale=3.0)
  loop = _loop_grads(params, batch, keys)
  mask = np.ones(12, np.float32)
  mask[[3, 7]] = 0
  expected = sum(_flat(g) * min(1.0, clip / np.linalg.norm(_flat(g))) * m
                 for g, m in zip(loop, mask))
  _, per_ex = clipping.per_example_grads(_loss)(params, batch, keys)
  summed, norms = clipping.clipped_sum(per_ex, jnp.asarray(mask), clip)
  np.testing.assert_allclose(_flat(summed), expected, rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(norms, [np.linalg.norm(_flat(g)) for g in loop],
                             rtol=1e-5)


def test_sensitivity_add_or_remove_one_is_at_most_c():
  clip = 0.7
  for seed in range(5):
    params, batch, keys = _setup(n=8, seed=seed, scale=10.0)
    _, per_ex = clipping.per_example_grads(_loss)(params, batch, keys)
    full = np.ones(8, np.float32)
    s_full, _ = clipping.clipped_sum(per_ex, jnp.asarray(full), clip)
    for i in range(8):
      drop = full.copy()
      drop[i] = 0
      s_drop, _ = clipping.clipped_sum(per_ex, jnp.asarray(drop), clip)
      diff = np.linalg.norm(_flat(s_full) - _flat(s_drop))
      assert diff <= clip * (1 + 1e-5)
    # Big gradients: the bound is attained (every example clipped).
    assert diff > 0.99 * clip


def test_padding_contributes_nothing_and_all_padding_is_zero():
  params, batch, keys = _setup(n=8)
  garbage = jax.tree.map(lambda x: x.at[4:].set(1e6), batch)
  mask = jnp.asarray([1, 1, 1, 1, 0, 0, 0, 0], jnp.float32)
  kw = dict(l2_clip_norm=1.0, microbatch_size=4)
  a, sa, _ = clipping.microbatched_clipped_sum(_loss, params, batch, mask, keys,
                                               **kw)
  b, sb, _ = clipping.microbatched_clipped_sum(_loss, params, garbage, mask,
                                               keys, **kw)
  np.testing.assert_array_equal(_flat(a), _flat(b))
  assert float(sa.num_examples) == float(sb.num_examples) == 4
  z, sz, _ = clipping.microbatched_clipped_sum(
      _loss, params, garbage, jnp.zeros(8), keys, **kw)
  assert not np.any(_flat(z)) and float(sz.num_examples) == 0


def test_nan_example_is_dropped():
  params, batch, keys = _setup(n=4)
  bad = jax.tree.map(lambda x: x.at[1].set(jnp.nan), batch)
  _, per_ex = clipping.per_example_grads(_loss)(params, bad, keys)
  s, _ = clipping.clipped_sum(per_ex, jnp.ones(4), 1.0)
  _, per_ex_ok = clipping.per_example_grads(_loss)(params, batch, keys)
  s_ok, _ = clipping.clipped_sum(per_ex_ok, jnp.asarray([1., 0., 1., 1.]), 1.0)
  np.testing.assert_allclose(_flat(s), _flat(s_ok), rtol=1e-6)


@pytest.mark.parametrize('micro', [1, 2, 3, 6, 12])
def test_microbatched_equals_optax_stage_for_any_microbatch(micro):
  params, batch, keys = _setup(n=12, scale=2.0)
  mask = jnp.asarray(np.arange(12) % 5 != 0, jnp.float32)
  _, per_ex = clipping.per_example_grads(_loss)(params, batch, keys)
  stage = clipping.clip_and_sum(0.3)
  ref, _ = stage.update(per_ex, stage.init(params), params, mask=mask)
  got, stats, norms = jax.jit(
      lambda p, b, m, k: clipping.microbatched_clipped_sum(
          _loss, p, b, m, k, l2_clip_norm=0.3, microbatch_size=micro))(
              params, batch, mask, keys)
  np.testing.assert_allclose(_flat(got), _flat(ref), rtol=1e-5, atol=1e-6)
  real = np.asarray(mask) > 0  # skipped all-padding micro-batches report 0
  np.testing.assert_allclose(np.asarray(norms)[real],
                             np.asarray(clipping.global_norms(per_ex))[real],
                             rtol=1e-5)
  assert float(stats.num_examples) == float(mask.sum())


def test_clip_stage_rejects_aggregated_input_and_bad_clip():
  stage = clipping.clip_and_sum(1.0)
  with pytest.raises(ValueError, match='per-example'):
    stage.update({'a': jnp.ones(3), 'b': jnp.ones((4, 2))}, stage.init(None))
  with pytest.raises(ValueError, match='l2_clip_norm'):
    clipping.clip_and_sum(0.0)
  with pytest.raises(ValueError, match='microbatch_size'):
    params, batch, keys = _setup(n=12)
    clipping.microbatched_clipped_sum(_loss, params, batch, jnp.ones(12),
                                      keys, l2_clip_norm=1.0,
                                      microbatch_size=5)


def test_partly_non_finite_example_contributes_nothing():
  """One NaN coordinate makes the norm NaN: the example's finite coordinates
  (here 100) must not pass unclipped; a finite example is clipped to C."""
  per_ex = {'w': jnp.asarray([[jnp.nan, 100.0], [3.0, 4.0]], jnp.float32)}
  s, _ = clipping.clipped_sum(per_ex, jnp.ones(2), 1.0)
  np.testing.assert_allclose(np.asarray(s['w']), [0.6, 0.8], rtol=1e-6)


# ---------------------------------------------------------------------------
# Clip styles: per-layer and automatic clipping against loops.


def _leafwise(g):
  return [np.ravel(x) for x in jax.tree.leaves(g)]


def _style_loop(loop, mask, clip, style, gamma=clipping.AUTOMATIC_GAMMA):
  """The clipped sum by its definition (module docstring), leaf by leaf."""
  total = None
  for g, m in zip(loop, mask):
    leaves = _leafwise(g)
    n = np.sqrt(sum(np.sum(x ** 2) for x in leaves))
    if style == 'per_layer':
      bound = clip / np.sqrt(len(leaves))
      parts = [x * min(1.0, bound / np.linalg.norm(x)) for x in leaves]
    else:
      parts = [x * clip / (n + gamma) for x in leaves]
    flat = np.concatenate(parts) * m
    total = flat if total is None else total + flat
  return total


@pytest.mark.parametrize('style', ['per_layer', 'automatic'])
@pytest.mark.parametrize('clip', [0.05, 0.5, 50.0])
def test_clip_styles_equal_loop(style, clip):
  params, batch, keys = _setup(scale=3.0)
  loop = _loop_grads(params, batch, keys)
  mask = np.ones(12, np.float32)
  mask[[3, 7]] = 0
  total, stats, norms = clipping.microbatched_clipped_sum(
      _loss, params, batch, jnp.asarray(mask), keys, l2_clip_norm=clip,
      microbatch_size=4, clip_style=style)
  want = _style_loop(loop, mask, clip, style)
  # float32 sums of ten terms of up to ~35: errors scale with the largest
  # entry, not with each (possibly cancelled) entry.
  np.testing.assert_allclose(_flat(total), want, rtol=2e-5,
                             atol=1e-5 * np.max(np.abs(want)))
  np.testing.assert_allclose(norms, [np.linalg.norm(_flat(g)) for g in loop],
                             rtol=1e-5)
  assert float(stats.num_examples) == 10


def _big_per_example(n, seed):
  """Per-example 'gradients' far above any clip norm, on 3 leaves."""
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(1e3 * rng.normal(size=(n,) + s), jnp.float32)
          for k, s in (('b1', (7,)), ('w1', (5, 7)), ('w2', (7, 3)))}


@pytest.mark.parametrize('style', clipping.CLIP_STYLES)
def test_every_style_has_sensitivity_c_and_reaches_it(style):
  """Removing one example moves the sum by at most C in L2; with huge
  gradients every leaf is clipped, so per-layer reaches sqrt(L) (C/sqrt(L))
  = C: a per-leaf bound of C (the planted bug) would give sqrt(3) C."""
  clip = 0.7
  worst = 0.0
  for seed in range(3):
    per_ex = _big_per_example(8, seed)
    full = np.ones(8, np.float32)
    s_full, _, _ = clipping.styled_clipped_sum(per_ex, jnp.asarray(full), clip,
                                               style=style)
    for i in range(8):
      drop = full.copy()
      drop[i] = 0
      s_drop, _, _ = clipping.styled_clipped_sum(per_ex, jnp.asarray(drop),
                                                 clip, style=style)
      diff = np.linalg.norm(_flat(s_full) - _flat(s_drop))
      assert diff <= clip * (1 + 1e-5), (style, diff)
      worst = max(worst, diff)
  assert worst > 0.99 * clip


def test_per_layer_l1_bound_and_bad_styles():
  params, batch, keys = _setup(n=6)
  per_ex = _big_per_example(6, 0)
  s, _, clipped = clipping.styled_clipped_sum(
      jax.tree.map(lambda x: x[:1], per_ex), jnp.ones(1), 0.9,
      style='per_layer', norm_ord=1)
  assert abs(np.sum(np.abs(_flat(s))) - 0.9) < 1e-4   # 3 leaves of C/3 each
  assert float(clipped[0]) == 1.0
  with pytest.raises(ValueError, match='clip style'):
    clipping.microbatched_clipped_sum(_loss, params, batch, jnp.ones(6), keys,
                                      l2_clip_norm=1.0, microbatch_size=2,
                                      clip_style='perlayer')
  with pytest.raises(ValueError, match='gamma'):
    clipping.check_style('automatic', 0.0)
