"""The server side of one HTTP/2 connection, sans I/O (RFC 9113), as much of it as gRPC uses.

    conn = Connection()
    wire(conn.data_to_send())                 # our SETTINGS first
    for event in conn.receive_data(bytes_in): ...
    conn.send_headers(sid, block); conn.send_data(sid, data); conn.send_headers(sid, trailers, True)
    wire(conn.data_to_send())

Events: RequestReceived (a new stream's headers), DataReceived, StreamReset (the client reset a
stream, or we had to), ConnectionClosed (a GOAWAY either way; the caller flushes and closes).
PING, SETTINGS and WINDOW_UPDATE are answered or applied inside. Flow control: what a stream
may not send yet (its window or the connection's is spent) waits in the stream, in order, and
goes out when the client opens the window; trailers wait behind their data. Received data is
acknowledged (WINDOW_UPDATE) as it arrives, in batches: the gRPC layer consumes every message
at once and limits message sizes itself.

Errors the client causes never raise out of receive_data: a stream error resets the stream, a
connection error queues a GOAWAY with its code and ends the connection (ConnectionClosed).
No server push, no priorities (PRIORITY frames and priority fields are read and ignored),
no extended CONNECT.
"""
from __future__ import annotations

from dataclasses import dataclass

from server.http2 import frames as f
from server.http2.headers import Decoder, HeaderError, Headers

RECV_STREAM_WINDOW = 4 << 20  # what one stream may send us before we acknowledge it
RECV_CONN_WINDOW = 16 << 20  # what the whole connection may
MAX_HEADER_BLOCK = 1 << 20  # bytes of HEADERS + CONTINUATION payload for one block


@dataclass(frozen=True, slots=True)
class RequestReceived:
    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True)
class DataReceived:
    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamReset:
    stream_id: int
    code: int
    by_client: bool


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    code: int
    by_client: bool
    reason: str


