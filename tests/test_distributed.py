"""dpjax.distributed without a cluster: flags, cluster detection, one process."""

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
