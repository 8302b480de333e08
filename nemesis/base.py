"""The Nemesis protocol: a fault class that can start, stop and always heal.

After Jepsen's Nemesis: `setup` once before the workload, `start` and `stop` as the schedule
says, `heal` on every exit path (it must be idempotent and must not assume start succeeded).
`start` and `stop` return evidence that the fault really applied (the rules read back, the pid
signalled, the state seen afterwards); that evidence goes into the history with the op. A fault
that cannot be applied on these nodes raises FaultRefused with the reason at start, never
silently does nothing. Methods are synchronous (they are remote commands); the schedule runs
them in a thread.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from harness.db import DB
from harness.inventory import Node
from harness.remote import Remote


class FaultRefused(Exception):
    """This fault cannot be applied here; the message is the one-line reason.

    permanent: it never can on these nodes (say, clock faults on a Go binary sharing this kernel's
    clock), so the schedule records the refusal once and stops asking.
    """

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent


@dataclass
class NemesisContext:
    """What a fault may touch: exactly the inventory's nodes, their remotes and the DB on them."""

    nodes: list[Node]
    remotes: dict[str, Remote]
    db: DB
    rng: random.Random
    can_partition: bool = True  # False on the loopback fallback (no namespaces, no iptables)
    why_not_partition: str = ""
    control_ip: str | None = None  # the harness's own address as the nodes see it; never cut off
    extra: dict[str, Any] = field(default_factory=dict)  # state fault classes share (e.g. "removed" members)
    credentials: Any = None  # harness.client.Credentials of root when the test runs with --auth

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def removed(self) -> set[str]:
        """Nodes the member fault took out of the cluster: no other fault starts or targets them."""
        return self.extra.setdefault("removed", set())

    def members(self) -> list[Node]:
        """The nodes that are cluster members now (every node, less the removed ones)."""
        gone = self.removed()
        return [n for n in self.nodes if n.name not in gone]

    def running_members(self) -> list[Node]:
        """The members whose server process is up (by its pidfile on the node)."""
        return [n for n in self.members() if self.remotes[n.name].daemon_pid(self.db.pid_file(n)) is not None]

    def node_lock(self, name: str) -> threading.RLock:
        """Held around a decision about a node's server and the act on it (start it if down and
        still a member; remove, kill and wipe it; add it back and start it), so that concurrent
        lanes cannot start a server the member fault is wiping, or one it is adding back."""
        locks = self.extra.setdefault("node-locks", {})
        return locks.setdefault(name, threading.RLock())


@runtime_checkable
class Nemesis(Protocol):
    name: str  # the fault class: partition, kill, pause, ...

    def setup(self, ctx: NemesisContext) -> None: ...

    def start(self, ctx: NemesisContext) -> dict:
        """Apply one fault; return its evidence (JSON-able). FaultRefused if it cannot apply."""
        ...

    def stop(self, ctx: NemesisContext) -> dict:
        """Undo the fault started last; return evidence that it was undone."""
        ...

    def heal(self, ctx: NemesisContext) -> dict:
        """Undo everything this fault class may have done; idempotent; safe without start."""
        ...


LEADER_WAIT = 6.0  # seconds: a few election timeouts, enough for a heal's re-election to settle


def agreed_leader(ctx: NemesisContext, wait: float | None = None) -> Node | None:
    """The member the cluster agrees leads, waiting up to `wait` seconds for agreement.

    Right after a heal or a restart the members are often still electing (a rejoining node with a
    higher term forces a new election in etcd 3.4, which has no pre-vote by default), so asking
    once would refuse a leader-targeted fault that a second later could apply."""
    deadline = time.monotonic() + (LEADER_WAIT if wait is None else wait)
    while True:
        lead = ctx.db.leader()
        if lead is not None or time.monotonic() >= deadline:
            return lead
        time.sleep(0.25)


def choose_targets(ctx: NemesisContext, mode: str) -> list[Node]:
    """Nodes for a process fault: one, minority, majority, leader, all (asked of the cluster)."""
    nodes = ctx.members()
    if mode == "one":
        return [ctx.rng.choice(nodes)]
    if mode == "minority":
        k = ctx.rng.randint(1, max(1, (len(nodes) - 1) // 2))
        return ctx.rng.sample(nodes, k)
    if mode == "majority":
        return ctx.rng.sample(nodes, len(nodes) // 2 + 1)
    if mode == "leader":
        lead = agreed_leader(ctx)
        if lead is None:
            raise FaultRefused(f"no agreed leader to target after {LEADER_WAIT:g}s")
        return [lead]
    if mode == "all":
        return nodes
    raise ValueError(f"unknown target mode {mode!r}: one, minority, majority, leader or all")
