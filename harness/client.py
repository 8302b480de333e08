"""The harness's etcd v3 client: asyncio gRPC on the project's stubs, one channel per worker.

Every call has a deadline and no hidden retries: a request is sent once, and its outcome is
classified the way a history needs it. `Definite` errors mean the request certainly did not take
effect (the server refused it before proposing, or it never left this process); anything else
after sending (a timeout, a lost connection, "request timed out", "leader changed") is
`Indefinite`: it may have taken effect. Reads have no effect, so a failed read is always definite.
Works against the reference server and real etcd alike.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import AsyncIterator

import grpc

from server.keyrange import prefix_end  # noqa: F401  (re-exported for workloads)
from server.proto.etcdserverpb import rpc_pb2 as pb
from server.proto.etcdserverpb import rpc_pb2_grpc as pbg
from server.proto.v3lockpb import v3lock_pb2 as lockpb
from server.proto.v3lockpb import v3lock_pb2_grpc as lockg

# errors etcd (and the reference server) return only before proposing anything
_DEFINITE_MESSAGES = (
    "etcdserver: key is not provided",
    "etcdserver: too many operations in txn request",
    "etcdserver: duplicate key given in txn request",
    "etcdserver: request is too large",
    "etcdserver: too many requests",
    "etcdserver: mvcc: database space exceeded",
    "etcdserver: no leader",
    "etcdserver: not leader",
    "etcdserver: server stopped",
    "etcdserver: requested lease not found",
    "etcdserver: rpc not supported for learner",
)
_DEFINITE_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
# the transport never got the request to a server
_NEVER_SENT = ("failed to connect", "Connection refused", "DNS resolution failed", "No route to host",
               "connections to all backends failing", "Network is unreachable")


class ClientError(Exception):
    def __init__(self, message: str, definite: bool, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.definite = definite
        self.code = code


class Definite(ClientError):
    """The request certainly did not take effect."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message, True, code)


