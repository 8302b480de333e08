"""Unit and property tests of the server's pure cores: leases, watches, request checks, IDs, config.

Why: these modules carry etcd semantics that clients depend on in detail (lease expiry and
renewal, watch delivery without gaps or duplicates across slow streams and compaction, the
txn duplicate-key rule, etcd's well-known default member and cluster IDs, flag/env precedence).
They are pure, so they are tested directly, over a real KVStore on a real LMDB backend where a
store is needed; the watch sink is a small in-memory implementation of the hub's own Sink
interface.
"""
from __future__ import annotations

import itertools
import shutil
import tempfile
from typing import Sequence

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from server import entrybatch, errors
from server.backend import Backend
from server.config import Config, URL, compaction_period, parse_config, parse_duration
from server.ids import IDGenerator, cluster_id, member_id
from server.lease import (
    MAX_LEASE_TTL,
    LeaseExists,
    LeaseNotFound,
    LeaseTTLTooLarge,
    Lessor,
    min_lease_ttl,
)
from server.mvcc.store import Event, KVStore
from server.proto.etcdserverpb import rpc_pb2 as pb
from server.validate import check_put, check_range, check_txn, delete_bounds, txn_is_readonly
from server.watch import FILTER_NODELETE, FILTER_NOPUT, PROGRESS_WATCH_ID, WatchHub

# =============================================================================== leases


def test_grant_raises_ttl_to_the_minimum_and_rejects_bad_requests() -> None:
    ls = Lessor(min_ttl=5)
    lease = ls.grant(1, 2, now=100.0)
    assert lease.ttl == 5 and lease.expiry == 105.0
    assert ls.grant(2, 60, now=100.0).ttl == 60
    assert ls.lookup(1) is lease and ls.lookup(3) is None
    with pytest.raises(LeaseExists):
        ls.grant(1, 10, now=100.0)
    with pytest.raises(LeaseNotFound):
        ls.grant(0, 10, now=100.0)  # ID 0 means "no lease"
    with pytest.raises(LeaseTTLTooLarge):
        ls.grant(4, MAX_LEASE_TTL + 1, now=100.0)
    assert ls.grant(5, MAX_LEASE_TTL, now=100.0).ttl == MAX_LEASE_TTL


def test_renew_restarts_the_clock_and_an_expired_lease_cannot_be_renewed() -> None:
    ls = Lessor(min_ttl=1)
    ls.grant(1, 10, now=0.0)
    assert ls.renew(1, now=8.0) == 10
    assert ls.lookup(1).remaining(9.0) == pytest.approx(9.0)  # type: ignore[union-attr]
    assert ls.expired(now=10.0) == []  # the first deadline no longer counts
    assert ls.expired(now=18.0) == [1]
    with pytest.raises(LeaseNotFound):
        ls.renew(1, now=18.0)  # being revoked
    ls.grant(2, 10, now=0.0)
    with pytest.raises(LeaseNotFound):
        ls.renew(2, now=10.0)  # at its deadline it is as good as gone, even before expired() ran
    with pytest.raises(LeaseNotFound):
        ls.renew(99, now=0.0)


def test_expired_reports_each_lease_once_and_respects_the_limit() -> None:
    ls = Lessor(min_ttl=1)
    for i in range(1, 6):
        ls.grant(i, i, now=0.0)
    assert ls.expired(now=0.5) == []
    assert ls.expired(now=3.0, limit=2) == [1, 2]
    assert ls.expired(now=3.0) == [3]
    assert ls.expired(now=3.0) == []
    assert ls.expired(now=100.0) == [4, 5]
    assert all(ls.lookup(i).revoking for i in range(1, 6))  # type: ignore[union-attr]


def test_revoke_returns_the_lease_with_its_keys() -> None:
    ls = Lessor(min_ttl=1)
    ls.grant(7, 10, now=0.0)
    ls.attach(7, b"a")
    ls.attach(7, b"b")
    ls.detach(7, b"a")
    ls.attach(8, b"x")  # unknown lease: ignored
    lease = ls.revoke(7)
    assert lease.keys == {b"b"}
    assert ls.lookup(7) is None
    with pytest.raises(LeaseNotFound):
        ls.revoke(7)
    assert ls.expired(now=100.0) == []  # its heap entry is stale


def test_promote_gives_every_lease_a_full_ttl_plus_the_extension() -> None:
    ls = Lessor(min_ttl=1)
    ls.grant(1, 10, now=0.0)
    ls.grant(2, 20, now=0.0)
    assert ls.expired(now=15.0) == [1]
    ls.promote(now=15.0, extend=1.5)
    assert ls.lookup(1).expiry == 26.5 and not ls.lookup(1).revoking  # type: ignore[union-attr]
    assert ls.lookup(2).expiry == 36.5  # type: ignore[union-attr]
    assert ls.expired(now=26.0) == []
    assert ls.expired(now=26.5) == [1]
    assert ls.expired(now=36.5) == [2]


