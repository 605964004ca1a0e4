"""Keys, JWS, CSRs and certIDs of pytest_wec.acme, checked against josepy and certbot's acme."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
from typing import Any

import orjson
import pytest
from acme import challenges as acme_challenges
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy import jwk as jose_jwk

from pytest_wec.acme import (
    AccountKey,
    b64url,
    b64url_decode,
    cert_id,
    cert_key_from_pem,
    cert_key_to_pem,
    dns01_txt_value,
    external_account_binding,
    generate_cert_key,
    josepy_sign,
    key_authorization,
    key_change_jws,
    make_csr,
    sign_jws,
)

URL = "https://ca.test/acme/new-order"
NONCE = "a3Ryb2J1c3Rub25jZQ"
KID = "https://ca.test/acme/acct/1"

_KEYS: dict[str, AccountKey] = {}


def key_for(alg: str) -> AccountKey:
    if alg not in _KEYS:
        _KEYS[alg] = AccountKey.generate(alg)
    return _KEYS[alg]


def jose_public(key: AccountKey) -> jose_jwk.JWK:
    cls = jose_jwk.JWKRSA if key.alg == "RS256" else jose_jwk.JWKEC
    return cls(key=key.private_key.public_key())


def verify_with_josepy(raw: bytes, key: AccountKey) -> Any:
    """Parse with certbot's acme.jws and verify with josepy; return the JWS."""
    jws = acme_jws.JWS.json_loads(raw)
    assert jws.verify(jose_public(key))
    return jws


ALGS = ["ES256", "ES384", "ES512", "RS256"]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("kid", [None, KID])
def test_jws_verifies_with_josepy(alg: str, kid: str | None) -> None:
    key = key_for(alg)
    raw = key.sign(URL, {"identifiers": [{"type": "dns", "value": "a.test"}]}, NONCE, kid)
    jws = verify_with_josepy(raw, key)
    header = jws.signature.combined
    assert header.alg.name == alg
    assert header.url == URL
    assert header.nonce == b64url_decode(NONCE)
    if kid is None:
        assert header.kid is None
        assert header.jwk == jose_public(key)
    else:
        assert header.kid == kid
        assert header.jwk is None
    assert orjson.loads(jws.payload) == {"identifiers": [{"type": "dns", "value": "a.test"}]}
    # flattened JSON serialisation, protected header only (RFC 8555 §6.2)
    obj = orjson.loads(raw)
    assert set(obj) == {"protected", "payload", "signature"}
    protected = orjson.loads(b64url_decode(obj["protected"]))
    assert set(protected) == {"alg", "nonce", "url", "jwk" if kid is None else "kid"}


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ecdsa_signature_is_raw_r_s(alg: str) -> None:
    key = key_for(alg)
    size = {"ES256": 32, "ES384": 48, "ES512": 66}[alg]
    obj = orjson.loads(key.sign(URL, b"{}", NONCE, KID))
    assert len(b64url_decode(obj["signature"])) == 2 * size


def test_post_as_get_has_empty_payload() -> None:
    key = key_for("ES256")
    raw = key.sign(URL, None, NONCE, KID)
    assert orjson.loads(raw)["payload"] == ""
    assert verify_with_josepy(raw, key).payload == b""


@pytest.mark.parametrize("alg", ALGS)
def test_jwk_and_thumbprint_match_josepy(alg: str) -> None:
    key = key_for(alg)
    pub = jose_public(key)
    assert key.jwk == pub.to_partial_json()
    assert key.thumbprint == b64url(pub.thumbprint())


def test_rsa_key_from_pem_signs() -> None:
    key = key_for("RS256")
    loaded = AccountKey.from_pem(key.to_pem())
    assert loaded.alg == "RS256"
    assert loaded == key and hash(loaded) == hash(key)
    assert loaded.thumbprint == key.thumbprint
    verify_with_josepy(loaded.sign(URL, b'{"a":1}', NONCE, None), key)
    # str PEM works too
    assert AccountKey.from_pem(key.to_pem().decode()) == key


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ec_key_pem_round_trip_infers_alg(alg: str) -> None:
    key = key_for(alg)
    assert AccountKey.from_pem(key.to_pem()).alg == alg


def test_rsa_sizes() -> None:
    key = AccountKey.generate("RS256", bits=3072)
    assert key.private_key.key_size == 3072
    verify_with_josepy(key.sign(URL, None, NONCE, KID), key)
    with pytest.raises(ValueError, match="bits"):
        AccountKey.generate("RS256", bits=1024)


