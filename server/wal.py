"""Write-ahead log: append-only segment files of CRC-checked records, fsynced before acknowledging.

Layout: <dir>/<seq:016x>-<index:016x>.wal, where index is the first raft index the segment may
hold. A record is a 9-byte header (u32 data length, u32 CRC-32 of length+type+data, u8 type)
followed by data. Every segment opens with the metadata, the hard state and the latest
snapshot marker, so a segment is readable on its own after older ones are purged.

On open, records are replayed from every segment. A damaged record at the very tail of the last
segment is a torn write (it runs past the end of the file, or a whole sector of it is zeros:
the device never wrote it); it is truncated and logged. Damage anywhere else is corruption, and
opening refuses with the file and offset: an acknowledged write may be behind it.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable

from server.fsutil import fsync_dir
from server.proto.raftpb import raft_pb2
from server.proto.walpb import record_pb2

log = logging.getLogger("etcdproof.wal")

HEADER = struct.Struct("<IIB")
CRC_PREFIX = struct.Struct("<IB")
SECTOR = 512
SEGMENT_BYTES = 64 << 20

METADATA, ENTRY, STATE, SNAPSHOT = 1, 2, 3, 4
_TYPES = {METADATA, ENTRY, STATE, SNAPSHOT}

Entry = raft_pb2.Entry
HardState = raft_pb2.HardState
WalSnapshot = record_pb2.Snapshot


class WALCorruptError(Exception):
    """A record that is not a torn tail failed its checks; the server must not start."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"wal: corrupt record in {path} at offset {offset}: {reason}")
        self.path, self.offset, self.reason = path, offset, reason


def segment_name(seq: int, index: int) -> str:
    return f"{seq:016x}-{index:016x}.wal"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    if not name.endswith(".wal") or len(name) != 37 or name[16] != "-":
        return None
    try:
        return int(name[:16], 16), int(name[17:33], 16)
    except ValueError:
        return None


def encode_record(rtype: int, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(CRC_PREFIX.pack(len(data), rtype)))
    return HEADER.pack(len(data), crc, rtype) + data


_RECORD_CANDIDATE = re.compile(rb"(?s)(?=.{8}[\x01-\x04])")  # a known type byte 8 bytes on


def _intact_record_after(buf: bytes, start: int) -> int | None:
    """Offset of the first record at or after start whose CRC checks out, or None.

    A torn write leaves nothing intact behind it, so damage followed by an intact record is
    corruption of data that was durable (and acknowledged), never a torn tail to cut off.
    """
    n = len(buf)
    for m in _RECORD_CANDIDATE.finditer(buf, start):
        p = m.start()
        length, crc, rtype = HEADER.unpack_from(buf, p)
        end = p + HEADER.size + length
        if end <= n and zlib.crc32(buf[p + HEADER.size : end], zlib.crc32(CRC_PREFIX.pack(length, rtype))) == crc:
            return p
    return None


