"""The watch checker: every stream saw exactly the store's history, in order, once.

Input: the watch workload's history (workloads/watch.py, docs/history-format.md). The store's
history ("the truth") is the recovery phase's final watch of the whole prefix from revision 1
(or from the compaction) on a member; the other members' final watches must agree with it, and
it must agree with the writers: every acknowledged write is in it at its revision with its
value, every value in it was written by an op that did not fail, every prev_kv, version and
create_revision follows from the events before it, and each key ends as the final linearizable
reads found it.

Each stream (one watch op: a range, filters, prev_kv, a start revision) is then checked:
- ordered: revisions never go down; unique: no (revision, key) twice;
- filters: only keys in its range, no puts with NOPUT, no deletes with NODELETE;
- atomic: a revision's events arrive in one response and all of them (as the truth has them);
- resumable: a watch from revision S starts at the first matching event at or after S;
- reliable: between its start and the last revision it proved delivered (its last event or
  progress notification) it misses no event of the truth and has none the truth lacks;
- progress notifications are bookmarks: no event at or below a notification's revision may
  come after it, none may be missing before it;
- content: value, version, create_revision (so is-create) and prev_kv as in the truth.
Independently of the truth: every acknowledged write appears in every stream that covered its
revision, and streams that saw the same event agree on it.

A stream cancelled because its start revision was compacted is reported as compacted, not as
loss, and so are events at or below a compaction that completed before the stream read them
(etcd keeps the latest version of each key at the compaction revision but drops deletes there:
a watch from revision C after compacting to C never sees a delete at C); revisions below the
truth's start (compacted before the final watch) are checked only against acknowledged writes
and other streams. Without any final watch the verdict is unknown:
gaps cannot be told from quiet. Results list the ops involved for every finding.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from checker.history import FAIL, NEMESIS, OK, Op, pairs

SHOWN = 20
WRITES = ("put", "mput", "delete")
UNKNOWN = object()  # a previous state the truth cannot tell


@dataclass(frozen=True, slots=True)
class Event:
    rev: int
    type: str  # PUT | DELETE
    key: str
    value: Any
    create: int
    version: int
    prev: Any = UNKNOWN  # [value, mod_revision, create_revision, version], None (no previous), or UNKNOWN

    @staticmethod
    def parse(rec: list) -> "Event":
        if not isinstance(rec, list) or len(rec) < 6:
            raise ValueError(f"malformed watch event {rec!r}")
        prev = rec[6] if len(rec) > 6 else UNKNOWN
        return Event(int(rec[0]), rec[1], rec[2], rec[3], int(rec[4]), int(rec[5]), prev)

    def content(self) -> tuple:
        return (self.type, self.value, self.create, self.version)

    def state(self) -> list | None:
        """The key's state after this event, as a prev_kv would show it."""
        return [self.value, self.rev, self.create, self.version] if self.type == "PUT" else None

    def __str__(self) -> str:
        v = f"={self.value!r}" if self.type == "PUT" else ""
        return f"{self.type} {self.key}{v}@{self.rev}"


@dataclass
class Stream:
    op: Op
    watcher: Any
    lo: str
    hi: str | None
    filters: frozenset
    prev_kv: bool
    start: int  # the revision the stream starts at (requested, or the one after creation)
    events: list[tuple[int, Event]] = field(default_factory=list)  # (response number, event)
    progress: list[tuple[int, int]] = field(default_factory=list)  # (events before it, revision)
    compacted: int = 0  # compact_revision of a cancel
    floor: int = 0  # the history may have been compacted up to here before this stream read it
    final: bool = False
    error: str | None = None

    def matches(self, e: Event) -> bool:
        if self.hi is None:
            inside = e.key == self.lo
        else:
            inside = self.lo <= e.key < self.hi
        return inside and not (e.type == "PUT" and "NOPUT" in self.filters) and \
            not (e.type == "DELETE" and "NODELETE" in self.filters)

    @property
    def last_event(self) -> int:
        return max((e.rev for _, e in self.events), default=0)

    @property
    def end(self) -> int:
        """The highest revision this stream proved delivered."""
        return max([self.last_event, *(p for _, p in self.progress)])

    def describe(self) -> str:
        rng = self.lo if self.hi is None else f"[{self.lo}, {self.hi})"
        f = f" {'+'.join(sorted(self.filters))}" if self.filters else ""
        return f"watch {rng}{f} from {self.start}"


