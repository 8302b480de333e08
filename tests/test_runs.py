"""Real runs, end to end: the register workload under partitions and kills, on real nodes.

The embedded cluster by default (five network namespaces with their own sshd, reached over
SSH), or whatever `--nodes` names. Every run deploys the target, drives it, injects real faults,
heals them, collects the nodes' logs, checks the history and renders the report. The asserts
are about what happened: a valid verdict from the linearizability checker, ops that really
succeeded, faults that really applied (with their evidence), and nothing left behind.
"""
from __future__ import annotations

import json

import pytest

from checker.history import NEMESIS, OK, load_history
from harness import store
from nemesis_support import nemesis_story

pytestmark = pytest.mark.timeout(600)


def applied(history, fault: str) -> list:
    return [op for op in history if op.process == NEMESIS and op.f == f"start-{fault}" and op.type == OK]


def test_register_under_partitions_and_kills_is_linearizable(run_etcdproof, db_kind, etcdproof_inventory) -> None:
    nemesis = ["partition", "kill"] if etcdproof_inventory.can_partition else ["kill"]
    o = run_etcdproof("register", db=db_kind, nemesis=nemesis, time_limit=24, nemesis_interval=4, rate=150)
    results = o.results
    assert results["checkers"]["linearizable"]["valid"] is True, results["checkers"]["linearizable"]
    assert o.valid is True, results
    history = load_history(str(o.run_dir / store.HISTORY))
    oks = [op for op in history if op.process != NEMESIS and op.type == OK]
    assert len(oks) > 500, f"only {len(oks)} ops succeeded"
    assert {op.f for op in oks} == {"read", "write", "cas"}
    for fault in nemesis:
        starts = applied(history, fault)
        assert starts, f"no {fault} fault applied: {nemesis_story(history)}"
    if "partition" in nemesis:
        ev = applied(history, "partition")[0].value
        assert any(rules for rules in ev["rules"].values()), ev
    kills = applied(history, "kill")
    assert all(k["gone"] for op in kills for k in op.value["killed"].values())
    # the recovery phase read every key once more after the heal, and those reads succeeded
    keys = {op.key for op in history if op.process != NEMESIS}
    final = {op.key for op in oks if op.f == "read" and op.process >= 1_000_000}
    assert keys and final == keys, (sorted(keys - final), [(op.key, op.type, op.error) for op in history
                                                            if op.process != NEMESIS and op.process >= 1_000_000
                                                            and op.type != "invoke"])
    test = json.loads((o.run_dir / store.TEST_JSON).read_text())
    assert test["db"]["kind"] == db_kind and all(test["db"]["versions"].values())
    assert (o.run_dir / store.REPORT).stat().st_size > 10_000
    for n in test["nodes"]:
        assert (o.run_dir / "nodes" / n["name"] / "server.log").exists()


@pytest.mark.slow_db("etcd")  # the client's auth path against etcd: tests/test_auth.py, on loopback
def test_register_with_auth_under_kills_is_linearizable(run_etcdproof, db_kind) -> None:
    """--auth: workers authenticate as an ordinary user with read-write permission on every key,
    the kill fault's restarts make members forget tokens; ops refused for a stale token fail
    (definitely: they never took effect) and the next op authenticates again."""
    o = run_etcdproof("register", db=db_kind, nemesis=["kill"], time_limit=15, nemesis_interval=4, rate=120,
                      auth=True)
    lin = o.results["checkers"]["linearizable"]
    assert lin["valid"] is True, lin
    assert o.valid is True, o.results
    history = load_history(str(o.run_dir / store.HISTORY))
    oks = [op for op in history if op.process != NEMESIS and op.type == OK]
    assert len(oks) > 200, f"only {len(oks)} ops succeeded"
    assert applied(history, "kill"), nemesis_story(history)
    auth_errors = [op for op in history if op.error and ("auth" in op.error or "user name" in op.error)]
    assert all(op.type == "fail" for op in auth_errors), [(op.type, op.error) for op in auth_errors]
    assert not [op for op in auth_errors if "permission denied" in op.error or "user name is empty" in op.error]
    test = json.loads((o.run_dir / store.TEST_JSON).read_text())
    assert test["spec"]["auth"] is True
