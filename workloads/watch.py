"""The watch workload: writers change a few keys, watchers on every member record what they see.

Every worker alternates: one watch op (a stream open for a second or two), then a few writes.
So every member serves watchers most of the time, and every resumed watch replays history from
the store (the unsynced path) before it catches up (the synced path). Writes are puts of values
unique to the op (increasing per writer), deletes, and two-key puts in one Txn (one revision,
two events: "atomic" has something to check). With compaction on (`watch-compact`), writers
now and then compact the history to a revision a little behind the present.

A watch op of watcher w opens one stream with w's range and filters (whole prefix with prev_kv;
puts only; one key; deletes only), from a chosen revision: its first op from revision 1 or from
"now", then from the revision after the last one it saw (an event's or a progress
notification's), sometimes from further back; a stream cancelled because its start was
compacted resumes at the compaction revision. While open, it asks for progress notifications.
The op records every response in order (docs/history-format.md): events with their kvs and
prev_kv, progress notifications, the cancel. An error that ends the stream ends the op, still
`ok` with what it saw and the error noted (a watch has no effect to be unsure about).

The recovery phase reads every key from every member (linearizable reads), then on every member
watches the whole prefix from revision 1 (or from the compaction) until the present: the store's
history as that member holds it, against which checker/watch.py judges every stream. Last the
members' HashKV is compared.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from checker import converge as converge_checker
from checker import stats
from checker import watch as watch_checker
from checker.history import Op
from harness.client import ClientError, Definite, EtcdClient, decode, encode
from harness.generator import OpTemplate, worker_rng
from server.proto.etcdserverpb import rpc_pb2 as pb
from server.proto.mvccpb import kv_pb2
from workloads import converge
from workloads.base import Checker

PREFIX = "w/"
PREFIX_END = "w0"
KEYS = tuple(f"w/k{i}" for i in range(4))
FINAL = "final"
# what each watcher watches (watcher w uses WATCHES[w % len(WATCHES)])
WATCHES: tuple[dict, ...] = (
    {"name": "all", "key": PREFIX, "range_end": PREFIX_END, "prev_kv": True, "filters": []},
    {"name": "puts", "key": PREFIX, "range_end": PREFIX_END, "prev_kv": False, "filters": ["NODELETE"]},
    {"name": "k0", "key": KEYS[0], "range_end": None, "prev_kv": True, "filters": []},
    {"name": "deletes", "key": PREFIX, "range_end": PREFIX_END, "prev_kv": True, "filters": ["NOPUT"]},
)
FILTERS = {"NOPUT": pb.WatchCreateRequest.NOPUT, "NODELETE": pb.WatchCreateRequest.NODELETE}


class WatchOps:
    """Worker w's schedule: watch, then 3-10 writes, repeated (a pure function of seed and worker)."""

    def __init__(self, seed: int, worker: int, compact_every: int = 0) -> None:
        self.rng = worker_rng(seed, worker)
        self.worker = worker
        self.compact_every = compact_every
        self.writes_left = 0
        self.n = 0
        self.watched = False

    def next(self) -> OpTemplate:
        self.n += 1
        if self.writes_left == 0:
            self.writes_left = self.rng.randint(3, 10)
            first = not self.watched
            self.watched = True
            cfg = self.worker % len(WATCHES)
            spec: dict[str, Any] = {"watcher": self.worker, "watch": WATCHES[cfg]["name"],
                                    "duration": round(self.rng.uniform(1.0, 2.5), 2)}
            if first:
                spec["from"] = 1 if self.worker % 2 == 0 else "now"
            else:
                spec["from"] = "resume"
                if self.rng.random() < 0.15:
                    spec["back"] = self.rng.randint(1, 30)
            return OpTemplate("watch", WATCHES[cfg]["key"], spec)
        self.writes_left -= 1
        value = (self.worker + 1) * 10_000_000 + self.n  # unique to this op, increasing per writer
        if self.compact_every and self.rng.randrange(self.compact_every) == 0:
            return OpTemplate("compact", None, self.rng.randint(5, 40))
        x = self.rng.random()
        if x < 0.55:
            return OpTemplate("put", self.rng.choice(KEYS), value)
        if x < 0.8:
            return OpTemplate("mput", None, [sorted(self.rng.sample(KEYS, 2)), value])
        return OpTemplate("delete", self.rng.choice(KEYS), None)


