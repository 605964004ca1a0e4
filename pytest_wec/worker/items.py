"""Load mode on a worker: the chains collected become one load item per worker.

Under ``--wec-load``/``--wec-rate``/``--wec-stages`` every process that collects (each xdist
worker, or the lone pytest process) replaces the chain tests it collected by N items
``wec-load[i]``, N being the number of workers; xdist hands each worker one of them, and
item *i* drives worker share *i* of the load (the shares sum to the target exactly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from pytest_wec._chain import ChainInfo, chain_info
from pytest_wec._shipped import CHAINS

log = logging.getLogger(__name__)

__all__ = ["WecLoadItem", "collect_load_items"]

ChainFn = Callable[[Any], Awaitable[None]]
COUNTS_EVERY = 1.0  # seconds between reads of the state DB's counts
COUNTS_TIMEOUT = 5.0  # seconds a read of them may take (the first one: before the load)
STATUS_EVERY = 0.5


def loadable_chains(items: list[pytest.Item]) -> dict[str, tuple[ChainInfo, ChainFn]]:
    """The chains load mode can run: one ``load=True`` function per chain name."""
    chains: dict[str, tuple[ChainInfo, ChainFn]] = {}
    for item in items:
        fn = getattr(item, "function", None)
        info = chain_info(fn)
        if info is None or not info.load or hasattr(item, "callspec"):
            continue
        if info.name in chains and chains[info.name][1] is not fn:
            raise pytest.UsageError(
                f"wec: chain {info.name!r} has more than one load=True function "
                f"({item.nodeid}); mark the others load=False")
        chains[info.name] = (info, fn)  # type: ignore[assignment]
    from pytest_wec.worker.arguments import ARGUMENTS, bind, unknown_arguments

    for name, (info, fn) in chains.items():
        unknown = unknown_arguments(fn)
        if unknown:
            raise pytest.UsageError(
                f"wec: chain {name!r} takes {', '.join(map(repr, unknown))}: under load a chain "
                f"is given only {', '.join(ARGUMENTS)}")
        chains[name] = (info, bind(fn))
    return chains


class WecLoadItem(pytest.Item):
    """One worker's share of the load run."""

    def __init__(self, *, index: int, workers: int,
                 chains: dict[str, tuple[ChainInfo, ChainFn]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.index = index
        self.workers = workers
        self.chains = chains
        self.outcome: dict[str, Any] = {}

    def runtest(self) -> None:
        from pytest_wec.worker.fixtures import stack_info

        _prewarm(self.config)  # while the controller still starts the stack
        info = stack_info(self.config)
        if hasattr(self.config, "workerinput"):
            self._runtest(info)
            return
        # Without xdist the controller's live line is written while this item runs: let it
        # reach the terminal instead of the item's captured output.
        capman: Any = self.config.pluginmanager.get_plugin("capturemanager")
        ctx = (capman.global_and_fixture_disabled() if capman is not None
               else contextlib.nullcontext())
        with ctx:
            self._runtest(info)

    def _runtest(self, info: dict[str, Any]) -> None:
        from pytest_wec.plugin import SETTINGS_KEY
        from pytest_wec.worker.runner import new_event_loop

        loop = new_event_loop(self.config.stash[SETTINGS_KEY].loop)
        try:
            main = loop.create_task(self._run(info))
            stopper = _StopOnSignal(loop, main)
            try:
                loop.run_until_complete(main)
            finally:
                stopper.restore()
                if stopper.signal is not None:
                    # the run ended early: say so, and exit as an interrupted run does
                    self.session.shouldstop = f"wec: load run stopped by {stopper.signal}"
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _run(self, info: dict[str, Any]) -> None:
        from pytest_wec.plugin import SETTINGS_KEY
        from pytest_wec.wire.control import ControlReader
        from pytest_wec.wire.sink import ResultSink
        from pytest_wec.worker.picker import ChainSpec, mix_weights, pick
        from pytest_wec.worker.runner import LoadPlan, LoadRunner
        from pytest_wec.worker.runtime import WorkerRuntime, wait_at_barrier

        settings = self.config.stash[SETTINGS_KEY]
        from pytest_wec.worker.fixtures import worker_name

        worker = worker_name(self.config)
        runtime = await WorkerRuntime(settings, info, worker).start()
        # the run directory: start counter and spill file (kept for xdist's channel when
        # this host does not have it)
        sink = ResultSink(info["redis_url"], info["namespace"], worker,
                          spill_dir=info.get("run_dir"))
        republish = getattr(runtime.publisher, "republish", None)
        if republish is not None:  # Redis came back empty: challenge data of chains in flight
            sink.on_redis_restart.append(republish)
        loop_kind = type(asyncio.get_running_loop()).__module__.split(".")[0]
        sink.io = f"{type(runtime.network.transport).__name__} on {loop_kind}"
        await sink.start()
        specs = [ChainSpec(name, ci.needs, ci.produces) for name, (ci, _) in
                 sorted(self.chains.items())]
        weights = mix_weights(self.chains, settings.mix)
        limits = dict(settings.limit or {})
        rng = random.Random()
        # what exists before the load starts (a state DB shared with other runs, a worker
        # late to the start); from then on, the reads every COUNTS_EVERY plus what this
        # worker's own chains stored meanwhile (pytest_wec.worker.counts)
        live = runtime.counts
        await read_counts(runtime)

        def choose() -> str | None:
            spec = pick(specs, live.counts, weights, limits, rng)
            return spec.name if spec is not None else None

        plan = LoadPlan.from_settings(settings, self.index, self.workers)
        counted = {name: (ci, sink.counted(fn)) for name, (ci, fn) in self.chains.items()}
        runner = LoadRunner(runtime, counted, plan, emit=sink.add, choose=choose,
                            worker=worker)
        _RUNNERS.append(runner)
        # every worker is ready: the load starts at one instant everywhere, and the
        # duration counts from it
        workerinput = getattr(self.config, "workerinput", None)
        controller = self.config.pluginmanager.get_plugin("wec-controller")
        try:
            start_in = await asyncio.to_thread(wait_at_barrier, workerinput, controller, worker)
        except BaseException:
            _RUNNERS.remove(runner)
            await sink.aclose()
            await runtime.aclose()
            raise
        start_at = time.monotonic() + start_in

        control = ControlReader(info["redis_url"], info["namespace"])

        async def background() -> None:
            next_counts = time.monotonic() + COUNTS_EVERY
            while True:
                await asyncio.sleep(STATUS_EVERY)
                ctl = await control.read()  # the dashboard's live target and stop
                if ctl is not None and ctl.target is not None:
                    runner.target_override = plan.share(ctl.target)
                if ctl is not None and ctl.stop:
                    runner.stop()
                sink.set_status(in_flight=runner.in_flight, target_share=runner.current_target(),
                                dropped_starts=runner.dropped, last_answer=runtime.last_answer,
                                waiting=runtime.waiting())
                if time.monotonic() >= next_counts:
                    next_counts = time.monotonic() + COUNTS_EVERY
                    await read_counts(runtime)

        bg = asyncio.get_running_loop().create_task(background())
        try:
            await runner.run(start_at=start_at)
        finally:
            bg.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bg
            sink.set_status(in_flight=0, dropped_starts=runner.dropped)
            await control.aclose()
            await sink.aclose()
            workeroutput = getattr(self.config, "workeroutput", None)
            if sink.spill is not None and workeroutput is not None:
                workeroutput["wec_spill"] = sink.spill  # the controller reads it there
            await runtime.aclose()
            _RUNNERS.remove(runner)
        self.outcome = {"started": runner.started, "finished": runner.finished,
                        "dropped": runner.dropped, "nothing_to_run": runner.nothing_to_run}

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        from pytest_wec.errors import WecError

        if isinstance(excinfo.value, WecError):  # one line that says it all, no traceback
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"wec-load[{self.index}] ({self.workers} workers)"


_RUNNERS: list[Any] = []


async def read_counts(runtime: Any, timeout: float = COUNTS_TIMEOUT) -> bool:
    """Read the state DB's counts into ``runtime.counts`` (the picker's view), waiting at
    most *timeout* seconds; False (and a log line) when the read failed or took longer:
    the view keeps the last read's counts plus what this worker stored since."""
    live = runtime.counts
    token = live.reading()
    try:
        counts = await asyncio.wait_for(runtime.db(runtime.store.counts, runtime.directory),
                                        timeout)
    except TimeoutError:
        log.warning("reading the state DB's counts took over %gs; the picker goes on with "
                    "the last ones and what this worker stored since", timeout)
        return False
    except Exception:
        log.warning("reading the state DB's counts failed", exc_info=True)
        return False
    live.read(counts, token)
    return True


class _StopOnSignal:
    """SIGINT/SIGTERM end the load gracefully: no new chain starts, outputs complete."""

    def __init__(self, loop: asyncio.AbstractEventLoop, main: asyncio.Task[None]) -> None:
        self.loop = loop
        self.hits = 0
        self.signal: str | None = None
        self.installed: list[tuple[int, Any]] = []
        self.main = main
        for sig in (signal.SIGINT, signal.SIGTERM):
            old = signal.getsignal(sig)
            try:
                loop.add_signal_handler(sig, self._handle, sig)
                self.installed.append((sig, old))
            except (ValueError, RuntimeError, NotImplementedError):
                pass  # not the main thread: pytest's own handling applies

    def _handle(self, sig: int) -> None:
        self.hits += 1
        self.signal = signal.Signals(sig).name
        for r in _RUNNERS:
            r.stop()
        if self.hits >= 3:
            self.main.cancel()

    def restore(self) -> None:
        for sig, old in self.installed:
            self.loop.remove_signal_handler(sig)
            if old is not None:
                signal.signal(sig, old)  # e.g. the controller's own SIGTERM handler


#: The shipped catalogue, run when a load run collected no chain: the repository's chains/
#: by its installed name (the same in an editable install and a wheel).
CATALOGUE = CHAINS


def catalogue_chains() -> dict[str, tuple[ChainInfo, ChainFn]]:
    """The shipped chains (``chains/``, installed as ``pytest_wec_chains``), imported as
    plain modules."""
    import importlib
    import pkgutil

    try:
        package = importlib.import_module(CATALOGUE)
    except ImportError as exc:
        raise pytest.UsageError(
            f"wec load mode: no chains collected, and the shipped catalogue "
            f"({CATALOGUE!r}) cannot be imported: {exc}") from None
    chains: dict[str, tuple[ChainInfo, ChainFn]] = {}
    for mod in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not mod.name.startswith("test_"):
            continue
        module = importlib.import_module(f"{CATALOGUE}.{mod.name}")
        for value in vars(module).values():
            info = chain_info(value)
            if info is not None and info.load:
                chains.setdefault(info.name, (info, value))
    return chains


def collect_load_items(session: pytest.Session, config: pytest.Config,
                       items: list[pytest.Item], *, report: bool = True) -> None:
    """Replace the collected chain tests by the load items (in place). When no chain was
    collected (``pytest --wec-load=10`` at a project's root, or in an empty directory),
    the shipped catalogue runs. ``report``: tell pytest what was deselected (not on an
    xdist controller, which runs none of them)."""
    chains = loadable_chains(items) or catalogue_chains()
    from pytest_wec.plugin import SETTINGS_KEY

    settings = config.stash[SETTINGS_KEY]
    if not chains:
        raise pytest.UsageError("wec load mode: no chains collected, and the shipped "
                                "catalogue has none")
    check_mix(settings, chains)
    workerinput = getattr(config, "workerinput", None)
    workers = int(workerinput["workercount"]) if workerinput else 1
    deselected = list(items)
    items[:] = [
        WecLoadItem.from_parent(session, name=f"wec-load[{i}]", index=i, workers=workers,
                                chains=chains)
        for i in range(workers)
    ]
    if report:
        config.hook.pytest_deselected(items=deselected)


def _prewarm(config: pytest.Config) -> None:
    """Imports what this worker's load needs (its transport, the state DB's engine, the
    result stream, the chains' flows) before it asks for the stack: that answer waits for
    the controller to start the stack, and these imports (most of a worker's start-up CPU)
    are then done instead of queued behind it, every worker at once, when it answers.
    A failed import is left for the run itself to report."""
    import importlib

    from pytest_wec.plugin import SETTINGS_KEY

    settings = config.stash[SETTINGS_KEY]
    from pytest_wec.acme._transport import transport_module

    transport = transport_module(str(settings.transport))
    names = ["pytest_wec.worker.runtime", "pytest_wec.worker.runner", "pytest_wec.worker.picker",
             "pytest_wec.worker.context", "pytest_wec.worker.publish", "pytest_wec.wire.sink",
             "pytest_wec.wire.control", "pytest_wec.acme", "pytest_wec.state._sql",
             *([transport] if transport else [])]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # the run reports it where the module is used
            log.debug("prewarming %s failed", name, exc_info=True)


def check_mix(settings: Any, chains: dict[str, tuple[ChainInfo, ChainFn]]) -> None:
    """``--wec-mix`` names known chains, and what the chains that may run need is produced by
    one of them; a UsageError naming the problem otherwise. (``--wec-limit`` names resources,
    ``accounts=1000``, checked when it is parsed.)"""
    from pytest_wec.worker.picker import mix_weights

    where = settings.sources.get("mix", "--wec-mix")
    unknown = sorted(set(settings.mix or {}) - {"*"} - set(chains))
    if unknown:
        raise pytest.UsageError(
            f"{where}: unknown chain {', '.join(map(repr, unknown))}; "
            f"chains: {', '.join(sorted(chains))}")
    weights = mix_weights(sorted(chains), settings.mix)
    running = [info for name, (info, _) in sorted(chains.items()) if weights[name] > 0]
    if not running:
        raise pytest.UsageError(f"{where}: every chain weighs 0; nothing would run")
    produced: set[str] = set().union(*(info.produces for info in running))
    for info in running:
        missing = sorted(info.needs - produced)
        if missing:
            raise pytest.UsageError(
                f"{where}: chain {info.name!r} needs {', '.join(missing)}, which no chain of "
                f"the mix produces ({_producer_hint(chains, missing[0])})")


def _producer_hint(chains: dict[str, tuple[ChainInfo, ChainFn]], resource: str) -> str:
    names = [n for n, (i, _) in sorted(chains.items()) if resource in i.produces]
    return f"chains that produce it: {', '.join(names)}" if names else \
        f"no chain collected produces {resource}"
