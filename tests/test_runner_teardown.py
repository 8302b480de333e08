"""The runner's last phases finish even when the run is interrupted during them.

A first Ctrl-C that lands while the runner heals or tears down (collecting node logs takes a
while) must not cut those short: every fault class is healed once, the servers are stopped, the
history is closed and results.json says the run was interrupted. Driven by in-memory fakes of
the DB, the fault class and the workload (as Jepsen tests its runner), so the timing of the
interruption is exact; the real-process interrupt runs are tests/test_interrupt.py.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from harness import store
from harness.db import DBError
from harness.generator import OpTemplate
from harness.inventory import Node
from harness.runner import Runner
from harness.runner import TestSpec as Spec

NODES = [Node("n1", "127.0.0.1")]


class FakeDB:
    kind = "fake"

    def __init__(self, setup_fails: bool = False) -> None:
        self.setup_fails = setup_fails
        self.tearing_down = threading.Event()
        self.stopped = False

    def setup(self) -> None:
        if self.setup_fails:
            raise DBError("n1: cannot start the fake server")

    def version(self, n: Node) -> str:
        return "fake 1"

    def client_endpoint(self, n: Node) -> str:
        return "127.0.0.1:1"  # nothing listens: every op fails at once, definitely

    def wait_healthy(self, timeout: float) -> None:
        pass

    def collect(self, n: Node, dest: str) -> None:
        self.tearing_down.set()
        time.sleep(0.4)  # as copying a node's data takes a while

    def teardown(self) -> None:
        self.stopped = True


class FakeFault:
    """A fault class that only heals, slowly, and counts its heals and how many overlapped."""

    name = "partition"

    def __init__(self) -> None:
        self.heals = 0
        self.overlap = 0
        self.healing = threading.Event()
        self._running = 0
        self._lock = threading.Lock()
        self.torn_down = False

    def setup(self, ctx) -> None:
        pass

    def heal(self, ctx) -> dict:
        with self._lock:
            self._running += 1
            self.overlap = max(self.overlap, self._running)
        self.healing.set()
        time.sleep(0.3)
        with self._lock:
            self._running -= 1
            self.heals += 1
        return {"healed": True}

    def teardown(self, ctx) -> None:
        self.torn_down = True


class FakeWorkload:
    name = "fake"

    def op_source(self, seed: int, worker: int):
        class Reads:
            def next(self) -> OpTemplate:
                return OpTemplate("read", "k", None)

        return Reads()

    async def setup(self, client) -> None:
        pass

    async def invoke(self, client, op: OpTemplate):
        return "ok", 1, {}

    def final_ops(self, history) -> list:
        return []

    def checkers(self) -> dict:
        return {}


def runner(tmp_path: Path, db: FakeDB, fault: FakeFault, time_limit: float = 0.2) -> Runner:
    spec = Spec(workload="fake", db="fake", nemesis=["partition"], time_limit=time_limit, rate=20,
                    nemesis_interval=60, seed=1)
    run_dir = store.new_run_dir(tmp_path, spec.test_name())
    return Runner(spec, NODES, {}, db, FakeWorkload(), [fault], run_dir)


def interrupt_when(r: Runner, moment: threading.Event, skip: int = 0):
    """Run r and cancel it (as the first SIGINT does) once moment is set, after `skip` clears."""

    async def go():
        task = asyncio.ensure_future(r.run())
        for _ in range(skip + 1):
            while not moment.is_set():
                await asyncio.sleep(0.005)
            moment.clear()
        await asyncio.sleep(0.05)
        task.cancel()
        return await task

    return asyncio.run(go())


def assert_finished_as_interrupted(r: Runner, outcome, db: FakeDB, fault: FakeFault) -> None:
    assert outcome.interrupted and outcome.exit_code == 130
    assert db.stopped and fault.torn_down and fault.overlap == 1
    assert r._hist_file.closed
    results = json.loads((r.run_dir / store.RESULTS).read_text())
    assert results["interrupted"] is True and results["valid"] == "unknown"


@pytest.mark.parametrize("moment", ["collecting", "healing"])
def test_interrupted_after_a_failed_setup(tmp_path: Path, moment: str) -> None:
    db, fault = FakeDB(setup_fails=True), FakeFault()
    r = runner(tmp_path, db, fault)
    outcome = interrupt_when(r, db.tearing_down if moment == "collecting" else fault.healing)
    assert_finished_as_interrupted(r, outcome, db, fault)
    assert fault.heals == 1


def test_interrupted_during_the_final_heal_heals_once_and_skips_recovery(tmp_path: Path) -> None:
    db, fault = FakeDB(), FakeFault()
    r = runner(tmp_path, db, fault)
    outcome = interrupt_when(r, fault.healing, skip=1)  # the first heal is the one before the workers
    assert_finished_as_interrupted(r, outcome, db, fault)
    assert fault.heals == 2  # before the run and after it, never twice at once
    history = [json.loads(x) for x in (r.run_dir / store.HISTORY).read_text().splitlines()]
    assert [h["type"] for h in history if h["process"] == "nemesis"] == ["invoke", "ok", "invoke", "ok"]
    assert any(h["process"] != "nemesis" for h in history), "the main phase ran no op"


class SlowCheckWorkload(FakeWorkload):
    """Its checker is the user's Ctrl-C: it signals the process, then computes for a long time."""

    def __init__(self) -> None:
        self.finished = False

    def checkers(self) -> dict:
        def check(history) -> dict:
            import os
            import signal as sig

            os.kill(os.getpid(), sig.SIGINT)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # CPU-bound, as the linearizability search is
                sum(range(1000))
            self.finished = True
            return {"valid": True}

        return {"slow": check}


