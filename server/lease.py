"""Leases: TTLs granted, renewed and expired, and the keys attached to them.

Pure core: time comes in as `now` (seconds on a monotonic clock) from the caller. Grants and
revocations arrive through the log (the applier calls grant/revoke); renewals do not, as in
etcd, where keep-alives touch only the leader's memory. Expiry is noticed by the server calling
`expired(now)`, which then proposes revocations through the log. Only the primary (the
leader's lessor) runs clocks; on other members leases wait, and `promote` starts their clocks
afresh when a member becomes leader, as in etcd.
"""
from __future__ import annotations

import heapq
import math

FOREVER = float("inf")  # a follower's leases never expire on their own: the leader decides
from dataclasses import dataclass, field

MAX_LEASE_TTL = 9_000_000_000  # etcd's MaxLeaseTTL, in seconds


class LeaseNotFound(Exception):
    pass


class LeaseExists(Exception):
    pass


class LeaseTTLTooLarge(Exception):
    pass


@dataclass(slots=True)
class Lease:
    id: int
    ttl: int  # granted TTL in seconds (raised to the minimum)
    expiry: float  # monotonic deadline
    keys: set[bytes] = field(default_factory=set)
    revoking: bool = False  # a revocation is proposed; do not propose again

    def remaining(self, now: float) -> float:
        return max(0.0, self.expiry - now)

    def __str__(self) -> str:
        return f"lease {self.id:x} ttl={self.ttl} keys={len(self.keys)}"


class Lessor:
    def __init__(self, min_ttl: int) -> None:
        self.min_ttl = min_ttl
        self.leases: dict[int, Lease] = {}
        self._heap: list[tuple[float, int]] = []  # (expiry, id), lazily invalidated
        self.primary = True  # a member demotes itself until it leads

    def grant(self, lease_id: int, ttl: int, now: float) -> Lease:
        if lease_id == 0:
            raise LeaseNotFound(lease_id)
        if ttl > MAX_LEASE_TTL:
            raise LeaseTTLTooLarge(ttl)
        if lease_id in self.leases:
            raise LeaseExists(lease_id)
        ttl = max(ttl, self.min_ttl)
        lease = Lease(lease_id, ttl, now + ttl if self.primary else FOREVER)
        self.leases[lease_id] = lease
        if self.primary:
            heapq.heappush(self._heap, (lease.expiry, lease_id))
        return lease

    def restore(self, lease_id: int, ttl: int, now: float) -> None:
        """Bring back a persisted lease; its clock restarts (the full TTL), as in etcd."""
        if lease_id not in self.leases:
            self.leases[lease_id] = Lease(lease_id, ttl, now + ttl if self.primary else FOREVER)
            if self.primary:
                heapq.heappush(self._heap, (now + ttl, lease_id))

    def revoke(self, lease_id: int) -> Lease:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            raise LeaseNotFound(lease_id)
        return lease

    def lookup(self, lease_id: int) -> Lease | None:
        return self.leases.get(lease_id)

    def renew(self, lease_id: int, now: float) -> int:
        """Restart the lease's clock; returns its TTL. An expired lease is as good as gone."""
        lease = self.leases.get(lease_id)
        if lease is None or lease.revoking or lease.expiry <= now:
            raise LeaseNotFound(lease_id)
        if not self.primary:
            return lease.ttl  # the leader keeps the clocks; nothing to restart here
        lease.expiry = now + lease.ttl
        heapq.heappush(self._heap, (lease.expiry, lease_id))
        return lease.ttl

    def promote(self, now: float, extend: float) -> None:
        """Become primary: every lease gets a full TTL plus extend, as a new leader gives them."""
        self.primary = True
        self._heap = []
        for lease in self.leases.values():
            lease.expiry = now + lease.ttl + extend
            lease.revoking = False
            self._heap.append((lease.expiry, lease.id))
        heapq.heapify(self._heap)

    def demote(self) -> None:
        """Stop running clocks (this member is no longer the leader)."""
        self.primary = False
        self._heap = []
        for lease in self.leases.values():
            lease.expiry = FOREVER
            lease.revoking = False

    def attach(self, lease_id: int, key: bytes) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def expired(self, now: float, limit: int = 1000) -> list[int]:
        """Leases past their deadline and not yet being revoked; marks them revoking."""
        out: list[int] = []
        if not self.primary:
            return out
        while self._heap and len(out) < limit:
            expiry, lid = self._heap[0]
            if expiry > now:
                break
            heapq.heappop(self._heap)
            lease = self.leases.get(lid)
            if lease is None or lease.revoking or lease.expiry != expiry:
                continue  # stale heap entry
            lease.revoking = True
            out.append(lid)
        return out

    def retry_revoke(self, lease_id: int, now: float, after: float) -> None:
        """A revocation proposal failed: allow another attempt after a pause."""
        lease = self.leases.get(lease_id)
        if lease is not None and lease.revoking and self.primary:
            lease.revoking = False
            lease.expiry = now + after
            heapq.heappush(self._heap, (lease.expiry, lease_id))


def min_lease_ttl(heartbeat_ms: int, election_ms: int) -> int:
    """etcd's minimum TTL: long enough to survive a leader election (1.5 election timeouts)."""
    election_ticks = max(1, election_ms // max(1, heartbeat_ms))
    return math.ceil((3 * election_ticks // 2) * heartbeat_ms / 1000)
