"""Several client requests in one raft entry: the log, the WAL, the appends and the apply
bookkeeping then cost per batch instead of per request.

Raft does not care what an entry holds; etcd proposes one entry per request, but requests
proposed together are committed together anyway, so nothing is lost by sharing an entry: its
requests are applied in order, each answered on its own, and the consistent index moves once,
after the last of them (so after a crash the whole entry is replayed or none of it).

Format: a batch is the byte 0x00, then for each request a u32 big-endian length and the
request (an InternalRaftRequest). A serialized protobuf message never starts with 0x00 (field
number 0 does not exist), so a batch can never be mistaken for a single request, and entries
written before batching existed still read as single requests. A request that alone is larger
than the batch limit gets an entry of its own, unwrapped. Pure: no I/O.
"""
from __future__ import annotations

import struct

MARK = b"\x00"
_LEN = struct.Struct(">I")
BATCH_BYTES = 1 << 20  # at most about this much per batch entry (raft's bytes per append)


def is_batch(data: bytes) -> bool:
    return data[:1] == MARK


def pack(datas: list[bytes], limit: int = BATCH_BYTES) -> list[bytes]:
    """Entry payloads holding datas in order: one plain entry for a lone request, else batches
    of about `limit` bytes at most."""
    if len(datas) == 1:
        return datas
    out: list[bytes] = []
    parts: list[bytes] = []
    size = 0
    for d in datas:
        if len(d) + 4 > limit:  # too big to share: on its own, unwrapped
            _close(parts, out)
            parts, size = [], 0
            out.append(d)
            continue
        if size + len(d) + 4 > limit:
            _close(parts, out)
            parts, size = [], 0
        parts.append(_LEN.pack(len(d)))
        parts.append(d)
        size += len(d) + 4
    _close(parts, out)
    return out


def _close(parts: list[bytes], out: list[bytes]) -> None:
    if not parts:
        return
    if len(parts) == 2:  # one request: no wrapper
        out.append(parts[1])
    else:
        out.append(MARK + b"".join(parts))


def unpack(data: bytes) -> list[bytes]:
    """The requests of an entry payload (a batch, or one plain request); ValueError if a batch
    is malformed."""
    if data[:1] != MARK:
        return [data]
    out = []
    off, n = 1, len(data)
    while off < n:
        if off + 4 > n:
            raise ValueError(f"batch entry cut inside a length at byte {off}")
        (size,) = _LEN.unpack_from(data, off)
        off += 4
        if off + size > n:
            raise ValueError(f"batch entry cut inside a request at byte {off}")
        out.append(data[off : off + size])
        off += size
    return out
