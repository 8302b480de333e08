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


def minimal_fails_on_its_own(history: list[Op], model) -> None:
    """Relax everything outside the reported set (within its window): the oracle still fails."""
    ops = model.refine(operations(history, model))
    out = search([replace(o) for o in ops], model.init(), model.step)
    if out.valid is not INVALID:
        return
    for n, op in enumerate(ops):
        op.id = n
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
