"""The --nodes options the benchmarks share (a subset of `etcdproof test`'s), and loading them."""
from __future__ import annotations

import argparse
import sys

from harness.inventory import Inventory


def add_node_args(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group(f"nodes ({what})")
    g.add_argument("--nodes", help="local (the embedded cluster), vagrant, or names n1,n2,n3")
    g.add_argument("--nodes-file", help="a TOML file of nodes")
    g.add_argument("--username", default="root", help="SSH user for --nodes names")
    g.add_argument("--ssh-private-key", help="SSH key for --nodes names")
    g.add_argument("--node-count", type=int, default=5, help="nodes of the embedded cluster (--nodes local)")
    g.add_argument("--base-dir", default="/var/lib/etcdproof", help="where nodes keep installs and data")


def load_nodes(args: argparse.Namespace, prog: str) -> Inventory | None:
    """The inventory --nodes/--nodes-file name (None without them); SystemExit(2) with one line
    when a node cannot be reached."""
    if not (args.nodes or args.nodes_file):
        return None
    from harness.inventory import InventoryError, resolve
    from harness.remote import RemoteError

    try:
        return resolve(args)
    except (InventoryError, RemoteError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
