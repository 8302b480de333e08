"""The lock workload: clients take etcd locks the way etcd users do, and guard a counter with them.

Each worker repeats: acquire a lock, increment that lock's counter once or twice, release.
A process (one connection) has a session (harness/session.py): a lease kept alive in the
background, as clientv3/concurrency.Session. Locks are taken two ways, at random, on the same
lock names (they interoperate: both use etcd's key layout `<name>/<lease id in hex>`):

  v3lock   the Lock service (Lock blocks until held and returns the lock's key; Unlock deletes it);
  recipe   etcd's client-side Mutex: create our key under the prefix with the session's lease
           (only if absent), then, while a key with a smaller create revision exists, watch the
           newest such key until it is deleted; held once ours is the oldest.

An acquire refused before our key was written fails; one that cannot finish once its key is
queued (a timeout, an error while waiting or just after taking the lock) revokes the session's
lease before giving up: if the revoke succeeded the lock is certainly not held (fail),
otherwise the acquire may have taken it (info). The increment reads the counter and writes counter+1 in a Txn whose only
compare is the fence "our lock key still exists with its create revision": the read-modify-
write is not atomic, so only the lock keeps two increments apart, and a lost update shows.
A fence that fails means the key is gone (the lease expired): the increment is `fail` with
fenced=true. Release checks the fence too and records whether the lock was still ours
(lost=true when not). Every op records the session's lease id, its TTL and how long the lease
surely had left (`lease_deadline_in`, negative: past the point where the client could know).

The recovery phase reads every counter from every member and compares the members' HashKV.
Checked by checker/lock.py: the acquire/release history against the mutex model (with the
lease's known weakness told apart from real violations) and the counters for lost updates.
"""
from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from checker import converge as converge_checker
from checker import lock as lock_checker
from checker import stats
from checker.history import Op
from harness.client import ClientError, Definite, EtcdClient, Indefinite, decode, encode, prefix_end
from harness.generator import OpTemplate, worker_rng
from harness.session import Session
from server.proto.etcdserverpb import rpc_pb2 as pb
from workloads import converge
from workloads.base import Checker

Cmp = pb.Compare
LOCKS = ("lock/a", "lock/b")
MODES = ("v3lock", "recipe")
FINAL = "final"


def counter_key(name: str) -> str:
    return f"counter/{name}"


class LockOps:
    """acquire, 1-2 increments, release, over and over (a pure function of seed and worker)."""

    def __init__(self, seed: int, worker: int, locks: tuple[str, ...] = LOCKS) -> None:
        self.rng = worker_rng(seed, worker)
        self.locks = locks
        self.plan: list[OpTemplate] = []

    def next(self) -> OpTemplate:
        if not self.plan:
            name = self.rng.choice(self.locks)
            incrs = [OpTemplate("incr", name, None)] * self.rng.randint(1, 2)
            self.plan = [OpTemplate("acquire", name, self.rng.choice(MODES)), *incrs,
                         OpTemplate("release", name, None)]
        return self.plan.pop(0)


