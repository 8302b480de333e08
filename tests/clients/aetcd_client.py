"""Drive an etcd endpoint with aetcd (asyncio client on grpc.aio) and print what it saw as JSON.

Runs in the client virtualenv (.venv-clients): aetcd ships generated protobuf modules with the
same full names as the project's. Usage:
    aetcd_client.py HOST:PORT PREFIX
The report has the same shape as etcd3_client.py's, so both libraries and both servers can be
held to one expected document.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import aetcd
import grpc


async def main(endpoint: str, prefix: str) -> dict:
    host, port = endpoint.rsplit(":", 1)
    p = prefix.encode()
    out: dict = {"library": "aetcd"}
    async with aetcd.Client(host=host, port=int(port), timeout=10) as c:
        # put / get
        base = (await c.put(p + b"k", b"v1")).header.revision
        r2 = (await c.put(p + b"k", b"v2")).header.revision
        got = await c.get(p + b"k")
        out["put_get"] = {
            "value": got.value.decode(),
            "version": got.version,
            "create_rev": got.create_revision - base,
            "mod_rev": got.mod_revision - base,
            "second_put_rev": r2 - base,
            "missing": await c.get(p + b"nokey"),
        }

        # prefix get
        for k, v in ((b"pre/a", b"1"), (b"pre/b", b"2"), (b"pre/c", b"3"), (b"pref", b"x")):
            await c.put(p + k, v)
        out["prefix"] = [[kv.key[len(p):].decode(), kv.value.decode()] for kv in await c.get_prefix(p + b"pre/")]

        # delete
        out["delete"] = {
            "existing": await c.delete(p + b"pre/b") is not None,  # aetcd: None when nothing was deleted
            "missing": await c.delete(p + b"pre/zzz") is not None,
            "after": await c.get(p + b"pre/b"),
            "prefix_deleted": (await c.delete_prefix(p + b"pre/")).deleted,
        }

        # transaction
        t = c.transactions
        ok, _ = await c.transaction(
            compare=[t.value(p + b"k") == b"v2"], success=[t.put(p + b"k", b"v3")], failure=[t.put(p + b"k", b"bad")]
        )
        ok2, resp2 = await c.transaction(
            compare=[t.version(p + b"k") == 1], success=[t.put(p + b"k", b"bad")], failure=[t.get(p + b"k")]
        )
        out["txn"] = {
            "first_succeeded": ok,
            "second_succeeded": ok2,
            "second_read": [v.decode() for v, _ in resp2[0]],
            "mod_rev": (await c.get(p + b"k")).mod_revision - base,
        }

        # watch: events for puts and deletes done after the watch was created
        w = await c.watch_prefix(p + b"w/")
        await c.put(p + b"w/1", b"a")
        await c.put(p + b"w/2", b"b")
        await c.delete(p + b"w/1")
        events = []
        it = w.__aiter__()
        try:
            while len(events) < 3:
                ev = await asyncio.wait_for(it.__anext__(), 10)
                kind = {"PUT": "PutEvent", "DELETE": "DeleteEvent"}[str(ev.kind)]
                events.append([kind, ev.kv.key[len(p):].decode(), ev.kv.value.decode(), ev.kv.mod_revision - base])
        except asyncio.TimeoutError:
            events.append(["timeout"])
        await w.cancel()
        out["watch"] = events

        # leases: grant, attach, time-to-live, revoke deletes the key
        lease = await c.lease(30)
        await c.put(p + b"leased", b"x", lease=lease)
        leased = await c.get(p + b"leased")
        info = await c.get_lease_info(lease.id)
        out["lease"] = {
            "granted_ttl": lease.ttl,
            "key_lease_is_grant": leased.lease == lease.id,
            "ttl_info_granted": info.grantedTTL,
            "ttl_info_positive": 0 < info.TTL <= 30,
            "keys": [k[len(p):].decode() for k in info.keys],
        }
        await lease.revoke()
        out["lease"]["after_revoke"] = await c.get(p + b"leased")
        out["lease"]["ttl_after_revoke"] = (await c.get_lease_info(lease.id)).TTL
        try:
            await c.put(p + b"nolease", b"x", lease=lease.id)
            out["lease"]["put_revoked_lease"] = "ok"
        except aetcd.ClientError as e:
            cause = e.__cause__ if isinstance(e.__cause__, grpc.RpcError) else None
            out["lease"]["put_revoked_lease"] = [cause.code().name, cause.details()] if cause else repr(e)

        # keep-alive: a refresh puts the remaining TTL back up to the granted TTL
        short = await c.lease(5)
        time.sleep(1.2)
        before = await short.remaining_ttl()
        refreshed = await short.refresh()
        after = await short.remaining_ttl()
        out["keepalive"] = {
            "refresh_ttl": refreshed.TTL,
            "refresh_id_matches": refreshed.ID == short.id,
            "remaining_went_up": after > before,
            "before_below_granted": before < 5,
        }
        await short.revoke()

        # a second grant of the same explicit ID: aetcd recognises etcd's message text
        fixed = await c.lease(30, lease_id=0x7E57)
        try:
            await c.lease(30, lease_id=0x7E57)
            out["duplicate_lease"] = "ok"
        except aetcd.ClientError as e:
            out["duplicate_lease"] = type(e).__name__
        await fixed.revoke()

        # status and member list
        st = await c.status()
        members = [m async for m in c.members()]
        out["cluster"] = {
            "version_has_3": st.version.startswith("3."),
            "leader_is_member": st.leader is not None and st.leader.id == members[0].id,
            "members": [[m.name, any(u.endswith(":" + port) for u in m.client_urls)] for m in members],
            "db_size_positive": st.db_size > 0,
            "raft_index_positive": st.raft_index > 0,
        }
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2])), sort_keys=True), flush=True)
    os._exit(0)
