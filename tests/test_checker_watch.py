"""The watch checker on histories that must pass and histories that must fail.

A small in-memory store produces the truth (events with revisions, versions, prev_kv) and
faithful stream records for any range, filter and start; each failing case then breaks one
stream the way a buggy server would (skip, duplicate, reorder, wrong start, wrong prev_kv, a
false progress notification, a split revision, a filtered event, a lost acknowledged write) and
the checker must name that kind with the watch op involved. Hypothesis drives random stores,
streams and single mutations.
"""
from __future__ import annotations

import copy
import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from checker import watch
from history_builder import History

KEYS = ["w/k0", "w/k1", "w/k2", "w/k3"]
ALL = ("w/", "w0")


class Store:
    """An MVCC store of a few keys: every write gets the next revision and makes its events."""

    def __init__(self) -> None:
        self.rev = 1
        self.kv: dict[str, list] = {}
        self.events: list[list] = []

    def _event(self, key: str, value) -> list:
        prev = self.kv.get(key)
        if value is None:
            ev = [self.rev, "DELETE", key, None, 0, 0, prev]
            del self.kv[key]
        else:
            create, ver = (prev[2], prev[3] + 1) if prev else (self.rev, 1)
            ev = [self.rev, "PUT", key, value, create, ver, prev]
            self.kv[key] = [value, self.rev, create, ver]
        self.events.append(ev)
        return ev

    def write(self, keys: list[str], value) -> int:
        live = [k for k in keys if value is not None or k in self.kv]
        if not live:
            return self.rev
        self.rev += 1
        for k in live:
            self._event(k, value)
        return self.rev


def matches(ev: list, rng: tuple, filters: list) -> bool:
    lo, hi = rng
    inside = ev[2] == lo if hi is None else lo <= ev[2] < hi
    return inside and not (ev[1] == "PUT" and "NOPUT" in filters) and not (ev[1] == "DELETE" and "NODELETE" in filters)


def record(store: Store, start: int, upto: int | None = None, rng: tuple = ALL, filters: list | None = None,
           prev_kv: bool = True, progress: list[int] | None = None, final: bool = False) -> dict:
    """What a correct server sends a watch from `start` (0: from now) up to revision `upto`."""
    filters = filters or []
    upto = store.rev if upto is None else upto
    created = store.rev if start == 0 else upto
    first = store.rev + 1 if start == 0 else start
    responses: list[dict] = []
    pending_progress = sorted(progress or [])
    by_rev: dict[int, list] = {}
    for ev in store.events:
        if first <= ev[0] <= upto and matches(ev, rng, filters):
            by_rev.setdefault(ev[0], []).append(ev if prev_kv else ev[:6])
    for rev in sorted(by_rev):
        while pending_progress and pending_progress[0] < rev:
            responses.append({"h": pending_progress.pop(0), "progress": True})
        responses.append({"h": upto, "ev": copy.deepcopy(by_rev[rev])})
    responses.extend({"h": p, "progress": True} for p in pending_progress)
    rec = {"start": start, "created": created, "responses": responses, "range": list(rng), "filters": filters,
           "prev_kv": prev_kv, "watcher": "final" if final else 1, "ended": "duration"}
    if final:
        rec["final"] = True
    return rec


def add_watch(h: History, rec: dict, p: int = 50, node: str = "n1") -> int:
    """A watch op with this record; returns the completion's index."""
    final = rec.get("final")
    spec = "final" if final else {"watcher": rec["watcher"], "watch": "x"}
    return h.call(p, "watch", spec, key=rec["range"][0], result=rec, node=node, revision=rec["created"],
                  **({"final": True} if final else {})).index


