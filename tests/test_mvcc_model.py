"""The MVCC store against a reference model, over the real LMDB backend, across restarts.

Why: the store is where etcd's revision semantics live (create_revision, version, one main
revision per transaction, compaction, history for watchers). A bug there is silent data
corruption that end-to-end tests only catch by luck. Here random operation sequences (puts,
deletes, multi-change transactions, compactions, backend commits, restarts with restore, and
compactions interrupted by a restart) run against KVStore on a real Backend in a temporary
directory, and after every step every readable revision is compared with a model that keeps a
full snapshot per revision. Example tests pin the key index's generation and compaction rules.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from server.backend import Backend
from server.mvcc.keyindex import KeyIndex, KeyIndexError
from server.mvcc.revision import Revision, bytes_to_rev, is_tombstone, rev_to_bytes
from server.mvcc.store import CompactedError, Event, FutureRevError, KVStore, in_range

# value, create_revision, mod_revision, version, lease
KV = tuple[bytes, int, int, int, int]
# (type, key, kv or None for a delete)
Change = tuple[str, bytes, "KV | None"]

KEYS = [b"a", b"ab", b"b", b"ba", b"c", b"d"]
LEASES = [0, 0, 7, 9]


class RecordingLeases:
    """The store's LeaseHook, recording which keys each lease holds."""

    def __init__(self) -> None:
        self.keys: dict[int, set[bytes]] = {}

    def attach(self, lease_id: int, key: bytes) -> None:
        self.keys.setdefault(lease_id, set()).add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        s = self.keys.get(lease_id)
        if s is not None:
            s.discard(key)
            if not s:
                del self.keys[lease_id]


@dataclass
class Model:
    """snaps[r] is the whole key space at revision r; changes[r] the changes made at r, in sub order."""

    snaps: list[dict[bytes, KV]] = field(default_factory=lambda: [{}, {}])
    changes: list[list[Change]] = field(default_factory=lambda: [[], []])
    compacted: int = -1

    @property
    def rev(self) -> int:
        return len(self.snaps) - 1

    def range(self, start: bytes, end: bytes | None, at: int) -> list[tuple[bytes, KV]]:
        snap = self.snaps[at]
        return [(k, snap[k]) for k in sorted(snap) if in_range(k, start, end)]

    def events(self, lo: int, hi: int) -> list[tuple]:
        out = []
        for r in range(max(lo, 1), hi + 1):
            for typ, key, kv in self.changes[r]:
                out.append(event_tuple_from_model(r, typ, key, kv))
        return out

    def kept_events(self, c: int) -> list[tuple]:
        """What the backend holds at or below a finished compaction at c: every change at c
        (tombstones included, for watchers starting at c) and the value at c of each key that
        did not change at c."""
        found = []
        for key, kv in self.snaps[c].items():
            mod = kv[2]
            if mod < c:
                sub = max(i for i, (t, k, _) in enumerate(self.changes[mod]) if k == key and t == "put")
                found.append(((mod, sub), event_tuple_from_model(mod, "put", key, kv)))
        for sub, (typ, key, kv) in enumerate(self.changes[c]):
            found.append(((c, sub), event_tuple_from_model(c, typ, key, kv)))
        return [e for _, e in sorted(found)]

    def lease_map(self) -> dict[int, set[bytes]]:
        out: dict[int, set[bytes]] = {}
        for key, kv in self.snaps[-1].items():
            if kv[4]:
                out.setdefault(kv[4], set()).add(key)
        return out


def event_tuple_from_model(rev: int, typ: str, key: bytes, kv: KV | None) -> tuple:
    if typ == "del":
        return (rev, "del", key, b"", 0, rev, 0, 0)
    assert kv is not None
    return (rev, "put", key, *kv)


