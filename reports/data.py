"""Data for reports, prepared by pure functions of a run's files (no plotting, no HTML here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from checker.history import INFO, INVOKE, NEMESIS, OK, Op, load_history
from harness.store import HISTORY, RESULTS, TEST_JSON, read_object


@dataclass
class RunData:
    run_dir: Path
    test: dict
    results: dict
    history: list[Op]


def load_run(run_dir: str | Path) -> RunData:
    """A run's files (any not written yet read as empty); ValueError naming the file that is malformed."""
    d = Path(run_dir)
    test, results = read_object(d / TEST_JSON), read_object(d / RESULTS)
    try:
        hist = load_history(str(d / HISTORY)) if (d / HISTORY).exists() else []
    except ValueError as e:
        raise ValueError(f"{d / HISTORY}: {e}") from None
    return RunData(d, test, results, hist)


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
    request: Any = None  # the invocation's value

    @property
    def end(self) -> float:
        """When it completed (or, never completed, when the history ends), seconds since the start."""
        return self.start + self.latency


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
                             (op.time - inv.time) / 1e9, op.node, op.value, op.error, op.index, inv.value))
    for inv in pending.values():
        out.append(Completed(inv.index, inv.process, inv.f, inv.key, INFO, inv.time / 1e9,
                             (end - inv.time) / 1e9, inv.node, inv.value, "never completed", None, inv.value))
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
    outcome: str = OK  # of the start op: ok, fail (refused: it did not happen), info (it may have)


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
            p = FaultPeriod(name, t, None, op.type == OK, list(nodes), op.value, op.error, op.type)
            out.append(p)
            if p.applied or op.type == INFO:
                open_[name] = p
        elif kind == "stop" and name in open_:
            open_.pop(name).end = t
    return out


FAULT_COLORS = ["#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#fc9272", "#d9d9d9", "#c7e9c0", "#fdd0a2", "#dadaeb"]


def fault_color(name: str, names: list[str]) -> str:
    """The colour of a fault class among the classes of a run (the same in plots and timelines)."""
    return FAULT_COLORS[names.index(name) % len(FAULT_COLORS)] if name in names else FAULT_COLORS[-1]


def checker_rows(results: dict) -> list[dict]:
    """One row per checker: name, verdict, one-line reason."""
    rows = []
    for name, r in sorted((results.get("checkers") or {}).items()):
        rows.append({"name": name, "valid": r.get("valid", "unknown"), "reason": r.get("reason", ""),
                     "seconds": r.get("seconds")})
    return rows


def verdict_word(v: Any) -> str:
    return {True: "valid", False: "INVALID"}.get(v, "unknown")


def parameter_rows(test: dict) -> list[tuple[str, Any]]:
    """The test's parameters as given (its spec), and the workers it ran."""
    spec = test.get("spec", {})
    rows: list[tuple[str, Any]] = [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in sorted(spec.items())]
    rows.append(("workers (concurrency)", test.get("concurrency")))
    return [(k, v) for k, v in rows if v not in (None, "")]


def target_rows(test: dict) -> list[dict]:
    """The targets: each node, the address members use, the server version it reported."""
    versions = (test.get("db") or {}).get("versions") or {}
    return [{"name": n.get("name"), "address": n.get("address") or n.get("host"), "host": n.get("host"),
             "version": versions.get(n.get("name"), "")} for n in test.get("nodes", [])]


def partition_note(test: dict) -> str:
    """Whether network partitions could be applied on these nodes, and why not."""
    if test.get("can_partition", True) is not False:
        return "possible"
    return f"not possible: {test.get('why_not_partition') or 'no reason recorded'}"


@dataclass(frozen=True)
class HistoryRow:
    """One line of history.jsonl for the history page; pair is the other end of the same op."""

    op: Op
    pair: int | None


def history_rows(history: list[Op]) -> list[HistoryRow]:
    """Every line with the index of its other half (invoke <-> completion), per process."""
    pending: dict[Any, int] = {}
    pair: dict[int, int] = {}
    for op in history:
        who = (op.process, op.f) if op.process == NEMESIS else op.process  # nemesis lanes may overlap
        if op.type == INVOKE:
            pending[who] = op.index
        elif who in pending:
            inv = pending.pop(who)
            pair[inv], pair[op.index] = op.index, inv
    return [HistoryRow(op, pair.get(op.index)) for op in history]
