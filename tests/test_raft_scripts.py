"""Scripted raft scenarios (tests/raft/testdata/*.txt), in the style of etcd raft's datadriven tests.

Why: the random simulation (test_raft_sim.py) says that nothing unsafe ever happens; these
scripts pin down *what* happens, message by message, in the scenarios the Raft paper and etcd
care about (pre-vote, check-quorum, log back-off, Figure 8, ReadIndex, transfers, learners,
snapshots, forwarding, dropped proposals). A change in raft's behaviour shows up as a diff of a
readable transcript. Each file is a list of blocks:

    command args...
    ----
    expected output

Commands act on in-memory nodes whose persistence, network (one mailbox per node, delivered
on request) and application are modelled as in tests/raftsim.py. `check` lines assert a
property outright (they fail even when rewriting). Run with ETCDPROOF_REWRITE=1 to rewrite the
expected output from the actual one (then read the diff!).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shlex
from pathlib import Path

import pytest

from server.proto.raftpb import raft_pb2
from server.raft import Config, ConfState, Message, ProposalDropped, Raft, Ready, Snapshot, SnapshotMeta
from server.raft.types import EntryConfChange, HardState

TESTDATA = Path(__file__).resolve().parent / "raft" / "testdata"
REWRITE = os.environ.get("ETCDPROOF_REWRITE") == "1"
ConfChange = raft_pb2.ConfChange


class ScriptError(AssertionError):
    pass


class NoJitter:
    """An rng whose draws are the low end: the election timeout is exactly election_tick."""

    def randrange(self, start: int, stop: int) -> int:
        return start


def fmt_entry(e: raft_pb2.Entry) -> str:
    if e.Type == EntryConfChange:
        cc = ConfChange.FromString(e.Data)
        kind = {raft_pb2.ConfChangeAddNode: "add", raft_pb2.ConfChangeAddLearnerNode: "add-learner",
                raft_pb2.ConfChangeRemoveNode: "remove"}[cc.type]
        return f"{e.Term}/{e.Index} EntryConfChange {kind}={cc.node_id}"
    return f"{e.Term}/{e.Index} EntryNormal {e.Data.decode()!r}"


@dataclasses.dataclass
class App:
    values: list
    conf: ConfState
    applied: int
    applied_term: int
    confs: list  # (index, conf) history, for compacting at an index
    snapshot: Snapshot | None  # the latest snapshot the application took (or installed)


class Node:
    """A node: raft, what it persisted (hard state, snapshot, entries) and its application."""

    def __init__(self, nid: int, cfg_args: dict, snap: Snapshot | None) -> None:
        self.id, self.cfg_args = nid, cfg_args
        self.hs = HardState()
        self.snap = snap  # persisted
        self.entries: list = []  # persisted, after snap
        self.raft: Raft | None = None
        self.app: App | None = None
        self.start()

    def start(self) -> None:
        snap = self.snap
        conf = snap.meta.conf if snap else ConfState()
        idx = snap.meta.index if snap else 0
        self.app = App(list(snap.data) if snap else [], conf, idx, snap.meta.term if snap else 0,
                       [(idx, conf)], snap)
        cfg = Config(id=self.id, rng=NoJitter(), snapshot_provider=lambda: self.app.snapshot, **self.cfg_args)
        hs = HardState()
        hs.CopyFrom(self.hs)
        self.raft = Raft(cfg, conf, hs, snap.meta if snap else None, list(self.entries), applied=idx)

    def persist(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self.hs = HardState()
            self.hs.CopyFrom(rd.hard_state)
        if rd.snapshot is not None:
            self.snap, self.entries = rd.snapshot, []
        if rd.entries:
            si = self.snap.meta.index if self.snap else 0
            del self.entries[rd.entries[0].Index - si - 1:]
            self.entries.extend(rd.entries)

    def apply(self, rd: Ready, out: list[str]) -> None:
        app = self.app
        if rd.snapshot is not None:
            s = rd.snapshot
            self.app = app = App(list(s.data), s.meta.conf, s.meta.index, s.meta.term, [(s.meta.index, s.meta.conf)], s)
        for e in rd.committed_entries:
            app.applied, app.applied_term = e.Index, e.Term
            if e.Type == EntryConfChange:
                app.conf = self.raft.apply_conf_change(ConfChange.FromString(e.Data))
                app.confs.append((e.Index, app.conf))
                out.append(f"  {self.id} applied {fmt_entry(e)}: {app.conf}")
            elif e.Data:
                app.values.append((e.Index, e.Data))


class Env:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.mail: dict[int, list[Message]] = {}
        self.groups: dict[int, int] = {}

    # ------------------------------------------------------------------ helpers
    def node(self, s: str) -> Node:
        n = self.nodes.get(int(s))
        if n is None:
            raise ScriptError(f"no node {s}")
        if n.raft is None:
            raise ScriptError(f"node {s} is down")
        return n

    def ids(self, args: list[str]) -> list[int]:
        if not args:
            return sorted(i for i, n in self.nodes.items() if n.raft is not None)
        return [int(a) for a in args]

    def state(self) -> dict[int, str]:
        return {i: f"{n.raft.role.name} term={n.raft.term} lead={n.raft.lead}"
                for i, n in sorted(self.nodes.items()) if n.raft is not None}

    def changes(self, before: dict[int, str], out: list[str]) -> None:
        after = self.state()
        for i, s in after.items():
            if i in before and before[i] != s:
                out.append(f"~ {i}: {before[i]} -> {s}")
        for i in before:
            if i not in after:
                out.append(f"~ {i}: down")

    def post(self, m: Message) -> None:
        n = self.nodes.get(m.to)
        if n is not None and n.raft is not None:  # a down node's messages are lost
            self.mail.setdefault(m.to, []).append(m)

    # ------------------------------------------------------------------ commands
    def run(self, line: str) -> str:
        words = shlex.split(line.replace("(", "'(").replace(")", ")'"))
        cmd, args = words[0], words[1:]
        pos = [a for a in args if "=" not in a and a != "|"]
        kw = dict(a.split("=", 1) for a in args if "=" in a)
        out: list[str] = []
        before = self.state()
        fn = getattr(self, "cmd_" + cmd.replace("-", "_"), None)
        if fn is None:
            raise ScriptError(f"unknown command {cmd!r}")
        fn(args, pos, kw, out)
        if cmd not in ("status", "raft-log", "raft-state", "check"):
            self.changes(before, out)
        return "\n".join(out) if out else "ok"

    def cmd_add_nodes(self, args, pos, kw, out) -> None:
        """add-nodes N [voters=(1,2,3)] [learners=(4)] [index=I] [pre-vote=false] [check-quorum=false]
        [max-inflight=K] [max-size=B]: nodes with the next ids; with voters, they start from a
        snapshot at index I (default 1, term 1) holding that configuration, else empty."""
        count = int(pos[0])
        lst = lambda v: tuple(int(x) for x in re.findall(r"\d+", v))  # noqa: E731
        cfg_args = {"election_tick": int(kw.get("election", 10)), "heartbeat_tick": int(kw.get("heartbeat", 1)),
                    "pre_vote": kw.get("pre-vote", "true") == "true",
                    "check_quorum": kw.get("check-quorum", "true") == "true",
                    "max_inflight": int(kw.get("max-inflight", 256)),
                    "max_size_per_msg": int(kw.get("max-size", 1 << 20))}
        snap = None
        if "voters" in kw:
            conf = ConfState(lst(kw["voters"]), lst(kw.get("learners", "()")))
            snap = Snapshot(SnapshotMeta(int(kw.get("index", 1)), 1, conf), ())
        first = max(self.nodes, default=0) + 1
        for nid in range(first, first + count):
            self.nodes[nid] = n = Node(nid, cfg_args, snap)
            out.append(str(n.raft))

    def cmd_campaign(self, args, pos, kw, out) -> None:
        self.node(pos[0]).raft.campaign_now()

    def _tick(self, nid: str, k: int) -> None:
        r = self.node(nid).raft
        for _ in range(k):
            r.tick()

    def cmd_tick_election(self, args, pos, kw, out) -> None:
        for i in pos:
            self._tick(i, self.node(i).raft.cfg.election_tick)

    def cmd_tick_heartbeat(self, args, pos, kw, out) -> None:
        for i in pos:
            self._tick(i, self.node(i).raft.cfg.heartbeat_tick)

    def cmd_tick(self, args, pos, kw, out) -> None:
        """tick N K: K ticks of node N."""
        self._tick(pos[0], int(pos[1]))

    def _catch(self, out: list[str], fn, indent: str = "") -> None:
        try:
            fn()
        except ProposalDropped as e:
            out.append(f"{indent}dropped: {e}")
        except RuntimeError as e:  # raft's invariant checks (etcd's raft panics there)
            out.append(f"{indent}panic: {e}")

    def cmd_propose(self, args, pos, kw, out) -> None:
        r = self.node(pos[0]).raft
        self._catch(out, lambda: r.propose([pos[1].encode()]))

    def cmd_propose_conf_change(self, args, pos, kw, out) -> None:
        """propose-conf-change N add=I | add-learner=I | remove=I"""
        r = self.node(pos[0]).raft
        (k, v), = kw.items()
        typ = {"add": raft_pb2.ConfChangeAddNode, "add-learner": raft_pb2.ConfChangeAddLearnerNode,
               "remove": raft_pb2.ConfChangeRemoveNode}[k]
        self._catch(out, lambda: r.propose_conf_change(ConfChange(type=typ, node_id=int(v))))

    def cmd_read_index(self, args, pos, kw, out) -> None:
        r = self.node(pos[0]).raft
        self._catch(out, lambda: r.read_index(pos[1].encode()))

    def cmd_transfer_leadership(self, args, pos, kw, out) -> None:
        """transfer-leadership from=N to=M: ask node N to hand leadership to M."""
        self.node(kw["from"]).raft.transfer_leader(int(kw["to"]))

    def cmd_report_unreachable(self, args, pos, kw, out) -> None:
        """report-unreachable N M: node N's transport failed to reach M."""
        self.node(pos[0]).raft.report_unreachable(int(pos[1]))

    def _process_ready(self, n: Node, out: list[str]) -> None:
        rd = n.raft.ready()
        out.append(f"> {n.id} handling Ready")
        if rd.soft_state is not None:
            out.append(f"  SoftState: {rd.soft_state}")
        if rd.hard_state is not None:
            hs = rd.hard_state
            out.append(f"  HardState: term={hs.term} vote={hs.vote} commit={hs.commit}")
        if rd.entries:
            out.append("  Entries:")
            out.extend(f"    {fmt_entry(e)}" for e in rd.entries)
        if rd.snapshot is not None:
            out.append(f"  Snapshot: {rd.snapshot}")
        if rd.committed_entries:
            out.append("  CommittedEntries:")
            out.extend(f"    {fmt_entry(e)}" for e in rd.committed_entries)
        if rd.messages:
            out.append("  Messages:")
            out.extend(f"    {m}" for m in rd.messages)
        if rd.read_states:
            out.append("  ReadStates:")
            out.extend(f"    index={rs.index} ctx={rs.ctx.decode()!r}" for rs in rd.read_states)
        n.persist(rd)
        for m in rd.messages:
            self.post(m)
        n.apply(rd, out)
        n.raft.advance(rd)

    def cmd_send_early_and_crash(self, args, pos, kw, out) -> None:
        """send-early-and-crash N: N takes its Ready, sends the appends and heartbeats in it
        before persisting anything (a leader's optimisation), and crashes."""
        n = self.node(pos[0])
        rd = n.raft.ready()
        for m in rd.messages:
            if m.type.name in ("APP", "HEARTBEAT"):
                out.append(f"  sent: {m}")
                self.post(m)
        n.raft = None
        self.mail.pop(n.id, None)

    def cmd_process_ready(self, args, pos, kw, out) -> None:
        for i in self.ids(pos):
            n = self.node(str(i))
            if n.raft.has_ready():
                self._process_ready(n, out)

    def _deliver(self, nid: int, out: list[str], drop: bool = False, typ: str | None = None) -> int:
        msgs = self.mail.pop(nid, [])
        if typ is not None:  # only messages of this type; the others stay queued
            keep = [m for m in msgs if m.type.name != typ]
            msgs = [m for m in msgs if m.type.name == typ]
            if keep:
                self.mail[nid] = keep
        n = self.nodes.get(nid)
        for m in msgs:
            if drop or n is None or n.raft is None or self.groups.get(m.frm, 0) != self.groups.get(m.to, 0):
                out.append(f"  dropped: {m}")
                continue
            out.append(f"  {m}")
            m = dataclasses.replace(m, entries=list(m.entries))
            self._catch(out, lambda: n.raft.step(m), indent="    ")
        return len(msgs)

    def cmd_deliver_msgs(self, args, pos, kw, out) -> None:
        """deliver-msgs N... [type=T]: deliver the messages (of type T) waiting for these nodes."""
        for i in self.ids(pos) if pos else sorted(self.mail):
            self._deliver(i, out, typ=kw.get("type"))

    def cmd_drop_msgs(self, args, pos, kw, out) -> None:
        """drop-msgs N... [type=T]: lose the messages (of type T) waiting for these nodes."""
        for i in self.ids(pos) if pos else sorted(self.mail):
            self._deliver(i, out, drop=True, typ=kw.get("type"))

    def cmd_stabilize(self, args, pos, kw, out) -> None:
        """Handle Readies and deliver messages among the given nodes (default all) until quiet."""
        ids = self.ids(pos)
        for _ in range(1000):
            busy = False
            for i in ids:
                n = self.nodes[i]
                if n.raft is not None and n.raft.has_ready():
                    self._process_ready(n, out)
                    busy = True
            for i in ids:
                if self.mail.get(i):
                    busy = True
                    self._deliver(i, out)
            if not busy:
                return
        raise ScriptError("stabilize does not converge")

    def cmd_partition(self, args, pos, kw, out) -> None:
        """partition 1 2 | 3: nodes in different groups cannot exchange messages."""
        self.groups = {}
        g = 0
        for a in args:
            if a == "|":
                g += 1
            else:
                self.groups[int(a)] = g

    def cmd_heal(self, args, pos, kw, out) -> None:
        self.groups = {}

    def cmd_crash(self, args, pos, kw, out) -> None:
        """crash N: the node loses everything it did not persist (and its mailbox)."""
        n = self.node(pos[0])
        n.raft = None
        self.mail.pop(n.id, None)

    def cmd_restart(self, args, pos, kw, out) -> None:
        n = self.nodes[int(pos[0])]
        n.start()
        out.append(str(n.raft))

    def cmd_status(self, args, pos, kw, out) -> None:
        out.append(self.node(pos[0]).raft.status())

    def cmd_raft_state(self, args, pos, kw, out) -> None:
        for i, s in self.state().items():
            out.append(f"{i}: {s}")

    def cmd_raft_log(self, args, pos, kw, out) -> None:
        log = self.node(pos[0]).raft.log
        out.append(str(log))
        out.extend(fmt_entry(e) for e in log.entries)

    def cmd_snapshot(self, args, pos, kw, out) -> None:
        """snapshot N: the application snapshots its state (what raft hands to slow followers)."""
        n = self.node(pos[0])
        app = n.app
        app.snapshot = Snapshot(SnapshotMeta(app.applied, app.applied_term, app.conf), tuple(app.values))
        n.snap = app.snapshot  # persisted, with the entries after it
        n.entries = [e for e in n.entries if e.Index > app.applied]
        out.append(f"{n.id} snapshot {app.snapshot}")

    def cmd_compact(self, args, pos, kw, out) -> None:
        """compact N I: raft forgets its log up to I (the application has it in a snapshot)."""
        n = self.node(pos[0])
        idx = int(pos[1])
        conf = [c for i, c in n.app.confs if i <= idx][-1]
        n.raft.compact(idx, conf)
        out.append(str(n.raft.log))

    def cmd_check(self, args, pos, kw, out) -> None:
        """check N key=value...: role, term, lead, vote, commit, applied, last, voters, learners."""
        n = self.node(pos[0])
        r = n.raft
        have = {"role": r.role.name, "term": str(r.term), "lead": str(r.lead), "vote": str(r.vote),
                "commit": str(r.log.committed), "applied": str(n.app.applied), "last": str(r.log.last_index()),
                "voters": str(tuple(sorted(r.voters))), "learners": str(tuple(sorted(r.learners))),
                "values": ",".join(v.decode() for _, v in n.app.values)}
        for k, v in kw.items():
            if k not in have:
                raise ScriptError(f"check: unknown key {k}")
            if have[k] != v:
                raise ScriptError(f"check {pos[0]}: {k} is {have[k]}, expected {v}")
        out.append("ok")


