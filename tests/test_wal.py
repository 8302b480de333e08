"""The write-ahead log on real files: round trips, segments, purge, torn tails and corruption.

Why: the WAL is the server's durability. Acknowledged writes must come back after any crash,
a write torn by a crash must be truncated (not refuse to start), and real damage must stop the
server with the file and offset, not silently drop what follows it. Damage is made by editing
the segment files byte by byte, as a crash or a bad disk would leave them.
"""
from __future__ import annotations

import os
import shutil
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.wal import (
    ENTRY,
    METADATA,
    SECTOR,
    SNAPSHOT,
    STATE,
    WAL,
    Entry,
    HardState,
    WALCorruptError,
    WalSnapshot,
    encode_record,
    list_segments,
    parse_segment_name,
    read_wal,
    segment_name,
)

META = b"cluster-metadata"
HDR = 9  # u32 length, u32 crc, u8 type


def entry(index: int, term: int = 1, size: int = 20) -> Entry:
    # data of non-zero bytes, so no sector-sized piece of a record is zero by accident
    return Entry(Term=term, Index=index, Data=bytes([0x41 + index % 26]) * size)


def records(buf: bytes) -> list[tuple[int, int, int]]:
    """(offset, end, type) of each record of a well-formed segment (the test's own parser)."""
    out = []
    off = 0
    while off < len(buf):
        (length,) = struct.unpack_from("<I", buf, off)
        end = off + HDR + length
        out.append((off, end, buf[off + 8]))
        off = end
    return out


def new_wal(d: str, **kw) -> WAL:
    return WAL.create(d, META, **kw)


def seg_files(d: str) -> list[str]:
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".wal"))


def flip(path: str, pos: int) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([b ^ 0x01 if b != 0x01 else 0x03]))  # never turns a byte into zero


# ------------------------------------------------------------------------------ round trips


def test_entries_and_hard_state_round_trip(tmp_path) -> None:
    d = str(tmp_path / "wal")
    w = new_wal(d)
    w.save(HardState(term=1, vote=1, commit=0), [entry(1), entry(2)])
    w.save(HardState(term=1, vote=1, commit=2), [entry(3)])
    w.sync()
    w.close()
    w, res = WAL.open(d)
    assert res.metadata == META
    assert res.hard_state == HardState(term=1, vote=1, commit=2)
    assert list(res.entries) == [entry(1), entry(2), entry(3)]
    assert res.truncated == []
    assert w.last_index == 3
    # appending after a reopen continues the same log
    w.save(HardState(term=2, vote=1, commit=3), [entry(4, term=2)])
    w.close()
    res = read_wal(d)
    assert [e.Index for e in res.entries] == [1, 2, 3, 4]
    assert res.hard_state.term == 2


def test_create_refuses_a_non_empty_directory(tmp_path) -> None:
    d = str(tmp_path / "wal")
    new_wal(d).close()
    with pytest.raises(FileExistsError):
        new_wal(d)
    assert not os.path.exists(d + ".tmp")


def test_empty_directory_is_an_error(tmp_path) -> None:
    d = tmp_path / "wal"
    d.mkdir()
    with pytest.raises(WALCorruptError, match="no wal segment files"):
        read_wal(str(d))


def test_segment_names() -> None:
    name = segment_name(3, 0x1F)
    assert name == "0000000000000003-000000000000001f.wal"
    assert parse_segment_name(name) == (3, 0x1F)
    assert parse_segment_name("0000000000000003-000000000000001f.wal.tmp") is None
    assert parse_segment_name("zz00000000000003-000000000000001f.wal") is None


def test_raft_overwrite_replaces_the_tail(tmp_path) -> None:
    d = str(tmp_path / "wal")
    w = new_wal(d)
    w.save(HardState(term=1), [entry(i, term=1) for i in range(1, 6)])
    # a new leader's entries at 3 and 4 replace 3, 4 and 5 of the old term
    w.save(HardState(term=2), [entry(3, term=2, size=7), entry(4, term=2, size=7)])
    w.close()
    res = read_wal(d)
    assert [(e.Index, e.Term) for e in res.entries] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert res.entries[2] == entry(3, term=2, size=7)


def test_a_gap_in_entries_is_corruption(tmp_path) -> None:
    d = str(tmp_path / "wal")
    w = new_wal(d)
    w.save(None, [entry(1), entry(2), entry(4)])
    w.close()
    with pytest.raises(WALCorruptError, match="missing entries before index 4"):
        read_wal(d)


# ------------------------------------------------------------------------ segments and purge


