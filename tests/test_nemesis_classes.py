"""Each fault class alone, under the register and bank workloads, against both targets (slow: 36
runs of about a minute; `make test-slow`). A run is valid, and its class either applied with
evidence or, where it cannot apply (clock faults on real etcd sharing this kernel), was refused
with its reason; nothing is left behind."""
from __future__ import annotations

import pytest

from harness.pytest_plugin import session_ports
from nemesis import registry
from nemesis.clock import GO_REFUSAL
from nemesis_support import run_isolated
from test_nemesis_runs import check_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("workload", ["register", "bank"])
@pytest.mark.parametrize("fault", registry.parse("all"))
def test_each_fault_class_alone(request, db_kind, etcdproof_inventory, tmp_path, fault, workload) -> None:
    if fault in ("partition", "net") and not etcdproof_inventory.can_partition:
        pytest.skip(f"{fault} needs the embedded cluster or VMs: {etcdproof_inventory.why_not_partition}")
    o, db = run_isolated(request, etcdproof_inventory, tmp_path, workload, db=db_kind, nemesis=[fault],
                         time_limit=40, nemesis_interval=4, rate=100, nodes=5 if fault == "member" else 3)
    ops = check_run(o, etcdproof_inventory, db, [fault], session_ports(request.config)[1])
    got = ops.get(fault, {"applied": [], "refused": []})
    if fault == "clock" and db_kind == "etcd":
        assert got["refused"] == [f"refused: {GO_REFUSAL}"] and not got["applied"]
    else:
        assert got["applied"], got
