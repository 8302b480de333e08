"""Software transactional memory over etcd, with the four isolation levels of etcd's own STM.

etcd's clientv3/concurrency package offers an optimistic STM: an `apply` function reads keys
and buffers writes; at the end one Txn commits the writes if the keys read (and, at the
strongest level, the keys written) have not changed; on a conflict the whole apply runs again.
This is our implementation of the documented behaviour of each level, written for asyncio:

  SerializableSnapshot  reads come from one snapshot (the revision of the first read);
                        the commit checks every key read is unchanged and that no key written
                        was modified after the snapshot.             (etcd's default)
  Serializable          the same snapshot reads; the commit checks only the keys read.
  RepeatableReads       every read is the latest local (serializable, possibly stale) value,
                        cached for the attempt; the commit checks the keys read.
  ReadCommitted         latest local reads, cached; the commit checks nothing.

As in etcd, a failed commit at the two snapshot levels fetches every key read in the Txn's
else branch, and the next attempt starts from those values (one round trip saved).
Consequences worth knowing (the bank workload measures them): at RepeatableReads an attempt may
see a view that was never a state of the store (its reads come from different revisions), but
such an attempt cannot commit, because every key it read is checked; ReadCommitted commits
blindly, so concurrent read-modify-writes lose updates.

Every commit is one Txn sent once. A conflict is a definite "did not commit" and is retried;
an error at commit is raised to the caller as the client classified it (Definite or
Indefinite: the commit may have happened). Retries stop at a deadline or an attempt limit
with a Definite error (no attempt committed).
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Awaitable, Callable

from harness.client import Definite, EtcdClient, decode, encode
from server.proto.etcdserverpb import rpc_pb2 as pb

Cmp = pb.Compare


class Isolation(Enum):
    SERIALIZABLE_SNAPSHOT = "serializable-snapshot"
    SERIALIZABLE = "serializable"
    REPEATABLE_READS = "repeatable-reads"
    READ_COMMITTED = "read-committed"

    @property
    def snapshot_reads(self) -> bool:
        """Reads of an attempt come from one revision (the first read's)."""
        return self in (Isolation.SERIALIZABLE_SNAPSHOT, Isolation.SERIALIZABLE)

    @property
    def checks_reads(self) -> bool:
        """The commit fails if a key read was modified since it was read."""
        return self is not Isolation.READ_COMMITTED

    @staticmethod
    def parse(name: str) -> "Isolation":
        for iso in Isolation:
            if name in (iso.value, iso.name):
                return iso
        raise ValueError(f"unknown isolation level {name!r}: choose from {', '.join(i.value for i in Isolation)}")


class Abort(Exception):
    """Raised by an apply function to stop without committing (nothing is written)."""


@dataclass(frozen=True, slots=True)
class Read:
    """One key as an attempt read it: value (None: absent), its mod revision (0: absent), and
    the header revision of the response it came from."""

    value: int | str | None
    mod_revision: int
    revision: int


@dataclass
class Attempt:
    """One run of apply: what it read, what it wants written. Handed to apply as its API."""

    isolation: Isolation
    client: EtcdClient
    prefetched: dict[str, Read] = field(default_factory=dict)
    reads: dict[str, Read] = field(default_factory=dict)
    writes: dict[str, int | str | None] = field(default_factory=dict)  # None: delete
    snapshot: int | None = None  # the revision every read of this attempt is served at

    async def get(self, key: str) -> int | str | None:
        """The key's value as this attempt sees it (its own pending write first)."""
        if key in self.writes:
            return self.writes[key]
        return (await self.read(key)).value

    async def rev(self, key: str) -> int:
        """The key's mod revision in this attempt's reads (0 if absent)."""
        return (await self.read(key)).mod_revision

    def put(self, key: str, value: int | str) -> None:
        self.writes[key] = value

    def delete(self, key: str) -> None:
        self.writes[key] = None

    async def read(self, key: str) -> Read:
        if key in self.reads:
            return self.reads[key]
        first = not self.reads
        if key in self.prefetched:
            r = self.prefetched.pop(key)
        else:
            rr = pb.RangeRequest(key=key.encode())
            if self.isolation.snapshot_reads:
                if self.snapshot is not None:
                    rr.revision, rr.serializable = self.snapshot, True
            else:
                rr.serializable = True  # etcd's RepeatableReads and ReadCommitted read locally
            resp = await self.client.txn(pb.TxnRequest(success=[pb.RequestOp(request_range=rr)]))
            r = _read_of(resp.responses[0].response_range, resp.header.revision)
        if first and self.isolation.snapshot_reads:
            self.snapshot = r.revision
        self.reads[key] = r
        return r

    # ------------------------------------------------------------ commit
    def conflicts(self) -> list[pb.Compare]:
        """The compares guarding the commit at this isolation level."""
        if not self.isolation.checks_reads:
            return []
        cmps = [Cmp(key=k.encode(), target=Cmp.MOD, result=Cmp.EQUAL, mod_revision=r.mod_revision)
                for k, r in sorted(self.reads.items())]
        if self.isolation is Isolation.SERIALIZABLE_SNAPSHOT and self.reads:
            first = min(r.revision for r in self.reads.values())
            cmps += [Cmp(key=k.encode(), target=Cmp.MOD, result=Cmp.LESS, mod_revision=first + 1)
                     for k in sorted(self.writes)]
        return cmps

    def commit_request(self) -> pb.TxnRequest:
        ops = []
        for k, v in sorted(self.writes.items()):
            if v is None:
                ops.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k.encode())))
            else:
                ops.append(pb.RequestOp(request_put=pb.PutRequest(key=k.encode(), value=_bytes(v))))
        req = pb.TxnRequest(compare=self.conflicts(), success=ops)
        if self.isolation.snapshot_reads:  # fetch what was read, for the next attempt
            req.failure.extend(pb.RequestOp(request_range=pb.RangeRequest(key=k.encode())) for k in sorted(self.reads))
        return req


