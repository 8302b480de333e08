"""The embedded cluster: nodes n1..nN as network namespaces on this machine, each with its own sshd.

Why this shape: the harness drives every node over SSH and partitions them with iptables, so the
embedded nodes must be real network endpoints with their own address, their own netfilter tables
and their own sshd; then the code path is the one used on VMs. What is built (all names start with
the prefix, default "etcdproof", so nothing collides with others' namespaces or links):

    host:  bridge <prefix>-br with <subnet>.1/24 (the control node's address)
    node i: namespace <prefix>-n<i>, a veth pair <prefix>-v<i> (host side, on the bridge) /
            eth0 (inside) with <subnet>.<10+i>/24, lo up, and
            `ip netns exec <ns> sshd -f <state>/n<i>/sshd_config` on <subnet>.<10+i>:22 with a
            generated host key (pinned in <state>/known_hosts) and the generated control key
            (<state>/control_key) as the only authorized key.

The subnet is the first 10.231.x.0/24 that overlaps no existing route or address. If the host
passes bridged frames through iptables (br_netfilter) and its FORWARD policy is not ACCEPT, one
ACCEPT rule for traffic within the bridge is added and removed again by `down`.

Everything created is recorded in <state>/cluster.json as it is created, so `up` can reuse a
healthy cluster and repair a partial one, and `down` removes exactly what was recorded. The nodes
share this machine's filesystem; the DB layer gives each node its own directory.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from harness.inventory import Node

DEFAULT_STATE_DIR = os.environ.get("ETCDPROOF_EMBEDDED_DIR") or "/var/lib/etcdproof/embedded"
DEFAULT_PREFIX = "etcdproof"
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
FORWARD_COMMENT = "etcdproof-embedded"
FIRST_HOST = 11  # node i gets <subnet>.<10+i>
STATE_KEYS = frozenset({"prefix", "subnet", "bridge", "control_ip", "nodes"})  # of cluster.json, as plan() writes it


class EmbeddedUnavailable(Exception):
    """This machine cannot host the embedded cluster (no root, no `ip netns`); one line why."""


class EmbeddedError(Exception):
    """Building or checking the embedded cluster failed; one line naming the node and the step."""


@dataclass(frozen=True)
class EmbeddedNode:
    name: str
    netns: str
    veth: str
    ip: str


def sh(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """A host command; EmbeddedError with its stderr when it fails and check is set."""
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise EmbeddedError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise EmbeddedError(f"timed out after {timeout:g}s: {' '.join(argv)}") from None
    if check and p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        raise EmbeddedError(f"{' '.join(argv)} failed: {last}")
    return p


def cannot_build() -> str | None:
    """Why the embedded cluster cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "not root (network namespaces, veths and sshd on port 22 need root)"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    if sh("ip", "netns", "list", check=False).returncode != 0:
        return "`ip netns` does not work here"
    if not os.path.exists(SSHD):
        return "no sshd (Debian package openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "no ssh-keygen (Debian package openssh-client)"
    return None


def used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this host routes or has an address in (default routes excepted)."""
    nets: list[ipaddress.IPv4Network] = []
    routes = json.loads(sh("ip", "-j", "-4", "route", "show", "table", "all").stdout or "[]")
    for r in routes:
        dst = r.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                nets.append(ipaddress.ip_network(dst if "/" in dst else dst + "/32", strict=False))
    for link in json.loads(sh("ip", "-j", "-4", "addr", "show").stdout or "[]"):
        for a in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    return nets


def pick_subnet(used: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first 10.231.x.0/24 overlapping none of used."""
    for x in range(256):
        cand = ipaddress.ip_network(f"10.231.{x}.0/24")
        if not any(cand.overlaps(u) for u in used):
            return cand
    raise EmbeddedError("no free 10.231.x.0/24 subnet for the embedded cluster")


def mac_for(ip: str) -> str:
    """A fixed, locally administered MAC per address: a node rebuilt by a repair keeps its MAC,
    so the neighbours' ARP caches stay right (a new random MAC would blackhole it for a while)."""
    return "02:e7:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