def fill(d: str, n: int, **kw) -> WAL:
    w = new_wal(d, **kw)
    for i in range(1, n + 1):
        w.save(HardState(term=1, commit=i - 1), [entry(i)])
    w.sync()
    return w


def test_segments_are_cut_and_each_describes_itself(tmp_path) -> None:
    d = str(tmp_path / "wal")
    w = fill(d, 30, segment_bytes=256)
    w.close()
    files = seg_files(d)
    assert len(files) > 5
    assert w.segments() == files
    parsed = [parse_segment_name(os.path.basename(f)) for f in files]
    assert [p[0] for p in parsed] == list(range(len(files)))  # type: ignore[index]
    for path, (_, first_index) in zip(files, parsed):  # type: ignore[misc]
        buf = open(path, "rb").read()
        recs = records(buf)
        assert [t for _, _, t in recs[:3]] == [METADATA, STATE, SNAPSHOT]
        idx = [Entry.FromString(buf[o + HDR : e]).Index for o, e, t in recs if t == ENTRY]
        if idx:
            assert idx[0] == max(first_index, 1)  # a segment's name gives its first index
    res = read_wal(d)
    assert [e.Index for e in res.entries] == list(range(1, 31))
    assert res.hard_state == HardState(term=1, commit=29)


@pytest.mark.parametrize("snap_index,max_wals", [(25, 3), (25, 1), (2, 2), (25, 0), (40, 2)])
def test_purge_after_snapshot_keeps_what_the_snapshot_does_not_cover(
    tmp_path, snap_index: int, max_wals: int
) -> None:
    d = str(tmp_path / "wal")
    n = 40
    w = fill(d, n, segment_bytes=256, max_wals=max_wals)
    before = list_segments(d)
    w.save_snapshot(WalSnapshot(index=snap_index, term=1))
    after = list_segments(d)
    assert [s.path for s in after] == w.segments() == seg_files(d)
    # only a prefix goes, and only segments whose entries are all at or below the snapshot
    assert [s.path for s in before[len(before) - len(after) :]] == [s.path for s in after]
    assert after[0].index <= snap_index + 1
    if max_wals == 0:
        assert len(after) == len(before)
    else:
        assert len(after) <= max_wals or after[1].index - 1 > snap_index
    if snap_index == 25 and max_wals in (1, 3):
        assert len(after) < len(before)  # something was purged
    w.close()
    res = read_wal(d)
    assert res.snapshot.index == snap_index
    assert res.metadata == META
    assert [e.Index for e in res.entries] == list(range(snap_index + 1, n + 1))
    assert res.hard_state == HardState(term=1, commit=n - 1)


def test_purge_step_by_step_never_drops_an_entry_above_the_snapshot(tmp_path) -> None:
    d = str(tmp_path / "wal")
    n = 40
    w = fill(d, n, segment_bytes=200, max_wals=1)
    for snap_index in range(1, n + 1):
        w.save_snapshot(WalSnapshot(index=snap_index, term=1))
        segs = list_segments(d)
        assert segs[0].index <= snap_index + 1, snap_index  # nothing above the snapshot went
        assert len(segs) == 1 or segs[1].index - 1 > snap_index, snap_index  # all that could go went
        res = read_wal(d, repair=False)
        assert [e.Index for e in res.entries] == list(range(snap_index + 1, n + 1))
    w.close()


def test_missing_segment_is_an_error(tmp_path) -> None:
    d = str(tmp_path / "wal")
    fill(d, 20, segment_bytes=256).close()
    files = seg_files(d)
    os.unlink(files[2])
    with pytest.raises(WALCorruptError, match="missing segment") as ei:
        read_wal(d)
    assert ei.value.path == files[3]
    with pytest.raises(WALCorruptError):
        WAL.open(d)


def test_metadata_must_agree_across_segments(tmp_path) -> None:
    d = str(tmp_path / "wal")
    fill(d, 12, segment_bytes=256).close()
    files = seg_files(d)
    buf = open(files[1], "rb").read()
    off, end, t = records(buf)[0]
    assert t == METADATA
    with open(files[1], "wb") as f:
        f.write(encode_record(METADATA, b"other-cluster") + buf[end:])
    with pytest.raises(WALCorruptError, match="metadata differs") as ei:
        read_wal(d)
    assert (ei.value.path, ei.value.offset) == (files[1], 0)


# ---------------------------------------------------------------------------- torn tails


