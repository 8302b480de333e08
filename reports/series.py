"""Time series for the plots, computed from ops alone: latency quantiles per window, throughput per
bucket, clock offsets per node. Pure functions (no matplotlib here), so they are tested on small
inputs and the plots only draw what these return.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from checker.history import INVOKE, NEMESIS, OK, Op
from reports.data import Completed

QUANTILES = (("p50", 0.50), ("p95", 0.95), ("p99", 0.99), ("max", 1.0))
NICE_WIDTHS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


def nice_width(duration: float, windows: int = 60) -> float:
    """A round window width (0.1 s .. 1 h) giving about `windows` windows over duration seconds."""
    want = max(duration, 0.0) / max(windows, 1)
    for w in NICE_WIDTHS:
        if w >= want:
            return w
    return NICE_WIDTHS[-1]


def quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list: the smallest value with at least q of them at or
    below it (q=1 is the maximum). ValueError on an empty list."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True)
class QuantileWindow:
    """Latency quantiles (seconds) of the ops invoked in [start, end)."""

    start: float
    end: float
    count: int
    p50: float
    p95: float
    p99: float
    max: float

    @property
    def mid(self) -> float:
        return (self.start + self.end) / 2


def quantile_windows(ops: Iterable[Completed], width: float, types: tuple[str, ...] = (OK,)) -> list[QuantileWindow]:
    """Per window of `width` seconds (by invocation time, from 0), the p50/p95/p99/max latency of the
    ops whose outcome is in `types` (default ok: an info op's latency is its timeout, not the store's).
    Windows without such ops are left out, so a plot shows a gap rather than a zero."""
    if width <= 0:
        raise ValueError(f"window width must be positive, not {width}")
    buckets: dict[int, list[float]] = {}
    for o in ops:
        if o.type in types:
            buckets.setdefault(int(o.start // width), []).append(o.latency)
    out = []
    for b in sorted(buckets):
        vals = sorted(buckets[b])
        q = {name: quantile(vals, p) for name, p in QUANTILES}
        out.append(QuantileWindow(b * width, (b + 1) * width, len(vals), **q))
    return out


@dataclass(frozen=True)
class Throughput:
    """Completions per second per bucket, for each (f, outcome): series[(f, type)][i] is the rate in
    [edges[i], edges[i] + width)."""

    width: float
    edges: list[float]
    series: dict[tuple[str, str], list[float]]


def throughput_buckets(ops: Iterable[Completed], width: float, end: float | None = None) -> Throughput:
    """Bucket every completed op by its completion time (ops the run ended before completing are not
    completions and are left out). `end` (seconds) extends the buckets to the end of the run."""
    if width <= 0:
        raise ValueError(f"bucket width must be positive, not {width}")
    done = [o for o in ops if o.end_index is not None]
    last = max([o.end for o in done] + [end or 0.0])
    n = int(last // width) + 1 if done or end else 0
    series: dict[tuple[str, str], list[float]] = {}
    for o in done:
        s = series.setdefault((o.f, o.type), [0.0] * n)
        s[int(o.end // width)] += 1.0 / width
    return Throughput(width, [i * width for i in range(n)], dict(sorted(series.items())))


@dataclass(frozen=True)
class ClockSample:
    """A node's wall-clock offset from real time (seconds), as the clock fault measured it."""

    time: float  # seconds since the run started
    node: str
    offset: float
    f: str  # the nemesis op it came from


def clock_samples(history: list[Op]) -> dict[str, list[ClockSample]]:
    """Per node, the offsets recorded by the clock fault's ops (docs/nemesis.md; nemesis/clock.py):
    a bump's `measured` offsets at its completion, a strobe's `samples` spread over the op (they were
    taken while it ran), a reset's (stop, heal) `measured` offsets. Empty when no clock op applied."""
    out: dict[str, list[ClockSample]] = {}
    invoked: dict[str, float] = {}

    def add(t: float, node: str, offset: Any, f: str) -> None:
        if isinstance(offset, (int, float)) and not isinstance(offset, bool):
            out.setdefault(node, []).append(ClockSample(t, node, float(offset), f))

    for op in history:
        if op.process != NEMESIS or not op.f.endswith("-clock"):
            continue
        if op.type == INVOKE:
            invoked[op.f] = op.time / 1e9
            continue
        t0, t1 = invoked.pop(op.f, op.time / 1e9), op.time / 1e9
        if op.type != OK or not isinstance(op.value, dict):
            continue
        v = op.value
        for node, m in (v.get("measured") or {}).items():
            add(t1, node, m.get("offset") if isinstance(m, dict) else m, op.f)
        for node, s in (v.get("strobes") or {}).items():
            samples = (s.get("samples") or []) if isinstance(s, dict) else []
            for i, x in enumerate(samples):
                add(t0 + (t1 - t0) * (i + 1) / (len(samples) + 1), node, x, op.f)
    for node in out:
        out[node].sort(key=lambda c: c.time)
    return dict(sorted(out.items()))
