"""Plots of a run (matplotlib, Agg, PNG bytes), each with the fault periods shaded and labelled.

They draw what reports.series computes and nothing else: latency of every op by outcome, latency
quantiles per window, throughput per op and outcome, and the clock offsets the clock fault measured.
"""
from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.transforms import blended_transform_factory  # noqa: E402

from reports.data import Completed, FaultPeriod, fault_color  # noqa: E402
from reports.series import ClockSample, QuantileWindow, Throughput  # noqa: E402

COLORS = {"ok": "#2a9d3f", "fail": "#d08c1c", "info": "#c0392b"}
QUANTILE_STYLE = {"p50": ("#1f77b4", "-"), "p95": ("#ff7f0e", "-"), "p99": ("#d62728", "-"), "max": ("#555555", ":")}
OP_COLORS = ["#1f77b4", "#9467bd", "#8c564b", "#17becf", "#e377c2", "#7f7f7f", "#bcbd22", "#2ca02c"]
OUTCOME_STYLE = {"ok": "-", "fail": "--", "info": ":"}


def shade_faults(ax, faults: list[FaultPeriod], run_end: float) -> None:
    """A translucent band per applied fault, its name written at the top; a legend entry per class."""
    names = sorted({f.name for f in faults})
    seen: set[str] = set()
    top = blended_transform_factory(ax.transData, ax.transAxes)
    for f in faults:
        if not f.applied:
            continue
        color = fault_color(f.name, names)
        end = f.end if f.end is not None else run_end
        ax.axvspan(f.start, end, color=color, alpha=0.35, lw=0, label=None if f.name in seen else f.name)
        seen.add(f.name)
        ax.text(f.start, 0.99, f.name, transform=top, fontsize=7, va="top", ha="left", color="#333",
                clip_on=True)


def _finish(fig, ax, title: str, legend: bool = True) -> bytes:
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.2)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _run_end(ops: list[Completed], faults: list[FaultPeriod]) -> float:
    return max([o.end for o in ops] + [f.end or f.start for f in faults] + [1.0])


def latency_png(ops: list[Completed], faults: list[FaultPeriod], title: str = "") -> bytes:
    """Every op at its invocation time and latency (log scale), coloured by outcome."""
    fig, ax = plt.subplots(figsize=(11, 4.2), dpi=100)
    end = _run_end(ops, faults)
    shade_faults(ax, faults, end)
    for typ in ("ok", "fail", "info"):
        pts = [o for o in ops if o.type == typ]
        if pts:
            ax.scatter([o.start for o in pts], [max(o.latency * 1000, 0.01) for o in pts], s=5,
                       c=COLORS[typ], label=f"{typ} ({len(pts)})", alpha=0.7, linewidths=0)
    ax.set_yscale("log")
    ax.set_xlim(0, end)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms)")
    return _finish(fig, ax, title or "latency of every op, by outcome")


def quantiles_png(windows: list[QuantileWindow], faults: list[FaultPeriod], width: float, run_end: float,
                  title: str = "") -> bytes:
    """p50/p95/p99/max latency of ok ops per window (log scale); gaps where a window had none."""
    fig, ax = plt.subplots(figsize=(11, 3.8), dpi=100)
    shade_faults(ax, faults, run_end)
    if windows:
        xs, k = [], 0
        for w in windows:  # a missing window breaks the line
            if xs and w.start - windows[k - 1].end > 1e-9:
                xs.append(None)
            xs.append(w)
            k += 1
        for name, (color, style) in QUANTILE_STYLE.items():
            ax.plot([w.mid if w else math.nan for w in xs],
                    [max(getattr(w, name) * 1000, 0.01) if w else math.nan for w in xs],
                    style, color=color, label=name, lw=1.4, marker="." if len(windows) < 30 else None)
        ax.set_yscale("log")
    ax.set_xlim(0, run_end)
    ax.set_xlabel(f"time since start (s), windows of {width:g} s")
    ax.set_ylabel("latency of ok ops (ms)")
    return _finish(fig, ax, title or "latency quantiles over time")


def throughput_png(tp: Throughput, faults: list[FaultPeriod], run_end: float, title: str = "") -> bytes:
    """Completions per second per bucket: a colour per op, a line style per outcome."""
    fig, ax = plt.subplots(figsize=(11, 3.8), dpi=100)
    shade_faults(ax, faults, run_end)
    fs = sorted({f for f, _ in tp.series})
    for (f, typ), rates in tp.series.items():
        ax.step([e for e in tp.edges] + [tp.edges[-1] + tp.width], rates + rates[-1:], where="post",
                color=OP_COLORS[fs.index(f) % len(OP_COLORS)], ls=OUTCOME_STYLE.get(typ, "-."), lw=1.3,
                label=f"{f} {typ}")
    ax.set_xlim(0, run_end)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"time since start (s), buckets of {tp.width:g} s")
    ax.set_ylabel("completions per second")
    return _finish(fig, ax, title or "throughput by op and outcome")


def clock_png(samples: dict[str, list[ClockSample]], faults: list[FaultPeriod], run_end: float,
              title: str = "") -> bytes:
    """Each node's measured wall-clock offset (s) over the run, as steps between measurements."""
    fig, ax = plt.subplots(figsize=(11, 3.4), dpi=100)
    shade_faults(ax, faults, run_end)
    for i, (node, pts) in enumerate(samples.items()):
        xs, ys = [0.0], [0.0]
        for p in pts:
            xs.append(p.time)
            ys.append(p.offset)
        xs.append(run_end)
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", color=OP_COLORS[i % len(OP_COLORS)], lw=1.3, label=node)
        ax.plot([p.time for p in pts], [p.offset for p in pts], ".", color=OP_COLORS[i % len(OP_COLORS)])
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xlim(0, run_end)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("clock offset (s)")
    return _finish(fig, ax, title or "node clock offsets (measured by the clock fault)")
