"""A :class:`~pytest_wec.acme._jws.JwsSigner` built on josepy (RFC 8555 §6.2).

The slow reference: about five times the CPU of :func:`sign_jws`, kept as the
baseline for ``bench/bench_jws.py`` and as a cross-check. josepy implements
the base JOSE header only, so ACME's ``nonce`` and ``url`` header parameters
are added here, as certbot's ``acme.jws`` does.
"""

from __future__ import annotations

import functools
from typing import Any

from josepy import json_util, jwa, jwk, jws

from ._jws import AccountKey, b64url_decode

__all__ = ["josepy_sign"]


class _Header(jws.Header):
    nonce: bytes | None = json_util.field(
        "nonce",
        omitempty=True,
        encoder=json_util.encode_b64jose,
        decoder=json_util.decode_b64jose,
    )
    kid: str | None = json_util.field("kid", omitempty=True)
    url: str | None = json_util.field("url", omitempty=True)


class _Signature(jws.Signature):
    __slots__ = jws.Signature._orig_slots
    header_cls = _Header
    header: _Header = json_util.field(
        "header", omitempty=True, default=_Header(), decoder=_Header.from_json
    )


class _JWS(jws.JWS):
    signature_cls = _Signature
    __slots__ = jws.JWS._orig_slots


_ALGS = {"ES256": jwa.ES256, "ES384": jwa.ES384, "ES512": jwa.ES512, "RS256": jwa.RS256}


@functools.lru_cache(maxsize=1024)
def _jose_key(key: AccountKey) -> Any:
    cls = jwk.JWKRSA if key.alg == "RS256" else jwk.JWKEC
    return cls(key=key.private_key)


def josepy_sign(
    key: AccountKey, url: str, payload: bytes | None, nonce: str | None, kid: str | None, /
) -> bytes:
    """Sign like :func:`~pytest_wec.acme._jws.sign_jws`, through josepy."""
    jws = _JWS.sign(
        b"" if payload is None else payload,
        key=_jose_key(key),
        alg=_ALGS[key.alg],
        protect=frozenset(["nonce", "url", "kid", "jwk", "alg"]),
        include_jwk=kid is None,
        nonce=None if nonce is None else b64url_decode(nonce),
        url=url,
        kid=kid,
    )
    out: bytes = jws.json_dumps().encode("utf-8")
    return out
