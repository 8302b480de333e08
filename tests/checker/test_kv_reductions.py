"""The KV model's search reductions, each on the histories where it could go wrong: values
nobody observed made one (KVModel.canonical), reads that can never fit again (KVModel.dead),
and lost requests that always take a revision (KVModel.advances). Verdicts are compared with
the brute-force oracle on the real ops; reports must show the real values."""
from __future__ import annotations

import itertools
import json
import random

from checker import synth
from checker.history import INVOKE, Op
from checker.kv import UNOBSERVED, KVState, _run, request
from checker.linearizable import check, operations
from checker.models import UNKNOWN, kv_model

from checker_oracle import Recorder, brute_force


def kv(k, v, c, m, ver):
    return {"key": k, "value": v, "create_revision": c, "mod_revision": m, "version": ver}


def read(rec, p, key, kvs, rev):
    rec.inv(p, "range", None, key=key)
    return rec.done(p, "ok", "range", {"kvs": kvs, "count": len(kvs)}, key=key, revision=rev)


def txn(compare, success, failure=()):
    return {"compare": list(compare), "success": list(success), "failure": list(failure)}


def put(key, value):
    return {"f": "put", "key": key, "value": value}


def verdict(rec) -> bool | str:
    """check()'s verdict, which must equal brute force on the real (unreduced) ops."""
    model = kv_model()
    got = check(rec.ops, model, workers=1).valid
    assert got == brute_force(operations(rec.ops, model), model.init(), model.step)
    return got


def canonical_values(rec) -> dict[int, object]:
    """Op.index -> the value its first put carries after KVModel.canonical."""
    model = kv_model()
    work = model.canonical(model.refine(operations(rec.ops, model)))
    return {op.index: op.input[1][0][2] for op in work if op.input[1] and op.input[1][0][0] == "put"}


def test_only_values_nobody_can_see_are_replaced():
    r = Recorder(key=None)
    r.inv(1, "put", "u1", key="a").inv(2, "put", "u2", key="a")  # lost, never seen: merged
    r.inv(3, "put", "u3", key="b")  # lost, later read: persisted, kept
    r.inv(4, "put", "u4", key="c")  # lost, named by a compare: kept
    r.inv(5, "put", 1, key="a")  # lost, a compare names "1", which value compares equal to 1: kept
    r.inv(6, "put", "z", key="d")  # lost, its key under an ordering compare: kept
    r.inv(0, "put", "u7", key="a").done(0, "ok", "put", "u7", key="a", revision=2)  # acknowledged, unseen: merged
    read(r, 0, "b", [kv("b", "u3", 3, 3, 1)], 3)
    r.inv(0, "txn", txn([{"key": "c", "target": "value", "result": "=", "value": "u4"},
                         {"key": "a", "target": "value", "result": "!=", "value": "1"}], [put("e", "u8")]))
    r.done(0, "ok", "txn", {"succeeded": False, "results": []}, revision=3)
    r.inv(0, "txn", txn([{"key": "d", "target": "value", "result": ">", "value": "m"}], [put("e", "u9")]))
    r.done(0, "ok", "txn", {"succeeded": False, "results": []}, revision=3)
    got = canonical_values(r)
    assert got[0] is UNOBSERVED and got[1] is UNOBSERVED and got[6] is UNOBSERVED
    assert (got[2], got[3], got[4], got[5]) == ("u3", "u4", 1, "z")
    assert got[10] is UNOBSERVED and got[12] is UNOBSERVED  # txn branches nobody took or saw
    assert verdict(r) is True


def test_a_lost_value_an_ordering_compare_saw():
    """A lost put of "z", then a txn that found a.value > "m": the put happened. The
    placeholder does not order like "z", so the key must keep its value."""
    r = Recorder(key=None)
    r.inv(1, "put", "z", key="a")
    r.inv(0, "txn", txn([{"key": "a", "target": "value", "result": ">", "value": "m"}], [put("b", "u1")]))
    r.done(0, "ok", "txn", {"succeeded": True, "results": [{}]}, revision=3)
    assert verdict(r) is True
    r.ops[2] = Op(2, 0, "ok", "txn", {"succeeded": True, "results": [{}]}, None, time=2000, extra={"revision": 2})
    assert verdict(r) is False  # the put cannot have happened before and still leave revision 2


def test_a_lost_value_equal_to_an_operand_only_by_its_text():
    """The model compares values of different types by their text (1 and "1" are equal), so a
    lost put of 1 that a compare on "1" saw must not be replaced either."""
    r = Recorder(key=None)
    r.inv(1, "put", 1, key="a")
    r.inv(0, "txn", txn([{"key": "a", "target": "value", "result": "=", "value": "1"}], [put("b", "u1")]))
    r.done(0, "ok", "txn", {"succeeded": True, "results": [{}]}, revision=3)
    assert verdict(r) is True


