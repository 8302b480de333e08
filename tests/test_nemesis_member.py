"""Membership and admin faults on real clusters of both targets: a member removed (its server gone,
its data wiped, the cluster one smaller) and added back wiped (a new ID, healthy, serving the data
written meanwhile); never below a majority; compaction and defragmentation seen in the store."""
from __future__ import annotations

import asyncio

import pytest

from harness.client import ClientError, EtcdClient
from nemesis.admin import AdminNemesis
from nemesis.base import FaultRefused
from nemesis.member import MemberNemesis, _call
from nemesis.process import KillNemesis
from nemesis_support import cluster

pytestmark = pytest.mark.timeout(300)


async def _puts(endpoint: str, keys: range) -> None:
    """Puts, each retried while it times out: right after a leader is removed, a proposal
    forwarded to it is lost (an indefinite outcome; the value written is the same either way)."""
    c = EtcdClient(endpoint, timeout=10)
    try:
        for i in keys:
            for attempt in range(4):
                try:
                    await c.put(f"m/{i}", i)
                    break
                except ClientError:
                    if attempt == 3:
                        raise
    finally:
        await c.close()


@pytest.mark.parametrize("kind", ["reference", "etcd"])
def test_member_removed_then_added_back_wiped(request, embedded_cluster, tmp_path, kind):
    nem, kill = MemberNemesis(), KillNemesis()
    with cluster(request, embedded_cluster, kind, tmp_path, nemeses=[kill, nem]) as ctx:
        n1, n2, n3 = ctx.nodes
        asyncio.run(_puts(ctx.db.client_endpoint(n1), range(10)))
        ev = nem.remove(ctx, n3)
        assert ev["members_before"] == ["n1", "n2", "n3"] and ev["members_after"] == ["n1", "n2"]
        assert ev["gone"] and ctx.remotes["n3"].daemon_pid(ctx.db.pid_file(n3)) is None
        assert ctx.remotes["n3"].run(f"test -e {ctx.db.data_dir(n3)}", check=False).exit != 0  # wiped
        assert ctx.removed() == {"n3"} and [n.name for n in ctx.db.members] == ["n1", "n2"]
        members = _call(ctx.db.client_endpoint(n1), lambda c: c.member_list())
        assert len(members.members) == 2
        assert kill.heal(ctx)["nodes"] == []  # other faults leave a removed node alone
        asyncio.run(_puts(ctx.db.client_endpoint(n2), range(10, 20)))  # written while n3 is out

        back = nem.stop(ctx)["added"]["n3"]
        assert back["healthy"] and back["members_after"] == ["n1", "n2", "n3"]
        assert back["id"] != ev["id"]  # a new member, not the old one back
        assert ctx.removed() == set() and ctx.db.members is None
        got = _call(ctx.db.client_endpoint(n3), lambda c: c.get("m/19"))  # it caught up, from empty
        assert got.value == 19


def test_membership_never_below_a_majority(request, embedded_cluster, tmp_path):
    nem = MemberNemesis(max_removed=2)
    with cluster(request, embedded_cluster, "reference", tmp_path, nemeses=[nem]) as ctx:
        ev = nem.start(ctx)  # 3 nodes: one may go
        assert len(ev["nodes"]) == 1
        with pytest.raises(FaultRefused, match="2 members of 3: removing one would leave less than a majority"):
            nem.start(ctx)
        healed = nem.heal(ctx)
        assert healed["nodes"] == ev["nodes"] and ctx.removed() == set()
        assert all(ctx.db.healthy(n) for n in ctx.nodes)


@pytest.mark.parametrize("kind", ["reference", "etcd"])
def test_compaction_and_defragmentation(request, embedded_cluster, tmp_path, kind):
    nem = AdminNemesis()
    with cluster(request, embedded_cluster, kind, tmp_path, nemeses=[nem]) as ctx:
        n1 = ctx.nodes[0]
        asyncio.run(_puts(ctx.db.client_endpoint(n1), range(40)))
        ev = nem.compact(ctx, margin=5, physical=True)
        assert ev["compacted_to"] == ev["revision"] - 5
        # the compacted history is gone: a read at an older revision is refused
        from server.proto.etcdserverpb import rpc_pb2 as pb

        async def old_read() -> str:
            c = EtcdClient(ctx.db.client_endpoint(n1), timeout=10)
            try:
                await c.range(pb.RangeRequest(key=b"m/0", revision=ev["compacted_to"] - 1))
                return "read"
            except Exception as e:  # noqa: BLE001
                return str(e)
            finally:
                await c.close()

        assert "compacted" in asyncio.run(old_read())
        d = nem.defrag(ctx, list(ctx.nodes))
        assert set(d) == {"n1", "n2", "n3"} and all("error" not in v for v in d.values()), d
        assert all(v["db_size_after"] > 0 for v in d.values())
        assert nem.stop(ctx)["note"]
        with pytest.raises(FaultRefused, match="leaves nothing new to compact"):
            nem.compact(ctx, margin=10_000)
