"""Watches: deliver every change to the watchers that asked for it, in revision order.

Pure core, used under the server's store lock. A watcher is *synced* when it has seen every
revision up to the store's current one; new changes are pushed to synced watchers as they are
applied (`notify`). A watcher that starts in the past, or whose stream cannot keep up, is
*unsynced*: `sync` catches it up by reading history from the store, in bounded chunks, and then
moves it to synced. A watcher that needs history that was compacted gets compact_revision and
is canceled, as in etcd. A revision's events always travel in one response (unless the client
asked for fragments and the response is too large).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol

from server.mvcc.store import Event, KVStore, in_range
from server.proto.etcdserverpb import rpc_pb2

WatchResponse = rpc_pb2.WatchResponse
ResponseHeader = rpc_pb2.ResponseHeader
FILTER_NOPUT = rpc_pb2.WatchCreateRequest.NOPUT
FILTER_NODELETE = rpc_pb2.WatchCreateRequest.NODELETE
PROGRESS_WATCH_ID = -1  # a progress response for the whole stream, not one watcher


class Sink(Protocol):
    """A watch stream's outbound side."""

    def send(self, resp: WatchResponse) -> None: ...
    def has_room(self) -> bool: ...


@dataclass(eq=False, slots=True)
class Watcher:
    id: int
    sink: Sink
    key: bytes
    end: bytes | None  # None: one key; b"": no upper bound
    next_rev: int  # the lowest revision not yet delivered
    prev_kv: bool = False
    filters: frozenset[int] = frozenset()
    progress_notify: bool = False
    fragment: bool = False
    synced: bool = False
    sent_since_progress: bool = False

    def matches(self, key: bytes) -> bool:
        return in_range(key, self.key, self.end)

    def __str__(self) -> str:
        state = "synced" if self.synced else "unsynced"
        return f"watcher {self.id} [{self.key!r},{self.end!r}) next={self.next_rev} {state}"


@dataclass
class _StreamState:
    watchers: dict[int, Watcher] = field(default_factory=dict)
    progress_pending: bool = False