class ProtocolError(Exception):
    """A connection error: GOAWAY with code, then the connection ends."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code


class _Stream:
    __slots__ = ("id", "send_window", "pending", "pending_bytes", "trailers", "remote_closed", "local_closed",
                 "recv_window", "recv_unacked")

    def __init__(self, sid: int, send_window: int) -> None:
        self.id = sid
        self.send_window = send_window
        self.pending: list[bytes] = []  # data not yet allowed out by flow control, in order
        self.pending_bytes = 0
        self.trailers: bytes | None = None  # a trailers block waiting behind pending data
        self.remote_closed = False  # the client sent END_STREAM
        self.local_closed = False  # we queued END_STREAM (it may still wait behind pending data)
        self.recv_window = RECV_STREAM_WINDOW
        self.recv_unacked = 0


class Connection:
    def __init__(self) -> None:
        self._buf = b""
        self._preface = False
        self._out: list[bytes] = [
            f.settings({f.INITIAL_WINDOW_SIZE: RECV_STREAM_WINDOW, f.ENABLE_PUSH: 0}),
            f.window_update(0, RECV_CONN_WINDOW - f.DEFAULT_WINDOW),
        ]
        self._decoder = Decoder()
        self.streams: dict[int, _Stream] = {}
        self.highest_stream_id = 0  # the last stream the client opened
        self.send_window = f.DEFAULT_WINDOW  # the connection's, for what we send
        self.peer_initial_window = f.DEFAULT_WINDOW
        self.peer_max_frame = f.DEFAULT_MAX_FRAME
        self._recv_window = RECV_CONN_WINDOW
        self._recv_unacked = 0
        self._continuing: tuple[int, int, bytearray] | None = None  # (stream, flags, block) until END_HEADERS
        self._blocked: dict[int, _Stream] = {}  # streams with pending data, in the order they blocked
        self.failed = False  # a connection error: GOAWAY sent, nothing more is read
        self.accepting = True  # False once either side sent GOAWAY: no new streams

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes) -> list:
        """Feed bytes from the client; returns the events they make."""
        if self.failed:
            return []
        events: list = []
        buf = self._buf + data if self._buf else data
        off = 0
        try:
            if not self._preface:
                n = min(len(buf), len(f.PREFACE))
                if buf[:n] != f.PREFACE[:n]:
                    raise ProtocolError(f.PROTOCOL_ERROR, "not an HTTP/2 client preface")
                if n < len(f.PREFACE):
                    self._buf = buf
                    return events
                self._preface = True
                off = len(f.PREFACE)
            end = len(buf)
            while end - off >= f.HEADER_SIZE:
                length = (buf[off] << 16) | (buf[off + 1] << 8) | buf[off + 2]
                if length > f.DEFAULT_MAX_FRAME:  # the largest frame we allow (we never raise it)
                    raise ProtocolError(f.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {f.DEFAULT_MAX_FRAME}")
                if end - off < f.HEADER_SIZE + length:
                    break
                kind, flags = buf[off + 3], buf[off + 4]
                sid = int.from_bytes(buf[off + 5:off + 9], "big") & 0x7FFFFFFF
                payload = buf[off + 9:off + 9 + length]
                off += f.HEADER_SIZE + length
                self._frame(kind, flags, sid, payload, events)
            self._buf = buf[off:] if off < end else b""
        except ProtocolError as e:
            self._fail(e.code, str(e), events)
        if not self.failed:
            self._ack_received()
        return events

    def _fail(self, code: int, reason: str, events: list) -> None:
        if not self.failed:
            self._out.append(f.goaway(self.highest_stream_id, code, reason.encode()[:200]))
            events.append(ConnectionClosed(code, False, reason))
        self.failed, self.accepting = True, False
        self._buf = b""

    def _frame(self, kind: int, flags: int, sid: int, payload: bytes, events: list) -> None:
        if self._continuing is not None and kind != f.CONTINUATION:
            raise ProtocolError(f.PROTOCOL_ERROR, "a header block was interrupted by another frame")
        if kind == f.DATA:
            self._data(flags, sid, payload, events)
        elif kind == f.HEADERS:
            self._headers(flags, sid, payload, events)
        elif kind == f.CONTINUATION:
            self._continuation(flags, sid, payload, events)
        elif kind == f.SETTINGS:
            self._settings(flags, sid, payload)
        elif kind == f.WINDOW_UPDATE:
            self._window_update(sid, payload, events)
        elif kind == f.PING:
            if sid != 0 or len(payload) != 8:
                raise ProtocolError(f.PROTOCOL_ERROR if sid else f.FRAME_SIZE_ERROR, "bad PING frame")
            if not flags & f.ACK:
                self._out.append(f.ping_ack(payload))
        elif kind == f.RST_STREAM:
            if sid == 0 or len(payload) != 4:
                raise ProtocolError(f.PROTOCOL_ERROR if sid == 0 else f.FRAME_SIZE_ERROR, "bad RST_STREAM frame")
            if sid > self.highest_stream_id:
                raise ProtocolError(f.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            if self._forget(sid):
                events.append(StreamReset(sid, f.u32(payload), True))
        elif kind == f.GOAWAY:
            if sid != 0 or len(payload) < 8:
                raise ProtocolError(f.PROTOCOL_ERROR, "bad GOAWAY frame")
            self.accepting = False  # the client opens no more streams; the open ones go on
            events.append(ConnectionClosed(f.u32(payload, 4), True, payload[8:].decode("utf-8", "replace")))
        elif kind == f.PRIORITY:
            if sid == 0 or len(payload) != 5:
                raise ProtocolError(f.PROTOCOL_ERROR, "bad PRIORITY frame")
        elif kind == f.PUSH_PROMISE:
            raise ProtocolError(f.PROTOCOL_ERROR, "a client may not push")
        # unknown frame types are ignored (RFC 9113 4.1)

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & f.PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ProtocolError(f.PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1:len(payload) - payload[0]]

    def _data(self, flags: int, sid: int, payload: bytes, events: list) -> None:
        if sid == 0:
            raise ProtocolError(f.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if size > self._recv_window:
            raise ProtocolError(f.FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        self._recv_window -= size
        self._recv_unacked += size
        data = self._unpad(flags, payload)
        s = self.streams.get(sid)
        if s is None:
            if sid > self.highest_stream_id:
                raise ProtocolError(f.PROTOCOL_ERROR, f"DATA on idle stream {sid}")
            return  # a stream we closed or reset: data in flight, counted above and dropped
        if s.remote_closed:
            self._reset(s, f.STREAM_CLOSED, events)
            return
        if size > s.recv_window:
            self._reset(s, f.FLOW_CONTROL_ERROR, events)
            return
        s.recv_window -= size
        s.recv_unacked += size
        end = bool(flags & f.END_STREAM)
        if end:
            s.remote_closed = True
            self._maybe_forget(s)
        elif s.recv_unacked >= RECV_STREAM_WINDOW // 2:
            self._out.append(f.window_update(sid, s.recv_unacked))
            s.recv_window += s.recv_unacked
            s.recv_unacked = 0
        events.append(DataReceived(sid, data, end))

    def _headers(self, flags: int, sid: int, payload: bytes, events: list) -> None:
        if sid == 0:
            raise ProtocolError(f.PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = self._unpad(flags, payload)
        if flags & f.PRIORITY_FLAG:
            if len(payload) < 5:
                raise ProtocolError(f.PROTOCOL_ERROR, "HEADERS too short for its priority")
            payload = payload[5:]
        if flags & f.END_HEADERS:
            self._header_block(sid, flags, payload, events)
        else:
            self._continuing = (sid, flags, bytearray(payload))

    def _continuation(self, flags: int, sid: int, payload: bytes, events: list) -> None:
        if self._continuing is None or self._continuing[0] != sid:
            raise ProtocolError(f.PROTOCOL_ERROR, "CONTINUATION without a header block to continue")
        block = self._continuing[2]
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise ProtocolError(f.ENHANCE_YOUR_CALM, f"header block over {MAX_HEADER_BLOCK} bytes")
        if flags & f.END_HEADERS:
            first = self._continuing[1]
            self._continuing = None
            self._header_block(sid, first, bytes(block), events)

    def _header_block(self, sid: int, flags: int, block: bytes, events: list) -> None:
        try:
            headers = self._decoder.decode(block)  # always, to keep the dynamic table in step
        except HeaderError as e:
            raise ProtocolError(f.COMPRESSION_ERROR, str(e)) from None
        end = bool(flags & f.END_STREAM)
        s = self.streams.get(sid)
        if s is not None:  # trailers from the client; gRPC has none, but they may end the stream
            if s.remote_closed or not end:
                self._reset(s, f.PROTOCOL_ERROR, events)
                return
            s.remote_closed = True
            self._maybe_forget(s)
            events.append(DataReceived(sid, b"", True))
            return
        if sid <= self.highest_stream_id or sid % 2 == 0:
            if sid % 2 == 0 or sid == self.highest_stream_id:
                raise ProtocolError(f.PROTOCOL_ERROR, f"HEADERS on stream {sid}, which a client cannot open")
            raise ProtocolError(f.STREAM_CLOSED, f"HEADERS on closed stream {sid}")
        self.highest_stream_id = sid
        if not self.accepting:  # after a GOAWAY: refused, the client may retry it elsewhere
            self._out.append(f.rst_stream(sid, f.REFUSED_STREAM))
            return
        s = _Stream(sid, self.peer_initial_window)
        s.remote_closed = end
        self.streams[sid] = s
        events.append(RequestReceived(sid, headers, end))

    def _settings(self, flags: int, sid: int, payload: bytes) -> None:
        if sid != 0:
            raise ProtocolError(f.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise ProtocolError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(f.FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        for key, value in f.parse_settings(payload):
            if key == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise ProtocolError(f.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over 2^31-1")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for s in self.streams.values():
                    s.send_window += delta
                    if s.send_window > f.MAX_WINDOW:
                        raise ProtocolError(f.FLOW_CONTROL_ERROR, "a stream window over 2^31-1")
            elif key == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME <= value <= f.MAX_FRAME_LIMIT:
                    raise ProtocolError(f.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self.peer_max_frame = value
            elif key == f.ENABLE_PUSH and value > 1:
                raise ProtocolError(f.PROTOCOL_ERROR, "ENABLE_PUSH neither 0 nor 1")
            # HEADER_TABLE_SIZE: our encoder uses no dynamic table; the others do not bind us
        self._out.append(f.settings_ack())
        self._flush_blocked()

    def _window_update(self, sid: int, payload: bytes, events: list) -> None:
        if len(payload) != 4:
            raise ProtocolError(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE not 4 bytes")
        inc = f.u32(payload) & 0x7FFFFFFF
        if sid == 0:
            if inc == 0:
                raise ProtocolError(f.PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection")
            self.send_window += inc
            if self.send_window > f.MAX_WINDOW:
                raise ProtocolError(f.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
            self._flush_blocked()
            return
        s = self.streams.get(sid)
        if s is None:
            if sid > self.highest_stream_id:
                raise ProtocolError(f.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if inc == 0:
            self._reset(s, f.PROTOCOL_ERROR, events)
            return
        s.send_window += inc
        if s.send_window > f.MAX_WINDOW:
            self._reset(s, f.FLOW_CONTROL_ERROR, events)
            return
        if s.pending or s.trailers is not None:
            self._flush_stream(s)

    def _ack_received(self) -> None:
        """Give back the connection's receive window in batches (half a window at a time);
        streams get theirs back as their data arrives (_data)."""
        if self._recv_unacked >= RECV_CONN_WINDOW // 2 and not self.failed:
            self._out.append(f.window_update(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0

    # ----------------------------------------------------------------- output
    def send_headers(self, sid: int, block: bytes, end_stream: bool = False) -> None:
        """A header block (response headers, or trailers with end_stream). Not flow controlled."""
        s = self.streams.get(sid)
        if s is None or s.local_closed:
            return
        if end_stream and (s.pending or s.trailers is not None):
            s.trailers = block  # after the data still waiting for window
            s.local_closed = True
            return
        self._out.append(self._header_frames(sid, block, end_stream))
        if end_stream:
            s.local_closed = True
            self._closed_locally(s)

    def _header_frames(self, sid: int, block: bytes, end_stream: bool) -> bytes:
        limit = self.peer_max_frame
        es = f.END_STREAM if end_stream else 0
        if len(block) <= limit:
            return f.frame(f.HEADERS, f.END_HEADERS | es, sid, block)
        parts = [f.frame(f.HEADERS, es, sid, block[:limit])]
        for i in range(limit, len(block), limit):
            last = i + limit >= len(block)
            parts.append(f.frame(f.CONTINUATION, f.END_HEADERS if last else 0, sid, block[i:i + limit]))
        return b"".join(parts)

    def send_data(self, sid: int, data: bytes) -> None:
        """Data on a stream, sent as far as the windows allow; the rest waits in the stream."""
        s = self.streams.get(sid)
        if s is None or s.local_closed or not data:
            return
        if s.pending:
            s.pending.append(data)
            s.pending_bytes += len(data)
            return
        rest = self._send_allowed(s, data)
        if rest:
            s.pending.append(rest)
            s.pending_bytes += len(rest)
            self._blocked[sid] = s

    def _send_allowed(self, s: _Stream, data: bytes) -> bytes:
        """Frame as much of data as the windows allow; returns what is left."""
        allowed = min(len(data), s.send_window, self.send_window)
        if allowed <= 0:
            return data
        limit = self.peer_max_frame
        sid = s.id
        if allowed <= limit:
            self._out.append(f.frame(f.DATA, 0, sid, data[:allowed] if allowed < len(data) else data))
        else:
            for i in range(0, allowed, limit):
                self._out.append(f.frame(f.DATA, 0, sid, data[i:min(i + limit, allowed)]))
        s.send_window -= allowed
        self.send_window -= allowed
        return data[allowed:]

    def _flush_stream(self, s: _Stream) -> None:
        while s.pending:
            chunk = s.pending[0]
            rest = self._send_allowed(s, chunk)
            s.pending_bytes -= len(chunk) - len(rest)
            if rest:
                s.pending[0] = rest
                self._blocked[s.id] = s
                return
            s.pending.pop(0)
        self._blocked.pop(s.id, None)
        if s.trailers is not None:
            block, s.trailers = s.trailers, None
            self._out.append(self._header_frames(s.id, block, True))
            self._closed_locally(s)

    def _flush_blocked(self) -> None:
        for s in list(self._blocked.values()):
            if self.send_window <= 0:
                return
            self._flush_stream(s)

    def pending(self, sid: int) -> int:
        """Bytes of data on the stream still waiting for the client's window."""
        s = self.streams.get(sid)
        return s.pending_bytes if s is not None else 0

    def reset_stream(self, sid: int, code: int = f.CANCEL) -> None:
        s = self.streams.get(sid)
        if s is not None:
            self._out.append(f.rst_stream(sid, code))
            self._forget(sid)

    def _reset(self, s: _Stream, code: int, events: list) -> None:
        self._out.append(f.rst_stream(s.id, code))
        self._forget(s.id)
        events.append(StreamReset(s.id, code, False))

    def _closed_locally(self, s: _Stream) -> None:
        if not s.remote_closed:
            # the answer is complete: tell the client to stop sending on this stream (gRPC
            # servers end a stream the client has not half-closed this way)
            self._out.append(f.rst_stream(s.id, f.NO_ERROR))
        self._forget(s.id)

    def _maybe_forget(self, s: _Stream) -> None:
        if s.remote_closed and s.local_closed and not s.pending and s.trailers is None:
            self._forget(s.id)

    def _forget(self, sid: int) -> bool:
        self._blocked.pop(sid, None)
        return self.streams.pop(sid, None) is not None

    def close(self, code: int = f.NO_ERROR, reason: str = "") -> None:
        """Graceful GOAWAY: streams already open finish, new ones are refused."""
        if self.accepting and not self.failed:
            self._out.append(f.goaway(self.highest_stream_id, code, reason.encode()[:200]))
        self.accepting = False

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        return out
