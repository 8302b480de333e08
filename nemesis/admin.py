"""Administrative operations during the workload: compaction and defragmentation.

Not faults in the usual sense, but the operations etcd's own robustness tests interleave with
traffic because they rewrite storage under load: `start` compacts the key-value history (up to
the current revision less a small margin, physical or not, as `etcdctl compact`) and/or
defragments one member or every member in turn (as `etcdctl defrag`); `stop` and `heal` have
nothing to undo and say so. Evidence: the revision before and the one compacted to, and for each
defragmented member its backend size before and after and how long it was busy.
"""
from __future__ import annotations

import time

from harness.client import ClientError
from harness.inventory import Node
from nemesis.base import FaultRefused, NemesisContext
from nemesis.member import _call

OPS = ("compact", "defrag", "compact+defrag")


class AdminNemesis:
    """`--nemesis admin`: compaction and defragmentation while the workload runs."""

    name = "admin"

    def __init__(self, ops: tuple[str, ...] = OPS) -> None:
        unknown = set(ops) - set(OPS)
        if unknown:
            raise ValueError(f"unknown admin op {sorted(unknown)[0]!r}: {', '.join(OPS)}")
        self.ops = ops
        self.compacted = 0

    def setup(self, ctx: NemesisContext) -> None:
        self.compacted = 0

    def compact(self, ctx: NemesisContext, margin: int | None = None, physical: bool | None = None) -> dict:
        errors = []
        for n in ctx.running_members():
            ep = ctx.db.client_endpoint(n)
            try:
                st = _call(ep, lambda c: c.status(), credentials=ctx.credentials)
                rev = st.header.revision
                keep = min(ctx.rng.choice((0, 10, 100)), rev // 2) if margin is None else margin
                target = rev - keep
                if target <= max(1, self.compacted):
                    raise FaultRefused(f"revision {rev} leaves nothing new to compact (last compacted {self.compacted})")
                phys = ctx.rng.random() < 0.5 if physical is None else physical
                got = _call(ep, lambda c: c.compact(target, physical=phys), timeout=30, credentials=ctx.credentials)
                self.compacted = target
                return {"node": n.name, "revision": rev, "compacted_to": target, "physical": phys, "response_revision": got}
            except ClientError as e:
                errors.append(f"{n.name}: {e.message}")
        raise FaultRefused("no member would compact: " + ("; ".join(errors) or "none running"))

    def defrag(self, ctx: NemesisContext, nodes: list[Node]) -> dict:
        out = {}
        for n in nodes:
            ep = ctx.db.client_endpoint(n)
            try:
                before = _call(ep, lambda c: c.status(), credentials=ctx.credentials).dbSize
                t0 = time.monotonic()
                _call(ep, lambda c: c.defragment(timeout=60), timeout=60, credentials=ctx.credentials)
                busy = time.monotonic() - t0
                after = _call(ep, lambda c: c.status(), credentials=ctx.credentials).dbSize
                out[n.name] = {"db_size_before": before, "db_size_after": after, "seconds": round(busy, 3)}
            except ClientError as e:
                out[n.name] = {"error": e.message}
        if not any("error" not in v for v in out.values()):
            raise FaultRefused("no member would defragment: " + "; ".join(f"{k}: {v['error']}" for k, v in out.items()))
        return out

    def start(self, ctx: NemesisContext) -> dict:
        running = ctx.running_members()
        if not running:
            raise FaultRefused("no member running")
        op = ctx.rng.choice(self.ops)
        ev: dict = {"op": op}
        if "compact" in op:
            ev["compact"] = self.compact(ctx)
        if "defrag" in op:
            targets = running if ctx.rng.random() < 0.3 else [ctx.rng.choice(running)]
            ev["defrag"] = self.defrag(ctx, targets)
        ev["nodes"] = sorted({ev.get("compact", {}).get("node"), *ev.get("defrag", {})} - {None})
        return ev

    def stop(self, ctx: NemesisContext) -> dict:
        return {"nodes": [], "note": "compaction and defragmentation leave nothing to undo"}

    def heal(self, ctx: NemesisContext) -> dict:
        return self.stop(ctx)