class NotHeld(Exception):
    """An acquire that certainly left nothing of ours holding or queued for the lock."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass
class Hold:
    name: str
    mode: str
    key: bytes
    create_revision: int
    session: Session
    lost: bool = False

    def fence(self) -> pb.Compare:
        """True while our lock key exists as we created it."""
        return Cmp(key=self.key, target=Cmp.CREATE, result=Cmp.EQUAL, create_revision=self.create_revision)


@dataclass
class Proc:
    """What one process (one client connection) holds."""

    session: Session | None = None
    holds: dict[str, Hold] = field(default_factory=dict)


class LockWorkload:
    def __init__(self, name: str = "lock", ttl: int = 3, locks: tuple[str, ...] = LOCKS,
                 wait_share: float = 0.6) -> None:
        self.name = name
        self.ttl = ttl
        self.locks = locks
        self.wait_share = wait_share  # share of the client's deadline an acquire may wait
        self.procs: "weakref.WeakKeyDictionary[EtcdClient, Proc]" = weakref.WeakKeyDictionary()

    def op_source(self, seed: int, worker: int) -> LockOps:
        return LockOps(seed, worker, self.locks)

    async def setup(self, client: EtcdClient) -> None:
        return None

    def proc(self, client: EtcdClient) -> Proc:
        p = self.procs.get(client)
        if p is None:
            p = self.procs[client] = Proc()
        return p

    async def invoke(self, client: EtcdClient, op: OpTemplate) -> tuple[str, Any, dict]:
        if op.f == converge.HASHKV:
            return await converge.invoke_hashkv(client, op.value)
        if op.f == "read":
            r = await client.get(op.key)
            return "ok", r.value, {"revision": r.revision, "mod_revision": r.mod_revision, "final": True}
        p = self.proc(client)
        if op.f == "acquire":
            return await self.acquire(client, p, op.key, op.value)
        hold = p.holds.get(op.key)
        if hold is None:
            raise Definite(f"not holding {op.key}")
        if op.f == "incr":
            return await self.incr(client, hold)
        if op.f == "release":
            return await self.release(client, p, hold)
        raise ValueError(f"lock: unknown op {op.f!r}")

    @staticmethod
    def lease_info(s: Session) -> dict:
        return {"lease": s.lease, "lease_ttl": s.ttl, "lease_deadline_in": round(s.remaining(), 3),
                **({"lease_done": s.why} if s.done else {})}

    async def session(self, client: EtcdClient, p: Proc) -> Session:
        if p.session is None or p.session.done:
            try:
                p.session = await Session(client, self.ttl).open()
            except ClientError as e:  # a lease we may have been granted holds no lock
                raise Definite(f"session: lease grant failed: {e.message}", e.code) from None
        return p.session

    async def acquire(self, client: EtcdClient, p: Proc, name: str, mode: str) -> tuple[str, Any, dict]:
        if name in p.holds:
            raise Definite(f"already holding {name}")
        s = await self.session(client, p)
        deadline = time.monotonic() + self.wait_share * client.timeout
        try:
            if mode == "v3lock":
                key, rev = await self.lock_v3(client, s, name, deadline)
            else:
                key, rev = await self.lock_recipe(client, s, name, deadline)
        except NotHeld as e:
            if "lease not found" in e.message or "session expired" in e.message:
                s.end(e.message)
            raise Definite(e.message, e.code) from None
        except (ClientError, asyncio.TimeoutError) as e:
            # maybe queued, maybe holding: only the lease's end makes it certain we hold nothing
            msg = e.message if isinstance(e, ClientError) else "lock wait timed out"
            if await s.revoke():
                raise Definite(f"{msg}; session lease revoked, so the lock is not held") from None
            raise Indefinite(f"{msg}; the session lease could not be revoked") from None
        p.holds[name] = Hold(name, mode, key, rev, s)
        return "ok", mode, {"lock_key": key.decode(), "create_revision": rev, **self.lease_info(s)}

    async def lock_v3(self, client: EtcdClient, s: Session, name: str, deadline: float) -> tuple[bytes, int]:
        try:
            key = await client.lock(name, s.lease, timeout=max(deadline - time.monotonic(), 0.1))
        except Definite as e:  # refused before anything was written
            raise NotHeld(e.message, e.code) from None
        r = await client.range(pb.RangeRequest(key=key))  # we hold it now: errors from here revoke
        if not r.kvs:
            raise NotHeld("session expired: the lock key vanished right after Lock returned")
        return key, r.kvs[0].create_revision

    async def lock_recipe(self, client: EtcdClient, s: Session, name: str, deadline: float) -> tuple[bytes, int]:
        prefix = f"{name}/".encode()
        key = prefix + format(s.lease, "x").encode()
        oldest = pb.RangeRequest(key=prefix, range_end=prefix_end(prefix), sort_order=pb.RangeRequest.ASCEND,
                                 sort_target=pb.RangeRequest.CREATE, limit=1)
        try:
            r = await client.txn(pb.TxnRequest(
                compare=[Cmp(key=key, target=Cmp.CREATE, result=Cmp.EQUAL, create_revision=0)],
                success=[pb.RequestOp(request_put=pb.PutRequest(key=key, lease=s.lease)),
                         pb.RequestOp(request_range=oldest)],
                failure=[pb.RequestOp(request_range=pb.RangeRequest(key=key)), pb.RequestOp(request_range=oldest)]))
        except Definite as e:  # our key was not written
            raise NotHeld(e.message, e.code) from None
        # from here our key is queued under the prefix: any error revokes the lease
        if r.succeeded:
            mine = r.header.revision
        else:
            kvs = r.responses[0].response_range.kvs
            if not kvs:
                raise NotHeld("session expired: our lock key vanished")
            mine = kvs[0].create_revision
        owner = r.responses[1].response_range.kvs
        if owner and owner[0].create_revision == mine:
            return key, mine
        async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
            await self.wait_for_predecessors(client, prefix, mine)
        r2 = await client.range(pb.RangeRequest(key=key))
        if not r2.kvs or r2.kvs[0].create_revision != mine:
            raise NotHeld("session expired while waiting for the lock")
        return key, mine

    async def wait_for_predecessors(self, client: EtcdClient, prefix: bytes, mine: int) -> None:
        """Until no key under prefix was created before ours: each time, wait for the newest
        older key to be deleted (waiting on one key, not the whole prefix, avoids a herd)."""
        while True:
            r = await client.range(pb.RangeRequest(
                key=prefix, range_end=prefix_end(prefix), sort_order=pb.RangeRequest.DESCEND,
                sort_target=pb.RangeRequest.CREATE, limit=1, max_create_revision=mine - 1))
            if not r.kvs:
                return
            before = r.kvs[0].key
            create = pb.WatchCreateRequest(key=before, start_revision=r.header.revision + 1,
                                           filters=[pb.WatchCreateRequest.NOPUT])
            stream = client.watch(create)
            try:
                async for resp in stream:
                    if resp.canceled:
                        raise Indefinite(f"watch of {before!r} cancelled: {resp.cancel_reason}")
                    if any(e.kv.key == before for e in resp.events):
                        break
                else:
                    raise Indefinite("watch stream ended while waiting for the lock")
            finally:
                await stream.aclose()

    async def incr(self, client: EtcdClient, h: Hold) -> tuple[str, Any, dict]:
        ck = counter_key(h.name).encode()
        cur = await client.range(pb.RangeRequest(key=ck))
        old = decode(cur.kvs[0].value) if cur.kvs else 0
        if not isinstance(old, int):
            raise Definite(f"counter {ck!r} holds {old!r}")
        r = await client.txn(pb.TxnRequest(compare=[h.fence()],
                                           success=[pb.RequestOp(request_put=pb.PutRequest(key=ck, value=encode(old + 1)))]))
        extra = {"revision": r.header.revision, "read_mod_revision": cur.kvs[0].mod_revision if cur.kvs else 0,
                 **self.lease_info(h.session)}
        if not r.succeeded:
            h.lost = True
            return "fail", [old, old + 1], {**extra, "fenced": True}
        return "ok", [old, old + 1], extra

    async def release(self, client: EtcdClient, p: Proc, h: Hold) -> tuple[str, Any, dict]:
        del p.holds[h.name]
        try:
            if h.mode == "v3lock":
                r = await client.txn(pb.TxnRequest(compare=[h.fence()]))
                still = r.succeeded
                await client.unlock(h.key)
            else:
                r = await client.txn(pb.TxnRequest(compare=[h.fence()],
                                                   success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=h.key))]))
                still = r.succeeded
        except ClientError:
            h.session.abandon()  # maybe still ours: let the lease end it
            raise
        return "ok", h.mode, {"lost": not still, "revision": r.header.revision, **self.lease_info(h.session)}

    def final_ops(self, history: list[Op]) -> list[OpTemplate]:
        nodes = converge.node_count(history)
        reads = [OpTemplate("read", counter_key(n), FINAL) for n in self.locks]
        return converge.spread(reads, nodes) + converge.hashkv_ops(history)

    def checkers(self) -> dict[str, Checker]:
        return {"mutex": lock_checker.check_mutex, "fenced-counter": lock_checker.check_counter,
                "converged": converge_checker.check, "stats": stats.check}


FACTORIES = {"lock": LockWorkload}
