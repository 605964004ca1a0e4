"""The anti-replay nonce pool (RFC 8555 §6.5).

Every response's ``Replay-Nonce`` header feeds the pool; a signed request
takes one, and only when the pool is empty does the network layer ask the
server's newNonce resource (§7.2). The pool is bounded: when full, the oldest
nonce is dropped, as it is the most likely to have expired on the server.
Values that are not base64url are ignored, as §6.5.1 requires.
"""

from __future__ import annotations

import re
from collections import deque

__all__ = ["NoncePool", "valid_nonce"]

_NONCE_RE = re.compile(r"[A-Za-z0-9_-]+")


def valid_nonce(value: str) -> bool:
    """True when ``value`` is a syntactically valid nonce (base64url, §6.5.1)."""
    return len(value) <= 512 and _NONCE_RE.fullmatch(value) is not None


class NoncePool:
    """A bounded store of unused nonces, newest out first; used from one event loop."""

    __slots__ = ("_nonces", "dropped", "maxsize")

    def __init__(self, maxsize: int = 256) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._nonces: deque[str] = deque(maxlen=maxsize)
        #: nonces discarded because the pool was full
        self.dropped = 0

    def push(self, nonce: str | None) -> bool:
        """Add a nonce from a ``Replay-Nonce`` header; False if it was absent or invalid."""
        if not nonce or not valid_nonce(nonce):
            return False
        if len(self._nonces) == self.maxsize:
            self.dropped += 1
        self._nonces.append(nonce)
        return True

    def pop(self) -> str | None:
        """The newest nonce, or None when the pool is empty."""
        try:
            return self._nonces.pop()
        except IndexError:
            return None

    def clear(self) -> None:
        self._nonces.clear()

    def __len__(self) -> int:
        return len(self._nonces)
