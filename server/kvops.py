"""KV operations on the MVCC store: Range, Put, DeleteRange and Txn as etcd applies them.

Pure functions of the store (and the lessor for lease checks). A Txn evaluates every compare
on its path first (nested transactions included, on the state before the transaction), checks
its puts and ranges, then runs its ops in order on one write transaction, so reads inside it
see its earlier writes and all its changes share one revision.
"""
from __future__ import annotations

from typing import Protocol

from server import errors
from server.lease import Lessor
from server.mvcc.store import CompactedError, FutureRevError, KeyValue, KVStore, RangeResult, WriteTxn
from server.proto.etcdserverpb import rpc_pb2
from server.validate import delete_bounds

pb = rpc_pb2
RangeRequest = pb.RangeRequest
Compare = pb.Compare


class Reader(Protocol):
    def range(
        self, start: bytes, end: bytes | None, rev: int = 0, limit: int = 0, count_only: bool = False
    ) -> RangeResult: ...


_SORT_KEYS = {
    RangeRequest.KEY: lambda kv: kv.key,
    RangeRequest.VERSION: lambda kv: kv.version,
    RangeRequest.CREATE: lambda kv: kv.create_revision,
    RangeRequest.MOD: lambda kv: kv.mod_revision,
    RangeRequest.VALUE: lambda kv: kv.value,
}


def mvcc_error(e: Exception) -> errors.EtcdError:
    if isinstance(e, CompactedError):
        return errors.COMPACTED
    if isinstance(e, FutureRevError):
        return errors.FUTURE_REV
    raise e


def do_range(reader: Reader, r: RangeRequest) -> pb.RangeResponse:
    start, end = delete_bounds(r.key, r.range_end)
    limit = r.limit
    filtered = r.min_mod_revision or r.max_mod_revision or r.min_create_revision or r.max_create_revision
    if r.sort_order != RangeRequest.NONE or filtered:
        limit = 0  # fetch everything: sort or filter, then cut
    elif limit > 0:
        limit += 1  # one more, to know whether there is more
    try:
        res = reader.range(start, end, rev=r.revision, limit=limit, count_only=r.count_only)
    except (CompactedError, FutureRevError) as e:
        raise mvcc_error(e) from None
    kvs = res.kvs
    if r.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= r.max_mod_revision]
    if r.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= r.min_mod_revision]
    if r.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= r.max_create_revision]
    if r.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= r.min_create_revision]
    order = r.sort_order
    if order == RangeRequest.NONE and r.sort_target != RangeRequest.KEY:
        order = RangeRequest.ASCEND
    if order != RangeRequest.NONE:
        keyf = _SORT_KEYS.get(r.sort_target, _SORT_KEYS[RangeRequest.KEY])
        if not (order == RangeRequest.ASCEND and r.sort_target == RangeRequest.KEY):
            kvs = sorted(kvs, key=keyf, reverse=order == RangeRequest.DESCEND)
    more = False
    if r.limit > 0 and len(kvs) > r.limit:
        kvs = kvs[: r.limit]
        more = True
    if r.keys_only:
        for kv in kvs:
            kv.ClearField("value")
    return pb.RangeResponse(header=pb.ResponseHeader(revision=res.rev), kvs=kvs, more=more, count=res.count)


def check_put_lease(lessor: Lessor, r: pb.PutRequest) -> None:
    if r.lease and lessor.lookup(r.lease) is None:
        raise errors.LEASE_NOT_FOUND


def do_put(txn: WriteTxn, r: pb.PutRequest) -> pb.PutResponse:
    prev = None
    if r.ignore_value or r.ignore_lease or r.prev_kv:
        got = txn.range(r.key, None)
        prev = got.kvs[0] if got.kvs else None
    value, lease = r.value, r.lease
    if r.ignore_value or r.ignore_lease:
        if prev is None:
            raise errors.KEY_NOT_FOUND
        if r.ignore_value:
            value = prev.value
        if r.ignore_lease:
            lease = prev.lease
    txn.put(r.key, value, lease)
    resp = pb.PutResponse(header=pb.ResponseHeader(revision=txn.rev))
    if r.prev_kv and prev is not None:
        resp.prev_kv.CopyFrom(prev)
    return resp


