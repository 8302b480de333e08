"""The HTTP/JSON gateway, /health, /metrics and /version, in the form etcd's grpc-gateway uses.

POST /v3/<service>/<method> with a JSON body of the gRPC request (bytes fields base64, 64-bit
integers as strings, field names as in the .proto); the response is the gRPC response in the
same JSON form, with default values left out. Streams (watch, lease keep-alive, snapshot,
election observe) answer with one {"result": ...} object per line, chunked. Errors answer with
the HTTP status grpc-gateway maps the gRPC code to, and {"error", "code", "message"}.

It is served on its own listener (--listen-client-http-urls, and /health and /metrics also on
--listen-metrics-urls): grpcio owns the gRPC port and cannot share it with HTTP/1.1.
"""
from __future__ import annotations

import json
import logging
import queue
import select
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Callable, Iterator

from google.protobuf import json_format
from google.protobuf.message import Message

from server import concurrency, errors
from server.config import API_VERSION
from server.errors import Code, EtcdError
from server.proto.etcdserverpb import rpc_pb2
from server.proto.v3electionpb import v3election_pb2 as elpb
from server.proto.v3lockpb import v3lock_pb2 as lockpb
from server.watchstream import WatchSession

if TYPE_CHECKING:
    from server.etcdserver import EtcdServer

log = logging.getLogger("etcdproof.gateway")
pb = rpc_pb2

# grpc-gateway's mapping of gRPC codes to HTTP statuses
HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
}


def to_json(msg: Message) -> dict:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


Unary = tuple[type, Callable[["EtcdServer", Message], Message]]

UNARY: dict[str, Unary] = {
    "/v3/kv/range": (pb.RangeRequest, lambda s, r: s.range(r)),
    "/v3/kv/put": (pb.PutRequest, lambda s, r: s.put(r)),
    "/v3/kv/deleterange": (pb.DeleteRangeRequest, lambda s, r: s.delete_range(r)),
    "/v3/kv/txn": (pb.TxnRequest, lambda s, r: s.txn(r)),
    "/v3/kv/compaction": (pb.CompactionRequest, lambda s, r: s.compact(r)),
    "/v3/lease/grant": (pb.LeaseGrantRequest, lambda s, r: s.lease_grant(r)),
    "/v3/lease/revoke": (pb.LeaseRevokeRequest, lambda s, r: s.lease_revoke(r)),
    "/v3/kv/lease/revoke": (pb.LeaseRevokeRequest, lambda s, r: s.lease_revoke(r)),
    "/v3/lease/timetolive": (pb.LeaseTimeToLiveRequest, lambda s, r: s.lease_time_to_live(r)),
    "/v3/kv/lease/timetolive": (pb.LeaseTimeToLiveRequest, lambda s, r: s.lease_time_to_live(r)),
    "/v3/lease/leases": (pb.LeaseLeasesRequest, lambda s, r: s.lease_leases()),
    "/v3/kv/lease/leases": (pb.LeaseLeasesRequest, lambda s, r: s.lease_leases()),
    "/v3/maintenance/status": (pb.StatusRequest, lambda s, r: s.status()),
    "/v3/maintenance/alarm": (pb.AlarmRequest, lambda s, r: s.alarm(r)),
    "/v3/maintenance/defragment": (pb.DefragmentRequest, lambda s, r: s.defragment()),
    "/v3/maintenance/hash": (pb.HashRequest, lambda s, r: s.hash()),
    "/v3/maintenance/hashkv": (pb.HashKVRequest, lambda s, r: s.hash_kv(r)),
    "/v3/maintenance/transfer-leadership": (pb.MoveLeaderRequest, lambda s, r: s.move_leader(r)),
    "/v3/cluster/member/list": (pb.MemberListRequest, lambda s, r: s.member_list()),
    "/v3/auth/status": (pb.AuthStatusRequest, lambda s, r: pb.AuthStatusResponse(header=s.header())),
    "/v3/lock/unlock": (lockpb.UnlockRequest, lambda s, r: concurrency.unlock(s, r)),
    "/v3/election/proclaim": (elpb.ProclaimRequest, lambda s, r: concurrency.proclaim(s, r)),
    "/v3/election/leader": (elpb.LeaderRequest, lambda s, r: concurrency.leader(s, r)),
    "/v3/election/resign": (elpb.ResignRequest, lambda s, r: concurrency.resign(s, r)),
}


def _known_fields(obj: object, desc) -> object:
    """obj without the keys desc's message lacks, at any depth: grpc-gateway v1 ignores unknown
    fields (but, unlike json_format's ignore_unknown_fields, still rejects unknown enum names)."""
    if isinstance(obj, list):
        return [_known_fields(x, desc) for x in obj]
    if not isinstance(obj, dict):
        return obj
    out = {}
    for k, v in obj.items():
        f = desc.fields_by_camelcase_name.get(k) or desc.fields_by_name.get(k)
        if f is None:
            continue
        out[k] = _known_fields(v, f.message_type) if f.message_type is not None else v
    return out


