"""The embedded cluster: built, reused, repaired and removed without leaving anything behind;
the host's FORWARD policy handled and restored; the no-root fallback to loopback.

Lifecycle tests use their own small clusters (own prefix, state dir and subnet) so the session's
shared cluster is never disturbed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from harness.embedded import EmbeddedCluster, cannot_build, format_status
from harness.ssh import SSHRemote

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_root = pytest.mark.skipif(cannot_build() is not None, reason=f"embedded cluster: {cannot_build()}")


def leftovers(prefix: str, state_dir: str) -> list[str]:
    """Anything of a cluster still on the host: namespaces, links, sshd processes, rules."""
    found = [f"netns {x}" for x in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
             if x.startswith(prefix + "-")]
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout)
    found += [f"link {link['ifname']}" for link in links if link["ifname"].startswith(prefix + "-")]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if state_dir + "/" in cmd and "sshd" in cmd:
            found.append(f"process {pid}: {cmd.strip()}")
    rules = subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout
    found += [f"rule {r}" for r in rules.splitlines() if prefix + "-br" in r]
    return found


def ssh_ok(nodes) -> bool:
    for n in nodes:
        r = SSHRemote(n, retry_for=2)
        try:
            if r.run("ip -4 -o addr show dev eth0").out.find(f"inet {n.ip}/") < 0:
                return False
        finally:
            r.close()
    return True


@needs_root
def test_up_reuse_repair_down(tmp_path):
    state = str(tmp_path / "state")
    c = EmbeddedCluster(state, prefix="eptest")
    try:
        nodes = c.up(2, built_by="pytest")
        assert [n.name for n in nodes] == ["n1", "n2"]
        assert nodes[0].ip.endswith(".11") and nodes[1].ip.endswith(".12") and nodes[0].netns == "eptest-n1"
        st = c.status()
        assert st["state"] == "up" and st["built_by"] == "pytest"
        assert ssh_ok(nodes)
        pids = [x["sshd_pid"] for x in st["nodes"]]

        # reuse: nothing rebuilt
        t0 = time.monotonic()
        assert c.up(2) == nodes
        assert [x["sshd_pid"] for x in c.status()["nodes"]] == pids and time.monotonic() - t0 < 3

        # a smaller request reuses the cluster as it is; a larger one grows it
        assert c.up(1) == nodes[:1] and len(c.status()["nodes"]) == 2
        grown = c.up(3)
        assert grown[:2] == nodes and grown[2].ip.endswith(".13") and ssh_ok(grown[2:])
        assert [x["sshd_pid"] for x in c.status()["nodes"]][:2] == pids

        # repair a dead sshd
        os.kill(pids[1], signal.SIGKILL)
        deadline = time.monotonic() + 5
        while c.status()["state"] == "up" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.status()["state"] == "partial"
        c.up(3)
        st = c.status()
        assert st["state"] == "up" and st["nodes"][1]["sshd_pid"] not in (None, pids[1])

        # repair a namespace deleted under a running sshd (which keeps the old one alive)
        subprocess.run(["ip", "netns", "del", "eptest-n1"], check=True)
        assert c.status()["state"] == "partial"
        c.up(3)
        assert c.status()["state"] == "up" and ssh_ok(c.nodes())
        assert "n1" in format_status(c.status()) and "ssh ok" in format_status(c.status())

        # down removes everything it made, and only that
        removed = c.down()
        assert any(r.startswith("bridge eptest-br") for r in removed)
        assert leftovers("eptest", state) == []
        assert c.status()["state"] == "down" and c.down() == []
    finally:
        c.down()
    assert leftovers("eptest", state) == []


OUTER_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    from harness.embedded import EmbeddedCluster
    c = EmbeddedCluster(sys.argv[1], prefix="epfwd")
    out = {}
    try:
        c.up(2, built_by="pytest")
        st = c.load()
        a, b = c.members(st)
        out["rule"] = st["forward_rule"]
        out["reach"] = c._reach(a, b)
        subprocess.run(["iptables", "-w", "-D", *st["forward_rule"]], check=True)
        out["reach_without_rule"] = c._reach(a, b)
        c.up(2)  # repairs the missing rule
        out["reach_repaired"] = c._reach(a, b)
    finally:
        out["removed"] = c.down()
        out["forward_after"] = subprocess.run(["iptables", "-w", "-S", "FORWARD"], capture_output=True, text=True).stdout
    print(json.dumps(out))
""")