def scenario(seed: int = 1, writes: int = 30) -> tuple[History, Store]:
    """Writers' ops (puts, two-key puts, deletes) against the store, all acknowledged."""
    rng = random.Random(seed)
    h, s = History(), Store()
    for i in range(writes):
        p = i % 3
        x = rng.random()
        value = 1000 + i
        if x < 0.55:
            k = rng.choice(KEYS)
            h.call(p, "put", value, key=k, revision=s.write([k], value))
        elif x < 0.8:
            ks = sorted(rng.sample(KEYS, 2))
            h.call(p, "mput", [ks, value], revision=s.write(ks, value))
        else:
            k = rng.choice(KEYS)
            existed = k in s.kv
            rev = s.write([k], None)
            h.call(p, "delete", key=k, result=1 if existed else 0, revision=rev)
    return h, s


def finish(h: History, s: Store, nodes: tuple = ("n1", "n2", "n3")) -> None:
    """The recovery phase: final reads of every key, a final watch per member. Each final watch
    ends with a progress notification at the store's revision, as the workload's streams (which
    ask for them every 0.4 s) do: without one, a stream of a store nobody changed would prove
    nothing (the checker says unknown)."""
    for k in KEYS:
        kv = s.kv.get(k)
        h.call(1_000_000, "read", "final", key=k, result=kv[0] if kv else None, revision=s.rev,
               mod_revision=kv[1] if kv else 0, final=True)
    for i, n in enumerate(nodes):
        add_watch(h, record(s, 1, final=True, progress=[s.rev]), p=1_000_001 + i, node=n)


def kinds(r: dict) -> set[str]:
    return set(r["failures"])


def ops_of(r: dict, kind: str) -> set[int]:
    return {i for c in r["failures"][kind]["cases"] for i in c["ops"]}


def test_faithful_streams_of_every_shape_are_valid() -> None:
    h, s = scenario()
    add_watch(h, record(s, 1, upto=20))
    add_watch(h, record(s, 21, progress=[25, s.rev]))
    add_watch(h, record(s, 5, rng=("w/k0", None)))
    add_watch(h, record(s, 3, filters=["NODELETE"], prev_kv=False))
    add_watch(h, record(s, 2, filters=["NOPUT"]))
    add_watch(h, record(s, 0))  # from now: nothing yet
    finish(h, s)
    r = watch.check(h.ops)
    assert r["valid"] is True, r["failures"]
    assert r["store_history"]["from"] == 1 and r["store_history"]["to"] == s.rev
    assert r["streams"] == 6 and r["events_seen"] > 30


def broken(mutate, **rec_kw) -> tuple[dict, int]:
    h, s = scenario()
    rec = record(s, rec_kw.pop("start", 4), **rec_kw)
    mutate(rec, s)
    ix = add_watch(h, rec)
    finish(h, s)
    return watch.check(h.ops), ix


def events_of(rec: dict) -> list[dict]:
    return [r for r in rec["responses"] if r.get("ev")]


def test_a_skipped_event_is_caught() -> None:
    def drop(rec, s):
        rec["responses"].remove(events_of(rec)[3])

    r, ix = broken(drop)
    assert r["valid"] is False and "skipped event" in kinds(r) and ix in ops_of(r, "skipped event")
    assert ix in ops_of(r, "acknowledged write missing from a watcher that covered it")


def test_a_duplicated_event_is_caught() -> None:
    def dup(rec, s):
        evs = events_of(rec)
        rec["responses"].insert(rec["responses"].index(evs[4]) + 1, copy.deepcopy(evs[2]))

    r, ix = broken(dup)
    assert r["valid"] is False and "duplicate event" in kinds(r) and ops_of(r, "duplicate event") == {ix}


def test_events_out_of_order_are_caught() -> None:
    def swap(rec, s):
        evs = events_of(rec)
        i, j = rec["responses"].index(evs[2]), rec["responses"].index(evs[3])
        rec["responses"][i], rec["responses"][j] = rec["responses"][j], rec["responses"][i]

    r, ix = broken(swap)
    assert r["valid"] is False and "out of order" in kinds(r) and ops_of(r, "out of order") == {ix}