def test_retry_revoke_and_restore() -> None:
    ls = Lessor(min_ttl=1)
    ls.grant(1, 5, now=0.0)
    assert ls.expired(now=5.0) == [1]
    ls.retry_revoke(1, now=5.0, after=2.0)
    assert ls.expired(now=6.0) == []
    assert ls.expired(now=7.0) == [1]
    ls.restore(9, 30, now=100.0)
    assert ls.lookup(9).expiry == 130.0  # type: ignore[union-attr]
    ls.restore(9, 1, now=200.0)  # already there: unchanged
    assert ls.lookup(9).ttl == 30  # type: ignore[union-attr]


@pytest.mark.parametrize("hb,el,want", [(100, 1000, 2), (10, 100, 1), (100, 5000, 8), (50, 1000, 2)])
def test_min_lease_ttl_matches_etcd(hb: int, el: int, want: int) -> None:
    # etcd: ceil(3 * electionTicks / 2 * heartbeat) in seconds
    assert min_lease_ttl(hb, el) == want


# =============================================================================== watches


class ListSink:
    """The hub's Sink interface, keeping what is sent; room can be turned off to act slow."""

    def __init__(self) -> None:
        self.sent: list[pb.WatchResponse] = []
        self.room = True

    def send(self, resp: pb.WatchResponse) -> None:
        self.sent.append(resp)

    def has_room(self) -> bool:
        return self.room

    def events(self, watch_id: int) -> list[tuple[int, str, bytes, bytes]]:
        return [
            (e.kv.mod_revision, "put" if e.type == Event.PUT else "del", e.kv.key, e.kv.value)
            for r in self.sent
            if r.watch_id == watch_id
            for e in r.events
        ]


@pytest.fixture
def kv(tmp_path):
    be = Backend(str(tmp_path / "db"), map_size=64 << 20)
    s = KVStore(be)
    yield s
    be.close()


def make_hub(store: KVStore, max_bytes: int = 1536 * 1024) -> WatchHub:
    return WatchHub(store, lambda rev: pb.ResponseHeader(revision=rev), max_response_bytes=max_bytes)


def write(store: KVStore, hub: WatchHub | None, *ops: tuple) -> int:
    """ops: ("put", key, value) or ("del", key, end); notifies the hub like the applier does."""
    t = store.write()
    for op in ops:
        if op[0] == "put":
            t.put(op[1], op[2])
        else:
            t.delete_range(op[1], op[2])
    res = t.end()
    if hub is not None and res.events:
        hub.notify(res.rev, res.events)
    return res.rev


def compact(store: KVStore, rev: int) -> None:
    keep = store.compact(rev)
    for chunk in store.compaction_victims(rev, keep, 100):
        store.backend.delete_revs(chunk)
    store.finish_compaction(rev)


def test_synced_watchers_get_new_changes_of_their_key_or_range(kv: KVStore) -> None:
    hub = make_hub(kv)
    s = ListSink()
    hub.watch(s, 1, b"a", None, 0)
    hub.watch(s, 2, b"a", b"c", 0)
    hub.watch(s, 3, b"b", b"", 0)
    assert hub.counts() == (3, 0)
    r1 = write(kv, hub, ("put", b"a", b"1"))
    r2 = write(kv, hub, ("put", b"b", b"2"))
    r3 = write(kv, hub, ("put", b"c", b"3"), ("del", b"a", None))
    assert s.events(1) == [(r1, "put", b"a", b"1"), (r3, "del", b"a", b"")]
    assert s.events(2) == [(r1, "put", b"a", b"1"), (r2, "put", b"b", b"2"), (r3, "del", b"a", b"")]
    assert s.events(3) == [(r2, "put", b"b", b"2"), (r3, "put", b"c", b"3")]
    assert all(r.header.revision == r.events[0].kv.mod_revision for r in s.sent)
    # one response per watcher per revision, even with several events in it
    assert len([r for r in s.sent if r.watch_id == 2]) == 3


def test_watch_from_the_past_replays_history_then_goes_synced(kv: KVStore) -> None:
    hub = make_hub(kv)
    revs = [write(kv, hub, ("put", k, b"v%d" % i)) for i, k in enumerate([b"a", b"b", b"a", b"a", b"b"])]
    s = ListSink()
    hub.watch(s, 5, b"a", None, revs[1])
    assert hub.counts() == (0, 1) and s.sent == []
    assert hub.sync() is False
    assert hub.counts() == (1, 0)
    assert s.events(5) == [(revs[2], "put", b"a", b"v2"), (revs[3], "put", b"a", b"v3")]
    assert s.sent[0].header.revision == kv.current_rev
    r = write(kv, hub, ("put", b"a", b"new"))
    assert s.events(5)[-1] == (r, "put", b"a", b"new")


def test_writes_skip_events_only_while_no_synced_watcher_needs_them(kv: KVStore) -> None:
    """The applier asks the hub before making events: none for writes nobody watches, yet a
    watcher started later from an older revision still gets them (from history), and once a
    watcher is synced writes make events again."""
    hub = make_hub(kv)
    assert not hub.wants_events()
    t = kv.write()
    t.put(b"a", b"1")
    res = t.end(events=hub.wants_events())
    assert res.events == [] and res.rev == 2 == kv.current_rev
    s = ListSink()
    hub.watch(s, 7, b"a", None, 1)
    assert not hub.wants_events()  # unsynced: it reads history, not events
    assert hub.sync() is False and hub.wants_events()
    assert s.events(7) == [(2, "put", b"a", b"1")]
    t = kv.write()
    t.put(b"a", b"2")
    res = t.end(events=hub.wants_events())
    assert [e.kv.value for e in res.events] == [b"2"]


