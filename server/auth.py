"""etcd's authentication and role-based access control: users, roles, key permissions, tokens.

The state (enabled flag, auth revision, users, roles) changes only by applying committed
entries, so every member holds the same; it lives in the backend's auth buckets and comes back
on restart. Tokens are etcd's "simple" tokens: minted by the member a client authenticates
with, handed to every member through the log, kept in memory only (a restart forgets them, as
etcd does) and dropped after --auth-token-ttl seconds unused.

What is checked where follows etcd 3.4: reads are checked by the member serving them, writes
and admin requests when they are applied (against the username and auth revision the proposer
put in the request header, so a change of permissions between the two cannot be slipped past:
a request checked at an older auth revision fails with "revision of auth store is old", and
clients authenticate again and retry). Behaviour and error texts were taken from etcd 3.4.23
answering etcdctl (tests/test_etcdctl_diff.py compares the two).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import string
import time
from contextvars import ContextVar
from dataclasses import dataclass

from server.errors import AUTH_NOT_ENABLED, PERMISSION_DENIED, Code, EtcdError
from server.proto.authpb import auth_pb2
from server.proto.etcdserverpb import raft_internal_pb2, rpc_pb2

pb = rpc_pb2
User = auth_pb2.User
Role = auth_pb2.Role
Permission = auth_pb2.Permission
READ, WRITE, READWRITE = Permission.READ, Permission.WRITE, Permission.READWRITE

ROOT = "root"
AUTH_BUCKET = b"auth"
USERS_BUCKET = b"authUsers"
ROLES_BUCKET = b"authRoles"
_ENABLED = b"authEnabled"
_REVISION = b"authRevision"
TOKEN_TTL = 300.0  # etcd's --auth-token-ttl default
PBKDF2_ROUNDS = 60_000  # about bcrypt cost 10 (etcd's default) in time on this kind of machine


def _e(code: Code, msg: str) -> EtcdError:
    return EtcdError(code, msg)


USER_EMPTY = _e(Code.INVALID_ARGUMENT, "etcdserver: user name is empty")
USER_EXISTS = _e(Code.FAILED_PRECONDITION, "etcdserver: user name already exists")
USER_NOT_FOUND = _e(Code.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_EMPTY = _e(Code.INVALID_ARGUMENT, "etcdserver: role name is empty")
ROLE_EXISTS = _e(Code.FAILED_PRECONDITION, "etcdserver: role name already exists")
ROLE_NOT_FOUND = _e(Code.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_NOT_GRANTED = _e(Code.FAILED_PRECONDITION, "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED = _e(Code.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role")
ROOT_USER_MISSING = _e(Code.FAILED_PRECONDITION, "etcdserver: root user does not exist")
ROOT_ROLE_MISSING = _e(Code.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
AUTH_FAILED = _e(Code.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
INVALID_TOKEN = _e(Code.UNAUTHENTICATED, "etcdserver: invalid auth token")
OLD_REVISION = _e(Code.INVALID_ARGUMENT, "etcdserver: revision of auth store is old")
INVALID_MGMT = _e(Code.INVALID_ARGUMENT, "etcdserver: invalid auth management")
# the Maintenance service returns the auth package's own errors, unmapped: gRPC says Unknown
MAINT_DENIED = _e(Code.UNKNOWN, "auth: permission denied")
MAINT_USER_EMPTY = _e(Code.UNKNOWN, "auth: user name is empty")


@dataclass(frozen=True)
class AuthInfo:
    """Who a request is from: the user behind its token and the auth revision it was checked at."""

    username: str = ""
    revision: int = 0


NOBODY = AuthInfo()
MAX_TOKENS = 10_000  # past this many, expired tokens are swept when a new one is minted

# The caller of the request being served: set by the gRPC and HTTP front ends from the request's
# "token" (or "authorization") metadata, read by the server's handlers.
current_token: ContextVar[str | None] = ContextVar("etcdproof_auth_token", default=None)


def hash_password(password: str) -> str:
    """A salted PBKDF2-SHA256 hash (etcd uses bcrypt; the hash never leaves this server)."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, PBKDF2_ROUNDS)
    return f"pbkdf2-sha256${PBKDF2_ROUNDS}${salt.hex()}${digest.hex()}"


