"""Op counts by function and outcome, and Jepsen's stats verdict: every f must succeed sometimes.

A run where some kind of op never succeeded proves nothing about that op (the cluster may have
been down the whole time), so it is invalid, as in Jepsen's stats checker.
"""
from __future__ import annotations

from collections import Counter

from checker.history import FAIL, INFO, INVOKE, NEMESIS, OK, Op


def counts(history: list[Op]) -> dict[str, dict[str, int]]:
    """{f: {"ok": n, "fail": n, "info": n, "count": n}} over client op completions."""
    by: dict[str, Counter] = {}
    for op in history:
        if op.process == NEMESIS or op.type == INVOKE:
            continue
        c = by.setdefault(op.f, Counter())
        c[op.type] += 1
        c["count"] += 1
    return {f: {k: c.get(k, 0) for k in ("count", OK, FAIL, INFO)} for f, c in sorted(by.items())}


def check(history: list[Op]) -> dict:
    by_f = counts(history)
    total = {k: sum(c[k] for c in by_f.values()) for k in ("count", OK, FAIL, INFO)}
    never = sorted(f for f, c in by_f.items() if c[OK] == 0)
    if not by_f:
        return {"valid": "unknown", "reason": "no client op completed", "by_f": by_f, **total}
    valid = not never
    reason = (f"no {', '.join(never)} op succeeded" if never
              else f"{total[OK]} ok, {total[FAIL]} fail, {total[INFO]} info of {total['count']} ops")
    return {"valid": valid, "reason": reason, "by_f": by_f, **total}