def event_tuple(rev: int, ev: Event) -> tuple:
    kv = ev.kv
    typ = "put" if ev.type == Event.PUT else "del"
    return (rev, typ, kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def kv_tuple(kv) -> tuple[bytes, KV]:
    return kv.key, (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def apply_ops(model_state: dict[bytes, KV], rev: int, ops: list[tuple]) -> tuple[list[Change], list]:
    """Apply ops to a working copy of the state; returns the changes and what each op returns.

    A put returns the KeyValue it wrote, a delete the KeyValues it removed.
    """
    changes: list[Change] = []
    prevs: list = []
    for op in ops:
        if op[0] == "put":
            _, key, value, lease = op
            old = model_state.get(key)
            if old is None:
                kv = (value, rev, rev, 1, lease)
            else:
                kv = (value, old[1], rev, old[3] + 1, lease)
            prevs.append((key, kv))  # WriteTxn.put returns the new KeyValue
            model_state[key] = kv
            changes.append(("put", key, kv))
        else:
            _, start, end = op
            gone = [k for k in sorted(model_state) if in_range(k, start, end)]
            prevs.append([(k, model_state[k]) for k in gone])
            for k in gone:
                del model_state[k]
                changes.append(("del", k, None))
    return changes, prevs


def full_compaction(
    store: KVStore,
    backend: Backend,
    rev: int,
    keep: set[Revision],
    batch: int,
    stop_after: int | None = None,
    commit_each: bool = True,
) -> bool:
    """What the server does after compacting the index: delete victims a batch per commit.

    With stop_after, stops (as a crash would) after at most that many committed batches, always
    before the finish is recorded; returns whether the compaction finished. Without commit_each
    the deletions stay buffered in the backend, and reads must see through the buffer.
    """
    victims = list(store.compaction_victims(rev, keep, batch))
    for i, chunk in enumerate(victims):
        if stop_after is not None and i >= stop_after:
            return False
        backend.delete_revs(chunk)
        if commit_each or stop_after is not None:
            backend.commit()
    if stop_after is not None:
        return False  # crashed after removing every victim but before recording the finish
    store.finish_compaction(rev)
    if commit_each:
        backend.commit()
    return True


def open_backend(path: str) -> Backend:
    # commits only when the test says so
    return Backend(path, map_size=64 << 20, batch_interval=1e9, batch_limit=1 << 40)


keys_st = st.sampled_from(KEYS)
end_st = st.one_of(st.none(), st.just(b""), keys_st, st.just(b"bz"))
put_st = st.tuples(st.just("put"), keys_st, st.binary(max_size=3), st.sampled_from(LEASES))
del_st = st.tuples(st.just("del"), keys_st, end_st)


class MVCCMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="mvcc-model-")
        self.path = f"{self.dir}/db"
        self.backend = open_backend(self.path)
        self.leases = RecordingLeases()
        self.store = KVStore(self.backend, self.leases)
        self.model = Model()

    def teardown(self) -> None:
        try:
            self.backend.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ writes
    def _write(self, ops: list[tuple]) -> None:
        m = self.model
        rev = m.rev + 1
        work = dict(m.snaps[-1])
        changes, prevs = apply_ops(work, rev, ops)
        txn = self.store.write()
        assert txn.rev == rev
        for op, want_prev in zip(ops, prevs):
            if op[0] == "put":
                got = txn.put(op[1], op[2], lease=op[3])
                assert kv_tuple(got) == want_prev
            else:
                got = txn.delete_range(op[1], op[2])
                assert [kv_tuple(kv) for kv in got] == want_prev
        # reads inside the transaction see its own changes
        inside = txn.range(b"", b"")
        assert [kv_tuple(kv) for kv in inside.kvs] == [(k, work[k]) for k in sorted(work)]
        assert inside.rev == (rev if changes else rev - 1)
        res = txn.end()
        if changes:
            assert res.rev == rev
            m.snaps.append(work)
            m.changes.append(changes)
            want = [event_tuple_from_model(rev, *c) for c in changes]
            assert [event_tuple(rev, e) for e in res.events] == want
        else:
            assert res.rev == rev - 1 and res.events == []
        assert self.store.current_rev == m.rev

    @rule(op=put_st)
    def put(self, op: tuple) -> None:
        self._write([op])

    @rule(key=keys_st)
    def delete_key(self, key: bytes) -> None:
        self._write([("del", key, None)])

    @rule(op=del_st)
    def delete_range(self, op: tuple) -> None:
        self._write([op])

    @rule(ops=st.lists(st.one_of(put_st, del_st), min_size=1, max_size=5))
    def txn(self, ops: list[tuple]) -> None:
        self._write(ops)

    # -------------------------------------------------------- compaction
    @rule(data=st.data(), batch=st.integers(1, 4), commit_each=st.booleans())
    def compact(self, data, batch: int, commit_each: bool) -> None:
        m = self.model
        c = data.draw(st.integers(1, m.rev + 1), label="compact_at")
        if c <= m.compacted:
            with pytest.raises(CompactedError):
                self.store.compact(c)
            return
        if c > m.rev:
            with pytest.raises(FutureRevError):
                self.store.compact(c)
            return
        keep = self.store.compact(c)
        assert self.store.compact_rev == c
        assert full_compaction(self.store, self.backend, c, keep, batch, commit_each=commit_each)
        m.compacted = c

    @rule(data=st.data(), batch=st.integers(1, 3), stop_after=st.integers(0, 3))
    def compact_interrupted_by_restart(self, data, batch: int, stop_after: int) -> None:
        """The scheduled compaction is committed, some victim batches removed, then a restart."""
        m = self.model
        if m.rev <= max(m.compacted, 0):
            return
        c = data.draw(st.integers(max(m.compacted, 0) + 1, m.rev), label="compact_at")
        keep = self.store.compact(c)
        self.backend.commit()
        assert not full_compaction(self.store, self.backend, c, keep, batch, stop_after=stop_after)
        self.backend.close()
        self.backend = open_backend(self.path)
        self.leases = RecordingLeases()
        self.store = KVStore(self.backend, self.leases)
        assert self.store.restore() == (c, m.compacted)
        assert self.store.compact_rev == m.compacted
        keep = self.store.compact(c)
        assert full_compaction(self.store, self.backend, c, keep, batch)
        m.compacted = c
        assert self.store.current_rev == m.rev

    # ----------------------------------------------------- durability
    @rule()
    def commit(self) -> None:
        self.backend.commit()

    @rule(explicit_commit=st.booleans())
    def restart(self, explicit_commit: bool) -> None:
        if explicit_commit:
            self.backend.commit()
        self.backend.close()  # commits whatever is buffered
        self.backend = open_backend(self.path)
        self.leases = RecordingLeases()
        self.store = KVStore(self.backend, self.leases)
        assert self.store.restore() is None
        assert self.store.current_rev == self.model.rev
        assert self.store.compact_rev == self.model.compacted

    # ------------------------------------------------------------ reads
    @rule(data=st.data(), start=keys_st, end=end_st, limit=st.integers(0, 3), count_only=st.booleans())
    def read(self, data, start: bytes, end: bytes | None, limit: int, count_only: bool) -> None:
        m = self.model
        at = data.draw(st.integers(0, m.rev + 1), label="at")
        if at > m.rev:
            with pytest.raises(FutureRevError):
                self.store.range(start, end, at, limit, count_only)
            return
        if 0 < at < m.compacted:
            with pytest.raises(CompactedError):
                self.store.range(start, end, at, limit, count_only)
            return
        want = m.range(start, end, at or m.rev)
        res = self.store.range(start, end, at, limit, count_only)
        assert res.count == len(want)
        assert res.rev == m.rev
        if count_only:
            assert res.kvs == []
        else:
            assert [kv_tuple(kv) for kv in res.kvs] == (want[:limit] if limit else want)

    @rule(data=st.data())
    def history(self, data) -> None:
        m = self.model
        lo = data.draw(st.integers(max(m.compacted, 0) + 1, m.rev + 1), label="lo")
        hi = data.draw(st.integers(lo - 1, m.rev), label="hi")
        got = [event_tuple(r, e) for r, e in self.store.events_between(lo, hi)]
        assert got == m.events(lo, hi)

    @invariant()
    def matches_model(self) -> None:
        m, s = self.model, self.store
        assert s.current_rev == m.rev
        assert s.compact_rev == m.compacted
        for at in range(max(m.compacted, 1), m.rev + 1):
            res = s.range(b"", b"", at)
            assert [kv_tuple(kv) for kv in res.kvs] == m.range(b"", b"", at), f"at revision {at}"
        if m.compacted > 1:
            with pytest.raises(CompactedError):
                s.range(b"", b"", m.compacted - 1)
            with pytest.raises(CompactedError):
                s.range(b"a", None, 1)
        with pytest.raises(FutureRevError):
            s.range(b"", b"", m.rev + 1)
        # full history above the compaction point, and exactly the kept state at or below it
        lo = max(m.compacted, 0) + 1
        got = [event_tuple(r, e) for r, e in s.events_between(lo, m.rev)]
        assert got == m.events(lo, m.rev)
        if m.compacted > 0:
            got = [event_tuple(r, e) for r, e in s.events_between(1, m.compacted)]
            assert got == m.kept_events(m.compacted)
        # lease attachments follow the latest state
        assert self.leases.keys == m.lease_map()
        assert s.key_lease == {k: kv[4] for k, kv in m.snaps[-1].items() if kv[4]}


TestMVCCModel = MVCCMachine.TestCase
TestMVCCModel.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --------------------------------------------------------------------------------------------
# Store examples: version arithmetic and compaction edge cases, stated exactly as etcd has them.


@pytest.fixture
def store(tmp_path):
    be = open_backend(str(tmp_path / "db"))
    s = KVStore(be)
    yield s
    be.close()


def put(s: KVStore, key: bytes, value: bytes = b"v", lease: int = 0) -> int:
    t = s.write()
    t.put(key, value, lease)
    return t.end().rev


def delete(s: KVStore, key: bytes, end: bytes | None = None) -> int:
    t = s.write()
    t.delete_range(key, end)
    return t.end().rev


def test_version_resets_after_delete_and_create_revision_moves(store: KVStore) -> None:
    assert store.current_rev == 1  # an empty etcd is at revision 1
    assert put(store, b"k") == 2
    assert put(store, b"k") == 3
    kv = store.range(b"k", None).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (2, 3, 2)
    assert delete(store, b"k") == 4
    assert store.range(b"k", None).kvs == []
    assert put(store, b"k") == 5
    kv = store.range(b"k", None).kvs[0]
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)
    # history is still readable
    old = store.range(b"k", None, rev=3).kvs[0]
    assert (old.create_revision, old.version) == (2, 2)
    assert store.range(b"k", None, rev=4).kvs == []


