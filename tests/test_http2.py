"""server/http2, the sans-I/O HTTP/2 server connection, driven by an independent client: the h2
library (python-hyper). Bytes go from one to the other by hand, so every test is exact about
what was on the wire: the handshake, requests and answers, flow control both ways, header blocks
split over CONTINUATION, padding, pings, resets, GOAWAY, and the connection errors a broken
client causes. Hypothesis: any split of the client's bytes gives the same events, garbage never
raises, and the header decoder's cache never answers differently from a plain decoder."""
from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.http2 import frames as f
from server.http2.connection import (RECV_STREAM_WINDOW, Connection, ConnectionClosed, DataReceived,
                                     RequestReceived, StreamReset)
from server.http2.headers import Decoder, encode, literal

REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/etcdserverpb.KV/Put"),
           (b":authority", b"localhost"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def client(initial_window_size: int | None = None) -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    values = {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000}
    if initial_window_size is not None:
        values[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = initial_window_size
    c.local_settings = h2.settings.Settings(client=True, initial_values=values)
    c.initiate_connection()
    return c


def pair(initial_window_size: int | None = None) -> tuple[h2.connection.H2Connection, Connection, list]:
    """A client and a server past the handshake; the server's events so far."""
    c, s = client(initial_window_size), Connection()
    events = s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    events += s.receive_data(c.data_to_send())  # the client's SETTINGS ACK
    return c, s, events


def to_client(c: h2.connection.H2Connection, s: Connection) -> list:
    return c.receive_data(s.data_to_send())


def to_server(c: h2.connection.H2Connection, s: Connection) -> list:
    return s.receive_data(c.data_to_send())


def test_handshake_announces_windows_and_acknowledges_the_clients_settings() -> None:
    c, s = client(), Connection()
    first = s.data_to_send()
    assert first[3] == f.SETTINGS  # the server's preface: SETTINGS first
    got = c.receive_data(first)
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in got)
    assert c.remote_settings.initial_window_size == RECV_STREAM_WINDOW
    assert c.outbound_flow_control_window > f.DEFAULT_WINDOW  # the connection window was raised
    assert s.receive_data(c.data_to_send()) == []
    acks = [e for e in c.receive_data(s.data_to_send()) if isinstance(e, h2.events.SettingsAcknowledged)]
    assert acks


def frame_kinds(wire: bytes) -> list[int]:
    """The types of the frames in wire (after a client preface, if any); each at most 16 KiB."""
    at = len(f.PREFACE) if wire.startswith(f.PREFACE) else 0
    kinds = []
    while at < len(wire):
        n = int.from_bytes(wire[at:at + 3], "big")
        assert n <= f.DEFAULT_MAX_FRAME
        kinds.append(wire[at + 3])
        at += 9 + n
    return kinds


def test_a_request_and_its_answer() -> None:
    c, s, _ = pair()
    c.send_headers(1, REQUEST)
    c.send_data(1, b"\x00\x00\x00\x00\x03abc", end_stream=True)
    events = to_server(c, s)
    assert [type(e) for e in events] == [RequestReceived, DataReceived]
    assert dict(events[0].headers)[b":path"] == b"/etcdserverpb.KV/Put" and not events[0].end_stream
    assert events[1].data == b"\x00\x00\x00\x00\x03abc" and events[1].end_stream
    s.send_headers(1, encode([(b":status", b"200"), (b"content-type", b"application/grpc")]))
    s.send_data(1, b"\x00\x00\x00\x00\x02ok")
    s.send_headers(1, literal(b"grpc-status", b"0"), True)
    got = to_client(c, s)
    kinds = [type(e) for e in got]
    assert kinds == [h2.events.ResponseReceived, h2.events.DataReceived, h2.events.TrailersReceived,
                     h2.events.StreamEnded]
    assert dict(got[0].headers)[b":status"] == b"200"
    assert got[1].data == b"\x00\x00\x00\x00\x02ok"
    assert dict(got[2].headers) == {b"grpc-status": b"0"}
    assert 1 not in s.streams  # both sides closed: forgotten


def test_trailers_before_the_client_half_closed_reset_its_side_with_no_error() -> None:
    c, s, _ = pair()
    c.send_headers(1, REQUEST)
    to_server(c, s)
    s.send_headers(1, encode([(b":status", b"200"), (b"grpc-status", b"5")]), True)
    got = to_client(c, s)
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)
    assert [e.error_code for e in got if isinstance(e, h2.events.StreamReset)] == [f.NO_ERROR]
    assert s.streams == {}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=30))
