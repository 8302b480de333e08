"""Real runs of the lock, bank and watch workloads on real nodes, against both targets.

The embedded cluster by default (network namespaces with their own sshd; `--nodes` names
others), three members, with and without kill and partition faults. Each run deploys the
target, drives it, injects the faults, heals them, runs the recovery phase and checks; the
asserts are about what happened: the verdicts, ops of every kind that really succeeded, faults
that really applied, and the recovery phase's convergence check.
"""
from __future__ import annotations

import pytest

from checker.history import NEMESIS, OK, load_history
from harness import store
from nemesis_support import nemesis_story

pytestmark = pytest.mark.timeout(300)
NODES = 3


def faults(inventory) -> list[str]:
    return ["partition", "kill"] if inventory.can_partition else ["kill"]


def oks(outcome, f: str) -> int:
    history = load_history(str(outcome.run_dir / store.HISTORY))
    return sum(1 for op in history if op.process != NEMESIS and op.type == OK and op.f == f)


def applied(outcome, fault: str) -> int:
    history = load_history(str(outcome.run_dir / store.HISTORY))
    return sum(1 for op in history if op.process == NEMESIS and op.f == f"start-{fault}" and op.type == OK)


def verdicts(outcome) -> dict:
    return {k: v["valid"] for k, v in outcome.results["checkers"].items()}


def assert_faults_applied(outcome, nemesis: list[str]) -> None:
    for fault in nemesis:
        if not applied(outcome, fault):
            story = nemesis_story(load_history(str(outcome.run_dir / store.HISTORY)))
            raise AssertionError(f"no {fault} fault applied: {story}")


def run(run_etcdproof, workload: str, db: str, nemesis: list[str], limit: float, **kw):
    return run_etcdproof(workload, db=db, nemesis=nemesis, time_limit=limit, nodes=NODES,
                         nemesis_interval=kw.pop("nemesis_interval", 2.5), seed=kw.pop("seed", 7), **kw)


# ------------------------------------------------------------------ lock
@pytest.mark.slow_db("etcd")  # etcd's lock path runs in the default suite under faults, below
def test_lock_without_faults(run_etcdproof, db_kind) -> None:
    o = run(run_etcdproof, "lock", db_kind, [], 5)
    assert verdicts(o) == {"mutex": True, "fenced-counter": True, "converged": True, "stats": True}, o.results
    assert not o.results["checkers"]["mutex"].get("weak")
    assert oks(o, "acquire") > 20 and oks(o, "incr") > 30 and oks(o, "release") > 20


def test_lock_under_kills_and_partitions(run_etcdproof, db_kind, etcdproof_inventory) -> None:
    nemesis = faults(etcdproof_inventory)
    o = run(run_etcdproof, "lock", db_kind, nemesis, 14)
    v = verdicts(o)
    assert v["mutex"] is True and v["fenced-counter"] is True, o.results["checkers"]
    assert v["converged"] is True, o.results["checkers"]["converged"]
    assert oks(o, "acquire") > 15 and oks(o, "incr") > 20
    assert_faults_applied(o, nemesis)


# ------------------------------------------------------------------ bank
def test_bank_txn_without_faults(run_etcdproof, db_kind) -> None:
    o = run(run_etcdproof, "bank", db_kind, [], 5)
    assert o.valid is True, o.results
    r = o.results["checkers"]["bank-txn"]
    assert r["transfers"] > 50 and r["reads"] > 30 and r["final_reads"] == NODES


def test_bank_stm_levels_under_kills_and_partitions(run_etcdproof, db_kind, etcdproof_inventory) -> None:
    nemesis = faults(etcdproof_inventory)
    o = run(run_etcdproof, "bank-stm", db_kind, nemesis, 14, rate=150)
    c = o.results["checkers"]
    for level in ("ss", "ser", "rr"):
        assert c[f"bank-{level}"]["valid"] is True, c[f"bank-{level}"]
        assert c[f"bank-{level}"]["transfers"] > 10, c[f"bank-{level}"]
    # read committed loses updates under this much concurrency: reported weak, never failed
    assert c["bank-rc"]["valid"] is True and not c["bank-rc"]["failures"], c["bank-rc"]
    assert c["converged"]["valid"] is True and o.valid is True
    assert_faults_applied(o, nemesis)


# ------------------------------------------------------------------ watch
@pytest.mark.slow_db("etcd")  # etcd's watch path runs in the default suite under faults, below
def test_watch_without_faults(run_etcdproof, db_kind) -> None:
    o = run(run_etcdproof, "watch", db_kind, [], 5)
    assert o.valid is True, o.results
    r = o.results["checkers"]["watch"]
    assert r["streams"] >= 6 and r["events_seen"] > 100 and r["store_history"]["events"] > 40
    assert oks(o, "watch") >= 6 + NODES  # the workers' streams and one final watch per member


def test_watch_under_kills_and_partitions(run_etcdproof, db_kind, etcdproof_inventory) -> None:
    nemesis = faults(etcdproof_inventory)
    o = run(run_etcdproof, "watch", db_kind, nemesis, 14)
    r = o.results["checkers"]["watch"]
    assert r["valid"] is True, r
    assert o.results["checkers"]["converged"]["valid"] is True
    assert r["streams"] >= 12 and r["acknowledged_writes"] > 30
    assert_faults_applied(o, nemesis)


# ------------------------------------------------------------------ longer runs (make test-slow)
@pytest.mark.slow
def test_watch_with_compaction_under_faults_long(run_etcdproof, db_kind, etcdproof_inventory) -> None:
    nemesis = faults(etcdproof_inventory)
    o = run(run_etcdproof, "watch-compact", db_kind, nemesis, 40, nemesis_interval=5)
    r = o.results["checkers"]["watch"]
    assert r["valid"] is True, r
    assert oks(o, "compact") > 0 and r["compacted"]["history_starts_at"] > 1
    assert_faults_applied(o, nemesis)


@pytest.mark.slow
def test_lock_under_pauses_long(run_etcdproof, db_kind) -> None:
    o = run(run_etcdproof, "lock", db_kind, ["pause", "kill"], 40, nemesis_interval=5)
    v = verdicts(o)
    assert v["mutex"] is True and v["fenced-counter"] is True, o.results["checkers"]
    assert oks(o, "acquire") > 30
    assert_faults_applied(o, ["pause"])


@pytest.mark.slow
def test_bank_every_method_long(run_etcdproof, db_kind, etcdproof_inventory) -> None:
    nemesis = faults(etcdproof_inventory)
    for workload in ("bank", "bank-stm"):
        o = run(run_etcdproof, workload, db_kind, nemesis, 40, nemesis_interval=5, rate=300)
        c = o.results["checkers"]
        assert o.valid is True, c
        assert not any(r.get("failures") for r in c.values()), c
