"""The Workload protocol: what the runner needs of a workload, and nothing more.

A workload gives each worker a seeded op source, runs one op as etcd requests through the
harness client, lists the ops of the recovery phase (after every fault is healed), and names the
checkers that grade its history. `invoke` returns ("ok" | "fail", value, extra) or raises the
client's Definite (recorded as fail) or Indefinite (recorded as info) errors; anything else it
raises is recorded as info too, since the op may have happened.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

from checker.history import Op
from harness.client import EtcdClient
from harness.generator import OpSource, OpTemplate

Checker = Callable[[list[Op]], dict]  # history -> {"valid": True | False | "unknown", ...}


@runtime_checkable
class Workload(Protocol):
    name: str

    def op_source(self, seed: int, worker: int) -> OpSource: ...

    async def setup(self, client: EtcdClient) -> None:
        """Once, before the workers start (e.g. write initial balances)."""
        ...

    async def invoke(self, client: EtcdClient, op: OpTemplate) -> tuple[str, Any, dict]: ...

    def final_ops(self, history: list[Op]) -> list[OpTemplate]:
        """Ops for the recovery phase, spread over the nodes once the cluster is healed."""
        ...

    def checkers(self) -> dict[str, Checker]: ...
