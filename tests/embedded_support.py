"""The embedded cluster as a pytest session fixture, shared by every test (and test session)
that needs real nodes.

Built once when first asked for (or reused if it is up), partitions healed before use, and torn
down at the end of the last session using it if a test session built it; a cluster built with
`etcdproof cluster up` is left up. Sessions announce themselves with a shared flock, so a session
ending while another still runs leaves the cluster to the other.
"""
from __future__ import annotations

import fcntl
import os

import pytest

from harness.embedded import DEFAULT_STATE_DIR, EmbeddedCluster, cannot_build

_session: dict = {}


def embedded_inventory_for_tests(count: int = 5):
    """The session's Inventory of the embedded cluster; pytest.skip with the reason if impossible."""
    if "inv" in _session:
        return _session["inv"]
    why = cannot_build()
    if why:
        pytest.skip(f"embedded cluster: {why}")
    from harness.inventory import embedded_inventory
    from nemesis import partition

    c = EmbeddedCluster(DEFAULT_STATE_DIR)
    os.makedirs(c.state_dir, mode=0o700, exist_ok=True)
    users = open(os.path.join(c.state_dir, "sessions.lock"), "w")
    fcntl.flock(users, fcntl.LOCK_SH)
    inv = embedded_inventory(count, built_by="pytest")
    partition.heal(inv.nodes, inv.remotes)  # a crashed earlier run may have left rules
    _session.update(inv=inv, users=users, cluster=c)
    return inv


def finish_embedded_session() -> None:
    """Close the remotes; tear the cluster down if tests built it and no other session uses it."""
    inv, users, c = _session.pop("inv", None), _session.pop("users", None), _session.pop("cluster", None)
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


@pytest.fixture(scope="session")
def embedded_cluster():
    """Inventory of the embedded cluster n1..n5 (namespaces, bridge, sshd each; SSHRemotes)."""
    inv = embedded_inventory_for_tests()
    try:
        yield inv
    finally:
        finish_embedded_session()
