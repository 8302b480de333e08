"""Partition grudges (pure) and their iptables application on the embedded cluster, probed with
real TCP connections between the namespaces and from the control node."""
from __future__ import annotations

import itertools
import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.embedded import ssh_banner
from harness.inventory import loopback_inventory
from nemesis import partition as P

FIVE = ["n1", "n2", "n3", "n4", "n5"]


# ------------------------------------------------------------------ grudges
def test_split_and_isolate():
    g = P.split(FIVE, ["n1", "n2"])
    assert g == {"n1": {"n3", "n4", "n5"}, "n2": {"n3", "n4", "n5"},
                 "n3": {"n1", "n2"}, "n4": {"n1", "n2"}, "n5": {"n1", "n2"}}
    assert P.isolate(FIVE, "n3") == {"n3": set(FIVE) - {"n3"}, **{n: {"n3"} for n in FIVE if n != "n3"}}
    assert P.components(g) == [["n1", "n2"], ["n3", "n4", "n5"]]
    assert P.describe(P.isolate(FIVE, "n2")) == "n1 drops n2; n2 drops n1,n3,n4,n5; n3 drops n2; n4 drops n2; n5 drops n2"
    with pytest.raises(ValueError, match="not nodes of this cluster: n9"):
        P.split(FIVE, ["n9"])


@pytest.mark.parametrize("seed", range(20))
def test_random_halves_and_minorities(seed):
    g = P.random_halves(FIVE, random.Random(seed))
    comps = P.components(g)
    assert sorted(map(len, comps)) == [2, 3] and sorted(itertools.chain(*comps)) == FIVE
    m = P.minority_majority(FIVE, random.Random(seed))
    assert sorted(map(len, P.components(m)))[0] in (1, 2)
    assert sorted(map(len, P.components(P.minority_majority(FIVE, random.Random(seed), size=1)))) == [1, 4]
    assert P.random_halves(FIVE, random.Random(seed)) == g  # seeded: reproducible


def test_halves_differ_across_seeds_and_bad_sizes():
    seen = {tuple(map(tuple, P.components(P.random_halves(FIVE, random.Random(s))))) for s in range(50)}
    assert len(seen) > 5
    with pytest.raises(ValueError, match="minority size 3: must be 1..2"):
        P.minority_majority(FIVE, random.Random(1), size=3)
    with pytest.raises(ValueError, match="no minority"):
        P.minority_majority(["n1", "n2"], random.Random(1))


@pytest.mark.parametrize("seed", range(30))
def test_majorities_ring_for_five(seed):
    g = P.majorities_ring(FIVE, random.Random(seed))
    assert set(g) == set(FIVE)
    views = {n: frozenset(FIVE) - d for n, d in g.items()}
    for n, view in views.items():
        assert n in view and len(view) == 3  # itself and two others: a majority, never everyone
        assert len(g[n]) == 2
    assert len(set(views.values())) == 5  # every node sees a different majority
    for a, b in itertools.permutations(FIVE, 2):
        assert (b in g[a]) == (a in g[b])  # symmetric for five
    # the visible graph is one 5-cycle: each node talks to exactly two others, all connected
    talk = {n: views[n] - {n} for n in FIVE}
    seen, todo = set(), ["n1"]
    while todo:
        x = todo.pop()
        if x not in seen:
            seen.add(x)
            todo.extend(talk[x])
    assert seen == set(FIVE)
    assert P.components(g) is None  # not a clean split