def test_txn_shares_one_main_revision_with_increasing_subs(store: KVStore) -> None:
    t = store.write()
    t.put(b"a", b"1")
    t.put(b"b", b"2")
    t.delete_range(b"a", None)
    res = t.end()
    assert res.rev == 2 and store.current_rev == 2
    keys = [k for k, _ in store.backend.iter_revs(rev_to_bytes(Revision(0, 0)), None)]
    assert [bytes_to_rev(k) for k in keys] == [Revision(2, 0), Revision(2, 1), Revision(2, 2)]
    assert [is_tombstone(k) for k in keys] == [False, False, True]
    assert [(e.type, e.kv.key) for e in res.events] == [(Event.PUT, b"a"), (Event.PUT, b"b"), (Event.DELETE, b"a")]


def test_txn_without_changes_does_not_bump_the_revision(store: KVStore) -> None:
    put(store, b"a")
    t = store.write()
    assert t.delete_range(b"zz", None) == []
    assert t.end().rev == 2
    assert store.current_rev == 2


def test_compaction_exactly_at_a_tombstone_keeps_the_delete(store: KVStore) -> None:
    """Regression: compacting at a delete's revision dropped the tombstone, so a watcher starting
    at the compaction revision never saw the delete (etcd-io/etcd#18089, fixed in etcd by
    keeping tombstones at the compaction revision)."""
    put(store, b"k", b"1")  # 2
    delete(store, b"k")  # 3
    put(store, b"other")  # 4
    keep = store.compact(3)
    assert keep == {Revision(3, 0)}  # the tombstone; the put at 2 goes
    assert full_compaction(store, store.backend, 3, keep, batch=10)
    assert [(r, e.type, e.kv.key) for r, e in store.events_between(1, 3)] == [(3, Event.DELETE, b"k")]
    assert store.range(b"k", None, rev=3).kvs == []
    with pytest.raises(CompactedError):
        store.range(b"k", None, rev=2)
    assert put(store, b"k", b"2") == 5
    kv = store.range(b"k", None).kvs[0]
    assert (kv.create_revision, kv.version) == (5, 1)
    # the next compaction past it removes the tombstone
    keep = store.compact(4)
    assert full_compaction(store, store.backend, 4, keep, batch=10)
    assert [(r, e.type, e.kv.key) for r, e in store.events_between(1, 4)] == [(4, Event.PUT, b"other")]


