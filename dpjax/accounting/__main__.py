"""`python -m dpjax.accounting`: see `dpjax.accounting.cli`."""

import sys

from dpjax.accounting import cli

if __name__ == '__main__':
  sys.exit(cli.main())
