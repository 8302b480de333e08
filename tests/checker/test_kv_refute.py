"""The KV pre-pass (checker.kvrefute): each rule refutes the histories it is for, never a
linearizable one (generated runs of the model, thousands of them, with the workload's requests
and a wider mix), and whenever it refutes a small history the brute-force oracle agrees. A
refuted check() result carries what reports read."""
from __future__ import annotations

import json
import os
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checker import synth
from checker.linearizable import check, operations
from checker.models import kv_model

from checker_oracle import brute_force
from test_against_brute_force import corrupt_kv, kv_mix
from test_kv_model import KV, kvs

MANY = settings(max_examples=int(os.environ.get("KVREFUTE_EXAMPLES", 3000)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=int(os.environ.get("CHECKER_EXAMPLES", 300)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def refutation(history):
    model = kv_model()
    return model.refute(model.refine(operations(history, model)))


def put_txn(key, value):
    return {"f": "put", "key": key, "value": value}


# one history per rule: (rule, history, indexes of the ops it must name)
CASES = {
    "revision made twice": (KV().put(0, "a", "1", rev=2).put(0, "b", "2", rev=2), [2, 0]),
    "real-time revision order": (KV().put(0, "a", "1", rev=2).get(0, "b", [], rev=1), [2, 0]),
    "entry fields": (KV().put(0, "a", "1", rev=2).get(0, "a", kvs("a", "1", 2, 2, 1), rev=2)
                     .get(0, "a", kvs("a", "1", 3, 2, 1), rev=2), [4]),  # created after modified
    "value nobody wrote": (KV().put(0, "a", "1", rev=2).get(0, "a", kvs("a", "zz", 2, 2, 1), rev=2), [2]),
    "maker of a revision": (KV().put(0, "a", "1", rev=2).put(0, "a", "2", rev=3)
                            .get(0, "a", kvs("a", "1", 2, 3, 2), rev=3), [4, 2]),
    "missed write": (KV().put(0, "a", "1", rev=2).put(0, "a", "2", rev=3)
                     .get(1, "a", kvs("a", "1", 2, 2, 1), rev=3), [4, 2]),
    "version count": (KV().put(0, "a", "1", rev=2).put(0, "a", "2", rev=3).put(0, "a", "3", rev=4)
                      .get(0, "a", kvs("a", "3", 2, 4, 2), rev=4), [6]),
}


def _compare_nobody_wrote():
    h = KV().put(0, "a", "1", rev=2)
    return h.txn(0, [{"key": "a", "target": "value", "result": "=", "value": "9"}], [put_txn("b", "x")], [],
                 True, [{}], rev=3)


def _maker_gap():
    """Revision 2 was made by a lost txn (nobody else writes), whose last put of a is "2"; a
    read shows a="1" at mod_revision 2 (the txn becomes a persisted request: KVModel.refine)."""
    h = KV()
    h.inv(1, "txn", {"compare": [], "success": [put_txn("a", "1"), put_txn("a", "2")], "failure": []})
    h.put(0, "b", "x", rev=3).get(0, "a", kvs("a", "1", 2, 2, 1), rev=3)
    return h.done(1, "info", "txn", None, error="timeout")


def _maker_gap_two():
    """The same with two such lost txns: neither is the only writer, so no persisted request;
    revision 2 is a gap that only they could fill, and neither leaves a="1"."""
    h = KV()
    for p in (1, 2):
        h.inv(p, "txn", {"compare": [], "success": [put_txn("a", "1"), put_txn("a", "2")], "failure": []})
    h.put(0, "b", "x", rev=3).get(0, "a", kvs("a", "1", 2, 2, 1), rev=3)
    for p in (1, 2):
        h.done(p, "info", "txn", None, error="timeout")
    return h


def _version_count_delete():
    return (KV().put(0, "a", "1", rev=2).delete(0, "a", 1, rev=3).put(0, "a", "2", rev=4)
            .get(0, "a", kvs("a", "2", 2, 4, 2), rev=4))


MORE = [("value nobody wrote", _compare_nobody_wrote(), [2]), ("maker of a revision", _maker_gap(), [3, 0]),
        ("maker of a revision", _maker_gap_two(), [4]),
        ("version count", _version_count_delete(), [6, 2])]


@pytest.mark.parametrize("rule,history,named", [(r, h, n) for r, (h, n) in CASES.items()] + MORE,
                         ids=[r for r in CASES] + [f"{r} ({n})" for n, (r, _, _) in enumerate(MORE)])
def test_each_rule_refutes_its_history(rule, history, named):
    r = refutation(history.ops)
    assert r is not None and r.rule == rule, r
    assert [op.index for op in r.ops] == named
    model = kv_model()
    assert not brute_force(operations(history.ops, model), model.init(), model.step)


def test_the_same_histories_fixed_pass():
    """The rules are not tripped by the linearizable neighbours of those histories."""
    ok = [
        KV().put(0, "a", "1", rev=2).put(0, "b", "2", rev=3).get(0, "b", kvs("b", "2", 3, 3, 1), rev=3),
        KV().put(0, "a", "1", rev=2).put(0, "a", "2", rev=3).get(1, "a", kvs("a", "2", 2, 3, 2), rev=3),
        KV().put(0, "a", "1", rev=2).put(0, "a", "2", rev=3).put(0, "a", "3", rev=4)
        .get(0, "a", kvs("a", "3", 2, 4, 3), rev=4),
        KV().put(0, "a", "1", rev=2).delete(0, "a", 1, rev=3).put(0, "a", "2", rev=4)
        .get(0, "a", kvs("a", "2", 4, 4, 1), rev=4),
        # a txn putting a key twice: version 2 with create == mod
        KV().txn(0, [], [put_txn("a", "1"), put_txn("a", "2")], [], True, [{}, {}], rev=2)
        .get(0, "a", kvs("a", "2", 2, 2, 2), rev=2),
    ]
    for h in ok:
        assert refutation(h.ops) is None
        assert check(h.ops, kv_model(), workers=1).valid is True


def test_a_refuted_result_has_what_reports_read():
    from reports.layout import band_layout

    h, named = CASES["maker of a revision"]
    r = check(h.ops, kv_model(), workers=1)
    assert r.valid is False
    p = r.failures[0]
    assert p.refutation is not None and [op.index for op, _ in p.blocked] == named
    d = r.to_dict()
    part = d["partitions"][0]
    assert part["refutation"] == {"rule": "maker of a revision", "why": p.refutation.why, "ops": named}
    assert "op 4" in part["blocked"][0]["why"] and "revision 3" in part["blocked"][0]["why"]
    assert "refuted before the search" in part["reason"] and d["reason"].startswith("not linearizable")
    assert part["longest_prefix"] == [] and part["linearized"] == 0
    assert part["minimal"]["ops"] and set(part["minimal"]["ops"]) <= set(named)
    band = band_layout(part)
    assert {b.index for b in band.boxes if "blocked" in b.cls} == set(named)
    json.dumps(d, default=str)


@MANY
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(1, 12), st.integers(1, 4), st.floats(0, 0.7),
       st.booleans())
def test_linearizable_histories_are_never_refuted(seed, n, processes, keys, info_rate, wide):
    rng = random.Random(seed)
    make = kv_mix(keys=("a", "b", "c")[:min(keys, 3)]) if wide else None
    h = synth.kv_history(rng, n, processes=processes, keys=keys, info_rate=info_rate, make=make)
    assert refutation(h) is None


@pytest.mark.parametrize("seed", range(6))
def test_long_linearizable_histories_are_never_refuted(seed):
    rng = random.Random(seed)
    h = synth.kv_history(rng, 3000, processes=20, keys=10, info_rate=0.1 + 0.1 * (seed % 3))
    assert refutation(h) is None
    h = synth.kv_history(rng, 1000, processes=10, info_rate=0.3, make=kv_mix())
    assert refutation(h) is None


def _agrees(h) -> bool:
    """If the pre-pass refutes, brute force (on the real, unrefined ops) says no."""
    r = refutation(h)
    if r is None:
        return False
    model = kv_model()
    assert not brute_force(operations(h, model), model.init(), model.step), (r, "\n".join(map(str, h)))
    return True


@SOME
@given(st.integers(0, 2**32), st.integers(1, 6), st.floats(0, 0.6), st.booleans())
def test_refutations_agree_with_brute_force(seed, n, info_rate, wide):
    rng = random.Random(seed)
    make = kv_mix(keys=("a", "b"), values=("x", 1, "1")) if wide else None
    _agrees(corrupt_kv(rng, synth.kv_history(rng, n, processes=3, keys=2, info_rate=info_rate, make=make)))


def test_refutations_agree_with_brute_force_and_come_up_often():
    """The same, on a fixed set: most single corruptions are refuted by the pre-pass (else the
    agreement above proves little), and every kind of corruption by some rule."""
    refuted, rules = 0, set()
    for seed in range(300):
        rng = random.Random(seed)
        h = synth.kv_history(rng, rng.randrange(3, 7), processes=3, keys=2, info_rate=0.2)
        bad = synth.corrupt_kv(rng, h, synth.CORRUPTIONS[seed % 3])
        if bad is h:
            continue
        if _agrees(bad):
            refuted += 1
            rules.add(refutation(bad).rule)
    assert refuted >= 120, refuted
    assert len(rules) >= 4, rules


@pytest.mark.parametrize("kind", synth.CORRUPTIONS)
def test_corrupted_long_histories_are_mostly_refuted(kind):
    """At the benchmark's scale (1k ops): one corruption of each kind, refuted without a search
    for most seeds (each check stays quick)."""
    hits = 0
    for seed in range(10):
        rng = random.Random(seed)
        h = synth.corrupt_kv(rng, synth.kv_history(rng, 1000, processes=5, keys=10), kind)
        hits += refutation(h) is not None
    assert hits >= 6, hits


def blank(rng: random.Random, history: list, rate: float) -> list:
    """Responses with fields left unrecorded at random (header revisions, kv fields, txn
    results): fewer observations, so a linearizable history stays linearizable."""
    from dataclasses import replace

    out = []
    for op in history:
        if op.type != "ok":
            out.append(op)
            continue
        extra, value = dict(op.extra or {}), op.value
        if "revision" in extra and rng.random() < rate:
            del extra["revision"]
        if isinstance(value, dict):
            value = dict(value)
            if op.f == "txn" and rng.random() < rate:
                value["results"] = None
            elif op.f == "txn" and value.get("results"):
                value["results"] = [dict(r) if isinstance(r, dict) else r for r in value["results"]]
            for r in ([value] if op.f == "range" else value.get("results") or []):
                if isinstance(r, dict) and r.get("kvs"):
                    r["kvs"] = [{f: x for f, x in kv.items() if f == "key" or rng.random() >= rate}
                                for kv in r["kvs"]]
        out.append(replace(op, extra=extra, value=value))
    return out


@MANY
@given(st.integers(0, 2**32), st.integers(1, 60), st.integers(1, 12), st.floats(0, 0.6), st.floats(0, 0.8),
       st.booleans())
def test_linearizable_histories_with_unrecorded_fields_are_never_refuted(seed, n, processes, info_rate, rate, wide):
    rng = random.Random(seed)
    make = kv_mix(keys=("a", "b", "c")) if wide else None
    h = synth.kv_history(rng, n, processes=processes, keys=3, info_rate=info_rate, make=make)
    assert refutation(blank(rng, h, rate)) is None


@pytest.mark.parametrize("rule,history,named", [(r, h, n) for r, (h, n) in CASES.items()] + MORE,
                         ids=[r for r in CASES] + [f"{r} ({n})" for n, (r, _, _) in enumerate(MORE)])
def test_a_refutation_gets_a_checked_minimal_set(rule, history, named):
    """Some of the ops the rule named, checked on their own: with every other op up to the last
    named one relaxed as explain.minimal would, brute force finds no linearization; with one
    more of them relaxed it finds one (1-minimal); and each critical op is one whose result,
    made unknown, lets the window pass."""
    from dataclasses import replace

    from checker import explain

    p = check(history.ops, kv_model(), workers=1).failures[0]
    mm = p.minimal
    assert p.refutation is not None and mm is not None and mm.complete and mm.by_rule == rule
    kept, critical = set(mm.ops), set(mm.critical)
    assert kept and kept <= set(named) and critical and critical <= set(named), (mm, named)
    model = kv_model()
    ops = model.refine(operations(history.ops, model))
    for n, op in enumerate(ops):
        op.id = n
    last = max(op.ret for op in ops if op.index in named)
    required = {op.id for op in ops if op.required}
    ids = {op.index: op.id for op in ops}

    def fails(keep: set[int], unknown: frozenset[int] = frozenset()) -> bool:
        window = explain._window(model, ops, None, last, required - {ids[i] for i in keep}, unknown)
        return not brute_force([replace(op) for op in window], model.init(), model.step)

    assert fails(kept)
    assert len(kept) == 1 or all(not fails(kept - {i}) for i in kept)
    assert all(not fails(kept, frozenset({ids[i]})) for i in critical)
    assert all(fails(kept, frozenset({ids[i]})) for i in set(named) - critical)


def test_refuted_long_histories_name_their_ops_quickly():
    """At 1k ops each refutation comes with its set: checked alone where the relaxed window is
    cheap to search (most of them), else the rule's ops marked as such; never more than the
    rule named, and the check stays quick."""
    import time

    refuted, checked = 0, 0
    t0 = time.monotonic()
    for kind in synth.CORRUPTIONS:
        for seed in range(4):
            rng = random.Random(seed)
            h = synth.corrupt_kv(rng, synth.kv_history(rng, 1000, processes=5, keys=10), kind)
            for p in check(h, kv_model(), workers=1, time_limit=30).failures:
                if p.refutation is None:
                    continue
                refuted += 1
                mm, named = p.minimal, {op.index for op in p.refutation.ops}
                assert mm is not None and mm.by_rule == p.refutation.rule and mm.ops and set(mm.ops) <= named
                if mm.window != (None, None):
                    checked += 1
                else:
                    assert not mm.complete and set(mm.ops) == named
    assert refuted >= 2 * len(synth.CORRUPTIONS) and checked >= refuted // 2, (checked, refuted)
    assert time.monotonic() - t0 < 120


def test_the_cli_shows_a_refutations_set(tmp_path, capsys):
    from checker.cli import main
    from checker.history import HistoryWriter

    h, named = CASES["missed write"]
    path = tmp_path / "history.jsonl"
    with open(path, "w") as f:
        w = HistoryWriter(f)
        for op in h.ops:
            w.write(op)
    assert main(["--model", "kv", str(path)]) == 1
    out = capsys.readouterr().out
    assert main(["--model", "kv", "--json", str(path)]) == 1
    part = json.loads(capsys.readouterr().out)["partitions"][0]
    mm = part["minimal"]
    assert part["reason"].startswith("refuted before the search (missed write)")
    assert mm["by_rule"] == "missed write" and set(mm["ops"]) <= set(named) and mm["complete"] is True
    # the read alone: the put's timing does not matter, its revision 3 pins it before the read
    assert f"ops to look at (minimal): {', '.join(map(str, mm['ops']))}" in out, out


def test_the_report_of_a_refuted_run_says_no_search_ran(tmp_path):
    """A run whose KV partition the pre-pass refuted: the report names the rule, lists the ops it
    names with its argument, each linked to its history line, and claims no prefix."""
    from markupsafe import escape

    from checker.history import HistoryWriter
    from reports.run import render_run

    h, named = CASES["maker of a revision"]
    with open(tmp_path / "history.jsonl", "w") as f:
        w = HistoryWriter(f)
        for op in h.ops:
            w.write(op)
    result = check(h.ops, kv_model(), workers=1).to_dict()
    (tmp_path / "results.json").write_text(json.dumps(
        {"valid": False, "checkers": {"linearizable": dict(result, checker="linearizable")}}, default=str))
    (tmp_path / "test.json").write_text(json.dumps({"name": "refuted-kv"}))
    html = render_run(tmp_path).read_text()
    view = html.split("Why linearizable is INVALID", 1)[1]
    assert '">the whole history: INVALID (refuted before the search (maker of a revision)' in view  # no key
    assert "not linearizable: None" not in html
    assert "Refuted before any search by the rule <b>maker of a revision</b>" in view
    assert "The longest linearizable prefix takes" not in view
    why = escape(result["partitions"][0]["refutation"]["why"])
    for i in named:
        assert re.search(rf'<tr><td><a href="report/history.html#op-{i}">{i}</a></td><td>[^<]*</td><td>{re.escape(why)}</td></tr>', view)
