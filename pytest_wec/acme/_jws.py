"""Account keys and the JWS that authenticates every ACME POST (RFC 8555 §6.2).

The JWS is built by hand: ``cryptography`` signs, ``orjson`` serialises the
protected header, and the flattened JSON serialisation (RFC 7515 §7.2.2) is
assembled from base64url pieces, which need no JSON escaping. The JWK and its
RFC 7638 thumbprint are computed once per key. ECDSA signatures are the raw
``r || s`` form of RFC 7518 §3.4, not DER.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = [
    "AccountKey",
    "JwsSigner",
    "b64url",
    "b64url_decode",
    "dns01_txt_value",
    "external_account_binding",
    "jwk_public_key",
    "key_authorization",
    "key_change_jws",
    "sign_jws",
    "tls_alpn01_digest",
    "verify_signature",
]

# alg -> (curve class, hash class, coordinate size in bytes, JWK "crv")
_EC_ALGS: dict[str, tuple[type[ec.EllipticCurve], type[hashes.HashAlgorithm], int, str]] = {
    "ES256": (ec.SECP256R1, hashes.SHA256, 32, "P-256"),
    "ES384": (ec.SECP384R1, hashes.SHA384, 48, "P-384"),
    "ES512": (ec.SECP521R1, hashes.SHA512, 66, "P-521"),
}
_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_RSA_BITS = (2048, 3072, 4096)
_PKCS1 = padding.PKCS1v15()

AccountPrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 8555 §6.1, RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(text: str | bytes) -> bytes:
    """Decode base64url with or without padding."""
    raw = text.encode("ascii") if isinstance(text, str) else text
    return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))


def _uint(n: int, size: int | None = None) -> bytes:
    if size is None:
        size = max(1, (n.bit_length() + 7) // 8)
    return n.to_bytes(size, "big")


def _ecdsa_signer(
    key: ec.EllipticCurvePrivateKey, algorithm: ec.ECDSA, size: int
) -> Callable[[bytes], bytes]:
    sign = key.sign

    def signer(data: bytes) -> bytes:
        r, s = decode_dss_signature(sign(data, algorithm))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    return signer


def _rsa_signer(key: rsa.RSAPrivateKey) -> Callable[[bytes], bytes]:
    sign = key.sign
    sha256 = hashes.SHA256()

    def signer(data: bytes) -> bytes:
        return sign(data, _PKCS1, sha256)

    return signer


@dataclass(frozen=True, eq=False, repr=False)
class AccountKey:
    """A private key that signs ACME requests, with its cached JWK and thumbprint.

    Accounts (RFC 8555 §7.3) use ES256 (P-256, the default), ES384, ES512 or
    RS256 (2048, 3072 or 4096 bits). Certificate keys can be wrapped too, to
    revoke a certificate with its own key (§7.6).
    """

    alg: str
    private_key: AccountPrivateKey
    _jwk: dict[str, str] = field(init=False)
    _thumbprint: str = field(init=False)
    _signer: Callable[[bytes], bytes] = field(init=False)

    def __post_init__(self) -> None:
        key = self.private_key
        jwk: dict[str, str]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            spec = _EC_ALGS.get(self.alg)
            if spec is None or _CURVE_ALG.get(key.curve.name) != self.alg:
                raise ValueError(f"alg {self.alg!r} does not fit an EC key on {key.curve.name}")
            _, hash_cls, size, crv = spec
            nums = key.public_key().public_numbers()
            jwk = {
                "crv": crv,
                "kty": "EC",
                "x": b64url(_uint(nums.x, size)),
                "y": b64url(_uint(nums.y, size)),
            }
            object.__setattr__(self, "_signer", _ecdsa_signer(key, ec.ECDSA(hash_cls()), size))
        elif isinstance(key, rsa.RSAPrivateKey):
            if self.alg != "RS256":
                raise ValueError(f"alg {self.alg!r} does not fit an RSA key (use RS256)")
            rnums = key.public_key().public_numbers()
            jwk = {"e": b64url(_uint(rnums.e)), "kty": "RSA", "n": b64url(_uint(rnums.n))}
            object.__setattr__(self, "_signer", _rsa_signer(key))
        else:
            raise TypeError(f"unsupported key type {type(key).__name__}")
        object.__setattr__(self, "_jwk", jwk)
        # RFC 7638 §3: required members only, sorted, no whitespace.
        canonical = orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS)
        object.__setattr__(self, "_thumbprint", b64url(hashlib.sha256(canonical).digest()))

    # -- construction -------------------------------------------------------

    @classmethod
    def generate(cls, alg: str = "ES256", bits: int = 2048) -> AccountKey:
        """A new key for ``alg``; ``bits`` applies to RS256 only."""
        if alg in _EC_ALGS:
            return cls(alg, ec.generate_private_key(_EC_ALGS[alg][0]()))
        if alg == "RS256":
            if bits not in _RSA_BITS:
                raise ValueError(f"RSA bits must be one of {_RSA_BITS}, got {bits}")
            return cls(alg, rsa.generate_private_key(public_exponent=65537, key_size=bits))
        raise ValueError(f"unsupported alg {alg!r}; expected ES256, ES384, ES512 or RS256")

    @classmethod
    def from_private_key(cls, key: object, alg: str | None = None) -> AccountKey:
        """Wrap a ``cryptography`` private key; ``alg`` is inferred when None."""
        if isinstance(key, ec.EllipticCurvePrivateKey):
            inferred = _CURVE_ALG.get(key.curve.name)
            if inferred is None:
                raise ValueError(f"unsupported curve {key.curve.name}")
            return cls(alg or inferred, key)
        if isinstance(key, rsa.RSAPrivateKey):
            return cls(alg or "RS256", key)
        raise TypeError(f"unsupported key type {type(key).__name__}")

    @classmethod
    def from_pem(cls, pem: bytes | str, alg: str | None = None) -> AccountKey:
        """Load an unencrypted PEM key written by :meth:`to_pem`.

        RSA key validation is skipped (it costs ~30 ms per load): the keys are
        our own, stored by us.
        """
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        key = serialization.load_pem_private_key(
            data, password=None, unsafe_skip_rsa_key_validation=True
        )
        return cls.from_private_key(key, alg)

    def to_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    # -- public views -------------------------------------------------------

    @property
    def jwk(self) -> dict[str, str]:
        """The public JWK (RFC 7517), required members only (a copy)."""
        return dict(self._jwk)

    @property
    def thumbprint(self) -> str:
        """The RFC 7638 SHA-256 thumbprint, base64url (RFC 8555 §8.1)."""
        return self._thumbprint

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccountKey):
            return NotImplemented
        return self.alg == other.alg and self._thumbprint == other._thumbprint

    def __hash__(self) -> int:
        return hash((self.alg, self._thumbprint))

    def __repr__(self) -> str:
        return f"AccountKey(alg={self.alg!r}, thumbprint={self._thumbprint!r})"

    # -- signing --------------------------------------------------------------

    def signature(self, data: bytes) -> bytes:
        """The JWS signature of ``data`` (raw ``r || s`` for ECDSA, RFC 7518 §3.4)."""
        return self._signer(data)

    def sign(
        self,
        url: str,
        payload: bytes | Mapping[str, Any] | None,
        nonce: str | None,
        kid: str | None,
    ) -> bytes:
        """A flattened JSON JWS for an ACME request (RFC 8555 §6.2).

        ``payload`` None gives the empty payload of POST-as-GET (§6.3); a
        mapping is serialised as JSON. The protected header carries ``kid``
        when given (the account URL), else the ``jwk`` (§6.2: newAccount,
        revokeCert with the certificate key). ``nonce`` None omits the nonce,
        as the inner JWS of keyChange requires (§7.3.5).
        """
        if payload is None:
            pl = b""
        elif isinstance(payload, bytes):
            pl = _b64(payload)
        else:
            pl = _b64(orjson.dumps(payload))
        header: dict[str, Any] = {"alg": self.alg}
        if kid is None:
            header["jwk"] = self._jwk
        else:
            header["kid"] = kid
        if nonce is not None:
            header["nonce"] = nonce
        header["url"] = url
        protected = _b64(orjson.dumps(header))
        sig = _b64(self._signer(protected + b"." + pl))
        return b'{"protected":"%b","payload":"%b","signature":"%b"}' % (protected, pl, sig)


def jwk_public_key(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The public key a JWK describes (EC P-256/384/521 or RSA); ValueError if unusable."""
    try:
        if jwk["kty"] == "EC":
            crv = next((c for c in _EC_ALGS.values() if c[3] == jwk["crv"]), None)
            if crv is None:
                raise ValueError(f"unsupported crv {jwk['crv']!r}")
            x = int.from_bytes(b64url_decode(jwk["x"]), "big")
            y = int.from_bytes(b64url_decode(jwk["y"]), "big")
            return ec.EllipticCurvePublicNumbers(x, y, crv[0]()).public_key()
        if jwk["kty"] == "RSA":
            e = int.from_bytes(b64url_decode(jwk["e"]), "big")
            n = int.from_bytes(b64url_decode(jwk["n"]), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed JWK: {exc!r}") from None
    raise ValueError(f"unsupported kty {jwk.get('kty')!r}")


def verify_signature(
    key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, alg: str, data: bytes, signature: bytes
) -> bool:
    """True when ``signature`` (JWS form, RFC 7518 §3) over ``data`` is valid for ``key``."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            spec = _EC_ALGS.get(alg)
            if spec is None or not isinstance(key.curve, spec[0]):
                return False
            size = spec[2]
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(spec[1]()))
            return True
        if alg != "RS256":
            return False
        key.verify(signature, data, _PKCS1, hashes.SHA256())
        return True
    except InvalidSignature:
        return False


class JwsSigner(Protocol):
    """The signing seam: the network layer calls one of these for every POST."""

    def __call__(
        self,
        key: AccountKey,
        url: str,
        payload: bytes | None,
        nonce: str | None,
        kid: str | None,
        /,
    ) -> bytes: ...


def sign_jws(
    key: AccountKey, url: str, payload: bytes | None, nonce: str | None, kid: str | None, /
) -> bytes:
    """The default :class:`JwsSigner`: :meth:`AccountKey.sign`."""
    return key.sign(url, payload, nonce, kid)


def key_change_jws(new_key: AccountKey, account_url: str, old_key: AccountKey, url: str) -> bytes:
    """The inner JWS of an account key rollover (RFC 8555 §7.3.5).

    Signed by the new key, with its ``jwk``, the keyChange ``url`` and no
    nonce; the payload names the account and its old key.
    """
    return new_key.sign(url, {"account": account_url, "oldKey": old_key._jwk}, None, None)


def external_account_binding(
    key: AccountKey, url: str, eab_kid: str, hmac_key: bytes
) -> dict[str, str]:
    """The ``externalAccountBinding`` of a newAccount payload (RFC 8555 §7.3.4).

    An HS256 JWS by the CA-issued MAC key over the account's public JWK.
    """
    protected = _b64(orjson.dumps({"alg": "HS256", "kid": eab_kid, "url": url}))
    payload = _b64(orjson.dumps(key._jwk))
    mac = hmac.new(hmac_key, protected + b"." + payload, hashlib.sha256).digest()
    return {
        "protected": protected.decode("ascii"),
        "payload": payload.decode("ascii"),
        "signature": b64url(mac),
    }


def key_authorization(token: str, key: AccountKey) -> str:
    """``token || '.' || thumbprint`` (RFC 8555 §8.1)."""
    return f"{token}.{key.thumbprint}"


def dns01_txt_value(key_authz: str) -> str:
    """The TXT record value for dns-01: base64url(SHA-256(key authorization)) (§8.4)."""
    return b64url(hashlib.sha256(key_authz.encode("ascii")).digest())


def tls_alpn01_digest(key_authz: str) -> bytes:
    """SHA-256 of the key authorization, for the acmeIdentifier extension (RFC 8737 §3)."""
    return hashlib.sha256(key_authz.encode("ascii")).digest()
