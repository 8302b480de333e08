"""The register workload's verdicts on planted histories, and the report's failure view.

Histories in exactly the format the runner records (invoke/ok/fail/info per process, a key per
op, monotonic ns times). A stale read, a lost acknowledged write and a read of a value never
written are each invalid, with the offending ops named in the result and shown in the report;
the same shapes without the planted fault are valid; a write that timed out may or may not
have happened, so either later read is accepted.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from checker.history import FAIL, INFO, INVOKE, OK, HistoryWriter, Op
from harness import store
from reports.run import render_run
from workloads.register import RegisterWorkload

S = 1_000_000_000


class H:
    """A history builder: ops(process, f, key, value, start, end, outcome)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.events: list[tuple[int, Op]] = []

    def op(self, process: int, f: str, key: str, value, start: float, end: float, typ: str = OK) -> "H":
        inv_value = None if f == "read" else value
        self.events.append((int(start * S), Op(0, process, INVOKE, f, inv_value, key=key, node="n1")))
        self.events.append((int(end * S), Op(0, process, typ, f, value, key=key, node="n1")))
        return self

    def build(self) -> list[Op]:
        out = []
        for i, (t, op) in enumerate(sorted(self.events, key=lambda e: e[0])):
            op.index, op.time = i, t
            out.append(op)
        return out


def check(history: list[Op]) -> dict:
    return RegisterWorkload().checkers()["linearizable"](history)


def offending(result: dict) -> set[int]:
    out: set[int] = set()
    for p in result["partitions"]:
        if p["valid"] is False:
            out |= set(p["minimal"]["ops"])
    return out


def index_of(history: list[Op], process: int, f: str) -> int:
    return next(op.index for op in history if op.process == process and op.f == f and op.type == INVOKE)


def stale_read(planted: bool) -> list[Op]:
    # write 1 then write 2 complete; a later read must see 2
    return (H().op(0, "write", "k", 1, 0, 1).op(0, "write", "k", 2, 2, 3)
            .op(1, "read", "k", 1 if planted else 2, 4, 5).build())


def lost_write(planted: bool) -> list[Op]:
    # an acknowledged write of 3, then (much later) a read that finds the old value
    return (H().op(0, "write", "k", 1, 0, 1).op(1, "write", "k", 3, 2, 3)
            .op(2, "read", "k", 1 if planted else 3, 10, 11).build())


def never_written(planted: bool) -> list[Op]:
    return H().op(0, "write", "k", 1, 0, 1).op(1, "read", "k", 4 if planted else 1, 2, 3).build()


@pytest.mark.parametrize("shape", [stale_read, lost_write, never_written], ids=lambda f: f.__name__)
def test_planted_violations_are_invalid_with_the_offending_ops(shape) -> None:
    good, bad = shape(False), shape(True)
    assert check(good)["valid"] is True
    res = check(bad)
    assert res["valid"] is False and res["failures"] == ["k"], res["reason"]
    assert "not linearizable: k" in res["reason"]
    read = index_of(bad, max(op.process for op in bad), "read")
    assert read in offending(res), (read, offending(res))


def test_a_timed_out_write_may_or_may_not_have_happened() -> None:
    for seen in (1, 5):
        h = (H().op(0, "write", "k", 1, 0, 1).op(1, "write", "k", 5, 2, 3, typ=INFO)
             .op(2, "read", "k", seen, 4, 5).build())
        assert check(h)["valid"] is True
    h = H().op(0, "write", "k", 1, 0, 1).op(1, "write", "k", 5, 2, 3, typ=INFO).op(2, "read", "k", 7, 4, 5).build()
    assert check(h)["valid"] is False


def test_a_failed_cas_did_not_happen() -> None:
    h = (H().op(0, "write", "k", 1, 0, 1).op(1, "cas", "k", [2, 9], 2, 3, typ=FAIL)
         .op(2, "read", "k", 1, 4, 5).build())
    assert check(h)["valid"] is True
    h = (H().op(0, "write", "k", 1, 0, 1).op(1, "cas", "k", [2, 9], 2, 3, typ=FAIL)
         .op(2, "read", "k", 9, 4, 5).build())
    assert check(h)["valid"] is False


def test_independent_keys_are_judged_apart() -> None:
    h = (H().op(0, "write", "a", 1, 0, 1).op(1, "read", "a", 1, 2, 3)
         .op(2, "write", "b", 1, 0, 1).op(3, "read", "b", 2, 2, 3).build())
    res = check(h)
    assert res["valid"] is False and res["failures"] == ["b"]


def test_the_report_shows_why_and_which_ops(tmp_path: Path) -> None:
    history = stale_read(True)
    run = tmp_path / "run"
    run.mkdir()
    with open(run / store.HISTORY, "w") as f:
        w = HistoryWriter(f)
        for op in history:
            w.write(op)
    res = check(history)
    store.write_json(run / store.TEST_JSON, {"name": "planted", "spec": {"workload": "register"}})
    store.write_json(run / store.RESULTS, {"valid": False, "checkers": {"linearizable": res}})
    html = render_run(run).read_text()
    assert "INVALID" in html and "Why linearizable is INVALID" in html
    view = html.split("Why linearizable is INVALID", 1)[1]
    # each shown op's index cell links to its line in the history page
    shown = {int(x) for x in re.findall(r'<tr[^>]*><td><a href="report/history.html#op-(\d+)">\1</a></td><td>\d+</td><td>n1</td>', view)}
    assert offending(res) <= shown, (offending(res), shown)
    assert "holds 2" in view or "register holds" in view, view[:2000]
    page = (run / "report" / "history.html").read_text()
    assert all(f'id="op-{i}"' in page for i in offending(res))
