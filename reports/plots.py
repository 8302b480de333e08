"""Plots for a run (matplotlib, Agg, PNG bytes): latency over time with fault periods shaded."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from reports.data import Completed, FaultPeriod  # noqa: E402

COLORS = {"ok": "#2a9d3f", "fail": "#d08c1c", "info": "#c0392b"}
FAULT_COLORS = ["#9ecae1", "#fdae6b", "#a1d99b", "#bcbddc", "#fc9272", "#d9d9d9", "#c7e9c0", "#fdd0a2"]


def shade_faults(ax, faults: list[FaultPeriod], run_end: float) -> None:
    """One translucent band per applied fault, labelled once per fault class."""
    names = sorted({f.name for f in faults})
    seen: set[str] = set()
    for f in faults:
        if not f.applied:
            continue
        color = FAULT_COLORS[names.index(f.name) % len(FAULT_COLORS)]
        label = None if f.name in seen else f.name
        seen.add(f.name)
        ax.axvspan(f.start, f.end if f.end is not None else run_end, color=color, alpha=0.35, lw=0, label=label)


def latency_png(ops: list[Completed], faults: list[FaultPeriod], title: str = "") -> bytes:
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=100)
    run_end = max((o.start + o.latency for o in ops), default=1.0)
    shade_faults(ax, faults, run_end)
    for typ in ("ok", "fail", "info"):
        pts = [o for o in ops if o.type == typ]
        if pts:
            ax.scatter([o.start for o in pts], [max(o.latency * 1000, 0.01) for o in pts], s=4,
                       c=COLORS[typ], label=f"{typ} ({len(pts)})", alpha=0.7, linewidths=0)
    ax.set_yscale("log")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title or "op latency over time")
    ax.grid(True, which="both", alpha=0.2)
    if ops or faults:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, markerscale=3, borderaxespad=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
