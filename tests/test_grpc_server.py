"""server/grpc_server.py, our gRPC over HTTP/2, against grpcio's client (grpc core, C), with toy
handlers: every kind of call, metadata, statuses (percent-encoded messages too), deadlines and
cancellation reaching the handler, message size limits, gzip requests, flow control of large
answers, a streaming handler held back by a slow reader, many calls at once, a graceful stop,
and HTTP/1.1 on the gRPC port. The etcd services on it are tested against real etcd elsewhere
(tests/test_api_errors.py, test_etcdctl_diff.py, test_python_client.py, test_watch_stream.py)."""
from __future__ import annotations

import asyncio
import http.client
import socket
import threading
import time
import urllib.request
from typing import Any, Callable, Iterator

import grpc
import pytest

from server.grpc_server import Context, GrpcServer, Method, parse_timeout, grpc_message

MAX = 64 * 1024


def ident(b: bytes) -> bytes:
    return b


class Toy:
    """Handlers that record what happened to them."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.started: list[str] = []
        self.produced = 0
        self.release = asyncio.Event()

    async def echo(self, req: bytes, ctx: Context) -> bytes:
        md = dict(ctx.invocation_metadata())
        if req == b"metadata":
            return repr(sorted(md.items())).encode()
        if req.startswith(b"abort:"):
            code, _, msg = req[6:].decode().partition(":")
            await ctx.abort(grpc.StatusCode[code], msg)
        if req == b"crash":
            raise RuntimeError("boom")
        if req == b"deadline":
            return repr(ctx.time_remaining()).encode()
        return req

    async def forever(self, req: bytes, ctx: Context) -> bytes:
        self.started.append("forever")
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.append("forever")
        return b""

    async def slow(self, req: bytes, ctx: Context) -> bytes:
        await asyncio.sleep(float(req))
        return b"done"

    async def chunks(self, req: bytes, ctx: Context):
        n, size = (int(x) for x in req.split(b"x"))
        try:
            for i in range(n):
                self.produced += 1
                yield bytes([i % 256]) * size
        finally:
            self.cancelled.append("chunks")

    async def bidi(self, requests, ctx: Context):
        async for r in requests:
            yield b"echo:" + r

    async def total(self, requests, ctx: Context) -> bytes:
        return str(sum([len(r) async for r in requests])).encode()


def methods(toy: Toy) -> dict[str, Method]:
    def m(handler: Callable, cs: bool = False, ss: bool = False) -> Method:
        return Method(cs, ss, handler, ident, ident)
    return {
        "/toy.T/Echo": m(toy.echo), "/toy.T/Forever": m(toy.forever), "/toy.T/Slow": m(toy.slow),
        "/toy.T/Chunks": m(toy.chunks, ss=True), "/toy.T/Bidi": m(toy.bidi, cs=True, ss=True),
        "/toy.T/Total": m(toy.total, cs=True),
    }


class Served:
    """A GrpcServer on its own loop in a thread, on a free loopback port."""

    def __init__(self, http1: Callable | None = None) -> None:
        self.toy = Toy()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self.run(self._start(http1))
        self.address = f"127.0.0.1:{self.server.ports[0]}"

    async def _start(self, http1) -> GrpcServer:
        self.toy.release = asyncio.Event()
        s = GrpcServer(methods(self.toy), MAX, http1)
        await s.bind(["127.0.0.1:0"])
        await s.start()
        return s

    def run(self, coro, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        try:
            self.run(self.server.stop(0.5))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


@pytest.fixture
def channel(served: Served) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(served.address) as ch:
        yield ch


def unary(ch: grpc.Channel, name: str) -> Callable:
    return ch.unary_unary(f"/toy.T/{name}", request_serializer=ident, response_deserializer=ident)


def test_unary_calls_and_their_metadata(channel: grpc.Channel) -> None:
    echo = unary(channel, "Echo")
    assert echo(b"hello", timeout=5) == b"hello"
    assert echo(b"", timeout=5) == b""
    md = echo(b"metadata", metadata=(("token", "abc"), ("x-key-bin", b"\x00\xff")), timeout=5).decode()
    assert "('token', 'abc')" in md and "('x-key-bin', b'\\x00\\xff')" in md


@pytest.mark.parametrize("message", ["etcdserver: key not found", "percent % and ünïcode and \n newline"])
def test_a_status_and_its_message_reach_the_client_intact(channel: grpc.Channel, message: str) -> None:
    with pytest.raises(grpc.RpcError) as e:
        unary(channel, "Echo")(f"abort:NOT_FOUND:{message}".encode(), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and e.value.details() == message


def test_a_handler_exception_is_unknown_and_the_server_goes_on(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        unary(channel, "Echo")(b"crash", timeout=5)
    assert e.value.code() == grpc.StatusCode.UNKNOWN and "boom" in e.value.details()
    assert unary(channel, "Echo")(b"after", timeout=5) == b"after"


def test_unknown_services_and_methods_get_grpc_gos_words(channel: grpc.Channel) -> None:
    for path, words in (("/toy.T/Nope", "unknown method Nope for service toy.T"),
                        ("/other.S/M", "unknown service other.S")):
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)(b"", timeout=5)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.UNIMPLEMENTED, words)


def test_deadlines_reach_the_handler_and_cancel_it(served: Served, channel: grpc.Channel) -> None:
    remaining = float(unary(channel, "Echo")(b"deadline", timeout=7).decode())
    assert 5 < remaining <= 7.1  # the client rounds its grpc-timeout up
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        unary(channel, "Forever")(b"", timeout=0.3)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 3
    deadline = time.monotonic() + 3
    while "forever" not in served.toy.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.toy.cancelled == ["forever"]  # the handler was stopped, not left waiting


def test_a_cancelled_stream_stops_its_handler(served: Served, channel: grpc.Channel) -> None:
    call = channel.unary_stream("/toy.T/Chunks", request_serializer=ident, response_deserializer=ident)(
        b"1000000x10", timeout=10)
    assert len(next(call)) == 10
    call.cancel()
    deadline = time.monotonic() + 3
    while "chunks" not in served.toy.cancelled and time.monotonic() < deadline:
        time.sleep(0.02)
    assert served.toy.cancelled == ["chunks"] and served.toy.produced < 1_000_000


def test_oversized_and_compressed_requests(channel: grpc.Channel) -> None:
    echo = unary(channel, "Echo")
    with pytest.raises(grpc.RpcError) as e:
        echo(b"x" * (MAX + 1), timeout=5)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert e.value.details() == f"grpc: received message larger than max ({MAX + 1} vs. {MAX})"
    body = b"compress me " * 1000
    assert echo(body, compression=grpc.Compression.Gzip, timeout=5) == body
    with pytest.raises(grpc.RpcError) as e:  # small on the wire, too large once inflated
        echo(b"\0" * (10 * MAX), compression=grpc.Compression.Gzip, timeout=5)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "after decompression" in e.value.details()
    near = bytes(range(256)) * (MAX // 256 - 1)  # several DATA frames, reassembled
    assert echo(near, timeout=5) == near
    assert echo(b"still fine", timeout=5) == b"still fine"


def test_large_answers_arrive_whole_through_flow_control(channel: grpc.Channel) -> None:
    call = channel.unary_stream("/toy.T/Chunks", request_serializer=ident, response_deserializer=ident)
    got = list(call(b"20x1000000", timeout=30))
    assert [len(x) for x in got] == [1_000_000] * 20 and [x[0] for x in got] == list(range(20))


def test_a_slow_reader_holds_a_streaming_handler_back(served: Served) -> None:
    # a small client window: the server cannot run far ahead of what was read
    with grpc.insecure_channel(served.address, options=[("grpc.http2.lookahead_bytes", 65536),
                                                         ("grpc.http2.bdp_probe", 0)]) as ch:
        call = ch.unary_stream("/toy.T/Chunks", request_serializer=ident, response_deserializer=ident)(
            b"100000x10000", timeout=30)
        read = 0
        for _ in range(20):
            next(call)
            read += 1
            time.sleep(0.05)
        ahead = served.toy.produced - read
        call.cancel()
    # what the client buffers plus our STREAM_BUFFER (1 MiB) in messages of 10 kB: far from 100,000
    assert 0 < ahead < 400, ahead


def test_streams_both_ways(channel: grpc.Channel) -> None:
    bidi = channel.stream_stream("/toy.T/Bidi", request_serializer=ident, response_deserializer=ident)
    assert list(bidi(iter([b"a", b"bb", b""]), timeout=5)) == [b"echo:a", b"echo:bb", b"echo:"]
    total = channel.stream_unary("/toy.T/Total", request_serializer=ident, response_deserializer=ident)
    assert total(iter([b"x" * 1000] * 50), timeout=5) == b"50000"
    assert total(iter([]), timeout=5) == b"0"


def test_many_calls_at_once_on_one_connection(served: Served) -> None:
    async def go() -> list[bytes]:
        async with grpc.aio.insecure_channel(served.address) as ch:
            echo = ch.unary_unary("/toy.T/Echo", request_serializer=ident, response_deserializer=ident)
            return await asyncio.gather(*(echo(b"%d" % i, timeout=20) for i in range(2000)))

    assert asyncio.run(go()) == [b"%d" % i for i in range(2000)]


def test_stop_lets_calls_in_flight_finish_and_refuses_new_ones() -> None:
    s = Served()
    try:
        with grpc.insecure_channel(s.address) as ch:
            fut = unary(ch, "Slow").future(b"0.4", timeout=10)
            stuck = unary(ch, "Forever").future(b"", timeout=10)
            time.sleep(0.2)
            stopping = asyncio.run_coroutine_threadsafe(s.server.stop(1.5), s.loop)
            assert fut.result(5) == b"done"  # finished within the grace period
            with pytest.raises(grpc.RpcError) as e:  # did not: stopped, in etcd's words
                stuck.result(5)
            assert (e.value.code(), e.value.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: server stopped")
            stopping.result(10)
        with socket.socket() as sock:
            with pytest.raises(OSError):
                sock.connect(("127.0.0.1", int(s.address.rsplit(":", 1)[1])))
    finally:
        s.loop.call_soon_threadsafe(s.loop.stop)
        s.thread.join(5)


def test_http1_on_the_grpc_port_gets_a_clear_answer(served: Served) -> None:
    with socket.create_connection(("127.0.0.1", int(served.address.rsplit(":", 1)[1])), timeout=5) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400") and b"gRPC" in answer


def test_timeouts_and_messages_are_encoded_as_the_spec_says() -> None:
    assert parse_timeout(b"100m") == pytest.approx(0.1) and parse_timeout(b"2S") == 2.0
    assert parse_timeout(b"1H") == 3600 and parse_timeout(b"5n") == pytest.approx(5e-9)
    assert parse_timeout(b"123456789S") is None and parse_timeout(b"10x") is None and parse_timeout(b"S") is None
    assert grpc_message("plain text") == b"plain text"
    assert grpc_message("100%\n") == b"100%25%0A" and grpc_message("é") == b"%C3%A9"


@pytest.mark.parametrize("front_end", ["ours", "grpcio"])
def test_both_front_ends_serve_the_same_answers(front_end: str, member_factory, monkeypatch) -> None:
    """The yardstick stays usable: ETCDPROOF_GRPC=grpcio serves the same services with grpc.aio,
    and both front ends give the same answers and error texts to the same calls."""
    from server.proto.etcdserverpb import rpc_pb2 as pb
    from server.proto.etcdserverpb import rpc_pb2_grpc as rpcgrpc

    monkeypatch.setenv("ETCDPROOF_GRPC", "grpcio" if front_end == "grpcio" else "")
    m = member_factory("reference")
    with grpc.insecure_channel(m.endpoint) as ch:
        kv = rpcgrpc.KVStub(ch)
        kv.Put(pb.PutRequest(key=b"k", value=b"v"), timeout=5)
        got = kv.Range(pb.RangeRequest(key=b"k"), timeout=5)
        assert [(x.key, x.value, x.version) for x in got.kvs] == [(b"k", b"v", 1)]
        with pytest.raises(grpc.RpcError) as e:
            kv.Put(pb.PutRequest(key=b""), timeout=5)
        assert (e.value.code(), e.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                       "etcdserver: key is not provided")
        watch = rpcgrpc.WatchStub(ch).Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=b"k", start_revision=1))]), timeout=5)
        first, events = next(watch), next(watch)
        assert first.created and [ev.kv.value for ev in events.events] == [b"v"]
        watch.cancel()
    # which front end answered: only ours hands HTTP/1.1 on the client port to the gateway
    try:
        with urllib.request.urlopen(f"http://{m.endpoint}/health", timeout=5) as r:
            http1 = r.status == 200
    except (OSError, http.client.HTTPException):
        http1 = False
    assert http1 == (front_end == "ours")


def test_a_storm_of_deadlines_cancels_and_resets_leaves_nothing_behind(served: Served) -> None:
    """Calls that expire, get cancelled by the client or finish, all at once on shared
    connections: afterwards no call is left in the server, no handler is still waiting, and the
    server answers as before."""
    async def storm() -> dict[str, int]:
        outcomes: dict[str, int] = {}
        async with grpc.aio.insecure_channel(served.address) as ch:
            slow = ch.unary_unary("/toy.T/Slow", request_serializer=ident, response_deserializer=ident)
            forever = ch.unary_unary("/toy.T/Forever", request_serializer=ident, response_deserializer=ident)
            chunks = ch.unary_stream("/toy.T/Chunks", request_serializer=ident, response_deserializer=ident)

            async def one(i: int) -> None:
                try:
                    if i % 3 == 0:
                        await slow(b"%.3f" % (0.001 * (i % 50)), timeout=0.02 + 0.001 * (i % 40))
                    elif i % 3 == 1:
                        call = forever(b"", timeout=5)
                        # some cancelled at once (perhaps before the server saw them), some surely later
                        await asyncio.sleep(0.001 * (i % 30) if i % 2 else 0.5)
                        call.cancel()
                        await call
                    else:
                        call = chunks(b"200x100", timeout=5)
                        async for _ in call:
                            if i % 2:
                                break
                        call.cancel()
                    key = "ok"
                except (grpc.aio.AioRpcError, asyncio.CancelledError) as e:
                    key = e.code().name if isinstance(e, grpc.aio.AioRpcError) else "cancelled"
                outcomes[key] = outcomes.get(key, 0) + 1

            await asyncio.gather(*(one(i) for i in range(600)))
        return outcomes

    outcomes = asyncio.run(storm())
    assert outcomes.get("DEADLINE_EXCEEDED", 0) > 0 and sum(outcomes.values()) == 600, outcomes

    async def left() -> int:
        await asyncio.sleep(0.3)  # the client's resets and the connection's close arrive
        return sum(len(p.calls) for p in served.server.protocols)

    assert served.run(left()) == 0
    # every handler that started waiting was stopped (a call reset before its handler ran has none)
    started = served.toy.started.count("forever")
    assert started > 0 and served.toy.cancelled.count("forever") == started
    with grpc.insecure_channel(served.address) as ch:
        assert unary(ch, "Echo")(b"after the storm", timeout=5) == b"after the storm"
