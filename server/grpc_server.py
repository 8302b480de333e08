"""A gRPC server on our own HTTP/2 (server/http2), on the server's event loop.

Why not grpc.aio: on this machine grpc.aio spends about 500 us of CPU on a unary call whose
handler does almost nothing (serializable Range), about 2.2 times what etcd spends on the same
call; every call crosses grpc core's threads and the event loop several times. Here a call is
parsed, dispatched and answered on the loop that runs the handler, and under load the answers
of one loop round leave in one socket write: about a tenth of the CPU (docs/benchmarks.md,
docs/design-choices.md). grpc.aio stays available (ETCDPROOF_GRPC=grpcio) as a yardstick.

What it implements of gRPC over HTTP/2 (the spec's PROTOCOL-HTTP2): unary, server-, client-
and bidirectional-streaming calls; length-prefixed messages, gzip/deflate-compressed requests;
deadlines (grpc-timeout), cancellation by RST_STREAM, metadata (-bin values base64-decoded);
status and percent-encoded message in trailers, trailers-only answers for errors; message size
limits (RESOURCE_EXHAUSTED, as grpc-go words it); flow control both ways, with a streaming
handler held back while its client does not read; GOAWAY and a grace period on stop. Requests
that are not HTTP/2 (an HTTP/1.1 client on the gRPC port, as etcd's cmux allows) go to the
HTTP/JSON gateway when one is given, else get a one-line HTTP 400.

Handlers are the servicer methods of server/grpc_api.py: handler(request, context) returning
a response (or an async iterator of them for server streams); context offers abort(),
invocation_metadata(), time_remaining() and peer(), the parts grpc.aio's context they use.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import grpc

from server.http2 import frames as h2f
from server.http2.connection import Connection, ConnectionClosed, DataReceived, RequestReceived, StreamReset
from server.http2.headers import encode, literal

log = logging.getLogger("etcdproof.grpc")

RESPONSE_HEADERS = encode([(b":status", b"200"), (b"content-type", b"application/grpc")])
OK_TRAILERS = literal(b"grpc-status", b"0")
STREAM_BUFFER = 1 << 20  # bytes a streaming answer may have queued before its handler waits
_PREFIX = struct.Struct(">BI")
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_RESERVED = frozenset((b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding"))
_END = object()  # the end of a request stream
STOPPED = (grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")  # etcd's ErrGRPCStopped


class Abort(Exception):
    """Raised by Context.abort: the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC: its handler and how its messages are read and written."""

    client_streaming: bool
    server_streaming: bool
    handler: Callable[..., Any]
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]


def grpc_message(details: str) -> bytes:
    """Percent-encoding of grpc-message (gRPC's PROTOCOL-HTTP2: printable ASCII but '%' as is)."""
    raw = details.encode("utf-8", "replace")
    if all(0x20 <= b <= 0x7E and b != 0x25 for b in raw):
        return raw
    return b"".join(bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b for b in raw)


def status_block(code: grpc.StatusCode, details: str, headers_sent: bool) -> bytes:
    """Trailers (or, before any headers, a trailers-only answer) carrying a status."""
    block = literal(b"grpc-status", str(code.value[0]).encode())
    if details:
        block += literal(b"grpc-message", grpc_message(details))
    return block if headers_sent else RESPONSE_HEADERS + block


def parse_timeout(value: bytes) -> float | None:
    """Seconds from a grpc-timeout value (at most 8 digits and a unit); None if malformed."""
    unit = _TIMEOUT_UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits or len(digits) > 8 or not digits.isdigit():
        return None
    return int(digits) * unit


class Context:
    """What a handler may ask of its call (the subset of grpc.aio's ServicerContext in use)."""

    __slots__ = ("_call",)

    def __init__(self, call: "_Call") -> None:
        self._call = call

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._call.metadata

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise Abort(code, details)

    def time_remaining(self) -> float | None:
        d = self._call.deadline
        return None if d is None else max(0.0, d - asyncio.get_running_loop().time())

    def peer(self) -> str:
        return self._call.proto.peer


class _Call:
    __slots__ = ("proto", "sid", "method", "metadata", "deadline", "timer", "task", "buf", "requests", "queue",
                 "headers_sent", "done", "encoding", "drain")

    def __init__(self, proto: "_Protocol", sid: int, method: Method, metadata: tuple, encoding: bytes) -> None:
        self.proto = proto
        self.sid = sid
        self.method = method
        self.metadata = metadata
        self.encoding = encoding
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.buf: bytes | bytearray = b""  # a message not yet complete
        self.requests: list[Any] = []  # a unary request, until the stream ends
        self.queue: asyncio.Queue | None = asyncio.Queue() if method.client_streaming else None
        self.headers_sent = False
        self.done = False  # the status went out (or the stream is gone): nothing more is sent
        self.drain: asyncio.Future | None = None


class _Protocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: "GrpcServer") -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.conn = Connection()
        self.calls: dict[int, _Call] = {}
        self.peer = ""
        self.paused = False
        self._flush_pending = False
        self._first = True

    # ----------------------------------------------------------- transport
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        addr = transport.get_extra_info("peername")
        self.peer = f"ipv4:{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else str(addr)
        self.server.protocols.add(self)
        # our SETTINGS wait for the client's first bytes: an HTTP/1.x client must not get them

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.protocols.discard(self)
        self.transport = None
        for call in list(self.calls.values()):
            self._abandon(call)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake_drained()

    def data_received(self, data: bytes) -> None:
        if self._first:
            self._first = False
            if not data.startswith(h2f.PREFACE[:min(len(data), len(h2f.PREFACE))]):
                self._not_http2(data)
                return
        try:
            events = self.conn.receive_data(data)
            for ev in events:
                if type(ev) is DataReceived:
                    self._on_data(ev)
                elif type(ev) is RequestReceived:
                    self._on_request(ev)
                elif type(ev) is StreamReset:
                    call = self.calls.get(ev.stream_id)
                    if call is not None:
                        self._abandon(call)
                elif type(ev) is ConnectionClosed:
                    if not ev.by_client:
                        log.info("closing the connection of %s: %s", self.peer, ev.reason)
            if self.calls:
                self._wake_drained()
        except Exception:  # noqa: BLE001 - a bug here must cost one connection, not the server
            log.exception("HTTP/2 connection of %s failed", self.peer)
            self.conn.close(h2f.INTERNAL_ERROR, "internal error")
            self._flush()
            self._close()
            return
        self._flush()
        if self.conn.failed or (not self.conn.accepting and not self.calls):
            self._close()

    def _not_http2(self, data: bytes) -> None:
        """An HTTP/1.x client on the gRPC port: the gateway serves it, as etcd's does."""
        gateway = self.server.http1_factory
        t = self.transport
        if gateway is None or t is None or not data[:1].isalpha():
            if t is not None:
                t.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                        b"this port speaks gRPC (HTTP/2); the HTTP/JSON gateway is not served here\n")
                t.close()
            return
        self.server.protocols.discard(self)
        proto = gateway()
        t.set_protocol(proto)
        proto.connection_made(t)
        proto.data_received(data)

    def _write(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(data)

    def _flush(self) -> None:
        self._flush_pending = False
        self._write(self.conn.data_to_send())

    def _want_flush(self) -> None:
        """Write at the end of this loop round: every answer ready by then goes in one write."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # --------------------------------------------------------------- calls
    def _on_request(self, ev: RequestReceived) -> None:
        sid = ev.stream_id
        path = b""
        timeout: float | None = None
        content_type = b""
        encoding = b""
        metadata = []
        for k, v in ev.headers:
            if k[:1] == b":":
                if k == b":path":
                    path = v
            elif k in _RESERVED:
                if k == b"content-type":
                    content_type = v
                elif k == b"grpc-timeout":
                    timeout = parse_timeout(v)
                elif k == b"grpc-encoding":
                    encoding = v
            elif k.endswith(b"-bin"):
                try:
                    metadata.append((k.decode("latin-1"), base64.b64decode(v + b"=" * (-len(v) % 4))))
                except ValueError:
                    pass
            else:
                metadata.append((k.decode("latin-1"), v.decode("latin-1")))
        if not content_type.startswith(b"application/grpc"):
            self.conn.send_headers(sid, encode([(b":status", b"415"), (b"content-type", b"text/plain")]), True)
            return
        method = self.server.methods.get(path.decode("latin-1"))
        if method is None:
            self._status_only(sid, grpc.StatusCode.UNIMPLEMENTED, self.server.unknown(path.decode("latin-1")))
            return
        call = _Call(self, sid, method, tuple(metadata), encoding)
        self.calls[sid] = call
        if timeout is not None:
            call.deadline = self.loop.time() + timeout
            call.timer = self.loop.call_at(call.deadline, self._expire, call)
        if method.client_streaming:
            call.task = self.loop.create_task(self._run(call, None))
        if ev.end_stream:
            self._end_of_requests(call)

    def _status_only(self, sid: int, code: grpc.StatusCode, details: str) -> None:
        self.conn.send_headers(sid, status_block(code, details, False), True)

    def _on_data(self, ev: DataReceived) -> None:
        call = self.calls.get(ev.stream_id)
        if call is None or call.done:
            return
        if call.buf:  # the rest of a message begun earlier: grown in place, not copied per frame
            call.buf += ev.data
            buf: bytes | bytearray = call.buf
        else:
            buf = ev.data
        off, n = 0, len(buf)
        limit = self.server.max_receive
        while n - off >= 5:
            flag, size = _PREFIX.unpack_from(buf, off)
            if size > limit:
                self._finish(call, grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"grpc: received message larger than max ({size} vs. {limit})")
                return
            if n - off - 5 < size:
                break
            raw = bytes(buf[off + 5:off + 5 + size])
            off += 5 + size
            if flag:
                try:
                    raw = self._decompress(call, raw, limit)
                except Abort as a:
                    self._finish(call, a.code, a.details)
                    return
            try:
                request = call.method.decode(raw)
            except Exception as e:  # noqa: BLE001 - grpc_api's decoders turn bad input into answers
                self._finish(call, grpc.StatusCode.INTERNAL, f"grpc: error unmarshalling request: {e}")
                return
            if call.queue is not None:
                call.queue.put_nowait(request)
            else:
                call.requests.append(request)
        if off >= n:
            call.buf = b""
        elif isinstance(buf, bytearray):
            del buf[:off]
        else:
            call.buf = bytearray(buf[off:])
        if ev.end_stream:
            self._end_of_requests(call)

    @staticmethod
    def _decompress(call: _Call, raw: bytes, limit: int) -> bytes:
        enc = call.encoding
        if enc in (b"", b"identity"):
            raise Abort(grpc.StatusCode.INTERNAL, "grpc: compressed flag set with identity or empty encoding")
        if enc not in (b"gzip", b"deflate"):
            raise Abort(grpc.StatusCode.UNIMPLEMENTED,
                        f'grpc: Decompressor is not installed for grpc-encoding "{enc.decode("latin-1")}"')
        try:
            # bounded: a small message must not inflate into gigabytes before it is measured
            d = zlib.decompressobj(zlib.MAX_WBITS | 16 if enc == b"gzip" else zlib.MAX_WBITS)
            out = d.decompress(raw, limit + 1)
            if not d.eof and len(out) <= limit:
                raise zlib.error("truncated stream")
        except zlib.error as e:
            raise Abort(grpc.StatusCode.INTERNAL, f"grpc: failed to decompress the received message: {e}") from None
        if len(out) > limit:
            raise Abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"grpc: received message after decompression larger than max ({len(out)} vs. {limit})")
        return out

    def _end_of_requests(self, call: _Call) -> None:
        if call.done:
            return
        if call.buf:
            self._finish(call, grpc.StatusCode.INTERNAL, "grpc: the request stream ended inside a message")
            return
        if call.queue is not None:
            call.queue.put_nowait(_END)
            return
        if len(call.requests) != 1:
            self._finish(call, grpc.StatusCode.INTERNAL, f"grpc: expected one request message, got {len(call.requests)}")
            return
        call.task = self.loop.create_task(self._run(call, call.requests.pop()))

    async def _requests(self, call: _Call) -> AsyncIterator[Any]:
        q = call.queue
        assert q is not None
        while True:
            item = await q.get()
            if item is _END:
                return
            yield item

    async def _run(self, call: _Call, request: Any) -> None:
        m = call.method
        ctx = Context(call)
        try:
            arg = self._requests(call) if m.client_streaming else request
            if m.server_streaming:
                responses = m.handler(arg, ctx)
                try:
                    async for resp in responses:
                        await self._send_message(call, m.encode(resp))
                finally:
                    if hasattr(responses, "aclose"):  # its finally blocks run now, not at GC
                        await responses.aclose()
                self._finish(call, None, "")
            else:
                resp = m.handler(arg, ctx)
                if asyncio.iscoroutine(resp) or isinstance(resp, asyncio.Future):
                    resp = await resp
                self._answer(call, m.encode(resp))
        except Abort as a:
            self._finish(call, a.code, a.details)
        except asyncio.CancelledError:
            if not call.done:  # cancelled by the server stopping: told as etcd tells it, which
                # clients take as a reason to retry elsewhere (a watch reconnects), not to give up
                self._finish(call, *STOPPED)
        except Exception as e:  # noqa: BLE001 - grpc_api's handlers catch their own; this is a safety net
            log.exception("call %s failed", call.sid)
            self._finish(call, grpc.StatusCode.UNKNOWN, f"etcdproof: internal error: {e!r}")

    def _answer(self, call: _Call, body: bytes) -> None:
        """A unary call's response: headers, message and status at once."""
        if call.done:
            return
        call.done = True
        self._forget(call)
        sid = call.sid
        conn = self.conn
        conn.send_headers(sid, RESPONSE_HEADERS)
        conn.send_data(sid, _PREFIX.pack(0, len(body)) + body)
        conn.send_headers(sid, OK_TRAILERS, True)
        self._want_flush()

    async def _send_message(self, call: _Call, body: bytes) -> None:
        if call.done:
            raise asyncio.CancelledError
        if not call.headers_sent:
            call.headers_sent = True
            self.conn.send_headers(call.sid, RESPONSE_HEADERS)
        self.conn.send_data(call.sid, _PREFIX.pack(0, len(body)) + body)
        self._want_flush()
        while (self.paused or self.conn.pending(call.sid) > STREAM_BUFFER) and not call.done:
            call.drain = self.loop.create_future()
            await call.drain
        if call.done:
            raise asyncio.CancelledError

    def _wake_drained(self) -> None:
        if self.paused:
            return
        for call in self.calls.values():
            d = call.drain
            if d is not None and not d.done() and self.conn.pending(call.sid) <= STREAM_BUFFER:
                d.set_result(None)

    def _finish(self, call: _Call, code: grpc.StatusCode | None, details: str) -> None:
        """End the call with a status (None: OK)."""
        if call.done:
            return
        call.done = True
        self._forget(call)
        if code is None:
            block = OK_TRAILERS if call.headers_sent else RESPONSE_HEADERS + OK_TRAILERS
        else:
            block = status_block(code, details, call.headers_sent)
        self.conn.send_headers(call.sid, block, True)
        self._want_flush()
        if call.task is not None and call.task is not asyncio.current_task():
            call.task.cancel()

    def _expire(self, call: _Call) -> None:
        call.timer = None
        self._finish(call, grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")

    def _forget(self, call: _Call) -> None:
        if self.calls.get(call.sid) is call:
            del self.calls[call.sid]
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if call.drain is not None and not call.drain.done():
            call.drain.set_result(None)
        if not self.calls and not self.conn.accepting:
            self.loop.call_soon(self._close_if_idle)

    def _close_if_idle(self) -> None:
        if not self.calls:
            self._flush()
            self._close()

    def _abandon(self, call: _Call) -> None:
        """The client is gone (reset, or the connection closed): stop the handler, send nothing."""
        call.done = True
        self._forget(call)
        if call.task is not None:
            call.task.cancel()

    def goaway(self) -> None:
        self.conn.close()
        self._flush()
        if not self.calls:
            self._close()

    def cancel_all(self) -> None:
        for call in list(self.calls.values()):
            if call.task is not None:
                call.task.cancel()
            else:
                self._finish(call, *STOPPED)
        self._flush()


def _listen(host: str, port: int, backlog: int = 1024) -> list[socket.socket]:
    """Listening sockets for every address host resolves to (no SO_REUSEPORT: a second server on
    the port must fail, not share it)."""
    out: list[socket.socket] = []
    try:
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                   flags=socket.AI_PASSIVE):
            sock = socket.socket(family, kind, proto)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in out:
            sock.close()
        raise
    return out


class GrpcServer:
    """The gRPC services on addresses ("host:port"), bound by bind(), served after start()."""

    def __init__(self, methods: dict[str, Method], max_receive: int,
                 http1_factory: Callable[[], asyncio.Protocol] | None = None) -> None:
        self.methods = methods
        self.max_receive = max_receive
        self.http1_factory = http1_factory  # serves HTTP/1.x clients on the same port (the gateway)
        self.protocols: set[_Protocol] = set()
        self._servers: list[asyncio.base_events.Server] = []

    def unknown(self, path: str) -> str:
        """grpc-go's words for a path no handler serves (etcd's clients see them)."""
        service, _, method = path.lstrip("/").rpartition("/")
        if any(p.startswith(f"/{service}/") for p in self.methods):
            return f"unknown method {method} for service {service}"
        return f"unknown service {service or method}"

    async def bind(self, addresses: list[str]) -> None:
        """Bind and listen on addresses; connections queue until start(), as with etcd (and
        grpc.aio), whose client port accepts before the member serves: clients wait, they are
        not refused."""
        loop = asyncio.get_running_loop()
        for addr in addresses:
            host, _, port = addr.rpartition(":")
            try:
                for sock in _listen(host.strip("[]"), int(port)):
                    self._servers.append(await loop.create_server(lambda: _Protocol(self), sock=sock,
                                                                  start_serving=False))
            except (OSError, ValueError) as e:
                for s in self._servers:
                    s.close()
                raise OSError(f"cannot listen for clients on {addr}: {e}") from None

    @property
    def ports(self) -> list[int]:
        """The ports bound (useful after binding port 0)."""
        return [sock.getsockname()[1] for srv in self._servers for sock in srv.sockets]

    async def start(self) -> None:
        for s in self._servers:
            await s.start_serving()

    async def stop(self, grace: float) -> None:
        """Refuse new connections and streams; let calls in flight finish for up to grace seconds."""
        for s in self._servers:
            s.close()
        for p in list(self.protocols):
            p.goaway()
        deadline = asyncio.get_running_loop().time() + grace
        while any(p.calls for p in self.protocols) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for p in list(self.protocols):
            p.cancel_all()
        for _ in range(3):  # the cancelled handlers run their cleanup and send their status
            await asyncio.sleep(0)
        for p in list(self.protocols):
            p._flush()
            p._close()
        for s in self._servers:
            await s.wait_closed()
