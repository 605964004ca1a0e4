"""Pebble (Debian's ``pebble`` package) with a generated TLS certificate and config.

The WFE's TLS certificate is issued by a small CA generated here; the CA's certificate
is written as ``pebble-ca.pem`` in the run directory and used as the client's CA bundle.
Pebble's ACME and management listeners bind the stack's one address (``--wec-listen``),
which the certificate names besides loopback, and its DNS is the challenge server's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import ssl
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pytest_wec.stack._procs import ManagedProcess, find_binary, free_port, host_port

__all__ = ["PEBBLE_DEFAULT_ENV", "PebbleInfo", "start_pebble", "write_tls_material"]

#: Defaults for load; any PEBBLE_* variable in the user's environment overrides them.
PEBBLE_DEFAULT_ENV: Mapping[str, str] = {
    "PEBBLE_VA_NOSLEEP": "1",
    "PEBBLE_WFE_NONCEREJECT": "0",
    "PEBBLE_ALTERNATE_ROOTS": "1",
    # Pebble reuses a valid authorization for an identifier of the same account only this
    # percent of the time (default 50); 100 makes reuse deterministic, so the
    # reuse_authorization chain can assert it (RFC 8555 §7.4 lets a CA reuse).
    "PEBBLE_AUTHZREUSE": "100",
}


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_tls_material(directory: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1",
                                                                    "::1")) -> tuple[Path, Path,
                                                                                     Path]:
    """A CA and a server certificate for *hosts* (IP and DNS SANs; the common name is the
    first); returns (ca.pem, cert.pem, key.pem)."""
    hosts = tuple(dict.fromkeys(h.strip("[]") for h in hosts))
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wec test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca_path = directory / "pebble-ca.pem"
    cert_path = directory / "pebble-cert.pem"
    key_path = directory / "pebble-key.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(_pem_key(key))
    return ca_path, cert_path, key_path


class PebbleInfo:
    def __init__(self, directory: str, management: str, ca_bundle: Path,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        self.tls = tls  # (ca, cert, key) it serves with
        self.directory = directory
        self.management = management
        self.ca_bundle = ca_bundle


def _get_ok(url: str, ca: Path) -> bool:
    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
        return bool(resp.status == 200)


def start_pebble(
    run_dir: Path,
    *,
    http_port: int,
    tls_port: int,
    dns_server: str,
    host: str = "127.0.0.1",
    binary: str | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = 20.0,
    strict: bool = False,
    shard: int = 0,
    tls: tuple[Path, Path, Path] | None = None,
    eab: Mapping[str, str] | None = None,
) -> tuple[ManagedProcess, PebbleInfo]:
    """Start Pebble on *host* with its http-01/tls-alpn-01 ports and DNS pointing at our
    server. *shard* > 0 names a further Pebble of the run (``pebble-1.log``, ...), which
    serves with the first one's TLS material (*tls*: ca, cert, key).

    *eab* (kid -> unpadded base64url HMAC key) makes it require External Account Binding
    (RFC 8555 §7.3.4): Pebble 2.4's ``externalAccountBindingRequired`` and
    ``externalAccountMACKeys``. It then refuses a newAccount without a binding
    (``externalAccountRequired``) and one whose kid or MAC it does not know
    (``unauthorized``); it takes a key any number of times."""
    exe = find_binary("pebble", binary)
    ca, cert, key = tls or write_tls_material(run_dir, ("localhost", "127.0.0.1", "::1", host))
    suffix = f"-{shard}" if shard else ""
    acme_port, mgmt_port = free_port(host), free_port(host)
    acme, mgmt = host_port(host, acme_port), host_port(host, mgmt_port)
    config = {
        "pebble": {
            "listenAddress": acme,
            "managementListenAddress": mgmt,
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": eab is not None,
        }
    }
    if eab is not None:
        config["pebble"]["externalAccountMACKeys"] = dict(eab)
    cfg_path = run_dir / f"pebble-config{suffix}.json"
    fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # MAC keys in it
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(config, indent=2))
    env = dict(os.environ if environ is None else environ)
    for name, value in PEBBLE_DEFAULT_ENV.items():
        env.setdefault(name, value)
    argv = [exe, "-config", str(cfg_path), "-dnsserver", dns_server]
    if strict:
        argv.append("-strict")
    proc = ManagedProcess(f"pebble{suffix}", argv, run_dir / f"pebble{suffix}.log", env=env,
                          cwd=run_dir)
    directory = f"https://{acme}/dir"
    proc.wait_ready(lambda: _get_ok(directory, ca), timeout, f"GET {directory} answering 200")
    return proc, PebbleInfo(directory, f"https://{mgmt}", ca, (ca, cert, key))
