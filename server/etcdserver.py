"""EtcdServer: the member. Bootstraps or recovers its state, commits writes through the log,
applies them, serves reads, and keeps leases, watches and compaction going.

Concurrency: everything runs on one asyncio event loop (the gRPC and HTTP front ends, the log,
apply, reads, watches, housekeeping), so the store needs no locks. Blocking disk work runs on
helper threads: WAL writes and fsyncs (node.py) and backend commits, snapshot copies and
compaction scans (`_io`), whose data structures are thread-safe (backend.py). Reads are plain
methods; writes are coroutines that propose, then wait for their entry to be applied (or for
the request timeout). Front ends turn EtcdError into their own error form.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator

import google_crc32c

from server import errors
from server.apply import LEASE_BUCKET, Applier, CompactionJob, _has_put, decode_lease
from server.backend import Backend
from server.config import API_VERSION, Config, compaction_period
from server.ids import IDGenerator, cluster_id, member_id
from server.kvops import do_range, do_txn_read
from server.lease import Lessor, min_lease_ttl
from server.metrics import Metrics
from server.mvcc.revision import bytes_to_rev, main_rev_prefix
from server.mvcc.store import KVStore
from server.node import LocalLog, LogStopped
from server.proto.etcdserverpb import raft_internal_pb2, rpc_pb2
from server.proto.raftpb import raft_pb2
from server.validate import check_delete, check_put, check_range, check_txn, txn_is_readonly
from server.wal import WAL, WALCorruptError, WalSnapshot
from server.watch import WatchHub

log = logging.getLogger("etcdproof.server")
pb = rpc_pb2
InternalRaftRequest = raft_internal_pb2.InternalRaftRequest

MEMBERS_BUCKET = b"members"
CLUSTER_BUCKET = b"cluster"
_METADATA = struct.Struct(">QQ")  # member id, cluster id (the WAL's metadata record)
SNAPSHOT_CHUNK = 32 * 1024
QUOTA_OVERHEAD = 256  # bytes charged per write on top of its size, for index and page overhead


class StartupError(Exception):
    """The server cannot start; the message says why in one line."""


class EtcdServer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self._waiters: dict[int, asyncio.Future] = {}
        self._stopped = False
        self._tasks: list[asyncio.Task] = []
        self._lockfile: int | None = None
        self.fatal: BaseException | None = None
        self.started_at = time.time()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")
        self._commit_inflight: asyncio.Future | None = None
        self._maint: asyncio.Lock | None = None  # compaction deletes vs defragment (made in start)
        self._applied: asyncio.Event | None = None  # replaced after every applied batch

        os.makedirs(cfg.member_dir, exist_ok=True)
        self._lock_data_dir()
        self.backend = Backend(
            cfg.backend_path,
            map_size=max(4 << 30, 2 * cfg.quota_backend_bytes + (1 << 30)),
            batch_interval=cfg.backend_batch_interval,
            batch_limit=cfg.backend_batch_limit,
            observe_commit=self.metrics.backend_commit.observe,
        )
        self.lessor = Lessor(min_lease_ttl(cfg.heartbeat_ms, cfg.election_ms))
        self.store = KVStore(self.backend, self.lessor)
        self.hub = WatchHub(self.store, self.header, max_response_bytes=cfg.max_request_bytes)
        self.applier = Applier(self.store, self.lessor, self.backend, self.hub, time.monotonic)
        wal, entries, term = self._open_wal()
        self.idgen = IDGenerator(self.member_id, int(time.time() * 1000))
        self._recover(entries)
        if self.applier.applied_index > wal.last_index:
            # the WAL lost its tail (a torn or truncated record) after the backend committed it:
            # new entries must follow the backend's index, or apply would skip them as replays
            log.warning(
                "backend is at index %d, ahead of the wal's last entry %d: recording a wal snapshot there",
                self.applier.applied_index, wal.last_index,
            )
            wal.save_snapshot(WalSnapshot(index=self.applier.applied_index, term=self.applier.applied_term))
            wal.last_index = self.applier.applied_index
        self.term = term
        self.log = LocalLog(wal, self.member_id, term, self._apply_batch)
        self.log.on_fatal = self._on_fatal
        self._last_snapshot_index = max(wal.snapshot.index, self.applier.applied_index)

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

    def _open_wal(self) -> tuple[WAL, list[raft_pb2.Entry], int]:
        cfg = self.cfg
        walkw = dict(max_wals=cfg.max_wals, observe_fsync=self.metrics.wal_fsync.observe)
        has_wal = os.path.isdir(cfg.wal_path) and any(n.endswith(".wal") for n in os.listdir(cfg.wal_path))
        if has_wal:
            try:
                wal, res = WAL.open(cfg.wal_path, **walkw)
            except WALCorruptError as e:
                raise StartupError(str(e)) from None
            for t in res.truncated:
                log.warning("wal: repaired torn tail: %s", t)
            self.member_id, self.cluster_id = _METADATA.unpack(res.metadata)
            self.members = self._load_members()
            log.info(
                "restarting member %x in cluster %x: wal snapshot at %d, %d entries after it",
                self.member_id, self.cluster_id, res.snapshot.index, len(res.entries),
            )
            return wal, res.entries, max(res.hard_state.term + 1, 2)
        if cfg.initial_cluster_state == "existing":
            raise StartupError(
                "--initial-cluster-state=existing needs a multi-member cluster; this server runs single-member clusters"
            )
        if len(cfg.initial_cluster) != 1:
            raise StartupError(
                f"--initial-cluster names {len(cfg.initial_cluster)} members; this server runs single-member clusters"
            )
        ids = {}
        for name, urls in cfg.initial_cluster.items():
            ids[name] = member_id(urls, cfg.initial_cluster_token)
        self.member_id = ids[cfg.name]
        self.cluster_id = cluster_id(list(ids.values()))
        if self.backend.get_meta(b"consistent_index"):
            raise StartupError(f"{cfg.backend_path} holds data but {cfg.wal_path} has no WAL; refusing to start")
        for name, urls in cfg.initial_cluster.items():
            m = pb.Member(ID=ids[name], name=name, peerURLs=sorted(urls))
            if name == cfg.name:
                m.clientURLs.extend(cfg.advertise_client_urls)
            self.backend.put(MEMBERS_BUCKET, struct.pack(">Q", m.ID), m.SerializeToString())
        self.backend.put(CLUSTER_BUCKET, b"clusterID", struct.pack(">Q", self.cluster_id))
        self.backend.commit()
        wal = WAL.create(cfg.wal_path, _METADATA.pack(self.member_id, self.cluster_id), **walkw)
        log.info("started new single-member cluster %x as member %x (%s)", self.cluster_id, self.member_id, cfg.name)
        self.members = self._load_members()
        return wal, [], 2

    def _load_members(self) -> list[pb.Member]:
        ms = [pb.Member.FromString(v) for _, v in self.backend.items(MEMBERS_BUCKET)]
        for m in ms:
            if m.ID == self.member_id:
                del m.clientURLs[:]
                m.clientURLs.extend(self.cfg.advertise_client_urls)
                m.name = self.cfg.name
        return ms

    def _recover(self, entries: list[raft_pb2.Entry]) -> None:
        now = time.monotonic()
        self.applier.restore()
        for k, v in self.backend.items(LEASE_BUCKET):
            lid, ttl = decode_lease(v)
            self.lessor.restore(lid, ttl, now)
        unfinished = self.store.restore()
        if unfinished is not None:
            scheduled, _ = unfinished
            log.info("finishing compaction at %d interrupted by a restart", scheduled)
            keep = self.store.compact(scheduled)
            self._compact_now(CompactionJob(scheduled, keep))
        replayed = 0
        for e in entries:
            if e.Index > self.applier.applied_index:
                self.applier.apply(e.Index, e.Term, e.Data)
                replayed += 1
        jobs, self.applier.compaction_jobs = self.applier.compaction_jobs, []
        for job in jobs:
            self._compact_now(job)
        self.lessor.promote(now, self.cfg.election_ms / 1000)
        self.backend.commit()
        log.info(
            "recovered: applied index %d (%d replayed from wal), revision %d, compacted %d, %d keys, %d leases",
            self.applier.applied_index, replayed, self.store.current_rev, self.store.compact_rev,
            len(self.store.index), len(self.lessor.leases),
        )

    def _compact_now(self, job: CompactionJob) -> None:
        """Finish a compaction synchronously (at startup, before serving)."""
        for chunk in self.store.compaction_victims(job.rev, job.keep, 10000):
            self.backend.delete_revs(chunk)
            self.backend.commit()
        self.store.finish_compaction(job.rev)
        self.backend.commit()

    async def start(self) -> None:
        """Start the log and the housekeeping tasks on the running loop."""
        self._maint = asyncio.Lock()
        self._applied = asyncio.Event()
        self.log.start()
        self.metrics.has_leader.set(1)
        self.metrics.is_leader.set(1)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping(), name="housekeeping"))

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        await self.log.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_result(errors.STOPPED)
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
    def _apply_batch(self, entries: list[raft_pb2.Entry]) -> None:
        """On the loop: apply committed entries, answer their proposers, wake waiters."""
        results = [self.applier.apply(e.Index, e.Term, e.Data) for e in entries]
        applied, self._applied = self._applied, asyncio.Event()
        if applied is not None:
            applied.set()
        jobs, self.applier.compaction_jobs = self.applier.compaction_jobs, []
        self.metrics.proposals_committed.set(self.log.committed_index)
        self.metrics.proposals_applied.set(self.applier.applied_index)
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
        self._after_batch()

    def _after_batch(self) -> None:
        if self.backend.commit_due():
            self._commit_backend()
        applied = self.applier.applied_index
        if applied - self._last_snapshot_index >= self.cfg.snapshot_count:
            self._last_snapshot_index = applied
            asyncio.get_running_loop().create_task(self._snapshot(applied, self.applier.applied_term))

    def _commit_backend(self) -> asyncio.Future:
        """Commit the backend batch on the backend thread (one commit in flight at a time)."""
        if self._commit_inflight is None or self._commit_inflight.done():
            self._commit_inflight = asyncio.get_running_loop().run_in_executor(self._io, self.backend.commit)
        return self._commit_inflight

    async def _commit_backend_now(self) -> None:
        """Wait until everything applied so far is committed to the backend."""
        await asyncio.get_running_loop().run_in_executor(self._io, self.backend.commit)

    async def _snapshot(self, index: int, term: int) -> None:
        try:
            await self._commit_backend_now()
            await self.log.request_snapshot(index, term)
        except Exception:  # noqa: BLE001
            log.exception("snapshot at index %d failed", index)

    async def _run_compaction(self, job: CompactionJob, held: list, responses: list, batch: int = 10000) -> None:
        """Physically remove compacted revisions, a batch per backend commit, between requests.

        No read reaches a revision below the compaction point, so serving goes on meanwhile;
        _maint keeps defragment from swapping the file underneath.
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

    # ----------------------------------------------------------- helpers
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
        try:
            self.log.propose(data)
        except LogStopped:
            raise errors.STOPPED from None
        return rid

    async def _propose(self, req: InternalRaftRequest) -> object:
        """Propose and wait until applied; returns the response with its header filled."""
        fut = asyncio.get_running_loop().create_future()
        rid = self._submit(req)
        self._waiters[rid] = fut
        self.metrics.proposals_pending.inc()
        try:
            res = await asyncio.wait_for(fut, self.cfg.request_timeout)
        except asyncio.TimeoutError:
            self.metrics.proposals_failed.inc()
            raise errors.TIMEOUT from None
        finally:
            self._waiters.pop(rid, None)
            self.metrics.proposals_pending.dec()
        if isinstance(res, errors.EtcdError):
            raise res
        return self._fill(res)

    def _propose_nowait(self, req: InternalRaftRequest) -> None:
        self._submit(req)

    def _check_quota(self, cost: int, capped: bool = True) -> None:
        """capped: refused while NOSPACE is raised (etcd lets a txn without puts through)."""
        if capped and self.applier.nospace():
            raise errors.NO_SPACE
        if self.backend.size_with_pending() + cost + QUOTA_OVERHEAD > self.cfg.quota_backend_bytes:
            log.warning("backend quota of %d bytes exhausted: raising the NOSPACE alarm", self.cfg.quota_backend_bytes)
            try:
                self._propose_nowait(
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
    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        check_range(r)
        return self._fill(do_range(self.store, r))

    async def put(self, r: pb.PutRequest) -> pb.PutResponse:
        check_put(r)
        self._check_quota(r.ByteSize())
        return await self._propose(InternalRaftRequest(put=r))  # type: ignore[return-value]

    async def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        check_delete(r)
        return await self._propose(InternalRaftRequest(delete_range=r))  # type: ignore[return-value]

    async def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        check_txn(r, self.cfg.max_txn_ops)
        if txn_is_readonly(r):
            return self._fill(do_txn_read(self.store, r))
        self._check_quota(r.ByteSize(), capped=_has_put(r))
        return await self._propose(InternalRaftRequest(txn=r))  # type: ignore[return-value]

    async def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        return await self._propose(InternalRaftRequest(compaction=r))  # type: ignore[return-value]

    # ------------------------------------------------------------- lease
    async def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        self._check_quota(64)
        req = pb.LeaseGrantRequest(TTL=r.TTL, ID=r.ID or (self.idgen.next() & ((1 << 63) - 1)))
        return await self._propose(InternalRaftRequest(lease_grant=req))  # type: ignore[return-value]

    async def lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        return await self._propose(InternalRaftRequest(lease_revoke=r))  # type: ignore[return-value]

    def lease_renew(self, lease_id: int) -> int:
        """Keep-alive: the lease's TTL, or 0 when it does not exist (what etcd answers)."""
        try:
            return self.lessor.renew(lease_id, time.monotonic())
        except Exception:
            return 0

    def lease_time_to_live(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        lease = self.lessor.lookup(r.ID)
        if lease is None:
            return self._fill(pb.LeaseTimeToLiveResponse(header=pb.ResponseHeader(), ID=r.ID, TTL=-1))
        resp = pb.LeaseTimeToLiveResponse(
            header=pb.ResponseHeader(),
            ID=r.ID,
            TTL=int(lease.remaining(time.monotonic())),
            grantedTTL=lease.ttl,
        )
        if r.keys:
            resp.keys.extend(sorted(lease.keys))
        return self._fill(resp)

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
        return self._fill(
            pb.StatusResponse(
                header=pb.ResponseHeader(),
                version=API_VERSION,
                dbSize=self.backend.size(),
                leader=self.member_id,
                raftIndex=self.log.committed_index,
                raftTerm=self.term,
                raftAppliedIndex=self.applier.applied_index,
                errors=errs,
                dbSizeInUse=self.backend.size_in_use(),
                isLearner=False,
            )
        )

    async def defragment(self) -> pb.DefragmentResponse:
        """Rewrite the backend compactly. Blocks the server meanwhile, as etcd's does."""
        assert self._maint is not None
        async with self._maint:
            if self._commit_inflight is not None:
                await self._commit_inflight
            before = self.backend.size()
            self.backend.defragment()
            log.info("defragmented backend: %d -> %d bytes", before, self.backend.size())
            return self._fill(pb.DefragmentResponse(header=pb.ResponseHeader()))

    def hash(self) -> pb.HashResponse:
        return self._fill(pb.HashResponse(header=pb.ResponseHeader(), hash=self.backend.hash()))

    def hash_kv(self, r: pb.HashKVRequest) -> pb.HashKVResponse:
        """etcd's HashKV, bit for bit: CRC-32C over "key" and the key bucket's entries up to rev.

        Entries at or below the compaction point count only if a compaction at rev would keep
        them (when it would keep anything), so members agree however far they have compacted.
        Runs on the loop in one go, so no compaction batch is half done underneath.
        """
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

    def move_leader(self, r: pb.MoveLeaderRequest) -> pb.MoveLeaderResponse:
        if r.targetID != self.member_id:
            raise errors.BAD_LEADER_TRANSFEREE
        return self._fill(pb.MoveLeaderResponse(header=pb.ResponseHeader()))

    def member_list(self) -> pb.MemberListResponse:
        # etcd's cluster service header carries no revision (cluster_server.go's header())
        header = pb.ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id, raft_term=self.term)
        return pb.MemberListResponse(header=header, members=self.members)

    def is_healthy(self) -> tuple[bool, str]:
        if self.fatal is not None:
            return False, f"server failed: {self.fatal!r}"
        if self._stopped:
            return False, "server stopped"
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
        if now >= deadlines["lease"]:
            deadlines["lease"] = now + 0.5
            self._revoke_expired(now)
            self.metrics.db_size.set(self.backend.size())
            self.metrics.keys_total.set(len(self.store.index))
            self.metrics.leases.set(len(self.lessor.leases))
        if now >= deadlines["progress"]:
            deadlines["progress"] = now + self.cfg.watch_progress_notify_interval
            self.hub.progress_tick()
        if now >= deadlines["compact"]:
            deadlines["compact"] = self._auto_compact(now, compact_samples)

    def _revoke_expired(self, now: float) -> None:
        for lid in self.lessor.expired(now):
            log.info("lease %x expired: revoking", lid)
            try:
                self._propose_nowait(InternalRaftRequest(lease_revoke=pb.LeaseRevokeRequest(ID=lid)))
            except errors.EtcdError:
                self.lessor.retry_revoke(lid, now, 1.0)

    def _auto_compact(self, now: float, samples: list[tuple[float, int]]) -> float:
        """etcd's compactors: periodic keeps a time window of history, revision a count."""
        cfg = self.cfg
        if cfg.auto_compaction_mode == "revision":
            keep = int(cfg.auto_compaction_retention)
            if keep <= 0:
                return now + 3600
            target = self.store.current_rev - keep
            if target > self.store.compact_rev and target > 0:
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
        if t <= now - period + 1e-9 and rev > self.store.compact_rev and rev > 0:
            self._propose_compaction(rev)
        return now + interval

    def _propose_compaction(self, rev: int) -> None:
        log.info("auto-compaction at revision %d", rev)
        try:
            self._propose_nowait(InternalRaftRequest(compaction=pb.CompactionRequest(revision=rev)))
        except errors.EtcdError as e:
            log.warning("auto-compaction at %d failed: %s", rev, e.message)
