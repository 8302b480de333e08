"""Sessions against both targets: the lease outlives its TTL while kept alive, expires once
abandoned (and the session says so), and a closed connection ends the session."""
from __future__ import annotations

import asyncio

from harness.client import EtcdClient
from harness.session import Session


def test_a_session_keeps_its_lease_alive_then_lets_it_expire(any_server) -> None:
    async def go() -> None:
        c = EtcdClient(any_server.endpoint, timeout=5)
        try:
            s = await Session(c, ttl=2).open()
            assert s.lease and s.ttl >= 2 and 0 < s.remaining() <= s.ttl
            await asyncio.sleep(s.ttl + 1.5)  # past the TTL: only the keep-alives keep it
            assert not s.done and await c.lease_ttl(s.lease) > 0
            assert s.remaining() > 0.5  # refreshed
            s.abandon()
            assert s.done and s.why == "abandoned"
            await asyncio.sleep(s.ttl + 1.5)
            assert await c.lease_ttl(s.lease) == -1
            t = await Session(c, ttl=2).open()
            assert await t.revoke() and await c.lease_ttl(t.lease) == -1
        finally:
            await c.close()

    asyncio.run(go())


def test_a_session_learns_its_lease_is_gone(any_server) -> None:
    async def go() -> None:
        c = EtcdClient(any_server.endpoint, timeout=5)
        other = EtcdClient(any_server.endpoint, timeout=5)
        try:
            s = await Session(c, ttl=3).open()
            await other.lease_revoke(s.lease)  # someone else ends it
            for _ in range(40):
                if s.done:
                    break
                await asyncio.sleep(0.1)
            assert s.done and "TTL 0" in s.why
            u = await Session(other, ttl=3).open()
            await other.close()
            for _ in range(40):
                if u.done:
                    break
                await asyncio.sleep(0.1)
            assert u.done and "closed" in u.why
        finally:
            await c.close()

    asyncio.run(go())
