"""The brute-force oracle and history builders the checker tests share.

`brute_force` tries every subset of the optional ops and every order of what it then has,
keeping the orders that respect real time and that the model accepts: exponential, so only
for a handful of ops, and written without any of the engine's tricks so it can judge them.
"""
from __future__ import annotations

from itertools import combinations, permutations
from typing import Any

from checker.history import INVOKE, Op
from checker.wgl import Operation


def respects_real_time(seq: tuple[Operation, ...]) -> bool:
    for i, a in enumerate(seq):
        for b in seq[i + 1:]:
            if b.ret is not None and b.ret < a.call:  # b finished before a began
                return False
    return True


def model_accepts(seq: tuple[Operation, ...], init: Any, step) -> bool:
    state = init
    for op in seq:
        ok, state = step(state, op.input, op.output)
        if not ok:
            return False
    return True


def brute_force(ops: list[Operation], init: Any, step) -> bool:
    required = [op for op in ops if op.required]
    optional = [op for op in ops if not op.required]
    for k in range(len(optional) + 1):
        for extra in combinations(optional, k):
            for seq in permutations(required + list(extra)):
                if respects_real_time(seq) and model_accepts(seq, init, step):
                    return True
    return False


class Recorder:
    """Builds a history by hand: inv(p, f, value) and done(p, type, value) in event order."""

    def __init__(self, key: str | None = "x") -> None:
        self.ops: list[Op] = []
        self.key = key

    def inv(self, p: Any, f: str, value: Any = None, key: str | None = None) -> "Recorder":
        return self._add(p, INVOKE, f, value, key)

    def done(self, p: Any, typ: str, f: str, value: Any = None, key: str | None = None, error: str | None = None,
             **extra: Any) -> "Recorder":
        return self._add(p, typ, f, value, key, error, extra)

    def _add(self, p, typ, f, value, key, error=None, extra=None) -> "Recorder":
        n = len(self.ops)
        self.ops.append(Op(n, p, typ, f, value, key if key is not None else self.key, time=n * 1000,
                           error=error, extra=extra or {}))
        return self

    def op(self, p: Any, f: str, value: Any = None, typ: str = "ok", result: Any = "same", **kw) -> "Recorder":
        """A whole op with nothing in between: invoke then completion."""
        self.inv(p, f, value, kw.pop("key", None))
        return self.done(p, typ, f, value if result == "same" else result, **kw)


def exponential_history(writers: int = 26) -> Recorder:
    """`writers` concurrent writes of distinct values, then a read of a value none wrote: proving
    it not linearizable takes every subset of the writes (2^writers search nodes), so only a
    budget (or an interruption) ends the search."""
    rec = Recorder()
    for p in range(writers):
        rec.inv(p, "write", p)
    for p in range(writers):
        rec.done(p, "ok", "write", p)
    return rec.op(100, "read", None, result=99)
