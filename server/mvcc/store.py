"""The MVCC key-value store: etcd's revisioned key space over a backend, without I/O of its own.

Reads look keys up in the in-memory index (dict + sorted key list) and fetch values from the
backend by revision. A write transaction takes the next main revision; each change in it takes
the next sub revision; it ends by publishing its changes as watch events. The caller serialises
access (one lock around reads and writes); this module has no threads or clocks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

from sortedcontainers import SortedList

from server.mvcc.keyindex import KeyIndex
from server.mvcc.revision import (
    Revision,
    bytes_to_rev,
    is_tombstone,
    main_rev_prefix,
    rev_to_bytes,
)
from server.proto.mvccpb import kv_pb2

KeyValue = kv_pb2.KeyValue
Event = kv_pb2.Event

META_COMPACT_SCHEDULED = b"scheduledCompactRev"
META_COMPACT_FINISHED = b"finishedCompactRev"


class CompactedError(Exception):
    """The requested revision has been compacted."""


class FutureRevError(Exception):
    """The requested revision is newer than the store."""


class Backend(Protocol):
    """What the store needs of durable storage; writes may be buffered until the backend commits."""

    def put_rev(self, rev_key: bytes, value: bytes) -> None: ...
    def get_rev(self, rev_key: bytes) -> bytes | None: ...
    def iter_revs(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]: ...
    def delete_revs(self, rev_keys: list[bytes]) -> None: ...
    def get_meta(self, key: bytes) -> bytes | None: ...
    def put_meta(self, key: bytes, value: bytes) -> None: ...


class LeaseHook(Protocol):
    """Keeps the lessor's key attachments in step with puts and deletes."""

    def attach(self, lease_id: int, key: bytes) -> None: ...
    def detach(self, lease_id: int, key: bytes) -> None: ...


class _NoLeases:
    def attach(self, lease_id: int, key: bytes) -> None:
        pass

    def detach(self, lease_id: int, key: bytes) -> None:
        pass


@dataclass(slots=True)
class RangeResult:
    kvs: list[KeyValue]
    count: int
    rev: int


@dataclass(slots=True)
class TxnResult:
    rev: int  # the store revision after the transaction
    events: list[Event] = field(default_factory=list)


def in_range(key: bytes, start: bytes, end: bytes | None) -> bool:
    """Whether key falls in etcd's range [start, end): end None = exactly start, b'' = no end."""
    if end is None:
        return key == start
    return start <= key and (end == b"" or key < end)


