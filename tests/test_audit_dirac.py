"""Dirac canaries (dpjax.audit.dirac, `python -m dpjax.audit mechanism`):
exact gradients of the canary loss, a correct run passes at a claimed
epsilon of 1, planted bugs (10x less noise than the ledger says; no
clipping) fail with exit code 1, bad usage exits 2.

The audited run: the tiny debug model (1 layer), N = 128 real records,
q = 32/128 = 0.25, T = 4 steps, sigma calibrated for (1, 1e-5) under PLD
(2.47), m = 1000 canaries (~500 included, each drawn ~1 time). Expected
signal: an included canary scores ~1 (C per draw), noise sd sigma sqrt(T)
~ 4.9, so the correct run's bound is ~0; with sigma / 10 (sd 0.49) the
included canaries stand out and the bound reaches ~2.5-3 (> 1); without
clipping they score ~1000 and the bound saturates (~4).
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpjax import clipping
from dpjax import grad_engines
from dpjax import model_setup
from dpjax import noise as noise_lib
from dpjax.audit import dirac
from dpjax.audit.__main__ import main as audit_main
from tests.audit_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 'debug.py')
# The audited run (module docstring).
RUN = ['--config.model.num_layers=1', '--config.data.max_train_records=128',
       '--config.data.max_eval_records=8', '--config.data.eval_batch_size=8',
       '--config.train.batch_size=32', '--config.train.max_batch_size=64',
       '--config.train.microbatch_size=16', '--config.train.steps=4',
       '--config.dp.noise_multiplier=-1', '--config.dp.target_epsilon=1.0',
       '--canaries=1000', '--seed=0']


def run_command(tmp_path, *extra):
  out = tmp_path / 'mechanism.json'
  code = audit_main(['prog', 'mechanism', f'--config={CONFIG}', *RUN,
                     f'--json={out}', *extra])
  return code, json.loads(out.read_text())


# ---------------------------------------------------------------------------
# The canary loss: exact gradients.


def test_canary_gradients_are_exact_and_separate():
  config = tiny_config()
  model = model_setup.create(config)
  m, scale = 5, 1000.0
  trainable = dirac.with_canary_leaf(model.trainable, m)
  loss = dirac.canary_loss_fn(model.loss_fn, scale)
  n, seq = 4, config.data.seq_len   # 4 real records of random tokens
  tokens = np.random.default_rng(0).integers(0, 258, (n, seq + 1), np.int32)
  train = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:],
           'weights': np.ones((n, seq), np.float32)}
  included = np.asarray([True, False, True, True, False])
  arrays = dirac.canary_training_set(train, included)
  np.testing.assert_array_equal(arrays[dirac.CANARY_FIELD][:n], -1)
  np.testing.assert_array_equal(arrays[dirac.CANARY_FIELD][n:], [0, 2, 3])
  grad = jax.jit(jax.grad(lambda p, ex: loss(p, model.frozen, ex,
                                             jax.random.key(0))))
  row = lambda i: {k: jnp.asarray(v[i]) for k, v in arrays.items()}
  # A real record: its model gradient, exactly 0 on the audit leaf.
  g = grad(trainable, row(3))
  np.testing.assert_array_equal(g[dirac.CANARY_LEAF], np.zeros(m))
  assert sum(float(jnp.sum(jnp.abs(x))) for x in jax.tree.leaves(
      {k: x for k, x in g.items() if k != dirac.CANARY_LEAF})) > 0
  # Canary 2 (row n + 1): scale * e_2, exactly 0 on every model leaf.
  g = grad(trainable, row(n + 1))
  np.testing.assert_array_equal(g[dirac.CANARY_LEAF], scale * np.eye(m)[2])
  for k, x in g.items():
    if k != dirac.CANARY_LEAF:
      for leaf in jax.tree.leaves(x):
        np.testing.assert_array_equal(leaf, 0.0)


def test_the_engine_clips_a_canary_to_c_and_keeps_real_records_off_it():
  """With a toy model (cheap to compile): the vmap engine's clipped sum has
  C e_k on the audit leaf for canary k and nothing from real records."""
  def toy_loss(p, frozen, ex, key):
    del frozen, key
    return jnp.sum(p['w'] * ex['x']) ** 2

  m, c = 4, 0.5
  loss = dirac.canary_loss_fn(toy_loss, 1000.0 * c)
  trainable = dirac.with_canary_leaf({'w': jnp.ones((3,))}, m)
  train = {'x': np.arange(15, dtype=np.float32).reshape(5, 3)}
  arrays = dirac.canary_training_set(train, np.asarray([1, 0, 0, 1], bool))
  engine = grad_engines.VmapEngine(loss, microbatch_size=2)
  idx = np.asarray([0, 5, 1, 6])   # real, canary 0, real, canary 3
  batch = {k: jnp.asarray(v[idx]) for k, v in arrays.items()}
  out = engine.clipped_sum(trainable, None, batch, jnp.ones((4,)),
                           jax.random.split(jax.random.key(0), 4),
                           clip_norm=c, step=0)
  np.testing.assert_allclose(out.clipped_sum[dirac.CANARY_LEAF],
                             [c, 0, 0, c], rtol=1e-6)
  # The model leaf: the two real records, each clipped to C (norms > C).
  g = jax.vmap(jax.grad(toy_loss), (None, None, 0, None))(
      {'w': jnp.ones((3,))}, None, {'x': jnp.asarray(train['x'][:2])}, None)
  g = np.asarray(g['w'])
  want = sum(r * min(1.0, c / np.linalg.norm(r)) for r in g)
  np.testing.assert_allclose(out.clipped_sum['w'], want, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(out.norms)[[1, 3]], 1000.0 * c)


def test_tap_reads_the_released_sum():
  tx = dirac.tap_released(noise_lib.gaussian_noise(0.0, jax.random.key(0)), 3)
  params = {'w': jnp.zeros((2,)), dirac.CANARY_LEAF: jnp.zeros((3,))}
  state = tx.init(params)
  upd = {'w': jnp.ones((2,)), dirac.CANARY_LEAF: jnp.asarray([1., 0., 2.])}
  _, state = tx.update(upd, state, params)
  np.testing.assert_array_equal(state.released, [1., 0., 2.])
  rgp_like = {'carriers': {}, 'other': {dirac.CANARY_LEAF: jnp.ones((3,))}}
  np.testing.assert_array_equal(dirac.released_canary_part(rgp_like), 1.0)


# ---------------------------------------------------------------------------
# The command: a correct run passes, planted bugs fail.


def test_correct_run_passes_at_claimed_epsilon_one(tmp_path, capsys):
  code, out = run_command(tmp_path)
  printed = capsys.readouterr().out
  rep = out['report']
  assert code == 0, printed
  assert rep['claimed_epsilon'] == pytest.approx(1.0, abs=1e-3)
  assert rep['num_canaries'] == 1000 and 400 < rep['num_included'] < 600
  assert rep['engine'] == 'vmap' and rep['steps'] == 4
  assert rep['epsilon_lb'] <= rep['claimed_epsilon']
  assert rep['epsilon_lb'] <= rep['ceiling'] + 1e-9
  assert 'PASS: epsilon_lb' in printed and 'claimed epsilon: 1.0000' in printed
  assert 'confidence 95%' in printed and 'ceiling for this r' in printed
  assert 'book-keeping cannot tap the canary leaf' in printed  # auto -> vmap
  # Out-canaries: pure noise of sd sigma sqrt(T).
  sd = rep['noise_multiplier'] * 2
  assert abs(rep['score_std_out'] / sd - 1) < 0.15


def test_ten_times_less_noise_than_the_ledger_fails(tmp_path, monkeypatch,
                                                    capsys):
  real = noise_lib.tree_gaussian
  monkeypatch.setattr(noise_lib, 'tree_gaussian',
                      lambda key, tree, std: real(key, tree, std / 10))
  code, out = run_command(tmp_path)
  rep = out['report']
  assert code == 1, capsys.readouterr().out
  assert rep['claimed_epsilon'] == pytest.approx(1.0, abs=1e-3)
  assert rep['epsilon_lb'] > 1.5 * rep['claimed_epsilon'], rep['result']
  assert 'FAIL: epsilon_lb' in capsys.readouterr().out


@pytest.mark.slow
def test_no_clipping_fails(tmp_path, monkeypatch):
  monkeypatch.setattr(clipping, 'clip_factors',
                      lambda norms, mask, c: mask.astype(jnp.float32))
  code, out = run_command(tmp_path)
  assert code == 1
  assert out['report']['epsilon_lb'] > 2.0, out['report']['result']


@pytest.mark.parametrize('argv,needle', [
    (['--canaries=0'], '--canaries'),
    (['--alpha=1.5'], '--alpha'),
    (['--steps=-3'], '--steps'),
    (['--config.train.grad_engine=bookkeeping'], 'train.grad_engine'),
    (['--config.dp.enabled=False'], 'dp.enabled'),
])
def test_command_bad_usage_exits_2_naming_the_problem(argv, needle, capsys):
  code = audit_main(['prog', 'mechanism', f'--config={CONFIG}'] + argv)
  assert code == 2
  assert needle in capsys.readouterr().err