@dataclass
class Resume:
    """Where a watcher continues: the revision after the last one it saw, if any."""

    next: int | None = None


def event_record(e: Any, prev_kv: bool) -> list:
    """[revision, PUT|DELETE, key, value, create_revision, version, prev] (prev: [value,
    mod_revision, create_revision, version] or None; absent when prev_kv was not asked for)."""
    kv = e.kv
    put = e.type == kv_pb2.Event.PUT
    rec = [kv.mod_revision, "PUT" if put else "DELETE", kv.key.decode(errors="replace"),
           decode(kv.value) if put else None, kv.create_revision, kv.version]
    if prev_kv:
        p = e.prev_kv
        rec.append([decode(p.value), p.mod_revision, p.create_revision, p.version] if e.HasField("prev_kv") else None)
    return rec


async def record_stream(client: EtcdClient, create: pb.WatchCreateRequest, duration: float,
                        progress_every: float = 0.4, until: int | None = None) -> dict:
    """Open one watch and record its responses for `duration` seconds (or until revision `until`
    is known delivered). Returns the record; raises Definite if the watch was never created."""
    rec: dict[str, Any] = {"start": create.start_revision, "responses": []}
    responses: list = rec["responses"]
    stream = client.watch(create, progress_every)
    last = 0
    try:
        async with asyncio.timeout(duration):
            async for r in stream:
                if r.created:
                    rec["created"] = r.header.revision
                if r.canceled:
                    responses.append({"h": r.header.revision, "canceled": True, "compact": r.compact_revision,
                                      "reason": r.cancel_reason})
                    break
                if r.events:
                    evs = [event_record(e, create.prev_kv) for e in r.events]
                    responses.append({"h": r.header.revision, "ev": evs})
                    last = max(last, evs[-1][0])
                elif not r.created and r.compact_revision == 0 and r.header.revision:
                    responses.append({"h": r.header.revision, "progress": True})
                    last = max(last, r.header.revision)
                if until is not None and last >= until:
                    rec["ended"] = "caught up"
                    break
    except TimeoutError:
        rec["ended"] = "duration"
    except ClientError as e:
        rec["error"] = e.message
    except Exception as e:  # noqa: BLE001 - a broken stream ends the op; what it saw stands
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        await stream.aclose()
    if "created" not in rec:
        raise Definite(f"watch not created: {rec.get('error') or rec.get('ended') or 'stream closed'}")
    return rec


def seen_up_to(rec: dict) -> int:
    """The highest revision the stream proved delivered (last event or progress notification)."""
    best = 0
    for r in rec["responses"]:
        if r.get("ev"):
            best = max(best, r["ev"][-1][0])
        elif r.get("progress"):
            best = max(best, r["h"])
    return best