def test_watch_starting_in_the_future_waits_for_its_revision(kv: KVStore) -> None:
    hub = make_hub(kv)
    s = ListSink()
    hub.watch(s, 1, b"a", None, kv.current_rev + 2)
    write(kv, hub, ("put", b"a", b"early"))
    r = write(kv, hub, ("put", b"a", b"on time"))
    assert s.events(1) == [(r, "put", b"a", b"on time")]


def test_slow_stream_falls_behind_and_catches_up_without_gap_or_duplicate(kv: KVStore) -> None:
    hub = make_hub(kv)
    s = ListSink()
    hub.watch(s, 1, b"k", None, 0)
    first = write(kv, hub, ("put", b"k", b"0"))
    s.room = False
    for i in range(1, 6):
        write(kv, hub, ("put", b"k", b"%d" % i))
    assert hub.counts() == (0, 1)
    assert hub.sync(max_revs=2) is False  # no room: nothing to do yet
    s.room = True
    while hub.sync(max_revs=2):
        pass
    assert hub.counts() == (1, 0)
    last = write(kv, hub, ("put", b"k", b"6"))
    got = s.events(1)
    assert [e[0] for e in got] == list(range(first, last + 1))
    assert [e[3] for e in got] == [b"%d" % i for i in range(7)]


KEYS3 = [b"a", b"b", b"c"]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    actions=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.sampled_from(KEYS3)),
            st.tuples(st.just("del"), st.sampled_from(KEYS3)),
            st.tuples(st.just("txn"), st.sampled_from(KEYS3)),
            st.tuples(st.just("room"), st.integers(0, 1), st.booleans()),
            st.tuples(st.just("sync"), st.integers(1, 3)),
            st.tuples(st.just("compact"), st.integers(0, 3)),
        ),
        max_size=30,
    ),
    start_back=st.integers(0, 4),
)
def test_watch_delivery_is_exactly_the_history_whatever_the_stream_speed(actions, start_back: int) -> None:
    """Two streams that go slow at random, compaction at random: each watcher gets exactly the
    history from its start, in order, without gap or duplicate, each revision in one response,
    with correct prev_kv; or, when it fell behind a compaction, a gap-free prefix and a cancel."""
    d = tempfile.mkdtemp(prefix="watch-prop-")
    be = Backend(f"{d}/db", map_size=64 << 20)
    try:
        store = KVStore(be)
        hub = make_hub(store)
        states: dict[int, dict[bytes, bytes]] = {1: {}}  # revision -> key -> value
        history: list[tuple[int, str, bytes, bytes]] = []

        def do(*ops: tuple) -> None:
            rev = write(store, hub, *ops)
            state = dict(states[max(states)])
            for op in ops:
                if op[0] == "put":
                    state[op[1]] = op[2]
                    history.append((rev, "put", op[1], op[2]))
                elif op[1] in state:
                    del state[op[1]]
                    history.append((rev, "del", op[1], b""))
            if rev not in states:
                states[rev] = state

        for k in (b"a", b"b", b"c", b"a"):
            do(("put", k, b"init"))
        base = store.current_rev
        start = max(1, base - start_back + 1) if start_back else 0
        sinks = [ListSink(), ListSink()]
        specs = {1: (sinks[0], b"a", b"c"), 2: (sinks[1], b"c", b"d"), 3: (sinks[1], b"a", b"")}
        for wid, (sink, key, end) in specs.items():
            hub.watch(sink, wid, key, end, start, prev_kv=True)
        history = [h for h in history if h[0] >= (start or base + 1)]
        n = itertools.count()
        for act in actions:
            if act[0] == "put":
                do(("put", act[1], b"%d" % next(n)))
            elif act[0] == "del":
                do(("del", act[1], None))
            elif act[0] == "txn":
                other = b"b" if act[1] != b"b" else b"a"
                do(("put", act[1], b"%d" % next(n)), ("put", other, b"t%d" % next(n)))
            elif act[0] == "room":
                sinks[act[1]].room = act[2]
            elif act[0] == "sync":
                hub.sync(max_revs=act[1])
            else:
                at = store.current_rev - act[1]
                if at > max(store.compact_rev, 0):
                    compact(store, at)
        for sink in sinks:
            sink.room = True
        for _ in range(1000):
            if not hub.sync(max_revs=2) and hub.counts()[1] == 0:
                break
        assert hub.counts()[1] == 0
        live = 0
        for wid, (sink, key, end) in specs.items():
            want = [h for h in history if h[2] >= key and (end == b"" or h[2] < end)]
            got = sink.events(wid)
            cancels = [r for r in sink.sent if r.watch_id == wid and r.canceled]
            event("canceled by compaction" if cancels else "delivered everything")
            if cancels:
                assert len(cancels) == 1 and cancels[0].compact_revision > 0
                assert hub.get(sink, wid) is None
                # (it may have had every matching event: etcd cannot know, neither can we)
                assert got == want[: len(got)], "a canceled watcher got a gap or a duplicate"
            else:
                live += 1
                assert got == want
            # a revision never straddles two responses
            seen: dict[int, int] = {}
            for i, r in enumerate(x for x in sink.sent if x.watch_id == wid):
                for e in r.events:
                    assert seen.setdefault(e.kv.mod_revision, i) == i
                    prev = states[e.kv.mod_revision - 1].get(e.kv.key)
                    if e.HasField("prev_kv"):
                        assert (e.prev_kv.key, e.prev_kv.value) == (e.kv.key, prev)
                    else:
                        # absent only when there was none, or its revision is compacted away
                        assert prev is None or e.kv.mod_revision - 1 < store.compact_rev
        assert hub.counts() == (live, 0)
    finally:
        be.close()
        shutil.rmtree(d, ignore_errors=True)