def test_bad_algs() -> None:
    with pytest.raises(ValueError, match="unsupported alg"):
        AccountKey.generate("HS256")
    with pytest.raises(ValueError, match="does not fit"):
        AccountKey.from_pem(key_for("ES256").to_pem(), alg="ES384")
    with pytest.raises(ValueError, match="does not fit"):
        AccountKey.from_pem(key_for("RS256").to_pem(), alg="ES256")


def test_repr_never_shows_the_private_key() -> None:
    key = key_for("ES256")
    text = repr(key)
    assert key.thumbprint in text
    assert "PRIVATE" not in text and "private" not in text


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_josepy_signer_is_equivalent(alg: str) -> None:
    key = key_for(alg)
    for kid in (None, KID):
        ours = orjson.loads(sign_jws(key, URL, b"{}", NONCE, kid))
        theirs = orjson.loads(josepy_sign(key, URL, b"{}", NONCE, kid))
        assert orjson.loads(b64url_decode(ours["protected"])) == orjson.loads(
            b64url_decode(theirs["protected"])
        )
        assert ours["payload"] == theirs["payload"]
        verify_with_josepy(josepy_sign(key, URL, None, NONCE, kid), key)


def test_key_change_inner_jws() -> None:
    old, new = key_for("ES256"), AccountKey.generate("ES384")
    raw = key_change_jws(new, KID, old, "https://ca.test/acme/key-change")
    jws = verify_with_josepy(raw, new)
    header = jws.signature.combined
    assert header.nonce is None
    assert header.url == "https://ca.test/acme/key-change"
    assert header.jwk == jose_public(new)
    assert orjson.loads(jws.payload) == {"account": KID, "oldKey": old.jwk}


def test_external_account_binding() -> None:
    key = key_for("ES256")
    mac_key = b"0123456789abcdef0123456789abcdef"
    eab = external_account_binding(key, "https://ca.test/new-acct", "kid-1", mac_key)
    protected = orjson.loads(b64url_decode(eab["protected"]))
    assert protected == {"alg": "HS256", "kid": "kid-1", "url": "https://ca.test/new-acct"}
    assert orjson.loads(b64url_decode(eab["payload"])) == key.jwk
    data = f"{eab['protected']}.{eab['payload']}".encode()
    expected = hmac.new(mac_key, data, hashlib.sha256).digest()
    assert b64url_decode(eab["signature"]) == expected


def test_key_authorization_and_dns01_match_certbot() -> None:
    key = key_for("ES256")
    token = b64url(b"0123456789abcdef")
    pub = jose_public(key)
    chall = acme_challenges.HTTP01(token=b64url_decode(token))
    assert key_authorization(token, key) == chall.key_authorization(pub)
    dns = acme_challenges.DNS01(token=b64url_decode(token))
    assert dns01_txt_value(key_authorization(token, key)) == dns.validation(pub)


def test_dns01_value_rfc_shape() -> None:
    value = dns01_txt_value("token.thumb")
    assert value == base64.urlsafe_b64encode(hashlib.sha256(b"token.thumb").digest()).decode()[:-1]


# -- CSRs and certificate keys ------------------------------------------------


@pytest.mark.parametrize("kind", ["ec256", "ec384", "rsa2048"])
def test_make_csr(kind: str) -> None:
    key = generate_cert_key(kind)
    names = ["a.test", "*.a.test", "192.0.2.1", "2001:db8::1"]
    csr = x509.load_der_x509_csr(make_csr(names, key))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.test", "*.a.test"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("192.0.2.1"),
        ipaddress.ip_address("2001:db8::1"),
    ]
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.test"
    assert cert_key_from_pem(cert_key_to_pem(key)).public_key() == key.public_key()


def test_make_csr_ip_only_and_long_names() -> None:
    key = generate_cert_key("ec256")
    csr = x509.load_der_x509_csr(make_csr(["127.0.0.1"], key))
    assert list(csr.subject) == []
    long_name = "x" * 60 + ".example.test"
    csr = x509.load_der_x509_csr(make_csr([long_name], AccountKey.from_private_key(key)))
    assert list(csr.subject) == []
    with pytest.raises(ValueError):
        make_csr([], key)
    with pytest.raises(ValueError, match="unknown certificate key kind"):
        generate_cert_key("dsa1024")


def _cert_with(aki: bytes, serial: int) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier(aki, None, None),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def test_cert_id_matches_ari_example() -> None:
    # RFC 9773 §4.1 example: keyIdentifier 69:88:5B:..., serial 00:87:65:43:21
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    der = _cert_with(aki, 0x87654321)
    assert cert_id(der) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    # no leading zero when the high bit is clear
    assert cert_id(_cert_with(aki, 0x12345678)).endswith("." + b64url(bytes.fromhex("12345678")))
