"""Our STM against real servers (the reference server and real etcd): each isolation level does
what etcd documents, shown with interleavings forced inside an attempt.

A second client writes between an attempt's reads or between its reads and its commit; whether
the attempt then commits or retries, and what it saw, tells the levels apart: ReadCommitted
loses the update, the others retry; Serializable reads from its first read's snapshot while
RepeatableReads sees the newer value; SerializableSnapshot alone conflicts on a key it only wrote.
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from typing import AsyncIterator

import pytest

from harness import stm
from harness.client import Definite, EtcdClient
from harness.stm import Isolation

ALL = list(Isolation)


def run(coro):
    return asyncio.run(coro)


@contextlib.asynccontextmanager
async def two_clients(endpoint: str) -> AsyncIterator[tuple[EtcdClient, EtcdClient]]:
    a, b = EtcdClient(endpoint, timeout=5), EtcdClient(endpoint, timeout=5)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def test_levels_parse_with_a_one_line_error() -> None:
    assert Isolation.parse("read-committed") is Isolation.READ_COMMITTED
    assert Isolation.parse("SERIALIZABLE") is Isolation.SERIALIZABLE
    with pytest.raises(ValueError, match="unknown isolation level 'snapshot'"):
        Isolation.parse("snapshot")


def test_a_concurrent_write_is_lost_only_at_read_committed(any_server) -> None:
    async def go() -> dict:
        out = {}
        async with two_clients(any_server.endpoint) as (a, b):
            for iso in ALL:
                key = f"acct-{iso.value}"
                await a.put(key, 20)

                async def add5(t: stm.Attempt) -> int:
                    v = await t.get(key)
                    if t.reads and len(out.setdefault(iso, [])) == 0:
                        out[iso].append("interfered")
                        await b.put(key, 10)  # someone else writes after our read
                    t.put(key, v + 5)
                    return v

                res = await stm.run(a, add5, iso)
                out[iso] = (res.attempts, res.result, (await a.get(key)).value)
        return out

    out = run(go())
    assert out[Isolation.READ_COMMITTED] == (1, 20, 25)  # committed on a stale read: b's write is lost
    for iso in (Isolation.REPEATABLE_READS, Isolation.SERIALIZABLE, Isolation.SERIALIZABLE_SNAPSHOT):
        assert out[iso] == (2, 10, 15), iso  # conflict, retried on the new value


def test_serializable_reads_one_snapshot_repeatable_reads_do_not(any_server) -> None:
    async def go() -> dict:
        out = {}
        async with two_clients(any_server.endpoint) as (a, b):
            for iso in ALL:
                x, y = f"x-{iso.value}", f"y-{iso.value}"
                await a.put(x, 1)
                await a.put(y, 1)
                seen: list = []

                async def both(t: stm.Attempt) -> tuple:
                    vx = await t.get(x)
                    if not seen:
                        await b.put(y, 2)  # y changes after our first read, before we read it
                    vy = await t.get(y)
                    seen.append((vx, vy))
                    return vx, vy

                res = await stm.run(a, both, iso)
                out[iso] = (seen, res.attempts)
        return out

    out = run(go())
    # the snapshot levels see y as it was at the first read, then conflict (y changed) and retry
    assert out[Isolation.SERIALIZABLE] == ([(1, 1), (1, 2)], 2)
    assert out[Isolation.SERIALIZABLE_SNAPSHOT] == ([(1, 1), (1, 2)], 2)
    # the others see the newer y at once: a view that mixes revisions, but one still current at commit
    assert out[Isolation.REPEATABLE_READS] == ([(1, 2)], 1)
    assert out[Isolation.READ_COMMITTED] == ([(1, 2)], 1)


def test_only_serializable_snapshot_conflicts_on_a_key_it_wrote_but_did_not_read(any_server) -> None:
    async def go() -> dict:
        out = {}
        async with two_clients(any_server.endpoint) as (a, b):
            for iso in ALL:
                src, dst = f"src-{iso.value}", f"dst-{iso.value}"
                await a.put(src, 7)
                n = [0]

                async def copy(t: stm.Attempt) -> None:
                    v = await t.get(src)
                    n[0] += 1
                    if n[0] == 1:
                        await b.put(dst, 99)  # a write to the key we are about to write blind
                    t.put(dst, v)

                res = await stm.run(a, copy, iso)
                out[iso] = res.attempts
        return out

    out = run(go())
    assert out == {Isolation.SERIALIZABLE_SNAPSHOT: 2, Isolation.SERIALIZABLE: 1,
                   Isolation.REPEATABLE_READS: 1, Isolation.READ_COMMITTED: 1}


def test_a_retry_at_the_snapshot_levels_starts_from_the_prefetched_values(any_server) -> None:
    async def go() -> None:
        async with two_clients(any_server.endpoint) as (a, b):
            await a.put("pf", 1)
            seen: list = []

            async def read_twice(t: stm.Attempt) -> None:
                seen.append((await t.get("pf"), t.snapshot, dict(t.prefetched)))
                if len(seen) == 1:
                    await b.put("pf", 2)
                t.put("pf-copy", 0)

            res = await stm.run(a, read_twice, Isolation.SERIALIZABLE)
            assert res.attempts == 2 and seen[1][0] == 2
            # the second attempt's snapshot is the failed commit's revision: it read nothing itself
            rev_after_b = (await a.get("pf")).mod_revision
            assert seen[1][1] >= rev_after_b and seen[1][2] == {}

    run(go())


def test_abort_writes_nothing_and_the_deadline_is_definite(any_server) -> None:
    async def go() -> None:
        async with two_clients(any_server.endpoint) as (a, b):
            async def refuse(t: stm.Attempt) -> None:
                t.put("never", 1)
                raise stm.Abort("no")

            with pytest.raises(stm.Abort):
                await stm.run(a, refuse)
            assert (await a.get("never")).value is None

            async def always_conflicts(t: stm.Attempt) -> None:
                await t.get("hot")
                await b.put("hot", 1)
                t.put("hot", 2)

            with pytest.raises(Definite, match="no commit"):
                await stm.run(a, always_conflicts, deadline=time.monotonic() + 0.5)
            assert (await a.get("hot")).value == 1

    run(go())
