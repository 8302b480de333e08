"""Runs under composed faults: the register workload with every fault class (`--nemesis all`),
three classes at a time, against both targets; valid verdicts, most classes applied with
evidence, the rest refused with their reason (or unknown, with the error), and nothing left behind. The per-class runs (each class,
register and bank, both targets) are behind `slow` (make test-slow)."""
from __future__ import annotations

import json

import pytest

from checker.history import FAIL, INFO, NEMESIS, OK, load_history
from harness import store
from harness.pytest_plugin import session_ports
from nemesis import registry
from nemesis.clock import GO_REFUSAL
from nemesis_support import leftovers, run_isolated

pytestmark = pytest.mark.timeout(900)


def nemesis_ops(history) -> dict[str, dict[str, list]]:
    """fault class -> {"applied": [evidence...], "refused": [reasons...], "unknown": [errors...]}
    from a history (a class whose start never completed has all three empty)."""
    out: dict[str, dict[str, list]] = {}
    for op in history:
        if op.process != NEMESIS or not op.f.startswith("start-"):
            continue
        d = out.setdefault(op.f.removeprefix("start-"), {"applied": [], "refused": [], "unknown": []})
        if op.type == OK:
            d["applied"].append(op.value)
        elif op.type == FAIL:
            d["refused"].append(op.error)
        elif op.type == INFO:
            d["unknown"].append(op.error)
    return out


def check_run(o, inv, db, classes: list[str], peer_port: int) -> dict:
    assert o.valid is True, json.dumps(o.results, default=str)[:3000]
    history = load_history(str(o.run_dir / store.HISTORY))
    ops = nemesis_ops(history)
    oks = [op for op in history if op.process != NEMESIS and op.type == OK]
    assert len(oks) > 100, f"only {len(oks)} ops succeeded"
    test = json.loads((o.run_dir / store.TEST_JSON).read_text())
    nodes = [inv.node(n["name"]) for n in test["nodes"]]
    # every stop of the final heal succeeded, network first and members last
    heal = [op for op in history if op.process == NEMESIS and op.f.startswith("stop-") and op.type != "invoke"]
    assert all(op.type == OK for op in heal[-len(classes):]), [(op.f, op.type, op.error) for op in heal[-len(classes):]]
    dirs = {n.name: db.node_dir(n) for n in nodes}
    left = leftovers(inv, nodes, dirs, peer_port)
    assert all(v == [] for v in left.values()), left
    return ops


def test_register_under_all_faults_three_at_a_time(request, db_kind, etcdproof_inventory, tmp_path) -> None:
    classes = registry.parse("all")
    o, db = run_isolated(request, etcdproof_inventory, tmp_path, "register", db=db_kind, nemesis=classes, time_limit=32,
                         nemesis_interval=3, nemesis_concurrent=3, rate=100, nodes=3)
    ops = check_run(o, etcdproof_inventory, db, classes, session_ports(request.config)[1])
    assert set(ops) >= {"partition", "kill", "pause"} and len(ops) >= 6, sorted(ops)
    applied = {k for k, v in ops.items() if v["applied"]}
    assert len(applied) >= 5, ops
    for k, v in ops.items():
        # every start drawn ended somehow: applied, refused with its reason, or unknown with its
        # error (honestly so: a membership change whose outcome could not be asked because
        # another lane had just crashed every member; a start cut short by the run's end)
        assert v["applied"] or v["refused"] or v["unknown"], (k, v)
        assert all(r.startswith("refused: ") and len(r) > 12 for r in v["refused"]), v["refused"]
        assert all(e for e in v["unknown"]), (k, v)
    if db_kind == "etcd" and "clock" in ops:
        assert ops["clock"]["refused"] == [f"refused: {GO_REFUSAL}"]  # once: it is permanent
        assert not ops["clock"]["applied"]


@pytest.mark.slow_db("etcd")
def test_register_with_auth_changes_and_kills(request, db_kind, etcdproof_inventory, tmp_path) -> None:
    """--auth with the auth fault: roles churned and the workload's permission revoked for a
    moment while members are killed. Writes refused for the permission or a stale auth
    revision fail definitely, and no member applied one anyway: the history stays linearizable
    (a read of a refused write would break it) and the members converge."""
    classes = ["auth", "kill"]
    o, db = run_isolated(request, etcdproof_inventory, tmp_path, "register", db=db_kind, nemesis=classes,
                         time_limit=18, nemesis_interval=2, nemesis_concurrent=2, rate=150, nodes=3, auth=True)
    ops = check_run(o, etcdproof_inventory, db, classes, session_ports(request.config)[1])
    assert ops["auth"]["applied"] and ops["kill"]["applied"], ops
    history = load_history(str(o.run_dir / store.HISTORY))
    refused = [op for op in history if op.process != NEMESIS and op.error
               and ("permission denied" in op.error or "revision of auth store is old" in op.error)]
    assert all(op.type == FAIL for op in refused), [(op.type, op.error) for op in refused]
    if any(ev["op"] == "revoke" for ev in ops["auth"]["applied"]):
        assert any("permission denied" in op.error for op in refused), ops["auth"]["applied"]
    for ev in ops["auth"]["applied"]:
        assert len(ev["changes"]) == 3 and ev["asked"] in ev["nodes"], ev
