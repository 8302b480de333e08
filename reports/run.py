"""The report of one run, from its files alone: index.html in the run directory, and beside it
report/ with the plots (PNG) and history.html (every history line, with an anchor per op).

`render_run(run_dir)` is what the runner and `etcdproof report RUN_DIR` call. Nothing here needs
a network or a server: open index.html from the disk, or browse it with `etcdproof serve`.
Data is prepared by the pure functions of reports.data, reports.series and reports.layout; this
module only puts them together and writes the files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from checker.stats import counts
from reports import plots
from reports.data import (Completed, RunData, checker_rows, completed_ops, fault_periods, history_rows, load_run,
                          parameter_rows, partition_note, target_rows, verdict_word)
from reports.layout import band_layout, timeline_layout
from reports.series import clock_samples, nice_width, quantile_windows, throughput_buckets
from reports.templating import env, write_atomic

REPORT_DIR = "report"  # plots and the history page, beside index.html
HISTORY_PAGE = f"{REPORT_DIR}/history.html"


def ops_of_interest(result: Any) -> set[int]:
    """Op indexes a checker's result points at: ints under any key naming ops (op, ops, op_index...)."""
    found: set[int] = set()

    def walk(x: Any, opish: bool) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, opish or "op" in str(k).lower() or k == "index")
        elif isinstance(x, list):
            for v in x:
                walk(v, opish)
        elif opish and isinstance(x, int) and not isinstance(x, bool):
            found.add(x)

    walk(result, False)
    return found


def linearizable_failures(result: dict, by_index: dict[int, Completed]) -> list[dict]:
    """Per failing partition: where the search got stuck, the smallest set of ops to look at, and
    its band (reports.layout.band_layout)."""
    out = []
    for part in result.get("partitions", []):
        if part.get("valid") is True:
            continue
        minimal = part.get("minimal") or {}
        picked = sorted(set(minimal.get("ops") or []) | {b["index"] for b in part.get("blocked", [])})
        out.append({
            "key": part.get("key"), "valid": verdict_word(part.get("valid")), "reason": part.get("reason", ""),
            "linearized": part.get("linearized"), "required": part.get("required"),
            "final_state": part.get("final_state"), "blocked": part.get("blocked", []),
            "minimal_initial": minimal.get("initial_state"), "minimal_complete": minimal.get("complete"),
            "critical": set(minimal.get("critical") or []),
            "ops": [by_index[i] for i in picked if i in by_index],
            "band": band_layout(part),
        })
    return out


def valid_bands(result: dict, limit: int = 40) -> list:
    """Bands of the partitions that passed (the first `limit`), drawn smaller, for context."""
    return [band_layout(p, max_ops=150) for p in result.get("partitions", []) if p.get("valid") is True][:limit]


def failure_views(results: dict, by_index: dict[int, Completed]) -> list[dict]:
    views = []
    for name, r in sorted((results.get("checkers") or {}).items()):
        if r.get("valid") is True:
            continue
        if r.get("checker") == "linearizable":
            parts, shown, passed = linearizable_failures(r, by_index), [], valid_bands(r)
        else:
            picked = {by_index[i].index: by_index[i] for i in ops_of_interest(r) if i in by_index}
            parts, shown, passed = [], [picked[i] for i in sorted(picked)][:200], []
        views.append({"name": name, "word": verdict_word(r.get("valid")), "ops": shown, "partitions": parts,
                      "passed": passed, "reason": r.get("reason", ""),
                      "json": json.dumps(r, indent=2, default=str)[:200_000]})
    return views


def write_plots(run: RunData, ops: list[Completed], faults, out: Path) -> list[dict]:
    """The PNGs of the run into out/; [{file, alt, title}] for the page, in page order."""
    out.mkdir(exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    if not ops and not faults:
        return []
    end = max([o.end for o in ops] + [f.end or f.start for f in faults] + [1.0])
    width = nice_width(end)
    shown = [f for f in faults if f.applied]
    figs = [
        ("latency.png", "latency of every op over time, by outcome, fault periods shaded",
         plots.latency_png(ops, shown)),
        ("quantiles.png", f"latency p50/p95/p99/max of ok ops per {width:g} s window, fault periods shaded",
         plots.quantiles_png(quantile_windows(ops, width), shown, width, end)),
        ("throughput.png", f"completions per second by op and outcome ({width:g} s buckets), fault periods shaded",
         plots.throughput_png(throughput_buckets(ops, width, end), shown, end)),
    ]
    clocks = clock_samples(run.history)
    if clocks and any(f.name == "clock" for f in shown):  # only when the clock fault really ran
        figs.append(("clock.png", "each node's wall-clock offset as the clock fault measured it",
                     plots.clock_png(clocks, shown, end)))
    listed = []
    for name, alt, png in figs:
        write_atomic(out / name, png)
        listed.append({"file": f"{REPORT_DIR}/{name}", "alt": alt})
    return listed


def page(run: RunData) -> str:
    test, results = run.test, run.results
    ops = completed_ops(run.history)
    faults = fault_periods(run.history)
    # a checker may name an op by its invocation or by its completion; either finds it
    by_index = {o.index: o for o in ops} | {o.end_index: o for o in ops if o.end_index is not None}
    figures = write_plots(run, ops, faults, run.run_dir / REPORT_DIR)
    files = sorted(str(p.relative_to(run.run_dir)) for p in run.run_dir.rglob("*")
                   if p.is_file() and p.name != "index.html" and not p.name.startswith(".")
                   and p.relative_to(run.run_dir).parts[0] != REPORT_DIR)
    count_rows = sorted(counts(run.history).items())
    totals = {k: sum(c[k] for _, c in count_rows) for k in ("ok", "fail", "info", "count")}
    return env.get_template("run.html.j2").render(
        name=test.get("name", run.run_dir.name), verdict=verdict_word(results.get("valid", "unknown")),
        run_dir=str(run.run_dir), interrupted=bool(results.get("interrupted")),
        checkers=[dict(r, word=verdict_word(r["valid"])) for r in checker_rows(results)],
        results_reason=results.get("reason", ""), params=parameter_rows(test), targets=target_rows(test),
        db_kind=(test.get("db") or {}).get("kind", test.get("spec", {}).get("db", "")), partitions=partition_note(test),
        counts=count_rows, totals=totals, figures=figures, history_page=HISTORY_PAGE,
        faults=[dict(vars(f), detail_json=json.dumps(f.detail, indent=2, default=str)) for f in faults],
        nemesis=test.get("nemesis", []), refused=test.get("refused_faults") or {},
        timeline=timeline_layout(ops, faults, max_ops=5000), failures=failure_views(results, by_index),
        files=files, has_history=bool(run.history), note=test.get("note", ""),
    )


def history_page(run: RunData) -> str:
    return env.get_template("history.html.j2").render(
        name=run.test.get("name", run.run_dir.name), rows=history_rows(run.history),
        dumps=lambda v: json.dumps(v, default=str, separators=(", ", ": ")))


def render_run(run_dir: str | Path) -> Path:
    """Write index.html and report/ of a run directory; returns the index.html path."""
    run = load_run(run_dir)
    (run.run_dir / REPORT_DIR).mkdir(exist_ok=True)
    write_atomic(run.run_dir / HISTORY_PAGE, history_page(run).encode())
    out = run.run_dir / "index.html"
    write_atomic(out, page(run).encode())
    return out
