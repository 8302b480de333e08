"""`--nemesis auth` (with `--auth`): the auth store changes under the workload's feet.

Why: etcd checks a write's permissions when it is applied, against the auth revision the
proposing member stamped on it, so every member must agree on the auth state at every index.
When they did not (etcd-io/etcd#14571, fixed in 3.4.21/3.5.5: the auth revision was not
persisted consistently across restarts), one member applied writes another refused, and the
stores diverged. This fault makes auth changes while writes are in flight, alone or together
with kills and partitions:

- `churn`: add a role, grant it a permission, delete it (three auth revisions), so writes
  checked at the revision before fail with "revision of auth store is old";
- `revoke`: take the workload's read-write permission away for a moment and give it back, so
  writes in between fail with "permission denied".

Either way the refused writes fail definitely: a member that applied one anyway shows in the
history (a read of a value whose write failed) or as members that do not converge. The changes
are made and undone within `start` (`stop` has nothing left to undo); `heal` gives the
permission back in case a start was cut short. Without --auth the fault is refused.
"""
from __future__ import annotations

import asyncio
import time

from harness import authsetup
from harness.client import ClientError, EtcdClient
from nemesis.base import FaultRefused, NemesisContext
from nemesis.member import _call
from server.proto.authpb import auth_pb2
from server.proto.etcdserverpb import rpc_pb2 as pb

OPS = ("churn", "revoke")
HEAL_PATIENCE = 20.0  # seconds the heal asks again while members restart or elect
EVERYTHING = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"\x00", range_end=b"\x00")


class AuthNemesis:
    """`--nemesis auth`: auth revisions bumped and the workload's permission revoked, briefly."""

    name = "auth"

    def __init__(self) -> None:
        self.count = 0

    def setup(self, ctx: NemesisContext) -> None:
        self.count = 0

    def start(self, ctx: NemesisContext) -> dict:
        if ctx.credentials is None:
            raise FaultRefused("needs --auth: without users and permissions there is no auth state to change")
        running = ctx.running_members()
        if not running:
            raise FaultRefused("no member running")
        n = ctx.rng.choice(running)
        op = ctx.rng.choice(OPS)
        hold = round(ctx.rng.uniform(0.2, 1.0), 2)
        self.count += 1
        role = f"etcdproof-churn-{self.count}"

        async def churn(c: EtcdClient) -> list[str]:
            await c.auth_request("RoleAdd", pb.AuthRoleAddRequest(name=role))
            await c.auth_request("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
                name=role, perm=auth_pb2.Permission(permType=auth_pb2.Permission.READ, key=b"churn")))
            await c.auth_request("RoleDelete", pb.AuthRoleDeleteRequest(role=role))
            return [f"role add {role}", f"role grant-permission {role} read churn", f"role delete {role}"]

        async def revoke(c: EtcdClient) -> list[str]:
            await c.auth_request("RoleRevokePermission", pb.AuthRoleRevokePermissionRequest(
                role=authsetup.ROLE, key=EVERYTHING.key, range_end=EVERYTHING.range_end))
            try:
                await asyncio.sleep(hold)
            finally:
                await c.auth_request("RoleGrantPermission",
                                     pb.AuthRoleGrantPermissionRequest(name=authsetup.ROLE, perm=EVERYTHING))
            return [f"role revoke-permission {authsetup.ROLE} (every key)", f"held {hold} s",
                    f"role grant-permission {authsetup.ROLE} readwrite (every key)"]

        try:
            done = _call(ctx.db.client_endpoint(n), churn if op == "churn" else revoke, timeout=10,
                         credentials=ctx.credentials)
        except ClientError as e:
            raise FaultRefused(f"{n.name} refused the auth change: {e.message}") from None
        return {"nodes": [n.name], "op": op, "asked": n.name, "changes": done}

    def stop(self, ctx: NemesisContext) -> dict:
        return {"nodes": [], "note": "auth changes are made and undone within start"}

    def heal(self, ctx: NemesisContext) -> dict:
        """Give the workload its permission back (granting it again is harmless)."""
        if ctx.credentials is None:
            return {"nodes": [], "note": "no --auth: nothing to heal"}
        # the final heal runs right after the kill fault's, which restarts servers: one may have its
        # pidfile but not its port yet, and a new leader may not be elected, so ask again for a while
        deadline = time.monotonic() + HEAL_PATIENCE
        while True:
            errors = []
            for n in ctx.running_members():
                try:
                    _call(ctx.db.client_endpoint(n), lambda c: c.auth_request(
                        "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(name=authsetup.ROLE, perm=EVERYTHING)),
                        timeout=10, credentials=ctx.credentials)
                    return {"nodes": [n.name], "granted": f"{authsetup.ROLE} readwrite (every key)"}
                except ClientError as e:
                    if "role name not found" in e.message:  # before --auth set up its users: nothing revoked
                        return {"nodes": [n.name], "note": f"no role {authsetup.ROLE} yet: nothing to give back"}
                    errors.append(f"{n.name}: {e.message}")
            if time.monotonic() >= deadline:
                raise RuntimeError("could not give the workload its permission back: "
                                   + ("; ".join(errors) or "no member running"))
            time.sleep(0.5)
