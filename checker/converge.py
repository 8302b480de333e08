"""Did every member end with the same data? HashKV answers compared at one revision.

Reads the `hashkv` ops of the recovery phase (workloads/converge.py): each member's hash of its
key-value history up to one revision. Any two members that answered for the same revision must
agree; fewer than two answers prove nothing (unknown). Only ops that completed ok count.
"""
from __future__ import annotations

from checker.history import NEMESIS, OK, Op

HASHKV = "hashkv"


def check(history: list[Op]) -> dict:
    answers: dict[int, dict[str, tuple[int, int]]] = {}  # hash revision -> node -> (hash, op index)
    asked = 0
    for op in history:
        if op.process == NEMESIS or op.f != HASHKV or op.type == "invoke":
            continue
        asked += 1
        if op.type == OK:
            rev = op.extra.get("hash_revision") or 0
            answers.setdefault(int(rev), {})[op.node or "?"] = (op.value, op.index)
    if not asked:
        return {"valid": "unknown", "reason": "no member was asked for its HashKV"}
    for rev, by_node in sorted(answers.items()):
        hashes = {h for h, _ in by_node.values()}
        if len(hashes) > 1:
            return {"valid": False, "reason": f"members disagree at revision {rev}: "
                    + ", ".join(f"{n} {h:#010x}" for n, (h, _) in sorted(by_node.items())),
                    "revision": rev, "ops": sorted(i for _, i in by_node.values()),
                    "hashes": {n: h for n, (h, _) in sorted(by_node.items())}}
    agreeing = max((len(b) for b in answers.values()), default=0)
    if agreeing < 2:
        return {"valid": "unknown", "reason": f"{agreeing} of {asked} members answered HashKV; nothing to compare"}
    rev, by_node = max(answers.items(), key=lambda kv: len(kv[1]))
    return {"valid": True, "reason": f"{len(by_node)} members agree on HashKV at revision {rev}",
            "revision": rev, "members": sorted(by_node)}
