"""Revisions: (main, sub) pairs and their 17-byte backend encoding, as etcd stores them.

main is the store-wide revision bumped by every write transaction; sub numbers the changes
inside one transaction. Backend keys are main (8 bytes, big endian), "_", sub (8 bytes), plus a
trailing "t" for tombstones, so byte order equals revision order.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

_REV = struct.Struct(">Q")
REV_BYTES_LEN = 17
TOMBSTONE_MARK = b"t"


class Revision(NamedTuple):
    main: int
    sub: int = 0

    def __str__(self) -> str:
        return f"{self.main}.{self.sub}"


def rev_to_bytes(rev: Revision, tombstone: bool = False) -> bytes:
    b = _REV.pack(rev.main) + b"_" + _REV.pack(rev.sub)
    return b + TOMBSTONE_MARK if tombstone else b


def bytes_to_rev(b: bytes) -> Revision:
    if len(b) not in (REV_BYTES_LEN, REV_BYTES_LEN + 1) or b[8:9] != b"_":
        raise ValueError(f"malformed revision key {b!r}")
    return Revision(_REV.unpack_from(b, 0)[0], _REV.unpack_from(b, 9)[0])


def is_tombstone(b: bytes) -> bool:
    return len(b) == REV_BYTES_LEN + 1 and b[-1:] == TOMBSTONE_MARK


def main_rev_prefix(main: int) -> bytes:
    """The smallest backend key of a main revision: start of a revision range scan."""
    return _REV.pack(main) + b"_" + _REV.pack(0)
