"""The lock checkers: mutual exclusion over the acquire/release history, and the fenced counter.

etcd locks are leases, not fences: a holder whose lease expires (it was paused, or cut off from
the quorum) loses the lock without knowing, and someone else may take it. So the mutex history
is checked twice with the linearizability engine (checker/linearizable.py, mutex model):

- as the clients saw it: a hold lasts from its acquire until its release. If this fails, two
  clients believed they held one lock at the same time;
- as leases allow: a hold not proven to the end (its release found the key missing, a fenced
  write was refused, it ended without a release because the process died or the release
  failed, or it was still open when the run ended) may have ended as early as the last moment
  it was proven alive: its last successful fenced write, else the grant itself, which may
  lie anywhere in its acquire's interval (a member paused after granting answers late, when
  the lease may long have expired and the lock passed on).

A failure of the first that the second explains is the known weakness, reported as such (valid,
weak=true, with the ops). A failure of the second is a real violation: etcd granted the lock
while the previous holder's key still existed. A hold is given its own process in these
derived histories (Jepsen's mutex model knows one hold per process); a lease-ended release,
which may fall inside its own acquire's interval, gets a process of its own that releases on
the hold's behalf. Every result names the original ops.

The fenced counter: each increment read the counter and wrote counter+1 in a Txn whose only
compare was "our lock key still exists". With the fence, two increments can never run on one
reading, however leases behave: a value written twice, or an increment that read less than
the value the one before it (in revision order) wrote, is a lost update the fence should have
prevented; the final value must lie between the acknowledged increments and those plus the ones
that may have happened.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from checker.history import FAIL, INFO, INVOKE, OK, Op, pairs

SHOWN = 20


@dataclass
class Hold:
    """One acquire by one process and how it ended."""

    process: Any
    key: str
    acquire: tuple[Op, Op | None]
    release: tuple[Op, Op | None] | None = None
    end: int | None = None  # invoke index of the op that ended it without a release (died, failed release)
    end_why: str = ""
    proof: int = 0  # index after which the hold is proven alive (acquire invoke / ok fenced write invoke)
    lost: bool = False  # found gone: a release saw the key missing, or a fenced write was refused
    fenced_writes: int = 0

    @property
    def ok_release(self) -> bool:
        return self.release is not None and self.release[1] is not None and self.release[1].type == OK

    @property
    def certain(self) -> bool:
        """Held until its release, as the release proved."""
        return self.ok_release and not self.lost


def holds(history: list[Op]) -> list[Hold]:
    """Every acquire that may have taken a lock, with how its hold ended."""
    out: list[Hold] = []
    by_proc: dict[Any, list[tuple[Op, Op | None]]] = defaultdict(list)
    for inv, comp in pairs(history):
        if inv.f in ("acquire", "incr", "release"):
            by_proc[inv.process].append((inv, comp))
    for proc, ops in by_proc.items():
        cur: dict[str, Hold] = {}
        for inv, comp in ops:
            typ = comp.type if comp is not None else INFO
            name = inv.key
            if inv.f == "acquire":
                if name in cur:  # should not happen: end the older hold here
                    h = cur.pop(name)
                    h.end, h.end_why = inv.index, "acquired again"
                if typ == FAIL:
                    continue
                h = Hold(proc, name, (inv, comp), proof=inv.index)
                out.append(h)
                if typ == OK:
                    cur[name] = h
                elif comp is not None:
                    h.end, h.end_why = comp.index, "acquire timed out; its process ended"
                continue
            h = cur.get(name)
            if h is None:
                continue
            if inv.f == "incr":
                if typ == OK:
                    h.proof = inv.index
                    h.fenced_writes += 1
                elif typ == FAIL and comp is not None and comp.extra.get("fenced"):
                    h.lost = True
                elif typ == INFO:
                    del cur[name]
                    h.end, h.end_why = inv.index, "an increment timed out; its process ended"
            else:  # release
                del cur[name]
                if typ == FAIL:
                    h.end, h.end_why = inv.index, "the release failed; the lease ends the hold"
                    continue
                h.release = (inv, comp)
                if typ == OK and comp.extra.get("lost"):
                    h.lost = True
            if typ == INFO:  # the process is gone: every hold it had ends here
                for other in cur.values():
                    other.end, other.end_why = inv.index, "its process ended"
                cur.clear()
    # Holds still open when the workers stopped: the runner then closed their clients, so their
    # leases end them; workers invoke nothing after the stop, so it came after the last invoke.
    stopped = max((inv.index for ops in by_proc.values() for inv, _ in ops), default=0)
    for h in out:
        comp = h.acquire[1]
        if h.release is None and h.end is None and comp is not None:
            h.end, h.end_why = max(stopped, comp.index), "the run stopped; its client closed"
    out.sort(key=lambda h: h.acquire[0].index)
    return out


def derived_history(hs: list[Hold], lease_aware: bool) -> tuple[list[Op], dict[int, int]]:
    """A mutex history with one process per hold; returns it and new index -> original index."""
    events: list[tuple[tuple, Op, int]] = []  # (sort key, op, original index)

    def add(pos: int, sub: int, op: Op, vp: str, original: int, holder: str | None = None) -> None:
        extra = op.extra if holder is None else {**op.extra, "holder": holder}
        e = Op(0, vp, op.type, op.f, op.value, key=op.key, node=op.node, time=op.time, wall=op.wall,
               error=op.error, extra=extra)
        events.append(((pos, sub, len(events)), e, original))

    for n, h in enumerate(hs):
        vp = f"{h.process}#{n}"
        inv, comp = h.acquire
        add(inv.index, 0, inv, vp, inv.index)
        if comp is not None:
            add(comp.index, 0, comp, vp, comp.index)
        widen = lease_aware and not h.certain
        # a widened release may start before the acquire returned, so not on the hold's process
        rp, holder = (f"{vp}~lease", vp) if widen else (vp, None)
        if h.release is not None:
            rinv, rcomp = h.release
            add(h.proof if widen else rinv.index, 1 if widen else 0, rinv, rp, rinv.index, holder)
            if rcomp is not None:
                add(rcomp.index, 0, rcomp, rp, rcomp.index, holder)
        elif comp is not None and h.end is not None:
            # no release: its lease ends it some time after `end` (the process died, the release
            # failed, the run stopped), or after its last proof (lease-aware)
            release = Op(0, rp, INVOKE, "release", None, key=h.key)
            at = h.proof if widen else h.end
            assert at is not None
            add(at, 1, release, rp, at, holder)
    events.sort(key=lambda e: e[0])
    out, back = [], {}
    for i, (_, op, original) in enumerate(events):
        op.index = i
        out.append(op)
        back[i] = original
    return out, back


def _failures(res: Any, back: dict[int, int]) -> list[dict]:
    """The failing partitions of a linearizable.CheckResult, with the original ops involved."""
    found = []
    for p in res.partitions:
        if p.valid is not False:
            continue
        ids = list(p.minimal.ops) if p.minimal is not None and p.minimal.ops else \
            [op.index for op, _ in p.blocked] + [op.index for op, _ in p.path[-3:]]
        completion = {op.index: op.completion for op in p.ops}
        ids += [completion[i] for i in ids if completion.get(i) is not None]
        ops = sorted({back[i] for i in ids if i in back})
        found.append({"lock": p.key, "ops": ops, "why": sorted({why for _, why in p.blocked})[:3]})
    return found


def lease_summary(history: list[Op], hs: list[Hold]) -> dict:
    past = [op.index for op in history if op.type == OK and op.f in ("incr", "release")
            and isinstance(op.extra.get("lease_deadline_in"), (int, float)) and op.extra["lease_deadline_in"] < 0]
    return {"holds": len(hs), "lost": sum(1 for h in hs if h.lost),
            "ended_without_release": sum(1 for h in hs if h.release is None and h.end is not None),
            "past_lease_deadline": len(past), "leases": len({h.acquire[1].extra.get("lease") for h in hs
                                                              if h.acquire[1] is not None and h.acquire[1].extra.get("lease")})}


def check_mutex(history: list[Op], time_limit: float = 60.0) -> dict:
    from checker.linearizable import check
    from checker.models import mutex_model

    hs = holds(history)
    leases = lease_summary(history, hs)
    if not any(h.acquire[1] is not None and h.acquire[1].type == OK for h in hs):
        return {"valid": "unknown", "reason": "no acquire succeeded", "leases": leases}
    aware_h, aware_back = derived_history(hs, lease_aware=True)
    aware = check(aware_h, mutex_model(), time_limit=time_limit, workers=1)
    head = {"leases": leases, "holds_checked": len(hs)}
    violations = _failures(aware, aware_back)
    if aware.valid is False:
        return {"valid": False, "reason": f"lock granted while the previous holder's key still existed "
                f"({len(violations)} locks)", "violations": violations, **head}
    if aware.valid != True:  # noqa: E712 - "unknown" is truthy
        return {"valid": "unknown", "reason": f"mutex check undecided: {aware.valid}", **head}
    # the clients' own view matters only when leases explain everything
    strict_h, strict_back = derived_history(hs, lease_aware=False)
    strict = check(strict_h, mutex_model(), time_limit=time_limit, workers=1)
    weak = _failures(strict, strict_back)
    if strict.valid is False:
        return {"valid": True, "weak": True, "reason": "known weakness: a lock was held by two clients at once after "
                f"a lease expired ({len(weak)} locks; etcd locks are leases, not fences); no violation otherwise",
                "weakness": weak, **head}
    note = "" if strict.valid is True else " (the clients' own view was undecided)"
    return {"valid": True, "reason": f"{len(hs)} holds mutually exclusive; {leases['lost']} lost their lease{note}",
            **head}


def check_counter(history: list[Op]) -> dict:
    """Lost updates on the fenced counters: see the module docstring."""
    failures: dict[str, list[dict]] = defaultdict(list)
    by_lock: dict[str, dict[str, list]] = defaultdict(lambda: {"ok": [], "maybe": 0, "final": []})
    for inv, comp in pairs(history):
        if inv.f == "incr":
            g = by_lock[inv.key]
            if comp is not None and comp.type == OK:
                g["ok"].append(comp)
            elif comp is None or comp.type == INFO:
                g["maybe"] += 1
        elif inv.f == "read" and comp is not None and comp.type == OK and comp.extra.get("final"):
            by_lock[inv.key.split("/", 1)[1] if inv.key.startswith("counter/") else inv.key]["final"].append(comp)
    incrs = 0
    for name, g in sorted(by_lock.items()):
        oks = sorted(g["ok"], key=lambda op: op.extra.get("revision", 0))
        incrs += len(oks)
        wrote: dict[Any, int] = {}
        for op in oks:
            new = op.value[1]
            if new in wrote:
                failures["lost update"].append({"ops": [wrote[new], op.index],
                                                "detail": f"{name}: two fenced increments both wrote {new}"})
            wrote.setdefault(new, op.index)
        unexplained = oks[0].value[0] if oks else 0  # the counter starts absent (0)
        for a, b in zip(oks, oks[1:]):
            va, (rb, _) = a.value[1], b.value
            if rb < va:
                failures["lost update"].append({"ops": [a.index, b.index], "detail": f"{name}: increment at revision "
                                                f"{b.extra.get('revision')} read {rb}, after {va} was written at {a.extra.get('revision')}"})
            elif rb > va:
                unexplained += rb - va
        if unexplained > g["maybe"]:
            failures["counter moved without an increment"].append(
                {"ops": [op.index for op in oks][:SHOWN],
                 "detail": f"{name}: {unexplained} increments between acknowledged ones, only {g['maybe']} may have happened"})
        low, high = len(oks), len(oks) + g["maybe"]
        for r in g["final"]:
            v = r.value or 0
            if not isinstance(v, int) or not low <= v <= high or (oks and v < oks[-1].value[1]):
                failures["final value"].append({"ops": [r.index], "detail": f"{name}: final value {v!r}, expected "
                                                f"{low}..{high} ({len(oks)} acknowledged, {g['maybe']} uncertain)"})
    summary = {k: {"count": len(v), "cases": v[:SHOWN]} for k, v in sorted(failures.items())}
    if failures:
        return {"valid": False, "reason": ", ".join(f"{len(v)} {k}" for k, v in sorted(failures.items()))
                + " (the fence should have prevented this)", "failures": summary}
    if not incrs:
        return {"valid": "unknown", "reason": "no fenced increment succeeded", "failures": {}}
    return {"valid": True, "reason": f"{incrs} fenced increments, no lost update", "failures": {}}

