"""The bank checker on histories that must pass and histories that must fail.

Hand-written cases name each anomaly (money created, a negative balance, a lost update, a
stale read, two values for one version) and check the ops involved are reported; the weak
isolation levels' anomalies are reported as weak, not as failures. A simulated etcd (revisions,
compare-and-commit transfers, concurrent clients) generates valid histories for hypothesis,
and any single tampered read balance must then be caught.
"""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from checker import bank
from history_builder import History

N, TOTAL = 5, 100


def opening(h: History, method: str = "txn", p: int = 9) -> None:
    h.call(p, "read", key=method, result=[20] * N, revision=2, mod_revisions=[2] * N)


def transfer(h: History, p: int, method: str, frm: int, to: int, amount: int, read: list, rev: int, **extra) -> None:
    h.call(p, "transfer", {"from": frm, "to": to, "amount": amount}, key=method, read=read, revision=rev, **extra)


def test_a_consistent_history_is_valid() -> None:
    h = History()
    opening(h)
    transfer(h, 1, "txn", 0, 1, 5, [[20, 2], [20, 2]], 3)
    h.call(2, "read", key="txn", result=[15, 25, 20, 20, 20], revision=3, mod_revisions=[3, 3, 2, 2, 2])
    transfer(h, 2, "txn", 1, 4, 25, [[25, 3], [20, 2]], 4)
    h.call(3, "read", key="txn", result=[15, 0, 20, 20, 45], revision=9, mod_revisions=[3, 4, 2, 2, 4], final=True)
    r = bank.check(h.ops, "txn", N, TOTAL)
    assert r["valid"] is True and not r["weak"], r
    assert (r["reads"], r["transfers"], r["final_reads"]) == (3, 2, 1)


def test_a_transfer_that_created_money_is_caught_with_its_read() -> None:
    h = History()
    opening(h)
    bad = h.call(1, "read", key="txn", result=[20, 25, 20, 20, 20], revision=3, mod_revisions=[2, 3, 2, 2, 2])
    r = bank.check(h.ops, "txn", N, TOTAL)
    assert r["valid"] is False and "wrong total" in r["reason"]
    assert r["failures"]["wrong total"]["cases"][0]["ops"] == [bad.index]


def test_a_negative_balance_is_a_failure_even_at_read_committed() -> None:
    h = History()
    opening(h, "rc")
    bad = h.call(1, "read", key="rc", result=[-5, 45, 20, 20, 20], revision=None, mod_revisions=[3, 3, 2, 2, 2])
    r = bank.check(h.ops, "rc", N, TOTAL)
    assert r["valid"] is False and r["failures"]["negative balance"]["cases"][0]["ops"] == [bad.index]


def test_a_missing_account_is_a_failure() -> None:
    h = History()
    h.call(1, "read", key="txn", result=[20, None, 20, 20, 20], revision=2, mod_revisions=[2, 0, 2, 2, 2])
    assert "missing account" in bank.check(h.ops, "txn", N, TOTAL)["failures"]


def lost_update(method: str) -> tuple[History, int, int]:
    """Two transfers out of account 0 both read it at mod_revision 2; both commit."""
    h = History()
    opening(h, method)
    transfer(h, 1, method, 0, 1, 5, [[20, 2], [20, 2]], 3)
    t1 = h.ops[-1].index
    transfer(h, 2, method, 0, 2, 5, [[20, 2], [20, 2]], 4)
    t2 = h.ops[-1].index
    h.call(3, "read", key=method, result=[15, 25, 25, 20, 20], revision=4 if method != "rc" else None,
           mod_revisions=[4, 3, 4, 2, 2])
    return h, t1, t2


def test_a_lost_update_is_a_failure_for_txn_and_the_serializable_levels() -> None:
    for method in ("txn", "ss", "ser", "rr"):
        h, t1, t2 = lost_update(method)
        r = bank.check(h.ops, method, N, TOTAL)
        assert r["valid"] is False, (method, r)
        assert set(r["failures"]) >= {"lost update", "wrong total"}, r["failures"]
        assert r["failures"]["lost update"]["cases"][0]["ops"] == sorted([t1, t2])


def test_read_committed_breaks_the_invariant_and_is_reported_weak_not_failed() -> None:
    h, t1, t2 = lost_update("rc")
    r = bank.check(h.ops, "rc", N, TOTAL)
    assert r["valid"] is True and r["weak"] is True, r
    assert "expected for read-committed" in r["reason"]
    assert set(r["weaknesses"]) == {"lost update", "wrong total"}
    assert r["weaknesses"]["lost update"]["cases"][0]["ops"] == sorted([t1, t2])
    assert not r["failures"]


