"""Synthetic histories that are linearizable by construction, for tests and benchmarks.

Each process runs ops back to back with random gaps and latencies; every op that takes effect
gets a linearization point inside its interval (an op whose response was lost, "info", may take
effect after it, or never). The model's sequential semantics applied in point order give the
responses, so the history is linearizable, and its ops overlap as much as the concurrency makes
them. Randomness only through the random.Random passed in: the same seed, the same history.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from checker.history import FAIL, INFO, INVOKE, OK, Op
from checker.kv import KVState, _run, request


@dataclass
class _Planned:
    process: int
    f: str
    key: str | None
    value: Any
    start: float
    end: float
    point: float | None  # None: never took effect
    info: bool
    result_type: str = OK
    result: Any = None
    extra: dict = field(default_factory=dict)


def _schedule(rng: random.Random, n_ops: int, processes: int, info_rate: float,
              make: Callable[[random.Random, int], tuple[str, str | None, Any]]) -> list[_Planned]:
    """n_ops ops over `processes` concurrent workers; a worker whose op ended in info continues
    under a new process id, as the harness does."""
    clocks = [rng.random() for _ in range(processes)]
    ids = list(range(processes))
    next_id = processes
    out = []
    for n in range(n_ops):
        w = min(range(processes), key=lambda i: clocks[i])  # the worker that is free first
        start = clocks[w] + rng.expovariate(10.0)
        end = start + rng.expovariate(1.0) + 1e-6
        f, key, value = make(rng, n)
        info = rng.random() < info_rate
        if info:
            r = rng.random()
            # lost responses: took effect inside the interval, after it, or never
            point = None if r < 1 / 3 else rng.uniform(start, end) if r < 2 / 3 else end + rng.expovariate(0.5)
        else:
            point = rng.uniform(start, end)
        out.append(_Planned(ids[w], f, key, value, start, end, point, info))
        clocks[w] = end
        if info:
            ids[w] = next_id
            next_id += 1
    return out


def _emit(planned: list[_Planned]) -> list[Op]:
    events = []
    for p in planned:
        events.append((p.start, 0, p))
        events.append((p.end, 1, p))
    events.sort(key=lambda e: (e[0], e[1]))
    out = []
    for t, kind, p in events:
        if kind == 0:
            value = None if p.f == "read" else p.value
            out.append(Op(len(out), p.process, INVOKE, p.f, value, p.key, time=int(t * 1e9)))
        else:
            typ = INFO if p.info else p.result_type
            value = p.value if p.info else p.result
            out.append(Op(len(out), p.process, typ, p.f, value, p.key, time=int(t * 1e9),
                          error="timeout" if p.info else None, extra={} if p.info else p.extra))
    return out


def register_history(rng: random.Random, n_ops: int, processes: int = 5, keys: int = 1, values: int = 5,
                     info_rate: float = 0.1, read_rate: float = 0.5, write_rate: float = 0.25) -> list[Op]:
    """Reads, writes and compare-and-sets over `keys` registers (ops conventions of the
    register workload: cas value [expected, new], a failed compare completes with fail)."""

    def make(r: random.Random, n: int) -> tuple[str, str | None, Any]:
        key = f"r{r.randrange(keys)}"
        x = r.random()
        if x < read_rate:
            return "read", key, None
        if x < read_rate + write_rate:
            return "write", key, r.randrange(values)
        return "cas", key, [r.randrange(values), r.randrange(values)]

    planned = _schedule(rng, n_ops, processes, info_rate, make)
    state: dict[str, Any] = {}
    for p in sorted((p for p in planned if p.point is not None), key=lambda p: p.point):
        cur = state.get(p.key)
        if p.f == "read":
            p.result = cur
        elif p.f == "write":
            state[p.key] = p.value
            p.result = p.value
        else:
            p.result = p.value
            if cur == p.value[0]:
                state[p.key] = p.value[1]
            else:
                p.result_type = FAIL
    for p in planned:  # reads that never took effect can only have been lost
        if p.point is None and not p.info:
            raise AssertionError("an acknowledged op always has a point")
    return _emit(planned)


def kv_history(rng: random.Random, n_ops: int, processes: int = 5, keys: int = 10,
               info_rate: float = 0.1,
               make: Callable[[random.Random, int], tuple[str, str | None, Any]] | None = None) -> list[Op]:
    """etcd KV requests over `keys` keys: ranges, puts of unique values, deletes and txns that
    compare a key's value or mod_revision; responses with revisions as etcd gives them.
    `make(rng, n) -> (f, key, value)` replaces that mix with another (tests use it for
    requests the workload does not make: range ends, ordering compares, repeated values)."""
    planned = _schedule(rng, n_ops, processes, info_rate, make or _kv_mix(keys))
    return kv_run(planned)


def _kv_mix(keys: int) -> Callable[[random.Random, int], tuple[str, str | None, Any]]:
    names = [f"k{i}" for i in range(keys)]
    recent: dict[str, list[Any]] = {k: [] for k in names}

    def make(r: random.Random, n: int) -> tuple[str, str | None, Any]:
        key = r.choice(names)
        x = r.random()
        if x < 0.4:
            return "range", key, None
        if x < 0.7:
            v = f"v{n}"
            recent[key] = (recent[key] + [v])[-3:]
            return "put", key, v
        if x < 0.75:
            return "delete", key, None
        v = f"v{n}"
        if recent[key] and r.random() < 0.7:
            cmp = {"key": key, "target": "value", "result": "=", "value": r.choice(recent[key])}
        else:
            cmp = {"key": key, "target": "version", "result": "=", "value": 0}
        recent[key] = (recent[key] + [v])[-3:]
        other = r.choice(names)
        return "txn", None, {"compare": [cmp], "success": [{"f": "put", "key": key, "value": v}],
                             "failure": [{"f": "range", "key": other}]}

    return make


def kv_run(planned: list[_Planned]) -> list[Op]:
    """The responses of planned KV requests, executed at their points in order, as ops."""
    state = KVState(1, {})
    for p in sorted((p for p in planned if p.point is not None), key=lambda p: p.point):
        req = request(Op(0, p.process, INVOKE, p.f, p.value, p.key))
        ok, results, new = _run(state, req)
        if new is not None:
            state = new
        p.extra = {"revision": state.rev}
        if p.f == "range":
            kvs, count = results[0]
            p.result = {"kvs": [_kv(kv) for kv in kvs], "count": count}
        elif p.f == "put":
            p.result = p.value
        elif p.f == "delete":
            p.result = {"deleted": results[0]}
        else:
            res = []
            for r in results:
                if isinstance(r, tuple):
                    res.append({"kvs": [_kv(kv) for kv in r[0]], "count": r[1]})
                elif isinstance(r, int):
                    res.append({"deleted": r})
                else:
                    res.append({})
            p.result = {"succeeded": ok, "results": res}
    return _emit(planned)


def _kv(kv: tuple) -> dict:
    k, v, create, mod, version = kv
    return {"key": k, "value": v, "create_revision": create, "mod_revision": mod, "version": version}


CORRUPTIONS = ("revision", "value", "outcome")


def corrupt_kv(rng: random.Random, history: list[Op], kind: str) -> list[Op]:
    """The history with one acknowledged response changed the way a buggy store would:
    "revision" moves a header revision one up or down, "value" makes a range (or a txn's range)
    return a value no request wrote, "outcome" flips a txn's succeeded. The op is picked at
    random among those the kind applies to; the history is returned unchanged when there is
    none. The result may still be linearizable (a read's revision one down, concurrent with
    the write it missed): benchmarks report what the checker says, tests decide with an oracle."""
    def ranges(op: Op) -> bool:
        v = op.value
        if op.f == "range":
            return isinstance(v, dict) and bool(v.get("kvs"))
        return op.f == "txn" and isinstance(v, dict) and any(
            isinstance(r, dict) and r.get("kvs") for r in v.get("results") or [])

    fits = {
        "revision": lambda op: "revision" in (op.extra or {}),
        "value": ranges,
        "outcome": lambda op: op.f == "txn" and isinstance(op.value, dict) and "succeeded" in op.value,
    }[kind]
    done = [i for i, op in enumerate(history) if op.type == OK and fits(op)]
    if not done:
        return history
    i = rng.choice(done)
    op = history[i]
    h = list(history)
    if kind == "revision":
        h[i] = replace(op, extra=dict(op.extra, revision=op.extra["revision"] + rng.choice([-1, 1])))
    elif kind == "value":
        v = dict(op.value)
        if op.f == "range":
            kvs = [dict(kv) for kv in v["kvs"]]
            kvs[0]["value"] = f"never-written-{i}"
            v["kvs"] = kvs
        else:
            res = [dict(r) if isinstance(r, dict) else r for r in v["results"]]
            r = next(r for r in res if isinstance(r, dict) and r.get("kvs"))
            r["kvs"] = [dict(kv) for kv in r["kvs"]]
            r["kvs"][0]["value"] = f"never-written-{i}"
            v["results"] = res
        h[i] = replace(op, value=v)
    else:
        h[i] = replace(op, value=dict(op.value, succeeded=not op.value["succeeded"]))
    return h
