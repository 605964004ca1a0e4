"""A small, fast ACME CA for benchmarks: ``FakeCA`` served over real HTTPS by a lean server.

    .venv/bin/python bench/stubca.py [--port 0] [--plain] [--dir DIR] [--program JSON]
                                     [--limits JSON]

It prints ``listening URL`` (the directory URL) and ``ready``, then serves until killed. The
ACME logic is :class:`pytest_wec.acme.FakeCA` (every JWS verified, nonces single-use, real
X.509 certificates), so the client does exactly the work it does against Pebble; challenges
validate as soon as they are answered, without reaching out, so the generator's own cost
shows instead of the CA's. Runs as its own process, so its CPU is not the generator's. Its
server (:mod:`_httpd`) stamps a request when its bytes reach the socket and an
answer just before it is written, so that no framework's time hides between its figures and
the socket.

From Python, :func:`start_stub_ca` starts it as a child process and returns its directory
URL and the CA bundle to trust.

``--program`` (a JSON object, :mod:`_program`) makes it the CA of ``bench_truth.py``: every
answer held for a delay drawn from its endpoint's distribution, validation and issuance
delays, validation requests really sent to the run's challenge server (its http-01 address
read from ``challenge_log``, the ``challenge-server.log`` of the run), a stall; its timers
run on a ``select()`` event loop (microseconds; epoll's are milliseconds). What it saw is
served at ``GET /_stub/truth``.

``--limits`` (a JSON object of :class:`pytest_wec.acme._fakeca_limits.FakeLimits`' fields,
e.g. ``{"certificates_per_domain": 2, "retry_after": 30}``) makes it refuse over rate limits
as Boulder does; what it refused is served at ``GET /_stub/limits``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import re
import selectors
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pytest_wec.acme import FakeCA, Request, Response
from pytest_wec.acme._fakeca_limits import FakeLimits
from pytest_wec.acme._transport import Headers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _httpd import Answer, Handler, HttpServerProtocol, ServerRequest, serve_stamped
from _program import Program, Truth, parse_dist

_HTTP01 = re.compile(r"^listening http01 \[?([^\]\s]+?)\]?:(\d+)\s*$")


class StubCA(FakeCA):
    """FakeCA with an account index by key (FakeCA scans every account on newAccount), and
    chains that end in a self-signed root, so that chains checking issuers pass."""

    def __init__(self, base: str, limits: FakeLimits | None = None) -> None:
        super().__init__(base, renewal_info=True, limits=limits)
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


class ProgrammedCA(StubCA):
    """The stub CA doing what a :class:`Program` says, keeping the :class:`Truth`."""

    def __init__(self, base: str, program: Program, challenge_log: str | None) -> None:
        super().__init__(base)
        self.pending_polls = self.processing_polls = 1 << 30  # validation, issuance: ours
        self.program = program
        self.truth = Truth()
        self.challenge_log = challenge_log
        self._http01: tuple[str, int] | None = None
        self._session: Any = None
        self._tasks: set[asyncio.Task[None]] = set()
        import aiohttp  # here, not at the first validation: an import would stall the loop

        self._aiohttp = aiohttp

    def kid(self, req: Request, endpoint: str, resp: Response) -> str | None:
        """The account a request is of (newAccount: the one it made or found; renewalInfo
        named by a key's thumbprint: that key's account, once it is made)."""
        if endpoint == "renewalInfo":
            return "thumbprint:" + req.url.rsplit("/", 1)[-1].split(".", 1)[0]
        if endpoint == "newAccount":
            kid: str | None = resp.headers.get("location")
            jwk = _protected(req).get("jwk")
            if kid and jwk:  # the chain began with its renewalInfo: its span is the account's
                span = self.truth.accounts.pop("thumbprint:" + _thumbprint(jwk), None)
                if span is not None:
                    self.truth.accounts.setdefault(kid, span)
            return kid
        kid = _protected(req).get("kid")
        return str(kid) if kid else None

    def answered(self, endpoint: str, req: Request, resp: Response, received: float,
                 sent: float, kid: str | None) -> None:
        """Bookkeeping once an answer went out (the client sees it from now on)."""
        t = self.truth
        if kid is not None:
            span = t.accounts.setdefault(kid, [received, sent])
            span[1] = sent
        url = req.url.split("?", 1)[0]
        if endpoint == "newOrder" and resp.status == 201:
            order = resp.headers.get("location") or ""
            t.orders[order] = {"received": received, "polls": 0}
            for a in self.orders[order]["authorizations"]:
                t.authzs.setdefault(a, {"order": order, "polls": 0})
        elif endpoint == "challenge" and req.body:
            authz_url = self.challenges.get(url, ("", {}))[0]
            a = t.authzs.get(authz_url)
            if a is not None and "answered" not in a and resp.status == 200 \
                    and _payload(req) is not None:
                a["answered"] = received
                ch = self.challenges[url][1]
                self._spawn(self._validate(authz_url, ch, sent))
        elif endpoint == "authz":
            a = t.authzs.get(url)
            if a is not None and "answered" in a:
                a["polls"] += 1
                t.orders[a["order"]]["polls"] += 1
                if "valid" not in a and _status(resp) == "valid":
                    a["valid"] = sent
        elif endpoint == "finalize":
            order = url.replace("/finalize/", "/order/")
            o = t.orders.get(order)
            if o is not None and resp.status == 200:
                o["finalized"] = received
                self._spawn(self._issue_later(order, sent))
        elif endpoint == "order":
            o = t.orders.get(url)
            if o is not None:
                o["polls"] += 1
                if "valid" not in o and _status(resp) == "valid":
                    o["valid"] = sent
        elif endpoint == "certificate":
            for order, body in self.orders.items():
                o = t.orders.get(order)
                if body.get("certificate") == url and o is not None and "downloaded" not in o:
                    o["downloaded"] = sent

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _validate(self, authz_url: str, ch: dict[str, Any], answered: float) -> None:
        """After the validation delay, the validation requests, then the authz is valid."""
        await sleep_until(answered + self.program.validation.draw(self.program.rng))
        body = self.authzs[authz_url]
        n = self.program.validation_requests()
        host, port = self.http01()
        if self._session is None:
            aiohttp = self._aiohttp
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        url = f"http://{host}:{port}/.well-known/acme-challenge/{ch['token']}"
        sent = time.time()
        answers: list[float] = []

        async def get() -> None:
            async with self._session.get(url, headers={"Host": body["identifier"]["value"]}) \
                    as r:
                await r.read()
            answers.append(time.time())

        await asyncio.gather(*(get() for _ in range(n)), return_exceptions=True)
        a = self.truth.authzs[authz_url]
        # the challenge server stamps a request once it has answered it: the first answer
        a.update(first_request=sent, first_answered=min(answers, default=sent), requests=n)
        body["status"] = ch["status"] = "valid"
        ch["validated"] = "2024-01-01T00:00:00Z"

    async def _issue_later(self, order: str, finalized: float) -> None:
        await sleep_until(finalized + self.program.issuance.draw(self.program.rng))
        self._issue(order, self.orders[order])

    def http01(self) -> tuple[str, int]:
        """The run's challenge server (its log names its http-01 listener)."""
        if self._http01 is None:
            for line in Path(self.challenge_log or "").read_text().splitlines():
                m = _HTTP01.match(line.strip())
                if m:
                    self._http01 = (m[1], int(m[2]))
            if self._http01 is None:
                raise RuntimeError(f"no http01 listener in {self.challenge_log}")
        return self._http01


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 (the JWK's required members, as our keys send them)."""
    import hashlib

    from pytest_wec.acme._jws import b64url

    return b64url(hashlib.sha256(orjson.dumps(jwk, option=orjson.OPT_SORT_KEYS)).digest())


def _protected(req: Request) -> dict[str, Any]:
    if req.method != "POST" or not req.body:
        return {}
    try:
        from pytest_wec.acme._jws import b64url_decode

        header = json.loads(b64url_decode(json.loads(req.body)["protected"]))
        return header if isinstance(header, dict) else {}
    except (ValueError, KeyError, TypeError):
        return {}


def _payload(req: Request) -> Any:
    try:
        from pytest_wec.acme._jws import b64url_decode

        raw = json.loads(req.body or b"")["payload"]
        return json.loads(b64url_decode(raw)) if raw else None
    except (ValueError, KeyError, TypeError):
        return None


def _status(resp: Response) -> str | None:
    try:
        return str(json.loads(resp.body).get("status"))
    except (ValueError, AttributeError, TypeError):
        return None


async def sleep_until(when: float) -> None:
    delay = when - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


def make_handler(ca: FakeCA) -> Handler:
    """The server's handler: the stub's own paths, else the CA's answer (held as programmed)."""
    base = ca.base
    programmed = ca if isinstance(ca, ProgrammedCA) else None

    async def handle(request: ServerRequest) -> Answer:
        received = request.received
        path = request.target.split("?", 1)[0]
        if programmed is not None and path == "/_stub/truth":
            return _json({"program": programmed.program.to_plain(),
                          **programmed.truth.to_plain()})
        if path == "/_stub/limits" and ca.limits is not None:
            return _json({"refusals": dict(ca.limits.refusals),
                          "issued": dict(ca.limits.issued),
                          "orders": sum(ca.limits.orders.values())})
        req = Request(request.method, base + request.target,
                      Headers.from_lowered(request.headers), request.body or None)
        resp = ca(req)
        headers = list(resp.headers._items)
        if programmed is None:
            return resp.status, headers, resp.body, None
        endpoint = ca._route(req.url)[0]
        program = programmed.program
        drawn = program.delay(endpoint)
        due = program.hold_until(received, drawn)
        await sleep_until(due)

        def then(sent: float) -> None:
            programmed.truth.requests.append([endpoint, drawn, due - received, sent - received,
                                              received])
            programmed.answered(endpoint, req, resp, received, sent,
                                programmed.kid(req, endpoint, resp))

        return resp.status, headers, resp.body, then

    return handle


def _json(data: Any) -> Answer:
    return 200, [("Content-Type", "application/json")], orjson.dumps(data), None


async def serve(host: str, port: int, run_dir: Path, plain: bool,
                program: dict[str, Any] | None = None,
                limits: dict[str, Any] | None = None) -> None:
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
    fake_limits = FakeLimits(**limits) if limits else None
    ca = StubCA(base, fake_limits) if program is None else ProgrammedCA(
        base, make_program(program), program.get("challenge_log"))
    if isinstance(ca, ProgrammedCA) and ca.program.stall_at is not None:
        ca.truth.stall = [ca.program.stall_at, ca.program.stall_for]
    handler = make_handler(ca)
    if ctx is None and sys.platform == "linux":
        serve_stamped(asyncio.get_running_loop(), sock, handler)
    else:
        await asyncio.get_running_loop().create_server(
            lambda: HttpServerProtocol(handler), sock=sock, ssl=ctx, backlog=4096)
    print(f"listening {base}/dir", flush=True)
    print("ready", flush=True)
    await asyncio.Event().wait()


def make_program(spec: dict[str, Any]) -> Program:
    """A :class:`Program` from plain data: ``{"delays": {"*": "lognormal:30ms:120ms",
    "newNonce": "1ms"}, "validation": ..., "issuance": ..., "requests": [1, 3],
    "stall_at": 4, "stall_for": 2, "seed": 1}``."""
    return Program(
        delays={k: parse_dist(v) for k, v in (spec.get("delays") or {"*": "0ms"}).items()},
        validation=parse_dist(spec.get("validation", "0ms")),
        issuance=parse_dist(spec.get("issuance", "0ms")),
        requests=(int(spec.get("requests", (1, 1))[0]), int(spec.get("requests", (1, 1))[1])),
        stall_at=spec.get("stall_at"), stall_for=float(spec.get("stall_for", 0.0)),
        seed=int(spec.get("seed", 1)))


def start_stub_ca(run_dir: Path, *, plain: bool = False, program: dict[str, Any] | None = None,
                  limits: dict[str, Any] | None = None) -> tuple[Any, str, str | None]:
    """Start the stub CA as a child process: (ManagedProcess, directory URL, CA bundle);
    *limits*: its rate limits (``--limits``)."""
    from pytest_wec.stack._procs import ManagedProcess

    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, str(Path(__file__).resolve()), "--dir", str(run_dir)]
    if plain:
        argv.append("--plain")
    if program is not None:
        make_program(program).to_plain()  # a bad program fails here, not in the child
        argv += ["--program", json.dumps(program)]
    if limits is not None:
        FakeLimits(**limits)  # a bad one fails here, not in the child
        argv += ["--limits", json.dumps(limits)]
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
    ap.add_argument("--program", help="a JSON program (see make_program): delays, "
                                      "validation, issuance, stall")
    ap.add_argument("--limits", help="a JSON object of rate limits (FakeLimits' fields)")
    args = ap.parse_args()
    run_dir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="wec-stubca-"))
    if args.program is None:
        limits = json.loads(args.limits) if args.limits else None
        asyncio.run(serve(args.host, args.port, run_dir, args.plain, limits=limits))
        return
    program = json.loads(args.program)
    # its figures are the truth: no collector pause may keep a request unseen in its socket
    # (a bench run is short, and what it keeps is mostly freed by reference counting)
    gc.disable()
    loop = asyncio.SelectorEventLoop(selectors.SelectSelector())  # microsecond timers
    try:
        loop.run_until_complete(serve(args.host, args.port, run_dir, args.plain, program))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