def parse_stream(op: Op) -> Stream:
    v = op.value
    if not isinstance(v, dict) or "responses" not in v:
        raise ValueError(f"op {op.index}: a watch completion needs a record with responses, not {v!r}")
    lo, hi = (v.get("range") or [op.key, None])[:2]
    start = int(v.get("start") or 0)
    if start == 0:
        start = int(v.get("created", 0)) + 1
    s = Stream(op, v.get("watcher"), lo, hi, frozenset(v.get("filters") or []), bool(v.get("prev_kv")), start,
               final=bool(v.get("final")), error=v.get("error"))
    for n, r in enumerate(v["responses"]):
        if r.get("canceled"):
            s.compacted = int(r.get("compact") or 0)
        elif r.get("progress"):
            s.progress.append((len(s.events), int(r["h"])))
        for rec in r.get("ev") or []:
            s.events.append((n, Event.parse(rec)))
    return s


class Findings:
    def __init__(self) -> None:
        self.found: dict[str, list[dict]] = defaultdict(list)
        self.compacted_away: set = set()  # (stream op, revision, key) a stream could not see: compacted first

    def add(self, kind: str, ops: list[int], detail: str) -> None:
        self.found[kind].append({"ops": sorted(set(ops)), "detail": detail})

    def summary(self) -> dict:
        return {k: {"count": len(v), "cases": v[:SHOWN]} for k, v in sorted(self.found.items())}


@dataclass
class Writes:
    acked: dict[tuple[int, str], tuple[str, Any, int]]  # (rev, key) -> (type, value, op index)
    possible: dict[tuple[str, Any], int]  # (key, value) of puts that may have happened -> invoke index
    failed: dict[tuple[str, Any], int]  # (key, value) of puts that certainly did not


def collect_writes(history: list[Op]) -> Writes:
    w = Writes({}, {}, {})
    for inv, comp in pairs(history):
        if inv.f not in WRITES:
            continue
        if inv.f == "mput":
            keys, value = inv.value
            puts = [(k, value) for k in keys]
        elif inv.f == "put":
            puts = [(inv.key, inv.value)]
        else:
            puts = []
        if comp is not None and comp.type == FAIL:
            for kv in puts:
                w.failed[kv] = comp.index
            continue
        for kv in puts:
            w.possible[kv] = inv.index
        if comp is None or comp.type != OK:
            continue
        rev = comp.extra.get("revision")
        if not isinstance(rev, int):
            continue
        if inv.f == "delete":
            if comp.value:  # a delete of an absent key makes no event
                w.acked[(rev, inv.key)] = ("DELETE", None, comp.index)
        else:
            for k, v in puts:
                w.acked[(rev, k)] = ("PUT", v, comp.index)
    return w


@dataclass
class Truth:
    stream: Stream
    events: list[Event]
    by: dict[tuple[int, str], Event]
    prev: dict[tuple[int, str], Any]  # the key's state before each event (UNKNOWN if the truth cannot tell)

    @property
    def start(self) -> int:
        return self.stream.start

    @property
    def end(self) -> int:
        return self.stream.end

    def state_at(self, key: str, rev: int) -> Any:
        """The key's state at revision rev ([value, mod, create, version], None, or UNKNOWN)."""
        last: Any = None if self.start <= 1 else UNKNOWN
        for e in self.events:
            if e.rev > rev:
                break
            if e.key == key:
                last = e.state()
        return last


