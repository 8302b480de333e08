"""RaftNode: drives the pure Raft state machine on the server's event loop.

The loop is etcd's: take a Ready; send the leader's appends and heartbeats at once (they do not
depend on this node's disk); persist the hard state, entries and snapshot (fdatasync on the WAL
thread when raft says must_sync); then send the rest (votes and acknowledgements must not leave
before what they promise is on disk); apply committed entries; advance. Ticks, peer messages,
proposals and read requests step raft between Readys and wake the loop; proposals and reads
that arrive together are batched into one step.

Linearizable reads use ReadIndex: every read waiting at that moment shares one request, and
each is released once this member has applied the index the leader confirmed.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from server import entrybatch, errors
from server.proto.raftpb import raft_pb2
from server.raft import Config, ConfState, Message, MsgType, ProposalDropped, Raft, Ready, Role, Snapshot, SnapshotMeta
from server.raft.types import EntryConfChange
from server.wal import WAL, WalSnapshot, encode_batch

if TYPE_CHECKING:
    from server.etcdserver import EtcdServer

log = logging.getLogger("etcdproof.raft")

ConfChange = raft_pb2.ConfChange
HardState = raft_pb2.HardState
_EARLY = (MsgType.APP, MsgType.HEARTBEAT)  # a leader's, with other voters: before its own write
_FORWARDS = (MsgType.PROP, MsgType.READ_INDEX)  # requests relayed to the leader: promise nothing
READ_BATCH_WINDOW = 0.005
PROPOSE_BATCH_WINDOW = 0.002  # under write load, proposals wait this long for more to join
PROPOSE_BATCH_MAX = 512  # proposals that go at once, without waiting out the window
READ_RETRY = 0.5  # seconds before an unanswered ReadIndex is asked again (etcd's figure)
READY_PACE = 0.002  # under load, the next Ready waits until this long after the previous one


def _several(entries: list) -> bool:
    """Whether entries hold more than one request (several entries, or a batch)."""
    return len(entries) > 1 or (len(entries) == 1 and entrybatch.is_batch(entries[0].Data))


def conf_to_pb(c: ConfState) -> raft_pb2.ConfState:
    return raft_pb2.ConfState(voters=list(c.voters), learners=list(c.learners))


def conf_from_pb(p: raft_pb2.ConfState) -> ConfState:
    return ConfState(tuple(sorted(p.voters)), tuple(sorted(p.learners)))


class RaftNode:
    def __init__(self, srv: "EtcdServer", wal: WAL, raft: Raft, conf: ConfState, rng_seed: int) -> None:
        self.srv = srv
        self.wal = wal
        self.raft = raft
        self.id = raft.id
        self.conf = conf  # configuration as of the last applied entry
        self._conf_history: list[tuple[int, ConfState]] = [(raft.log.snap.index, conf)]
        self._wake = asyncio.Event()
        self._props: list[tuple[int, bytes]] = []
        self._conf_props: list[tuple[int, ConfChange]] = []
        self._read_waiters: list[asyncio.Future] = []
        self._reads: dict[bytes, list[asyncio.Future]] = {}
        self._ready_reads: list[tuple[int, list[asyncio.Future]]] = []  # (index, waiters) to release
        self._read_seq = 0
        self._read_issued = 0.0
        self._read_hold_until = 0.0
        self._prop_hold_until = 0.0
        self._props_busy = False
        self._reads_busy = False
        self._wal_io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal")
        self._task: asyncio.Task | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._stopping = False
        self._snapshotting = False
        self._sendable: Snapshot | None = None
        self._last_snap_index = raft.log.snap.index
        self.fatal: BaseException | None = None
        self.lead = 0
        self.role = Role.FOLLOWER
        self.leader_changes = 0
        self._ready_busy = False  # the last Ready carried several requests: the node is under load
        self._ready_at = 0.0  # when the last Ready was taken

    # ------------------------------------------------------------ state
    @property
    def term(self) -> int:
        return self.raft.term

    def is_leader(self) -> bool:
        return self.raft.role == Role.LEADER

    @property
    def committed_index(self) -> int:
        return self.raft.log.committed

    @property
    def last_index(self) -> int:
        return self.raft.log.last_index()

    def _alone(self) -> bool:
        """A lone voter with no learners sends no messages: its only per-Ready cost is the WAL
        write, and proposals pile up while that is on disk, so holding them or pacing Readys
        only leaves the loop idle (measured: 263 against 131 fsyncs/s and 12% more puts)."""
        return self.conf.voters == (self.id,) and not self.conf.learners

    # ---------------------------------------------------------- lifecycle
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="raft")
        self._schedule_tick()

    def _schedule_tick(self) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._ticker = loop.call_later(self.srv.cfg.heartbeat_ms / 1000, self._on_tick)

    def _on_tick(self) -> None:
        try:
            self.raft.tick()
        except Exception:  # noqa: BLE001
            log.exception("raft tick failed")
        self._wake.set()
        self._schedule_tick()

    async def stop(self) -> None:
        self._stopping = True
        if self._ticker is not None:
            self._ticker.cancel()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self._task.cancel()
        for fut in self._read_waiters + [f for fs in self._reads.values() for f in fs]:
            if not fut.done():
                fut.set_exception(errors.STOPPED)
        await asyncio.get_running_loop().run_in_executor(self._wal_io, self.wal.close)
        self._wal_io.shutdown(wait=True)

    # ------------------------------------------------------------- inputs
    def step(self, m: Message) -> None:
        """A message from a peer."""
        if self._stopping:
            return
        try:
            self.raft.step(m)
        except ProposalDropped:
            pass  # a forwarded proposal with no leader here: its proposer times out
        except Exception:  # noqa: BLE001 - a bad message must not stop the node
            log.exception("stepping %s failed", m)
        self._wake.set()

    def propose(self, rid: int, data: bytes) -> None:
        if self._stopping or self.fatal is not None:
            raise errors.STOPPED
        if self.raft.lead == 0:
            raise errors.NO_LEADER
        self._props.append((rid, data))
        self._wake.set()

    def propose_conf_change(self, rid: int, cc: ConfChange) -> None:
        if self.raft.lead == 0:
            raise errors.NO_LEADER
        cc.id = rid
        self._conf_props.append((rid, cc))
        self._wake.set()

    async def read_barrier(self, timeout: float) -> None:
        """Return once a linearizable read may be served from this member's state."""
        fut = asyncio.get_running_loop().create_future()
        self._read_waiters.append(fut)
        self._wake.set()
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise errors.TIMEOUT from None

    def transfer_leader(self, target: int) -> None:
        self.raft.transfer_leader(target)
        self._wake.set()

    def report_unreachable(self, peer: int) -> None:
        self.raft.report_unreachable(peer)

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.raft.report_snapshot(peer, ok)
        self._wake.set()

    def _flush_inputs(self) -> None:
        if self._props and self._prop_hold():
            self._prop_hold_until = 0.0
            batch, self._props = self._props, []
            self._props_busy = len(batch) > 1
            try:
                # requests proposed together share entries (server/entrybatch.py)
                self.raft.propose(entrybatch.pack([d for _, d in batch]))
            except ProposalDropped as e:
                err = errors.LEADER_CHANGED if "transfer" in str(e) else errors.NO_LEADER
                for rid, _ in batch:
                    self.srv._fail_waiter(rid, err)
        while self._conf_props:
            rid, cc = self._conf_props.pop(0)
            try:
                self.raft.propose_conf_change(cc)
            except ProposalDropped:
                self.srv._fail_waiter(rid, errors.NO_LEADER)
        # one ReadIndex in flight at a time (as etcd's read loop): reads arriving meanwhile
        # share the next one, so under load each heartbeat round confirms a large batch
        if self._reads and time.monotonic() - self._read_issued > READ_RETRY:
            # no answer (a lost message, a partition): ask again for everyone still waiting
            for ws in self._reads.values():
                self._read_waiters.extend(f for f in ws if not f.done())
            self._reads.clear()
        if self._read_waiters and not self._reads and self._read_hold():
            self._read_hold_until = 0.0
            waiters, self._read_waiters = self._read_waiters, []
            self._read_issued = time.monotonic()
            self.srv.metrics.read_indexes.inc()
            self.srv.metrics.linearizable_reads.inc(len(waiters))
            self._read_seq += 1
            ctx = struct.pack(">QQ", self.id, self._read_seq)
            try:
                self.raft.read_index(ctx)
                self._reads[ctx] = waiters
            except ProposalDropped:
                for f in waiters:
                    if not f.done():
                        f.set_exception(errors.NO_LEADER)

    def _prop_hold(self) -> bool:
        """Whether queued proposals may go now: under load (the last batch had company) they
        wait a moment for more, so each raft round, fsync and message carries many entries."""
        if not self._props_busy or len(self._props) >= PROPOSE_BATCH_MAX or self._alone():
            return True
        now = time.monotonic()
        if self._prop_hold_until == 0.0:
            self._prop_hold_until = now + PROPOSE_BATCH_WINDOW
            asyncio.get_running_loop().call_later(PROPOSE_BATCH_WINDOW, self._wake.set)
            return False
        return now >= self._prop_hold_until

    def _read_hold(self) -> bool:
        """Whether the next ReadIndex may go now. Under load (reads queued up while the last one
        was in flight) it waits a few milliseconds so that many reads share one heartbeat round;
        an idle server asks at once."""
        if not self._reads_busy:
            return True
        now = time.monotonic()
        if self._read_hold_until == 0.0:
            self._read_hold_until = now + READ_BATCH_WINDOW
            asyncio.get_running_loop().call_later(READ_BATCH_WINDOW, self._wake.set)
            return False
        return now >= self._read_hold_until

    # --------------------------------------------------------------- loop
    async def _run(self) -> None:
        try:
            while True:
                self._flush_inputs()
                if not self.raft.has_ready():
                    if self._stopping:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._ready_busy and not self._alone():
                    await self._pace()
                self._ready_at = time.monotonic()
                rd = self.raft.ready()
                self._ready_busy = _several(rd.entries) or _several(rd.committed_entries)
                await self._handle_ready(rd)
                self.raft.advance(rd)
                if self.conf.voters == (self.id,) and self.raft.role == Role.FOLLOWER and self.raft.lead == 0:
                    self.raft.campaign_now()  # alone: no one else can elect us, so do not wait
                self._release_reads()
                self.srv._after_apply()
                self._maybe_snapshot()
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # a failed disk write: nothing more may be acknowledged
            log.critical("raft loop failed: %r", e, exc_info=True)
            self.fatal = e
            self.srv._on_fatal(e)

    async def _pace(self) -> None:
        """Under load, take Readys at most every READY_PACE: what arrives meanwhile (proposals,
        acknowledgements, appends) shares the next one, so each disk write, message and loop
        round carries more puts. Nearly all of a Ready's cost is per Ready (a WAL fsync and its
        thread hand-off, a message per peer, a wakeup of each), so this cuts CPU per put; an
        idle member (Readys of one entry) never waits."""
        wait = self._ready_at + READY_PACE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
            self._flush_inputs()

    async def _handle_ready(self, rd: Ready) -> None:
        loop = asyncio.get_running_loop()
        # a leader with other voters may send appends and heartbeats before its own write (Raft
        # thesis 10.2.1); a lone voter commits in memory, so its messages to learners must wait.
        # Forwarded proposals and read requests promise nothing about this node's log: they never
        # wait for its disk.
        leader = self.raft.role == Role.LEADER and len(self.raft.voters) > 1
        kinds = _EARLY + _FORWARDS if leader else _FORWARDS
        early = [m for m in rd.messages if m.type in kinds]
        late = [m for m in rd.messages if m.type not in kinds] if early else rd.messages
        # committed entries this member persisted in earlier Readys are applied (and their
        # clients answered) now, while this Ready's entries are written: the disk write is then
        # off the answer's path (as etcd hands committed entries to its applier before saving)
        committed = rd.committed_entries
        stable = self.raft.log.stabled if rd.snapshot is None else 0
        n_pre = 0
        while n_pre < len(committed) and committed[n_pre].Index <= stable:
            n_pre += 1
        if early:
            self.srv.transport.send(early)
        if rd.snapshot is not None:
            await self._install_snapshot(rd.snapshot)
        if n_pre:
            self._apply(committed[:n_pre] if n_pre < len(committed) else committed)
        for rs in rd.read_states:
            # reads that queued up meanwhile mean load: batch the next round
            self._reads_busy = bool(self._read_waiters)
            waiters = self._reads.pop(rs.ctx, None)
            if waiters is not None:
                self._ready_reads.append((rs.index, waiters))
        if self._ready_reads:
            self._release_reads()
        # a hard state that only moves the commit index need not be written at once: losing it
        # in a crash only makes raft relearn the commit index from the leader (etcd does not
        # fsync it either); it goes out with the next entries. That saves a WAL round trip per
        # commit notification.
        if rd.entries or (rd.hard_state is not None and rd.must_sync):
            data = encode_batch(rd.hard_state, rd.entries)
            last = rd.entries[-1].Index if rd.entries else None
            await loop.run_in_executor(self._wal_io, self._write, data, last, rd.hard_state, rd.must_sync)
        if late:
            self.srv.transport.send(late)
        if n_pre < len(committed):
            # entries persisted only just now (a lone voter commits what it appends)
            self._apply(committed[n_pre:] if n_pre else committed)
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.lead, rd.soft_state.role)

    def _write(self, data: bytes, last: int | None, hs: HardState | None, sync: bool) -> None:
        """On the WAL thread: syscalls only."""
        self.wal.append(data, last, hs)
        if sync:
            self.wal.sync()

    def _apply(self, entries: list) -> None:
        batch: list = []
        for e in entries:
            if e.Type == EntryConfChange:
                if batch:
                    self.srv._apply_entries(batch)
                    batch = []
                self._apply_conf_change(e)
            else:
                batch.append(e)
        if batch:
            self.srv._apply_entries(batch)

    def _apply_conf_change(self, e) -> None:
        cc = ConfChange.FromString(e.Data)
        if cc.type == raft_pb2.ConfChangeRemoveNode and self.conf.voters == (cc.node_id,):
            # removing the last voter would leave a cluster nobody can lead: a no-op, as etcd's
            # apply-time validation makes it
            log.warning("refusing to remove %x, the last voter", cc.node_id)
            self.srv._refuse_conf_change(e.Index, e.Term, cc)
            return
        self.conf = self.raft.apply_conf_change(cc)
        self._conf_history.append((e.Index, self.conf))
        if len(self._conf_history) > 64:
            del self._conf_history[:-64]
        self.srv._apply_conf_change(e.Index, e.Term, cc, self.conf)

    def _release_reads(self) -> None:
        if not self._ready_reads:
            return
        applied = self.srv.applier.applied_index
        keep = []
        for index, waiters in self._ready_reads:
            if applied >= index:
                for f in waiters:
                    if not f.done():
                        f.set_result(None)
            else:
                keep.append((index, waiters))
        self._ready_reads = keep

    def _on_soft_state(self, lead: int, role: Role) -> None:
        was_leader = self.role == Role.LEADER
        if lead != self.lead:
            self.leader_changes += 1
            if lead:
                log.info("raft: %x sees leader %x at term %d", self.id, lead, self.raft.term)
            else:
                log.info("raft: %x lost its leader at term %d", self.id, self.raft.term)
            # reads waiting on the old leader's confirmation will never get it
            for waiters in self._reads.values():
                for f in waiters:
                    if not f.done():
                        f.set_exception(errors.LEADER_CHANGED)
            self._reads.clear()
        self.lead, self.role = lead, role
        if role == Role.LEADER and not was_leader:
            self.srv._on_became_leader()
        elif was_leader and role != Role.LEADER:
            self.srv._on_lost_leadership()

    # ---------------------------------------------------------- snapshots
    def conf_at(self, index: int) -> ConfState:
        conf = self._conf_history[0][1]
        for i, c in self._conf_history:
            if i <= index:
                conf = c
        return conf

    def _maybe_snapshot(self) -> None:
        applied = self.srv.applier.applied_index
        if applied - self._last_snap_index < self.srv.cfg.snapshot_count or self._snapshotting:
            return
        self._snapshotting = True
        asyncio.get_running_loop().create_task(self._snapshot(applied))

    async def _snapshot(self, index: int) -> None:
        """Commit the backend through index, mark it in the WAL, compact the in-memory log."""
        try:
            term = self.raft.log.term(index)
            conf = self.conf_at(index)
            await self.srv._commit_backend_now()
            snap = WalSnapshot(index=index, term=term, conf_state=conf_to_pb(conf))
            await asyncio.get_running_loop().run_in_executor(self._wal_io, self.wal.save_snapshot, snap)
            self._last_snap_index = index
            keep_from = index - self.srv.cfg.snapshot_catchup_entries
            if keep_from > self.raft.log.snap.index:
                self.raft.compact(keep_from, self.conf_at(keep_from))
            log.info("snapshot at index %d (term %d); log kept from %d", index, term, self.raft.log.first_index())
        except Exception:  # noqa: BLE001
            log.exception("snapshot at %d failed", index)
        finally:
            self._snapshotting = False

    def snapshot_provider(self) -> Snapshot | None:
        """For raft, sending to a follower behind the compacted log: a backend copy, made on demand."""
        s = self._sendable
        if s is not None and s.meta.index >= self.raft.log.first_index() - 1 and os.path.exists(str(s.data)):
            return s
        if not self._snapshotting:
            self._snapshotting = True
            asyncio.get_running_loop().create_task(self._make_sendable())
        return None

    async def _make_sendable(self) -> None:
        try:
            snap_dir = os.path.dirname(self.srv.cfg.backend_path)
            path = os.path.join(snap_dir, f"send-{int(time.time() * 1000)}.snap.db")
            ci, term = await self.srv._backend_copy(path)
            old = self._sendable
            self._sendable = Snapshot(SnapshotMeta(ci, term, self.conf_at(ci)), path)
            if old is not None and old.data != path and os.path.exists(str(old.data)):
                os.unlink(str(old.data))
            log.info("made snapshot %s to send to followers", self._sendable)
        except Exception:  # noqa: BLE001
            log.exception("making a snapshot to send failed")
        finally:
            self._snapshotting = False
            self._wake.set()

    async def _install_snapshot(self, snap: Snapshot) -> None:
        """A follower's snapshot from the leader: the backend file replaces ours."""
        path = snap.data
        if not isinstance(path, str) or not os.path.exists(path):
            raise RuntimeError(f"snapshot {snap} has no file")
        await self.srv._install_backend(path)
        self.conf = snap.meta.conf
        self._conf_history = [(snap.meta.index, self.conf)]
        ws = WalSnapshot(index=snap.meta.index, term=snap.meta.term, conf_state=conf_to_pb(snap.meta.conf))
        await asyncio.get_running_loop().run_in_executor(self._wal_io, self.wal.save_snapshot, ws)
        self._last_snap_index = snap.meta.index
        log.info("installed snapshot %s", snap)


def make_raft(
    member_id: int,
    heartbeat_ms: int,
    election_ms: int,
    rng,
    conf: ConfState,
    hard_state: HardState,
    snap_meta: SnapshotMeta,
    entries: list,
) -> Raft:
    cfg = Config(
        id=member_id,
        rng=rng,
        election_tick=max(2, election_ms // heartbeat_ms),
        heartbeat_tick=1,
        pre_vote=True,
        check_quorum=True,
    )
    return Raft(cfg, conf, hard_state=hard_state, snapshot=snap_meta, entries=entries, applied=snap_meta.index)
