"""Network partitions: grudges (pure) and their application with iptables on each node.

A grudge maps every node name to the set of node names whose inbound traffic it drops. Dropping
inbound packets is enough to cut TCP both ways (the handshake needs both directions) and keeps
the model simple: a grudge need not be symmetric (see `majorities_ring` with an even majority).
The grudge functions are pure and take the node names (or Nodes) and, where they choose, a
seeded `random.Random`.

`apply` makes the network exactly a grudge: on each node the chain `etcdproof-partition`
(jumped to from the top of INPUT by a rule tagged with the same comment) holds one DROP rule per
peer address it holds a grudge against; nodes without a grudge get an empty chain. `heal`
removes the jump and the chain and nothing else. Both read the rules back with `iptables -S` as
evidence and run on all nodes in parallel. Only node addresses are ever dropped, so the control
node (the embedded bridge's .1, or the host running the harness) always reaches every node.
"""
from __future__ import annotations

import random
import shlex
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Mapping, Sequence

from harness.remote import RemoteError

CHAIN = "etcdproof-partition"  # also the comment on every rule we add
Grudge = dict[str, frozenset[str]]


class PartitionError(Exception):
    """A partition could not be applied or healed; one line naming the nodes and the problem."""


def names(nodes: Iterable[Any]) -> list[str]:
    """Node names from names or Nodes (anything with .name)."""
    return [getattr(n, "name", n) for n in nodes]


# ---------------------------------------------------------------- grudges
def complete(components: Iterable[Iterable[str]]) -> Grudge:
    """Every node drops everything outside its own component."""
    comps = [frozenset(names(c)) for c in components]
    everyone = frozenset().union(*comps) if comps else frozenset()
    return {n: everyone - c for c in comps for n in c}


def split(nodes: Sequence[Any], side: Iterable[Any]) -> Grudge:
    """The given side against all the other nodes."""
    all_names, one = names(nodes), frozenset(names(side))
    unknown = one - set(all_names)
    if unknown:
        raise ValueError(f"not nodes of this cluster: {', '.join(sorted(unknown))}")
    return complete([one, [n for n in all_names if n not in one]])


