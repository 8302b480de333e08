"""Data for reports, prepared by pure functions of a run's files (no plotting, no HTML here)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker.history import FAIL, INFO, INVOKE, NEMESIS, OK, Op, load_history
from harness.store import HISTORY, RESULTS, TEST_JSON


@dataclass
class RunData:
    run_dir: Path
    test: dict
    results: dict
    history: list[Op]


def _read_json(p: Path) -> dict:
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def load_run(run_dir: str | Path) -> RunData:
    d = Path(run_dir)
    hist = load_history(str(d / HISTORY)) if (d / HISTORY).exists() else []
    return RunData(d, _read_json(d / TEST_JSON), _read_json(d / RESULTS), hist)


@dataclass(frozen=True)
class Completed:
    """A client op with both ends: when it started, how long it took, how it ended."""

    index: int  # of the invocation
    process: Any
    f: str
    key: str | None
    type: str  # ok | fail | info ("info" also for ops the run ended before completing)
    start: float  # seconds since the run started
    latency: float  # seconds
    node: str | None
    value: Any = None
    error: str | None = None
    end_index: int | None = None  # of the completion (None: it never completed)


def completed_ops(history: list[Op]) -> list[Completed]:
    pending: dict[Any, Op] = {}
    out = []
    end = max((op.time for op in history), default=0)
    for op in history:
        if op.process == NEMESIS:
            continue
        if op.type == INVOKE:
            pending[op.process] = op
            continue
        inv = pending.pop(op.process, None)
        if inv is None:
            continue
        out.append(Completed(inv.index, op.process, op.f, op.key, op.type, inv.time / 1e9,
                             (op.time - inv.time) / 1e9, op.node, op.value, op.error, op.index))
    for inv in pending.values():
        out.append(Completed(inv.index, inv.process, inv.f, inv.key, INFO, inv.time / 1e9,
                             (end - inv.time) / 1e9, inv.node, inv.value, "never completed"))
    out.sort(key=lambda c: c.index)
    return out


@dataclass
class FaultPeriod:
    """One fault, from its start op to its stop op (end None: never stopped before the run ended)."""

    name: str
    start: float
    end: float | None
    applied: bool  # the start op ended ok (False: refused or unknown)
    nodes: list[str] = field(default_factory=list)
    detail: Any = None
    error: str | None = None


def fault_periods(history: list[Op]) -> list[FaultPeriod]:
    """Pair each start-<fault> completion with the next stop-<fault> of the same class."""
    open_: dict[str, FaultPeriod] = {}
    out: list[FaultPeriod] = []
    for op in history:
        if op.process != NEMESIS or op.type == INVOKE:
            continue
        kind, _, name = op.f.partition("-")
        t = op.time / 1e9
        if kind == "start":
            nodes = op.value.get("nodes", []) if isinstance(op.value, dict) else []
            p = FaultPeriod(name, t, None, op.type == OK, list(nodes), op.value, op.error)
            out.append(p)
            if p.applied or op.type == INFO:
                open_[name] = p
        elif kind == "stop" and name in open_:
            open_.pop(name).end = t
    return out


def outcome_counts(history: list[Op]) -> dict[str, int]:
    c = {OK: 0, FAIL: 0, INFO: 0}
    for op in completed_ops(history):
        c[op.type] += 1
    return c


def checker_rows(results: dict) -> list[dict]:
    """One row per checker: name, verdict, one-line reason."""
    rows = []
    for name, r in sorted((results.get("checkers") or {}).items()):
        rows.append({"name": name, "valid": r.get("valid", "unknown"), "reason": r.get("reason", ""),
                     "seconds": r.get("seconds")})
    return rows


def verdict_word(v: Any) -> str:
    return {True: "valid", False: "INVALID"}.get(v, "unknown")