def test_compaction_cancels_a_watcher_that_needs_compacted_history(kv: KVStore) -> None:
    hub = make_hub(kv)
    for i in range(5):
        write(kv, hub, ("put", b"a", b"%d" % i))  # revisions 2..6
    s = ListSink()
    hub.watch(s, 1, b"a", None, 2)
    hub.watch(s, 2, b"a", None, 4)
    compact(kv, 4)
    hub.sync()
    canceled = [r for r in s.sent if r.canceled]
    assert len(canceled) == 1
    assert canceled[0].watch_id == 1 and canceled[0].compact_revision == 4
    assert canceled[0].header.revision == kv.current_rev
    assert hub.get(s, 1) is None and hub.get(s, 2) is not None
    # a watcher starting exactly at the compaction revision still gets everything from it
    assert [e[0] for e in s.events(2)] == [4, 5, 6]
    assert hub.counts() == (1, 0)


def test_delete_at_the_compaction_revision_reaches_a_lagging_watcher(kv: KVStore) -> None:
    """Regression (found by the property test above): a slow watcher left needing revision 6,
    a compaction at 6 where a key was deleted, then the catch-up: the delete was gone from the
    backend and the watcher, not canceled (6 is not below the compaction), silently missed it.
    etcd had the same bug (etcd-io/etcd#18089); compaction now keeps changes at its revision."""
    hub = make_hub(kv)
    for k in (b"a", b"b", b"c", b"a"):
        write(kv, hub, ("put", k, b"init"))  # revisions 2..5
    slow = ListSink()
    hub.watch(slow, 1, b"a", b"c", 0)
    slow.room = False
    rev = write(kv, hub, ("del", b"a", None))  # 6, not delivered: the stream is full
    compact(kv, rev)
    slow.room = True
    hub.sync()
    assert slow.events(1) == [(rev, "del", b"a", b"")]
    assert not any(r.canceled for r in slow.sent)
    # and a new watch starting exactly at the compaction revision sees it as well
    fresh = ListSink()
    hub.watch(fresh, 2, b"a", None, rev)
    hub.sync()
    assert fresh.events(2) == [(rev, "del", b"a", b"")]


def test_filters_drop_puts_or_deletes(kv: KVStore) -> None:
    hub = make_hub(kv)
    s = ListSink()
    hub.watch(s, 1, b"a", None, 0, filters=[FILTER_NOPUT])
    hub.watch(s, 2, b"a", None, 0, filters=[FILTER_NODELETE])
    r1 = write(kv, hub, ("put", b"a", b"1"))
    r2 = write(kv, hub, ("del", b"a", None))
    assert s.events(1) == [(r2, "del", b"a", b"")]
    assert s.events(2) == [(r1, "put", b"a", b"1")]
    assert len(s.sent) == 2  # a revision whose events are all filtered sends nothing


@pytest.mark.parametrize("historical", [False, True])
def test_prev_kv(kv: KVStore, historical: bool) -> None:
    hub = make_hub(kv)
    s = ListSink()
    if not historical:
        hub.watch(s, 1, b"a", None, 0, prev_kv=True)
    start = kv.current_rev + 1
    write(kv, hub, ("put", b"a", b"1"))
    write(kv, hub, ("put", b"a", b"2"))
    write(kv, hub, ("del", b"a", None))
    write(kv, hub, ("put", b"a", b"3"))
    if historical:
        hub.watch(s, 1, b"a", None, start, prev_kv=True)
        hub.sync()
    evs = [e for r in s.sent for e in r.events]
    assert [(e.kv.value, e.prev_kv.value if e.HasField("prev_kv") else None) for e in evs] == [
        (b"1", None),  # created: no previous value
        (b"2", b"1"),
        (b"", b"2"),  # the delete carries what was deleted
        (b"3", None),
    ]
    assert evs[1].prev_kv.mod_revision == evs[0].kv.mod_revision


