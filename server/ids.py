"""Member and cluster IDs, derived from configuration the way etcd derives them.

A member's ID is the first 8 bytes (big endian) of SHA-1 over its sorted peer URLs and the
cluster token; the cluster's ID is SHA-1 over its members' IDs in ascending order. The same flags
therefore give the same IDs as a real etcd cluster, and IDs are stable across restarts.
"""
from __future__ import annotations

import hashlib
import struct
import threading


def member_id(peer_urls: list[str], token: str, now_unix: int | None = None) -> int:
    b = "".join(sorted(peer_urls)).encode() + token.encode()
    if now_unix is not None:
        b += str(now_unix).encode()
    return struct.unpack(">Q", hashlib.sha1(b).digest()[:8])[0]


def cluster_id(member_ids: list[int]) -> int:
    b = b"".join(struct.pack(">Q", m) for m in sorted(member_ids))
    return struct.unpack(">Q", hashlib.sha1(b).digest()[:8])[0]


class IDGenerator:
    """Unique request and lease IDs: member prefix (16 bits), start time (40 bits), counter.

    The layout follows etcd's idutil, so IDs from different members never collide, and a
    restarted member starts from a later time and does not reuse IDs.
    """

    def __init__(self, member: int, now_ms: int) -> None:
        self._prefix = (member & 0xFFFF) << 48
        self._suffix = (now_ms & ((1 << 40) - 1)) << 8
        self._mask = (1 << 48) - 1
        self._mu = threading.Lock()

    def next(self) -> int:
        with self._mu:
            self._suffix = (self._suffix + 1) & self._mask
            return self._prefix | self._suffix
