"""The report of one run: index.html in the run directory, from its files alone.

`render_run(run_dir)` is what the runner and `etcdproof report RUN_DIR` call. The page is one
self-contained file (the plot is embedded), readable without a network or a server.
"""
from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import jinja2

from checker.stats import counts
from reports.data import RunData, checker_rows, completed_ops, fault_periods, load_run, verdict_word
from reports.plots import latency_png

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
    autoescape=True, undefined=jinja2.StrictUndefined,
)


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


def linearizable_failures(result: dict, by_index: dict) -> list[dict]:
    """Per failing partition: where the search got stuck and the smallest set of ops to look at."""
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
        })
    return out


def page(run: RunData) -> str:
    test, results = run.test, run.results
    ops = completed_ops(run.history)
    faults = fault_periods(run.history)
    spec = test.get("spec", {})
    params = [(k, spec[k]) for k in sorted(spec)]
    params += [("concurrency (workers)", test.get("concurrency")),
               ("nodes", ", ".join(f"{n['name']} ({n['address']})" for n in test.get("nodes", []))),
               ("db versions", "; ".join(f"{k}: {v}" for k, v in (test.get("db", {}).get("versions") or {}).items())),
               ("partitions possible", test.get("can_partition", True) or test.get("why_not_partition"))]
    # a checker may name an op by its invocation or by its completion; either finds it
    by_index = {o.index: o for o in ops} | {o.end_index: o for o in ops if o.end_index is not None}
    failures = []
    for name, r in sorted((results.get("checkers") or {}).items()):
        if r.get("valid") is True:
            continue
        if r.get("checker") == "linearizable":
            parts, shown = linearizable_failures(r, by_index), []
        else:
            picked = {by_index[i].index: by_index[i] for i in ops_of_interest(r) if i in by_index}
            parts, shown = [], [picked[i] for i in sorted(picked)][:200]
        failures.append({"name": name, "word": verdict_word(r.get("valid")), "ops": shown, "partitions": parts,
                         "reason": r.get("reason", ""), "json": json.dumps(r, indent=2, default=str)[:200_000]})
    png = latency_png(ops, faults, test.get("name", "")) if ops or faults else b""
    files = sorted(str(p.relative_to(run.run_dir)) for p in run.run_dir.rglob("*")
                   if p.is_file() and p.name != "index.html")
    return _env.get_template("run.html.j2").render(
        name=test.get("name", run.run_dir.name), verdict=verdict_word(results.get("valid", "unknown")),
        run_dir=str(run.run_dir), interrupted=bool(results.get("interrupted")),
        checkers=[dict(r, word=verdict_word(r["valid"])) for r in checker_rows(results)],
        results_reason=results.get("reason", ""), params=params,
        counts=sorted(counts(run.history).items()), latency_png=base64.b64encode(png).decode() if png else "",
        faults=[dict(vars(f), detail_json=json.dumps(f.detail, indent=2, default=str)) for f in faults],
        nemesis=test.get("nemesis", []), refused=test.get("refused_faults") or {},
        failures=failures, files=files,
    )


def render_run(run_dir: str | Path) -> Path:
    run = load_run(run_dir)
    out = run.run_dir / "index.html"
    tmp = out.with_name(".index.html.tmp")
    tmp.write_text(page(run), encoding="utf-8")
    os.replace(tmp, out)
    return out