def test_large_revisions_are_fragmented_only_when_asked(kv: KVStore) -> None:
    hub = make_hub(kv, max_bytes=300)
    s = ListSink()
    hub.watch(s, 1, b"k", b"l", 0, fragment=True)
    hub.watch(s, 2, b"k", b"l", 0)
    ops = [("put", b"k%d" % i, b"x" * 100) for i in range(6)]
    rev = write(kv, hub, *ops)
    frag = [r for r in s.sent if r.watch_id == 1]
    whole = [r for r in s.sent if r.watch_id == 2]
    assert len(whole) == 1 and len(whole[0].events) == 6 and not whole[0].fragment
    assert len(frag) > 1
    assert [r.fragment for r in frag] == [True] * (len(frag) - 1) + [False]
    assert [e.kv.key for r in frag for e in r.events] == [b"k%d" % i for i in range(6)]
    assert all(r.header.revision == rev for r in frag)
    assert all(r.ByteSize() <= 300 + 64 for r in frag)


def test_progress_is_answered_only_when_the_whole_stream_is_synced(kv: KVStore) -> None:
    hub = make_hub(kv)
    write(kv, hub, ("put", b"a", b"1"))
    write(kv, hub, ("put", b"a", b"2"))
    s1, s2, s3 = ListSink(), ListSink(), ListSink()
    hub.watch(s1, 1, b"a", None, 0)
    hub.watch(s1, 2, b"a", None, 2)  # unsynced: needs history
    hub.watch(s2, 1, b"a", None, 0)
    hub.request_progress(s1)
    hub.request_progress(s2)
    hub.request_progress(s3)  # a stream without watchers is answered too
    assert s1.sent == []
    for s in (s2, s3):
        assert len(s.sent) == 1
        assert s.sent[0].watch_id == PROGRESS_WATCH_ID and s.sent[0].header.revision == kv.current_rev
        assert not s.sent[0].events
    hub.sync()
    assert [r.watch_id for r in s1.sent] == [2, PROGRESS_WATCH_ID]
    assert s1.sent[1].header.revision == kv.current_rev
    hub.sync()
    assert len(s1.sent) == 2  # answered once


def test_progress_tick_reaches_only_quiet_synced_watchers_that_asked(kv: KVStore) -> None:
    hub = make_hub(kv)
    s = ListSink()
    hub.watch(s, 1, b"a", None, 0, progress_notify=True)
    hub.watch(s, 2, b"b", None, 0, progress_notify=True)
    hub.watch(s, 3, b"c", None, 0)
    write(kv, hub, ("put", b"a", b"1"))
    hub.progress_tick()
    progress = [r.watch_id for r in s.sent if not r.events]
    assert progress == [2]  # 1 just got events, 3 did not ask
    hub.progress_tick()
    progress = [r.watch_id for r in s.sent if not r.events]
    assert progress == [2, 1, 2]
    assert all(r.header.revision == kv.current_rev for r in s.sent if not r.events)


def test_cancel_and_close_stream_remove_watchers(kv: KVStore) -> None:
    hub = make_hub(kv)
    s1, s2 = ListSink(), ListSink()
    w = hub.watch(s1, 1, b"a", None, 0)
    hub.watch(s1, 2, b"a", b"z", 0)
    hub.watch(s2, 1, b"a", None, 1)
    assert hub.counts() == (2, 1)
    hub.cancel(w)
    assert hub.get(s1, 1) is None and hub.counts() == (1, 1)
    hub.close_stream(s1)
    hub.close_stream(s2)
    assert hub.counts() == (0, 0)
    write(kv, hub, ("put", b"a", b"x"))
    hub.sync()
    assert s1.sent == [] and s2.sent == []


# ======================================================================== request checks


def put_op(key: bytes, value: bytes = b"v") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def del_op(key: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=end))


def get_op(key: bytes) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key))


def txn_op(then: Sequence[pb.RequestOp], orelse: Sequence[pb.RequestOp] = ()) -> pb.RequestOp:
    return pb.RequestOp(request_txn=pb.TxnRequest(success=list(then), failure=list(orelse)))


def txn(then: Sequence[pb.RequestOp], orelse: Sequence[pb.RequestOp] = (), compares: int = 0) -> pb.TxnRequest:
    cmp = [pb.Compare(key=b"c%d" % i, target=pb.Compare.VERSION) for i in range(compares)]
    return pb.TxnRequest(compare=cmp, success=list(then), failure=list(orelse))


OK_TXNS = {
    "distinct puts": txn([put_op(b"a"), put_op(b"b")]),
    "same key in then and else": txn([put_op(b"a")], [put_op(b"a")]),
    "overlapping deletes": txn([del_op(b"a", b"m"), del_op(b"c", b"z"), del_op(b"d")]),
    "put outside the deleted range": txn([del_op(b"a", b"c"), put_op(b"c")]),
    "reads do not count": txn([get_op(b"a"), get_op(b"a"), put_op(b"a")]),
    "nested then and else put the same key": txn([txn_op([put_op(b"k")], [put_op(b"k")])]),
    "nested branch put, outer put elsewhere": txn([txn_op([put_op(b"k")]), put_op(b"j")]),
    "nested delete and put in different branches": txn([txn_op([del_op(b"k")], [put_op(b"k")])]),
    # etcd's duplicate check takes range_end literally, so a from-key delete ("\0") covers nothing
    "put above a from-key delete": txn([del_op(b"a", b"\x00"), put_op(b"zzz"), put_op(b"a")]),
    "deeply nested exclusive branches": txn(
        [txn_op([txn_op([put_op(b"k")], [put_op(b"k")])], [put_op(b"k")])]
    ),
}

