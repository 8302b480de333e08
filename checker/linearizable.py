"""Linearizability: `check(history, model)` -> a CheckResult with a verdict per partition.

The history's op pairs become model operations (`operations`), the model splits them into
independent partitions (P-compositionality: a history is linearizable iff each partition is),
each partition is searched (checker.wgl), and a failing partition gets its explanation
(checker.explain). Large multi-partition histories are checked in worker processes.

Verdicts are True, False or "unknown"; they compose with False above "unknown" above True. The
time limit covers the verdicts; running out gives "unknown" for the partitions not decided.
The result format is documented in docs/checker.md.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Hashable

from checker import explain
from checker.history import INFO, INVOKE, NEMESIS, Op
from checker.models import Model
from checker.wgl import INVALID, UNKNOWN, VALID, Operation, Outcome, search

PARALLEL_AFTER = 1.0  # seconds of checking in this process before the rest goes to workers
DEFAULT_EXPLAIN_LIMIT = 10.0  # seconds for explaining the failing partitions


def compose(verdicts) -> bool | str:
    """False if any is False, else "unknown" if any is unknown, else True (True when empty)."""
    out: bool | str = VALID
    for v in verdicts:
        if v is INVALID or v is False:
            return INVALID
        if v == UNKNOWN:
            out = UNKNOWN
    return out


@dataclass
class PartitionResult:
    """One partition's verdict and the data to draw and explain it (docs/checker.md)."""

    key: Hashable
    valid: bool | str
    ops: list[Operation]
    path: list[tuple[Operation, Any]]  # the linearization (valid) or the longest prefix found
    end_state: Any
    reason: str = ""
    blocked: list[tuple[Operation, str]] = field(default_factory=list)
    minimal: explain.Minimal | None = None
    refutation: Any = None  # Model.refute's proof, when it decided without a search
    steps: int = 0
    cache_size: int = 0
    elapsed: float = 0.0

    def to_dict(self, model: Model) -> dict:
        d: dict[str, Any] = {
            "key": _jsonable_key(self.key),
            "valid": self.valid,
            "op_count": len(self.ops),
            "steps": self.steps,
            "cache_size": self.cache_size,
            "elapsed": round(self.elapsed, 6),
        }
        if self.reason:
            d["reason"] = self.reason
        d["ops"] = [_op_dict(op, model) for op in sorted(self.ops, key=lambda o: o.call)]
        d["initial_state"] = model.describe_state(model.init())
        d["linearization" if self.valid is VALID else "longest_prefix"] = _path_dict(self.path, model)
        d["final_state"] = model.describe_state(self.end_state)
        if self.valid is not VALID:
            d["linearized"] = sum(1 for op, _ in self.path if op.required)
            d["required"] = sum(1 for op in self.ops if op.required)
            d["blocked"] = [
                {"index": op.index, "state_before": model.describe_state(self.end_state),
                 "description": model.describe_op(op.input, op.output), "why": why}
                for op, why in self.blocked
            ]
        if self.minimal is not None:
            d["minimal"] = self.minimal.to_dict()
        if self.refutation is not None:
            d["refutation"] = self.refutation.to_dict()
        return d


@dataclass
class CheckResult:
    """The verdict for a whole history: `valid` in (True, False, "unknown")."""

    valid: bool | str
    model: Model
    partitions: list[PartitionResult]
    elapsed: float = 0.0
    op_count: int = 0
    workers: int = 1

    @property
    def failures(self) -> list[PartitionResult]:
        return [p for p in self.partitions if p.valid is INVALID]

    def reason(self) -> str:
        """One line for a report's verdict table: what was decided, and the first problem."""
        n = len(self.partitions)
        if self.valid is VALID:
            return f"{self.op_count} ops in {n} partition{'s' * (n != 1)} linearizable ({self.model.name} model)"
        if self.failures:
            first = self.failures[0]
            why = first.blocked[0][1] if first.blocked else "no linearization"
            if n == 1 and first.key is None:  # a model that does not partition (kv, mutex)
                return f"not linearizable: {why}"
            keys = ", ".join(str(_jsonable_key(p.key)) for p in self.failures[:5])
            more = f" and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
            return f"not linearizable: {keys}{more} ({_jsonable_key(first.key)}: {why})"
        undecided = [p for p in self.partitions if p.valid == UNKNOWN]
        why = undecided[0].reason if undecided and undecided[0].reason else "budget"
        return f"{len(undecided)} of {n} partitions undecided ({why}); no violation found in the rest"

    def to_dict(self) -> dict:
        counts = {"valid": 0, "invalid": 0, "unknown": 0}
        for p in self.partitions:
            counts["valid" if p.valid is VALID else "invalid" if p.valid is INVALID else "unknown"] += 1
        return {
            "valid": self.valid,
            "reason": self.reason(),
            "checker": "linearizable",
            "model": self.model.name,
            "op_count": self.op_count,
            "partition_count": len(self.partitions),
            "partitions_by_verdict": counts,
            "elapsed": round(self.elapsed, 6),
            "workers": self.workers,
            "failures": [_jsonable_key(p.key) for p in self.failures],
            "unknown": [_jsonable_key(p.key) for p in self.partitions if p.valid == UNKNOWN],
            "partitions": [p.to_dict(self.model) for p in self.partitions],
        }


