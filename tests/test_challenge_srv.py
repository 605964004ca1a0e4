"""The challenge server as a real process, checked with real clients.

``python -m pytest_wec_challenge_srv`` (the installed name of challenge_srv/) runs on port 0
against a real redis-server; the management-API cases also run against Debian's
``pebble-challtestsrv`` (started here on free ports), which proves the API compatible.
Fuzzing (hypothesis, bounded) ends with the server still answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from dnslib import EDNS0, QTYPE, RCODE, DNSQuestion, DNSRecord, EDNSOption
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_wec_challenge_srv.store import DnsData

from pytest_wec.testing import stop_process

pytestmark = pytest.mark.redis

ACME_ID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


# -- processes -----------------------------------------------------------------------------


@dataclass
class Target:
    """A running challenge server (ours or pebble-challtestsrv) and its addresses."""

    name: str
    proc: subprocess.Popen[bytes]
    management: str
    http: int
    tls: int
    dns: int
    lines: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_ready(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> list[str]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline().decode()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.strip() == "ready":
                return lines
        elif proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"challenge server not ready; stdout so far: {lines}")


def start_wec(redis_url: str, log: Path, *extra: str, namespace: str | None = None) -> Target:
    listeners = "--http01 127.0.0.1:0 --tlsalpn01 127.0.0.1:0 --dns01 127.0.0.1:0"
    argv = [sys.executable, "-m", "pytest_wec_challenge_srv", *listeners.split()]
    argv += ["--management", "127.0.0.1:0", "--redis", redis_url, "--default-ipv6", "::1"]
    argv += ["--namespace", namespace or f"t-{uuid.uuid4().hex[:8]}", *extra]
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, bufsize=0)
    lines = _read_ready(proc)
    ports: dict[str, int] = {}
    for line in lines[:-1]:
        ports.setdefault(line.split()[1], int(line.rsplit(":", 1)[1]))
    return Target(
        "wec",
        proc,
        f"http://127.0.0.1:{ports['management']}",
        ports["http01"],
        ports["tlsalpn01"],
        ports["dns01"],
        lines,
    )


def stop(target: Target) -> int:
    if target.proc.poll() is None:
        target.proc.send_signal(signal.SIGTERM)
        try:
            target.proc.wait(10)
        except subprocess.TimeoutExpired:
            target.proc.kill()
            target.proc.wait(5)
    if target.proc.stdout is not None:
        target.proc.stdout.close()
    return target.proc.returncode


def _wait_tcp(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def wec_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    log = tmp_path_factory.mktemp("wec") / "challenge-server.log"
    target = start_wec(redis_url, log)
    yield target
    assert stop(target) == 0, "SIGTERM must end the challenge server cleanly"
    text = log.read_text()
    assert "Traceback" not in text and " ERROR " not in text, text[-3000:]


@pytest.fixture(scope="module")
def pebble_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    binary = shutil.which("pebble-challtestsrv")
    if binary is None:
        pytest.skip("pebble-challtestsrv is not installed (apt-get install pebble)")
    http, tls, dns, mgmt = (_free_port() for _ in range(4))
    flags = f"-http01 127.0.0.1:{http} -tlsalpn01 127.0.0.1:{tls} -dns01 127.0.0.1:{dns}"
    flags += f" -management 127.0.0.1:{mgmt} -defaultIPv4 127.0.0.1 -defaultIPv6 ::1"
    argv = [binary, "-https01", "", *flags.split()]
    log = tmp_path_factory.mktemp("pebble") / "pebble-challtestsrv.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    target = Target("pebble", proc, f"http://127.0.0.1:{mgmt}", http, tls, dns)
    try:
        for port in (mgmt, http, tls, dns):
            _wait_tcp(port)
        yield target
    finally:
        stop(target)


@pytest.fixture(scope="module")
def wec_redispy_server(redis_url: str, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[Target]:
    """Ours reading through redis-py on the standard event loop (not the lean client)."""
    log = tmp_path_factory.mktemp("wec-redispy") / "challenge-server.log"
    target = start_wec(redis_url, log, "--redis-client", "redis-py", "--loop", "asyncio")
    yield target
    assert stop(target) == 0
    text = log.read_text()
    assert "reads redis-py" in text and "Traceback" not in text, text[-3000:]


@pytest.fixture(params=["wec", "wec_redispy", pytest.param("pebble", marks=pytest.mark.pebble)])
def server(request: pytest.FixtureRequest) -> Target:
    """Each compatibility case runs against every server: ours with either read client, and
    pebble-challtestsrv."""
    target: Target = request.getfixturevalue(f"{request.param}_server")
    return target


# -- clients -------------------------------------------------------------------------------


def uniq(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}.example"


def post(
    target: Target,
    path: str,
    body: object = None,
    *,
    raw: bytes | None = None,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    content = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    with httpx.Client(trust_env=False, timeout=5) as client:
        return client.request(method, target.management + path, content=content, headers=headers)


def ok(target: Target, path: str, body: object) -> None:
    r = post(target, path, body)
    assert r.status_code == 200, (target.name, path, r.status_code, r.text)


def http_get(target: Target, path: str, **kw: object) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=5) as client:
        return client.get(f"http://127.0.0.1:{target.http}{path}", **kw)  # type: ignore[arg-type]


def dns(
    target: Target, name: str, qtype: str = "A", *, tcp: bool = False, edns: bool = False
) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    if edns:
        q.add_ar(EDNS0(udp_len=1232))
    return DNSRecord.parse(q.send("127.0.0.1", target.dns, tcp=tcp, timeout=5))


def answers(reply: DNSRecord, qtype: str) -> list[str]:
    return [str(rr.rdata) for rr in reply.rr if QTYPE.get(rr.rtype) == qtype]


def handshake(
    port: int, sni: str | None, alpn: list[str] | None
) -> tuple[x509.Certificate, str | None]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def assert_answers(target: Target) -> None:
    """The server is up and answers on every protocol."""
    assert target.alive(), f"{target.name} exited with {target.proc.returncode}"
    assert dns(target, "alive.example").header.rcode == RCODE.NOERROR
    assert dns(target, "alive.example", tcp=True).header.rcode == RCODE.NOERROR
    assert http_get(target, "/.well-known/acme-challenge/x").status_code in (200, 404)
    assert post(target, "/no-such-endpoint", {}).status_code == 404
    with pytest.raises(ssl.SSLError):
        handshake(target.tls, "alive.example", ["acme-tls/1"])


# -- readiness and command line ------------------------------------------------------------


def test_readiness_lines(wec_server: Target) -> None:
    kinds = [ln.split()[1] for ln in wec_server.lines[:-1]]
    assert kinds == ["http01", "tlsalpn01", "dns01", "management"]
    assert wec_server.lines[-1] == "ready"
    for line in wec_server.lines[:-1]:
        host, port = line.split()[2].rsplit(":", 1)
        assert host == "127.0.0.1" and 0 < int(port) < 65536


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http01", "nope"], "--http01: expected host:port"),
        (["--dns01", "127.0.0.1:99999"], "--dns01: expected host:port"),
        (["--default-ipv4", "::1"], "--default-ipv4: not an IPv4 address"),
        (["--default-ipv6", "1.2.3.4"], "--default-ipv6: not an IPv6 address"),
        (["--namespace", "a b"], "--namespace: expected"),
        (["--redis", "http://127.0.0.1"], "--redis: expected a redis://"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_argument_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "pytest_wec_challenge_srv", *args], capture_output=True, timeout=30
    )
    assert r.returncode == 2
    assert r.stdout == b""
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("challenge_srv: error: ")
    assert message in lines[0]


def test_unreachable_redis_and_busy_port_exit_1(redis_url: str) -> None:
    base = [
        sys.executable,
        "-m",
        "pytest_wec_challenge_srv",
        "--tlsalpn01",
        "",
        "--dns01",
        "",
        "--management",
        "127.0.0.1:0",
    ]
    r = subprocess.run(
        [*base, "--http01", "127.0.0.1:0", "--redis", f"redis://127.0.0.1:{_free_port()}/0"],
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert b"cannot reach Redis" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [*base, "--http01", f"127.0.0.1:{port}", "--redis", redis_url],
            capture_output=True,
            timeout=30,
        )
    assert r.returncode == 1
    assert f"cannot listen on http01 127.0.0.1:{port}".encode() in r.stderr


def test_token_auth_and_sigint(redis_url: str, tmp_path: Path) -> None:
    target = start_wec(
        redis_url,
        tmp_path / "log",
        "--token",
        "s3cret",
        "--http01",
        "127.0.0.1:0,[::1]:0" if socket.has_ipv6 else "127.0.0.1:0",
    )
    try:
        body = {"token": "tok", "content": "ka"}
        assert post(target, "/add-http01", body).status_code == 401
        assert (
            post(target, "/add-http01", body, headers={"Authorization": "Bearer nope"}).status_code
            == 401
        )
        assert post(target, "/nowhere", body).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert post(target, "/add-http01", body, headers=good).status_code == 200
        assert http_get(target, "/.well-known/acme-challenge/tok").text == "ka"
        if socket.has_ipv6:
            v6 = [ln for ln in target.lines if ln.startswith("listening http01 [::1]:")]
            assert len(v6) == 1
            with httpx.Client(trust_env=False) as client:
                url = f"http://{v6[0].split()[2]}/.well-known/acme-challenge/tok"
                assert client.get(url).text == "ka"
    finally:
        target.proc.send_signal(signal.SIGINT)
        assert target.proc.wait(10) == 0
        assert target.proc.stdout is not None
        target.proc.stdout.close()


# -- management API: the same cases against both servers -----------------------------------

STATUS_CASES = [
    ("/add-http01", b"", 400),
    ("/add-http01", b"notjson", 400),
    ("/add-http01", b"[]", 400),
    ("/add-http01", b'"text"', 400),
    ("/add-http01", b"null", 400),
    ("/add-http01", b'{"token": 1, "content": "c"}', 400),
    ("/add-http01", b'{"token": "t"}', 400),
    ("/add-http01", b'{"token": "t", "content": "c"} trailing', 400),
    ("/add-http01", b'{"TOKEN": "case-token", "Content": "c"}', 200),
    ("/del-http01", b"{}", 400),
    ("/del-http01", b'{"token": "never-added"}', 200),
    ("/add-redirect", b'{"path": "/x"}', 400),
    ("/del-redirect", b"{}", 400),
    ("/set-txt", b'{"host": "x.example"}', 400),
    ("/set-txt", b'{"host": "x.example", "value": ""}', 400),
    ("/clear-txt", b"{}", 400),
    ("/add-tlsalpn01", b'{"host": "x.example"}', 400),
    ("/del-tlsalpn01", b"{}", 400),
    ("/del-tlsalpn01", b'{"host": "never-added.example"}', 200),
    ("/set-default-ipv4", b'{"ip": 1}', 400),
    ("/set-default-ipv6", b"[1]", 400),
    ("/add-a", b'{"host": "x.example", "addresses": []}', 400),
    ("/add-a", b'{"host": "x.example", "addresses": "1.2.3.4"}', 400),
    ("/add-a", b'{"addresses": ["1.2.3.4"]}', 400),
    ("/clear-a", b"{}", 400),
    ("/add-aaaa", b'{"host": "x.example"}', 400),
    ("/clear-aaaa", b"{}", 400),
    ("/add-caa", b'{"host": "x.example", "policies": []}', 400),
    ("/add-caa", b'{"host": "x.example", "policies": "issue"}', 400),
    ("/clear-caa", b"{}", 400),
    ("/set-cname", b'{"host": "x.example"}', 400),
    ("/clear-cname", b"{}", 400),
    ("/set-servfail", b"{}", 400),
    ("/clear-servfail", b"{}", 400),
    ("/http-request-history", b"{}", 400),
    ("/dns-request-history", b'{"host": ""}', 400),
    ("/tlsalpn01-request-history", b"", 400),
    ("/clear-request-history", b'{"type": "http"}', 400),
    ("/clear-request-history", b'{"host": "x.example", "type": "bogus"}', 400),
    ("/clear-request-history", b'{"host": "x.example", "type": "dns"}', 200),
    ("/nope", b"{}", 404),
    ("/", b"{}", 404),
    ("/add-http01/", b"{}", 404),
    ("/set-txt?host=x", b"{}", 400),
]


def test_management_status_codes(server: Target) -> None:
    got = [(path, body, post(server, path, raw=body).status_code) for path, body, _ in STATUS_CASES]
    assert got == STATUS_CASES
    assert server.alive()


def test_http01(server: Target) -> None:
    token = uuid.uuid4().hex
    ok(server, "/add-http01", {"token": token, "content": f"{token}.thumb"})
    r = http_get(server, f"/.well-known/acme-challenge/{token}", headers={"Host": "any.example"})
    assert r.status_code == 200
    assert r.text == f"{token}.thumb"
    assert r.headers["content-type"].startswith("text/plain")
    ok(server, "/del-http01", {"token": token})
    r = http_get(server, f"/.well-known/acme-challenge/{token}")
    assert r.text != f"{token}.thumb"  # pebble-challtestsrv: 200 empty; ours: 404


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_dns_txt(server: Target, tcp: bool) -> None:
    host = "_acme-challenge." + uniq("txt")
    ok(server, "/set-txt", {"host": host + ".", "value": "first"})
    ok(server, "/set-txt", {"host": host + ".", "value": "second"})
    reply = dns(server, host, "TXT", tcp=tcp)
    assert reply.header.rcode == RCODE.NOERROR
    assert sorted(answers(reply, "TXT")) == ['"first"', '"second"']
    assert all(rr.ttl == 0 for rr in reply.rr)
    ok(server, "/clear-txt", {"host": host + "."})
    assert answers(dns(server, host, "TXT", tcp=tcp), "TXT") == []


def test_dns_a_aaaa_defaults_and_overrides(server: Target) -> None:
    host, other = uniq("a"), uniq("other")
    assert answers(dns(server, other, "A"), "A") == ["127.0.0.1"]
    assert answers(dns(server, other, "AAAA"), "AAAA") == ["::1"]
    ok(server, "/add-a", {"host": host, "addresses": ["10.0.0.1", "10.0.0.2"]})
    ok(server, "/add-aaaa", {"host": host, "addresses": ["2001:db8::1"]})
    assert answers(dns(server, host, "A", tcp=True), "A") == ["10.0.0.1", "10.0.0.2"]
    assert answers(dns(server, host, "AAAA"), "AAAA") == ["2001:db8::1"]
    try:
        ok(server, "/set-default-ipv4", {"ip": "127.0.0.2"})
        ok(server, "/set-default-ipv6", {})  # empty: no default AAAA
        assert answers(dns(server, other, "A"), "A") == ["127.0.0.2"]
        assert answers(dns(server, other, "AAAA"), "AAAA") == []
        assert answers(dns(server, host, "A"), "A") == ["10.0.0.1", "10.0.0.2"]
    finally:
        ok(server, "/set-default-ipv4", {"ip": "127.0.0.1"})
        ok(server, "/set-default-ipv6", {"ip": "::1"})
    ok(server, "/clear-a", {"host": host})
    ok(server, "/clear-aaaa", {"host": host})
    assert answers(dns(server, host, "A"), "A") == ["127.0.0.1"]
    assert answers(dns(server, host, "AAAA"), "AAAA") == ["::1"]


def test_dns_caa(server: Target) -> None:
    host = uniq("caa")
    policies = [
        {"tag": "issue", "value": "pebble.letsencrypt.org"},
        {"tag": "iodef", "value": "mailto:ops@example.com"},
    ]
    ok(server, "/add-caa", {"host": host, "policies": policies})
    for tcp in (False, True):
        reply = dns(server, host, "CAA", tcp=tcp)
        got = [(rr.rdata.flags, rr.rdata.tag, rr.rdata.value) for rr in reply.rr]
        assert got == [
            (0, "issue", "pebble.letsencrypt.org"),
            (0, "iodef", "mailto:ops@example.com"),
        ]
    ok(server, "/clear-caa", {"host": host})
    assert dns(server, host, "CAA").rr == []


def test_dns_cname_is_followed_one_level(server: Target) -> None:
    alias, target = uniq("alias"), uniq("target")
    ok(server, "/add-a", {"host": target, "addresses": ["10.1.2.3"]})
    ok(server, "/set-txt", {"host": target + ".", "value": "via-alias"})
    ok(server, "/set-cname", {"host": alias, "target": target})
    reply = dns(server, alias, "A")
    assert answers(reply, "CNAME") == [target + "."]
    assert answers(reply, "A") == ["10.1.2.3"]
    assert str(reply.rr[0].rname) == alias + "."
    assert answers(dns(server, alias, "CNAME", tcp=True), "CNAME") == [target + "."]
    assert answers(dns(server, alias, "TXT"), "TXT") == ['"via-alias"']
    ok(server, "/clear-cname", {"host": alias})
    assert answers(dns(server, alias, "A"), "A") == ["127.0.0.1"]


def test_dns_servfail_and_notimp(server: Target) -> None:
    host = uniq("servfail")
    ok(server, "/set-servfail", {"host": host})
    for qtype in ("A", "TXT", "CAA"):
        assert dns(server, host, qtype).header.rcode == RCODE.SERVFAIL
    assert dns(server, host, "A", tcp=True).header.rcode == RCODE.SERVFAIL
    ok(server, "/clear-servfail", {"host": host})
    assert dns(server, host, "A").header.rcode == RCODE.NOERROR
    assert dns(server, host, "MX").header.rcode == RCODE.NOTIMP


def test_tlsalpn01(server: Target) -> None:
    host = uniq("tls")
    key_authz = f"{uuid.uuid4().hex}.thumbprint"
    ok(server, "/add-tlsalpn01", {"host": host, "content": key_authz})
    cert, proto = handshake(server.tls, host, ["acme-tls/1"])
    assert proto == "acme-tls/1"
    ext = cert.extensions.get_extension_for_oid(ACME_ID)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(key_authz.encode()).digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [host]
    # Refused: other ALPN lists, no ALPN, no SNI; and the name once deleted.
    for sni, alpn in [
        (host, ["http/1.1"]),
        (host, ["acme-tls/1", "http/1.1"]),
        (host, None),
        (None, ["acme-tls/1"]),
    ]:
        with pytest.raises(ssl.SSLError):
            handshake(server.tls, sni, alpn)
    ok(server, "/del-tlsalpn01", {"host": host})
    with pytest.raises(ssl.SSLError):
        handshake(server.tls, host, ["acme-tls/1"])


def test_request_history(server: Target) -> None:
    web, name, tls = uniq("hist-http"), uniq("hist-dns"), uniq("hist-tls")
    http_get(server, "/.well-known/acme-challenge/hist?x=1", headers={"Host": f"{web}:5002"})
    dns(server, name, "TXT")
    with pytest.raises(ssl.SSLError):
        handshake(server.tls, tls, ["acme-tls/1"])
    r = post(server, "/http-request-history", {"host": web})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == [
        {
            "URL": "/.well-known/acme-challenge/hist?x=1",
            "Host": f"{web}:5002",
            "HTTPS": False,
            "ServerName": "",
        }
    ]
    assert post(server, "/dns-request-history", {"host": name}).json() == [
        {"Question": {"Name": name + ".", "Qtype": 16, "Qclass": 1}}
    ]
    assert post(server, "/tlsalpn01-request-history", {"host": tls}).json() == [
        {"ServerName": tls, "SupportedProtos": ["acme-tls/1"]}
    ]
    assert post(server, "/http-request-history", {"host": uniq("never")}).json() == []
    for kind, path, host in [
        ("http", "/http-request-history", web),
        ("dns", "/dns-request-history", name),
        ("tlsalpn", "/tlsalpn01-request-history", tls),
    ]:
        ok(server, "/clear-request-history", {"host": host, "type": kind})
        assert post(server, path, {"host": host}).json() == []


# -- our server's own behaviour ------------------------------------------------------------


def test_http01_not_found_wrong_method_redirect(wec_server: Target) -> None:
    assert http_get(wec_server, "/.well-known/acme-challenge/unknown").status_code == 404
    assert http_get(wec_server, "/").status_code == 404
    assert http_get(wec_server, "/.well-known/acme-challenge/").status_code == 404
    token = uuid.uuid4().hex
    ok(wec_server, "/add-http01", {"token": token, "content": "ka"})
    with httpx.Client(trust_env=False) as client:
        url = f"http://127.0.0.1:{wec_server.http}/.well-known/acme-challenge/{token}"
        assert client.head(url).status_code == 200
        r = client.post(url)
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    # absolute-form, as a proxy would send it: the path of the URL is what is served
    raw = (f"GET http://any.example/.well-known/acme-challenge/{token} HTTP/1.1\r\n"
           "Host: any.example\r\nConnection: close\r\n\r\n").encode()
    reply = _exchange_and_close(wec_server.http, raw)
    assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\nka"), reply
    ok(wec_server, "/add-redirect", {"path": "/moved", "targetURL": "http://127.0.0.1/x"})
    r = http_get(wec_server, "/moved")
    assert r.status_code == 301 and r.headers["location"] == "http://127.0.0.1/x"
    ok(wec_server, "/del-redirect", {"path": "/moved"})
    assert http_get(wec_server, "/moved").status_code == 404


def test_management_wrong_method_and_messages(wec_server: Target) -> None:
    r = post(wec_server, "/add-http01", method="GET")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = post(wec_server, "/add-http01", {"token": "t"})
    assert r.status_code == 400 and "'content' must not be empty" in r.text
    r = post(wec_server, "/add-http01", raw=b"{nope")
    assert r.status_code == 400 and "invalid JSON" in r.text


def test_tlsalpn01_ip_identifier(wec_server: Target) -> None:
    """RFC 8738: the SNI is the reverse-DNS name and the SAN is the IP address."""
    for ip, key_authz in [("127.0.0.1", "v4.thumb"), ("::1", "v6.thumb")]:
        ok(wec_server, "/add-tlsalpn01", {"host": ip, "content": key_authz})
        sni = ipaddress.ip_address(ip).reverse_pointer
        cert, _ = handshake(wec_server.tls, sni, ["acme-tls/1"])
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(ip)]
        ext = cert.extensions.get_extension_for_oid(ACME_ID)
        assert ext.value.value[2:] == hashlib.sha256(key_authz.encode()).digest()  # type: ignore[attr-defined]
        ok(wec_server, "/del-tlsalpn01", {"host": sni})
        with pytest.raises(ssl.SSLError):
            handshake(wec_server.tls, sni, ["acme-tls/1"])


def test_tlsalpn01_changed_key_authz_is_not_served_from_cache(wec_server: Target) -> None:
    host = uniq("recache")
    for key_authz in ("one.thumb", "two.thumb"):
        ok(wec_server, "/add-tlsalpn01", {"host": host, "content": key_authz})
        cert, _ = handshake(wec_server.tls, host, ["acme-tls/1"])
        value = cert.extensions.get_extension_for_oid(ACME_ID).value
        assert value.value[2:] == hashlib.sha256(key_authz.encode()).digest()  # type: ignore[attr-defined]


def test_dns_truncation_edns_and_tcp(wec_server: Target) -> None:
    host = "_acme-challenge." + uniq("big")
    values = [f"{i:02d}-" + "x" * 60 for i in range(8)]  # about 900 bytes of answer
    for value in values:
        ok(wec_server, "/set-txt", {"host": host, "value": value})
    small = dns(wec_server, host, "TXT")
    assert small.header.tc == 1 and small.rr == [] and str(small.q.qname) == host + "."
    large = dns(wec_server, host, "TXT", edns=True)
    assert large.header.tc == 0 and len(large.rr) == 8
    assert any(rr.rtype == QTYPE.OPT for rr in large.ar)
    values += [f"{i:02d}-" + "y" * 200 for i in range(8, 30)]  # beyond the EDNS size too
    for value in values[8:]:
        ok(wec_server, "/set-txt", {"host": host, "value": value})
    assert dns(wec_server, host, "TXT", edns=True).header.tc == 1
    full = dns(wec_server, host, "TXT", tcp=True)
    assert full.header.tc == 0
    assert sorted(str(rr.rdata).strip('"') for rr in full.rr) == values


def test_dns_tcp_pipelined_queries(wec_server: Target) -> None:
    queries = [DNSRecord.question(uniq(f"pipe{i}"), "A") for i in range(3)]
    with socket.create_connection(("127.0.0.1", wec_server.dns), timeout=5) as s:
        s.sendall(b"".join(len(p).to_bytes(2, "big") + p for p in (q.pack() for q in queries)))
        ids: list[int] = []
        buf = b""
        while len(ids) < 3:
            chunk = s.recv(4096)
            assert chunk
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                size = int.from_bytes(buf[:2], "big")
                ids.append(DNSRecord.parse(buf[2 : 2 + size]).header.id)
                buf = buf[2 + size :]
    assert ids == [q.header.id for q in queries]


def test_names_are_case_insensitive(wec_server: Target) -> None:
    host = uniq("case")
    ok(wec_server, "/add-a", {"host": host.upper() + ".", "addresses": ["10.9.8.7"]})
    assert answers(dns(wec_server, host, "A"), "A") == ["10.9.8.7"]
    assert answers(dns(wec_server, host.upper(), "A"), "A") == ["10.9.8.7"]
    ok(wec_server, "/set-txt", {"host": "_ACME-challenge." + host, "value": "v"})
    assert answers(dns(wec_server, "_acme-challenge." + host, "TXT"), "TXT") == ['"v"']


# -- the DNS wire fast path: the bytes dnslib writes ---------------------------------------


class _StubStore:
    """What the store holds for every name: one DnsData, or a failure."""

    def __init__(self, data: DnsData | None) -> None:
        self.data = data

    async def dns(self, host: str, qtype: str, *, follow: bool = True) -> DnsData:
        if self.data is None:
            raise ConnectionError("store down")
        return self.data


def _query(name: str, qtype: str, *, rd: int = 1, edns: int | None = None,
           option: bool = False, qclass: str = "IN") -> bytes:
    q = DNSRecord.question(name, qtype, qclass)
    q.header.rd = rd
    if edns is not None:
        opts = [EDNSOption(10, b"\x01" * 8)] if option else []
        q.add_ar(EDNS0(udp_len=edns, opts=opts))
    return bytes(q.pack())


_DATAS = [
    DnsData(),
    DnsData(values=("10.0.0.1", "10.0.0.2")),
    DnsData(values=("::2", " 10.0.0.3 ", "bogus", "2001:db8::1")),
    DnsData(default="127.0.0.9"),
    DnsData(default=""),
    DnsData(servfail=True),
    DnsData(values=("v",)),
    DnsData(values=("",)),
    DnsData(values=tuple(f"{i:02d}-" + "x" * 60 for i in range(8))),  # UDP 512: truncated
    DnsData(values=("y" * 600, "ünïcode")),  # strings of 255 bytes
    DnsData(values=tuple("z" * 250 for _ in range(80))),  # past a compression pointer
]
_NAMES = ["x.example", "_acme-challenge.Mixed-Case.Example", "a_b.c-d.example", "o.example.inv"]


def test_dns_fast_path_writes_what_dnslib_writes() -> None:
    """Every simple query: the same bytes, validations and history by either path; the
    others are not simple."""
    from pytest_wec_challenge_srv import dnswire
    from pytest_wec_challenge_srv.dns import DnsServer
    from pytest_wec_challenge_srv.history import RequestHistory

    async def both(data: DnsData | None, packet: bytes, udp: bool) -> None:
        fast, slow = RequestHistory(), RequestHistory()
        kw = {"default_ipv4": "127.0.0.1", "default_ipv6": "::1"}
        a = DnsServer(_StubStore(data), fast, **kw)  # type: ignore[arg-type]
        b = DnsServer(_StubStore(data), slow, **kw)  # type: ignore[arg-type]
        got, want = await a._answer(packet, udp=udp), await b._answer_dnslib(packet, udp=udp)
        assert got == want, (data, DNSRecord.parse(packet))
        name = normalize(str(DNSRecord.parse(packet).q.qname))
        assert fast.get("dns", name) == slow.get("dns", name) != []

    def normalize(name: str) -> str:
        return name.rstrip(".").lower()

    async def main() -> int:
        simple = 0
        for data in [*_DATAS, None]:
            for name in _NAMES:
                for qtype in ("A", "AAAA", "TXT"):
                    for kw in ({}, {"rd": 0, "edns": 1232}, {"edns": 512, "option": True},
                               {"edns": 4096}, {"edns": 65000}, {"qclass": "CH"}):
                        packet = _query(name, qtype, **kw)  # type: ignore[arg-type]
                        simple += dnswire.parse_simple(packet) is not None
                        for udp in (True, False):
                            await both(data, packet, udp)
        return simple

    assert asyncio.run(main()) == 12 * len(_NAMES) * 3 * 6
    cname = DnsData(cname="target.example", values=("10.0.0.1",))
    asyncio.run(both(cname, _query("alias.example", "A"), True))
    two = DNSRecord.question("a.example", "A")
    two.add_question(DNSQuestion("b.example", QTYPE.A))
    compressed = bytes(two.pack())[:12] + b"\x01a\xc0\x0c\x00\x01\x00\x01"
    not_simple = [
        _query("x.example", "CAA"), _query("x.example", "MX"), _query("wec.invalid", "A"),
        _query("x.INVALID", "TXT"), _query("a.b c.example", "A"), bytes(two.pack()),
        compressed, _query("x.example", "A") + b"\x00", _query("x.example", "A")[:-1],
        bytes([0, 1, 0x81, 0]) + _query("x.example", "A")[4:],  # QR set
        bytes([0, 1, 0x11, 0]) + _query("x.example", "A")[4:],  # opcode 2
        _query("x.example", "A")[:12] + b"\x3c" + b"a" * 60 * 5 + b"\x00\x00\x01\x00\x01",
        _query("x.example", "A")[:12] + b"".join([b"\x3c" + b"a" * 60] * 5)
        + b"\x00\x00\x01\x00\x01", b"\x00" * 12,
    ]
    for packet in not_simple:
        assert dnswire.parse_simple(packet) is None, packet


# -- event loop and read client ------------------------------------------------------------


def _wait_log(log: Path, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text()
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log: {log.read_text()[-2000:]}")


@pytest.mark.parametrize(
    ("args", "ready"),
    [
        ([], "event loop uvloop, reads lean"),
        (["--loop", "asyncio"], "event loop asyncio, reads lean"),
        (["--redis-client", "redis-py"], "event loop uvloop, reads redis-py"),
    ],
)
def test_event_loop_and_read_client(redis_url: str, tmp_path: Path, args: list[str],
                                    ready: str) -> None:
    """uvloop (a dependency) is the default loop, the lean client the default reader; the
    ready log line names what runs."""
    target = start_wec(redis_url, tmp_path / "log", *args)
    try:
        _wait_log(tmp_path / "log", ready)
        token = uuid.uuid4().hex
        ok(target, "/add-http01", {"token": token, "content": "ka"})
        assert http_get(target, f"/.well-known/acme-challenge/{token}").text == "ka"
        assert answers(dns(target, uniq("loop")), "A") == ["127.0.0.1"]
    finally:
        assert stop(target) == 0


def test_without_uvloop_the_standard_loop(redis_url: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """uvloop not importable: the server runs on the standard loop; asking for it is exit 2."""
    (tmp_path / "uvloop.py").write_text("raise ImportError('uvloop hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(tmp_path), os.environ.get("PYTHONPATH")])))
    target = start_wec(redis_url, tmp_path / "log")
    try:
        _wait_log(tmp_path / "log", "event loop asyncio, reads lean")
        assert answers(dns(target, uniq("noloop")), "A") == ["127.0.0.1"]
    finally:
        assert stop(target) == 0
    r = subprocess.run([sys.executable, "-m", "pytest_wec_challenge_srv", "--loop", "uvloop"],
                       capture_output=True, timeout=30)
    assert r.returncode == 2
    assert r.stderr.decode().strip() == "challenge_srv: error: --loop: uvloop is not installed"


def _redis_server(port: int, run_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:*port*, no persistence, once it answers PING (or NOAUTH)."""
    binary = shutil.which("redis-server")
    assert binary is not None
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(run_dir), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                return proc
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("redis-server not up")
        time.sleep(0.05)


