"""The register model end to end: generated histories that must pass, planted violations that
must fail with the offending ops named, indeterminate ops, the budget, and the result format."""
from __future__ import annotations

import json
import random
import time

import pytest

from checker import synth
from checker.history import Op
from checker.linearizable import check, compose
from checker.models import register_model, versioned_register_model

from checker_oracle import Recorder, exponential_history


def run(rec: Recorder, model=None, **kw):
    return check(rec.ops, model or register_model(), workers=1, **kw)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("processes,info_rate", [(2, 0.0), (5, 0.1), (10, 0.2)])
def test_generated_runs_pass(seed, processes, info_rate):
    """A sequential run of the model widened into overlapping intervals around each op's
    linearization point (timed-out ops taking effect inside, after, or never)."""
    h = synth.register_history(random.Random(seed), 400, processes=processes, keys=3, info_rate=info_rate)
    r = check(h, register_model(), workers=1, time_limit=30)
    assert r.valid is True, r.to_dict()["partitions"]
    assert {p.key for p in r.partitions} == {"r0", "r1", "r2"}


def test_read_of_a_value_never_written():
    rec = Recorder().op(0, "write", 1).op(1, "read", None, result=7)
    r = run(rec)
    assert r.valid is False
    (p,) = r.failures
    assert [op.index for op, _ in p.blocked] == [2]
    assert "read 7 but the register holds 1" in p.blocked[0][1]
    assert p.minimal.ops == [2]  # the read alone fails, from the initial state


def test_stale_read_after_a_newer_write_completed():
    rec = Recorder().op(0, "write", 1).op(0, "write", 2)
    rec.inv(1, "read").done(1, "ok", "read", 1)
    r = run(rec)
    assert r.valid is False
    p = r.failures[0]
    assert [op.index for op, _ in p.path] == [0, 2]  # the longest prefix: both writes
    assert p.minimal.ops == [2, 4]  # write 2 completed, then read 1
    d = p.to_dict(r.model)
    assert d["blocked"] == [{"index": 4, "state_before": "2", "description": "read 1",
                             "why": "read 1 but the register holds 2"}]


def test_lost_acknowledged_write():
    rec = Recorder().op(0, "write", 1).op(1, "write", 2).op(0, "read", None, result=1)
    r = run(rec)
    assert r.valid is False
    assert r.failures[0].minimal.ops == [2, 4]


def test_cas_that_succeeded_twice():
    rec = Recorder().op(0, "write", 0).op(1, "cas", [0, 1]).op(2, "cas", [0, 2])
    r = run(rec)
    assert r.valid is False
    p = r.failures[0]
    assert "the compare needs 0 but the register holds 1" in p.blocked[0][1]
    assert p.minimal.ops == [2, 4]


def test_concurrent_cas_pair_may_both_succeed_in_sequence():
    rec = Recorder().op(0, "write", 0)
    rec.inv(1, "cas", [0, 1]).inv(2, "cas", [1, 2]).done(2, "ok", "cas", [1, 2]).done(1, "ok", "cas", [0, 1])
    assert run(rec).valid is True


def test_failed_compare_is_an_observation():
    """cas fail (no error) saw another value: impossible when the register surely held it."""
    rec = Recorder().op(0, "write", 3).op(1, "cas", [3, 4], typ="fail")
    assert run(rec).valid is False
    # with an error it certainly did not happen, and says nothing
    rec = Recorder().op(0, "write", 3).op(1, "cas", [3, 4], typ="fail", error="etcdserver: no leader")
    assert run(rec).valid is True
    # and a model told not to trust failed compares ignores them
    rec = Recorder().op(0, "write", 3).op(1, "cas", [3, 4], typ="fail")
    assert run(rec, register_model(cas_fail_observes=False)).valid is True


def test_timed_out_write_both_outcomes_accepted():
    for seen in (None, 5):
        rec = Recorder().inv(0, "write", 5).done(0, "info", "write", 5, error="timeout")
        rec.op(1, "read", None, result=seen)
        assert run(rec).valid is True, seen


def test_timed_out_write_may_take_effect_long_after_its_response():
    rec = Recorder().inv(0, "write", 5).done(0, "info", "write", 5)
    rec.op(1, "read", None, result=None).op(1, "read", None, result=None).op(1, "read", None, result=5)
    assert run(rec).valid is True


def test_timed_out_write_takes_effect_at_most_once():
    """Two mutually exclusive outcomes: it happened (5 seen) then it did not (nil again)."""
    rec = Recorder().inv(0, "write", 5).done(0, "info", "write", 5)
    rec.op(1, "read", None, result=5).op(1, "read", None, result=None)
    r = run(rec)
    assert r.valid is False
    assert r.failures[0].minimal.ops == [2, 4]


def test_timed_out_cas_explains_one_read_not_two_values():
    rec = Recorder().op(0, "write", 1)
    rec.inv(1, "cas", [1, 2]).done(1, "info", "cas", [1, 2])
    rec.inv(2, "cas", [1, 3]).done(2, "info", "cas", [1, 3])
    assert Recorder is not None
    ok = Recorder()
    ok.ops = list(rec.ops)
    ok.op(3, "read", None, result=2)
    assert run(ok).valid is True
    bad = Recorder()
    bad.ops = list(rec.ops)
    bad.op(3, "read", None, result=2).op(3, "read", None, result=3)
    assert run(bad).valid is False  # 1->2 and then 1->3 cannot both apply