def test_a_signal_during_the_checkers_stops_them_and_the_run_ends_interrupted(tmp_path: Path) -> None:
    from harness.runner import run_sync

    db, fault = FakeDB(), FakeFault()
    r = runner(tmp_path, db, fault)
    r.workload = w = SlowCheckWorkload()
    t0 = time.monotonic()
    outcome = run_sync(r)  # the loop's SIGINT handler, as `etcdproof test` has it
    assert time.monotonic() - t0 < 15 and not w.finished  # the check was cut short, not waited for
    assert outcome.interrupted and outcome.exit_code == 130
    results = json.loads((r.run_dir / store.RESULTS).read_text())
    assert results["interrupted"] is True and results["valid"] == "unknown"
    assert "etcdproof analyze" in results["reason"]
    assert db.stopped and fault.torn_down  # all that came before the checkers


class SlowStartFault(FakeFault):
    """A fault whose start takes a second; heal notes whether a start was still in progress."""

    def __init__(self) -> None:
        super().__init__()
        self.starting = threading.Event()
        self.in_start = False
        self.healed_during_start = False

    def start(self, ctx) -> dict:
        self.in_start = True
        self.starting.set()
        time.sleep(1.0)
        self.in_start = False
        return {"nodes": ["n1"]}

    def stop(self, ctx) -> dict:
        return {"stopped": True}

    def heal(self, ctx) -> dict:
        self.healed_during_start |= self.in_start
        return super().heal(ctx)


def test_a_signal_just_after_the_time_limit_waits_for_the_fault_in_flight_before_healing(tmp_path: Path) -> None:
    db, fault = FakeDB(), SlowStartFault()
    spec = Spec(workload="fake", db="fake", nemesis=["partition"], time_limit=0.3, rate=20,
                nemesis_interval=0.1, seed=1)
    r = Runner(spec, NODES, {}, db, FakeWorkload(), [fault], store.new_run_dir(tmp_path, spec.test_name()))

    async def go():
        task = asyncio.ensure_future(r.run())
        while not fault.starting.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.45)  # past the time limit, the start still running: the runner waits for it
        assert fault.in_start
        task.cancel()
        return await task

    outcome = asyncio.run(go())
    assert not fault.healed_during_start, "the final heal ran while a fault was still being applied"
    assert_finished_as_interrupted(r, outcome, db, fault)


class FlakyFinalReads(FakeWorkload):
    """Its final read fails definitely, then uncertainly, then succeeds: as reads caught in the
    election a rejoining member forces right after the heal."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.final_calls = 0

    async def invoke(self, client, op: OpTemplate):
        from harness.client import Definite, Indefinite

        if op.key != "final":
            return "ok", 1, {}
        self.final_calls += 1
        if self.final_calls <= self.failures:
            raise (Definite if self.final_calls % 2 else Indefinite)("etcdserver: leader changed")
        return "ok", 7, {}

    def final_ops(self, history) -> list:
        return [OpTemplate("read", "final", None)]


@pytest.mark.parametrize("failures,tries", [(2, 3), (9, 4)])
def test_a_final_read_that_fails_is_tried_again(tmp_path: Path, monkeypatch, failures: int, tries: int) -> None:
    """Each try is its own op (a new process after an uncertain one); the tries stop at the first
    success or after FINAL_ATTEMPTS, and nothing else is retried."""
    from checker.history import load_history
    from harness import runner as runner_module

    monkeypatch.setattr(runner_module, "FINAL_RETRY_GAP", 0.01)
    wl = FlakyFinalReads(failures)
    spec = Spec(workload="fake", db="fake", nemesis=[], time_limit=0.2, rate=20, seed=1)
    r = Runner(spec, NODES, {}, FakeDB(), wl, [], store.new_run_dir(tmp_path, spec.test_name()))
    asyncio.run(r.run())
    done = [op for op in load_history(str(r.run_dir / store.HISTORY)) if op.key == "final" and op.type != "invoke"]
    assert [op.type for op in done] == (["fail", "info", "ok"] if failures == 2 else ["fail", "info", "fail", "info"])
    assert wl.final_calls == tries == runner_module.FINAL_ATTEMPTS - (failures == 2)
    assert done[0].process == done[1].process != done[2].process  # a new process after the info


def test_a_run_interrupted_under_pytest_stops_the_session(tmp_path: Path) -> None:
    """run_sync swallows the SIGINT that ended the run (it healed and tore down first); the pytest
    fixtures then raise KeyboardInterrupt, so pytest stops instead of starting the next run."""
    import os
    import signal

    from harness.pytest_plugin import stop_if_interrupted
    from harness.runner import run_sync

    db, fault = FakeDB(), FakeFault()
    r = runner(tmp_path, db, fault, time_limit=30)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    outcome = run_sync(r)
    assert outcome.interrupted and db.stopped
    with pytest.raises(KeyboardInterrupt, match="healed"):
        stop_if_interrupted(outcome, r.run_dir)
    done = run_sync(runner(tmp_path, FakeDB(), FakeFault(), time_limit=0.2))
    assert not done.interrupted
    stop_if_interrupted(done, tmp_path)  # a run that ended by itself lets the session go on
