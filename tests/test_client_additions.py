"""The client calls added for the workloads (prefix ranges, raw DeleteRange, LeaseGrant with its
response), against both targets where they talk to a server."""
from __future__ import annotations

import asyncio

from harness.client import EtcdClient, prefix_end
from server.proto.etcdserverpb import rpc_pb2 as pb


def test_prefix_end_covers_exactly_the_prefix() -> None:
    assert prefix_end(b"bank/txn/") == b"bank/txn0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"  # everything: etcd's convention


def test_delete_range_and_lease_grant_raw(any_server) -> None:
    async def go() -> None:
        c = EtcdClient(any_server.endpoint, timeout=5)
        try:
            await c.put("pre/a", 1)
            await c.put("pre/b", 2)
            await c.put("prf", 3)
            r = await c.delete_range(pb.DeleteRangeRequest(key=b"pre/", range_end=prefix_end(b"pre/")))
            assert r.deleted == 2 and r.header.revision == 5  # one revision for both
            assert (await c.get("prf")).value == 3
            assert (await c.delete_range(pb.DeleteRangeRequest(key=b"pre/a"))).deleted == 0
            g = await c.lease_grant_raw(7)
            assert g.ID and g.TTL >= 7
            await c.lease_revoke(g.ID)
        finally:
            await c.close()

    asyncio.run(go())