# ============================================================================ file format
def parse(text: str) -> list[tuple[str, str, str, int]]:
    """Blocks of (leading comments/blank lines, command, expected output, line number)."""
    lines = text.split("\n")
    blocks = []
    i = 0
    lead: list[str] = []
    while i < len(lines):
        ln = lines[i]
        if not ln.strip() or ln.lstrip().startswith("#"):
            lead.append(ln)
            i += 1
            continue
        cmd, at = ln, i + 1
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ScriptError(f"line {i + 1}: command {cmd!r} is not followed by ----")
        i += 2
        exp = []
        while i < len(lines) and lines[i] != "":
            exp.append(lines[i])
            i += 1
        blocks.append(("\n".join(lead), cmd, "\n".join(exp), at))
        lead = []
        i += 1  # the blank line ending the block
    return blocks


def render(blocks: list[tuple[str, str, str, int]]) -> str:
    parts = []
    for lead, cmd, out, _ in blocks:
        if lead:
            parts.append(lead + "\n")
        parts.append(f"{cmd}\n----\n{out}\n\n" if out else f"{cmd}\n----\n\n")
    return "".join(parts).rstrip("\n") + "\n"


SCRIPTS = sorted(TESTDATA.glob("*.txt"))


def test_there_are_scripts() -> None:
    assert len(SCRIPTS) >= 10, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_script(path: Path) -> None:
    text = path.read_text()
    blocks = parse(text)
    env = Env()
    actual = []
    diffs = []
    for k, (lead, cmd, exp, at) in enumerate(blocks):
        try:
            got = env.run(cmd)
        except ScriptError as e:
            if REWRITE:  # keep what ran, to show how it got there, and the rest as it was
                path.write_text(render(actual + [(lead, cmd, f"error: {e}", at)] + blocks[k + 1:]))
            raise AssertionError(f"{path.name}:{at}: {cmd}: {e}") from None
        actual.append((lead, cmd, got, at))
        if got != exp:
            diffs.append(f"{path.name}:{at}: {cmd}\n" + "\n".join(
                difflib.unified_diff(exp.split("\n"), got.split("\n"), "expected", "actual", lineterm="")))
    if REWRITE:
        new = render(actual)
        if new != text:
            path.write_text(new)
        return
    assert not diffs, "\n\n".join(diffs) + "\n(ETCDPROOF_REWRITE=1 rewrites the expected output)"


def test_parse_render_round_trip() -> None:
    text = "# c\n\ncmd a\n----\nout1\nout2\n\nempty\n----\n\nother\n----\nok\n"
    blocks = parse(text)
    assert [(b[1], b[2]) for b in blocks] == [("cmd a", "out1\nout2"), ("empty", ""), ("other", "ok")]
    assert render(blocks) == text
