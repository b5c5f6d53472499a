"""``python -m ivisit_nb ...`` runs the command line (see :mod:`ivisit_nb.cli`)."""

from .cli import main

raise SystemExit(main())
