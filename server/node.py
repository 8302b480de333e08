"""The log a single-member cluster commits through: persist, fsync, then apply.

An entry is committed once it is fsynced in the local WAL (a quorum of one). The log runs on
the server's event loop; the WAL write and fdatasync run on one dedicated thread (fsync
releases the GIL, so the loop keeps serving meanwhile). Group commit falls out of the loop:
everything proposed while one batch is being written goes into the next write, and the next
write starts before the previous batch is applied, so fsync and apply overlap. Raft replaces
this module for multi-member clusters; the server above it sees propose() and the callback.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from server.proto.raftpb import raft_pb2
from server.wal import WAL, WalSnapshot, encode_batch

log = logging.getLogger("etcdproof.node")

Entry = raft_pb2.Entry
HardState = raft_pb2.HardState

MAX_BATCH = 8192


class LogStopped(Exception):
    pass


class LocalLog:
    def __init__(
        self,
        wal: WAL,
        member_id: int,
        term: int,
        on_committed: Callable[[list[Entry]], None],
    ) -> None:
        self.wal = wal
        self.member_id = member_id
        self.term = term
        self.last_index = wal.last_index
        self.committed_index = wal.last_index
        self._on_committed = on_committed
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] = lambda e: None

    def start(self) -> None:
        # a new term at every start, as a fresh election would give, durable before use
        self.wal.save(HardState(term=self.term, vote=self.member_id, commit=self.committed_index), [])
        self.wal.sync()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="log")

    def propose(self, data: bytes) -> None:
        if self._stopping or self.fatal is not None:
            raise LogStopped()
        self._pending.append(data)
        self._wake.set()

    def _write(self, data: bytes, last_index: int, hs: HardState) -> None:
        """On the WAL thread: append and make durable (syscalls only: the GIL stays free)."""
        self.wal.append(data, last_index, hs)
        self.wal.sync()

    def _start_write(self) -> tuple[asyncio.Future, list[Entry]] | None:
        if not self._pending:
            return None
        batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        entries = []
        for data in batch:
            self.last_index += 1
            entries.append(Entry(Type=raft_pb2.EntryNormal, Term=self.term, Index=self.last_index, Data=data))
        hs = HardState(term=self.term, vote=self.member_id, commit=self.last_index)
        data = encode_batch(hs, entries)  # Python work stays on the loop
        fut = asyncio.get_running_loop().run_in_executor(self._io, self._write, data, self.last_index, hs)
        return fut, entries

    async def _run(self) -> None:
        inflight = None
        try:
            while True:
                if inflight is None:
                    inflight = self._start_write()
                    if inflight is None:
                        if self._stopping:
                            return
                        self._wake.clear()
                        await self._wake.wait()
                        continue
                fut, entries = inflight
                await fut
                self.committed_index = entries[-1].Index
                inflight = self._start_write()  # the next fsync runs while this batch applies
                self._on_committed(entries)
        except BaseException as e:  # a failed write or fsync: nothing more may be acknowledged
            if isinstance(e, asyncio.CancelledError):
                raise
            log.critical("log failed: %r", e, exc_info=True)
            self.fatal = e
            self.on_fatal(e)

    async def request_snapshot(self, index: int, term: int) -> None:
        """Record in the WAL that the backend durably holds everything up to index."""
        snap = WalSnapshot(index=index, term=term)
        await asyncio.get_running_loop().run_in_executor(self._io, self.wal.save_snapshot, snap)
        log.info("snapshot at index %d; wal segments %d", index, len(self.wal.segments()))

    async def stop(self) -> None:
        """Persist and apply what was proposed, then close the WAL."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
        await asyncio.get_running_loop().run_in_executor(self._io, self.wal.close)
        self._io.shutdown(wait=True)
