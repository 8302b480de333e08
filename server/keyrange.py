"""Key ranges as etcd spells them: a prefix is the range [prefix, prefix_end(prefix)).

Shared by the server's lock and election recipes and the harness's client, which both need
etcd's GetPrefixRangeEnd convention exactly.
"""
from __future__ import annotations


def prefix_end(prefix: bytes) -> bytes:
    """The range end covering every key that starts with prefix (etcd's GetPrefixRangeEnd).

    The last byte below 0xff is incremented and the rest dropped; a prefix of only 0xff bytes
    (or the empty prefix) gives b"\\x00", etcd's "to the end of the keyspace".
    """
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\x00"
