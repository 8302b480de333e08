"""The bank checker: money is neither created nor destroyed, and transfers are serializable.

For one group of accounts (one transfer method of workloads/bank.py) it checks, from the
history alone:

- every completed read saw every account, no negative balance, and balances summing to the
  total (the recovery phase's final reads included);
- one value per version: every (account, mod_revision) the history shows (in reads, in what
  transfers read, in what ok transfers wrote at their commit revision) has a single value;
- no lost update: an ok transfer read each account at some mod_revision m and committed at
  revision r; no other write to that account may be seen between m and r (its commit compared
  exactly that);
- snapshots: a read claiming to be a state at revision R (a Range's header revision, an STM
  read's commit revision) saw, for each account, the latest version seen anywhere at or below R
  (a Range is a snapshot at every level; an STM read at read-committed claims nothing).

Together these say that ordering the committed transfers by their revisions explains every
value read, as far as the history shows versions: a write nobody ever saw cannot be placed (the
limit of any black-box check). What is expected depends on the method:

  txn, ss, ser  everything above; also every view an STM attempt saw (even one that then
                conflicted) is a snapshot, so it sums to the total.
  rr            commits are checked against every key read, so everything above holds for
                committed results; an attempt may see a view that was never a state of the
                store (it then conflicts and retries): reported as this level's weakness.
  rc            nothing stops lost updates or torn reads: wrong totals, lost updates and stale
                reads are expected and reported as weak, not as an etcd failure. A negative
                balance, a missing account or two values for one version are failures even here.

The verdict is False only for a failure; a group whose only anomalies are its level's expected
ones is valid with weak=True and a reason that says so.
"""
from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any, Callable

from checker.history import OK, Op, pairs

ISOLATION = {"txn": "txn (compare mod_revisions)", "ss": "serializable-snapshot", "ser": "serializable",
             "rr": "repeatable-reads", "rc": "read-committed"}
VALIDATED = {"txn", "ss", "ser", "rr"}  # commits compare every key read
SNAPSHOT_VIEWS = {"txn", "ss", "ser"}  # every attempt reads one snapshot
SHOWN = 20  # findings listed per kind


class Findings:
    """Anomalies by kind, each with the ops involved, split into failures and expected weaknesses."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.fail: dict[str, list[dict]] = defaultdict(list)
        self.weak: dict[str, list[dict]] = defaultdict(list)

    def add(self, kind: str, ops: list[int], detail: str, expected: bool = False) -> None:
        (self.weak if expected else self.fail)[kind].append({"ops": sorted(set(ops)), "detail": detail})

    @staticmethod
    def summary(found: dict[str, list[dict]]) -> dict[str, dict]:
        return {k: {"count": len(v), "cases": v[:SHOWN]} for k, v in sorted(found.items())}


def checker(method: str, accounts: int, total: int) -> Callable[[list[Op]], dict]:
    def check_group(history: list[Op]) -> dict:
        return check(history, method, accounts, total)

    return check_group


def check(history: list[Op], method: str, accounts: int, total: int) -> dict:
    f = Findings(method)
    reads: list[Op] = []
    transfers: list[tuple[Op, Op]] = []
    for inv, comp in pairs(history):
        if inv.key != method or comp is None or comp.type != OK:
            continue
        if inv.f == "read":
            reads.append(comp)
        elif inv.f == "transfer":
            transfers.append((inv, comp))

    _check_reads(f, reads, accounts, total)
    versions = _versions(f, reads, transfers, accounts)
    _check_transfers(f, transfers, versions)
    _check_snapshots(f, reads, versions)

    head = {"method": method, "isolation": ISOLATION.get(method, method), "reads": len(reads),
            "final_reads": sum(1 for r in reads if r.extra.get("final")), "transfers": len(transfers),
            "failures": Findings.summary(f.fail), "weaknesses": Findings.summary(f.weak), "weak": bool(f.weak)}
    if f.fail:
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(f.fail.items()))
        return {"valid": False, "reason": f"{ISOLATION.get(method, method)}: {kinds}", **head}
    if not reads:
        return {"valid": "unknown", "reason": f"{method}: no read completed, so no balance was checked", **head}
    ok = f"{len(reads)} reads and {len(transfers)} transfers consistent with the total {total}"
    if f.weak:
        kinds = ", ".join(f"{len(v)} {k}" for k, v in sorted(f.weak.items()))
        return {"valid": True, "reason": f"weak, expected for {ISOLATION[method]}: {kinds}; no failure", **head}
    return {"valid": True, "reason": f"{ISOLATION.get(method, method)}: {ok}", **head}


def _balances_problem(bal: Any, accounts: int, total: int) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with one view of the accounts, or None."""
    if not isinstance(bal, list) or len(bal) != accounts or not all(isinstance(b, int) for b in bal):
        return "missing account", f"balances {bal!r}"
    if any(b < 0 for b in bal):
        return "negative balance", f"balances {bal}"
    if sum(bal) != total:
        return "wrong total", f"balances {bal} sum to {sum(bal)}, not {total}"
    return None


