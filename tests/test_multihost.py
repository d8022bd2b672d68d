"""Real many-process runs on this CPU (`python -m dpjax.main` per process).

Each process is a separate `python -m dpjax.main` joined by
`jax.distributed` on 127.0.0.1 (gloo collectives), with simulated CPU devices.
Checked against one process driving four devices:

* 2 processes x 2 devices (full fine-tuning, parameters and optimizer state
  sharded over all 4 devices: FSDP) and 4 processes x 1 device (LoRA) give
  the same ledger, the same epsilon, the same parameters (1e-6) and the same
  exported model as one process with 4 devices (replicated);
* killing one process makes the other exit, non-zero, with the runtime's
  "another task died" error within seconds (short heartbeat), not hang;
* starting all processes again resumes from the last checkpoint and ends
  exactly where the uninterrupted one-process run ends;
* a run on OS entropy (no fixed seed) completes: the processes compare a
  digest of their noise keys and sampler state at every checkpoint, so a
  process that drew its own secret material would stop the run.

The reference comparisons use `dp.insecure_fixed_randomness_seed` (a research
setting, so two runs can draw the same noise); nothing else is changed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6
COMMON = ['--config=configs/debug.py', '--config.plot=False',
          f'--config.train.steps={STEPS}', '--config.train.checkpoint_every=3',
          '--config.train.eval_every=100', '--config.train.log_every=3',
          '--config.data.max_train_records=256',
          "--config.export.formats=('hf',)",
          '--config.dp.noise_multiplier=1.0', '--config.dp.accountant=rdp',
          "--config.dp.report_accountants=('rdp',)",
          '--config.dp.insecure_fixed_randomness_seed=11']
LORA = ['--config.peft.mode=lora', '--config.peft.lora_rank=2']
FSDP = ['--config.mesh.param_sharding=fsdp', '--config.mesh.fsdp_min_size=64']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _launch(n_proc: int, devices: int, workdir: str, extra=(),
            heartbeat: int = 30) -> list[subprocess.Popen]:
  # One persistent compilation cache for all runs of this module: the
  # resumed run and the processes started later reuse earlier compilations.
  cache = os.path.join(os.path.dirname(workdir), 'jax_cache')
  # Unoptimised XLA:CPU code (the same for every run compared) compiles in
  # about 30% less CPU time; these runs are seconds long.
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count='
             f'{devices} --xla_backend_optimization_level=0',
             JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1',
             JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  cmd = [sys.executable, '-m', 'dpjax.main', f'--workdir={workdir}',
         *COMMON, *extra]
  if n_proc == 1:
    return [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)]
  port = _free_port()
  return [subprocess.Popen(
      cmd + [f'--coordinator_address=127.0.0.1:{port}',
             f'--num_processes={n_proc}', f'--process_id={i}',
             '--initialization_timeout=60',
             f'--heartbeat_timeout_seconds={heartbeat}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True) for i in range(n_proc)]


def _finish(procs, timeout=240) -> list[str]:
  outs = []
  for p in procs:
    out, _ = p.communicate(timeout=timeout)
    outs.append(out)
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f'process {i} failed:\n{out[-3000:]}'
  return outs


def _restore(workdir: str, step: int):
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  ck = ocp.PyTreeCheckpointer()
  meta = ck.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                      meta)
  state = ck.restore(path, restore_args=args)
  with open(os.path.join(workdir, 'checkpoints', str(step), 'meta',
                         'metadata')) as f:
    return state, json.load(f)


def _max_diff(a, b) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and len(la) > 3
  worst = 0.0
  for x, y in zip(la, lb):
    x, y = np.asarray(x), np.asarray(y)
    assert x.shape == y.shape
    if x.dtype.kind == 'f':
      worst = max(worst, float(np.max(np.abs(x - y) / (1.0 + np.abs(y)),
                                      initial=0.0)))
    else:
      np.testing.assert_array_equal(x, y)
  return worst


def _report(workdir: str) -> dict:
  with open(os.path.join(workdir, 'privacy_report.json')) as f:
    return json.load(f)


def _epsilons(workdir: str) -> list:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [(r['step'], r['epsilon']) for r in map(json.loads, f)
            if 'epsilon' in r]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Reference runs (one process, 4 devices) and the many-process runs,
  launched together so their start-up overlaps; the 2 x 2 run is killed
  after its first checkpoint and resumed."""
  base = tmp_path_factory.mktemp('multihost')
  w = {k: str(base / k) for k in ('ref', 'ref_lora', 'p2', 'p4_lora')}
  ref = _launch(1, 4, w['ref'])
  ref_lora = _launch(1, 4, w['ref_lora'], LORA)
  p4 = _launch(4, 1, w['p4_lora'], LORA)
  # 2 x 2: kill process 1 once the first checkpoint is on disk.
  # A short heartbeat for the run whose process is killed (the survivor
  # must stop within seconds); the others keep a long one, so a process
  # starved of CPU on a loaded machine is not taken for dead.
  p2 = _launch(2, 2, w['p2'], FSDP, heartbeat=3)
  deadline = time.time() + 240
  first = os.path.join(w['p2'], 'checkpoints', '3')
  while not os.path.isdir(first) and time.time() < deadline:
    assert all(p.poll() is None for p in p2), p2[0].communicate()[0][-3000:]
    time.sleep(0.01)
  p2[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  try:
    out0, _ = p2[0].communicate(timeout=60)
  except subprocess.TimeoutExpired:
    p2[0].kill()
    pytest.fail('process 0 still running 60 s after process 1 was killed')
  survivor = {'seconds': time.time() - killed_at, 'rc': p2[0].returncode,
              'out': out0}
  p2[1].communicate()
  interrupted_at = max(int(s) for s in os.listdir(
      os.path.join(w['p2'], 'checkpoints')) if s.isdigit())
  resumed = _launch(2, 2, w['p2'], FSDP)
  _finish(ref + ref_lora + p4 + resumed)
  return dict(w=w, survivor=survivor, interrupted_at=interrupted_at)


def test_many_processes_equal_one_process(runs):
  w = runs['w']
  for ref, multi in (('ref', 'p2'), ('ref_lora', 'p4_lora')):
    s_ref, m_ref = _restore(w[ref], STEPS)
    s_multi, m_multi = _restore(w[multi], STEPS)
    assert _max_diff(s_multi, s_ref) < 1e-6, (ref, multi)
    assert m_multi['ledger'] == m_ref['ledger']
    assert _report(w[multi])['privacy'] == _report(w[ref])['privacy']
    assert _epsilons(w[multi]) == _epsilons(w[ref])
    # The export (EMA weights, gathered over processes) is the same model.
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    e_ref = load_file(os.path.join(w[ref], 'export', 'hf', 'model.safetensors'))
    e_multi = load_file(os.path.join(w[multi], 'export', 'hf',
                                     'model.safetensors'))
    assert sorted(e_ref) == sorted(e_multi) and len(e_ref) > 5
    for k, v in e_ref.items():
      np.testing.assert_allclose(e_multi[k], v, rtol=1e-6, atol=1e-6)
  s_lora, _ = _restore(w['ref_lora'], STEPS)
  assert any('lora' in p for p in _paths(s_lora))


def _paths(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return ['/'.join(str(getattr(k, 'key', k)) for k in p)
          for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def test_killed_process_stops_the_others_quickly(runs):
  s = runs['survivor']
  assert s['rc'] != 0, s['out'][-2000:]
  assert s['seconds'] < 30, s['seconds']
  assert ('another task died' in s['out'] or
          'stopped sending heartbeats' in s['out']), s['out'][-2000:]


def test_resume_after_kill_continues_exactly(runs):
  assert runs['interrupted_at'] < STEPS  # the kill did interrupt the run
  w = runs['w']
  s_ref, _ = _restore(w['ref'], STEPS)
  s_p2, _ = _restore(w['p2'], STEPS)
  assert _max_diff(s_p2, s_ref) < 1e-6
  steps = [s for s, _ in _epsilons(w['p2'])]
  assert steps == sorted(set(steps))  # one line per step: no duplicates


def test_only_process_zero_writes(runs):
  w = runs['w']['p4_lora']
  names = sorted(os.listdir(w))
  assert names == ['checkpoints', 'config.json', 'dpjax.log', 'export',
                   'metrics.jsonl', 'privacy_report.json',
                   'privacy_report.txt', 'tensorboard'], names
  with open(os.path.join(w, 'metrics.jsonl')) as f:
    steps = [json.loads(l)['step'] for l in f]
  assert steps == sorted(steps)
