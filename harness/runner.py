"""The runner: one test from start to verdict, with every fault undone however it ends.

Phases, each written to the run directory as it happens (harness/store.py):
setup (DB installed and started fresh, leftovers of earlier faults healed) -> the main phase
(worker tasks invoke ops at the rate, the nemesis schedule starts and stops faults, for the time
limit) -> the final heal (every fault class undone, recorded) -> recovery (wait for the cluster,
then the workload's final reads) -> teardown (node logs and data collected, servers stopped) ->
checkers -> results.json -> the report.

Workers follow Jepsen: worker w drives node w % len(nodes) through its own connection, as
process w; an op that ends `info` may still be in flight, so that process never invokes again
and the worker continues as process w + concurrency (with a fresh connection). Ops are recorded
in the history as they start and end. No op is ever retried behind the history's back.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from checker.history import FAIL, INFO, INVOKE, NEMESIS, OK, HistoryWriter, Op, load_history
from harness import authsetup, store
from harness.client import ClientError, EtcdClient
from harness.db import DB, DBError
from harness.generator import OpTemplate
from harness.inventory import Node
from harness.remote import Remote, RemoteError
from nemesis.base import Nemesis, NemesisContext
from nemesis.schedule import Schedule
from workloads.base import Workload

log = logging.getLogger("etcdproof.runner")

FINAL_ATTEMPTS = 4  # tries of each recovery-phase op (they only read) until one succeeds
FINAL_RETRY_GAP = 0.5  # seconds before the second try; 1.0 before the third, ...


@dataclass
class TestSpec:
    """A test's parameters: everything needed to run it again (with the same seed)."""

    workload: str = "register"
    db: str = "reference"
    nemesis: list[str] = field(default_factory=list)
    nodes: str = "local"
    time_limit: float = 60.0
    concurrency: int = 0  # 0: two workers per node
    rate: float = 100.0  # ops/s over all workers; 0 for as fast as they go
    seed: int = 0
    nemesis_interval: float = 10.0
    nemesis_concurrent: int = 1  # fault classes active at once (nemesis/schedule.py)
    op_timeout: float = 5.0
    recovery_timeout: float = 60.0
    auth: bool = False  # harness/authsetup.py: auth on, workers as an ordinary user
    name: str = ""

    def test_name(self) -> str:
        nem = "+".join(self.nemesis) if self.nemesis else "none"
        return self.name or f"{self.workload}-{self.db}-{nem}"


@dataclass
class Outcome:
    run_dir: Path
    valid: Any  # True, False or "unknown"
    results: dict
    interrupted: bool = False
    error: str | None = None  # the run could not go on (setup failed, ...): one line

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        if self.error:
            return 2
        return {True: 0, False: 1}.get(self.valid, 2)


def compose(results: dict[str, dict]) -> Any:
    """Jepsen's rule: false beats unknown beats true; no checker at all is unknown."""
    verdicts = [r.get("valid", "unknown") for r in results.values()]
    if any(v is False for v in verdicts):
        return False
    if not verdicts or any(v is not True for v in verdicts):
        return "unknown"
    return True