def _check_reads(f: Findings, reads: list[Op], accounts: int, total: int) -> None:
    for r in reads:
        p = _balances_problem(r.value, accounts, total)
        if p is not None:
            kind, detail = p
            expected = f.method == "rc" and kind == "wrong total"  # lost updates stay lost
            f.add(("final read: " if r.extra.get("final") else "") + kind, [r.index], detail, expected)
        for view in r.extra.get("discarded") or []:
            # views of attempts that conflicted: snapshots at ss/ser, anything at rr/rc
            if None in view:
                continue
            p = _balances_problem(view, accounts, total)
            if p is not None and p[0] == "wrong total":
                f.add("inconsistent view in a retried attempt", [r.index], p[1],
                      expected=f.method not in SNAPSHOT_VIEWS)


Version = tuple[int, int]  # (account, mod_revision)


class Versions:
    """The versions the history shows: account -> sorted mod_revisions, and who showed each first."""

    def __init__(self, seen: dict[Version, tuple[Any, int]]) -> None:
        self.who = {v: op for v, (_, op) in seen.items()}
        self.mods: dict[int, list[int]] = defaultdict(list)
        for acct, mod in seen:
            self.mods[acct].append(mod)
        for mods in self.mods.values():
            mods.sort()

    def between(self, acct: int, lo: int, hi: int) -> list[int]:
        """Mod revisions of acct seen with lo < m < hi."""
        mods = self.mods.get(acct, [])
        return mods[bisect.bisect_right(mods, lo):bisect.bisect_left(mods, hi)]


def _versions(f: Findings, reads: list[Op], transfers: list[tuple[Op, Op]], accounts: int) -> Versions:
    """Every version the history shows, checked for one value each."""
    seen: dict[Version, tuple[Any, int]] = {}
    by_rev: dict[int, int] = {}

    def saw(acct: int, mod: Any, value: Any, op: int, how: str) -> None:
        if not isinstance(mod, int) or mod <= 0 or not 0 <= acct < accounts:
            return
        prev = seen.get((acct, mod))
        if prev is None:
            seen[(acct, mod)] = (value, op)
        elif prev[0] != value:
            f.add("two values for one version", [prev[1], op],
                  f"account {acct} at mod_revision {mod}: {prev[0]!r} and {value!r} ({how})")

    for r in reads:
        mods = r.extra.get("mod_revisions") or []
        bal = r.value if isinstance(r.value, list) else []
        for i, (v, m) in enumerate(zip(bal, mods)):
            saw(i, m, v, r.index, "read")
    for inv, comp in transfers:
        t = comp.value or inv.value or {}
        got = comp.extra.get("read") or []
        rev = comp.extra.get("revision")
        for acct, pair in zip((t.get("from"), t.get("to")), got):
            saw(acct, pair[1], pair[0], comp.index, "read by a transfer")
        if isinstance(rev, int) and len(got) == 2 and all(isinstance(p[0], int) for p in got):
            if rev in by_rev:
                f.add("two transfers committed at one revision", [by_rev[rev], comp.index], f"revision {rev}")
            by_rev[rev] = comp.index
            saw(t["from"], rev, got[0][0] - t["amount"], comp.index, "written by a transfer")
            saw(t["to"], rev, got[1][0] + t["amount"], comp.index, "written by a transfer")
    return Versions(seen)


def _check_transfers(f: Findings, transfers: list[tuple[Op, Op]], versions: Versions) -> None:
    for inv, comp in transfers:
        t = comp.value or inv.value or {}
        rev = comp.extra.get("revision")
        got = comp.extra.get("read") or []
        if not isinstance(rev, int) or len(got) != 2:
            continue
        for acct, (value, mod) in zip((t["from"], t["to"]), got):
            if mod >= rev:
                f.add("transfer read its own future", [comp.index],
                      f"read account {acct} at mod_revision {mod}, committed at {rev}")
                continue
            for m in versions.between(acct, mod, rev):
                f.add("lost update", [comp.index, versions.who[(acct, m)]],
                      f"transfer committed at {rev} read account {acct} at {mod}, but it was written at {m} in between",
                      expected=f.method not in VALIDATED)


def _check_snapshots(f: Findings, reads: list[Op], versions: Versions) -> None:
    for r in reads:
        at = r.extra.get("revision")
        mods = r.extra.get("mod_revisions") or []
        if not isinstance(at, int):
            continue
        for acct, mod in enumerate(mods):
            if not isinstance(mod, int):
                continue
            later = versions.between(acct, mod, at + 1)
            if mod > at:
                f.add("read from the future", [r.index], f"account {acct} at mod_revision {mod} in a view of revision {at}")
            elif later:
                f.add("stale read", [r.index, versions.who[(acct, later[-1])]],
                      f"view of revision {at} has account {acct} at {mod}, but it was written at {later[-1]}",
                      expected=f.method not in VALIDATED and r.extra.get("via") != "range")
