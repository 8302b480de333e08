"""The page of one benchmark in the store (bench.json -> index.html + report/*.png).

Disk: fdatasync and random-read latency by percentile per node against etcd's 10 ms line, the
guidance verdicts and the write plan. KV: the scaling curve (clients against throughput and p99)
per target and op with the 2k/10k targets drawn, the verdicts and the reference/etcd ratios.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.plots import OP_COLORS  # noqa: E402
from reports.templating import env, write_atomic  # noqa: E402

BENCH_JSON = "bench.json"
REPORT_DIR = "report"
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def percentile_series(percentiles: dict[str, float]) -> tuple[list[str], list[float]]:
    """fio's percentile map ('99.9' -> ms) as ordered labels and values."""
    items = sorted(((float(k), v) for k, v in percentiles.items()), key=lambda kv: kv[0])
    return [f"{k:g}" for k, _ in items], [v for _, v in items]


def disk_png(data: dict) -> bytes:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), dpi=100)
    for i, r in enumerate(data.get("results", [])):
        color = OP_COLORS[i % len(OP_COLORS)]
        labels, vals = percentile_series(r["fdatasync_ms"]["percentiles"])
        axes[0].plot(labels, [max(v, 1e-3) for v in vals], marker=".", color=color, label=r["node"])
        labels, vals = percentile_series(r["randread"]["percentiles"])
        axes[1].plot(labels, [max(v, 1e-3) for v in vals], marker=".", color=color, label=r["node"])
    axes[0].axhline(10.0, color="#c0392b", ls="--", lw=1, label="etcd: p99 < 10 ms")
    axes[0].set_title("fdatasync latency of the WAL check (2300-byte writes)", fontsize=10)
    axes[1].set_title("4 KiB random read latency", fontsize=10)
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", labelrotation=60, labelsize=7)
        ax.grid(True, which="both", alpha=0.2)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _png(fig)


def kv_png(data: dict) -> bytes:
    """The scaling curve: clients against ops/s (left) and p99 latency (right)."""
    from bench.results import TARGET_READS, TARGET_WRITES, scaling_curves

    curves = scaling_curves(data.get("results", []))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), dpi=100)
    dbs = sorted({db for db, _ in curves})
    ops = sorted({op for _, op in curves})
    for (db, op), pts in curves.items():
        style = dict(color=OP_COLORS[ops.index(op) % len(OP_COLORS)], marker=MARKERS[dbs.index(db) % len(MARKERS)],
                     ls="-" if dbs.index(db) == 0 else "--", label=f"{db} {op}")
        xs = [p["clients"] for p in pts]
        axes[0].plot(xs, [p["rate"] for p in pts], **style)
        axes[1].plot(xs, [max(p["p99_ms"], 1e-3) for p in pts], **style)
    axes[0].axhline(TARGET_READS, color="#555", ls=":", lw=1, label=f"{TARGET_READS:,} reads/s")
    axes[0].axhline(TARGET_WRITES, color="#c0392b", ls=":", lw=1, label=f"{TARGET_WRITES:,} writes/s")
    axes[0].set_ylabel("ops/s")
    axes[0].set_title("throughput by clients", fontsize=10)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("p99 latency (ms)")
    axes[1].set_title("p99 latency by clients", fontsize=10)
    counts = sorted({p["clients"] for pts in curves.values() for p in pts})
    for ax in axes:
        ax.set_xscale("log", base=2)
        if counts:  # the client counts measured, as plain numbers
            ax.set_xticks(counts, [str(c) for c in counts])
            ax.minorticks_off()
        ax.set_xlabel("clients")
        ax.grid(True, which="both", alpha=0.2)
    axes[0].set_ylim(bottom=0)
    if curves:
        axes[0].legend(fontsize=7, loc="best")
    return _png(fig)


def page(d: Path, data: dict, figures: list[dict]) -> str:
    kind = data.get("bench")
    extra: dict = {}
    if kind == "kv":
        from bench.results import kv_verdicts, ratios

        extra = {"verdicts": kv_verdicts(data.get("results", [])), "ratios": ratios(data.get("results", []))}
    return env.get_template("bench.html.j2").render(
        d=str(d), data=data, kind=kind, figures=figures, json_text=json.dumps(data, indent=2, default=str)[:200_000],
        **extra)


def render_bench(bench_dir: str | Path) -> Path:
    """Write index.html and report/*.png of a benchmark directory; returns the page's path."""
    d = Path(bench_dir)
    with open(d / BENCH_JSON, encoding="utf-8") as f:
        data = json.load(f)
    (d / REPORT_DIR).mkdir(exist_ok=True)
    figures = []
    if data.get("bench") == "disk" and data.get("results"):
        write_atomic(d / REPORT_DIR / "disk.png", disk_png(data))
        figures.append({"file": f"{REPORT_DIR}/disk.png", "alt": "fdatasync and random-read latency by percentile, per node"})
    elif data.get("bench") == "kv" and data.get("results"):
        write_atomic(d / REPORT_DIR / "scaling.png", kv_png(data))
        figures.append({"file": f"{REPORT_DIR}/scaling.png", "alt": "clients against throughput and p99 latency, per target and op"})
    out = d / "index.html"
    write_atomic(out, page(d, data, figures).encode())
    return out
