"""``python -m mailhost``: the same entry point as the ``mailhost`` console script."""

from mailhost.cli import main

raise SystemExit(main())
