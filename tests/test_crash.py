"""Crash safety of the reference server, with real processes, real SIGKILL and real fsync.

Why: the server promises that a write acknowledged to a client was fsynced to its WAL first, so
no crash may lose it; that a torn WAL tail (a crash during a write) is repaired while damage
anywhere else stops the server instead of silently dropping history; and that leases, the
compaction point, watch history and alarms come back after a restart. Real etcd runs the
acknowledged-writes kill test too, as a yardstick for the test itself.
"""
from __future__ import annotations

import glob
import os
import random
import re
import struct
import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest

from harness.localproc import LocalMember
from server.proto.etcdserverpb import rpc_pb2 as pb
from server.proto.etcdserverpb import rpc_pb2_grpc as rpcgrpc

# the WAL record header (server/wal.py): u32 length, u32 crc, u8 type, little-endian
_HEADER = struct.Struct("<IIB")
_ENTRY = 2
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]


# ---------------------------------------------------------------- helpers
def channel(m: LocalMember) -> grpc.Channel:
    return grpc.insecure_channel(m.endpoint, options=_CHANNEL_OPTIONS)


def wal_segments(m: LocalMember) -> list[str]:
    return sorted(glob.glob(os.path.join(m.data_dir, "member", "wal", "*.wal")))


def wal_records(path: str) -> list[tuple[int, int, int]]:
    """(offset, data length, type) of every record of a segment, parsed here independently."""
    with open(path, "rb") as f:
        buf = f.read()
    out, off = [], 0
    while off + _HEADER.size <= len(buf):
        length, _crc, rtype = _HEADER.unpack_from(buf, off)
        if off + _HEADER.size + length > len(buf):
            break
        out.append((off, length, rtype))
        off += _HEADER.size + length
    return out


def batched_entries(m: LocalMember) -> int:
    """Entries in the WAL holding several requests (their data starts with the batch mark)."""
    from server.proto.raftpb import raft_pb2

    n = 0
    for path in wal_segments(m):
        with open(path, "rb") as f:
            buf = f.read()
        for off, length, rtype in wal_records(path):
            if rtype == _ENTRY:
                e = raft_pb2.Entry.FromString(buf[off + _HEADER.size : off + _HEADER.size + length])
                n += e.Data[:1] == b"\x00"
    return n


def read_log(m: LocalMember) -> str:
    with open(m.log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def get_all(m: LocalMember, prefix: bytes) -> dict[bytes, pb.KeyValue]:
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    with channel(m) as ch:
        resp = rpcgrpc.KVStub(ch).Range(pb.RangeRequest(key=prefix, range_end=end), timeout=10)
    return {kv.key: kv for kv in resp.kvs}


def put(m: LocalMember, key: bytes, value: bytes, lease: int = 0) -> pb.PutResponse:
    with channel(m) as ch:
        return rpcgrpc.KVStub(ch).Put(pb.PutRequest(key=key, value=value, lease=lease), timeout=10)


def last_recovery(m: LocalMember) -> tuple[int, int]:
    """(applied index, entries replayed) from the newest 'recovered:' line of the server's log."""
    found = re.findall(r"recovered: applied index (\d+) \((\d+) replayed from wal\)", read_log(m))
    assert found, f"no recovery line in the log: {m.tail_log()}"
    return int(found[-1][0]), int(found[-1][1])


# ------------------------------------------------------- acknowledged puts
@dataclass
class Writer:
    """One client putting unique keys; knows exactly which puts were acknowledged."""

    idx: int
    endpoint: str
    stop: threading.Event
    acked: list[tuple[bytes, bytes, int]] = field(default_factory=list)  # key, value, revision
    uncertain: dict[bytes, bytes] = field(default_factory=dict)  # errored or in flight at a crash
    errors: int = 0

    def run(self) -> None:
        with grpc.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS) as ch:
            kv = rpcgrpc.KVStub(ch)
            n = 0
            while not self.stop.is_set():
                key = f"crash/w{self.idx}/{n:06d}".encode()
                value = f"value-{self.idx}-{n}-{random.getrandbits(32):08x}".encode()
                n += 1
                try:
                    resp = kv.Put(pb.PutRequest(key=key, value=value), timeout=5)
                except grpc.RpcError:
                    self.uncertain[key] = value
                    self.errors += 1
                    time.sleep(0.02)
                    continue
                self.acked.append((key, value, resp.header.revision))


def acked_count(writers: list[Writer]) -> int:
    return sum(len(w.acked) for w in writers)