def _jsonable_key(k: Hashable) -> Any:
    if k is None or isinstance(k, (str, int, float, bool)):
        return k
    return str(k)


def _op_dict(op: Operation, model: Model) -> dict:
    return {
        "index": op.index,
        "completion": op.completion,
        "process": op.process,
        "call": op.call_time,
        "return": op.return_time,
        "status": op.status,
        "required": op.required,
        "description": model.describe_op(op.input, op.output),
    }


def _path_dict(path: list[tuple[Operation, Any]], model: Model) -> list[dict]:
    """Each op with the state after it and a linearization point: the earliest time at or
    after its call that keeps the points in order (clamped to its return for display)."""
    out = []
    point = None
    for op, after in path:
        p = op.call_time if point is None else max(point, op.call_time)
        if op.return_time is not None and op.required:
            p = min(p, op.return_time)
        point = p
        out.append({"index": op.index, "state": model.describe_state(after), "point": p})
    return out


def operations(history: list[Op], model: Model) -> list[Operation]:
    """Pair invokes with completions and let the model read each pair.

    Events are ordered by Op.index (the order the runner recorded them in, which is real time
    order for the runner); nemesis ops are skipped. Raises ValueError for a malformed history.
    """
    hist = sorted(history, key=lambda o: o.index)
    pending: dict[Any, tuple[int, Op]] = {}
    pairs: list[tuple[int, Op, int | None, Op | None]] = []
    for pos, op in enumerate(hist):
        if op.process == NEMESIS:
            continue
        if op.type == INVOKE:
            if op.process in pending:
                raise ValueError(f"op {op.index}: process {op.process} invoked again while op "
                                 f"{pending[op.process][1].index} was pending")
            pending[op.process] = (pos, op)
            continue
        started = pending.pop(op.process, None)
        if started is None:
            raise ValueError(f"op {op.index}: a {op.type} for process {op.process} with no invoke")
        pairs.append((started[0], started[1], pos, op))
    pairs.extend((pos, inv, None, None) for pos, inv in pending.values())
    pairs.sort(key=lambda p: p[0])
    out = []
    for call_pos, inv, ret_pos, comp in pairs:
        prepared = model.prepare(inv, comp)
        if prepared is None:
            continue
        inp, output, required = prepared
        if required and comp is None:
            raise ValueError(f"op {inv.index}: model {model.name} requires an op that never completed")
        out.append(Operation(
            index=inv.index, completion=comp.index if comp is not None else None, process=inv.process,
            call=call_pos, ret=ret_pos if required else None, input=inp, output=output, required=required,
            call_time=inv.time, return_time=comp.time if comp is not None else None,
            key=model.partition_key(inv, inp), status=comp.type if comp is not None else INFO,
        ))
    return out


def check_partition(model: Model, ops: list[Operation], deadline: float | None = None,
                    max_steps: int | None = None, explain_limit: float = DEFAULT_EXPLAIN_LIMIT) -> PartitionResult:
    """Search one partition (deadline: a time.monotonic() value, which is system-wide, so
    worker processes share it); explain it if it is not linearizable."""
    t0 = time.monotonic()
    ops = model.refine(ops)
    proof = model.refute(ops)
    if proof is not None:  # certain without a search (checker.kvrefute); the offending ops are
        # reported as the ones stuck, at the start (no prefix was searched for)
        r = PartitionResult(ops[0].key if ops else None, INVALID, ops, [], model.init(),
                            f"refuted before the search ({proof.rule}): {proof.why}",
                            blocked=[(op, proof.why) for op in proof.ops], refutation=proof)
        if explain_limit > 0:
            r.minimal = explain.confirm(model, ops, proof.ops, proof.rule, time.monotonic() + explain_limit)
        r.elapsed = time.monotonic() - t0
        return r
    work = model.canonical(ops)  # the same linearizations, more of them interchangeable
    out = search(work, model.init(), model.step, deadline=deadline, max_steps=max_steps,
                 progress=model.progress, limit=model.limit, preserves=model.preserves, dead=model.dead,
                 advances=model.advances)
    if work is not ops:
        _restore(model, ops, out)
    r = PartitionResult(ops[0].key if ops else None, out.valid, ops, out.path, out.end_state, out.reason,
                        steps=out.steps, cache_size=out.cache_size)
    if out.valid is INVALID:
        r.blocked = explain.blocked(model, ops, out)
        if explain_limit > 0:
            stuck = min((op.ret for op, _ in r.blocked if op.required), default=None)
            # on the canonical copies too: their relaxed windows fail exactly when the real
            # ones do, and they keep every Op.index
            r.minimal = explain.minimal(model, work, time.monotonic() + explain_limit, hint=stuck)
    r.elapsed = time.monotonic() - t0
    return r


