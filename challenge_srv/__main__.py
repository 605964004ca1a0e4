"""``python -m challenge_srv``: see :mod:`challenge_srv.server`."""

from __future__ import annotations

from challenge_srv.server import main

raise SystemExit(main())
