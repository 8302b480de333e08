"""Membership faults: shrink the cluster by removing members, grow it back by adding them wiped.

start removes one member (sometimes two, never below a majority of the original nodes: 2 of 3,
3 of 5): MemberRemove through another member (as `etcdctl member remove`), then its server is
stopped (a removed member stops by itself once it learns of it) and its data directory wiped.
stop adds each back: MemberAdd of its peer URL, then the server starts empty with
`--initial-cluster-state=existing` and an `--initial-cluster` naming exactly the members of that
moment (DB.members), and must become healthy. While a node is out, the other fault classes leave
it alone (NemesisContext.removed). heal adds back every node still out, after waiting for a
leader.

Evidence: the member IDs removed and added, the membership (names) before and after as the
cluster reports it, the removed server's process gone, the re-added one's pid and health.
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, TypeVar

from harness.client import ClientError, Credentials, EtcdClient
from harness.inventory import Node
from nemesis.base import FaultRefused, NemesisContext, agreed_leader

T = TypeVar("T")
# definite refusals worth asking again for a while: a member joined or restarted less than 5 s ago
# (etcd's strict reconfiguration check), or an election is going on
RETRIED = ("unhealthy cluster", "etcdserver: no leader")


# refusals that leave the membership as it was: etcd's strict reconfiguration check (a removal
# that would leave fewer started members than a quorum, as when another fault has stopped or
# paused one) and asking without a leader
REFUSALS = RETRIED + ("re-configuration failed due to not enough started members",)


class MemberError(Exception):
    """A membership change failed; one line naming the node."""


class MemberRefused(MemberError):
    """Every member asked refused the change definitely (REFUSALS), and it did not happen."""


def _call(endpoint: str, fn: Callable[[EtcdClient], Awaitable[T]], timeout: float = 10.0,
          credentials: Credentials | None = None) -> T:
    """One client call from a nemesis thread (a short-lived connection of its own); as root
    when the test runs with --auth."""

    async def go() -> T:
        c = EtcdClient(endpoint, timeout=timeout, credentials=credentials)
        try:
            return await fn(c)
        finally:
            await c.close()

    return asyncio.run(go())


class MemberNemesis:
    """`--nemesis member`: remove members (wiped), then add them back."""

    name = "member"

    def __init__(self, max_removed: int = 2) -> None:
        self.max_removed = max_removed
        self.out: list[Node] = []  # removed by the fault running now, in order

    def setup(self, ctx: NemesisContext) -> None:
        self.out = []

    # ------------------------------------------------------------ asking the cluster
    def _names(self, ctx: NemesisContext, members) -> list[str]:
        by_url = {ctx.db.peer_url(n): n.name for n in ctx.nodes}
        return sorted(by_url.get(next(iter(m.peerURLs), ""), f"?{m.ID:x}") for m in members)

    def _ask(self, ctx: NemesisContext, avoid: Node | None, fn: Callable[[EtcdClient], Awaitable[T]],
             wait: float = 0.0) -> tuple[Node, T]:
        """fn through the first running member (not avoid) that answers; MemberError if none does.

        With wait, the RETRIED refusals are asked again until then: etcd refuses a reconfiguration
        while any member has been connected for less than 5 s (its strict reconfiguration check),
        which is the case right after a start or a restart, and nothing is decided without a leader."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return self._ask_once(ctx, avoid, fn)
            except MemberError as e:
                if not any(x in str(e) for x in RETRIED) or time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def _ask_once(self, ctx: NemesisContext, avoid: Node | None, fn: Callable[[EtcdClient], Awaitable[T]]) -> tuple[Node, T]:
        errors = []
        for n in ctx.members():
            if avoid is not None and n.name == avoid.name:
                continue
            if ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n)) is None:
                continue
            try:
                return n, _call(ctx.db.client_endpoint(n), fn, credentials=ctx.credentials)
            except ClientError as e:
                errors.append(f"{n.name}: {e.message}")
        raise MemberError("no member answered: " + ("; ".join(errors) or "none running"))

    def member_id(self, ctx: NemesisContext, n: Node) -> tuple[int | None, list[str]]:
        _, resp = self._ask(ctx, n, lambda c: c.member_list())
        url = ctx.db.peer_url(n)
        ids = [m.ID for m in resp.members if url in m.peerURLs]
        return (ids[0] if ids else None), self._names(ctx, resp.members)

    # ------------------------------------------------------------ shrink
    def start(self, ctx: NemesisContext) -> dict:
        members = ctx.members()
        floor = len(ctx.nodes) // 2 + 1
        room = min(self.max_removed, len(members) - floor)
        if room < 1:
            raise FaultRefused(f"{len(members)} members of {len(ctx.nodes)}: removing one would leave less than a "
                               f"majority of the cluster ({floor})")
        k = 1 if room == 1 or ctx.rng.random() < 0.7 else ctx.rng.randint(1, room)
        running = [n for n in members if ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n)) is not None]
        if len(running) < floor:
            raise FaultRefused(f"only {len(running)} members running: a removal needs a quorum")
        victims = ctx.rng.sample(members, k)
        removed, refused = {}, {}
        for n in victims:
            try:
                removed[n.name] = self.remove(ctx, n)
            except MemberRefused as e:
                if not removed:  # nothing changed: a refusal, with the cluster's reason
                    raise FaultRefused(str(e)) from None
                refused[n.name] = str(e)  # the first removal stands; the fault is that one
                break
        out = {"op": "remove", "nodes": sorted(removed), "removed": removed}
        if refused:
            out["refused"] = refused
        return out

    def remove(self, ctx: NemesisContext, n: Node) -> dict:
        """MemberRemove n through another member, then stop and wipe it."""
        try:
            mid, before = self.member_id(ctx, n)
        except MemberError as e:  # only a listing was asked: nothing changed, so this is a refusal
            raise MemberRefused(f"could not list the members to remove {n.name}: {e}") from None
        if mid is None:
            raise MemberError(f"{n.name} is not a member ({', '.join(before)})")
        try:
            via, resp = self._ask(ctx, n, lambda c: c.member_remove(mid), wait=15)
            after = self._names(ctx, resp.members)
        except MemberError as e:
            check, _ = self.member_id(ctx, n)  # an uncertain remove may have happened
            if check is not None:
                answers = str(e).removeprefix("no member answered: ").split("; ")
                if all(any(x in a for x in REFUSALS) for a in answers):
                    raise MemberRefused(f"the cluster refused to remove {n.name}: {answers[0]}") from None
                raise MemberError(f"removing {n.name} ({mid:x}) failed: {e}") from None
            via, after = None, [x for x in before if x != n.name]
        with ctx.node_lock(n.name):  # no other lane restarts it from here on: it is removed
            ctx.removed().add(n.name)
            self.out.append(n)
            ctx.db.members = ctx.members()
            pid = ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n))
            ctx.db.kill(n)
            gone = ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n)) is None
            ctx.db.wipe(n)
        return {"id": f"{mid:x}", "via": via.name if via else None, "members_before": before, "members_after": after,
                "pid": pid, "gone": gone, "wiped": ctx.db.data_dir(n)}

    # ------------------------------------------------------------ grow
    def add(self, ctx: NemesisContext, n: Node, timeout: float = 30.0) -> dict:
        """MemberAdd n's peer URL, start it empty as an existing-cluster member, wait until it serves."""
        ctx.db.kill(n)
        ctx.db.wipe(n)
        mid, _ = self.member_id(ctx, n)
        via = None
        if mid is None:
            try:
                via, resp = self._ask(ctx, n, lambda c: c.member_add([ctx.db.peer_url(n)]), wait=15)
                mid = resp.member.ID
            except MemberError as e:
                mid, _ = self.member_id(ctx, n)  # an uncertain add may have happened
                if mid is None:
                    raise MemberError(f"adding {n.name} back failed: {e}") from None
        with ctx.node_lock(n.name):  # a member again, started here, not by another lane as a new one
            ctx.removed().discard(n.name)
            ctx.db.members = None if not ctx.removed() else ctx.members()
            pid = ctx.db.start(n, state="existing")
        deadline = time.monotonic() + timeout
        while not ctx.db.healthy(n) and time.monotonic() < deadline:
            time.sleep(0.3)
        healthy = ctx.db.healthy(n)
        _, after = self.member_id(ctx, n)
        if not healthy:
            raise MemberError(f"{n.name} re-added as {mid:x} but not healthy after {timeout:g}s: {ctx.db.tail_log(n)}")
        return {"id": f"{mid:x}", "via": via.name if via else None, "members_after": after, "pid": pid, "healthy": healthy}

    def stop(self, ctx: NemesisContext) -> dict:
        added, errors = {}, []
        while self.out:
            n = self.out[0]
            try:
                added[n.name] = self.add(ctx, n)
            except MemberError as e:
                errors.append(str(e))
                break  # it stays out; heal tries again
            self.out.pop(0)
        if errors:
            raise MemberError("; ".join(errors))
        return {"op": "add", "nodes": sorted(added), "added": added}

    def heal(self, ctx: NemesisContext) -> dict:
        """Add back every node that is out of the cluster (a leader first: adding needs a quorum)."""
        self.out = [n for n in ctx.nodes if n.name in ctx.removed()]
        if not self.out:
            return {"op": "add", "nodes": [], "added": {}}
        agreed_leader(ctx, wait=30)
        return self.stop(ctx)