def build_truth(f: Findings, finals: list[Stream]) -> Truth | None:
    usable = [s for s in finals if not s.compacted and (s.events or s.progress)]
    if not usable:
        return None
    t = min(usable, key=lambda s: (s.start, -len(s.events)))
    events, by, prev = [], {}, {}
    state: dict[str, Any] = defaultdict(lambda: None if t.start <= 1 else UNKNOWN)
    ix = t.op.index
    for _, e in t.events:
        if (e.rev, e.key) in by:
            continue  # reported with the stream checks
        if events and e.rev < events[-1].rev:
            continue
        before = state[e.key]
        if before is UNKNOWN and isinstance(e.prev, list):
            before = e.prev  # past the compaction: only the server's word (None there may mean compacted)
        elif e.prev is not UNKNOWN and before is not UNKNOWN and e.prev != before:
            f.add("wrong prev_kv", [ix], f"final watch: {e} has prev_kv {e.prev}, but the events before it give {before}")
        if before is not UNKNOWN:
            if e.type == "PUT" and before is None and (e.create != e.rev or e.version != 1):
                f.add("wrong version or create_revision", [ix], f"final watch: {e} creates the key but has create_revision "
                      f"{e.create}, version {e.version}")
            if e.type == "PUT" and before is not None and (e.create != before[2] or e.version != before[3] + 1):
                f.add("wrong version or create_revision", [ix], f"final watch: {e} follows {before} but has create_revision "
                      f"{e.create}, version {e.version}")
            if e.type == "DELETE" and before is None:
                f.add("event not in the store's history", [ix], f"final watch: {e} deletes a key that did not exist")
        prev[(e.rev, e.key)] = before
        state[e.key] = e.state()
        events.append(e)
        by[(e.rev, e.key)] = e
    return Truth(t, events, by, prev)


def check_truth(f: Findings, truth: Truth, finals: list[Stream], writes: Writes, reads: list[Op]) -> None:
    ix = truth.stream.op.index
    for other in finals:
        if other is truth.stream or other.compacted:
            continue
        lo, hi = max(other.start, truth.start), min(other.end, truth.end)
        mine = [(e.rev, e.key, e.content()) for e in truth.events if lo <= e.rev <= hi]
        theirs = sorted({(e.rev, e.key, e.content()) for _, e in other.events if lo <= e.rev <= hi},
                        key=lambda x: (x[0], x[1]))
        if sorted(mine, key=lambda x: (x[0], x[1])) != theirs:
            diff = sorted(set(mine) ^ set(theirs), key=lambda x: (x[0], x[1]))[:3]
            f.add("members' histories differ", [ix, other.op.index],
                  f"final watches on {truth.stream.op.node} and {other.op.node} differ in revisions {lo}..{hi}: {diff}")
    for (rev, key), (typ, value, op) in sorted(writes.acked.items()):
        if not truth.start <= rev <= truth.end:
            continue
        e = truth.by.get((rev, key))
        if e is None:
            f.add("acknowledged write missing from the store's history", [op, ix], f"{typ} {key}@{rev}")
        elif e.type != typ or (typ == "PUT" and e.value != value):
            f.add("acknowledged write differs in the store's history", [op, ix], f"wrote {typ} {key}={value!r}@{rev}, history has {e}")
    for e in truth.events:
        if e.type != "PUT":
            continue
        if (e.key, e.value) in writes.possible:
            continue
        if (e.key, e.value) in writes.failed:
            f.add("event of a write that failed", [writes.failed[(e.key, e.value)], ix], str(e))
        else:
            f.add("event of a value never written", [ix], str(e))
    for r in reads:
        at = r.extra.get("revision")
        if not isinstance(at, int) or at > truth.end or at < truth.start:
            continue
        st = truth.state_at(r.key, at)
        if st is UNKNOWN:
            continue
        want = (None, 0) if st is None else (st[0], st[1])
        got = (r.value, r.extra.get("mod_revision") or 0) if r.value is not None else (None, 0)
        if got != want:
            f.add("final read differs from the watch history", [r.index, ix],
                  f"{r.key} read {got[0]!r}@{got[1]} at revision {at}; the history has {want[0]!r}@{want[1]}")