def run_kill_rounds(m: LocalMember, rounds: int, seed: int, n_writers: int = 4) -> list[Writer]:
    """Writers put while the server is SIGKILLed and restarted `rounds` times at random moments."""
    rng = random.Random(seed)
    stop = threading.Event()
    writers = [Writer(i, m.endpoint, stop) for i in range(n_writers)]
    threads = [threading.Thread(target=w.run, name=f"writer-{w.idx}", daemon=True) for w in writers]
    for t in threads:
        t.start()
    try:
        for r in range(rounds):
            before = acked_count(writers)
            deadline = time.monotonic() + 10
            time.sleep(rng.uniform(0.3, 0.9))
            while acked_count(writers) < before + 20 and time.monotonic() < deadline:
                time.sleep(0.05)  # make sure this round has writes in progress before the kill
            assert acked_count(writers) >= before + 20, f"round {r}: writes did not resume after restart"
            m.kill()
            m.start()
        before = acked_count(writers)
        deadline = time.monotonic() + 10
        while acked_count(writers) < before + 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert acked_count(writers) >= before + 20, "no writes acknowledged after the last restart"
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    return writers


def check_acknowledged(m: LocalMember, writers: list[Writer]) -> None:
    """Every acknowledged put is there with its value and revision; nothing unknown appeared."""
    stored = get_all(m, b"crash/")
    revs: list[int] = []
    for w in writers:
        last = 0
        for key, value, rev in w.acked:
            assert rev > last, f"writer {w.idx}: revision {rev} for {key!r} not above the previous {last}"
            last = rev
            revs.append(rev)
            kv = stored.get(key)
            assert kv is not None, f"acknowledged put of {key!r} (revision {rev}) lost"
            assert kv.value == value, f"{key!r}: stored {kv.value!r}, acknowledged {value!r}"
            assert kv.mod_revision == rev == kv.create_revision, f"{key!r}: stored at {kv.mod_revision}, acked {rev}"
    assert len(set(revs)) == len(revs), "two acknowledged puts share a revision"
    known = {k: v for w in writers for k, v, _ in w.acked}
    for w in writers:
        known.update(w.uncertain)
    for key, kv in stored.items():
        assert key in known, f"{key!r} was never written"
        assert kv.value == known[key], f"{key!r}: stored {kv.value!r}, written {known[key]!r}"


@pytest.mark.parametrize(
    "kind,extra",
    [
        pytest.param("reference", [], id="reference"),
        pytest.param("reference", ["--snapshot-count=50", "--max-wals=2"], id="reference-snapshots"),
        pytest.param("etcd", [], id="etcd"),
    ],
)
def test_acknowledged_puts_survive_sigkill(member_factory, kind: str, extra: list[str]) -> None:
    m = member_factory(kind, extra=extra)
    seed = random.randrange(1 << 30)
    writers = run_kill_rounds(m, rounds=3, seed=seed)
    assert acked_count(writers) >= 100, f"too few acknowledged puts to mean anything (seed {seed})"
    check_acknowledged(m, writers)
    if "--snapshot-count=50" in extra:
        assert "snapshot at index" in read_log(m), "no snapshot was taken during the run"
    if kind == "reference" and not extra:
        # concurrent writers share raft entries (server/entrybatch.py): the kills hit those too
        assert batched_entries(m) > 0, "no batched entry in the WAL: the test did not cover batches"
    # and once more after a clean restart
    m.restart()
    check_acknowledged(m, writers)


# ------------------------------------------------------------ WAL damage
def _fill(m: LocalMember, n: int) -> dict[bytes, int]:
    revs = {}
    for i in range(n):
        key = f"wal/{i:03d}".encode()
        revs[key] = put(m, key, b"v" + key).header.revision
    return revs


@pytest.mark.parametrize("damage", ["cut", "unwritten-sectors"])
def test_torn_wal_tail_is_repaired(member_factory, damage: str) -> None:
    """cut: the file ends in the middle of its last record. unwritten-sectors: the last entry
    (a large value) and everything after it reads as zeros, as sectors the disk never wrote."""
    m = member_factory("reference")
    revs = _fill(m, 20)
    if damage == "unwritten-sectors":
        revs[b"wal/big"] = put(m, b"wal/big", b"B" * 1500).header.revision
    m.kill()
    seg = wal_segments(m)[-1]
    size = os.path.getsize(seg)
    if damage == "cut":
        off, length, _ = wal_records(seg)[-1]
        cut = off + _HEADER.size + length // 2
        assert cut < size
        os.truncate(seg, cut)
    else:
        off, length, _ = [r for r in wal_records(seg) if r[2] == _ENTRY][-1]
        assert length > 1500
        with open(seg, "r+b") as f:
            f.seek(off + _HEADER.size + 100)
            f.write(bytes(size - (off + _HEADER.size + 100)))
    m.start()
    log = read_log(m)
    assert "repaired torn tail" in log and os.path.basename(seg) in log, m.tail_log()
    stored = get_all(m, b"wal/")
    for key, rev in revs.items():
        if key == b"wal/big" and key not in stored:
            continue  # the torn entry itself may be gone
        assert stored[key].mod_revision == rev
        assert stored[key].value == (b"B" * 1500 if key == b"wal/big" else b"v" + key)
    # still takes writes, and they survive another crash
    after = put(m, b"wal/after", b"x").header.revision
    assert after > max(kv.mod_revision for kv in stored.values())
    m.kill()
    m.start()
    assert get_all(m, b"wal/")[b"wal/after"].mod_revision == after