def _end(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc)


def _redis_cmd(port: int, *commands: str) -> None:
    """*commands* (inline form) to the Redis on *port*, bypassing the server."""
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall("".join(c + "\r\n" for c in commands).encode())
        got = b""
        while got.count(b"\r\n") < len(commands):
            chunk = s.recv(256)
            assert chunk
            got += chunk
        assert b"-" not in got[:1], got


def _namespace(target: Target) -> str:
    args = [str(a) for a in target.proc.args]  # type: ignore[union-attr]
    return args[args.index("--namespace") + 1]


@pytest.mark.parametrize("client", ["lean", "redis-py"])
def test_redis_restarted_and_down(tmp_path: Path, client: str) -> None:
    """Redis restarted (empty) between two queries: the next is answered from the new one,
    not failed. Redis gone: 503 and SERVFAIL, the server alive; back: answers again."""
    port = _free_port()
    redis = _redis_server(port, tmp_path)
    target: Target | None = None
    try:
        target = start_wec(f"redis://127.0.0.1:{port}/0", tmp_path / "log",
                           "--redis-client", client)
        ns, txt = _namespace(target), "_acme-challenge." + uniq("restart")
        for value in ("before", "after", "again"):
            _redis_cmd(port, f"SET wec:{ns}:http01:tok {value}", f"DEL wec:{ns}:txt:{txt}",
                       f"SADD wec:{ns}:txt:{txt} {value}")
            assert http_get(target, "/.well-known/acme-challenge/tok").text == value
            assert answers(dns(target, txt, "TXT"), "TXT") == [f'"{value}"']
            assert answers(dns(target, uniq("up"), "A"), "A") == ["127.0.0.1"]
            _end(redis)
            if value == "after":  # down: every error path answers, the server lives
                r = http_get(target, "/.well-known/acme-challenge/tok")
                assert (r.status_code, r.text) == (503, "503 challenge store unavailable\n")
                assert dns(target, txt, "TXT").header.rcode == RCODE.SERVFAIL
                assert dns(target, uniq("down"), "A", tcp=True).header.rcode == RCODE.SERVFAIL
                assert target.alive()
            redis = _redis_server(port, tmp_path)
    finally:
        if target is not None:
            assert stop(target) == 0
        _end(redis)


