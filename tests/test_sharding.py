"""FSDP placement rule, and one FSDP DP step on 8 devices == the same on 1.

The rule tests run in-process on abstract meshes. The step tests run once in
a subprocess with 8 simulated CPU devices (`--xla_force_host_platform_device_
count` must be set before jax starts): the trainer's DP-AdamW step, built
with `run_setup` from configs/debug.py (full fine-tuning, noise multiplier
1, fixed secret randomness), on one device and under
`mesh.param_sharding='fsdp'` on 8; the noise stage alone on the FSDP
placement; and the same 8-device step with a planted bug (each shard draws
its noise with the same key), which the comparison must catch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from dpjax import configuration
from dpjax import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mesh(data, model=1):
  return AbstractMesh((data, model), ('data', 'model'))


def _specs(tree, mesh, rules=(), preset='fsdp', min_size=1024):
  shs = sharding.param_shardings(tree, mesh, rules, preset=preset,
                                 fsdp_min_size=min_size)
  return jax.tree.map(lambda s: s.spec, shs)


def _tree():
  s = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)
  return {
      'embed': s(256, 48),        # largest axis divisible: axis 0
      'head': s(48, 258),         # 258 % 8 != 0: the next largest, axis 0
      'square': s(64, 64),        # tie: the later axis
      'down': s(128, 32),
      'odd': s(30, 50),           # 1500 elements, no axis divisible by 8
      'small': s(16, 16),         # 256 < min size
      'norm': s(4096),            # rank 1, large: sharded
      'scale': s(48),             # rank 1, small
      'step': jax.ShapeDtypeStruct((), np.int32),
  }


def test_fsdp_rule_picks_the_largest_divisible_axis():
  specs = _specs(_tree(), _mesh(8))
  assert specs['embed'] == P('data')
  assert specs['head'] == P('data')
  assert specs['square'] == P(None, 'data')
  assert specs['down'] == P('data')
  assert specs['norm'] == P('data')
  for name in ('odd', 'small', 'scale', 'step'):
    assert specs[name] == P(), name


def test_fsdp_rule_min_size_and_mesh_size():
  specs = _specs(_tree(), _mesh(8), min_size=100)
  assert specs['small'] == P(None, 'data')   # 256 >= 100 now
  assert specs['scale'] == P()               # 48 < 100
  specs = _specs(_tree(), _mesh(8), min_size=10 ** 9)
  assert all(s == P() for s in jax.tree.leaves(
      specs, is_leaf=lambda x: isinstance(x, P)))
  specs = _specs(_tree(), _mesh(2))
  assert specs['odd'] == P(None, 'data')     # 50 % 2 == 0
  assert specs['head'] == P(None, 'data')    # 258 % 2 == 0: the largest
  specs = _specs(_tree(), _mesh(1, 8))       # nothing on 'data': replicated
  assert all(s == P() for s in jax.tree.leaves(
      specs, is_leaf=lambda x: isinstance(x, P)))
  specs = _specs(_tree(), _mesh(4, 2))       # only the 'data' size counts
  assert specs['odd'] == P()                 # neither 30 nor 50 % 4
  assert specs['head'] == P('data')
  assert sharding.fsdp_spec((256, 48), 8, 1024) == ('data',)
  assert sharding.fsdp_spec((48, 256), 8, 1024) == (None, 'data')


def test_rules_win_over_the_preset_and_replicated_is_whole():
  rules = ((r'embed', (None, 'model')), (r'od.', ('data',)))
  specs = _specs(_tree(), _mesh(4, 2), rules=rules)
  assert specs['embed'] == P(None, 'model')
  assert specs['odd'] == P('data')            # the rule, even if indivisible
  assert specs['head'] == P('data')           # no rule: the preset
  specs = _specs(_tree(), _mesh(8), rules=rules, preset='replicated')
  assert specs['embed'] == P(None, 'model')
  assert specs['head'] == P() and specs['norm'] == P()


def test_bad_preset_min_size_and_rule_rank_are_named():
  with pytest.raises(configuration.ConfigError, match='mesh.param_sharding'):
    _specs(_tree(), _mesh(8), preset='zero3')
  with pytest.raises(configuration.ConfigError, match='mesh.fsdp_min_size'):
    _specs(_tree(), _mesh(8), min_size=-1)
  with pytest.raises(configuration.ConfigError, match='sharding_rules'):
    _specs(_tree(), _mesh(8), rules=((r'scale', ('data', None)),))


_STEP_SCRIPT = r'''
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, sys.argv[1])
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from configs import debug
from dpjax import noise as noise_lib
from dpjax import optimizers, run_setup, sharding, steps, user_level
from dpjax.randomness import SecretRandomness
assert jax.device_count() == 8
SECRET = SecretRandomness(bytes(range(32)))  # the same on 1 and 8 devices
REAL_TREE_GAUSSIAN = noise_lib.tree_gaussian

def config(n):
  c = debug.get_config()
  c.peft.mode = "full"
  c.dp.noise_multiplier = 1.0  # noise std = C per coordinate: noise dominates
  c.mesh.data = n
  c.mesh.param_sharding = "fsdp" if n > 1 else "replicated"
  return c

def named(tree):
  return {jax.tree_util.keystr(p): x for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}

def host(x):
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(jax.device_get(x))

def build(n):
  c = config(n)
  model, data, plan, mesh = run_setup.build_inputs(c)
  stages, clip_fn, _ = run_setup.build_stages(c, plan, SECRET.noise_key())
  tx = optimizers.chain(stages)
  state = steps.TrainState(jnp.zeros((), jnp.int32), model.trainable,
                           tx.init(model.trainable))
  state_sh = sharding.config_shardings(state, mesh, c)
  return c, model, data, plan, mesh, stages, clip_fn, state, state_sh

def one_step(n):
  c, model, data, plan, mesh, stages, clip_fn, state, state_sh = build(n)
  state = jax.device_put(state, state_sh)
  frozen = jax.device_put(model.frozen,
                          sharding.config_shardings(model.frozen, mesh, c))
  placed = {k: (tuple(x.shape), tuple(x.addressable_shards[0].data.shape),
                tuple(x.sharding.spec)) for k, x in named(state).items()}
  step = jax.jit(run_setup.make_step(c, model, stages, plan, clip_fn,
                                     run_setup.rgp_key(c), data),
                 donate_argnums=(0,))
  bmax = c.train.max_batch_size
  idx = (np.arange(bmax) * 7) % data.train_size
  mask = (np.arange(bmax) < 20).astype(np.float32)
  batch = user_level.gather_batch(data.train, idx)
  batch, mask_d, ids = jax.device_put((batch, mask, idx.astype(np.int32)),
                                      sharding.batch_sharding(mesh))
  dkey = jax.device_put(SECRET.dropout_key(), sharding.replicated(mesh))
  new, _ = step(state, frozen, batch, mask_d, dkey, ids)
  return {k: host(x) for k, x in named(new).items()}, placed

def noise_draw(n):
  """The real noise stage's draw for zero updates, placed like the step's."""
  c, model, data, plan, mesh, stages, clip_fn, state, state_sh = build(n)
  zeros = jax.tree.map(jnp.zeros_like, model.trainable)
  sh = state_sh.trainable
  f = jax.jit(lambda u, s: stages.noise.update(u, s)[0], in_shardings=(
      sh, sharding.replicated(mesh)), out_shardings=sh)
  out = f(jax.device_put(zeros, sh),
          jax.device_put(stages.noise.init(None), sharding.replicated(mesh)))
  full = {k: host(x) for k, x in named(out).items()}
  shards = {k: [np.asarray(s.data) for s in x.addressable_shards]
            for k, x in named(out).items() if any(x.sharding.spec)}
  return full, shards

def planted(n_data, mesh):
  """BUG: every shard draws normal(key, shard shape) with the same key."""
  def tree_gaussian(key, tree, stddev):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    shs = jax.tree.leaves(sharding.param_shardings(
        tree, mesh, (), preset="fsdp", fsdp_min_size=1024))
    out = []
    for k, x, s in zip(keys, leaves, shs):
      if not any(s.spec):
        out.append(stddev * jax.random.normal(k, x.shape, jnp.float32))
        continue
      local = s.shard_shape(x.shape)
      out.append(jax.shard_map(
          lambda kk, local=local: stddev * jax.random.normal(
              kk, local, jnp.float32),
          mesh=mesh, in_specs=P(), out_specs=s.spec)(k))
    return jax.tree.unflatten(treedef, out)
  return tree_gaussian

def rel(a, b):
  return {k: float(np.max(np.abs(a[k] - b[k])) /
                   max(float(np.max(np.abs(a[k]))), 1e-30))
          for k in a if a[k].dtype.kind == "f"}

def distinct_shards(shards):
  """Fraction of sharded leaves whose 8 shards are pairwise different."""
  ok = [all(not np.array_equal(v[i], v[j]) for i in range(len(v))
            for j in range(i + 1, len(v))) for v in shards.values()]
  return sum(ok) / max(len(ok), 1)

res = {}
one, _ = one_step(1)
eight, placed = one_step(8)
res["rel"] = rel(one, eight)
res["placed"] = placed
n1, _ = noise_draw(1)
n8, shards = noise_draw(8)
res["noise_equal_1_vs_8"] = all(np.array_equal(n1[k], n8[k]) for k in n1)
res["noise_rel_1_vs_8"] = max(rel(n1, n8).values())
res["noise_sharded_leaves"] = len(shards)
res["noise_distinct_shards"] = distinct_shards(shards)
mesh8 = sharding.make_mesh(8, 1)
noise_lib.tree_gaussian = planted(8, mesh8)
bug, _ = one_step(8)
b8, bug_shards = noise_draw(8)
noise_lib.tree_gaussian = REAL_TREE_GAUSSIAN
res["bug_rel"] = rel(one, bug)
res["bug_noise_distinct_shards"] = distinct_shards(bug_shards)
print(json.dumps(res))
'''


@pytest.fixture(scope='module')
def eight_devices():
  proc = subprocess.run([sys.executable, '-c', _STEP_SCRIPT, ROOT],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _params(rel):
  return {k: v for k, v in rel.items() if k.startswith('.trainable')}


def test_fsdp_step_on_8_devices_equals_one_device(eight_devices):
  rel = eight_devices['rel']
  assert _params(rel) and max(_params(rel).values()) <= 1e-6, rel
  # Adam's mu is linear in the noised sum; nu, the EMA: the whole state.
  assert max(rel.values()) <= 1e-5, rel


def test_optimizer_state_is_sharded_one_eighth(eight_devices):
  placed = eight_devices['placed']
  sharded = 0
  for name, (shape, local, spec) in placed.items():
    if not any(spec):
      assert local == shape, name
      continue
    axis = spec.index('data')
    assert local[axis] * 8 == shape[axis], name
    assert [d for i, d in enumerate(local) if i != axis] == [
        d for i, d in enumerate(shape) if i != axis], name
    sharded += 1
  mu = [k for k in placed if '.mu[' in k]
  assert mu and all(any(placed[k][2]) for k in mu if
                    np.prod(placed[k][0]) >= 1024), mu
  assert sharded >= 4 * 10  # params, mu, nu, EMA of >= 10 leaves each


def test_noise_is_one_draw_sliced_not_repeated_per_shard(eight_devices):
  r = eight_devices
  assert r['noise_sharded_leaves'] >= 10
  assert r['noise_equal_1_vs_8'], r['noise_rel_1_vs_8']
  assert r['noise_distinct_shards'] == 1.0


def test_planted_per_shard_noise_is_caught(eight_devices):
  r = eight_devices
  assert r['bug_noise_distinct_shards'] == 0.0  # the bug's signature
  # The step comparison above fails on it by orders of magnitude.
  assert max(_params(r['bug_rel']).values()) > 1e-2, r['bug_rel']


def test_scaling_guide_quotes_the_committed_results():
  """docs/scaling.md's cost-model block renders results/cost_model.json, and
  its FSDP figures are those of results/fsdp_memory.json."""
  proc = subprocess.run([sys.executable, os.path.join(
      ROOT, 'experiments', 'cost_model.py'), '--check_doc'],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
  with open(os.path.join(ROOT, 'experiments', 'results',
                         'fsdp_memory.json')) as f:
    rows = json.load(f)['rows']
  by = {(r['devices_data'], r['param_sharding']): r for r in rows}
  mib = lambda r: r['memory_per_device']['peak'] / 2 ** 20
  doc = ' '.join(open(os.path.join(ROOT, 'docs', 'scaling.md')).read().split())
  ratios = ' / '.join(f"{by[(n, 'fsdp')]['ratio_to_1_device']['state']:.3f}"
                      for n in (1, 2, 4, 8))
  assert f'measured {ratios} of' in doc
  assert (f"{mib(by[(1, 'replicated')]):.0f} → {mib(by[(8, 'fsdp')]):.0f} "
          f"MiB at 8 devices against {mib(by[(8, 'replicated')]):.0f} MiB "
          'replicated') in doc
  with open(os.path.join(ROOT, 'experiments', 'results',
                         'seed_model_compile.json')) as f:
    seeds = json.load(f)
  for name in seeds['setup']['models']:
    peak = seeds[name]['memory_per_device']['peak'] / 2 ** 30
    assert f'{peak:.2f} GiB per device' in doc, name
