"""Raft's plain data: message types, messages, snapshots, Ready. Every type prints stably."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from server.proto.raftpb import raft_pb2

Entry = raft_pb2.Entry
HardState = raft_pb2.HardState
EntryNormal = raft_pb2.EntryNormal
EntryConfChange = raft_pb2.EntryConfChange

NONE = 0  # no node: no leader, no vote
CAMPAIGN_TRANSFER = b"CampaignTransfer"  # a vote request that may break a leader's lease


class MsgType(IntEnum):
    """etcd raftpb's message type numbers (so messages can travel as raftpb.Message)."""

    HUP = 0
    BEAT = 1
    PROP = 2
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    SNAP = 7
    HEARTBEAT = 8
    HEARTBEAT_RESP = 9
    UNREACHABLE = 10
    SNAP_STATUS = 11
    CHECK_QUORUM = 12
    TRANSFER_LEADER = 13
    TIMEOUT_NOW = 14
    READ_INDEX = 15
    READ_INDEX_RESP = 16
    PRE_VOTE = 17
    PRE_VOTE_RESP = 18


LOCAL_TYPES = frozenset(
    {MsgType.HUP, MsgType.BEAT, MsgType.UNREACHABLE, MsgType.SNAP_STATUS, MsgType.CHECK_QUORUM}
)


class Role(IntEnum):
    FOLLOWER = 0
    CANDIDATE = 1
    LEADER = 2
    PRE_CANDIDATE = 3


@dataclass(frozen=True, slots=True)
class ConfState:
    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"voters={list(self.voters)} learners={list(self.learners)}"


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    conf: ConfState = ConfState()

    def __str__(self) -> str:
        return f"snap[{self.index}@{self.term} {self.conf}]"


@dataclass(slots=True)
class Snapshot:
    """Snapshot metadata plus the application's state; raft never looks inside `data`."""

    meta: SnapshotMeta
    data: object = None

    def __str__(self) -> str:
        return str(self.meta)


@dataclass(slots=True)
class Message:
    type: MsgType
    to: int = NONE
    frm: int = NONE
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: list = field(default_factory=list)  # list[Entry]
    commit: int = 0
    snapshot: Snapshot | None = None
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""

    def __str__(self) -> str:
        s = f"{self.frm}->{self.to} {self.type.name} term={self.term}"
        if self.type in (MsgType.APP, MsgType.APP_RESP, MsgType.VOTE, MsgType.PRE_VOTE,
                         MsgType.VOTE_RESP, MsgType.PRE_VOTE_RESP, MsgType.READ_INDEX_RESP):
            s += f" log={self.log_term}/{self.index}"
        if self.entries:
            s += f" entries=[{', '.join(f'{e.Term}/{e.Index}' for e in self.entries)}]"
        if self.commit:
            s += f" commit={self.commit}"
        if self.reject:
            s += f" rejected (hint {self.reject_hint})"
        if self.snapshot is not None:
            s += f" {self.snapshot}"
        if self.context:
            s += f" ctx={self.context!r}"
        return s


@dataclass(frozen=True, slots=True)
class SoftState:
    lead: int
    role: Role

    def __str__(self) -> str:
        return f"lead={self.lead} {self.role.name}"


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read request (ctx) may be served once the state machine has applied `index`."""

    index: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    """What the application must do, in this order: persist hard_state, entries and snapshot
    (fsync when must_sync), then send messages, then apply snapshot and committed_entries, then
    call Raft.advance(this). Committed entries may include some of `entries`; those are applied
    only after being persisted, which the order above guarantees; committed entries at or below
    what earlier Readys persisted (`RaftLog.stabled` when the Ready is taken) may be applied at
    once, before this Ready is persisted. A leader whose configuration
    has other voters may send its APP and HEARTBEAT messages before persisting (Raft thesis
    10.2.1); a lone voter must not: it elects itself and commits in memory, so those messages
    can carry a term and a commit index it has not persisted (tests/raft/testdata/early-send.txt)."""

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: list
    snapshot: Snapshot | None
    committed_entries: list
    messages: list[Message]
    read_states: list[ReadState]
    must_sync: bool