def random_halves(nodes: Sequence[Any], rng: random.Random) -> Grudge:
    """Shuffled, then the first floor(n/2) against the rest (for 5: 2 against 3)."""
    ns = names(nodes)
    rng.shuffle(ns)
    return complete([ns[: len(ns) // 2], ns[len(ns) // 2:]])


def minority_majority(nodes: Sequence[Any], rng: random.Random, size: int | None = None) -> Grudge:
    """A random minority (size nodes, default 1..floor((n-1)/2) at random) against the majority."""
    ns = names(nodes)
    most = (len(ns) - 1) // 2
    if most < 1:
        raise ValueError(f"{len(ns)} nodes have no minority to cut off")
    k = rng.randint(1, most) if size is None else size
    if not 1 <= k <= most:
        raise ValueError(f"minority size {k}: must be 1..{most} for {len(ns)} nodes")
    return split(ns, rng.sample(ns, k))


def isolate(nodes: Sequence[Any], node: Any) -> Grudge:
    """One node (e.g. the leader, asked of the cluster by the caller) against all others."""
    return split(nodes, [node])


def majorities_ring(nodes: Sequence[Any], rng: random.Random) -> Grudge:
    """Every node sees a majority, and every node a different one (Jepsen's majorities ring).

    The nodes are shuffled onto a ring; node i sees the m = floor(n/2)+1 consecutive nodes from
    i - floor((m-1)/2) to i + floor(m/2), itself among them, and drops the rest. For odd m (n = 5:
    each sees its two ring neighbours) the grudge is symmetric; for even m it is not.
    """
    ns = names(nodes)
    rng.shuffle(ns)
    n = len(ns)
    m = n // 2 + 1
    everyone = frozenset(ns)
    out: Grudge = {}
    for i, node in enumerate(ns):
        seen = {ns[(i + d) % n] for d in range(-((m - 1) // 2), m // 2 + 1)}
        out[node] = everyone - seen
    return out


def bridge(nodes: Sequence[Any], rng: random.Random) -> Grudge:
    """Two halves that cannot talk, and one node (the bridge) that talks to both."""
    ns = names(nodes)
    if len(ns) < 3:
        raise ValueError(f"a bridge needs at least 3 nodes, not {len(ns)}")
    rng.shuffle(ns)
    k = (len(ns) - 1) // 2
    left, mid, right = frozenset(ns[:k]), ns[k], frozenset(ns[k + 1:])
    out: Grudge = {n: right for n in left}
    out.update({n: left for n in right})
    out[mid] = frozenset()
    return out


def check_grudge(grudge: Mapping[str, Iterable[str]], nodes: Sequence[Any]) -> Grudge:
    """The grudge over exactly these nodes (missing nodes drop nothing); ValueError if it names
    unknown nodes or has a node drop itself."""
    known = set(names(nodes))
    out: Grudge = {n: frozenset() for n in names(nodes)}
    for n, drops in grudge.items():
        drops = frozenset(drops)
        bad = ({n} | drops) - known
        if bad:
            raise ValueError(f"grudge names nodes not in the cluster: {', '.join(sorted(bad))}")
        if n in drops:
            raise ValueError(f"grudge has {n} drop its own traffic")
        out[n] = drops
    return out


def describe(grudge: Mapping[str, Iterable[str]]) -> str:
    """A stable one-line rendering: 'n1 drops n4,n5; n2 drops n4,n5; ...' (or 'no grudges')."""
    parts = [f"{n} drops {','.join(sorted(d))}" for n, d in sorted(grudge.items()) if d]
    return "; ".join(parts) or "no grudges"


def components(grudge: Mapping[str, Iterable[str]]) -> list[list[str]] | None:
    """The groups of a complete partition (every node drops exactly the nodes outside its
    group), or None if the grudge is not of that kind (a ring, a bridge)."""
    everyone = frozenset(grudge)
    groups: list[frozenset[str]] = []
    for n, d in grudge.items():
        g = everyone - frozenset(d)
        if n not in g:
            return None
        if g not in groups:
            groups.append(g)
    if sum(len(g) for g in groups) != len(everyone):
        return None
    return sorted(sorted(g) for g in groups)


# --------------------------------------------------------------- iptables
def _read_back() -> str:
    return f"iptables -w -S INPUT | grep -F -- {CHAIN} || true; iptables -w -S {CHAIN} 2>/dev/null | grep -v '^-N' || true"


def _apply_script(sources: list[tuple[str, str]]) -> str:
    jump = f"INPUT -m comment --comment {CHAIN} -j {CHAIN}"
    lines = [
        "set -e",
        f"iptables -w -N {CHAIN} 2>/dev/null || iptables -w -F {CHAIN}",
        f"iptables -w -C {jump} 2>/dev/null || iptables -w -I {jump.replace('INPUT', 'INPUT 1', 1)}",
    ]
    for peer, ip in sources:
        comment = shlex.quote(f"{CHAIN} from {peer}")
        lines.append(f"iptables -w -A {CHAIN} -s {shlex.quote(ip)}/32 -m comment --comment {comment} -j DROP")
    lines += ["set +e", _read_back()]
    return "\n".join(lines)


def _heal_script() -> str:
    jump = f"INPUT -m comment --comment {CHAIN} -j {CHAIN}"
    return (f"while iptables -w -D {jump} 2>/dev/null; do :; done; "
            f"iptables -w -F {CHAIN} 2>/dev/null; iptables -w -X {CHAIN} 2>/dev/null; "
            f"iptables -w -S | grep -F -- {CHAIN} || true")


def _refuse_local(nodes: Sequence[Any], remotes: Mapping[str, Any]) -> None:
    from harness.ssh import LocalRemote

    local = [n.name for n in nodes if isinstance(remotes[n.name], LocalRemote)]
    if local:
        raise PartitionError(f"{', '.join(local)}: local (loopback) nodes share this machine's firewall; "
                             "partitions need the embedded cluster or VMs")


def _on_all(nodes: Sequence[Any], work) -> tuple[dict[str, Any], dict[str, str]]:
    """work(node) on every node at once; results and one-line errors by node name."""
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}

    def one(n):
        try:
            results[n.name] = work(n)
        except (RemoteError, PartitionError) as e:
            errors[n.name] = str(e)

    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        list(pool.map(one, nodes))
    return results, errors


def apply(grudge: Mapping[str, Iterable[str]], nodes: Sequence[Any], remotes: Mapping[str, Any],
          control_ip: str | None = None) -> dict:
    """Make the network exactly grudge; return {"grudge": {node: [dropped...]}, "rules": {node:
    [iptables -S lines of ours]}}. PartitionError (one line) if a node failed or its rules read
    back differ from the grudge; the caller heals."""
    _refuse_local(nodes, remotes)
    g = check_grudge(grudge, nodes)
    by_name = {n.name: n for n in nodes}

    def work(n) -> list[str]:
        sources = [(p, by_name[p].ip) for p in sorted(g[n.name]) if by_name[p].ip not in (control_ip, n.ip)]
        res = remotes[n.name].run(_apply_script(sources), timeout=30)
        rules = [line for line in res.out.splitlines() if line.strip()]
        got = {line.split(" -s ", 1)[1].split()[0].removesuffix("/32") for line in rules
               if line.startswith(f"-A {CHAIN} ") and " -j DROP" in line}
        want = {ip for _, ip in sources}
        if got != want or not any(line.startswith("-A INPUT") for line in rules):
            raise PartitionError(f"{n.name}: rules read back ({', '.join(sorted(got)) or 'none'}) "
                                 f"are not the grudge ({', '.join(sorted(want)) or 'none'})")
        return rules

    rules, errors = _on_all(nodes, work)
    if errors:
        raise PartitionError("partition not applied: " + "; ".join(errors[k] for k in sorted(errors)))
    return {"grudge": {n: sorted(d) for n, d in sorted(g.items())}, "rules": dict(sorted(rules.items()))}


def heal(nodes: Sequence[Any], remotes: Mapping[str, Any]) -> dict:
    """Remove our chain and jump from every node (idempotent, safe without apply); return
    {"rules": {node: []}} read back. Tries every node; PartitionError naming those that failed
    or still hold a rule of ours."""
    _refuse_local(nodes, remotes)

    def work(n) -> list[str]:
        res = remotes[n.name].run(_heal_script(), timeout=30)
        left = [line for line in res.out.splitlines() if line.strip()]
        if left:
            raise PartitionError(f"{n.name}: rules left after heal: {' | '.join(left)}")
        return left

    rules, errors = _on_all(nodes, work)
    if errors:
        raise PartitionError("heal incomplete: " + "; ".join(errors[k] for k in sorted(errors)))
    return {"rules": dict(sorted(rules.items()))}


def rules(nodes: Sequence[Any], remotes: Mapping[str, Any]) -> dict[str, list[str]]:
    """Our rules on each node now (iptables -S lines), for checks and reports."""
    found, errors = _on_all(nodes, lambda n: [x for x in remotes[n.name].run(_read_back(), timeout=30).out.splitlines() if x.strip()])
    if errors:
        raise PartitionError("cannot read partition rules: " + "; ".join(errors[k] for k in sorted(errors)))
    return dict(sorted(found.items()))


# ---------------------------------------------------------------- the fault
MODES = ("halves", "minority", "one", "leader", "majorities-ring", "bridge")


class PartitionNemesis:
    """`--nemesis partition`: each start cuts the network by a grudge of a randomly chosen mode
    (random halves, a minority from the majority, one node, the current leader, a majorities ring,
    a bridge); stop and heal remove our rules. Refused where partitions are impossible."""

    name = "partition"

    def __init__(self, modes: Sequence[str] = MODES) -> None:
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown partition mode {sorted(unknown)[0]!r}: {', '.join(MODES)}")
        self.modes = tuple(modes)

    def setup(self, ctx) -> None:
        pass

    def grudge(self, ctx, mode: str) -> Grudge:
        nodes, rng = ctx.nodes, ctx.rng
        if mode == "halves":
            return random_halves(nodes, rng)
        if mode == "minority":
            return minority_majority(nodes, rng)
        if mode == "one":
            return isolate(nodes, rng.choice(nodes))
        if mode == "leader":
            from nemesis.base import LEADER_WAIT, FaultRefused, agreed_leader

            lead = agreed_leader(ctx)
            if lead is None:
                raise FaultRefused(f"no agreed leader to isolate after {LEADER_WAIT:g}s")
            return isolate(nodes, lead)
        if mode == "majorities-ring":
            return majorities_ring(nodes, rng)
        return bridge(nodes, rng)

    def start(self, ctx) -> dict:
        from nemesis.base import FaultRefused

        if not ctx.can_partition:
            raise FaultRefused(ctx.why_not_partition or "partitions are not possible on these nodes")
        usable = [m for m in self.modes if len(ctx.nodes) >= (3 if m in ("minority", "bridge") else 2)]
        if not usable:
            raise FaultRefused(f"no partition mode fits {len(ctx.nodes)} nodes")
        mode = ctx.rng.choice(usable)
        g = self.grudge(ctx, mode)
        ev = apply(g, ctx.nodes, ctx.remotes, ctx.control_ip)
        cut = sorted(n for n, d in g.items() if d)
        return {"mode": mode, "description": describe(g), "components": components(g), "nodes": cut, **ev}

    def stop(self, ctx) -> dict:
        return heal(ctx.nodes, ctx.remotes)

    def heal(self, ctx) -> dict:
        if not ctx.can_partition:
            return {"rules": {}, "skipped": ctx.why_not_partition}
        return heal(ctx.nodes, ctx.remotes)
