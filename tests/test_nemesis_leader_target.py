"""Leader-targeted faults wait for the cluster to agree on a leader before refusing.

Right after a heal the members are often mid-election (a CI run refused its only kill of the
run because it asked once, 5 s after a partition healed). A leader that emerges within the wait
is targeted; a cluster that never agrees is refused with the reason, not targeted at random.
"""
from __future__ import annotations

import random

import pytest

from harness.inventory import Node
from nemesis import base
from nemesis.base import FaultRefused, NemesisContext, choose_targets
from nemesis.partition import PartitionNemesis

NODES = [Node(f"n{i}", f"10.0.0.{i}") for i in (1, 2, 3)]


class ElectingDB:
    """No agreed leader for the first `electing` asks, then n2."""

    def __init__(self, electing: int) -> None:
        self.electing = electing
        self.asked = 0

    def leader(self) -> Node | None:
        self.asked += 1
        return None if self.asked <= self.electing else NODES[1]


def ctx(db: ElectingDB) -> NemesisContext:
    return NemesisContext(list(NODES), {}, db, random.Random(7))  # type: ignore[arg-type]


def test_a_leader_elected_during_the_wait_is_the_target() -> None:
    db = ElectingDB(electing=3)
    assert choose_targets(ctx(db), "leader") == [NODES[1]]
    assert db.asked == 4


def test_a_cluster_that_never_agrees_is_refused_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(base, "LEADER_WAIT", 0.6)
    db = ElectingDB(electing=10**6)
    with pytest.raises(FaultRefused, match="no agreed leader to target after 0.6s") as e:
        choose_targets(ctx(db), "leader")
    assert not e.value.permanent and db.asked >= 2


def test_isolating_the_leader_waits_for_it_too() -> None:
    g = PartitionNemesis().grudge(ctx(ElectingDB(electing=2)), "leader")
    assert set(g["n2"]) == {"n1", "n3"}
