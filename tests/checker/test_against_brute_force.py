"""The engine's verdict equals an exhaustive search over all linearizations, for random small
histories of every model: random interleavings, outcomes (ok, fail, info) and results, and
runs of the sequential model with one response corrupted (so both verdicts come up often).
Also: every minimal set an explanation reports fails on its own under the same oracle."""
from __future__ import annotations

import os
import random
from dataclasses import replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checker import explain, synth
from checker.history import INFO, INVOKE, OK, Op
from checker.linearizable import check, operations
from checker.models import kv_model, mutex_model, register_model, versioned_register_model
from checker.wgl import INVALID, VALID, search

from checker_oracle import brute_force

SETTINGS = settings(max_examples=int(os.environ.get("CHECKER_EXAMPLES", 300)), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def interleaved(draw, make_invoke, make_result, max_ops: int = 6, workers: int = 3) -> list[Op]:
    """A history from a random schedule: workers invoke and complete ops in random order; a
    worker whose op ends in info continues as a new process."""
    n = draw(st.integers(1, max_ops))
    pids = list(range(workers))
    next_pid = workers
    active: dict[int, tuple[Any, str, Any]] = {}
    out: list[Op] = []
    left = n
    while left or active:
        moves = [("inv", w) for w in range(workers) if w not in active and left] + [("ret", w) for w in active]
        kind, w = draw(st.sampled_from(moves))
        if kind == "inv":
            f, value = make_invoke(draw)
            out.append(Op(len(out), pids[w], INVOKE, f, value, "x"))
            active[w] = (pids[w], f, value)
            left -= 1
        else:
            pid, f, value = active.pop(w)
            typ, result, error, extra = make_result(draw, f, value)
            out.append(Op(len(out), pid, typ, f, result, "x", error=error, extra=extra))
            if typ == INFO:
                pids[w] = next_pid
                next_pid += 1
    return out


VALUES = st.sampled_from([None, 0, 1])


def register_invoke(draw):
    f = draw(st.sampled_from(["read", "write", "cas"]))
    if f == "read":
        return f, None
    if f == "write":
        return f, draw(st.sampled_from([0, 1]))
    return f, [draw(VALUES), draw(st.sampled_from([0, 1]))]


def register_result(draw, f, value):
    typ = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info"]))
    error = None
    if typ == "fail" and (f != "cas" or draw(st.booleans())):
        error = "definite"
    if f == "read" and typ == "ok":
        return typ, draw(VALUES), None, {}
    return typ, value, error, {}


def mutex_invoke(draw):
    return draw(st.sampled_from(["acquire", "release"])), None


def mutex_result(draw, f, value):
    return draw(st.sampled_from(["ok", "ok", "fail", "info"])), None, None, {}


def versioned_result(draw, f, value):
    typ = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info"]))
    rev = draw(st.sampled_from([None, 1, 2, 3, 4]))
    extra = {} if rev is None else {"revision": rev}
    if f == "read" and typ == "ok":
        mod = draw(st.sampled_from([None, 0, 1, 2, 3]))
        if mod is not None:
            extra["mod_revision"] = mod
        return typ, draw(VALUES), None, extra
    return typ, value, None, extra


def agree(history: list[Op], model) -> bool | str:
    ops = operations(history, model)
    expected = brute_force(ops, model.init(), model.step)
    got = check(history, model, workers=1, explain_limit=0).valid
    assert got == expected, f"engine {got}, brute force {expected}\n" + "\n".join(map(str, history))
    return got


@SETTINGS
@given(interleaved(register_invoke, register_result))
def test_register(history):
    agree(history, register_model())


@SETTINGS
@given(interleaved(mutex_invoke, mutex_result))
def test_mutex(history):
    agree(history, mutex_model())


@SETTINGS
@given(interleaved(register_invoke, versioned_result))
def test_versioned_register(history):
    agree(history, versioned_register_model())


def corrupt(rng: random.Random, history: list[Op]) -> list[Op]:
    """One completion changed the way a buggy store would: a value, a revision, an outcome."""
    done = [i for i, op in enumerate(history) if op.type == OK]
    if not done:
        return history
    i = rng.choice(done)
    op = history[i]
    h = list(history)
    extra = dict(op.extra)
    choice = rng.randrange(3)
    if choice == 0 and "revision" in extra:
        extra["revision"] += rng.choice([-1, 1])
        h[i] = replace(op, extra=extra)
    elif choice == 1 and isinstance(op.value, dict) and op.value.get("kvs"):
        kvs = [dict(kv) for kv in op.value["kvs"]]
        kvs[0]["value"] = rng.choice(["v0", "v1", "v2", "zz"])
        h[i] = replace(op, value=dict(op.value, kvs=kvs))
    elif choice == 2 and isinstance(op.value, dict) and "succeeded" in op.value:
        h[i] = replace(op, value=dict(op.value, succeeded=not op.value["succeeded"]))
    elif op.f == "read":
        h[i] = replace(op, value=rng.choice([None, 0, 1, 2, 3]))
    else:
        h[i] = replace(op, extra=dict(extra, revision=extra.get("revision", 2) + 1))
    return h


@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 7), st.booleans(), st.floats(0, 0.5))
def test_register_runs_with_a_corruption(seed, n, bad, info_rate):
    rng = random.Random(seed)
    h = synth.register_history(rng, n, processes=3, values=3, info_rate=info_rate)
    if bad:
        h = corrupt(rng, h)
    v = agree(h, register_model())
    if not bad:
        assert v is VALID  # a run of the model is linearizable by construction