@dataclass
class Outcome:
    """A committed STM transaction: apply's result, the commit's revision, and its history."""

    result: Any
    revision: int
    attempts: int
    reads: dict[str, Read]
    writes: dict[str, int | str | None]
    snapshot: int | None
    discarded: list[dict[str, Read]] = field(default_factory=list)  # reads of attempts that conflicted


Apply = Callable[[Attempt], Awaitable[Any]]


async def run(client: EtcdClient, apply: Apply, isolation: Isolation = Isolation.SERIALIZABLE_SNAPSHOT,
              deadline: float | None = None, max_attempts: int = 1000) -> Outcome:
    """Run apply until one attempt commits; returns its Outcome.

    Raises Abort if apply does, Definite when the deadline (time.monotonic()) or the attempt
    limit passes first (no attempt committed), and the client's errors from reads (Definite) and
    from a commit (Definite or Indefinite) as they are.
    """
    prefetched: dict[str, Read] = {}
    discarded: list[dict[str, Read]] = []
    for n in range(1, max_attempts + 1):
        if deadline is not None and time.monotonic() > deadline:
            raise Definite(f"stm: no commit before the deadline after {n - 1} conflicting attempts")
        att = Attempt(isolation, client, prefetched=prefetched)
        result = await apply(att)
        resp = await client.txn(att.commit_request())
        if resp.succeeded:
            return Outcome(result, resp.header.revision, n, att.reads, att.writes, att.snapshot, discarded)
        discarded.append(att.reads)
        prefetched = {}
        if isolation.snapshot_reads:
            for k, r in zip(sorted(att.reads), resp.responses):
                prefetched[k] = _read_of(r.response_range, resp.header.revision)
        await asyncio.sleep(0)  # let the others run between attempts
    raise Definite(f"stm: no commit after {max_attempts} conflicting attempts")


def _read_of(rr: pb.RangeResponse, revision: int) -> Read:
    if not rr.kvs:
        return Read(None, 0, revision)
    kv = rr.kvs[0]
    return Read(decode(kv.value), kv.mod_revision, revision)


def _bytes(v: int | str) -> bytes:
    return encode(v) if isinstance(v, int) else v.encode()
