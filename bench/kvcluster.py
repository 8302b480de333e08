"""The target of `bench kv --nodes ...`: a fresh cluster of the chosen db on the inventory's nodes
(harness.db: installed, wiped, started, waited for), shaped like harness.localproc.LocalCluster as
far as bench kv uses it: members with a gRPC endpoint, an HTTP base URL serving /metrics and a
process whose pid gives its CPU time, the leader, stop.

Server CPU can only be read from /proc when the node shares this machine's kernel (the embedded
cluster, loopback nodes); on other machines the pid means nothing here, so it is left out (None)
and the CPU columns read 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.db import DB, DBConfig, make_db
from harness.inventory import Inventory, Node

SHARED_KERNEL = ("embedded", "loopback")


@dataclass
class Proc:
    pid: int | None


@dataclass
class Member:
    node: Node
    endpoint: str
    http_url: str  # where /metrics is served
    proc: Proc


class InventoryCluster:
    def __init__(self, kind: str, inv: Inventory, cfg: DBConfig, size: int | None = None) -> None:
        self.inv = inv
        self.nodes = inv.nodes[: size or len(inv.nodes)]
        self.db: DB = make_db(kind, self.nodes, {n.name: inv.remotes[n.name] for n in self.nodes}, cfg)
        self.members: list[Member] = []

    def metrics_base(self, n: Node) -> str:
        port = self.db.cfg.http_port if self.db.kind == "reference" else self.db.cfg.client_port
        return f"http://{n.ip}:{port}"

    def start(self) -> "InventoryCluster":
        self.db.setup()
        local = self.inv.kind in SHARED_KERNEL
        self.members = [
            Member(n, self.db.client_endpoint(n), self.metrics_base(n),
                   Proc(self.inv.remotes[n.name].daemon_pid(self.db.pid_file(n)) if local else None))
            for n in self.nodes]
        return self

    def leader(self) -> Member:
        lead = self.db.leader()
        return next((m for m in self.members if lead is not None and m.node.name == lead.name), self.members[0])

    def stop(self) -> None:
        self.db.teardown()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.inv.kind, "source": self.inv.source,
                "nodes": [{"name": m.node.name, "endpoint": m.endpoint} for m in self.members]}
