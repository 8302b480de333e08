"""The reports' data preparation on small inputs: quantile windows, throughput buckets, fault
periods, clock offsets, the timeline layout, the Porcupine band layout, the history page's pairs
and the store index's rows. Pure functions, so every expected number is worked out by hand.
"""
from __future__ import annotations

import pytest

from checker.history import FAIL, INFO, INVOKE, NEMESIS, OK, Op
from reports.data import Completed, FaultPeriod, completed_ops, fault_periods, history_rows, parameter_rows
from reports.index import _summary, bench_row, index_row
from reports.layout import band_layout, focus, process_order, ticks, timeline_layout
from reports.series import clock_samples, nice_width, quantile, quantile_windows, throughput_buckets

S = 1_000_000_000


def c(index: int, start: float, latency: float, typ: str = OK, f: str = "read", process=0, completed=True) -> Completed:
    return Completed(index, process, f, "k", typ, start, latency, "n1", None, None,
                     index + 1 if completed else None, None)


def ops(*events: tuple) -> list[Op]:
    """(process, type, f, value, t seconds) -> a history with indexes in order."""
    return [Op(i, p, typ, f, value=v, time=int(t * S)) for i, (p, typ, f, v, t) in enumerate(events)]


# ------------------------------------------------------------------ series
def test_quantile_is_nearest_rank() -> None:
    vals = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert quantile(vals, 0.5) == 5.0
    assert quantile(vals, 0.95) == 10.0 and quantile(vals, 0.9) == 9.0
    assert quantile(vals, 1.0) == 10.0 and quantile(vals, 0.0) == 1.0
    assert quantile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        quantile([], 0.5)


def test_quantile_windows_group_by_invocation_and_skip_empty_windows() -> None:
    got = quantile_windows([c(0, 0.1, 0.010), c(2, 0.5, 0.030), c(4, 0.9, 0.020),
                            c(6, 0.95, 5.0, typ=INFO),  # a timeout's latency is not the store's
                            c(8, 2.2, 0.001)], width=1.0)
    assert [(w.start, w.end, w.count) for w in got] == [(0.0, 1.0, 3), (2.0, 3.0, 1)]  # window 1-2 empty: left out
    assert (got[0].p50, got[0].p95, got[0].p99, got[0].max) == (0.020, 0.030, 0.030, 0.030)
    assert got[1].p50 == got[1].max == 0.001
    assert quantile_windows([c(0, 0.1, 5.0, typ=INFO)], 1.0, types=(INFO,))[0].max == 5.0
    with pytest.raises(ValueError):
        quantile_windows([], 0)


def test_nice_width() -> None:
    assert nice_width(60) == 1.0 and nice_width(10) == 0.2 and nice_width(3000) == 60.0
    assert nice_width(0) == 0.1 and nice_width(10**7) == 3600.0


def test_throughput_buckets_count_completions_per_second() -> None:
    tp = throughput_buckets([c(0, 0.0, 0.2), c(2, 0.1, 0.3), c(4, 0.6, 0.1, typ=FAIL),
                             c(6, 0.2, 1.0, f="write"), c(8, 0.0, 9.0, typ=INFO, completed=False)],
                            width=0.5, end=2.0)
    assert tp.edges == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert tp.series[("read", OK)] == [4.0, 0, 0, 0, 0]  # two completions in 0.5 s
    assert tp.series[("read", FAIL)] == [0, 2.0, 0, 0, 0]
    assert tp.series[("write", OK)] == [0, 0, 2.0, 0, 0]
    assert ("read", INFO) not in tp.series  # never completed: not a completion
    assert throughput_buckets([], 1.0).edges == []


def test_fault_periods_pair_starts_with_stops_and_keep_refusals() -> None:
    h = ops((NEMESIS, INVOKE, "start-kill", None, 1), (NEMESIS, OK, "start-kill", {"nodes": ["n2"]}, 1.5),
            (NEMESIS, INVOKE, "start-clock", None, 2), (NEMESIS, FAIL, "start-clock", None, 2.1),
            (NEMESIS, INVOKE, "stop-kill", None, 4), (NEMESIS, OK, "stop-kill", {}, 4.2),
            (NEMESIS, INVOKE, "start-pause", None, 5), (NEMESIS, OK, "start-pause", {"nodes": ["n1"]}, 5.1))
    h[3].error = "no leader"
    got = fault_periods(h)
    assert [(f.name, f.start, f.end, f.applied, f.nodes) for f in got] == [
        ("kill", 1.5, 4.2, True, ["n2"]), ("clock", 2.1, None, False, []), ("pause", 5.1, None, True, ["n1"])]
    assert got[1].error == "no leader" and (got[0].outcome, got[1].outcome) == (OK, FAIL)