def do_delete(txn: WriteTxn, r: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
    start, end = delete_bounds(r.key, r.range_end)
    prevs = txn.delete_range(start, end)
    rev = txn.rev if txn.changes else txn.begin_rev
    resp = pb.DeleteRangeResponse(header=pb.ResponseHeader(revision=rev), deleted=len(prevs))
    if r.prev_kv:
        resp.prev_kvs.extend(prevs)
    return resp


# ---------------------------------------------------------------------- txn
def _compare_one(c: Compare, kv: KeyValue) -> bool:
    t = c.target
    if t == Compare.VALUE:
        a, b = kv.value, c.value
    elif t == Compare.VERSION:
        a, b = kv.version, c.version
    elif t == Compare.CREATE:
        a, b = kv.create_revision, c.create_revision
    elif t == Compare.MOD:
        a, b = kv.mod_revision, c.mod_revision
    elif t == Compare.LEASE:
        a, b = kv.lease, c.lease
    else:
        a, b = 0, 0  # an unknown target compares as equal, as in etcd
    res = c.result
    if res == Compare.EQUAL:
        return a == b
    if res == Compare.GREATER:
        return a > b
    if res == Compare.LESS:
        return a < b
    if res == Compare.NOT_EQUAL:
        return a != b
    return True  # etcd treats an unknown result operator as satisfied


def compare(reader: Reader, c: Compare) -> bool:
    start, end = delete_bounds(c.key, c.range_end)
    try:
        kvs = reader.range(start, end).kvs
    except (CompactedError, FutureRevError):
        return False
    if not kvs:
        if c.target == Compare.VALUE:
            return False  # a missing key has no value to compare
        return _compare_one(c, KeyValue())
    return all(_compare_one(c, kv) for kv in kvs)


class _Path:
    """The branch taken by a txn and, for each nested txn on it, that txn's path."""

    __slots__ = ("succeeded", "children")

    def __init__(self, succeeded: bool) -> None:
        self.succeeded = succeeded
        self.children: list[_Path] = []


def _path(reader: Reader, r: pb.TxnRequest) -> _Path:
    p = _Path(all(compare(reader, c) for c in r.compare))
    for op in r.success if p.succeeded else r.failure:
        if op.WhichOneof("request") == "request_txn":
            p.children.append(_path(reader, op.request_txn))
    return p


def _check(
    reader: Reader, r: pb.TxnRequest, p: _Path, lessor: Lessor | None, rev: int, first_rev: int, puts: bool = False
) -> None:
    """One of etcd's two passes over the ops a txn will run: its puts (puts=True), then its ranges."""
    kids = iter(p.children)
    for op in r.success if p.succeeded else r.failure:
        which = op.WhichOneof("request")
        if which == "request_put" and puts and lessor is not None:
            put = op.request_put
            if put.ignore_value or put.ignore_lease:  # in a txn etcd looks for the key before the lease
                if not reader.range(put.key, None).kvs:
                    raise errors.KEY_NOT_FOUND
            check_put_lease(lessor, put)
        elif which == "request_range" and not puts:
            rr = op.request_range
            if rr.revision > rev:
                raise errors.FUTURE_REV
            if rr.revision != 0 and rr.revision < first_rev:  # etcd's checkRange: negatives too
                raise errors.COMPACTED
        elif which == "request_txn":
            _check(reader, op.request_txn, next(kids), lessor, rev, first_rev, puts)


def _run(txn: Reader, r: pb.TxnRequest, p: _Path, writable: WriteTxn | None) -> list[pb.ResponseOp]:
    out = []
    kids = iter(p.children)
    for op in r.success if p.succeeded else r.failure:
        which = op.WhichOneof("request")
        if which == "request_range":
            out.append(pb.ResponseOp(response_range=do_range(txn, op.request_range)))
        elif which == "request_put":
            assert writable is not None
            out.append(pb.ResponseOp(response_put=do_put(writable, op.request_put)))
        elif which == "request_delete_range":
            assert writable is not None
            out.append(pb.ResponseOp(response_delete_range=do_delete(writable, op.request_delete_range)))
        elif which == "request_txn":
            sub = op.request_txn
            kid = next(kids)
            # etcd gives nested txn responses an empty header
            inner = pb.TxnResponse(
                header=pb.ResponseHeader(), succeeded=kid.succeeded, responses=_run(txn, sub, kid, writable)
            )
            out.append(pb.ResponseOp(response_txn=inner))
    return out


def do_txn_write(store: KVStore, lessor: Lessor, r: pb.TxnRequest) -> tuple[pb.TxnResponse, WriteTxn]:
    """A txn that may write; the caller ends the returned write txn and publishes its events."""
    txn = store.write()
    first = store.compact_rev  # etcd's FirstRev: -1 until the first compaction
    p = _path(txn, r)
    _check(txn, r, p, lessor, store.current_rev, first, puts=True)  # etcd checks every put first,
    _check(txn, r, p, lessor, store.current_rev, first)  # then every range
    responses = _run(txn, r, p, txn)
    rev = txn.rev if txn.changes else txn.begin_rev
    return pb.TxnResponse(header=pb.ResponseHeader(revision=rev), succeeded=p.succeeded, responses=responses), txn


def do_txn_read(store: KVStore, r: pb.TxnRequest) -> pb.TxnResponse:
    first = store.compact_rev  # etcd's FirstRev: -1 until the first compaction
    p = _path(store, r)
    _check(store, r, p, None, store.current_rev, first)
    responses = _run(store, r, p, None)
    return pb.TxnResponse(
        header=pb.ResponseHeader(revision=store.current_rev), succeeded=p.succeeded, responses=responses
    )

