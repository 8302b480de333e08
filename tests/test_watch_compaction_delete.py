"""A watch from the compaction revision C and a delete made at C: etcd-io/etcd#18089.

etcd's API says compaction removes superseded revisions *less than* C, so a watch from C must
still see a delete made at C. etcd dropped that tombstone (the compaction kept each key's
latest version at C, and a tombstone was not kept) until it fixed #18089 (etcd-io/etcd#18274,
backported to 3.4 and 3.5 in August 2024, so 3.4.34 and later). Debian 12 ships etcd 3.4.23,
which still has the bug; the reference server keeps the tombstone, as fixed etcd does.

Found by the watch-compact workload, whose checker accepts either behaviour (it treats events at
or below a completed compaction as compacted). These tests pin both: the reference must deliver
the delete, and etcd's answer must be the old one on a version before the fix, so a package
upgrade that brings the fix shows here instead of passing silently.
"""
from __future__ import annotations

import asyncio
import re

from harness.client import EtcdClient
from server.proto.etcdserverpb import rpc_pb2 as pb
from workloads.watch import record_stream

KEPT = [(0, "DELETE", "cd/a"), (1, "PUT", "cd/c")]  # the API's promise (fixed etcd, the reference)
DROPPED = [(1, "PUT", "cd/c")]  # etcd before the fix of #18089
FIXED_IN = {(3, 4): 34, (3, 5): 16}  # first patch release with the backport, by minor version


async def events_from_the_compaction(endpoint: str) -> tuple[list[tuple], str]:
    c = EtcdClient(endpoint, timeout=5)
    try:
        await c.put("cd/a", 1)
        await c.put("cd/b", 2)
        deleted_at = (await c.delete_range(pb.DeleteRangeRequest(key=b"cd/a"))).header.revision
        await c.put("cd/c", 3)
        await c.compact(deleted_at, physical=True)  # done when it returns (etcd compacts in the background otherwise)
        rec = await record_stream(c, pb.WatchCreateRequest(key=b"cd/", range_end=b"cd0", start_revision=deleted_at), 1.0)
        version = (await c.status()).version
        return [(e[0] - deleted_at, e[1], e[2]) for r in rec["responses"] for e in r.get("ev", [])], version
    finally:
        await c.close()


def has_the_fix(version: str) -> bool:
    major, minor, patch = (int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", version).groups())
    return (major, minor) > (3, 5) or patch >= FIXED_IN.get((major, minor), 1 << 30)


def test_the_reference_server_delivers_a_delete_made_at_the_compaction_revision(ref_server) -> None:
    events, _ = asyncio.run(events_from_the_compaction(ref_server.endpoint))
    assert events == KEPT


def test_etcd_drops_it_before_the_fix_and_delivers_it_after(etcd_server) -> None:
    events, version = asyncio.run(events_from_the_compaction(etcd_server.endpoint))
    assert events == (KEPT if has_the_fix(version) else DROPPED), version


def test_the_version_rule() -> None:
    assert not has_the_fix("3.4.23") and has_the_fix("3.4.34") and not has_the_fix("3.5.15")
    assert has_the_fix("3.5.16") and has_the_fix("3.6.0")