def test_same_key_lost_puts_are_interchangeable_but_still_counted():
    """Three lost puts of a nobody ever saw; a read shows a at version 3 after an acknowledged
    put: exactly two of them took effect before the read, whichever two."""
    r = Recorder(key=None)
    for p, v in ((1, "u1"), (2, "u2"), (3, "u3")):
        r.inv(p, "put", v, key="a")
    r.inv(0, "put", "u4", key="a").done(0, "ok", "put", "u4", key="a", revision=4)
    read(r, 0, "a", [kv("a", "u4", 2, 4, 3)], 4)
    assert len({v for i, v in canonical_values(r).items() if i < 3}) == 1
    assert verdict(r) is True
    r.ops[-1] = Op(len(r.ops) - 1, 0, "ok", "range", {"kvs": [kv("a", "u4", 2, 4, 5)], "count": 1}, "a",
                   time=r.ops[-1].time, extra={"revision": 4})
    assert verdict(r) is False  # four puts cannot fit in revisions 2..4


def test_reports_show_the_real_values():
    r = Recorder(key=None)
    r.inv(1, "put", "u1", key="a").inv(2, "put", "u2", key="a")
    r.inv(0, "put", "u3", key="b").done(0, "ok", "put", "u3", key="b", revision=3)
    read(r, 0, "a", [kv("a", "seen", 4, 4, 1)], 4)  # nobody wrote "seen": not linearizable
    res = check(r.ops, kv_model(), workers=1)
    assert res.valid is False
    text = json.dumps(res.to_dict(), default=str)
    assert "<unobserved>" not in text and "u1" in text and "u2" in text
    p = res.partitions[0]
    assert all(UNOBSERVED not in op.input[1][0] for op in p.ops)
    named = [op.index for op in p.refutation.ops] if p.refutation else p.minimal.ops
    assert named and set(named) <= {op.index for op in p.ops}
    # valid: the linearization's states carry the lost value that took effect
    r = Recorder(key=None)
    r.inv(1, "put", "u1", key="a")
    r.inv(0, "put", "u3", key="b").done(0, "ok", "put", "u3", key="b", revision=3)
    res = check(r.ops, kv_model(), workers=1)
    d = res.to_dict()
    assert res.valid is True and "a='u1'" in d["partitions"][0]["final_state"]
    assert "<unobserved>" not in json.dumps(d, default=str)


def _requests(rng: random.Random, keys=("a", "b")) -> list[tuple]:
    reqs = []
    for n in range(6):
        k = rng.choice(keys)
        kind = rng.random()
        if kind < 0.6:
            reqs.append(((), (("put", k, rng.choice(["x", "y", f"w{n}"])),), ()))
        else:
            reqs.append(((), (("delete", k, None),), ()))
    return reqs


def _reachable(state: KVState, writes: list[tuple], depth: int):
    """Every state some sequence of at most `depth` of these writes leads to."""
    out, frontier = [state], [state]
    for _ in range(depth):
        nxt = []
        for s in frontier:
            for req in writes:
                _, _, new = _run(s, req)
                if new is not None:
                    nxt.append(new)
        out += nxt
        frontier = nxt
    return out


def test_dead_reads_never_fit_again():
    """Whenever KVModel.dead says no later state accepts a read, none of the states a few more
    writes reach does; and it does say so (often), or the test proves nothing."""
    model = kv_model()
    said_dead = 0
    for seed in range(300):
        rng = random.Random(seed)
        writes = _requests(rng)
        state = KVState(1, {})
        states = [state]
        for req in rng.sample(writes, 4):
            _, _, new = _run(state, req)
            if new is not None:
                state = new
                states.append(state)
        # a read as some earlier, current or later state answers it
        seen_at = rng.choice(states + _reachable(state, writes, 1)[1:])
        req = request(Op(0, 0, INVOKE, "range", {"end": "\0"}, "a"))
        _, results, _ = _run(seen_at, req)
        out = (True, tuple(results), seen_at.rev)
        for s in states:
            if model.dead(s, req, out):
                said_dead += 1
                assert not any(model.step(t, req, out)[0] for t in _reachable(s, writes, 3)), (s, out)
    assert said_dead > 50


def test_lost_requests_always_take_a_revision():
    """KVModel.advances: an unknown request is accepted only where it writes."""
    model = kv_model()
    assert model.advances
    for seed in range(100):
        rng = random.Random(seed)
        h = synth.kv_history(rng, 30, processes=3, keys=3, info_rate=0.5)
        ops = operations(h, model)
        states = [model.init()]
        for op in ops:
            if op.required:
                _, _, new = _run(states[-1], op.input)
                states.append(new or states[-1])
        for op, s in itertools.product([o for o in ops if o.output is UNKNOWN], states):
            ok, new = model.step(s, op.input, op.output)
            assert not ok or new.rev == s.rev + 1