def one_segment_wal(d: str, last_size: int = 40) -> tuple[str, list[Entry]]:
    w = new_wal(d)
    es = [entry(i) for i in range(1, 5)] + [entry(5, size=last_size)]
    w.save(HardState(term=1, commit=3), es[:4])
    w.save(None, es[4:])
    w.close()
    return seg_files(d)[0], es


def test_truncation_at_every_byte_of_the_last_record_is_a_torn_tail(tmp_path) -> None:
    d = str(tmp_path / "wal")
    path, es = one_segment_wal(d)
    orig = open(path, "rb").read()
    start, end, t = records(orig)[-1]
    assert t == ENTRY and end == len(orig)
    for cut in range(start + 1, end):
        with open(path, "wb") as f:
            f.write(orig[:cut])
        res = read_wal(d, repair=False)
        assert list(res.entries) == es[:4], cut
        assert os.path.getsize(path) == cut  # repair=False leaves the file alone
        res = read_wal(d)
        assert list(res.entries) == es[:4], cut
        assert len(res.truncated) == 1 and path in res.truncated[0]
        assert f"offset {start}" in res.truncated[0]
        assert os.path.getsize(path) == start  # the torn part is gone
        assert read_wal(d).truncated == []
    # a cut exactly at a record boundary is a clean, shorter log
    with open(path, "wb") as f:
        f.write(orig[:start])
    res = read_wal(d)
    assert res.truncated == [] and list(res.entries) == es[:4]


def test_after_repair_the_log_continues(tmp_path) -> None:
    d = str(tmp_path / "wal")
    path, es = one_segment_wal(d)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 3)
    w, res = WAL.open(d)
    assert len(res.truncated) == 1 and w.last_index == 4
    w.save(None, [entry(5, term=2)])
    w.close()
    assert list(read_wal(d).entries) == es[:4] + [entry(5, term=2)]


