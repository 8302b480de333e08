"""The watch workload's client side against both targets: the ops it invokes and the stream
records it keeps (events with prev_kv, progress notifications, a cancel for a compacted start),
then checked by the watch checker as a tiny history."""
from __future__ import annotations

import asyncio

from checker import watch as watch_checker
from harness.client import EtcdClient
from harness.generator import OpTemplate
from history_builder import History
from workloads.watch import WATCHES, WatchWorkload, record_stream


def test_ops_and_stream_records_against_the_server(any_server) -> None:
    async def go() -> tuple:
        w = WatchWorkload()
        c = EtcdClient(any_server.endpoint, timeout=5)
        h = History()
        try:
            for i, t in enumerate([OpTemplate("put", "w/k0", 11), OpTemplate("mput", None, [["w/k1", "w/k2"], 12]),
                                   OpTemplate("put", "w/k0", 13), OpTemplate("delete", "w/k1", None),
                                   OpTemplate("delete", "w/k3", None)]):
                h.invoke(i, t.f, t.value, key=t.key)
                typ, value, extra = await w.invoke(c, t)
                h.ok(i, value, **extra)
            spec = {"watcher": 0, "watch": "all", "duration": 1.5, "from": 1}
            h.invoke(10, "watch", spec, key="w/")
            typ, rec, extra = await w.invoke(c, OpTemplate("watch", "w/", spec))
            h.ok(10, rec, **extra)
            resumed_at = w.resume[0].next
            for i, t in enumerate([OpTemplate("read", k, "final") for k in ("w/k0", "w/k1", "w/k2", "w/k3")]):
                h.invoke(20 + i, t.f, t.value, key=t.key)
                typ, value, extra = await w.invoke(c, t)
                h.ok(20 + i, value, **extra)
            h.invoke(30, "watch", "final", key="w/")
            typ, final, extra = await w.invoke(c, OpTemplate("watch", "w/", "final"))
            h.ok(30, final, **extra)
            # a start below the compaction is cancelled with the compaction revision
            await c.compact(4)
            cancelled = await record_stream(c, w.create_request(WATCHES[0], 2), 1.0)
            return h, rec, resumed_at, cancelled
        finally:
            await c.close()

    h, rec, resumed_at, cancelled = asyncio.run(go())
    evs = [e for r in rec["responses"] if r.get("ev") for e in r["ev"]]
    assert [(e[0], e[1], e[2], e[3]) for e in evs] == [
        (2, "PUT", "w/k0", 11), (3, "PUT", "w/k1", 12), (3, "PUT", "w/k2", 12), (4, "PUT", "w/k0", 13),
        (5, "DELETE", "w/k1", None)]
    assert evs[3][6] == [11, 2, 2, 1] and evs[0][6] is None  # prev_kv; the first put had none
    assert any(r.get("progress") and r["h"] >= 5 for r in rec["responses"]), rec["responses"]
    assert resumed_at == 6
    assert cancelled["responses"][-1]["canceled"] and cancelled["responses"][-1]["compact"] == 4
    r = watch_checker.check(h.ops)
    assert r["valid"] is True, r
    assert r["store_history"]["events"] == 5 and r["acknowledged_writes"] == 5
