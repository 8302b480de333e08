"""Small facts about nodes that several fault classes need, read from the node itself.

- whether a node shares this machine's kernel (the embedded cluster and the loopback fallback
  do: one clock, one block layer, one cgroup tree), told by the kernel's boot id;
- the network interface that holds a node's address;
- running one piece of work on many nodes at once, with the errors collected by node.
"""
from __future__ import annotations

import shlex
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

from harness.inventory import Node
from harness.remote import Remote, RemoteError

T = TypeVar("T")
BOOT_ID = "/proc/sys/kernel/random/boot_id"


def local_boot_id() -> str:
    with open(BOOT_ID) as f:
        return f.read().strip()


def boot_id(remote: Remote) -> str:
    return remote.run(f"cat {BOOT_ID}", timeout=10).out.strip()


def shares_kernel(remote: Remote) -> bool:
    """Whether the node runs on this machine's kernel (same boot id): then its clock, disks and
    cgroups are this machine's too, and changing them changes them for everyone here."""
    return boot_id(remote) == local_boot_id()


def iface_of(remote: Remote, ip: str) -> str:
    """The interface holding ip on the node (for tc); RemoteError if none does."""
    out = remote.run(f"ip -o -4 addr show | awk '$4 ~ /^{ip.replace('.', '[.]')}\\// {{print $2}}'", timeout=10).out
    names = [x.split("@")[0] for x in out.split()]
    if not names:
        raise RemoteError(f"{remote.node}: no interface holds {ip}")
    return names[0]


def on_nodes(nodes: Iterable[Node], work: Callable[[Node], T]) -> tuple[dict[str, T], dict[str, str]]:
    """work(node) on every node at once; results and one-line errors (RemoteError, OSError,
    ValueError) by node name."""
    nodes = list(nodes)
    results: dict[str, T] = {}
    errors: dict[str, str] = {}

    def one(n: Node) -> None:
        try:
            results[n.name] = work(n)
        except (RemoteError, OSError, ValueError) as e:
            errors[n.name] = str(e)

    if nodes:
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            list(pool.map(one, nodes))
    return dict(sorted(results.items())), dict(sorted(errors.items()))


def first_line(text: str) -> str:
    return next((x.strip() for x in text.splitlines() if x.strip()), "")


def q(x: Any) -> str:
    return shlex.quote(str(x))
