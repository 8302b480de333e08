"""Liveness after crashes: a cluster that lost members recovers a leader everywhere, quickly.

Found by a bank run under the kill nemesis: a follower restarted, then the leader was killed;
the two survivors elected no leader until the old leader came back, and the restarted follower
never heard of the new one (no leader for more than a minute). etcd recovers from the same
sequence in about an election timeout. Each cycle here crashes a follower and restarts it, then
crashes the leader: the survivors must elect a leader among themselves and both must follow it,
and once the old leader is back every member must agree on the leader, while a writer keeps
proposals flowing. Run against real etcd too, as the yardstick.
"""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from harness.localproc import LocalCluster, LocalMember, have_etcd
from server.proto.etcdserverpb import rpc_pb2 as pb
from server.proto.etcdserverpb import rpc_pb2_grpc as rpcgrpc

KINDS = ["reference", pytest.param("etcd", marks=pytest.mark.etcd)]
CYCLES = 3
ELECTION = 10.0  # seconds the survivors get: an election timeout is 1 s; etcd needs about 2


def status(m: LocalMember) -> pb.StatusResponse | None:
    try:
        with grpc.insecure_channel(m.endpoint) as ch:
            return rpcgrpc.MaintenanceStub(ch).Status(pb.StatusRequest(), timeout=1)
    except grpc.RpcError:
        return None


def agreed_leader(members: list[LocalMember], timeout: float, not_id: int = 0) -> int:
    """The leader id every one of members reports (other than not_id, a leader just killed that
    they may still name), waiting up to timeout; fails with what each said."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int | None] = {}
    while time.monotonic() < deadline:
        seen = {m.name: (s.leader if (s := status(m)) else None) for m in members}
        leads = set(seen.values())
        if len(leads) == 1 and not leads & {None, 0, not_id}:
            return leads.pop()  # type: ignore[return-value]
        time.sleep(0.1)
    pytest.fail(f"no leader agreed by {[m.name for m in members]} within {timeout}s: {seen}")


def by_id(c: LocalCluster, timeout: float = 10.0) -> dict[int, LocalMember]:
    """Member id -> member, for every member (ids are stable across restarts)."""
    out: dict[int, LocalMember] = {}
    deadline = time.monotonic() + timeout
    while len(out) < len(c.members) and time.monotonic() < deadline:
        for m in c.members:
            if m not in out.values() and (s := status(m)) is not None:
                out[s.header.member_id] = m
    assert len(out) == len(c.members), f"ids of {[m.name for m in c.members if m not in out.values()]} unknown"
    return out


class Writer(threading.Thread):
    """Puts through every member in turn, ignoring errors: proposals in flight during crashes."""

    def __init__(self, c: LocalCluster) -> None:
        super().__init__(daemon=True)
        self.c, self.stop, self.ok = c, threading.Event(), 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            m = self.c.members[i % len(self.c.members)]
            i += 1
            try:
                with grpc.insecure_channel(m.endpoint) as ch:
                    rpcgrpc.KVStub(ch).Put(pb.PutRequest(key=b"w", value=b"%d" % i), timeout=1)
                self.ok += 1
            except grpc.RpcError:
                time.sleep(0.05)


@pytest.mark.parametrize("kind", KINDS)
def test_survivors_elect_a_leader_after_a_follower_restart_and_a_leader_crash(kind: str, tmp_path) -> None:
    if kind == "etcd" and not have_etcd():
        pytest.skip("real etcd not installed")
    c = LocalCluster(kind, str(tmp_path / kind), 3).start()
    ids = by_id(c)
    w = Writer(c)
    w.start()
    try:
        for cycle in range(CYCLES):
            lead = ids[agreed_leader(c.members, ELECTION)]
            follower = next(m for m in c.members if m is not lead)
            follower.kill()
            time.sleep(0.5)
            follower.start(wait=False)
            agreed_leader(c.members, ELECTION)  # the restarted follower follows again
            time.sleep(1.0)
            lead_id = agreed_leader(c.members, ELECTION)
            lead = ids[lead_id]
            lead.kill()
            survivors = [m for m in c.members if m is not lead]
            new = agreed_leader(survivors, ELECTION, not_id=lead_id)
            assert ids[new] in survivors, f"cycle {cycle}"
            lead.start(wait=False)
            agreed_leader(c.members, ELECTION)
    finally:
        w.stop.set()
        w.join(5)
        for m in c.members:
            m.kill()
    assert w.ok > 0
