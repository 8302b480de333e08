"""The bank workload: accounts with a fixed total, money moved between them, read whole.

Each transfer method gets its own group of accounts (keys `bank/<method>/<i>`), so a run can
hold several methods side by side and each is judged by what it promises:

  txn   read both accounts in one Txn of gets, then one Txn that compares both accounts'
        mod_revisions with what was read and, if unchanged, writes both (a failed compare is
        `fail`: nothing was written).
  ss, ser, rr, rc
        the same transfer as an STM transaction (harness/stm.py) at SerializableSnapshot,
        Serializable, RepeatableReads or ReadCommitted isolation, retried on conflict as
        etcd's STM does (until the op's deadline).

A transfer of more than the source holds is refused before writing (`fail`). Reads take every
account of a group: for txn one Range over the group's prefix (a snapshot); for the STM methods
half are a read-only STM transaction that gets the accounts one by one (as an STM user would:
where the weaker levels show what a reader may see) and half one Range (a snapshot: what the
level's transfers did to the money). Every read and transfer records the
mod_revisions it saw, so the checker can order everything by etcd's revisions. The recovery
phase reads every group from every member and compares the members' HashKV.
"""
from __future__ import annotations

import time
from typing import Any

from checker import bank as bank_checker
from checker import converge as converge_checker
from checker import stats
from checker.history import Op
from harness import stm
from harness.client import Definite, EtcdClient, decode, encode, prefix_end
from harness.generator import OpTemplate, worker_rng
from server.proto.etcdserverpb import rpc_pb2 as pb
from workloads import converge
from workloads.base import Checker

Cmp = pb.Compare
LEVELS = {
    "ss": stm.Isolation.SERIALIZABLE_SNAPSHOT,
    "ser": stm.Isolation.SERIALIZABLE,
    "rr": stm.Isolation.REPEATABLE_READS,
    "rc": stm.Isolation.READ_COMMITTED,
}
METHODS = ("txn", *LEVELS)
FINAL = "final"
RANGE = "range"  # a read of an STM group by one Range: a true snapshot


def account_key(method: str, i: int) -> str:
    return f"bank/{method}/{i}"


class BankOps:
    """Seeded reads and transfers over the workload's methods (a pure function of seed and worker)."""

    def __init__(self, seed: int, worker: int, methods: tuple[str, ...], accounts: int,
                 read_fraction: float = 0.3, max_amount: int = 5) -> None:
        self.rng = worker_rng(seed, worker)
        self.methods = methods
        self.accounts = accounts
        self.read_fraction = read_fraction
        self.max_amount = max_amount

    def next(self) -> OpTemplate:
        method = self.rng.choice(self.methods)
        if self.rng.random() < self.read_fraction:
            # STM groups are read half by an STM transaction (what the level lets a reader see),
            # half by one Range (what the level's transfers did to the money)
            how = RANGE if method != "txn" and self.rng.random() < 0.5 else None
            return OpTemplate("read", method, how)
        a, b = self.rng.sample(range(self.accounts), 2)
        return OpTemplate("transfer", method, {"from": a, "to": b, "amount": self.rng.randint(1, self.max_amount)})