def password_matches(stored: bytes, password: str) -> bool:
    """Whether password hashes to stored. A hash this server did not make (a client may send its
    own in hashedPassword, as etcd 3.5 allows for bcrypt) matches nothing, and one asking for
    absurd work is refused rather than run."""
    try:
        scheme, rounds_text, salt, digest = stored.decode().split("$")
        rounds = int(rounds_text)
        salt_bytes = bytes.fromhex(salt)
    except (UnicodeDecodeError, ValueError):
        return False
    if scheme != "pbkdf2-sha256" or not 0 < rounds <= 10 * PBKDF2_ROUNDS:
        return False
    got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt_bytes, rounds)
    return hmac.compare_digest(got.hex(), digest)


def new_token() -> str:
    return "".join(secrets.choice(string.ascii_letters) for _ in range(16))


# ------------------------------------------------------------------ permission arithmetic
def _end(key: bytes, range_end: bytes) -> bytes | None:
    """The exclusive end of what a permission or request covers; None is "to the end"."""
    if range_end == b"\x00":
        return None
    if not range_end:
        return key + b"\x00"  # one key
    return range_end


def _covers(intervals: list[tuple[bytes, bytes | None]], key: bytes, range_end: bytes) -> bool:
    """[key, range_end) lies inside the union of intervals (etcd merges a user's permissions
    into one interval set and asks whether it contains the request's range)."""
    want_end = _end(key, range_end)
    if want_end is not None and want_end <= key:
        return True  # an empty range asks for nothing (etcd: "rangeEnd <= key" is allowed)
    reach = key
    for lo, hi in sorted(intervals, key=lambda iv: iv[0]):
        if lo > reach:
            break
        if hi is None:
            return True
        if hi > reach:
            reach = hi
            if want_end is not None and reach >= want_end:
                return True
    return False


