"""Build histories by hand for checker tests: ops in the order they happened, with indexes.

    h = History()
    a = h.invoke(0, "acquire", key="l")        # returns the invoke Op
    h.ok(0, "acquire", extra={...})            # completes process 0's pending op
    h.ops                                      # list[Op], indexed in order
"""
from __future__ import annotations

from typing import Any

from checker.history import FAIL, INFO, INVOKE, NEMESIS, OK, Op


class History:
    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._pending: dict[Any, Op] = {}
        self.t = 0

    def _add(self, op: Op) -> Op:
        op.index = len(self.ops)
        self.t += 1_000_000
        op.time = self.t
        self.ops.append(op)
        return op

    def invoke(self, process: Any, f: str, value: Any = None, key: str | None = None, node: str = "n1") -> Op:
        op = self._add(Op(0, process, INVOKE, f, value, key=key, node=node))
        self._pending[process] = op
        return op

    def _complete(self, typ: str, process: Any, value: Any = "same", extra: dict | None = None,
                  error: str | None = None) -> Op:
        inv = self._pending.pop(process)
        v = inv.value if value == "same" else value
        return self._add(Op(0, process, typ, inv.f, v, key=inv.key, node=inv.node, error=error, extra=extra or {}))

    def ok(self, process: Any, value: Any = "same", **extra: Any) -> Op:
        return self._complete(OK, process, value, extra)

    def fail(self, process: Any, value: Any = "same", error: str | None = None, **extra: Any) -> Op:
        return self._complete(FAIL, process, value, extra, error)

    def info(self, process: Any, value: Any = "same", error: str | None = "timeout", **extra: Any) -> Op:
        return self._complete(INFO, process, value, extra, error)

    def call(self, process: Any, f: str, value: Any = None, key: str | None = None, typ: str = OK,
             result: Any = "same", node: str = "n1", **extra: Any) -> Op:
        """Invoke and complete at once; returns the completion."""
        self.invoke(process, f, value, key, node)
        return self._complete(typ, process, result, extra, None if typ != INFO else "timeout")

    def nemesis(self, f: str, value: Any = None) -> Op:
        return self._add(Op(0, NEMESIS, OK, f, value))


__all__ = ["History", "OK", "FAIL", "INFO", "INVOKE"]