DUP_TXNS = {
    "two puts": txn([put_op(b"a"), put_op(b"a")]),
    "put inside deleted range": txn([del_op(b"a", b"c"), put_op(b"b")]),
    "put of the deleted key": txn([put_op(b"a"), del_op(b"a")]),
    "nested then put and outer put": txn([txn_op([put_op(b"k")]), put_op(b"k")]),
    "nested else put and outer put": txn([txn_op([], [put_op(b"k")]), put_op(b"k")]),
    "nested put inside outer delete": txn([del_op(b"a", b"z"), txn_op([put_op(b"k")])]),
    "outer put inside nested delete": txn([txn_op([del_op(b"a", b"z")]), put_op(b"k")]),
    "two nested txns put the same key": txn([txn_op([put_op(b"k")]), txn_op([put_op(b"k")])]),
    "second nested else repeats the first's put": txn([txn_op([put_op(b"k")]), txn_op([], [put_op(b"k")])]),
    "duplicate inside one nested branch": txn([txn_op([put_op(b"k"), put_op(b"k")])]),
    "in the else branch": txn([], [put_op(b"a"), put_op(b"a")]),
}


@pytest.mark.parametrize("name", list(OK_TXNS))
def test_txn_without_duplicate_keys_is_accepted(name: str) -> None:
    check_txn(OK_TXNS[name], max_ops=128)


@pytest.mark.parametrize("name", list(DUP_TXNS))
def test_txn_duplicate_keys_are_rejected(name: str) -> None:
    with pytest.raises(errors.EtcdError) as ei:
        check_txn(DUP_TXNS[name], max_ops=128)
    assert ei.value == errors.DUPLICATE_KEY
    assert ei.value.message == "etcdserver: duplicate key given in txn request"


def test_too_many_ops_counts_each_list_and_nested_txns() -> None:
    puts = [put_op(b"k%d" % i) for i in range(4)]
    check_txn(txn(puts[:3], puts[:3], compares=3), max_ops=3)
    # a nested txn gets what its parent's largest list left of the budget, as in etcd
    check_txn(txn([txn_op(puts[:2])]), max_ops=3)
    for bad in (
        txn(puts, []),
        txn([], puts),
        txn([], [], compares=4),
        txn([txn_op(puts)]),
        txn([], [txn_op([], puts)]),
        txn([txn_op(puts[:2]), put_op(b"x")], compares=1),
    ):
        with pytest.raises(errors.EtcdError) as ei:
            check_txn(bad, max_ops=3)
        assert ei.value == errors.TOO_MANY_OPS


def test_empty_keys_and_value_or_lease_with_ignore_flags() -> None:
    for bad in (txn([put_op(b"")]), txn([del_op(b"")]), txn([get_op(b"")]), txn([], [], compares=0)):
        if not (bad.success or bad.failure):
            bad.compare.append(pb.Compare(key=b""))
        with pytest.raises(errors.EtcdError) as ei:
            check_txn(bad, max_ops=128)
        assert ei.value == errors.EMPTY_KEY
    with pytest.raises(errors.EtcdError) as ei:
        check_txn(txn([pb.RequestOp()]), max_ops=128)  # an op with no request in it
    assert ei.value == errors.KEY_NOT_FOUND
    with pytest.raises(errors.EtcdError) as ei:
        check_range(pb.RangeRequest())
    assert ei.value == errors.EMPTY_KEY
    with pytest.raises(errors.EtcdError) as ei:
        check_put(pb.PutRequest(key=b"k", value=b"v", ignore_value=True))
    assert ei.value == errors.VALUE_PROVIDED
    with pytest.raises(errors.EtcdError) as ei:
        check_put(pb.PutRequest(key=b"k", lease=5, ignore_lease=True))
    assert ei.value == errors.LEASE_PROVIDED
    check_put(pb.PutRequest(key=b"k", ignore_value=True, ignore_lease=True))


def test_delete_bounds_and_readonly_txns() -> None:
    assert delete_bounds(b"a", b"") == (b"a", None)
    assert delete_bounds(b"a", b"\x00") == (b"a", b"")
    assert delete_bounds(b"a", b"b") == (b"a", b"b")
    assert txn_is_readonly(txn([get_op(b"a")], [txn_op([get_op(b"b")])]))
    assert not txn_is_readonly(txn([get_op(b"a")], [txn_op([], [del_op(b"b")])]))
    assert not txn_is_readonly(txn([put_op(b"a")]))


# ========================================================================= batched entries


@settings(max_examples=200, deadline=None)
@given(datas=st.lists(st.binary(min_size=1, max_size=60).map(lambda b: b"\x0a" + b), max_size=30),
       limit=st.integers(8, 200))