class AuthStore:
    def __init__(self, backend) -> None:
        self.backend = backend
        self.enabled = False
        self.revision = 1
        self.users: dict[str, User] = {}
        self.roles: dict[str, Role] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expires, monotonic)
        self.token_ttl = TOKEN_TTL
        self._perm_cache: dict[tuple[str, int], list[list[tuple[bytes, bytes | None]]]] = {}

    # ------------------------------------------------------------- state
    def restore(self) -> None:
        self.enabled = self.backend.get(AUTH_BUCKET, _ENABLED) == b"\x01"
        raw = self.backend.get(AUTH_BUCKET, _REVISION)
        self.revision = int.from_bytes(raw, "big") if raw else 1  # etcd starts at 1
        self.users = {k.decode(): User.FromString(v) for k, v in self.backend.items(USERS_BUCKET)}
        self.roles = {k.decode(): Role.FromString(v) for k, v in self.backend.items(ROLES_BUCKET)}
        self.tokens.clear()
        self._perm_cache.clear()

    def _bump(self) -> None:
        self.revision += 1
        self.backend.put(AUTH_BUCKET, _REVISION, self.revision.to_bytes(8, "big"))
        self._perm_cache.clear()

    def _save_user(self, u: User) -> None:
        self.users[u.name.decode()] = u
        self.backend.put(USERS_BUCKET, bytes(u.name), u.SerializeToString())

    def _save_role(self, r: Role) -> None:
        self.roles[r.name.decode()] = r
        self.backend.put(ROLES_BUCKET, bytes(r.name), r.SerializeToString())

    def _set_roles(self, u: User, roles: list[str]) -> None:
        del u.roles[:]
        u.roles.extend(roles)
        self._save_user(u)

    def _user(self, name: str) -> User:
        u = self.users.get(name)
        if u is None:
            raise USER_NOT_FOUND
        return u

    def _role(self, name: str) -> Role:
        r = self.roles.get(name)
        if r is None:
            raise ROLE_NOT_FOUND
        return r

    def _drop_tokens_of(self, name: str) -> None:
        for t in [t for t, (u, _) in self.tokens.items() if u == name]:
            del self.tokens[t]

    # ------------------------------------------------- tokens (API side)
    def info(self, token: str | None) -> AuthInfo:
        """The caller behind token, at the current auth revision; no token is nobody."""
        if not self.enabled or token is None:
            return NOBODY
        entry = self.tokens.get(token)
        now = time.monotonic()
        if entry is None or entry[1] < now:
            self.tokens.pop(token, None)
            raise INVALID_TOKEN
        self.tokens[token] = (entry[0], now + self.token_ttl)  # a token in use stays alive
        return AuthInfo(entry[0], self.revision)

    def check_password(self, name: str, password: str) -> None:
        u = self.users.get(name)
        if u is None or u.options.no_password or not u.password:
            raise AUTH_FAILED
        if not password_matches(bytes(u.password), password):
            raise AUTH_FAILED

    # --------------------------------------------------------- checks
    def is_admin(self, ai: AuthInfo, maintenance: bool = False) -> None:
        """Raise unless auth is off or ai is a user with the root role."""
        if not self.enabled:
            return
        if not ai.username:
            raise MAINT_USER_EMPTY if maintenance else USER_EMPTY
        u = self.users.get(ai.username)
        if u is None:
            raise USER_NOT_FOUND
        if ROOT not in u.roles:
            raise MAINT_DENIED if maintenance else PERMISSION_DENIED

    def _intervals(self, name: str, perm: int) -> list[tuple[bytes, bytes | None]]:
        cached = self._perm_cache.get((name, self.revision))
        if cached is None:
            reads: list[tuple[bytes, bytes | None]] = []
            writes: list[tuple[bytes, bytes | None]] = []
            for role in self.users[name].roles:
                r = self.roles.get(role)
                if r is None:
                    continue
                for p in r.keyPermission:
                    iv = (bytes(p.key), _end(bytes(p.key), bytes(p.range_end)))
                    if p.permType in (READ, READWRITE):
                        reads.append(iv)
                    if p.permType in (WRITE, READWRITE):
                        writes.append(iv)
            cached = [reads, writes]
            self._perm_cache[(name, self.revision)] = cached
        return cached[0] if perm == READ else cached[1]

    def check(self, ai: AuthInfo, key: bytes, range_end: bytes, perm: int, at_apply: bool = False) -> None:
        """Raise unless ai may read (perm READ) or write (WRITE) [key, range_end)."""
        if not self.enabled:
            return
        if not ai.username or ai.revision == 0:
            raise USER_EMPTY
        if at_apply and ai.revision < self.revision:
            raise OLD_REVISION
        u = self.users.get(ai.username)
        if u is None:
            raise USER_NOT_FOUND
        if ROOT in u.roles:
            return
        if not _covers(self._intervals(ai.username, perm), key, range_end):
            raise PERMISSION_DENIED

    def check_txn(self, ai: AuthInfo, r: pb.TxnRequest, at_apply: bool = False) -> None:
        for c in r.compare:
            self.check(ai, c.key, c.range_end, READ, at_apply)
        for op in list(r.success) + list(r.failure):
            self.check_op(ai, op, at_apply)

    def check_op(self, ai: AuthInfo, op: pb.RequestOp, at_apply: bool = False) -> None:
        which = op.WhichOneof("request")
        if which == "request_range":
            self.check(ai, op.request_range.key, op.request_range.range_end, READ, at_apply)
        elif which == "request_put":
            self.check(ai, op.request_put.key, b"", WRITE, at_apply)
            if op.request_put.prev_kv:
                self.check(ai, op.request_put.key, b"", READ, at_apply)
        elif which == "request_delete_range":
            d = op.request_delete_range
            self.check(ai, d.key, d.range_end, WRITE, at_apply)
            if d.prev_kv:
                self.check(ai, d.key, d.range_end, READ, at_apply)
        elif which == "request_txn":
            self.check_txn(ai, op.request_txn, at_apply)

    # ------------------------------------------------- applied changes
    def apply(self, r: raft_internal_pb2.InternalRaftRequest, which: str, index: int) -> object:
        """Apply one auth request (which names its field); returns its response or raises."""
        ai = AuthInfo(r.header.username, r.header.auth_revision)
        if which not in ("authenticate", "auth_user_get", "auth_role_get"):
            self.is_admin(ai)
        return getattr(self, "_" + which)(getattr(r, which), ai, index)

    def _auth_enable(self, q, ai: AuthInfo, index: int) -> pb.AuthEnableResponse:
        if not self.enabled:
            root = self.users.get(ROOT)
            if root is None:
                raise ROOT_USER_MISSING
            if ROOT not in root.roles:
                raise ROOT_ROLE_MISSING
            self.enabled = True
            self.backend.put(AUTH_BUCKET, _ENABLED, b"\x01")
            self.tokens.clear()
            self._bump()
        return pb.AuthEnableResponse()

    def _auth_disable(self, q, ai: AuthInfo, index: int) -> pb.AuthDisableResponse:
        if self.enabled:
            self.enabled = False
            self.backend.put(AUTH_BUCKET, _ENABLED, b"\x00")
            self.tokens.clear()
            self._bump()
        return pb.AuthDisableResponse()

    def _authenticate(self, q, ai: AuthInfo, index: int) -> pb.AuthenticateResponse:
        if not self.enabled:
            raise AUTH_NOT_ENABLED
        if q.name not in self.users:
            raise AUTH_FAILED
        token = f"{q.simple_token}.{index}"
        now = time.monotonic()
        if len(self.tokens) >= MAX_TOKENS:  # etcdctl authenticates on every invocation
            self.tokens = {t: e for t, e in self.tokens.items() if e[1] >= now}
        self.tokens[token] = (q.name, now + self.token_ttl)
        return pb.AuthenticateResponse(token=token)

    def _auth_user_add(self, q: pb.AuthUserAddRequest, ai: AuthInfo, index: int) -> pb.AuthUserAddResponse:
        if not q.name:
            raise USER_EMPTY
        if q.name in self.users:
            raise USER_EXISTS
        u = User(name=q.name.encode())
        if q.HasField("options"):
            u.options.CopyFrom(q.options)
        if not u.options.no_password:
            u.password = q.hashedPassword.encode()
        self._save_user(u)
        self._bump()
        return pb.AuthUserAddResponse()

    def _auth_user_delete(self, q, ai: AuthInfo, index: int) -> pb.AuthUserDeleteResponse:
        if self.enabled and q.name == ROOT:
            raise INVALID_MGMT
        self._user(q.name)
        del self.users[q.name]
        self.backend.delete(USERS_BUCKET, q.name.encode())
        self._drop_tokens_of(q.name)
        self._bump()
        return pb.AuthUserDeleteResponse()

    def _auth_user_change_password(self, q, ai: AuthInfo, index: int) -> pb.AuthUserChangePasswordResponse:
        u = self._user(q.name)
        u.password = q.hashedPassword.encode()
        self._save_user(u)
        self._drop_tokens_of(q.name)
        self._bump()
        return pb.AuthUserChangePasswordResponse()

    def _auth_user_grant_role(self, q, ai: AuthInfo, index: int) -> pb.AuthUserGrantRoleResponse:
        u = self._user(q.user)
        if q.role != ROOT:
            self._role(q.role)
        if q.role not in u.roles:
            self._set_roles(u, sorted([*u.roles, q.role]))
            self._bump()
        return pb.AuthUserGrantRoleResponse()

    def _auth_user_revoke_role(self, q, ai: AuthInfo, index: int) -> pb.AuthUserRevokeRoleResponse:
        if self.enabled and q.name == ROOT and q.role == ROOT:
            raise INVALID_MGMT
        u = self._user(q.name)
        if q.role not in u.roles:
            raise ROLE_NOT_GRANTED
        self._set_roles(u, [x for x in u.roles if x != q.role])
        self._bump()
        return pb.AuthUserRevokeRoleResponse()

    def _auth_user_get(self, q, ai: AuthInfo, index: int) -> pb.AuthUserGetResponse:
        try:
            self.is_admin(ai)
        except EtcdError:
            if not ai.username or ai.username != q.name:
                raise
        u = self._user(q.name)
        return pb.AuthUserGetResponse(roles=list(u.roles))

    def _auth_user_list(self, q, ai: AuthInfo, index: int) -> pb.AuthUserListResponse:
        return pb.AuthUserListResponse(users=sorted(self.users))

    def _auth_role_add(self, q, ai: AuthInfo, index: int) -> pb.AuthRoleAddResponse:
        if not q.name:
            raise ROLE_EMPTY
        if q.name in self.roles:
            raise ROLE_EXISTS
        self._save_role(Role(name=q.name.encode()))
        self._bump()
        return pb.AuthRoleAddResponse()

    def _auth_role_get(self, q, ai: AuthInfo, index: int) -> pb.AuthRoleGetResponse:
        try:
            self.is_admin(ai)
        except EtcdError:
            u = self.users.get(ai.username)
            if u is None or q.role not in u.roles:
                raise
        r = self._role(q.role)
        return pb.AuthRoleGetResponse(perm=list(r.keyPermission))

    def _auth_role_list(self, q, ai: AuthInfo, index: int) -> pb.AuthRoleListResponse:
        return pb.AuthRoleListResponse(roles=sorted(self.roles))

    def _auth_role_delete(self, q, ai: AuthInfo, index: int) -> pb.AuthRoleDeleteResponse:
        if self.enabled and q.role == ROOT:
            raise INVALID_MGMT
        self._role(q.role)
        del self.roles[q.role]
        self.backend.delete(ROLES_BUCKET, q.role.encode())
        for u in list(self.users.values()):
            if q.role in u.roles:
                self._set_roles(u, [x for x in u.roles if x != q.role])
        self._bump()
        return pb.AuthRoleDeleteResponse()

    def _auth_role_grant_permission(self, q, ai: AuthInfo, index: int) -> pb.AuthRoleGrantPermissionResponse:
        r = self._role(q.name)
        p = q.perm
        perms = [x for x in r.keyPermission]
        for x in perms:
            if x.key == p.key and x.range_end == p.range_end:
                x.permType = p.permType  # granting a key again replaces its type, as in etcd
                break
        else:
            perms.append(Permission(permType=p.permType, key=p.key, range_end=p.range_end))
        perms.sort(key=lambda x: bytes(x.key))
        new = Role(name=r.name, keyPermission=perms)
        self._save_role(new)
        self._bump()
        return pb.AuthRoleGrantPermissionResponse()

    def _auth_role_revoke_permission(self, q, ai: AuthInfo, index: int) -> pb.AuthRoleRevokePermissionResponse:
        r = self._role(q.role)
        keep = [x for x in r.keyPermission if not (x.key == q.key and x.range_end == q.range_end)]
        if len(keep) == len(r.keyPermission):
            raise PERMISSION_NOT_GRANTED
        self._save_role(Role(name=r.name, keyPermission=keep))
        self._bump()
        return pb.AuthRoleRevokePermissionResponse()


# the InternalRaftRequest fields this store applies
REQUESTS = (
    "auth_enable", "auth_disable", "authenticate", "auth_user_add", "auth_user_delete",
    "auth_user_get", "auth_user_change_password", "auth_user_grant_role", "auth_user_revoke_role",
    "auth_user_list", "auth_role_list", "auth_role_add", "auth_role_delete", "auth_role_get",
    "auth_role_grant_permission", "auth_role_revoke_permission",
)
