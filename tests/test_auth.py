"""Authentication and RBAC: the permission arithmetic, the store applied like raft applies it,
and a real 3-member cluster where tokens and permissions hold on every member and after restarts.

etcdctl's view of the same behaviour, side by side with real etcd, is in
tests/test_etcdctl_diff.py::test_auth_commands_match_etcd.
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from typing import Callable, Iterator

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server import auth
from server.apply import Applier
from server.auth import AuthInfo, _covers, _end
from server.backend import Backend
from server.errors import EtcdError
from server.lease import Lessor
from server.mvcc.store import KVStore
from server.proto.authpb import auth_pb2
from server.proto.etcdserverpb import raft_internal_pb2, rpc_pb2, rpc_pb2_grpc
from server.watch import WatchHub

pb = rpc_pb2
IRR = raft_internal_pb2.InternalRaftRequest


# ------------------------------------------------------------- permission arithmetic
KEYS = st.binary(min_size=0, max_size=3).map(lambda b: bytes(x % 3 + 97 for x in b))  # over "abc"
ENDS = st.one_of(st.just(b""), st.just(b"\x00"), KEYS)


def _brute_covers(intervals: list[tuple[bytes, bytes | None]], key: bytes, range_end: bytes) -> bool:
    """Exhaustive: every interval bound splits the key space into stretches that are covered or
    not as a whole (a key is covered exactly when the greatest bound at or below it is), so
    checking each bound inside the request decides it."""
    want_end = _end(key, range_end)
    if want_end is not None and want_end <= key:
        return True
    points = {key} | {lo for lo, _ in intervals} | {hi for _, hi in intervals if hi is not None}
    for q in points:
        if q >= key and (want_end is None or q < want_end):
            if not any(lo <= q and (hi is None or q < hi) for lo, hi in intervals):
                return False
    return True


@settings(max_examples=500, deadline=None)
@given(perms=st.lists(st.tuples(KEYS, ENDS), max_size=5), key=KEYS, range_end=ENDS)
def test_covers_agrees_with_brute_force(perms, key, range_end) -> None:
    intervals = [(lo, _end(lo, hi)) for lo, hi in perms]
    assert _covers(intervals, key, range_end) == _brute_covers(intervals, key, range_end)


def test_covers_examples() -> None:
    iv = [(b"a", b"c"), (b"c", b"e"), (b"x", None)]
    assert _covers(iv, b"b", b"")
    assert _covers(iv, b"a", b"e")  # across two adjacent permissions, merged
    assert not _covers(iv, b"a", b"f")
    assert _covers(iv, b"y", b"\x00")  # from y on: the open-ended permission covers it
    assert not _covers(iv, b"w", b"\x00")
    assert not _covers([(b"foo", b"foo\x00")], b"foo", b"fop")  # one key does not cover its prefix
    assert _covers([(b"foo", b"foo\x00")], b"foo", b"")


# ------------------------------------------------------------------ the applied store
@pytest.fixture
def applier(tmp_path) -> Iterator[Callable[[], Applier]]:
    opened: list[Backend] = []

    def open_() -> Applier:
        be = Backend(str(tmp_path / "db"))
        opened.append(be)
        lessor = Lessor(1)
        store = KVStore(be, lessor)
        a = Applier(store, lessor, be, WatchHub(store, lambda rev=0: pb.ResponseHeader(revision=rev)), time.monotonic)
        a.restore()
        store.restore()
        return a

    yield open_
    for be in opened:
        try:
            be.close()
        except Exception:  # noqa: BLE001
            pass


class Log:
    """Feeds an Applier requests as committed entries, one index each."""

    def __init__(self, a: Applier) -> None:
        self.a = a
        self.index = a.applied_index

    def __call__(self, user: str = "", rev: int | None = None, **field) -> object:
        r = IRR(**field)
        r.header.ID = self.index + 1
        if rev is None:
            rev = self.a.auth.revision
        r.header.auth_revision = rev
        if user:
            r.header.username = user
        self.index += 1
        [(_, res)] = self.a.apply(self.index, 1, r.SerializeToString())
        return res


def _setup(log: Log) -> None:
    for q in (
        {"auth_user_add": pb.AuthUserAddRequest(name="root", hashedPassword=auth.hash_password("rootpw"))},
        {"auth_role_add": pb.AuthRoleAddRequest(name="root")},
        {"auth_user_grant_role": pb.AuthUserGrantRoleRequest(user="root", role="root")},
        {"auth_role_add": pb.AuthRoleAddRequest(name="rw-k")},
        {"auth_role_grant_permission": pb.AuthRoleGrantPermissionRequest(
            name="rw-k", perm=auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"k", range_end=b"l"))},
        {"auth_user_add": pb.AuthUserAddRequest(name="alice", hashedPassword=auth.hash_password("secret"))},
        {"auth_user_grant_role": pb.AuthUserGrantRoleRequest(user="alice", role="rw-k")},
        {"auth_enable": pb.AuthEnableRequest()},
    ):
        res = log(**q)
        assert not isinstance(res, EtcdError), (q, res)


def test_writes_are_checked_when_applied_at_the_revision_they_were_checked(applier) -> None:
    a = applier()
    log = Log(a)
    _setup(log)
    assert isinstance(log("alice", put=pb.PutRequest(key=b"k1", value=b"v")), pb.PutResponse)
    assert log("alice", put=pb.PutRequest(key=b"x", value=b"v")) == auth.PERMISSION_DENIED
    assert log("", put=pb.PutRequest(key=b"k1", value=b"v")) == auth.USER_EMPTY
    # a request checked before the latest auth change is refused, however harmless: the client
    # authenticates again and retries
    old = a.auth.revision
    log("root", auth_role_add=pb.AuthRoleAddRequest(name="other"))
    assert log("alice", rev=old, put=pb.PutRequest(key=b"k1", value=b"v")) == auth.OLD_REVISION
    # a txn is checked op by op: a write outside k.. in either branch refuses all of it
    txn = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"k2", value=b"1"))],
                        failure=[pb.RequestOp(request_put=pb.PutRequest(key=b"z", value=b"1"))])
    assert log("alice", txn=txn) == auth.PERMISSION_DENIED
    assert a.store.get(b"k2") is None
    # the server's own requests (lease expiry) carry no auth revision and are not checked
    assert isinstance(log("", rev=0, put=pb.PutRequest(key=b"x", value=b"v")), pb.PutResponse)
    # admin requests need root
    assert log("alice", auth_user_list=pb.AuthUserListRequest()) == auth.PERMISSION_DENIED
    assert list(log("root", auth_user_list=pb.AuthUserListRequest()).users) == ["alice", "root"]


def test_state_survives_a_restart_tokens_do_not_and_no_password_is_kept(applier) -> None:
    a = applier()
    log = Log(a)
    _setup(log)
    tok = log("", authenticate=raft_internal_pb2.InternalAuthenticateRequest(name="alice", simple_token="abc"))
    assert tok.token.startswith("abc.")
    assert a.auth.info(tok.token) == AuthInfo("alice", a.auth.revision)
    with pytest.raises(EtcdError) as e:
        a.auth.info("forged.1")
    assert e.value == auth.INVALID_TOKEN
    stored = a.auth.users["alice"].password
    assert b"secret" not in bytes(stored) and auth.password_matches(bytes(stored), "secret")
    a.backend.commit()
    a.backend.close()

    b = applier()
    assert b.auth.enabled and sorted(b.auth.users) == ["alice", "root"]
    assert [bytes(p.key) for p in b.auth.roles["rw-k"].keyPermission] == [b"k"]
    with pytest.raises(EtcdError):
        b.auth.info(tok.token)  # simple tokens live in memory, as in etcd
    b.auth.check_password("alice", "secret")
    with pytest.raises(EtcdError):
        b.auth.check_password("alice", "wrong")


def test_tokens_expire_unused_and_die_with_their_user(applier) -> None:
    a = applier()
    log = Log(a)
    _setup(log)
    a.auth.token_ttl = 0.2
    t1 = log("", authenticate=raft_internal_pb2.InternalAuthenticateRequest(name="alice", simple_token="t")).token
    for _ in range(3):  # used within its TTL, it stays
        time.sleep(0.1)
        a.auth.info(t1)
    time.sleep(0.3)
    with pytest.raises(EtcdError):
        a.auth.info(t1)
    a.auth.token_ttl = 60
    t2 = log("", authenticate=raft_internal_pb2.InternalAuthenticateRequest(name="alice", simple_token="u")).token
    log("root", auth_user_change_password=pb.AuthUserChangePasswordRequest(
        name="alice", hashedPassword=auth.hash_password("new")))
    with pytest.raises(EtcdError):
        a.auth.info(t2)


def test_password_hashes_from_elsewhere_match_nothing() -> None:
    good = auth.hash_password("pw")
    assert auth.password_matches(good.encode(), "pw") and not auth.password_matches(good.encode(), "pW")
    for stored in (b"", b"$2a$10$abcdefghijklmnopqrstuv", "pbkdf2-sha256$x$00$00".encode(),
                   f"pbkdf2-sha256${10**12}$00$00".encode(), b"pbkdf2-sha256$1$zz$00", b"\xff\xfe"):
        assert not auth.password_matches(stored, "pw"), stored


# ---------------------------------------------------------------- a real cluster
def _ctl(m, *args: str) -> subprocess.CompletedProcess:
    cp = m.etcdctl(*args)
    return cp


def _must(cp: subprocess.CompletedProcess) -> str:
    assert cp.returncode == 0, cp.stderr[-500:]
    return cp.stdout


def _token(endpoint: str, name: str, password: str) -> str:
    with grpc.insecure_channel(endpoint) as ch:
        return rpc_pb2_grpc.AuthStub(ch).Authenticate(pb.AuthenticateRequest(name=name, password=password), timeout=10).token


def _get(endpoint: str, key: bytes, token: str | None) -> pb.RangeResponse:
    with grpc.insecure_channel(endpoint) as ch:
        md = [("token", token)] if token else None
        return rpc_pb2_grpc.KVStub(ch).Range(pb.RangeRequest(key=key), timeout=10, metadata=md)


@pytest.mark.parametrize("kind", ["reference", "etcd"])
def test_a_token_from_one_member_works_on_all_and_auth_survives_restarts(kind: str, cluster_factory) -> None:
    c = cluster_factory(kind)
    m1, m2, m3 = c.members
    _must(_ctl(m1, "user", "add", "root:rootpw"))
    _must(_ctl(m1, "auth", "enable"))
    root = "--user=root:rootpw"
    _must(_ctl(m1, "role", "add", "reader", root))
    _must(_ctl(m1, "role", "grant-permission", "reader", "read", "app/", "--prefix", root))
    _must(_ctl(m1, "user", "add", "alice:secret", root))
    _must(_ctl(m1, "user", "grant-role", "alice", "reader", root))
    _must(_ctl(m1, "put", "app/x", "1", root))

    tok = _token(m1.endpoint, "alice", "secret")
    for m in (m1, m2, m3):  # the token was applied on every member
        deadline = time.monotonic() + 10
        while True:
            try:
                assert _get(m.endpoint, b"app/x", tok).kvs[0].value == b"1"
                break
            except grpc.RpcError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{m.name}: {e.code()} {e.details()}") from None
                time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as e:
            _get(m.endpoint, b"other", tok)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "permission denied" in e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            _get(m.endpoint, b"app/x", "not-a-token")
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value.details()
        with pytest.raises(grpc.RpcError) as e:
            _get(m.endpoint, b"app/x", None)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user name is empty" in e.value.details()

    # every member restarted: users, roles and the enabled flag are durable
    for m in (m1, m2, m3):
        m.kill()
    for m in (m1, m2, m3):
        m.start(wait=False)
    for m in (m1, m2, m3):
        m.wait_ready(30)
    deadline = time.monotonic() + 20
    while True:
        cp = _ctl(m3, "get", "app/x", "--user=alice:secret")
        if cp.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert _must(cp) == "app/x\n1\n"
    cp = _ctl(m2, "put", "app/x", "2", "--user=alice:secret")
    assert cp.returncode != 0 and "permission denied" in cp.stderr
    assert "alice" in _must(_ctl(m2, "user", "list", root))


def test_gateway_takes_the_token_in_the_authorization_header(tmp_path, cluster_factory) -> None:
    """What curl users do (etcd's gateway docs): POST /v3/auth/authenticate, then send the token
    as the Authorization header."""
    c = cluster_factory("reference", 1)
    m = c.members[0]
    _must(_ctl(m, "user", "add", "root:rootpw"))
    _must(_ctl(m, "auth", "enable"))

    def post(path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(m.http_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": token} if token else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    code, body = post("/v3/auth/authenticate", {"name": "root", "password": "wrong"})
    assert code == 400 and "authentication failed" in body["message"]
    code, body = post("/v3/auth/authenticate", {"name": "root", "password": "rootpw"})
    assert code == 200, body
    token = body["token"]
    assert post("/v3/kv/put", {"key": "YQ==", "value": "MQ=="}, token)[0] == 200
    code, body = post("/v3/kv/range", {"key": "YQ=="})
    assert code == 400 and "user name is empty" in body["message"]
    code, body = post("/v3/kv/range", {"key": "YQ=="}, "bogus")
    assert code == 401 and "invalid auth token" in body["message"]
    code, body = post("/v3/auth/user/list", {}, token)
    assert code == 200 and body["users"] == ["root"]
    code, body = post("/v3/auth/status", {}, token)
    assert code == 200 and body["enabled"] is True


# ------------------------------------------------------------- the harness's client (--auth)
@pytest.mark.parametrize("kind", ["reference", "etcd"])
def test_client_authenticates_and_again_after_its_member_forgot_the_token(kind: str, cluster_factory) -> None:
    """What a worker of an --auth run meets: its first request authenticates; after its member
    restarts (simple tokens live in memory) one request fails definitely on the stale token and
    the next one authenticates again and succeeds. Root-only requests fail for the user."""
    import asyncio

    from harness import authsetup
    from harness.client import Definite, EtcdClient

    c = cluster_factory(kind, 1)
    m = c.members[0]

    async def go() -> list[str]:
        await authsetup.enable(m.endpoint)
        steps = []
        user = EtcdClient(m.endpoint, timeout=5, credentials=authsetup.USER)
        nobody = EtcdClient(m.endpoint, timeout=5)
        try:
            await user.put("k", 1)
            assert (await user.get("k")).value == 1
            steps.append("put+get")
            with pytest.raises(Definite) as e:
                await nobody.get("k")
            assert "user name is empty" in e.value.message
            with pytest.raises(Definite) as e:
                await user.member_remove(12345)
            assert "permission denied" in e.value.message
            # the backend commits its consistent index every 100 ms or so: past that, a restart does
            # not replay the Authenticate entry, and the token is gone (before it, etcd's replay
            # mints it again)
            await asyncio.sleep(1.5)
            m.kill()
            m.start()
            for _ in range(3):  # a restart can also be met as a dropped connection first
                try:
                    await user.get("k")
                    break
                except Definite as err:
                    steps.append(err.message)
            assert (await user.get("k")).value == 1
            steps.append("again")
            wrong = EtcdClient(m.endpoint, timeout=5, credentials=authsetup.Credentials("etcdproof", "nope"))
            with pytest.raises(Definite) as e:
                await wrong.put("k", 2)
            assert "authentication failed" in e.value.message
            await wrong.close()
        finally:
            await user.close()
            await nobody.close()
        return steps

    steps = asyncio.run(go())
    assert steps[0] == "put+get" and steps[-1] == "again", steps
    assert any("invalid auth token" in s for s in steps), steps
