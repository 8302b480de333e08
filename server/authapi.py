"""The Auth service's handlers: what the API layer does before (and after) the log.

Every change and every listing goes through raft, as in etcd, so a member answers with the
cluster's committed auth state; passwords are checked and hashed here, on the member the client
talks to, off the event loop (a hash costs tens of milliseconds), and only the hash is logged.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from server import errors
from server.auth import hash_password, new_token
from server.proto.etcdserverpb import raft_internal_pb2, rpc_pb2

if TYPE_CHECKING:
    from server.etcdserver import EtcdServer

pb = rpc_pb2
InternalRaftRequest = raft_internal_pb2.InternalRaftRequest

# gRPC method name -> the InternalRaftRequest field that carries it
FIELDS = {
    "AuthEnable": "auth_enable",
    "AuthDisable": "auth_disable",
    "UserAdd": "auth_user_add",
    "UserGet": "auth_user_get",
    "UserList": "auth_user_list",
    "UserDelete": "auth_user_delete",
    "UserChangePassword": "auth_user_change_password",
    "UserGrantRole": "auth_user_grant_role",
    "UserRevokeRole": "auth_user_revoke_role",
    "RoleAdd": "auth_role_add",
    "RoleGet": "auth_role_get",
    "RoleList": "auth_role_list",
    "RoleDelete": "auth_role_delete",
    "RoleGrantPermission": "auth_role_grant_permission",
    "RoleRevokePermission": "auth_role_revoke_permission",
}


async def call(srv: "EtcdServer", method: str, r) -> object:
    """Handle Auth.<method> (not Authenticate or AuthStatus) with request r."""
    field = FIELDS[method]
    if method in ("UserAdd", "UserChangePassword"):
        r = type(r).FromString(r.SerializeToString())
        no_password = method == "UserAdd" and r.HasField("options") and r.options.no_password
        if not no_password and not r.hashedPassword:
            r.hashedPassword = await asyncio.to_thread(hash_password, r.password)
        r.password = ""  # the plain password never reaches the log
    req = InternalRaftRequest(**{field: r})
    return await srv._propose(srv._stamp(req))


async def authenticate(srv: "EtcdServer", r: pb.AuthenticateRequest) -> pb.AuthenticateResponse:
    if not srv.auth.enabled:
        raise errors.AUTH_NOT_ENABLED
    await asyncio.to_thread(srv.auth.check_password, r.name, r.password)
    req = InternalRaftRequest(
        authenticate=raft_internal_pb2.InternalAuthenticateRequest(name=r.name, simple_token=new_token())
    )
    return await srv._propose(req)  # type: ignore[return-value]


def status(srv: "EtcdServer") -> pb.AuthStatusResponse:
    return pb.AuthStatusResponse(header=srv.header(), enabled=srv.auth.enabled, authRevision=srv.auth.revision)
