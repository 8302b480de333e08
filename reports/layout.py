"""Where things go on the page: the per-process timeline of a run and the Porcupine-like bands of a
linearizability result. Pure functions from ops to boxes in pixels; the templates only draw them.

Two time axes on purpose:
- the timeline is drawn to scale (seconds), so fault periods and stalls show as what they were;
- a band is drawn in *event order*, as Porcupine draws histories: every distinct call or return time
  gets the next slot, so concurrency (which ops overlap, which ended before another began) is
  readable however short the ops were next to the gaps between them. Real times are in the titles.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from reports.data import Completed, FaultPeriod, fault_color

TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)


def process_order(processes: Iterable[Any]) -> list[Any]:
    """Client processes in numeric order, then any others (by their text)."""
    ps = set(processes)
    return sorted((p for p in ps if isinstance(p, int)), key=int) + sorted((p for p in ps if not isinstance(p, int)), key=str)


def ticks(start: float, end: float, scale: float, min_gap_px: float = 80.0) -> list[float]:
    """Round tick values in [start, end] at least min_gap_px apart when drawn at scale px per unit."""
    if end <= start or scale <= 0:
        return [start]
    step = next((s for s in TICK_STEPS if s * scale >= min_gap_px), TICK_STEPS[-1])
    first = math.ceil(start / step) * step
    n = int(math.floor((end - first) / step + 1e-9)) + 1
    return [round(first + i * step, 6) for i in range(max(n, 0))]


# ------------------------------------------------------------------ timeline
@dataclass(frozen=True)
class Box:
    """One op drawn from its call to its return."""

    x: float
    y: float
    w: float
    cls: str  # css classes: the outcome, and more for bands
    index: int  # the op's invocation index (the anchor in the history page)
    label: str
    title: str


@dataclass(frozen=True)
class Span:
    """A shaded period (a fault) across the whole height."""

    x: float
    w: float
    label: str
    color: str


@dataclass
class Timeline:
    width: float
    height: float
    row_height: float
    rows: list[tuple[str, float]]  # (process label, y)
    boxes: list[Box]
    spans: list[Span]
    ticks: list[tuple[float, str]]  # (x, label)
    px_per_s: float
    truncated: int = 0  # ops left out (beyond max_ops)


def describe(o: Completed) -> str:
    """A short text for an op: 'write k 3', 'read k -> 2', 'cas k [1, 2]'."""
    key = f" {o.key}" if o.key is not None else ""
    req = "" if o.request is None else f" {o.request}"
    out = ""
    if o.type == "ok" and o.value is not None and o.value != o.request:
        out = f" -> {o.value}"
    return f"{o.f}{key}{req}{out}"


def timeline_layout(ops: list[Completed], faults: list[FaultPeriod], run_end: float | None = None,
                    row_height: float = 16.0, left: float = 10.0, top: float = 22.0, max_ops: int = 20000,
                    max_width: float = 40000.0, skip: int = 0) -> Timeline:
    """One row per process, an op a box from its call to its return (to scale), fault periods as
    spans. The scale is chosen so the drawn time fits max_width (between 40 and 400 px per
    second). Ops are taken by index: the first `skip` are left out (drawn on earlier pages; the
    drawing then starts at the first shown op's call), those beyond skip + max_ops are counted
    in `truncated`."""
    ordered = sorted(ops, key=lambda o: o.index)
    shown = ordered[skip:skip + max_ops]
    t0 = min((o.start for o in shown), default=0.0) if skip else 0.0
    if skip or len(ordered) > skip + max_ops:  # one page of several: its own ops' time only
        end = max([o.end for o in shown] + [t0 + 1.0])
    else:
        end = max([run_end or 0.0] + [o.end for o in shown] + [f.end or f.start for f in faults] + [1.0])
    px = min(400.0, max(40.0, (max_width - left - 20) / (end - t0)))
    procs = process_order(o.process for o in shown)
    row = {p: i for i, p in enumerate(procs)}
    node = {}
    for o in shown:
        node.setdefault(o.process, o.node)
    boxes = []
    for o in shown:
        x = left + (o.start - t0) * px
        title = (f"#{o.index} process {o.process} on {o.node}: {describe(o)}; {o.type}"
                 f"{' (' + o.error + ')' if o.error else ''}; call {o.start:.3f} s, {o.latency * 1000:.1f} ms")
        cls = o.type if o.end_index is not None else f"{o.type} open"
        boxes.append(Box(round(x, 1), top + row[o.process] * row_height, round(max(o.latency * px, 2.0), 1), cls,
                         o.index, describe(o), title))
    spans = []
    names = sorted({f.name for f in faults})
    for f in faults:
        if not f.applied:
            continue
        a, b = max(f.start, t0), min(f.end if f.end is not None else end, end)
        if b < a:
            continue  # outside the drawn window
        x0, x1 = left + (a - t0) * px, left + (b - t0) * px
        who = f" on {', '.join(f.nodes)}" if f.nodes else ""
        spans.append(Span(round(x0, 1), round(max(x1 - x0, 1.0), 1), f"{f.name}{who}", fault_color(f.name, names)))
    height = top + max(len(procs), 1) * row_height + 4
    rows = [(f"{p}" + (f" {node[p]}" if node.get(p) else ""), top + i * row_height) for i, p in enumerate(procs)]
    tk = [(round(left + (t - t0) * px, 1), f"{t:g} s") for t in ticks(t0, end, px)]
    return Timeline(round(left + (end - t0) * px + 20, 1), height, row_height, rows, boxes, spans, tk, px,
                    max(0, len(ordered) - skip - len(shown)))


# ------------------------------------------------------------------ Porcupine-like bands
@dataclass(frozen=True)
class Point:
    """A linearization point: where an op took effect in the linearization, and the state after."""

    x: float
    y: float
    index: int
    state: str
    order: int  # position in the linearization (from 1)


@dataclass
class Band:
    key: str
    valid: Any
    width: float
    height: float
    rows: list[tuple[str, float]]
    boxes: list[Box]
    points: list[Point]
    cut_x: float | None  # where the longest linearizable prefix ends (failures)
    shown: int
    total: int
    linearized: int | None
    required: int | None
    initial_state: str
    final_state: str
    blocked: list[dict]
    tail: list[dict]  # the last steps of the prefix: index, description, state after
    minimal: dict = field(default_factory=dict)
    reason: str = ""


def _ret(op: dict, fallback: float) -> float:
    r = op.get("return")
    return float(r) if r is not None else fallback


def focus(ops: list[dict], interest: set[int], max_ops: int) -> list[dict]:
    """At most max_ops ops, chosen around the ops of interest: those first, then the others by how
    far their interval lies from the interest window (overlapping it: 0). Returned by call time.
    Without interest (a valid partition), the first max_ops by call."""
    if len(ops) <= max_ops:
        return sorted(ops, key=lambda o: (o["call"], o["index"]))
    if not interest:
        return sorted(ops, key=lambda o: (o["call"], o["index"]))[:max_ops]
    end = max(_ret(o, o["call"]) for o in ops) + 1
    mine = [o for o in ops if o["index"] in interest] or ops
    t0, t1 = min(o["call"] for o in mine), max(_ret(o, end) for o in mine)

    def distance(o: dict) -> tuple:
        if o["index"] in interest:
            return (-1, o["call"])
        c, r = o["call"], _ret(o, end)
        return (max(0.0, t0 - r, c - t1), o["call"])

    picked = sorted(ops, key=distance)[:max_ops]
    return sorted(picked, key=lambda o: (o["call"], o["index"]))


def band_layout(part: dict, max_ops: int = 250, step: float = 24.0, row_height: float = 22.0,
                left: float = 10.0, top: float = 8.0, tail: int = 6) -> Band:
    """Lay out one partition of a linearizable checker's result (docs/checker.md): a row per process,
    each op from call to return in event order, the linearization (or longest prefix) as numbered
    points with the state after each, the blocked ops and the minimal set marked."""
    ops = list(part.get("ops") or [])
    path = part.get("linearization") or part.get("longest_prefix") or []
    order = {p["index"]: i + 1 for i, p in enumerate(path)}
    state_after = {p["index"]: p.get("state", "") for p in path}
    point_t = {p["index"]: p.get("point") for p in path}
    blocked = list(part.get("blocked") or [])
    blocked_ix = {b["index"] for b in blocked}
    minimal = part.get("minimal") or {}
    minimal_ix = set(minimal.get("ops") or [])
    critical_ix = set(minimal.get("critical") or [])
    failed = part.get("valid") is not True
    interest = (blocked_ix | minimal_ix | {p["index"] for p in path[-tail:]}) if failed else set()
    shown = focus(ops, interest, max_ops)
    end = max([_ret(o, o["call"]) for o in shown] + [0]) + 1
    times = sorted({o["call"] for o in shown} | {_ret(o, end) for o in shown})
    xs = [left + i * step for i in range(len(times))]

    def x_of(t: float) -> float:
        """Event-order x of a time: exact at call/return times, linear in between."""
        i = bisect.bisect_left(times, t)
        if i < len(times) and times[i] == t:
            return xs[i]
        if i == 0:
            return xs[0] if xs else left
        if i >= len(times):
            return xs[-1]
        a, b = times[i - 1], times[i]
        return xs[i - 1] + (xs[i] - xs[i - 1]) * (t - a) / (b - a)

    procs = process_order(o["process"] for o in shown)
    row = {p: i for i, p in enumerate(procs)}
    boxes, points = [], []
    for o in shown:
        i = o["index"]
        cls = [o.get("status", "ok")]
        if i in order:
            cls.append("lin")
        elif not o.get("required", True):
            cls.append("optional")
        elif failed:
            cls.append("pending")
        if i in blocked_ix:
            cls.append("blocked")
        if i in minimal_ix:
            cls.append("minimal")
        if i in critical_ix:
            cls.append("critical")
        x0, x1 = x_of(o["call"]), x_of(_ret(o, end))
        y = top + row[o["process"]] * row_height
        title = f"#{i} process {o['process']}: {o.get('description', '')} ({o.get('status')}"
        title += ")" if o.get("required", True) else ", may not have happened)"
        title += f"; call {o['call'] / 1e9:.6f} s"
        if o.get("return") is not None:
            title += f", return {o['return'] / 1e9:.6f} s"
        if i in order:
            title += f"; linearized #{order[i]}, state after: {state_after[i]}"
        boxes.append(Box(round(x0, 1), y, round(max(x1 - x0, 4.0), 1), " ".join(cls), i, o.get("description", ""), title))
        if i in order and point_t.get(i) is not None:
            points.append(Point(round(x_of(point_t[i]), 1), y + row_height / 2 - 3, i, state_after[i], order[i]))
    points.sort(key=lambda p: p.order)
    cut = None
    if failed and path:
        last = path[-1]["index"]
        cut = next((p.x for p in points if p.index == last), None)
    descr = {o["index"]: o.get("description", "") for o in ops}
    return Band(
        key=str(part.get("key")), valid=part.get("valid"), width=round((xs[-1] if xs else left) + 60, 1),
        height=top + max(len(procs), 1) * row_height + 6,
        rows=[(str(p), top + i * row_height) for i, p in enumerate(procs)], boxes=boxes, points=points,
        cut_x=cut, shown=len(shown), total=len(ops), linearized=part.get("linearized"),
        required=part.get("required"), initial_state=str(part.get("initial_state", "")),
        final_state=str(part.get("final_state", "")), blocked=blocked,
        tail=[{"index": p["index"], "description": descr.get(p["index"], ""), "state": p.get("state", ""),
               "order": order[p["index"]]} for p in path[-tail:]] if failed else [],
        minimal=minimal, reason=part.get("reason", ""),
    )
