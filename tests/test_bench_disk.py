"""`bench disk`: the fio wrapper on real fio (Debian's), on small sizes; the checks on this machine and
on an embedded-cluster node over SSH (job uploaded, fio run there, JSON parsed here); clear one-line
errors when fio is missing (PATH without it), when fio fails (a bad option) and for a bad
directory; and the verdicts against etcd's guidance and the write target on numbers worked by hand.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import disk, fio
from bench.disk import Settings, batch_needed, check_node, guidance, plan_writes
from harness.inventory import Node
from harness.ssh import LocalRemote

pytestmark = pytest.mark.skipif(shutil.which("fio") is None, reason="fio is not installed (Debian package fio)")
SMALL = Settings(wal_size="1m", read_size="1m", read_runtime=0.5)
ETCDPROOF = Path(sys.executable).with_name("etcdproof")


def local() -> LocalRemote:
    return LocalRemote(Node(name="here", host="127.0.0.1"))


def test_fio_output_parses_into_typed_results(tmp_path: Path) -> None:
    job = fio.JobSpec("wal", "write", 2300, "1m", "sync", fdatasync=1)
    res = fio.run(local(), str(tmp_path), [job, fio.JobSpec("rr", "randread", "4k", "256k", "psync", runtime=0.3,
                                                             time_based=True)])
    assert res.version.startswith("fio-") and [j.name for j in res.jobs] == ["wal", "rr"]
    wal = res.job("wal")
    writes = (1 << 20) // 2300  # fio writes whole blocks of the file size
    assert wal.error == 0 and wal.write.total_ios == writes and wal.write.io_bytes == writes * 2300
    assert wal.options["bs"] == "2300" and wal.options["fdatasync"] == "1" and wal.options["rw"] == "write"
    assert wal.sync is not None and wal.sync.n == writes  # one fdatasync per write
    s = wal.sync
    assert 0 < s.min_ns <= s.percentile_ns(50) <= s.percentile_ns(99) <= s.percentile_ns(99.9) <= s.max_ns
    assert s.p99_ms == s.percentile_ns(99) / 1e6 and s.p999_ms >= s.p99_ms
    assert wal.write.iops > 0 and wal.read.total_ios == 0
    rr = res.job("rr")
    assert rr.read.total_ios > 0 and rr.read.clat is not None and rr.sync is None
    with pytest.raises(fio.FioParseError, match="no job 'nope'"):
        res.job("nope")
    assert (tmp_path / "etcdproof-check.fio").read_text().count("stonewall") == 2


def test_parse_rejects_what_is_not_fio_json() -> None:
    with pytest.raises(fio.FioParseError, match="no JSON"):
        fio.parse("fio: something went wrong")
    with pytest.raises(fio.FioParseError, match="no jobs"):
        fio.parse('{"fio version": "fio-3.33"}')
    with pytest.raises(fio.FioParseError, match="not JSON"):
        fio.parse("note: x\n{ nope")


def test_the_disk_check_here(tmp_path: Path) -> None:
    r = check_node(local(), str(tmp_path), SMALL)
    s = r.wal.sync
    assert s.n == (1 << 20) // 2300 and r.wal.write.iops > 0 and r.randread.read.iops > 0
    assert [v.threshold for v in r.guidance] == [10.0, 50, 500]
    assert r.guidance[0].ok == (s.p99_ms < 10.0) and r.meets == (s.p99_ms < 10 and r.wal.write.iops >= 50)
    assert r.plan.batch_needed == batch_needed(10_000, s.p99_ms) and r.plan.measured  # batches were measured
    assert r.plan.measured[0]["batch"] == r.plan.batch_needed
    d = r.to_dict()
    assert d["fdatasync_ms"]["p99"] == s.p99_ms and d["fdatasync_ms"]["count"] == s.n
    assert "etcd's guidance" in r.summary() and "writes/s" in r.headline()
    assert list(tmp_path.iterdir()) == []  # the scratch directory and fio's files are gone


def test_the_disk_check_on_a_node_over_ssh(embedded_cluster) -> None:
    n = embedded_cluster.nodes[0]
    remote = embedded_cluster.remotes[n.name]
    where = f"/tmp/etcdproof-bench-disk-{os.getpid()}"
    remote.run(f"mkdir -p {where}")
    try:
        r = check_node(remote, where, Settings(wal_size="512k", read_size="1m", read_runtime=0.3, batch=False), name=n.name)
        assert r.node == n.name and r.wal.sync.n == (512 << 10) // 2300 and r.plan.measured == []
        assert remote.run(f"ls -A {where}").out.strip() == ""
    finally:
        remote.run(f"rm -rf {where}", check=False)


def test_fio_missing_is_one_clear_line(tmp_path: Path, monkeypatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "mkdir", "rm", "cp"):  # what the check needs, without fio
        os.symlink(shutil.which(tool), bin_dir / tool)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(fio.FioMissing, match=r"^fio not found on here \(local 127.0.0.1\) \(install the Debian package fio\)$"):
        check_node(local(), str(tmp_path), SMALL)
    out = subprocess.run([str(ETCDPROOF), "bench", "disk", "--dir", str(tmp_path), "--no-store"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "PATH": str(bin_dir)})
    assert out.returncode == 2 and out.stderr.startswith("bench disk: fio not found on ") and out.stderr.count("\n") == 1


def test_fio_failures_and_bad_directories_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(fio.FioFailed, match=r"fio failed on .* in .*: failed parsing rw=sideways"):
        fio.run(local(), str(tmp_path), [fio.JobSpec("x", "sideways", 4096, "1m")])
    with pytest.raises(fio.FioFailed, match=r"/no/such/dir is not a writable directory$"):
        check_node(local(), "/no/such/dir", SMALL)
    out = subprocess.run([str(ETCDPROOF), "bench", "disk", "--dir", "/no/such/dir", "--no-store"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is not a writable directory" in out.stderr
    for cmd in (["disk"], ["kv"]):  # an inventory that cannot be read: one line, nothing run
        out = subprocess.run([str(ETCDPROOF), "bench", *cmd, "--nodes-file", str(tmp_path / "none.toml"), "--no-store"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and out.stderr.startswith(f"bench {cmd[0]}: ") and out.stderr.count("\n") == 1, out.stderr


def job(p99_ms: float, mean_ms: float, iops: float, name: str = "wal") -> fio.Job:
    lat = fio.Latency(100, 0.0, p99_ms * 2e6, mean_ms * 1e6, 0.0, {50.0: mean_ms * 1e6, 99.0: p99_ms * 1e6})
    io = fio.Direction(0, 0.0, iops, 1000.0, 100, None, None)
    empty = fio.Direction(0, 0.0, 0.0, 0.0, 0, None, None)
    return fio.Job(name, 0, empty, io, lat, 0.0, 0.0, {})


def test_verdicts_against_etcds_guidance_and_the_write_target() -> None:
    assert [v.ok for v in guidance(9.9, 50)] == [True, True, False]
    assert [v.ok for v in guidance(10.0, 49.0)] == [False, False, False]
    assert [v.ok for v in guidance(0.4, 2500)] == [True, True, True]
    assert batch_needed(10_000, 0.4) == 4 and batch_needed(10_000, 12.5) == 125 and batch_needed(10_000, 0.01) == 1
    plan = plan_writes(10_000, job(2.0, 1.0, 400), [(20, job(3.0, 2.0, 300, "batch20")), (40, job(3.0, 2.0, 260, "batch40"))])
    assert (plan.syncs_per_s_p99, plan.syncs_per_s_mean, plan.batch_needed) == (500.0, 1000.0, 20)
    assert [m["writes_per_s"] for m in plan.measured] == [6000, 10400]
    assert plan.reachable_batch == 40 and plan.reachable is True and "reachable with batching" in plan.text()
    short = plan_writes(10_000, job(2.0, 1.0, 400), [(20, job(3.0, 2.0, 100, "batch20"))])
    assert short.reachable is False and "not reached" in short.text()
    assert plan_writes(10_000, job(2.0, 1.0, 400), []).reachable is None


def test_batch_jobs_scale_their_size() -> None:
    assert disk.batch_job(Settings(), 1).size == "4096k"  # at least 4 MiB
    assert disk.batch_job(Settings(), 2000).size == "65536k"  # at most 64 MiB
    assert disk.batch_job(Settings(), 100).bs == 30000
