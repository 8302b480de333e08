"""Reports of stored runs: a valid, an invalid and an unknown run from tests/data/runs (real short
runs on the embedded cluster, trimmed; see make_fixtures.py there), rendered into a temporary store.

What must hold: each page states its verdict with each checker's reason, the parameters, targets
and versions, op counts and the faults with their times; the plots are real PNGs (the clock plot
only where the clock fault ran); the timeline draws every client op; the history page has an
anchor for every line; the invalid run's failure view draws its failing partition and names the
planted op, the op that breaks the prefix and the minimal set, each linked to its history line;
and the store index lists the three with their verdicts.
"""
from __future__ import annotations

import json
import re
from html import escape
import shutil
from pathlib import Path

import pytest

from checker.history import NEMESIS, load_history
from harness.testcmd import report_main
from reports.index import render_index
from reports.run import render_run

FIXTURES = Path(__file__).parent / "data" / "runs"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The three fixtures as runs of a store: store/fixture-<kind>/<time>/."""
    for i, kind in enumerate(("valid", "invalid", "unknown")):
        shutil.copytree(FIXTURES / kind, tmp_path / f"fixture-{kind}" / f"20261201T20000{i}Z")
    return tmp_path


def run_dir(store: Path, kind: str) -> Path:
    return next((store / f"fixture-{kind}").iterdir())


def test_the_fixtures_are_what_they_claim() -> None:
    for kind, want in (("valid", True), ("invalid", False), ("unknown", "unknown")):
        assert json.loads((FIXTURES / kind / "results.json").read_text())["valid"] == want
    assert json.loads((FIXTURES / "unknown" / "results.json").read_text())["interrupted"] is True
    size = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    assert size < 300_000, size


def pngs(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (d / "report").glob("*.png")}


def test_a_valid_run(store: Path) -> None:
    d = run_dir(store, "valid")
    html = render_run(d).read_text()
    assert "<title>fixture-valid: valid</title>" in html
    assert html.count('class="badge valid"') >= 3  # the run and both checkers
    assert re.search(r"<td>linearizable</td>.*?\d+ ops in 4 partitions linearizable", html, re.S)
    for param in ("<th>seed</th>", "<th>nemesis_interval</th>", "<th>workers (concurrency)</th><td>6</td>"):
        assert param in html
    test = json.loads((d / "test.json").read_text())
    for n in test["nodes"]:  # the targets: node, address, the version it reported
        assert f"<tr><td>{n['name']}</td><td>{n['address']}</td><td>{n['host']}</td><td>{test['db']['versions'][n['name']]}</td></tr>" in html
    # faults with their times: the kill and the clock bump, as applied
    assert re.search(r"<td>kill</td><td class=\"num\">\d+\.\d\d</td><td class=\"num\">\d+\.\d\d</td>\s*<td>n1</td><td>yes</td>", html)
    assert re.search(r"<td>clock</td><td class=\"num\">\d+\.\d\d</td>", html)
    # op counts: the totals row adds up to the client completions of the history
    history = load_history(str(d / "history.jsonl"))
    done = [op for op in history if op.process != NEMESIS and op.type != "invoke"]
    assert f'<th class="num">{len(done)}</th></tr>' in html
    # every plot is a PNG, referenced by the page; the clock plot because a bump was applied
    got = pngs(d)
    assert set(got) == {"latency.png", "quantiles.png", "throughput.png", "clock.png"}
    assert all(b.startswith(PNG) and len(b) > 10_000 for b in got.values())
    assert all(f'src="report/{name}"' in html for name in got)
    # the timeline draws each client op once, linked to its history line
    invokes = [op for op in history if op.process != NEMESIS and op.type == "invoke"]
    boxes = re.findall(r'<a class="op [^"]*" href="report/history.html#op-(\d+)"', html.split('id="timeline"')[1])
    assert sorted(map(int, boxes)) == sorted(op.index for op in invokes)
    page = (d / "report" / "history.html").read_text()
    assert all(f'id="op-{op.index}"' in page for op in history)
    assert "Why " not in html  # nothing failed


def test_an_invalid_run_shows_the_violation(store: Path) -> None:
    d = run_dir(store, "invalid")
    html = render_run(d).read_text()
    assert "<title>fixture-invalid: INVALID</title>" in html and "Why linearizable is INVALID" in html
    note = json.loads((d / "test.json").read_text())["note"]
    assert note in html
    planted = int(re.match(r"planted: op (\d+)", note).group(1))  # the completion the fixture changed
    history = load_history(str(d / "history.jsonl"))
    inv = max(op.index for op in history if op.index < planted and op.process == history[planted].process)
    result = json.loads((d / "results.json").read_text())["checkers"]["linearizable"]
    part = next(p for p in result["partitions"] if p["valid"] is False)
    view = html.split("Why linearizable is INVALID", 1)[1]
    band = view.split('<div class="tl band">', 1)[1].split("</svg>", 1)[0]
    classes = {int(i): cls for cls, i in re.findall(r'<a class="op ([^"]*)" href="report/history.html#op-(\d+)"', band)}
    assert "blocked" in classes[inv] and "minimal" in classes[inv]  # the planted read breaks the prefix
    assert all("minimal" in classes[i] for i in part["minimal"]["ops"])
    assert all("lin" in classes[p["index"]] for p in part["longest_prefix"] if p["index"] in classes)
    assert band.count("<circle") == sum(1 for p in part["longest_prefix"] if p["index"] in classes)
    assert f'longest linearizable prefix ends: {part["final_state"]}' in band
    # the op that breaks it, with the model state before it and why; the minimal set as rows
    for b in part["blocked"]:
        assert f'<td><a href="report/history.html#op-{b["index"]}">{b["index"]}</a></td><td>{escape(b["description"])}</td>' in view
        assert escape(b["why"]) in view
    for i in part["minimal"]["ops"]:
        assert re.search(rf'<tr[^>]*><td><a href="report/history.html#op-{i}">{i}</a></td>', view)
    assert f"takes {part['linearized']} of {part['required']} ops" in view
    assert "partitions that passed" in view  # the other keys, for context
    page = (d / "report" / "history.html").read_text()
    assert f'id="op-{inv}"' in page and f'href="#op-{planted}"' in page  # invoke and completion linked


def test_an_unknown_interrupted_run(store: Path) -> None:
    d = run_dir(store, "unknown")
    html = render_run(d).read_text()
    assert "<title>fixture-unknown: unknown</title>" in html and "<b>interrupted</b>" in html
    assert "interrupted before the run completed; not checked" in html
    assert "etcd" in html and "<h3>Targets: etcd</h3>" in html
    assert set(pngs(d)) == {"latency.png", "quantiles.png", "throughput.png"}  # no clock fault here
    assert 'class="op info open"' in html or 'class="op info"' in html  # ops cut short by the interrupt


def test_report_command_and_the_index(store: Path, capsys) -> None:
    d = run_dir(store, "invalid")
    assert report_main([str(d)]) == 0 and (d / "index.html").exists()
    assert report_main([str(store)]) == 2  # not a run directory
    for kind in ("valid", "unknown"):
        render_run(run_dir(store, kind))
    html = render_index(store).read_text()
    rows = re.findall(r'<tr data-workload="([^"]*)" data-db="([^"]*)" data-verdict="([^"]*)">', html)
    assert sorted(rows) == sorted([("register", "reference", "valid"), ("register", "reference", "INVALID"),
                                   ("register", "etcd", "unknown")])
    for kind in ("valid", "invalid", "unknown"):
        rel = run_dir(store, kind).relative_to(store).as_posix()
        assert f'href="{rel}/index.html"' in html and f'href="{rel}/history.jsonl"' in html
    assert '<option>INVALID</option>' in html and '<option>etcd</option>' in html


def test_refused_faults_say_why(tmp_path: Path) -> None:
    """A fault the nodes cannot take is listed as not applied, with the reason, and not shaded."""
    from checker.history import FAIL, INVOKE, OK, HistoryWriter, Op
    from harness import store as st

    run = tmp_path / "r"
    run.mkdir()
    with open(run / st.HISTORY, "w") as f:
        w = HistoryWriter(f)
        for op in (Op(0, 0, INVOKE, "read", key="k", time=0), Op(0, NEMESIS, INVOKE, "start-clock", time=10**8),
                   Op(0, NEMESIS, FAIL, "start-clock", time=2 * 10**8, error="refused: real etcd is a Go binary",
                      extra={"permanent": True}),
                   Op(0, 0, OK, "read", key="k", value=1, time=3 * 10**8, node="n1")):
            w.write(op)
    st.write_json(run / st.TEST_JSON, {"name": "refusals", "spec": {"workload": "register", "db": "etcd"},
                                       "nemesis": ["clock"], "refused_faults": {"clock": "real etcd is a Go binary"}})
    st.write_json(run / st.RESULTS, {"valid": True, "checkers": {"stats": {"valid": True, "reason": "1 ok"}}})
    html = render_run(run).read_text()
    assert "<td>clock</td>" in html and "<td>no: refused: real etcd is a Go binary</td>" in html
    assert "Refused fault classes: <b>clock</b>: real etcd is a Go binary" in html
    assert 'class="span"' not in html  # nothing shaded in the timeline


def test_a_long_history_is_paged_and_every_link_lands_on_its_line(store: Path) -> None:
    """With pages of 97 lines the invalid fixture spans several history pages: every line has its
    anchor on exactly one page, each invoke/completion link and each link of the report points
    at the page that holds that op, and a re-render with bigger pages removes the surplus ones."""
    d = run_dir(store, "invalid")
    history = load_history(str(d / "history.jsonl"))
    per = 97
    html = render_run(d, per_page=per).read_text()
    files = sorted((d / "report").glob("history*.html"))
    want = 1 + (len(history) - 1) // per
    assert want >= 3 and len(files) == want
    holder: dict[int, str] = {}
    for f in files:
        page = f.read_text()
        for i in map(int, re.findall(r'<tr id="op-(\d+)"', page)):
            assert i not in holder, f"op {i} on two pages"
            holder[i] = f.name
    assert sorted(holder) == sorted(op.index for op in history)
    assert holder[history[0].index] == "history.html" and holder[history[-1].index] == f"history-{want}.html"

    def lands(href: str, page: str) -> bool:
        target, _, anchor = href.partition("#op-")
        return holder[int(anchor)] == (target or page)

    for k, f in enumerate(sorted(files, key=lambda f: int(re.sub(r"\D", "", f.name) or 1))):
        page = f.read_text()
        pairs = re.findall(r'<td><a href="([^"]*#op-\d+)">\d+</a></td></tr>', page)
        assert pairs and all(lands(h, f.name) for h in pairs)
        assert f"page {k + 1} of {want}:" in page
        assert ('rel="prev"' in page) == (k > 0) and ('rel="next"' in page) == (k < want - 1)
    crossing = [h for f in files for h in re.findall(r'<td><a href="(history[^"]*#op-\d+)">', f.read_text())]
    assert crossing, "no invoke/completion pair crosses a page boundary"  # the case that needs the file name
    links = re.findall(r'href="report/(history[^"#]*\.html)#op-(\d+)"', html)
    assert links and all(holder[int(i)] == f for f, i in links)
    assert {f for f, _ in links} != {"history.html"}  # the report links into later pages too

    render_run(d, per_page=10 * per)
    assert len(list((d / "report").glob("history*.html"))) == 1 + (len(history) - 1) // (10 * per)


def test_a_long_timeline_is_paged_and_every_op_is_drawn_once(store: Path) -> None:
    """With 60 ops a timeline page, the valid fixture's ops are drawn across index.html and the
    report/timeline-N.html pages: each client op exactly once, each box linked to the history
    page that holds it, each page's boxes starting at its own left edge, the pages linked to
    each other; a re-render with one page removes the others."""
    d = run_dir(store, "valid")
    history = load_history(str(d / "history.jsonl"))
    invokes = sorted(op.index for op in history if op.process != NEMESIS and op.type == "invoke")
    per = 60
    html = render_run(d, per_page=97, timeline_per_page=per).read_text()
    want = -(-len(invokes) // per)
    pages = sorted((d / "report").glob("timeline-*.html"), key=lambda f: int(re.sub(r"\D", "", f.name)))
    assert want >= 3 and [f.name for f in pages] == [f"timeline-{k}.html" for k in range(2, want + 1)]
    holder = {}
    for f in (d / "report").glob("history*.html"):
        holder.update({int(i): f.name for i in re.findall(r'<tr id="op-(\d+)"', f.read_text())})
    first = re.findall(r'<a class="op [^"]*" href="report/(history[^"#]*)#op-(\d+)" style="left:([\d.]+)px',
                       html.split('id="timeline"')[1].split("</h2>", 2)[1].split("<h2", 1)[0])
    drawn = [(f, int(i), float(x)) for f, i, x in first]
    assert len(drawn) == per
    for f in pages:
        page = f.read_text()
        boxes = [(f_, int(i), float(x)) for f_, i, x in
                 re.findall(r'<a class="op [^"]*" href="(history[^"#]*)#op-(\d+)" style="left:([\d.]+)px', page)]
        assert boxes and min(x for _, _, x in boxes) < 12  # drawn from the page's first call
        drawn += boxes
        assert 'href="../index.html#timeline"' in page and f'of {want}:' in page
    assert sorted(i for _, i, _ in drawn) == invokes
    assert all(holder[i] == f for f, i, _ in drawn)
    assert all(f'href="report/timeline-{k}.html"' in html for k in range(2, want + 1))
    render_run(d, timeline_per_page=len(invokes))
    assert not list((d / "report").glob("timeline-*.html"))
