"""Tests for dpjax.lmo_search (the paper's grid and the faster search)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dpjax import lmo_search as S
from dpjax.accounting import lmo


def test_paper_grid_is_the_papers_space():
  g = S.paper_grid()
  assert g.shape == (9**3 * 7 * 4 * 2, 8)
  assert sorted(set(g[:, 0])) == pytest.approx([0.1 * i for i in range(1, 10)])
  assert set(map(tuple, g[:, [2, 1]])) == {(1, 2), (2, 2), (3, 2), (5, 1),
                                           (9, 0.5), (7.5, 1), (0.5, 1)}
  assert set(g[:, 4]) == {0.1, 0.5, 1, 5}
  assert set(map(tuple, g[:, [6, 7]])) == {(0, 1), (1, 2)}


def test_batch_evaluation_matches_scalar_accounting():
  rng = np.random.default_rng(0)
  cfg = S.paper_grid()[rng.choice(40824, 12, replace=False)]
  t = S.Target(epsilon=1.0, delta=1e-6, q=0.02, steps=50, l1_sensitivity=1.5)
  got = S.epsilon_batch(cfg, t)
  want = [lmo.epsilon_sound([lmo.LMOPhase(S._row_params(c), 0.02, 50, 1.5)],
                            1e-6) for c in cfg]
  np.testing.assert_allclose(got, want, rtol=1e-9)
  tf = S.Target(epsilon=1.0, accounting='paper_faithful_not_private')
  got = S.epsilon_batch(cfg, tf)
  for c, e in zip(cfg, got):
    p = S._row_params(c)
    if lmo.mgf_domain_check_paper_faithful_not_private(p):
      assert e == pytest.approx(
          lmo.epsilon_per_step_paper_faithful_not_private(p)[0], rel=1e-9)
    else:
      assert math.isinf(e)
  use = S.usefulness(cfg)
  np.testing.assert_allclose(use, [S._row_params(c).usefulness() for c in cfg])


def test_faithful_grid_reproduces_the_artifacts_selection_rule():
  # Every configuration the artifact accepts passes its alpha=2 check and has
  # eps < threshold; the one chosen maximizes usefulness among them.
  t = S.Target(epsilon=0.7, accounting='paper_faithful_not_private')
  r = S.grid_search(t)
  assert r.evaluations == 40824
  assert r.epsilon < 0.7
  assert lmo.mgf_domain_check_paper_faithful_not_private(r.params)
  assert r.epsilon == pytest.approx(
      lmo.epsilon_per_step_paper_faithful_not_private(r.params)[0])
  # The artifact's own eps0 = 0.7 file passes the same filter.
  e = S.epsilon_batch(np.array([[getattr(lmo.ARTIFACT_PARAMS[0.7], f)
                                 for f in S.FIELDS]]), t)[0]
  assert e == pytest.approx(0.6932, abs=1e-4) and e < 0.7
  # Under the sound accounting, that choice is far from eps < 0.7.
  assert lmo.epsilon_per_step_sound(r.params, 1e-10) > 0.7


@pytest.mark.parametrize('eps', [0.7])
def test_fast_search_at_least_as_useful_as_grid(eps):
  t = S.Target(epsilon=eps, delta=1e-10)
  grid = S.grid_search(t)
  exact = S.fast_search(t, refine=False)
  fast = S.fast_search(t)
  # The frontier walk alone returns the grid optimum...
  assert exact.usefulness == pytest.approx(grid.usefulness, rel=1e-12)
  # ...and refinement can only improve it, at the same privacy level,
  # checked with the scalar accounting (an independent code path).
  assert fast.usefulness >= grid.usefulness
  assert lmo.epsilon_per_step_sound(fast.params, 1e-10) <= eps * (1 + 1e-9)
  assert fast.evaluations < grid.evaluations / 4


def test_fast_search_composed_target():
  t = S.Target(epsilon=1.0, delta=1e-5, q=0.05, steps=20)
  fast = S.fast_search(t)
  e = lmo.epsilon_sound([lmo.LMOPhase(fast.params, 0.05, 20)], 1e-5)
  assert e <= 1.0 * (1 + 1e-9)
  assert fast.usefulness > 0


@pytest.mark.slow
@pytest.mark.parametrize('eps', [0.3, 2.0])
def test_fast_search_per_step_more_thresholds(eps):
  t = S.Target(epsilon=eps, delta=1e-10)
  grid = S.grid_search(t)
  assert S.fast_search(t, refine=False).usefulness == pytest.approx(
      grid.usefulness, rel=1e-12)
  assert S.fast_search(t).usefulness >= grid.usefulness


@pytest.mark.slow
def test_fast_search_composed_matches_grid():
  t = S.Target(epsilon=2.0, delta=1e-5, q=0.03, steps=192)
  grid = S.grid_search(t)
  assert S.fast_search(t, refine=False).usefulness == pytest.approx(
      grid.usefulness)
  assert S.fast_search(t).usefulness >= grid.usefulness


def test_fast_search_rejects_faithful_accounting():
  with pytest.raises(ValueError, match='accounting'):
    S.fast_search(S.Target(epsilon=1.0, accounting='paper_faithful_not_private'))
  with pytest.raises(ValueError, match='q, steps'):
    S.Target(epsilon=1.0, q=0.1, accounting='paper_faithful_not_private')


def test_cli_json(capsys):
  assert S.main(['--epsilon', '0.7', '--method', 'fast', '--json']) == 0
  out = json.loads(capsys.readouterr().out)
  assert out[0]['method'] == 'fast' and out[0]['epsilon'] <= 0.7 + 1e-9
  params = lmo.LMOParams.from_dict(out[0]['params'])
  assert params.usefulness() == pytest.approx(out[0]['usefulness'])
  assert S.main(['--epsilon', '-1']) == 2
