"""Nodes a test runs on, however they were described: the embedded cluster, vagrant, a file, names.

    --nodes local             the embedded cluster (built or repaired as needed); without root,
                              loopback addresses 127.0.0.11.. on this machine, without partitions
    --nodes loopback          that fallback, asked for directly
    --nodes vagrant           `vagrant ssh-config` of the repo's Vagrantfile
    --nodes-file FILE         a TOML file (see `load_nodes_file`)
    --nodes n1,n2,n3          plain host names, with --username and --ssh-private-key

`resolve(args)` (or `load(...)` with keywords) returns an `Inventory`: the nodes, a Remote for each,
and whether partitions are possible. Every problem is one line naming the file or node.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the Vagrantfile gives n<i> the address <subnet>.<10+i> on its private network; both read this
VAGRANT_SUBNET = os.environ.get("ETCDPROOF_VAGRANT_SUBNET") or "192.168.56"
LOOPBACK_BASE = "127.0.0"  # loopback node n<i> binds 127.0.0.<10+i>
HOST_KEY_MODES = ("pin", "tofu", "off")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class InventoryError(Exception):
    """A bad inventory; the message is one line naming the node or file and the problem."""


@dataclass(frozen=True)
class Node:
    name: str  # n1, n2, ...
    host: str  # where SSH connects
    port: int = 22
    user: str = "root"
    key: str | None = None  # private key file
    address: str | None = None  # the address cluster members use for each other (default: host)
    netns: str | None = None  # set for embedded nodes: the network namespace the node lives in
    known_hosts: str | None = None  # host keys file: the pinned one, or where new keys are recorded
    host_keys: str = "tofu"  # "pin": must match known_hosts; "tofu": record unknown, reject changed; "off"

    @property
    def ip(self) -> str:
        return self.address or self.host

    def __str__(self) -> str:
        return f"{self.name} ({self.user}@{self.host}:{self.port})"


@dataclass
class Inventory:
    """The nodes of a test and how to act on them."""

    kind: str  # embedded | loopback | vagrant | file | names
    nodes: list[Node]
    make_remote: Callable[[Node], Any]  # Node -> Remote (a new, lazily connecting one)
    can_partition: bool = True
    why_not_partition: str = ""
    control_ip: str | None = None  # the control node's address as the nodes see it, if known
    source: str = ""  # where the description came from, for reports
    remotes: dict[str, Any] = field(default_factory=dict)  # name -> Remote, one per node

    def __post_init__(self) -> None:
        if not self.remotes:
            self.remotes = {n.name: self.make_remote(n) for n in self.nodes}

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise InventoryError(f"no node {name!r} in the inventory ({', '.join(n.name for n in self.nodes)})")

    def connect(self) -> None:
        """Reach every node now (in parallel); the RemoteError of each failing node, one line."""
        from harness.remote import RemoteError

        errors: dict[str, str] = {}

        def one(n: Node) -> None:
            try:
                self.remotes[n.name].run("true", timeout=30)
            except RemoteError as e:
                errors[n.name] = str(e)

        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RemoteError("; ".join(errors[n.name] for n in self.nodes if n.name in errors))

    def describe(self) -> dict:
        """JSON-able, for test.json: which nodes, from where, what faults are possible."""
        return {"kind": self.kind, "source": self.source, "can_partition": self.can_partition,
                "why_not_partition": self.why_not_partition, "control_ip": self.control_ip,
                "nodes": [{"name": n.name, "host": n.host, "port": n.port, "user": n.user, "ip": n.ip,
                           "netns": n.netns} for n in self.nodes]}

    def close(self) -> None:
        for r in self.remotes.values():
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass


# ------------------------------------------------------------------ checks
def check_nodes(nodes: list[Node], where: str) -> list[Node]:
    """Names valid and unique, ports in range, key files present; InventoryError naming where."""
    if not nodes:
        raise InventoryError(f"{where}: no nodes")
    seen: set[str] = set()
    for n in nodes:
        if not _NAME.match(n.name):
            raise InventoryError(f"{where}: bad node name {n.name!r} (letters, digits, '.', '_', '-')")
        if n.name in seen:
            raise InventoryError(f"{where}: duplicate node name {n.name!r}")
        seen.add(n.name)
        if not n.host:
            raise InventoryError(f"{where}: node {n.name}: empty host")
        if isinstance(n.port, bool) or not isinstance(n.port, int) or not 1 <= n.port <= 65535:
            raise InventoryError(f"{where}: node {n.name}: port must be an integer 1-65535, not {n.port!r}")
        if n.key is not None and not os.path.isfile(n.key):
            raise InventoryError(f"{where}: node {n.name}: key file {n.key} not found")
        if n.host_keys not in HOST_KEY_MODES:
            raise InventoryError(f"{where}: node {n.name}: host_keys must be one of {', '.join(HOST_KEY_MODES)}")
    return nodes


def _ssh_remote(n: Node):
    from harness.ssh import SSHRemote

    return SSHRemote(n)


def _local_remote(n: Node):
    from harness.ssh import LocalRemote

    return LocalRemote(n)


# ------------------------------------------------------------ --nodes-file
FILE_KEYS = {"name", "host", "port", "user", "key", "address", "known_hosts", "host_keys"}
DEFAULT_KEYS = FILE_KEYS - {"name", "host", "address"}


def load_nodes_file(path: str) -> list[Node]:
    """Nodes from a TOML file. Top-level keys are defaults for every node:

        user = "admin"                  # default root; not root means `sudo -n`
        port = 22
        key = "~/.ssh/id_ed25519"       # relative paths are relative to the file
        host_keys = "tofu"              # pin | tofu (record new keys, reject changed) | off
        known_hosts = "known_hosts"     # where keys are checked/recorded (default: the harness's own)

        [[nodes]]
        name = "n1"
        host = "db1.example.com"
        address = "10.0.0.11"           # optional: the address peers use, if not host
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InventoryError(f"--nodes-file {path}: no such file") from None
    except OSError as e:
        raise InventoryError(f"--nodes-file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise InventoryError(f"{path}: not valid TOML: {e}") from None
    base = os.path.dirname(os.path.abspath(path))
    unknown = set(data) - DEFAULT_KEYS - {"nodes"}
    if unknown:
        raise InventoryError(f"{path}: unknown key {sorted(unknown)[0]!r} (top level: {', '.join(sorted(DEFAULT_KEYS))}, [[nodes]])")
    entries = data.get("nodes")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise InventoryError(f"{path}: no [[nodes]] tables")
    defaults = {k: v for k, v in data.items() if k != "nodes"}
    nodes = []
    for i, e in enumerate(entries, 1):
        label = f"node {e.get('name', f'#{i}')}"
        unknown = set(e) - FILE_KEYS
        if unknown:
            raise InventoryError(f"{path}: {label}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(FILE_KEYS))})")
        v = {**defaults, **e}
        for req in ("name", "host"):
            if not isinstance(v.get(req), str) or not v[req]:
                raise InventoryError(f"{path}: {label}: {req} missing (a string)")
        for k in ("user", "key", "address", "known_hosts", "host_keys"):
            if k in v and not isinstance(v[k], str):
                raise InventoryError(f"{path}: {label}: {k} must be a string, not {v[k]!r}")

        def file_path(p: str | None) -> str | None:
            return None if p is None else os.path.join(base, os.path.expanduser(p))

        nodes.append(Node(name=v["name"], host=v["host"], port=v.get("port", 22), user=v.get("user", "root"),
                          key=file_path(v.get("key")), address=v.get("address"),
                          known_hosts=file_path(v.get("known_hosts")), host_keys=v.get("host_keys", "tofu")))
    return check_nodes(nodes, path)


# ------------------------------------------------------------ --nodes vagrant
def parse_ssh_config(text: str, where: str = "vagrant ssh-config", subnet: str = VAGRANT_SUBNET) -> list[Node]:
    """Nodes from `ssh -G`-style / `vagrant ssh-config` output: Host, HostName, Port, User,
    IdentityFile. n<i> gets the Vagrantfile's private address <subnet>.<10+i> for its peers."""
    hosts: list[dict[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(\S+?)(?:\s*=\s*|\s+)(.*)$", line)
        if not m:
            raise InventoryError(f"{where}: line {lineno}: cannot parse {line!r}")
        key, value = m.group(1).lower(), m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key == "host":
            hosts.append({"host": value})
        elif not hosts:
            raise InventoryError(f"{where}: line {lineno}: {m.group(1)} before any Host")
        elif key not in hosts[-1]:  # ssh takes the first value of a key
            hosts[-1][key] = value
    nodes = []
    for h in hosts:
        name = h["host"]
        try:
            port = int(h.get("port", "22"))
        except ValueError:
            raise InventoryError(f"{where}: host {name}: bad port {h.get('port')!r}") from None
        unchecked = h.get("stricthostkeychecking", "").lower() == "no" or h.get("userknownhostsfile") == "/dev/null"
        m = re.fullmatch(r"n(\d+)", name)
        nodes.append(Node(name=name, host=h.get("hostname", name), port=port, user=h.get("user", "root"),
                          key=os.path.expanduser(h["identityfile"]) if "identityfile" in h else None,
                          address=f"{subnet}.{10 + int(m.group(1))}" if m else None,
                          host_keys="off" if unchecked else "tofu"))
    return nodes


def vagrant_nodes(cwd: str = REPO) -> list[Node]:
    """Ask vagrant (in the Vagrantfile's directory) how to reach its running VMs."""
    if shutil.which("vagrant") is None:
        raise InventoryError("--nodes vagrant: vagrant is not installed")
    try:
        p = subprocess.run(["vagrant", "ssh-config"], cwd=os.environ.get("VAGRANT_CWD") or cwd,
                           capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        raise InventoryError("--nodes vagrant: `vagrant ssh-config` timed out after 180s") from None
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])
        detail = " ".join(x.strip() for x in last[:3])
        raise InventoryError(f"--nodes vagrant: `vagrant ssh-config` failed (are the VMs up? `vagrant up`): {detail}")
    return check_nodes(parse_ssh_config(p.stdout), "vagrant ssh-config")


# ----------------------------------------------------------- --nodes names
def named_nodes(spec: str, username: str = "root", key: str | None = None, port: int = 22) -> list[Node]:
    names = [s.strip() for s in spec.split(",")]
    if any(not s for s in names):
        raise InventoryError(f"--nodes {spec}: empty name in the list")
    if key is not None and not os.path.isfile(os.path.expanduser(key)):
        raise InventoryError(f"--ssh-private-key {key}: no such file")
    k = os.path.expanduser(key) if key else None
    return check_nodes([Node(name=s, host=s, port=port, user=username, key=k) for s in names], f"--nodes {spec}")


def loopback_nodes(count: int = 5) -> list[Node]:
    """n1..nN on distinct loopback addresses of this machine, driven by LocalRemote."""
    import getpass

    return [Node(name=f"n{i}", host=f"{LOOPBACK_BASE}.{10 + i}", user=getpass.getuser(), host_keys="off")
            for i in range(1, count + 1)]


# ----------------------------------------------------------------- entry
def load(nodes: str = "local", nodes_file: str | None = None, username: str = "root",
         ssh_private_key: str | None = None, node_count: int = 5, ssh_port: int = 22,
         state_dir: str | None = None, connect: bool = True, warn: Callable[[str], None] | None = None) -> Inventory:
    """The inventory the options describe. connect: reach every SSH node now, so a bad host or
    key fails here with its one-line RemoteError rather than in the middle of a run."""
    say = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    if not nodes_file and nodes in ("local", "embedded", "loopback") and node_count < 1:
        raise InventoryError(f"--node-count must be at least 1, not {node_count}")
    if nodes_file:
        inv = Inventory("file", load_nodes_file(nodes_file), _ssh_remote, source=os.path.abspath(nodes_file))
    elif nodes in ("local", "embedded"):
        inv = embedded_inventory(node_count, state_dir, say)
    elif nodes == "loopback":
        inv = loopback_inventory(node_count, "loopback asked for (--nodes loopback)")
    elif nodes == "vagrant":
        inv = Inventory("vagrant", vagrant_nodes(), _ssh_remote, control_ip=f"{VAGRANT_SUBNET}.1", source="vagrant ssh-config")
    else:
        inv = Inventory("names", named_nodes(nodes, username, ssh_private_key, ssh_port), _ssh_remote, source=f"--nodes {nodes}")
    if connect and inv.kind != "loopback":
        try:
            inv.connect()
        except BaseException:
            inv.close()
            raise
    return inv


def resolve(args: Any, connect: bool = True) -> Inventory:
    """load() from parsed CLI options (--nodes, --nodes-file, --username, --ssh-private-key,
    --node-count; --ssh-port and --state-dir if the parser has them)."""
    return load(nodes=getattr(args, "nodes", "local") or "local", nodes_file=getattr(args, "nodes_file", None),
                username=getattr(args, "username", "root") or "root",
                ssh_private_key=getattr(args, "ssh_private_key", None), node_count=getattr(args, "node_count", 5),
                ssh_port=getattr(args, "ssh_port", 22), state_dir=getattr(args, "state_dir", None), connect=connect)


def loopback_inventory(count: int, why: str) -> Inventory:
    return Inventory("loopback", loopback_nodes(count), _local_remote, can_partition=False,
                     why_not_partition=f"no network namespaces: {why}", control_ip="127.0.0.1",
                     source="loopback addresses on this machine")


def embedded_inventory(count: int = 5, state_dir: str | None = None,
                       warn: Callable[[str], None] | None = None, built_by: str = "cli") -> Inventory:
    """The embedded cluster, built or repaired as needed; the loopback fallback if it cannot be."""
    from harness.embedded import DEFAULT_STATE_DIR, EmbeddedCluster, EmbeddedError, EmbeddedUnavailable

    c = EmbeddedCluster(state_dir or DEFAULT_STATE_DIR)
    try:
        nodes = c.up(count, built_by=built_by)
    except EmbeddedUnavailable as e:
        if warn:
            warn(f"{e}; using loopback addresses {LOOPBACK_BASE}.11-{10 + count} instead (no partitions)")
        return loopback_inventory(count, str(e))
    except EmbeddedError as e:
        raise InventoryError(f"--nodes local: {e}") from None
    return Inventory("embedded", nodes, _ssh_remote, control_ip=c.control_ip(),
                     source=f"embedded cluster in {c.state_dir}")
