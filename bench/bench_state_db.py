"""CPU per certificate of what new_certificate asks of the state DB, SQLite.

    .venv/bin/python bench/bench_state_db.py [--quick]

A load run's new_certificate picks an account (on the worker's event loop) and writes
three rows (its order, its authorization, its certificate; grouped eight certificates to a
transaction by the worker's StoreQueue, on its thread). This measures those calls,
sequentially, on a fresh SQLite state DB file of the product's (WAL, as a run makes it),
with 150 accounts in it, in µs of process CPU per certificate:

    prepared     as shipped: the hot statements prepared once and run on SQLite's own
                 connection (``pytest_wec.state._prepared``)
    SQLAlchemy   the same store with ``prepared=False``: every statement through
                 SQLAlchemy Core's execution (``Connection.execute``)

Best of several interleaved rounds, each on its own store over the same file; the last
line says how much the prepared path saves per certificate.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, table

from pytest_wec.acme import AccountKey
from pytest_wec.state import SqlStateStore

DIRECTORY = "https://127.0.0.1:14000/dir"
BATCH = 8  # certificates per write transaction (a worker's group at 8 in flight)
PEM = "-----BEGIN CERTIFICATE-----\n" + "A" * 64 * 40 + "\n-----END CERTIFICATE-----\n"


def one_round(store: SqlStateStore, certs: int, start: int) -> tuple[float, float]:
    """(pick µs, writes µs) of CPU per certificate over *certs* certificates."""
    pick = write = 0.0
    done = 0
    while done < certs:
        batch = []
        for i in range(start + done, start + done + BATCH):
            c0 = time.process_time()
            account = store.pick_account(DIRECTORY)
            pick += time.process_time() - c0
            assert account is not None
            name = [f"n{i}.wec-bench.test"]
            batch += [
                functools.partial(store.add_order, DIRECTORY, account.id,
                                  f"{DIRECTORY}/order/{i}", "valid", name),
                functools.partial(store.add_authorization, DIRECTORY, account.id,
                                  f"{DIRECTORY}/authz/{i}", "dns", name[0], "http-01",
                                  "valid", expires=time.time() + 86400),
                functools.partial(store.add_certificate, DIRECTORY, account.id,
                                  f"{DIRECTORY}/order/{i}", PEM, PEM[:300], i + 1, name,
                                  time.time() + 7 * 86400),
            ]
        c0 = time.process_time()
        outcomes = store.run_batch(batch)
        write += time.process_time() - c0
        assert all(ok for ok, _ in outcomes), outcomes
        done += BATCH
    return pick / certs * 1e6, write / certs * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    certs, rounds = (400, 3) if args.quick else (2000, 7)
    print(f"bench_state_db: {certs} certificates x best of {rounds}, SQLite; {machine()}")
    path = Path(tempfile.mkdtemp(prefix="wec-statedb-")) / "state.db"
    with SqlStateStore(path) as seed:
        key = AccountKey.generate("ES256").to_pem()
        for i in range(150):
            seed.add_account(DIRECTORY, f"{DIRECTORY}/acct/{i}", key)
    best = {"prepared": [float("inf")] * 2, "SQLAlchemy": [float("inf")] * 2}
    start = 0
    for _ in range(rounds):
        for name, prepared in (("prepared", True), ("SQLAlchemy", False)):
            with SqlStateStore(path, prepared=prepared) as store:
                one_round(store, 2 * BATCH, start)  # warm: statements compiled, pool filled
                start += 2 * BATCH
                p, w = one_round(store, certs, start)
                start += certs
            best[name] = [min(best[name][0], p), min(best[name][1], w)]
    ref = sum(best["SQLAlchemy"])
    rows = [[name, p, w, p + w, f"{(p + w) / ref:.2f}x"] for name, (p, w) in best.items()]
    print(table(["path", "pick µs/cert", "writes µs/cert", "total µs/cert", "vs SQLAlchemy"],
                rows))
    ours = sum(best["prepared"])
    print(f"state DB per certificate: {ours:.1f} µs prepared against {ref:.1f} µs through "
          f"SQLAlchemy in the same run: {ref / ours:.1f}x less, {ref - ours:.0f} µs saved")
    return 0


if __name__ == "__main__":
    sys.exit(main())