def test_a_stale_read_in_a_snapshot_is_caught() -> None:
    h = History()
    opening(h)
    transfer(h, 1, "txn", 0, 1, 5, [[20, 2], [20, 2]], 3)
    w = h.ops[-1].index
    # claims to be the state at revision 5, yet shows account 0 before the write at 3
    bad = h.call(2, "read", key="txn", result=[20, 25, 20, 20, 20], revision=5, mod_revisions=[2, 3, 2, 2, 2])
    r = bank.check(h.ops, "txn", N, TOTAL)
    assert r["valid"] is False
    assert r["failures"]["stale read"]["cases"][0]["ops"] == sorted([bad.index, w])


def test_two_values_for_one_version_are_caught() -> None:
    h = History()
    a = h.call(1, "read", key="txn", result=[20] * N, revision=2, mod_revisions=[2] * N)
    b = h.call(2, "read", key="txn", result=[21, 19, 20, 20, 20], revision=2, mod_revisions=[2] * N)
    r = bank.check(h.ops, "txn", N, TOTAL)
    assert r["valid"] is False and r["failures"]["two values for one version"]["cases"][0]["ops"] == [a.index, b.index]


def test_an_inconsistent_view_in_a_retried_attempt_is_weak_at_rr_and_a_failure_at_ser() -> None:
    for method, expect_valid in (("rr", True), ("ser", False), ("ss", False)):
        h = History()
        opening(h, method)
        op = h.call(1, "read", key=method, result=[20] * N, revision=2, mod_revisions=[2] * N,
                    discarded=[[20, 25, 20, 20, 20]], attempts=2)
        r = bank.check(h.ops, method, N, TOTAL)
        assert r["valid"] is expect_valid, (method, r)
        found = r["weaknesses"] if expect_valid else r["failures"]
        assert found["inconsistent view in a retried attempt"]["cases"][0]["ops"] == [op.index]


def test_refused_and_failed_transfers_are_ignored_and_no_reads_is_unknown() -> None:
    h = History()
    h.invoke(1, "transfer", {"from": 0, "to": 1, "amount": 50}, key="txn")
    h.fail(1, refused="insufficient funds", read=[[20, 2], [20, 2]])
    r = bank.check(h.ops, "txn", N, TOTAL)
    assert r["valid"] == "unknown" and "no read" in r["reason"]


# ------------------------------------------------------------------ a simulated etcd
def simulate(seed: int, steps: int, clients: int = 4) -> History:
    """Concurrent clients against an in-memory MVCC of the accounts: reads are snapshots,
    transfers read both accounts then commit if both mod_revisions are unchanged."""
    rng = random.Random(seed)
    bal, mod, rev = [20] * N, [2] * N, 2
    h = History()
    pending: dict[int, tuple] = {}
    for _ in range(steps):
        p = rng.randrange(clients)
        if p in pending:  # commit the transfer it read for
            frm, to, amt, got = pending.pop(p)
            if [mod[frm], mod[to]] == [got[0][1], got[1][1]]:
                rev += 1
                bal[frm] -= amt
                bal[to] += amt
                mod[frm] = mod[to] = rev
                h.ok(p, read=got, revision=rev)
            else:
                h.fail(p, read=got, revision=rev, refused="conflict")
        elif rng.random() < 0.4:
            h.call(p, "read", key="txn", result=list(bal), revision=rev, mod_revisions=list(mod))
        else:
            frm, to = rng.sample(range(N), 2)
            amt = rng.randint(1, 5)
            got = [[bal[frm], mod[frm]], [bal[to], mod[to]]]
            h.invoke(p, "transfer", {"from": frm, "to": to, "amount": amt}, key="txn")
            if bal[frm] < amt:
                h.fail(p, read=got, refused="insufficient funds")
            else:
                pending[p] = (frm, to, amt, got)
    return h


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(5, 120))
def test_simulated_concurrent_histories_are_valid(seed: int, steps: int) -> None:
    h = simulate(seed, steps)
    r = bank.check(h.ops, "txn", N, TOTAL)
    assert r["valid"] in (True, "unknown"), r
    assert not r["failures"]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32), st.integers(20, 120), st.integers(1, 7), st.data())
def test_any_tampered_balance_is_caught(seed: int, steps: int, delta: int, data) -> None:
    h = simulate(seed, steps)
    reads = [op for op in h.ops if op.f == "read" and op.type == "ok"]
    if not reads:
        return
    victim = data.draw(st.sampled_from(reads))
    acct = data.draw(st.integers(0, N - 1))
    victim.value = list(victim.value)
    victim.value[acct] += delta
    r = bank.check(h.ops, "txn", N, TOTAL)
    assert r["valid"] is False
    assert any(victim.index in case["ops"] for kind in r["failures"].values() for case in kind["cases"])


def test_a_stale_range_read_fails_even_at_read_committed() -> None:
    h, t1, t2 = lost_update("rc")
    # a Range (a snapshot at any level) that shows account 0 before its write at 4
    bad = h.call(4, "read", key="rc", result=[20, 25, 25, 20, 20], revision=4, mod_revisions=[2, 3, 4, 2, 2], via="range")
    r = bank.check(h.ops, "rc", N, TOTAL)
    assert r["valid"] is False and bad.index in r["failures"]["stale read"]["cases"][0]["ops"]
