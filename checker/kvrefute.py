"""Necessary conditions for an etcd KV history, checked before the search: a quick "no".

The search (checker.wgl) says "not linearizable" only after refuting every placement of the
lost writes before a corrupted response, which at thousands of ops mostly runs out of time.
Most single corruptions break something simpler: the arithmetic of revisions, or the per-key
story of mod_revision / create_revision / version / value. Each rule below is a consequence of
the model in checker/kv.py (KVModel.step) that holds in every linearization, so a history that
breaks one has none: `refute` may only answer "not linearizable", and when it finds nothing
the search runs as before. Pure and about linear in the history (sorts and dict lookups).

The facts the rules stand on, all from KVModel.step and kv._run:
- F1 the store starts at revision 1 with no keys; a request that changes something (a put, or
  a delete that removes a key) takes exactly the next revision, one that changes nothing keeps
  it; so along a linearization the revision never decreases and each revision above 1 is made
  by exactly one request.
- F2 a required op's recorded header revision is the store's revision after it; if its taken
  branch is known (`succeeded` recorded) and holds a put or a delete that removed keys, it
  made that revision ("sure writer"), and the store was one lower just before it
  (KVModel.limit gives this upper bound of the revision before any op). A txn whose recorded
  outcome is known runs exactly that branch (step refuses the other outcome).
- F3 a persisted op (KVModel.refine) made its recorded revision, and after it its key holds
  its value with that mod_revision.
- F4 a required op linearizes inside its interval: if A returned before B was called
  (history positions), A comes before B. Optional (info) ops may come anywhere after their
  call, or never; ops a model left out (failed, old-revision or serializable reads) never
  touch the state.
- F5 entries: a put of an absent key makes (value, rev, rev, 1), of a present one (value,
  old create, rev, old version + 1); a delete covering a key removes it; values are compared
  with == in ranges and with == or str() equality in value compares.
- F6 a range before any write of its txn branch sees the state before the request, whose
  revision is at most KVModel.limit; ranges after a write in the branch see that write (the
  per-key rules skip them; only the "someone wrote it" rule applies to them).

Rules and where they stop (each function's docstring has its argument): revision made twice;
real-time revision order; entry fields; a value no request could have written (ranges and
succeeded "=" value compares); the request that made a mod_revision or create_revision must
have put that key (that value); a read that missed a write it surely came after; more sure
puts between create and mod than the version counts, or a sure delete between them. Ops whose
results were not recorded (None fields) are skipped field by field. Leases, compaction and
old-revision or serializable reads are not in the model (KVModel leaves them out), so no rule
speaks of them.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Callable

from checker.kv import _in_range
from checker.models import UNKNOWN
from checker.wgl import Operation

ABSENT = object()  # final effect of a branch on a key: deleted


@dataclass
class Refutation:
    """Why the history cannot be linearized: a rule name, a sentence for people, and the ops
    whose recorded results contradict each other (the first is the one reported as stuck)."""

    rule: str
    why: str
    ops: list[Operation] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "why": self.why, "ops": [op.index for op in self.ops]}


class _Found(Exception):
    def __init__(self, r: Refutation) -> None:
        self.refutation = r


def _rev(op: Operation) -> int | None:
    """The store's revision after a required op (F2, F3); None if not recorded or optional."""
    out = op.output
    if out is UNKNOWN:
        return None
    rev = out[1] if out[0] == "persisted" else out[2]
    return rev if type(rev) is int else None


def _taken(op: Operation) -> tuple | None:
    """The branch a required op certainly ran (F2), or None when that is not known."""
    out = op.output
    if out is UNKNOWN or out[0] == "persisted" or out[0] is None:
        return None
    return op.input[1] if out[0] else op.input[2]


def _possible(op: Operation) -> tuple:
    """The branches an op may have run: the taken one when known, else both."""
    b = _taken(op)
    return (b,) if b is not None else (op.input[1], op.input[2])


def _sure_writer(op: Operation) -> bool:
    """F2/F3: the op certainly made its revision (not necessarily a recorded one)."""
    if not op.required:
        return False
    if op.output[0] == "persisted":
        return True
    b = _taken(op)
    if b is None:
        return False
    res = op.output[1]
    for n, o in enumerate(b):
        if o[0] == "put":
            return True
        if o[0] == "delete" and res is not None and isinstance(res[n], int) and res[n] > 0:
            return True
    return False


