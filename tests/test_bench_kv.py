"""`bench kv` briefly against both targets (the reference server and real etcd on loopback, h2load as
the generator), and the pure summaries its page and verdicts come from: the best rate per target
and op against 2k reads/s and 10k writes/s, scaling curves, reference/etcd ratios.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import h2load
from bench.results import kv_verdict_word, kv_verdicts, ratios, scaling_curves
from harness.localproc import have_etcd

ETCDPROOF = Path(sys.executable).with_name("etcdproof")
PNG = b"\x89PNG\r\n\x1a\n"


def m(db: str, op: str, clients: int, rate: float, p99: float = 1.0) -> dict:
    return {"db": db, "op": op, "clients": clients, "rate": rate, "p99_ms": p99}


def test_verdicts_take_the_best_rate_against_its_target() -> None:
    rows = [m("reference", "put", 1, 600), m("reference", "put", 64, 2100), m("reference", "range", 64, 2200),
            m("etcd", "put", 64, 10500, 14.6), m("etcd", "range-serializable", 1, 1999)]
    v = {(x["db"], x["op"]): x for x in kv_verdicts(rows)}
    assert (v[("reference", "put")]["rate"], v[("reference", "put")]["clients"], v[("reference", "put")]["meets"]) == (2100, 64, False)
    assert v[("reference", "put")]["target"] == 10_000 and v[("reference", "range")]["target"] == 2_000
    assert v[("reference", "range")]["meets"] and v[("etcd", "put")]["meets"]
    assert not v[("etcd", "range-serializable")]["meets"]  # 1,999 < 2,000
    assert kv_verdict_word(kv_verdicts(rows)) == "below" and kv_verdict_word([]) == "unknown"
    assert kv_verdict_word(kv_verdicts([m("etcd", "put", 8, 10_000)])) == "meets"


def test_scaling_curves_and_ratios() -> None:
    rows = [m("reference x3", "put", 64, 1370, 116.0), m("reference x3", "put", 1, 277, 5.0),
            m("etcd x3", "put", 1, 1076, 1.6), m("etcd x3", "put", 64, 4421, 31.7), m("etcd x3", "range", 1, 2150)]
    curves = scaling_curves(rows)
    assert list(curves) == [("etcd x3", "put"), ("etcd x3", "range"), ("reference x3", "put")]
    assert [p["clients"] for p in curves[("reference x3", "put")]] == [1, 64]
    r = ratios(rows)
    assert [(x["op"], x["clients"]) for x in r] == [("put", 1), ("put", 64)]  # range: only etcd measured
    assert r[1]["rate_ratio"] == pytest.approx(1370 / 4421) and r[1]["p99_ratio"] == pytest.approx(116 / 31.7)


@pytest.mark.skipif(not have_etcd(), reason="real etcd not installed (Debian etcd-server)")
@pytest.mark.skipif(not h2load.available(), reason="h2load not installed (Debian nghttp2-client)")
def test_bench_kv_briefly_against_both_targets(tmp_path: Path) -> None:
    out = subprocess.run([str(ETCDPROOF), "bench", "kv", "--compare", "--clients", "1,8", "--ops", "put,range",
                          "--duration", "1", "--store", str(tmp_path), "--json", str(tmp_path / "r.json")],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^\| (reference|etcd) \| (put|range) \| (\d+) \| ([\d,]+) \|", out.stdout, re.M)
    assert len(rows) == 8, out.stdout
    assert all(int(rate.replace(",", "")) > 0 for *_, rate in rows)
    assert re.search(r"^reference/etcd put at 8 clients: [\d.]+x the throughput, [\d.]+x the p99$", out.stdout, re.M)
    assert re.search(r"^etcd range at 8 clients: [\d,]+/s, (meets|below) the 2,000/s target$", out.stdout, re.M)
    d = next((tmp_path / "bench-kv").glob("2*"))
    data = json.loads((d / "bench.json").read_text())
    assert data["bench"] == "kv" and len(data["results"]) == 8 and data["verdict"] in ("meets", "below")
    assert data["wakeup_roundtrip_us"] is None or data["wakeup_roundtrip_us"] > 0  # the machine's speed, recorded
    assert re.search(r"cross-CPU wake-up round trip ([\d.]+|None) µs", out.stdout.splitlines()[0])
    assert {(v["db"], v["op"]) for v in data["verdicts"]} == {(db, op) for db in ("reference", "etcd") for op in ("put", "range")}
    assert len(data["ratios"]) == 4 and all(r["rate_ratio"] > 0 for r in data["ratios"])
    assert all(r["p50_ms"] <= r["p99_ms"] <= r["max_ms"] and r["errors"] == 0 for r in data["results"])
    png = (d / "report" / "scaling.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 10_000
    page = (d / "index.html").read_text()
    assert 'src="report/scaling.png"' in page and "Reference server / etcd" in page
    assert json.loads((tmp_path / "r.json").read_text()) == data["results"]
    index = (tmp_path / "index.html").read_text()
    assert f'href="{d.relative_to(tmp_path).as_posix()}/index.html"' in index and 'data-workload="bench-kv"' in index


@pytest.mark.skipif(not h2load.available(), reason="h2load not installed (Debian nghttp2-client)")
def test_bench_kv_on_inventory_nodes(embedded_cluster, tmp_path: Path) -> None:
    """--nodes: a fresh etcd member on an embedded-cluster node (its own base dir and ports), load
    from here over the bridge, the server's CPU read from /proc (the node shares this kernel)."""
    import os
    import random

    port = random.Random(os.getpid() ^ 0xBE7C).randrange(20_000, 29_000, 10)
    base = f"/tmp/etcdproof-bench-kv-{os.getpid()}"
    try:
        out = subprocess.run([str(ETCDPROOF), "bench", "kv", "--nodes", "local", "--node-count", "1", "--db", "etcd",
                              "--clients", "1,4", "--ops", "put", "--duration", "1", "--base-dir", base,
                              "--client-port", str(port), "--peer-port", str(port + 1), "--http-port", str(port + 2),
                              "--store", str(tmp_path)], capture_output=True, text=True, timeout=180)
        # the member was started and is stopped (dead or a zombie: the remote's own test of a daemon)
        r = embedded_cluster.remotes["n1"]
        assert r.run(f"test -s {base}/nodes/n1/server.pid", check=False).exit == 0
        assert r.daemon_pid(f"{base}/nodes/n1/server.pid") is None
    finally:
        embedded_cluster.remotes["n1"].run(f"rm -rf {base}", check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = re.findall(r"^\| etcd \| put \| (\d+) \| ([\d,]+) \| .* \| ([\d.]+) \| ([\d.]+) \| [\d /]+ \|$", out.stdout, re.M)
    assert [r[0] for r in rows] == ["1", "4"] and all(int(r[1].replace(",", "")) > 0 for r in rows)
    assert all(float(r[3]) > 0 for r in rows)  # server CPU measured
    data = json.loads(next((tmp_path / "bench-kv").glob("2*/bench.json")).read_text())
    ip = embedded_cluster.nodes[0].ip
    assert data["nodes"].endswith(f"n1 ({ip})") and len(data["results"]) == 2
