"""The Raft algorithm: roles, elections, replication, reads, transfers and membership.

One entry point, `step(message)`; local actions (campaign, heartbeat, propose, read index,
transfer) are messages too. Roles swap their step and tick functions. Time is `tick()`;
randomness is the injected `rng`. The output is a `Ready` (what to persist, send and apply),
acknowledged with `advance`. Membership changes one node at a time (no joint consensus), with
learners that replicate but never vote.

Safety properties this code keeps (and the simulation tests check): at most one leader per
term; a node votes once per term and only for a log at least as new as its own; a leader
commits by counting replicas only for entries of its own term; committed entries are never
overwritten.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from server.proto.raftpb import raft_pb2
from server.raft.log import CompactedError, RaftLog, UnavailableError
from server.raft.progress import Progress, PState
from server.raft.types import (
    CAMPAIGN_TRANSFER,
    LOCAL_TYPES,
    NONE,
    ConfState,
    Entry,
    EntryConfChange,
    EntryNormal,
    HardState,
    Message,
    MsgType,
    Ready,
    ReadState,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

ConfChange = raft_pb2.ConfChange


class ProposalDropped(Exception):
    """The proposal was not appended (no leader, leadership transfer, or removed from the cluster)."""


class Rng(Protocol):
    def randrange(self, start: int, stop: int) -> int: ...


@dataclass
class Config:
    id: int
    rng: Rng
    election_tick: int = 10
    heartbeat_tick: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight: int = 256
    max_size_per_msg: int = 1 << 20
    # the application's latest snapshot, for followers behind the compacted log; None if it
    # has none ready yet (raft asks again later)
    snapshot_provider: Callable[[], Snapshot | None] = lambda: None


@dataclass
class _ReadRequest:
    index: int
    frm: int
    acks: set


class Raft:
    """Invariant: self.id is in self.prs unless it was removed from the cluster."""

    def __init__(
        self,
        cfg: Config,
        conf: ConfState,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: list | None = None,
        applied: int = 0,
    ) -> None:
        if cfg.heartbeat_tick <= 0 or cfg.election_tick <= cfg.heartbeat_tick:
            raise ValueError("election_tick must be greater than heartbeat_tick > 0")
        self.cfg = cfg
        self.id = cfg.id
        hs = hard_state or HardState()
        snap = snapshot or SnapshotMeta(conf=conf)
        self.log = RaftLog(snap, entries or [], hs.commit, applied)
        self.term = hs.term
        self.vote = hs.vote
        self.lead = NONE
        self.role = Role.FOLLOWER
        self.prs: dict[int, Progress] = {}
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self._set_conf(conf)
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.lead_transferee = NONE
        self.pending_conf_index = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = cfg.election_tick
        self._reads: dict[bytes, _ReadRequest] = {}
        self._read_queue: list[bytes] = []
        self._pending_reads: list[Message] = []  # until an entry of this term commits
        self._append_to: dict[int, bool] = {}  # followers owed appends (value: even if empty)
        self._prev_soft = SoftState(NONE, Role.FOLLOWER)
        self._prev_hard = HardState(term=hs.term, vote=hs.vote, commit=hs.commit)
        self._ready_out = False
        self.become_follower(self.term, NONE)

    # ------------------------------------------------------------ printing
    def __str__(self) -> str:
        return f"{self.id} {self.role.name} term={self.term} lead={self.lead} vote={self.vote} {self.log}"

    def status(self) -> str:
        lines = [str(self)]
        for i in sorted(self.prs):
            lines.append(f"  {i}: {self.prs[i]}")
        return "\n".join(lines)

    # -------------------------------------------------------- configuration
    def _set_conf(self, conf: ConfState) -> None:
        self.voters = set(conf.voters)
        self.learners = set(conf.learners)
        nxt = self.log.last_index() + 1
        old = self.prs
        self.prs = {}
        for i in self.voters | self.learners:
            pr = old.get(i) or Progress(nxt, self.cfg.max_inflight)
            pr.is_learner = i in self.learners
            self.prs[i] = pr

    def conf_state(self) -> ConfState:
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def promotable(self) -> bool:
        return self.id in self.voters and self.log.pending_snapshot is None

    def _quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def apply_conf_change(self, cc: ConfChange) -> ConfState:
        """Apply a committed (and applied) membership change; returns the new configuration."""
        nid = cc.node_id
        t = cc.type
        if t == raft_pb2.ConfChangeAddNode:
            self.learners.discard(nid)
            self.voters.add(nid)
        elif t == raft_pb2.ConfChangeAddLearnerNode:
            if nid not in self.voters:
                self.learners.add(nid)
        elif t == raft_pb2.ConfChangeRemoveNode:
            self.voters.discard(nid)
            self.learners.discard(nid)
            if nid == self.lead_transferee:
                self.lead_transferee = NONE
        for i in self.voters | self.learners:
            if i not in self.prs:
                pr = Progress(self.log.last_index() + 1, self.cfg.max_inflight)
                pr.recent_active = True  # a new member gets one election timeout to show up
                self.prs[i] = pr
            self.prs[i].is_learner = i in self.learners
        for i in list(self.prs):
            if i not in self.voters and i not in self.learners:
                del self.prs[i]
        if self.role == Role.LEADER and self.voters:
            if self._maybe_commit():
                self._bcast_append()
            else:
                for i in self.prs:
                    if i != self.id:
                        self._want_append(i, if_empty=False)
        return self.conf_state()

    # --------------------------------------------------------------- roles
    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = NONE
        self.lead = NONE
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.cfg.election_tick + self.cfg.rng.randrange(0, self.cfg.election_tick)
        self.lead_transferee = NONE
        self.votes = {}
        last = self.log.last_index()
        for i, pr in self.prs.items():
            learner = pr.is_learner
            new = Progress(last + 1, self.cfg.max_inflight, learner)
            if i == self.id:
                new.match = last
            self.prs[i] = new
        self.pending_conf_index = 0
        self._reads = {}
        self._read_queue = []
        self._pending_reads = []
        self._append_to = {}

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self.role = Role.FOLLOWER
        self._step = self._step_follower
        self._tick = self._tick_election

    def become_pre_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RuntimeError("leader cannot become pre-candidate")
        # term and vote stay: a pre-vote changes nothing until it wins
        self.votes = {}
        self.lead = NONE
        self.role = Role.PRE_CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def become_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RuntimeError("leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._step = self._step_candidate
        self._tick = self._tick_election

    def become_leader(self) -> None:
        if self.role == Role.FOLLOWER:
            raise RuntimeError("follower cannot become leader without an election")
        self._reset(self.term)
        self.lead = self.id
        self.role = Role.LEADER
        self._step = self._step_leader
        self._tick = self._tick_heartbeat
        for pr in self.prs.values():
            pr.recent_active = True
        self.prs[self.id].become_replicate()
        # conf changes appended by earlier leaders may still be uncommitted: wait for them
        self.pending_conf_index = self.log.last_index()
        self._append([Entry(Type=EntryNormal, Data=b"")])

    # --------------------------------------------------------------- ticks
    def tick(self) -> None:
        self._tick()

    def _past_election_timeout(self) -> bool:
        return self.election_elapsed >= self.randomized_election_timeout

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable() and self._past_election_timeout():
            self.election_elapsed = 0
            self.step(Message(MsgType.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_tick:
            self.election_elapsed = 0
            if self.cfg.check_quorum:
                self.step(Message(MsgType.CHECK_QUORUM, frm=self.id))
            if self.role == Role.LEADER and self.lead_transferee != NONE:
                self.lead_transferee = NONE  # the transfer did not finish in an election timeout
        if self.role != Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_tick:
            self.heartbeat_elapsed = 0
            self.step(Message(MsgType.BEAT, frm=self.id))

    # ------------------------------------------------------------ local API
    def campaign_now(self) -> None:
        self.step(Message(MsgType.HUP, frm=self.id))

    def propose(self, datas: list[bytes]) -> None:
        """Propose normal entries; raises ProposalDropped if they cannot be appended or forwarded."""
        self.step(Message(MsgType.PROP, frm=self.id, entries=[Entry(Type=EntryNormal, Data=d) for d in datas]))

    def propose_conf_change(self, cc: ConfChange) -> None:
        self.step(Message(MsgType.PROP, frm=self.id,
                          entries=[Entry(Type=EntryConfChange, Data=cc.SerializeToString())]))

    def read_index(self, ctx: bytes) -> None:
        """Ask for a read state: the index a linearizable read of ctx may be served at."""
        self.step(Message(MsgType.READ_INDEX, frm=self.id, entries=[Entry(Data=ctx)]))

    def transfer_leader(self, transferee: int) -> None:
        self.step(Message(MsgType.TRANSFER_LEADER, frm=transferee))

    def report_unreachable(self, peer: int) -> None:
        self.step(Message(MsgType.UNREACHABLE, frm=peer))

    def report_snapshot(self, peer: int, ok: bool) -> None:
        self.step(Message(MsgType.SNAP_STATUS, frm=peer, reject=not ok))

    # ---------------------------------------------------------------- step
    def step(self, m: Message) -> None:
        if m.term == 0 or m.type in LOCAL_TYPES:
            pass  # a local message
        elif m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                force = m.context == CAMPAIGN_TRANSFER
                in_lease = (self.cfg.check_quorum and self.lead != NONE
                            and self.election_elapsed < self.cfg.election_tick)
                if not force and in_lease:
                    return  # we heard from a leader lately: do not help depose it
            if m.type == MsgType.PRE_VOTE:
                pass  # never change term on a pre-vote request
            elif m.type == MsgType.PRE_VOTE_RESP and not m.reject:
                pass  # our own pre-vote term; the real election bumps it
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, NONE)
        elif m.term < self.term:
            if (self.cfg.check_quorum or self.cfg.pre_vote) and m.type in (MsgType.HEARTBEAT, MsgType.APP):
                # a partitioned old leader: tell it our term so it steps down
                self._send(Message(MsgType.APP_RESP, to=m.frm))
            elif m.type == MsgType.PRE_VOTE:
                self._send(Message(MsgType.PRE_VOTE_RESP, to=m.frm, term=self.term, reject=True))
            return

        t = m.type
        if t == MsgType.HUP:
            self._hup(transfer=False)
        elif t in (MsgType.VOTE, MsgType.PRE_VOTE):
            can_vote = (
                self.vote == m.frm
                or (self.vote == NONE and self.lead == NONE)
                or (t == MsgType.PRE_VOTE and m.term > self.term)
            )
            resp = MsgType.VOTE_RESP if t == MsgType.VOTE else MsgType.PRE_VOTE_RESP
            if can_vote and self.log.is_up_to_date(m.index, m.log_term):
                # answer with the request's term: a pre-vote must not raise anybody's term
                self._send(Message(resp, to=m.frm, term=m.term))
                if t == MsgType.VOTE:
                    self.election_elapsed = 0
                    self.vote = m.frm
            else:
                self._send(Message(resp, to=m.frm, term=self.term, reject=True))
        else:
            self._step(m)

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER:
            return
        if not self.promotable():
            return
        if self._pending_conf_in_committed():
            return  # a committed conf change must be applied before this node can lead
        if self.cfg.pre_vote and not transfer:
            self._campaign(pre=True, transfer=False)
        else:
            self._campaign(pre=False, transfer=transfer)

    def _pending_conf_in_committed(self) -> bool:
        lo = max(self.log.applied + 1, self.log.first_index())
        for i in range(lo, self.log.committed + 1):
            e = self.log.entries[i - self.log.snap.index - 1]
            if e.Type == EntryConfChange:
                return True
        return False

    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self.become_pre_candidate()
            vote_type, term = MsgType.PRE_VOTE, self.term + 1
        else:
            self.become_candidate()
            vote_type, term = MsgType.VOTE, self.term
        if self._poll(self.id, True) == "won":
            if pre:
                self._campaign(pre=False, transfer=transfer)
            else:
                self.become_leader()
            return
        ctx = CAMPAIGN_TRANSFER if transfer else b""
        for i in sorted(self.voters):
            if i == self.id:
                continue
            self._send(Message(vote_type, to=i, term=term, index=self.log.last_index(),
                               log_term=self.log.last_term(), context=ctx))

    def _poll(self, frm: int, granted: bool) -> str:
        if frm not in self.votes:
            self.votes[frm] = granted
        yes = sum(1 for i, v in self.votes.items() if v and i in self.voters)
        no = sum(1 for i, v in self.votes.items() if not v and i in self.voters)
        q = self._quorum()
        if yes >= q:
            return "won"
        if no > len(self.voters) - q:
            return "lost"
        return "pending"

    # ------------------------------------------------------------- leader
    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MsgType.BEAT:
            self._bcast_heartbeat(b"")
            return
        if t == MsgType.CHECK_QUORUM:
            if not self._quorum_active():
                self.become_follower(self.term, NONE)
            for i, pr in self.prs.items():
                if i != self.id:
                    pr.recent_active = False
            return
        if t == MsgType.PROP:
            if not m.entries:
                raise ValueError("empty proposal")
            if self.id not in self.prs:
                raise ProposalDropped("removed from the cluster")
            if self.lead_transferee != NONE:
                raise ProposalDropped("leadership transfer in progress")
            ents = []
            for e in m.entries:
                if e.Type == EntryConfChange:
                    if self.pending_conf_index > self.log.applied:
                        # one membership change at a time: keep the slot, drop the change
                        e = Entry(Type=EntryNormal, Data=b"")
                    else:
                        self.pending_conf_index = self.log.last_index() + len(ents) + 1
                ents.append(e)
            self._append(ents)
            self._bcast_append()
            return
        if t == MsgType.READ_INDEX:
            if self.voters == {self.id}:
                # the only voter is this leader (not a removed leader with one voter left, which
                # may have been deposed already: it must confirm by heartbeat like any other)
                self._answer_read(m, self.log.committed)
                return
            if not self._committed_in_current_term():
                self._pending_reads.append(m)
                return
            self._start_read(m)
            return

        pr = self.prs.get(m.frm)
        if pr is None:
            return
        if t == MsgType.APP_RESP:
            pr.recent_active = True
            if m.reject:
                hint = m.reject_hint
                if m.log_term > 0:
                    hint = self.log.find_conflict_by_term(hint, m.log_term)
                if pr.maybe_decr_to(m.index, hint):
                    if pr.state == PState.REPLICATE:
                        pr.become_probe()
                    self._want_append(m.frm)
                return
            old_paused = pr.is_paused()
            if pr.maybe_update(m.index):
                if pr.state == PState.PROBE:
                    pr.become_replicate()
                elif pr.state == PState.SNAPSHOT and pr.match >= pr.pending_snapshot:
                    pr.become_probe()
                    pr.become_replicate()
                elif pr.state == PState.REPLICATE:
                    pr.inflights.free_le(m.index)
                if self._maybe_commit():
                    self._release_pending_reads()
                    self._bcast_append()
                elif old_paused:
                    self._want_append(m.frm)
                self._want_append(m.frm, if_empty=False)
                if m.frm == self.lead_transferee and pr.match == self.log.last_index():
                    self._send(Message(MsgType.TIMEOUT_NOW, to=m.frm))
        elif t == MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if pr.state == PState.REPLICATE and pr.inflights.full():
                pr.inflights.free_first_one()
            if pr.match < self.log.last_index():
                self._want_append(m.frm)
            if m.context:
                self._ack_read(m.context, m.frm)
        elif t == MsgType.SNAP_STATUS:
            if pr.state != PState.SNAPSHOT:
                return
            if m.reject:
                pr.pending_snapshot = 0
            pr.become_probe()
            pr.probe_sent = True  # wait for a heartbeat response before probing again
        elif t == MsgType.UNREACHABLE:
            if pr.state == PState.REPLICATE:
                pr.become_probe()
        elif t == MsgType.TRANSFER_LEADER:
            target = m.frm
            if pr.is_learner or target == self.id:
                return
            if self.lead_transferee == target:
                return
            self.lead_transferee = target
            self.election_elapsed = 0
            if pr.match == self.log.last_index():
                self._send(Message(MsgType.TIMEOUT_NOW, to=target))
            else:
                self._want_append(target)

    def _quorum_active(self) -> bool:
        active = sum(1 for i in self.voters if i == self.id or (i in self.prs and self.prs[i].recent_active))
        return active >= self._quorum()

    def _committed_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    def _maybe_commit(self) -> bool:
        matches = sorted((self.prs[i].match for i in self.voters if i in self.prs), reverse=True)
        if len(matches) < self._quorum():
            return False
        mci = matches[self._quorum() - 1]
        # only entries of the leader's own term are committed by counting replicas
        if mci > self.log.committed and self.log.term_or_zero(mci) == self.term:
            self.log.commit_to(mci)
            return True
        return False

    def _append(self, ents: list) -> None:
        last = self.log.last_index()
        out = []
        for i, e in enumerate(ents):
            out.append(Entry(Type=e.Type, Term=self.term, Index=last + 1 + i, Data=e.Data))
        last = self.log.append(out)
        self.prs[self.id].maybe_update(last)
        self._maybe_commit()

    def _bcast_append(self) -> None:
        for i in self.prs:
            if i != self.id:
                self._want_append(i)

    def _want_append(self, to: int, if_empty: bool = True) -> None:
        """Note that `to` should get what it lacks of the log (and, if_empty, at least the commit
        index even without entries). The appends are made when the Ready is taken, so every
        proposal and acknowledgement stepped in between shares one message per follower."""
        self._append_to[to] = if_empty or self._append_to.get(to, False)

    def _flush_appends(self) -> None:
        pending, self._append_to = self._append_to, {}
        if self.role != Role.LEADER:
            return
        for to, if_empty in pending.items():
            if to == self.id or to not in self.prs:
                continue
            sent = self._maybe_send_append(to, send_if_empty=if_empty)
            while sent and self._maybe_send_append(to, send_if_empty=False):
                pass

    def _bcast_heartbeat(self, ctx: bytes) -> None:
        for i, pr in self.prs.items():
            if i == self.id:
                continue
            self._send(Message(MsgType.HEARTBEAT, to=i, commit=min(pr.match, self.log.committed), context=ctx))

    def _maybe_send_append(self, to: int, send_if_empty: bool = True) -> bool:
        pr = self.prs[to]
        if pr.is_paused():
            return False
        try:
            term = self.log.term(pr.next - 1)
            ents = self.log.slice(pr.next, self.log.last_index() + 1, self.cfg.max_size_per_msg)
        except CompactedError:
            return self._send_snapshot(to, pr)
        except UnavailableError:
            return False
        if not ents and not send_if_empty:
            return False
        self._send(Message(MsgType.APP, to=to, index=pr.next - 1, log_term=term, entries=ents,
                           commit=self.log.committed))
        if ents:
            last = ents[-1].Index
            if pr.state == PState.REPLICATE:
                pr.next = last + 1
                pr.inflights.add(last)
            elif pr.state == PState.PROBE:
                pr.probe_sent = True
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        if not pr.recent_active:
            return False  # do not ship a snapshot to a node that may be down
        snap = self.cfg.snapshot_provider()
        if snap is None or snap.meta.index < self.log.first_index() - 1:
            return False  # none covering the compacted log yet; try again later
        self._send(Message(MsgType.SNAP, to=to, snapshot=snap))
        pr.become_snapshot(snap.meta.index)
        return True

    # -------------------------------------------------------------- reads
    def _answer_read(self, m: Message, index: int) -> None:
        ctx = m.entries[0].Data if m.entries else b""
        if m.frm in (NONE, self.id):
            self.read_states.append(ReadState(index, ctx))
        else:
            self._send(Message(MsgType.READ_INDEX_RESP, to=m.frm, index=index, context=ctx))

    def _start_read(self, m: Message) -> None:
        ctx = m.entries[0].Data if m.entries else b""
        if ctx in self._reads:
            return
        self._reads[ctx] = _ReadRequest(self.log.committed, m.frm, {self.id})
        self._read_queue.append(ctx)
        self._bcast_heartbeat(ctx)

    def _ack_read(self, ctx: bytes, frm: int) -> None:
        req = self._reads.get(ctx)
        if req is None:
            return
        req.acks.add(frm)
        if sum(1 for i in req.acks if i in self.voters) < self._quorum():
            return
        # this request and every earlier one are confirmed: we were still the leader
        while self._read_queue:
            c = self._read_queue.pop(0)
            r = self._reads.pop(c)
            self._answer_read(Message(MsgType.READ_INDEX, frm=r.frm, entries=[Entry(Data=c)]), r.index)
            if c == ctx:
                break

    def _release_pending_reads(self) -> None:
        if not self._pending_reads or not self._committed_in_current_term():
            return
        pending, self._pending_reads = self._pending_reads, []
        for m in pending:
            self._start_read(m)

    # ---------------------------------------------------------- candidate
    def _step_candidate(self, m: Message) -> None:
        t = m.type
        mine = MsgType.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MsgType.VOTE_RESP
        if t == MsgType.PROP:
            raise ProposalDropped("no leader")
        if t == MsgType.APP:
            self.become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MsgType.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == mine:
            res = self._poll(m.frm, not m.reject)
            if res == "won":
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre=False, transfer=False)
                else:
                    self.become_leader()
                    self._bcast_append()
            elif res == "lost":
                self.become_follower(self.term, NONE)
        elif t == MsgType.READ_INDEX:
            raise ProposalDropped("no leader")

    # ----------------------------------------------------------- follower
    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == MsgType.PROP:
            if self.lead == NONE:
                raise ProposalDropped("no leader")
            m.to = self.lead
            self._send(m)
        elif t == MsgType.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == MsgType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MsgType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MsgType.TRANSFER_LEADER:
            if self.lead == NONE:
                return
            m.to = self.lead
            self._send(m)
        elif t == MsgType.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == MsgType.READ_INDEX:
            if self.lead == NONE:
                raise ProposalDropped("no leader")
            m.to = self.lead
            self._send(m)
        elif t == MsgType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=last_new))
            return
        hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
        self._send(Message(MsgType.APP_RESP, to=m.frm, index=m.index, reject=True, reject_hint=hint,
                           log_term=self.log.term_or_zero(hint)))

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(Message(MsgType.HEARTBEAT_RESP, to=m.frm, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        s = m.snapshot
        if s is not None and self._restore(s):
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.last_index()))
        else:
            self._send(Message(MsgType.APP_RESP, to=m.frm, index=self.log.committed))

    def _restore(self, s: Snapshot) -> bool:
        if s.meta.index <= self.log.committed:
            return False
        conf = s.meta.conf
        if self.id not in conf.voters and self.id not in conf.learners:
            return False  # a snapshot from a configuration we are not part of
        if self.log.match_term(s.meta.index, s.meta.term):
            self.log.commit_to(s.meta.index)  # we have the log up to it already
            return False
        self.log.restore(s)
        self._set_conf(conf)
        for i, pr in self.prs.items():
            pr.match = self.log.last_index() if i == self.id else 0
            pr.next = self.log.last_index() + 1
        return True

    # ------------------------------------------------------------ sending
    def _send(self, m: Message) -> None:
        if m.frm == NONE:
            # a forwarded message keeps its origin: for TRANSFER_LEADER `frm` names the transferee
            m.frm = self.id
        if m.type in (MsgType.VOTE, MsgType.VOTE_RESP, MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP):
            if m.term == 0:
                raise RuntimeError(f"{m.type.name} without a term")
        elif m.type not in (MsgType.PROP, MsgType.READ_INDEX):
            # proposals and forwarded reads keep term 0: they are treated as local at the leader
            m.term = self.term
        else:
            m.term = 0
        self.msgs.append(m)

    # -------------------------------------------------------------- ready
    def _soft(self) -> SoftState:
        return SoftState(self.lead, self.role)

    def _hard(self) -> HardState:
        return HardState(term=self.term, vote=self.vote, commit=self.log.committed)

    def has_ready(self) -> bool:
        if self._ready_out:
            return False
        if self._append_to:
            self._flush_appends()
        return bool(
            self.msgs
            or self.read_states
            or self.log.unstable_entries()
            or self.log.pending_snapshot is not None
            or self.log.has_next_committed()
            or self._soft() != self._prev_soft
            or self._hard() != self._prev_hard
        )

    def ready(self) -> Ready:
        """Take the next batch of work; no other ready() until advance()."""
        if self._ready_out:
            raise RuntimeError("ready() called twice without advance()")
        if self._append_to:
            self._flush_appends()
        soft = self._soft()
        hard = self._hard()
        entries = self.log.unstable_entries()
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=list(entries),
            snapshot=self.log.pending_snapshot,
            committed_entries=list(self.log.next_committed()),
            messages=_coalesce_acks(self.msgs) if len(self.msgs) > 1 else self.msgs,
            read_states=self.read_states,
            must_sync=bool(entries) or hard.term != self._prev_hard.term or hard.vote != self._prev_hard.vote,
        )
        self.msgs = []
        self.read_states = []
        self._ready_out = True
        return rd

    def advance(self, rd: Ready) -> None:
        """The application persisted, sent and applied everything in rd."""
        if not self._ready_out:
            raise RuntimeError("advance() without ready()")
        self._ready_out = False
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            self.log.snapshot_applied(rd.snapshot.meta.index)
        if rd.entries:
            e = rd.entries[-1]
            self.log.stable_to(e.Index, e.Term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].Index)
        if self.role == Role.LEADER:
            self._release_pending_reads()

    def compact(self, index: int, conf: ConfState) -> None:
        """The application snapshotted its state at index: forget the log up to it."""
        self.log.compact(index, SnapshotMeta(index, self.log.term(index), conf))


def _coalesce_acks(msgs: list[Message]) -> list[Message]:
    """Of the successful append acknowledgements to one node in one term, keep the one with the
    highest index: it says everything the others say (dropping the rest is no worse than losing
    them, which raft tolerates). Several appends handled between two Readys then cost the leader
    one acknowledgement."""
    best: dict[tuple[int, int], Message] = {}
    for m in msgs:
        if m.type == MsgType.APP_RESP and not m.reject:
            k = (m.to, m.term)
            b = best.get(k)
            if b is None or m.index >= b.index:
                best[k] = m
    if len(best) == sum(1 for m in msgs if m.type == MsgType.APP_RESP and not m.reject):
        return msgs
    keep = {id(m) for m in best.values()}
    return [m for m in msgs if m.type != MsgType.APP_RESP or m.reject or id(m) in keep]