def check_stream(f: Findings, s: Stream, truth: Truth | None, compacted_to: int = 0) -> None:
    ix = s.op.index
    name = s.describe()
    top, seen, resp_of = 0, set(), {}
    for n, e in s.events:
        if e.rev < top:
            f.add("out of order", [ix], f"{name}: {e} after revision {top}")
        if (e.rev, e.key) in seen:
            f.add("duplicate event", [ix], f"{name}: {e} twice")
        seen.add((e.rev, e.key))
        if not s.matches(e):
            f.add("filter violated", [ix], f"{name}: got {e}")
        if e.rev < s.start:
            f.add("resumed at the wrong revision", [ix], f"{name}: got {e}, before its start")
        if resp_of.setdefault(e.rev, n) != n:
            f.add("revision split across responses", [ix], f"{name}: revision {e.rev} in responses {resp_of[e.rev]} and {n}")
        top = max(top, e.rev)
    for pos, p in s.progress:
        late = [e for _, e in s.events[pos:] if e.rev <= p]
        if late:
            f.add("false progress notification", [ix], f"{name}: progress at revision {p}, then {late[0]}")
    if truth is None or s is truth.stream or s.compacted:
        return
    lo, hi = max(s.start, truth.start), min(s.end, truth.end)
    if hi < lo:
        return
    expected: dict[int, dict[str, Event]] = defaultdict(dict)
    for e in truth.events:
        if lo <= e.rev <= truth.end and s.matches(e):
            expected[e.rev][e.key] = e
    got: dict[int, dict[str, Event]] = defaultdict(dict)
    for _, e in s.events:
        if lo <= e.rev <= truth.end and s.matches(e):
            got[e.rev].setdefault(e.key, e)
    first_got = min(got, default=None)
    missing: list[Event] = []
    for rev in sorted(expected):
        if rev > hi:
            break
        if rev not in got:
            missing.extend(expected[rev].values())
            continue
        for key, want in expected[rev].items():
            have = got[rev].get(key)
            if have is None:
                f.add("incomplete revision", [ix], f"{name}: revision {rev} without {want}")
                continue
            if have.content() != want.content():
                f.add("wrong event", [ix, truth.stream.op.index], f"{name}: {have} (version {have.version}, "
                      f"create {have.create}), the history has {want} (version {want.version}, create {want.create})")
            if s.prev_kv and have.prev is not UNKNOWN:
                before = truth.prev.get((rev, key), UNKNOWN)
                # etcd leaves prev_kv out when the previous version was compacted away
                compacted_away = have.prev is None and before is not None and before is not UNKNOWN \
                    and before[1] < compacted_to
                if before is not UNKNOWN and have.prev != before and not compacted_away:
                    f.add("wrong prev_kv", [ix], f"{name}: {have} has prev_kv {have.prev}, the key was {before}")
    for rev in sorted(got):
        for key, have in got[rev].items():
            if key not in expected.get(rev, {}):
                f.add("event not in the store's history", [ix, truth.stream.op.index], f"{name}: {have}")
    # a compaction at revision C removes deletes at C too: a stream reading from C after it
    # cannot see them (compacted history, not loss)
    f.compacted_away.update((ix, m.rev, m.key) for m in missing if m.rev <= s.floor)
    missing = [m for m in missing if m.rev > s.floor]
    if not missing:
        return
    if first_got is None or missing[0].rev < first_got:
        head = [m for m in missing if first_got is None or m.rev < first_got]
        where = f"started at {first_got}" if first_got is not None else "delivered none"
        f.add("resumed at the wrong revision", [ix], f"{name}: should start with {head[0]}, {where} "
              f"({len(head)} events missed)")
        missing = [m for m in missing if first_got is not None and m.rev > first_got]
    last = s.last_event
    for m in missing:
        if m.rev <= last:
            f.add("skipped event", [ix], f"{name}: missing {m}")
        else:
            p = min(p for _, p in s.progress if p >= m.rev)
            f.add("false progress notification", [ix], f"{name}: progress at revision {p} but {m} never came")


def check_acked_coverage(f: Findings, streams: list[Stream], writes: Writes) -> None:
    for s in streams:
        if s.compacted:
            continue
        seen = {(e.rev, e.key) for _, e in s.events}
        end = s.end
        for (rev, key), (typ, value, op) in writes.acked.items():
            if not (s.start <= rev <= end and (rev, key) not in seen and s.matches(Event(rev, typ, key, value, 0, 0))):
                continue
            if rev <= s.floor:
                f.compacted_away.add((s.op.index, rev, key))
            else:
                f.add("acknowledged write missing from a watcher that covered it", [op, s.op.index],
                      f"{s.describe()} covered revisions {s.start}..{end} but not {typ} {key}@{rev}")


def check_agreement(f: Findings, streams: list[Stream]) -> None:
    first: dict[tuple[int, str], tuple[tuple, int]] = {}
    for s in streams:
        for _, e in s.events:
            k = (e.rev, e.key)
            if k not in first:
                first[k] = (e.content(), s.op.index)
            elif first[k][0] != e.content():
                f.add("watchers disagree on an event", [first[k][1], s.op.index],
                      f"{e.key}@{e.rev}: {first[k][0]} and {e.content()}")


