"""EtcdServer: the member. Bootstraps or recovers its state, commits writes through the log,
applies them, serves reads, and keeps leases, watches and compaction going.

Concurrency: one lock (`self.lock`) guards the MVCC store, lessor, watch hub and applier; every
API call and the apply loop take it. Writes are proposed and the caller waits for the entry to
be applied (or for the request timeout). Front ends (gRPC, HTTP) call the methods here and turn
EtcdError into their own error form.
"""
from __future__ import annotations

import fcntl
import logging
import os
import struct
import tempfile
import threading
import time
from typing import Iterator

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
from server.node import LocalLog
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


class _Waiter:
    """A one-shot result slot. A plain lock is the cheapest blocking primitive in CPython."""

    __slots__ = ("_lock", "result")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.result: object = None

    def set(self, result: object) -> None:
        self.result = result
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)


class EtcdServer:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.lock = threading.RLock()
        self.applied = threading.Condition(self.lock)  # notified after every applied batch
        # physical compaction runs outside the store lock; defragment must not swap the
        # backend file under it (order: _maint before lock)
        self._maint = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lockfile: int | None = None
        self.fatal: BaseException | None = None
        self.started_at = time.time()

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
        self.log = LocalLog(wal, self.member_id, term, self._apply_batch, self._after_batch)
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
        with self.lock:
            self.applier.restore()
            for k, v in self.backend.items(LEASE_BUCKET):
                lid, ttl = decode_lease(v)
                self.lessor.restore(lid, ttl, now)
            unfinished = self.store.restore()
            if unfinished is not None:
                scheduled, _ = unfinished
                log.info("finishing compaction at %d interrupted by a restart", scheduled)
                keep = self.store.compact(scheduled)
                self._run_compaction(CompactionJob(scheduled, keep))
            replayed = 0
            for e in entries:
                if e.Index > self.applier.applied_index:
                    self.applier.apply(e.Index, e.Term, e.Data)
                    replayed += 1
            jobs, self.applier.compaction_jobs = self.applier.compaction_jobs, []
            for job in jobs:
                self._run_compaction(job)
            self.lessor.promote(now, self.cfg.election_ms / 1000)
            self.backend.commit()
        log.info(
            "recovered: applied index %d (%d replayed from wal), revision %d, compacted %d, %d keys, %d leases",
            self.applier.applied_index, replayed, self.store.current_rev, self.store.compact_rev,
            len(self.store.index), len(self.lessor.leases),
        )

    def start(self) -> None:
        self.log.start()
        self.metrics.has_leader.set(1)
        self.metrics.is_leader.set(1)
        t = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.log.stop()
        for t in self._threads:
            t.join(5)
        with self.lock:
            self.backend.close()
        if self._lockfile is not None:
            os.close(self._lockfile)
            self._lockfile = None

    def _on_fatal(self, e: BaseException) -> None:
        self.fatal = e
        self._stopped.set()
        for w in list(self._waiters.values()):
            try:
                w.set(errors.STOPPED)
            except RuntimeError:
                pass

    # ------------------------------------------------------------- apply
    def _apply_batch(self, entries: list[raft_pb2.Entry]) -> None:
        results = []
        with self.lock:
            for e in entries:
                results.append((e, self.applier.apply(e.Index, e.Term, e.Data)))
            self.applied.notify_all()
        jobs, self.applier.compaction_jobs = self.applier.compaction_jobs, []
        self.metrics.proposals_committed.set(self.log.committed_index)
        self.metrics.proposals_applied.set(self.applier.applied_index)
        # a physical compaction is answered once its revisions are gone; everything else now
        physical = any(j.physical for j in jobs)
        held = []
        for e, (rid, res) in results:
            w = self._waiters.pop(rid, None) if rid else None
            if w is None:
                continue
            if physical and isinstance(res, pb.CompactionResponse):
                held.append((w, res))
            else:
                w.set(res)
        for job in jobs:
            self._run_compaction(job)
        for w, res in held:
            w.set(res)

    def _after_batch(self) -> None:
        if self.backend.commit_due():
            self.backend.commit()
        applied = self.applier.applied_index
        if applied - self._last_snapshot_index >= self.cfg.snapshot_count:
            self.backend.commit()
            self.log.request_snapshot(applied, self.applier.applied_term)
            self._last_snapshot_index = applied

    def _run_compaction(self, job: CompactionJob, batch: int = 10000) -> None:
        """Physically remove compacted revisions, a batch per backend commit.

        Runs outside the store lock: no read can reach a revision below the compaction point.
        """
        removed = 0
        with self._maint:
            victims = list(self.store.compaction_victims(job.rev, job.keep, batch))
            for chunk in victims:
                self.backend.delete_revs(chunk)
                self.backend.commit()
                removed += len(chunk)
            self.store.finish_compaction(job.rev)
            self.backend.commit()
        log.info("compacted at revision %d: removed %d revisions", job.rev, removed)

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

    def _propose(self, req: InternalRaftRequest, wait: bool = True) -> object:
        if self._stopped.is_set():
            raise errors.STOPPED
        rid = self.idgen.next()
        req.header.ID = rid
        data = req.SerializeToString()
        if len(data) > self.cfg.max_request_bytes:
            raise errors.REQUEST_TOO_LARGE
        if not wait:
            self.log.propose(data)
            return None
        w = _Waiter()
        self._waiters[rid] = w
        self.metrics.proposals_pending.inc()
        try:
            self.log.propose(data)
            if not w.wait(self.cfg.request_timeout):
                self.metrics.proposals_failed.inc()
                raise errors.TIMEOUT
        finally:
            self._waiters.pop(rid, None)
            self.metrics.proposals_pending.dec()
        res = w.result
        if isinstance(res, errors.EtcdError):
            raise res
        return self._fill(res)

    def _check_quota(self, cost: int, capped: bool = True) -> None:
        """capped: refused while NOSPACE is raised (etcd lets a txn without puts through)."""
        if capped and self.applier.nospace():
            raise errors.NO_SPACE
        if self.backend.size_with_pending() + cost + QUOTA_OVERHEAD > self.cfg.quota_backend_bytes:
            log.warning("backend quota of %d bytes exhausted: raising the NOSPACE alarm", self.cfg.quota_backend_bytes)
            try:
                self._propose(
                    InternalRaftRequest(
                        alarm=pb.AlarmRequest(
                            action=pb.AlarmRequest.ACTIVATE, memberID=self.member_id, alarm=pb.AlarmType.NOSPACE
                        )
                    ),
                    wait=False,
                )
            except errors.EtcdError:
                pass
            raise errors.NO_SPACE

    # ---------------------------------------------------------------- KV
    def range(self, r: pb.RangeRequest) -> pb.RangeResponse:
        check_range(r)
        with self.lock:
            return self._fill(do_range(self.store, r))

    def put(self, r: pb.PutRequest) -> pb.PutResponse:
        check_put(r)
        self._check_quota(r.ByteSize())
        return self._propose(InternalRaftRequest(put=r))  # type: ignore[return-value]

    def delete_range(self, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        check_delete(r)
        return self._propose(InternalRaftRequest(delete_range=r))  # type: ignore[return-value]

    def txn(self, r: pb.TxnRequest) -> pb.TxnResponse:
        check_txn(r, self.cfg.max_txn_ops)
        if txn_is_readonly(r):
            with self.lock:
                return self._fill(do_txn_read(self.store, r))
        self._check_quota(r.ByteSize(), capped=_has_put(r))
        return self._propose(InternalRaftRequest(txn=r))  # type: ignore[return-value]

    def compact(self, r: pb.CompactionRequest) -> pb.CompactionResponse:
        return self._propose(InternalRaftRequest(compaction=r))  # type: ignore[return-value]

    # ------------------------------------------------------------- lease
    def lease_grant(self, r: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        self._check_quota(64)
        req = pb.LeaseGrantRequest(TTL=r.TTL, ID=r.ID or (self.idgen.next() & ((1 << 63) - 1)))
        return self._propose(InternalRaftRequest(lease_grant=req))  # type: ignore[return-value]

    def lease_revoke(self, r: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        return self._propose(InternalRaftRequest(lease_revoke=r))  # type: ignore[return-value]

    def lease_renew(self, lease_id: int) -> int:
        """Keep-alive: the lease's TTL, or 0 when it does not exist (what etcd answers)."""
        with self.lock:
            try:
                return self.lessor.renew(lease_id, time.monotonic())
            except Exception:
                return 0

    def lease_time_to_live(self, r: pb.LeaseTimeToLiveRequest) -> pb.LeaseTimeToLiveResponse:
        with self.lock:
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
        with self.lock:
            # soonest expiry first, as etcd's lessor sorts them
            leases = self.lessor.leases
            ids = sorted(leases, key=lambda i: (leases[i].expiry, i))
            return self._fill(pb.LeaseLeasesResponse(header=pb.ResponseHeader(), leases=[pb.LeaseStatus(ID=i) for i in ids]))

    # ------------------------------------------------------- maintenance
    def alarm(self, r: pb.AlarmRequest) -> pb.AlarmResponse:
        if r.action == pb.AlarmRequest.GET:
            with self.lock:
                # no header, as etcd 3.4 answers (and as the applied ACTIVATE/DEACTIVATE answer)
                return pb.AlarmResponse(alarms=self.applier.alarm_list())
        return self._propose(InternalRaftRequest(alarm=r))  # type: ignore[return-value]

    def status(self) -> pb.StatusResponse:
        with self.lock:
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

    def defragment(self) -> pb.DefragmentResponse:
        with self._maint, self.lock:
            before = self.backend.size()
            self.backend.defragment()
            log.info("defragmented backend: %d -> %d bytes", before, self.backend.size())
            return self._fill(pb.DefragmentResponse(header=pb.ResponseHeader()))

    def hash(self) -> pb.HashResponse:
        with self.lock:
            return self._fill(pb.HashResponse(header=pb.ResponseHeader(), hash=self.backend.hash()))

    def hash_kv(self, r: pb.HashKVRequest) -> pb.HashKVResponse:
        """etcd's HashKV, bit for bit: CRC-32C over "key" and the key bucket's entries up to rev.

        Entries at or below the compaction point count only if a compaction at rev would keep
        them (when it would keep anything), so members agree however far they have compacted.
        Under _maint so a physical compaction is never half done underneath.
        """
        with self._maint, self.lock:
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

    def snapshot(self) -> Iterator[pb.SnapshotResponse]:
        """Stream a consistent copy of the backend, then its SHA-256 (as etcd appends it)."""
        fd, path = tempfile.mkstemp(prefix="snapshot-", dir=self.cfg.member_dir)
        os.close(fd)
        os.unlink(path)
        try:
            with self.lock:
                digest = self.backend.snapshot_to(path)
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
        if self._stopped.is_set():
            return False, "server stopped"
        with self.lock:
            if self.applier.alarms:
                names = ",".join(pb.AlarmType.Name(a) for _, a in sorted(self.applier.alarms))
                return False, f"alarm activated: {names}"
        return True, ""

    # ------------------------------------------------------ housekeeping
    def _housekeeping(self) -> None:
        start = time.monotonic()
        deadlines = {"lease": start, "progress": start + self.cfg.watch_progress_notify_interval, "compact": start}
        compact_samples: list[tuple[float, int]] = []
        while not self._stopped.wait(0.05):
            try:
                self._housekeeping_round(compact_samples, deadlines)
            except Exception:  # noqa: BLE001 - log and go on; one bad round must not stop leases or watches
                log.exception("housekeeping round failed")

    def _housekeeping_round(self, compact_samples: list[tuple[float, int]], deadlines: dict[str, float]) -> None:
        now = time.monotonic()
        with self.lock:
            more = self.hub.sync()
        while more and not self._stopped.is_set():
            with self.lock:
                more = self.hub.sync()
        synced, unsynced = self.hub.counts()
        self.metrics.watchers.set(synced + unsynced)
        self.metrics.slow_watchers.set(unsynced)
        if now >= deadlines["lease"]:
            deadlines["lease"] = now + 0.5
            self._revoke_expired(now)
            self.metrics.db_size.set(self.backend.size())
            self.metrics.keys_total.set(len(self.store.index))
            self.metrics.leases.set(len(self.lessor.leases))
        if now >= deadlines["progress"]:
            deadlines["progress"] = now + self.cfg.watch_progress_notify_interval
            with self.lock:
                self.hub.progress_tick()
        if now >= deadlines["compact"]:
            deadlines["compact"] = self._auto_compact(now, compact_samples)

    def _revoke_expired(self, now: float) -> None:
        with self.lock:
            expired = self.lessor.expired(now)
        for lid in expired:
            log.info("lease %x expired: revoking", lid)
            try:
                self._propose(InternalRaftRequest(lease_revoke=pb.LeaseRevokeRequest(ID=lid)), wait=False)
            except errors.EtcdError:
                with self.lock:
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
            self._propose(InternalRaftRequest(compaction=pb.CompactionRequest(revision=rev)), wait=False)
        except errors.EtcdError as e:
            log.warning("auto-compaction at %d failed: %s", rev, e.message)
