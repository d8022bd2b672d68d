"""Shared pytest configuration for the accounting tests."""

import pytest


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: slower tests (make test-slow).')


@pytest.fixture(scope='session')
def rng_cases():
  """Deterministic random (q, sigma) cases covering DP-SGD settings."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(20261123)
  qs = 10**rng.uniform(-3.5, -0.3, size=12)
  sigmas = 10**rng.uniform(-0.3, 1.0, size=12)
  return [(float(q), float(s)) for q, s in zip(qs, sigmas)]
