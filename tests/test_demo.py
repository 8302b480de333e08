"""`make demo` works end to end: `python -m harness.demo` in its own store, exit 0, a valid run.

Why: the demo is the first thing a reader runs; it must start the server, drive it with etcdctl,
survive its SIGKILLs and leave its transcript and results where it says.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_demo_runs_and_is_valid(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = dict(os.environ, ETCDPROOF_STORE=str(store))
    r = subprocess.run(
        [sys.executable, "-m", "harness.demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    latest = store / "demo" / "latest"
    assert latest.is_symlink()
    run = latest.resolve()
    assert run.parent == (store / "demo").resolve() and run.name[:8].isdigit()
    assert str(run) in r.stdout and "verdict: VALID" in r.stdout
    results = json.loads((run / "results.json").read_text())
    assert results["valid"] is True
    assert results["kills"] == 2
    counts = results["counts"]
    assert counts["acknowledged"] > 0 and counts["lost"] == 0 and counts["unexpected"] == 0
    transcript = (run / "transcript.txt").read_text()
    for cmd in ("etcdctl put", "etcdctl get", "etcdctl txn", "etcdctl watch", "etcdctl lease grant"):
        assert cmd in transcript
    assert "SIGKILL" in transcript
    assert not (REPO / "store" / "demo" / run.name).exists(), "the demo ignored ETCDPROOF_STORE"
