"""A deterministic, seeded simulation of server/raft: many nodes, a hostile network, crashes.

Why: Raft's safety rests on interleavings nobody writes down by hand (a vote lost in a crash,
an append delivered twice after a leader change, a snapshot racing a truncation). This drives
N in-memory `Raft` nodes through random schedules drawn from one seed and checks Raft's safety
properties after every step, so any violation is reproducible with one command line:

    python -m tests.raftsim --seed 1234 --nodes 5 --steps 3000

The world:
  * a network that delays (in ticks), drops, duplicates and reorders messages, and can be cut
    into arbitrary groups, around the leader, one way only, or with one node bridging the
    sides, and healed;
  * nodes that crash and restart keeping only what they persisted: each Ready is persisted
    (hard state, snapshot, entries) at the moment the application handles it, and a crash can
    hit before that, after it but before the messages go out, or after sending but before
    applying and advancing; the application may also persist and send a Ready and apply it
    later, with other messages stepped in between; a leader may send its appends and
    heartbeats before persisting (as the server does); nodes may also pause (a stopped
    process) and resume believing what they believed, with client requests queued meanwhile;
  * an application whose state machine is the list of applied values plus the configuration;
    it snapshots and compacts periodically and hands its snapshot to raft on request; like
    etcd's server it validates membership changes when applying them (never the last voter);
  * clients proposing unique values, asking for linearizable reads (read_index), changing the
    membership (add a voter, add a learner and promote it, remove a node; a removed leader hands
    leadership on, as etcd's TODO suggests) and transferring leadership; they favour whichever
    node believes it leads, stale or not.

Checked after every step: election safety (at most one leader per term over the whole run),
one vote per term per node (across restarts), log matching, leader completeness, state-machine
safety (no two nodes apply different entries at one index), committed entries never lost,
per-incarnation monotonic applied index, and that read states cover every value acknowledged
(applied anywhere) before the read was issued. After the run, liveness: once faults stop and
the network heals, a leader is elected and a new proposal commits within a bounded number of
ticks, and every member catches up. What counts is what could be observed: an entry is
committed once some node persisted a commit index covering it, and a leadership once its term
is persisted (a lone voter elects itself and commits in memory; if it crashes before
persisting, nothing of that ever left it).
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import random
import sys
import traceback
from collections import deque
from dataclasses import dataclass, field

from server.proto.raftpb import raft_pb2
from server.raft import (
    Config,
    ConfState,
    Message,
    MsgType,
    ProposalDropped,
    Raft,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from server.raft.types import Entry, EntryConfChange, HardState

ConfChange = raft_pb2.ConfChange


# ============================================================================ configuration
@dataclass
class Faults:
    """Probabilities (per event) and weights (per step) of everything that can go wrong."""

    drop: float = 0.05  # a message is lost
    dup: float = 0.03  # a message is delivered twice
    delay: float = 0.2  # a message is held back 1..max_delay ticks
    max_delay: int = 3
    fifo: float = 0.5  # chance the oldest due message goes next (else any due one)
    skew: float = 0.05  # a node misses a tick
    crash: float = 0.02  # weight of "crash a node"
    restart: float = 0.05  # weight of "restart a crashed node"
    ready_crash: float = 0.005  # chance a Ready handling is cut short by a crash
    split_ready: float = 0.2  # chance a Ready is persisted and sent now, applied later
    early: float = 0.5  # chance a leader sends its appends and heartbeats before persisting
    early_alone: bool = False  # ... even when it is the only voter (unsafe: for demonstration)
    early_apply: float = 0.5  # chance committed entries persisted by earlier Readys are applied
    # before this Ready is persisted (as the server does, so answers do not wait for the disk)
    partition: float = 0.03  # weight of "split the network"
    heal: float = 0.04  # weight of "heal the network"
    conf: float = 0.01  # weight of "propose a membership change"
    transfer: float = 0.005  # weight of "transfer leadership"
    snapshot: float = 0.01  # weight of "snapshot and compact a node"
    pause: float = 0.03  # weight of "pause a node for a while"
    read: float = 0.2  # weight of "issue a read"
    propose: float = 0.3  # weight of "propose a value"
    election: int = 6  # Config.election_tick
    heartbeat: int = 2  # Config.heartbeat_tick

    def spec(self) -> str:
        """A preset's name, or the non-default fields as k=v,... (for the reproduction line)."""
        for name, preset in PRESETS.items():
            if preset == self:
                return "" if name == "default" else name
        d = Faults()
        parts = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                 if getattr(self, f.name) != getattr(d, f.name)]
        return ",".join(parts)

    @classmethod
    def parse(cls, s: str) -> "Faults":
        if s in PRESETS:
            return dataclasses.replace(PRESETS[s])
        f = cls()
        for part in filter(None, s.split(",")):
            if part in PRESETS:
                f = dataclasses.replace(PRESETS[part])
                continue
            k, v = part.split("=")
            typ = type(getattr(f, k))
            setattr(f, k, v in ("1", "True", "true") if typ is bool else typ(v))
        return f


