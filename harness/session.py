"""A session: one lease kept alive over a long-lived LeaseKeepAlive stream, as etcd's
clientv3/concurrency.Session does for locks and elections.

The lease is granted once; a background task sends a keep-alive every TTL/3 on one stream and
reopens the stream after errors. The session knows two things about its lease:
- `deadline`: until when the lease surely lives (the send time of the last keep-alive the
  server answered, plus the TTL it answered with: the server counts from when it received it,
  which is later). Past it the holder of a lock cannot know it still holds it.
- `done`: it learned the lease is gone (a keep-alive answered TTL 0), or the deadline passed
  with no answer, or the session was closed. A done session is never kept alive again.
"""
from __future__ import annotations

import asyncio
import logging
import time

import grpc

from harness.client import ClientError, EtcdClient
from server.proto.etcdserverpb import rpc_pb2 as pb

log = logging.getLogger("etcdproof.session")


class Session:
    def __init__(self, client: EtcdClient, ttl: int = 3) -> None:
        self.client = client
        self.ttl = ttl
        self.lease = 0
        self.deadline = 0.0
        self.done = False
        self.why = ""
        self._task: asyncio.Task | None = None

    async def open(self) -> "Session":
        """Grant the lease and start keeping it alive; raises the client's errors."""
        sent = time.monotonic()
        r = await self.client.lease_grant_raw(self.ttl)
        self.lease, self.ttl = r.ID, r.TTL  # the server may raise a TTL below its minimum
        self.deadline = sent + r.TTL
        self._task = asyncio.ensure_future(self._keep_alive())
        return self

    def remaining(self) -> float:
        """Seconds until the lease's deadline (negative: it may be gone)."""
        return self.deadline - time.monotonic()

    def end(self, why: str) -> None:
        if not self.done:
            self.done, self.why = True, why

    async def _keep_alive(self) -> None:
        interval = max(self.ttl / 3.0, 0.2)
        while not self.done:
            call = None
            try:
                call = self.client.lease.LeaseKeepAlive()
                while not self.done:
                    sent = time.monotonic()
                    await call.write(pb.LeaseKeepAliveRequest(ID=self.lease))
                    r = await asyncio.wait_for(call.read(), timeout=max(self.remaining(), 0.1))
                    if r is grpc.aio.EOF:
                        break
                    if r.TTL <= 0:
                        self.end("the lease expired (a keep-alive was answered with TTL 0)")
                        return
                    self.deadline = max(self.deadline, sent + r.TTL)
                    await asyncio.sleep(interval)
            except asyncio.CancelledError:
                raise
            except grpc.aio.UsageError:
                self.end("the client's connection was closed")
                return
            except Exception as e:  # noqa: BLE001 - any broken stream is retried until the deadline
                log.debug("lease %x keep-alive: %s", self.lease, e)
            finally:
                if call is not None:
                    call.cancel()
            if self.remaining() <= 0:
                self.end("no keep-alive was answered before the lease's deadline")
                return
            await asyncio.sleep(min(0.2, max(self.remaining(), 0.01)))

    def abandon(self) -> None:
        """Stop keeping the lease alive: it expires on its own within its TTL."""
        self.end("abandoned")
        if self._task is not None:
            self._task.cancel()

    async def revoke(self, timeout: float = 2.0) -> bool:
        """Abandon and revoke the lease (deleting every key attached to it); True if the
        server certainly revoked it (or it was already gone)."""
        self.abandon()
        try:
            await asyncio.wait_for(self.client.lease_revoke(self.lease), timeout)
            return True
        except ClientError as e:
            return "lease not found" in e.message
        except asyncio.TimeoutError:
            return False
