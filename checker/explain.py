"""Why a partition is not linearizable: the ops stuck at the longest prefix, and a small set
of ops that cannot be linearized together however the rest behaved.

The minimal set is found by relaxing, never by deleting: an op outside the set is turned into
"may have taken effect at any time after its call, or never, with any result" (a read-only op
then says nothing and is dropped), or, where the model prefers (etcd writes, whose revisions
pin them in the order), into "happened as recorded, at any time". Any linearization of the real history is one of the relaxed
history too, so if the relaxed one is not linearizable, neither is the real one: every set
reported was checked to fail on its own terms. Steps:

1. Right cut: an early point T such that the history up to T (ops still running at T relaxed,
   later ones dropped) already fails, looked for from where the search got stuck.
2. Left cut, for models with an "any state" (AnyOf: any value the ops could have left): the
   latest point Q before which ops can be dropped, ops running across Q relaxed, and the
   search started from any such state. Short windows are tried first (they are cheap; a
   long failing window costs an exhaustive search).
3. Relax the remaining ops in halving chunks, then one by one, keeping every relaxation that
   still fails (delta debugging). A trial that runs out of steps counts as "passes", so the
   set may be larger than minimal, never wrong; `complete` says whether every trial decided.
4. Where ops outside the set kept their results (TIMELESS), the set says whose timing matters;
   `critical` then lists the ops whose result matters: making that one op's outcome unknown
   lets the window pass. Elsewhere `critical` is the set itself.
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field, replace
from typing import Any

from checker.models import TIMELESS, UNKNOWN, AnyOf, Model
from checker.wgl import INVALID, Operation, Outcome, candidates, search

TRIAL_STEPS = 200_000
CONFIRM_STEPS = 100_000  # a refutation's window decides in ~40k steps (0.03 s) or explodes


@dataclass
class Minimal:
    """Op indexes (invoke Op.index) that fail together; see the module docstring."""

    ops: list[int]
    complete: bool  # every trial decided within its budget: the set is 1-minimal
    initial: str  # "initial": from the model's initial state; else the any-state after the cut
    window: tuple[int | None, int | None]  # Op.index of the first invoke kept after the left
    # cut (None: no left cut) and of the completion at the right cut
    trials: int = 0
    critical: list[int] = field(default_factory=list)  # ops whose recorded result is needed
    by_rule: str | None = None  # a pre-pass rule named these ops (see `confirm`)

    def to_dict(self) -> dict:
        d = {"ops": self.ops, "critical": self.critical, "complete": self.complete,
             "initial_state": self.initial, "window": list(self.window), "trials": self.trials}
        if self.by_rule is not None:
            d["by_rule"] = self.by_rule
        return d


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


END = 1 << 62  # a return position after every event


def _relaxed(model: Model, op: Operation, crossing: bool) -> Operation | None:
    """op loosened as the model says (Model.relax); None to drop it. An op crossing a cut is
    always made "may have happened after its call, with any result": the ops on the other side
    of the cut are gone, so keeping its result could demand them."""
    if not op.required:
        return op
    how = model.relax(op.input, op.output)
    if how is None:
        return None
    if how == TIMELESS and not crossing:
        return replace(op, call=-1, ret=END)
    return replace(op, required=False, ret=None, output=UNKNOWN)


class _Trials:
    def __init__(self, model: Model, deadline: float, max_steps: int = TRIAL_STEPS) -> None:
        self.model = model
        self.deadline = deadline
        self.max_steps = max_steps
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
        # from an any-state a read does change the state (it learns the value), and the
        # revision is unknown: no read-first rule and no progress pruning then
        concrete = not isinstance(init, AnyOf)
        out = search(copies, init, m.step, deadline=self.deadline, max_steps=self.max_steps,
                     progress=m.progress if concrete else None, limit=m.limit,
                     preserves=m.preserves if concrete else None)
        if out.valid == "unknown":
            self.undecided += 1
        return out.valid is INVALID


def _window(model: Model, ops: list[Operation], q: int | None, t: int, relax: set[int],
            strong: frozenset[int] = frozenset()) -> list[Operation]:
    """The history between the cuts; ops in `relax` (ids) and ops crossing a cut relaxed, ops
    in `strong` to "may or may not have happened" whatever the model prefers."""
    res = []
    for op in ops:
        if op.call > t:
            continue
        if op.required:
            crosses = op.ret > t or (q is not None and op.call < q)
            if q is not None and op.ret < q:
                continue
            if crosses or op.id in relax or op.id in strong:
                r = _relaxed(model, op, crosses or op.id in strong)
                if r is not None:
                    res.append(r)
                continue
        res.append(op)
    return res


def _first_failing(trials: _Trials, indexes: list[int], make) -> int | None:
    """The first of `indexes` (tried in that order, galloping) whose history make(i) fails."""
    for i in indexes:
        if trials.fails(*make(i)):
            return i
    return None


def _gallop(start: int, stop: int, step: int) -> list[int]:
    """start, start+step, start+3*step, start+7*step, ... then stop: doubling strides."""
    out, i, stride = [], start, 1
    while (i - stop) * step < 0:
        out.append(i)
        i += stride * step
        stride *= 2
    out.append(stop)
    return out


def minimal(model: Model, ops: list[Operation], deadline: float, hint: int | None = None) -> Minimal:
    """A small set of ops that fail together (ops: a partition known not to be linearizable;
    hint: the history position where the search got stuck, where the right cut starts)."""
    trials = _Trials(model, deadline)
    init = model.init()
    rets = sorted({op.ret for op in ops if op.required})
    # 1. right cut: the first T from the stuck point on (doubling strides) whose prefix fails;
    # the whole history (the last T) is known to
    i0 = min(bisect.bisect_left(rets, hint), len(rets) - 1) if hint is not None and rets else 0
    tries = _gallop(i0, len(rets) - 1, 1) if rets else []
    hit = _first_failing(trials, tries[:-1], lambda i: (_window(model, ops, None, rets[i], set()), init))
    t = rets[hit if hit is not None else -1] if rets else 0
    # 2. left cut: the latest cut that still fails from any state, trying short windows first
    q = None
    start = init
    anywhere = model.any_state(ops)
    if anywhere is not None:
        # cuts that leave something out (a cut before the first op only forgets the initial state)
        calls = sorted({op.call for op in ops if op.required and op.call <= t})[1:]

        def cut(j: int) -> tuple[list[Operation], Any]:
            return _window(model, ops, calls[j], t, set()), anywhere

        if calls:
            tries = _gallop(len(calls) - 1, 0, -1)
            hit = _first_failing(trials, tries, cut)
            if hit is not None:
                # the previous (later) try passed: the latest failing cut lies between
                k = tries.index(hit)
                lo, hi = hit + 1, (tries[k - 1] - 1 if k > 0 else hit)
                while lo <= hi:
                    mid = (lo + hi) // 2
                    if trials.fails(*cut(mid)):
                        hit, lo = mid, mid + 1
                    else:
                        hi = mid - 1
                q, start = calls[hit], anywhere
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
    # 4. where relaxing kept results (TIMELESS), which results matter: each op whose outcome,
    # made unknown on its own, lets the window pass; nearest the failure first, for at most a
    # quarter of what is left of the budget (each such trial is an exhaustive search).
    critical = sorted(kept)
    if any(model.relax(op.input, op.output) == TIMELESS for op in pool):
        critical = []
        stop = time.monotonic() + max(0.0, deadline - time.monotonic()) / 4
        for op in sorted(pool, key=lambda o: -o.ret):
            if model.relax(op.input, op.output) is None:
                continue
            if time.monotonic() >= stop:
                trials.undecided += 1
                break
            if not trials.fails(_window(model, ops, q, t, relax, frozenset({op.id})), start):
                critical.append(op.index)
    at = {op.call: op.index for op in ops}
    at.update({op.ret: op.completion for op in ops if op.required})
    window = (None if q is None else at.get(q), at.get(t))
    initial = "initial" if q is None else model.describe_state(start)
    return Minimal(sorted(kept), trials.undecided == 0, initial, window, trials.count, sorted(critical))


def confirm(model: Model, ops: list[Operation], suspects: list[Operation], rule: str, deadline: float) -> Minimal:
    """The set to look at for a partition refuted before the search (checker.kvrefute): the ops
    the rule named, checked like any other set where a search can afford it.

    The rule's argument already proves the history is not linearizable, and its ops are the
    contradiction. First ask whether they also fail on their own terms, every other op up to
    the last of them relaxed as in `minimal`: if so, drop any that is not needed (latest first)
    and mark as critical those whose recorded result is (made unknown, the window passes).
    Such windows are often cheap (a pinned revision order) but, with hundreds of relaxed writes
    and no left cut for the KV model, can run out of steps; then the set is the rule's ops as
    named, `by_rule` says so and `complete` is false."""
    for n, op in enumerate(ops):
        op.id = n
    named = [op.id for op in suspects if 0 <= op.id < len(ops) and ops[op.id] is op]
    fallback = Minimal(sorted(ops[i].index for i in named), False, "initial", (None, None), 0,
                       sorted(ops[i].index for i in named), by_rule=rule)
    if not named:
        return fallback
    trials = _Trials(model, deadline, CONFIRM_STEPS)
    init = model.init()
    last = max((ops[i].ret if ops[i].required else ops[i].call) for i in named)
    everyone = {op.id for op in ops if op.required}
    if not trials.fails(_window(model, ops, None, last, everyone - set(named)), init):
        fallback.trials = trials.count
        return fallback
    keep = set(named)
    for i in sorted(named, key=lambda i: -ops[i].call):
        if len(keep) > 1 and trials.fails(_window(model, ops, None, last, everyone - (keep - {i})), init):
            keep.discard(i)
    critical = [ops[i].index for i in named
                if not trials.fails(_window(model, ops, None, last, everyone - keep, frozenset({i})), init)]
    at = {op.ret: op.completion for op in ops if op.required}
    at.update({op.call: op.index for op in ops if not op.required})
    return Minimal(sorted(ops[i].index for i in keep), trials.undecided == 0, "initial", (None, at.get(last)),
                   trials.count, sorted(critical), by_rule=rule)