def resume_gaps(streams: list[Stream]) -> int:
    """Times a watcher's next stream started after the revision following the last it proved
    delivered: events it could never see (the harness's resumption, not etcd, would be wrong)."""
    by: dict[Any, list[Stream]] = defaultdict(list)
    for s in streams:
        if not s.final:
            by[s.watcher].append(s)
    gaps = 0
    for ss in by.values():
        ss.sort(key=lambda s: s.op.index)
        for a, b in zip(ss, ss[1:]):
            if a.end and not a.compacted and b.start > a.end + 1:
                gaps += 1
    return gaps


def compactions_in(history: list[Op]) -> list[tuple[int, int]]:
    """(index of the invoke, revision compacted to) of every compaction that happened: the
    workload's `compact` ops and the admin nemesis's (whose evidence names `compacted_to`), and
    every compaction a cancelled stream proves (at that stream's completion: a compact op whose
    response was lost names no revision, but the cancel does)."""
    out, started = [], {}
    for op in history:
        if op.type == "invoke":
            started[(op.process, op.f)] = op.index
            continue
        if op.type != OK:
            continue
        at = started.get((op.process, op.f), op.index)
        if op.f == "compact" and isinstance(op.value, int):
            out.append((at, op.value))
        elif op.process == NEMESIS and isinstance(op.value, dict) and isinstance(op.value.get("compact"), dict):
            rev = op.value["compact"].get("compacted_to")
            if isinstance(rev, int):
                out.append((at, rev))
        elif op.f == "watch" and isinstance(op.value, dict):
            out.extend((op.index, r["compact"]) for r in op.value.get("responses") or ()
                       if r.get("canceled") and isinstance(r.get("compact"), int) and r["compact"] > 0)
    return out


def check(history: list[Op]) -> dict:
    f = Findings()
    streams: list[Stream] = []
    reads: list[Op] = []
    for inv, comp in pairs(history):
        if comp is None or comp.type != OK:
            continue
        if inv.f == "watch":
            streams.append(parse_stream(comp))
        elif inv.f == "read" and comp.extra.get("final"):
            reads.append(comp)
    writes = collect_writes(history)
    compactions = compactions_in(history)
    for s in streams:
        s.floor = max((c for i, c in compactions if i < s.op.index), default=0)
    finals = [s for s in streams if s.final]
    truth = build_truth(f, finals)
    if truth is not None:
        check_truth(f, truth, finals, writes, reads)
    # how far the history was ever compacted: the final watch starts there (or a cancel says)
    compacted_to = max([truth.start if truth else 0, *(s.compacted for s in streams)])
    for s in streams:
        check_stream(f, s, truth, compacted_to)
    check_acked_coverage(f, streams, writes)
    check_agreement(f, streams)
    compacted = [s for s in streams if s.compacted]
    events = sum(len(s.events) for s in streams if not s.final)
    head: dict[str, Any] = {
        "streams": sum(1 for s in streams if not s.final), "events_seen": events,
        "acknowledged_writes": len(writes.acked), "failures": f.summary(),
        "compacted": {"streams_cancelled": len(compacted),
                      "history_starts_at": truth.start if truth else None,
                      "events_compacted_before_read": len(f.compacted_away)},
        "resume_gaps": resume_gaps(streams),
    }
    if truth is not None:
        head["store_history"] = {"from": truth.start, "to": truth.end, "events": len(truth.events),
                                 "node": truth.stream.op.node, "final_watch": truth.stream.op.index}
    if f.found:
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(f.found.items()))
        return {"valid": False, "reason": kinds, **head}
    if truth is None:
        return {"valid": "unknown", "reason": "no final watch of the whole history completed, so gaps cannot be "
                "told from quiet; order, uniqueness, filters and acknowledged writes hold", **head}
    note = f"; history before revision {truth.start} compacted ({len(compacted)} streams cancelled)" \
        if truth.start > 1 or compacted else ""
    return {"valid": True, "reason": f"{head['streams']} streams, {events} events match the store's history of "
            f"{len(truth.events)} events (revisions {truth.start}..{truth.end}){note}", **head}