def _final(branch: tuple, key: str) -> Any:
    """A branch's last effect on `key`: the value of its last put, ABSENT after a delete
    covering it, None when the branch does not touch it."""
    eff = None
    for o in branch:
        if o[0] == "put" and o[1] == key:
            eff = ("put", o[2])
        elif o[0] == "delete" and _in_range(key, o[1], o[2]):
            eff = ABSENT
    return eff


def _reads(op: Operation):
    """(kv, before_writes) for each kv a required op's ranges returned (F6)."""
    b = _taken(op)
    res = op.output[1] if op.output is not UNKNOWN and op.output[0] != "persisted" else None
    if b is None or res is None:
        return
    before = True
    for o, r in zip(b, res):
        if o[0] == "range":
            if isinstance(r, tuple) and r[0] is not None:
                for kv in r[0]:
                    if kv[0] is not None:
                        yield kv, before
        else:
            before = False


def _int(x: Any) -> bool:
    return type(x) is int  # recorded as a number (not None, not a bool)


def refute(ops: list[Operation], describe: Callable[[Any, Any], str], limit: Callable[[Any, Any], int | None]
           ) -> Refutation | None:
    """A Refutation if the (refined) KV ops break a necessary condition, else None.

    describe and limit: KVModel.describe_op and KVModel.limit (passed in so this module needs
    no model instance)."""
    try:
        _Rules(ops, describe, limit).run()
    except _Found as f:
        return f.refutation
    return None


