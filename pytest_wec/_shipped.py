"""The import names of the two packages shipped beside the plugin.

The repository keeps them as the top-level folders ``chains/`` (the test chains) and
``challenge_srv/`` (the challenge server). The wheel installs them as ``pytest_wec_chains``
and ``pytest_wec_challenge_srv`` (``package-dir`` in pyproject.toml), so that it claims no
import name but ours; an editable install maps the same names onto the folders. Code that
names them at run time (``--pyargs``, ``python -m``, the load catalogue) takes the names
from here, and works the same from a checkout and from an installed wheel.

In a checkout, ``chains`` and ``challenge_srv`` also import from the repository's root
(``pytest chains``, ``pytest --pyargs chains`` there); that is a second copy of the same
files under another name, so the plugin never imports them by those names. Only the type
checker reads them by the folders' names (``if TYPE_CHECKING`` imports), as it cannot
follow an editable install's import hook.
"""

from __future__ import annotations

__all__ = ["CHAINS", "CHALLENGE_SRV"]

#: the shipped chains (``chains/``): ``pytest --pyargs pytest_wec_chains``
CHAINS = "pytest_wec_chains"

#: the challenge server (``challenge_srv/``): ``python -m pytest_wec_challenge_srv``
CHALLENGE_SRV = "pytest_wec_challenge_srv"
