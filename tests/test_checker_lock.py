"""The lock checkers on histories that must pass and histories that must fail.

Mutual exclusion: sequential holds pass; a lock granted while its holder provably still held
it (a fenced write or a release that found the key after the other acquire) fails with the ops
named; a second holder after a lease expired under a live holder is the known weakness (valid,
weak); a holder whose process died is released by its lease. The fenced counter: a value
written twice, an increment reading an older value, a final value out of bounds. A simulated
lock service with leases (processes that die, leases that expire under live holders) feeds
hypothesis: its histories never fail, and granting a held lock to a second client is caught.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from checker import lock
from history_builder import History

L = "lock/a"


def acquire(h: History, p: int, typ: str = "ok", lease: int = 1, **extra):
    h.invoke(p, "acquire", "v3lock", key=L)
    if typ == "ok":
        return h.ok(p, lease=lease, lease_deadline_in=2.0, **extra)
    return h.info(p) if typ == "info" else h.fail(p)


def incr(h: History, p: int, old: int, typ: str = "ok", rev: int = 0, **extra):
    h.invoke(p, "incr", None, key=L)
    if typ == "ok":
        return h.ok(p, [old, old + 1], revision=rev, lease_deadline_in=extra.pop("left", 1.0), **extra)
    if typ == "fenced":
        return h.fail(p, [old, old + 1], fenced=True, revision=rev)
    return h.info(p)


def release(h: History, p: int, lost: bool = False, typ: str = "ok"):
    h.invoke(p, "release", None, key=L)
    if typ == "ok":
        return h.ok(p, "v3lock", lost=lost, revision=0)
    return h.info(p) if typ == "info" else h.fail(p, error="connection refused")


def final_read(h: History, value: int):
    return h.call(1_000_000, "read", "final", key=f"counter/{L}", result=value, final=True)


def test_sequential_holds_are_exclusive_and_the_counter_adds_up() -> None:
    h = History()
    acquire(h, 1)
    incr(h, 1, 0, rev=10)
    release(h, 1)
    acquire(h, 2)
    incr(h, 2, 1, rev=12)
    incr(h, 2, 2, rev=13)
    release(h, 2)
    final_read(h, 3)
    m = lock.check_mutex(h.ops)
    assert m["valid"] is True and not m.get("weak"), m
    c = lock.check_counter(h.ops)
    assert c["valid"] is True and "3 fenced increments" in c["reason"]


def double_held() -> tuple[History, list[int]]:
    """B's acquire completes while A holds; A's fenced write after that succeeds (A's key was still
    there) and A's release finds its key: etcd granted a held lock."""
    h = History()
    a = acquire(h, 1, lease=1)
    b = acquire(h, 2, lease=2)
    i = incr(h, 1, 0, rev=10)
    r = release(h, 1)
    release(h, 2)
    return h, [a.index, b.index, i.index, r.index]


def test_a_double_held_lock_is_a_violation_with_its_ops() -> None:
    h, ops = double_held()
    m = lock.check_mutex(h.ops)
    assert m["valid"] is False and "still existed" in m["reason"]
    involved = {i for v in m["violations"] for i in v["ops"]}
    assert involved & set(ops) and involved <= {op.index for op in h.ops}
    assert m["violations"][0]["lock"] == L


def test_a_second_holder_after_a_lease_expired_is_the_known_weakness() -> None:
    h = History()
    acquire(h, 1, lease=1)
    incr(h, 1, 0, rev=10)
    b = acquire(h, 2, lease=2)  # A was paused; its lease expired; B got the lock
    incr(h, 1, 1, typ="fenced", rev=11)  # A wakes up: the fence refuses its write
    ra = release(h, 1, lost=True)
    incr(h, 2, 1, rev=12)
    release(h, 2)
    final_read(h, 2)
    m = lock.check_mutex(h.ops)
    assert m["valid"] is True and m["weak"] is True, m
    assert "known weakness" in m["reason"] and "leases, not fences" in m["reason"]
    involved = {i for w in m["weakness"] for i in w["ops"]}
    assert involved & {b.index, ra.index - 1, ra.index}
    assert m["leases"]["lost"] == 1
    assert lock.check_counter(h.ops)["valid"] is True


