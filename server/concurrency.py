"""Server-side locks and elections (etcd's v3lock and v3election services).

Both follow etcd's client recipes, run inside the server: a waiter writes a key
<name>/<lease id in hex> attached to its lease, and owns the lock (or leads) once every key under
the prefix with a smaller create revision is gone. Waiting re-checks after each applied batch;
a waiter that gives up (client gone, deadline: its task is cancelled) deletes its key, as etcd's
Mutex does.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator

from server import errors
from server.errors import Code, EtcdError
from server.keyrange import prefix_end
from server.proto.etcdserverpb import rpc_pb2
from server.proto.mvccpb import kv_pb2
from server.proto.v3electionpb import v3election_pb2 as elpb
from server.proto.v3lockpb import v3lock_pb2 as lockpb

if TYPE_CHECKING:
    from server.etcdserver import EtcdServer

pb = rpc_pb2
Compare = pb.Compare
SESSION_EXPIRED = EtcdError(Code.UNKNOWN, "session expired")
NOT_LEADER = EtcdError(Code.UNKNOWN, "election: not leader")
NO_LEADER = EtcdError(Code.UNKNOWN, "election: no leader")


def _owner_key(name: bytes, lease: int) -> bytes:
    return name + b"/" + format(lease, "x").encode()


async def _enqueue(srv: "EtcdServer", key: bytes, value: bytes, lease: int) -> tuple[int, bool]:
    """Write key with the lease unless it exists; returns (its create revision, whether we made it)."""
    if srv.lessor.lookup(lease) is None:
        raise errors.LEASE_NOT_FOUND
    resp = await srv.txn(
        pb.TxnRequest(
            compare=[Compare(key=key, target=Compare.CREATE, result=Compare.EQUAL, create_revision=0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=value, lease=lease))],
            failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key))],
        )
    )
    if resp.succeeded:
        return resp.header.revision, True
    kvs = resp.responses[0].response_range.kvs
    if not kvs:
        raise SESSION_EXPIRED
    return kvs[0].create_revision, False


def _first_waiter(srv: "EtcdServer", prefix: bytes, below: int | None) -> kv_pb2.KeyValue | None:
    """The oldest key under prefix (below=None), or the newest one created before `below`."""
    rr = srv.store.range(prefix, prefix_end(prefix))
    kvs = rr.kvs if below is None else [kv for kv in rr.kvs if kv.create_revision < below]
    if not kvs:
        return None
    pick = min if below is None else max
    return pick(kvs, key=lambda kv: kv.create_revision)


async def _wait_turn(srv: "EtcdServer", key: bytes, my_rev: int) -> None:
    prefix = key.rsplit(b"/", 1)[0] + b"/"
    while True:
        mine = srv.store.get(key)
        if mine is None or mine.create_revision != my_rev:
            raise SESSION_EXPIRED
        if _first_waiter(srv, prefix, my_rev) is None:
            return
        await srv.wait_applied(0.25)


async def _delete_quietly(srv: "EtcdServer", key: bytes) -> None:
    try:
        await srv.delete_range(pb.DeleteRangeRequest(key=key))
    except EtcdError:
        pass


async def _wait_or_withdraw(srv: "EtcdServer", key: bytes, my_rev: int) -> None:
    """Wait for our turn; if we give up (error or cancellation), take our key back out."""
    try:
        await _wait_turn(srv, key, my_rev)
    except asyncio.CancelledError:
        # the client went away: withdraw in the background, the cancellation goes on
        asyncio.get_running_loop().create_task(_delete_quietly(srv, key))
        raise
    except EtcdError as e:
        if e is not SESSION_EXPIRED:
            await _delete_quietly(srv, key)
        raise


async def lock(srv: "EtcdServer", r: lockpb.LockRequest) -> lockpb.LockResponse:
    if not r.name:
        raise errors.EMPTY_KEY
    key = _owner_key(r.name, r.lease)
    my_rev, _ = await _enqueue(srv, key, b"", r.lease)
    await _wait_or_withdraw(srv, key, my_rev)
    return lockpb.LockResponse(header=srv.header(), key=key)


async def unlock(srv: "EtcdServer", r: lockpb.UnlockRequest) -> lockpb.UnlockResponse:
    resp = await srv.delete_range(pb.DeleteRangeRequest(key=r.key))
    return lockpb.UnlockResponse(header=resp.header)


# ------------------------------------------------------------------ election
async def campaign(srv: "EtcdServer", r: elpb.CampaignRequest) -> elpb.CampaignResponse:
    if not r.name:
        raise errors.EMPTY_KEY
    key = _owner_key(r.name, r.lease)
    my_rev, created = await _enqueue(srv, key, r.value, r.lease)
    if not created:
        # campaigning again with the same lease re-proclaims the value, as etcd's Election does
        await srv.put(pb.PutRequest(key=key, value=r.value, lease=r.lease))
    await _wait_or_withdraw(srv, key, my_rev)
    leader = elpb.LeaderKey(name=r.name, key=key, rev=my_rev, lease=r.lease)
    return elpb.CampaignResponse(header=srv.header(), leader=leader)


async def proclaim(srv: "EtcdServer", r: elpb.ProclaimRequest) -> elpb.ProclaimResponse:
    lk = r.leader
    resp = await srv.txn(
        pb.TxnRequest(
            compare=[Compare(key=lk.key, target=Compare.CREATE, result=Compare.EQUAL, create_revision=lk.rev)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=lk.key, value=r.value, lease=lk.lease))],
        )
    )
    if not resp.succeeded:
        raise NOT_LEADER
    return elpb.ProclaimResponse(header=resp.header)


def leader(srv: "EtcdServer", r: elpb.LeaderRequest) -> elpb.LeaderResponse:
    kv = _first_waiter(srv, r.name + b"/", None)
    if kv is None:
        raise NO_LEADER
    return elpb.LeaderResponse(header=srv.header(), kv=kv)


async def observe(srv: "EtcdServer", r: elpb.LeaderRequest) -> AsyncIterator[elpb.LeaderResponse]:
    """Every change of leader or of the leader's value, starting with the current one."""
    last: tuple[bytes, int] | None = None
    prefix = r.name + b"/"
    while True:
        kv = _first_waiter(srv, prefix, None)
        cur = None if kv is None else (kv.key, kv.mod_revision)
        if cur is None or cur == last:
            await srv.wait_applied(0.25)
            continue
        last = cur
        yield elpb.LeaderResponse(header=srv.header(), kv=kv)


async def resign(srv: "EtcdServer", r: elpb.ResignRequest) -> elpb.ResignResponse:
    lk = r.leader
    resp = await srv.txn(
        pb.TxnRequest(
            compare=[Compare(key=lk.key, target=Compare.CREATE, result=Compare.EQUAL, create_revision=lk.rev)],
            success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=lk.key))],
        )
    )
    return elpb.ResignResponse(header=resp.header)