def test_batches_keep_every_request_in_order_within_the_limit(datas: list[bytes], limit: int) -> None:
    entries = entrybatch.pack(datas, limit)
    assert [r for e in entries for r in entrybatch.unpack(e)] == datas
    size = lambda e: sum(len(r) + 4 for r in entrybatch.unpack(e))  # noqa: E731
    for e, nxt in zip(entries, entries[1:] + [None]):
        if entrybatch.is_batch(e):
            assert size(e) <= limit and len(entrybatch.unpack(e)) >= 2
        # greedy: a new entry starts only where the next request would not have fitted
        if nxt is not None and size(e) <= limit:
            assert size(e) + len(entrybatch.unpack(nxt)[0]) + 4 > limit
    if len(datas) == 1:
        assert entries == datas  # a lone request is proposed as etcd proposes it


def test_batch_entries_are_told_apart_and_malformed_ones_refused() -> None:
    a, b = b"\x0a\x02hi", b"\x12\x00"
    assert entrybatch.pack([a, b]) == [b"\x00\x00\x00\x00\x04" + a + b"\x00\x00\x00\x02" + b]
    assert entrybatch.unpack(a) == [a] and not entrybatch.is_batch(a) and not entrybatch.is_batch(b"")
    big = b"\x0a" + b"x" * 100
    assert entrybatch.pack([a, big, b], limit=50) == [a, big, b]  # nothing shares with a big one
    for bad in (b"\x00\x00\x00", b"\x00\x00\x00\x00\x09abc"):
        with pytest.raises(ValueError):
            entrybatch.unpack(bad)


def test_a_batched_entry_is_applied_in_order_answered_per_request_and_once(tmp_path) -> None:
    """Each request of a batch gets its own answer (an error for one leaves the others alone);
    the consistent index moves once, after the last; a replay of the entry applies nothing."""
    import time as _time

    from server.apply import Applier
    from server.backend import META_CONSISTENT_INDEX
    from server.proto.etcdserverpb import raft_internal_pb2

    be = Backend(str(tmp_path / "db"), map_size=64 << 20)
    lessor = Lessor(2)
    store = KVStore(be, lessor)
    applier = Applier(store, lessor, be, make_hub(store), _time.monotonic)

    def req(rid: int, **kw) -> bytes:
        r = raft_internal_pb2.InternalRaftRequest(**kw)
        r.header.ID = rid
        return r.SerializeToString()

    reqs = [req(1, put=pb.PutRequest(key=b"k", value=b"1")),
            req(2, put=pb.PutRequest(key=b"k", value=b"2", lease=99)),  # no such lease
            req(3, put=pb.PutRequest(key=b"k", value=b"3", prev_kv=True))]
    (entry,) = entrybatch.pack(reqs)
    out = applier.apply(7, 2, entry)
    assert [rid for rid, _ in out] == [1, 2, 3]
    assert out[0][1].header.revision == 2 and out[2][1].header.revision == 3
    assert out[1][1] == errors.LEASE_NOT_FOUND
    assert out[2][1].prev_kv.value == b"1"
    assert applier.applied_index == 7 and be.get_meta(META_CONSISTENT_INDEX) == (7).to_bytes(8, "big")
    assert applier.apply(7, 2, entry) == []  # a replay after a restart
    assert store.current_rev == 3 and store.range(b"k", None).kvs[0].version == 2
    be.close()


# ==================================================================================== ids


def test_default_member_and_cluster_ids_are_etcds() -> None:
    m = member_id(["http://localhost:2380"], "etcd-cluster")
    assert m == 0x8E9E05C52164694D
    assert cluster_id([m]) == 0xCDF818194E3A8C32


def test_member_id_ignores_url_order_and_depends_on_the_token() -> None:
    urls = ["http://10.0.0.2:2380", "http://10.0.0.1:2380"]
    assert member_id(urls, "t") == member_id(list(reversed(urls)), "t")
    assert member_id(urls, "t") != member_id(urls, "u")
    assert member_id(urls, "t", now_unix=5) != member_id(urls, "t")
    assert cluster_id([1, 2, 3]) == cluster_id([3, 1, 2])


