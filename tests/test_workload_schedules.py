"""The lock, bank and watch op schedules: pure functions of seed and worker, with the shapes
their workloads rely on; the workloads' registry names and checkers."""
from __future__ import annotations

import pytest

from workloads import registry
from workloads.bank import BankOps, BankWorkload
from workloads.lock import LockOps
from workloads.watch import WATCHES, WatchOps


def take(src, n: int = 300) -> list:
    return [src.next() for _ in range(n)]


@pytest.mark.parametrize("make", [lambda s, w: LockOps(s, w), lambda s, w: BankOps(s, w, ("txn", "rc"), 5),
                                  lambda s, w: WatchOps(s, w, compact_every=20)])
def test_schedules_are_pure_functions_of_seed_and_worker(make) -> None:
    assert take(make(3, 1)) == take(make(3, 1))
    assert take(make(3, 1)) != take(make(4, 1))
    assert take(make(3, 1)) != take(make(3, 2))


def test_lock_schedule_is_acquire_increments_release() -> None:
    ops = take(LockOps(1, 0), 400)
    i = 0
    while i < len(ops) - 4:
        assert ops[i].f == "acquire" and ops[i].value in ("v3lock", "recipe")
        j = i + 1
        while ops[j].f == "incr":
            assert ops[j].key == ops[i].key
            j += 1
        assert 1 <= j - i - 1 <= 2 and ops[j].f == "release" and ops[j].key == ops[i].key
        i = j + 1
    assert {o.value for o in ops if o.f == "acquire"} == {"v3lock", "recipe"}
    assert {o.key for o in ops} == {"lock/a", "lock/b"}


def test_bank_schedule_covers_its_methods_with_valid_transfers() -> None:
    ops = take(BankOps(1, 0, ("txn", "ss", "rc"), 5), 600)
    assert {o.key for o in ops} == {"txn", "ss", "rc"} and {o.f for o in ops} == {"read", "transfer"}
    for o in ops:
        if o.f == "transfer":
            t = o.value
            assert t["from"] != t["to"] and 0 <= t["from"] < 5 and 0 <= t["to"] < 5 and 1 <= t["amount"] <= 5
    with pytest.raises(ValueError, match="unknown bank method"):
        BankWorkload(("txn", "snapshot"))


def test_watch_schedule_alternates_watches_and_writes() -> None:
    for w in range(4):
        ops = take(WatchOps(2, w), 300)
        watches = [o for o in ops if o.f == "watch"]
        assert ops[0].f == "watch" and ops[0].value["from"] == (1 if w % 2 == 0 else "now")
        assert all(o.value["watch"] == WATCHES[w % len(WATCHES)]["name"] for o in watches)
        assert all(o.value["from"] == "resume" for o in watches[1:])
        assert {o.f for o in ops} >= {"watch", "put", "mput", "delete"}
        values = [o.value if o.f == "put" else o.value[1] for o in ops if o.f in ("put", "mput")]
        assert len(values) == len(set(values)) and values == sorted(values)  # unique, increasing
    assert not [o for o in take(WatchOps(2, 0), 300) if o.f == "compact"]
    assert [o for o in take(WatchOps(2, 0, compact_every=10), 300) if o.f == "compact"]


def test_every_workload_is_registered_with_its_checkers() -> None:
    names = {"lock": {"mutex", "fenced-counter"}, "bank": {"bank-txn"},
             "bank-stm": {"bank-ss", "bank-ser", "bank-rr", "bank-rc"},
             "bank-stm-read-committed": {"bank-rc"}, "watch": {"watch"}, "watch-compact": {"watch"}}
    for name, checkers in names.items():
        w = registry.build(name)
        assert w.name == name
        assert set(w.checkers()) == checkers | {"converged", "stats"}