@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 6), st.booleans(), st.floats(0, 0.5))
def test_kv_runs_with_a_corruption(seed, n, bad, info_rate):
    """Including the persisted-request refinement: the oracle sees the unrefined ops."""
    rng = random.Random(seed)
    h = synth.kv_history(rng, n, processes=3, keys=2, info_rate=info_rate)
    if bad:
        h = corrupt(rng, h)
    v = agree(h, kv_model())
    if not bad:
        assert v is VALID


def _searched_only(model):
    """The model with its pre-search refutation switched off: every verdict from the search."""
    class Searched(type(model)):
        def refute(self, ops):
            return None

    m = Searched.__new__(Searched)
    m.__dict__.update(model.__dict__)
    return m


def minimal_fails_on_its_own(history: list[Op], model, via_check: bool = False) -> None:
    """Relax everything outside the reported set (within its window): the oracle still fails.
    via_check: the set check() reports (found on the model's canonical ops), judged on the
    real ones."""
    ops = model.refine(operations(history, model))
    out = search([replace(o) for o in ops], model.init(), model.step)
    if out.valid is not INVALID:
        return
    for n, op in enumerate(ops):
        op.id = n
    if via_check:
        # without the pre-pass (checker.kvrefute): a partition it refutes gets no minimal set
        r = check(history, _searched_only(model), workers=1, explain_limit=60)
        assert r.valid is INVALID
        m = r.partitions[0].minimal
    else:
        m = explain.minimal(model, ops, deadline=float("inf"))
    assert m.complete and (m.ops or m.critical)
    keep = set(m.ops)
    relax = {op.id for op in ops if op.index not in keep}
    q = None if m.window[0] is None else next(op.call for op in ops if op.index == m.window[0])
    t = next(op.ret for op in ops if op.required and op.completion == m.window[1])
    relaxed = explain._window(model, ops, q, t, relax)
    init = model.init() if m.initial == "initial" else model.any_state(ops)
    assert not brute_force(relaxed, init, model.step)
    for op in ops:  # each critical op's result is needed: unknown, the window passes
        if op.index in m.critical:
            assert brute_force(explain._window(model, ops, q, t, relax, frozenset({op.id})), init, model.step)


@SETTINGS
@given(interleaved(register_invoke, register_result, max_ops=6))
def test_register_minimal_sets_fail_on_their_own(history):
    minimal_fails_on_its_own(history, register_model())


@SETTINGS
@given(interleaved(mutex_invoke, mutex_result, max_ops=6))
def test_mutex_minimal_sets_fail_on_their_own(history):
    minimal_fails_on_its_own(history, mutex_model())


@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 6), st.floats(0, 0.4))
def test_kv_minimal_sets_fail_on_their_own(seed, n, info_rate):
    rng = random.Random(seed)
    h = corrupt(rng, synth.kv_history(rng, n, processes=3, keys=2, info_rate=info_rate))
    minimal_fails_on_its_own(h, kv_model())


