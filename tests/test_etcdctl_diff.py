"""Differential tests: the same real-etcdctl scripts against the reference server and real etcd.

Why: a test that checks our server against our own expectations only proves we agree with
ourselves. Here real etcd 3.4 (Debian etcd-server), started on free loopback ports next to a
reference member with the same flags, is the oracle: every step of each script runs on both and
the exit codes, stdout and stderr must match after normalising what legitimately differs (IDs,
ports, timestamps, sizes, raft indexes, version strings; see tests/etcdctl_scripts.py). A
mismatch fails the test with both outputs shown.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from etcdctl_scripts import (
    DiffPair,
    Mismatch,
    Normaliser,
    Result,
    etcdctl,
)
from harness.localproc import ETCDCTL_BIN, LocalMember, free_port
from server.proto.etcdserverpb import rpc_pb2

pytestmark = pytest.mark.etcd

PairFactory = Callable[..., DiffPair]


@pytest.fixture
def pair_factory(member_factory) -> Iterator[PairFactory]:
    """make(extra=[...]) -> a DiffPair: a reference and an etcd member with identical flags."""
    pairs: list[DiffPair] = []

    def make(extra: list[str] | None = None) -> DiffPair:
        flags = list(extra or [])
        with ThreadPoolExecutor(2) as pool:
            fr = pool.submit(member_factory, "reference", extra=flags)
            fe = pool.submit(member_factory, "etcd", extra=flags)
            p = DiffPair(fr.result(), fe.result())
        pairs.append(p)
        return p

    yield make
    for p in pairs:
        p.close()


# ---------------------------------------------------------------------------------------- ids
def test_member_and_cluster_ids_are_derived_like_etcd(member_factory) -> None:
    """Same name, peer URL and cluster token -> the same member and cluster IDs as real etcd."""
    cp, pp = free_port(), free_port()
    seen: dict[str, tuple[Result, Result]] = {}
    for kind in ("etcd", "reference"):
        m = member_factory(kind, name="m1", client_port=cp, peer_port=pp)
        seen[kind] = (etcdctl(m, "member", "list"), etcdctl(m, "endpoint", "status", "-w", "json"))
        m.stop()
    (e_list, e_status), (r_list, r_status) = seen["etcd"], seen["reference"]
    assert e_list.rc == 0 and re.match(r"[0-9a-f]+, started, m1, http://127\.0\.0\.1:\d+, ", e_list.out), e_list.show()
    assert r_list.out == e_list.out, f"member list differs:\nref:  {r_list.show()}\netcd: {e_list.show()}"

    def ids(r: Result) -> tuple[int, int]:
        h = json.loads(r.out)[0]["Status"]["header"]
        return h["cluster_id"], h["member_id"]

    assert ids(r_status) == ids(e_status), f"ref {r_status.out}\netcd {e_status.out}"


# ------------------------------------------------------------------------------------------ kv
def test_put_get_delete_match_etcd(pair_factory: PairFactory) -> None:
    p = pair_factory()
    run = p.run
    run("put", "foo", "bar", contains="OK")  # rev 2
    run("put", "foo", "bar2")  # 3
    run("put", "fop", "x")  # 4
    for k, v in [("a", "1"), ("b", "2"), ("c", "3"), ("ключ", "значение"), ("sp ace", "v w")]:  # 5..9
        run("put", k, v)
    run("put", "--", "dash", "-v")  # 10
    run("put", "stdin-key", input="from stdin\n")  # 11
    run("put", "foo", "bar3", "--prev-kv")  # 12
    run("put", "foo", "bar4", "--prev-kv", "-w", "json")  # 13
    run("put", "newkey", "--ignore-value", rc=1, contains="key not found")
    run("put", "foo", "--ignore-value")  # 14
    run("put", "foo", "bar5", "--ignore-lease")  # 15

    # plain reads and output formats
    run("get", "foo", contains="bar5")
    for fmt in ("json", "fields", "simple"):
        run("get", "foo", "-w", fmt)
    run("get", "foo", "--print-value-only")
    run("get", "foo", "--hex")
    run("get", "", "--from-key", "--hex", "--keys-only")
    run("get", "ключ", "-w", "json")
    run("get", "stdin-key", "--print-value-only")
    run("get", "dash")
    # history
    run("get", "foo", "--rev=1")
    run("get", "foo", "--rev=2", contains="bar")
    run("get", "foo", "--rev=3", "-w", "json")
    run("get", "", "--prefix", "--rev=6")
    run("get", "foo", "--rev=1000", rc=1, contains="future revision")
    # ranges
    run("get", "f", "--prefix")
    run("get", "a", "c")
    run("get", "a", "--from-key")
    run("get", "", "--prefix", "--limit=2", "-w", "json")
    run("get", "", "--from-key", "--limit=3")
    run("get", "", "--prefix", "--keys-only")
    run("get", "", "--prefix", "--keys-only", "-w", "json")
    run("get", "f", "--prefix", "--limit=1", "-w", "fields")  # Count and More
    run("get", "a", "--consistency=s")
    for target in ("KEY", "CREATE", "MODIFY", "VALUE", "VERSION"):
        for order in ("ASCEND", "DESCEND"):
            run("get", "", "--prefix", f"--sort-by={target}", f"--order={order}", "--keys-only")
    run("get", "", "--prefix", "--order=DESCEND", "--limit=2")
    run("get", "", "--prefix", "--sort-by=MODIFY", "--limit=2", "-w", "json")
    run("get", "missing")
    run("get", "missing", "-w", "json")
    run("get", "missing", "--prefix", "-w", "fields")

    # the same range response as protobuf, with the identities cleared
    got = p.each(lambda m: _protobuf(m, "get", "", "--prefix", "--limit=3"))
    assert got[1].count == 9 and len(got[1].kvs) == 3 and got[1].more, got[1]
    if got[0] != got[1]:
        p.mismatches.append(Mismatch("etcdctl get '' --prefix --limit=3 -w protobuf", str(got[0]), str(got[1])))

    # deletes
    run("del", "missing")
    run("del", "foo", "--prev-kv")  # 16
    run("del", "a", "c", "--prev-kv", "-w", "json")  # 17: a, b
    run("del", "f", "--prefix")  # 18: fop
    run("get", "", "--prefix", "--keys-only")
    run("get", "foo", "--rev=15", "-w", "json")
    run("del", "s", "--from-key", "--prev-kv")  # 19: sp ace, stdin-key, ключ
    run("del", "", "--from-key", "-w", "json")  # 20: c, dash
    run("get", "", "--prefix")
    run("get", "", "--prefix", "--rev=19", "-w", "json")
    run("put", "foo", "again")
    run("get", "foo", "-w", "json")  # version 1, new create_revision
    p.check()


def _protobuf(m: LocalMember, *args: str) -> rpc_pb2.RangeResponse:
    """-w protobuf is the RangeResponse itself: parse it and clear the identities."""
    out = subprocess.run(
        [ETCDCTL_BIN, f"--endpoints={m.endpoint}", *args, "-w", "protobuf"],
        capture_output=True, check=True, timeout=30, env=dict(os.environ, ETCDCTL_API="3"),
    ).stdout
    resp = rpc_pb2.RangeResponse.FromString(out)
    resp.header.cluster_id = resp.header.member_id = 0
    return resp


# ----------------------------------------------------------------------------------------- txn
def test_txn_matches_etcd(pair_factory: PairFactory) -> None:
    p = pair_factory()
    run = p.run
    run("put", "k1", "v1")  # 2
    run("put", "k2", "v2")  # 3
    run("put", "k1", "v1b")  # 4

    def txn(compares: list[str], success: list[str], failure: list[str], *flags: str, **kw) -> None:
        # each section is its lines, then an empty line
        script = "".join("".join(line + "\n" for line in sect) + "\n" for sect in (compares, success, failure))
        run("txn", "-i", *flags, input=script, **kw)

    txn(['value("k1") = "v1b"'], ["put k3 v3", "get k1"], ["put k4 v4"], contains="SUCCESS")
    txn(['value("k1") = "nope"'], ["put k3 v3"], ["get k --prefix", "del k2 --prev-kv"], contains="FAILURE")
    txn(['version("k1") = "2"', 'mod("k1") = "4"', 'create("k1") = "2"'], ["get k1"], [], contains="SUCCESS")
    txn(['version("k1") > "5"'], [], ["get k1"], contains="FAILURE")
    txn(['create("k2") = "0"'], ["put k2 reborn"], [], contains="SUCCESS")  # k2 was deleted above
    txn(['mod("k3") < "100"', 'value("k3") != "zz"'], ["del k3 --prev-kv", "put k5 five"], ["put k6 six"])
    txn(['value("missing") = ""'], ["put m 1"], ["put m 2"])
    txn(['value("k1") < "w"', 'value("k1") > "v"'], ["get k1 --print-value-only"], [])
    txn([], ["put e1 1", "put e2 2"], [], contains="SUCCESS")
    txn([], [], [])
    for fmt in ("json", "fields", "simple"):
        txn(['value("k1") = "v1b"'], ["put k7 x", "get k7", "del k7x"], ["get k1"], "-w", fmt)
        txn(['value("k1") = "no"'], [], ["get k --prefix --limit=1", "put k8 y"], "-w", fmt)
    run("get", "", "--prefix", "-w", "json")
    p.check()


def test_errors_and_limits_match_etcd(pair_factory: PairFactory) -> None:
    """Errors: stderr texts (etcd's) and exit codes, with --max-txn-ops and --max-request-bytes."""
    p = pair_factory(["--max-txn-ops=4", "--max-request-bytes=1024"])
    run = p.run
    run("put", "k", "v")  # 2
    run("put", "", "v", rc=1, contains="key is not provided")
    run("get", "", rc=1, contains="key is not provided")
    run("del", "", rc=1, contains="key is not provided")
    run("get", "k", "--rev=3", rc=1, contains="future revision")
    run("get", "k", "--rev=2")
    run("put", "k", "v", "--lease=1234", rc=1, contains="lease not found")
    run("put", "big", "x" * 4096, rc=1, contains="request is too large")
    run("put", "small", "x" * 512)
    run("lease", "grant", "9999999999999", rc=1, contains="too large lease TTL")
    run("lease", "revoke", "1234", rc=1, contains="lease not found")
    run("lease", "keep-alive", "--once", "1234", rc=2, contains="lease not found")
    run("lease", "timetolive", "1234")  # an unknown lease is reported, not an error
    run("compact", "100", rc=1, contains="future revision")
    run("compact", "0")  # accepted, and a no-op

    def txn(success: list[str], **kw) -> None:
        run("txn", "-i", input="\n" + "\n".join(success) + "\n\n\n", **kw)

    txn(["put a 1", "put b 2", "put c 3", "put d 4"], contains="SUCCESS")
    txn(["put a 1", "put b 2", "put c 3", "put d 4", "put e 5"], rc=1, contains="too many operations")
    txn(["get a", "get a", "get a", "get a", "get a"], rc=1, contains="too many operations")
    txn(["put a 1", "put a 2"], rc=1, contains="duplicate key")
    txn(["put a 1", "del a"], rc=1, contains="duplicate key")
    txn(["put b 1", "del a c"], rc=1, contains="duplicate key")
    txn(["del a c", "del b"], contains="SUCCESS")  # overlapping deletes are allowed
    txn(["get a", "get a", "put x 1"], contains="SUCCESS")
    txn(["put z " + "y" * 2000], rc=1, contains="request is too large")
    txn(["put k v --lease=1234"], rc=1, contains="lease not found")
    run("txn", "-i", input='value("x") = "1"\n\nget a --rev=100\n\n\n', rc=1, contains="future revision")
    run("get", "", "--prefix", "-w", "json")
    p.check()


# --------------------------------------------------------------------------------------- watch
def test_watch_matches_etcd(pair_factory: PairFactory) -> None:
    """Historical replay, --prev-kv, ranges, JSON (which shows how events are batched), the
    compacted case and `watch -i`. Each watch is first made to print its replay and only then
    are new writes made: etcd batches a replay with whatever was written before it caught up."""
    p = pair_factory()
    run = p.run
    run("put", "w/a", "1")  # 2
    run("put", "w/b", "1")  # 3
    run("put", "w/a", "2")  # 4
    run("del", "w/b")  # 5
    run("put", "other", "1")  # 6

    watches = []
    for args, replayed in [
        (("--rev=1", "w/", "--prefix"), "DELETE"),
        (("--rev=2", "w/a", "--prev-kv"), "w/a\n2"),
        (("--rev=2", "w/", "w/c"), "DELETE"),
        (("--rev=1", "w/a", "-w", "json"), '"mod_revision":4'),
        (("--rev=3", "--prefix", "w/", "--prev-kv", "-w", "json"), '"mod_revision":5'),
        (("--rev=6", "other"), "other"),
    ]:
        w = p.background("watch", *args)
        w.wait_for(replayed)
        watches.append(w)
    run("put", "w/a", "3")  # 7
    run("put", "w/c", "1")  # 8
    run("put", "other", "2")  # 9
    run("txn", "-i", input="\nput w/a 4\nput w/d 1\ndel w/c\n\n\n", contains="SUCCESS\n\nOK\n\nOK\n\n1")  # 10: 3 events
    run("del", "w/", "--prefix")  # 11
    run("put", "w/a", "end")  # 12
    run("put", "other", "end")  # 13
    for w in watches:
        w.wait_for("ZW5k" if "json" in w.step else "end")  # base64 in JSON
    for w in watches:
        w.finish()

    # compaction: watching from below it is refused, from it is allowed
    run("compact", "8")
    run("watch", "--rev=2", "w/a", rc=5, contains="required revision has been compacted")
    w = p.background("watch", "--rev=8", "w/", "--prefix")
    run("put", "w/y", "end")  # 14
    w.wait_for("w/y")
    w.finish()

    # interactive: commands on stdin, one at a time so the output order is fixed
    i = p.background("watch", "-i")
    i.send("watch --rev=12 w/a")
    i.wait_for("PUT")
    i.send("progress")
    i.wait_for("progress notify")
    i.send("watch")
    i.wait_for("Invalid command", stream="err")
    i.send("get w/a")
    i.wait_for("only support watch", stream="err")
    i.send("watch --prefix x/ --prev-kv --rev=15")
    run("put", "x/1", "a")  # 15
    run("put", "x/1", "b")  # 16
    i.wait_for("x/1", count=3)
    i.send("progress")  # one notification per watch
    i.wait_for("progress notify", count=3)
    i.finish()
    p.check()


# --------------------------------------------------------------------------------------- lease
def test_lease_matches_etcd(pair_factory: PairFactory) -> None:
    p = pair_factory()
    run = p.run
    long = p.grant(100, expect_ttl=100)
    short = p.grant(1, expect_ttl=2)  # below the minimum TTL: raised to it (2 s with defaults)
    third = p.grant(30, expect_ttl=30)
    arg = {"long": p.lease_arg(long), "short": p.lease_arg(short), "third": p.lease_arg(third)}

    def each(step: str, make, **kw) -> tuple[Result, Result]:
        return p.run_each(lambda m: make(m.kind), step, **kw)

    each("put k1 --lease=long", lambda k: ["put", "k1", "v1", f"--lease={arg['long'][k]}"])
    each("put k2 --lease=long", lambda k: ["put", "k2", "v2", f"--lease={arg['long'][k]}"])
    each("put k3 --lease=short", lambda k: ["put", "k3", "v3", f"--lease={arg['short'][k]}"])
    each("put k5 --lease=third", lambda k: ["put", "k5", "v5", f"--lease={arg['third'][k]}"])
    run("put", "k5", "v5b", "--ignore-lease")
    run("put", "k6", "no lease")
    run("get", "k", "--prefix", "-w", "json")
    run("lease", "list")
    run("lease", "list", "-w", "json")
    each("timetolive long --keys", lambda k: ["lease", "timetolive", arg["long"][k], "--keys"], ttl=True)
    each("timetolive long -w json", lambda k: ["lease", "timetolive", arg["long"][k], "--keys", "-w", "json"], ttl=True)
    each("timetolive third", lambda k: ["lease", "timetolive", arg["third"][k], "--keys"], ttl=True)
    each("keep-alive --once long", lambda k: ["lease", "keep-alive", "--once", arg["long"][k]])
    each("keep-alive --once long -w json", lambda k: ["lease", "keep-alive", "--once", arg["long"][k], "-w", "json"])

    # the short lease expires: its key is deleted (a revision of its own), the watch sees it
    w = p.background("watch", "k3", "--prev-kv", "--rev=8")  # the expiry is revision 8
    w.wait_for("DELETE", timeout=15)
    w.finish()
    run("get", "k", "--prefix", "--keys-only")
    run("get", "k3", "--rev=7", "-w", "json")
    each("timetolive short (expired)", lambda k: ["lease", "timetolive", arg["short"][k]])
    run("lease", "list")

    # revoke deletes every key of the lease in one revision
    each("put k4 --lease=long", lambda k: ["put", "k4", "v4", f"--lease={arg['long'][k]}"])
    each("revoke long", lambda k: ["lease", "revoke", arg["long"][k]])
    run("get", "", "--prefix", "-w", "json")
    each("revoke long again", lambda k: ["lease", "revoke", arg["long"][k]], rc=1)
    each("keep-alive --once long (revoked)", lambda k: ["lease", "keep-alive", "--once", arg["long"][k]], rc=2)
    each("timetolive long (revoked)", lambda k: ["lease", "timetolive", arg["long"][k], "-w", "json"])
    each("put --lease=long (revoked)", lambda k: ["put", "k9", "v", f"--lease={arg['long'][k]}"], rc=1)
    # a key moved to another lease, or to none, leaves the old one
    each("put k6 --lease=third", lambda k: ["put", "k6", "v6", f"--lease={arg['third'][k]}"])
    run("put", "k5", "v5c")
    each("timetolive third --keys", lambda k: ["lease", "timetolive", arg["third"][k], "--keys"], ttl=True)
    zero = p.grant(0)
    run("lease", "list")
    each("timetolive zero", lambda k: ["lease", "timetolive", format(zero[0 if k == "reference" else 1], "x")], ttl=True)
    p.check()


# --------------------------------------------------------------------------------- maintenance
def test_maintenance_matches_etcd(pair_factory: PairFactory) -> None:
    p = pair_factory()
    run = p.run
    run("endpoint", "hashkv", "-w", "json")  # empty store: compact_revision -1
    for i in range(3):
        run("put", "a", f"a{i}")  # 2..4
    run("put", "b", "b0")  # 5
    run("del", "a")  # 6
    run("put", "c", "c0")  # 7
    run("put", "a", "again")  # 8
    run("del", "c")  # 9
    run("endpoint", "hashkv")
    run("endpoint", "hashkv", "--rev=4", "-w", "json")

    run("compact", "5", contains="compacted revision 5")
    run("get", "a", "--rev=4", rc=1, contains="required revision has been compacted")
    run("get", "", "--prefix", "--rev=5", "-w", "json")
    run("compact", "5", rc=1, contains="required revision has been compacted")
    run("compact", "3", rc=1, contains="required revision has been compacted")
    run("compact", "50", rc=1, contains="future revision")
    run("endpoint", "hashkv", "--rev=5", rc=1, contains="required revision has been compacted")
    run("endpoint", "hashkv", "--rev=7", "-w", "json")
    run("endpoint", "hashkv", "-w", "json")
    run("endpoint", "hashkv", "--rev=50", rc=1, contains="future revision")
    run("compact", "8", "--physical")
    run("endpoint", "hashkv", "-w", "json")
    run("put", "d", "d0")  # 10
    run("endpoint", "hashkv", "--rev=9")
    run("endpoint", "hashkv")

    run("defrag", contains="Finished defragmenting")
    run("get", "", "--prefix")
    run("endpoint", "status")
    run("endpoint", "status", "-w", "json")
    run("endpoint", "health")
    run("endpoint", "health", "-w", "json")
    run("alarm", "list")
    run("alarm", "disarm")
    run("alarm", "list", "-w", "json")
    run("member", "list")
    run("member", "list", "-w", "json")
    run("move-leader", "1234", rc=1, contains="bad leader transferee")

    # snapshot: same messages; each file ends in the SHA-256 of what precedes it
    p.run_each(lambda m: ["snapshot", "save", os.path.join(m.workdir, "snap.db")], "snapshot save <WORKDIR>/snap.db")
    for m in p.members:
        with open(os.path.join(m.workdir, "snap.db"), "rb") as f:
            data = f.read()
        assert len(data) > 32 and hashlib.sha256(data[:-32]).digest() == data[-32:], f"{m.kind}: bad snapshot trailer"
    p.run_each(lambda m: ["snapshot", "save", os.path.join(m.workdir, "no", "such", "dir", "s.db")],
               "snapshot save into a missing directory", rc=5)
    p.check()


# ------------------------------------------------------------------------------ lock, election
SESSION_KEY = r"/([0-9a-f]{8,16})\b"  # lock and election keys end in the session's lease ID


def _wait_keys(p: DiffPair, prefix: str, n: int, timeout: float = 10.0) -> None:
    """Until both servers hold n keys under prefix (a queued locker or candidate has its key)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = p.each(lambda m: etcdctl(m, "get", prefix, "--prefix", "--keys-only"))
        if all(len(r.out.split()) >= n for r in got):
            return
        time.sleep(0.05)
    p.failures.append(f"timed out waiting for {n} keys under {prefix!r}")


def test_lock_and_election_match_etcd(pair_factory: PairFactory) -> None:
    p = pair_factory()
    run = p.run
    run("lock", "mylock", "--", "sh", "-c", "echo key=$ETCD_LOCK_KEY rev=$ETCD_LOCK_REV",
        learn=SESSION_KEY, contains="rev=2")
    run("get", "mylock", "--prefix", "--keys-only")  # released on exit

    first = p.background("lock", "L")
    first.wait_for("L/")
    second = p.background("lock", "L")  # queued behind first
    _wait_keys(p, "L/", 2)
    listener = p.background("elect", "-l", "E")
    c1 = p.background("elect", "E", "p1")
    c1.wait_for("p1")
    listener.wait_for("p1")
    c2 = p.background("elect", "E", "p2")  # queued behind c1
    _wait_keys(p, "E/", 2)
    run("get", "", "--prefix", "--keys-only", learn=SESSION_KEY)
    assert first.ref.text()[0] and not second.ref.text()[0], "the second locker holds the lock too"

    first.finish(learn=SESSION_KEY)  # SIGTERM: etcdctl unlocks and revokes its session
    second.wait_for("L/")
    c1.finish(learn=SESSION_KEY)
    c2.wait_for("p2")
    listener.wait_for("p2")
    run("get", "", "--prefix", "--keys-only", learn=SESSION_KEY)
    for b in (second, c2, listener):
        b.finish(learn=SESSION_KEY)
    run("get", "", "--prefix", "--keys-only")
    run("get", "", "--prefix", "-w", "json")
    p.check()


# ------------------------------------------------------------------------------------- quota
def test_nospace_alarm_matches_etcd(pair_factory: PairFactory) -> None:
    """Past --quota-backend-bytes: the NOSPACE alarm, what it refuses and allows, and recovery.

    Where the quota is hit depends on the storage engine's file size (bbolt or LMDB), so the
    filling and the cleanup are not compared; everything in between is.
    """
    p = pair_factory(["--quota-backend-bytes=300000"])
    run = p.run
    value = "v" * 50000
    for m in p.members:
        for i in range(60):
            r = etcdctl(m, "put", f"big{i:02d}", value)
            if r.rc != 0:
                break
        assert r.rc == 1 and "database space exceeded" in r.err, f"{m.kind}: the quota never refused a put: {r.show()}"
    run("alarm", "list", contains="alarm:NOSPACE")
    run("alarm", "list", "-w", "json")
    run("endpoint", "status")  # the alarm is in the errors column
    run("endpoint", "health")
    run("put", "x", "y", rc=1, contains="database space exceeded")
    run("txn", "-i", input="\nput x y\n\n\n", rc=1, contains="database space exceeded")
    run("lease", "grant", "100", rc=1, contains="database space exceeded")
    run("get", "big00", "--keys-only")
    run("del", "big00", contains="1")

    # make room: delete, compact, defragment (not compared: how much there is differs)
    for m in p.members:
        assert etcdctl(m, "del", "big", "--prefix").rc == 0
        rev = json.loads(etcdctl(m, "get", "x", "-w", "json").out)["header"]["revision"]
        assert etcdctl(m, "compact", str(rev)).rc == 0
    run("defrag")
    # under the quota again, the alarm still refuses writes, but not a txn without puts
    run("put", "x", "y", rc=1, contains="database space exceeded")
    run("lease", "grant", "100", rc=1, contains="database space exceeded")
    run("txn", "-i", input="\nget x\ndel nothing\n\n\n", contains="SUCCESS")
    # a put in either branch counts, whichever branch runs
    run("txn", "-i", input='value("x") = "y"\n\nput x z\n\ndel x\n\n', rc=1, contains="database space exceeded")
    run("alarm", "disarm", contains="alarm:NOSPACE")
    run("alarm", "list")
    run("put", "x", "y", contains="OK")
    run("lease", "grant", "100", rc=0, contains="granted", extra=[(re.compile(r"lease \w+ granted"), "lease <ID> granted")])
    p.check()


# -------------------------------------------------------------------------------------- auth
def test_auth_commands_match_etcd(pair_factory: PairFactory) -> None:
    """Users, roles and permissions, then the same requests with auth on, as nobody, as a user
    with a role and as root: answers, error texts and exit codes as etcd 3.4 gives them."""
    p = pair_factory()
    run = p.run
    root, alice = "--user=root:rootpw", "--user=alice:secret"
    run("user", "list")
    run("role", "list")
    run("auth", "disable", contains="Authentication Disabled")
    run("role", "get", "root", rc=1, contains="role name not found")
    run("role", "add", "", rc=1, contains="role name is empty")
    run("role", "add", "r1", contains="Role r1 created")
    run("role", "add", "r1", rc=1, contains="role name already exists")
    run("role", "grant-permission", "r1", "readwrite", "foo")
    run("role", "grant-permission", "r1", "read", "bar", "--prefix")
    run("role", "grant-permission", "r1", "write", "baz", "qux")
    run("role", "grant-permission", "r1", "readwrite", "k", "--prefix")
    run("role", "grant-permission", "r1", "read", "foo")  # replaces readwrite
    run("role", "get", "r1")
    run("role", "get", "r1", "-w", "json")
    run("role", "revoke-permission", "r1", "nothere", rc=1, contains="permission is not granted")
    run("role", "revoke-permission", "r1", "baz", "qux", contains="revoked")
    run("role", "grant-permission", "nosuch", "read", "x", rc=1, contains="role name not found")
    run("user", "add", "alice:secret", contains="User alice created")
    run("user", "add", "alice:again", rc=1, contains="user name already exists")
    run("user", "add", "bob", "--no-password", contains="User bob created")
    run("user", "grant-role", "alice", "r1")
    run("user", "grant-role", "alice", "nosuch", rc=1, contains="role name not found")
    run("user", "grant-role", "nobody", "r1", rc=1, contains="user name not found")
    run("user", "revoke-role", "alice", "r2", rc=1, contains="role is not granted")
    run("user", "get", "alice")
    run("user", "get", "nobody", rc=1, contains="user name not found")
    run("user", "delete", "nobody", rc=1, contains="user name not found")
    run("auth", "enable", rc=1, contains="root user does not exist")
    run("user", "add", "root:rootpw")
    run("auth", "enable", contains="Authentication Enabled")  # etcdctl adds and grants the root role
    run("user", "list", "-w", "json", root)
    run("role", "list", root)
    # nobody
    run("put", "foo", "1", rc=1, contains="user name is empty")
    run("get", "foo", rc=1, contains="user name is empty")
    run("member", "list", "-w", "json", extra=[(re.compile(r'"(ID|member_id|cluster_id)":\d+'), r'"\1":<ID>')])
    # a user with role r1: read foo and bar*, read and write k*
    run("put", "foo", "1", root, contains="OK")
    run("get", "foo", alice, contains="1")
    run("get", "foo", "--user=alice:wrong", rc=2, contains="authentication failed")
    run("get", "bar1", alice)
    run("put", "k1", "v", alice, contains="OK")
    run("get", "k", "--prefix", alice, contains="k1")
    run("del", "k1", "--prev-kv", alice)
    run("put", "bar1", "x", alice, rc=1, contains="permission denied")
    run("put", "foo", "2", alice, rc=1, contains="permission denied")
    run("del", "foo", alice, rc=1, contains="permission denied")
    run("get", "", "--prefix", alice, rc=1, contains="permission denied")
    run("get", "baz", alice, rc=1, contains="permission denied")
    run("lock", "mylock", alice, rc=1, contains="permission denied")
    run("watch", "baz", alice, rc=5, contains="watch is canceled by the server")
    run("member", "add", "x", "--peer-urls=http://127.0.0.1:1", alice, rc=1, contains="permission denied")
    run("endpoint", "hashkv", alice, rc=1, contains="auth: permission denied")
    run("defrag", alice, rc=1, contains="auth: permission denied")
    run("alarm", "list", alice)
    run("user", "list", alice, rc=1, contains="permission denied")
    run("user", "get", "alice", alice)
    run("user", "get", "root", alice, rc=1, contains="permission denied")
    run("role", "get", "r1", alice)
    run("role", "get", "root", alice, rc=1, contains="permission denied")
    run("role", "add", "r9", alice, rc=1, contains="permission denied")
    run("auth", "disable", alice, rc=1, contains="permission denied")
    # root: the root user and role cannot be taken away while auth is on
    run("user", "delete", "root", root, rc=1, contains="invalid auth management")
    run("role", "delete", "root", root, rc=1, contains="invalid auth management")
    run("user", "revoke-role", "root", "root", root, rc=1, contains="invalid auth management")
    run("role", "revoke-permission", "r1", "foo", root)
    run("get", "foo", alice, rc=1, contains="permission denied")  # takes effect at once
    run("role", "delete", "r1", root, contains="Role r1 deleted")
    run("user", "get", "alice", root)  # the role is gone from its users too
    run("get", "bar1", alice, rc=1, contains="permission denied")
    run("auth", "disable", root, contains="Authentication Disabled")
    run("get", "foo", contains="1")
    p.check()


# ------------------------------------------------------------------------------ normalisation
def test_normalisation_hides_identities_but_not_behaviour() -> None:
    """The normaliser must not be so lenient that different behaviour compares equal."""
    a, b = Normaliser(), Normaliser()
    a.name(0x1234ABCD5678EF01, "<MEMBER>")
    b.name(0x0FEDCBA987654321, "<MEMBER>")
    same = ('{"header":{"member_id":%d,"revision":7},"ts":"2024-01-01T00:00:00Z"}\n127.0.0.1:%d, %x, 3.4.23, '
            "20 kB, true, false, 2, 14, 14, ")
    ra = a((same % (0x1234ABCD5678EF01, 40001, 0x1234ABCD5678EF01)).replace("3.4.23", "3.5.0"))
    rb = b(same % (0x0FEDCBA987654321, 40002, 0x0FEDCBA987654321))
    assert ra == rb, (ra, rb)
    for x, y in [
        ('"revision":7', '"revision":8'),
        ("k1\nv1\n", "k1\nv2\n"),
        ("Error: etcdserver: key is not provided", "Error: etcdserver: key not found"),
        ('"hash":1', '"hash":2'),
        ('"raft_term":2', '"raft_term":3'),
        ("lease 1234abcd5678ef01", "lease 1234abcd5678ef02"),
    ]:
        assert a(x) != b(y), (x, y)


# ----------------------------------------------------------------------------------- restart
def test_state_after_a_crash_matches_etcd(pair_factory: PairFactory) -> None:
    """SIGKILL both right after acknowledged writes, start again: the same data, history,
    compaction point, leases, raft term and revision sequence."""
    p = pair_factory()
    run = p.run
    run("put", "a", "1")  # 2
    run("put", "a", "2")  # 3
    run("put", "b", "1")  # 4
    run("del", "b")  # 5
    run("compact", "3")
    lease = p.grant(60)
    p.run_each(lambda m: ["put", "k", "v", f"--lease={p.lease_arg(lease)[m.kind]}"], "put k --lease")  # 6
    run("txn", "-i", input="\nput t1 x\nput t2 y\n\n\n", contains="SUCCESS")  # 7
    for m in p.members:
        m.kill()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda m: m.start(), p.members))
    run("get", "", "--prefix", "-w", "json")
    run("get", "a", "--rev=2", rc=1, contains="required revision has been compacted")
    run("get", "a", "--rev=3", "-w", "json")
    run("endpoint", "hashkv", "--rev=5", "-w", "json")  # before k: its lease ID differs per server
    run("endpoint", "status", "-w", "json")  # a new raft term
    run("lease", "list")
    p.run_each(lambda m: ["lease", "timetolive", p.lease_arg(lease)[m.kind], "--keys"], "timetolive", ttl=True)
    run("put", "c", "1", "-w", "json")  # 8
    w = p.background("watch", "--rev=4", "a", "z")
    w.wait_for("c\n1")
    w.finish()
    run("compact", "3", rc=1, contains="required revision has been compacted")
    p.check()
