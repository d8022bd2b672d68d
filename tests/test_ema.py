"""EMA stage against its closed form."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dpjax import ema


def test_ema_equals_closed_form():
  d = 0.8
  tx = ema.ema_params(d)
  p = jnp.asarray([1.0, -2.0])
  state = tx.init(p)
  history = [np.asarray(p)]
  rng = np.random.default_rng(0)
  for _ in range(6):
    u = jnp.asarray(rng.normal(size=2), jnp.float32)
    out, state = tx.update(u, state, p)
    np.testing.assert_array_equal(out, u)  # passes updates through
    p = optax.apply_updates(p, u)
    history.append(np.asarray(p))
  t = len(history) - 1
  closed = d ** t * history[0] + (1 - d) * sum(
      d ** (t - k) * history[k] for k in range(1, t + 1))
  np.testing.assert_allclose(state.ema, closed, rtol=1e-6)
  assert int(state.count) == t


def test_ema_bad_decay():
  with pytest.raises(ValueError, match='decay'):
    ema.ema_params(1.0)
