"""The database under test, behind one interface: the reference server or a real etcd binary.

setup installs and starts a fresh cluster on the nodes; start, kill (SIGKILL), pause (SIGSTOP),
resume (SIGCONT) and wipe act on one node through its Remote; collect copies logs and data into
the run directory. Every node gets its own directory under `base_dir/nodes/<name>` (the embedded
cluster shares one filesystem, VMs each have theirs). Calls are synchronous (they are SSH round
trips); the runner calls them from worker threads.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import grpc

from harness.client import auth_refusal
from harness.inventory import Node
from server.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

log = logging.getLogger("etcdproof.db")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("ETCDPROOF_CACHE") or os.path.expanduser("~/.cache/etcdproof")


class DBError(Exception):
    """Setting up or driving the database failed; the message names the node and the problem."""


@dataclass
class DBConfig:
    base_dir: str = "/var/lib/etcdproof"
    nodes_dir: str = ""  # where node data and logs live (default base_dir/nodes); installs stay in base_dir
    client_port: int = 2379
    peer_port: int = 2380
    http_port: int = 2378  # the reference server's HTTP gateway (etcd serves it on the client port)
    token: str = "etcdproof"
    extra_flags: list[str] = field(default_factory=list)
    etcd_bin: str = "/usr/bin/etcd"
    heartbeat_ms: int = 100
    election_ms: int = 1000


class DB:
    """What both targets share: layout, flags, lifecycle over Remotes."""

    kind = "db"

    def __init__(self, nodes: list[Node], remotes: dict, cfg: DBConfig | None = None) -> None:
        self.nodes = nodes
        self.remotes = remotes
        self.cfg = cfg or DBConfig()
        # Hooks for faults that must be in place whenever a server starts (nemesis/clock.py,
        # nemesis/lostwrites.py, nemesis/member.py); all empty by default, so a plain run is unchanged.
        # start_hooks run before every start; the environment they return is the server's extra env.
        self.start_hooks: list[Callable[[Node], dict[str, str] | None]] = []
        self.data_dirs: dict[str, str] = {}  # node name -> data dir instead of node_dir/data
        self.members: list[Node] | None = None  # who --initial-cluster names, when not every node

    # ------------------------------------------------------------ layout
    def node_dir(self, n: Node) -> str:
        return f"{self.cfg.nodes_dir or self.cfg.base_dir + '/nodes'}/{n.name}"

    def data_dir(self, n: Node) -> str:
        return self.data_dirs.get(n.name) or f"{self.node_dir(n)}/data"

    def log_file(self, n: Node) -> str:
        return f"{self.node_dir(n)}/server.log"

    def pid_file(self, n: Node) -> str:
        return f"{self.node_dir(n)}/server.pid"

    def client_endpoint(self, n: Node) -> str:
        return f"{n.ip}:{self.cfg.client_port}"

    def peer_url(self, n: Node) -> str:
        return f"http://{n.ip}:{self.cfg.peer_port}"

    def initial_cluster(self) -> str:
        return ",".join(f"{n.name}={self.peer_url(n)}" for n in (self.members or self.nodes))

    def flags(self, n: Node, state: str = "new") -> list[str]:
        client = f"http://{n.ip}:{self.cfg.client_port}"
        return [
            f"--name={n.name}",
            f"--data-dir={self.data_dir(n)}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={self.peer_url(n)}",
            f"--initial-advertise-peer-urls={self.peer_url(n)}",
            f"--initial-cluster={self.initial_cluster()}",
            f"--initial-cluster-state={state}",
            f"--initial-cluster-token={self.cfg.token}",
            f"--heartbeat-interval={self.cfg.heartbeat_ms}",
            f"--election-timeout={self.cfg.election_ms}",
            *self.cfg.extra_flags,
        ]

    def command(self, n: Node, state: str = "new") -> list[str]:
        raise NotImplementedError

    # --------------------------------------------------------- lifecycle
    def install(self, n: Node) -> None:
        """Put the server's binary on the node (subclasses)."""

    def version(self, n: Node) -> str:
        return "unknown"

    def setup(self) -> None:
        """Install everywhere, wipe, start a fresh cluster, wait until it serves."""
        for n in self.nodes:
            self.install(n)
        for n in self.nodes:
            self.kill(n)
            self.wipe(n)
        for n in self.nodes:
            self.start(n)
        self.wait_healthy(60.0)

    def start(self, n: Node, state: str = "new") -> int:
        r = self.remotes[n.name]
        r.run(f"mkdir -p {shlex.quote(self.node_dir(n))}", timeout=20)
        env: dict[str, str] = {}
        for hook in self.start_hooks:
            env.update(hook(n) or {})
        try:
            return r.start_daemon(self.command(n, state), logfile=self.log_file(n), pidfile=self.pid_file(n),
                                  env=env or None)
        except Exception as e:
            raise DBError(f"{n.name}: cannot start the {self.kind} server: {e}") from e

    def running(self, n: Node) -> bool:
        return self.remotes[n.name].daemon_pid(self.pid_file(n)) is not None

    def kill(self, n: Node) -> bool:
        """SIGKILL (a crash); also resumes it first so a paused process dies at once."""
        r = self.remotes[n.name]
        r.signal_daemon(self.pid_file(n), signal.SIGCONT)
        killed = r.signal_daemon(self.pid_file(n), signal.SIGKILL)
        for _ in range(50):
            if r.daemon_pid(self.pid_file(n)) is None:
                break
            time.sleep(0.1)
        return killed

    def pause(self, n: Node) -> bool:
        return self.remotes[n.name].signal_daemon(self.pid_file(n), signal.SIGSTOP)

    def resume(self, n: Node) -> bool:
        return self.remotes[n.name].signal_daemon(self.pid_file(n), signal.SIGCONT)

    def wipe(self, n: Node) -> None:
        self.remotes[n.name].run(f"rm -rf {shlex.quote(self.data_dir(n))}", timeout=60)

    def healthy(self, n: Node, timeout: float = 2.0) -> bool:
        """The member knows a leader and serves a linearizable read (it has caught up enough to
        confirm the leader's commit index), as clients will need."""
        try:
            with grpc.insecure_channel(self.client_endpoint(n)) as ch:
                st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=timeout)
                if st.leader == 0:
                    return False
                try:
                    rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"etcdproof/health"), timeout=timeout)
                except grpc.RpcError as e:
                    if not auth_refusal(e):  # --auth: refused after its ReadIndex round is served
                        raise
                return True
        except grpc.RpcError:
            return False

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.nodes)
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if not self.healthy(n)]
            if pending:
                time.sleep(0.3)
        if pending:
            tails = "; ".join(f"{n.name}: {self.tail_log(n)}" for n in pending)
            raise DBError(f"{self.kind} cluster not healthy after {timeout:.0f}s on {', '.join(n.name for n in pending)} ({tails})")

    def leader(self) -> Node | None:
        """The member the others agree leads, asked of the cluster."""
        ids: dict[int, Node] = {}
        leads: set[int] = set()
        for n in self.nodes:
            try:
                with grpc.insecure_channel(self.client_endpoint(n)) as ch:
                    st = rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1.0)
                ids[st.header.member_id] = n
                if st.leader:
                    leads.add(st.leader)
            except grpc.RpcError:
                continue
        if len(leads) == 1:
            return ids.get(next(iter(leads)))
        return None

    def tail_log(self, n: Node, lines: int = 3) -> str:
        try:
            out = self.remotes[n.name].run(f"tail -n {lines} {shlex.quote(self.log_file(n))}", timeout=10, check=False).out
            return " | ".join(out.strip().splitlines())[-400:]
        except Exception as e:  # noqa: BLE001 - a log tail is best effort
            return f"(no log: {e})"

    def collect(self, n: Node, dest: str) -> None:
        """Copy the node's log and a tarball of its data directory into dest."""
        os.makedirs(dest, exist_ok=True)
        r = self.remotes[n.name]
        try:
            r.download(self.log_file(n), os.path.join(dest, "server.log"))
        except Exception as e:  # noqa: BLE001
            with open(os.path.join(dest, "collect-errors.txt"), "a") as f:
                f.write(f"log: {e}\n")
        tar = f"{self.node_dir(n)}/data.tar.gz"
        try:
            parent, base = os.path.split(self.data_dir(n))  # named data/ in the tarball wherever it lives
            r.run(f"tar -czf {shlex.quote(tar)} -C {shlex.quote(parent)} --transform {shlex.quote(f's,^{base},data,')} "
                  f"{shlex.quote(base)}", timeout=120, check=False)
            r.download(tar, os.path.join(dest, "data.tar.gz"))
            r.run(f"rm -f {shlex.quote(tar)}", timeout=20, check=False)
        except Exception as e:  # noqa: BLE001
            with open(os.path.join(dest, "collect-errors.txt"), "a") as f:
                f.write(f"data: {e}\n")

    def teardown(self) -> None:
        for n in self.nodes:
            try:
                self.kill(n)
            except Exception as e:  # noqa: BLE001 - keep going: every node must be stopped
                log.warning("%s: kill at teardown failed: %s", n.name, e)


