"""Did every member end with the same data? HashKV answers compared at one revision.

Reads the `hashkv` ops of the recovery phase (workloads/converge.py): each member's hash of its
key-value history up to one revision. Any two members that answered for the same revision must
agree, and so must two answers of one member; fewer than two members answering prove nothing
(unknown). Only ops that completed ok count.
"""
from __future__ import annotations

from checker.history import NEMESIS, OK, Op

HASHKV = "hashkv"


def check(history: list[Op]) -> dict:
    # hash revision -> every ok answer (node, hash, op index): a member asked twice keeps both
    answers: dict[int, list[tuple[str, int, int]]] = {}
    asked = 0
    for op in history:
        if op.process == NEMESIS or op.f != HASHKV or op.type == "invoke":
            continue
        asked += 1
        if op.type == OK:
            rev = op.extra.get("hash_revision") or 0
            answers.setdefault(int(rev), []).append((op.node or "?", op.value, op.index))
    if not asked:
        return {"valid": "unknown", "reason": "no member was asked for its HashKV"}
    for rev, got in sorted(answers.items()):
        if len({h for _, h, _ in got}) > 1:
            got = sorted(got)
            return {"valid": False, "reason": f"members disagree at revision {rev}: "
                    + ", ".join(f"{n} {h:#010x}" for n, h, _ in got),
                    "revision": rev, "ops": sorted(i for _, _, i in got),
                    "hashes": {n: h for n, h, _ in got}}
    members = {rev: sorted({n for n, _, _ in got}) for rev, got in answers.items()}
    agreeing = max((len(m) for m in members.values()), default=0)
    if agreeing < 2:
        return {"valid": "unknown", "reason": f"{agreeing} of {asked} members answered HashKV; nothing to compare"}
    rev, nodes = max(members.items(), key=lambda kv: len(kv[1]))
    return {"valid": True, "reason": f"{len(nodes)} members agree on HashKV at revision {rev}",
            "revision": rev, "members": nodes}
