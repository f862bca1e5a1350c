"""``python -m proxy`` is ``stategate``."""

from ._cli import main

raise SystemExit(main())
