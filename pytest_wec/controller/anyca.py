"""The controller's checks and lines that fit a run to its CA, whichever it is.

``--wec-profile``          :func:`check_profile`: the directory must advertise the profile
                           (draft-aaron-acme-profiles, ``meta.profiles``), checked once the
                           stack is up and before any chain or load starts
``--wec-challenge-ports``  :func:`check_ports_free`: each fixed port must be free on
                           ``--wec-listen`` at the session's start
both, and ``--wec-ip``     :func:`challenge_header` (the report header),
                           :func:`challenge_server_of` and :func:`addresses_line` (where the
                           challenge server answered: summary.json, the terminal)

A failed check is a :class:`~pytest_wec.errors.ConfigError` naming the option: the run
stops with a usage error, not with chains failing one after another for the same reason.
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import urllib.request
from collections.abc import Mapping
from typing import Any

from pytest_wec.errors import ConfigError, StackError
from pytest_wec.settings import Settings

__all__ = ["addresses_line", "challenge_header", "challenge_server_of", "check_ports_free",
           "check_profile", "read_directory"]

#: seconds the profile check waits for the directory at most
DIRECTORY_TIMEOUT = 15.0


def challenge_header(s: Settings) -> list[str]:
    """The header line of the profile, the challenge server's addresses and fixed ports,
    when any is given."""
    parts: list[str] = []
    if s.profile:
        parts.append(f"profile {s.profile} in every new order")
    if s.ip is not None:
        parts.append(f"challenge server at {s.ip.describe()} (IP identifiers)")
    if s.challenge_ports is not None:
        ports = s.challenge_ports
        where = ("the challtestsrv's, told the embedded Pebble" if s.challtestsrv
                 else f"fixed on {s.listen}, the others free")
        parts.append(f"challenge server ports {ports.describe()} ({where})")
    return ["wec: " + "; ".join(parts)] if parts else []


def challenge_server_of(info: Mapping[str, Any]) -> dict[str, str]:
    """Where the challenge server answered, by listener (``http-01``, ``tls-alpn-01``,
    ``dns``, ``management``: ``host:port``), or ``{"challtestsrv": URL}``."""
    if info.get("challtestsrv"):
        return {"challtestsrv": str(info["challtestsrv"])}
    return {str(k): str(v) for k, v in (info.get("challenge_addresses") or {}).items()}


def addresses_line(info: Mapping[str, Any]) -> str | None:
    """``wec: challenge server: http-01 127.0.0.1:5002, ...``; None without a stack."""
    where = challenge_server_of(info)
    if not where:
        return None
    if "challtestsrv" in where:
        return f"wec: challenges published through the challtestsrv at {where['challtestsrv']}"
    return "wec: challenge server: " + ", ".join(f"{k} {v}" for k, v in where.items())


def check_ports_free(s: Settings) -> None:
    """Each port of ``--wec-challenge-ports`` can be bound on ``--wec-listen`` now (the
    embedded challenge server binds them when the stack starts); ConfigError naming the
    first that cannot. Nothing to check when the challenge server is a challtestsrv."""
    if s.challenge_ports is None or s.challtestsrv is not None:
        return
    source = s.sources.get("challenge_ports", "--wec-challenge-ports")
    family = socket.AF_INET6 if ":" in s.listen else socket.AF_INET
    for kind, port in s.challenge_ports.ports.items():
        kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if kind == "dns" else (
            socket.SOCK_STREAM,)
        for sock_type in kinds:
            with socket.socket(family, sock_type) as sock:
                if sock_type == socket.SOCK_STREAM:  # as the challenge server binds it
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((s.listen, port))
                except OSError as exc:
                    proto = "UDP" if sock_type == socket.SOCK_DGRAM else "TCP"
                    raise ConfigError(
                        f"{source}: the {kind} port {port} ({proto}) cannot be bound on "
                        f"{s.listen}: {exc.strerror or exc}") from None


def _context(info: Mapping[str, Any]) -> ssl.SSLContext:
    if info.get("insecure"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=info.get("ca_bundle") or None)


def read_directory(info: Mapping[str, Any], timeout: float = DIRECTORY_TIMEOUT) -> Any:
    """The CA's directory object (RFC 8555 §7.1.1), read from the controller; StackError
    when it cannot be read."""
    url = str(info["directory"])
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with contextlib.closing(urllib.request.urlopen(
                request, timeout=timeout, context=_context(info))) as resp:
            return json.loads(resp.read(1 << 20))
    except (OSError, ValueError) as exc:
        raise StackError(f"cannot read the directory {url}: {exc}") from None


def check_profile(s: Settings, info: Mapping[str, Any]) -> None:
    """``--wec-profile`` names a profile the directory advertises (``meta.profiles``,
    draft-aaron-acme-profiles §3); ConfigError saying what the CA offers otherwise."""
    if not s.profile:
        return
    source = s.sources.get("profile", "--wec-profile")
    directory = read_directory(info, min(s.timeout, DIRECTORY_TIMEOUT))
    meta = directory.get("meta") if isinstance(directory, dict) else None
    profiles = meta.get("profiles") if isinstance(meta, dict) else None
    url = info["directory"]
    if not isinstance(profiles, dict) or not profiles:
        raise ConfigError(
            f"{source}: the CA at {url} advertises no profiles (its directory's meta has no "
            f"'profiles', draft-aaron-acme-profiles): no order can ask for {s.profile!r}")
    if s.profile not in profiles:
        offered = ", ".join(f"{name} ({str(about)[:60]})" if about else str(name)
                            for name, about in profiles.items())
        raise ConfigError(f"{source}: the CA at {url} offers no profile {s.profile!r}; it "
                          f"offers: {offered}")
