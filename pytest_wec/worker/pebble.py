"""Pebble's management API, as the chains use it (worker side).

Roots (``/roots/N``, kept per worker) to check issued chains, and
``/cert-status-by-serial/SERIAL`` to check revocations. Only offered when the CA is Pebble
(the embedded one, or one whose management URL is known).
"""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509

__all__ = ["PebbleManagement"]


class PebbleManagement:
    def __init__(self, transport: Any, base_url: str, timeout: float = 10.0) -> None:
        self.transport = transport
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self._roots: list[x509.Certificate] | None = None

    async def _get(self, path: str) -> tuple[int, bytes]:
        resp = await self.transport.request("GET", self.base + path, headers={}, body=None,
                                            timeout=self.timeout)
        return int(resp.status), bytes(resp.body)

    async def _pem_list(self, kind: str) -> list[x509.Certificate]:
        out: list[x509.Certificate] = []
        for i in range(16):
            status, body = await self._get(f"/{kind}/{i}")
            if status != 200:
                break
            out.append(x509.load_pem_x509_certificates(body)[0])
        if not out:
            raise AssertionError(f"Pebble's management API gave no {kind} at {self.base}")
        return out

    async def roots(self, *, refresh: bool = False) -> list[x509.Certificate]:
        """Every root (the default chain's and any alternate chains').

        Fetched once per worker and kept: Pebble makes its roots at start. A Pebble restarted
        mid-run has new ones; ``refresh=True`` fetches them again.
        """
        if self._roots is None or refresh:
            self._roots = await self._pem_list("roots")
        return self._roots

    async def cert_status(self, serial_hex: str) -> dict[str, Any]:
        """``{"Status": "Valid"|"Revoked", "Reason": N, ...}`` for a serial."""
        status, body = await self._get(f"/cert-status-by-serial/{serial_hex}")
        if status != 200:
            raise AssertionError(f"cert-status-by-serial/{serial_hex}: HTTP {status}: "
                                 f"{body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result
