"""The search: Wing & Gong's depth-first linearization with Lowe's memoization, for one partition.

Pure: operations and a step function in, an outcome out. The only outside input is the clock,
read every few thousand steps to honour a deadline; running out of time or steps gives
"unknown", never a verdict.

How it works (the shape of Porcupine's checker, written for Python):
- Every required operation contributes a call event and a return event, every optional one
  (a request that may or may not have taken effect) only a call event: it may take effect at
  any time after its call, or never. Events sit in a doubly linked list in history order.
- An operation may be linearized next if its call comes before the first return still in the
  list (no unlinearized operation finished before it began). Linearizing it lifts its events
  out of the list; backtracking puts them back (dancing links).
- Required candidates are tried before optional ones: an optional operation is applied only
  when the required ones cannot proceed, which keeps valid histories with many timeouts close
  to linear. Optional ones are tried most recently called first.
- A required operation that never changes the state (a read; the model says which) is
  linearized at once and alone when it fits: any linearization from here can be reordered to
  take it first, so when that leads nowhere, nothing else from that node does either.
- A model may give a progress measure that never decreases (etcd's revision) and, per op, the
  most progress there can be before it; states past the limit of an op still to come are dead.
- Optional operations with the same input and output are interchangeable once called, so
  within such a group only the earliest-called one not yet applied is ever tried: the applied
  members of a group are always a prefix of it, which removes the factorial of equivalent
  orders. An optional operation whose effect the next operation overwrites (stepping the
  next one without it gives the same state) is not applied either: the path without it is
  explored and is at least as good.
- The cache holds every visited (set of linearized required ops, model state) with the sets of
  optional ops applied on the way there (bit sets as Python ints; the linearized set stored as
  its run of leading ones and the bits after it, a few words instead of one bit per op). A
  node is skipped when a cached node has the same required set and state and a subset of its
  optional ops: whatever the new node could still do, the cached one could too (optional ops
  are never forced), so it has been or is being explored.
- A model may say a refused required op is dead (no state reachable from here accepts it): the
  node fails at once. And if every accepted optional op makes progress (`advances`), a node
  already at the smallest limit of a required op still to come tries no optional op.
- Optional calls sit in a list of their own, so looking for required candidates never walks
  past the optional ops that never happen (they stay in the list to the end).
- The search is done when every required operation is linearized; optional ones left over
  simply never happened.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

VALID, INVALID, UNKNOWN = True, False, "unknown"

Step = Callable[[Any, Any, Any], "tuple[bool, Any]"]


@dataclass(slots=True)
class Operation:
    """One client operation as a model sees it.

    Invariant: a required operation has a return position; an optional one has none.
    `call` and `ret` are positions in the history (event order); `index` and `completion` are
    the Op.index values of its invoke and completion records, used in every report.
    """

    index: int
    completion: int | None
    process: Any
    call: int
    ret: int | None
    input: Any
    output: Any
    required: bool
    call_time: int = 0
    return_time: int | None = None
    key: Hashable = None
    status: str = "ok"  # ok | fail | info: how the op completed in the history
    id: int = -1  # position in the partition, set by the engine


@dataclass
class Outcome:
    """What the search found for one partition.

    valid: True, False or "unknown". For True, `path` is a linearization; otherwise the longest
    prefix found. path[i] = (operation, state after it). `end_state` is the state after the
    path (the initial state when it is empty).
    """

    valid: bool | str
    path: list[tuple[Operation, Any]]
    end_state: Any
    steps: int
    cache_size: int
    reason: str = ""


class _Entry:
    __slots__ = ("op", "is_call", "match", "prev", "next", "required", "bit", "group", "rank", "keeps", "last")

    def __init__(self, op: Operation | None, is_call: bool) -> None:
        self.op = op
        self.is_call = is_call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None
        self.required = op.required if op is not None else False
        self.bit = 0
        self.group = 0  # optional ops: index of its group of interchangeable ops
        self.rank = 0  # optional ops: position in its group, by call
        self.keeps = False  # required ops the model says never change the state
        self.last: _Entry | None = None  # returns: the last optional call before it (static)


def _build(ops: list[Operation]) -> tuple[_Entry, _Entry, int]:
    """Two event lists in history order, the required ops' calls and returns and the optional
    ops' calls (heads of both), and the number of optional groups. Each return knows the last
    optional call before it, where the search starts looking for optional candidates."""
    events: list[tuple[int, int, int, _Entry]] = []
    groups: dict = {}
    req = opt = 0
    for n, op in enumerate(ops):
        op.id = n
        call = _Entry(op, True)
        if op.required:
            if op.ret is None:
                raise ValueError(f"op {op.index}: a required operation needs a return")
            call.bit = 1 << req
            req += 1
            ret = _Entry(op, False)
            call.match, ret.match = ret, call
            events.append((op.ret, 1, n, ret))
        else:
            if op.ret is not None:
                raise ValueError(f"op {op.index}: an optional operation has no return")
            call.bit = 1 << opt
            opt += 1
            try:
                members = groups.setdefault((op.input, op.output), [])
            except TypeError:  # unhashable input: a group of its own
                members = groups.setdefault(("unhashable", n), [])
            members.append(call)
        events.append((op.call, 0, n, call))
    for g, members in enumerate(groups.values()):
        members.sort(key=lambda e: (e.op.call, e.op.id))
        for rank, e in enumerate(members):
            e.group, e.rank = g, rank
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    head = _Entry(None, False)
    ohead = _Entry(None, False)
    prev, oprev = head, ohead
    for _, _, _, e in events:
        if e.required:
            prev.next = e
            e.prev = prev
            prev = e
            if not e.is_call:
                e.last = oprev
        else:
            oprev.next = e
            e.prev = oprev
            oprev = e
    return head, ohead, len(groups)


def _lift(e: _Entry) -> None:
    e.prev.next = e.next
    if e.next is not None:
        e.next.prev = e.prev
    m = e.match
    if m is not None:
        m.prev.next = m.next
        if m.next is not None:
            m.next.prev = m.prev


def _unlift(e: _Entry) -> None:
    m = e.match
    if m is not None:
        m.prev.next = m
        if m.next is not None:
            m.next.prev = m
    e.prev.next = e
    if e.next is not None:
        e.next.prev = e


def search(
    ops: list[Operation],
    init: Any,
    step: Step,
    deadline: float | None = None,
    max_steps: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    progress: Callable[[Any], int] | None = None,
    limit: Callable[[Any, Any], int | None] | None = None,
    preserves: Callable[[Any, Any], bool] | None = None,
    dead: Callable[[Any, Any, Any], bool] | None = None,
    advances: bool = False,
) -> Outcome:
    """Decide whether `ops` (one partition) can be linearized from state `init`.

    deadline is a clock() value; max_steps bounds the number of search iterations (checked
    every 2,048). Either running out gives an "unknown" outcome carrying the longest prefix
    found so far.

    progress and limit (optional, from the model) prune with a quantity that never decreases
    along a linearization, such as etcd's revision: limit(input, output) is the most progress
    there can be just before that op, so a state whose progress exceeds the limit of a required
    op still to come is a dead end. preserves(input, output) says an op leaves every state it
    is accepted in unchanged (reads): such an op is taken as soon as it fits, alone.
    """
    head, ohead, n_groups = _build(ops)
    if preserves is not None:
        e = head.next
        while e is not None:
            if e.is_call and e.required:
                e.keeps = bool(preserves(e.op.input, e.op.output))
            e = e.next
    n_req = sum(1 for op in ops if op.required)
    has_opt = n_req < len(ops)
    applied = [0] * n_groups  # per group: how many of its members are applied (a prefix)
    # limits of required ops, ascending; `lp`: every one before it is linearized
    lims: list[tuple[int, int, _Entry]] = []
    if progress is not None and limit is not None:
        e = head.next
        while e is not None:
            if e.is_call and e.required:
                lv = limit(e.op.input, e.op.output)
                if lv is not None:
                    lims.append((lv, e.op.id, e))
            e = e.next
        lims.sort(key=lambda x: (x[0], x[1]))
    lim_values = [x[0] for x in lims]
    lim_entries = [x[2] for x in lims]
    lim_pos = {id(x[2]): j for j, x in enumerate(lims)}
    n_lims = len(lims)
    lp = 0
    done = bytearray(len(ops))  # required ops linearized, by op id
    state = init
    lin = 0  # required ops linearized
    optset = 0  # optional ops applied
    seen: set = set()  # (lin, state) when there are no optional ops
    dominated_by: dict = {}  # (lin, state) -> [optset, ...] otherwise
    # (entry lifted, state before it, phase it was found in; 2: a state-preserving required op)
    stack: list[tuple[_Entry, Any, int]] = []
    remaining = n_req
    best_len = -1
    best: list[tuple[_Entry, Any]] = []
    best_state = init
    low = 0  # best[:low] == stack[:low] (as (entry, state) pairs): only the rest is copied
    dirty = True
    steps = 0
    entry = head.next
    phase = 0  # 0: required calls, first to last; 1: optional calls, last to first
    reason = ""

    while True:
        if remaining == 0:
            path = _path(stack, state)
            return Outcome(VALID, path, state, steps, len(seen) + len(dominated_by))
        steps += 1
        if not steps & 2047:
            if max_steps is not None and steps >= max_steps:
                reason = f"step limit ({max_steps:,} steps)"
            elif deadline is not None and clock() >= deadline:
                reason = "time limit"
            if reason:
                if dirty:
                    del best[low:]
                    best.extend((e, s) for e, s, _ in stack[low:])
                    best_state = state
                break
        if entry is None:
            pass  # backtrack
        elif phase == 0:
            if entry.is_call:
                pass  # a required candidate: step it below
            elif has_opt:
                # the first return: required candidates used up. Optional ones called before
                # it, the most recently called first (likelier to have just taken effect)
                if advances and n_lims:
                    j = lp
                    while j < n_lims and done[lim_entries[j].op.id]:
                        j += 1
                    if j < n_lims and progress(state) >= lim_values[j]:
                        entry = None  # any optional op would pass the limit of a required one
                        continue
                phase = 1
                # the last optional call before this return still in its list: a lifted
                # entry's prev leads to its nearest unlifted predecessor (dancing links)
                entry = entry.last
                while optset & entry.bit:
                    entry = entry.prev
                continue
            else:
                entry = None
        elif entry is ohead:
            entry = None
        elif entry.rank != applied[entry.group]:
            entry = entry.prev
            continue
        if entry is None:  # backtrack
            if dirty:
                del best[low:]
                best.extend((e, s) for e, s, _ in stack[low:])
                best_state = state
                low = len(stack)
                dirty = False
            if not stack:
                break
            entry, state, phase = stack.pop()
            if len(stack) < low:
                low = len(stack)
            forced = phase == 2
            if entry.required:
                lin ^= entry.bit
                remaining += 1
                done[entry.op.id] = 0
                j = lim_pos.get(id(entry))
                if j is not None and j < lp:
                    lp = j
            else:
                optset ^= entry.bit
                applied[entry.group] -= 1
            _unlift(entry)
            if forced:  # it was the only move worth trying here: this node is done too
                entry = None
                continue
            entry = entry.next if phase == 0 else entry.prev
            continue
        required = entry.required
        op = entry.op
        ok, new_state = step(state, op.input, op.output)
        if not ok and required and dead is not None and dead(state, op.input, op.output):
            entry = None  # it must go some time, and no state from here on accepts it
            continue
        if ok and stack:
            top = stack[-1]
            if not top[0].required:
                # the optional op just applied is pointless if this one overwrites its effect
                ok2, s2 = step(top[1], op.input, op.output)
                if ok2 and s2 == new_state:
                    ok = False
        if ok and n_lims:
            j = lp
            while j < n_lims and (done[lim_entries[j].op.id] or lim_entries[j] is entry):
                j += 1
            if j < n_lims and progress(new_state) > lim_values[j]:
                ok = False
        if ok:
            if required:
                new_lin, new_opt = lin | entry.bit, optset
            else:
                new_lin, new_opt = lin, optset | entry.bit
            # the set of linearized ops kept short: how many lead it (bits follow call order,
            # so nearly all of it is a run of ones) and the bits after them
            z = (~new_lin & (new_lin + 1)).bit_length() - 1
            k = (z, new_lin >> z, new_state)
            fresh = True
            if not has_opt:
                if k in seen:
                    fresh = False
                else:
                    seen.add(k)
            else:
                lst = dominated_by.get(k)
                if lst is None:
                    dominated_by[k] = [new_opt]
                else:
                    for o in lst:
                        if o & new_opt == o:
                            fresh = False
                            break
                    else:
                        lst.append(new_opt)
            # a required op that leaves the state as it is can go first without loss: if that
            # fails, every other choice here does too
            keeps = entry.keeps
            if fresh:
                stack.append((entry, state, 2 if keeps else phase))
                state = new_state
                lin, optset = new_lin, new_opt
                if required:
                    remaining -= 1
                    done[op.id] = 1
                    while lp < n_lims and done[lim_entries[lp].op.id]:
                        lp += 1
                    if n_req - remaining > best_len:
                        best_len = n_req - remaining
                        dirty = True
                else:
                    applied[entry.group] += 1
                _lift(entry)
                entry = head.next
                phase = 0
                continue
            if keeps:  # already explored (or dominated), and it failed: so does this node
                entry = None
                continue
        entry = entry.next if phase == 0 else entry.prev

    # failed, or out of budget: report the longest prefix seen
    path = _path_from(best, best_state)
    verdict = INVALID if not reason else UNKNOWN
    return Outcome(verdict, path, best_state, steps, len(seen) + len(dominated_by), reason=reason)


def _path(stack: list[tuple[_Entry, Any, int]], end_state: Any) -> list[tuple[Operation, Any]]:
    return _path_from([(e, s) for e, s, _ in stack], end_state)


def _path_from(frames: list[tuple[_Entry, Any]], end_state: Any) -> list[tuple[Operation, Any]]:
    """[(op, state after op)] from [(entry, state before)]."""
    out = []
    for i, (e, _) in enumerate(frames):
        after = frames[i + 1][1] if i + 1 < len(frames) else end_state
        out.append((e.op, after))
    return out


def candidates(ops: list[Operation], linearized: set[int]) -> list[Operation]:
    """The ops that could go next after the ops with these ids: called before the first return
    of an unlinearized required op (the ones the search tried at that point)."""
    rest = [op for op in ops if op.id not in linearized]
    barrier = min((op.ret for op in rest if op.required), default=None)
    return [op for op in rest if barrier is None or op.call < barrier]