def test_tombstone_kept_by_compaction_survives_a_resumed_compaction(tmp_path) -> None:
    """Regression: after a restart a tombstone whose puts were compacted away was left out of the
    index, so resuming an interrupted compaction at its revision deleted it (etcd-io/etcd#19179)."""
    path = str(tmp_path / "db")
    be = open_backend(path)
    s = KVStore(be)
    put(s, b"k")  # 2
    delete(s, b"k")  # 3
    keep = s.compact(3)
    be.commit()
    assert not full_compaction(s, be, 3, keep, batch=1, stop_after=1)  # crash before the finish
    be.close()
    be = open_backend(path)
    s = KVStore(be)
    assert s.restore() == (3, -1)
    keep = s.compact(3)
    assert Revision(3, 0) in keep
    assert full_compaction(s, be, 3, keep, batch=1)
    assert [(r, e.type) for r, e in s.events_between(3, 3)] == [(3, Event.DELETE)]
    be.close()
    # and a restart with the lone tombstone, then a compaction past it, removes it
    be = open_backend(path)
    s = KVStore(be)
    assert s.restore() is None
    put(s, b"j")  # 4
    keep = s.compact(4)
    assert full_compaction(s, be, 4, keep, batch=1)
    assert [(r, e.kv.key) for r, e in s.events_between(1, 4)] == [(4, b"j")]
    assert b"k" not in s.index
    be.close()