class BankWorkload:
    def __init__(self, methods: tuple[str, ...] = ("txn",), accounts: int = 5, total: int = 100,
                 name: str = "bank", read_fraction: float = 0.3, stm_patience: float = 0.8) -> None:
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise ValueError(f"unknown bank method(s) {unknown}: choose from {', '.join(METHODS)}")
        if accounts < 2 or total < accounts:
            raise ValueError("the bank needs at least 2 accounts and a total of at least 1 per account")
        self.name = name
        self.methods = tuple(methods)
        self.accounts = accounts
        self.total = total
        self.read_fraction = read_fraction
        self.stm_patience = stm_patience  # share of the client's deadline an STM may spend retrying

    def initial(self) -> list[int]:
        each, extra = divmod(self.total, self.accounts)
        return [each + (extra if i == 0 else 0) for i in range(self.accounts)]

    def op_source(self, seed: int, worker: int) -> BankOps:
        return BankOps(seed, worker, self.methods, self.accounts, self.read_fraction)

    async def setup(self, client: EtcdClient) -> None:
        """Write every group's opening balances in one Txn, unless they are there already."""
        keys = [account_key(m, i) for m in self.methods for i in range(self.accounts)]
        values = self.initial() * len(self.methods)
        req = pb.TxnRequest(
            compare=[Cmp(key=k.encode(), target=Cmp.VERSION, result=Cmp.EQUAL, version=0) for k in keys],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=k.encode(), value=encode(v))) for k, v in zip(keys, values)],
        )
        await client.txn(req)

    # ---------------------------------------------------------------- ops
    async def invoke(self, client: EtcdClient, op: OpTemplate) -> tuple[str, Any, dict]:
        if op.f == converge.HASHKV:
            return await converge.invoke_hashkv(client, op.value)
        method = op.key
        if method not in self.methods:
            raise ValueError(f"bank: unknown method {method!r}")
        if op.f == "read":
            if method == "txn" or op.value in (FINAL, RANGE):
                typ, value, extra = await self.read_range(client, method)
                if op.value == FINAL:
                    extra["final"] = True
                return typ, value, extra
            return await self.read_stm(client, method)
        if op.f == "transfer":
            if method == "txn":
                return await self.transfer_txn(client, op.value)
            return await self.transfer_stm(client, method, op.value)
        raise ValueError(f"bank: unknown op {op.f!r}")

    async def read_range(self, client: EtcdClient, method: str) -> tuple[str, Any, dict]:
        prefix = f"bank/{method}/".encode()
        r = await client.range(pb.RangeRequest(key=prefix, range_end=prefix_end(prefix)))
        balances: list[Any] = [None] * self.accounts
        mods = [0] * self.accounts
        for kv in r.kvs:
            i = int(kv.key.decode().rsplit("/", 1)[1])
            if 0 <= i < self.accounts:
                balances[i], mods[i] = decode(kv.value), kv.mod_revision
        return "ok", balances, {"revision": r.header.revision, "mod_revisions": mods, "via": "range"}

    async def read_stm(self, client: EtcdClient, method: str) -> tuple[str, Any, dict]:
        iso = LEVELS[method]

        async def apply(t: stm.Attempt) -> list[Any]:
            return [await t.get(account_key(method, i)) for i in range(self.accounts)]

        out = await stm.run(client, apply, iso, deadline=self._deadline(client))
        mods = [out.reads[account_key(method, i)].mod_revision for i in range(self.accounts)]
        extra: dict[str, Any] = {"attempts": out.attempts, "mod_revisions": mods, "commit_revision": out.revision,
                                 "via": "stm"}
        # the revision at which the view is claimed to be a state of the store
        extra["revision"] = out.revision if iso.checks_reads else None
        if out.snapshot is not None:
            extra["snapshot"] = out.snapshot
        if out.discarded:
            extra["discarded"] = [self._view(method, reads) for reads in out.discarded[-5:]]
        return "ok", out.result, extra

    async def transfer_txn(self, client: EtcdClient, t: dict) -> tuple[str, Any, dict]:
        src, dst = account_key("txn", t["from"]).encode(), account_key("txn", t["to"]).encode()
        r = await client.txn(pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=k)) for k in (src, dst)]))
        got = []
        for resp in r.responses:
            kvs = resp.response_range.kvs
            got.append([decode(kvs[0].value), kvs[0].mod_revision] if kvs else [None, 0])
        extra: dict[str, Any] = {"read": got}
        (fv, fm), (tv, tm) = got
        if not isinstance(fv, int) or not isinstance(tv, int):
            raise Definite(f"bank: account missing or not a number: {got}")
        if fv < t["amount"]:
            return "fail", t, {**extra, "refused": "insufficient funds"}
        w = await client.txn(pb.TxnRequest(
            compare=[Cmp(key=src, target=Cmp.MOD, result=Cmp.EQUAL, mod_revision=fm),
                     Cmp(key=dst, target=Cmp.MOD, result=Cmp.EQUAL, mod_revision=tm)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=src, value=encode(fv - t["amount"]))),
                     pb.RequestOp(request_put=pb.PutRequest(key=dst, value=encode(tv + t["amount"])))],
        ))
        extra["revision"] = w.header.revision
        if not w.succeeded:
            return "fail", t, {**extra, "refused": "conflict"}
        return "ok", t, extra

    async def transfer_stm(self, client: EtcdClient, method: str, t: dict) -> tuple[str, Any, dict]:
        src, dst = account_key(method, t["from"]), account_key(method, t["to"])

        async def apply(a: stm.Attempt) -> None:
            fv, tv = await a.get(src), await a.get(dst)
            if not isinstance(fv, int) or not isinstance(tv, int):
                raise stm.Abort(f"account missing or not a number: {fv!r}, {tv!r}")
            if fv < t["amount"]:
                raise stm.Abort("insufficient funds")
            a.put(src, fv - t["amount"])
            a.put(dst, tv + t["amount"])

        try:
            out = await stm.run(client, apply, LEVELS[method], deadline=self._deadline(client))
        except stm.Abort as e:
            return "fail", t, {"refused": str(e)}
        read = [[out.reads[k].value, out.reads[k].mod_revision] for k in (src, dst)]
        extra: dict[str, Any] = {"revision": out.revision, "read": read, "attempts": out.attempts}
        if out.snapshot is not None:
            extra["snapshot"] = out.snapshot
        return "ok", t, extra

    def _deadline(self, client: EtcdClient) -> float:
        return time.monotonic() + self.stm_patience * client.timeout

    def _view(self, method: str, reads: dict[str, stm.Read]) -> list[Any]:
        return [reads[account_key(method, i)].value if account_key(method, i) in reads else None
                for i in range(self.accounts)]

    # ---------------------------------------------------------------- recovery and checks
    def final_ops(self, history: list[Op]) -> list[OpTemplate]:
        nodes = converge.node_count(history)
        reads = [OpTemplate("read", m, FINAL) for m in self.methods]
        return converge.spread(reads, nodes) + converge.hashkv_ops(history)

    def checkers(self) -> dict[str, Checker]:
        out: dict[str, Checker] = {}
        for m in self.methods:
            out[f"bank-{m}"] = bank_checker.checker(m, self.accounts, self.total)
        out["converged"] = converge_checker.check
        out["stats"] = stats.check
        return out


def txn_bank() -> BankWorkload:
    return BankWorkload(("txn",), name="bank")


def stm_bank(*levels: str) -> BankWorkload:
    levels = levels or tuple(LEVELS)
    name = "bank-stm" if len(levels) > 1 else f"bank-stm-{LEVELS[levels[0]].value}"
    return BankWorkload(tuple(levels), name=name)


FACTORIES = {
    "bank": txn_bank,
    "bank-stm": stm_bank,  # all four levels side by side, each on its own accounts
    **{f"bank-stm-{iso.value}": (lambda m=m: stm_bank(m)) for m, iso in LEVELS.items()},
}