def test_nemesis_ops_are_ignored():
    rec = Recorder().op("nemesis", "start-partition", None).op(0, "write", 1).op(1, "read", None, result=1)
    assert run(rec).valid is True


def test_a_violation_deep_in_a_long_history_is_found_and_located():
    h = synth.register_history(random.Random(3), 600, processes=5, keys=1, info_rate=0.05)
    # append a read that contradicts a write completed after everything else
    n = len(h)
    h += [Op(n, 90, "invoke", "write", 77, "r0", time=10**12), Op(n + 1, 90, "ok", "write", 77, "r0", time=10**12 + 1),
          Op(n + 2, 91, "invoke", "read", None, "r0", time=10**12 + 2), Op(n + 3, 91, "ok", "read", 78, "r0", time=10**12 + 3)]
    r = check(h, register_model(), workers=1, time_limit=30)
    assert r.valid is False
    p = r.failures[0]
    assert p.minimal.ops == [n + 2]  # no write of 78 anywhere: the read alone
    assert len(p.path) > 500


def test_budget_gives_unknown_not_a_verdict():
    """26 concurrent writes of distinct values, then a read of a value none wrote: proving it
    takes every subset of the writes (2^26 nodes); the budget ends it with unknown, promptly."""
    rec = exponential_history()
    t = time.monotonic()
    r = run(rec, time_limit=0.5, explain_limit=0)
    assert time.monotonic() - t < 3
    assert r.valid == "unknown"
    assert r.partitions[0].reason == "time limit"
    assert r.to_dict()["unknown"] == ["x"]
    r = run(rec, max_steps=5000, explain_limit=0)
    assert r.valid == "unknown" and "step limit" in r.partitions[0].reason


def test_partitions_are_independent_and_composed():
    rec = Recorder()
    rec.op(0, "write", 1, key="a").op(1, "read", None, result=1, key="a")
    rec.op(0, "write", 1, key="b").op(1, "read", None, result=2, key="b")
    r = run(rec)
    assert r.valid is False
    assert [(p.key, p.valid) for p in r.partitions] == [("a", True), ("b", False)]
    assert compose([True, "unknown"]) == "unknown" and compose(["unknown", False]) is False
    assert compose([]) is True


def test_result_is_json_with_timeline_data():
    rec = Recorder().op(0, "write", 1).inv(1, "write", 2).done(1, "info", "write", 2).op(0, "read", None, result=2)
    r = run(rec)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["valid"] is True and d["model"] == "register"
    (p,) = d["partitions"]
    assert [o["index"] for o in p["ops"]] == [0, 2, 4]
    assert p["ops"][1] == {"index": 2, "completion": 3, "process": 1, "call": 2000, "return": 3000,
                           "status": "info", "required": False, "description": "write 2 ?"}
    assert [(x["index"], x["state"]) for x in p["linearization"]] == [(0, "1"), (2, "2"), (4, "2")]
    points = [x["point"] for x in p["linearization"]]
    assert points == sorted(points)


def test_malformed_histories_are_refused_with_the_op():
    with pytest.raises(ValueError, match="op 0: the register model has no operation 'frob'"):
        run(Recorder().op(0, "frob", 1))
    with pytest.raises(ValueError, match=r"op 0: cas value must be \[expected, new\]"):
        run(Recorder().op(0, "cas", 1))
    with pytest.raises(ValueError, match="invoked again while op 0 was pending"):
        run(Recorder().inv(0, "write", 1).inv(0, "write", 2))
    with pytest.raises(ValueError, match="with no invoke"):
        run(Recorder().done(0, "ok", "write", 1))


def test_versioned_register_uses_revisions():
    good = Recorder().op(0, "write", 1, revision=5).op(1, "read", None, result=1, revision=6, mod_revision=5)
    assert run(good, versioned_register_model()).valid is True
    # the read saw the value but from a write at another revision
    bad = Recorder().op(0, "write", 1, revision=5).op(1, "read", None, result=1, revision=6, mod_revision=4)
    assert run(bad, versioned_register_model()).valid is False
    # revisions must grow along the order: a later write cannot get a smaller one
    bad = Recorder().op(0, "write", 1, revision=5).op(1, "write", 2, revision=3)
    assert run(bad, versioned_register_model()).valid is False
    # a read's header revision may not go back
    bad = Recorder().op(0, "write", 1, revision=5).op(1, "read", None, result=1, revision=4)
    assert run(bad, versioned_register_model()).valid is False
    # a lost write's version is learned from the read that saw it
    ok = Recorder().inv(0, "write", 1).done(0, "info", "write", 1).op(1, "read", None, result=1, revision=9, mod_revision=7)
    assert run(ok, versioned_register_model()).valid is True


def test_a_write_of_the_value_already_there_is_not_a_read():
    """Only ops that never change the state may be taken first and alone: a write of the
    current value does not change it now, but it does later, where it is needed."""
    rec = Recorder().inv(0, "write", 1).inv(1, "write", 0).done(1, "ok", "write", 0)
    rec.inv(2, "read").done(2, "ok", "read", 1).done(0, "ok", "write", 1)
    assert run(rec, register_model(initial=1)).valid is True  # write 0, write 1, read 1
