"""Durable backend: LMDB buckets with batched commits, the analogue of etcd's bbolt backend.

Why LMDB: like bbolt it is a single-file, copy-on-write B+tree with one writer and lock-free
MVCC readers, crash-safe commits, and a file that only shrinks by copying (defragment). See
docs/design-choices.md.

Writes are buffered and committed in batches (every `batch_interval` seconds or `batch_limit`
writes), each commit fsynced, as etcd batches bbolt transactions. Durability of acknowledged
requests comes from the WAL, which is replayed over the backend's consistent index on restart.
Reads see buffered writes. Thread safety: any thread may read or write; one commit runs at a time.

A commit must never split a log entry's writes from the consistent index recorded with them
(a crash after such a commit would replay the entry over its own effects). So the writer marks
the boundaries: `seal()` makes everything written so far committable, and `commit(seal=False)`,
as a commit on another thread runs, writes only what was sealed.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
import zlib
from typing import Callable, Iterator

import lmdb

from server.fsutil import fsync_dir

BUCKETS = (b"key", b"meta", b"lease", b"members", b"members_removed", b"alarm", b"cluster",
           b"auth", b"authUsers", b"authRoles")
KEY = b"key"
META = b"meta"
META_CONSISTENT_INDEX = b"consistent_index"
META_TERM = b"term"

_DELETED = object()


class Backend:
    def __init__(
        self,
        path: str,
        map_size: int = 4 << 30,
        batch_interval: float = 0.1,
        batch_limit: int = 10000,
        observe_commit: Callable[[float], None] | None = None,
        no_fsync: bool = False,
    ) -> None:
        self.path = path
        self.no_fsync = no_fsync  # --unsafe-no-fsync: LMDB commits without syncing
        self.map_size = map_size
        self.batch_interval = batch_interval
        self.batch_limit = batch_limit
        self.observe_commit = observe_commit or (lambda s: None)
        self._mu = threading.Lock()  # guards _pending, _committing, _env swaps
        self._commit_mu = threading.Lock()  # one commit (or defrag) at a time
        self._pending: dict[bytes, dict[bytes, object]] = {b: {} for b in BUCKETS}  # not yet sealed
        self._sealed: dict[bytes, dict[bytes, object]] = {b: {} for b in BUCKETS}  # for the next commit
        self._committing: dict[bytes, dict[bytes, object]] = {b: {} for b in BUCKETS}
        self._pending_count = 0  # writes not yet committed (pending and sealed)
        self._sealed_count = 0
        self._pending_bytes = 0  # bytes put since the last commit (not yet in the file)
        self._sealed_bytes = 0
        self._last_commit = time.monotonic()
        self._size = -1  # cached file size; -1 = recompute (it only changes on commit)
        self._env, self._dbs = self._open()

    def _open(self) -> tuple[lmdb.Environment, dict[bytes, object]]:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        env = lmdb.open(
            self.path,
            subdir=False,
            map_size=self.map_size,
            max_dbs=len(BUCKETS) + 2,
            max_readers=1024,
            sync=not self.no_fsync,
            metasync=not self.no_fsync,
            readahead=False,
            meminit=False,
        )
        dbs = {b: env.open_db(b) for b in BUCKETS}
        return env, dbs

    # ---------------------------------------------------------------- writes
    def put(self, bucket: bytes, key: bytes, value: bytes) -> None:
        with self._mu:
            self._pending[bucket][key] = value
            self._pending_count += 1
            self._pending_bytes += len(key) + len(value)

    def delete(self, bucket: bytes, key: bytes) -> None:
        with self._mu:
            self._pending[bucket][key] = _DELETED
            self._pending_count += 1

    def put_rev(self, rev_key: bytes, value: bytes) -> None:
        self.put(KEY, rev_key, value)

    def delete_revs(self, rev_keys: list[bytes]) -> None:
        with self._mu:
            p = self._pending[KEY]
            for k in rev_keys:
                p[k] = _DELETED
            self._pending_count += len(rev_keys)

    def put_meta(self, key: bytes, value: bytes) -> None:
        self.put(META, key, value)

    def commit_due(self) -> bool:
        """Whether the batch is old or large enough that the owner should commit now."""
        return self._pending_count > 0 and (
            self._pending_count >= self.batch_limit
            or time.monotonic() - self._last_commit >= self.batch_interval
        )

    def seal(self) -> None:
        """Everything written so far may go into the next commit (call it between log entries)."""
        with self._mu:
            n = self._pending_count - self._sealed_count
            if n == 0:
                return
            if self._sealed_count == 0:
                self._sealed, self._pending = self._pending, self._sealed
            else:  # a commit is slow: this batch joins the one waiting
                for bucket, items in self._pending.items():
                    if items:
                        self._sealed[bucket].update(items)
                        items.clear()
            self._sealed_count = self._pending_count
            self._sealed_bytes = self._pending_bytes

    def commit(self, seal: bool = True) -> None:
        """Write the sealed batch to LMDB in one fsynced transaction; seal first unless told not to
        (a commit on another thread than the writer's must not: it could split an entry)."""
        if seal:
            self.seal()
        with self._commit_mu:
            with self._mu:
                if self._sealed_count == 0:
                    self._last_commit = time.monotonic()
                    return
                self._committing, self._sealed = self._sealed, {b: {} for b in BUCKETS}
                self._pending_count -= self._sealed_count
                self._pending_bytes -= self._sealed_bytes
                self._sealed_count = 0
                self._sealed_bytes = 0
            t0 = time.monotonic()
            with self._env.begin(write=True) as txn:
                for bucket, items in self._committing.items():
                    db = self._dbs[bucket]
                    for k, v in items.items():
                        if v is _DELETED:
                            txn.delete(k, db=db)
                        else:
                            txn.put(k, v, db=db)  # type: ignore[arg-type]
            elapsed = time.monotonic() - t0
            with self._mu:
                self._committing = {b: {} for b in BUCKETS}
                self._size = -1
            self._last_commit = time.monotonic()
            self.observe_commit(elapsed)

    # ----------------------------------------------------------------- reads
    def _buffered(self, bucket: bytes, key: bytes) -> object | None:
        v = self._pending[bucket].get(key)
        if v is None:
            v = self._sealed[bucket].get(key)
            if v is None:
                v = self._committing[bucket].get(key)
        return v

    def get(self, bucket: bytes, key: bytes) -> bytes | None:
        with self._mu:
            v = self._buffered(bucket, key)
            if v is None:
                with self._env.begin(db=self._dbs[bucket], buffers=False) as txn:
                    return txn.get(key)
        return None if v is _DELETED else v  # type: ignore[return-value]

    def get_rev(self, rev_key: bytes) -> bytes | None:
        return self.get(KEY, rev_key)

    def get_revs(self, rev_keys: list[bytes]) -> list[bytes | None]:
        """Several revisions in one read transaction (range reads fetch many values)."""
        out: list[bytes | None] = []
        with self._mu:
            missing = []
            for i, k in enumerate(rev_keys):
                v = self._buffered(KEY, k)
                if v is None:
                    missing.append(i)
                out.append(None if v is _DELETED else v)  # type: ignore[arg-type]
            if missing:
                with self._env.begin(db=self._dbs[KEY], buffers=False) as txn:
                    for i in missing:
                        out[i] = txn.get(rev_keys[i])
        return out

    def get_meta(self, key: bytes) -> bytes | None:
        return self.get(META, key)

    def items(self, bucket: bytes) -> list[tuple[bytes, bytes]]:
        """All live items of a bucket in key order, buffered writes included."""
        return list(self._iter(bucket, b"", None))

    def iter_revs(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        return self._iter(KEY, start, end)

    def _iter(self, bucket: bytes, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        """Merge the committed B+tree with buffered writes over [start, end), in key order.

        The buffered items are copied under the lock, the LMDB part is read in one read
        transaction (a consistent snapshot), so the result is a consistent view.
        """
        with self._mu:
            overlay: dict[bytes, object] = dict(self._committing[bucket])
            overlay.update(self._sealed[bucket])
            overlay.update(self._pending[bucket])
            txn = self._env.begin(db=self._dbs[bucket], buffers=False)
        try:
            over_keys = sorted(k for k in overlay if k >= start and (end is None or k < end))
            oi = 0
            cur = txn.cursor()
            ok = cur.set_range(start)
            while ok:
                k = cur.key()
                if end is not None and k >= end:
                    break
                while oi < len(over_keys) and over_keys[oi] < k:
                    ov = overlay[over_keys[oi]]
                    if ov is not _DELETED:
                        yield over_keys[oi], ov  # type: ignore[misc]
                    oi += 1
                if oi < len(over_keys) and over_keys[oi] == k:
                    ov = overlay[k]
                    if ov is not _DELETED:
                        yield k, ov  # type: ignore[misc]
                    oi += 1
                else:
                    yield k, cur.value()
                ok = cur.next()
            for k in over_keys[oi:]:
                ov = overlay[k]
                if ov is not _DELETED:
                    yield k, ov  # type: ignore[misc]
        finally:
            txn.abort()

    # ------------------------------------------------------------ whole file
    def size(self) -> int:
        """Bytes the database file occupies (what etcd reports as dbSize), as of the last commit."""
        if self._size < 0:
            info = self._env.info()
            self._size = (info["last_pgno"] + 1) * self._env.stat()["psize"]
        return self._size

    def size_with_pending(self) -> int:
        """The file size plus what the pending batch will add: what quota checks must see."""
        return self.size() + self._pending_bytes

    def size_in_use(self) -> int:
        """Bytes held by live pages; the rest is free space that defragment gives back."""
        psize = self._env.stat()["psize"]
        pages = 2  # the two meta pages
        with self._env.begin(buffers=False) as txn:
            main = txn.stat()
            pages += main["branch_pages"] + main["leaf_pages"] + main["overflow_pages"]
            for db in self._dbs.values():
                st = txn.stat(db)
                pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * psize

    def hash(self) -> int:
        """CRC-32 over every bucket's keys and values, in order (Maintenance.Hash)."""
        self.commit()
        h = 0
        with self._env.begin(buffers=False) as txn:
            for bucket in BUCKETS:
                h = zlib.crc32(bucket, h)
                for k, v in txn.cursor(db=self._dbs[bucket]):
                    h = zlib.crc32(v, zlib.crc32(k, h))
        return h

    def defragment(self) -> None:
        """Rewrite the file compactly (LMDB's compacting copy), then swap it in.

        The caller must stop other readers and writers (it holds the server's store lock).
        """
        self.commit()
        with self._commit_mu, self._mu:
            tmp = self.path + ".defrag"
            if os.path.exists(tmp):
                os.unlink(tmp)
            self._env.copy(tmp, compact=True)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._env.close()
            os.replace(tmp, self.path)
            fsync_dir(os.path.dirname(self.path) or ".")
            self._env, self._dbs = self._open()
            self._size = -1

    def snapshot_to(self, path: str) -> str:
        """Write a consistent copy of the committed database to path; returns its sha256 hex.
        Runs on a helper thread: it commits what is sealed, never splitting an entry."""
        self.commit(seal=False)
        self._env.copy(path, compact=True)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()

    def copy_committed(self, path: str) -> tuple[int, int]:
        """Copy what is committed now to path; returns the copy's (consistent index, term).

        The index and the copy come from one read transaction, so they agree exactly.
        """
        with self._commit_mu:
            txn = self._env.begin(buffers=False)
            try:
                meta = self._dbs[META]
                ci = int.from_bytes(txn.get(META_CONSISTENT_INDEX, db=meta) or b"\0", "big")
                term = int.from_bytes(txn.get(META_TERM, db=meta) or b"\0", "big")
                self._env.copy(path, compact=True, txn=txn)
            finally:
                txn.abort()
        return ci, term

    def replace_with(self, path: str) -> None:
        """Make the database at path (a snapshot from the leader) this backend; pending writes
        are dropped, since the snapshot supersedes them."""
        with self._commit_mu, self._mu:
            self._env.close()
            os.replace(path, self.path)
            fsync_dir(os.path.dirname(self.path) or ".")
            self._pending = {b: {} for b in BUCKETS}
            self._sealed = {b: {} for b in BUCKETS}
            self._committing = {b: {} for b in BUCKETS}
            self._pending_count = self._sealed_count = 0
            self._pending_bytes = self._sealed_bytes = 0
            self._size = -1
            self._env, self._dbs = self._open()

    def close(self) -> None:
        self.commit()
        self._env.close()
