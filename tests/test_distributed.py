"""dpjax.distributed without a cluster: flags, cluster detection, one process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dpjax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('env, expected', [
    ({}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, None),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, 'slurm'),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4', 'SLURM_STEP_NUM_TASKS': '1'},
     None),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, 'openmpi'),
    ({'JAX_COORDINATOR_ADDRESS': '10.0.0.1:1234'}, 'JAX_COORDINATOR_ADDRESS'),
])
def test_cluster_detection(env, expected):
  assert distributed.cluster_detected(env) == expected


def test_single_process_without_flags_or_cluster():
  assert distributed.initialize(env={}) == 'single process'
  assert distributed.is_main() and distributed.process_count() == 1
  assert distributed.broadcast_json({'a': [1, 2]}) == {'a': [1, 2]}
  distributed.assert_same('x', 'anything')


@pytest.mark.parametrize('kwargs, words', [
    (dict(num_processes=2, process_id=0), '--coordinator_address missing'),
    (dict(coordinator_address='h:1', process_id=0), '--num_processes missing'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2),
     '0 <= process_id < num_processes'),
    (dict(coordinator_address='host', num_processes=2, process_id=0),
     'HOST:PORT'),
])
def test_bad_flags_are_named(kwargs, words):
  with pytest.raises(ValueError, match=words):
    distributed.initialize(**kwargs, env={})


def test_local_rows_single_process_is_everything():
  import jax  # pylint: disable=g-import-not-at-top
  from dpjax import sharding  # pylint: disable=g-import-not-at-top
  mesh = sharding.make_mesh(-1, 1)
  sh = sharding.batch_sharding(mesh)
  assert distributed.local_rows(sh, 8) == slice(0, 8)
  x = distributed.global_batch({'a': np.arange(8)}, sh, 8)
  np.testing.assert_array_equal(jax.device_get(x['a']), np.arange(8))


def test_main_reports_bad_flags_in_one_line(tmp_path):
  out = subprocess.run(
      [sys.executable, '-m', 'dpjax.main', '--config=configs/debug.py',
       f'--workdir={tmp_path}', '--num_processes=2', '--process_id=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith(
      'dpjax: invalid command line: --coordinator_address missing')


def test_other_processes_take_process_zeros_secret(monkeypatch, tmp_path):
  """A non-zero process uses the material process 0 broadcast (never its own
  OS entropy) and process 0's stored secret state on resume."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from dpjax import randomness  # pylint: disable=g-import-not-at-top
  from dpjax import secret_store  # pylint: disable=g-import-not-at-top
  from dpjax import train  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(
      {'dp': {'insecure_fixed_randomness_seed': -1}})
  zero = randomness.SecretRandomness.from_os_entropy()
  sent = []

  def fake_broadcast(value):  # what process 0 sent, as JSON travels
    assert value is None  # a non-zero process contributes nothing
    return json.loads(json.dumps(sent[-1]))

  store = secret_store.SecretStore(str(tmp_path), keep=2)
  # Process 0's view, packed as it broadcasts it.
  monkeypatch.setattr(distributed, 'process_count', lambda: 2)
  monkeypatch.setattr(distributed, 'is_main', lambda: True)
  monkeypatch.setattr(distributed, 'broadcast_json',
                      lambda v: sent.append(v) or json.loads(json.dumps(v)))
  monkeypatch.setattr(randomness.SecretRandomness, 'from_config',
                      classmethod(lambda cls, dp: zero))
  main_secret, _ = train._resume_secret(config, store, 0, 10)
  assert main_secret.to_bytes() == zero.to_bytes()
  # Process 1: its own entropy would differ; it must take process 0's.
  monkeypatch.setattr(distributed, 'is_main', lambda: False)
  monkeypatch.setattr(distributed, 'broadcast_json', fake_broadcast)
  monkeypatch.setattr(randomness.SecretRandomness, 'from_config',
                      classmethod(lambda cls, dp: cls.from_os_entropy()))
  other, payload = train._resume_secret(config, store, 0, 10)
  assert other.to_bytes() == zero.to_bytes() and payload is None
  # Resume: process 0 reads its store; process 1 gets the same payload.
  store.save(4, material=zero.to_bytes(), keys=[{'impl': 'rbg', 'shape': [4],
                                                 'data': [1, 2, 3, 4]}],
             sampler_state={'kind': 'poisson', 'x': 5})
  monkeypatch.setattr(distributed, 'is_main', lambda: True)
  monkeypatch.setattr(distributed, 'broadcast_json',
                      lambda v: sent.append(v) or json.loads(json.dumps(v)))
  _, p0 = train._resume_secret(config, store, 4, 10)
  monkeypatch.setattr(distributed, 'is_main', lambda: False)
  monkeypatch.setattr(distributed, 'broadcast_json', fake_broadcast)
  s1, p1 = train._resume_secret(config, store, 4, 10)
  assert s1.to_bytes() == zero.to_bytes()
  assert p1['keys'] == p0['keys'] and p1['sampler'] == p0['sampler']
  assert p1['material'] == zero.to_bytes()


def test_batch_sizes_must_split_evenly_over_the_data_axis(tmp_path):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  out = subprocess.run(
      [sys.executable, '-m', 'dpjax.main', '--config=configs/debug.py',
       f'--workdir={tmp_path}', '--config.data.eval_batch_size=6'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert 'data.eval_batch_size' in last and 'a multiple of 4' in last, last
