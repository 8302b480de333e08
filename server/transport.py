"""Peer transport: raft messages, snapshots and a few member-to-member calls over asyncio TCP.

Why plain TCP and not gRPC streams: raft messages are fire-and-forget and loss-tolerant (raft
retries), so the transport only needs framing, one ordered stream per peer and a cheap way to
drop; on this machine grpc.aio costs about 300 us of CPU per message, a length-prefixed frame on
an asyncio stream a few microseconds. Each peer has its own bounded outbound queue and writer
task: a slow or dead peer fills only its own queue, and messages that do not fit are dropped
and reported to raft as unreachable, so nothing ever blocks the node. Connections reconnect with
backoff. Snapshots (whole backend files) go over a connection of their own, so heartbeats keep
flowing meanwhile.

Frames are `u32 length | u8 kind | payload`. A connection opens with HELLO (cluster ID, sender
ID); raft messages from another cluster, or from a member not in the current configuration, are
refused, as etcd refuses them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import struct
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from server.proto.raftpb import raft_pb2
from server.raft.types import ConfState, Message, MsgType, Snapshot, SnapshotMeta

log = logging.getLogger("etcdproof.transport")

FRAME = struct.Struct(">IB")
HELLO = struct.Struct(">QQ")
HELLO_K, RAFT_K, SNAP_K, CHUNK_K, END_K, ACK_K, REQ_K, RESP_K, REMOVED_K = 1, 2, 3, 4, 5, 6, 7, 8, 9
MAX_FRAME = 64 << 20
QUEUE_LIMIT = 4096
QUEUE_BYTES = 64 << 20  # per peer: a stalled peer costs at most this much memory
CHUNK = 256 * 1024
WRITE_COALESCE = 1 << 20  # queued frames joined into one socket write, up to this many bytes
DIRECT_MAX = 256 * 1024  # below this much unsent, frames are written at once, not queued
RPC_OK, RPC_ERR = 0, 1


class RPCError(Exception):
    pass


# ------------------------------------------------------------ encoding
def encode_message(m: Message) -> bytes:
    p = raft_pb2.Message(
        type=int(m.type), to=m.to, term=m.term, logTerm=m.log_term, index=m.index, commit=m.commit,
        reject=m.reject, rejectHint=m.reject_hint, context=m.context,
    )
    setattr(p, "from", m.frm)  # "from" is a Python keyword
    if m.entries:
        p.entries.extend(m.entries)
    if m.snapshot is not None:
        md = p.snapshot.metadata
        md.index = m.snapshot.meta.index
        md.term = m.snapshot.meta.term
        md.conf_state.voters.extend(m.snapshot.meta.conf.voters)
        md.conf_state.learners.extend(m.snapshot.meta.conf.learners)
    return p.SerializeToString()


def decode_message(b: bytes) -> Message:
    p = raft_pb2.Message.FromString(b)
    snap = None
    if p.HasField("snapshot"):
        md = p.snapshot.metadata
        conf = ConfState(tuple(md.conf_state.voters), tuple(md.conf_state.learners))
        snap = Snapshot(SnapshotMeta(md.index, md.term, conf), None)
    return Message(
        type=MsgType(p.type), to=p.to, frm=getattr(p, "from"), term=p.term, log_term=p.logTerm, index=p.index,
        entries=list(p.entries), commit=p.commit, snapshot=snap, reject=p.reject, reject_hint=p.rejectHint,
        context=p.context,
    )


def frame(kind: int, payload: bytes) -> bytes:
    return FRAME.pack(len(payload), kind) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readexactly(FRAME.size)
    n, kind = FRAME.unpack(head)
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes is too large")
    return kind, await reader.readexactly(n)


def hostport(url: str) -> tuple[str, int]:
    u = urlsplit(url)
    if not u.hostname or u.port is None:
        raise ValueError(f"bad peer URL {url!r}")
    return u.hostname, u.port


# ------------------------------------------------------------ peers
class _Peer:
    """One remote member: an outbound queue, a writer task, and pending calls."""

    def __init__(self, t: "Transport", pid: int, urls: list[str]) -> None:
        self.t = t
        self.id = pid
        self.urls = list(urls)
        self.q: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self.queued_bytes = 0
        self.calls: dict[int, asyncio.Future] = {}
        self.connected = False
        self._writer: asyncio.StreamWriter | None = None  # set while connected
        self.task = asyncio.get_running_loop().create_task(self._run(), name=f"peer-{pid:x}")

    def enqueue(self, data: bytes) -> bool:
        w = self._writer
        if (w is not None and self.q.empty() and not w.transport.is_closing()
                and w.transport.get_write_buffer_size() < DIRECT_MAX):
            # nothing queued and the socket keeps up: write now (the writer task would only
            # do the same a loop round later); order is kept, since the queue is empty
            w.write(data)
            return True
        if self.queued_bytes + len(data) > QUEUE_BYTES:
            return False
        try:
            self.q.put_nowait(data)
        except asyncio.QueueFull:
            return False
        self.queued_bytes += len(data)
        return True

    def _nudge(self, writer: asyncio.StreamWriter) -> None:
        if self._writer is writer:
            self._writer = None
        try:
            self.q.put_nowait(b"")
        except asyncio.QueueFull:
            pass  # the task is busy with the queue and will see the connection gone

    def _take(self) -> bytes:
        data = self.q.get_nowait()
        self.queued_bytes -= len(data)
        return data

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        last: Exception | None = None
        for url in self.urls:
            host, port = hostport(url)
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
                w.write(frame(HELLO_K, HELLO.pack(self.t.cluster_id, self.t.member_id)))
                return r, w
            except (OSError, asyncio.TimeoutError) as e:
                last = e
        raise ConnectionError(f"peer {self.id:x} unreachable at {','.join(self.urls)}: {last!r}")

    async def _run(self) -> None:
        backoff = 0.05
        while not self.t.closed:
            try:
                reader, writer = await self._connect()
            except ConnectionError as e:
                self.connected = False
                log.debug("%s", e)
                self._fail_calls("peer unreachable")
                self.t.report_unreachable(self.id)
                # messages queued for a dead peer are stale by the time it is back
                while not self.q.empty():
                    self._take()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            self.connected = True
            resp_task = asyncio.get_running_loop().create_task(self._read_responses(reader))
            # the connection ending must wake this task even when every frame was written
            # directly (the queue then never fills): an empty frame is the signal
            resp_task.add_done_callback(lambda _, w=writer: self._nudge(w))
            if not writer.transport.is_closing():
                self._writer = writer
            try:
                while True:
                    data = await self.q.get()
                    self.queued_bytes -= len(data)
                    if not data:
                        if resp_task.done():
                            raise ConnectionError("connection closed by peer")
                        continue
                    # everything queued meanwhile goes in one write: one syscall, one wakeup of
                    # the peer, however many frames
                    if not self.q.empty():
                        parts, size = [data], len(data)
                        while not self.q.empty() and size < WRITE_COALESCE:
                            data = self._take()
                            parts.append(data)
                            size += len(data)
                        data = b"".join(parts)
                    writer.write(data)
                    await writer.drain()
                    if resp_task.done():
                        raise ConnectionError("connection closed by peer")
            except (OSError, ConnectionError, asyncio.IncompleteReadError) as e:
                log.debug("peer %x: %r", self.id, e)
                self.connected = False
                self.t.report_unreachable(self.id)
            finally:
                self._writer = None
                resp_task.cancel()
                writer.close()
                self._fail_calls("connection lost")

    async def _read_responses(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, payload = await read_frame(reader)
                if kind == REMOVED_K:
                    # the cluster removed us (etcd answers a removed member's messages with 410)
                    self.t.on_removed()
                    return
                if kind == RESP_K and len(payload) >= 9:
                    cid, status = struct.unpack_from(">QB", payload)
                    fut = self.calls.pop(cid, None)
                    if fut is not None and not fut.done():
                        if status == RPC_OK:
                            fut.set_result(payload[9:])
                        else:
                            fut.set_exception(RPCError(payload[9:].decode(errors="replace")))
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            return

    def _fail_calls(self, why: str) -> None:
        calls, self.calls = self.calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(RPCError(why))

    def close(self) -> None:
        self.task.cancel()
        self._fail_calls("transport closed")

    def close_soon(self, grace: float = 1.0) -> None:
        """Close after a moment, so messages already queued (a commit notice) still go out."""
        asyncio.get_running_loop().call_later(grace, self.close)


class Transport:
    def __init__(
        self,
        cluster_id: int,
        member_id: int,
        snap_dir: str,
        on_message: Callable[[Message], None],
        on_unreachable: Callable[[int], None],
        on_snapshot_status: Callable[[int, bool], None],
        handle_rpc: Callable[[int, bytes], Awaitable[bytes]],
    ) -> None:
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.snap_dir = snap_dir
        self.on_message = on_message
        self.report_unreachable = on_unreachable
        self.on_snapshot_status = on_snapshot_status
        self.handle_rpc = handle_rpc
        self.peers: dict[int, _Peer] = {}
        self.allowed: set[int] = set()  # members whose raft messages we accept
        self.removed: set[int] = set()  # members removed from the cluster: told so, then ignored
        self.on_removed: Callable[[], None] = lambda: None
        self.closed = False
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: set[asyncio.StreamWriter] = set()
        self._next_call = 1
        self._tasks: set[asyncio.Task] = set()

    async def listen(self, hostports: list[tuple[str, int]]) -> None:
        for host, port in hostports:
            try:
                srv = await asyncio.start_server(self._serve, host, port, reuse_address=True)
            except OSError as e:
                raise OSError(f"cannot listen for peers on {host}:{port}: {e.strerror}") from None
            self._servers.append(srv)

    def set_peers(self, peers: dict[int, list[str]]) -> None:
        """The current members (other than us) and their peer URLs."""
        self.allowed = set(peers)
        for pid in list(self.peers):
            if pid not in peers:
                self.peers.pop(pid).close_soon()
        for pid, urls in peers.items():
            p = self.peers.get(pid)
            if p is None:
                self.peers[pid] = _Peer(self, pid, urls)
            elif sorted(p.urls) != sorted(urls):
                p.close()
                self.peers[pid] = _Peer(self, pid, urls)

    # -------------------------------------------------------- sending
    def send(self, msgs: list[Message]) -> None:
        # one queue item per peer per call: the frames of one Ready travel together
        out: dict[int, list[bytes]] = {}
        for m in msgs:
            p = self.peers.get(m.to)
            if p is None:
                continue
            if m.type == MsgType.SNAP:
                self._spawn(self._send_snapshot(p, m))
                continue
            out.setdefault(m.to, []).append(frame(RAFT_K, encode_message(m)))
        for to, frames in out.items():
            if not self.peers[to].enqueue(frames[0] if len(frames) == 1 else b"".join(frames)):
                self.report_unreachable(to)

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _send_snapshot(self, p: _Peer, m: Message) -> None:
        path = m.snapshot.data if m.snapshot is not None else None
        ok = False
        try:
            if not isinstance(path, str):
                raise ValueError("snapshot without a file")
            reader, writer = await p._connect()
            try:
                writer.write(frame(SNAP_K, encode_message(m)))
                with open(path, "rb") as f:
                    while True:
                        chunk = await asyncio.get_running_loop().run_in_executor(None, f.read, CHUNK)
                        if not chunk:
                            break
                        writer.write(frame(CHUNK_K, chunk))
                        await writer.drain()
                writer.write(frame(END_K, b""))
                await writer.drain()
                kind, _ = await asyncio.wait_for(read_frame(reader), 60)
                ok = kind == ACK_K
            finally:
                writer.close()
            log.info("sent snapshot %s to %x: %s", m.snapshot, p.id, "ok" if ok else "refused")
        except Exception as e:  # noqa: BLE001 - any failure is a failed snapshot, retried by raft
            log.warning("sending snapshot %s to %x failed: %r", m.snapshot, p.id, e)
        self.on_snapshot_status(p.id, ok)

    async def call(self, pid: int, method: int, body: bytes, timeout: float) -> bytes:
        """A request to a peer member (member list, lease renewals); raises RPCError."""
        p = self.peers.get(pid)
        if p is None:
            raise RPCError(f"unknown peer {pid:x}")
        cid = self._next_call
        self._next_call += 1
        fut = asyncio.get_running_loop().create_future()
        p.calls[cid] = fut
        if not p.enqueue(frame(REQ_K, struct.pack(">QB", cid, method) + body)):
            p.calls.pop(cid, None)
            raise RPCError("peer queue full")
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RPCError("timed out") from None
        finally:
            p.calls.pop(cid, None)

    # -------------------------------------------------------- receiving
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            kind, payload = await asyncio.wait_for(read_frame(reader), 10)
            if kind != HELLO_K or len(payload) != HELLO.size:
                return
            cluster, sender = HELLO.unpack(payload)
            if cluster and self.cluster_id and cluster != self.cluster_id:
                log.warning("refused peer %x from cluster %x (we are %x)", sender, cluster, self.cluster_id)
                return
            while True:
                kind, payload = await read_frame(reader)
                if kind == RAFT_K:
                    if sender not in self.allowed:
                        if sender in self.removed:
                            writer.write(frame(REMOVED_K, b""))
                            await writer.drain()
                            return
                        continue
                    self.on_message(decode_message(payload))
                elif kind == REQ_K:
                    self._spawn(self._answer(writer, payload))
                elif kind == SNAP_K:
                    if sender not in self.allowed:
                        return
                    await self._receive_snapshot(reader, writer, decode_message(payload))
                    return
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        except Exception:  # noqa: BLE001 - garbage from a peer closes its connection, nothing more
            log.exception("peer connection failed")
        finally:
            self._conns.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, payload: bytes) -> None:
        if len(payload) < 9:
            return
        cid, method = struct.unpack_from(">QB", payload)
        try:
            body = await self.handle_rpc(method, payload[9:])
            out = struct.pack(">QB", cid, RPC_OK) + body
        except Exception as e:  # noqa: BLE001 - the caller gets the error text
            out = struct.pack(">QB", cid, RPC_ERR) + str(e).encode()
        try:
            writer.write(frame(RESP_K, out))
            await writer.drain()
        except OSError:
            pass

    async def _receive_snapshot(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, m: Message) -> None:
        meta = m.snapshot.meta if m.snapshot is not None else None
        if meta is None:
            return
        os.makedirs(self.snap_dir, exist_ok=True)
        path = os.path.join(self.snap_dir, f"{meta.term:016x}-{meta.index:016x}.recv.db")
        loop = asyncio.get_running_loop()
        with open(path, "wb") as f:
            while True:
                kind, payload = await read_frame(reader)
                if kind == CHUNK_K:
                    await loop.run_in_executor(None, f.write, payload)
                elif kind == END_K:
                    break
                else:
                    raise ConnectionError("unexpected frame in a snapshot")
            f.flush()
            await loop.run_in_executor(None, os.fsync, f.fileno())
        m.snapshot.data = path
        log.info("received snapshot %s from %x", m.snapshot, m.frm)
        self.on_message(m)
        writer.write(frame(ACK_K, b""))
        await writer.drain()

    async def close(self) -> None:
        self.closed = True
        for p in self.peers.values():
            p.close()
        self.peers.clear()
        for s in self._servers:
            s.close()
        for w in list(self._conns):
            w.close()
        for t in list(self._tasks):
            t.cancel()
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 2)
            except asyncio.TimeoutError:
                pass


# member-to-member calls
RPC_MEMBERS, RPC_LEASE_RENEW, RPC_LEASE_TTL = 1, 2, 3


async def fetch_from_any(urls: list[str], method: int, body: bytes, timeout: float = 5.0) -> bytes:
    """One call to the first reachable of urls, outside any cluster (a joining member's question)."""
    last: Exception | None = None
    for url in urls:
        try:
            host, port = hostport(url)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            last = e
            continue
        try:
            writer.write(frame(HELLO_K, HELLO.pack(0, 0)) + frame(REQ_K, struct.pack(">QB", 1, method) + body))
            await writer.drain()
            while True:
                kind, payload = await asyncio.wait_for(read_frame(reader), timeout)
                if kind == REMOVED_K:
                    # the cluster removed us (etcd answers a removed member's messages with 410)
                    self.t.on_removed()
                    return
                if kind == RESP_K and len(payload) >= 9:
                    _, status = struct.unpack_from(">QB", payload)
                    if status != RPC_OK:
                        raise RPCError(payload[9:].decode(errors="replace"))
                    return payload[9:]
        except (OSError, ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            last = e
        finally:
            writer.close()
    raise RPCError(f"no peer answered at {', '.join(urls)}: {last!r}")
