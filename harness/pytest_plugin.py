"""etcdproof's pytest plugin: run real tests on real nodes from pytest.

    pytest                                   # unit tests + short fault runs on the embedded cluster
    vagrant up && pytest --nodes vagrant     # the same runs on the VMs
    pytest --db etcd --time-limit 60         # only real etcd, longer runs
    pytest --nodes-file nodes.toml           # your own machines

Options: --nodes, --nodes-file, --username, --ssh-private-key (as `etcdproof test`), --db
reference|etcd|both (which targets the parametrized run tests use), --time-limit (seconds of
each fault run, overriding the test's own short limit).

Fixtures: `etcdproof_inventory` (the nodes for the whole session; the embedded cluster is
built if needed and torn down at the end if this session built it), `db_kind` (parametrized
over the --db targets) and `run_etcdproof` (runs one TestSpec on the inventory and returns the
Outcome; the run directory is kept under pytest's temporary directory and named on failure).
Registered through the `pytest11` entry point, so any pytest in this venv has it.
"""
from __future__ import annotations

import argparse
import os
import random
from pathlib import Path
from typing import Callable

import pytest

TARGETS = ("reference", "etcd")


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("etcdproof", "etcdproof runs on real nodes")
    g.addoption("--nodes", default="local", help="local (embedded cluster, default), loopback, vagrant, or n1,n2,n3")
    g.addoption("--nodes-file", default=None, help="TOML file of nodes")
    g.addoption("--username", default="root", help="SSH user for --nodes names")
    g.addoption("--ssh-private-key", default=None, help="SSH key for --nodes names")
    g.addoption("--db", default="both", choices=[*TARGETS, "both"], help="targets of the run tests")
    g.addoption("--time-limit", type=float, default=None, help="seconds per fault run (default: each test's own)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_kind" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--db")
        kinds = list(TARGETS) if chosen == "both" else [chosen]
        # @pytest.mark.slow_db("etcd"): that target's run joins the slow set, to keep `make
        # test` short where the other target's run already covers the harness path
        slow = {k for m in metafunc.definition.iter_markers("slow_db") for k in m.args}
        metafunc.parametrize("db_kind", [pytest.param(k, marks=pytest.mark.slow) if k in slow else k for k in kinds])


def _args(config: pytest.Config) -> argparse.Namespace:
    return argparse.Namespace(nodes=config.getoption("--nodes"), nodes_file=config.getoption("--nodes-file"),
                              username=config.getoption("--username"),
                              ssh_private_key=config.getoption("--ssh-private-key"), node_count=5)


_embedded: dict = {}


def embedded_session_inventory(count: int = 5):
    """The embedded cluster for this pytest session, shared with concurrent sessions.

    Built when first asked for (or reused if up), partitions healed before use. Sessions hold a
    shared flock on the cluster's sessions.lock; the last one out tears the cluster down if a
    test session built it (one built by `etcdproof cluster up` is left up). pytest.skip with the
    reason when the cluster cannot be built here.
    """
    if "inv" in _embedded:
        return _embedded["inv"]
    import fcntl

    from harness.embedded import DEFAULT_STATE_DIR, EmbeddedCluster, cannot_build
    from harness.inventory import embedded_inventory
    from nemesis import partition

    why = cannot_build()
    if why:
        pytest.skip(f"embedded cluster: {why}")
    c = EmbeddedCluster(DEFAULT_STATE_DIR)
    os.makedirs(c.state_dir, mode=0o700, exist_ok=True)
    users = open(os.path.join(c.state_dir, "sessions.lock"), "w")
    fcntl.flock(users, fcntl.LOCK_SH)
    inv = embedded_inventory(count, built_by="pytest")
    partition.heal(inv.nodes, inv.remotes)  # a crashed earlier run may have left rules
    _embedded.update(inv=inv, users=users, cluster=c)
    return inv


def finish_embedded_session() -> None:
    """Close the remotes; tear the cluster down if tests built it and no other session uses it."""
    import fcntl

    inv, users, c = _embedded.pop("inv", None), _embedded.pop("users", None), _embedded.pop("cluster", None)
    if inv is None:
        return
    inv.close()
    fcntl.flock(users, fcntl.LOCK_UN)
    try:
        fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        users.close()
        return  # another session still uses it
    try:
        st = c.load()
        if st and st.get("built_by") == "pytest":
            c.down()
    finally:
        users.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    finish_embedded_session()


@pytest.fixture(scope="session")
def embedded_cluster():
    """Inventory of the embedded cluster n1..n5 (namespaces, bridge, sshd each; SSHRemotes)."""
    return embedded_session_inventory()


@pytest.fixture(scope="session")
def etcdproof_inventory(request: pytest.FixtureRequest):
    """The session's nodes, as --nodes/--nodes-file say (the embedded cluster by default)."""
    from harness.inventory import InventoryError, load
    from harness.remote import RemoteError

    args = _args(request.config)
    if args.nodes in ("local", "embedded") and not args.nodes_file:
        yield embedded_session_inventory(args.node_count)
        return
    try:
        inv = load(nodes=args.nodes, nodes_file=args.nodes_file, username=args.username,
                   ssh_private_key=args.ssh_private_key, node_count=args.node_count)
    except (InventoryError, RemoteError) as e:
        pytest.fail(f"cannot reach the test nodes: {e}", pytrace=False)
    yield inv
    inv.close()


def session_ports(config: pytest.Config) -> tuple[int, int, int]:
    """Client, peer and gateway ports for this session's servers: never 2379/2380, and
    different from a leftover session's (so a stray process from a crashed run cannot answer)."""
    if not hasattr(config, "_etcdproof_ports"):
        base = random.Random(os.getpid()).randrange(20_000, 29_000, 10)
        config._etcdproof_ports = (base, base + 1, base + 2)  # type: ignore[attr-defined]
    return config._etcdproof_ports  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def etcdproof_nodes_dir(etcdproof_inventory):
    """Where this session's servers keep data and logs on the nodes: a directory of its own, so
    concurrent sessions on one cluster never share one (installs are shared); removed afterwards."""
    import shlex

    path = f"/var/lib/etcdproof/runs/pytest-{os.getpid()}"
    yield path
    for n in etcdproof_inventory.nodes:
        try:
            etcdproof_inventory.remotes[n.name].run(f"rm -rf {shlex.quote(path)}", timeout=60, check=False)
        except Exception:  # noqa: BLE001 - an unreachable node keeps its leftovers; the next wipe takes them
            pass


@pytest.fixture
def run_etcdproof(request: pytest.FixtureRequest, etcdproof_inventory, etcdproof_nodes_dir, tmp_path_factory) -> Callable:
    """run(workload=..., db=..., nemesis=[...], time_limit=..., nodes=k, **spec) -> Outcome."""
    from harness import store
    from harness.db import DBConfig, make_db
    from harness.runner import Runner, TestSpec, run_sync
    from nemesis import registry as nemeses
    from workloads import registry as workloads

    inv = etcdproof_inventory
    client, peer, http = session_ports(request.config)
    root = tmp_path_factory.mktemp("store")

    def run(workload: str = "register", db: str = "reference", nemesis: list[str] | None = None,
            time_limit: float = 20.0, nodes: int | None = None, **kw):
        limit = request.config.getoption("--time-limit") or time_limit
        spec = TestSpec(workload=workload, db=db, nemesis=list(nemesis or []), nodes=inv.kind,
                        time_limit=limit, seed=kw.pop("seed", random.randrange(1, 2**31)), **kw)
        chosen = inv.nodes[: nodes or len(inv.nodes)]
        remotes = {n.name: inv.remotes[n.name] for n in chosen}
        cfg = DBConfig(client_port=client, peer_port=peer, http_port=http, nodes_dir=etcdproof_nodes_dir)
        target = make_db(db, chosen, remotes, cfg)
        run_dir = store.new_run_dir(Path(root), spec.test_name())
        runner = Runner(spec, chosen, remotes, target, workloads.build(workload), nemeses.build(spec.nemesis),
                        run_dir, can_partition=inv.can_partition, why_not_partition=inv.why_not_partition,
                        control_ip=inv.control_ip)
        outcome = run_sync(runner)
        request.node.user_properties.append(("etcdproof_run", str(run_dir)))
        stop_if_interrupted(outcome, run_dir)
        return outcome

    return run


def stop_if_interrupted(outcome, run_dir) -> None:
    """Ctrl-C (or SIGTERM) during a run ends that run inside run_sync, faults healed and servers
    stopped, and run_sync keeps the signal from pytest; pytest must stop all the same, as it does
    for a Ctrl-C anywhere else, rather than go on to the next run."""
    if outcome.interrupted:
        raise KeyboardInterrupt(f"interrupted during the run {run_dir} (its faults healed, its servers stopped)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name, value in item.user_properties:
            if name == "etcdproof_run":
                rep.sections.append(("etcdproof run", f"{value}/index.html"))