class WatchWorkload:
    def __init__(self, name: str = "watch", compact_every: int = 0, progress_every: float = 0.4) -> None:
        self.name = name
        self.compact_every = compact_every
        self.progress_every = progress_every
        self.resume: dict[int, Resume] = {}

    def op_source(self, seed: int, worker: int) -> WatchOps:
        return WatchOps(seed, worker, self.compact_every)

    async def setup(self, client: EtcdClient) -> None:
        return None

    async def invoke(self, client: EtcdClient, op: OpTemplate) -> tuple[str, Any, dict]:
        if op.f == "put":
            rev = await client.put(op.key, op.value)
            return "ok", op.value, {"revision": rev}
        if op.f == "delete":
            r = await client.delete_range(pb.DeleteRangeRequest(key=op.key.encode()))
            return "ok", r.deleted, {"revision": r.header.revision}
        if op.f == "mput":
            keys, value = op.value
            r = await client.txn(pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=k.encode(), value=encode(value))) for k in keys]))
            return "ok", op.value, {"revision": r.header.revision}
        if op.f == "compact":
            return await self.compact(client, op.value)
        if op.f == "read":
            r = await client.get(op.key)
            return "ok", r.value, {"revision": r.revision, "mod_revision": r.mod_revision, "final": op.value == FINAL}
        if op.f == "watch":
            if op.value == FINAL:
                return await self.final_watch(client)
            return await self.watch(client, op)
        if op.f == converge.HASHKV:
            return await converge.invoke_hashkv(client, op.value)
        raise ValueError(f"watch: unknown op {op.f!r}")

    async def compact(self, client: EtcdClient, behind: int) -> tuple[str, Any, dict]:
        now = (await client.get(KEYS[0])).revision
        target = now - behind
        if target < 2:
            raise Definite(f"nothing to compact: revision {now}")
        rev = await client.compact(target)
        return "ok", target, {"revision": rev, "compacted_to": target}

    def create_request(self, cfg: dict, start: int) -> pb.WatchCreateRequest:
        req = pb.WatchCreateRequest(key=cfg["key"].encode(), start_revision=start, prev_kv=cfg["prev_kv"],
                                    filters=[FILTERS[f] for f in cfg["filters"]])
        if cfg["range_end"]:
            req.range_end = cfg["range_end"].encode()
        return req

    async def watch(self, client: EtcdClient, op: OpTemplate) -> tuple[str, Any, dict]:
        spec = op.value
        cfg = next(c for c in WATCHES if c["name"] == spec["watch"])
        state = self.resume.setdefault(spec["watcher"], Resume())
        if spec["from"] == 1:
            start = 1
        elif spec["from"] == "now" or state.next is None:
            start = 0
        else:
            start = max(1, state.next - spec.get("back", 0))
        duration = min(spec["duration"], max(0.5, client.timeout - 1.5))
        rec = await record_stream(client, self.create_request(cfg, start), duration, self.progress_every)
        rec.update(watcher=spec["watcher"], watch=cfg["name"], range=[cfg["key"], cfg["range_end"]],
                   filters=cfg["filters"], prev_kv=cfg["prev_kv"])
        upto = seen_up_to(rec)
        cancel = next((r for r in rec["responses"] if r.get("canceled")), None)
        if cancel and cancel.get("compact"):
            state.next = cancel["compact"]  # the earliest revision still there
        elif upto:
            state.next = max(state.next or 0, upto + 1) if spec.get("back") else upto + 1
        elif start == 0:
            state.next = rec["created"] + 1
        return "ok", rec, {"revision": rec["created"]}

    async def final_watch(self, client: EtcdClient) -> tuple[str, Any, dict]:
        """The whole prefix from revision 1 (or the compaction) up to the present."""
        present = (await client.get(KEYS[0])).revision
        cfg = WATCHES[0]
        deadline = time.monotonic() + client.timeout
        start = 1
        while True:
            rec = await record_stream(client, self.create_request(cfg, start), max(0.5, deadline - time.monotonic()),
                                      self.progress_every, until=present)
            cancel = next((r for r in rec["responses"] if r.get("canceled")), None)
            if cancel and cancel.get("compact") and start == 1:
                start = cancel["compact"]
                continue
            break
        rec.update(watcher=FINAL, watch=cfg["name"], range=[cfg["key"], cfg["range_end"]], filters=[],
                   prev_kv=True, final=True, present=present)
        return "ok", rec, {"revision": present, "final": True}

    def final_ops(self, history: list[Op]) -> list[OpTemplate]:
        nodes = converge.node_count(history)
        reads = [OpTemplate("read", k, FINAL) for k in KEYS]
        return (converge.spread(reads, nodes) + converge.spread([OpTemplate("watch", PREFIX, FINAL)], nodes)
                + converge.hashkv_ops(history))

    def checkers(self) -> dict[str, Checker]:
        return {"watch": watch_checker.check, "converged": converge_checker.check, "stats": stats.check}


FACTORIES = {
    "watch": WatchWorkload,
    "watch-compact": lambda: WatchWorkload("watch-compact", compact_every=25),
}