class WatchHub:
    def __init__(
        self,
        store: KVStore,
        make_header: Callable[[int], ResponseHeader],
        max_response_bytes: int = 1536 * 1024,
    ) -> None:
        self.store = store
        self.make_header = make_header
        self.max_response_bytes = max_response_bytes
        self._keyed: dict[bytes, set[Watcher]] = {}  # synced single-key watchers
        self._ranged: set[Watcher] = set()  # synced range watchers
        self._unsynced: set[Watcher] = set()
        self._streams: dict[int, _StreamState] = {}  # id(sink) -> state

    # ------------------------------------------------------------ registry
    def watch(
        self,
        sink: Sink,
        watch_id: int,
        key: bytes,
        end: bytes | None,
        start_rev: int,
        prev_kv: bool = False,
        filters: Iterable[int] = (),
        progress_notify: bool = False,
        fragment: bool = False,
    ) -> Watcher:
        cur = self.store.current_rev
        if start_rev < 0:
            start_rev = 1  # a negative start means "from the beginning"
        synced = start_rev == 0 or start_rev > cur
        w = Watcher(
            id=watch_id,
            sink=sink,
            key=key,
            end=end,
            next_rev=max(start_rev, cur + 1) if synced else start_rev,
            prev_kv=prev_kv,
            filters=frozenset(filters),
            progress_notify=progress_notify,
            fragment=fragment,
        )
        self._streams.setdefault(id(sink), _StreamState()).watchers[watch_id] = w
        if synced:
            self._add_synced(w)
        else:
            self._unsynced.add(w)
        return w

    def get(self, sink: Sink, watch_id: int) -> Watcher | None:
        st = self._streams.get(id(sink))
        return None if st is None else st.watchers.get(watch_id)

    def cancel(self, w: Watcher) -> None:
        if w.synced:
            self._remove_synced(w)
        self._unsynced.discard(w)
        st = self._streams.get(id(w.sink))
        if st is not None:
            st.watchers.pop(w.id, None)

    def close_stream(self, sink: Sink) -> None:
        st = self._streams.pop(id(sink), None)
        if st is None:
            return
        for w in list(st.watchers.values()):
            if w.synced:
                self._remove_synced(w)
            self._unsynced.discard(w)

    def _add_synced(self, w: Watcher) -> None:
        w.synced = True
        if w.end is None:
            self._keyed.setdefault(w.key, set()).add(w)
        else:
            self._ranged.add(w)

    def _remove_synced(self, w: Watcher) -> None:
        w.synced = False
        if w.end is None:
            s = self._keyed.get(w.key)
            if s is not None:
                s.discard(w)
                if not s:
                    del self._keyed[w.key]
        else:
            self._ranged.discard(w)

    def notify_restored(self) -> None:
        """The store was replaced (a snapshot): every watcher catches up from the new history."""
        for w in [w for ws in self._keyed.values() for w in ws] + list(self._ranged):
            self._remove_synced(w)
            self._unsynced.add(w)

    def counts(self) -> tuple[int, int]:
        """(synced, unsynced) watcher counts."""
        return sum(len(s) for s in self._keyed.values()) + len(self._ranged), len(self._unsynced)

    # ------------------------------------------------------------ delivery
    def wants_events(self) -> bool:
        """Whether notify would deliver anything (a synced watcher exists): else writers need
        not make events (unsynced watchers catch up from history, not from notify)."""
        return bool(self._keyed or self._ranged)

    def notify(self, rev: int, events: list[Event]) -> None:
        """A write transaction at rev produced events: push them to synced watchers."""
        batches: dict[Watcher, list[Event]] = {}
        for ev in events:
            key = ev.kv.key
            for w in self._keyed.get(key, ()):
                batches.setdefault(w, []).append(ev)
            for w in self._ranged:
                if w.matches(key):
                    batches.setdefault(w, []).append(ev)
        for w, evs in batches.items():
            if w.next_rev > rev:
                continue  # a watch starting in the future
            if not w.sink.has_room():
                # too slow: fall back to catching up from history
                self._remove_synced(w)
                w.next_rev = rev
                self._unsynced.add(w)
                continue
            self._deliver(w, evs, rev)
            w.next_rev = rev + 1

    def sync(self, max_revs: int = 1000) -> bool:
        """Catch unsynced watchers up by up to max_revs revisions; True if a ready one still lags."""
        st_pending = [s for s in self._streams.values() if s.progress_pending]
        if not self._unsynced:
            for st in st_pending:
                self._maybe_send_progress(st)
            return False
        cur = self.store.current_rev
        compact = self.store.compact_rev
        ready = []
        for w in list(self._unsynced):
            if compact > 0 and w.next_rev < compact:
                resp = WatchResponse(
                    header=self.make_header(cur), watch_id=w.id, compact_revision=compact, canceled=True
                )
                w.sink.send(resp)
                self.cancel(w)
            elif w.sink.has_room():
                ready.append(w)
        if not ready:
            return False  # the rest wait for room in their streams (or there is nothing left)
        lo = min(w.next_rev for w in ready)
        hi = min(cur, lo + max_revs - 1)
        per_watcher: dict[Watcher, list[tuple[int, Event]]] = {w: [] for w in ready}
        if lo <= hi:
            for rev, ev in self.store.events_between(lo, hi):
                key = ev.kv.key
                for w in ready:
                    if rev >= w.next_rev and w.matches(key):
                        per_watcher[w].append((rev, ev))
        for w in ready:
            evs = per_watcher[w]
            if evs:
                self._deliver(w, [e for _, e in evs], cur)
            if hi >= w.next_rev:
                w.next_rev = hi + 1
            if w.next_rev > cur:
                self._unsynced.discard(w)
                self._add_synced(w)
        for st in self._streams.values():
            if st.progress_pending:
                self._maybe_send_progress(st)
        return any(not w.synced for w in ready)

    def _deliver(self, w: Watcher, events: list[Event], header_rev: int) -> None:
        out = []
        for ev in events:
            if ev.type == Event.PUT and FILTER_NOPUT in w.filters:
                continue
            if ev.type == Event.DELETE and FILTER_NODELETE in w.filters:
                continue
            if w.prev_kv and not (ev.type == Event.PUT and ev.kv.version == 1):
                prev = self.store.get(ev.kv.key, ev.kv.mod_revision - 1)
                if prev is not None:
                    ev = Event(type=ev.type, kv=ev.kv, prev_kv=prev)
            out.append(ev)
        if not out:
            return
        w.sent_since_progress = True
        header = self.make_header(header_rev)
        resp = WatchResponse(header=header, watch_id=w.id, events=out)
        if w.fragment and resp.ByteSize() > self.max_response_bytes:
            for part in self._fragments(w.id, header, out):
                w.sink.send(part)
        else:
            w.sink.send(resp)

    def _fragments(self, wid: int, header: ResponseHeader, events: list[Event]) -> list[WatchResponse]:
        parts: list[WatchResponse] = []
        cur: list[Event] = []
        size = 0
        for ev in events:
            n = ev.ByteSize() + 8
            if cur and size + n > self.max_response_bytes:
                parts.append(WatchResponse(header=header, watch_id=wid, events=cur, fragment=True))
                cur, size = [], 0
            cur.append(ev)
            size += n
        parts.append(WatchResponse(header=header, watch_id=wid, events=cur))
        return parts

    # ------------------------------------------------------------ progress
    def request_progress(self, sink: Sink) -> None:
        """A client's progress request: answered once every watcher of the stream is synced."""
        st = self._streams.setdefault(id(sink), _StreamState())
        st.progress_pending = True
        self._maybe_send_progress(st, sink)

    def _maybe_send_progress(self, st: _StreamState, sink: Sink | None = None) -> None:
        if any(not w.synced for w in st.watchers.values()):
            return
        if sink is None:
            if not st.watchers:
                return
            sink = next(iter(st.watchers.values())).sink
        st.progress_pending = False
        sink.send(WatchResponse(header=self.make_header(self.store.current_rev), watch_id=PROGRESS_WATCH_ID))

    def progress_tick(self) -> None:
        """Periodic progress notifications for quiet, synced watchers that asked for them."""
        cur = self.store.current_rev
        for st in self._streams.values():
            for w in st.watchers.values():
                if not w.progress_notify:
                    continue
                if w.synced and not w.sent_since_progress:
                    w.sink.send(WatchResponse(header=self.make_header(cur), watch_id=w.id))
                w.sent_since_progress = False