def test_a_watch_that_resumed_at_the_wrong_revision_is_caught() -> None:
    def late(rec, s):  # asked for 10, got from the revision after the first one at or above it
        del rec["responses"][0]

    r, ix = broken(late, start=10)
    assert r["valid"] is False and "resumed at the wrong revision" in kinds(r)
    assert ops_of(r, "resumed at the wrong revision") == {ix}
    assert "skipped event" not in kinds(r)

    def early(rec, s):  # asked for 10, got an event from before it first
        rec["responses"].insert(0, {"h": s.rev, "ev": [copy.deepcopy(e) for e in s.events if e[0] == 6]})

    r, ix = broken(early, start=10)
    assert "resumed at the wrong revision" in kinds(r)


def test_a_wrong_prev_kv_is_caught() -> None:
    def wrong(rec, s):
        for resp in events_of(rec):
            for ev in resp["ev"]:
                if ev[6] is not None:
                    ev[6] = [ev[6][0], ev[6][1] - 1, ev[6][2], ev[6][3]]
                    return

    r, ix = broken(wrong)
    assert r["valid"] is False and ops_of(r, "wrong prev_kv") == {ix}


def test_a_wrong_version_is_a_wrong_event() -> None:
    def wrong(rec, s):
        events_of(rec)[1]["ev"][0][5] += 1

    r, ix = broken(wrong)
    assert "wrong event" in kinds(r) and ix in ops_of(r, "wrong event")


def test_a_progress_notification_that_is_not_a_bookmark_is_caught() -> None:
    h, s = scenario()
    rec = record(s, 4, upto=s.rev - 5, progress=[s.rev])  # progress at the end, events up to rev-5 only
    ix = add_watch(h, rec)
    finish(h, s)
    r = watch.check(h.ops)
    assert r["valid"] is False and ops_of(r, "false progress notification") == {ix}

    def early_progress(rec, s):  # a notification for revision 20 before events at or below 20
        rec["responses"].insert(0, {"h": 20, "progress": True})

    r, ix = broken(early_progress)
    assert "false progress notification" in kinds(r) and ix in ops_of(r, "false progress notification")


def two_key_revision(s: Store) -> int:
    return next(e[0] for e in s.events if sum(1 for x in s.events if x[0] == e[0]) == 2)


def test_a_revision_split_across_responses_or_half_delivered_is_caught() -> None:
    def split(rec, s):
        rev = two_key_revision(s)
        resp = next(r for r in events_of(rec) if r["ev"][0][0] == rev)
        i = rec["responses"].index(resp)
        rec["responses"][i:i + 1] = [{"h": resp["h"], "ev": [resp["ev"][0]]}, {"h": resp["h"], "ev": [resp["ev"][1]]}]

    r, ix = broken(split)
    assert r["valid"] is False and ops_of(r, "revision split across responses") == {ix}

    def half(rec, s):
        rev = two_key_revision(s)
        next(r for r in events_of(rec) if r["ev"][0][0] == rev)["ev"].pop()

    r, ix = broken(half)
    assert r["valid"] is False and ops_of(r, "incomplete revision") == {ix}


def test_a_filtered_event_that_arrives_is_caught() -> None:
    def leak(rec, s):
        d = next(e for e in s.events if e[1] == "DELETE" and e[0] >= 4)
        resp = next(r for r in events_of(rec) if r["ev"][0][0] > d[0])
        rec["responses"].insert(rec["responses"].index(resp), {"h": s.rev, "ev": [d[:6]]})

    r, ix = broken(leak, filters=["NODELETE"], prev_kv=False)
    assert r["valid"] is False and ops_of(r, "filter violated") == {ix}


def test_an_acknowledged_write_missing_from_a_watcher_is_caught_without_the_store_history() -> None:
    h, s = scenario()
    rec = record(s, 1)
    victim = events_of(rec)[5]
    rec["responses"].remove(victim)
    ix = add_watch(h, rec)
    r = watch.check(h.ops)  # no recovery phase: no truth to compare with
    assert r["valid"] is False
    kind = "acknowledged write missing from a watcher that covered it"
    writer = next(op.index for op in h.ops if op.type == "ok" and op.extra.get("revision") == victim["ev"][0][0])
    assert ops_of(r, kind) >= {ix, writer}


