"""One client watch stream (gRPC or HTTP): its watchers, IDs and outbound queue.

etcd's rules: watch IDs are per stream, chosen by the client or the lowest free one; a create is
answered with created=true (with canceled=true and a reason if it cannot be made) before any of
its events; a cancel is answered with canceled=true; a stream's responses keep their order.
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, AsyncIterator

from server.auth import READ
from server.errors import EtcdError
from server.proto.etcdserverpb import rpc_pb2
from server.validate import delete_bounds

if TYPE_CHECKING:
    from server.etcdserver import EtcdServer

pb = rpc_pb2
STREAM_CAPACITY = 1024  # queued responses before a watcher is treated as slow
ERR_DUPLICATE_ID = "mvcc: duplicate watch ID provided on the WatchStream"
ERR_EMPTY_RANGE = "mvcc: watcher range is empty"


class QueueSink:
    """The hub's view of a stream: an unbounded queue, reported full past `capacity`."""

    def __init__(self, capacity: int = STREAM_CAPACITY) -> None:
        self.q: asyncio.Queue[pb.WatchResponse | None] = asyncio.Queue()
        self.capacity = capacity

    def send(self, resp: pb.WatchResponse) -> None:
        self.q.put_nowait(resp)

    def has_room(self) -> bool:
        return self.q.qsize() < self.capacity


class WatchSession:
    def __init__(self, srv: "EtcdServer") -> None:
        self.srv = srv
        self.sink = QueueSink()
        self._next_id = 0
        self._closed = False

    def handle(self, req: pb.WatchRequest) -> None:
        which = req.WhichOneof("request_union")
        if which == "create_request":
            self._create(req.create_request)
        elif which == "cancel_request":
            self._cancel(req.cancel_request.watch_id)
        elif which == "progress_request":
            self.srv.hub.request_progress(self.sink)

    def _create(self, c: pb.WatchCreateRequest) -> None:
        srv = self.srv
        start, end = delete_bounds(c.key, c.range_end)
        cur = srv.store.current_rev
        hdr = srv.header(cur)
        if end is not None and end != b"" and start >= end:
            self.sink.send(pb.WatchResponse(header=hdr, watch_id=-1, created=True, canceled=True,
                                            cancel_reason=ERR_EMPTY_RANGE))
            return
        if srv.auth.enabled:
            try:
                srv.auth.check(srv.auth_info(), c.key, c.range_end, READ)
            except EtcdError as e:
                self.sink.send(pb.WatchResponse(header=hdr, watch_id=-1, created=True, canceled=True,
                                                cancel_reason=f"rpc error: code = {e.grpc_name} desc = {e.message}"))
                return
        if c.watch_id:
            if srv.hub.get(self.sink, c.watch_id) is not None:
                self.sink.send(pb.WatchResponse(header=hdr, watch_id=-1, created=True, canceled=True,
                                                cancel_reason=ERR_DUPLICATE_ID))
                return
            wid = c.watch_id
        else:
            while srv.hub.get(self.sink, self._next_id) is not None:
                self._next_id += 1
            wid = self._next_id
            self._next_id += 1
        w = srv.hub.watch(
            self.sink,
            wid,
            start,
            end,
            c.start_revision,
            prev_kv=c.prev_kv,
            filters=list(c.filters),
            progress_notify=c.progress_notify,
            fragment=c.fragment,
        )
        self.sink.send(pb.WatchResponse(header=hdr, watch_id=wid, created=True))
        if not w.synced:
            srv.hub.sync()  # replay history now rather than at the next housekeeping round

    def _cancel(self, wid: int) -> None:
        w = self.srv.hub.get(self.sink, wid)
        if w is None:
            return
        self.srv.hub.cancel(w)
        self.sink.send(pb.WatchResponse(header=self.srv.header(), watch_id=wid, canceled=True))

    async def responses(self) -> AsyncIterator[pb.WatchResponse]:
        while True:
            resp = await self.sink.q.get()
            if resp is None:
                return
            yield resp

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.srv.hub.close_stream(self.sink)
        self.sink.q.put_nowait(None)