def ssh_banner(ip: str, port: int = 22, timeout: float = 1.0) -> bool:
    """Whether an SSH server answers at ip:port (reads its banner)."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4) == b"SSH-"
    except OSError:
        return False


def same_netns(pid: int, netns: str) -> bool:
    try:
        a, b = os.stat(f"/proc/{pid}/ns/net"), os.stat(f"/run/netns/{netns}")
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def proc_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class EmbeddedCluster:
    """One embedded cluster, described by its state directory."""

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix.replace("-", "").isalnum() or len(prefix) > 9:
            raise EmbeddedError(f"prefix {prefix!r}: up to 9 letters, digits or dashes (link names are 15 chars)")
        self.state_dir = os.path.abspath(state_dir)
        self.prefix = prefix

    # ------------------------------------------------------------------ files
    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, "cluster.json")

    @property
    def control_key(self) -> str:
        return os.path.join(self.state_dir, "control_key")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.state_dir, "known_hosts")

    def node_dir(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def load(self) -> dict | None:
        try:
            with open(self.state_file) as f:
                st = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise EmbeddedError(f"{self.state_file}: unreadable ({e})") from None
        if not isinstance(st, dict) or not STATE_KEYS <= st.keys() or not isinstance(st["nodes"], list):
            raise EmbeddedError(f"{self.state_file}: not a cluster state written by etcdproof "
                                f"(it needs {', '.join(sorted(STATE_KEYS))})")
        return st

    def save(self, st: dict) -> None:
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(st, f, indent=2)
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def locked(self):
        """Serialize up/down across processes (test sessions and the CLI may race)."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(self.state_dir, "lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ model
    def members(self, st: dict) -> list[EmbeddedNode]:
        return [EmbeddedNode(**m) for m in st["nodes"]]

    def plan(self, n: int) -> dict:
        subnet = pick_subnet(used_networks())
        base = subnet.network_address
        p = self.prefix
        return {
            "version": 1,
            "prefix": p,
            "subnet": str(subnet),
            "bridge": f"{p}-br",
            "control_ip": str(base + 1),
            "nodes": [
                {"name": f"n{i}", "netns": f"{p}-n{i}", "veth": f"{p}-v{i}", "ip": str(base + FIRST_HOST - 1 + i)}
                for i in range(1, n + 1)
            ],
            "forward_rule": None,
            "built_by": None,
        }

    def nodes(self, st: dict | None = None) -> list[Node]:
        """The cluster's nodes as the harness addresses them (SSH as root, host keys pinned)."""
        st = st or self.load()
        if st is None:
            raise EmbeddedError(f"no embedded cluster in {self.state_dir} (run `etcdproof cluster up`)")
        return [
            Node(name=m.name, host=m.ip, port=22, user="root", key=self.control_key, address=m.ip,
                 netns=m.netns, known_hosts=self.known_hosts, host_keys="pin")
            for m in self.members(st)
        ]

    # ------------------------------------------------------------------ build
    def up(self, n: int = 5, built_by: str = "cli") -> list[Node]:
        """Build the cluster, or reuse and repair the existing one; return its first n nodes.

        A cluster with more nodes is reused as it is (others may be using it); one with fewer
        is grown. `down` first to shrink it."""
        why = cannot_build()
        if why:
            raise EmbeddedUnavailable(f"cannot build the embedded cluster: {why}")
        if not 1 <= n <= 200:
            raise EmbeddedError(f"cluster size {n}: must be 1..200")
        with self.locked():
            st = self.load()
            if st is None:
                st = self.plan(n)
                st["built_by"] = built_by
                self.save(st)
            elif len(st["nodes"]) < n:  # grow; never tear down what others may be using
                base = ipaddress.ip_network(st["subnet"]).network_address
                p = st["prefix"]
                st["nodes"] += [{"name": f"n{i}", "netns": f"{p}-n{i}", "veth": f"{p}-v{i}",
                                 "ip": str(base + FIRST_HOST - 1 + i)} for i in range(len(st["nodes"]) + 1, n + 1)]
                self.save(st)
            self._ensure_keys(st)
            self._ensure_bridge(st)
            for m in self.members(st):
                self._ensure_node(st, m)
            self._ensure_forwarding(st)
            for m in self.members(st):
                self._ensure_sshd(m)
            self._verify(st)
            self.save(st)
            return self.nodes(st)[:n]

    def _ensure_keys(self, st: dict) -> None:
        if not os.path.exists(self.control_key):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "etcdproof-control", "-f", self.control_key)
        lines = []
        for m in self.members(st):
            d = self.node_dir(m.name)
            os.makedirs(d, mode=0o700, exist_ok=True)
            hk = os.path.join(d, "ssh_host_ed25519_key")
            if not os.path.exists(hk):
                sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"etcdproof-{m.name}", "-f", hk)
            with open(hk + ".pub") as f:
                kind, b64 = f.read().split()[:2]
            lines.append(f"{m.ip} {kind} {b64}\n")
            self._write_sshd_config(m, hk)
        with open(self.known_hosts, "w") as f:
            f.writelines(lines)

    def _write_sshd_config(self, m: EmbeddedNode, host_key: str) -> None:
        d = self.node_dir(m.name)
        text = "\n".join([
            f"# generated by etcdproof for embedded node {m.name} (namespace {m.netns})",
            f"ListenAddress {m.ip}:22",
            f"HostKey {host_key}",
            f"PidFile {d}/sshd.pid",
            f"AuthorizedKeysFile {self.control_key}.pub",
            "PermitRootLogin prohibit-password",
            "AllowUsers root",  # the control key opens root's account only
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the key lives in our state dir, wherever the caller put it
            "UseDNS no",
            "PrintMotd no",
            "MaxSessions 100",
            "MaxStartups 100:30:200",
            "Subsystem sftp internal-sftp",
            # the nodes share this host's root account; bash skips ~/.bashrc for ssh commands
            # when it is not the first shell level, so the host's rc files shape no node command
            "SetEnv SHLVL=1",
            "",
        ])
        with open(os.path.join(d, "sshd_config"), "w") as f:
            f.write(text)

    def _ensure_bridge(self, st: dict) -> None:
        br, subnet = st["bridge"], ipaddress.ip_network(st["subnet"])
        if sh("ip", "link", "show", br, check=False).returncode != 0:
            sh("ip", "link", "add", br, "address", mac_for(st["control_ip"]), "type", "bridge")
        sh("ip", "addr", "replace", f"{st['control_ip']}/{subnet.prefixlen}", "dev", br)
        sh("ip", "link", "set", br, "up")

    def _ensure_node(self, st: dict, m: EmbeddedNode) -> None:
        prefixlen = ipaddress.ip_network(st["subnet"]).prefixlen
        if not os.path.exists(f"/run/netns/{m.netns}"):
            sh("ip", "netns", "add", m.netns)
        sh("ip", "-n", m.netns, "link", "set", "lo", "up")
        inside = sh("ip", "-n", m.netns, "link", "show", "eth0", check=False).returncode == 0
        outside = sh("ip", "link", "show", m.veth, check=False).returncode == 0
        if inside != outside or not inside:  # a half pair cannot be fixed: make a new one
            if outside:
                sh("ip", "link", "del", m.veth)
            if inside:
                sh("ip", "-n", m.netns, "link", "del", "eth0")
            sh("ip", "link", "add", m.veth, "type", "veth", "peer", "name", "eth0", "netns", m.netns,
               "address", mac_for(m.ip))
        sh("ip", "link", "set", m.veth, "master", st["bridge"], "up")
        sh("ip", "-n", m.netns, "addr", "replace", f"{m.ip}/{prefixlen}", "dev", "eth0")
        sh("ip", "-n", m.netns, "link", "set", "eth0", "up")

    def sshd_pid(self, m: EmbeddedNode) -> int | None:
        """The node's sshd if it runs, from our config, in the node's namespace."""
        pid = self._our_sshd(m)
        return pid if pid is not None and same_netns(pid, m.netns) else None

    def _our_sshd(self, m: EmbeddedNode) -> int | None:
        """Our sshd for m if it lives, in whatever namespace (its own may have been deleted under it)."""
        try:
            with open(os.path.join(self.node_dir(m.name), "sshd.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_our_sshd(m, pid) else None

    def _is_our_sshd(self, m: EmbeddedNode, pid: int) -> bool:
        # sshd retitles itself ("sshd: /usr/sbin/sshd -f <conf> ... [listener]"): match the text
        conf = os.path.join(self.node_dir(m.name), "sshd_config")
        return proc_alive(pid) and f"-f {conf} " in " ".join(proc_cmdline(pid)) + " "

    def _ensure_sshd(self, m: EmbeddedNode) -> None:
        if self.sshd_pid(m) is not None and ssh_banner(m.ip):
            return
        stray = self._our_sshd(m)
        if stray is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stray, signal.SIGKILL)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        d = self.node_dir(m.name)
        sh("ip", "netns", "exec", m.netns, SSHD, "-f", os.path.join(d, "sshd_config"), "-E", os.path.join(d, "sshd.log"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.sshd_pid(m) is not None and ssh_banner(m.ip, timeout=0.5):
                return
            time.sleep(0.02)
        raise EmbeddedError(f"{m.name}: sshd in {m.netns} does not answer on {m.ip}:22 (see {d}/sshd.log)")

    def _forward_rule(self, st: dict) -> list[str]:
        br = st["bridge"]
        return ["FORWARD", "-i", br, "-o", br, "-m", "comment", "--comment", FORWARD_COMMENT, "-j", "ACCEPT"]

    @staticmethod
    def bridged_frames_filtered() -> bool:
        """Whether bridged frames pass through the host's iptables (br_netfilter loaded and on)."""
        try:
            with open("/proc/sys/net/bridge/bridge-nf-call-iptables") as f:
                return f.read().strip() == "1"
        except OSError:
            return False

    def _ensure_forwarding(self, st: dict, force: bool = False) -> None:
        """If the host's FORWARD chain would drop traffic between our nodes, accept it, minimally."""
        rule = st.get("forward_rule")
        if rule:  # recorded: make sure it is still there
            if sh("iptables", "-w", "-C", *rule, check=False).returncode != 0:
                sh("iptables", "-w", "-I", rule[0], "1", *rule[1:])
            return
        if not self.bridged_frames_filtered() or shutil.which("iptables") is None:
            return
        policy = sh("iptables", "-w", "-S", "FORWARD", check=False).stdout.splitlines()[:1]
        if force or policy != ["-P FORWARD ACCEPT"]:
            rule = self._forward_rule(st)
            sh("iptables", "-w", "-I", rule[0], "1", *rule[1:])
            st["forward_rule"] = rule
            self.save(st)

    def _reach(self, a: EmbeddedNode, b: EmbeddedNode) -> bool:
        probe = f"exec 3<>/dev/tcp/{b.ip}/22 && head -c 4 <&3"
        p = sh("ip", "netns", "exec", a.netns, "timeout", "3", "bash", "-c", probe, check=False)
        return p.returncode == 0 and p.stdout == "SSH-"

    def _verify(self, st: dict) -> None:
        ms = self.members(st)
        for m in ms:
            if not ssh_banner(m.ip):
                raise EmbeddedError(f"{m.name}: the host cannot reach sshd at {m.ip}:22")
        if len(ms) < 2:
            return
        pairs = [(ms[i], ms[(i + 1) % len(ms)]) for i in range(len(ms))]
        bad = [(a, b) for a, b in pairs if not self._reach(a, b)]
        if bad and not st.get("forward_rule") and self.bridged_frames_filtered():
            self._ensure_forwarding(st, force=True)  # a FORWARD rule of the host drops our frames
            bad = [(a, b) for a, b in bad if not self._reach(a, b)]
        if bad:
            a, b = bad[0]
            raise EmbeddedError(f"{a.name} cannot reach {b.name} ({b.ip}:22) over bridge {st['bridge']} "
                                "(a host firewall drops bridged traffic?)")

    # --------------------------------------------------------------- teardown
    def down(self) -> list[str]:
        """Remove what `up` created (sshds and processes in the namespaces, namespaces, veths,
        the bridge, the FORWARD rule); return what was removed. Keys and configs stay."""
        if not os.path.exists(self.state_file):
            return []
        if os.geteuid() != 0:
            raise EmbeddedUnavailable("cannot tear down the embedded cluster: not root")
        with self.locked():
            st = self.load()
            return self._down(st) if st else []

    def _down(self, st: dict) -> list[str]:
        removed: list[str] = []
        for m in self.members(st):
            pids = set()
            if os.path.exists(f"/run/netns/{m.netns}"):
                out = sh("ip", "netns", "pids", m.netns, check=False).stdout
                pids |= {int(p) for p in out.split() if p.isdigit()}
            stray = self._our_sshd(m)
            if stray is not None:
                pids.add(stray)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if pids:
                removed.append(f"{m.name}: killed {len(pids)} process(es)")
            for pid in pids:
                self._wait_gone(pid)
            if os.path.exists(f"/run/netns/{m.netns}"):
                sh("ip", "netns", "del", m.netns)
                removed.append(f"netns {m.netns}")
            # the pair goes with the namespace, asynchronously: delete it if it is still there
            if sh("ip", "link", "show", m.veth, check=False).returncode == 0:
                if sh("ip", "link", "del", m.veth, check=False).returncode == 0:
                    removed.append(f"veth {m.veth}")
                deadline = time.monotonic() + 5
                while sh("ip", "link", "show", m.veth, check=False).returncode == 0:
                    if time.monotonic() > deadline:
                        raise EmbeddedError(f"{m.name}: veth {m.veth} does not go away")
                    time.sleep(0.02)
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.node_dir(m.name), "sshd.pid"))
        if sh("ip", "link", "show", st["bridge"], check=False).returncode == 0:
            sh("ip", "link", "del", st["bridge"])
            removed.append(f"bridge {st['bridge']}")
        rule = st.get("forward_rule")
        if rule:
            while sh("iptables", "-w", "-C", *rule, check=False).returncode == 0:
                sh("iptables", "-w", "-D", *rule)
            removed.append("iptables " + " ".join(rule))
        os.remove(self.state_file)
        return removed

    @staticmethod
    def _wait_gone(pid: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while proc_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)

    # ----------------------------------------------------------------- status
    def status(self) -> dict:
        """What exists now: "up" (all healthy), "partial" or "down", with per-node details."""
        st = self.load()
        if st is None:
            return {"state": "down", "state_dir": self.state_dir, "nodes": []}
        bridge = sh("ip", "link", "show", st["bridge"], check=False).returncode == 0
        nodes = []
        for m in self.members(st):
            ns = os.path.exists(f"/run/netns/{m.netns}")
            veth = sh("ip", "link", "show", m.veth, check=False).returncode == 0
            pid = self.sshd_pid(m)
            nodes.append({"name": m.name, "ip": m.ip, "netns": m.netns if ns else None,
                          "veth": veth, "sshd_pid": pid, "ssh": bool(pid) and ssh_banner(m.ip)})
        healthy = bridge and all(x["netns"] and x["veth"] and x["ssh"] for x in nodes)
        return {"state": "up" if healthy else "partial", "state_dir": self.state_dir,
                "subnet": st["subnet"], "bridge": st["bridge"] if bridge else None,
                "control_ip": st["control_ip"], "forward_rule": st.get("forward_rule"),
                "built_by": st.get("built_by"), "nodes": nodes}

    def control_ip(self) -> str | None:
        st = self.load()
        return st["control_ip"] if st else None


def up(n: int = 5, state_dir: str = DEFAULT_STATE_DIR, built_by: str = "cli") -> list[Node]:
    return EmbeddedCluster(state_dir).up(n, built_by=built_by)


def down(state_dir: str = DEFAULT_STATE_DIR) -> list[str]:
    return EmbeddedCluster(state_dir).down()


def status(state_dir: str = DEFAULT_STATE_DIR) -> dict:
    return EmbeddedCluster(state_dir).status()


def format_status(s: dict) -> str:
    if s["state"] == "down":
        return f"embedded cluster: down ({s['state_dir']})"
    lines = [f"embedded cluster: {s['state']}  subnet {s['subnet']}  bridge {s['bridge'] or '(missing)'}  "
             f"control {s['control_ip']}  state {s['state_dir']}"]
    if s.get("forward_rule"):
        lines.append("  host iptables: " + " ".join(s["forward_rule"]))
    for x in s["nodes"]:
        lines.append(f"  {x['name']}  {x['ip']:<15} netns {x['netns'] or '(missing)'}  "
                     f"veth {'ok' if x['veth'] else 'missing'}  sshd {x['sshd_pid'] or '-'}  "
                     f"ssh {'ok' if x['ssh'] else 'no answer'}")
    return "\n".join(lines)


def cluster_main(argv: list[str]) -> int:
    """`etcdproof cluster up|down|status`."""
    p = argparse.ArgumentParser(prog="etcdproof cluster", description="The embedded cluster of network namespaces.")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("-n", "--nodes", type=int, default=5, help="number of nodes for `up` (default 5)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"where keys and state live (default {DEFAULT_STATE_DIR})")
    args = p.parse_args(argv)
    c = EmbeddedCluster(args.state_dir)
    try:
        if args.action == "up":
            c.up(args.nodes)
            print(format_status(c.status()))
        elif args.action == "down":
            removed = c.down()
            print("embedded cluster: removed " + ", ".join(removed) if removed else "embedded cluster: nothing to remove")
        else:
            s = c.status()
            print(format_status(s))
            return 0 if s["state"] == "up" else 1
    except (EmbeddedUnavailable, EmbeddedError) as e:
        print(f"etcdproof cluster {args.action}: {e}", file=sys.stderr)
        return 2
    return 0
