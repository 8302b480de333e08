"""`--auth`: run a test with authentication on, the workload as an ordinary user.

After setup the harness makes etcd's root user and role, a role that may read and write every
key, a user with that role, and turns auth on. Workers then authenticate as that user (not
root, so every request goes through the permission check), and the nemesis's membership and
admin requests as root. What this exercises: tokens minted on one member used on all, tokens a
restarted member forgot (the client authenticates again), and the auth state surviving
restarts and snapshots; a lost permission or a stale token shows as failed ops, a wrongly
accepted or rejected request as a checker's verdict.
"""
from __future__ import annotations

import grpc

from harness.client import Credentials, EtcdClient
from server.proto.authpb import auth_pb2
from server.proto.etcdserverpb import rpc_pb2 as pb

ROOT = Credentials("root", "etcdproof-root")
USER = Credentials("etcdproof", "etcdproof-user")
ROLE = "etcdproof-readwrite"


class AuthSetupError(Exception):
    """Turning auth on failed; one line naming the step."""


async def enable(endpoint: str, timeout: float = 10.0) -> None:
    """Make the users and roles and enable auth, through the member at endpoint."""
    c = EtcdClient(endpoint, timeout=timeout)
    everything = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"\x00", range_end=b"\x00")
    steps = [
        ("add user root", c.auth.UserAdd, pb.AuthUserAddRequest(name=ROOT.user, password=ROOT.password)),
        ("add role root", c.auth.RoleAdd, pb.AuthRoleAddRequest(name="root")),
        ("grant root to root", c.auth.UserGrantRole, pb.AuthUserGrantRoleRequest(user=ROOT.user, role="root")),
        (f"add role {ROLE}", c.auth.RoleAdd, pb.AuthRoleAddRequest(name=ROLE)),
        ("grant every key", c.auth.RoleGrantPermission, pb.AuthRoleGrantPermissionRequest(name=ROLE, perm=everything)),
        (f"add user {USER.user}", c.auth.UserAdd, pb.AuthUserAddRequest(name=USER.user, password=USER.password)),
        (f"grant {ROLE}", c.auth.UserGrantRole, pb.AuthUserGrantRoleRequest(user=USER.user, role=ROLE)),
        ("enable auth", c.auth.AuthEnable, pb.AuthEnableRequest()),
    ]
    try:
        for what, fn, req in steps:
            try:
                await fn(req, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                raise AuthSetupError(f"--auth: {what} on {endpoint} failed: {e.details() or e.code().name}") from None
    finally:
        await c.close()
