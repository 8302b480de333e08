"""Request checks done before anything is proposed, with etcd's errors (v3rpc's key.go rules).

Pure functions of the request. The duplicate-key rule: within one branch of a transaction no key
may be written twice, and no put may fall inside a deleted range; the two branches of a nested
transaction are exclusive, so they may each write the same key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from server import errors
from server.proto.etcdserverpb import rpc_pb2

RangeRequest = rpc_pb2.RangeRequest
PutRequest = rpc_pb2.PutRequest
DeleteRangeRequest = rpc_pb2.DeleteRangeRequest
TxnRequest = rpc_pb2.TxnRequest
RequestOp = rpc_pb2.RequestOp


_SORT_ORDERS = frozenset(RangeRequest.SortOrder.values())
_SORT_TARGETS = frozenset(RangeRequest.SortTarget.values())


def check_range(r: RangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    # etcd >= 3.5 rejects unknown sort enums (3.4 crashed on an unknown sort target)
    if r.sort_order not in _SORT_ORDERS or r.sort_target not in _SORT_TARGETS:
        raise errors.INVALID_SORT_OPTION


def check_put(r: PutRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY
    if r.ignore_value and r.value:
        raise errors.VALUE_PROVIDED
    if r.ignore_lease and r.lease:
        raise errors.LEASE_PROVIDED


def check_delete(r: DeleteRangeRequest) -> None:
    if not r.key:
        raise errors.EMPTY_KEY


def check_txn(r: TxnRequest, max_ops: int) -> None:
    _check_txn_ops(r, max_ops)
    _intervals(r.success)
    _intervals(r.failure)


def _check_txn_ops(r: TxnRequest, max_ops: int) -> None:
    n = max(len(r.compare), len(r.success), len(r.failure))
    if n > max_ops:
        raise errors.TOO_MANY_OPS
    for c in r.compare:
        if not c.key:
            raise errors.EMPTY_KEY
    for op in list(r.success) + list(r.failure):
        _check_op(op, max_ops - n)  # etcd: a nested txn gets what its parent left of the budget


def _check_op(op: RequestOp, max_ops: int) -> None:
    which = op.WhichOneof("request")
    if which == "request_range":
        check_range(op.request_range)
    elif which == "request_put":
        check_put(op.request_put)
    elif which == "request_delete_range":
        check_delete(op.request_delete_range)
    elif which == "request_txn":
        _check_txn_ops(op.request_txn, max_ops)
    else:
        raise errors.KEY_NOT_FOUND  # an empty op: what etcd answers


def delete_bounds(key: bytes, range_end: bytes) -> tuple[bytes, bytes | None]:
    """A delete's [start, end) with etcd's conventions: b'' end = one key, b'\\0' = no bound."""
    if not range_end:
        return key, None
    if range_end == b"\x00":
        return key, b""
    return key, range_end


@dataclass
class _Writes:
    puts: set[bytes] = field(default_factory=set)
    dels: list[tuple[bytes, bytes | None]] = field(default_factory=list)

    def deleted(self, key: bytes) -> bool:
        for start, end in self.dels:
            if end is None:
                if key == start:
                    return True
            elif start <= key < end:
                return True
        return False


def _intervals(ops) -> _Writes:
    """The keys one branch writes; raises DUPLICATE_KEY if it writes a key twice."""
    w = _Writes()
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            # etcd's checkIntervals takes range_end literally: "\0" is no "to the end" here
            w.dels.append((d.key, d.range_end or None))
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        then_w = _intervals(op.request_txn.success)
        else_w = _intervals(op.request_txn.failure)
        for k in then_w.puts:
            if k in w.puts or w.deleted(k):
                raise errors.DUPLICATE_KEY
            w.puts.add(k)
        for k in else_w.puts:
            if (k in w.puts and k not in then_w.puts) or w.deleted(k):
                raise errors.DUPLICATE_KEY
            w.puts.add(k)
        w.dels.extend(then_w.dels)
        w.dels.extend(else_w.dels)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in w.puts or w.deleted(k):
            raise errors.DUPLICATE_KEY
        w.puts.add(k)
    return w


def txn_is_readonly(r: TxnRequest) -> bool:
    for op in list(r.success) + list(r.failure):
        which = op.WhichOneof("request")
        if which in ("request_put", "request_delete_range"):
            return False
        if which == "request_txn" and not txn_is_readonly(op.request_txn):
            return False
    return True