def test_id_generator_layout_and_uniqueness() -> None:
    g = IDGenerator(0x8E9E05C52164694D, now_ms=1_000)
    ids = [g.next() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(i >> 48 == 0x694D for i in ids)  # the member's low 16 bits
    assert ids[0] & ((1 << 48) - 1) == (1_000 << 8) + 1
    later = IDGenerator(0x8E9E05C52164694D, now_ms=2_000)
    assert later.next() > max(ids)  # a restart later does not reuse IDs
    other = IDGenerator(0x1234, now_ms=1_000)
    assert not set(ids) & {other.next() for _ in range(1000)}


# ================================================================================== config


def test_defaults_are_etcds() -> None:
    c = parse_config([], environ={})
    assert c.name == "default" and c.data_dir == "default.etcd"
    assert c.listen_client_urls == [URL("http", "localhost", 2379)]
    assert c.initial_cluster == {"default": ["http://localhost:2380"]}
    assert c.initial_cluster_token == "etcd-cluster"
    assert (c.snapshot_count, c.heartbeat_ms, c.election_ms, c.max_txn_ops) == (100_000, 100, 1000, 128)
    assert c.max_request_bytes == 1536 * 1024 and c.quota_backend_bytes == 2 << 30
    assert c.wal_path == "default.etcd/member/wal" and c.backend_path == "default.etcd/member/snap/db"
    assert c.request_timeout == 7.0
    assert c.watch_progress_notify_interval == 600.0


def test_environment_is_used_when_the_flag_is_absent_and_the_flag_wins() -> None:
    env = {
        "ETCD_NAME": "from-env",
        "ETCD_SNAPSHOT_COUNT": "500",
        "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL": "1h30m",
        "ETCD_LISTEN_CLIENT_URLS": "http://127.0.0.1:23790",
    }
    c = parse_config([], environ=env)
    assert c.name == "from-env" and c.data_dir == "from-env.etcd"
    assert c.snapshot_count == 500
    assert c.watch_progress_notify_interval == 5400.0
    assert c.listen_client_urls == [URL("http", "127.0.0.1", 23790)]
    c = parse_config(["--name", "from-flag", "--snapshot-count=7"], environ=env)
    assert (c.name, c.snapshot_count) == ("from-flag", 7)
    assert c.initial_cluster == {"from-flag": ["http://localhost:2380"]}


@pytest.mark.parametrize(
    "argv,env,needle",
    [
        (["--snapshot-count", "abc"], {}, "--snapshot-count"),
        (["--heartbeat-interval", "0"], {}, "--heartbeat-interval"),
        (["--election-timeout", "200"], {}, "--election-timeout"),
        (["--initial-cluster-state", "maybe"], {}, "--initial-cluster-state"),
        (["--listen-client-urls", "ftp://127.0.0.1:1"], {}, "--listen-client-urls"),
        (["--listen-client-urls", "http://127.0.0.1"], {}, "--listen-client-urls"),
        (["--listen-peer-urls", "http://127.0.0.1:1/path"], {}, "--listen-peer-urls"),
        (["--auto-compaction-mode", "sometimes"], {}, "--auto-compaction-mode"),
        (["--auto-compaction-retention", "soon"], {}, "--auto-compaction-retention"),
        (
            ["--auto-compaction-mode", "revision", "--auto-compaction-retention", "1h"],
            {},
            "--auto-compaction-retention",
        ),
        (["--backend-batch-interval", "5parsecs"], {}, "5parsecs"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--initial-cluster", "other=http://127.0.0.1:2"], {}, "--initial-cluster"),
        (
            ["--initial-cluster", "default=http://127.0.0.1:2", "--initial-advertise-peer-urls", "http://127.0.0.1:3"],
            {},
            "--initial-advertise-peer-urls",
        ),
        ([], {"ETCD_MAX_TXN_OPS": "lots"}, "--max-txn-ops"),
        (["--no-such-flag"], {}, "--no-such-flag"),
    ],
)
def test_bad_values_exit_with_a_one_line_error(argv: list[str], env: dict[str, str], needle: str, capsys) -> None:
    with pytest.raises(SystemExit) as ei:
        parse_config(argv, environ=env)
    assert ei.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("etcdproof-server: error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert err.rstrip("\n").splitlines()[-1] == lines[0]  # the error is the last line, whole


def test_version_flag_exits_zero(capsys) -> None:
    with pytest.raises(SystemExit) as ei:
        parse_config(["--version"], environ={})
    assert ei.value.code == 0
    assert "etcdproof-server" in capsys.readouterr().out


@pytest.mark.parametrize(
    "text,seconds",
    [("1h30m", 5400.0), ("500ms", 0.5), ("1.5s", 1.5), ("10", 10.0), ("2m3s", 123.0), ("1h0m0s", 3600.0),
     ("100us", 1e-4), ("250ns", 2.5e-7)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "1x", "1h30", "m5", "1h 30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_periodic_retention_bare_number_means_hours() -> None:
    c = Config(auto_compaction_retention="2")
    assert compaction_period(c) == 7200.0
    c = Config(auto_compaction_retention="30m")
    assert compaction_period(c) == 1800.0


def test_proposal_expiry_times_out_in_order_and_skips_answered_ones() -> None:
    """One sweeping timer stands for a timer per proposal: each future gets _TIMED_OUT no earlier
    than the delay after it was added and at most a grain later; answered ones are left alone."""
    import asyncio
    import time

    from server.etcdserver import _TIMED_OUT, _Expiry

    async def go() -> tuple[list, list, float]:
        loop = asyncio.get_running_loop()
        ex = _Expiry(0.2, grain=0.02)
        futs, added = [], []
        for i in range(6):
            f = loop.create_future()
            ex.add(f)
            futs.append(f)
            added.append(time.monotonic())
            await asyncio.sleep(0.03)
        futs[2].set_result("answered")
        done_at = []
        for f in futs:
            await f
            done_at.append(time.monotonic())
        waits = [d - a for i, (d, a) in enumerate(zip(done_at, added)) if i != 2]
        ex.close()
        return [f.result() for f in futs], waits

    results, waits = asyncio.run(go())
    assert results == [_TIMED_OUT, _TIMED_OUT, "answered", _TIMED_OUT, _TIMED_OUT, _TIMED_OUT]
    assert min(waits) >= 0.2 - 0.001  # never early
    assert max(waits) < 0.2 + 0.02 + 0.15  # late by the grain, and this machine's scheduling
