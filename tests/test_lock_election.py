"""The v3lock and v3election services: mutual exclusion, ordering, lease expiry, and leader changes.

Run against the reference server and real etcd (which serves both services too), so the tests
pin etcd's behaviour rather than our reading of it.
"""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from server.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from server.proto.v3electionpb import v3election_pb2 as elpb
from server.proto.v3electionpb import v3election_pb2_grpc
from server.proto.v3lockpb import v3lock_pb2 as lockpb
from server.proto.v3lockpb import v3lock_pb2_grpc


@pytest.fixture
def stubs(any_server):
    ch = grpc.insecure_channel(any_server.endpoint)
    yield (
        rpc_pb2_grpc.KVStub(ch),
        rpc_pb2_grpc.LeaseStub(ch),
        v3lock_pb2_grpc.LockStub(ch),
        v3election_pb2_grpc.ElectionStub(ch),
    )
    ch.close()


def grant(lease, ttl: int = 10) -> int:
    return lease.LeaseGrant(rpc_pb2.LeaseGrantRequest(TTL=ttl), timeout=5).ID


def test_lock_is_exclusive_and_handed_over_in_order(stubs):
    kv, lease, lock, _ = stubs
    l1, l2 = grant(lease), grant(lease)
    first = lock.Lock(lockpb.LockRequest(name=b"mtx", lease=l1), timeout=5)
    assert first.key == b"mtx/" + format(l1, "x").encode()
    got: list[bytes] = []

    def second() -> None:
        got.append(lock.Lock(lockpb.LockRequest(name=b"mtx", lease=l2), timeout=10).key)

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.7)
    assert got == [], "a second holder got the lock while the first held it"
    lock.Unlock(lockpb.UnlockRequest(key=first.key), timeout=5)
    t.join(10)
    assert got == [b"mtx/" + format(l2, "x").encode()]
    # the owner key is a real key attached to the lease
    r = kv.Range(rpc_pb2.RangeRequest(key=got[0]), timeout=5)
    assert r.kvs[0].lease == l2


def test_lock_released_when_holders_lease_is_revoked(stubs):
    _, lease, lock, _ = stubs
    l1, l2 = grant(lease), grant(lease)
    lock.Lock(lockpb.LockRequest(name=b"m2", lease=l1), timeout=5)
    fut = lock.Lock.future(lockpb.LockRequest(name=b"m2", lease=l2), timeout=10)
    time.sleep(0.5)
    assert not fut.done()
    lease.LeaseRevoke(rpc_pb2.LeaseRevokeRequest(ID=l1), timeout=5)
    assert fut.result(timeout=10).key.endswith(format(l2, "x").encode())


def test_lock_with_missing_lease_fails(stubs):
    _, _, lock, _ = stubs
    with pytest.raises(grpc.RpcError) as e:
        lock.Lock(lockpb.LockRequest(name=b"m3", lease=0x1234), timeout=5)
    assert "requested lease not found" in e.value.details()


def test_election_campaign_proclaim_leader_resign(stubs):
    _, lease, _, el = stubs
    l1, l2 = grant(lease), grant(lease)
    with pytest.raises(grpc.RpcError) as e:
        el.Leader(elpb.LeaderRequest(name=b"e"), timeout=5)
    assert "election: no leader" in e.value.details()
    c1 = el.Campaign(elpb.CampaignRequest(name=b"e", lease=l1, value=b"one"), timeout=5)
    assert el.Leader(elpb.LeaderRequest(name=b"e"), timeout=5).kv.value == b"one"
    el.Proclaim(elpb.ProclaimRequest(leader=c1.leader, value=b"uno"), timeout=5)
    assert el.Leader(elpb.LeaderRequest(name=b"e"), timeout=5).kv.value == b"uno"
    fut = el.Campaign.future(elpb.CampaignRequest(name=b"e", lease=l2, value=b"two"), timeout=10)
    time.sleep(0.5)
    assert not fut.done(), "a second candidate became leader while the first led"
    el.Resign(elpb.ResignRequest(leader=c1.leader), timeout=5)
    c2 = fut.result(timeout=10)
    assert c2.leader.lease == l2
    assert el.Leader(elpb.LeaderRequest(name=b"e"), timeout=5).kv.value == b"two"
    # a resigned leader can no longer proclaim
    with pytest.raises(grpc.RpcError) as e:
        el.Proclaim(elpb.ProclaimRequest(leader=c1.leader, value=b"stale"), timeout=5)
    assert "election: not leader" in e.value.details()


def test_election_observe_sees_leader_changes(stubs):
    _, lease, _, el = stubs
    l1 = grant(lease)
    c1 = el.Campaign(elpb.CampaignRequest(name=b"obs", lease=l1, value=b"a"), timeout=5)
    stream = el.Observe(elpb.LeaderRequest(name=b"obs"), timeout=10)
    seen = [next(stream).kv.value]
    el.Proclaim(elpb.ProclaimRequest(leader=c1.leader, value=b"b"), timeout=5)
    seen.append(next(stream).kv.value)
    stream.cancel()
    assert seen == [b"a", b"b"]
