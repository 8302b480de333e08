"""The log a single-member cluster commits through: persist, fsync, then apply.

An entry is committed once it is fsynced in the local WAL (a quorum of one). Two threads
pipeline the work: the persist thread appends every proposal waiting in the queue to the WAL
and fsyncs them together (group commit: one fsync for many requests), then hands the batch to
the apply thread, which applies it while the next batch is being persisted. Raft replaces this
module for multi-member clusters; the server above it only sees propose() and the apply callback.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from server.proto.raftpb import raft_pb2
from server.wal import WAL, WalSnapshot

log = logging.getLogger("etcdproof.node")

Entry = raft_pb2.Entry
HardState = raft_pb2.HardState

MAX_BATCH = 4096


class LocalLog:
    def __init__(
        self,
        wal: WAL,
        member_id: int,
        term: int,
        apply_batch: Callable[[list[Entry]], None],
        idle: Callable[[], None],
    ) -> None:
        self.wal = wal
        self.member_id = member_id
        self.term = term
        self.last_index = wal.last_index
        self.committed_index = wal.last_index
        self._apply_batch = apply_batch
        self._idle = idle
        self._proposals: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._to_apply: queue.SimpleQueue[list[Entry] | None] = queue.SimpleQueue()
        self._snapshot_req: WalSnapshot | None = None
        self._mu = threading.Lock()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self.fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] = lambda e: None

    def start(self) -> None:
        # a new term at every start, as a fresh election would give, persisted before use
        self.wal.save(HardState(term=self.term, vote=self.member_id, commit=self.committed_index), [])
        self.wal.sync()
        for name, fn in (("persist", self._persist_loop), ("apply", self._apply_loop)):
            t = threading.Thread(target=self._guard, args=(fn,), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except BaseException as e:  # a failed fsync or apply: the process must not go on
            log.critical("%s loop failed: %r", threading.current_thread().name, e, exc_info=True)
            self.fatal = e
            self.on_fatal(e)

    def propose(self, data: bytes) -> None:
        if self._stopped.is_set():
            raise RuntimeError("log stopped")
        self._proposals.put(data)

    def request_snapshot(self, index: int, term: int) -> None:
        """Called by the applier once the backend holds everything up to index durably."""
        with self._mu:
            self._snapshot_req = WalSnapshot(index=index, term=term)

    def _persist_loop(self) -> None:
        while True:
            try:
                first = self._proposals.get(timeout=0.1)
            except queue.Empty:
                self._maybe_snapshot()
                continue
            if first is None:
                break
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._proposals.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            entries = []
            for data in batch:
                self.last_index += 1
                entries.append(Entry(Type=raft_pb2.EntryNormal, Term=self.term, Index=self.last_index, Data=data))
            self.wal.save(HardState(term=self.term, vote=self.member_id, commit=self.last_index), entries)
            self.wal.sync()
            self.committed_index = self.last_index
            self._to_apply.put(entries)
            self._maybe_snapshot()
            if stop:
                break
        self._to_apply.put(None)

    def _maybe_snapshot(self) -> None:
        with self._mu:
            req, self._snapshot_req = self._snapshot_req, None
        if req is not None:
            self.wal.save_snapshot(req)
            log.info("snapshot at index %d; wal segments %d", req.index, len(self.wal.segments()))

    def _apply_loop(self) -> None:
        while True:
            try:
                entries = self._to_apply.get(timeout=0.05)
            except queue.Empty:
                self._idle()
                continue
            if entries is None:
                break
            # take whatever else is already committed: fewer lock round trips under load
            batch = list(entries)
            while len(batch) < MAX_BATCH:
                try:
                    more = self._to_apply.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._apply_batch(batch)
                    self._idle()
                    return
                batch.extend(more)
            self._apply_batch(batch)
            self._idle()

    def stop(self, timeout: float = 10.0) -> None:
        """Persist and apply what was proposed, then stop both threads."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._proposals.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._maybe_snapshot()
        self.wal.close()
