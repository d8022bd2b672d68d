"""Secret randomness end to end: fresh noise and batches per run, a
reproducible research mode that says what it costs, and no key material
outside the owner-only secret store."""

import base64
import json
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import debug
from dpjax import configuration
from dpjax import console
from dpjax import input_pipeline
from dpjax import sampling
from dpjax import secret_store
from dpjax import train


def _config(steps=2, **dp):
  c = debug.get_config()
  c.train.steps = steps
  c.train.checkpoint_every = 1
  c.train.keep_checkpoints = 10
  c.plot = False
  c.dp.update(dp)
  return c


def _params(out):
  return [np.asarray(x) for x in
          jax.tree.leaves(jax.device_get(out['state'].trainable))]


def _spy_draws(monkeypatch):
  draws = []
  orig = sampling.PoissonSampler.draw

  def draw(self, *a, **k):
    idx, mask = orig(self, *a, **k)
    draws.append(tuple(idx[mask].tolist()))
    return idx, mask
  monkeypatch.setattr(sampling.PoissonSampler, 'draw', draw)
  return draws


def test_two_default_runs_add_different_noise_and_draw_different_batches(
    tmp_path, monkeypatch):
  draws = _spy_draws(monkeypatch)
  a = train.train_and_evaluate(_config(), str(tmp_path / 'a'))
  b = train.train_and_evaluate(_config(), str(tmp_path / 'b'))
  assert draws[:2] != draws[2:]
  assert any(not np.array_equal(x, y) for x, y in zip(_params(a), _params(b)))
  # Same public seed: the same initialisation and data, so the difference is
  # the secret randomness alone.
  for out in (a, b):
    assert out['report']['randomness']['source'] == 'os_entropy'
  # Completed runs delete their secrets; the report says so.
  assert not os.path.exists(tmp_path / 'a' / 'secret')
  assert 'deleted' in open(tmp_path / 'a' / 'privacy_report.txt').read()


def test_fixed_seed_mode_reproduces_bit_for_bit_and_says_so(tmp_path, capsys):
  a = train.train_and_evaluate(
      _config(insecure_fixed_randomness_seed=5, keep_secret_state=True),
      str(tmp_path / 'a'))
  b = train.train_and_evaluate(_config(insecure_fixed_randomness_seed=5),
                               str(tmp_path / 'b'))
  for x, y in zip(_params(a), _params(b)):
    np.testing.assert_array_equal(x, y)
  # Kill after step 1 (the secrets a killed run leaves behind) and resume:
  # the same bits as the uninterrupted run.
  cut = tmp_path / 'cut'
  shutil.copytree(tmp_path / 'a', cut)
  shutil.rmtree(cut / 'checkpoints' / '2')
  r = train.train_and_evaluate(
      _config(insecure_fixed_randomness_seed=5, keep_secret_state=True),
      str(cut))
  for x, y in zip(_params(a), _params(r)):
    np.testing.assert_array_equal(x, y)
  printed = capsys.readouterr().out
  progress = [l for l in printed.splitlines() if l.startswith('step ')
              or 'eps so far' in l]
  assert progress and all('INSECURE' in l for l in progress)
  recs = [json.loads(l) for l in open(tmp_path / 'a' / 'metrics.jsonl')]
  eps_recs = [r for r in recs if 'epsilon' in r]
  assert eps_recs and all(
      any('INSECURE' in w for w in r['privacy_warnings']) for r in eps_recs)
  head = open(tmp_path / 'a' / 'privacy_report.txt').read().splitlines()[:5]
  assert any('INSECURE' in l or 'insecure' in l for l in head), head


def _needles(payload):
  """Byte strings that would betray the secret state if found elsewhere."""
  out = [payload['material'], payload['material'].hex().encode(),
         base64.b64encode(payload['material'])]
  for key in payload['keys']:
    words = np.asarray(key['data'], np.uint32)
    out.append(words.tobytes())
    out.append(words.astype('>u4').tobytes())
    out.append(json.dumps(key['data']).encode())
  state = payload['sampler']['bit_generator']['state']
  out.append(str(state['state']).encode())
  return [n for n in out if len(n) >= 8]


