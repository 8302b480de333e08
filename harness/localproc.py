"""Local server processes on loopback: the reference server or a real etcd, started the same way.

Used by tests, benchmarks and the demo. Ports are picked free (never 2379/2380), data lives in a
directory the caller owns, and processes are killed with real signals.
"""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import grpc

from harness.client import auth_refusal
from server.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

ETCD_BIN = os.environ.get("ETCDPROOF_ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"
ETCDCTL_BIN = os.environ.get("ETCDPROOF_ETCDCTL_BIN") or shutil.which("etcdctl") or "/usr/bin/etcdctl"
_RESERVED = {2379, 2380}


# Listening ports come from below the kernel's ephemeral range: a port picked from that range
# (bind to port 0) can be taken as the source port of an outgoing connection (a peer dialling
# another member, a client) between the pick and the server's own bind, and the server then
# dies with "address already in use". Below the range only another listener can collide, and
# the random pick plus the ports this process already handed out make that unlikely.
# 20000-29000 belongs to the pytest sessions' node servers (harness.pytest_plugin.session_ports).
_PORT_FLOOR, _PORT_TOP = 10_000, 20_000
_handed_out: deque[int] = deque(maxlen=3_000)  # recent picks: a long session must not run dry
_pick = random.Random()


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _kernel_pick(host: str) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _RESERVED:
            return port


def free_port(host: str = "127.0.0.1") -> int:
    """A port on host nothing listens on, outside the ephemeral range, not 2379/2380, and not
    handed out recently by this process."""
    top = min(_PORT_TOP, _ephemeral_floor())
    if top <= _PORT_FLOOR + 1_000:  # an unusual ephemeral range: the kernel's pick is all there is
        return _kernel_pick(host)
    for _ in range(1_000):
        port = _pick.randrange(_PORT_FLOOR, top)
        if port in _RESERVED or port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    raise RuntimeError(f"no free port on {host} in {_PORT_FLOOR}..{top}")


def have_etcd() -> bool:
    return os.path.exists(ETCD_BIN) and os.access(ETCD_BIN, os.X_OK)


@dataclass
class LocalMember:
    kind: str  # "reference" or "etcd"
    workdir: str
    name: str = "default"
    host: str = "127.0.0.1"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    initial_cluster: str = ""  # name=peerURL,... ; empty: a cluster of this member alone
    initial_cluster_state: str = "new"
    proc: subprocess.Popen | None = None

    @property
    def data_dir(self) -> str:
        return os.path.join(self.workdir, f"{self.name}.etcd")

    @property
    def log_path(self) -> str:
        return os.path.join(self.workdir, f"{self.name}.log")

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    @property
    def http_url(self) -> str:
        """Where the HTTP/JSON gateway is: the client port for etcd, its own port for ours."""
        port = self.client_port if self.kind == "etcd" else self.http_port
        return f"http://{self.host}:{port}"

    def command(self) -> list[str]:
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        flags = [
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={peer}'}",
            f"--initial-cluster-state={self.initial_cluster_state}",
            "--initial-cluster-token=etcdproof",
        ]
        if self.kind == "reference":
            flags.append(f"--listen-client-http-urls=http://{self.host}:{self.http_port}")
            return [sys.executable, "-m", "server", *flags, *self.extra]
        if self.kind == "etcd":
            return [ETCD_BIN, *flags, *self.extra]
        raise ValueError(f"unknown server kind {self.kind!r}")

    def start(self, wait: bool = True, timeout: float = 20.0) -> "LocalMember":
        os.makedirs(self.workdir, exist_ok=True)
        logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("ETCD_UNSUPPORTED_ARCH", "")
        self.proc = subprocess.Popen(
            self.command(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
        logf.close()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode}; log: {self.tail_log()}")
            try:
                with grpc.insecure_channel(self.endpoint) as ch:
                    rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=1)
                    rpc_pb2_grpc.KVStub(ch).Range(rpc_pb2.RangeRequest(key=b"health"), timeout=2)
                return
            except grpc.RpcError as e:
                if auth_refusal(e):  # auth is on: the read got through raft and was refused
                    return
                last = e
                time.sleep(0.1)
        raise TimeoutError(f"{self.kind} server on {self.endpoint} not ready after {timeout}s: {last}")

    def tail_log(self, n: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.proc is not None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def restart(self, wait: bool = True) -> "LocalMember":
        self.stop()
        return self.start(wait=wait)

    def etcdctl(self, *args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess:
        env = dict(os.environ, ETCDCTL_API="3")
        mine = [] if any(a.startswith("--endpoints") for a in args) else [f"--endpoints={self.endpoint}"]
        return subprocess.run(
            [ETCDCTL_BIN, *mine, *args],
            input=input, capture_output=True, text=True, timeout=timeout, env=env,
        )


@dataclass
class LocalCluster:
    """N members of one kind on loopback, bootstrapped together like an etcd cluster."""

    kind: str
    workdir: str
    size: int = 3
    extra: list[str] = field(default_factory=list)
    members: list[LocalMember] = field(default_factory=list)

    def start(self, timeout: float = 30.0) -> "LocalCluster":
        self.members = [
            LocalMember(self.kind, os.path.join(self.workdir, f"m{i + 1}"), name=f"m{i + 1}", extra=list(self.extra))
            for i in range(self.size)
        ]
        ic = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for m in self.members:
                m.initial_cluster = ic
                m.start(wait=False)
            for m in self.members:
                m.wait_ready(timeout)
        except BaseException:
            self.stop()  # a member that failed (a port taken meanwhile) must not orphan the others
            raise
        return self

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def running(self) -> list[LocalMember]:
        return [m for m in self.members if m.proc is not None and m.proc.poll() is None]

    def status(self, m: LocalMember, timeout: float = 2.0) -> rpc_pb2.StatusResponse | None:
        try:
            with grpc.insecure_channel(m.endpoint) as ch:
                return rpc_pb2_grpc.MaintenanceStub(ch).Status(rpc_pb2.StatusRequest(), timeout=timeout)
        except grpc.RpcError:
            return None

    def leader(self, timeout: float = 15.0) -> LocalMember:
        """The member the running members agree leads (waits for one)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leads = set()
            by_id = {}
            for m in self.running():
                st = self.status(m)
                if st is None:
                    continue
                by_id[st.header.member_id] = m
                leads.add(st.leader)
            if len(leads) == 1:
                lead = leads.pop()
                if lead in by_id:
                    return by_id[lead]
            time.sleep(0.2)
        raise TimeoutError(f"no agreed leader among {[m.name for m in self.running()]}")

    def add_member(self, name: str, learner: bool = False, timeout: float = 30.0) -> LocalMember:
        """`etcdctl member add`, then start the new member joining the existing cluster."""
        m = LocalMember(self.kind, os.path.join(self.workdir, name), name=name, extra=list(self.extra))
        args = ["member", "add", name, f"--peer-urls={m.peer_url}"] + (["--learner"] if learner else [])
        r = self.running()[0].etcdctl(*args)
        if r.returncode != 0:
            raise RuntimeError(f"member add failed: {r.stderr.strip()}")
        ic = next((ln.split("=", 1)[1].strip('"') for ln in r.stdout.splitlines()
                   if ln.startswith("ETCD_INITIAL_CLUSTER=")), "")
        m.initial_cluster = ic
        m.initial_cluster_state = "existing"
        self.members.append(m)
        m.start(wait=False)
        if not learner:
            m.wait_ready(timeout)
        return m

    def stop(self) -> None:
        for m in self.members:
            try:
                m.stop(timeout=5)
            except Exception:  # noqa: BLE001 - keep stopping the rest
                m.kill()
