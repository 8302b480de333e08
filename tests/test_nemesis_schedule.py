"""The schedule's composition rules, on in-memory fault classes (the runner's own fakes, as Jepsen
tests its generators): lanes overlap different classes but never one class twice, starts are
staggered, a permanent refusal is asked once, an unknown start is healed at once, the final heal
goes network first and members last, and cancelling waits for every lane before the heal."""
from __future__ import annotations

import asyncio
import random
import threading
import time

from checker.history import FAIL, INFO, INVOKE, Op
from nemesis import registry
from nemesis.base import FaultRefused, NemesisContext
from nemesis.schedule import HEAL_ORDER, Schedule, heal_order


class Fake:
    """A fault class that records when it was applied; optionally refuses or fails, or is slow."""

    def __init__(self, name: str, log: list, refuse: str = "", permanent: bool = False, fail: bool = False,
                 slow: float = 0.0, fail_stop: bool = False) -> None:
        self.name, self.log, self.refuse, self.permanent, self.fail, self.slow = name, log, refuse, permanent, fail, slow
        self.fail_stop = fail_stop
        self.on = False
        self.lock = threading.Lock()

    def setup(self, ctx) -> None:
        pass

    def start(self, ctx) -> dict:
        if self.refuse:
            raise FaultRefused(self.refuse, permanent=self.permanent)
        time.sleep(self.slow)
        with self.lock:
            assert not self.on, f"{self.name} started twice at once"
            self.on = True
        self.log.append((time.monotonic(), "start", self.name))
        if self.fail:
            raise RuntimeError("half applied")
        return {"nodes": ["n1"]}

    def stop(self, ctx) -> dict:
        self.log.append((time.monotonic(), "stop", self.name))
        if self.fail_stop:
            raise RuntimeError("half undone")
        self.on = False
        return {}

    def heal(self, ctx) -> dict:
        self.on = False
        self.log.append((time.monotonic(), "heal", self.name))
        return {}


def schedule(faults, interval: float = 0.04, concurrent: int = 1):
    ops: list[Op] = []

    def record(op: Op) -> Op:
        ops.append(op)
        return op

    ctx = NemesisContext([], {}, None, random.Random(1))  # type: ignore[arg-type]
    return Schedule(ctx, faults, interval, record, random.Random(3), concurrent=concurrent), ops


def run_for(sched: Schedule, seconds: float) -> None:
    async def go() -> None:
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sched.heal_all()

    asyncio.run(go())


def overlaps(log) -> int:
    """The most classes applied at the same moment."""
    on, most = set(), 0
    for _, what, name in sorted(log):
        if what == "start":
            on.add(name)
        else:
            on.discard(name)
        most = max(most, len(on))
    return most


def test_lanes_overlap_classes_but_never_one_class_twice():
    log: list = []
    faults = [Fake(n, log) for n in ("a", "b", "c", "d")]
    sched, ops = schedule(faults, concurrent=3)
    run_for(sched, 1.0)
    assert overlaps(log) >= 2  # several classes at once
    # Fake.start's own assertion runs in the schedule's thread, which records it as an info op
    # (the ops in flight when the run is cancelled end info too, as "interrupted")
    assert not [op.error for op in ops if op.type == INFO and op.error != "interrupted"], "a class ran twice at once"
    starts = [op for op in ops if op.f.startswith("start-") and op.type == INVOKE]
    assert {op.f for op in starts} == {"start-a", "start-b", "start-c", "start-d"}


def test_one_lane_is_one_fault_at_a_time_and_lanes_start_staggered():
    log: list = []
    sched, _ = schedule([Fake(n, log) for n in ("a", "b", "c")], concurrent=1)
    run_for(sched, 0.6)
    assert overlaps(log) == 1
    log2: list = []
    sched2, _ = schedule([Fake(n, log2) for n in ("a", "b", "c")], interval=0.2, concurrent=3)
    t0 = time.monotonic()
    run_for(sched2, 0.45)
    first = sorted(t - t0 for t, what, _ in log2 if what == "start")[:3]
    assert len(first) == 3 and first[1] - first[0] > 0.03 and first[2] - first[1] > 0.03, first


def test_a_permanent_refusal_is_recorded_once_and_a_passing_one_again():
    log: list = []
    never = Fake("clock", log, refuse="not on a Go binary", permanent=True)
    later = Fake("member", log, refuse="no quorum now")
    sched, ops = schedule([never, later, Fake("kill", log)], concurrent=2)
    run_for(sched, 0.8)
    refused = [op for op in ops if op.type == FAIL]
    assert [op.error for op in refused if op.f == "start-clock"] == ["refused: not on a Go binary"]
    assert [op.extra for op in refused if op.f == "start-clock"] == [{"permanent": True}]
    assert len([op for op in refused if op.f == "start-member"]) >= 2
    assert sched.dropped == {"clock"} and sched.refused["member"] == "no quorum now"


def test_an_unknown_start_is_healed_at_once():
    log: list = []
    sched, ops = schedule([Fake("disk", log, fail=True)])
    run_for(sched, 0.3)
    infos = [i for i, op in enumerate(ops) if op.f == "start-disk" and op.type == INFO]
    assert infos
    after = ops[infos[0] + 1:infos[0] + 3]
    assert [(op.f, op.type) for op in after] == [("stop-disk", INVOKE), ("stop-disk", "ok")]


def test_an_unknown_stop_is_healed_before_the_class_starts_again():
    log: list = []
    sched, ops = schedule([Fake("disk", log, fail_stop=True)])
    run_for(sched, 0.5)  # Fake.start asserts the class was off: healed after every failed stop
    assert not [op for op in ops if op.f == "start-disk" and op.type == INFO and op.error != "interrupted"], ops
    infos = [i for i, op in enumerate(ops)
             if op.f == "stop-disk" and op.type == INFO and op.error != "interrupted"]
    assert len(infos) >= 2, ops  # it started again after a failed stop
    for i in infos:
        # the heal follows at once; the run's cancel may interrupt it, and then heal_all's heal is
        # the one that succeeds; either way before the class starts again
        assert (ops[i + 1].f, ops[i + 1].type) == ("stop-disk", INVOKE), ops[i:]
        nxt = next((j for j in range(i + 1, len(ops)) if ops[j].f == "start-disk"), len(ops))
        assert [op for op in ops[i + 1:nxt] if op.f == "stop-disk" and op.type == "ok"], ops[i:nxt]
    assert [what for _, what, _ in log[:3]] == ["start", "stop", "heal"]


def test_heal_order_network_first_members_last():
    log: list = []
    names = registry.parse("all,auth")
    assert sorted(names) == sorted(HEAL_ORDER) == sorted(registry.FACTORIES)  # every class has its place
    shuffled = [Fake(n, log) for n in random.Random(5).sample(names, len(names))] + [Fake("custom", log)]
    assert [f.name for f in heal_order(shuffled)] == ["custom", *HEAL_ORDER]


def test_cancel_waits_for_every_lane_before_the_heal():
    log: list = []
    slow = [Fake(n, log, slow=0.3) for n in ("a", "b")]
    sched, ops = schedule(slow, interval=0.01, concurrent=2)
    run_for(sched, 0.15)  # cancelled while both starts are in their threads
    heals = [t for t, what, _ in log if what == "heal"]
    applied = [t for t, what, _ in log if what in ("start", "stop")]
    assert heals and applied and max(applied) < min(heals), log  # nothing applied during the heal
    assert all(not f.on for f in slow)
