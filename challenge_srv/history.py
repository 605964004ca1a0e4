"""Request history of the challenge server, kept in this process's memory and bounded.

Like pebble-challtestsrv's, events are grouped by host and kind (``http``, ``dns``,
``tlsalpn``) and have the same JSON shape:

    http     {"URL": "/.well-known/...", "Host": "example.com:5002", "HTTPS": false,
              "ServerName": ""}                     key: the Host header without port
    dns      {"Question": {"Name": "example.com.", "Qtype": 1, "Qclass": 1}}
                                                    key: the name without trailing dot
    tlsalpn  {"ServerName": "example.com", "SupportedProtos": ["acme-tls/1"] | null}
                                                    key: the SNI name

Keys are compared lower-case. At most ``max_hosts`` hosts are kept (the least recently
recorded host goes first) and at most ``per_host`` events per host and kind (oldest first),
so a long load test cannot grow the server without bound.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

__all__ = ["KINDS", "RequestHistory", "http_host_key"]

KINDS = ("http", "dns", "tlsalpn")


def http_host_key(host_header: str) -> str:
    """The history key of an HTTP Host header: without its port (``[::1]:80`` -> ``::1``)."""
    host = host_header.strip()
    if host.startswith("["):
        end = host.find("]")
        if end > 0 and (host[end + 1 :] == "" or host[end + 1 :].startswith(":")):
            return host[1:end] if host[end + 1 :] else host
        return host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _key(host: str) -> str:
    return host.strip().rstrip(".").lower()


class RequestHistory:
    """Bounded per-host, per-kind event lists (see the module docstring)."""

    def __init__(self, *, max_hosts: int = 4096, per_host: int = 256) -> None:
        self.max_hosts = max_hosts
        self.per_host = per_host
        self._hosts: OrderedDict[str, dict[str, deque[dict[str, Any]]]] = OrderedDict()

    def add(self, kind: str, host: str, event: dict[str, Any]) -> None:
        key = _key(host)
        kinds = self._hosts.get(key)
        if kinds is None:
            kinds = self._hosts[key] = {}
            while len(self._hosts) > self.max_hosts:
                self._hosts.popitem(last=False)
        else:
            self._hosts.move_to_end(key)
        events = kinds.get(kind)
        if events is None:
            events = kinds[kind] = deque(maxlen=self.per_host)
        events.append(event)

    def get(self, kind: str, host: str) -> list[dict[str, Any]]:
        kinds = self._hosts.get(_key(host))
        if not kinds or kind not in kinds:
            return []
        return list(kinds[kind])

    def clear(self, kind: str, host: str) -> None:
        kinds = self._hosts.get(_key(host))
        if kinds is not None:
            kinds.pop(kind, None)
            if not kinds:
                del self._hosts[_key(host)]