PRESETS: dict[str, Faults] = {
    "none": Faults(drop=0, dup=0, delay=0, skew=0, crash=0, restart=0, ready_crash=0, split_ready=0, early=0,
                   early_apply=0, partition=0, heal=0, conf=0, transfer=0, snapshot=0, pause=0),
    "default": Faults(),
    "net": Faults(drop=0.15, dup=0.1, delay=0.4, crash=0, restart=0, ready_crash=0, partition=0.02),
    "crash": Faults(drop=0.02, crash=0.04, restart=0.12, ready_crash=0.02, partition=0, pause=0.02),
    "churn": Faults(conf=0.04, transfer=0.02, snapshot=0.03, crash=0.01, partition=0.01),
    "chaos": Faults(drop=0.1, dup=0.05, delay=0.3, crash=0.02, restart=0.08, ready_crash=0.01,
                    partition=0.03, heal=0.04, conf=0.03, transfer=0.02, snapshot=0.03, pause=0.03),
}


class SimFailure(AssertionError):
    pass


# ============================================================================ persistence
class Storage:
    """What a node has made durable: hard state, its latest snapshot, entries after it."""

    def __init__(self, snapshot: Snapshot | None, hs: HardState) -> None:
        self.snapshot = snapshot
        self.hs = HardState()
        self.hs.CopyFrom(hs)
        self.entries: list = []

    def snap_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    def last_index(self) -> int:
        return self.snap_index() + len(self.entries)

    def term(self, i: int) -> int | None:
        si = self.snap_index()
        if i == si:
            return self.snapshot.meta.term if self.snapshot else 0
        if i < si or i > self.last_index():
            return None
        return self.entries[i - si - 1].Term

    def append(self, ents: list) -> None:
        si = self.snap_index()
        first = ents[0].Index
        if first <= si or first > self.last_index() + 1:
            raise SimFailure(f"persisting entries from {first} onto storage [{si}..{self.last_index()}]")
        del self.entries[first - si - 1:]
        self.entries.extend(ents)

    def install(self, snap: Snapshot) -> None:
        """A snapshot from the leader replaces everything."""
        self.snapshot = snap
        self.entries = []

    def compact(self, snap: Snapshot) -> None:
        """The application's own snapshot: keep the entries after it."""
        si = self.snap_index()
        drop = snap.meta.index - si
        if drop <= 0:
            return
        self.entries = self.entries[drop:]
        self.snapshot = snap


# ============================================================================ application
@dataclass
class App:
    """The replicated state machine: applied values (with their indexes) and the membership."""

    values: list = field(default_factory=list)  # list[tuple[int, bytes]]
    conf: ConfState = ConfState()
    applied: int = 0
    applied_term: int = 0

    def snapshot(self) -> Snapshot:
        return Snapshot(SnapshotMeta(self.applied, self.applied_term, self.conf), tuple(self.values))

    @classmethod
    def from_snapshot(cls, snap: Snapshot | None) -> "App":
        if snap is None:
            return cls()
        return cls(list(snap.data), snap.meta.conf, snap.meta.index, snap.meta.term)


@dataclass
class Node:
    id: int
    storage: Storage
    rng_seed: int
    raft: Raft | None = None
    app: App = field(default_factory=App)
    incarnation: int = 0
    pending: Ready | None = None  # persisted and sent, not yet applied
    pending_applied: int = 0  # how many of pending's committed entries were applied early
    seen_commit: int = 0  # committed index already checked, this incarnation
    led: tuple = ()  # (incarnation, term) of the leadership last checked for completeness
    dirty: bool = True  # may have a Ready (something happened to it since has_ready() said no)
    paused_until: int = 0  # a paused process (GC, SIGSTOP) does nothing until this tick
    backlog: list = field(default_factory=list)  # client requests that arrived while paused
    reads: list = field(default_factory=list)  # (ReadState, index it must cover) awaiting apply

    @property
    def removed(self) -> bool:
        """The node has applied a configuration it is not part of."""
        c = self.app.conf
        return bool(c.voters) and self.id not in c.voters and self.id not in c.learners


@dataclass
class InFlight:
    due: int
    seq: int
    msg: Message
    src: int  # the sending node (a forwarded message's frm may name another)
    src_inc: int


