"""EtcdServer: one member. Bootstraps, joins or recovers, commits writes through Raft, applies
them, serves reads, and keeps leases, watches, membership and compaction going.

Concurrency: everything runs on one asyncio event loop (the gRPC and HTTP front ends, raft,
apply, reads, watches, housekeeping), so the store needs no locks. Blocking disk work runs on
helper threads: WAL writes and fsyncs (raftnode.py) and backend commits, snapshot copies and
compaction scans (`_io`), whose data structures are thread-safe (backend.py). Writes and
linearizable reads are coroutines: a write proposes and waits for its entry to be applied on
this member; a linearizable read waits for a ReadIndex confirmation. Front ends turn EtcdError
into their own error form.
"""
from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import random
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import google_crc32c

from server import errors
from server.auth import READ, AuthInfo, current_token
from server.apply import LEASE_BUCKET, MEMBERS_BUCKET, Applier, CompactionJob, _has_put, decode_lease
from server.backend import META_CONSISTENT_INDEX, META_TERM, Backend
from server.config import API_VERSION, Config, compaction_period
from server.ids import IDGenerator, cluster_id, member_id
from server.kvops import do_range, do_txn_read
from server.lease import Lessor, min_lease_ttl
from server.metrics import Metrics
from server.mvcc.revision import bytes_to_rev, main_rev_prefix
from server.mvcc.store import KVStore
from server.proto.etcdserverpb import raft_internal_pb2, rpc_pb2
from server.proto.raftpb import raft_pb2
from server.raft import ConfState, Role, SnapshotMeta
from server.raft.types import EntryConfChange
from server.raftnode import RaftNode, conf_from_pb, conf_to_pb, make_raft
from server.transport import RPC_LEASE_RENEW, RPC_LEASE_TTL, RPC_MEMBERS, RPCError, Transport, fetch_from_any
from server.validate import check_delete, check_put, check_range, check_txn, txn_is_readonly
from server.wal import WAL, WALCorruptError, WalSnapshot, encode_batch
from server.watch import WatchHub

log = logging.getLogger("etcdproof.server")
pb = rpc_pb2
InternalRaftRequest = raft_internal_pb2.InternalRaftRequest
ConfChange = raft_pb2.ConfChange

CLUSTER_BUCKET = b"cluster"
_METADATA = struct.Struct(">QQ")  # member id, cluster id (the WAL's metadata record)
SNAPSHOT_CHUNK = 32 * 1024
QUOTA_OVERHEAD = 256  # bytes charged per write on top of its size, for index and page overhead
LEASE_TTL_TOO_LONG_TRANSFER = 0


_TIMED_OUT = object()


