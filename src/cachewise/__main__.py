"""``python -m cachewise``: the command line (``cachewise demo``)."""

from cachewise.cli import main

raise SystemExit(main())
