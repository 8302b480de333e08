"""The harness client against real servers: results, and the fail/info line drawn correctly.

Each case runs against the reference server and real etcd (the any_server fixture): a failed
compare is a definite no, a refused connection never sent anything (definite), and a write
whose deadline passes on a frozen server (SIGSTOP) may have happened (indefinite) while a read
that times out is still definite (a read has no effect).
"""
from __future__ import annotations

import asyncio
import signal

import pytest

from harness.client import Definite, EtcdClient, Indefinite
from harness.localproc import free_port
from server.proto.etcdserverpb import rpc_pb2 as pb


def run(coro):
    return asyncio.run(coro)


def test_put_get_cas_delete(any_server) -> None:
    async def go() -> None:
        c = EtcdClient(any_server.endpoint, timeout=5)
        try:
            assert (await c.get("k")).value is None
            rev = await c.put("k", 3)
            r = await c.get("k")
            assert (r.value, r.mod_revision) == (3, rev)
            assert await c.cas("k", 4, 5) == (False, rev)  # the compare failed: nothing written
            ok, rev2 = await c.cas("k", 3, 5)
            assert ok and rev2 == rev + 1 and (await c.get("k")).value == 5
            assert (await c.cas("new", None, 1))[0] and not (await c.cas("new", None, 2))[0]
            assert await c.delete("k") == 1 and (await c.get("k")).value is None
        finally:
            await c.close()

    run(go())


def test_lease_lock_and_watch(any_server) -> None:
    async def go() -> None:
        c = EtcdClient(any_server.endpoint, timeout=5)
        try:
            lease = await c.lease_grant(30)
            assert 0 < await c.lease_ttl(lease) <= 30
            assert await c.lease_keepalive_once(lease) == 30
            key = await c.lock("mutex", lease)
            assert key.startswith(b"mutex/")
            await c.unlock(key)
            await c.lease_revoke(lease)
            assert await c.lease_ttl(lease) == -1
            start = await c.put("w/a", 1)
            await c.put("w/b", 2)
            seen = []
            async for r in c.watch(pb.WatchCreateRequest(key=b"w/", range_end=b"w0", start_revision=start)):
                seen.extend((e.kv.key, e.kv.mod_revision) for e in r.events)
                if len(seen) >= 2:
                    break
            assert seen == [(b"w/a", start), (b"w/b", start + 1)]
        finally:
            await c.close()

    run(go())


def test_a_refused_connection_is_definite() -> None:
    async def go() -> None:
        c = EtcdClient(f"127.0.0.1:{free_port()}", timeout=2)
        try:
            with pytest.raises(Definite):
                await c.put("k", 1)
        finally:
            await c.close()

    run(go())


def test_a_timed_out_write_is_indefinite_a_timed_out_read_definite(any_server) -> None:
    async def go() -> None:
        c = EtcdClient(any_server.endpoint, timeout=0.5)
        try:
            await c.put("k", 1)  # connected
            any_server.signal(signal.SIGSTOP)
            try:
                with pytest.raises(Indefinite) as e:
                    await c.put("k", 2)
                assert e.value.code == "DEADLINE_EXCEEDED"
                with pytest.raises(Definite):
                    await c.get("k")
            finally:
                any_server.signal(signal.SIGCONT)
        finally:
            await c.close()

    run(go())