def test_key_deleted_and_recreated_in_the_compaction_revision_keeps_its_value(tmp_path) -> None:
    """A txn that deletes a key and puts it again (possible with a from-key delete, which the
    duplicate check takes literally) has two generations at one revision; compacting exactly
    there must keep both the tombstone and the new value (etcd-io/etcd#22376)."""
    path = str(tmp_path / "db")
    be = open_backend(path)
    s = KVStore(be)
    put(s, b"k", b"old")  # 2
    t = s.write()
    t.delete_range(b"k", b"")
    t.put(b"k", b"new")
    assert t.end().rev == 3
    keep = s.compact(3)
    assert keep == {Revision(3, 0), Revision(3, 1)}
    assert full_compaction(s, be, 3, keep, batch=1)
    kv = s.range(b"k", None).kvs[0]
    assert (kv.value, kv.create_revision, kv.version) == (b"new", 3, 1)
    assert [e.type for _, e in s.events_between(3, 3)] == [Event.DELETE, Event.PUT]
    be.close()
    be = open_backend(path)
    s = KVStore(be)
    assert s.restore() is None
    kv = s.range(b"k", None, rev=3).kvs[0]
    assert (kv.value, kv.create_revision, kv.version) == (b"new", 3, 1)
    assert put(s, b"k", b"newer") == 4
    assert s.range(b"k", None).kvs[0].version == 2
    be.close()


def test_compaction_keeps_the_state_at_the_compaction_revision(store: KVStore) -> None:
    put(store, b"k", b"1")  # 2
    put(store, b"k", b"2")  # 3
    put(store, b"j", b"x")  # 4
    keep = store.compact(4)
    assert keep == {Revision(3, 0), Revision(4, 0)}
    full_compaction(store, store.backend, 4, keep, batch=1)  # type: ignore[arg-type]
    kv = store.range(b"k", None, rev=4).kvs[0]
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (b"2", 2, 3, 2)
    assert put(store, b"k", b"3") == 5
    kv = store.range(b"k", None).kvs[0]
    assert (kv.create_revision, kv.version) == (2, 3)


def test_compaction_errors(store: KVStore) -> None:
    put(store, b"a")
    put(store, b"a")
    with pytest.raises(FutureRevError):
        store.compact(4)
    store.compact(2)
    with pytest.raises(CompactedError):
        store.compact(2)
    with pytest.raises(CompactedError):
        store.compact(1)
    store.compact(3)  # compacting at the current revision is allowed
    with pytest.raises(CompactedError):
        store.range(b"a", None, rev=2)
    assert store.range(b"a", None, rev=3).count == 1