class EtcdDB(DB):
    """Real etcd: the binary already on each node (Debian etcd-server), or cfg.etcd_bin."""

    kind = "etcd"

    def install(self, n: Node) -> None:
        r = self.remotes[n.name].run(f"test -x {shlex.quote(self.cfg.etcd_bin)}", timeout=20, check=False)
        if r.exit != 0:
            raise DBError(f"{n.name}: no etcd binary at {self.cfg.etcd_bin} (install Debian etcd-server or pass --etcd-bin)")

    def version(self, n: Node) -> str:
        out = self.remotes[n.name].run(f"{shlex.quote(self.cfg.etcd_bin)} --version", timeout=20, check=False).out
        return out.splitlines()[0] if out else "unknown"

    def command(self, n: Node, state: str = "new") -> list[str]:
        return [self.cfg.etcd_bin, *self.flags(n, state)]


def source_hash() -> str:
    """A digest of everything the node install depends on (server code and packaging)."""
    h = hashlib.sha256()
    for root in ("server",):
        for dirpath, dirnames, filenames in os.walk(os.path.join(REPO, root)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in sorted(filenames):
                if name.endswith((".py", ".proto")) and not name.endswith(("_pb2.py", "_pb2_grpc.py")):
                    p = os.path.join(dirpath, name)
                    h.update(os.path.relpath(p, REPO).encode())
                    with open(p, "rb") as f:
                        h.update(f.read())
    for name in ("pyproject.toml", "setup.py"):
        with open(os.path.join(REPO, name), "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


PACKAGES = ("server", "harness", "workloads", "nemesis", "checker", "bench", "reports")
BUILD_FILES = ("pyproject.toml", "setup.py", "README.md")


def _source_copy(dest: str) -> None:
    """The files a wheel is built from, without caches, generated stubs or the venv, so the
    build writes nothing into the repository (and works from a read-only checkout)."""
    import shutil

    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py")
    for pkg in PACKAGES:
        if os.path.isdir(os.path.join(REPO, pkg)):
            shutil.copytree(os.path.join(REPO, pkg), os.path.join(dest, pkg), ignore=skip)
    for name in BUILD_FILES:
        shutil.copy2(os.path.join(REPO, name), dest)


def build_wheelhouse() -> str:
    """Wheels of this repo's server and its dependencies, built once per source version."""
    digest = source_hash()
    out = os.path.join(CACHE, f"wheelhouse-{digest}")
    if os.path.isdir(out) and any(f.startswith("etcdproof-") for f in os.listdir(out)):
        return out
    os.makedirs(CACHE, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        src, wheels = os.path.join(tmp, "src"), os.path.join(tmp, "wheels")
        os.makedirs(src)
        _source_copy(src)
        p = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", src, "-w", wheels],
                           capture_output=True, text=True)
        if p.returncode != 0:
            raise DBError(f"building the reference server's wheels failed: {p.stderr.strip()[-600:]}")
        try:
            os.replace(wheels, out)
        except OSError:  # another run built the same digest meanwhile
            if not os.path.isdir(out):
                raise
    return out


class ReferenceDB(DB):
    """etcdproof's reference server: this repo's wheel, installed in a venv on each node."""

    kind = "reference"

    def __init__(self, nodes: list[Node], remotes: dict, cfg: DBConfig | None = None) -> None:
        super().__init__(nodes, remotes, cfg)
        self.digest = source_hash()
        self._wheelhouse: str | None = None

    @property
    def install_dir(self) -> str:
        return f"{self.cfg.base_dir}/install/{self.digest}"

    def command(self, n: Node, state: str = "new") -> list[str]:
        http = f"--listen-client-http-urls=http://{n.ip}:{self.cfg.http_port}"
        return [f"{self.install_dir}/venv/bin/etcdproof-server", *self.flags(n, state), http]

    def version(self, n: Node) -> str:
        return f"etcdproof-server {self.digest}"

    def install(self, n: Node) -> None:
        r = self.remotes[n.name]
        venv = f"{self.install_dir}/venv"
        ok = r.run(f"test -x {venv}/bin/etcdproof-server && test -f {self.install_dir}/installed", timeout=20, check=False)
        if ok.exit == 0:
            return  # this version is there already (the embedded cluster shares one filesystem)
        if self._wheelhouse is None:
            self._wheelhouse = build_wheelhouse()
        with tempfile.TemporaryDirectory() as tmp:
            tgz = os.path.join(tmp, "wheelhouse.tar.gz")
            with tarfile.open(tgz, "w:gz") as t:
                t.add(self._wheelhouse, arcname="wheelhouse")
            r.run(f"mkdir -p {self.install_dir}", timeout=20)
            r.upload(tgz, f"{self.install_dir}/wheelhouse.tar.gz")
        cmds = (
            f"cd {self.install_dir} && tar -xzf wheelhouse.tar.gz && rm -rf venv && python3 -m venv venv && "
            f"venv/bin/pip install -q --no-index --find-links wheelhouse etcdproof && touch installed"
        )
        res = r.run(cmds, timeout=600, check=False)
        if res.exit != 0:
            raise DBError(f"{n.name}: installing the reference server failed: {res.err.strip()[-400:]}")


def make_db(kind: str, nodes: list[Node], remotes: dict, cfg: DBConfig | None = None) -> DB:
    if kind == "reference":
        return ReferenceDB(nodes, remotes, cfg)
    if kind == "etcd":
        return EtcdDB(nodes, remotes, cfg)
    raise DBError(f"unknown --db {kind!r}: reference or etcd")