def _has_zero_sector(buf: bytes, start: int, end: int) -> bool:
    """Whether some sector-aligned chunk of buf[start:end] is all zeros (an unwritten sector)."""
    pos = start
    end = min(end, len(buf))
    while pos < end:
        nxt = min((pos // SECTOR + 1) * SECTOR, end)
        if buf.count(0, pos, nxt) == nxt - pos:
            return True
        pos = nxt
    return False


@dataclass
class Segment:
    path: str
    seq: int
    index: int


@dataclass
class ReadResult:
    metadata: bytes
    hard_state: HardState
    snapshot: WalSnapshot
    entries: list[Entry]
    truncated: list[str] = field(default_factory=list)  # descriptions of torn tails removed


def scan_segment(path: str, buf: bytes, is_last: bool) -> tuple[list[tuple[int, bytes, int]], int | None]:
    """Parse records; returns ([(type, data, offset)], offset to truncate at or None)."""
    records = []
    off = 0
    n = len(buf)
    while off < n:
        if n - off < HEADER.size:
            if is_last:
                return records, off
            raise WALCorruptError(path, off, "short record header")
        length, crc, rtype = HEADER.unpack_from(buf, off)
        end = off + HEADER.size + length
        if end > n:
            if is_last and _intact_record_after(buf, off + 1) is None:
                return records, off
            raise WALCorruptError(path, off, f"record of {length} bytes runs past end of file")
        data = buf[off + HEADER.size : end]
        good = rtype in _TYPES and zlib.crc32(data, zlib.crc32(CRC_PREFIX.pack(length, rtype))) == crc
        if not good:
            # zero-filled tail (never written) or a record with an unwritten sector: torn
            torn = _has_zero_sector(buf, off, end) or buf.count(0, off) == n - off
            if is_last and torn and _intact_record_after(buf, off + 1) is None:
                return records, off
            reason = "crc mismatch" if rtype in _TYPES else f"unknown record type {rtype}"
            raise WALCorruptError(path, off, reason)
        records.append((rtype, data, off))
        off = end
    return records, None


def list_segments(wal_dir: str) -> list[Segment]:
    segs = []
    for name in os.listdir(wal_dir):
        parsed = parse_segment_name(name)
        if parsed is not None:
            segs.append(Segment(os.path.join(wal_dir, name), *parsed))
    segs.sort(key=lambda s: s.seq)
    for a, b in zip(segs, segs[1:]):
        if b.seq != a.seq + 1:
            raise WALCorruptError(b.path, 0, f"missing segment between {a.seq:016x} and {b.seq:016x}")
    return segs


def read_wal(wal_dir: str, repair: bool = True) -> ReadResult:
    """Replay every segment; truncate a torn tail (when repair) or raise WALCorruptError."""
    segs = list_segments(wal_dir)
    if not segs:
        raise WALCorruptError(wal_dir, 0, "no wal segment files")
    metadata: bytes | None = None
    hs = HardState()
    snap = WalSnapshot(index=0, term=0)
    all_entries: list[Entry] = []
    truncated = []
    for i, seg in enumerate(segs):
        with open(seg.path, "rb") as f:
            buf = f.read()
        is_last = i == len(segs) - 1
        records, cut = scan_segment(seg.path, buf, is_last)
        for rtype, data, off in records:
            try:
                if rtype == METADATA:
                    if metadata is not None and data != metadata:
                        raise WALCorruptError(seg.path, off, "metadata differs from earlier segments")
                    metadata = data
                elif rtype == ENTRY:
                    all_entries.append(Entry.FromString(data))
                elif rtype == STATE:
                    hs = HardState.FromString(data)
                elif rtype == SNAPSHOT:
                    s = WalSnapshot.FromString(data)
                    if s.index >= snap.index:
                        snap = s
            except WALCorruptError:
                raise
            except Exception as e:  # protobuf decode error behind a valid CRC
                raise WALCorruptError(seg.path, off, f"undecodable record: {e}") from e
        if cut is not None:
            what = f"{seg.path}: torn record at offset {cut}, truncated {len(buf) - cut} bytes"
            truncated.append(what)
            if repair:
                log.warning("wal: %s", what)
                with open(seg.path, "r+b") as f:
                    f.truncate(cut)
                    os.fsync(f.fileno())
    if metadata is None:
        raise WALCorruptError(segs[0].path, 0, "no metadata record")
    entries: list[Entry] = []
    for e in all_entries:
        if e.Index <= snap.index:
            continue
        first = snap.index + 1
        if e.Index > first + len(entries):
            raise WALCorruptError(segs[-1].path, 0, f"missing entries before index {e.Index}")
        del entries[e.Index - first :]  # a later record at an index replaces the rest (raft overwrite)
        entries.append(e)
    return ReadResult(metadata=metadata, hard_state=hs, snapshot=snap, entries=entries, truncated=truncated)


class WAL:
    """Appends records to the newest segment; sync() makes everything appended durable."""

    def __init__(
        self,
        wal_dir: str,
        metadata: bytes,
        hard_state: HardState,
        snapshot: WalSnapshot,
        last_index: int,
        segment_bytes: int = SEGMENT_BYTES,
        max_wals: int = 5,
        observe_fsync: Callable[[float], None] | None = None,
        no_fsync: bool = False,
    ) -> None:
        self.dir = wal_dir
        self.metadata = metadata
        self.hard_state = HardState()
        self.hard_state.CopyFrom(hard_state)
        self.snapshot = WalSnapshot()
        self.snapshot.CopyFrom(snapshot)
        self.last_index = last_index
        self.segment_bytes = segment_bytes
        self.max_wals = max_wals
        self.observe_fsync = observe_fsync or (lambda s: None)
        self.no_fsync = no_fsync  # --unsafe-no-fsync: appends are never made durable (segment files still are)
        segs = list_segments(wal_dir)
        self._segments = segs
        self._f = open(segs[-1].path, "ab")
        self._size = self._f.tell()
        self._dirty = False

    @classmethod
    def create(cls, wal_dir: str, metadata: bytes, **kw) -> "WAL":
        """Make a new WAL directory atomically (built in a .tmp directory, then renamed)."""
        if os.path.exists(wal_dir) and os.listdir(wal_dir):
            raise FileExistsError(f"wal directory {wal_dir} is not empty")
        tmp = wal_dir.rstrip("/") + ".tmp"
        if os.path.exists(tmp):
            for name in os.listdir(tmp):
                os.unlink(os.path.join(tmp, name))
            os.rmdir(tmp)
        os.makedirs(tmp)
        path = os.path.join(tmp, segment_name(0, 0))
        with open(path, "wb") as f:
            f.write(_segment_head(metadata, HardState(), WalSnapshot(index=0, term=0)))
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(wal_dir):
            os.rmdir(wal_dir)
        os.rename(tmp, wal_dir)
        fsync_dir(os.path.dirname(os.path.abspath(wal_dir)))
        return cls(wal_dir, metadata, HardState(), WalSnapshot(index=0, term=0), 0, **kw)

    @classmethod
    def open(cls, wal_dir: str, **kw) -> tuple["WAL", ReadResult]:
        res = read_wal(wal_dir)
        last = res.entries[-1].Index if res.entries else res.snapshot.index
        return cls(wal_dir, res.metadata, res.hard_state, res.snapshot, last, **kw), res

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        """Append a hard state and entries (not yet durable: call sync)."""
        if hard_state is not None and hard_state == self.hard_state:
            hard_state = None
        self.append(encode_batch(hard_state, entries), entries[-1].Index if entries else None, hard_state)

    def append(self, data: bytes, last_index: int | None, hard_state: HardState | None) -> None:
        """Append records made by encode_batch (the encoding can happen on another thread)."""
        if last_index is not None:
            self.last_index = last_index
        if hard_state is not None:
            self.hard_state.CopyFrom(hard_state)
        if data:
            self._f.write(data)
            self._size += len(data)
            self._dirty = True
        if self._size >= self.segment_bytes:
            self.cut()

    def save_snapshot(self, snap: WalSnapshot) -> None:
        """Record that state up to snap.index is in the backend; older segments may then go."""
        self._f.write(encode_record(SNAPSHOT, snap.SerializeToString()))
        self._dirty = True
        self.sync()
        if snap.index > self.snapshot.index:
            self.snapshot.CopyFrom(snap)
        self.purge()

    def sync(self) -> None:
        if not self._dirty:
            return
        self._f.flush()
        t0 = time.monotonic()
        if not self.no_fsync:
            os.fdatasync(self._f.fileno())
        self.observe_fsync(time.monotonic() - t0)
        self._dirty = False

    def cut(self) -> None:
        """Start a new segment, self-describing with metadata, hard state and snapshot marker."""
        self.sync()
        self._f.close()
        seq = self._segments[-1].seq + 1
        path = os.path.join(self.dir, segment_name(seq, self.last_index + 1))
        with open(path + ".tmp", "wb") as f:
            f.write(_segment_head(self.metadata, self.hard_state, self.snapshot))
            f.flush()
            os.fsync(f.fileno())
        os.rename(path + ".tmp", path)
        fsync_dir(self.dir)
        self._segments.append(Segment(path, seq, self.last_index + 1))
        self._f = open(path, "ab")
        self._size = self._f.tell()

    def purge(self) -> None:
        """Delete the oldest segments beyond max_wals whose entries are all covered by the snapshot."""
        if self.max_wals <= 0:
            return
        while len(self._segments) > self.max_wals and self._segments[1].index - 1 <= self.snapshot.index:
            old = self._segments.pop(0)
            os.unlink(old.path)
            log.info("wal: purged %s", old.path)
        fsync_dir(self.dir)

    def segments(self) -> list[str]:
        return [s.path for s in self._segments]

    def close(self) -> None:
        self.sync()
        self._f.close()


def encode_batch(hard_state: HardState | None, entries: list[Entry]) -> bytes:
    """The records for entries, then the hard state (which must not claim more than they hold)."""
    parts = [encode_record(ENTRY, e.SerializeToString()) for e in entries]
    if hard_state is not None:
        parts.append(encode_record(STATE, hard_state.SerializeToString()))
    return b"".join(parts)


def _segment_head(metadata: bytes, hs: HardState, snap: WalSnapshot) -> bytes:
    return (
        encode_record(METADATA, metadata)
        + encode_record(STATE, hs.SerializeToString())
        + encode_record(SNAPSHOT, snap.SerializeToString())
    )
