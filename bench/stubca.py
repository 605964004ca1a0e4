"""A small, fast ACME CA for benchmarks: ``FakeCA`` served over real HTTPS with aiohttp.web.

    .venv/bin/python bench/stubca.py [--port 0] [--plain] [--dir DIR]

It prints ``listening URL`` (the directory URL) and ``ready``, then serves until killed. The
ACME logic is :class:`pytest_wec.acme.FakeCA` (every JWS verified, nonces single-use, real
X.509 certificates), so the client does exactly the work it does against Pebble; challenges
validate as soon as they are answered, without reaching out, so the generator's own cost
shows instead of the CA's. Runs as its own process, so its CPU is not the generator's.

From Python, :func:`start_stub_ca` starts it as a child process and returns its directory
URL and the CA bundle to trust.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import socket
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from multidict import CIMultiDict

from pytest_wec.acme import FakeCA, Request


class StubCA(FakeCA):
    """FakeCA with an account index by key (FakeCA scans every account on newAccount), and
    chains that end in a self-signed root, so that chains checking issuers pass."""

    def __init__(self, base: str) -> None:
        super().__init__(base, renewal_info=True)
        self._by_jwk: dict[bytes, str] = {}
        now = dt.datetime.now(dt.UTC)
        root = (
            x509.CertificateBuilder()
            .subject_name(self._ca_name)
            .issuer_name(self._ca_name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, hashes.SHA256())
        )
        self._root_pem = root.public_bytes(serialization.Encoding.PEM)

    def _issue(self, url: str, body: dict[str, Any]) -> None:
        super()._issue(url, body)
        cert_url = body["certificate"]
        self.certs[cert_url] += self._root_pem

    def _kid_of(self, jwk: dict[str, Any]) -> str | None:
        return self._by_jwk.get(orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS))

    def _do_newAccount(self, req: Any, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        status, headers, body = super()._do_newAccount(req, rest, payload, kid, jwk)
        if status == 201:
            self._by_jwk[orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS)] = headers["Location"]
        return status, headers, body

    def _do_keyChange(self, req: Any, rest: str, payload: Any, kid: Any, jwk: Any) -> Any:
        result = super()._do_keyChange(req, rest, payload, kid, jwk)
        self._by_jwk = {orjson.dumps(a["jwk"], option=orjson.OPT_SORT_KEYS): u
                        for u, a in self.accounts.items()}
        return result


def make_app(ca: FakeCA) -> web.Application:
    base = ca.base

    async def handle(request: web.Request) -> web.Response:
        body = await request.read() if request.can_read_body else None
        req = Request(request.method, base + request.raw_path, request.headers, body)
        resp = ca(req)
        headers: CIMultiDict[str] = CIMultiDict(resp.headers._items)
        return web.Response(status=resp.status, body=resp.body, headers=headers)

    app = web.Application(client_max_size=1 << 20)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve(host: str, port: int, run_dir: Path, plain: bool) -> None:
    ctx: ssl.SSLContext | None = None
    scheme = "http"
    if not plain:
        from pytest_wec.stack._pebble import write_tls_material

        _ca, cert, key = write_tls_material(run_dir)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        scheme = "https"
    # bind first (port 0 picks a port), then build the CA with its real base URL
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    real_port = sock.getsockname()[1]
    base = f"{scheme}://{host}:{real_port}"
    runner = web.AppRunner(make_app(StubCA(base)), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, ssl_context=ctx, backlog=4096).start()
    print(f"listening {base}/dir", flush=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


def start_stub_ca(run_dir: Path, *, plain: bool = False) -> tuple[Any, str, str | None]:
    """Start the stub CA as a child process: (ManagedProcess, directory URL, CA bundle)."""
    from pytest_wec.stack._procs import ManagedProcess

    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--dir", str(run_dir)]
    if plain:
        argv.append("--plain")
    proc = ManagedProcess("stub-ca", argv, run_dir / "stubca.log")
    lines = proc.wait_line(lambda line: line.strip() == "ready", 20, "printing 'ready'")
    url = next(line.split()[1] for line in lines if line.startswith("listening "))
    return proc, url, None if plain else str(run_dir / "pebble-ca.pem")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--plain", action="store_true", help="HTTP instead of HTTPS")
    ap.add_argument("--dir", help="where the TLS material goes (default: a temporary dir)")
    args = ap.parse_args()
    run_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="wec-stubca-"))
    asyncio.run(serve(args.host, args.port, run_dir, args.plain))


if __name__ == "__main__":
    main()