def test_lean_reads_with_a_password_and_a_database(tmp_path: Path) -> None:
    """The stack's URL for a Redis off loopback has a password: AUTH, then SELECT, first."""
    port = _free_port()
    redis = _redis_server(port, tmp_path, "--requirepass", "pa:ss")
    target: Target | None = None
    try:
        target = start_wec(f"redis://:pa%3Ass@127.0.0.1:{port}/3", tmp_path / "log")
        _wait_log(tmp_path / "log", "reads lean")
        ns, txt = _namespace(target), "_acme-challenge." + uniq("auth")
        _redis_cmd(port, "AUTH pa:ss", "SELECT 3", f"SET wec:{ns}:http01:tok ka",
                   f"SADD wec:{ns}:txt:{txt} v")
        assert http_get(target, "/.well-known/acme-challenge/tok").text == "ka"
        assert answers(dns(target, txt, "TXT"), "TXT") == ['"v"']
    finally:
        if target is not None:
            assert stop(target) == 0
        _end(redis)


@pytest.mark.parametrize("client", ["lean", "redis-py"])
def test_a_key_of_the_wrong_type_is_a_store_failure(redis_url: str, tmp_path: Path,
                                                    client: str) -> None:
    """WRONGTYPE from Redis answers 503 / SERVFAIL with either client, as before."""
    import redis as redis_sync

    target = start_wec(redis_url, tmp_path / "log", "--redis-client", client)
    direct = redis_sync.Redis.from_url(redis_url, socket_timeout=5)
    try:
        ns, host = _namespace(target), "_acme-challenge." + uniq("wrongtype")
        direct.rpush(f"wec:{ns}:http01:wrong", "x")
        direct.set(f"wec:{ns}:txt:{host}", "not a set")
        assert http_get(target, "/.well-known/acme-challenge/wrong").status_code == 503
        assert dns(target, host, "TXT").header.rcode == RCODE.SERVFAIL
        assert dns(target, host, "A").header.rcode == RCODE.NOERROR
    finally:
        direct.close()
        assert stop(target) == 0


