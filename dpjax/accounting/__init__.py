"""Privacy accounting for dpjax: pure NumPy/SciPy, never imports JAX.

Accountants (all with `.name`, `.is_upper_bound`, `.epsilon(phases, delta,
neighbouring)`, `.delta(phases, epsilon, neighbouring)`, `.describe()`):

* 'pld': privacy loss distributions composed by FFT (tight upper bound; the
  default of every run).
* 'rdp': Rényi DP of the Poisson-subsampled Gaussian (upper bound).
* 'edgeworth': the Edgeworth accountant (an estimate, not a bound).
"""

from __future__ import annotations

from typing import Any

from dpjax.accounting.ledger import Phase, PrivacyLedger, validate_mechanism

ACCOUNTANTS = ('pld', 'rdp', 'edgeworth')


def get_accountant(name: str, **options: Any):
  """Returns a new accountant by name ('rdp' | 'pld' | 'edgeworth').

  Args:
    name: the accountant's name.
    **options: passed to its constructor: 'rdp': `orders=`, `conversion=`
      ('improved' | 'classic'); 'pld': `value_discretization_interval=`,
      `tail_bound=`, `max_bins=`, `min_interval=`, `max_distinct=`;
      'edgeworth': `order=` (1-3), `directions=` ('remove' | 'both').
  """
  if not isinstance(name, str):
    return name  # already an accountant
  key = name.lower()
  if key == 'rdp':
    from dpjax.accounting import rdp  # pylint: disable=g-import-not-at-top
    return rdp.RdpAccountant(**options)
  if key == 'pld':
    from dpjax.accounting import pld  # pylint: disable=g-import-not-at-top
    return pld.PldAccountant(**options)
  if key == 'edgeworth':
    from dpjax.accounting import edgeworth  # pylint: disable=g-import-not-at-top
    return edgeworth.EdgeworthAccountant(**options)
  raise ValueError(f'accountant name must be one of {ACCOUNTANTS}, '
                   f'got {name!r}.')


__all__ = ['ACCOUNTANTS', 'Phase', 'PrivacyLedger', 'get_accountant',
           'validate_mechanism']