class _Rules:
    def __init__(self, ops, describe, limit) -> None:
        self.ops = ops
        self.d = lambda op: f"op {op.index} ({describe(op.input, op.output)})"
        self.limit = limit

    def fail(self, rule: str, why: str, *ops: Operation) -> None:
        named = list({id(op): op for op in ops if op is not None}.values())  # once each, in order
        raise _Found(Refutation(rule, why, named))

    def run(self) -> None:
        self.index()
        self.revision_made_twice()
        self.real_time_order()
        # The checks of an entry that do not depend on who read it run once per distinct
        # entry (many reads see the same one); per read only the cheap bounds. Each fast path
        # below only skips a rule's method where it would pass; the method decides otherwise.
        static: dict = {}  # entry -> the call position its maker must precede (-1: none)
        first_write, revs, lims = self.first_write, self.rev, self.lim
        for op in self.ops:
            out = op.output
            if not op.required or out is UNKNOWN or out[0] == "persisted":
                continue
            if out[1] is not None:
                reads = list(_reads(op))
                if reads:
                    rev, lim = revs[id(op)], lims[id(op)]
                    top = max((kv[3] for kv, before in reads if before and type(kv[3]) is int), default=None)
                    for kv, before in reads:
                        k, v, _, m, _ = kv
                        bound = lim if before else rev
                        if not before or (type(m) is int and bound is not None and m > bound):
                            self.entry_fields(op, kv, before)
                        if v is not None:
                            try:
                                f = first_write.get((k, v))
                            except TypeError:
                                f = -1
                            if f is None or f > op.ret:
                                self.someone_wrote(op, k, v)
                        if before:
                            t = static.get(kv)
                            if t is None:
                                t = static[kv] = self.static_checks(op, kv)
                            if t > op.ret:
                                self.maker(op, k, v, m, "mod_revision")
                                self.maker(op, k, None, kv[2], "create_revision")
                            self.missed_write(op, kv, top)
            if op.input[0] and out[0] is True:
                self.compares(op)

    def static_checks(self, op: Operation, kv: tuple) -> int:
        """The rules on an entry read before its branch's writes that hold or not whoever
        read it; the call position a maker of a revision nobody claims must precede (maker)."""
        self.entry_fields(op, kv, True)
        self.version_count(op, kv)
        return max(self.maker(op, kv[0], kv[1], kv[3], "mod_revision"),
                   self.maker(op, kv[0], None, kv[2], "create_revision"))

    # -- indexes ---------------------------------------------------------------------------
    def index(self) -> None:
        self.maker_of: dict[int, Operation] = {}  # revision -> the sure writer that made it
        self.dup: tuple | None = None
        self.uncertain: set[int] = set()  # revisions some required op may or may not have made
        self.writes: dict[tuple, list] = {}  # (key, value) -> the ops that may put it
        self._writes_str: dict[tuple, list] | None = None  # (key, str(value)) -> the same, lazily
        self.first_write: dict[tuple, int] = {}  # (key, value) -> the earliest call among them
        self.makers: dict[tuple, int] = {}  # (key, value) -> earliest call of an op that may
        self.makers_key: dict[str, int] = {}  # have made an unknown revision ending with that put
        self.touch: dict[str, list[tuple[int, Operation]]] = {}  # key -> sure writers touching it
        self.puts: dict[str, list[int]] = {}  # key -> revisions of sure writers putting it
        self.dels: dict[str, list[tuple[int, Operation]]] = {}  # key -> sure writers deleting it
        keys: set[str] | None = None  # every key the history names, for deletes of a range

        def all_keys() -> set[str]:
            found = {o[1] for op in self.ops for b in (op.input[1], op.input[2]) for o in b}
            return found | {op.output[2] for op in self.ops
                            if op.output is not UNKNOWN and op.output[0] == "persisted"}

        writes, first_write, touch, puts = self.writes, self.first_write, self.touch, self.puts
        self.rev: dict[int, int | None] = {}  # id(op) -> _rev(op)
        self.lim: dict[int, int | None] = {}  # id(op) -> KVModel.limit
        for op in self.ops:
            rev = self.rev[id(op)] = _rev(op)
            if op.required:
                self.lim[id(op)] = self.limit(op.input, op.output)
            sure = _sure_writer(op)
            poss = _possible(op)
            may_write = False
            for b in poss:
                for o in b:
                    if o[0] != "range":
                        may_write = True
            if sure and rev is not None:
                if rev in self.maker_of and self.dup is None:
                    self.dup = (self.maker_of[rev], op, rev)
                self.maker_of.setdefault(rev, op)
            elif op.required and rev is not None and may_write:
                self.uncertain.add(rev)
            if not may_write:
                continue
            call = op.call
            for b in poss:
                for o in b:
                    if o[0] == "put":
                        kv = (o[1], o[2])
                        fw = first_write.get(kv)
                        if fw is None:
                            writes[kv] = [op]
                            first_write[kv] = call
                        else:
                            writes[kv].append(op)
                            if call < fw:
                                first_write[kv] = call
            # an op that may have made a revision nobody claims: optional, or required with
            # no recorded revision
            if not op.required or rev is None:
                for b in poss:
                    for k in {o[1] for o in b if o[0] == "put"}:
                        eff = _final(b, k)
                        if isinstance(eff, tuple):
                            kv = (k, eff[1])
                            self.makers[kv] = min(self.makers.get(kv, op.call), op.call)
                            self.makers_key[k] = min(self.makers_key.get(k, op.call), op.call)
            if sure and rev is not None:
                out = op.output
                if out[0] == "persisted":
                    touch.setdefault(out[2], []).append((rev, op))
                    puts.setdefault(out[2], []).append(rev)
                    continue
                b = poss[0]
                if len(b) == 1 and b[0][0] == "put":  # the common case: one put
                    touch.setdefault(b[0][1], []).append((rev, op))
                    puts.setdefault(b[0][1], []).append(rev)
                    continue
                put_keys = {o[1] for o in b if o[0] == "put"}
                del_keys: set[str] = set()
                for o in b:
                    if o[0] == "delete":
                        if o[2] is None:
                            del_keys.add(o[1])
                        else:
                            keys = all_keys() if keys is None else keys
                            del_keys.update(k for k in keys if _in_range(k, o[1], o[2]))
                for k in put_keys | del_keys:
                    touch.setdefault(k, []).append((rev, op))
                for k in put_keys:
                    puts.setdefault(k, []).append(rev)
                for k in del_keys:
                    self.dels.setdefault(k, []).append((rev, op))
        for m in (self.touch, self.dels):
            for v in m.values():
                v.sort(key=lambda x: x[0])
        self.touch_revs = {k: [r for r, _ in v] for k, v in self.touch.items()}
        self.del_revs = {k: [r for r, _ in v] for k, v in self.dels.items()}
        for v in self.puts.values():
            v.sort()

    # -- rules -----------------------------------------------------------------------------
    def revision_made_twice(self) -> None:
        """Two sure writers with the same recorded revision. By F1 each revision is made by
        one request, and by F2 each of them made its recorded revision: impossible."""
        if self.dup is not None:
            a, b, rev = self.dup
            self.fail("revision made twice",
                      f"{self.d(b)} and {self.d(a)} both made revision {rev}: each revision is "
                      f"made by exactly one write", b, a)

    def real_time_order(self) -> None:
        """A returned at revision ra before B was called, but B's revision before it is at
        most limit(B) < ra. By F4 A precedes B, by F1 the revision does not decrease from
        A's after-state (ra, F2) to B's before-state (<= limit(B), F2): impossible. Also
        records, per required op, the highest revision returned before its call (self.low),
        a lower bound of the store's revision before it."""
        ops = self.ops
        events = []
        for n, op in enumerate(ops):
            if op.required:
                events.append((op.call, 0, n))
                events.append((op.ret, 1, n))
        events.sort()
        best, best_op = 1, None
        self.low: dict[int, tuple[int, Operation | None]] = {}
        revs, lims = self.rev, self.lim
        for _, kind, n in events:
            op = ops[n]
            if kind == 1:
                rev = revs[id(op)]
                if rev is not None and rev > best:
                    best, best_op = rev, op
                continue
            self.low[id(op)] = (best, best_op)
            lim = lims[id(op)]
            if lim is not None and best > lim:
                since = ("the store starts at revision 1" if best_op is None else
                         f"{self.d(best_op)} returned revision {best} before it was called")
                self.fail("real-time revision order",
                          f"{self.d(op)} says the store was at revision {lim} or lower just before "
                          f"it, but {since}; revisions never go back", op, best_op)

    def entry_fields(self, op: Operation, kv: tuple, before: bool) -> None:
        """A returned entry that no state holds (F5): mod_revision past the response's
        revision (or, before the branch's writes, past limit: F6), create_revision past
        mod_revision, a revision below 2 (revision 1 is the empty store), version below 1, or
        version 1 with create != mod (a put of an absent key makes version 1 and create == mod;
        any later put raises the version. Not the other way round: a txn putting a key twice
        makes create == mod at version 2)."""
        k, _, create, mod, version = kv
        rev = self.rev[id(op)]
        lim = self.lim[id(op)] if before else rev
        bad = None
        if _int(mod) and mod < 2 or _int(create) and create < 2:
            bad = f"a revision below 2 (revision 1 is the empty store)"
        elif _int(version) and version < 1:
            bad = f"version {version}"
        elif _int(mod) and lim is not None and mod > lim:
            bad = f"mod_revision {mod}, past the store's revision {lim} {'before' if before else 'after'} the op"
        elif _int(mod) and _int(create) and create > mod:
            bad = f"create_revision {create} after its mod_revision {mod}"
        elif _int(mod) and _int(create) and _int(version) and version == 1 and create != mod:
            bad = f"version {version} with create_revision {create} and mod_revision {mod}"
        if bad:
            self.fail("entry fields", f"{self.d(op)} returned key {k!r} with {bad}: no state holds such an entry", op)

    def someone_wrote(self, op: Operation, k: str, v: Any) -> None:
        """A range returned k=v but no op that could have run before it returned puts k=v
        in a branch it may run (its own branch counts). Values in the model come only from
        puts (F1, F5) of ops in the history (left-out ops never run, F4), a txn with a
        recorded outcome runs only that branch (F2), a write precedes what reads it, and ==
        is the range match (F5)."""
        if v is None:
            return
        ws = self._lookup(self.writes, (k, v))
        if ws is None:
            return
        if not any(w is op or w.call < op.ret for w in ws):
            self.fail("value nobody wrote",
                      f"{self.d(op)} read {k}={v!r}, but no request that could have run before it "
                      f"returned puts {k}={v!r}", op)

    @staticmethod
    def _lookup(index: dict, key: tuple) -> list | None:
        try:
            return index.get(key, [])
        except TypeError:  # an unhashable value: say nothing
            return None

    def compares(self, op: Operation) -> None:
        """A txn that succeeded had every compare true in the state before it; a "=" value
        compare on one key is true only if the key holds a value == the operand or with the
        same str (F5; a missing key fails it). That value was put by another op that ran
        before this one returned, in a branch it may run (as in someone_wrote)."""
        if op.output[0] is not True:
            return
        for key, end, target, result, want in op.input[0]:
            if end is not None or target != "value" or result != "=":
                continue
            if any(w is not op and w.call < op.ret for w in self._lookup(self.writes, (key, want)) or ()):
                continue
            if self._writes_str is None:
                self._writes_str = {}
                for (k, v), ws in self.writes.items():
                    self._writes_str.setdefault((k, str(v)), []).extend(ws)
            if not any(w is not op and w.call < op.ret for w in self._writes_str.get((key, str(want)), ())):
                self.fail("value nobody wrote",
                          f"{self.d(op)} succeeded, so {key} held {want!r} before it, but no other "
                          f"request that could have run before it returned puts {key}={want!r}", op)

    def maker(self, op: Operation, k: str, v: Any, m: Any, field_name: str) -> int:
        """A range (before its branch's writes) showed k with mod_revision (create_revision)
        m: the request that made revision m left k holding this entry, so its branch's last
        effect on k is a put (of v, for mod_revision). If a sure writer made m (F2, F3), it
        must be such a put; if none did and no required op with revision m may have written
        (those are skipped), the maker was an op without a known revision (optional, or no
        revision recorded) that puts k (=v) last in a branch it may run and was called before
        the range returned (the entry was made before the range read it). Returns the
        earliest call of such an op (-1 where the rule does not depend on the reader)."""
        if not _int(m):
            return -1
        w = self.maker_of.get(m)
        if w is not None:
            if w is op:
                self.fail("maker of a revision",
                          f"{self.d(op)} made revision {m} itself, but its range ran before its "
                          f"writes and showed {k} with {field_name} {m}", op)
            out = w.output
            ok = any(isinstance(e, tuple) and (v is None or e[1] == v)
                     for e in (_final(b, k) for b in _possible(w)))
            if out[0] == "persisted" and out[2] == k:  # its step demands k == its value after it
                ok = ok and (v is None or out[3] == v)
            if not ok:
                what = f"{k}={v!r}" if v is not None else f"{k}"
                self.fail("maker of a revision",
                          f"{self.d(op)} read {k} with {field_name} {m}, but revision {m} was made by "
                          f"{self.d(w)}, which does not leave {what}", op, w)
            return -1
        if m in self.uncertain:
            return -1
        try:
            first = self.makers.get((k, v)) if v is not None else self.makers_key.get(k)
        except TypeError:
            return -1
        if first is None or first > op.ret:
            what = f"{k}={v!r}" if v is not None else f"{k}"
            self.fail("maker of a revision",
                      f"{self.d(op)} read {k} with {field_name} {m}, but no acknowledged write made "
                      f"revision {m} and no request that may have made it leaves {what} and was "
                      f"called before op {op.index} returned", op)
        return first

    def missed_write(self, op: Operation, kv: tuple, top: int | None) -> None:
        """A range (before its branch's writes) showed k at mod_revision m, but a sure writer
        W touching k (putting it, or deleting a range covering it) made revision w with
        m < w <= a lower bound of the revision before the range: the highest revision returned
        before the range was called (F4, F1), or any mod_revision the range showed. Then W
        came before the range (a request that ran before W would see the store below w, F1)
        and after W the key is absent or has mod_revision >= w (F5): it cannot show m."""
        k, _, _, m, _ = kv
        if not _int(m):
            return
        revs = self.touch_revs.get(k)
        if not revs:
            return
        low, low_op = self.low.get(id(op), (1, None))
        if top is not None and top > low:  # the highest mod_revision the op's ranges showed
            low, low_op = top, op
        i = bisect.bisect_right(revs, m)
        if i < len(revs) and revs[i] <= low:
            w, wop = self.touch[k][i]
            since = (f"{self.d(low_op)} returned revision {low} before it was called" if low_op is not op
                     else f"it showed an entry of revision {low}")
            self.fail("missed write",
                      f"{self.d(op)} read {k} at mod_revision {m}, but {self.d(wop)} changed {k} at "
                      f"revision {w}, and op {op.index} came after it ({since})", op, wop, low_op)

    def version_count(self, op: Operation, kv: tuple) -> None:
        """A range (before its branch's writes) showed k created at c, modified at m, at
        version n. Every sure writer putting k at a revision in [c, m] added at least one to
        the version (F5; one that deleted k afterwards would contradict create c anyway), so
        there are at most n of them; and no sure writer deleted k at a revision in (c, m]
        (after that the key is absent or created at that revision or later, F5)."""
        k, _, c, m, n = kv
        if not (_int(c) and _int(m)):
            return
        drevs = self.del_revs.get(k)
        if drevs:
            i = bisect.bisect_right(drevs, c)
            if i < len(drevs) and drevs[i] <= m:
                d, dop = self.dels[k][i]
                self.fail("version count",
                          f"{self.d(op)} read {k} created at revision {c} and modified at {m}, but "
                          f"{self.d(dop)} deleted {k} at revision {d} in between", op, dop)
        revs = self.puts.get(k)
        if not _int(n) or not revs:
            return
        count = bisect.bisect_right(revs, m) - bisect.bisect_left(revs, c)
        if count > n:
            self.fail("version count",
                      f"{self.d(op)} read {k} at version {n}, created at revision {c} and modified "
                      f"at {m}, but {count} acknowledged writes put {k} at revisions in [{c}, {m}]", op)