def test_outputs_outside_the_secret_store_hold_no_key_material(tmp_path):
  work = tmp_path / 'run'
  # As `python -m dpjax.main` runs it: library logs to work/dpjax.log.
  root = logging.getLogger()
  before = list(root.handlers)
  console.setup_logging(str(work), process_index=0)
  try:
    train.train_and_evaluate(_config(steps=3, keep_secret_state=True),
                             str(work))
  finally:
    for h in [h for h in root.handlers if h not in before]:
      root.removeHandler(h)
      h.close()
    for h in before:  # the console filter setup_logging put on them
      for f in [f for f in h.filters if isinstance(
          f, console._ConsoleFilter)]:  # pylint: disable=protected-access
        h.removeFilter(f)
  assert (work / 'dpjax.log').stat().st_size > 0  # scanned below
  store = secret_store.SecretStore(str(work), keep=10)
  assert store.steps() == [1, 2, 3]
  needles = []
  for step in store.steps():
    needles += _needles(store.load(step))
  checked = 0
  for root, _, files in os.walk(work):
    if os.path.abspath(root).startswith(store.directory):
      continue
    for name in files:
      data = open(os.path.join(root, name), 'rb').read()
      checked += 1
      for n in needles:
        assert n not in data, (os.path.join(root, name), n[:16])
  assert checked >= 5
  # Structurally too (orbax may compress): the public checkpoint's keys are
  # all zero, and its metadata holds no sampler state.
  mngr = ocp.CheckpointManager(str(work / 'checkpoints'))
  restored = mngr.restore(3, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  assert 'sampler' not in restored['meta']
  is_key = lambda x: jax.dtypes.issubdtype(getattr(x, 'dtype', np.float32),
                                           jax.dtypes.prng_key)
  key_leaves = [x for x in jax.tree.leaves(restored['state']) if is_key(x)]
  assert key_leaves
  raw = [np.asarray(jax.random.key_data(x)) if is_key(x) else
         np.asarray(x) for x in jax.tree.leaves(restored['state'])]
  payload = store.load(3)
  for key in payload['keys']:
    words = np.asarray(key['data'], np.uint32)
    assert not any(r.dtype == np.uint32 and r.size == words.size and
                   np.array_equal(r.ravel(), words) for r in raw)
  for k in key_leaves:
    assert not np.any(np.asarray(jax.random.key_data(k)))
  report = open(work / 'privacy_report.txt').read()
  assert 'kept' in report


def test_finished_run_reports_again_without_secrets_and_data_is_fingerprinted(
    tmp_path, monkeypatch):
  work = str(tmp_path / 'run')
  first = train.train_and_evaluate(_config(), work)
  assert not os.path.exists(os.path.join(work, 'secret'))
  again = train.train_and_evaluate(_config(), work)
  assert again['ledger'].to_dict() == first['ledger'].to_dict()
  for x, y in zip(_params(first), _params(again)):
    np.testing.assert_array_equal(x, y)
  # The same N with one token changed is other data: resuming is refused.
  orig = input_pipeline.build

  def changed(*a, **k):
    data = orig(*a, **k)
    data.train['inputs'][0, 0] ^= 1
    return data
  monkeypatch.setattr(input_pipeline, 'build', changed)
  with pytest.raises(configuration.ConfigError, match='data'):
    train.train_and_evaluate(_config(), work)


def test_resume_without_secret_state_never_reuses_the_noise(tmp_path):
  cfg = lambda: _config(steps=3, insecure_fixed_randomness_seed=1)
  work = str(tmp_path / 'run')
  full = train.train_and_evaluate(cfg(), work)
  cut = str(tmp_path / 'cut')
  shutil.copytree(work, cut)
  ckpts = os.path.join(cut, 'checkpoints')
  for s in os.listdir(ckpts):
    if s.isdigit() and int(s) > 1:
      shutil.rmtree(os.path.join(ckpts, s))
  # The run completed, so its secrets were deleted: steps 2-3 must draw
  # fresh noise, not replay the noise of step 1 or of the first run.
  resumed = train.train_and_evaluate(cfg(), cut)
  assert resumed['ledger'].to_dict() == full['ledger'].to_dict()
  assert any(not np.array_equal(x, y)
             for x, y in zip(_params(full), _params(resumed)))
