"""Drive an etcd endpoint with python-etcd3 (the `etcd3` package) and print what it saw as JSON.

Runs in the client virtualenv (.venv-clients), never in the project's: the library ships its
own generated protobuf modules with the same full names as ours. Usage:
    etcd3_client.py HOST:PORT PREFIX
Revisions are reported relative to the first put, lease IDs only by equality, so the output of
two servers with the same history is identical.
"""
from __future__ import annotations

import os

# etcd3 0.12's generated modules predate protobuf 4; the pure-Python runtime still loads them.
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"

import json  # noqa: E402
import queue  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import etcd3  # noqa: E402
import grpc  # noqa: E402


def main(endpoint: str, prefix: str) -> dict:
    host, port = endpoint.rsplit(":", 1)
    c = etcd3.client(host=host, port=int(port), timeout=10)
    p = prefix
    out: dict = {"library": "etcd3"}

    # put / get
    base = c.put(p + "k", "v1").header.revision
    r2 = c.put(p + "k", "v2").header.revision
    value, meta = c.get(p + "k")
    out["put_get"] = {
        "value": value.decode(),
        "version": meta.version,
        "create_rev": meta.create_revision - base,
        "mod_rev": meta.mod_revision - base,
        "second_put_rev": r2 - base,
        "missing": c.get(p + "nokey")[0],
    }

    # prefix get
    for k, v in (("pre/a", "1"), ("pre/b", "2"), ("pre/c", "3"), ("pref", "x")):
        c.put(p + k, v)
    out["prefix"] = [[m.key.decode()[len(p):], v.decode()] for v, m in c.get_prefix(p + "pre/")]

    # delete
    out["delete"] = {
        "existing": c.delete(p + "pre/b"),
        "missing": c.delete(p + "pre/zzz"),
        "after": c.get(p + "pre/b")[0],
        "prefix_deleted": c.delete_prefix(p + "pre/").deleted,
    }

    # transaction
    t = c.transactions
    ok, _ = c.transaction(
        compare=[t.value(p + "k") == "v2"], success=[t.put(p + "k", "v3")], failure=[t.put(p + "k", "bad")]
    )
    ok2, resp2 = c.transaction(
        compare=[t.version(p + "k") == 1], success=[t.put(p + "k", "bad")], failure=[t.get(p + "k")]
    )
    out["txn"] = {
        "first_succeeded": ok,
        "second_succeeded": ok2,
        "second_read": [v.decode() for v, _ in resp2[0]],
        "mod_rev": c.get(p + "k")[1].mod_revision - base,
    }

    # watch: events for puts and deletes done after the watch was created
    q: queue.Queue = queue.Queue()
    wid = c.add_watch_prefix_callback(p + "w/", q.put)
    c.put(p + "w/1", "a")
    c.put(p + "w/2", "b")
    c.delete(p + "w/1")
    events = []
    deadline = time.monotonic() + 10
    while len(events) < 3 and time.monotonic() < deadline:
        try:
            resp = q.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if isinstance(resp, Exception):
            events.append(["error", repr(resp)])
            break
        for ev in resp.events:
            events.append([type(ev).__name__, ev.key.decode()[len(p):], ev.value.decode(), ev.mod_revision - base])
    c.cancel_watch(wid)
    out["watch"] = events

    # leases: grant, attach, time-to-live, revoke deletes the key
    lease = c.lease(30)
    c.put(p + "leased", "x", lease=lease)
    _, lmeta = c.get(p + "leased")
    info = c.get_lease_info(lease.id)
    out["lease"] = {
        "granted_ttl": lease.ttl,
        "key_lease_is_grant": lmeta.lease_id == lease.id,
        "ttl_info_granted": info.grantedTTL,
        "ttl_info_positive": 0 < info.TTL <= 30,
        "keys": [k.decode()[len(p):] for k in info.keys],
    }
    lease.revoke()
    out["lease"]["after_revoke"] = c.get(p + "leased")[0]
    out["lease"]["ttl_after_revoke"] = c.get_lease_info(lease.id).TTL
    try:
        c.put(p + "nolease", "x", lease=lease.id)
        out["lease"]["put_revoked_lease"] = "ok"
    except grpc.RpcError as e:
        out["lease"]["put_revoked_lease"] = [e.code().name, e.details()]

    # keep-alive: a refresh puts the remaining TTL back up to the granted TTL
    short = c.lease(5)
    time.sleep(1.2)
    before = short.remaining_ttl
    refreshed = short.refresh()
    after = short.remaining_ttl
    out["keepalive"] = {
        "refresh_ttl": refreshed[0].TTL,
        "refresh_id_matches": refreshed[0].ID == short.id,
        "remaining_went_up": after > before,
        "before_below_granted": before < 5,
    }
    short.revoke()

    # a second grant of the same explicit ID: etcd3 maps FAILED_PRECONDITION to its own exception
    fixed = c.lease(30, lease_id=0x7E57)
    try:
        c.lease(30, lease_id=0x7E57)
        out["duplicate_lease"] = "ok"
    except Exception as e:  # noqa: BLE001 - the class is what is reported
        out["duplicate_lease"] = type(e).__name__
    fixed.revoke()

    # status and member list
    st = c.status()
    members = list(c.members)
    out["cluster"] = {
        "version_has_3": st.version.startswith("3."),
        "leader_is_member": st.leader is not None and st.leader.id == members[0].id,
        "members": [[m.name, any(u.endswith(":" + port) for u in m.client_urls)] for m in members],
        "db_size_positive": st.db_size > 0,
        "raft_index_positive": st.raft_index > 0,
    }
    return out  # no close(): the watch thread would print a traceback when the channel goes


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2]), sort_keys=True), flush=True)
    os._exit(0)  # the library's watch thread would print a traceback when the channel closes
