"""The last step of every workload's recovery phase: do all members hold the same data?

After the faults heal and the final reads ran, each member is asked for HashKV at one revision:
the highest revision any acknowledged op of the run reported (so every member must have it, and
no later request can change what it covers). Members that are still catching up answer "future
revision" (or do not answer yet); the op asks again for a while (HashKV changes nothing, so
asking again is safe).
Checked by checker/converge.py: every member that answered must give the same hash.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from checker.history import NEMESIS, OK, Op
from harness.client import Definite, EtcdClient
from harness.generator import OpTemplate

HASHKV = "hashkv"


def highest_revision(history: list[Op]) -> int:
    """The highest revision an acknowledged client op reported (0 if none did)."""
    best = 0
    for op in history:
        if op.process != NEMESIS and op.type == OK:
            r = op.extra.get("revision")
            if isinstance(r, int) and r > best:
                best = r
    return best


def node_count(history: list[Op]) -> int:
    return len({op.node for op in history if op.process != NEMESIS and op.node}) or 1


def hashkv_ops(history: list[Op]) -> list[OpTemplate]:
    """One HashKV per member (the runner hands final op i to node i % nodes)."""
    rev = highest_revision(history)
    return [OpTemplate(HASHKV, None, rev) for _ in range(node_count(history))] if rev else []


def spread(per_node: list[OpTemplate], nodes: int) -> list[OpTemplate]:
    """Repeat each template once per node, in the order the runner deals final ops to nodes."""
    return [t for t in per_node for _ in range(nodes)]


async def invoke_hashkv(client: EtcdClient, revision: int, patience: float = 10.0) -> tuple[str, Any, dict]:
    deadline = time.monotonic() + patience
    while True:
        try:
            r = await client.hash_kv(revision)
            # etcd 3.4 leaves hash_revision out; the hash is then of the revision asked for
            return OK, r.hash, {"revision": r.header.revision, "hash_revision": r.hash_revision or revision,
                                "compact_revision": r.compact_revision, "member": r.header.member_id}
        except Definite as e:  # a member still catching up, or not serving yet: ask again
            if "compacted" in e.message or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