def test_no_final_watch_is_unknown_not_valid() -> None:
    h, s = scenario()
    add_watch(h, record(s, 1))
    r = watch.check(h.ops)
    assert r["valid"] == "unknown" and "final watch" in r["reason"]


def test_the_store_history_is_checked_against_writes_reads_and_other_members() -> None:
    h, s = scenario()
    finish(h, s, nodes=("n1",))
    other = record(s, 1, final=True)
    events_of(other)[2]["ev"][0][3] = 424242  # a member whose history has a value nobody wrote
    add_watch(h, other, p=1_000_009, node="n2")
    r = watch.check(h.ops)
    assert r["valid"] is False and "members' histories differ" in kinds(r)

    h, s = scenario()
    truth = record(s, 1, final=True)
    events_of(truth)[2]["ev"][0][3] = 424242
    add_watch(h, truth, p=1_000_001)
    r = watch.check(h.ops)
    assert {"event of a value never written", "acknowledged write differs in the store's history"} <= kinds(r)

    h, s = scenario()
    finish(h, s)
    read = next(op for op in h.ops if op.f == "read" and op.type == "ok" and op.value is not None)
    read.value = -1
    r = watch.check(h.ops)
    assert ops_of(r, "final read differs from the watch history") >= {read.index}


def test_an_event_of_a_failed_write_is_caught() -> None:
    h, s = scenario()
    h.invoke(7, "put", 99999, key="w/k1")
    h.fail(7, error="no leader")
    s.write(["w/k1"], 99999)  # ...and yet it is in the store
    finish(h, s)
    r = watch.check(h.ops)
    assert "event of a write that failed" in kinds(r)


def test_compacted_history_is_reported_as_compacted_not_lost() -> None:
    h, s = scenario(writes=40)
    compact = 20
    cancelled = record(s, 5)
    cancelled["responses"] = [{"h": s.rev, "canceled": True, "compact": compact, "reason": "compacted"}]
    add_watch(h, cancelled)
    add_watch(h, record(s, compact))  # resumed at the compaction revision
    for k in KEYS:
        kv = s.kv.get(k)
        h.call(1_000_000, "read", "final", key=k, result=kv[0] if kv else None, revision=s.rev,
               mod_revision=kv[1] if kv else 0, final=True)
    add_watch(h, record(s, compact, final=True), p=1_000_001)  # the final watch starts at the compaction too
    r = watch.check(h.ops)
    assert r["valid"] is True, r["failures"]
    assert r["compacted"]["streams_cancelled"] == 1 and r["compacted"]["history_starts_at"] == compact
    assert "compacted" in r["reason"]


# ------------------------------------------------------------------ hypothesis
stream_shapes = st.tuples(st.integers(0, 40), st.sampled_from([ALL, ("w/k0", None), ("w/k1", "w/k3")]),
                          st.sampled_from([[], ["NOPUT"], ["NODELETE"]]), st.booleans())


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(5, 50), st.lists(stream_shapes, min_size=1, max_size=4))
@example(seed=3120, writes=5, shapes=[(0, ("w/", "w0"), [], False)])  # only deletes of absent keys: no event at all
def test_random_faithful_histories_are_valid(seed: int, writes: int, shapes) -> None:
    h, s = scenario(seed, writes)
    for start, rng, filters, prev_kv in shapes:
        add_watch(h, record(s, min(start, s.rev + 1), rng=rng, filters=filters, prev_kv=prev_kv))
    finish(h, s)
    r = watch.check(h.ops)
    assert r["valid"] is True, r["failures"]


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**32), st.integers(20, 50), st.sampled_from(["drop", "dup", "swap", "value", "prev"]),
       st.data())
