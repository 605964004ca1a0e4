"""Scale-out: one run across several hosts, on pytest-xdist's remote workers.

The hosts are network namespaces of this machine, each with its own address on one small
subnet, joined by a bridge that has no address in the root namespace: no packet of these
tests can leave the namespaces. Layout::

    wec-ca-R   10.254.N.1   the controller (pytest) and the embedded stack, --wec-listen
    wec-w1-R   10.254.N.2   execnet's socketserver.py: xdist worker gw0 (--tx socket=)
    wec-w2-R   10.254.N.3   execnet's socketserver.py: xdist worker gw1

The state DB is the default SQLite file in the run directory: namespaces share the
filesystem, so every worker opens the same file (real hosts need ``--wec-db postgresql://``).
The namespace tests need root and ``ip``; they are skipped, saying why, elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import execnet
import pytest

import chains
from pytest_wec.errors import ConfigError, UnreachableError
from pytest_wec.settings import KeyAlg, Settings, StackMode, resolve
from pytest_wec.worker.runtime import Target, check_reachable, reach_targets, stack_info_from

pytestmark = pytest.mark.timeout(150)

SOCKETSERVER = Path(execnet.__file__).parent / "script" / "socketserver.py"
WORKER_PORT = 8888
RUN = {"new_account": 1, "new_order": 2, "new_certificate": 1, "ip_identifier": 1}


def _mix() -> dict[str, int]:
    """Weights for every chain of the package: RUN's, 0 (left out) for the others."""
    names: set[str] = set()
    for path in Path(chains.__file__).parent.glob("test_*.py"):
        names |= set(re.findall(r'@chain\(\s*"(\w+)"', path.read_text()))
    assert set(RUN) <= names
    return {name: RUN.get(name, 0) for name in sorted(names)}


# -- without namespaces ----------------------------------------------------------------------


def test_settings_cross_as_plain_data() -> None:
    s = resolve({"load": "4", "stages": "5s:2,10s:4", "account_key": "ES384", "stack": "on",
                 "limit": "accounts=10", "insecure": True},
                lambda name: ["p95(endpoint:newOrder) < 500ms", "error_rate < 1%"]
                if name == "wec_thresholds" else None,
                {"WEC_MIX": "new_account=1,new_order=2", "WEC_LISTEN": "10.0.0.5",
                 "WEC_TIMEOUT": "7s"})
    plain = s.to_plain()
    assert json.loads(json.dumps(plain)) == plain  # nothing but plain data
    back = Settings.from_plain(plain)
    assert back == s
    assert back.account_key is KeyAlg.ES384 and back.stack is StackMode.ON
    assert back.mix == {"new_account": 1.0, "new_order": 2.0} and back.timeout == 7.0
    assert back.stages == ((5.0, 2.0), (10.0, 4.0)) and back.listen == "10.0.0.5"
    assert back.insecure and len(back.threshold) == 2
    assert back.sources == s.sources and back.sources["mix"] == "environment variable WEC_MIX"
    assert Settings.from_plain(Settings().to_plain()) == Settings()
    with pytest.raises(ConfigError) as ei:
        Settings.from_plain({"raw": {"account_key": "ES999"}})
    assert str(ei.value).startswith(
        "settings from the controller: --wec-account-key: expected one of ES256, ")


@pytest.mark.parametrize(("given", "error"), [
    ("wec.example", "expected an IP address of this host, such as 127.0.0.1 or 10.0.0.5"),
    ("0.0.0.0", "expected one address of this host that the CA and the workers reach, "
                "not a wildcard"),
    ("::", "expected one address of this host that the CA and the workers reach, "
           "not a wildcard"),
])
def test_listen_must_be_one_ip_address(given: str, error: str) -> None:
    with pytest.raises(ConfigError) as ei:
        resolve({"listen": given}, lambda _n: None, {})
    assert str(ei.value) == f"--wec-listen: {error}, got {given!r}"
    assert resolve({"listen": "[::1]"}, lambda _n: None, {}).listen == "::1"


