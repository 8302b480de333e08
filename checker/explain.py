"""Why a partition is not linearizable: the ops stuck at the longest prefix, and a small set
of ops that cannot be linearized together however the rest behaved.

The minimal set is found by relaxing, never by deleting: an op outside the set is turned into
"may have taken effect at any time after its call, or never, with any result" (a read-only op
then says nothing and is dropped). Any linearization of the real history is one of the relaxed
history too, so if the relaxed one is not linearizable, neither is the real one: every set
reported was checked to fail on its own terms. Steps:

1. Right cut: the earliest point T such that the history up to T (ops still running at T
   relaxed, later ones dropped) already fails.
2. Left cut, for models with an "any state" (ANY): the latest point Q before which ops can be
   dropped, ops running across Q relaxed, and the search started from any state.
3. Relax the remaining ops in halving chunks, then one by one, keeping every relaxation that
   still fails (delta debugging). A trial that runs out of steps counts as "passes", so the
   set may be larger than minimal, never wrong; `complete` says whether every trial decided.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from checker.models import ANY, UNKNOWN, Model
from checker.wgl import INVALID, Operation, Outcome, candidates, search

TRIAL_STEPS = 200_000


@dataclass
class Minimal:
    """Op indexes (invoke Op.index) that fail together; see the module docstring."""

    ops: list[int]
    complete: bool  # every trial decided within its budget: the set is 1-minimal
    initial: str  # "initial": from the model's initial state; "any": from any state
    window: tuple[int | None, int | None]  # Op.index of the first invoke kept after the left
    # cut (None: no left cut) and of the completion at the right cut
    trials: int = 0

    def to_dict(self) -> dict:
        return {"ops": self.ops, "complete": self.complete, "initial_state": self.initial,
                "window": list(self.window), "trials": self.trials}


def blocked(model: Model, ops: list[Operation], out: Outcome) -> list[tuple[Operation, str]]:
    """The ops that could have gone next after the longest prefix, with why each did not."""
    done = {op.id for op, _ in out.path}
    res = []
    for op in candidates(ops, done):
        ok, _ = model.step(out.end_state, op.input, op.output)
        if ok:
            why = "possible here, but no linearization continues after it"
        elif not op.required:
            why = "may or may not have happened; " + model.why(out.end_state, op.input, op.output)
        else:
            why = model.why(out.end_state, op.input, op.output)
        res.append((op, why))
    return res


def _relaxed(model: Model, op: Operation) -> Operation | None:
    """op as 'may have happened any time after its call, with any result'; None to drop it."""
    if not op.required:
        return op
    out = model.relax(op.input, op.output)
    if out is None:
        return None
    return replace(op, required=False, ret=None, output=UNKNOWN)


class _Trials:
    def __init__(self, model: Model, deadline: float) -> None:
        self.model = model
        self.deadline = deadline
        self.count = 0
        self.undecided = 0

    def fails(self, ops: list[Operation], init: Any) -> bool:
        """True if this history is certainly not linearizable."""
        if time.monotonic() >= self.deadline:
            self.undecided += 1
            return False
        self.count += 1
        copies = [replace(op) for op in ops]
        m = self.model
        out = search(copies, init, m.step, deadline=self.deadline, max_steps=TRIAL_STEPS,
                     progress=m.progress if init is not ANY else None, limit=m.limit)
        if out.valid == "unknown":
            self.undecided += 1
        return out.valid is INVALID


def _window(model: Model, ops: list[Operation], q: int | None, t: int, relax: set[int]) -> list[Operation]:
    """The history between the cuts; ops in `relax` (ids) and ops crossing a cut relaxed."""
    res = []
    for op in ops:
        if op.call > t:
            continue
        if op.required:
            crosses = op.ret > t or (q is not None and op.call < q)
            if q is not None and op.ret < q:
                continue
            if crosses or op.id in relax:
                r = _relaxed(model, op)
                if r is not None:
                    res.append(r)
                continue
        res.append(op)
    return res


def minimal(model: Model, ops: list[Operation], deadline: float) -> Minimal:
    """A small set of ops that fail together (ops: a partition known not to be linearizable)."""
    trials = _Trials(model, deadline)
    init = model.init()
    rets = sorted({op.ret for op in ops if op.required})
    # 1. right cut: the smallest T whose prefix fails; the whole history (the last T) does
    lo, hi = 0, len(rets) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if trials.fails(_window(model, ops, None, rets[mid], set()), init):
            hi = mid
        else:
            lo = mid + 1
    t = rets[hi] if rets else 0
    # 2. left cut from any state
    q = None
    start = init
    if model.any_state() is not None:
        calls = sorted({op.call for op in ops if op.required and op.call <= t})
        lo, hi, best = 0, len(calls) - 1, None  # the latest cut that still fails
        while lo <= hi:
            mid = (lo + hi) // 2
            if trials.fails(_window(model, ops, calls[mid], t, set()), ANY):
                best, lo = calls[mid], mid + 1
            else:
                hi = mid - 1
        if best is not None:
            q, start = best, ANY
    # 3. relax what is left, halving chunks down to single ops
    relax: set[int] = set()
    pool = [op for op in _window(model, ops, q, t, set()) if op.required]
    chunk = max(1, len(pool) // 2)
    while True:
        for i in range(0, len(pool), chunk):
            part = {op.id for op in pool[i:i + chunk]} - relax
            if part and trials.fails(_window(model, ops, q, t, relax | part), start):
                relax |= part
        if chunk == 1:
            break
        chunk = max(1, chunk // 2)
    kept = [op.index for op in pool if op.id not in relax]
    at = {op.call: op.index for op in ops}
    at.update({op.ret: op.completion for op in ops if op.required})
    window = (None if q is None else at.get(q), at.get(t))
    return Minimal(sorted(kept), trials.undecided == 0, "any" if start is ANY else "initial", window, trials.count)