# -- fuzzing: bounded, and the server must still answer afterwards --------------------------


def _udp_probe(sock: socket.socket, port: int) -> None:
    """A valid query after the fuzz packet: its answer proves the server still serves."""
    probe = DNSRecord.question("probe.example", "A")
    sock.sendto(probe.pack(), ("127.0.0.1", port))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = sock.recv(65535)
        with contextlib.suppress(Exception):
            if DNSRecord.parse(data).header.id == probe.header.id:
                return
    raise AssertionError("no answer to the probe")


def _mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=600),
        st.integers(0, len(valid) - 1).map(lambda n: valid[:n]),
        st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255)).map(
            lambda t: valid[: t[0]] + bytes([t[1]]) + valid[t[0] + 1 :]
        ),
    )


_QUERY = DNSRecord.question("fuzz.example", "TXT")
_QUERY.add_ar(EDNS0(udp_len=4096))
VALID_QUERY = _QUERY.pack()


def test_fuzz_dns_udp(wec_server: Target) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)

        @FUZZ
        @given(packet=_mutations(VALID_QUERY))
        def run(packet: bytes) -> None:
            sock.sendto(packet, ("127.0.0.1", wec_server.dns))
            _udp_probe(sock, wec_server.dns)

        run()
        sock.sendto(os.urandom(9000), ("127.0.0.1", wec_server.dns))  # oversized: dropped
        _udp_probe(sock, wec_server.dns)
    assert_answers(wec_server)