def test_restore_after_compaction_keeps_versions(tmp_path) -> None:
    path = str(tmp_path / "db")
    be = open_backend(path)
    s = KVStore(be)
    put(s, b"k", b"1", lease=5)  # 2
    put(s, b"k", b"2", lease=5)  # 3
    put(s, b"gone")  # 4
    delete(s, b"gone")  # 5
    keep = s.compact(4)
    full_compaction(s, be, 4, keep, batch=2)
    be.close()
    be = open_backend(path)
    leases = RecordingLeases()
    s = KVStore(be, leases)
    assert s.restore() is None
    assert (s.current_rev, s.compact_rev) == (5, 4)
    assert leases.keys == {5: {b"k"}}
    assert put(s, b"k", b"3") == 6
    kv = s.range(b"k", None).kvs[0]
    assert (kv.create_revision, kv.version, kv.lease) == (2, 3, 0)
    assert leases.keys == {}
    assert s.range(b"gone", None, rev=4).count == 1
    assert s.range(b"gone", None, rev=5).count == 0
    be.close()


def test_a_commit_on_another_thread_takes_only_what_was_sealed(tmp_path) -> None:
    """The server seals the backend between log entries and commits on a helper thread: a commit
    must never hold half an entry (its writes without the consistent index recorded with them),
    or a crash would replay the entry over its own effects."""
    import threading

    from server.backend import KEY, META_CONSISTENT_INDEX

    be = open_backend(str(tmp_path / "db"))
    ci = lambda i: i.to_bytes(8, "big")  # noqa: E731
    be.put(KEY, b"a", b"1")
    be.put_meta(META_CONSISTENT_INDEX, ci(1))
    be.seal()  # entry 1 is complete
    be.put(KEY, b"b", b"2")  # entry 2 is half applied
    t = threading.Thread(target=be.commit, args=(False,))
    t.start()
    t.join()
    assert be.get(KEY, b"b") == b"2"  # readers still see the unsealed write
    copy = str(tmp_path / "copy1")
    assert be.copy_committed(copy)[0] == 1
    c = open_backend(copy)
    assert (c.get(KEY, b"a"), c.get(KEY, b"b")) == (b"1", None)
    c.close()
    be.put_meta(META_CONSISTENT_INDEX, ci(2))
    be.seal()
    be.put(KEY, b"c", b"3")  # entry 3 half applied; sealing again while one waits merges them
    be.put_meta(META_CONSISTENT_INDEX, ci(3))
    be.seal()
    be.put(KEY, b"d", b"4")
    be.commit(seal=False)
    copy = str(tmp_path / "copy2")
    assert be.copy_committed(copy)[0] == 3
    c = open_backend(copy)
    assert [c.get(KEY, k) for k in (b"b", b"c", b"d")] == [b"2", b"3", None]
    c.close()
    assert [k for k, _ in be.items(KEY)] == [b"a", b"b", b"c", b"d"]
    be.commit()  # on the writer's own thread: seals everything first
    assert be.commit_due() is False
    be.close()


# --------------------------------------------------------------------------------------------
# Key index examples.


def r(main: int, sub: int = 0) -> Revision:
    return Revision(main, sub)


def make_index() -> KeyIndex:
    """put@2, put@4, tombstone@6, put@8, put@10: two generations, the second live."""
    ki = KeyIndex(b"k")
    ki.put(r(2))
    ki.put(r(4))
    ki.tombstone(r(6))
    ki.put(r(8))
    ki.put(r(10))
    return ki


def test_keyindex_generations_and_get() -> None:
    ki = make_index()
    assert len(ki.generations) == 2 and ki.is_live()
    assert ki.get(1) is None
    assert ki.get(2) == (r(2), r(2), 1)
    assert ki.get(5) == (r(4), r(2), 2)
    assert ki.get(6) is None  # deleted at 6
    assert ki.get(7) is None
    assert ki.get(8) == (r(8), r(8), 1)
    assert ki.get(100) == (r(10), r(8), 2)
    assert ki.revisions_since(4) == [r(4), r(6), r(8), r(10)]


