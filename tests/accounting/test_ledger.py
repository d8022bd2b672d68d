"""The privacy ledger's accountable phases (shuffle epochs, Poisson)."""

import pytest

from dpjax.accounting import Phase, PrivacyLedger, get_accountant


def test_shuffle_epoch_is_accounted_at_its_smallest_sigma():
  """Fixed-size shuffled batches: a record is in exactly one batch per epoch
  and may be in the least noisy one, so each epoch is one full-batch Gaussian
  at the epoch's smallest sigma (no amplification)."""
  ledger = PrivacyLedger(sampling='shuffle', dataset_size=100, batch_size=25)
  for sigma in (2.0, 1.0, 3.0, 4.0, 5.0, 5.0, 0.8, 5.0, 1.5):
    ledger.record(0.25, sigma)
  got = [(p.q, p.sigma) for p in ledger.accountable_phases()
         for _ in range(p.count)]
  assert got == [(1.0, 1.0), (1.0, 0.8), (1.0, 1.5)]
  rdp = get_accountant('rdp')
  want = rdp.epsilon([Phase(1.0, 1.0, 1), Phase(1.0, 0.8, 1),
                      Phase(1.0, 1.5, 1)], 1e-5)
  assert rdp.epsilon(ledger.accountable_phases(), 1e-5) == pytest.approx(want)


def test_poisson_phases_are_the_recorded_steps():
  ledger = PrivacyLedger(sampling='poisson', dataset_size=100, batch_size=10)
  for q, sigma in ((0.1, 1.0), (0.1, 1.0), (0.2, 1.0), (0.1, 0.9)):
    ledger.record(q, sigma)
  assert [(p.q, p.sigma, p.count) for p in ledger.accountable_phases()] == [
      (0.1, 1.0, 2), (0.2, 1.0, 1), (0.1, 0.9, 1)]
