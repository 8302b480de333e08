"""HashKV for the recovery phase: the client call against both targets, the op that waits for a
member still catching up, and the checker on agreeing and disagreeing members."""
from __future__ import annotations

import asyncio

import pytest

from checker import converge as check_converge
from harness.client import Definite, EtcdClient
from history_builder import History
from workloads import converge


def test_hash_kv_and_compact_against_the_server(any_server) -> None:
    async def go() -> None:
        c = EtcdClient(any_server.endpoint, timeout=5)
        try:
            r1 = await c.put("h/a", 1)
            r2 = await c.put("h/b", 2)
            h1 = (await c.hash_kv(r1)).hash
            assert (await c.hash_kv(r1)).hash == h1  # a revision's hash never changes
            assert (await c.hash_kv(r2)).hash != h1
            await c.put("h/c", 3)
            assert (await c.hash_kv(r1)).hash == h1
            with pytest.raises(Definite, match="future revision"):
                await c.hash_kv(r2 + 100)
            assert await c.compact(r2) >= r2
            with pytest.raises(Definite, match="compacted"):
                await c.hash_kv(r1)
            op = await converge.invoke_hashkv(c, r2 + 1, patience=0.5)
            assert op[0] == "ok" and op[2]["compact_revision"] == r2
        finally:
            await c.close()

    asyncio.run(go())


def test_hashkv_op_gives_up_on_a_revision_that_never_comes(any_server) -> None:
    async def go() -> None:
        c = EtcdClient(any_server.endpoint, timeout=5)
        try:
            with pytest.raises(Definite, match="future revision"):
                await converge.invoke_hashkv(c, 10_000, patience=0.3)
        finally:
            await c.close()

    asyncio.run(go())


def hashes(*answers) -> History:
    h = History()
    for i, (node, value, typ) in enumerate(answers):
        h.invoke(1_000_000 + i, "hashkv", 40, node=node)
        if typ == "ok":
            h.ok(1_000_000 + i, value, hash_revision=40)
        else:
            h.fail(1_000_000 + i, error="unavailable")
    return h


def test_members_that_agree_are_valid_and_one_that_differs_is_named() -> None:
    assert check_converge.check(hashes(("n1", 7, "ok"), ("n2", 7, "ok"), ("n3", 7, "ok")).ops)["valid"] is True
    h = hashes(("n1", 7, "ok"), ("n2", 8, "ok"), ("n3", 7, "ok"))
    r = check_converge.check(h.ops)
    assert r["valid"] is False and "n2" in r["reason"] and r["ops"] == [1, 3, 5]
    r = check_converge.check(hashes(("n1", 7, "ok"), ("n2", 0, "fail")).ops)
    assert r["valid"] == "unknown"
    assert check_converge.check([])["valid"] == "unknown"


def test_the_hashkv_ops_cover_every_member_at_the_highest_acknowledged_revision() -> None:
    h = History()
    for node in ("n1", "n2", "n3"):
        h.call(1, "write", 1, key="k", node=node, revision=5)
    h.call(2, "write", 1, key="k", node="n1", revision=9)
    h.call(3, "write", 1, key="k", node="n1", typ="info")
    ops = converge.hashkv_ops(h.ops)
    assert [o.value for o in ops] == [9, 9, 9]
    assert converge.spread(["a", "b"], 3) == ["a", "a", "a", "b", "b", "b"]


def test_a_member_that_answers_twice_differently_is_not_hidden() -> None:
    """Every answer counts, not one per member: a later answer of n1 must not overwrite an
    earlier one that disagrees (nor may a second answer make one member count as two)."""
    r = check_converge.check(hashes(("n1", 8, "ok"), ("n2", 7, "ok"), ("n1", 7, "ok")).ops)
    assert r["valid"] is False and r["ops"] == [1, 3, 5]
    r = check_converge.check(hashes(("n1", 7, "ok"), ("n1", 7, "ok")).ops)
    assert r["valid"] == "unknown"
