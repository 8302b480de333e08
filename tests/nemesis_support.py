"""Helpers for the fault tests (tests/test_nemesis_*.py): a real cluster of either target on the
embedded nodes, in a directory of the test's own, always stopped afterwards.

The servers use ports of this pytest session (never 2379/2380) offset from those of the run
fixture, and node directories under the test's tmp_path, so they never touch another session's
servers or data (the embedded nodes share this machine's filesystem).
"""
from __future__ import annotations

import contextlib
import random
from typing import Iterator

import pytest

from harness.db import DB, DBConfig, EtcdDB, ReferenceDB
from harness.pytest_plugin import session_ports
from nemesis.base import NemesisContext


def isolated_db(kind: str, nodes, remotes, cfg: DBConfig, root: str) -> DB:
    """A DB of kind whose node directories live under root (installs stay shared)."""
    base = {"reference": ReferenceDB, "etcd": EtcdDB}[kind]

    class Isolated(base):  # type: ignore[misc, valid-type]
        def node_dir(self, n) -> str:
            return f"{root}/{n.name}"

    return Isolated(nodes, remotes, cfg)


def ports(config: pytest.Config) -> tuple[int, int, int]:
    """Client, peer and gateway ports for a direct cluster: the session's block + 7..9 (the run
    fixture uses + 0..2, the interrupt tests + 5..6)."""
    client, _, _ = session_ports(config)
    return client + 7, client + 8, client + 9


@contextlib.contextmanager
def cluster(request: pytest.FixtureRequest, inv, kind: str, tmp_path, count: int = 3, nemeses=(),
            start: bool = True, seed: int = 7) -> Iterator[NemesisContext]:
    """A running cluster of count nodes and a NemesisContext for it; the nemeses are prepared
    before the servers start, and healed and torn down (servers stopped) however the test ends."""
    if len(inv.nodes) < count:
        pytest.skip(f"needs {count} nodes, the inventory has {len(inv.nodes)}")
    nodes = inv.nodes[:count]
    remotes = {n.name: inv.remotes[n.name] for n in nodes}
    client, peer, http = ports(request.config)
    db = isolated_db(kind, nodes, remotes, DBConfig(client_port=client, peer_port=peer, http_port=http),
                     str(tmp_path / "nodes"))
    ctx = NemesisContext(nodes, remotes, db, random.Random(seed), inv.can_partition, inv.why_not_partition,
                         inv.control_ip)
    try:
        for nem in nemeses:
            if hasattr(nem, "prepare"):
                nem.prepare(ctx)
        if start:
            db.setup()
        for nem in nemeses:
            nem.setup(ctx)
        yield ctx
    finally:
        for nem in nemeses:
            try:
                nem.heal(ctx)
            except Exception as e:  # noqa: BLE001 - keep cleaning up
                print(f"heal {nem.name} failed: {e}")
        db.teardown()
        for nem in nemeses:
            if hasattr(nem, "teardown"):
                nem.teardown(ctx)