def test_a_grant_answered_after_its_lease_expired_is_the_known_weakness() -> None:
    """A's member grants, then is paused past the TTL before answering; the lease expires, B takes
    the lock and still holds it when A's answer arrives. A's hold may have ended before its
    acquire returned: weak, not a violation (a release placed after the acquire's return would
    overlap B's hold and accuse etcd wrongly)."""
    h = History()
    h.invoke(1, "acquire", "v3lock", key=L)  # granted at once; the answer is late
    b = acquire(h, 2, lease=2)
    a = h.ok(1, lease=1, lease_deadline_in=-3.0)
    ra = release(h, 1, lost=True)  # A's release finds its key gone
    release(h, 2)
    m = lock.check_mutex(h.ops)
    assert m["valid"] is True and m["weak"] is True, m
    involved = {i for w in m["weakness"] for i in w["ops"]}
    assert involved & {b.index, a.index, ra.index}
    # the same interleaving with A's release proving its key still there is a real violation
    h = History()
    h.invoke(1, "acquire", "v3lock", key=L)
    acquire(h, 2, lease=2)
    h.ok(1, lease=1, lease_deadline_in=2.0)
    release(h, 1)
    release(h, 2)
    assert lock.check_mutex(h.ops)["valid"] is False


def test_a_holder_whose_process_died_is_released_by_its_lease() -> None:
    h = History()
    acquire(h, 1)
    incr(h, 1, 0, typ="info")  # process 1 is gone; its lease ends the hold later
    acquire(h, 2)
    incr(h, 2, 1, rev=12)
    release(h, 2)
    final_read(h, 2)  # the uncertain increment happened
    m = lock.check_mutex(h.ops)
    assert m["valid"] is True and not m.get("weak"), m
    assert lock.check_counter(h.ops)["valid"] is True
    assert m["leases"]["ended_without_release"] == 1


def test_an_idle_holder_that_lost_its_lease_then_died_is_weak_not_a_violation() -> None:
    h = History()
    acquire(h, 1)
    acquire(h, 2)  # granted while 1 still believes it holds: 1's lease expired
    incr(h, 1, 0, typ="info")  # 1 only then tries to write, and times out
    release(h, 2)
    m = lock.check_mutex(h.ops)
    assert m["valid"] is True and m["weak"] is True, m


def test_a_failed_release_leaves_the_lock_to_the_lease() -> None:
    h = History()
    acquire(h, 1)
    release(h, 1, typ="fail")
    acquire(h, 2)
    release(h, 2)
    m = lock.check_mutex(h.ops)
    # not even weak: the hold ended at the failed release (held on to the end of the run, the
    # second acquire would overlap it in the clients' view)
    assert m["valid"] is True and not m.get("weak"), m
    assert m["leases"]["ended_without_release"] == 1


def test_no_successful_acquire_is_unknown() -> None:
    h = History()
    acquire(h, 1, typ="fail")
    assert lock.check_mutex(h.ops)["valid"] == "unknown"
    assert lock.check_counter(h.ops)["valid"] == "unknown"


def test_lost_updates_on_the_fenced_counter_are_caught() -> None:
    h = History()
    acquire(h, 1)
    a = incr(h, 1, 0, rev=10)
    release(h, 1)
    acquire(h, 2)
    b = incr(h, 2, 0, rev=12)  # read 0 again: the write at 10 was lost
    release(h, 2)
    c = lock.check_counter(h.ops)
    assert c["valid"] is False and "fence should have prevented" in c["reason"]
    assert c["failures"]["lost update"]["cases"][0]["ops"] == [a.index, b.index]

    h = History()
    acquire(h, 1)
    incr(h, 1, 0, rev=10)
    incr(h, 1, 1, rev=11)
    x = incr(h, 1, 1, rev=13)  # an older reading than the value written before it
    release(h, 1)
    c = lock.check_counter(h.ops)
    assert c["valid"] is False and x.index in c["failures"]["lost update"]["cases"][0]["ops"]


def test_the_final_counter_must_lie_between_acknowledged_and_possible_increments() -> None:
    h = History()
    acquire(h, 1)
    incr(h, 1, 0, rev=10)
    incr(h, 1, 1, typ="info")
    acquire(h, 2)
    incr(h, 2, 2, rev=14)
    release(h, 2)
    final_read(h, 3)
    assert lock.check_counter(h.ops)["valid"] is True
    bad = final_read(h, 5)
    c = lock.check_counter(h.ops)
    assert c["valid"] is False and c["failures"]["final value"]["cases"][0]["ops"] == [bad.index]


