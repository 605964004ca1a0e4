"""External Account Binding keys (RFC 8555 §7.3.4) as the settings take them.

A CA that binds ACME accounts to accounts of its own hands out, for each binding, a key
identifier (``kid``) and an HMAC key, base64url-encoded (RFC 4648 §5; with or without
``=`` padding). Every newAccount then carries an HS256 JWS by that key over the account's
public key. They come from one of:

``--wec-eab-kid KID`` with ``--wec-eab-hmac KEY``
    one binding, which every new account sends;
``--wec-eab-file PATH``
    several, one ``KID HMAC`` pair per line (whitespace between them; blank lines and lines
    starting with ``#`` are ignored), which new accounts take in turn;
``--wec-pebble-eab``
    keys generated for the embedded Pebble (:func:`generate`), when none of the above is
    given.

``--wec-eab-single-use`` says the CA takes each key once: no key is sent twice in a run.

The file is read where the settings are resolved (the controller), never on a worker: the
keys reach workers in the stack's info (:meth:`EabKeys.to_plain`), so that a worker on
another host needs no copy of the file. Nothing here prints an HMAC key: a malformed one is
described, never echoed.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_wec.errors import ConfigError

__all__ = ["EabKey", "EabKeys", "check_eab", "generate", "parse_hmac", "parse_kid",
           "read_file", "write_file"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
#: keys ``--wec-pebble-eab`` generates when no key is given
GENERATED = 8
#: the HMAC key length of generated keys, in bytes (HS256: 256 bits, RFC 7518 §3.2)
GENERATED_BYTES = 32


def parse_kid(text: str) -> str:
    """A key identifier: any text without whitespace (the file separates fields by it)."""
    kid = text.strip()
    if not kid or any(ch.isspace() or not ch.isprintable() for ch in kid):
        raise ValueError("expected the key id the CA gave (no spaces)")
    return kid


def parse_hmac(text: str) -> bytes:
    """A base64url HMAC key -> its bytes. The error says what is wrong without the value."""
    t = text.strip()
    if not t:
        raise ValueError("expected the base64url HMAC key the CA gave, got an empty one")
    bad = next((i for i, ch in enumerate(t) if not (ch.isascii() and (ch.isalnum() or ch in
                                                                      "-_="))), None)
    if bad is not None:
        hint = (" ('+' and '/' are base64, not base64url: the CA's keys use '-' and '_')"
                if t[bad] in "+/" else "")
        raise ValueError(f"expected a base64url HMAC key (A-Z a-z 0-9 - _, '=' padding at "
                         f"the end), character {bad + 1} of {len(t)} is not{hint}")
    body = t.rstrip("=")
    if not _B64URL.fullmatch(t) or len(body) % 4 == 1 or (
            len(t) != len(body) and len(t) % 4):
        raise ValueError(f"expected a base64url HMAC key: {len(t)} characters cannot be "
                         "base64url ('=' only as the last one or two, none inside)")
    try:  # at least 2 characters are left: at least one byte
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("expected a base64url HMAC key, which this is not") from None


def b64url(data: bytes) -> str:
    """Unpadded base64url, as Pebble's config and the ACME world write keys."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class EabKey:
    """One binding: the CA's key id and the HMAC key's bytes (never in its repr)."""

    kid: str
    hmac: bytes = field(repr=False)

    @property
    def hmac_b64(self) -> str:
        return b64url(self.hmac)


@dataclass(frozen=True)
class EabKeys:
    """The run's bindings, whether the CA takes each once, and where they came from (an
    option and its value, for messages: ``--wec-eab-file keys.txt``)."""

    keys: tuple[EabKey, ...]
    single_use: bool = False
    source: str = "--wec-eab-kid"

    def mac_keys(self) -> dict[str, str]:
        """kid -> base64url HMAC key, as Pebble's ``externalAccountMACKeys`` takes them."""
        return {k.kid: k.hmac_b64 for k in self.keys}

    def to_plain(self) -> dict[str, Any]:
        """Plain data for the stack's info (workers get their keys from it)."""
        return {"keys": [[k.kid, k.hmac_b64] for k in self.keys],
                "single_use": self.single_use, "source": self.source}

    @classmethod
    def from_plain(cls, data: Mapping[str, Any]) -> EabKeys:
        keys = tuple(EabKey(str(kid), parse_hmac(str(mac))) for kid, mac in data["keys"])
        return cls(keys, bool(data.get("single_use")), str(data.get("source") or "EAB"))