def test_clock_samples_from_bumps_strobes_and_resets() -> None:
    h = ops((NEMESIS, INVOKE, "start-clock", None, 1.0),
            (NEMESIS, OK, "start-clock", {"mode": "bump", "measured": {"n1": {"offset": 7.5, "error": 0.004}}}, 2.0),
            (NEMESIS, INVOKE, "stop-clock", None, 4.0),
            (NEMESIS, OK, "stop-clock", {"measured": {"n1": {"offset": 0.001}}}, 4.5),
            (NEMESIS, INVOKE, "start-clock", None, 6.0),
            (NEMESIS, OK, "start-clock", {"mode": "strobe", "strobes": {"n2": {"samples": [0.0, 3.0, 0.0]}}}, 10.0),
            (NEMESIS, INVOKE, "start-clock", None, 11.0), (NEMESIS, FAIL, "start-clock", None, 11.5),
            (NEMESIS, INVOKE, "start-kill", None, 12.0), (NEMESIS, OK, "start-kill", {"measured": {"n1": 1}}, 12.5))
    got = clock_samples(h)
    assert [(s.time, s.offset) for s in got["n1"]] == [(2.0, 7.5), (4.5, 0.001)]
    assert [(s.time, s.offset) for s in got["n2"]] == [(7.0, 0.0), (8.0, 3.0), (9.0, 0.0)]  # spread over the op
    assert clock_samples(ops((0, INVOKE, "read", None, 0), (0, OK, "read", 1, 1))) == {}


def test_completed_ops_and_history_pairs() -> None:
    h = ops((0, INVOKE, "write", 3, 0.0), (NEMESIS, INVOKE, "start-kill", None, 0.1), (1, INVOKE, "read", None, 0.2),
            (NEMESIS, INVOKE, "start-pause", None, 0.25), (0, OK, "write", 3, 0.3), (NEMESIS, OK, "start-pause", {}, 0.35),
            (NEMESIS, OK, "start-kill", {}, 0.4))
    done = completed_ops(h)
    assert [(o.index, o.type, o.end_index, o.request) for o in done] == [(0, OK, 4, 3), (2, INFO, None, None)]
    assert done[1].error == "never completed" and done[1].end == pytest.approx(0.4)
    pairs = {r.op.index: r.pair for r in history_rows(h)}
    assert pairs == {0: 4, 4: 0, 1: 6, 6: 1, 2: None, 3: 5, 5: 3}  # overlapping nemesis ops pair by f


def test_parameter_rows_are_the_spec_and_the_workers() -> None:
    rows = parameter_rows({"spec": {"workload": "register", "rate": 10, "name": "", "nemesis": ["kill", "clock"]},
                           "concurrency": 6})
    assert rows == [("nemesis", "kill, clock"), ("rate", 10), ("workload", "register"), ("workers (concurrency)", 6)]


# ------------------------------------------------------------------ timeline
def test_timeline_rows_scale_and_spans() -> None:
    done = [c(0, 0.5, 0.25, process=10), c(2, 1.0, 0.0001, process=2), c(4, 0.0, 0.1, process="x"),
            c(6, 2.0, 1.0, typ=INFO, process=2, completed=False)]
    faults = [FaultPeriod("kill", 1.0, 2.0, True, ["n1"]), FaultPeriod("clock", 1.5, None, False)]
    t = timeline_layout(done, faults, run_end=4.0, left=10, top=20, row_height=16, max_width=4030)
    assert t.px_per_s == 400.0  # (4030 - 10 - 20) / 4 s = 1000, clamped to 400
    assert [label for label, _ in t.rows] == ["2 n1", "10 n1", "x n1"]
    by = {b.index: b for b in t.boxes}
    assert (by[0].x, by[0].w, by[0].y) == (10 + 0.5 * 400, 100.0, 20 + 16)
    assert by[2].w == 2.0  # a 0.1 ms op still shows
    assert by[6].cls == "info open" and by[4].y == 20 + 2 * 16
    assert [(s.x, s.w, s.label) for s in t.spans] == [(410.0, 400.0, "kill on n1")]  # refused: not shaded
    assert t.ticks[0] == (10.0, "0 s") and t.width == 10 + 4 * 400 + 20
    assert timeline_layout(done, faults, max_ops=2).truncated == 2


def test_ticks_and_process_order() -> None:
    assert ticks(0, 10, 10) == [0, 10]  # 80 px apart at 10 px/unit: a step of 10
    assert ticks(0, 1, 400) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert process_order(["nemesis", 10, 2, "a"]) == [2, 10, "a", "nemesis"]


