"""The report of one run, from its files alone: index.html in the run directory, and beside it
report/ with the plots (PNG) and the history pages (every history line, with an anchor per op:
history.html, then history-2.html... of HISTORY_PER_PAGE lines each, so a 100k-op run is a few
pages a browser opens in a second, not one 20 MB table).

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

REPORT_DIR = "report"  # plots and the history pages, beside index.html
HISTORY_PAGE = f"{REPORT_DIR}/history.html"  # the first history page
HISTORY_PER_PAGE = 10_000
TIMELINE_PER_PAGE = 5_000  # ops drawn on one timeline (index.html holds the first)


def timeline_file(page: int) -> str:
    """The file (relative to the run directory) of timeline page `page` >= 1; 0 is index.html."""
    return f"{REPORT_DIR}/timeline-{page + 1}.html"


def history_file(page: int) -> str:
    """The file name (in report/) of history page `page`, counted from 0."""
    return "history.html" if page == 0 else f"history-{page + 1}.html"


class HistoryLinks:
    """Which history page holds each op, by position in the history (indexes need not be dense)."""

    def __init__(self, history: list, per_page: int = HISTORY_PER_PAGE) -> None:
        if per_page < 1:
            raise ValueError(f"history pages need at least 1 line each, not {per_page}")
        self.per_page = per_page
        self.pages = max(1, -(-len(history) // per_page))
        self.page_of = {op.index: pos // per_page for pos, op in enumerate(history)}

    def file(self, index: int) -> str:
        return history_file(self.page_of.get(index, 0))

    def from_report(self, index: int) -> str:
        """The link to op `index` from index.html."""
        return f"{REPORT_DIR}/{self.file(index)}#op-{index}"

    def from_page(self, page: int, index: int) -> str:
        """The link to op `index` from history page `page`."""
        target = self.page_of.get(index, 0)
        return f"#op-{index}" if target == page else f"{history_file(target)}#op-{index}"


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
            "refutation": part.get("refutation"),
            "label": "the whole history" if part.get("key") is None else part.get("key"),  # unpartitioned models
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


def timeline_nav(n_ops: int, per_page: int) -> list[dict]:
    """Links to every timeline page, as index.html sees them: [{file, first, last}] (op counts)."""
    pages = max(1, -(-n_ops // per_page))
    return [{"file": "index.html#timeline" if k == 0 else timeline_file(k), "first": k * per_page + 1,
             "last": min(n_ops, (k + 1) * per_page)} for k in range(pages)]


def timeline_pages(run: RunData, ops: list[Completed], faults, links: HistoryLinks,
                   per_page: int = TIMELINE_PER_PAGE) -> list[tuple[str, str]]:
    """(file relative to the run directory, HTML) of the timeline pages after the first."""
    nav = timeline_nav(len(ops), per_page)
    name = run.test.get("name", run.run_dir.name)
    template = env.get_template("timeline.html.j2")
    # from report/: the first page is ../index.html, the others are siblings
    rel = [dict(p, file="../index.html#timeline" if k == 0 else p["file"].removeprefix(f"{REPORT_DIR}/"))
           for k, p in enumerate(nav)]
    out = []
    for k in range(1, len(nav)):
        t = timeline_layout(ops, faults, max_ops=per_page, skip=k * per_page)
        out.append((nav[k]["file"], template.render(
            name=name, timeline=t, page=k, nav=rel, total=len(ops),
            op_href=lambda i: f"{links.file(i)}#op-{i}")))
    return out


def page(run: RunData, per_page: int = HISTORY_PER_PAGE, timeline_per_page: int = TIMELINE_PER_PAGE) -> str:
    test, results = run.test, run.results
    ops = completed_ops(run.history)
    faults = fault_periods(run.history)
    # a checker may name an op by its invocation or by its completion; either finds it
    by_index = {o.index: o for o in ops} | {o.end_index: o for o in ops if o.end_index is not None}
    links = HistoryLinks(run.history, per_page)
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
        counts=count_rows, totals=totals, figures=figures, history_page=HISTORY_PAGE, op_href=links.from_report,
        history_files=[f"{REPORT_DIR}/{history_file(k)}" for k in range(links.pages)],
        faults=[dict(vars(f), detail_json=json.dumps(f.detail, indent=2, default=str)) for f in faults],
        nemesis=test.get("nemesis", []), refused=test.get("refused_faults") or {},
        timeline=timeline_layout(ops, faults, max_ops=timeline_per_page),
        timeline_nav=timeline_nav(len(ops), timeline_per_page), failures=failure_views(results, by_index),
        files=files, has_history=bool(run.history), note=test.get("note", ""),
    )


def history_pages(run: RunData, per_page: int = HISTORY_PER_PAGE) -> list[tuple[str, str]]:
    """(file name in report/, HTML) of every history page, in order."""
    links = HistoryLinks(run.history, per_page)
    rows = history_rows(run.history)
    name = run.test.get("name", run.run_dir.name)
    template = env.get_template("history.html.j2")
    nav = [{"file": history_file(k), "first": k * per_page, "last": min(len(rows), (k + 1) * per_page) - 1}
           for k in range(links.pages)]
    out = []
    for k in range(links.pages):
        out.append((history_file(k), template.render(
            name=name, rows=rows[k * per_page:(k + 1) * per_page], page=k, nav=nav, total=len(rows),
            pair_href=lambda i, k=k: links.from_page(k, i),
            dumps=lambda v: json.dumps(v, default=str, separators=(", ", ": ")))))
    return out


def render_run(run_dir: str | Path, per_page: int = HISTORY_PER_PAGE,
               timeline_per_page: int = TIMELINE_PER_PAGE) -> Path:
    """Write index.html and report/ of a run directory; returns the index.html path."""
    run = load_run(run_dir)
    report = run.run_dir / REPORT_DIR
    report.mkdir(exist_ok=True)
    pages = [(f"{REPORT_DIR}/{f}", html) for f, html in history_pages(run, per_page)]
    ops = completed_ops(run.history)
    pages += timeline_pages(run, ops, fault_periods(run.history), HistoryLinks(run.history, per_page),
                            timeline_per_page)
    written = {f for f, _ in pages}
    for old in [*report.glob("history-*.html"), *report.glob("timeline-*.html")]:  # from a longer rendering
        if str(old.relative_to(run.run_dir)) not in written:
            old.unlink()
    for f, html in pages:
        write_atomic(run.run_dir / f, html.encode())
    out = run.run_dir / "index.html"
    write_atomic(out, page(run, per_page, timeline_per_page).encode())
    return out