def test_any_split_of_the_clients_bytes_gives_the_same_events(cuts) -> None:
    c = client()
    for sid in (1, 3, 5):
        c.send_headers(sid, REQUEST + [(b"x-n", str(sid).encode() * 50)])
        c.send_data(sid, bytes(range(256)) * 3, end_stream=(sid != 3))
    c.ping(b"12345678")
    c.reset_stream(3)
    wire = c.data_to_send()
    whole = Connection().receive_data(wire)
    s, parts, at = Connection(), [], 0
    for n in cuts:
        parts += s.receive_data(wire[at:at + n])
        at += n
    parts += s.receive_data(wire[at:])
    assert parts == whole
    assert [type(e) for e in whole].count(RequestReceived) == 3 and any(isinstance(e, StreamReset) for e in whole)


def test_flow_control_holds_data_and_trailers_until_the_client_opens_its_window() -> None:
    c, s, _ = pair(initial_window_size=10)
    c.send_headers(1, REQUEST, end_stream=True)
    to_server(c, s)
    s.send_headers(1, encode([(b":status", b"200")]))
    s.send_data(1, b"a" * 100)
    s.send_headers(1, literal(b"grpc-status", b"0"), True)
    got = to_client(c, s)
    data = b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived))
    assert data == b"a" * 10 and s.pending(1) == 90
    assert not any(isinstance(e, h2.events.StreamEnded) for e in got)  # trailers wait behind the data
    c.increment_flow_control_window(50, stream_id=1)
    to_server(c, s)
    got = to_client(c, s)
    assert b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived)) == b"a" * 50
    c.increment_flow_control_window(1000, stream_id=1)
    to_server(c, s)
    got = to_client(c, s)
    assert b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived)) == b"a" * 40
    assert any(isinstance(e, h2.events.StreamEnded) for e in got) and s.pending(1) == 0


