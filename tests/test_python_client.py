"""Real third-party Python etcd clients (python-etcd3 and aetcd) work against the reference server.

Why: users reach etcd through client libraries, which depend on details (error texts, watch
creation handshakes, keep-alive streams, member lists) that our own stubs would not notice. The
libraries ship protobuf modules with the same full names as ours, so each runs in its own
process from the separate virtualenv .venv-clients (tests/clients/venv.py builds it). The same
script runs against real etcd and must print the same report.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness.localproc import LocalMember

CLIENTS = Path(__file__).resolve().parent / "clients"


def _venv_helper() -> Any:
    """tests/clients/venv.py, loaded by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("etcdproof_client_venv", CLIENTS / "venv.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


venv_helper = _venv_helper()
LIBRARIES = ["etcd3", "aetcd"]

# What every library must report on a fresh server (revisions relative to the first put).
EXPECTED: dict = {
    "put_get": {"value": "v2", "version": 2, "create_rev": 0, "mod_rev": 1, "second_put_rev": 1, "missing": None},
    "prefix": [["pre/a", "1"], ["pre/b", "2"], ["pre/c", "3"]],
    "delete": {"existing": True, "missing": False, "after": None, "prefix_deleted": 2},
    "txn": {"first_succeeded": True, "second_succeeded": False, "second_read": ["v3"], "mod_rev": 8},
    "watch": [["PutEvent", "w/1", "a", 9], ["PutEvent", "w/2", "b", 10], ["DeleteEvent", "w/1", "", 11]],
    "lease": {
        "granted_ttl": 30,
        "key_lease_is_grant": True,
        "ttl_info_granted": 30,
        "ttl_info_positive": True,
        "keys": ["leased"],
        "after_revoke": None,
        "ttl_after_revoke": -1,
        "put_revoked_lease": ["NOT_FOUND", "etcdserver: requested lease not found"],
    },
    "keepalive": {
        "refresh_ttl": 5, "refresh_id_matches": True, "remaining_went_up": True, "before_below_granted": True,
    },
    "cluster": {
        "version_has_3": True,
        "leader_is_member": True,
        "members": [["default", True]],
        "db_size_positive": True,
        "raft_index_positive": True,
    },
}
# each library has its own exception for etcd's "lease already exists" (aetcd matches the text)
DUPLICATE_LEASE = {"etcd3": "PreconditionFailedError", "aetcd": "DuplicateLeaseError"}


def expected(lib: str) -> dict:
    return {**EXPECTED, "library": lib, "duplicate_lease": DUPLICATE_LEASE[lib]}


@pytest.fixture(scope="session")
def client_python() -> Path:
    """The client virtualenv's python; the tests skip, saying why, when it cannot be built."""
    try:
        return venv_helper.ensure_client_venv()
    except venv_helper.ClientVenvError as e:
        pytest.skip(f"client virtualenv .venv-clients could not be built: {e}")


def run_client(python: Path, lib: str, member: LocalMember, prefix: str = "lib/") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    r = subprocess.run(
        [str(python), str(CLIENTS / f"{lib}_client.py"), member.endpoint, prefix],
        capture_output=True, text=True, timeout=90, env=env,
    )
    assert r.returncode == 0, f"{lib} client against {member.kind} failed:\n{r.stderr[-3000:]}"
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"{lib} client printed no report:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("lib", LIBRARIES)
def test_library_against_server(client_python: Path, any_server: LocalMember, lib: str) -> None:
    """put/get, prefix get, delete, txn, watch, lease grant/attach/revoke, keep-alive, status, members.

    Runs against the reference server and against real etcd (any_server), each held to the same
    expected report, so the two servers' reports are equal to each other as well.
    """
    report = run_client(client_python, lib, any_server)
    want = expected(lib)
    for section in want:
        assert report.get(section) == want[section], f"{lib} on {any_server.kind}: {section}"
    assert report == want


# python-etcd3 0.12 sends the token as gRPC call credentials, which grpcio refuses on an
# insecure channel ("does not have a sufficient security level") before any request leaves:
# it can use auth only over TLS, against any server, so only aetcd is driven here
@pytest.mark.parametrize("lib", ["aetcd"])
def test_library_with_auth(client_python: Path, any_server: LocalMember, lib: str) -> None:
    """A library's own user/password support against auth: it authenticates, sends the token,
    and sees etcd's refusals (a key outside the user's permission, a wrong password) as real
    etcd gives them; the reports of both servers are held to one expectation."""
    import asyncio

    from harness import authsetup
    from harness.client import EtcdClient
    from server.proto.authpb import auth_pb2
    from server.proto.etcdserverpb import rpc_pb2 as pb

    async def setup() -> None:
        await authsetup.enable(any_server.endpoint)
        root = EtcdClient(any_server.endpoint, credentials=authsetup.ROOT)
        try:
            await root.auth_request("RoleAdd", pb.AuthRoleAddRequest(name="lib-rw"))
            await root.auth_request("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
                name="lib-rw", perm=auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"lib/",
                                                        range_end=b"lib0")))
            await root.auth_request("UserAdd", pb.AuthUserAddRequest(name="libuser", password="libpw"))
            await root.auth_request("UserGrantRole", pb.AuthUserGrantRoleRequest(user="libuser", role="lib-rw"))
        finally:
            await root.close()

    asyncio.run(setup())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    r = subprocess.run([str(client_python), str(CLIENTS / "auth_client.py"), lib, any_server.endpoint, "libuser", "libpw"],
                       capture_output=True, text=True, timeout=90, env=env)
    assert r.returncode == 0, f"{lib} against {any_server.kind}:\n{r.stderr[-3000:]}"
    report = json.loads([ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1])
    denied = {"aetcd": "ClientError"}  # no class of its own for PermissionDenied
    wrong = {"aetcd": "InvalidArgumentError"}
    assert report["inside"] == "1", report
    assert report["outside"] == {"error": report["outside"].get("error"), "permission_denied": True,
                                 "auth_failed": False}, report
    assert report["wrong_password"]["auth_failed"] is True, report
    assert (report["outside"]["error"], report["wrong_password"]["error"]) == (denied[lib], wrong[lib]), report