class KVStore:
    """Invariant: every key in `keys` has an entry in `index` and vice versa."""

    def __init__(self, backend: Backend, leases: LeaseHook | None = None) -> None:
        self.backend = backend
        self.leases: LeaseHook = leases or _NoLeases()
        self.index: dict[bytes, KeyIndex] = {}
        self.keys: SortedList = SortedList()
        self.current_rev = 1  # etcd starts at revision 1 with an empty store
        self.compact_rev = -1
        # the lease each live key is attached to, as stored in its latest KeyValue
        self.key_lease: dict[bytes, int] = {}

    # ---------------------------------------------------------------- reads
    def _keys_in(self, start: bytes, end: bytes | None) -> Iterator[bytes]:
        if end is None:
            if start in self.index:
                yield start
            return
        if end == b"":
            yield from self.keys.irange(start, None)
        elif start < end:
            yield from self.keys.irange(start, end, inclusive=(True, False))

    def check_rev(self, rev: int) -> int:
        """Resolve a requested revision (0 = latest); raise if compacted or in the future."""
        if rev > self.current_rev:
            raise FutureRevError(rev)
        if rev <= 0:
            return self.current_rev
        if rev < self.compact_rev:
            raise CompactedError(rev)
        return rev

    def range(
        self,
        start: bytes,
        end: bytes | None,
        rev: int = 0,
        limit: int = 0,
        count_only: bool = False,
    ) -> RangeResult:
        at = self.check_rev(rev)
        return self._range_at(start, end, at, limit, count_only)

    def _range_at(
        self, start: bytes, end: bytes | None, at: int, limit: int, count_only: bool
    ) -> RangeResult:
        found: list[Revision] = []
        count = 0
        for key in self._keys_in(start, end):
            got = self.index[key].get(at)
            if got is None:
                continue
            count += 1
            if not count_only and (limit <= 0 or len(found) < limit):
                found.append(got[0])
        kvs = [] if count_only else [self._load(r) for r in found]
        return RangeResult(kvs=kvs, count=count, rev=self.current_rev)

    def _load(self, rev: Revision) -> KeyValue:
        raw = self.backend.get_rev(rev_to_bytes(rev))
        if raw is None:
            raise KeyError(f"revision {rev} in the index but not in the backend")
        return KeyValue.FromString(raw)

    def get(self, key: bytes, at: int = 0) -> KeyValue | None:
        """The key's KeyValue as of revision at (0 = latest), or None; no compaction check."""
        ki = self.index.get(key)
        if ki is None:
            return None
        got = ki.get(at if at > 0 else self.current_rev)
        return None if got is None else self._load(got[0])

    # --------------------------------------------------------------- writes
    def write(self) -> "WriteTxn":
        return WriteTxn(self)

    # ----------------------------------------------------------- compaction
    def compact(self, rev: int) -> set[Revision]:
        """Compact the index at rev; returns the revisions the backend must keep.

        The caller then removes the other revisions <= rev from the backend, in batches,
        with `compaction_victims`, and records the finish with `finish_compaction`.
        """
        if rev <= self.compact_rev:
            raise CompactedError(rev)
        if rev > self.current_rev:
            raise FutureRevError(rev)
        self.compact_rev = rev
        self.backend.put_meta(META_COMPACT_SCHEDULED, rev.to_bytes(8, "big"))
        keep: set[Revision] = set()
        emptied = []
        for key, ki in self.index.items():
            ki.compact(rev, keep)
            if ki.is_empty():
                emptied.append(key)
        for key in emptied:
            del self.index[key]
            self.keys.remove(key)
        return keep

    def compaction_victims(self, rev: int, keep: set[Revision], batch: int) -> Iterator[list[bytes]]:
        """Backend keys at or below rev that compaction removes, in batches of at most batch."""
        out: list[bytes] = []
        for k, _ in self.backend.iter_revs(main_rev_prefix(0), main_rev_prefix(rev + 1)):
            if bytes_to_rev(k) not in keep:
                out.append(k)
                if len(out) >= batch:
                    yield out
                    out = []
        if out:
            yield out

    def finish_compaction(self, rev: int) -> None:
        self.backend.put_meta(META_COMPACT_FINISHED, rev.to_bytes(8, "big"))

    # -------------------------------------------------------------- history
    def events_between(self, start_rev: int, end_rev: int) -> Iterator[tuple[int, Event]]:
        """(revision, event) for every change with start_rev <= main revision <= end_rev."""
        if start_rev > end_rev:
            return
        for k, raw in self.backend.iter_revs(main_rev_prefix(start_rev), main_rev_prefix(end_rev + 1)):
            rev = bytes_to_rev(k)
            kv = KeyValue.FromString(raw)
            if is_tombstone(k):
                kv.mod_revision = rev.main
                yield rev.main, Event(type=Event.DELETE, kv=kv)
            else:
                yield rev.main, Event(type=Event.PUT, kv=kv)

    # -------------------------------------------------------------- restore
    def restore(self) -> tuple[int, int] | None:
        """Rebuild the index from the backend.

        Returns (scheduled, finished) compaction revisions when a compaction was scheduled but
        did not finish before a crash, so the caller can finish it; otherwise None.
        """
        self.index.clear()
        self.keys.clear()
        self.key_lease.clear()
        top = 1
        for k, raw in self.backend.iter_revs(main_rev_prefix(0), None):
            rev = bytes_to_rev(k)
            top = max(top, rev.main)
            kv = KeyValue.FromString(raw)
            ki = self.index.get(kv.key)
            if is_tombstone(k):
                if ki is not None and ki.is_live():
                    ki.tombstone(rev)
                    old = self.key_lease.pop(kv.key, 0)
                    if old:
                        self.leases.detach(old, kv.key)
                else:
                    # kept by a compaction at its revision (its puts are gone): the index must
                    # know it, or resuming that compaction would delete a watcher's event
                    if ki is None:
                        ki = self.index[kv.key] = KeyIndex(kv.key)
                        self.keys.add(kv.key)
                    ki.restore_tombstone(rev)
                continue
            if ki is None:
                ki = self.index[kv.key] = KeyIndex(kv.key)
                self.keys.add(kv.key)
            if ki.is_live():
                ki.put(rev)
            else:
                ki.restore(Revision(kv.create_revision, 0), rev, kv.version)
            old = self.key_lease.pop(kv.key, 0)
            if old:
                self.leases.detach(old, kv.key)
            if kv.lease:
                self.key_lease[kv.key] = kv.lease
                self.leases.attach(kv.lease, kv.key)
        # keys whose every revision was a compacted-away tombstone leave an empty index
        for key in [k for k, ki in self.index.items() if ki.is_empty()]:
            del self.index[key]
            self.keys.remove(key)
        scheduled = _meta_int(self.backend.get_meta(META_COMPACT_SCHEDULED))
        finished = _meta_int(self.backend.get_meta(META_COMPACT_FINISHED))
        self.compact_rev = finished if finished > 0 else -1
        self.current_rev = max(top, scheduled, finished, 1)
        if scheduled > finished:
            return scheduled, finished
        return None


