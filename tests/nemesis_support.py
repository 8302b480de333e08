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
from harness.pytest_plugin import session_ports, stop_if_interrupted
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


def leftovers(inv, nodes, node_dirs: dict[str, str], peer_port: int) -> dict[str, list[str]]:
    """What any fault class of ours left on these nodes: partition rules, net qdiscs and NFQUEUE
    rules (of this peer port), blkio cgroups and lwfs mounts of these node directories, helper
    processes (delayer, lwfs, strobe, competitor) of these directories, stopped processes, and
    faketime offsets other than zero. Empty lists everywhere when all was undone."""
    from nemesis import disk, lostwrites, net, partition
    from nemesis.nodes import iface_of

    out: dict[str, list[str]] = {}
    for n in nodes:
        r = inv.remotes[n.name]
        d = node_dirs[n.name]
        found: list[str] = []
        if inv.can_partition:
            found += [f"partition: {x}" for x in partition.rules([n], inv.remotes)[n.name]]
            found += [f"net rule: {x}" for x in net.read_rules(r) if f"port {peer_port}" in x or "-j etcdproof-net" in x]
            found += [f"qdisc: {x}" for x in net.read_tc(r, iface_of(r, n.ip))["qdisc"] if f"{net.HANDLE}:" in x]
        found += [f"cgroup: {x}" for x in disk.leftovers(r) if x.endswith(disk.cgroup_name(d, n.name))]
        found += [f"mount: {x}" for x in lostwrites.mounts(r) if x.startswith(d)]
        ps = r.run("ps -eo pid=,stat=,args=", timeout=20).out.splitlines()
        found += [f"process: {x.strip()}" for x in ps if d in x and any(k in x for k in ("delayer.py", "lwfs.py", "faketime", "compete"))]
        found += [f"stopped: {x.strip()}" for x in ps if x.split()[1:2] and x.split()[1].startswith("T")]
        ft = r.run(f"cat {d}/faketime 2>/dev/null || true", timeout=10).out.strip()
        if ft and ft != "+0":
            found.append(f"faketime offset: {ft}")
        out[n.name] = found
    return out


def run_isolated(request: pytest.FixtureRequest, inv, tmp_path, workload: str = "register", db: str = "reference",
                 nemesis: list[str] | None = None, time_limit: float = 30.0, nodes: int = 3, **kw):
    """One real run (the runner, the checkers, the report) like the run_etcdproof fixture, but with
    node directories under tmp_path: concurrent test sessions share the embedded nodes and
    /var/lib/etcdproof/nodes, and a fault run must not wipe or crash another session's data."""
    from pathlib import Path

    from harness import store
    from harness.runner import Runner, TestSpec, run_sync
    from nemesis import registry as nemeses
    from workloads import registry as workloads

    client, peer, http = session_ports(request.config)
    limit = request.config.getoption("--time-limit") or time_limit
    spec = TestSpec(workload=workload, db=db, nemesis=list(nemesis or []), nodes=inv.kind, time_limit=limit,
                    seed=kw.pop("seed", random.randrange(1, 2**31)), **kw)
    chosen = inv.nodes[:nodes]
    remotes = {n.name: inv.remotes[n.name] for n in chosen}
    target = isolated_db(db, chosen, remotes, DBConfig(client_port=client, peer_port=peer, http_port=http),
                         str(tmp_path / "nodes"))
    run_dir = store.new_run_dir(Path(tmp_path / "store"), spec.test_name())
    runner = Runner(spec, chosen, remotes, target, workloads.build(workload), nemeses.build(spec.nemesis), run_dir,
                    can_partition=inv.can_partition, why_not_partition=inv.why_not_partition, control_ip=inv.control_ip)
    request.node.user_properties.append(("etcdproof_run", str(run_dir)))
    outcome = run_sync(runner)
    stop_if_interrupted(outcome, run_dir)
    return outcome, target


def nemesis_story(history) -> str:
    """The nemesis ops' completions, one line each (time, op, outcome, error): what a failed
    "fault applied" assert must show, since the run directory is gone by the time CI is read."""
    from checker.history import NEMESIS

    return "; ".join(f"{op.time / 1e9:.1f}s {op.f} {op.type}{' ' + op.error if op.error else ''}"
                     for op in history if op.process == NEMESIS and op.type != "invoke")