@needs_root
def test_forward_drop_policy_is_handled_and_undone(tmp_path):
    """A host whose FORWARD policy is DROP with br_netfilter on (as Docker leaves it): played by
    an outer namespace, so this machine's own firewall is never touched."""
    outer = "epfwd-outer"
    subprocess.run(["ip", "netns", "add", outer], check=True)
    try:
        inside = ["nsenter", f"--net=/run/netns/{outer}"]
        nf = subprocess.run([*inside, "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables"], capture_output=True, text=True)
        if nf.stdout.strip() != "1":
            pytest.skip("br_netfilter is not active in a fresh namespace here")
        subprocess.run([*inside, "iptables", "-w", "-P", "FORWARD", "DROP"], check=True)
        p = subprocess.run([*inside, sys.executable, "-c", OUTER_SCRIPT, str(tmp_path / "state")],
                           capture_output=True, text=True, cwd=REPO, timeout=120,
                           env={**os.environ, "PYTHONPATH": REPO})
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout)
        assert out["rule"] == ["FORWARD", "-i", "epfwd-br", "-o", "epfwd-br", "-m", "comment", "--comment",
                               "etcdproof-embedded", "-j", "ACCEPT"]
        assert out["reach"] is True
        assert out["reach_without_rule"] is False  # the policy really drops bridged frames
        assert out["reach_repaired"] is True
        assert out["forward_after"].splitlines() == ["-P FORWARD DROP"]  # our rule gone, the policy left as it was
        assert any(r.startswith("iptables FORWARD") for r in out["removed"])
    finally:
        subprocess.run(["ip", "netns", "del", outer], check=False)
    assert leftovers("epfwd", str(tmp_path / "state")) == []


def run_as_nobody(code: str) -> subprocess.CompletedProcess:
    """Python (the system's: the venv lives in root's home) as user nobody, with this repo importable."""
    return subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code],
                          capture_output=True, text=True, cwd="/tmp", timeout=60,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": REPO, "HOME": "/tmp"})


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"), reason="needs root to become nobody")
def test_without_root_local_falls_back_to_loopback():
    p = run_as_nobody("from harness.inventory import load\n"
                      "inv = load('local')\n"
                      "print(inv.kind, inv.can_partition, ' '.join(n.ip for n in inv.nodes))\n"
                      "print(inv.remotes['n3'].run('id -un').out.strip())")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["loopback False 127.0.0.11 127.0.0.12 127.0.0.13 127.0.0.14 127.0.0.15", "nobody"]
    assert p.stderr.splitlines() == [
        "cannot build the embedded cluster: not root (network namespaces, veths and sshd on port 22 need root); "
        "using loopback addresses 127.0.0.11-15 instead (no partitions)"]
    cli = run_as_nobody("import sys; from harness.cli import main; sys.argv = ['etcdproof', 'cluster', 'up']; main()")
    assert cli.returncode == 2
    assert cli.stderr.splitlines() == ["etcdproof cluster up: cannot build the embedded cluster: not root "
                                       "(network namespaces, veths and sshd on port 22 need root)"]


@pytest.mark.parametrize("text, expect", [
    ("{half", "unreadable"),
    ("{}", "not a cluster state written by etcdproof"),
    ('{"prefix": "x", "subnet": "s", "bridge": "b", "control_ip": "c", "nodes": 5}', "not a cluster state"),
])
def test_a_broken_state_file_is_one_line(tmp_path, text, expect):
    (tmp_path / "cluster.json").write_text(text)
    p = subprocess.run([sys.executable, "-m", "harness.cli", "cluster", "status", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"etcdproof cluster status: {tmp_path}/cluster.json: "), p.stderr
    assert expect in lines[0]


def test_cluster_status_cli(embedded_cluster):
    p = subprocess.run([sys.executable, "-m", "harness.cli", "cluster", "status"], capture_output=True,
                       text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("embedded cluster: up  subnet 10.231.")
    for n in embedded_cluster.nodes:
        assert any(line.split()[:2] == [n.name, n.ip] and line.endswith("ssh ok") for line in lines)
