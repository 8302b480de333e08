"""The HTTP/JSON gateway, /health, /metrics and /version, in the form etcd's grpc-gateway uses.

POST /v3/<service>/<method> with a JSON body of the gRPC request (bytes fields base64, 64-bit
integers as strings, field names as in the .proto or camelCase); the response is the gRPC
response in the same JSON form, with default values left out. Streams (watch, lease keep-alive,
snapshot, election observe) answer with one {"result": ...} object per line, chunked. Errors
answer with the HTTP status grpc-gateway maps the gRPC code to, and {"error", "code", "message"};
a known path with the wrong method gets 405. Gateway calls count in the grpc_server_* metrics
as the gRPC calls they stand for, as etcd's gateway (a gRPC client of its own server) does.

It runs on the server's event loop (aiohttp): on the gRPC client port, for connections that
speak HTTP/1.x (server/grpc_server.py hands them over, as etcd's cmux does), on its own listener,
--listen-client-http-urls, and (/health and /metrics only) on --listen-metrics-urls.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from server import authapi, concurrency, errors
from server.auth import current_token
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
GATEWAY_OVERHEAD = 512 * 1024

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
    "/v3/cluster/member/add": (pb.MemberAddRequest, lambda s, r: s.member_add(r)),
    "/v3/cluster/member/remove": (pb.MemberRemoveRequest, lambda s, r: s.member_remove(r)),
    "/v3/cluster/member/update": (pb.MemberUpdateRequest, lambda s, r: s.member_update(r)),
    "/v3/cluster/member/promote": (pb.MemberPromoteRequest, lambda s, r: s.member_promote(r)),
    "/v3/auth/status": (pb.AuthStatusRequest, lambda s, r: authapi.status(s)),
    "/v3/auth/authenticate": (pb.AuthenticateRequest, lambda s, r: authapi.authenticate(s, r)),
    "/v3/lock/unlock": (lockpb.UnlockRequest, lambda s, r: concurrency.unlock(s, r)),
    "/v3/election/proclaim": (elpb.ProclaimRequest, lambda s, r: concurrency.proclaim(s, r)),
    "/v3/election/leader": (elpb.LeaderRequest, lambda s, r: concurrency.leader(s, r)),
    "/v3/election/resign": (elpb.ResignRequest, lambda s, r: concurrency.resign(s, r)),
}


# the Auth service's other methods, at grpc-gateway's paths for them
AUTH_PATHS = {
    "/v3/auth/enable": "AuthEnable", "/v3/auth/disable": "AuthDisable",
    "/v3/auth/user/add": "UserAdd", "/v3/auth/user/get": "UserGet", "/v3/auth/user/list": "UserList",
    "/v3/auth/user/delete": "UserDelete", "/v3/auth/user/changepw": "UserChangePassword",
    "/v3/auth/user/grant": "UserGrantRole", "/v3/auth/user/revoke": "UserRevokeRole",
    "/v3/auth/role/add": "RoleAdd", "/v3/auth/role/get": "RoleGet", "/v3/auth/role/list": "RoleList",
    "/v3/auth/role/delete": "RoleDelete", "/v3/auth/role/grant": "RoleGrantPermission",
    "/v3/auth/role/revoke": "RoleRevokePermission",
}


def _auth_route(method: str) -> Unary:
    cls = getattr(pb, f"Auth{method}Request" if not method.startswith("Auth") else f"{method}Request")
    return cls, lambda s, r: authapi.call(s, method, r)


for _path, _method in AUTH_PATHS.items():
    UNARY[_path] = _auth_route(_method)


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
    "/v3/cluster/member/add": ("unary", "etcdserverpb.Cluster", "MemberAdd"),
    "/v3/cluster/member/remove": ("unary", "etcdserverpb.Cluster", "MemberRemove"),
    "/v3/cluster/member/update": ("unary", "etcdserverpb.Cluster", "MemberUpdate"),
    "/v3/cluster/member/promote": ("unary", "etcdserverpb.Cluster", "MemberPromote"),
    "/v3/auth/status": ("unary", "etcdserverpb.Auth", "AuthStatus"),
    "/v3/auth/authenticate": ("unary", "etcdserverpb.Auth", "Authenticate"),
    "/v3/lock/lock": ("unary", "v3lockpb.Lock", "Lock"),
    "/v3/lock/unlock": ("unary", "v3lockpb.Lock", "Unlock"),
    "/v3/election/campaign": ("unary", "v3electionpb.Election", "Campaign"),
    "/v3/election/proclaim": ("unary", "v3electionpb.Election", "Proclaim"),
    "/v3/election/leader": ("unary", "v3electionpb.Election", "Leader"),
    "/v3/election/observe": ("server_stream", "v3electionpb.Election", "Observe"),
    "/v3/election/resign": ("unary", "v3electionpb.Election", "Resign"),
}
RPC_NAMES.update({p: ("unary", "etcdserverpb.Auth", m) for p, m in AUTH_PATHS.items()})


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



_JSON = "application/json"
_PLAIN_PATHS = ("/health", "/livez", "/readyz", "/metrics", "/version")


def _json_response(status: int, obj: object) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj, separators=(",", ":")).encode(), content_type=_JSON)


def _error_response(e: EtcdError) -> web.Response:
    return _json_response(HTTP_STATUS.get(e.code, 500), {"error": e.message, "code": int(e.code), "message": e.message})


def _not_found() -> web.Response:
    return _json_response(404, {"error": "Not Found", "code": 5, "message": "Not Found"})


def _not_allowed() -> web.Response:
    return _json_response(405, {"error": "Method Not Allowed", "code": 12, "message": "Method Not Allowed"})


def _closed(request: web.Request) -> bool:
    t = request.transport
    return t is None or t.is_closing()


async def _while_connected(request: web.Request, aw: Awaitable) -> object:
    """Await aw, cancelling it if the client hangs up (lock and campaign wait indefinitely)."""
    task = asyncio.ensure_future(aw)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            if _closed(request):
                task.cancel()
                raise EtcdError(Code.CANCELLED, "context canceled")
    finally:
        if not task.done():
            task.cancel()


class Gateway:
    def __init__(self, srv: "EtcdServer", metrics_only: bool = False) -> None:
        self.srv = srv
        self.metrics_only = metrics_only

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = _rpc_path(request.path)
        if request.method == "POST":
            if path in _PLAIN_PATHS:
                return _not_allowed()
            if self.metrics_only or path not in RPC_NAMES:
                return _not_found()
            return await self._rpc(request, path)
        if path in RPC_NAMES:
            return _not_allowed()
        if request.method not in ("GET", "HEAD"):
            return _not_found()
        if path in ("/health", "/livez", "/readyz"):
            ok, reason = self.srv.is_healthy()
            return _json_response(200 if ok else 503, {"health": "true" if ok else "false", "reason": reason})
        if path == "/metrics":
            return web.Response(body=self.srv.metrics.exposition(),
                                headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
        if path == "/version" and not self.metrics_only:
            return _json_response(200, {"etcdserver": API_VERSION, "etcdcluster": API_VERSION})
        return _not_found()

    async def _rpc(self, request: web.Request, path: str) -> web.StreamResponse:
        kind, service, method = RPC_NAMES[path]
        code = "OK"
        try:
            n = request.content_length or 0
            if n > self.srv.cfg.max_request_bytes + GATEWAY_OVERHEAD:
                raise errors.REQUEST_TOO_LARGE
            body = await request.read()
            return await self._dispatch(request, path, body)
        except EtcdError as e:
            code = e.code.name
            return _error_response(e)
        except (json_format.ParseError, ValueError, UnicodeDecodeError) as e:
            code = "INVALID_ARGUMENT"
            return _error_response(EtcdError(Code.INVALID_ARGUMENT, f"bad request body: {e}"))
        except (ConnectionResetError, asyncio.CancelledError):
            code = "CANCELLED"
            raise
        except Exception as e:  # noqa: BLE001 - never let one request take the server down
            log.exception("gateway %s failed", path)
            code = "UNKNOWN"
            return _error_response(EtcdError(Code.UNKNOWN, f"etcdproof: internal error: {e!r}"))
        finally:
            self.srv.metrics.count_call(kind, service, method, code)

    async def _dispatch(self, request: web.Request, path: str, body: bytes) -> web.StreamResponse:
        srv = self.srv
        if srv.auth.enabled:  # grpc-gateway passes Authorization on as "authorization" metadata
            current_token.set(request.headers.get("Authorization") or request.headers.get("Grpc-Metadata-Token"))
        if path in UNARY:
            cls, fn = UNARY[path]
            req = parse_requests(body, cls)[0]
            if srv.refuses_as_learner(req):
                raise errors.NOT_SUPPORTED_FOR_LEARNER
            res = fn(srv, req)
            if inspect.isawaitable(res):
                res = await res
            return _json_response(200, to_json(res))
        if srv.refuses_as_learner(None):
            raise errors.NOT_SUPPORTED_FOR_LEARNER
        if path == "/v3/watch":
            return await self._watch(request, parse_requests(body, pb.WatchRequest))
        if path == "/v3/lease/keepalive":
            reqs = parse_requests(body, pb.LeaseKeepAliveRequest)
            return await self._stream(request, self._keepalive(reqs))
        if path == "/v3/maintenance/snapshot":
            return await self._stream(request, srv.snapshot())
        if path == "/v3/lock/lock":
            req = parse_requests(body, lockpb.LockRequest)[0]
            return _json_response(200, to_json(await _while_connected(request, concurrency.lock(srv, req))))
        if path == "/v3/election/campaign":
            req = parse_requests(body, elpb.CampaignRequest)[0]
            return _json_response(200, to_json(await _while_connected(request, concurrency.campaign(srv, req))))
        if path == "/v3/election/observe":
            req = parse_requests(body, elpb.LeaderRequest)[0]
            return await self._stream(request, concurrency.observe(srv, req))
        return _not_found()

    async def _keepalive(self, reqs: list[Message]) -> AsyncIterator[Message]:
        for r in reqs:
            yield pb.LeaseKeepAliveResponse(header=self.srv.header(), ID=r.ID, TTL=await self.srv.lease_renew(r.ID))

    @staticmethod
    async def _start(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": _JSON})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        return resp

    @staticmethod
    async def _chunk(resp: web.StreamResponse, obj: object) -> None:
        await resp.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    async def _stream(self, request: web.Request, it: AsyncIterator[Message]) -> web.StreamResponse:
        resp: web.StreamResponse | None = None
        try:
            async for msg in it:
                if _closed(request):
                    break
                if resp is None:
                    resp = await self._start(request)
                await self._chunk(resp, {"result": to_json(msg)})
        except EtcdError as e:
            if resp is None:
                raise
            await self._chunk(resp, {"error": {"grpc_code": int(e.code), "http_code": HTTP_STATUS.get(e.code, 500),
                                               "message": e.message, "http_status": ""}})
        finally:
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
        if resp is None:
            resp = await self._start(request)
        await resp.write_eof()
        return resp

    async def _watch(self, request: web.Request, reqs: list[Message]) -> web.StreamResponse:
        session = WatchSession(self.srv)
        try:
            for r in reqs:
                session.handle(r)
            resp = await self._start(request)
            while not _closed(request):
                try:
                    item = await asyncio.wait_for(session.sink.q.get(), 0.5)
                except asyncio.TimeoutError:
                    continue
                if item is None:
                    break
                await self._chunk(resp, {"result": to_json(item)})
            return resp
        finally:
            session.close()


async def gateway_runner(srv: "EtcdServer", metrics_only: bool = False) -> web.AppRunner:
    """The gateway's aiohttp runner, set up but on no listener: runner.server makes a protocol
    per connection (the gRPC port hands HTTP/1.x connections to it, as etcd's cmux does)."""
    gw = Gateway(srv, metrics_only)
    app = web.Application(client_max_size=srv.cfg.max_request_bytes + 4 * GATEWAY_OVERHEAD)
    app.router.add_route("*", "/{tail:.*}", gw.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    return runner


async def start_http(srv: "EtcdServer", host: str, port: int, metrics_only: bool = False) -> web.AppRunner:
    """Serve the gateway (or only /health and /metrics) on host:port, on the running loop."""
    runner = await gateway_runner(srv, metrics_only)
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        raise OSError(f"cannot listen for HTTP on {host}:{port}: {e.strerror}") from None
    return runner