def kv_mix(keys=("a", "b", "c"), values=("x", "y", 1, "1")):
    """Requests beyond the workload's: values unique or repeated (1 and "1" too, which value
    compares tell apart only by type), compares on every target with every relation (ordering
    compares on values, ranges of keys), compare operands naming values of earlier writes,
    lost ones included, range and delete ends, txn branches that write and then read."""
    written: list = []

    def value(r: random.Random, n: int) -> object:
        v = f"u{n}" if r.random() < 0.6 else r.choice(values)
        written.append(v)
        return v

    def operand(r: random.Random) -> object:
        return r.choice(written) if written and r.random() < 0.7 else r.choice(values)

    def end(r: random.Random) -> dict:
        return r.choice([{}, {}, {"end": "c"}, {"end": "\u0000"}])

    def req(r: random.Random, n: int) -> dict:
        f = r.choice(["put", "put", "range", "delete"])
        key = r.choice(keys)
        if f == "put":
            return {"f": "put", "key": key, "value": value(r, n)}
        return {"f": f, "key": key, **end(r)}

    def make(r: random.Random, n: int) -> tuple:
        key = r.choice(keys)
        x = r.random()
        if x < 0.25:
            return "range", key, end(r) or None
        if x < 0.5:
            return "put", key, value(r, n)
        if x < 0.6:
            return "delete", key, end(r) or None
        cmps = []
        for _ in range(r.choice([1, 1, 2])):
            target = r.choice(["value", "value", "version", "mod_revision", "create_revision"])
            want = operand(r) if target == "value" else r.randrange(5)
            cmps.append({"key": r.choice(keys), **end(r), "target": target,
                         "result": r.choice(["=", "=", "!=", "<", ">"]), "value": want})
        succ = [req(r, n) for _ in range(r.choice([1, 1, 2]))]
        fail = [req(r, n) for _ in range(r.choice([0, 1, 1]))]
        return "txn", None, {"compare": cmps, "success": succ, "failure": fail}

    return make


def corrupt_kv(rng: random.Random, history: list[Op]) -> list[Op]:
    """corrupt(), retried where flipping a txn's outcome left a branch with the wrong number
    of results (a malformed history rather than a wrong one)."""
    for _ in range(5):
        h = corrupt(rng, history)
        try:
            operations(h, kv_model())
            return h
        except ValueError:
            continue
    return history


@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 6), st.booleans(), st.floats(0, 0.7))
def test_kv_wide_mix_with_a_corruption(seed, n, bad, info_rate):
    """The reductions (values nobody observed made one, dead reads, no lost write past a
    limit) judged by brute force on requests of every shape."""
    rng = random.Random(seed)
    h = synth.kv_history(rng, n, processes=3, info_rate=info_rate, make=kv_mix())
    if bad:
        h = corrupt_kv(rng, h)
    v = agree(h, kv_model())
    if not bad:
        assert v is VALID


def test_kv_unobserved_values_against_brute_force():
    """Histories where the reduction does work: lost puts of one key with values nobody saw
    (made equal), some of them later observed by a read (kept). Every verdict equals brute
    force; both verdicts and both kinds of lost put come up (else this proves nothing)."""
    from checker.kv import UNOBSERVED

    model = kv_model()
    seen = {"merged": 0, "kept": 0, True: 0, False: 0}
    for seed in range(400):
        rng = random.Random(seed)
        make = kv_mix(keys=("a", "b"), values=("x", 1, "1"))
        h = synth.kv_history(rng, rng.randrange(3, 7), processes=3, info_rate=0.6, make=make)
        if seed % 2:
            h = corrupt_kv(rng, h)
        ops = model.refine(operations(h, model))
        work = model.canonical(ops)
        lost = [(o, w) for o, w in zip(ops, work) if not o.required and o.input[1] and o.input[1][0][0] == "put"]
        hidden = [w.input[1][0][1] for o, w in lost if w.input[1][0][2] is UNOBSERVED]
        seen["merged"] += len(hidden) > len(set(hidden))
        seen["kept"] += any(w.input[1][0][2] is not UNOBSERVED for o, w in lost)
        seen[agree(h, model)] += 1
    assert min(seen.values()) >= 5, seen


@SETTINGS
@given(st.integers(0, 2**32), st.integers(1, 6), st.floats(0, 0.6))
def test_kv_minimal_sets_from_check_fail_on_their_own(seed, n, info_rate):
    """check() explains on the canonical ops; its sets must fail with the real ones."""
    rng = random.Random(seed)
    h = corrupt_kv(rng, synth.kv_history(rng, n, processes=3, info_rate=info_rate,
                                         make=kv_mix(keys=("a", "b"), values=("x", 1))))
    minimal_fails_on_its_own(h, kv_model(), via_check=True)
