"""``python -m pytest_wec_challenge_srv`` (``python -m challenge_srv`` in the repository's
root): see :mod:`.server`."""

from __future__ import annotations

from .server import main

raise SystemExit(main())