def test_any_single_mutation_of_a_stream_is_caught(seed: int, writes: int, how: str, data) -> None:
    h, s = scenario(seed, writes)
    rec = record(s, 1)
    evs = events_of(rec)
    if len(evs) < 3:
        return
    i = data.draw(st.integers(0, len(evs) - 2))
    resps = rec["responses"]
    if how == "drop":
        resps.remove(evs[i])
    elif how == "dup":
        resps.insert(resps.index(evs[i + 1]) + 1, copy.deepcopy(evs[i]))
    elif how == "swap":
        a, b = resps.index(evs[i]), resps.index(evs[i + 1])
        resps[a], resps[b] = resps[b], resps[a]
    elif how == "value":
        ev = evs[i]["ev"][0]
        if ev[1] != "PUT":
            return
        ev[3] = ev[3] + 1
    else:  # a prev_kv from the wrong revision
        ev = evs[i]["ev"][0]
        if ev[6] is None:
            return
        ev[6] = [ev[6][0], ev[6][1] + 1, ev[6][2], ev[6][3]]
    ix = add_watch(h, rec)
    finish(h, s)
    r = watch.check(h.ops)
    assert r["valid"] is False, (how, r)
    assert any(ix in c["ops"] for k in r["failures"].values() for c in k["cases"])


def test_prev_kv_left_out_at_the_compaction_boundary_is_not_a_failure() -> None:
    h, s = scenario(writes=40)
    compact = 20
    add_watch(h, record(s, 10))  # before the compaction: real prev_kvs
    final = record(s, compact, final=True)
    for resp in events_of(final):  # as etcd does: the versions before the compaction are gone
        for ev in resp["ev"]:
            if ev[6] is not None and ev[6][1] < compact:
                ev[6] = None
    add_watch(h, final, p=1_000_001)
    assert watch.check(h.ops)["valid"] is True

    # but a missing prev_kv whose version was never compacted is wrong
    h, s = scenario(writes=40)
    rec = record(s, 10)
    victim = next(ev for resp in events_of(rec) for ev in resp["ev"] if ev[6] is not None and ev[0] > 25)
    victim[6] = None
    ix = add_watch(h, rec)
    finish(h, s)
    r = watch.check(h.ops)
    assert r["valid"] is False and ops_of(r, "wrong prev_kv") == {ix}


def test_a_delete_at_the_compaction_revision_missed_by_a_later_watch_is_compacted_not_lost() -> None:
    """etcd drops deletes at the compaction revision: a watch from C after compacting to C misses them."""
    def build(compact_first: str) -> tuple[History, int]:
        h, s = scenario(writes=40)
        c = next(e[0] for e in s.events if e[1] == "DELETE" and e[0] > 10)
        if compact_first == "workload":
            h.call(5, "compact", 30, result=c, revision=s.rev, compacted_to=c)
        elif compact_first == "nemesis":  # the admin fault's evidence
            h.ops.append(type(h.ops[0])(len(h.ops), "nemesis", "invoke", "start-admin"))
            h.ops.append(type(h.ops[0])(len(h.ops), "nemesis", "ok", "start-admin",
                                        {"compact": {"node": "n1", "compacted_to": c, "physical": True}}))
        elif compact_first == "cancel":  # the compact op timed out; a cancelled watch names its revision
            h.invoke(5, "compact", 30)
            h.info(5)
            cancelled = record(s, 5)
            cancelled["responses"] = [{"h": s.rev, "canceled": True, "compact": c, "reason": "compacted"}]
            add_watch(h, cancelled, p=51)
        rec = record(s, c)
        rec["responses"] = [r for r in rec["responses"] if not (r.get("ev") and r["ev"][0][0] == c)]
        ix = add_watch(h, rec)
        finish(h, s)
        return h, ix

    for how in ("workload", "nemesis", "cancel"):
        h, ix = build(compact_first=how)
        r = watch.check(h.ops)
        assert r["valid"] is True, (how, r["failures"])
        assert r["compacted"]["events_compacted_before_read"] >= 1
    h, ix = build(compact_first="")  # without the compaction it is a loss
    r = watch.check(h.ops)
    assert r["valid"] is False and ix in ops_of(r, "acknowledged write missing from a watcher that covered it")
