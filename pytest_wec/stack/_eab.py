"""External Account Binding for the stack (controller): which keys the workers get, and
which the embedded Pebble requires (``--wec-pebble-eab``).

The workers' keys are the ones the settings give (``--wec-eab-kid``/``--wec-eab-hmac``,
``--wec-eab-file``). With ``--wec-pebble-eab`` the embedded Pebble requires a binding and
knows those same keys; when none is given, :data:`~pytest_wec.settings.eab.GENERATED` keys
are made for the run, written to ``eab-keys.txt`` in the run directory (the
``--wec-eab-file`` format, readable by the owner only, for other ACME clients to use) and
handed to the workers as if that file had been given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_wec.settings import Settings
from pytest_wec.settings.eab import EabKeys, generate, write_file

__all__ = ["KEYS_FILE", "redacted", "stack_eab"]

#: where ``--wec-pebble-eab`` writes the keys it generated, in the run directory
KEYS_FILE = "eab-keys.txt"


def stack_eab(settings: Settings, run_dir: Path) -> tuple[EabKeys | None, dict[str, str] | None]:
    """(the workers' keys, the embedded Pebble's ``externalAccountMACKeys``); either None
    when there is none (no keys given; no ``--wec-pebble-eab``)."""
    keys = settings.eab
    if not settings.pebble_eab or settings.directory is not None:
        return keys, None
    if keys is None:
        keys = generate(single_use=settings.eab_single_use)
        write_file(run_dir / KEYS_FILE, keys)
    return keys, keys.mac_keys()


def redacted(eab: dict[str, Any] | None) -> str | None:
    """The stack info's ``eab`` entry as a log line may show it: ids, never HMAC keys."""
    if not eab:
        return None
    kids = [str(k[0]) for k in eab.get("keys", ())]
    shown = ", ".join(kids[:5]) + (f" and {len(kids) - 5} more" if len(kids) > 5 else "")
    once = "; single-use" if eab.get("single_use") else ""
    return f"{len(kids)} key(s) from {eab.get('source')}: {shown}{once}"
