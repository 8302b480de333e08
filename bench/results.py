"""Benchmark results in the store, like test runs: store/bench-<kind>/<UTC time>/ with bench.json,
plots and index.html (rendered by reports.bench), listed in store/index.html.

Also the pure summaries of KV results: verdicts against etcd's classic targets (2,000 reads/s,
10,000 writes/s), scaling curves (clients -> throughput and p99) and reference/etcd ratios.
A KV result is a dict with the fields of bench.kv.Result (db, op, clients, rate, p50_ms, p99_ms, ...).
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from harness.store import safe_name, store_root, write_json

TARGET_READS = 2000
TARGET_WRITES = 10000
BENCH_JSON = "bench.json"


# ------------------------------------------------------------------ the store
def new_bench_dir(root: Path, kind: str, now: datetime | None = None) -> Path:
    """store/bench-<kind>/<UTC time>/ (suffixed when taken), and its bench-<kind>/latest link.
    store/latest is left to test runs (`etcdproof analyze store/latest` expects one)."""
    parent = root / safe_name(f"bench-{kind}")
    parent.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    d, n = parent / stamp, 1
    while True:
        try:
            d.mkdir()
            break
        except FileExistsError:
            n += 1
            d = parent / f"{stamp}-{n}"
    link, tmp = parent / "latest", parent / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(d.name)
    os.replace(tmp, link)
    return d


def save(kind: str, data: dict, store: str | None = None) -> Path:
    """Keep a benchmark's results: bench.json, its page and plots, and the store's index."""
    from reports.bench import render_bench
    from reports.index import update

    root = store_root(store)
    d = new_bench_dir(root, kind)
    write_json(d / BENCH_JSON, data)
    render_bench(d)
    update(root)
    return d


# ------------------------------------------------------------------ KV summaries (pure)
def is_write(op: str) -> bool:
    return op in ("put", "txn", "delete")


def target_for(op: str) -> int:
    return TARGET_WRITES if is_write(op) else TARGET_READS


def kv_verdicts(results: list[dict]) -> list[dict]:
    """Per (db, op): the best rate over the client counts measured, against its target."""
    best: dict[tuple[str, str], dict] = {}
    for r in results:
        k = (r["db"], r["op"])
        if k not in best or r["rate"] > best[k]["rate"]:
            best[k] = r
    out = []
    for (db, op), r in sorted(best.items()):
        target = target_for(op)
        out.append({"db": db, "op": op, "clients": r["clients"], "rate": r["rate"], "p99_ms": r["p99_ms"],
                    "target": target, "meets": r["rate"] >= target,
                    "text": f"{db} {op}: {r['rate']:,.0f}/s at {r['clients']} clients "
                            f"{'meets' if r['rate'] >= target else 'is below'} the {target:,}/s target"})
    return out


def scaling_curves(results: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(db, op) -> its measurements ordered by client count: the scaling curve."""
    curves: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        curves.setdefault((r["db"], r["op"]), []).append(r)
    return {k: sorted(v, key=lambda r: r["clients"]) for k, v in sorted(curves.items())}


def _kind(db: str) -> str:
    """'reference x3' -> 'reference': the target, whatever the cluster size."""
    return db.split(" ", 1)[0]


def ratios(results: list[dict], ours: str = "reference", theirs: str = "etcd") -> list[dict]:
    """For each op and client count measured on both: our rate / theirs, and our p99 / theirs."""
    by = {(_kind(r["db"]), r["op"], r["clients"]): r for r in results}
    out = []
    for (db, op, clients), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if db != ours or (theirs, op, clients) not in by:
            continue
        e = by[(theirs, op, clients)]
        out.append({"op": op, "clients": clients, "ours": r["rate"], "theirs": e["rate"],
                    "rate_ratio": r["rate"] / e["rate"] if e["rate"] else None,
                    "p99_ratio": r["p99_ms"] / e["p99_ms"] if e["p99_ms"] else None})
    return out


def kv_verdict_word(verdicts: list[dict]) -> str:
    """meets when every (db, op) measured meets its target; below otherwise; unknown without any."""
    if not verdicts:
        return "unknown"
    return "meets" if all(v["meets"] for v in verdicts) else "below"