# path -> (grpc_type, service, method), for metrics and for telling 404 from 405
RPC_NAMES: dict[str, tuple[str, str, str]] = {
    "/v3/kv/range": ("unary", "etcdserverpb.KV", "Range"),
    "/v3/kv/put": ("unary", "etcdserverpb.KV", "Put"),
    "/v3/kv/deleterange": ("unary", "etcdserverpb.KV", "DeleteRange"),
    "/v3/kv/txn": ("unary", "etcdserverpb.KV", "Txn"),
    "/v3/kv/compaction": ("unary", "etcdserverpb.KV", "Compact"),
    "/v3/watch": ("bidi_stream", "etcdserverpb.Watch", "Watch"),
    "/v3/lease/grant": ("unary", "etcdserverpb.Lease", "LeaseGrant"),
    "/v3/lease/revoke": ("unary", "etcdserverpb.Lease", "LeaseRevoke"),
    "/v3/kv/lease/revoke": ("unary", "etcdserverpb.Lease", "LeaseRevoke"),
    "/v3/lease/keepalive": ("bidi_stream", "etcdserverpb.Lease", "LeaseKeepAlive"),
    "/v3/lease/timetolive": ("unary", "etcdserverpb.Lease", "LeaseTimeToLive"),
    "/v3/kv/lease/timetolive": ("unary", "etcdserverpb.Lease", "LeaseTimeToLive"),
    "/v3/lease/leases": ("unary", "etcdserverpb.Lease", "LeaseLeases"),
    "/v3/kv/lease/leases": ("unary", "etcdserverpb.Lease", "LeaseLeases"),
    "/v3/maintenance/status": ("unary", "etcdserverpb.Maintenance", "Status"),
    "/v3/maintenance/alarm": ("unary", "etcdserverpb.Maintenance", "Alarm"),
    "/v3/maintenance/defragment": ("unary", "etcdserverpb.Maintenance", "Defragment"),
    "/v3/maintenance/hash": ("unary", "etcdserverpb.Maintenance", "Hash"),
    "/v3/maintenance/hashkv": ("unary", "etcdserverpb.Maintenance", "HashKV"),
    "/v3/maintenance/snapshot": ("server_stream", "etcdserverpb.Maintenance", "Snapshot"),
    "/v3/maintenance/transfer-leadership": ("unary", "etcdserverpb.Maintenance", "MoveLeader"),
    "/v3/cluster/member/list": ("unary", "etcdserverpb.Cluster", "MemberList"),
    "/v3/auth/status": ("unary", "etcdserverpb.Auth", "AuthStatus"),
    "/v3/lock/lock": ("unary", "v3lockpb.Lock", "Lock"),
    "/v3/lock/unlock": ("unary", "v3lockpb.Lock", "Unlock"),
    "/v3/election/campaign": ("unary", "v3electionpb.Election", "Campaign"),
    "/v3/election/proclaim": ("unary", "v3electionpb.Election", "Proclaim"),
    "/v3/election/leader": ("unary", "v3electionpb.Election", "Leader"),
    "/v3/election/observe": ("server_stream", "v3electionpb.Election", "Observe"),
    "/v3/election/resign": ("unary", "v3electionpb.Election", "Resign"),
}


def _rpc_path(path: str) -> str:
    """etcd 3.4 serves the gateway under /v3/ and /v3beta/ alike."""
    if path.startswith("/v3beta/"):
        return "/v3/" + path[len("/v3beta/") :]
    return path


def parse_requests(body: bytes, cls: type) -> list[Message]:
    """One or more JSON objects (newline-delimited, as grpc-gateway streams take them)."""
    text = body.decode("utf-8", errors="strict").strip()
    if not text:
        return [cls()]
    out = []
    dec = json.JSONDecoder()
    pos = 0
    while pos < len(text):
        obj, end = dec.raw_decode(text, pos)
        if obj is None:
            obj = {}  # JSON null is the empty message, as in grpc-gateway
        if not isinstance(obj, dict):
            raise ValueError(f"cannot unmarshal a JSON {type(obj).__name__} into {cls.DESCRIPTOR.name}")
        msg = cls()
        json_format.ParseDict(_known_fields(obj, cls.DESCRIPTOR), msg)
        out.append(msg)
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
    return out


