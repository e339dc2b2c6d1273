"""``python -m hpspec``: the results store's command line (see :mod:`hpspec.cli`)."""

from hpspec.cli import main

raise SystemExit(main())