def test_torn_last_entry_keeps_the_server_writable(member_factory) -> None:
    """Cut through the last entry record itself: only that entry may be lost, and the log must
    go on taking writes (the backend may already hold the torn entry) that survive a crash."""
    m = member_factory("reference")
    revs = _fill(m, 20)
    time.sleep(0.3)  # let the backend commit its batch, so it may be ahead of the cut WAL
    m.kill()
    seg = wal_segments(m)[-1]
    off, length, _ = [r for r in wal_records(seg) if r[2] == _ENTRY][-1]
    os.truncate(seg, off + _HEADER.size + length // 2)
    m.start()
    assert "repaired torn tail" in read_log(m)
    stored = get_all(m, b"wal/")
    last_key = max(revs, key=revs.get)
    for key, rev in revs.items():
        if key == last_key and key not in stored:
            continue  # the torn entry itself may go
        assert stored[key].mod_revision == rev
    with channel(m) as ch:
        kv = rpcgrpc.KVStub(ch)
        new = {}
        for i in range(5):
            key = f"wal/new{i}".encode()
            new[key] = kv.Put(pb.PutRequest(key=key, value=b"n"), timeout=5).header.revision
    assert min(new.values()) > max(kv.mod_revision for kv in stored.values())
    m.kill()
    m.start()
    stored = get_all(m, b"wal/")
    for key, rev in new.items():
        assert key in stored and stored[key].mod_revision == rev, f"acknowledged {key!r} lost after restart"


@pytest.mark.parametrize("damage", ["data", "length", "record-with-zero-sector"])
def test_corrupt_wal_record_refuses_to_start(member_factory, damage: str) -> None:
    """One flipped byte in a record in the middle of the last segment, with acknowledged records
    after it, is corruption, not a torn tail: it must stop the server, whether it hits the data,
    the length field (the record then seems to run past the end of the file) or a record whose
    data holds a whole sector of zeros (which looks like an unwritten sector)."""
    m = member_factory("reference")
    _fill(m, 10)
    if damage == "record-with-zero-sector":
        put(m, b"wal/zeros", bytes(2048))
    _fill(m, 20)
    m.kill()
    seg = wal_segments(m)[-1]
    entries = [r for r in wal_records(seg) if r[2] == _ENTRY]
    if damage == "record-with-zero-sector":
        off, length, _ = next(r for r in entries if r[1] > 2048)
        pos = off + _HEADER.size + 10
    elif damage == "length":
        off, length, _ = entries[len(entries) // 2]
        pos = off + 2  # the third byte of the length: the record now claims a megabyte or more
    else:
        off, length, _ = entries[len(entries) // 2]  # an entry in the middle, far from the tail
        pos = off + _HEADER.size + length // 2
    with open(seg, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x10]))
        f.flush()
        os.fsync(f.fileno())
    size = os.path.getsize(seg)
    log_start = os.path.getsize(m.log_path)
    m.start(wait=False)
    rc = m.proc.wait(10)
    assert rc != 0
    out = read_log(m)[log_start:]
    assert seg in out and f"offset {off}" in out, out
    assert os.path.getsize(seg) == size, "the corrupt segment was modified"


# ---------------------------------------------------------- restart state
def _watch_events(m: LocalMember, key: bytes, start: int, want: int, timeout: float = 10) -> tuple[list, int]:
    """Events of a watch on key from start (until `want` arrive), and its compact_revision."""
    req = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, start_revision=start))
    done = threading.Event()

    def reqs():
        yield req
        done.wait(timeout)

    events: list = []
    compact = 0
    with channel(m) as ch:
        stream = rpcgrpc.WatchStub(ch).Watch(reqs(), timeout=timeout)
        try:
            for resp in stream:
                if resp.compact_revision:
                    compact = resp.compact_revision
                    break
                events.extend(resp.events)
                if len(events) >= want:
                    break
        finally:
            done.set()
            stream.cancel()
    return events, compact