# ------------------------------------------------------------------ bands
def part(valid=False) -> dict:
    ops_ = [  # process 0 writes 1 then 2; process 1 reads 1 after the second write: stale
        {"index": 0, "completion": 1, "process": 0, "call": 0, "return": 10, "status": "ok", "required": True,
         "description": "write 1"},
        {"index": 2, "completion": 3, "process": 0, "call": 20, "return": 30, "status": "ok", "required": True,
         "description": "write 2"},
        {"index": 4, "completion": 5, "process": 1, "call": 25, "return": 60, "status": "info", "required": False,
         "description": "write 3"},
        {"index": 6, "completion": 7, "process": 2, "call": 40, "return": 50, "status": "ok", "required": True,
         "description": "read 1"},
    ]
    p = {"key": "k", "valid": valid, "ops": ops_, "initial_state": "nil", "final_state": "2",
         "linearized": 2, "required": 3}
    prefix = [{"index": 0, "state": "1", "point": 5}, {"index": 2, "state": "2", "point": 20}]
    if valid:
        p["linearization"] = prefix
    else:
        p["longest_prefix"] = prefix
        p["blocked"] = [{"index": 6, "state_before": "2", "description": "read 1", "why": "read 1 but the register holds 2"}]
        p["minimal"] = {"ops": [2, 6], "critical": [6]}
    return p


def test_band_layout_in_event_order_with_points_blocked_and_minimal() -> None:
    b = band_layout(part(), step=10, left=0, top=0, row_height=20)
    # distinct call/return times 0,10,20,25,30,40,50,60 take slots 0..7
    by = {o.index: o for o in b.boxes}
    assert (by[0].x, by[0].w) == (0, 10) and (by[2].x, by[2].w) == (20, 20)
    assert (by[4].x, by[4].w) == (30, 40) and (by[6].x, by[6].w) == (50, 10)
    assert [label for label, _ in b.rows] == ["0", "1", "2"] and by[6].y == 40
    assert by[0].cls == "ok lin" and by[2].cls == "ok lin minimal"
    assert by[4].cls == "info optional" and by[6].cls == "ok pending blocked minimal critical"
    assert [(p.x, p.order, p.state) for p in b.points] == [(5.0, 1, "1"), (20, 2, "2")]  # 5 ns: half way to 10
    assert b.cut_x == 20 and b.final_state == "2"
    assert [t["index"] for t in b.tail] == [0, 2] and b.blocked[0]["why"].startswith("read 1")
    assert "linearized #2, state after: 2" in by[2].title and "may not have happened" in by[4].title


def test_band_layout_of_a_valid_partition_has_no_cut() -> None:
    b = band_layout(part(valid=True))
    assert b.cut_x is None and b.tail == [] and all("pending" not in o.cls for o in b.boxes)
    assert {o.index for o in b.boxes if "lin" in o.cls} == {0, 2}


def test_focus_keeps_the_ops_around_the_failure() -> None:
    ops_ = [{"index": i, "call": 10 * i, "return": 10 * i + 5} for i in range(100)]
    got = focus(ops_, {50, 52}, max_ops=6)
    assert [o["index"] for o in got] == [48, 49, 50, 51, 52, 53]  # interest, then nearest
    assert [o["index"] for o in focus(ops_, set(), max_ops=3)] == [0, 1, 2]
    assert len(focus(ops_, {3}, max_ops=200)) == 100


# ------------------------------------------------------------------ index rows
def test_index_rows_of_runs_and_benchmarks() -> None:
    test = {"name": "register-etcd-kill", "spec": {"workload": "register", "db": "etcd"}, "nemesis": ["kill"],
            "started": 1000.0, "ended": 1065.0}
    results = {"valid": False, "checkers": {"stats": {"valid": True, "reason": "9 ok", "count": 9},
                                            "linearizable": {"valid": False, "reason": "not linearizable: r1"}}}
    row = index_row("register-etcd-kill/20261201T000000Z", test, results, {"index.html", "history.jsonl", "test.json"})
    assert (row.verdict, row.workload, row.db, row.nemesis, row.ops, row.duration) == (
        "INVALID", "register", "etcd", "kill", 9, 65.0)
    assert row.summary == "linearizable: not linearizable: r1"
    assert row.report == "register-etcd-kill/20261201T000000Z/index.html"
    assert [f for f, _ in row.files] == ["history.jsonl", "test.json"]
    assert row.when == "1970-01-01 00:16:40 UTC"
    fresh = index_row("x/20261201T101010Z", {"spec": {}}, {}, {"test.json"})
    assert fresh.verdict == "unknown" and fresh.report is None and fresh.summary == "not checked yet"
    assert fresh.when == "2026-12-01 10:10:10 UTC"
    assert _summary({"interrupted": True, "reason": "interrupted before the run completed"}).startswith("interrupted")
    b = bench_row("bench-disk/20261201T000000Z", {"bench": "disk", "verdict": "below", "summary": "n1: BELOW"}, set())
    assert (b.kind, b.verdict, b.workload, b.summary) == ("bench disk", "below", "bench-disk", "n1: BELOW")