def _peer_closed(sock: socket.socket) -> bool:
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "etcdproof-gateway"
    srv: "EtcdServer"
    metrics_only: bool

    def log_message(self, fmt: str, *args) -> None:
        log.debug("%s %s", self.address_string(), fmt % args)

    # --------------------------------------------------------- plumbing
    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj, separators=(",", ":")).encode())

    def _send_error(self, e: EtcdError) -> None:
        self._send_json(HTTP_STATUS.get(e.code, 500), {"error": e.message, "code": int(e.code), "message": e.message})

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, obj: object) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        try:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        if n > self.srv.cfg.max_request_bytes + 512 * 1024:
            raise errors.REQUEST_TOO_LARGE
        return self.rfile.read(n) if n else b""

    # ------------------------------------------------------------ verbs
    def _not_allowed(self) -> None:
        self._send_json(405, {"error": "Method Not Allowed", "code": 12, "message": "Method Not Allowed"})

    def _not_found(self) -> None:
        self._send_json(404, {"error": "Not Found", "code": 5, "message": "Not Found"})

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if _rpc_path(path) in RPC_NAMES:
            self._not_allowed()
        elif path == "/health" or path == "/livez" or path == "/readyz":
            ok, reason = self.srv.is_healthy()
            self._send_json(200 if ok else 503, {"health": "true" if ok else "false", "reason": reason})
        elif path == "/metrics":
            self._send(200, self.srv.metrics.exposition(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/version" and not self.metrics_only:
            self._send_json(200, {"etcdserver": API_VERSION, "etcdcluster": API_VERSION})
        else:
            self._not_found()

    do_PUT = do_DELETE = do_PATCH = do_GET

    def do_POST(self) -> None:
        path = _rpc_path(self.path.split("?", 1)[0])
        if path in ("/health", "/livez", "/readyz", "/metrics", "/version"):
            self._not_allowed()
            return
        if self.metrics_only or path not in RPC_NAMES:
            self._not_found()
            return
        kind, service, method = RPC_NAMES[path]
        code = "OK"
        try:
            self._post(path)
        except EtcdError as e:
            code = e.code.name  # already answered
        finally:
            # the gateway's calls count as the gRPC calls they stand for, as in etcd
            self.srv.metrics.count_call(kind, service, method, code)

    def _post(self, path: str) -> None:
        try:
            body = self._body()
            if path in UNARY:
                cls, fn = UNARY[path]
                req = parse_requests(body, cls)[0]
                self._send_json(200, to_json(fn(self.srv, req)))
            elif path == "/v3/watch":
                self._watch(parse_requests(body, pb.WatchRequest))
            elif path == "/v3/lease/keepalive":
                self._stream(self._keepalive(parse_requests(body, pb.LeaseKeepAliveRequest)))
            elif path == "/v3/maintenance/snapshot":
                self._stream(self.srv.snapshot())
            elif path == "/v3/lock/lock":
                req = parse_requests(body, lockpb.LockRequest)[0]
                self._send_json(200, to_json(concurrency.lock(self.srv, req, self._alive)))
            elif path == "/v3/election/campaign":
                req = parse_requests(body, elpb.CampaignRequest)[0]
                self._send_json(200, to_json(concurrency.campaign(self.srv, req, self._alive)))
            elif path == "/v3/election/observe":
                req = parse_requests(body, elpb.LeaderRequest)[0]
                self._stream(concurrency.observe(self.srv, req, self._alive))
            else:
                self._not_found()
        except EtcdError as e:
            self._send_error(e)
            raise
        except (json_format.ParseError, ValueError, UnicodeDecodeError) as e:
            err = EtcdError(Code.INVALID_ARGUMENT, f"bad request body: {e}")
            self._send_error(err)
            raise err from None
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # noqa: BLE001 - never let one request take the server down
            log.exception("gateway %s failed", path)
            err = EtcdError(Code.UNKNOWN, f"etcdproof: internal error: {e!r}")
            self._send_error(err)
            raise err from None

    def _alive(self) -> bool:
        return not _peer_closed(self.connection)

    def _keepalive(self, reqs: list[Message]) -> Iterator[Message]:
        for r in reqs:
            yield pb.LeaseKeepAliveResponse(header=self.srv.header(), ID=r.ID, TTL=self.srv.lease_renew(r.ID))

    def _stream(self, it: Iterator[Message]) -> None:
        first = True
        try:
            for msg in it:
                if first:
                    self._start_stream()
                    first = False
                self._chunk({"result": to_json(msg)})
        except EtcdError as e:
            if first:
                raise
            self._chunk({"error": {"grpc_code": int(e.code), "http_code": HTTP_STATUS.get(e.code, 500),
                                   "message": e.message, "http_status": ""}})
        if first:
            self._start_stream()
        self._end_stream()
        self.close_connection = True

    def _watch(self, reqs: list[Message]) -> None:
        session = WatchSession(self.srv)
        try:
            for r in reqs:
                session.handle(r)
            self._start_stream()
            while True:
                try:
                    resp = session.sink.q.get(timeout=0.5)
                except queue.Empty:
                    if _peer_closed(self.connection):
                        break
                    continue
                if resp is None:
                    break
                self._chunk({"result": to_json(resp)})
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            session.close()
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


def build_http_server(srv: "EtcdServer", host: str, port: int, metrics_only: bool = False) -> ThreadingHTTPServer:
    handler = type("Handler", (_Handler,), {"srv": srv, "metrics_only": metrics_only})
    try:
        httpd = _Server((host, port), handler)
    except OSError as e:
        raise OSError(f"cannot listen for HTTP on {host}:{port}: {e.strerror}") from None
    return httpd


def serve_in_thread(httpd: ThreadingHTTPServer, name: str) -> threading.Thread:
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True)
    t.start()
    return t