def test_zero_sector_inside_the_last_record_is_torn(tmp_path) -> None:
    d = str(tmp_path / "wal")
    path, es = one_segment_wal(d, last_size=3000)
    orig = open(path, "rb").read()
    start, end, _ = records(orig)[-1]
    sector = (start // SECTOR + 2) * SECTOR  # a whole sector inside the record
    assert start < sector and sector + SECTOR < end
    buf = bytearray(orig)
    buf[sector : sector + SECTOR] = bytes(SECTOR)
    with open(path, "wb") as f:
        f.write(buf)
    res = read_wal(d)
    assert list(res.entries) == es[:4]
    assert len(res.truncated) == 1 and f"offset {start}" in res.truncated[0]
    assert os.path.getsize(path) == start


def test_zero_filled_tail_after_the_last_record_is_torn(tmp_path) -> None:
    d = str(tmp_path / "wal")
    path, es = one_segment_wal(d)
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(bytes(2 * SECTOR + 17))  # space allocated but never written
    res = read_wal(d)
    assert list(res.entries) == es
    assert len(res.truncated) == 1 and f"offset {size}" in res.truncated[0]
    assert os.path.getsize(path) == size


# ---------------------------------------------------------------------------- corruption


def has_zero_chunk(buf: bytes, start: int, end: int) -> bool:
    """Whether a sector-bounded piece of buf[start:end] is all zeros (what counts as torn)."""
    pos = start
    while pos < end:
        nxt = min((pos // SECTOR + 1) * SECTOR, end)
        if not any(buf[pos:nxt]):
            return True
        pos = nxt
    return False


def test_damage_in_a_middle_record_of_the_last_segment_is_corruption(tmp_path) -> None:
    """Any byte of a record followed by intact records: length, crc, type or data."""
    d = str(tmp_path / "wal")
    path, _ = one_segment_wal(d)
    orig = open(path, "rb").read()
    recs = records(orig)
    checked = 0
    for start, end, _ in recs[:-1]:
        for pos in range(start, end):
            with open(path, "wb") as f:
                f.write(orig)
            flip(path, pos)
            damaged = open(path, "rb").read()
            with pytest.raises(WALCorruptError) as ei:
                read_wal(d)
            assert (ei.value.path, ei.value.offset) == (path, start), pos
            assert path in str(ei.value) and f"offset {start}" in str(ei.value)
            assert open(path, "rb").read() == damaged  # nothing was truncated
            checked += 1
    assert checked > 150


def test_zero_sector_in_a_record_followed_by_intact_ones_is_corruption(tmp_path) -> None:
    """A crash tears only the tail: zeros with durable records behind them are damage."""
    d = str(tmp_path / "wal")
    w = new_wal(d)
    w.save(None, [entry(1), entry(2, size=3000), entry(3), entry(4)])
    w.close()
    path = seg_files(d)[0]
    buf = bytearray(open(path, "rb").read())
    start, end, _ = records(bytes(buf))[4]  # entry 2, after the three head records and entry 1
    sector = (start // SECTOR + 2) * SECTOR
    assert start < sector and sector + SECTOR < end
    buf[sector : sector + SECTOR] = bytes(SECTOR)
    with open(path, "wb") as f:
        f.write(buf)
    with pytest.raises(WALCorruptError) as ei:
        read_wal(d)
    assert (ei.value.path, ei.value.offset) == (path, start)


def test_damage_in_the_last_record_without_a_zero_sector_is_corruption(tmp_path) -> None:
    d = str(tmp_path / "wal")
    path, _ = one_segment_wal(d, last_size=1500)
    orig = open(path, "rb").read()
    start, end, _ = records(orig)[-1]
    for pos in (start + 4, start + 8, start + HDR, (start + end) // 2, end - 1):
        with open(path, "wb") as f:
            f.write(orig)
        flip(path, pos)
        assert not has_zero_chunk(open(path, "rb").read(), start, end)
        with pytest.raises(WALCorruptError) as ei:
            read_wal(d)
        assert (ei.value.path, ei.value.offset) == (path, start)
        assert os.path.getsize(path) == len(orig)


def test_damage_anywhere_in_an_older_segment_is_corruption(tmp_path) -> None:
    d = str(tmp_path / "wal")
    fill(d, 12, segment_bytes=256).close()
    files = seg_files(d)
    assert len(files) >= 3
    target = files[1]
    orig = open(target, "rb").read()
    recs = records(orig)
    for pos in range(len(orig)):
        with open(target, "wb") as f:
            f.write(orig)
        flip(target, pos)
        start = next(o for o, e, _ in recs if o <= pos < e)
        with pytest.raises(WALCorruptError) as ei:
            read_wal(d)
        assert (ei.value.path, ei.value.offset) == (target, start), pos
    # a truncated older segment is corruption too, not a torn tail
    with open(target, "wb") as f:
        f.write(orig[:-5])
    with pytest.raises(WALCorruptError) as ei:
        read_wal(d)
    assert (ei.value.path, ei.value.offset) == (target, recs[-1][0])


# ------------------------------------------------------------------------------- property


batch_st = st.tuples(
    st.integers(0, 3),  # how many entries back this batch starts (a raft overwrite when > 0)
    st.lists(st.integers(1, 300), min_size=1, max_size=4),  # data sizes
)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(batch_st, min_size=1, max_size=8), data=st.data())
def test_any_truncation_recovers_a_prefix_of_what_was_synced(batches, data) -> None:
    root = tempfile.mkdtemp(prefix="wal-prop-")
    try:
        d = os.path.join(root, "wal")
        w = new_wal(d, segment_bytes=600)
        log: list[Entry] = []
        after_record: list[list[Entry]] = [[]]  # the log after each entry record, in write order
        synced: list[tuple[str, int, int]] = []  # (last segment, its size, records) at each sync
        term = 1
        for back, sizes in batches:
            first = max(1, len(log) + 1 - back)
            if back:
                term += 1
            es = [Entry(Term=term, Index=first + i, Data=b"\x5a" * n) for i, n in enumerate(sizes)]
            for e in es:
                del log[e.Index - 1 :]
                log.append(e)
                after_record.append(list(log))
            w.save(HardState(term=term, commit=max(0, first - 1)), es)
            w.sync()
            last = w.segments()[-1]
            synced.append((last, os.path.getsize(last), len(after_record) - 1))
        w.close()
        last = seg_files(d)[-1]
        buf = open(last, "rb").read()
        head_end = records(buf)[2][1]
        cut = data.draw(st.integers(head_end, len(buf)), label="cut")
        with open(last, "r+b") as f:
            f.truncate(cut)
        res = read_wal(d)
        got = list(res.entries)
        matches = [m for m, expect in enumerate(after_record) if expect == got]
        assert matches, "the recovered log is not a prefix of what was written"
        must_have = max((n for seg, size, n in synced if seg != last or size <= cut), default=0)
        assert max(matches) >= must_have, "an entry that was synced and not cut off is missing"
        boundaries = {e for _, e, _ in records(buf)}
        assert (res.truncated == []) == (cut in boundaries)
        assert read_wal(d).entries == res.entries  # the repair is stable
    finally:
        shutil.rmtree(root, ignore_errors=True)
