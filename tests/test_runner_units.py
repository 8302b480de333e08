"""The runner's pure parts: verdict composition, the store layout, op schedules, the nemesis
schedule (driven by an in-memory fault that records what was asked of it), report data."""
from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime, timezone
from pathlib import Path

import pytest

from checker import stats
from checker.history import FAIL, INFO, INVOKE, NEMESIS, OK, HistoryWriter, Op, load_history
from harness import store
from harness.generator import RegisterOps
from harness.runner import compose, run_checkers
from nemesis import registry
from nemesis.base import FaultRefused, NemesisContext
from nemesis.schedule import Schedule
from reports.data import completed_ops, fault_periods


def test_compose_ranks_false_above_unknown_above_true() -> None:
    assert compose({"a": {"valid": True}, "b": {"valid": True}}) is True
    assert compose({"a": {"valid": True}, "b": {"valid": "unknown"}}) == "unknown"
    assert compose({"a": {"valid": False}, "b": {"valid": "unknown"}}) is False
    assert compose({"a": {}}) == "unknown"
    assert compose({}) == "unknown"


class _Crashing:
    name = "crashing"

    def checkers(self):
        def boom(history):
            raise RuntimeError("bug in a checker")

        return {"boom": boom, "stats": stats.check}


def test_a_checker_that_throws_gives_unknown_never_true() -> None:
    h = [Op(0, 0, INVOKE, "read", key="k"), Op(1, 0, OK, "read", 1, key="k")]
    res = run_checkers(_Crashing(), h)
    assert res["checkers"]["boom"]["valid"] == "unknown"
    assert "bug in a checker" in res["checkers"]["boom"]["reason"]
    assert res["checkers"]["stats"]["valid"] is True
    assert res["valid"] == "unknown"


def test_stats_is_invalid_when_some_op_never_succeeded() -> None:
    h = [Op(0, 0, INVOKE, "read"), Op(1, 0, OK, "read", 1), Op(2, 0, INVOKE, "write", 2), Op(3, 0, INFO, "write", 2)]
    res = stats.check(h)
    assert res["valid"] is False and "write" in res["reason"]
    assert res["by_f"]["write"] == {"count": 1, "ok": 0, "fail": 0, "info": 1}
    assert stats.check([])["valid"] == "unknown"


def test_run_dirs_and_latest_links(tmp_path: Path) -> None:
    t = datetime(2026, 12, 1, 10, 0, 0, tzinfo=timezone.utc)
    a = store.new_run_dir(tmp_path, "register reference/kill", t)
    b = store.new_run_dir(tmp_path, "register reference/kill", t)
    assert a.name == "20261201T100000Z" and b.name == "20261201T100000Z-2"
    assert a.parent.name == "register-reference-kill"
    assert (tmp_path / "latest").resolve() == b.resolve()
    assert (a.parent / "latest").resolve() == b.resolve()
    store.write_json(a / store.TEST_JSON, {"x": 1})
    assert store.runs(tmp_path) == [a]


def test_register_schedule_is_a_pure_function_of_seed_and_worker() -> None:
    def take(seed: int, worker: int, n: int = 300) -> list:
        src = RegisterOps(seed, worker)
        return [src.next() for _ in range(n)]

    assert take(7, 3) == take(7, 3)
    assert take(7, 3) != take(8, 3)
    assert take(7, 3) != take(7, 4)
    ops = take(1, 0, 600)
    assert {o.f for o in ops} == {"read", "write", "cas"}
    # windows: the first 60 ops use keys r0..r3, the next 60 r4..r7
    assert {o.key for o in ops[:60]} <= {"r0", "r1", "r2", "r3"}
    assert {o.key for o in ops[60:120]} <= {"r4", "r5", "r6", "r7"}


def test_nemesis_names_parse_with_one_line_errors() -> None:
    assert registry.parse("partition,kill") == ["partition", "kill"]
    assert registry.parse("none") == [] and registry.parse("") == []
    assert set(registry.parse("all")) >= {"partition", "kill", "pause"}
    with pytest.raises(registry.NemesisSpecError, match="unknown nemesis 'explode'"):
        registry.parse("kill,explode")