class Indefinite(ClientError):
    """The request may or may not have taken effect."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message, False, code)


def classify(e: grpc.aio.AioRpcError, read_only: bool) -> ClientError:
    code = e.code()
    msg = e.details() or code.name
    if read_only:
        return Definite(msg, code.name)
    if code in _DEFINITE_CODES or msg in _DEFINITE_MESSAGES:
        return Definite(msg, code.name)
    if code == grpc.StatusCode.UNAVAILABLE and any(s in msg for s in _NEVER_SENT):
        return Definite(msg, code.name)
    return Indefinite(msg, code.name)


def auth_refusal(e: grpc.RpcError) -> bool:
    """A read refused for want of a user or a permission. Health checks take it as healthy, as
    `etcdctl endpoint health` does: etcd and the reference server check a read's permissions
    after its ReadIndex round, so the member answered through raft."""
    code = e.code()
    return code == grpc.StatusCode.PERMISSION_DENIED or (
        code == grpc.StatusCode.INVALID_ARGUMENT and "user name is empty" in (e.details() or ""))


def encode(v: int) -> bytes:
    return str(v).encode()


def decode(b: bytes) -> int | str:
    s = b.decode(errors="replace")
    try:
        return int(s)
    except ValueError:
        return s


@dataclass
class ReadResult:
    value: int | str | None
    revision: int
    mod_revision: int = 0


@dataclass(frozen=True)
class Credentials:
    """A user to authenticate as (etcd's simple-token auth), as etcdctl --user does."""

    user: str
    password: str


# answers after which a token is worth fetching again: a restarted member forgot it (tokens live
# in memory), or the auth store changed since it was checked; the op itself did not happen
_STALE_TOKEN = ("invalid auth token", "revision of auth store is old", "user name is empty")


class EtcdClient:
    """One connection to one member. Methods raise Definite or Indefinite on failure.

    With credentials, the client authenticates before its first request and sends the token with
    every request; a request refused for its token fails (definitely) and the next one
    authenticates again, as etcd's clients do (they retry the request itself; ours never retry
    behind the history's back)."""

    def __init__(self, endpoint: str, timeout: float = 5.0, credentials: Credentials | None = None) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.credentials = credentials
        self._token: str | None = None
        self._ch = grpc.aio.insecure_channel(
            endpoint,
            options=[("grpc.enable_retries", 0), ("grpc.initial_reconnect_backoff_ms", 100),
                     ("grpc.max_reconnect_backoff_ms", 1000), ("grpc.use_local_subchannel_pool", 1)],
        )
        self.kv = pbg.KVStub(self._ch)
        self.maint = pbg.MaintenanceStub(self._ch)
        self.cluster = pbg.ClusterStub(self._ch)
        self.lease = pbg.LeaseStub(self._ch)
        self.watcher = pbg.WatchStub(self._ch)
        self.locker = lockg.LockStub(self._ch)
        self.auth = pbg.AuthStub(self._ch)

    async def close(self) -> None:
        await self._ch.close()

    async def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        """The token's metadata, authenticating first when there is none (a failure to
        authenticate is definite: the request itself was never sent)."""
        if self.credentials is None:
            return None
        if self._token is None:
            c = self.credentials
            try:
                r = await self.auth.Authenticate(pb.AuthenticateRequest(name=c.user, password=c.password),
                                                 timeout=self.timeout, wait_for_ready=False)
            except grpc.aio.AioRpcError as e:
                if "authentication is not enabled" in (e.details() or ""):
                    return None  # as etcd's clients do: no token needed (asked again next time)
                raise Definite(f"authenticating as {c.user}: {e.details() or e.code().name}", e.code().name) from None
            self._token = r.token
        return (("token", self._token),)

    def _failed(self, e: grpc.aio.AioRpcError, read_only: bool) -> ClientError:
        err = classify(e, read_only)
        if self.credentials is not None and any(s in err.message for s in _STALE_TOKEN):
            self._token = None
        return err

    async def _call(self, fn, req, read_only: bool, timeout: float | None = None):
        md = await self._metadata()
        try:
            return await fn(req, timeout=timeout or self.timeout, wait_for_ready=False, metadata=md)
        except grpc.aio.AioRpcError as e:
            raise self._failed(e, read_only) from None

    # ------------------------------------------------------------- raw requests
    async def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        return await self._call(self.kv.Range, req, True)

    async def delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        return await self._call(self.kv.DeleteRange, req, False)

    async def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        """A Txn; read-only when it has no puts or deletes (then any error is definite)."""
        writes = any(op.WhichOneof("request") != "request_range" for op in [*req.success, *req.failure])
        return await self._call(self.kv.Txn, req, not writes)

    async def lease_grant(self, ttl: int) -> int:
        r = await self._call(self.lease.LeaseGrant, pb.LeaseGrantRequest(TTL=ttl), False)
        return r.ID

    async def lease_grant_raw(self, ttl: int) -> pb.LeaseGrantResponse:
        """LeaseGrant with its whole response (the TTL granted may differ from the one asked)."""
        return await self._call(self.lease.LeaseGrant, pb.LeaseGrantRequest(TTL=ttl), False)

    async def lease_revoke(self, lease: int) -> None:
        await self._call(self.lease.LeaseRevoke, pb.LeaseRevokeRequest(ID=lease), False)

    async def lease_ttl(self, lease: int) -> int:
        """The lease's remaining TTL in seconds; -1 when it has expired or never existed."""
        r = await self._call(self.lease.LeaseTimeToLive, pb.LeaseTimeToLiveRequest(ID=lease), True)
        return r.TTL

    async def lease_keepalive_once(self, lease: int) -> int:
        """One keep-alive on a stream of its own; returns the new TTL (0 or less: the lease is gone)."""
        call = self.lease.LeaseKeepAlive(timeout=self.timeout, metadata=await self._metadata())
        try:
            await call.write(pb.LeaseKeepAliveRequest(ID=lease))
            r = await call.read()
            await call.done_writing()
        except grpc.aio.AioRpcError as e:
            raise self._failed(e, True) from None
        finally:
            call.cancel()
        if r is grpc.aio.EOF:
            raise Indefinite("keep-alive stream closed", "UNAVAILABLE")
        return r.TTL

    async def lock(self, name: str, lease: int, timeout: float | None = None) -> bytes:
        """v3lock Lock: blocks until held; returns the lock's key (ownership lasts while the lease lives)."""
        r = await self._call(self.locker.Lock, lockpb.LockRequest(name=name.encode(), lease=lease), False, timeout)
        return r.key

    async def unlock(self, key: bytes) -> None:
        await self._call(self.locker.Unlock, lockpb.UnlockRequest(key=key), False)

    async def watch(self, create: pb.WatchCreateRequest, progress_every: float = 0.0) -> AsyncIterator[pb.WatchResponse]:
        """Open one watch and yield its responses until the stream ends or fails.

        With progress_every > 0 a progress request is sent at that interval. Errors end the
        iteration with Definite/Indefinite like any call (a watch has no effect to be unsure of,
        so the caller only learns that the stream is gone).
        """
        call = self.watcher.Watch(metadata=await self._metadata())
        await call.write(pb.WatchRequest(create_request=create))

        async def ask_progress() -> None:
            while True:
                await asyncio.sleep(progress_every)
                await call.write(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))

        pinger = asyncio.ensure_future(ask_progress()) if progress_every > 0 else None
        try:
            while True:
                r = await call.read()
                if r is grpc.aio.EOF:
                    return
                yield r
        except grpc.aio.AioRpcError as e:
            raise self._failed(e, True) from None
        finally:
            if pinger is not None:
                pinger.cancel()
            call.cancel()

    async def get(self, key: str, serializable: bool = False) -> ReadResult:
        r = await self._call(self.kv.Range, pb.RangeRequest(key=key.encode(), serializable=serializable), True)
        if not r.kvs:
            return ReadResult(None, r.header.revision)
        kv = r.kvs[0]
        return ReadResult(decode(kv.value), r.header.revision, kv.mod_revision)

    async def put(self, key: str, value: int) -> int:
        r = await self._call(self.kv.Put, pb.PutRequest(key=key.encode(), value=encode(value)), False)
        return r.header.revision

    async def cas(self, key: str, expected: int | None, new: int) -> tuple[bool, int]:
        """Write new if the key's value is expected (None: the key must not exist)."""
        k = key.encode()
        if expected is None:
            cmp = pb.Compare(key=k, target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)
        else:
            cmp = pb.Compare(key=k, target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=encode(expected))
        req = pb.TxnRequest(compare=[cmp], success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=encode(new)))])
        r = await self._call(self.kv.Txn, req, False)
        return r.succeeded, r.header.revision

    async def delete(self, key: str) -> int:
        r = await self._call(self.kv.DeleteRange, pb.DeleteRangeRequest(key=key.encode()), False)
        return r.deleted

    async def status(self) -> pb.StatusResponse:
        return await self._call(self.maint.Status, pb.StatusRequest(), True)

    async def hash_kv(self, revision: int = 0) -> pb.HashKVResponse:
        """The member's hash of its key-value history up to revision (0: its latest)."""
        return await self._call(self.maint.HashKV, pb.HashKVRequest(revision=revision), True)

    async def compact(self, revision: int, physical: bool = False) -> int:
        """Compact the key-value history up to revision; returns the response's revision."""
        r = await self._call(self.kv.Compact, pb.CompactionRequest(revision=revision, physical=physical), False)
        return r.header.revision

    async def auth_request(self, method: str, req):
        """One Auth service call by name ("RoleAdd", ...), as this client's user (nemesis/authchurn.py)."""
        return await self._call(getattr(self.auth, method), req, False)

    # ------------------------------------------------- membership and maintenance (nemesis/member.py, admin.py)
    async def member_list(self, linearizable: bool = True) -> pb.MemberListResponse:
        return await self._call(self.cluster.MemberList, pb.MemberListRequest(linearizable=linearizable), True)

    async def member_add(self, peer_urls: list[str], learner: bool = False) -> pb.MemberAddResponse:
        """etcdctl member add: the new member's ID and the membership with it."""
        return await self._call(self.cluster.MemberAdd, pb.MemberAddRequest(peerURLs=peer_urls, isLearner=learner), False)

    async def member_remove(self, member_id: int) -> pb.MemberRemoveResponse:
        return await self._call(self.cluster.MemberRemove, pb.MemberRemoveRequest(ID=member_id), False)

    async def defragment(self, timeout: float | None = None) -> None:
        """etcdctl defrag of this member (it blocks while it rewrites its backend)."""
        await self._call(self.maint.Defragment, pb.DefragmentRequest(), False, timeout)