def _restore(model: Model, ops: list[Operation], out: Outcome) -> None:
    """The search ran on the model's canonical copies of `ops`: put the real ops in the path
    and replay the states from them, so reports show real values. The real ops are accepted in
    the same order (Model.canonical's promise); a refusal here is a bug, not a verdict."""
    for n, op in enumerate(ops):
        op.id = n  # the copies' positions, as the search numbered them
    state = model.init()
    path = []
    for copy, _ in out.path:
        op = ops[copy.id]
        ok, state = model.step(state, op.input, op.output)
        if not ok:
            raise AssertionError(f"op {op.index}: the canonical history accepted it, the real one does not")
        path.append((op, state))
    out.path, out.end_state = path, state


def _worker(args: tuple) -> PartitionResult:
    model, ops, deadline, max_steps, explain_limit = args
    return check_partition(model, ops, deadline, max_steps, explain_limit)


def check(history: list[Op], model: Model, time_limit: float | None = None, max_steps: int | None = None,
          workers: int | None = None, explain_limit: float = DEFAULT_EXPLAIN_LIMIT) -> CheckResult:
    """Check a history against a model.

    time_limit: seconds for the whole check (None: no limit); partitions not decided in time
    are "unknown". max_steps: search steps per partition. workers: processes to check
    partitions in; None: in this process until that has taken PARALLEL_AFTER seconds with
    partitions left, then the rest in one worker process per CPU (starting workers costs about
    0.1-0.3 s here, so only long checks gain); 1: always in this process. explain_limit:
    seconds for computing each failing partition's minimal set of ops.
    """
    t0 = time.monotonic()
    deadline = None if time_limit is None else t0 + time_limit
    ops = operations(history, model)
    groups = [g for g in model.partitions(ops) if g]
    groups.sort(key=lambda g: _key_order(g[0].key))
    results: list[PartitionResult | None] = [None] * len(groups)
    cpus = os.cpu_count() or 1
    if workers is None:
        workers = 1 if cpus < 2 or len(groups) < 2 else cpus
        adaptive = True
    else:
        adaptive = False
    used = 1
    order = sorted(range(len(groups)), key=lambda i: -len(groups[i]))  # largest first
    for n, i in enumerate(order):
        rest = order[n:]
        if workers > 1 and len(rest) > 1 and (not adaptive or time.monotonic() - t0 >= PARALLEL_AFTER):
            used = min(workers, len(rest))
            for j, r in zip(rest, _check_parallel(model, [groups[j] for j in rest], deadline, max_steps,
                                                  used, explain_limit)):
                results[j] = r
            break
        if deadline is not None and time.monotonic() >= deadline:
            results[i] = _undecided(groups[i], model, "time limit")
            continue
        results[i] = check_partition(model, groups[i], deadline, max_steps, explain_limit)
    done = [r for r in results if r is not None]
    return CheckResult(compose(r.valid for r in done), model, done, time.monotonic() - t0, len(ops), used)


def _key_order(k: Hashable) -> tuple:
    """Partitions in a stable, readable order: numbers numerically, then the rest as text."""
    if isinstance(k, (int, float)) and not isinstance(k, bool):
        return (0, k, "")
    return (1, 0, str(k))


def _undecided(ops: list[Operation], model: Model, reason: str) -> PartitionResult:
    return PartitionResult(ops[0].key, UNKNOWN, ops, [], model.init(), reason)


def _check_parallel(model: Model, groups: list[list[Operation]], deadline: float | None,
                    max_steps: int | None, workers: int, explain_limit: float) -> list[PartitionResult]:
    """Partitions in worker processes, largest first; a worker that fails gives "unknown".

    forkserver, not fork: the caller may have threads (gRPC, the runner), which fork does not
    carry safely into a child.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    results: list[PartitionResult | None] = [None] * len(groups)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = {}
        for i in range(len(groups)):
            futures[i] = pool.submit(_worker, (model, groups[i], deadline, max_steps, explain_limit))
        for i, fut in futures.items():
            try:
                r = fut.result()
            except Exception as e:  # a crashed worker decides nothing
                r = _undecided(groups[i], model, f"worker failed: {type(e).__name__}: {e}")
            results[i] = r
    return [r for r in results if r is not None]
