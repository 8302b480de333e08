"""The lock workload's ops against both targets: the Lock service and the client recipe exclude
each other on one lock name, the fence refuses a holder whose lease is gone (and its release
says the lock was lost), and an acquire that cannot finish revokes its lease and fails."""
from __future__ import annotations

import asyncio
import contextlib
from typing import AsyncIterator

import pytest

from harness.client import Definite, EtcdClient
from harness.generator import OpTemplate
from server.proto.etcdserverpb import rpc_pb2 as pb
from workloads.lock import LockWorkload

NAME = "lock/t"


def op(f: str, value=None) -> OpTemplate:
    return OpTemplate(f, NAME, value)


@contextlib.asynccontextmanager
async def two_clients(endpoint: str) -> AsyncIterator[tuple[EtcdClient, EtcdClient]]:
    a, b = EtcdClient(endpoint, timeout=5), EtcdClient(endpoint, timeout=5)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("first,second", [("v3lock", "recipe"), ("recipe", "v3lock"), ("recipe", "recipe")])
def test_the_two_ways_of_locking_exclude_each_other(any_server, first: str, second: str) -> None:
    async def go() -> None:
        w = LockWorkload(ttl=5)
        async with two_clients(any_server.endpoint) as (a, b):
            typ, _, ex = await w.invoke(a, op("acquire", first))
            assert typ == "ok" and ex["lock_key"].startswith(NAME + "/") and ex["lease_deadline_in"] > 0
            waiting = asyncio.ensure_future(w.invoke(b, op("acquire", second)))
            await asyncio.sleep(1.0)
            assert not waiting.done()  # b waits while a holds
            assert (await w.invoke(a, op("incr")))[:2] == ("ok", [0, 1])
            typ, _, rel = await w.invoke(a, op("release"))
            assert typ == "ok" and rel["lost"] is False
            typ, _, ex2 = await asyncio.wait_for(waiting, 5)
            assert typ == "ok" and ex2["create_revision"] > ex["create_revision"]
            assert (await w.invoke(b, op("incr")))[:2] == ("ok", [1, 2])
            assert (await w.invoke(b, op("release")))[2]["lost"] is False
            with pytest.raises(Definite, match="not holding"):
                await w.invoke(b, op("incr"))

    asyncio.run(go())


def test_the_fence_refuses_a_holder_whose_lease_is_gone(any_server) -> None:
    async def go() -> None:
        w = LockWorkload(ttl=5)
        async with two_clients(any_server.endpoint) as (a, b):
            await w.invoke(a, op("acquire", "recipe"))
            lease = w.proc(a).session.lease
            await b.lease_revoke(lease)  # as if it expired while a was paused
            assert (await w.invoke(b, op("acquire", "v3lock")))[0] == "ok"  # someone else takes it
            typ, value, ex = await w.invoke(a, op("incr"))
            assert (typ, ex["fenced"]) == ("fail", True)
            assert (await b.get("counter/" + NAME)).value is None  # nothing written
            typ, _, rel = await w.invoke(a, op("release"))
            assert typ == "ok" and rel["lost"] is True
            # b's hold was not disturbed by a's release
            assert (await w.invoke(b, op("incr")))[:2] == ("ok", [0, 1])
            # a's session learns its lease is gone (at the latest from the next acquire, which
            # fails definitely), and the acquire after that opens a new session
            await w.invoke(b, op("release"))
            try:
                typ, _, ex = await w.invoke(a, op("acquire", "v3lock"))
            except Definite as e:
                assert "lease not found" in e.message and w.proc(a).session.done
                typ, _, ex = await w.invoke(a, op("acquire", "v3lock"))
            assert typ == "ok" and ex["lease"] != lease

    asyncio.run(go())


@pytest.mark.parametrize("mode", ["v3lock", "recipe"])
def test_an_acquire_that_cannot_finish_revokes_its_lease_and_fails(any_server, mode: str) -> None:
    async def go() -> None:
        w = LockWorkload(ttl=10, wait_share=0.3)
        async with two_clients(any_server.endpoint) as (a, b):
            await w.invoke(a, op("acquire", "v3lock"))
            with pytest.raises(Definite, match="session lease revoked"):
                await w.invoke(b, op("acquire", mode))
            lease = w.proc(b).session.lease
            assert w.proc(b).session.done and await b.lease_ttl(lease) == -1
            prefix = (NAME + "/").encode()
            held = await b.range(pb.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
            assert [kv.lease for kv in held.kvs] == [w.proc(a).session.lease]  # b's key is gone with its lease
            assert (await w.invoke(a, op("release")))[2]["lost"] is False

    asyncio.run(go())
