"""The register workload: independent keys read, written and compare-and-set through etcd.

Each op is one etcd request: read = a linearizable Range, write = Put, cas = a Txn comparing the
value (a failed compare is `fail`: the write certainly did not happen). Values are small ints so
operations on a key collide often. The recovery phase reads every key once more. Checked per
key by the linearizability checker against a register model, plus the stats checker.
"""
from __future__ import annotations

from typing import Any

from checker import stats
from checker.history import NEMESIS, Op
from harness.client import EtcdClient
from harness.generator import OpTemplate, RegisterOps
from workloads.base import Checker


class RegisterWorkload:
    name = "register"

    def __init__(self, keys_per_window: int = 4, ops_per_key: int = 60) -> None:
        self.keys_per_window = keys_per_window
        self.ops_per_key = ops_per_key

    def op_source(self, seed: int, worker: int) -> RegisterOps:
        return RegisterOps(seed, worker, self.keys_per_window, self.ops_per_key)

    async def setup(self, client: EtcdClient) -> None:
        return None

    async def invoke(self, client: EtcdClient, op: OpTemplate) -> tuple[str, Any, dict]:
        """Run op; returns (type, value, extra) with type "ok" or "fail"; raises ClientError."""
        assert op.key is not None
        if op.f == "read":
            r = await client.get(op.key)
            return "ok", r.value, {"revision": r.revision, "mod_revision": r.mod_revision}
        if op.f == "write":
            rev = await client.put(op.key, op.value)
            return "ok", op.value, {"revision": rev}
        if op.f == "cas":
            expected, new = op.value
            ok, rev = await client.cas(op.key, expected, new)
            return ("ok" if ok else "fail"), op.value, {"revision": rev}
        raise ValueError(f"unknown register op {op.f}")

    def final_ops(self, history: list[Op]) -> list[OpTemplate]:
        keys = sorted({op.key for op in history if op.process != NEMESIS and op.key is not None},
                      key=lambda k: (len(k), k))
        return [OpTemplate("read", k, None) for k in keys]

    def checkers(self) -> dict[str, Checker]:
        return {"linearizable": check_linearizable, "stats": stats.check}


CHECK_TIME_LIMIT = 600.0  # seconds; keys not decided by then are "unknown", so analysis always ends


def check_linearizable(history: list[Op]) -> dict:
    """Every key's history against the register model, within CHECK_TIME_LIMIT (a pathological
    history gives unknown for its keys instead of an analysis that never ends)."""
    from checker.linearizable import check
    from checker.models import register_model

    return check(history, register_model(), time_limit=CHECK_TIME_LIMIT).to_dict()