@pytest.mark.parametrize(
    "at,keep,first_revs,gens",
    [
        (1, set(), [r(2), r(4), r(6)], 2),
        (2, {r(2)}, [r(2), r(4), r(6)], 2),
        (3, {r(2)}, [r(2), r(4), r(6)], 2),
        (4, {r(4)}, [r(4), r(6)], 2),
        (5, {r(4)}, [r(4), r(6)], 2),
        (6, {r(6)}, [r(6)], 2),  # exactly at the tombstone: it stays, for watchers starting at 6
        (7, set(), [r(8), r(10)], 1),
        (8, {r(8)}, [r(8), r(10)], 1),
        (9, {r(8)}, [r(8), r(10)], 1),
        (10, {r(10)}, [r(10)], 1),
        (11, {r(10)}, [r(10)], 1),
    ],
)
def test_keyindex_compaction_keep_set(at: int, keep: set[Revision], first_revs: list[Revision], gens: int) -> None:
    ki = make_index()
    got: set[Revision] = set()
    ki.compact(at, got)
    assert got == keep
    assert len(ki.generations) == gens
    assert ki.generations[0].revs == first_revs
    # the state at and after the compaction point is unchanged
    ref = make_index()
    for rev in range(at, 12):
        assert ki.get(rev) == ref.get(rev), rev


def test_keyindex_compaction_of_a_deleted_key_empties_it() -> None:
    ki = KeyIndex(b"k")
    ki.put(r(2))
    ki.tombstone(r(3, 1))
    keep: set[Revision] = set()
    ki.compact(2, keep)
    assert keep == {r(2)} and not ki.is_empty()
    keep = set()
    ki.compact(3, keep)
    assert keep == {r(3, 1)} and not ki.is_empty()  # the tombstone at the compaction revision
    assert ki.get(3) is None
    keep = set()
    ki.compact(4, keep)
    assert keep == set() and ki.is_empty()


def test_keyindex_keeps_every_change_at_the_compaction_revision() -> None:
    ki = KeyIndex(b"k")
    ki.put(r(2))
    ki.put(r(5, 0))
    ki.tombstone(r(5, 1))
    probe: set[Revision] = set()
    ki.keep(5, probe)  # what compact would keep, without changing anything
    assert probe == {r(5, 0), r(5, 1)} and ki.generations[0].revs == [r(2), r(5, 0), r(5, 1)]
    keep: set[Revision] = set()
    ki.compact(5, keep)
    assert keep == probe
    assert ki.generations[0].revs == [r(5, 0), r(5, 1)]


def test_keyindex_delete_and_recreate_in_one_revision() -> None:
    ki = KeyIndex(b"k")
    ki.put(r(2))
    ki.tombstone(r(3, 0))
    ki.put(r(3, 1))
    assert ki.get(2) == (r(2), r(2), 1)
    assert ki.get(3) == (r(3, 1), r(3, 1), 1)
    keep: set[Revision] = set()
    ki.compact(3, keep)
    assert keep == {r(3, 0), r(3, 1)}
    assert [g.revs for g in ki.generations] == [[r(3, 0)], [r(3, 1)]]
    assert ki.get(3) == (r(3, 1), r(3, 1), 1)


def test_keyindex_restore_tombstone() -> None:
    ki = KeyIndex(b"k")
    ki.restore_tombstone(r(4))
    assert not ki.is_live() and not ki.is_empty() and ki.get(4) is None
    ki.put(r(6))
    assert ki.get(6) == (r(6), r(6), 1)
    with pytest.raises(KeyIndexError):
        ki.restore_tombstone(r(7))  # the key is live


def test_keyindex_rejects_impossible_changes() -> None:
    ki = KeyIndex(b"k")
    with pytest.raises(KeyIndexError):
        ki.tombstone(r(2))  # nothing to delete
    ki.put(r(3))
    with pytest.raises(KeyIndexError):
        ki.put(r(3))  # not after the last modification
    with pytest.raises(KeyIndexError):
        ki.put(r(2, 5))
    with pytest.raises(KeyIndexError):
        ki.restore(r(1), r(3), 1)  # restore onto a live generation


def test_keyindex_restore_starts_a_compacted_generation() -> None:
    ki = KeyIndex(b"k")
    ki.restore(r(2), r(7, 1), 4)
    ki.put(r(9))
    assert ki.get(7) == (r(7, 1), r(2), 4)
    assert ki.get(9) == (r(9), r(2), 5)
    assert ki.get(6) is None