@contextlib.contextmanager
def signals_interrupt() -> Any:
    """SIGINT and SIGTERM raise KeyboardInterrupt inside the block.

    The checkers are CPU-bound and run on the event loop's thread, so the loop's own signal
    handlers could not act until they returned (up to their budget, minutes). Faults are healed
    and servers stopped by then; nothing is left to protect, so a signal may cut the check short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def run_checkers(workload: Workload, history: list[Op]) -> dict:
    """Every checker of the workload on the history; one that throws gives unknown, never true."""
    out: dict[str, dict] = {}
    for name, fn in workload.checkers().items():
        t0 = time.monotonic()
        try:
            res = fn(history)
        except Exception as e:  # noqa: BLE001 - a crashed checker is an unknown verdict
            log.exception("checker %s failed", name)
            res = {"valid": "unknown", "reason": f"checker crashed: {type(e).__name__}: {e}"}
        res.setdefault("reason", "")
        res["seconds"] = round(time.monotonic() - t0, 3)
        out[name] = res
    return {"valid": compose(out), "checkers": out}


async def to_the_end(aw: Awaitable[Any]) -> bool:
    """Await aw to its end even when this task is cancelled meanwhile (a heal or a teardown cut
    short leaves faults or servers behind); True if a cancellation came."""
    inner = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            await asyncio.shield(inner)
            return cancelled
        except asyncio.CancelledError:
            if inner.done():  # aw itself was cancelled, not this task
                raise
            cancelled = True


class Progress:
    """Counts for the live display and the log: ops by outcome, ops/s, active faults."""

    def __init__(self) -> None:
        self.counts = {OK: 0, FAIL: 0, INFO: 0}
        self.started = time.monotonic()
        self.phase = "setup"

    def line(self, active: list[str]) -> str:
        n = sum(self.counts.values())
        secs = max(time.monotonic() - self.started, 1e-9)
        faults = ", ".join(active) if active else "none"
        return (f"{self.phase}: {n} ops ({n / secs:.0f}/s) ok {self.counts[OK]} fail {self.counts[FAIL]} "
                f"info {self.counts[INFO]}; faults: {faults}")


class Runner:
    def __init__(self, spec: TestSpec, nodes: list[Node], remotes: dict[str, Remote], db: DB,
                 workload: Workload, nemeses: list[Nemesis], run_dir: Path,
                 can_partition: bool = True, why_not_partition: str = "", control_ip: str | None = None,
                 on_progress: Callable[[str], None] | None = None) -> None:
        self.spec = spec
        self.nodes = nodes
        self.remotes = remotes
        self.db = db
        self.workload = workload
        self.nemeses = nemeses
        self.run_dir = run_dir
        self.concurrency = spec.concurrency or 2 * len(nodes)
        self.rng = random.Random(spec.seed)
        self.ctx = NemesisContext(nodes, remotes, db, random.Random(spec.seed ^ 0xFA17), can_partition,
                                  why_not_partition, control_ip,
                                  credentials=authsetup.ROOT if spec.auth else None)
        self.progress = Progress()
        self.on_progress = on_progress
        self._t0 = time.monotonic_ns()
        self._hist_file = open(run_dir / store.HISTORY, "w", encoding="utf-8")
        self.history = HistoryWriter(self._hist_file)
        self.schedule = Schedule(self.ctx, nemeses, spec.nemesis_interval, self.record, random.Random(spec.seed ^ 0x5C4E),
                                 concurrent=spec.nemesis_concurrent)
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ history
    def record(self, op: Op) -> Op:
        op.time = time.monotonic_ns() - self._t0
        op.wall = time.time()
        if op.process != NEMESIS and op.type != INVOKE:
            self.progress.counts[op.type] += 1
        return self.history.write(op)

    # ------------------------------------------------------------------ workers
    def client(self, endpoint: str) -> EtcdClient:
        """A worker's connection (as the --auth user when auth is on)."""
        return EtcdClient(endpoint, timeout=self.spec.op_timeout,
                          credentials=authsetup.USER if self.spec.auth else None)

    def endpoint(self, worker: int) -> tuple[Node, str]:
        n = self.nodes[worker % len(self.nodes)]
        return n, self.db.client_endpoint(n)

    async def invoke(self, client: EtcdClient, process: int, node: Node, tmpl: OpTemplate) -> Op:
        """One op: record the invocation, run it, record how it ended."""
        self.record(Op(0, process, INVOKE, tmpl.f, value=None if tmpl.f == "read" else tmpl.value,
                       key=tmpl.key, node=node.name))
        typ, value, extra, error = INFO, None if tmpl.f == "read" else tmpl.value, {}, None
        try:
            typ, value, extra = await asyncio.wait_for(self.workload.invoke(client, tmpl), self.spec.op_timeout + 1.0)
        except ClientError as e:
            typ, error = (FAIL if e.definite else INFO), e.message
            extra = {"code": e.code} if e.code else {}
        except asyncio.TimeoutError:
            error = "timeout"
        except asyncio.CancelledError:
            self.record(Op(0, process, INFO, tmpl.f, value=value, key=tmpl.key, node=node.name, error="interrupted"))
            raise
        except Exception as e:  # noqa: BLE001 - unknown outcome: the op may have happened
            error = f"{type(e).__name__}: {e}"
        return self.record(Op(0, process, typ, tmpl.f, value=value, key=tmpl.key, node=node.name,
                              error=error, extra=extra))

    async def worker(self, w: int) -> None:
        node, endpoint = self.endpoint(w)
        source = self.workload.op_source(self.spec.seed, w)
        rng = random.Random(self.spec.seed * 7_919 + w)
        process = w
        client = self.client(endpoint)
        # each worker waits about concurrency / rate between ops (exponential, as Jepsen's stagger)
        mean_gap = self.concurrency / self.spec.rate if self.spec.rate > 0 else 0.0
        try:
            while not self._stop.is_set():
                if mean_gap:
                    try:
                        await asyncio.wait_for(self._stop.wait(), rng.expovariate(1.0 / mean_gap))
                        break
                    except asyncio.TimeoutError:
                        pass
                op = await self.invoke(client, process, node, source.next())
                if op.type == INFO:
                    process += self.concurrency
                    await client.close()
                    client = self.client(endpoint)
        finally:
            await client.close()

    async def recovery(self) -> None:
        """After the heal: wait until every member serves, then run the workload's final ops."""
        self.progress.phase = "recovery"
        try:
            await asyncio.to_thread(self.db.wait_healthy, self.spec.recovery_timeout)
        except Exception as e:  # noqa: BLE001 - the final reads then show what is unavailable
            log.warning("cluster not healthy after the heal: %s", e)
        tmpls = self.workload.final_ops(load_history(str(self.run_dir / store.HISTORY)))
        queues: list[list[OpTemplate]] = [[] for _ in self.nodes]
        for i, t in enumerate(tmpls):
            queues[i % len(self.nodes)].append(t)
        base = 10 * self.concurrency + 1_000_000  # processes of their own, never reused

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.recovery_timeout

        async def drain(i: int, q: list[OpTemplate]) -> None:
            node, endpoint = self.endpoint(i)
            client = self.client(endpoint)
            process = base + i
            try:
                for t in q:
                    # final ops only read, so one that did not succeed is tried again (each try
                    # its own op in the history): right after the heal a rejoining member can
                    # still force an election, and etcd fails reads caught in it
                    for attempt in range(FINAL_ATTEMPTS):
                        op = await self.invoke(client, process, node, t)
                        if op.type == INFO:
                            process += len(self.nodes)
                            await client.close()
                            client = self.client(endpoint)
                        if op.type == OK or attempt == FINAL_ATTEMPTS - 1 or loop.time() >= deadline:
                            break
                        await asyncio.sleep(FINAL_RETRY_GAP * (attempt + 1))
            finally:
                await client.close()

        await asyncio.gather(*(drain(i, q) for i, q in enumerate(queues) if q))

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.on_progress:
                self.on_progress(self.progress.line(self.schedule.active))

    # ------------------------------------------------------------------ phases
    def write_test_json(self, extra: dict | None = None) -> None:
        data = {
            "name": self.spec.test_name(), "spec": asdict(self.spec), "concurrency": self.concurrency,
            "nodes": [{"name": n.name, "host": n.host, "address": n.ip} for n in self.nodes],
            "db": {"kind": self.db.kind, "versions": getattr(self, "_versions", {})},
            "nemesis": [nem.name for nem in self.nemeses],
            "can_partition": self.ctx.can_partition, "why_not_partition": self.ctx.why_not_partition,
            "started": self._t0_wall, **(extra or {}),
        }
        store.write_json(self.run_dir / store.TEST_JSON, data)

    async def run(self) -> Outcome:
        self._t0_wall = time.time()
        self._versions: dict[str, str] = {}
        self.write_test_json()
        interrupted = healed = False
        error: str | None = None
        ticker = asyncio.create_task(self._report_progress())
        try:
            for nem in self.nemeses:  # faults that shape how servers start (clock, lost-writes): before setup
                if hasattr(nem, "prepare"):
                    await asyncio.to_thread(nem.prepare, self.ctx)
            await asyncio.to_thread(self.db.setup)
            self._versions = {n.name: await asyncio.to_thread(self.db.version, n) for n in self.nodes}
            self._t0 = time.monotonic_ns()  # history time counts from the end of setup
            self.write_test_json()
            for nem in self.nemeses:
                await asyncio.to_thread(nem.setup, self.ctx)
            await self.schedule.heal_all()  # leftovers of an earlier run that died before healing
            if self.spec.auth:
                await authsetup.enable(self.endpoint(0)[1], self.spec.op_timeout)
            client = self.client(self.endpoint(0)[1])
            try:
                await self.workload.setup(client)
            finally:
                await client.close()
            self.progress.phase = "running"
            self.progress.started = time.monotonic()
            workers = [asyncio.create_task(self.worker(w)) for w in range(self.concurrency)]
            nemesis = asyncio.create_task(self.schedule.run())
            late = False
            try:
                await asyncio.sleep(self.spec.time_limit)
            except asyncio.CancelledError:
                for w in workers:  # an interrupted run records its ops in flight as info
                    w.cancel()
                raise
            finally:
                self._stop.set()
                nemesis.cancel()
                # both are over before any heal, even if a signal lands now: a fault still being
                # applied would outlive the heal
                late = await to_the_end(asyncio.gather(nemesis, return_exceptions=True))
                if late:
                    for w in workers:
                        w.cancel()
                late |= await to_the_end(asyncio.gather(*workers, return_exceptions=True))
            if late:
                raise asyncio.CancelledError
            self.progress.phase = "healing"
            interrupted = await to_the_end(self.schedule.heal_all())
            healed = True
            if not interrupted:
                await self.recovery()
        except asyncio.CancelledError:
            interrupted = True
        except Exception as e:  # noqa: BLE001 - faults healed and servers stopped below, then said
            log.debug("run failed", exc_info=True)
            error = str(e) if isinstance(e, (DBError, RemoteError)) else f"{type(e).__name__}: {e}"
        finally:
            ticker.cancel()
            self.progress.phase = "teardown"
            # faults first, whatever happened above; then collect and stop the servers
            if not healed:
                interrupted |= await to_the_end(self.schedule.heal_all())
            interrupted |= await to_the_end(asyncio.to_thread(self.teardown))
            self._hist_file.close()
        return self.finish(interrupted, error)

    def teardown(self) -> None:
        for n in self.nodes:
            try:
                self.db.collect(n, str(self.run_dir / "nodes" / n.name))
            except Exception as e:  # noqa: BLE001 - collecting is best effort; stopping is not
                log.warning("%s: collecting logs failed: %s", n.name, e)
        self.db.teardown()
        for nem in self.nemeses:  # with the servers stopped: what prepare made (mounts, files) goes
            if hasattr(nem, "teardown"):
                try:
                    nem.teardown(self.ctx)
                except Exception as e:  # noqa: BLE001 - every fault class gets its teardown
                    log.warning("%s: nemesis teardown failed: %s", nem.name, e)

    def finish(self, interrupted: bool, error: str | None = None) -> Outcome:
        history = load_history(str(self.run_dir / store.HISTORY))
        if interrupted:
            results = {"valid": "unknown", "checkers": {}, "interrupted": True,
                       "reason": "interrupted before the run completed; not checked"}
        elif error:
            results = {"valid": "unknown", "checkers": {}, "error": error,
                       "reason": f"the run could not complete: {error}"}
        else:
            try:
                with signals_interrupt():
                    results = run_checkers(self.workload, history)
            except KeyboardInterrupt:
                interrupted = True
                results = {"valid": "unknown", "checkers": {}, "interrupted": True,
                           "reason": f"interrupted while checking; `etcdproof analyze {self.run_dir}` checks the stored history again"}
                log.warning("interrupted while checking; the history is stored")
        store.write_json(self.run_dir / store.RESULTS, results)
        self.write_test_json({"ended": time.time(), "interrupted": interrupted, "error": error,
                              "refused_faults": self.schedule.refused})
        try:
            from reports.index import update
            from reports.run import render_run

            render_run(self.run_dir)
            update(self.run_dir.parent.parent)  # store/index.html lists every run
        except Exception as e:  # noqa: BLE001 - the verdict stands without its report
            log.exception("rendering the report failed: %s", e)
        return Outcome(self.run_dir, results["valid"], results, interrupted, error)


def run_sync(runner: Runner) -> Outcome:
    """Run on a fresh event loop; SIGINT and SIGTERM cancel the run, which then heals and tears down."""

    async def main() -> Outcome:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        asked = []

        def interrupt(sig: signal.Signals) -> None:
            if not asked:  # the first signal stops the run; later ones must not cut the heal short
                task.cancel()
            asked.append(sig)
            log.warning("%s: stopping; healing faults and stopping servers first", sig.name)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, interrupt, sig)
        try:
            return await runner.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
