"""User-level DP (dpjax.user_level): ULS and ELS samplers, the per-user
contribution, its sensitivity, and the ELS group accounting."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import debug
from dpjax import clipping
from dpjax import configuration
from dpjax import steps as steps_lib
from dpjax import user_level
from dpjax.accounting import get_accountant
from dpjax.privacy_plan import plan_privacy

# 6 users with a skewed number of records (record indices into the set).
USERS = [np.array(u) for u in ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11],
                               [12], [13, 14, 15], [16], [17, 18, 19, 20])]


def _loss(params, frozen, example, key):
  del frozen, key
  h = jnp.tanh(example['x'] @ params['w1'])
  return jnp.mean((h @ params['w2'] - example['y']) ** 2)


def _data(n=21, seed=0):
  rng = np.random.default_rng(seed)
  params = {'w1': jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
            'w2': jnp.asarray(rng.normal(size=(7, 3)), jnp.float32)}
  train = {'x': (3 * rng.normal(size=(n, 5))).astype(np.float32),
           'y': rng.normal(size=(n, 3)).astype(np.float32)}
  return params, train


def _flat(tree):
  return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])


def test_user_sampler_draws_users_and_at_most_k_of_their_records():
  sampler = user_level.UserSampler(USERS, 3, expected_batch_size=3,
                                   max_batch_size=4, seed=1)
  seen_users, draws = 0, 2000
  for _ in range(draws):
    idx, mask = sampler.draw()
    assert idx.shape == (4 * max(1, idx.shape[0] // 4), 3)
    assert not np.any(idx[~mask] >= 0)
    for row in idx[mask]:
      records = row[row >= 0]
      owner = [u for u in USERS if records[0] in u]
      assert len(owner) == 1 and set(records) <= set(owner[0])
      assert len(records) == min(3, len(owner[0]))
      assert len(set(records)) == len(records)
    seen_users += int(mask.sum())
  # Poisson over users: E[users per step] = 3 (q = 1/2 of 6 users).
  assert abs(seen_users / draws - 3.0) < 0.15
  # The state round-trips: the same draws after set_state.
  state = sampler.get_state()
  a = [sampler.draw() for _ in range(3)]
  sampler.set_state(state)
  b = [sampler.draw() for _ in range(3)]
  for (i1, m1), (i2, m2) in zip(a, b):
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(m1, m2)


def test_user_loss_gradient_is_the_mean_of_the_records_gradients():
  params, train = _data()
  idx = np.array([[0, 3, 5], [12, -1, -1]])
  batch = user_level.gather_batch(train, idx)
  np.testing.assert_array_equal(batch['record_mask'], [[1, 1, 1], [1, 0, 0]])
  keys = steps_lib.record_keys(jax.random.key(0), jnp.int32(0),
                               jnp.asarray(idx))
  assert keys.shape == (2, 3)
  user_loss = user_level.user_loss_fn(_loss)
  for row, records in enumerate(([0, 3, 5], [12])):
    example = {k: v[row] for k, v in batch.items()}
    got = jax.grad(user_loss)(params, None, example, keys[row])
    want = sum(_flat(jax.grad(_loss)(params, None,
                                     {k: v[r] for k, v in train.items()},
                                     None)) for r in records) / len(records)
    np.testing.assert_allclose(_flat(got), want, rtol=1e-5, atol=1e-6)


def _clipped_sum(loss, params, batch, mask, keys, clip):
  total, _, _ = clipping.microbatched_clipped_sum(
      lambda p, ex, k: loss(p, None, ex, k), params, batch,
      jnp.asarray(mask, jnp.float32), keys, l2_clip_norm=clip,
      microbatch_size=2)
  return _flat(total)


@pytest.mark.parametrize('clip', [0.05, 1.0, 1e3])
def test_removing_a_user_changes_the_clipped_sum_by_at_most_c(clip):
  """Sensitivity C per user: the replay check for user-level batches."""
  params, train = _data()
  idx = np.array([[0, 1, 2, 3], [10, 11, -1, -1], [13, 14, 15, -1],
                  [12, -1, -1, -1]])
  batch = user_level.gather_batch(train, idx)
  keys = steps_lib.record_keys(jax.random.key(0), jnp.int32(0),
                               jnp.asarray(idx))
  user_loss = user_level.user_loss_fn(_loss)
  full = _clipped_sum(user_loss, params, batch, [1, 1, 1, 1], keys, clip)
  for u in range(4):
    mask = np.ones(4)
    mask[u] = 0
    gap = np.linalg.norm(full - _clipped_sum(user_loss, params, batch, mask,
                                             keys, clip))
    assert gap <= clip * (1 + 1e-5)
  # Planted bug: clipping each record and summing a user's records has
  # sensitivity up to k C, which this check catches at a small C.
  if clip == 0.05:
    flat = user_level.gather_batch(train, idx.reshape(-1))
    flat_keys = keys.reshape(-1)
    real = (idx.reshape(-1) >= 0).astype(np.float32)
    whole = _clipped_sum(_loss, params, flat, real, flat_keys, clip)
    without0 = real.copy()
    without0[:4] = 0
    gap = np.linalg.norm(whole - _clipped_sum(_loss, params, flat, without0,
                                              flat_keys, clip))
    assert gap > 2 * clip


def test_els_pool_and_sampler_keep_at_most_k_records_per_user():
  pool = user_level.els_pool(USERS, 2, np.random.SeedSequence(0))
  assert len(pool) == user_level.els_pool_size(USERS, 2) == 10
  for u in USERS:
    assert len(set(pool) & set(u)) == min(2, len(u))
  sampler = user_level.ElsSampler(USERS, 2, 3, 8, np.random.SeedSequence(1))
  for _ in range(50):
    idx, mask = sampler.draw()
    assert set(idx[mask]) <= set(sampler.pool)
  state = sampler.get_state()
  a = sampler.draw()
  sampler.set_state(state)
  np.testing.assert_array_equal(sampler.draw()[0], a[0])
  assert sampler.steps_drawn == 51
  uls = user_level.UserSampler(USERS, 2, 3, 8, 1)
  with pytest.raises(ValueError, match="not a 'user' sampler state"):
    uls.set_state(state)


def _config(mode, k=4, **dp):
  config = debug.get_config()
  config.data.user_field = 'user'
  config.data.max_records_per_user = k
  config.dp.user_sampling = mode
  config.dp.update(dp)
  return config


def test_els_ledger_records_the_user_level_mechanism():
  config = _config('els', k=4)
  config.train.batch_size = 8
  plan = plan_privacy(config, 400)
  assert plan.group_size == 4 and plan.unit_kind == 'user'
  ledger = plan.new_ledger(plan.unit('one user'))
  for step in range(1, config.train.steps + 1):
    plan.record_step(ledger, step)
  q = 8 / 400
  p = 1 - (1 - q) ** 4
  assert ledger.phases[0].q == pytest.approx(p, rel=1e-12)
  assert ledger.phases[0].sigma == pytest.approx(
      plan.noise_multiplier / 4)
  assert 'at most 4 records' in ledger.unit
  pld = get_accountant('pld')
  eps = pld.epsilon(ledger.accountable_phases(), config.dp.delta)
  assert eps <= config.dp.target_epsilon * (1 + 1e-9)
  # The calibrated multiplier is tight: 2% less noise would exceed it.
  Phase = type(ledger.phases[0])
  looser = pld.epsilon([Phase(p, 0.98 * plan.noise_multiplier / 4,
                         config.train.steps)], config.dp.delta)
  assert looser > config.dp.target_epsilon
  # At equal z, ELS accounts a far larger epsilon than the record level.
  record = pld.epsilon([Phase(q, plan.noise_multiplier, config.train.steps)],
                       config.dp.delta)
  assert record < 0.5 * eps


def test_uls_plan_counts_users():
  config = _config('uls', k=4)
  config.train.batch_size = 3
  plan = plan_privacy(config, 30)
  assert (plan.dataset_size, plan.q, plan.group_size) == (30, 0.1, 1)
  assert 'at most 4 of them' in plan.unit('one user (user) of f.jsonl')


@pytest.mark.parametrize('mode,change,field', [
    ('els', {'mechanism': 'lmo'}, 'dp.mechanism'),
    ('els', {'accountant': 'edgeworth'}, 'dp.accountant'),
    ('uls', {'sampling': 'shuffle'}, 'dp.sampling'),
    ('bogus', {}, 'dp.user_sampling'),
])
def test_unsupported_user_level_settings_are_refused(mode, change, field):
  config = _config(mode, **change)
  with pytest.raises(configuration.ConfigError, match=f'config.{field}'):
    configuration._validate_user_level(config)  # pylint: disable=protected-access


def test_delta_is_checked_against_the_number_of_users():
  config = _config('uls')
  config.train.batch_size = 2
  config.dp.delta = 1e-2
  with pytest.raises(configuration.ConfigError, match='for N = 150 users'):
    configuration.validate_against_data(config, 150, unit='users')


@pytest.mark.parametrize('mode', ['uls', 'els'])
def test_trainer_runs_user_level_and_reports_the_unit(mode, tmp_path,
                                                      monkeypatch):
  """512 records of 64 users (7 each, the last one 71): the trainer samples
  users (ULS) or capped records (ELS); the ledger and report name the unit."""
  from dpjax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dpjax import train  # pylint: disable=g-import-not-at-top
  build = input_pipeline.build

  def with_users(*args, **kwargs):
    data = build(*args, **kwargs)
    owner = np.minimum(np.arange(data.train_size) // 7, 63)  # user 63: 71
    data.users = tuple(np.flatnonzero(owner == u) for u in range(64))
    data.unit = 'one user (user) of the test corpus'
    return data

  monkeypatch.setattr(input_pipeline, 'build', with_users)
  config = _config(mode, k=4)
  config.train.update(steps=3, batch_size=8 if mode == 'uls' else 16,
                      max_batch_size=16 if mode == 'uls' else 32,
                      microbatch_size=4)
  config.dp.delta = 1e-3
  out = train.train_and_evaluate(config, str(tmp_path))
  ledger = out['ledger']
  assert len(ledger.phases) and 'one user (user)' in ledger.unit
  assert 'at most 4' in ledger.unit
  report = out['report']
  assert 'at most 4' in json.dumps(report)
  assert report['mechanism']['sampled_unit'].startswith(
      {'uls': 'user (ULS', 'els': 'record (ELS'}[mode])
  if mode == 'uls':
    assert report['mechanism']['clipping'].startswith('flat per-user L2')
    assert 'The number of users N = 64' in json.dumps(report)
  assert np.isfinite(out['final']['eval_loss'])
  plan = out['plan']
  if mode == 'uls':
    assert (plan.dataset_size, plan.q) == (64, 8 / 64)
    assert ledger.phases[0].q == pytest.approx(8 / 64)
  else:
    n = user_level.els_pool_size(tuple(
        np.flatnonzero(np.minimum(np.arange(512) // 7, 63) == u)
        for u in range(64)), 4)
    assert plan.dataset_size == n == 63 * 4 + 4
    assert ledger.phases[0].q == pytest.approx(
        user_level.els_rate(16 / n, 4))
  rows = {r['accountant']: r for r in report['privacy']['rows']}
  assert rows['pld']['epsilon'] <= config.dp.target_epsilon * (1 + 1e-9)


def test_noise_probe_measures_a_uls_run(monkeypatch):
  """The trainer's ULS step adds N(0, (z C)^2) to the users' clipped sum
  and releases it divided by the expected number of users."""
  from dpjax import input_pipeline  # pylint: disable=g-import-not-at-top
  from dpjax.audit import noise_probe  # pylint: disable=g-import-not-at-top
  build = input_pipeline.build

  def with_users(*args, **kwargs):
    data = build(*args, **kwargs)
    owner = np.arange(data.train_size) % 40
    data.users = tuple(np.flatnonzero(owner == u) for u in range(40))
    return data

  monkeypatch.setattr(input_pipeline, 'build', with_users)
  config = _config('uls', k=3)
  config.train.update(batch_size=6, max_batch_size=16, microbatch_size=4)
  config.dp.delta = 1e-3
  report = noise_probe.probe_config(config, min_coordinates=60_000,
                                    max_steps=40)
  assert report.passed, '\n'.join(report.lines())
  assert report.coordinates >= 60_000