def _exchange_and_close(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        got = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                got += chunk
        return got


def test_fuzz_dns_tcp(wec_server: Target) -> None:
    @FUZZ
    @given(payload=_mutations(VALID_QUERY), framed=st.booleans())
    def run(payload: bytes, framed: bool) -> None:
        data = len(payload).to_bytes(2, "big") + payload if framed else payload
        _exchange_and_close(wec_server.dns, data)

    run()
    _exchange_and_close(wec_server.dns, b"\xff\xff" + os.urandom(65535))  # largest frame
    assert_answers(wec_server)


def test_fuzz_http(wec_server: Target) -> None:
    methods = st.one_of(
        st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH"]),
        st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=12),
    )
    paths = st.one_of(
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=80).map(
            lambda p: "/" + p
        ),
        st.text(max_size=40).map(lambda p: "/.well-known/acme-challenge/" + p),
        st.binary(max_size=60).map(lambda b: b.decode("latin-1")),
    )

    @FUZZ
    @given(method=methods, path=paths, port=st.sampled_from(["http", "management"]))
    def run(method: str, path: str, port: str) -> None:
        number = wec_server.http if port == "http" else int(wec_server.management.rsplit(":", 1)[1])
        request = f"{method} {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n"
        reply = _exchange_and_close(number, request.encode("utf-8", "surrogateescape"))
        # the http-01 responder answers every request, even on a half-closed connection
        assert reply.startswith(b"HTTP/1.") or (port == "management" and reply == b""), reply

    run()
    assert_answers(wec_server)