def test_the_connection_window_is_shared_and_refilled_in_order() -> None:
    c, s, _ = pair(initial_window_size=1 << 20)
    for sid in (1, 3):
        c.send_headers(sid, REQUEST, end_stream=True)
    to_server(c, s)
    for sid in (1, 3):
        s.send_headers(sid, encode([(b":status", b"200")]))
        s.send_data(sid, bytes([sid]) * 50_000)
    got = to_client(c, s)
    sent = {sid: sum(len(e.data) for e in got if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
            for sid in (1, 3)}
    assert sent == {1: 50_000, 3: f.DEFAULT_WINDOW - 50_000}  # the client never raised its 64 KiB
    c.increment_flow_control_window(100_000)
    to_server(c, s)
    got = to_client(c, s)
    assert sum(len(e.data) for e in got if isinstance(e, h2.events.DataReceived)) == 100_000 - f.DEFAULT_WINDOW
    assert s.pending(3) == 0 and s.pending(1) == 0


def test_frames_respect_the_clients_max_frame_size_and_big_header_blocks_use_continuation() -> None:
    c, s, _ = pair()
    big = b"v" * 40_000
    c.send_headers(1, REQUEST + [(b"x-big", big)], end_stream=True)  # h2 splits it over CONTINUATION
    wire = c.data_to_send()
    assert f.CONTINUATION in frame_kinds(wire)
    events = s.receive_data(wire)
    assert dict(events[0].headers)[b"x-big"] == big
    s.send_headers(1, encode([(b":status", b"200"), (b"x-big", big)]))
    s.send_data(1, b"d" * 40_000)
    s.send_headers(1, literal(b"grpc-status", b"0"), True)
    out = s.data_to_send()
    got = c.receive_data(out)
    assert dict(got[0].headers)[b"x-big"] == big
    assert sum(len(e.data) for e in got if isinstance(e, h2.events.DataReceived)) == 40_000
    assert f.CONTINUATION in frame_kinds(out)  # none over 16 KiB either (frame_kinds checks)


def test_padding_is_stripped() -> None:
    c, s, _ = pair()
    c.send_headers(1, REQUEST)
    c.send_data(1, b"payload", end_stream=True, pad_length=20)
    events = to_server(c, s)
    assert events[-1] == DataReceived(1, b"payload", True)


def test_pings_are_answered_with_their_payload() -> None:
    c, s, _ = pair()
    c.ping(b"abcdefgh")
    assert to_server(c, s) == []
    got = to_client(c, s)
    assert [e.ping_data for e in got if isinstance(e, h2.events.PingAckReceived)] == [b"abcdefgh"]


def test_a_client_reset_is_an_event_and_its_late_data_is_dropped() -> None:
    c, s, _ = pair()
    c.send_headers(1, REQUEST)
    to_server(c, s)
    c.reset_stream(1, error_code=f.CANCEL)
    assert to_server(c, s) == [StreamReset(1, f.CANCEL, True)]
    assert s.streams == {}
    # frames for a stream that is gone are ignored, not errors
    s.receive_data(f.frame(f.DATA, 0, 1, b"late") + f.frame(f.WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x01"))
    assert not s.failed


def test_graceful_close_refuses_new_streams_and_lets_open_ones_finish() -> None:
    c, s, _ = pair()
    c.send_headers(1, REQUEST)
    to_server(c, s)
    s.close()
    got = to_client(c, s)
    assert [e.error_code for e in got if isinstance(e, h2.events.ConnectionTerminated)] == [f.NO_ERROR]
    assert not s.accepting
    # a client that ignores the GOAWAY and opens a stream anyway (its own encoder: h2 would refuse)
    block = hpack.Encoder().encode(REQUEST)
    events = s.receive_data(f.frame(f.HEADERS, f.END_HEADERS, 3, block))
    assert events == [] and f.rst_stream(3, f.REFUSED_STREAM) in s.data_to_send()
    events = s.receive_data(f.frame(f.DATA, f.END_STREAM, 1, b"x"))
    assert events == [DataReceived(1, b"x", True)]  # the open stream still works


def test_a_client_goaway_is_reported() -> None:
    c, s, _ = pair()
    c.close_connection(error_code=f.NO_ERROR)
    events = to_server(c, s)
    assert events == [ConnectionClosed(f.NO_ERROR, True, "")] and not s.accepting and not s.failed


@pytest.mark.parametrize("wire, code", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", f.PROTOCOL_ERROR),
    (f.PREFACE + f.frame(f.DATA, 0, 0, b"x"), f.PROTOCOL_ERROR),
    (f.PREFACE + f.frame(f.DATA, 0, 1, b"x"), f.PROTOCOL_ERROR),  # idle stream
    (f.PREFACE + f.frame(f.HEADERS, f.END_HEADERS, 2, b"\x82"), f.PROTOCOL_ERROR),  # even: server-initiated
    (f.PREFACE + b"\x01\x00\x00" + bytes((f.DATA, 0)) + b"\x00\x00\x00\x01", f.FRAME_SIZE_ERROR),  # 64 KiB frame
    (f.PREFACE + f.frame(f.SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"), f.FLOW_CONTROL_ERROR),
    (f.PREFACE + f.frame(f.SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01"), f.PROTOCOL_ERROR),
    (f.PREFACE + f.frame(f.SETTINGS, 0, 0, b"\x00\x04\x00"), f.FRAME_SIZE_ERROR),
    (f.PREFACE + f.frame(f.WINDOW_UPDATE, 0, 0, b"\x7f\xff\xff\xff"), f.FLOW_CONTROL_ERROR),
    (f.PREFACE + f.frame(f.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), f.PROTOCOL_ERROR),
    (f.PREFACE + f.frame(f.PING, 0, 0, b"short"), f.FRAME_SIZE_ERROR),
    (f.PREFACE + f.frame(f.HEADERS, 0, 1, b"\x82") + f.frame(f.PING, 0, 0, b"12345678"), f.PROTOCOL_ERROR),
    (f.PREFACE + f.frame(f.CONTINUATION, f.END_HEADERS, 1, b"\x82"), f.PROTOCOL_ERROR),
    (f.PREFACE + f.frame(f.HEADERS, f.END_HEADERS, 1, b"\xff\xff\xff\x0f"), f.COMPRESSION_ERROR),
    (f.PREFACE + f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\x00\x00\x00\x02"), f.PROTOCOL_ERROR),
    (f.PREFACE + f.frame(f.DATA, f.PADDED, 1, b"\x09abc"), f.PROTOCOL_ERROR),
])
def test_connection_errors_send_goaway_with_their_code_and_stop_reading(wire: bytes, code: int) -> None:
    s = Connection()
    s.data_to_send()
    events = s.receive_data(wire)
    assert [type(e) for e in events][-1] is ConnectionClosed and events[-1].code == code, events
    out = s.data_to_send()
    assert out[3] == f.GOAWAY and int.from_bytes(out[13:17], "big") == code
    assert s.failed and s.receive_data(f.frame(f.PING, 0, 0, b"12345678")) == [] and s.data_to_send() == b""


def test_data_beyond_a_streams_window_resets_only_that_stream() -> None:
    c, s, _ = pair()
    c.send_headers(1, REQUEST)
    to_server(c, s)
    s.streams[1].recv_window = 3  # as if the client had used up the rest
    events = s.receive_data(f.frame(f.DATA, 0, 1, b"12345"))
    assert events == [StreamReset(1, f.FLOW_CONTROL_ERROR, False)] and not s.failed


def test_received_data_is_acknowledged_in_batches() -> None:
    c, s, _ = pair()
    c.send_headers(1, REQUEST)
    to_server(c, s)
    before = c.outbound_flow_control_window
    chunk = b"z" * 16_000
    sent = 0
    while sent < RECV_STREAM_WINDOW:  # more than a stream window: only possible if acknowledged
        n = min(len(chunk), c.local_flow_control_window(1), c.max_outbound_frame_size)
        assert n > 0, f"stuck after {sent} bytes"
        c.send_data(1, chunk[:n])
        sent += n
        to_server(c, s)
        to_client(c, s)
    assert sent >= RECV_STREAM_WINDOW and c.outbound_flow_control_window > 0 and before > 0


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 9), max_size=6))
def test_garbage_after_the_preface_never_raises(junk: bytes, kinds) -> None:
    s = Connection()
    wire = f.PREFACE + b"".join(f.frame(k, 0xFF, 1, junk[:40]) for k in kinds) + junk
    for at in range(0, len(wire), 37):
        for ev in s.receive_data(wire[at:at + 37]):
            assert type(ev) in (RequestReceived, DataReceived, StreamReset, ConnectionClosed)
    s.data_to_send()


HEADER_VALUES = st.sampled_from([b"a", b"bb", b"grpc-go/1.26", b"4999825u", b"x" * 300, b""])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from([b"x-a", b"x-b", b"grpc-timeout", b"token", b":path"]),
                                   HEADER_VALUES), min_size=1, max_size=6), min_size=1, max_size=25),
       st.integers(min_value=0, max_value=600))
def test_the_decoder_cache_answers_as_a_plain_decoder(blocks, table_size) -> None:
    enc = hpack.Encoder()
    enc.header_table_size = table_size  # small tables evict, which the cache must notice
    plain, cached = hpack.Decoder(), Decoder()
    for headers in blocks + blocks[::-1] + blocks:  # repeats: the cache is used
        block = enc.encode(headers)
        want = tuple((bytes(k), bytes(v)) for k, v in plain.decode(block, raw=True))
        assert cached.decode(block) == want


def test_the_decoder_cache_is_used_for_a_repeated_block() -> None:
    enc, d = hpack.Encoder(), Decoder()
    first = enc.encode(REQUEST)
    d.decode(first)
    again = enc.encode(REQUEST)  # everything now indexed: the same bytes every time
    assert again == enc.encode(REQUEST)
    assert d.decode(again) is d.decode(again)  # the cached tuple itself