class FakeFault:
    """An in-memory fault for testing the schedule itself: records every call."""

    def __init__(self, name: str, refuse: bool = False) -> None:
        self.name = name
        self.refuse = refuse
        self.calls: list[str] = []
        self.applied = False

    def setup(self, ctx) -> None:
        self.calls.append("setup")

    def start(self, ctx) -> dict:
        self.calls.append("start")
        if self.refuse:
            raise FaultRefused("not on this kind of node")
        self.applied = True
        return {"nodes": ["n1"]}

    def stop(self, ctx) -> dict:
        self.calls.append("stop")
        self.applied = False
        return {"nodes": ["n1"]}

    def heal(self, ctx) -> dict:
        self.calls.append("heal")
        self.applied = False
        return {"nodes": []}


def _schedule(tmp_path: Path, faults: list) -> tuple[Schedule, list[Op]]:
    ctx = NemesisContext([], {}, None, random.Random(1))  # type: ignore[arg-type]
    f = open(tmp_path / "h.jsonl", "w")
    w = HistoryWriter(f)
    ops: list[Op] = []

    def record(op: Op) -> Op:
        op.time = len(ops) * 1_000_000
        ops.append(op)
        return w.write(op)

    return Schedule(ctx, faults, 0.02, record, random.Random(2)), ops


def test_schedule_alternates_start_and_stop_and_heals_when_cancelled(tmp_path: Path) -> None:
    a, b = FakeFault("a"), FakeFault("b")
    sched, ops = _schedule(tmp_path, [a, b])

    async def go() -> None:
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(0.35)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sched.heal_all()

    asyncio.run(go())
    assert not a.applied and not b.applied
    for fault in (a, b):
        assert fault.calls[-1] == "heal"
        # every start is followed by its stop (or, for the last one, the heal)
        seq = [c for c in fault.calls if c in ("start", "stop")]
        assert seq and seq[0] == "start"
        assert all(x != y for x, y in zip(seq, seq[1:]))
    fs = [op.f for op in ops if op.type != INVOKE]
    assert "start-a" in fs and "start-b" in fs and fs[-2:] in (["stop-b", "stop-a"], ["stop-a", "stop-b"])
    assert all(op.process == NEMESIS for op in ops)
    assert sched.active == []


def test_a_refused_fault_is_recorded_as_fail_with_the_reason(tmp_path: Path) -> None:
    f = FakeFault("disk", refuse=True)
    sched, ops = _schedule(tmp_path, [f])

    async def go() -> None:
        task = asyncio.create_task(sched.run())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(go())
    refused = [op for op in ops if op.f == "start-disk" and op.type == FAIL]
    assert refused and refused[0].error == "refused: not on this kind of node"
    assert sched.refused == {"disk": "not on this kind of node"}
    assert "stop" not in f.calls
    periods = fault_periods(ops)
    assert periods and not any(p.applied for p in periods)


def test_fault_periods_and_completed_ops_from_a_history(tmp_path: Path) -> None:
    s = 1_000_000_000
    h = [
        Op(0, 0, INVOKE, "write", 1, key="k", time=0),
        Op(1, NEMESIS, INVOKE, "start-kill", time=1 * s),
        Op(2, NEMESIS, OK, "start-kill", {"nodes": ["n2"]}, time=2 * s),
        Op(3, 0, INFO, "write", 1, key="k", time=3 * s, error="timeout"),
        Op(4, 1, INVOKE, "read", key="k", time=3 * s),
        Op(5, NEMESIS, INVOKE, "stop-kill", time=5 * s),
        Op(6, NEMESIS, OK, "stop-kill", {"nodes": ["n2"]}, time=6 * s),
    ]
    p = fault_periods(h)
    assert len(p) == 1 and p[0].name == "kill" and p[0].applied
    assert (p[0].start, p[0].end, p[0].nodes) == (2.0, 6.0, ["n2"])
    c = completed_ops(h)
    assert [(o.index, o.type, o.latency) for o in c] == [(0, INFO, 3.0), (4, INFO, 3.0)]
    assert c[0].end_index == 3 and c[1].error == "never completed"
    path = tmp_path / "h.jsonl"
    with open(path, "w") as f:
        w = HistoryWriter(f)
        for op in h:
            w.write(op)
    back = load_history(str(path))
    assert [o.f for o in back] == [o.f for o in h] and back[2].value == {"nodes": ["n2"]}
    assert json.loads(path.read_text().splitlines()[0])["type"] == "invoke"
