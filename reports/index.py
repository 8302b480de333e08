"""store/index.html: every run and benchmark in the store, newest first, with verdict colours,
filters by workload, db and verdict, and links to each report and to the raw files.

`index_row` is pure (the files of a run, already read, to one row); `scan` reads the store;
`render_index(root)` writes the page. The runner calls `update(root)` after each run, and so do
the benchmarks; `etcdproof index` and `etcdproof serve` regenerate it on demand.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness.store import read_object
from reports.data import verdict_word
from reports.templating import env, write_atomic

BENCH_JSON = "bench.json"  # what a benchmark stores in its directory (bench/results.py)
RAW_FILES = ("history.jsonl", "results.json", "test.json", BENCH_JSON, "nodes")


@dataclass
class IndexRow:
    path: str  # the run directory, relative to the store root
    kind: str  # "test", or the benchmark ("bench disk", "bench kv")
    name: str
    workload: str
    db: str
    nemesis: str
    verdict: str  # valid | INVALID | unknown, or a benchmark's meets | below | unknown
    started: float  # Unix seconds (0: unknown)
    duration: float | None
    ops: int | None
    summary: str  # one line: why (the first non-valid checker's reason), or the benchmark's headline
    report: str | None  # the report page, relative to the store root (None: not rendered)
    files: list[tuple[str, str]] = field(default_factory=list)  # (label, relative link)
    interrupted: bool = False

    @property
    def when(self) -> str:
        if not self.started:
            return ""
        return datetime.fromtimestamp(self.started, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _stamp_time(name: str) -> float:
    """A run directory's name is its UTC start time (20261201T192128Z[-n]); 0 if it is not."""
    try:
        return datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return 0.0


def _summary(results: dict) -> str:
    if results.get("interrupted"):
        return results.get("reason") or "interrupted"
    checkers = results.get("checkers") or {}
    for want in (False, "unknown"):
        for name, r in sorted(checkers.items()):
            v = r.get("valid", "unknown")
            if v is want or (want == "unknown" and v not in (True, False)):
                return f"{name}: {r.get('reason', '')}"
    if checkers:
        return "; ".join(f"{n}: {r.get('reason', '')}" for n, r in sorted(checkers.items()))[:300]
    return results.get("reason", "not checked yet" if not results else "")


def index_row(rel: str, test: dict, results: dict, present: set[str]) -> IndexRow:
    """A test run's row from its test.json and results.json (either may be empty: not written yet)."""
    spec = test.get("spec") or {}
    started = float(test.get("started") or _stamp_time(Path(rel).name))
    ended = test.get("ended")
    stats = (results.get("checkers") or {}).get("stats") or {}
    interrupted = bool(results.get("interrupted") or test.get("interrupted"))
    return IndexRow(
        path=rel, kind="test", name=test.get("name") or Path(rel).parent.name,
        workload=str(spec.get("workload", "")), db=str(spec.get("db") or (test.get("db") or {}).get("kind", "")),
        nemesis=",".join(test.get("nemesis") or spec.get("nemesis") or []) or "none",
        verdict=verdict_word(results.get("valid", "unknown")) if results else "unknown",
        started=started, duration=(float(ended) - started) if ended and started else None,
        ops=stats.get("count"), summary=_summary(results), interrupted=interrupted,
        report=f"{rel}/index.html" if "index.html" in present else None,
        files=[(f, f"{rel}/{f}") for f in RAW_FILES if f in present],
    )


def bench_row(rel: str, bench: dict, present: set[str]) -> IndexRow:
    """A benchmark's row from its bench.json (bench/results.py)."""
    started = float(bench.get("started") or _stamp_time(Path(rel).name))
    return IndexRow(
        path=rel, kind=f"bench {bench.get('bench', '?')}", name=bench.get("name") or Path(rel).parent.name,
        workload=f"bench-{bench.get('bench', '?')}", db=str(bench.get("db", "")), nemesis="",
        verdict=str(bench.get("verdict", "unknown")), started=started, duration=bench.get("seconds"),
        ops=None, summary=str(bench.get("summary", "")),
        report=f"{rel}/index.html" if "index.html" in present else None,
        files=[(f, f"{rel}/{f}") for f in RAW_FILES if f in present],
    )


def _read(p: Path) -> dict:
    """A run's JSON object, {} when it cannot be read: one broken run must not hide the others."""
    try:
        return read_object(p)
    except (OSError, ValueError):
        return {}


def scan(root: Path) -> list[IndexRow]:
    """Every run (a directory with test.json) and benchmark (with bench.json) two levels down."""
    rows = []
    for d in sorted(p for p in root.glob("*/*") if p.is_dir() and not p.is_symlink() and not p.parent.is_symlink()):
        present = {p.name for p in d.iterdir()} if d.exists() else set()
        rel = d.relative_to(root).as_posix()
        if "test.json" in present:
            rows.append(index_row(rel, _read(d / "test.json"), _read(d / "results.json"), present))
        elif BENCH_JSON in present:
            rows.append(bench_row(rel, _read(d / BENCH_JSON), present))
    rows.sort(key=lambda r: (r.started, r.path), reverse=True)
    return rows


def choices(rows: list[IndexRow], attr: str) -> list[str]:
    return sorted({getattr(r, attr) for r in rows if getattr(r, attr)})


def page(root: Path, rows: list[IndexRow]) -> str:
    return env.get_template("index.html.j2").render(
        root=str(root), rows=rows, workloads=choices(rows, "workload"), dbs=choices(rows, "db"),
        verdicts=choices(rows, "verdict"), generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"))


def render_index(root: str | Path) -> Path:
    """Write <root>/index.html from what the store holds now."""
    r = Path(root)
    r.mkdir(parents=True, exist_ok=True)
    out = r / "index.html"
    write_atomic(out, page(r, scan(r)).encode())
    return out


def update(root: str | Path) -> Path | None:
    """render_index for callers that must not fail because of it (the runner, the benchmarks)."""
    try:
        return render_index(root)
    except Exception as e:  # noqa: BLE001 - a run's verdict stands without the index
        print(f"etcdproof: could not update {Path(root) / 'index.html'}: {e}", file=sys.stderr)
        return None


def index_main(argv: list[str]) -> int:
    """`etcdproof index [--store DIR]`: regenerate store/index.html."""
    from harness.store import store_root

    p = argparse.ArgumentParser(prog="etcdproof index", description="Regenerate the store's index.html.")
    p.add_argument("--store", help="store root (default $ETCDPROOF_STORE or ./store)")
    args = p.parse_args(argv)
    root = store_root(args.store)
    if not root.is_dir():
        print(f"etcdproof index: {root} is not a directory", file=sys.stderr)
        return 2
    print(render_index(root))
    return 0
