"""Ctrl-C in the middle of a fault: `etcdproof test` heals, stops the servers and exits 130.

A real `etcdproof test` process runs on the embedded cluster with partitions and pauses; as
soon as its history shows a fault applied, it gets SIGINT. Afterwards no node holds a rule of
ours, no process on any node is stopped (state T), no server of the run is still running, and
the run directory says it was interrupted.
"""
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
from nemesis import partition

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)


def wait_for_fault(history: Path, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"etcdproof test exited early with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        if history.exists():
            for line in history.read_text().splitlines():
                op = json.loads(line)
                if op["process"] == "nemesis" and op["type"] == "ok" and op["f"].startswith("start-"):
                    return op
        time.sleep(0.2)
    raise AssertionError("no fault started in time")


def stopped_processes(inv) -> dict[str, list[str]]:
    """Processes in state T on each node (the whole machine for the embedded cluster)."""
    out = {}
    for n in inv.nodes:
        r = inv.remotes[n.name].run("ps -eo stat=,pid=,args= | awk '$1 ~ /^T/'", timeout=20, check=False)
        out[n.name] = [x for x in r.out.splitlines() if x.strip()]
    return out


@pytest.mark.parametrize("nemesis", ["partition", "pause"])
def test_sigint_mid_fault_heals_and_stops_everything(request, etcdproof_inventory, tmp_path, nemesis) -> None:
    inv = etcdproof_inventory
    if nemesis == "partition" and not inv.can_partition:
        pytest.skip(f"partitions impossible here: {inv.why_not_partition}")
    client, peer, _ = session_ports(request.config)
    store = tmp_path / "store"
    args = [sys.executable, "-m", "harness.cli", "test", "-w", "register", "--nemesis", nemesis,
            "--nemesis-interval", "2", "--time-limit", "120", "--db", "reference", "--no-progress",
            "--store", str(store), "--client-port", str(client + 5), "--peer-port", str(peer + 5),
            "--node-count", "3", "--nodes", request.config.getoption("--nodes")]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 120
        while not (store / "latest").exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        run = (store / "latest").resolve()
        op = wait_for_fault(run / "history.jsonl", proc, 120)
        assert op["value"]["nodes"], op
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in out
    nodes = inv.nodes[:3]
    if inv.can_partition:
        assert partition.rules(nodes, inv.remotes) == {n.name: [] for n in nodes}
    assert stopped_processes(inv) == {n.name: [] for n in inv.nodes}
    for n in nodes:
        ps = inv.remotes[n.name].run("ps -eo pid=,args=", timeout=20).out.splitlines()
        left = [x for x in ps if f"--listen-client-urls=http://{n.ip}:{client + 5}" in x]
        assert left == [], f"{n.name}: server still running: {left}"
    results = json.loads((run / "results.json").read_text())
    assert results["interrupted"] is True and results["valid"] == "unknown"
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    stops = [h for h in history if h["process"] == "nemesis" and h["f"] == f"stop-{nemesis}" and h["type"] == "ok"]
    assert stops, "the heal was not recorded"
    assert (run / "index.html").exists()
