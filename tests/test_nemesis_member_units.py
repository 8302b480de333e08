"""The member fault among concurrent lanes, with fakes (the real membership runs are in
tests/test_nemesis_member.py and the three-at-a-time runs):

- a removal the cluster refuses definitely (etcd's strict reconfiguration check, as when another
  lane has a member stopped) is a refusal with the cluster's reason, not a failed fault; after a
  first removal it ends the fault at that one;
- an answer that is not a definite refusal stays a failure (the remove may yet happen);
- a server another lane would restart is not started while the member fault holds its node
  (removing and wiping it): a CI run once saw `rm -rf` of the data directory race such a start.
"""
from __future__ import annotations

import random
import threading
import time

import pytest

from harness.inventory import Node
from nemesis.base import FaultRefused, NemesisContext
from nemesis.member import MemberError, MemberNemesis, MemberRefused
from nemesis.process import restart_down

STRICT = "etcdserver: re-configuration failed due to not enough started members"


def nodes(k: int) -> list[Node]:
    return [Node(f"n{i}", f"10.0.0.{i}") for i in range(1, k + 1)]


class Remote:
    def __init__(self, db: "DB", name: str) -> None:
        self.db, self.name = db, name

    def daemon_pid(self, pid_file: str) -> int | None:
        return self.db.pids.get(self.name)


class DB:
    def __init__(self, running: set[str]) -> None:
        self.pids = {n: 100 + i for i, n in enumerate(sorted(running))}
        self.started: list[str] = []
        self.members = None

    def pid_file(self, n: Node) -> str:
        return f"/run/{n.name}.pid"

    def peer_url(self, n: Node) -> str:
        return f"http://{n.ip}:2380"

    def start(self, n: Node, state: str = "new") -> int:
        self.started.append(n.name)
        self.pids[n.name] = 999
        return 999

    def kill(self, n: Node) -> bool:
        return self.pids.pop(n.name, None) is not None

    def wipe(self, n: Node) -> None:
        pass

    def data_dir(self, n: Node) -> str:
        return f"/data/{n.name}"


def ctx(k: int, running: set[str] | None = None) -> NemesisContext:
    ns = nodes(k)
    db = DB(running if running is not None else {n.name for n in ns})
    return NemesisContext(ns, {n.name: Remote(db, n.name) for n in ns}, db, random.Random(3))  # type: ignore[arg-type]


class Answers(MemberNemesis):
    """A cluster that answers every MemberRemove with `answer` (a MemberError's text)."""

    def __init__(self, answer: str) -> None:
        super().__init__()
        self.answer = answer

    def member_id(self, c, n):
        return 0x10 + int(n.name[1:]), [m.name for m in c.members()]

    def _ask_once(self, c, avoid, fn):
        raise MemberError(self.answer)


def test_a_definite_refusal_is_a_refusal_with_the_clusters_reason() -> None:
    c = ctx(3)
    with pytest.raises(FaultRefused, match="the cluster refused to remove n.: n3?.*not enough started members") as e:
        Answers(f"no member answered: n2: {STRICT}; n3: {STRICT}").start(c)
    assert not e.value.permanent and c.removed() == set()


def test_an_uncertain_answer_stays_a_failure() -> None:
    c = ctx(3)
    with pytest.raises(MemberError, match="failed") as e:
        Answers(f"no member answered: n2: {STRICT}; n3: context deadline exceeded").start(c)
    assert not isinstance(e.value, MemberRefused)


def test_a_refusal_after_a_first_removal_ends_the_fault_at_that_one() -> None:
    class Second(MemberNemesis):
        def remove(self, c, n):
            if not c.removed():
                c.removed().add(n.name)
                return {"id": "11"}
            raise MemberRefused(f"the cluster refused to remove {n.name}: {STRICT}")

    class Two(random.Random):
        def random(self) -> float:
            return 0.9  # past the 70% of single removals

        def randint(self, a: int, b: int) -> int:
            return b

    c = ctx(5)
    c.rng = Two(1)
    ev = Second().start(c)
    assert len(ev["nodes"]) == 1 and len(ev["refused"]) == 1
    assert set(ev["refused"]).isdisjoint(ev["nodes"]) and STRICT in next(iter(ev["refused"].values()))


def test_no_lane_starts_a_server_the_member_fault_holds() -> None:
    c = ctx(3, running={"n2", "n3"})  # n1 is down, as a kill or lost-writes crash leaves it
    n1 = c.nodes[0]
    lock = c.node_lock("n1")
    lock.acquire()  # the member fault, between marking n1 removed and wiping it
    out: dict = {}
    t = threading.Thread(target=lambda: out.update(restart_down(c, c.nodes)))
    t.start()
    time.sleep(0.3)
    assert c.db.started == []  # waiting for the node, not starting it
    c.removed().add(n1.name)
    lock.release()
    t.join(5)
    assert out == {"nodes": [], "started": {}} and c.db.started == []
    assert restart_down(c, c.nodes)["nodes"] == []  # removed: left to the member fault
    c.removed().discard(n1.name)
    assert restart_down(c, c.nodes)["nodes"] == ["n1"]  # a member again and down: started