def _meta_int(raw: bytes | None) -> int:
    return int.from_bytes(raw, "big") if raw else -1


class WriteTxn:
    """One write transaction: all changes share main revision begin_rev + 1.

    Reads inside the transaction see its own earlier changes, as in etcd.
    """

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.begin_rev = store.current_rev
        self.changes: list[tuple[KeyValue, bool]] = []  # (kv, is_delete)
        self.ended = False

    @property
    def rev(self) -> int:
        return self.begin_rev + 1

    def _read_rev(self) -> int:
        return self.begin_rev + 1 if self.changes else self.begin_rev

    def range(
        self, start: bytes, end: bytes | None, rev: int = 0, limit: int = 0, count_only: bool = False
    ) -> RangeResult:
        s = self.store
        if rev > self._read_rev():
            raise FutureRevError(rev)
        at = self._read_rev() if rev <= 0 else rev
        if rev > 0 and rev < s.compact_rev:
            raise CompactedError(rev)
        res = s._range_at(start, end, at, limit, count_only)
        res.rev = self._read_rev()
        return res

    def put(self, key: bytes, value: bytes, lease: int = 0) -> KeyValue:
        """Write key; returns the new KeyValue. Read the old one first if you need it."""
        s = self.store
        rev = Revision(self.rev, len(self.changes))
        ki = s.index.get(key)
        created = rev.main
        ver = 1
        if ki is not None:
            got = ki.get(self.rev)
            if got is not None:
                created = got[1].main
                ver = got[2] + 1
        kv = KeyValue(key=key, value=value, create_revision=created, mod_revision=rev.main, version=ver, lease=lease)
        s.backend.put_rev(rev_to_bytes(rev), kv.SerializeToString())
        if ki is None:
            ki = s.index[key] = KeyIndex(key)
            s.keys.add(key)
        ki.put(rev)
        old_lease = s.key_lease.get(key, 0)
        if old_lease != lease:
            if old_lease:
                s.leases.detach(old_lease, key)
            if lease:
                s.leases.attach(lease, key)
        if lease:
            s.key_lease[key] = lease
        else:
            s.key_lease.pop(key, None)
        self.changes.append((kv, False))
        return kv

    def delete_range(self, start: bytes, end: bytes | None) -> list[KeyValue]:
        """Delete every live key in the range; returns their previous KeyValues."""
        s = self.store
        read_at = self._read_rev()
        prevs = []
        for key in list(s._keys_in(start, end)):
            ki = s.index[key]
            got = ki.get(read_at)
            if got is None:
                continue
            prevs.append(s._load(got[0]))
            rev = Revision(self.rev, len(self.changes))
            kv = KeyValue(key=key)
            s.backend.put_rev(rev_to_bytes(rev, tombstone=True), kv.SerializeToString())
            ki.tombstone(rev)
            old_lease = s.key_lease.pop(key, 0)
            if old_lease:
                s.leases.detach(old_lease, key)
            self.changes.append((kv, True))
        return prevs

    def end(self, events: bool = True) -> TxnResult:
        """Finish: bump the store revision if anything changed; return the watch events (none
        when not asked for: with no watcher to tell, the caller skips making them)."""
        if self.ended:
            raise RuntimeError("write txn ended twice")
        self.ended = True
        if not self.changes:
            return TxnResult(rev=self.store.current_rev)
        self.store.current_rev = self.rev
        if not events:
            return TxnResult(rev=self.rev)
        events = []
        for kv, deleted in self.changes:
            if deleted:
                ev_kv = KeyValue(key=kv.key, mod_revision=self.rev)
                events.append(Event(type=Event.DELETE, kv=ev_kv))
            else:
                events.append(Event(type=Event.PUT, kv=kv))
        return TxnResult(rev=self.rev, events=events)