@pytest.mark.parametrize("kind", ["reference", "etcd"])
def test_state_survives_restart(member_factory, kind: str) -> None:
    m = member_factory(kind)
    with channel(m) as ch:
        lease_stub = rpcgrpc.LeaseStub(ch)
        granted_at = time.monotonic()
        lease = lease_stub.LeaseGrant(pb.LeaseGrantRequest(TTL=20), timeout=5)
    put(m, b"leased", b"x", lease=lease.ID)
    hist = [put(m, b"hist", f"v{i}".encode()).header.revision for i in range(5)]
    compact_at = hist[2]
    with channel(m) as ch:
        rpcgrpc.KVStub(ch).Compact(pb.CompactionRequest(revision=compact_at, physical=True), timeout=10)
        maint = rpcgrpc.MaintenanceStub(ch)
        maint.Alarm(
            pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, memberID=0, alarm=pb.AlarmType.NOSPACE), timeout=5
        )
    time.sleep(max(0.0, granted_at + 3.5 - time.monotonic()))
    with channel(m) as ch:
        ttl_before = rpcgrpc.LeaseStub(ch).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID), timeout=5).TTL
    assert ttl_before <= 17
    m.kill()
    m.start()
    with channel(m) as ch:
        kv = rpcgrpc.KVStub(ch)
        # the lease is back with its clock restarted, and its key with it
        ttl = rpcgrpc.LeaseStub(ch).LeaseTimeToLive(pb.LeaseTimeToLiveRequest(ID=lease.ID, keys=True), timeout=5)
        assert ttl.grantedTTL == 20
        assert 19 <= ttl.TTL <= 22, ttl
        assert list(ttl.keys) == [b"leased"]
        got = kv.Range(pb.RangeRequest(key=b"leased"), timeout=5)
        assert got.kvs[0].lease == lease.ID
        # the compaction point is still there
        with pytest.raises(grpc.RpcError) as e:
            kv.Range(pb.RangeRequest(key=b"hist", revision=hist[1]), timeout=5)
        assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "required revision has been compacted" in e.value.details()
        assert kv.Range(pb.RangeRequest(key=b"hist", revision=compact_at), timeout=5).kvs[0].value == b"v2"
        # alarms are still raised: puts are refused, the alarm is listed
        alarms = rpcgrpc.MaintenanceStub(ch).Alarm(pb.AlarmRequest(action=pb.AlarmRequest.GET), timeout=5).alarms
        assert [a.alarm for a in alarms] == [pb.AlarmType.NOSPACE]
        with pytest.raises(grpc.RpcError) as e:
            kv.Put(pb.PutRequest(key=b"blocked", value=b"x"), timeout=5)
        assert "database space exceeded" in e.value.details()
    # a watch from an old revision replays the history after the compaction point
    events, compact = _watch_events(m, b"hist", compact_at, want=3)
    assert compact == 0
    assert [(ev.kv.value, ev.kv.mod_revision) for ev in events] == [(b"v2", hist[2]), (b"v3", hist[3]), (b"v4", hist[4])]
    _, compact = _watch_events(m, b"hist", hist[1], want=1)
    assert compact == compact_at


# ----------------------------------------------------- locking, clean stop
def test_second_server_on_same_data_dir_refuses(member_factory) -> None:
    m = member_factory("reference")
    put(m, b"first", b"1")
    other = LocalMember("reference", m.workdir, name=m.name)
    log_start = os.path.getsize(m.log_path)
    other.start(wait=False)
    try:
        rc = other.proc.wait(20)
    finally:
        other.kill()
    assert rc != 0
    assert "in use" in read_log(m)[log_start:]
    # the first server is unharmed
    put(m, b"second", b"2")
    assert set(get_all(m, b"f")) == {b"first"}
    m.kill()
    m.start()
    assert get_all(m, b"second")[b"second"].value == b"2"


def test_sigterm_exits_cleanly_and_restart_replays_nothing(member_factory) -> None:
    m = member_factory("reference")
    revs = _fill(m, 30)
    rc = m.stop()
    assert rc == 0, m.tail_log()
    m.start()
    applied, replayed = last_recovery(m)
    assert applied >= 30
    assert replayed == 0, f"{replayed} entries replayed after a clean stop"
    stored = get_all(m, b"wal/")
    assert {k: kv.mod_revision for k, kv in stored.items()} == revs
