"""Ctrl-C while several faults are applied at once: a real `etcdproof test` process runs with clock,
disk, net, lost-writes, pause and partition faults, three at a time; once its history shows at least
two fault classes applied together, it gets SIGINT. It must exit 130 having left no rule, no
qdisc, no throttle cgroup, no paused process, no mount, no helper process, no faked clock and no
server of its own behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.pytest_plugin import session_ports
from nemesis_support import leftovers

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(400)
FAULTS = "clock,disk,net,lost-writes,pause,partition"


def active_faults(history: Path) -> set[str]:
    """Fault classes applied and not yet stopped, per the history so far."""
    active: set[str] = set()
    if not history.exists():
        return active
    for line in history.read_text().splitlines():
        try:
            op = json.loads(line)
        except ValueError:
            continue  # a line being written
        if op["process"] != "nemesis" or op["type"] == "invoke":
            continue
        name = op["f"].split("-", 1)[1]
        if op["f"].startswith("start-") and op["type"] == "ok":
            active.add(name)
        elif op["f"].startswith("stop-"):
            active.discard(name)
    return active


def test_sigint_with_several_faults_applied_leaves_nothing(request, etcdproof_inventory, tmp_path) -> None:
    inv = etcdproof_inventory
    if not inv.can_partition:
        pytest.skip(f"the network faults need the embedded cluster or VMs: {inv.why_not_partition}")
    client, peer, _ = session_ports(request.config)
    client, peer = client + 3, peer + 3
    base = tmp_path / "base"
    base.mkdir()
    for shared in ("install", "tools"):  # installs stay shared; node directories are this test's own
        os.makedirs(f"/var/lib/etcdproof/{shared}", exist_ok=True)
        (base / shared).symlink_to(f"/var/lib/etcdproof/{shared}")
    store = tmp_path / "store"
    args = [sys.executable, "-m", "harness.cli", "test", "-w", "register", "--nemesis", FAULTS,
            "--nemesis-interval", "2", "--nemesis-concurrent", "3", "--time-limit", "150", "--db", "reference",
            "--no-progress", "--store", str(store), "--base-dir", str(base), "--client-port", str(client),
            "--peer-port", str(peer), "--node-count", "3", "--nodes", request.config.getoption("--nodes")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 200
        while not (store / "latest").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        run = (store / "latest").resolve()
        while time.monotonic() < deadline and proc.poll() is None:
            seen = active_faults(run / "history.jsonl")
            if len(seen) >= 2:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"etcdproof test exited early with {proc.returncode}: {proc.stderr.read()[-2000:]}"
        assert len(seen) >= 2, f"never two faults at once: {seen}"
        nodes = inv.nodes[:3]
        dirs = {n.name: f"{base}/nodes/{n.name}" for n in nodes}
        during = [x for v in leftovers(inv, nodes, dirs, peer).values() for x in v]
        proc.send_signal(signal.SIGINT)
        # the check below can fail: while the run lives, its lwfs mounts (at least) are there
        assert any(x.startswith("mount: ") for x in during), during
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in out
    left = leftovers(inv, nodes, dirs, peer)
    assert all(v == [] for v in left.values()), (seen, left)
    for n in nodes:
        ps = inv.remotes[n.name].run("ps -eo pid=,args=", timeout=20).out.splitlines()
        mine = [x for x in ps if f"--listen-client-urls=http://{n.ip}:{client}" in x]
        assert mine == [], f"{n.name}: server still running: {mine}"
    results = json.loads((run / "results.json").read_text())
    assert results["interrupted"] is True and results["valid"] == "unknown"
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    healed = {h["f"].removeprefix("stop-") for h in history
              if h["process"] == "nemesis" and h["f"].startswith("stop-") and h["type"] == "ok"}
    assert seen <= healed and set(FAULTS.split(",")) <= healed, (seen, healed)
