"""The node tools' wheel cache is filled once when several fault lanes ask for it at once.

A fresh CI machine (empty ~/.cache/etcdproof) ran the net and lost-writes faults' setups
together: both built into one temporary directory and one's `rm -rf` failed under the other's
download. The build now runs under a lock; pip is replaced here by a slow stand-in that counts
its calls, since what is tested is the locking, not pip.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time

from nemesis import tools


def test_concurrent_builders_wait_for_one_build(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(tools, "CACHE", str(tmp_path / "cache"))
    calls: list[str] = []
    real_run = subprocess.run

    def fake_run(cmd, *a, **kw):
        if cmd[:3] == [tools.sys.executable, "-m", "pip"]:
            calls.append(cmd[cmd.index("-d") + 1])
            time.sleep(0.5)
            with open(os.path.join(cmd[cmd.index("-d") + 1], "pkg-1.0-py3-none-any.whl"), "w") as f:
                f.write("x")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return real_run(cmd, *a, **kw)

    monkeypatch.setattr(tools.subprocess, "run", fake_run)
    results: list[str] = []
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            results.append(tools.wheelhouse("3.11"))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert len(calls) == 1, calls
    assert len(set(results)) == 1 and os.listdir(results[0]) == ["pkg-1.0-py3-none-any.whl"]
    assert not [p for p in os.listdir(tmp_path / "cache") if ".tmp" in p]
