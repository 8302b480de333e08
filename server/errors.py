"""API errors with etcd's gRPC status codes and message texts (clients match on the text).

Codes are gRPC's numeric status codes, so this module stays free of grpc; the gRPC and HTTP
front ends translate them.
"""
from __future__ import annotations

from enum import IntEnum


class Code(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class EtcdError(Exception):
    """An error a client sees as a gRPC status: code plus etcd's message."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def grpc_name(self) -> str:
        """The code as Go's grpc prints it ("PermissionDenied"), for texts etcd builds with it."""
        return "".join(w.capitalize() for w in self.code.name.split("_"))

    def __repr__(self) -> str:
        return f"EtcdError({self.code.name}, {self.message!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EtcdError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


def _e(code: Code, msg: str) -> EtcdError:
    return EtcdError(code, msg)


EMPTY_KEY = _e(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND = _e(Code.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED = _e(Code.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED = _e(Code.INVALID_ARGUMENT, "etcdserver: lease is provided")
TOO_MANY_OPS = _e(Code.INVALID_ARGUMENT, "etcdserver: too many operations in txn request")
DUPLICATE_KEY = _e(Code.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request")
INVALID_SORT_OPTION = _e(Code.INVALID_ARGUMENT, "etcdserver: invalid sort option")
COMPACTED = _e(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV = _e(Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision")
NO_SPACE = _e(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")

LEASE_NOT_FOUND = _e(Code.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST = _e(Code.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE = _e(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")

MEMBER_EXIST = _e(Code.FAILED_PRECONDITION, "etcdserver: member ID already exist")
PEER_URL_EXIST = _e(Code.FAILED_PRECONDITION, "etcdserver: Peer URLs already exists")
MEMBER_NOT_ENOUGH_STARTED = _e(
    Code.FAILED_PRECONDITION, "etcdserver: re-configuration failed due to not enough started members"
)
MEMBER_BAD_URLS = _e(Code.INVALID_ARGUMENT, "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND = _e(Code.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER = _e(Code.FAILED_PRECONDITION, "etcdserver: can only promote a learner member")

REQUEST_TOO_LARGE = _e(Code.INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY_REQUESTS = _e(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")

AUTH_NOT_ENABLED = _e(Code.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
PERMISSION_DENIED = _e(Code.PERMISSION_DENIED, "etcdserver: permission denied")

NO_LEADER = _e(Code.UNAVAILABLE, "etcdserver: no leader")
NOT_LEADER = _e(Code.FAILED_PRECONDITION, "etcdserver: not leader")
LEADER_CHANGED = _e(Code.UNAVAILABLE, "etcdserver: leader changed")
NOT_CAPABLE = _e(Code.UNAVAILABLE, "etcdserver: not capable")
STOPPED = _e(Code.UNAVAILABLE, "etcdserver: server stopped")
TIMEOUT = _e(Code.UNAVAILABLE, "etcdserver: request timed out")
UNHEALTHY = _e(Code.UNAVAILABLE, "etcdserver: unhealthy cluster")
CORRUPT = _e(Code.DATA_LOSS, "etcdserver: corrupt cluster")
BAD_LEADER_TRANSFEREE = _e(Code.FAILED_PRECONDITION, "etcdserver: bad leader transferee")
NOT_SUPPORTED_FOR_LEARNER = _e(Code.UNAVAILABLE, "etcdserver: rpc not supported for learner")


def unimplemented(what: str) -> EtcdError:
    return EtcdError(Code.UNIMPLEMENTED, f"etcdproof: {what} is not implemented by the reference server")
