"""Kill and pause read their evidence back and fail when it says the signal did not take.

The embedded-cluster tests (tests/test_nemesis_runs.py and the class runs) show the real signals
working; SIGKILL and SIGSTOP cannot be ignored, so the failure branch (a process that survives
as a zombie held by its pidfile, or stays in D state past the pause) is driven here by a node
whose server never changes state. The start must then raise, so the schedule records it as
info and heals, instead of recording a fault that was not there.
"""
from __future__ import annotations

import random

import pytest

from harness.inventory import Node
from harness.remote import Result
from nemesis.base import NemesisContext
from nemesis.process import KillNemesis, PauseNemesis, ProcessFaultError


class StubbornRemote:
    """A node whose server keeps pid 4242 and state S whatever it is sent."""

    def daemon_pid(self, pid_file: str) -> int | None:
        return 4242

    def run(self, cmd: str, timeout: float = 0, check: bool = True) -> Result:
        return Result(cmd, 0, "4242 (python) S 1 4242", "")


class StubbornDB:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def pid_file(self, n: Node) -> str:
        return f"/tmp/{n.name}.pid"

    def kill(self, n: Node) -> bool:
        self.sent.append(("SIGKILL", n.name))
        return True

    def pause(self, n: Node) -> bool:
        self.sent.append(("SIGSTOP", n.name))
        return True


def ctx() -> NemesisContext:
    nodes = [Node("n1", "127.0.0.1")]
    return NemesisContext(nodes, {"n1": StubbornRemote()}, StubbornDB(), random.Random(1))  # type: ignore[arg-type]


@pytest.mark.parametrize("fault,signal,says", [(KillNemesis, "SIGKILL", "still holds its pidfile"),
                                               (PauseNemesis, "SIGSTOP", "does not show stopped")])
def test_a_signal_that_did_not_take_fails_the_start(fault, signal: str, says: str) -> None:
    c = ctx()
    f = fault(modes=("one",))
    f.setup(c)
    with pytest.raises(ProcessFaultError, match=says) as e:
        f.start(c)
    assert "n1" in str(e.value)
    assert c.db.sent == [(signal, "n1")]  # it was tried, and the node is left for the heal
    assert [n.name for n in f.affected] == ["n1"]


class VanishingRemote(StubbornRemote):
    """A node whose server another lane kills (pause sees no process) and then restarts under a
    new pid (kill sees the pidfile name another process)."""

    def __init__(self) -> None:
        self.asked = 0

    def daemon_pid(self, pid_file: str) -> int | None:
        self.asked += 1
        return 4242 if self.asked == 1 else 5151

    def run(self, cmd: str, timeout: float = 0, check: bool = True) -> Result:
        return Result(cmd, 1, "", "")  # /proc/4242/stat: no such process


def test_a_server_another_lane_killed_or_restarted_is_not_an_error() -> None:
    from nemesis.base import FaultRefused

    c = NemesisContext([Node("n1", "127.0.0.1")], {"n1": VanishingRemote()}, StubbornDB(), random.Random(1))  # type: ignore[arg-type]
    f = PauseNemesis(modes=("one",))
    f.setup(c)
    with pytest.raises(FaultRefused, match="no running server"):  # asked again later, not a failed fault
        f.start(c)
    assert f.affected == []
    c.remotes["n1"] = VanishingRemote()
    k = KillNemesis(modes=("one",))
    k.setup(c)
    ev = k.start(c)  # the pid it signalled is gone; the pidfile names the restarted server
    assert ev["killed"] == {"n1": {"pid": 4242, "gone": True}}