def test_derived_histories_give_each_hold_a_process_and_widen_only_unproven_releases() -> None:
    h = History()
    acquire(h, 1)
    incr(h, 1, 0, rev=10)
    rel = release(h, 1, lost=True)
    hs = lock.holds(h.ops)
    assert len(hs) == 1 and hs[0].lost and not hs[0].certain
    strict, back = lock.derived_history(hs, lease_aware=False)
    aware, back2 = lock.derived_history(hs, lease_aware=True)
    assert {op.process for op in strict} == {"1#0"}
    assert [op.process for op in aware] == ["1#0", "1#0", "1#0~lease", "1#0~lease"]
    assert aware[2].extra["holder"] == "1#0" and "holder" not in strict[2].extra
    assert [back[op.index] for op in strict] == [0, 1, 4, 5]  # the release where it happened
    assert [back2[op.index] for op in aware] == [0, 1, 4, 5]
    # lease-aware: the release may have happened right after the last proven moment (the incr's invoke)
    assert [op.type for op in aware] == ["invoke", "ok", "invoke", "ok"]
    assert rel.index == 5


# ------------------------------------------------------------------ a simulated lock service
def simulate(seed: int, steps: int, procs: int = 4, expire_live: float = 0.0, double_grant: float = 0.0) -> History:
    """A lock with leases: one holder at a time (FIFO); processes time out (info) and die, their
    leases expire later; with expire_live, a live holder's lease expires too (its next fenced
    write is refused, its release finds the key gone); with double_grant, the lock is wrongly
    granted to a waiter while held."""
    rng = random.Random(seed)
    h = History()
    holder: int | None = None
    counter, rev = 0, 100
    state: dict[int, str] = {p: "idle" for p in range(procs)}
    lost: set[int] = set()
    dead_holder: int | None = None
    next_pid = procs
    for _ in range(steps):
        if dead_holder is not None and rng.random() < 0.3:
            holder, dead_holder = None, None  # the dead holder's lease expires
        p = rng.choice(list(state))
        s = state[p]
        if s == "idle":
            h.invoke(p, "acquire", "v3lock", key=L)
            state[p] = "waiting"
        elif s == "waiting":
            if holder is None or (double_grant and rng.random() < double_grant and holder != p):
                holder = p if holder is None else holder
                h.ok(p, lease=p + 1, lease_deadline_in=2.0)
                state[p] = "holding"
            elif rng.random() < 0.1:
                h.fail(p, error="lock wait timed out; session lease revoked, so the lock is not held")
                state[p] = "idle"
        elif s == "holding":
            x = rng.random()
            if expire_live and holder == p and p not in lost and x < expire_live:
                holder = None
                lost.add(p)
                continue
            if x < 0.45:
                h.invoke(p, "incr", None, key=L)
                if p in lost:
                    h.fail(p, [counter, counter + 1], fenced=True, revision=rev)
                elif rng.random() < 0.1:  # times out; the write applies; the process dies
                    counter, rev = counter + 1, rev + 1
                    h.info(p)
                    dead_holder = p
                    del state[p]
                    state[next_pid] = "idle"
                    next_pid += 1
                else:
                    counter, rev = counter + 1, rev + 1
                    h.ok(p, [counter - 1, counter], revision=rev, lease_deadline_in=1.0)
            else:
                h.invoke(p, "release", None, key=L)
                h.ok(p, "v3lock", lost=p in lost, revision=rev)
                if holder == p:
                    holder = None
                lost.discard(p)
                state[p] = "idle"
    h.call(1_000_000, "read", "final", key=f"counter/{L}", result=counter, final=True)
    return h


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32), st.integers(10, 90), st.sampled_from([0.0, 0.2]))
def test_simulated_lease_lock_histories_never_fail(seed: int, steps: int, expire: float) -> None:
    h = simulate(seed, steps, expire_live=expire)
    m = lock.check_mutex(h.ops, time_limit=20)
    assert m["valid"] in (True, "unknown"), m
    c = lock.check_counter(h.ops)
    assert c["valid"] in (True, "unknown"), c


def test_a_double_grant_in_a_simulated_history_is_caught() -> None:
    caught = 0
    for seed in range(40):
        h = simulate(seed, 120, double_grant=0.5)
        hs = lock.holds(h.ops)
        # ground truth: some hold provably overlapped another one
        m = lock.check_mutex(h.ops, time_limit=20)
        if m["valid"] is False:
            caught += 1
            assert m["violations"] and all(v["ops"] for v in m["violations"])
        assert hs
    assert caught >= 20
