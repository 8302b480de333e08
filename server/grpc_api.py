"""The gRPC front end: etcd's services, served on the server's event loop.

The handlers here are front-end neutral. They are served by server/grpc_server.py, our own
gRPC over HTTP/2 (about a tenth of grpc.aio's CPU per call on this machine), or with
ETCDPROOF_GRPC=grpcio by grpc.aio, the yardstick it was measured and tested against. Streams
(Watch, LeaseKeepAlive, Observe) cost a coroutine, not a thread. See docs/design-choices.md.
Every handler turns EtcdError into etcd's status code and message, and any other exception into
UNKNOWN; a handler never takes the server down.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from typing import TYPE_CHECKING, Any, Callable

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from server import authapi, concurrency, errors
from server.auth import current_token
from server.errors import EtcdError
from server.grpc_server import Abort, GrpcServer, Method
from server.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc
from server.proto.v3electionpb import v3election_pb2, v3election_pb2_grpc
from server.proto.v3lockpb import v3lock_pb2, v3lock_pb2_grpc
from server.watchstream import WatchSession

if TYPE_CHECKING:
    from server.etcdserver import EtcdServer

log = logging.getLogger("etcdproof.grpc")
pb = rpc_pb2
GRPC_OVERHEAD = 512 * 1024  # etcd lets gRPC frames exceed max-request-bytes by this much


def _status(e: EtcdError) -> grpc.StatusCode:
    return grpc.StatusCode[e.code.name]


class BadRequest:
    """A request that did not decode; the handler answers INTERNAL, as grpc-go does for etcd."""

    def __init__(self, err: Exception) -> None:
        self.error = EtcdError(errors.Code.INTERNAL, f"grpc: error unmarshalling request: {err}")


def _safe_deserializer(cls: type) -> Callable[[bytes], object]:
    def decode(data: bytes) -> object:
        try:
            return cls.FromString(data)
        except DecodeError as e:
            return BadRequest(e)

    return decode


def _token(context) -> str | None:
    """The auth token a client sent: etcd's clients put it in "token" metadata, the gateway
    (grpc-gateway) in "authorization"."""
    for k, v in context.invocation_metadata() or ():
        if k in ("token", "authorization"):
            return v
    return None


def rpc(service: str, kind: str = "unary") -> Callable:
    """Wrap a handler: count it, map errors to gRPC status. Handlers may be sync or async."""

    def deco(fn: Callable) -> Callable:
        method = fn.__name__

        if kind == "unary":

            @functools.wraps(fn)
            async def unary(self, request, context):
                m = self.srv.metrics
                code = "OK"
                try:
                    if isinstance(request, BadRequest):
                        raise request.error
                    if self.srv.refuses_as_learner(request):
                        raise errors.NOT_SUPPORTED_FOR_LEARNER
                    if self.srv.auth.enabled:
                        current_token.set(_token(context))
                    resp = fn(self, request, context)
                    if inspect.isawaitable(resp):
                        resp = await resp
                    return resp
                except EtcdError as e:
                    code = _status(e).name
                    await context.abort(_status(e), e.message)
                except asyncio.CancelledError:
                    code = "CANCELLED"
                    raise
                except Exception as e:  # noqa: BLE001 - the server must survive any input
                    if isinstance(e, (grpc.aio.AbortError, Abort)):
                        raise
                    log.exception("%s.%s failed", service, method)
                    code = "UNKNOWN"
                    await context.abort(grpc.StatusCode.UNKNOWN, f"etcdproof: internal error: {e!r}")
                finally:
                    m.count_call("unary", service, method, code)

            return unary

        @functools.wraps(fn)
        async def stream(self, request, context):
            m = self.srv.metrics
            code = "OK"
            try:
                if isinstance(request, BadRequest):
                    raise request.error
                if self.srv.refuses_as_learner(request):
                    raise errors.NOT_SUPPORTED_FOR_LEARNER
                if self.srv.auth.enabled:
                    current_token.set(_token(context))
                async for resp in fn(self, request, context):
                    yield resp
            except EtcdError as e:
                code = _status(e).name
                await context.abort(_status(e), e.message)
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception as e:  # noqa: BLE001
                if isinstance(e, (grpc.aio.AbortError, Abort)):
                    raise
                log.exception("%s.%s failed", service, method)
                code = "UNKNOWN"
                await context.abort(grpc.StatusCode.UNKNOWN, f"etcdproof: internal error: {e!r}")
            finally:
                m.count_call(kind, service, method, code)

        return stream

    return deco


class _Base:
    def __init__(self, srv: "EtcdServer") -> None:
        self.srv = srv


class KV(_Base, rpc_pb2_grpc.KVServicer):
    @rpc("etcdserverpb.KV")
    def Range(self, request, context):
        return self.srv.range(request)

    @rpc("etcdserverpb.KV")
    def Put(self, request, context):
        return self.srv.put(request)

    @rpc("etcdserverpb.KV")
    def DeleteRange(self, request, context):
        return self.srv.delete_range(request)

    @rpc("etcdserverpb.KV")
    def Txn(self, request, context):
        return self.srv.txn(request)

    @rpc("etcdserverpb.KV")
    def Compact(self, request, context):
        return self.srv.compact(request)


class Watch(_Base, rpc_pb2_grpc.WatchServicer):
    @rpc("etcdserverpb.Watch", kind="bidi_stream")
    async def Watch(self, request_iterator, context):
        session = WatchSession(self.srv)

        async def receive() -> None:
            try:
                async for req in request_iterator:
                    if isinstance(req, BadRequest):
                        break  # grpc-go ends the stream on an undecodable message; so do we
                    session.handle(req)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a broken stream ends the session, nothing else
                session.close()
            # the client closing its send side keeps the stream open, as in etcd

        reader = asyncio.get_running_loop().create_task(receive())
        try:
            async for resp in session.responses():
                yield resp
        finally:
            reader.cancel()
            session.close()


class Lease(_Base, rpc_pb2_grpc.LeaseServicer):
    @rpc("etcdserverpb.Lease")
    def LeaseGrant(self, request, context):
        return self.srv.lease_grant(request)

    @rpc("etcdserverpb.Lease")
    def LeaseRevoke(self, request, context):
        return self.srv.lease_revoke(request)

    @rpc("etcdserverpb.Lease", kind="bidi_stream")
    async def LeaseKeepAlive(self, request_iterator, context):
        async for req in request_iterator:
            if isinstance(req, BadRequest):
                raise req.error
            ttl = await self.srv.lease_renew(req.ID)
            yield pb.LeaseKeepAliveResponse(header=self.srv.header(), ID=req.ID, TTL=ttl)

    @rpc("etcdserverpb.Lease")
    def LeaseTimeToLive(self, request, context):
        return self.srv.lease_time_to_live(request)

    @rpc("etcdserverpb.Lease")
    def LeaseLeases(self, request, context):
        return self.srv.lease_leases()


class Cluster(_Base, rpc_pb2_grpc.ClusterServicer):
    @rpc("etcdserverpb.Cluster")
    def MemberList(self, request, context):
        return self.srv.member_list()

    @rpc("etcdserverpb.Cluster")
    def MemberAdd(self, request, context):
        return self.srv.member_add(request)

    @rpc("etcdserverpb.Cluster")
    def MemberRemove(self, request, context):
        return self.srv.member_remove(request)

    @rpc("etcdserverpb.Cluster")
    def MemberUpdate(self, request, context):
        return self.srv.member_update(request)

    @rpc("etcdserverpb.Cluster")
    def MemberPromote(self, request, context):
        return self.srv.member_promote(request)


class Maintenance(_Base, rpc_pb2_grpc.MaintenanceServicer):
    @rpc("etcdserverpb.Maintenance")
    def Alarm(self, request, context):
        return self.srv.alarm(request)

    @rpc("etcdserverpb.Maintenance")
    def Status(self, request, context):
        return self.srv.status()

    @rpc("etcdserverpb.Maintenance")
    def Defragment(self, request, context):
        return self.srv.defragment()

    @rpc("etcdserverpb.Maintenance")
    def Hash(self, request, context):
        return self.srv.hash()

    @rpc("etcdserverpb.Maintenance")
    def HashKV(self, request, context):
        return self.srv.hash_kv(request)

    @rpc("etcdserverpb.Maintenance", kind="server_stream")
    def Snapshot(self, request, context):
        return self.srv.snapshot()

    @rpc("etcdserverpb.Maintenance")
    def MoveLeader(self, request, context):
        return self.srv.move_leader(request)

    @rpc("etcdserverpb.Maintenance")
    def Downgrade(self, request, context):
        raise errors.unimplemented("Downgrade")


class Auth(_Base, rpc_pb2_grpc.AuthServicer):
    """Users, roles and tokens (server/auth.py; the handlers in server/authapi.py)."""

    @rpc("etcdserverpb.Auth")
    def AuthStatus(self, request, context):
        return authapi.status(self.srv)

    @rpc("etcdserverpb.Auth")
    def Authenticate(self, request, context):
        return authapi.authenticate(self.srv, request)


def _auth_handler(name: str) -> Callable:
    @rpc("etcdserverpb.Auth")
    def handler(self, request, context):
        return authapi.call(self.srv, name, request)

    handler.__name__ = name
    return handler


for _name in authapi.FIELDS:
    setattr(Auth, _name, _auth_handler(_name))


class Lock(_Base, v3lock_pb2_grpc.LockServicer):
    @rpc("v3lockpb.Lock")
    def Lock(self, request, context):
        return concurrency.lock(self.srv, request)

    @rpc("v3lockpb.Lock")
    def Unlock(self, request, context):
        return concurrency.unlock(self.srv, request)


class Election(_Base, v3election_pb2_grpc.ElectionServicer):
    @rpc("v3electionpb.Election")
    def Campaign(self, request, context):
        return concurrency.campaign(self.srv, request)

    @rpc("v3electionpb.Election")
    def Proclaim(self, request, context):
        return concurrency.proclaim(self.srv, request)

    @rpc("v3electionpb.Election")
    def Leader(self, request, context):
        return concurrency.leader(self.srv, request)

    @rpc("v3electionpb.Election", kind="server_stream")
    def Observe(self, request, context):
        return concurrency.observe(self.srv, request)

    @rpc("v3electionpb.Election")
    def Resign(self, request, context):
        return concurrency.resign(self.srv, request)


def _services(srv: "EtcdServer") -> list[tuple[Any, Any]]:
    """(service descriptor, servicer) for every service the server offers."""
    return [
        (rpc_pb2.DESCRIPTOR.services_by_name["KV"], KV(srv)),
        (rpc_pb2.DESCRIPTOR.services_by_name["Watch"], Watch(srv)),
        (rpc_pb2.DESCRIPTOR.services_by_name["Lease"], Lease(srv)),
        (rpc_pb2.DESCRIPTOR.services_by_name["Cluster"], Cluster(srv)),
        (rpc_pb2.DESCRIPTOR.services_by_name["Maintenance"], Maintenance(srv)),
        (rpc_pb2.DESCRIPTOR.services_by_name["Auth"], Auth(srv)),
        (v3lock_pb2.DESCRIPTOR.services_by_name["Lock"], Lock(srv)),
        (v3election_pb2.DESCRIPTOR.services_by_name["Election"], Election(srv)),
    ]


def methods(srv: "EtcdServer") -> dict[str, Method]:
    """Every RPC by its path, for server/grpc_server.py."""
    out = {}
    for desc, servicer in _services(srv):
        for m in desc.methods:
            out[f"/{desc.full_name}/{m.name}"] = Method(
                m.client_streaming, m.server_streaming, getattr(servicer, m.name),
                _safe_deserializer(GetMessageClass(m.input_type)), GetMessageClass(m.output_type).SerializeToString)
    return out


async def open_grpc_server(srv: "EtcdServer", addresses: list[str], http1_factory=None) -> Any:
    """The gRPC server, bound to addresses ("host:port") but not yet serving: ours, or grpc.aio
    with ETCDPROOF_GRPC=grpcio. Either has start() and stop(grace). http1_factory serves HTTP/1.x
    clients on the same port (ours only)."""
    if os.environ.get("ETCDPROOF_GRPC", "") == "grpcio":
        return build_grpc_server(srv, addresses)
    server = GrpcServer(methods(srv), srv.cfg.max_request_bytes + GRPC_OVERHEAD, http1_factory)
    await server.bind(addresses)
    return server


def _service_handler(desc, servicer) -> grpc.GenericRpcHandler:
    """Handlers for every method of a service, with undecodable requests answered, not raised.

    Built from the service descriptor (what the generated add_*_to_server functions do), so the
    request deserializer can turn a corrupt message into a clean INTERNAL error.
    """
    factories = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for m in desc.methods:
        make = factories[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = make(
            getattr(servicer, m.name),
            request_deserializer=_safe_deserializer(GetMessageClass(m.input_type)),
            response_serializer=GetMessageClass(m.output_type).SerializeToString,
        )
    return grpc.method_handlers_generic_handler(desc.full_name, handlers)


def build_grpc_server(srv: "EtcdServer", addresses: list[str]) -> grpc.aio.Server:
    """A grpc.aio server with every service, listening on addresses ("host:port"); not started
    (ETCDPROOF_GRPC=grpcio)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", srv.cfg.max_request_bytes + GRPC_OVERHEAD),
            ("grpc.max_send_message_length", 2**31 - 1),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ("grpc.max_concurrent_streams", 2**31 - 1),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ],
    )
    for desc, servicer in _services(srv):
        server.add_generic_rpc_handlers((_service_handler(desc, servicer),))
    for addr in addresses:
        try:
            port = server.add_insecure_port(addr)
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot listen for clients on {addr} (address in use or not local)")
    return server
