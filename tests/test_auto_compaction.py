"""Periodic auto-compaction keeps a time window of history, on both servers alike."""
from __future__ import annotations

import time

import pytest


@pytest.fixture
def compacting_server(request, member_factory):
    return member_factory(request.param, extra=["--auto-compaction-mode=periodic", "--auto-compaction-retention=2s"])


@pytest.mark.parametrize("compacting_server", ["reference", "etcd"], indirect=True)
def test_periodic_compaction_drops_old_revisions_and_keeps_current_state(compacting_server):
    m = compacting_server
    t0 = time.monotonic()
    compacted_after = None
    i = 0
    while time.monotonic() - t0 < 20:
        assert m.etcdctl("put", "k", str(i)).returncode == 0
        i += 1
        r = m.etcdctl("get", "k", "--rev=2")
        if r.returncode != 0:
            assert "required revision has been compacted" in r.stderr
            compacted_after = time.monotonic() - t0
            break
        time.sleep(0.3)
    assert compacted_after is not None, "no compaction within 20 s with a 2 s retention"
    assert compacted_after >= 1.5, f"compacted after {compacted_after:.1f}s, before the retention window passed"
    # the newest value is untouched
    assert m.etcdctl("get", "k", "--print-value-only").stdout.strip() == str(i - 1)