def read_file(path: str | Path) -> tuple[EabKey, ...]:
    """The keys of an EAB file (one ``KID HMAC`` a line); ValueError naming the line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("a directory, not a file of keys") from None
    except UnicodeDecodeError:
        raise ValueError("not a text file of 'KID HMAC' lines") from None
    except OSError as exc:
        raise ValueError(f"cannot read it: {exc.strerror or exc}") from None
    keys: list[EabKey] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise ValueError(f"line {n}: expected 'KID HMAC' (two fields), got "
                             f"{len(fields)} field{'s' if len(fields) != 1 else ''}")
        kid = fields[0]
        if kid in seen:
            raise ValueError(f"line {n}: key id {kid!r} again (first on line {seen[kid]})")
        try:
            mac = parse_hmac(fields[1])
        except ValueError as exc:
            raise ValueError(f"line {n} (key id {kid!r}): {exc}") from None
        seen[kid] = n
        keys.append(EabKey(parse_kid(kid), mac))
    if not keys:
        raise ValueError("no keys in it (expected one 'KID HMAC' a line)")
    return tuple(keys)


def write_file(path: Path, keys: EabKeys) -> None:
    """Write *keys* in :func:`read_file`'s format, readable by the owner only."""
    lines = [f"# External Account Binding keys ({keys.source}), one 'KID HMAC' a line",
             *(f"{k.kid} {k.hmac_b64}" for k in keys.keys)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def generate(n: int = GENERATED, *, single_use: bool = False) -> EabKeys:
    """*n* fresh keys, ids ``wec-eab-1`` ... (``--wec-pebble-eab``)."""
    keys = tuple(EabKey(f"wec-eab-{i}", secrets.token_bytes(GENERATED_BYTES))
                 for i in range(1, n + 1))
    return EabKeys(keys, single_use, "--wec-pebble-eab")


def check_eab(values: Mapping[str, Any], sources: Mapping[str, str]) -> EabKeys | None:
    """The keys the resolved *values* give, or None; ConfigError for a combination that
    cannot work (called by :func:`~pytest_wec.settings.resolve`, on the controller)."""

    def where(name: str) -> str:
        return sources.get(name.replace("-", "_"), f"--wec-{name}")

    kid, mac, path = values.get("eab_kid"), values.get("eab_hmac"), values.get("eab_file")
    single_use = bool(values.get("eab_single_use"))
    if values.get("pebble_eab") and values.get("directory"):
        raise ConfigError(f"{where('pebble-eab')} configures the embedded Pebble; with "
                          f"{where('directory')} there is none (give that CA's keys with "
                          "--wec-eab-kid and --wec-eab-hmac, or --wec-eab-file)")
    if path is not None and (kid is not None or mac is not None):
        raise ConfigError(f"{where('eab-file')} and {where('eab-kid')}/--wec-eab-hmac "
                          "exclude each other: give one key or a file of keys")
    if (kid is None) != (mac is None):
        given, missing = ("eab-kid", "eab-hmac") if mac is None else ("eab-hmac", "eab-kid")
        raise ConfigError(f"{where(given)} needs --wec-{missing} too: a binding is a key id "
                          "and its HMAC key")
    if path is not None:
        try:
            keys = read_file(path)
        except ValueError as exc:
            raise ConfigError(f"{where('eab-file')}: {exc}, got {path!r}") from None
        return EabKeys(keys, single_use, f"--wec-eab-file {path}")
    if kid is not None and mac is not None:
        return EabKeys((EabKey(str(kid), bytes(mac)),), single_use, "--wec-eab-kid")
    if single_use and not values.get("pebble_eab"):
        raise ConfigError(f"{where('eab-single-use')}: no keys to use once; give "
                          "--wec-eab-kid and --wec-eab-hmac, --wec-eab-file or "
                          "--wec-pebble-eab")
    return None
