"""Shared pytest setup for the model tests."""


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: takes longer than ~30 s (skipped by `make test`)')