def test_header_warns_of_an_open_management_api(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        from pytest_wec import chain

        @chain("new_account", produces={"account"})
        async def test_x(wec):
            await wec.new_account()
        """)
    result = pytester.runpytest("--co", "-p", "no:xdist", "--wec-listen", "10.0.0.5")
    result.stdout.fnmatch_lines([
        "wec: warning: the challenge server's management API listens on 10.0.0.5 without "
        "--wec-token; whoever reaches it can change its answers"])
    quiet = pytester.runpytest("--co", "-p", "no:xdist", "--wec-listen", "10.0.0.5",
                               "--wec-token", "t0k")
    assert "wec: warning" not in quiet.stdout.str()


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_worker_names_every_address_it_cannot_reach() -> None:
    closed = _refused_port()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        open_port = listening.getsockname()[1]
        info = {"directory": f"https://127.0.0.1:{open_port}/dir",
                "redis_url": f"redis://:secret@127.0.0.1:{closed}/0", "challtestsrv": None,
                "pebble_management": None}
        settings = Settings(load=2, db=f"postgresql+psycopg://wec:pw@127.0.0.1:{closed}/wec")
        targets = reach_targets(settings, info)
        assert targets == [Target("the ACME directory", "127.0.0.1", open_port),
                           Target("Redis", "127.0.0.1", closed),
                           Target("PostgreSQL", "127.0.0.1", closed)]
        with pytest.raises(UnreachableError) as ei:
            asyncio.run(check_reachable("gw3", targets, timeout=2.0))
    msg = str(ei.value)
    assert msg.startswith(f"worker gw3 cannot reach Redis at 127.0.0.1:{closed}: connection "
                          f"refused; PostgreSQL at 127.0.0.1:{closed}: connection refused (")
    assert "secret" not in msg and "--wec-listen" in msg
    # what is not used is not checked: Redis without load and with challtestsrv; no DB URL
    info2 = {"directory": "https://ca.example/dir", "redis_url": "redis://r:6379/0",
             "challtestsrv": "http://10.0.0.9:8055", "pebble_management": None}
    assert reach_targets(Settings(), info2) == [
        Target("the ACME directory", "ca.example", 443),
        Target("the challtestsrv management API", "10.0.0.9", 8055)]


def test_ca_bundle_reaches_a_worker_without_the_file(tmp_path: Path) -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    here = tmp_path / "ca.pem"
    here.write_text(pem)
    info = {"ca_bundle": str(here), "directory": "https://h/dir"}
    assert stack_info_from({"wec_stack": info, "wec_ca_pem": pem}) == info
    gone = {"ca_bundle": str(tmp_path / "elsewhere" / "ca.pem"), "directory": "https://h/dir"}
    local = stack_info_from({"wec_stack": gone, "wec_ca_pem": pem})
    assert local is not None and local["ca_bundle"] != gone["ca_bundle"]
    assert Path(local["ca_bundle"]).read_text() == pem
    assert stack_info_from({"wec_stack": None}) is None


def _start_challenge_server(redis_url: str, namespace: str, log: Path) -> tuple[
        subprocess.Popen[bytes], dict[str, str]]:
    env = {**os.environ, "WEC_REDIS": redis_url}
    env.pop("WEC_TOKEN", None)
    argv = [sys.executable, "-m", "pytest_wec.cli", "challenge-server", "--http01",
            "127.0.0.1:0", "--tlsalpn01", "", "--dns01", "127.0.0.1:0", "--management",
            "127.0.0.1:0", "--namespace", namespace]
    out = log.open("wb")
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    out.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        lines = log.read_text().splitlines()
        if "ready" in lines:
            return proc, {ln.split()[1]: ln.split()[2] for ln in lines
                          if ln.startswith("listening ")}
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"challenge server not ready: {log.read_text()}")


def test_challenge_servers_share_one_redis(redis_url: str, tmp_path: Path) -> None:
    """Two ``wec challenge-server`` processes (two hosts' worth) answer one namespace."""
    ns = "shared-" + secrets.token_hex(3)
    procs = []
    try:
        a_proc, a = _start_challenge_server(redis_url, ns, tmp_path / "a.log")
        procs.append(a_proc)
        b_proc, b = _start_challenge_server(redis_url, ns, tmp_path / "b.log")
        procs.append(b_proc)
        body = json.dumps({"token": "tok123", "content": "tok123.thumb"}).encode()
        req = urllib.request.Request(f"http://{a['management']}/add-http01", data=body,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 200
        for srv in (a, b):
            url = f"http://{srv['http01']}/.well-known/acme-challenge/tok123"
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.read() == b"tok123.thumb"
    finally:
        for p in procs:
            p.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(10)
            if p.poll() is None:
                p.kill()
                p.wait(5)


# -- hosts made of network namespaces --------------------------------------------------------


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def _netns_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    for binary in ("pebble", "redis-server"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed"
    probe = "wec-probe-" + secrets.token_hex(3)
    r = _run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns add fails here: {r.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


class Hosts:
    """Namespaces ``wec-<name>-R`` on a bridge ``wecbrR``, addresses 10.254.N.1, .2, ...

    :meth:`close` removes everything made, whatever failed, and kills what ran inside.
    """

    def __init__(self, names: list[str]) -> None:
        self.rand = secrets.token_hex(3)
        self.subnet = f"10.254.{secrets.randbelow(254) + 1}"
        self.bridge = f"wecbr{self.rand}"
        self.ns = {name: f"wec-{name}-{self.rand}" for name in names}
        self.addr = {name: f"{self.subnet}.{i}" for i, name in enumerate(names, 1)}
        self._links: list[str] = []
        self._netns: list[str] = []
        self._bridge = False
        self.procs: list[subprocess.Popen[bytes]] = []

    def open(self) -> Hosts:
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        self._bridge = True
        _sysctl_off_ipv6(None, self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, (name, ns) in enumerate(self.ns.items(), 1):
            _run("ip", "netns", "add", ns)
            self._netns.append(ns)
            outer, inner = f"wv{self.rand}{i}", f"wp{self.rand}{i}"
            _run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
            self._links.append(outer)
            _run("ip", "link", "set", inner, "netns", ns)
            _sysctl_off_ipv6(None, outer)
            _sysctl_off_ipv6(ns, inner)
            _run("ip", "link", "set", outer, "master", self.bridge)
            _run("ip", "link", "set", outer, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", inner)
            _run("ip", "-n", ns, "link", "set", inner, "up")
        return self

    def popen(self, name: str, argv: list[str], log: Path, env: dict[str, str],
              cwd: Path) -> subprocess.Popen[bytes]:
        out = log.open("wb")
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns[name], *argv], stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    start_new_session=True)
        finally:
            out.close()
        self.procs.append(proc)
        return proc

    def listeners(self, name: str) -> set[tuple[str, str]]:
        """(proto, local address) of every listening socket in the namespace."""
        r = _run("ip", "netns", "exec", self.ns[name], "ss", "-H", "-ltnu", check=False)
        out = set()
        for line in r.stdout.splitlines():
            cols = line.split()
            if len(cols) >= 5:
                out.add((cols[0], cols[4].rsplit(":", 1)[0].strip("[]")))
        return out

    def close(self) -> None:
        for proc in self.procs:
            _kill(proc)
        for link in self._links:
            _run("ip", "link", "del", link, check=False)
        for ns in self._netns:
            _run("ip", "netns", "del", ns, check=False)
        if self._bridge:
            _run("ip", "link", "del", self.bridge, check=False)


def _sysctl_off_ipv6(ns: str | None, dev: str) -> None:
    """No IPv6 (link-local chatter) on the test's links: IPv4 on the one subnet only."""
    argv = ["sysctl", "-qw", f"net.ipv6.conf.{dev}.disable_ipv6=1"]
    _run(*(["ip", "netns", "exec", ns, *argv] if ns else argv), check=False)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    reason = _netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    h = Hosts(["ca", "w1", "w2"])
    try:
        yield h.open()
    finally:
        h.close()


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any WEC_* variable, plus *extra*."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WEC_", "PYTEST_", "PEBBLE_"))}
    env.update(extra)
    return env


def _start_workers(hosts: Hosts, names: list[str], tmp: Path) -> list[str]:
    """execnet's socketserver.py in each namespace; the ``--tx`` options that reach them."""
    tx = []
    for name in names:
        cwd = tmp / name
        cwd.mkdir()
        log = tmp / f"{name}-socketserver.log"
        addr = hosts.addr[name]
        hosts.popen(name, [sys.executable, "-u", str(SOCKETSERVER), f"{addr}:{WORKER_PORT}"],
                    log, _clean_env(PYTHONUNBUFFERED="1"), cwd)
        deadline = time.monotonic() + 15
        while "Entering Accept loop" not in log.read_text():
            assert time.monotonic() < deadline, f"socketserver in {name}: {log.read_text()}"
            time.sleep(0.05)
        tx += ["--tx", f"socket={addr}:{WORKER_PORT}"]
    return tx


def _controller(hosts: Hosts, args: list[str], tmp: Path, **env: str) -> tuple[
        subprocess.Popen[bytes], Path]:
    log = tmp / "controller.log"
    cwd = tmp / "ca"
    cwd.mkdir()
    argv = [sys.executable, "-m", "pytest", "--pyargs", "pytest_wec_chains",
            "-p", "no:cacheprovider", "-p", "no:randomly", "--dist", "load", *args]
    return hosts.popen("ca", argv, log, _clean_env(**env), cwd), log


def _wait(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise AssertionError(f"the run did not end within {timeout:g}s:\n"
                             f"{log.read_text()[-4000:]}") from None
    return log.read_text()


def test_run_across_namespace_hosts(hosts: Hosts, tmp_path: Path) -> None:
    ca = hosts.addr["ca"]
    tx = _start_workers(hosts, ["w1", "w2"], tmp_path)
    out = tmp_path / "run"
    started = time.monotonic()
    # the mix comes from the controller's environment only: the workers' has no WEC_*
    proc, log = _controller(
        hosts, ["--wec-load", "4", "--wec-duration", "10s", "--wec-grace", "10s",
                "--wec-listen", ca, "--wec-token", secrets.token_hex(8), *tx,
                f"--wec-out={out}"],
        tmp_path, WEC_MIX=",".join(f"{k}={v}" for k, v in _mix().items()))
    seen: dict[str, set[tuple[str, str]]] = {"ca": set(), "w1": set(), "w2": set()}
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        for name in seen:
            seen[name] |= hosts.listeners(name)
        time.sleep(0.5)
    text = _wait(proc, log, max(deadline - time.monotonic(), 1.0))
    took = time.monotonic() - started
    assert proc.returncode == 0, text[-4000:]
    assert "INTERNALERROR" not in text

    summary = json.loads((out / "summary.json").read_text())
    lines = (out / "results.jsonl").read_text().splitlines()
    results = [json.loads(line) for line in lines]
    sent = summary["generator"]["sent_by_worker"]
    assert summary["totals"]["chains"] == len(lines) == sum(sent.values()) > 0
    assert set(sent) == {"gw0", "gw1"} and all(n > 0 for n in sent.values()), sent
    by_worker = {w: sum(1 for r in results if r["worker"] == w) for w in sent}
    assert by_worker == sent
    assert summary["totals"]["chains_failed"] == 0, summary["errors"]
    # the workers ran the controller's mix, which they only had through workerinput
    assert {r["chain"] for r in results} <= set(RUN)
    # http-01 validated at CA_ADDR, for a name (through the challenge server's DNS) and an IP
    assert summary["chains"]["new_certificate"]["ok"] > 0
    assert summary["chains"]["ip_identifier"]["ok"] > 0

    # everything listened on the namespaces' own addresses, the stack on CA_ADDR only
    assert seen["ca"] and {addr for _, addr in seen["ca"]} == {ca}, seen["ca"]
    assert {proto for proto, _ in seen["ca"]} == {"tcp", "udp"}  # DNS too
    for w in ("w1", "w2"):
        assert {addr for _, addr in seen[w]} <= {hosts.addr[w]}, seen[w]
    cfg = json.loads((out / "pebble-config.json").read_text())["pebble"]
    assert cfg["listenAddress"].startswith(f"{ca}:")
    assert cfg["managementListenAddress"].startswith(f"{ca}:")
    assert summary["run"]["directory"].startswith(f"https://{ca}:")
    listening = [ln for ln in (out / "challenge-server.log").read_text().splitlines()
                 if ln.startswith("listening ")]
    assert len(listening) == 4 and all(f" {ca}:" in ln for ln in listening), listening
    print(f"scale-out run: {len(lines)} chains, {summary['totals']['chains_per_s']}/s, "
          f"by worker {sent}, {took:.1f}s")


def test_worker_that_cannot_reach_the_stack_fails_at_start(hosts: Hosts,
                                                           tmp_path: Path) -> None:
    """The stack left on loopback (no --wec-listen), and a challtestsrv at an address of the
    subnet where no host is: the remote worker names the address it cannot reach (the
    controller's, which hands out the stack), and the run fails at once."""
    tx = _start_workers(hosts, ["w1"], tmp_path)
    nobody = f"{hosts.subnet}.200"
    proc, log = _controller(
        hosts, ["--wec-load", "2", "--wec-duration", "10s", "--wec-grace", "1s",
                "--wec-challtestsrv", f"http://{nobody}:8055", *tx,
                f"--wec-out={tmp_path / 'run'}"], tmp_path)
    text = _wait(proc, log, 60)
    assert proc.returncode == 1, text[-4000:]
    assert "INTERNALERROR" not in text and "Traceback" not in text
    assert ("wec: warning: workers on other hosts (socket=" in text
            and "cannot reach a stack bound to 127.0.0.1; give --wec-listen" in text), text
    line = next((ln for ln in text.splitlines() if ln.startswith("worker gw0 cannot reach")),
                "")
    # the stack starts when a worker first asks the controller for it (the rendezvous,
    # bound like the stack to --wec-listen): a remote worker that cannot reach it names it
    assert re.search(r"the controller \(its rendezvous\) at 127\.0\.0\.1:\d+: connection "
                     r"refused \(a loopback address is reached only on the controller's own "
                     r"host; .*--wec-listen", line), text[-4000:]


def test_a_mysql_state_db_is_checked_like_postgresql() -> None:
    info = {"directory": "https://ca.example/dir", "redis_url": None, "challtestsrv": None,
            "pebble_management": None}
    targets = reach_targets(Settings(db="mysql://root@10.0.0.7/wec"), info)
    assert Target("MySQL/MariaDB", "10.0.0.7", 3306) in targets
    targets = reach_targets(Settings(db="mariadb+pymysql://u:pw@db.test:3307/wec"), info)
    assert Target("MySQL/MariaDB", "db.test", 3307) in targets
