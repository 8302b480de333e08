"""What the leader knows about each follower's log, and how fast it may send to it.

Probe: one append at a time until the follower's match is found. Replicate: appends stream
optimistically, at most `max_inflight` unacknowledged. Snapshot: a snapshot is on its way;
nothing else is sent until it is reported done.
"""
from __future__ import annotations

from collections import deque
from enum import IntEnum


class PState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """Last indices of appends sent and not yet acknowledged, oldest first, bounded."""

    __slots__ = ("cap", "q")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.q: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self.q.append(last_index)

    def free_le(self, index: int) -> None:
        q = self.q
        while q and q[0] <= index:
            q.popleft()

    def free_first_one(self) -> None:
        if self.q:
            self.q.popleft()

    def full(self) -> bool:
        return len(self.q) >= self.cap

    def reset(self) -> None:
        self.q.clear()


class Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "pending_snapshot", "recent_active",
                 "inflights", "is_learner")

    def __init__(self, next_index: int, max_inflight: int, is_learner: bool = False) -> None:
        self.match = 0
        self.next = next_index
        self.state = PState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.recent_active = False
        self.inflights = Inflights(max_inflight)
        self.is_learner = is_learner

    def __str__(self) -> str:
        s = f"{self.state.name} match={self.match} next={self.next}"
        if self.is_learner:
            s += " learner"
        if self.state == PState.SNAPSHOT:
            s += f" pending_snap={self.pending_snapshot}"
        if self.probe_sent:
            s += " paused"
        if self.inflights.q:
            s += f" inflight={len(self.inflights.q)}"
        return s

    def _reset_state(self, state: PState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == PState.SNAPSHOT:
            pending = self.pending_snapshot
            self._reset_state(PState.PROBE)
            self.next = max(self.match + 1, pending + 1)
        else:
            self._reset_state(PState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(PState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, index: int) -> None:
        self._reset_state(PState.SNAPSHOT)
        self.pending_snapshot = index

    def maybe_update(self, n: int) -> bool:
        """The follower has everything up to n; True if that is news."""
        updated = False
        if self.match < n:
            self.match = n
            updated = True
            self.probe_sent = False
        self.next = max(self.next, n + 1)
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """An append after `rejected` was refused; back off. False if the rejection is stale."""
        if self.state == PState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), 1)
        self.probe_sent = False
        return True

    def is_paused(self) -> bool:
        if self.state == PState.PROBE:
            return self.probe_sent
        if self.state == PState.REPLICATE:
            return self.inflights.full()
        return True