class _Expiry:
    """Futures that time out after one fixed delay, swept by a single timer. Every proposal waits
    the same request timeout, so they expire in the order they were made: a deque, instead of a
    loop.call_later per request (a TimerHandle, a heap push and a cancel: a few percent of a
    member's CPU at thousands of puts a second). Expiry is late by at most `grain` seconds."""

    def __init__(self, delay: float, grain: float = 0.05) -> None:
        self.delay = delay
        self.grain = grain
        self._q: collections.deque[tuple[float, asyncio.Future]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, fut: asyncio.Future) -> None:
        loop = fut.get_loop()
        self._q.append((loop.time() + self.delay, fut))
        if self._timer is None:
            self._timer = loop.call_later(self.delay + self.grain, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        q = self._q
        while q and q[0][0] <= now:
            fut = q.popleft()[1]
            if not fut.done():
                fut.set_result(_TIMED_OUT)
        self._timer = loop.call_at(max(q[0][0], now + self.grain), self._sweep, loop) if q else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


def _txn_serializable(r: pb.TxnRequest) -> bool:
    """A read-only txn whose every range asked for serializable reads (then no ReadIndex)."""
    for op in list(r.success) + list(r.failure):
        which = op.WhichOneof("request")
        if which == "request_range" and not op.request_range.serializable:
            return False
        if which == "request_txn" and not _txn_serializable(op.request_txn):
            return False
    return True


class EtcdServer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self._waiters: dict[int, asyncio.Future] = {}
        self._expiry = _Expiry(cfg.request_timeout)
        self._stopped = False
        self._tasks: list[asyncio.Task] = []
        self._lockfile: int | None = None
        self.fatal: BaseException | None = None
        self.removed = False  # this member was removed from the cluster
        self.started_at = time.time()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")
        self._commit_inflight: asyncio.Future | None = None
        self._maint: asyncio.Lock | None = None  # compaction deletes vs defragment (made in start)
        self._applied: asyncio.Event | None = None  # replaced after every applied batch
        self.member_id = 0
        self.cluster_id = 0
        self.node: RaftNode | None = None
        self.transport: Transport | None = None

        os.makedirs(cfg.member_dir, exist_ok=True)
        self._lock_data_dir()
        if cfg.unsafe_no_fsync:
            log.warning("--unsafe-no-fsync: WAL appends and backend commits are not fsynced; a crash loses acknowledged writes")
        self.backend = self._open_backend()
        self.lessor = Lessor(min_lease_ttl(cfg.heartbeat_ms, cfg.election_ms))
        self.lessor.demote()  # clocks run only while this member leads
        self.store = KVStore(self.backend, self.lessor)
        self.hub = WatchHub(self.store, self.header, max_response_bytes=cfg.max_request_bytes)
        self.applier = Applier(self.store, self.lessor, self.backend, self.hub, time.monotonic)
        self.auth = self.applier.auth
        # read when scraped, not kept up to date per request
        self.metrics.proposals_pending.set_function(lambda: len(self._waiters))
        self.metrics.proposals_applied.set_function(lambda: self.applier.applied_index)
        self.metrics.proposals_committed.set_function(lambda: self.node.committed_index if self.node else 0)

    def _open_backend(self) -> Backend:
        cfg = self.cfg
        return Backend(
            cfg.backend_path,
            map_size=max(4 << 30, 2 * cfg.quota_backend_bytes + (1 << 30)),
            batch_interval=cfg.backend_batch_interval,
            batch_limit=cfg.backend_batch_limit,
            observe_commit=self.metrics.backend_commit.observe,
            no_fsync=cfg.unsafe_no_fsync,
        )

    # ------------------------------------------------------------ startup
    def _lock_data_dir(self) -> None:
        path = os.path.join(self.cfg.member_dir, "lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StartupError(f"data dir {self.cfg.data_dir} is in use by another server") from None
        self._lockfile = fd

    def _walkw(self) -> dict:
        return dict(max_wals=self.cfg.max_wals, observe_fsync=self.metrics.wal_fsync.observe,
                    no_fsync=self.cfg.unsafe_no_fsync)

    def _has_wal(self) -> bool:
        p = self.cfg.wal_path
        return os.path.isdir(p) and any(n.endswith(".wal") for n in os.listdir(p))

    async def start(self) -> None:
        """Open or create the member's state, start raft, the transport and housekeeping."""
        self._maint = asyncio.Lock()
        self._applied = asyncio.Event()
        self.ready = asyncio.Event()  # set once this member's name and client URLs are published
        if self._has_wal():
            wal, hs, snap, entries = self._restart()
        else:
            wal, hs, snap, entries = await self._bootstrap()
        self.idgen = IDGenerator(self.member_id, int(time.time() * 1000))
        seed = random.SystemRandom().getrandbits(64)
        raft = make_raft(self.member_id, self.cfg.heartbeat_ms, self.cfg.election_ms, random.Random(seed),
                         snap.conf, hs, snap, entries)
        self.node = RaftNode(self, wal, raft, snap.conf, seed)
        raft.cfg.snapshot_provider = self.node.snapshot_provider
        self.transport = Transport(
            self.cluster_id, self.member_id, os.path.dirname(self.cfg.backend_path),
            on_message=self.node.step, on_unreachable=self.node.report_unreachable,
            on_snapshot_status=self.node.report_snapshot, handle_rpc=self._handle_rpc,
        )
        self.transport.on_removed = self._on_removed
        await self.transport.listen([(u.host, u.port) for u in self.cfg.listen_peer_urls])
        self._update_peers()
        self.node.start()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(loop.create_task(self._publish(), name="publish"))

    def _restart(self) -> tuple[WAL, raft_pb2.HardState, SnapshotMeta, list]:
        try:
            wal, res = WAL.open(self.cfg.wal_path, **self._walkw())
        except WALCorruptError as e:
            raise StartupError(str(e)) from None
        for t in res.truncated:
            log.warning("wal: repaired torn tail: %s", t)
        self.member_id, self.cluster_id = _METADATA.unpack(res.metadata)
        self._recover()
        snap = SnapshotMeta(res.snapshot.index, res.snapshot.term, conf_from_pb(res.snapshot.conf_state))
        hs = res.hard_state
        entries = res.entries
        ci = self.applier.applied_index
        last = entries[-1].Index if entries else snap.index
        if ci > last:
            # the WAL lost a tail the backend had already applied (a torn write, or a crash while
            # installing a snapshot): start the log at the backend's state
            conf = self._conf_from_members()
            log.warning("backend at index %d is ahead of the wal (%d): recording a wal snapshot there", ci, last)
            snap = SnapshotMeta(ci, self.applier.applied_term, conf)
            wal.save_snapshot(WalSnapshot(index=ci, term=snap.term, conf_state=conf_to_pb(conf)))
            entries = []
            hs = raft_pb2.HardState(term=max(hs.term, snap.term), vote=hs.vote, commit=ci)
        log.info(
            "restarting member %x in cluster %x: wal snapshot at %d, %d entries after it, backend at %d",
            self.member_id, self.cluster_id, snap.index, len(entries), ci,
        )
        # entries past the backend's index are applied again as raft hands them out
        self._log_recovered(sum(1 for e in entries if e.Index > ci and e.Index <= hs.commit))
        return wal, hs, snap, entries

    def _conf_from_members(self) -> ConfState:
        ms = self.applier.members.values()
        return ConfState(tuple(sorted(m.ID for m in ms if not m.isLearner)),
                         tuple(sorted(m.ID for m in ms if m.isLearner)))

    async def _bootstrap(self) -> tuple[WAL, raft_pb2.HardState, SnapshotMeta, list]:
        cfg = self.cfg
        if self.backend.get_meta(META_CONSISTENT_INDEX):
            raise StartupError(f"{cfg.backend_path} holds data but {cfg.wal_path} has no WAL; refusing to start")
        mine = sorted(cfg.initial_cluster[cfg.name])
        if cfg.initial_cluster_state == "existing":
            # joining: the cluster assigned our ID when we were added; ask a member for it
            others = [u for n, urls in cfg.initial_cluster.items() if n != cfg.name for u in urls]
            if not others:
                raise StartupError("--initial-cluster-state=existing needs the other members in --initial-cluster")
            try:
                raw = await fetch_from_any(others, RPC_MEMBERS, b"")
            except RPCError as e:
                raise StartupError(f"cannot join the cluster: {e}") from None
            ml = pb.MemberListResponse.FromString(raw)
            match = [m for m in ml.members if sorted(m.peerURLs) == mine]
            if not match:
                raise StartupError(
                    f"this member's peer URLs {','.join(mine)} are not in the cluster's member list; "
                    "add it first (etcdctl member add)"
                )
            self.member_id = match[0].ID
            self.cluster_id = ml.header.cluster_id
            # know the members now, so their raft messages are accepted before the log that
            # lists them arrives (applying it later rewrites the same records)
            for m in ml.members:
                self.applier.put_member(m)
            self.backend.put(CLUSTER_BUCKET, b"clusterID", struct.pack(">Q", self.cluster_id))
            self.backend.commit()
            wal = WAL.create(cfg.wal_path, _METADATA.pack(self.member_id, self.cluster_id), **self._walkw())
            log.info("joining cluster %x as member %x (%s)", self.cluster_id, self.member_id, cfg.name)
            return wal, raft_pb2.HardState(), SnapshotMeta(), []
        ids = {name: member_id(urls, cfg.initial_cluster_token) for name, urls in cfg.initial_cluster.items()}
        self.member_id = ids[cfg.name]
        self.cluster_id = cluster_id(list(ids.values()))
        # every member writes the same first entries: one AddNode per member, committed at term 1
        entries = []
        for i, (name, mid) in enumerate(sorted(ids.items(), key=lambda kv: kv[1])):
            m = pb.Member(ID=mid, name=name if name == cfg.name else "", peerURLs=sorted(cfg.initial_cluster[name]))
            cc = ConfChange(type=raft_pb2.ConfChangeAddNode, node_id=mid, context=m.SerializeToString())
            entries.append(raft_pb2.Entry(Type=EntryConfChange, Term=1, Index=i + 1, Data=cc.SerializeToString()))
        hs = raft_pb2.HardState(term=1, vote=0, commit=len(entries))
        self.backend.put(CLUSTER_BUCKET, b"clusterID", struct.pack(">Q", self.cluster_id))
        self.backend.commit()
        wal = WAL.create(cfg.wal_path, _METADATA.pack(self.member_id, self.cluster_id), **self._walkw())
        wal.save(hs, entries)
        wal.sync()
        log.info("started new %d-member cluster %x as member %x (%s)", len(ids), self.cluster_id, self.member_id,
                 cfg.name)
        return wal, hs, SnapshotMeta(), entries

    def _recover(self) -> None:
        now = time.monotonic()
        self.applier.restore()
        self.lessor.leases.clear()
        for k, v in self.backend.items(LEASE_BUCKET):
            lid, ttl = decode_lease(v)
            self.lessor.restore(lid, ttl, now)
        unfinished = self.store.restore()
        if unfinished is not None:
            scheduled, _ = unfinished
            log.info("finishing compaction at %d interrupted by a restart", scheduled)
            keep = self.store.compact(scheduled)
            self._compact_now(CompactionJob(scheduled, keep))
    def _log_recovered(self, replay: int) -> None:
        log.info(
            "recovered: applied index %d (%d replayed from wal), revision %d, compacted %d, %d keys, %d leases, "
            "%d members",
            self.applier.applied_index, replay, self.store.current_rev, self.store.compact_rev,
            len(self.store.index), len(self.lessor.leases), len(self.applier.members),
        )

    def _compact_now(self, job: CompactionJob) -> None:
        """Finish a compaction synchronously (at startup, before serving)."""
        for chunk in self.store.compaction_victims(job.rev, job.keep, 10000):
            self.backend.delete_revs(chunk)
            self.backend.commit()
        self.store.finish_compaction(job.rev)
        self.backend.commit()

    def _on_removed(self) -> None:
        if not self.removed:
            log.warning("the cluster says this member (%x) was removed; stopping", self.member_id)
        self.removed = True

    def _update_peers(self) -> None:
        if self.transport is not None:
            self.transport.removed = set(self.applier.removed)
            self.transport.set_peers(
                {mid: list(m.peerURLs) for mid, m in self.applier.members.items() if mid != self.member_id}
            )

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.node is not None:
            await self.node.stop()
        if self.transport is not None:
            await self.transport.close()
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(errors.STOPPED)
        self._expiry.close()
        await asyncio.get_running_loop().run_in_executor(self._io, self.backend.close)
        self._io.shutdown(wait=True)
        if self._lockfile is not None:
            os.close(self._lockfile)
            self._lockfile = None

    def _on_fatal(self, e: BaseException) -> None:
        self.fatal = e
        self._stopped = True
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(errors.STOPPED)

    # ------------------------------------------------------------- apply
    def _wake_appliers(self) -> None:
        applied, self._applied = self._applied, asyncio.Event()
        if applied is not None:
            applied.set()

    def _fail_waiter(self, rid: int, err: errors.EtcdError) -> None:
        fut = self._waiters.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result(err)

    def _apply_entries(self, entries: list) -> None:
        """On the loop: apply committed normal entries, answer their proposers."""
        apply = self.applier.apply
        results = [res for e in entries for res in apply(e.Index, e.Term, e.Data)]
        self._wake_appliers()
        jobs, self.applier.compaction_jobs = self.applier.compaction_jobs, []
        held = []
        for rid, res in results:
            fut = self._waiters.pop(rid, None) if rid else None
            if fut is None or fut.done():
                continue
            # a physical compaction is answered once its revisions are gone; the rest now
            if isinstance(res, pb.CompactionResponse) and any(j.physical for j in jobs):
                held.append((fut, res))
            else:
                fut.set_result(res)
        loop = asyncio.get_running_loop()
        for job in jobs:
            loop.create_task(self._run_compaction(job, [f for f, _ in held], [r for _, r in held]))

    def _apply_conf_change(self, index: int, term: int, cc: ConfChange, conf: ConfState) -> None:
        res = self.applier.apply_conf_change(index, term, cc)
        self._wake_appliers()
        self._update_peers()
        if cc.type == raft_pb2.ConfChangeRemoveNode and cc.node_id == self.member_id:
            log.warning("this member (%x) was removed from the cluster; stopping", self.member_id)
            self.removed = True
        fut = self._waiters.pop(cc.id, None) if cc.id else None
        if fut is not None and not fut.done():
            fut.set_result(res)

    def _refuse_conf_change(self, index: int, term: int, cc: ConfChange) -> None:
        """A committed membership change that must not take effect: consumed, answered with an error."""
        self.applier.skip(index, term)
        self._fail_waiter(cc.id, errors.EtcdError(errors.Code.FAILED_PRECONDITION,
                                                  "etcdserver: cannot remove the last voting member"))

    def _after_apply(self) -> None:
        if self.backend.commit_due():
            self._commit_backend()

    def _commit_backend(self) -> asyncio.Future:
        """Commit the backend batch on the backend thread (one commit in flight at a time).

        Sealed here, on the loop, between applied entries: the thread commits only that, so a
        commit never holds half an entry's writes (see backend.py)."""
        if self._commit_inflight is None or self._commit_inflight.done():
            self.backend.seal()
            self._commit_inflight = asyncio.get_running_loop().run_in_executor(self._io, self.backend.commit, False)
        return self._commit_inflight

    async def _commit_backend_now(self) -> None:
        """Wait until everything applied so far is committed to the backend."""
        self.backend.seal()
        await asyncio.get_running_loop().run_in_executor(self._io, self.backend.commit, False)

    async def _backend_copy(self, path: str) -> tuple[int, int]:
        """A consistent copy of the backend for a follower; returns its (applied index, term)."""
        await self._commit_backend_now()
        return await asyncio.get_running_loop().run_in_executor(self._io, self.backend.copy_committed, path)

    async def _install_backend(self, path: str) -> None:
        """Replace the backend with a snapshot's file, and everything derived from it."""
        assert self._maint is not None
        async with self._maint:
            if self._commit_inflight is not None:
                await self._commit_inflight
            await asyncio.get_running_loop().run_in_executor(self._io, self.backend.replace_with, path)
            self._recover()
            self._log_recovered(0)
            if self.node is not None and self.node.is_leader():
                self.lessor.promote(time.monotonic(), self.cfg.election_ms / 1000)
            self.hub.notify_restored()
            self._update_peers()
            self._wake_appliers()

    async def _run_compaction(self, job: CompactionJob, held: list, responses: list, batch: int = 10000) -> None:
        """Physically remove compacted revisions, a batch per backend commit, between requests.

        No read reaches a revision below the compaction point, so serving goes on meanwhile;
        _maint keeps defragment and snapshot installs from swapping the file underneath.
        """
        removed = 0
        loop = asyncio.get_running_loop()
        assert self._maint is not None
        try:
            async with self._maint:
                victims = await loop.run_in_executor(
                    self._io, lambda: list(self.store.compaction_victims(job.rev, job.keep, batch))
                )
                for chunk in victims:
                    self.backend.delete_revs(chunk)
                    await self._commit_backend_now()
                    removed += len(chunk)
                self.store.finish_compaction(job.rev)
                await self._commit_backend_now()
            log.info("compacted at revision %d: removed %d revisions", job.rev, removed)
        except Exception:  # noqa: BLE001
            log.exception("compaction at %d failed", job.rev)
        finally:
            for fut, res in zip(held, responses):
                if not fut.done():
                    fut.set_result(res)

    # ------------------------------------------------------ leadership
    def _on_became_leader(self) -> None:
        self.metrics.is_leader.set(1)
        self.lessor.promote(time.monotonic(), self.cfg.election_ms / 1000)

    def _on_lost_leadership(self) -> None:
        self.metrics.is_leader.set(0)
        self.lessor.demote()

    # ----------------------------------------------------------- helpers
    @property
    def term(self) -> int:
        return self.node.term if self.node is not None else 0

    def header(self, revision: int = 0) -> pb.ResponseHeader:
        return pb.ResponseHeader(
            cluster_id=self.cluster_id,
            member_id=self.member_id,
            revision=revision or self.store.current_rev,
            raft_term=self.term,
        )

    def _fill(self, resp):
        h = resp.header
        h.cluster_id = self.cluster_id
        h.member_id = self.member_id
        h.raft_term = self.term
        if h.revision == 0:
            h.revision = self.store.current_rev
        return resp

    def _submit(self, req: InternalRaftRequest) -> int:
        """Assign an ID and hand the request to the log; returns the ID."""
        if self._stopped:
            raise errors.STOPPED
        rid = self.idgen.next()
        req.header.ID = rid
        data = req.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        assert self.node is not None
        self.node.propose(rid, data)
        return rid

    async def _propose(self, req: InternalRaftRequest) -> object:
        """Propose and wait until applied; returns the response with its header filled."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        rid = self._submit(req)
        self._waiters[rid] = fut
        # one sweeping timer for all proposals instead of asyncio.wait_for or a timer each
        self._expiry.add(fut)
        try:
            res = await fut
        finally:
            self._waiters.pop(rid, None)
        if res is _TIMED_OUT:
            self.metrics.proposals_failed.inc()
            raise errors.TIMEOUT
        if isinstance(res, errors.EtcdError):
            raise res
        return self._fill(res)

    def _propose_nowait(self, req: InternalRaftRequest) -> None:
        self._submit(req)

    # -------------------------------------------------------------- auth
    def auth_info(self) -> AuthInfo:
        """The caller of the request being served (server/auth.py: nobody when auth is off)."""
        return self.auth.info(current_token.get())

    def _stamp(self, req: InternalRaftRequest) -> InternalRaftRequest:
        """Mark a client's request with its user and the auth revision, for the check when it
        is applied (requests the server makes for itself stay unmarked)."""
        ai = self.auth_info()
        if ai.username:
            req.header.username = ai.username
        req.header.auth_revision = self.auth.revision
        return req

    def check_admin(self, maintenance: bool = False) -> None:
        if self.auth.enabled:
            self.auth.is_admin(self.auth_info(), maintenance)

    async def _check_quota(self, cost: int, capped: bool = True) -> None:
        """capped: refused while NOSPACE is raised (etcd lets a txn without puts through).

        Going over the quota raises the NOSPACE alarm through raft first, as etcd does, so
        every member refuses writes from then on."""
        if capped and self.applier.nospace():
            raise errors.NO_SPACE
        if self.backend.size_with_pending() + cost + QUOTA_OVERHEAD > self.cfg.quota_backend_bytes:
            log.warning("backend quota of %d bytes exhausted: raising the NOSPACE alarm", self.cfg.quota_backend_bytes)
            try:
                await self._propose(
                    InternalRaftRequest(
                        alarm=pb.AlarmRequest(
                            action=pb.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=pb.AlarmType.NOSPACE
                        )
                    )
                )
            except errors.EtcdError:
                pass
            raise errors.NO_SPACE

    # ---------------------------------------------------------------- KV
    async def linearizable(self) -> None:
        """Wait until this member may serve a linearizable read (ReadIndex through raft)."""
        if self._stopped or self.node is None:
            raise errors.STOPPED
        await self.node.read_barrier(self.cfg.request_timeout)

    async def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        check_range(r)
        if not r.serializable:
            await self.linearizable()
        if self.auth.enabled:
            self.auth.check(self.auth_info(), r.key, r.range_end, READ)
        return self._fill(do_range(self.store, r))

    async def put(self, r: pb.PutRequest) -> pb.PutResponse:
        check_put(r)
        await self._check_quota(r.ByteSize())
        return await self._propose(self._stamp(InternalRaftRequest(put=r)))  # type: ignore[return-value]

    async def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        check_delete(r)
        return await self._propose(self._stamp(InternalRaftRequest(delete_range=r)))  # type: ignore[return-value]

    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        check_txn(r, self.cfg.max_txn_ops)
        if txn_is_readonly(r):
            if not _txn_serializable(r):
                await self.linearizable()
            if self.auth.enabled:
                self.auth.check_txn(self.auth_info(), r)
            return self._fill(do_txn_read(self.store, r))
        await self._check_quota(r.ByteSize(), capped=_has_put(r))
        return await self._propose(self._stamp(InternalRaftRequest(txn=r)))  # type: ignore[return-value]

    async def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        return await self._propose(InternalRaftRequest(compaction=r))  # type: ignore[return-value]

    # ------------------------------------------------------------- lease
    async def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        await self._check_quota(64)
        req = pb.LeaseGrantRequest(TTL=r.TTL, ID=r.ID or (self.idgen.next() & ((1 << 63) - 1)))
        return await self._propose(InternalRaftRequest(lease_grant=req))  # type: ignore[return-value]

    async def lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        return await self._propose(self._stamp(InternalRaftRequest(lease_revoke=r)))  # type: ignore[return-value]

    def refuses_as_learner(self, request: object) -> bool:
        """etcd 3.4 serves a learner's clients only Status and serializable Range (its gRPC
        interceptors): everything else, streams included, is refused with Unavailable."""
        me = self.applier.members.get(self.member_id)
        if me is None or not me.isLearner:
            return False
        return not (isinstance(request, pb.StatusRequest)
                    or (isinstance(request, pb.RangeRequest) and request.serializable))

    def _leader_or_none(self) -> int:
        return self.node.lead if self.node is not None else 0

    async def lease_renew(self, lease_id: int) -> int:
        """Keep-alive: the lease's TTL, or 0 when it does not exist (what etcd answers).

        Only the leader runs lease clocks; other members forward the renewal to it, as etcd does.
        """
        if self.node is not None and self.node.is_leader():
            return self._renew_local(lease_id)
        lead = self._leader_or_none()
        if lead == 0 or self.transport is None:
            raise errors.NO_LEADER
        try:
            raw = await self.transport.call(lead, RPC_LEASE_RENEW, struct.pack(">q", lease_id), self.cfg.request_timeout)
        except RPCError:
            raise errors.TIMEOUT from None
        return struct.unpack(">q", raw)[0]

    def _renew_local(self, lease_id: int) -> int:
        try:
            return self.lessor.renew(lease_id, time.monotonic())
        except Exception:
            return 0

    async def lease_time_to_live(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        if self.node is not None and not self.node.is_leader():
            lead = self._leader_or_none()
            if lead == 0 or self.transport is None:
                raise errors.NO_LEADER
            try:
                raw = await self.transport.call(lead, RPC_LEASE_TTL, r.SerializeToString(), self.cfg.request_timeout)
            except RPCError:
                raise errors.TIMEOUT from None
            return self._fill(pb.LeaseTimeToLiveResponse.FromString(raw))
        return self._fill(self._time_to_live_local(r))

    def _time_to_live_local(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        lease = self.lessor.lookup(r.ID)
        if lease is None:
            return pb.LeaseTimeToLiveResponse(header=pb.ResponseHeader(), ID=r.ID, TTL=-1)
        remaining = lease.remaining(time.monotonic())
        resp = pb.LeaseTimeToLiveResponse(
            header=pb.ResponseHeader(),
            ID=r.ID,
            TTL=int(remaining) if remaining != float("inf") else lease.ttl,
            grantedTTL=lease.ttl,
        )
        if r.keys:
            resp.keys.extend(sorted(lease.keys))
        return resp

    def lease_leases(self) -> pb.LeaseLeasesResponse:
        # soonest expiry first, as etcd's lessor sorts them
        leases = self.lessor.leases
        ids = sorted(leases, key=lambda i: (leases[i].expiry, i))
        return self._fill(pb.LeaseLeasesResponse(header=pb.ResponseHeader(), leases=[pb.LeaseStatus(ID=i) for i in ids]))

    # ------------------------------------------------------- maintenance
    async def alarm(self, r: pb.AlarmRequest) -> pb.AlarmResponse:
        if r.action == pb.AlarmRequest.GET:
            # no header, as etcd 3.4 answers (and as the applied ACTIVATE/DEACTIVATE answer)
            return pb.AlarmResponse(alarms=self.applier.alarm_list())
        return await self._propose(InternalRaftRequest(alarm=r))  # type: ignore[return-value]

    def status(self) -> pb.StatusResponse:
        errs = [f"memberID:{m:d} alarm:{pb.AlarmType.Name(a)} " for m, a in sorted(self.applier.alarms)]
        if self._leader_or_none() == 0:
            errs.insert(0, errors.NO_LEADER.message)
        return self._fill(
            pb.StatusResponse(
                header=pb.ResponseHeader(),
                version=API_VERSION,
                dbSize=self.backend.size(),
                leader=self._leader_or_none(),
                raftIndex=self.node.committed_index if self.node else 0,
                raftTerm=self.term,
                raftAppliedIndex=self.applier.applied_index,
                errors=errs,
                dbSizeInUse=self.backend.size_in_use(),
                isLearner=self.member_id in self.applier.members and self.applier.members[self.member_id].isLearner,
            )
        )

    async def defragment(self) -> pb.DefragmentResponse:
        """Rewrite the backend compactly. Blocks the server meanwhile, as etcd's does."""
        self.check_admin(maintenance=True)
        assert self._maint is not None
        async with self._maint:
            if self._commit_inflight is not None:
                await self._commit_inflight
            before = self.backend.size()
            self.backend.defragment()
            log.info("defragmented backend: %d -> %d bytes", before, self.backend.size())
            return self._fill(pb.DefragmentResponse(header=pb.ResponseHeader()))

    def hash(self) -> pb.HashResponse:
        self.check_admin(maintenance=True)
        return self._fill(pb.HashResponse(header=pb.ResponseHeader(), hash=self.backend.hash()))

    def hash_kv(self, r: pb.HashKVRequest) -> pb.HashKVResponse:
        """etcd's HashKV, bit for bit: CRC-32C over "key" and the key bucket's entries up to rev.

        Entries at or below the compaction point count only if a compaction at rev would keep
        them (when it would keep anything), so members agree however far they have compacted.
        Runs on the loop in one go, so no compaction batch is half done underneath.
        """
        self.check_admin(maintenance=True)
        compact = self.store.compact_rev
        rev = r.revision
        if 0 < rev <= compact:
            raise errors.COMPACTED
        if rev > self.store.current_rev:
            raise errors.FUTURE_REV
        rev = rev or self.store.current_rev
        keep: set = set()
        h = google_crc32c.value(b"key")
        if rev > 0:  # a negative revision hashes no entries, as in etcd
            for ki in self.store.index.values():
                ki.keep(rev, keep)
            for k, v in self.backend.iter_revs(main_rev_prefix(0), main_rev_prefix(rev + 1)):
                if keep:
                    kr = bytes_to_rev(k)
                    if kr.main <= compact and kr not in keep:
                        continue
                h = google_crc32c.extend(google_crc32c.extend(h, k), v)
        return self._fill(
            pb.HashKVResponse(
                header=pb.ResponseHeader(),
                hash=h,
                compact_revision=compact,
                hash_revision=rev,
            )
        )

    async def snapshot(self) -> AsyncIterator[pb.SnapshotResponse]:
        """Stream a consistent copy of the backend, then its SHA-256 (as etcd appends it)."""
        self.check_admin(maintenance=True)
        fd, path = tempfile.mkstemp(prefix="snapshot-", dir=self.cfg.member_dir)
        os.close(fd)
        os.unlink(path)
        loop = asyncio.get_running_loop()
        try:
            await self._commit_backend_now()
            digest = await loop.run_in_executor(self._io, self.backend.snapshot_to, path)
            total = os.path.getsize(path) + 32
            sent = 0
            with open(path, "rb") as f:
                while True:
                    chunk = f.read(SNAPSHOT_CHUNK)
                    if not chunk:
                        break
                    sent += len(chunk)
                    yield pb.SnapshotResponse(header=self.header(), remaining_bytes=total - sent, blob=chunk, version=API_VERSION)
            yield pb.SnapshotResponse(header=self.header(), remaining_bytes=0, blob=bytes.fromhex(digest), version=API_VERSION)
        finally:
            if os.path.exists(path):
                os.unlink(path)

    async def move_leader(self, r: pb.MoveLeaderRequest) -> pb.MoveLeaderResponse:
        node = self.node
        assert node is not None
        if not node.is_leader():
            raise errors.NOT_LEADER
        target = self.applier.members.get(r.targetID)
        if target is None or target.isLearner:
            raise errors.BAD_LEADER_TRANSFEREE
        if r.targetID != self.member_id:
            node.transfer_leader(r.targetID)
            deadline = time.monotonic() + self.cfg.request_timeout
            while node.lead != r.targetID:
                if time.monotonic() > deadline:
                    raise errors.EtcdError(
                        errors.Code.UNAVAILABLE, "etcdserver: request timed out, leader transfer took too long"
                    )
                await asyncio.sleep(self.cfg.heartbeat_ms / 1000)
        return self._fill(pb.MoveLeaderResponse(header=pb.ResponseHeader()))

    def _members(self) -> list[pb.Member]:
        return sorted(self.applier.members.values(), key=lambda m: m.ID)

    def member_list(self) -> pb.MemberListResponse:
        # etcd's cluster service header carries no revision (cluster_server.go's header())
        header = pb.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id, raft_term=self.term)
        return pb.MemberListResponse(header=header, members=self._members())

    async def _conf_change(self, cc: ConfChange) -> list[pb.Member]:
        node = self.node
        assert node is not None
        if self._stopped:
            raise errors.STOPPED
        raft = node.raft
        if raft.role == Role.LEADER and raft.pending_conf_index > raft.log.applied:
            raise errors.EtcdError(errors.Code.FAILED_PRECONDITION,
                                   "etcdserver: a membership change is still in progress")
        fut = asyncio.get_running_loop().create_future()
        rid = self.idgen.next()
        self._waiters[rid] = fut
        try:
            node.propose_conf_change(rid, cc)
            res = await asyncio.wait_for(fut, self.cfg.request_timeout)
        except asyncio.TimeoutError:
            raise errors.TIMEOUT from None
        finally:
            self._waiters.pop(rid, None)
        if isinstance(res, errors.EtcdError):
            raise res
        return res  # type: ignore[return-value]

    def _check_peer_urls(self, urls: list[str], exclude: int = 0) -> list[str]:
        from server.config import parse_urls

        try:
            parsed = [str(u) for u in parse_urls(",".join(urls), "peer URLs")]
        except ValueError:
            raise errors.MEMBER_BAD_URLS from None
        if not parsed:
            raise errors.MEMBER_BAD_URLS
        for m in self.applier.members.values():
            if m.ID != exclude and set(m.peerURLs) & set(parsed):
                raise errors.PEER_URL_EXIST
        return sorted(parsed)

    def _started_voters(self) -> int:
        """Voters this member can reach now (itself included): etcd's strict reconfig check."""
        n = 1 if self.member_id in self.applier.members else 0
        if self.transport is not None:
            for mid, m in self.applier.members.items():
                p = self.transport.peers.get(mid)
                if mid != self.member_id and not m.isLearner and p is not None and p.connected:
                    n += 1
        return n

    async def member_add(self, r: pb.MemberAddRequest) -> pb.MemberAddResponse:
        self.check_admin()
        urls = self._check_peer_urls(list(r.peerURLs))
        voters = sum(1 for m in self.applier.members.values() if not m.isLearner)
        if not r.isLearner and self._started_voters() < (voters + 1) // 2 + 1:
            raise errors.MEMBER_NOT_ENOUGH_STARTED
        mid = member_id(urls, self.cfg.initial_cluster_token, int(time.time()))
        m = pb.Member(ID=mid, peerURLs=urls, isLearner=r.isLearner)
        kind = raft_pb2.ConfChangeAddLearnerNode if r.isLearner else raft_pb2.ConfChangeAddNode
        members = await self._conf_change(ConfChange(type=kind, node_id=mid, context=m.SerializeToString()))
        return self._fill(pb.MemberAddResponse(header=pb.ResponseHeader(), member=m, members=members))

    async def member_remove(self, r: pb.MemberRemoveRequest) -> pb.MemberRemoveResponse:
        self.check_admin()
        target = self.applier.members.get(r.ID)
        if target is None:
            raise errors.MEMBER_NOT_FOUND
        if not target.isLearner:
            voters = sum(1 for m in self.applier.members.values() if not m.isLearner)
            started = self._started_voters() - (1 if r.ID == self.member_id or self._is_connected(r.ID) else 0)
            if started < (voters - 1) // 2 + 1:
                raise errors.MEMBER_NOT_ENOUGH_STARTED
        members = await self._conf_change(ConfChange(type=raft_pb2.ConfChangeRemoveNode, node_id=r.ID))
        return self._fill(pb.MemberRemoveResponse(header=pb.ResponseHeader(), members=members))

    def _is_connected(self, mid: int) -> bool:
        p = self.transport.peers.get(mid) if self.transport is not None else None
        return p is not None and p.connected

    async def member_update(self, r: pb.MemberUpdateRequest) -> pb.MemberUpdateResponse:
        self.check_admin()
        if r.ID not in self.applier.members:
            raise errors.MEMBER_NOT_FOUND
        urls = self._check_peer_urls(list(r.peerURLs), exclude=r.ID)
        m = pb.Member(ID=r.ID, peerURLs=urls)
        members = await self._conf_change(
            ConfChange(type=raft_pb2.ConfChangeUpdateNode, node_id=r.ID, context=m.SerializeToString())
        )
        return self._fill(pb.MemberUpdateResponse(header=pb.ResponseHeader(), members=members))

    async def member_promote(self, r: pb.MemberPromoteRequest) -> pb.MemberPromoteResponse:
        self.check_admin()
        m = self.applier.members.get(r.ID)
        if m is None:
            raise errors.MEMBER_NOT_FOUND
        if not m.isLearner:
            raise errors.MEMBER_NOT_LEARNER
        node = self.node
        assert node is not None
        if node.is_leader():
            pr = node.raft.prs.get(r.ID)
            leader_match = node.raft.prs[self.member_id].match
            if pr is None or pr.match < leader_match * 0.9:
                raise errors.EtcdError(
                    errors.Code.FAILED_PRECONDITION,
                    "etcdserver: can only promote a learner member which is in sync with leader",
                )
        cc = ConfChange(type=raft_pb2.ConfChangeAddNode, node_id=r.ID,
                        context=pb.Member(ID=r.ID, peerURLs=list(m.peerURLs)).SerializeToString())
        members = await self._conf_change(cc)
        return self._fill(pb.MemberPromoteResponse(header=pb.ResponseHeader(), members=members))

    # ------------------------------------------------------ peer calls
    async def _handle_rpc(self, method: int, body: bytes) -> bytes:
        if method == RPC_MEMBERS:
            return self.member_list().SerializeToString()
        if method == RPC_LEASE_RENEW:
            if self.node is None or not self.node.is_leader():
                raise RPCError("not leader")
            return struct.pack(">q", self._renew_local(struct.unpack(">q", body)[0]))
        if method == RPC_LEASE_TTL:
            if self.node is None or not self.node.is_leader():
                raise RPCError("not leader")
            return self._time_to_live_local(pb.LeaseTimeToLiveRequest.FromString(body)).SerializeToString()
        raise RPCError(f"unknown method {method}")

    async def _publish(self) -> None:
        """Tell the cluster this member's name and client URLs (etcd's publish), until it sticks."""
        want = pb.Member(ID=self.member_id, name=self.cfg.name, clientURLs=list(self.cfg.advertise_client_urls))
        published = False  # proposed in this run: etcd publishes on every start, so a member
        # restarted in a minority serves no client (not even a stale serializable read) until
        # it reaches a quorum again
        while not self._stopped:
            cur = self.applier.members.get(self.member_id)
            if (published and cur is not None and cur.name == want.name
                    and list(cur.clientURLs) == list(want.clientURLs)):
                self.ready.set()
                return
            if cur is not None and self.node is not None and self.node.lead:
                try:
                    await self._propose(InternalRaftRequest(etcdproof_member_attr_set=want))
                    published = True
                except errors.EtcdError as e:
                    log.debug("publishing member attributes: %s", e.message)
                except Exception:  # noqa: BLE001 - keep trying; a member that never publishes never serves
                    log.exception("publishing member attributes failed")
            await asyncio.sleep(self.cfg.heartbeat_ms / 1000)

    def is_healthy(self) -> tuple[bool, str]:
        if self.fatal is not None:
            return False, f"server failed: {self.fatal!r}"
        if self._stopped:
            return False, "server stopped"
        if self._leader_or_none() == 0:
            return False, "RAFT NO LEADER"
        if self.applier.alarms:
            names = ",".join(pb.AlarmType.Name(a) for _, a in sorted(self.applier.alarms))
            return False, f"alarm activated: {names}"
        return True, ""

    async def wait_applied(self, timeout: float) -> None:
        """Until the next batch is applied (or timeout): for waiters re-checking the store."""
        ev = self._applied
        if ev is None:
            await asyncio.sleep(timeout)
            return
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # ------------------------------------------------------ housekeeping
    async def _housekeeping(self) -> None:
        start = time.monotonic()
        deadlines = {"lease": start, "progress": start + self.cfg.watch_progress_notify_interval, "compact": start}
        compact_samples: list[tuple[float, int]] = []
        while not self._stopped:
            await asyncio.sleep(0.05)
            try:
                await self._housekeeping_round(compact_samples, deadlines)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - log and go on; one bad round must not stop leases or watches
                log.exception("housekeeping round failed")

    async def _housekeeping_round(self, compact_samples: list[tuple[float, int]], deadlines: dict[str, float]) -> None:
        now = time.monotonic()
        while self.hub.sync():
            await asyncio.sleep(0)  # let requests in between catch-up chunks
        synced, unsynced = self.hub.counts()
        self.metrics.watchers.set(synced + unsynced)
        self.metrics.slow_watchers.set(unsynced)
        if self.backend.commit_due():
            self._commit_backend()
        leader = self.node is not None and self.node.is_leader()
        self.metrics.has_leader.set(1 if self._leader_or_none() else 0)
        if now >= deadlines["lease"]:
            deadlines["lease"] = now + 0.5
            if leader:
                self._revoke_expired(now)
            self.metrics.db_size.set(self.backend.size())
            self.metrics.keys_total.set(len(self.store.index))
            self.metrics.leases.set(len(self.lessor.leases))
        if now >= deadlines["progress"]:
            deadlines["progress"] = now + self.cfg.watch_progress_notify_interval
            self.hub.progress_tick()
        if now >= deadlines["compact"]:
            deadlines["compact"] = self._auto_compact(now, compact_samples, leader)

    def _revoke_expired(self, now: float) -> None:
        for lid in self.lessor.expired(now):
            log.info("lease %x expired: revoking", lid)
            try:
                self._propose_nowait(InternalRaftRequest(lease_revoke=pb.LeaseRevokeRequest(ID=lid)))
            except errors.EtcdError:
                self.lessor.retry_revoke(lid, now, 1.0)

    def _auto_compact(self, now: float, samples: list[tuple[float, int]], leader: bool) -> float:
        """etcd's compactors: periodic keeps a time window of history, revision a count.

        Every member samples; only the leader proposes (etcd pauses followers' compactors)."""
        cfg = self.cfg
        if cfg.auto_compaction_mode == "revision":
            keep = int(cfg.auto_compaction_retention)
            if keep <= 0:
                return now + 3600
            target = self.store.current_rev - keep
            if target > self.store.compact_rev and target > 0 and leader:
                self._propose_compaction(target)
            return now + 300
        period = compaction_period(cfg)
        if period <= 0:
            return now + 3600
        interval = period / 10 if period < 3600 else 360.0
        samples.append((now, self.store.current_rev))
        while len(samples) > 1 and samples[1][0] <= now - period:
            samples.pop(0)
        t, rev = samples[0]
        if t <= now - period + 1e-9 and rev > self.store.compact_rev and rev > 0 and leader:
            self._propose_compaction(rev)
        return now + interval

    def _propose_compaction(self, rev: int) -> None:
        log.info("auto-compaction at revision %d", rev)
        try:
            self._propose_nowait(InternalRaftRequest(compaction=pb.CompactionRequest(revision=rev)))
        except errors.EtcdError as e:
            log.warning("auto-compaction at %d failed: %s", rev, e.message)
