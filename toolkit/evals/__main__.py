"""``python -m toolkit.evals``: see ``toolkit.evals.cli``."""

from toolkit.evals.cli import main

raise SystemExit(main())