def test_majorities_ring_other_sizes():
    for n in (3, 4, 6, 7):
        nodes = [f"n{i}" for i in range(1, n + 1)]
        g = P.majorities_ring(nodes, random.Random(n))
        views = [frozenset(nodes) - d for d in g.values()]
        assert all(len(v) == n // 2 + 1 for v in views)
        assert len(set(views)) == n


@pytest.mark.parametrize("seed", range(10))
def test_bridge(seed):
    g = P.bridge(FIVE, random.Random(seed))
    (mid,) = [n for n, d in g.items() if not d]  # the bridge drops nothing
    a, b = {frozenset(d) for d in g.values() if d}  # the two sides, each dropping the other
    assert len(a) == len(b) == 2 and not (a & b) and mid not in a | b
    assert all(g[n] == b for n in a) and all(g[n] == a for n in b)
    with pytest.raises(ValueError):
        P.bridge(["n1", "n2"], random.Random(1))


def test_check_grudge():
    assert P.check_grudge({"n1": ["n2"]}, FIVE) == {"n1": {"n2"}, "n2": set(), "n3": set(), "n4": set(), "n5": set()}
    with pytest.raises(ValueError, match="n1 drop its own"):
        P.check_grudge({"n1": ["n1"]}, FIVE)
    with pytest.raises(ValueError, match="not in the cluster: n7"):
        P.check_grudge({"n7": ["n1"]}, FIVE)


def test_loopback_nodes_refuse_partitions():
    inv = loopback_inventory(3, "test")
    assert not inv.can_partition
    with pytest.raises(P.PartitionError, match="n1, n2, n3: local .loopback. nodes share this machine's firewall"):
        P.apply(P.isolate(inv.nodes, "n1"), inv.nodes, inv.remotes)


# ---------------------------------------------------------------- iptables
def reaches(inv, a: str, b: str) -> bool:
    """Whether a TCP connection from node a to node b's sshd completes (a real handshake)."""
    ip = inv.node(b).ip
    probe = f"timeout 1.5 bash -c 'exec 3<>/dev/tcp/{ip}/22 && head -c 4 <&3'"
    return inv.remotes[a].run(probe, check=False, timeout=10).out == "SSH-"


def reach_map(inv, pairs: str) -> dict[str, bool]:
    """'n1>n2 n2>n3' -> {'n1>n2': bool, ...}, probed in parallel (a dropped SYN costs the timeout)."""
    keys = pairs.split()
    with ThreadPoolExecutor(len(keys)) as pool:
        return dict(zip(keys, pool.map(lambda k: reaches(inv, *k.split(">")), keys)))


def all_rules(inv) -> dict[str, str]:
    return {n.name: inv.remotes[n.name].run("iptables -w -S").out for n in inv.nodes}


def test_partition_cuts_and_heal_restores(embedded_cluster):
    inv = embedded_cluster
    before = all_rules(inv)
    grudge = P.complete([["n1"], ["n2", "n3"]])  # n4, n5 untouched
    try:
        ev = P.apply(grudge, inv.nodes, inv.remotes, inv.control_ip)
        assert ev["grudge"] == {"n1": ["n2", "n3"], "n2": ["n1"], "n3": ["n1"], "n4": [], "n5": []}
        ip = {n.name: n.ip for n in inv.nodes}
        assert ev["rules"]["n1"] == [
            "-A INPUT -m comment --comment etcdproof-partition -j etcdproof-partition",
            f'-A etcdproof-partition -s {ip["n2"]}/32 -m comment --comment "etcdproof-partition from n2" -j DROP',
            f'-A etcdproof-partition -s {ip["n3"]}/32 -m comment --comment "etcdproof-partition from n3" -j DROP',
        ]
        assert ev["rules"]["n4"] == ["-A INPUT -m comment --comment etcdproof-partition -j etcdproof-partition"]
        assert reach_map(inv, "n1>n2 n1>n3 n2>n1 n3>n1 n2>n3 n1>n4 n4>n2 n5>n1") == {
            "n1>n2": False, "n1>n3": False, "n2>n1": False, "n3>n1": False,
            "n2>n3": True, "n1>n4": True, "n4>n2": True, "n5>n1": True}
        # the control node still reaches everyone, over TCP and over SSH
        assert all(ssh_banner(n.ip) for n in inv.nodes)
        assert all(inv.remotes[n.name].run("echo up").out == "up\n" for n in inv.nodes)

        # a second apply replaces the first: now only n5 is cut off
        ev2 = P.apply(P.isolate(inv.nodes, "n5"), inv.nodes, inv.remotes, inv.control_ip)
        assert [r for r in ev2["rules"]["n1"] if "DROP" in r] == [
            f'-A etcdproof-partition -s {ip["n5"]}/32 -m comment --comment "etcdproof-partition from n5" -j DROP']
        assert reach_map(inv, "n1>n2 n1>n5 n5>n4") == {"n1>n2": True, "n1>n5": False, "n5>n4": False}
    finally:
        healed = P.heal(inv.nodes, inv.remotes)
    assert healed == {"rules": {n: [] for n in ip}}
    assert all(reach_map(inv, "n1>n2 n2>n1 n3>n1 n1>n5 n5>n4").values())
    assert all_rules(inv) == before  # nothing of ours left, nothing else touched
    assert P.rules(inv.nodes, inv.remotes) == {n: [] for n in ip}
    assert P.heal(inv.nodes, inv.remotes) == healed  # idempotent


def test_heal_leaves_other_rules_alone(embedded_cluster):
    inv = embedded_cluster
    r1 = inv.remotes["n1"]
    foreign = "INPUT -s 192.0.2.250/32 -m comment --comment someone-else -j DROP"
    r1.run(f"iptables -w -A {foreign}")
    try:
        P.apply(P.isolate(inv.nodes, "n1"), inv.nodes, inv.remotes, inv.control_ip)
        P.heal(inv.nodes, inv.remotes)
        assert f"-A {foreign}" in r1.run("iptables -w -S INPUT").out.splitlines()
        assert "etcdproof" not in r1.run("iptables -w -S").out
    finally:
        r1.run(f"iptables -w -D {foreign}", check=False)
        P.heal(inv.nodes, inv.remotes)