# ============================================================================ simulator
class Sim:
    def __init__(self, seed: int, nodes: int = 3, steps: int = 1000, faults: Faults | None = None,
                 liveness: bool = True) -> None:
        self.seed, self.n_initial, self.steps = seed, nodes, steps
        self.faults = faults or Faults()
        self.fault_spec = self.faults.spec()
        self.liveness = liveness
        self.rng = random.Random(seed)
        self.now = 0
        self.step_no = 0
        self.nodes: dict[int, Node] = {}
        self.next_id = nodes + 1
        self.max_nodes = nodes + 3
        self.net: list[InFlight] = []
        self.seq = 0
        self.blocked: set[tuple[int, int]] = set()  # (a, b): a's messages to b are lost
        self.value_no = 0
        self.history: deque[tuple] = deque(maxlen=80)  # (step, text or message), formatted on failure
        # ---- what the checks remember
        self.leaders: dict[int, int] = {}  # term -> leader
        self.votes: dict[tuple[int, int], int] = {}  # (node, term) -> vote, as persisted
        self.entries_seen: dict[tuple[int, int], tuple] = {}  # (index, term) -> (type, data, prev term)
        self.committed: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, type, data)
        self.commit_term: dict[int, int] = {}  # index -> lowest term any node knew it committed at
        self.snap_terms: dict[int, int] = {}  # index -> term, from snapshots
        self.applied: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, type, data)
        self.acked: dict[bytes, int] = {}  # value -> index it was first applied at
        self.acked_max = 0
        self.reads: dict[bytes, int] = {}  # ctx -> least index the read must cover
        self.stats = {"elections": 0, "applied": 0, "reads": 0, "reads_served": 0, "crashes": 0,
                      "snapshots_sent": 0, "snapshots_installed": 0, "conf_changes": 0, "confs_applied": 0,
                      "transfers": 0, "timeout_now": 0, "rejected_appends": 0, "dropped": 0, "early_applied": 0}
        f = self.faults
        self._fixed = [(f.propose, self.propose), (f.read, self.read), (f.crash, self.crash_one),
                       (f.partition, self.partition), (f.conf, self.conf_change), (f.transfer, self.transfer),
                       (f.snapshot, self.snapshot), (f.pause, self.pause_one)]
        self._w_fixed = sum(w for w, _ in self._fixed)
        conf = ConfState(tuple(range(1, nodes + 1)), ())
        boot = Snapshot(SnapshotMeta(1, 1, conf), ())
        for i in range(1, nodes + 1):
            self._add_node(i, Storage(boot, HardState(term=1, commit=1)))
        self.snap_terms[1] = 1

    # -------------------------------------------------------------------- reporting
    def repro(self) -> str:
        s = f"python -m tests.raftsim --seed {self.seed} --nodes {self.n_initial} --steps {self.steps}"
        if self.fault_spec:
            s += f" --faults {self.fault_spec}"
        if not self.liveness:
            s += " --no-liveness"
        return s

    def fail(self, what: str) -> None:
        raise SimFailure(f"{self.repro()}\n{what}\nat step {self.step_no}, tick {self.now}; last events:\n  "
                         + "\n  ".join(self.events()))

    def events(self) -> list[str]:
        return [f"[{n}] deliver {x}" if isinstance(x, Message) else f"[{n}] {x}" for n, x in self.history]

    def log(self, s: object) -> None:
        self.history.append((self.step_no, s))

    # -------------------------------------------------------------------- nodes
    def _add_node(self, nid: int, storage: Storage) -> Node:
        node = Node(nid, storage, self.rng.getrandbits(64))
        self.nodes[nid] = node
        self._start(node)
        return node

    def _start(self, node: Node) -> None:
        st = node.storage
        node.incarnation += 1
        rng = random.Random(node.rng_seed * 1000 + node.incarnation)
        app = App.from_snapshot(st.snapshot)
        cfg = Config(id=node.id, rng=rng, election_tick=self.faults.election, heartbeat_tick=self.faults.heartbeat,
                     max_inflight=self.rng.choice((1, 4, 64)), max_size_per_msg=self.rng.choice((0, 40, 1 << 20)),
                     snapshot_provider=lambda n=node: self._provide_snapshot(n))
        hs = HardState()
        hs.CopyFrom(st.hs)
        # durability: what was persisted as committed must still be there
        if hs.commit > st.last_index():
            self.fail(f"node {node.id} persisted commit {hs.commit} beyond its persisted log {st.last_index()}")
        node.raft = Raft(cfg, app.conf, hs, st.snapshot.meta if st.snapshot else None, list(st.entries),
                         applied=app.applied)
        node.app = app
        node.pending = None
        node.seen_commit = 0
        node.dirty = True
        self._check_node(node)

    def _provide_snapshot(self, node: Node) -> Snapshot | None:
        # the application's state as of what it has applied (always covers the compacted log)
        self.stats["snapshots_sent"] += 1
        return node.app.snapshot()

    def crash(self, node: Node, why: str = "") -> None:
        self.log(f"crash {node.id}{why}")
        self.stats["crashes"] += 1
        node.raft = None
        node.pending = None
        node.backlog = []
        node.paused_until = 0
        node.reads = []  # abandoned: the client gets an error

    def restart(self, node: Node) -> None:
        self.log(f"restart {node.id} (inc {node.incarnation + 1})")
        self._start(node)

    def alive(self) -> list[Node]:
        """Running nodes (not crashed, not paused)."""
        return [n for n in self.nodes.values() if n.raft is not None and n.paused_until <= self.now]

    # -------------------------------------------------------------------- network
    def connected(self, a: int, b: int) -> bool:
        return (a, b) not in self.blocked

    def send(self, m: Message, src: Node) -> None:
        f = self.faults
        if m.to not in self.nodes:
            return
        copies = 2 if self.rng.random() < f.dup else 1
        for _ in range(copies):
            if self.rng.random() < f.drop:
                self.stats["dropped"] += 1
                self._dropped(m, src.id, src.incarnation)
                continue
            due = self.now
            if f.delay and self.rng.random() < f.delay:
                due += self.rng.randint(1, f.max_delay)
            self.seq += 1
            self.net.append(InFlight(due, self.seq, m, src.id, src.incarnation))

    def _dropped(self, m: Message, src_id: int, src_inc: int) -> None:
        src = self.nodes.get(src_id)
        if src is None or src.raft is None or src.incarnation != src_inc:
            return
        src.dirty = True
        if m.type == MsgType.SNAP:
            src.raft.report_snapshot(m.to, False)
        elif self.rng.random() < 0.3:
            src.raft.report_unreachable(m.to)

    def due(self) -> list[int]:
        now, nodes = self.now, self.nodes
        return [i for i, x in enumerate(self.net) if x.due <= now and nodes[x.msg.to].paused_until <= now]

    def deliver(self, idx: int) -> None:
        x = self.net.pop(idx)
        m = x.msg
        dst = self.nodes[m.to]
        if dst.raft is None or not self.connected(x.src, m.to):
            self._dropped(m, x.src, x.src_inc)
            return
        # each delivery gets its own copy (raft may modify a message it forwards)
        m = Message(m.type, m.to, m.frm, m.term, m.log_term, m.index, list(m.entries), m.commit, m.snapshot,
                    m.reject, m.reject_hint, m.context)
        self.log(m)
        dst.dirty = True
        if m.type == MsgType.TIMEOUT_NOW:
            self.stats["timeout_now"] += 1
        elif m.type == MsgType.APP_RESP and m.reject:
            self.stats["rejected_appends"] += 1
        try:
            dst.raft.step(m)
        except ProposalDropped:
            pass
        if m.type == MsgType.SNAP:
            self._delivered_snapshot(m, x.src, x.src_inc)

    def _delivered_snapshot(self, m: Message, src_id: int, src_inc: int) -> None:
        src = self.nodes.get(src_id)
        if src is not None and src.raft is not None and src.incarnation == src_inc:
            src.dirty = True
            src.raft.report_snapshot(m.to, True)

    # -------------------------------------------------------------------- ready
    def handle_ready(self, node: Node) -> None:
        f = self.faults
        r = node.raft
        if node.pending is not None:
            self.finish_ready(node)
            return
        rd = r.ready()
        if rd.snapshot is not None:
            self.check_snapshot(node, rd.snapshot)
        crash_at = self.rng.choice(("before-persist", "after-persist", "after-send")) \
            if self.rng.random() < f.ready_crash else None
        msgs = rd.messages
        if self.rng.random() < f.early:
            # forwarded proposals and reads promise nothing about the sender's log, and a leader
            # may send appends and heartbeats before persisting (as the server does; Raft thesis
            # 10.2.1), but not as the only voter: it then elects itself and commits in memory, so
            # those messages could carry a term and a commit index it has not persisted
            # (tests/raft/testdata/early-send.txt)
            kinds = (MsgType.PROP, MsgType.READ_INDEX)
            if r.role == Role.LEADER and (len(r.voters) > 1 or f.early_alone):
                kinds += (MsgType.APP, MsgType.HEARTBEAT)
            early = [m for m in msgs if m.type in kinds]
            msgs = [m for m in msgs if m.type not in kinds]
            for m in early:
                self.send(m, node)
        n_pre = 0
        if rd.snapshot is None and rd.committed_entries and self.rng.random() < f.early_apply:
            # committed entries this node persisted in earlier Readys may be applied (and their
            # clients answered) before this Ready's entries are persisted
            stable = r.log.stabled
            while n_pre < len(rd.committed_entries) and rd.committed_entries[n_pre].Index <= stable:
                e = rd.committed_entries[n_pre]
                if e.Index != node.app.applied + 1:
                    self.fail(f"node {node.id} applies entry {e.Index} after {node.app.applied}")
                self.apply_entry(node, e)
                n_pre += 1
            if n_pre:
                self.stats["early_applied"] += n_pre
        if crash_at == "before-persist":
            self.crash(node, " before persisting its Ready")
            return
        self.persist(node, rd)
        if crash_at == "after-persist":
            self.crash(node, " after persisting, before sending")
            return
        for m in msgs:
            self.send(m, node)
        if crash_at == "after-send":
            self.crash(node, " after sending, before applying")
            return
        node.pending = rd
        node.pending_applied = n_pre
        if self.rng.random() >= f.split_ready:
            self.finish_ready(node)

    def persist(self, node: Node, rd: Ready) -> None:
        st = node.storage
        if rd.hard_state is not None:
            hs = rd.hard_state
            old = st.hs
            if hs.term < old.term or (hs.term == old.term and hs.commit < old.commit):
                self.fail(f"node {node.id} persists hard state {_hs(hs)} after {_hs(old)}")
            if hs.term == old.term and old.vote and hs.vote != old.vote:
                self.fail(f"node {node.id} changed its vote in term {hs.term}: {old.vote} -> {hs.vote}")
            if hs.vote:
                prev = self.votes.setdefault((node.id, hs.term), hs.vote)
                if prev != hs.vote:
                    self.fail(f"node {node.id} voted for {prev} and {hs.vote} in term {hs.term}")
            st.hs = HardState()
            st.hs.CopyFrom(hs)
        if rd.snapshot is not None:
            st.install(rd.snapshot)
        if rd.entries:
            st.append(rd.entries)
            self.check_persisted_entries(node, rd)
        if st.hs.commit > st.last_index():
            self.fail(f"node {node.id} persisted commit {st.hs.commit} beyond persisted log {st.last_index()}")
        if rd.hard_state is not None:
            self.record_commit(node, old.commit)

    def finish_ready(self, node: Node) -> None:
        rd = node.pending
        node.pending = None
        app = node.app
        r = node.raft
        if rd.snapshot is not None:
            s = rd.snapshot
            if s.meta.index <= app.applied:
                self.fail(f"node {node.id} got snapshot {s} at or below applied {app.applied}")
            self.check_snapshot(node, s)
            self.log(f"{node.id} applies {s}")
            self.stats["snapshots_installed"] += 1
            node.app = app = App(list(s.data), s.meta.conf, s.meta.index, s.meta.term)
        for e in rd.committed_entries[node.pending_applied:]:
            if e.Index != app.applied + 1:
                self.fail(f"node {node.id} applies entry {e.Index} after {app.applied}")
            self.apply_entry(node, e)
        for rs in rd.read_states:
            need = self.reads.get(rs.ctx)
            if need is None:
                self.fail(f"node {node.id} got a read state for unknown ctx {rs.ctx!r}")
            if rs.index < need:
                self.fail(f"read {rs.ctx!r} at node {node.id} got index {rs.index}, but a value "
                          f"acknowledged before it was issued is at index {need}")
            self.stats["reads"] += 1
            node.reads.append((rs, need))
        self.serve_reads(node)
        r.advance(rd)
        node.dirty = True

    def serve_reads(self, node: Node) -> None:
        """Serve the reads whose index this node has applied: its state then must hold the
        latest value acknowledged before the read was issued."""
        app = node.app
        waiting = []
        for rs, need in node.reads:
            if app.applied < rs.index:
                waiting.append((rs, need))
                continue
            self.stats["reads_served"] += 1
            if need:
                want = self.applied[need][2]
                k = bisect.bisect_left(app.values, (need,))
                have = app.values[k][1] if k < len(app.values) and app.values[k][0] == need else None
                if have != want:
                    self.fail(f"read {rs.ctx!r} served by node {node.id} at index {rs.index} misses {want!r} "
                              f"(index {need}), acknowledged before the read was issued")
        node.reads = waiting

    def apply_entry(self, node: Node, e: Entry) -> None:
        app = node.app
        key = (e.Term, e.Type, e.Data)
        prev = self.applied.setdefault(e.Index, key)
        if prev is key and e.Type == EntryConfChange:
            self.stats["confs_applied"] += 1
        if prev != key:
            self.fail(f"state-machine safety: node {node.id} applies {_ek(key)} at {e.Index}, "
                      f"another node applied {_ek(prev)}")
        app.applied = e.Index
        app.applied_term = e.Term
        if e.Type == EntryConfChange:
            cc = ConfChange.FromString(e.Data)
            if cc.type == raft_pb2.ConfChangeRemoveNode and app.conf.voters == (cc.node_id,):
                # like etcd's server, the application validates a change when applying it (a
                # client may have proposed it against a membership that changed since): removing
                # the last voter is refused, i.e. not handed to raft, by every node alike
                self.log(f"{node.id} refuses conf change {_cc(cc)} at {e.Index}: last voter")
                return
            app.conf = node.raft.apply_conf_change(cc)
            self.log(f"{node.id} applies conf change {_cc(cc)} at {e.Index}: {app.conf}")
        elif e.Data:
            app.values.append((e.Index, e.Data))
            if e.Data not in self.acked:
                self.acked[e.Data] = e.Index
                self.acked_max = max(self.acked_max, e.Index)
                self.stats["applied"] += 1

    # -------------------------------------------------------------------- checks
    def check_persisted_entries(self, node: Node, rd: Ready) -> None:
        """Log matching, inductively: an (index, term) always names the same entry and the same
        previous term, so two logs agreeing at (index, term) agree on everything before it.
        Checked on what is persisted: only persisted entries ever leave a node (its messages go
        out after its Ready is persisted), and a lone voter may reuse a term it never persisted."""
        st = node.storage
        for e in rd.entries:
            val = (e.Type, e.Data, st.term(e.Index - 1))
            old = self.entries_seen.setdefault((e.Index, e.Term), val)
            if old != val:
                self.fail(f"log matching: entry {e.Term}/{e.Index} at node {node.id} is {val}, elsewhere {old}")

    def check_snapshot(self, node: Node, s: Snapshot) -> None:
        t = self.snap_terms.setdefault(s.meta.index, s.meta.term)
        if t != s.meta.term:
            self.fail(f"snapshot {s} at node {node.id}: another snapshot at that index has term {t}")
        c = self.committed.get(s.meta.index)
        if c is not None and c[0] != s.meta.term:
            self.fail(f"snapshot {s} disagrees with committed entry {c[0]}/{s.meta.index}")
        for idx, val in s.data:
            a = self.applied.get(idx)
            if a is None or a[2] != val:
                self.fail(f"snapshot {s} holds {val!r} at {idx}, applied there: {a}")

    def _check_node(self, node: Node) -> None:
        r = node.raft
        if r.role == Role.LEADER and node.storage.hs.term == r.term:
            # a leadership counts once its term is durable (a lone voter elects itself in memory)
            lead = self.leaders.setdefault(r.term, node.id)
            if lead != node.id:
                self.fail(f"election safety: nodes {lead} and {node.id} both lead term {r.term}")
            if node.led != (node.incarnation, r.term):
                node.led = (node.incarnation, r.term)
                self.stats["elections"] += 1
                self.log(f"{node.id} leads term {r.term}")
                self.check_leader_complete(node)
        log = r.log
        c = log.committed
        if c > node.seen_commit:
            # what this node holds as committed must agree with what was committed durably (the
            # map is filled from persisted hard states: a lone leader commits in memory first)
            for i in range(max(node.seen_commit + 1, log.snap.index + 1), c + 1):
                old = self.committed.get(i)
                if old is not None:
                    e = log.entries[i - log.snap.index - 1]
                    if old != (e.Term, e.Type, e.Data):
                        self.fail(f"committed entry lost: node {node.id} has {_ek((e.Term, e.Type, e.Data))} "
                                  f"committed at {i}, it was {_ek(old)}")
            if log.snap.index > node.seen_commit:
                old = self.committed.get(log.snap.index)
                if old is not None and old[0] != log.snap.term:
                    self.fail(f"node {node.id} snapshot {log.snap} conflicts with committed {_ek(old)}")
            node.seen_commit = c
        elif c < node.seen_commit:
            self.fail(f"node {node.id} commit index went back from {node.seen_commit} to {c}")

    def record_commit(self, node: Node, old: int) -> None:
        """The node persisted a commit index: the entries up to it are committed, for good."""
        st = node.storage
        term = st.hs.term
        for i in range(max(old, st.snap_index()) + 1, st.hs.commit + 1):
            e = st.entries[i - st.snap_index() - 1]
            key = (e.Term, e.Type, e.Data)
            prev = self.committed.setdefault(i, key)
            if prev != key:
                self.fail(f"committed entry lost: node {node.id} persisted {_ek(key)} as committed at {i}, "
                          f"it was {_ek(prev)}")
            ct = self.commit_term.get(i)
            if ct is None or term < ct:
                self.commit_term[i] = term

    def check_leader_complete(self, node: Node) -> None:
        log = node.raft.log
        term = node.raft.term
        top = max(self.committed) if self.committed else 0
        for i in range(log.snap.index + 1, top + 1):
            c = self.committed.get(i)
            if c is None or self.commit_term.get(i, term) >= term:
                continue
            t = log.term_or_zero(i)
            if t != c[0] or log.entries[i - log.snap.index - 1].Data != c[2]:
                self.fail(f"leader completeness: leader {node.id} of term {term} lacks committed entry "
                          f"{_ek(c)} at {i} (has term {t})")

    def check_all(self) -> None:
        for node in self.nodes.values():
            if node.raft is not None:
                self._check_node(node)

    # -------------------------------------------------------------------- client actions
    def new_value(self) -> bytes:
        self.value_no += 1
        return b"v%d" % self.value_no

    def pick_alive(self) -> Node | None:
        al = self.alive()
        return self.rng.choice(al) if al else None

    def pick_client_target(self) -> Node | None:
        """Clients mostly go to a node that believes it leads (maybe a stale or paused one)."""
        if self.rng.random() < 0.6:
            leaders = [n for n in self.nodes.values() if n.raft is not None and n.raft.role == Role.LEADER]
            if leaders:
                return self.rng.choice(leaders)
        return self.pick_alive()

    def client_call(self, n: Node, what: str, fn) -> None:
        """Run a client request at n, or queue it until n resumes if it is paused."""
        if n.paused_until > self.now:
            self.log(f"{what} at {n.id} (queued: paused)")
            n.backlog.append((what, fn))
            return
        self.log(f"{what} at {n.id}")
        n.dirty = True
        try:
            fn(n.raft)
        except ProposalDropped:
            pass

    def resume(self, n: Node) -> None:
        """A paused node resumes: the client requests that piled up go first."""
        backlog, n.backlog = n.backlog, []
        self.log(f"resume {n.id}")
        for what, fn in backlog:
            if n.raft is not None:
                self.client_call(n, what, fn)

    def find_leader(self) -> Node | None:
        best = None
        for n in self.alive():
            if n.raft.role == Role.LEADER and (best is None or n.raft.term > best.raft.term):
                best = n
        return best

    def propose(self) -> None:
        n = self.pick_client_target()
        if n is None:
            return
        v = self.new_value()
        self.client_call(n, f"propose {v!r}", lambda r: r.propose([v]))

    def read(self) -> None:
        n = self.pick_client_target()
        if n is None:
            return
        ctx = b"r%d" % (len(self.reads) + 1)
        self.reads[ctx] = self.acked_max
        self.client_call(n, f"read {ctx!r} (must cover {self.acked_max})", lambda r: r.read_index(ctx))

    def conf_change(self) -> None:
        lead = self.find_leader()
        src = lead if lead is not None and self.rng.random() < 0.7 else self.pick_alive()
        if src is None:
            return
        conf = (lead or src).app.conf
        members = sorted(set(conf.voters) | set(conf.learners))
        choices = []
        if conf.learners:
            choices.append("promote")
        if len(self.nodes) < self.max_nodes:
            choices += ["add", "add-learner"]
        if len(conf.voters) > 1 or conf.learners:
            choices.append("remove")
        if not choices:
            return
        kind = self.rng.choice(choices)
        cc = ConfChange()
        if kind == "promote":
            cc.type, cc.node_id = raft_pb2.ConfChangeAddNode, self.rng.choice(conf.learners)
        elif kind in ("add", "add-learner"):
            nid = self.next_id
            self.next_id += 1
            self._add_node(nid, Storage(None, HardState()))
            cc.type = raft_pb2.ConfChangeAddNode if kind == "add" else raft_pb2.ConfChangeAddLearnerNode
            cc.node_id = nid
        else:
            cands = members if len(conf.voters) > 1 else list(conf.learners)
            cc.type, cc.node_id = raft_pb2.ConfChangeRemoveNode, self.rng.choice(cands)
        self.stats["conf_changes"] += 1
        self.log(f"propose conf change {_cc(cc)} at {src.id}")
        src.dirty = True
        try:
            src.raft.propose_conf_change(cc)
        except ProposalDropped:
            pass

    def transfer(self) -> None:
        n = self.pick_alive()
        if n is None or not n.app.conf.voters:
            return
        to = self.rng.choice(n.app.conf.voters)
        self.stats["transfers"] += 1
        self.log(f"transfer leadership to {to} via {n.id}")
        n.dirty = True
        n.raft.transfer_leader(to)

    def hand_off(self) -> None:
        """A leader that applied its own removal asks the most caught-up voter to take over."""
        for n in self.alive():
            r = n.raft
            if r.role == Role.LEADER and r.id not in r.voters and r.lead_transferee == 0 and r.voters:
                to = max(sorted(r.voters), key=lambda i: r.prs[i].match if i in r.prs else -1)
                r.transfer_leader(to)
                n.dirty = True

    def snapshot(self) -> None:
        cands = [n for n in self.alive() if n.pending is None and n.app.applied > n.storage.snap_index()]
        if not cands:
            return
        n = self.rng.choice(cands)
        snap = n.app.snapshot()
        old = n.storage.snapshot
        self.check_snapshot(n, snap)
        n.storage.compact(snap)
        # compact raft's log to this snapshot, or keep some entries (up to the previous one)
        at = snap if old is None or self.rng.random() < 0.5 else old
        if at.meta.index > n.raft.log.snap.index:
            n.raft.compact(at.meta.index, at.meta.conf)
        self.log(f"{n.id} snapshots at {snap.meta.index}, compacts raft to {at.meta.index}")

    def partition(self) -> None:
        """Cut the network: random groups, the leader alone or with a minority, a bridge (one
        node hearing both sides), or a one-way cut."""
        ids = sorted(self.nodes)
        kind = self.rng.choice(("groups", "leader", "leader", "bridge", "oneway"))
        lead = self.find_leader()
        if kind == "leader" and lead is not None:
            others = [i for i in ids if i != lead.id]
            minority = self.rng.sample(others, self.rng.randrange(0, max(1, len(others) // 2)))
            side = {lead.id, *minority}
            groups = {i: 0 if i in side else 1 for i in ids}
        else:
            k = self.rng.choice((2, 2, 3))
            groups = {i: self.rng.randrange(k) for i in ids}
        self.blocked = {(a, b) for a in ids for b in ids if groups[a] != groups[b]}
        if kind == "bridge":
            mid = self.rng.choice(ids)
            self.blocked = {(a, b) for a, b in self.blocked if mid not in (a, b)}
        elif kind == "oneway":
            self.blocked = {(a, b) for a, b in self.blocked if groups[a] < groups[b]}
        self.log(f"partition ({kind}) {groups}: blocked {sorted(self.blocked)}")

    def heal(self) -> None:
        self.blocked = set()
        self.log("heal")

    def tick(self) -> None:
        self.now += 1
        for n in self.nodes.values():
            if n.paused_until == self.now:
                self.resume(n)
        self.hand_off()
        for n in self.alive():
            if self.faults.skew and self.rng.random() < self.faults.skew:
                continue
            n.raft.tick()
            n.dirty = True

    # -------------------------------------------------------------------- the loop
    def readies(self) -> list[Node]:
        out = []
        for n in self.nodes.values():
            if n.raft is None or n.paused_until > self.now:
                continue
            if n.pending is not None:
                out.append(n)
            elif n.dirty:
                if n.raft.has_ready():
                    out.append(n)
                else:
                    n.dirty = False
        return out

    def step(self) -> None:
        f = self.faults
        due = self.due()
        readies = self.readies()
        crashed = [n for n in self.nodes.values() if n.raft is None]
        # more work pending, less time passing: bigger clusters are not starved into elections
        w_work = 5.0 + min(len(due), 12) if due else 0.0
        w_ready = 5.0 + min(len(readies), 3) if readies else 0.0
        w_restart = f.restart if crashed else 0.0
        w_heal = f.heal if self.blocked else 0.0
        x = self.rng.random() * (1.0 + w_work + w_ready + w_restart + w_heal + self._w_fixed)
        if x < 1.0:
            self.tick()
            return
        x -= 1.0
        if x < w_work:
            self.deliver(due[0] if self.rng.random() < f.fifo else self.rng.choice(due))
            return
        x -= w_work
        if x < w_ready:
            self.handle_ready(self.rng.choice(readies))
            return
        x -= w_ready
        if x < w_restart:
            self.restart(self.rng.choice(crashed))
            return
        x -= w_restart
        if x < w_heal:
            self.heal()
            return
        x -= w_heal
        for w, action in self._fixed:
            if x < w:
                action()
                return
            x -= w

    def crash_one(self) -> None:
        n = self.find_leader() if self.rng.random() < 0.4 else None
        running = [n for n in self.nodes.values() if n.raft is not None]
        n = n or (self.rng.choice(running) if running else None)
        if n is not None:
            self.crash(n)

    def pause_one(self) -> None:
        """Freeze a node (often the leader) for two to four election timeouts: when it
        resumes it still believes what it believed, e.g. that it leads."""
        n = self.find_leader() if self.rng.random() < 0.5 else None
        n = n or self.pick_alive()
        if n is not None:
            n.paused_until = self.now + self.rng.randint(2, 4) * self.faults.election
            self.log(f"pause {n.id} until tick {n.paused_until}")

    def run(self) -> dict:
        try:
            for self.step_no in range(1, self.steps + 1):
                self.step()
                self.check_all()
            if self.liveness:
                self.stats["liveness_ticks"] = self.check_liveness()
        except SimFailure:
            raise
        except Exception as exc:  # a crash inside raft is a failure too
            self.fail(f"exception: {exc!r}\n{traceback.format_exc()}")
        self.stats["steps"] = self.steps
        self.stats["ticks"] = self.now
        return self.stats

    # -------------------------------------------------------------------- liveness
    def quiesce(self, limit: int = 10000) -> None:
        """Deliver every message and handle every Ready until nothing is left to do."""
        for _ in range(limit):
            self.step_no += 1
            due = self.due()
            if due:
                self.deliver(due[0])
                self.check_all()
                continue
            ready = self.readies()
            if not ready:
                return
            for n in ready:
                self.handle_ready(n)
            self.check_all()
        self.fail("the cluster does not quiesce without ticks")

    def stalled_by_removal(self) -> bool:
        """Membership takes effect when applied, and a node that applied its own removal never
        campaigns. If the remaining voters have not learnt that the removal committed (the
        removed leader stepped down in a partition before telling them), their configuration
        still counts the removed node, whose longer log makes it refuse their votes: no election
        can succeed. Raft with configurations taking effect on append, or a removed node allowed
        to campaign, would recover; etcd's raft behaves like this one."""
        for n in self.alive():
            conf = n.app.conf
            if n.id in conf.voters and not n.removed:
                for m in conf.voters:
                    other = self.nodes.get(m)
                    if other is not None and other.removed:
                        return True
        return False

    def check_liveness(self, bound: int = 0) -> int:
        """Heal everything and stop faults; a proposal must commit within `bound` ticks (default
        40 election timeouts) and every member catch up; returns the ticks it took."""
        bound = bound or 40 * self.faults.election
        self.faults = dataclasses.replace(self.faults, drop=0, dup=0, delay=0, skew=0, ready_crash=0,
                                          split_ready=0)
        self.heal()
        for n in self.nodes.values():
            if n.paused_until > self.now:
                n.paused_until = self.now
                self.resume(n)
            if n.raft is None:
                self.restart(n)
        for x in self.net:
            x.due = self.now
        start = self.now
        proposed: dict[tuple[int, int], bytes] = {}
        done_at = None
        while self.now - start <= bound:
            self.quiesce()
            self.check_all()
            if done_at is None and any(v in self.acked for v in proposed.values()):
                done_at = self.now
                break
            lead = self.find_leader()
            if lead is not None and lead.raft.id in lead.raft.voters \
                    and (lead.id, lead.raft.term) not in proposed:
                v = b"live%d" % len(proposed)
                try:
                    lead.dirty = True
                    lead.raft.propose([v])
                    proposed[(lead.id, lead.raft.term)] = v
                    self.log(f"liveness: propose {v!r} at leader {lead.id}")
                    continue
                except ProposalDropped:
                    pass
            self.tick()
        if done_at is None and self.stalled_by_removal():
            # a known limitation (etcd's too): see stalled_by_removal
            self.stats["stalled_by_removal"] = 1
            return -1
        if done_at is None:
            states = "\n".join(f"  {n.raft.status() if n.raft else n.id}" for n in self.nodes.values())
            self.fail(f"liveness: no proposal committed within {bound} ticks of healing\n{states}")
        # every member catches up
        target = max(self.committed)
        for _ in range(4 * self.faults.election):
            self.quiesce()
            lead = self.find_leader()
            if lead is None:
                self.tick()
                continue
            members = set(lead.app.conf.voters) | set(lead.app.conf.learners)
            if all(self.nodes[i].app.applied >= target for i in members if i in self.nodes):
                return done_at - start
            self.tick()
        lag = {i: n.app.applied for i, n in self.nodes.items()}
        self.fail(f"liveness: members did not catch up to {target}: applied {lag}")
        return -1


# ============================================================================ helpers
def _hs(hs: HardState) -> str:
    return f"(term={hs.term} vote={hs.vote} commit={hs.commit})"


def _ek(key: tuple) -> str:
    t, typ, data = key
    return f"{t}/{'conf' if typ == EntryConfChange else 'normal'} {data!r}"


def _cc(cc) -> str:
    kind = {raft_pb2.ConfChangeAddNode: "add", raft_pb2.ConfChangeAddLearnerNode: "add-learner",
            raft_pb2.ConfChangeRemoveNode: "remove"}.get(cc.type, str(cc.type))
    return f"{kind} {cc.node_id}"


def run(seed: int, nodes: int = 3, steps: int = 1000, faults: Faults | str | None = None,
        liveness: bool = True) -> dict:
    if isinstance(faults, str):
        faults = Faults.parse(faults)
    return Sim(seed, nodes, steps, faults, liveness).run()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--faults", default="", help="a preset (" + ", ".join(PRESETS) + ") and/or k=v,...")
    p.add_argument("--no-liveness", action="store_true")
    p.add_argument("--seeds", type=int, default=1, help="run this many seeds from --seed on")
    p.add_argument("-v", "--verbose", action="store_true", help="print the last events even on success")
    a = p.parse_args(argv)
    failed = 0
    for seed in range(a.seed, a.seed + a.seeds):
        sim = Sim(seed, a.nodes, a.steps, Faults.parse(a.faults), not a.no_liveness)
        try:
            stats = sim.run()
        except SimFailure as e:
            print(e, file=sys.stderr)
            failed += 1
            continue
        print(f"seed {seed}: ok {stats}")
        if a.verbose:
            print("\n".join(sim.events()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