def _client_hello(sni: str) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["acme-tls/1"])
    tls = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def test_fuzz_tls(wec_server: Target) -> None:
    host = uniq("fuzz-tls")
    ok(wec_server, "/add-tlsalpn01", {"host": host, "content": "fuzz.thumb"})
    hello = _client_hello(host)

    @FUZZ
    @given(data=_mutations(hello))
    def run(data: bytes) -> None:
        _exchange_and_close(wec_server.tls, data)

    run()
    _, proto = handshake(wec_server.tls, host, ["acme-tls/1"])
    assert proto == "acme-tls/1"
    assert_answers(wec_server)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "host",
                    "token",
                    "content",
                    "value",
                    "addresses",
                    "policies",
                    "ip",
                    "type",
                    "target",
                    "tag",
                    "flag",
                    "Host",
                    "path",
                    "targetURL",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=12,
)


def test_fuzz_management(wec_server: Target) -> None:
    paths = st.sampled_from([path for path, _, _ in STATUS_CASES if path.count("/") == 1])

    @FUZZ
    @given(path=paths, body=st.one_of(JSON.map(lambda d: json.dumps(d).encode()), st.binary()))
    def run(path: str, body: bytes) -> None:
        status = post(wec_server, path, raw=body).status_code
        assert status in (200, 400, 404), (path, body, status)

    try:
        run()
    finally:
        ok(wec_server, "/set-default-ipv4", {"ip": "127.0.0.1"})
        ok(wec_server, "/set-default-ipv6", {"ip": "::1"})
    assert_answers(wec_server)
