"""A real short run through the runner leaves its report and the store's index: the run's page
with its plots and history page, and store/index.html listing it with its verdict."""
from __future__ import annotations

import re

import pytest

from harness.localproc import have_etcd


@pytest.mark.skipif(not have_etcd(), reason="real etcd not installed (Debian etcd-server)")
def test_a_run_updates_the_store_index(run_etcdproof) -> None:
    o = run_etcdproof("register", db="etcd", nemesis=[], time_limit=3, nodes=3, rate=50)
    root = o.run_dir.parent.parent
    index = (root / "index.html").read_text()
    rel = o.run_dir.relative_to(root).as_posix()
    word = {True: "valid", False: "INVALID"}.get(o.valid, "unknown")
    assert re.search(rf'<tr data-workload="register" data-db="etcd" data-verdict="{word}">\s*<td class="when">[^<]+</td>\s*'
                     rf'<td><a href="{rel}/index.html">', index), index[-3000:]
    page = (o.run_dir / "index.html").read_text()
    assert all((o.run_dir / "report" / f).stat().st_size > 1000
               for f in ("latency.png", "quantiles.png", "throughput.png", "history.html"))
    assert 'src="report/latency.png"' in page and "<h3>Targets: etcd</h3>" in page
