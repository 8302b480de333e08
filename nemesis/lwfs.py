"""lwfs: a FUSE filesystem that loses unsynced writes, as a machine losing power would.

    python lwfs.py BACKING MOUNTPOINT --control FIFO --status FILE

Every file's data written through the mount stays in this process's memory (4 KiB pages over the
file's content in BACKING) until the file is fsynced or fdatasynced; only then does it reach
BACKING, itself fsynced. Reads see the writes at once, as from a page cache. Writing
`crash <id>` to the control FIFO drops every unsynced page and size change, so the files are
what the last fsync of each made them; the status file (JSON) then names the crash, the files
and bytes dropped. `flush <id>` writes everything out instead (a clean shutdown), and SIGTERM
unmounts after flushing. Files opened with O_SYNC or O_DSYNC write through at once.

Names are not buffered: create, mkdir, rename, unlink, link, symlink and chmod apply to BACKING
at once, so a crash never loses a file's existence or its name, only the data written since its
last fsync (a kinder crash than a real disk's, which can also lose a rename made without a
directory fsync). The harness kills the server before it crashes the filesystem, so nothing
writes between the two.

The pure part (`Overlay`) needs nothing beyond the standard library and is tested on its own;
mfusepy (ctypes bindings for libfuse 3) is imported only to mount.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import threading
import time

PAGE = 4096


class FileState:
    """Unsynced state of one file: pages that differ from BACKING, and its size if changed."""

    __slots__ = ("pages", "size")

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.size: int | None = None


class Overlay:
    """The unsynced writes of every file, by path relative to the backing root (pure, no FUSE).

    Every method takes the lock; the backing files are read and written only through the
    functions given, so tests can use plain files.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.files: dict[str, FileState] = {}
        self.lock = threading.RLock()
        self.crashes = 0
        self.synced_bytes = 0

    def real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    # ------------------------------------------------------------ reading
    def _backing_size(self, path: str) -> int:
        try:
            return os.stat(self.real(path)).st_size
        except FileNotFoundError:
            return 0

    def size(self, path: str) -> int:
        with self.lock:
            st = self.files.get(path)
            if st is not None and st.size is not None:
                return st.size
            return self._backing_size(path)

    def _backing_page(self, path: str, index: int) -> bytearray:
        try:
            with open(self.real(path), "rb") as f:
                f.seek(index * PAGE)
                data = f.read(PAGE)
        except FileNotFoundError:
            data = b""
        return bytearray(data.ljust(PAGE, b"\0"))

    def read(self, path: str, size: int, offset: int) -> bytes:
        with self.lock:
            end = min(offset + size, self.size(path))
            if end <= offset:
                return b""
            st = self.files.get(path)
            if st is None or not st.pages:
                with open(self.real(path), "rb") as f:
                    f.seek(offset)
                    return f.read(end - offset).ljust(end - offset, b"\0")
            out = bytearray()
            pos = offset
            while pos < end:
                index, start = divmod(pos, PAGE)
                page = st.pages.get(index)
                if page is None:
                    page = self._backing_page(path, index)
                take = min(PAGE - start, end - pos)
                out += page[start:start + take]
                pos += take
            return bytes(out)

    # ------------------------------------------------------------ writing
    def write(self, path: str, data: bytes, offset: int) -> int:
        with self.lock:
            st = self.files.setdefault(path, FileState())
            old_size = self.size(path)
            pos, i = offset, 0
            while i < len(data):
                index, start = divmod(pos, PAGE)
                page = st.pages.get(index)
                if page is None:
                    page = self._backing_page(path, index) if index * PAGE < old_size else bytearray(PAGE)
                    st.pages[index] = page
                take = min(PAGE - start, len(data) - i)
                page[start:start + take] = data[i:i + take]
                pos += take
                i += take
            st.size = max(old_size, offset + len(data))
            return len(data)

    def truncate(self, path: str, length: int) -> None:
        with self.lock:
            st = self.files.setdefault(path, FileState())
            old_size = self.size(path)
            for index in [k for k in st.pages if k * PAGE >= length]:
                del st.pages[index]
            index, start = divmod(length, PAGE)
            if start and length < old_size:  # zero the cut part of the last page, as the kernel would
                page = st.pages.get(index)
                if page is None:
                    page = self._backing_page(path, index)
                    st.pages[index] = page
                page[start:] = bytes(PAGE - start)
            st.size = length

    def sync(self, path: str) -> int:
        """Write path's unsynced pages and size to BACKING and fsync it; bytes written."""
        with self.lock:
            st = self.files.pop(path, None)
            if st is None:
                fd = os.open(self.real(path), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return 0
            size = st.size if st.size is not None else self._backing_size(path)
            fd = os.open(self.real(path), os.O_WRONLY)
            written = 0
            try:
                for index in sorted(st.pages):
                    chunk = bytes(st.pages[index][: max(0, min(PAGE, size - index * PAGE))])
                    if chunk:
                        os.pwrite(fd, chunk, index * PAGE)
                        written += len(chunk)
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.synced_bytes += written
            return written

    def sync_all(self) -> int:
        with self.lock:
            return sum(self.sync(p) for p in list(self.files) if os.path.exists(self.real(p)))

    def crash(self) -> dict:
        """Forget every unsynced write: what a power cut does to a page cache."""
        with self.lock:
            dropped = {p: {"pages": len(st.pages), "bytes": len(st.pages) * PAGE,
                           "size_change": st.size is not None and st.size != self._backing_size(p)}
                       for p, st in self.files.items()}
            self.files.clear()
            self.crashes += 1
            return dropped

    # ------------------------------------------------------------ names
    def rename(self, old: str, new: str) -> None:
        with self.lock:
            self.files.pop(new, None)
            prefix = old.rstrip("/") + "/"
            for p in list(self.files):
                if p == old:
                    self.files[new] = self.files.pop(p)
                elif p.startswith(prefix):
                    self.files[new.rstrip("/") + "/" + p[len(prefix):]] = self.files.pop(p)

    def forget(self, path: str) -> None:
        with self.lock:
            self.files.pop(path, None)

    def unsynced(self) -> dict[str, int]:
        with self.lock:
            return {p: len(st.pages) * PAGE for p, st in self.files.items()}


def make_operations(ov: Overlay):
    """The mfusepy Operations over an Overlay: data through the overlay, names straight through."""
    import mfusepy as fuse

    class LostWrites(fuse.Operations):
        use_ns = True

        def __init__(self) -> None:
            self.sync_fh: set[int] = set()
            self.next_fh = 1
            self.fh_lock = threading.Lock()

        def _fh(self, flags: int) -> int:
            with self.fh_lock:
                fh = self.next_fh
                self.next_fh += 1
            if flags & (os.O_SYNC | os.O_DSYNC):
                self.sync_fh.add(fh)
            return fh

        def getattr(self, path, fh=None):
            st = os.lstat(ov.real(path))
            d = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino",
                                              "st_atime_ns", "st_mtime_ns", "st_ctime_ns", "st_blocks")}
            d["st_atime"], d["st_mtime"], d["st_ctime"] = d.pop("st_atime_ns"), d.pop("st_mtime_ns"), d.pop("st_ctime_ns")
            if not os.path.isdir(ov.real(path)):
                d["st_size"] = ov.size(path)
            return d

        def readdir(self, path, fh):
            return [".", "..", *os.listdir(ov.real(path))]

        def access(self, path, amode):
            if not os.access(ov.real(path), amode):
                raise fuse.FuseOSError(errno.EACCES)
            return 0

        def readlink(self, path):
            return os.readlink(ov.real(path))

        def statfs(self, path):
            s = os.statvfs(ov.real(path))
            return {k: getattr(s, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                                               "f_files", "f_flag", "f_frsize", "f_namemax")}

        # names: straight to BACKING
        def mkdir(self, path, mode):
            os.mkdir(ov.real(path), mode)
            return 0

        def rmdir(self, path):
            os.rmdir(ov.real(path))
            return 0

        def unlink(self, path):
            os.unlink(ov.real(path))
            ov.forget(path)
            return 0

        def rename(self, old, new):
            with ov.lock:
                os.rename(ov.real(old), ov.real(new))
                ov.rename(old, new)
            return 0

        def link(self, target, source):
            os.link(ov.real(source), ov.real(target))
            return 0

        def symlink(self, target, source):
            os.symlink(source, ov.real(target))
            return 0

        def chmod(self, path, mode):
            os.chmod(ov.real(path), mode)
            return 0

        def chown(self, path, uid, gid):
            os.chown(ov.real(path), uid, gid)
            return 0

        def utimens(self, path, times=None):
            os.utime(ov.real(path), ns=times) if times else os.utime(ov.real(path))
            return 0

        def mknod(self, path, mode, dev):
            os.mknod(ov.real(path), mode, dev)
            return 0

        # data: through the overlay
        def create(self, path, mode, flags=0):
            fd = os.open(ov.real(path), os.O_WRONLY | os.O_CREAT, mode)
            os.close(fd)
            if flags & os.O_TRUNC:
                ov.truncate(path, 0)
            return self._fh(flags)

        def open(self, path, flags):
            if not os.path.exists(ov.real(path)):
                raise fuse.FuseOSError(errno.ENOENT)
            if flags & os.O_TRUNC:
                ov.truncate(path, 0)
            return self._fh(flags)

        def read(self, path, size, offset, fh):
            return ov.read(path, size, offset)

        def write(self, path, data, offset, fh):
            with ov.lock:
                n = ov.write(path, bytes(data), offset)
                if fh in self.sync_fh:
                    ov.sync(path)
            return n

        def truncate(self, path, length, fh=None):
            ov.truncate(path, length)
            return 0

        def fsync(self, path, datasync, fh):
            ov.sync(path)
            return 0

        def fsyncdir(self, path, datasync, fh):
            fd = os.open(ov.real(path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            return 0

        def flush(self, path, fh):
            return 0

        def release(self, path, fh):
            self.sync_fh.discard(fh)
            return 0

    return LostWrites()


def serve_control(ov: Overlay, fifo: str, status: str, info: dict) -> None:
    """Read `crash <id>` / `flush <id>` lines from the FIFO forever; answer in the status file."""

    def write_status(extra: dict) -> None:
        info.update(extra, crashes=ov.crashes, unsynced_bytes=sum(ov.unsynced().values()), synced_bytes=ov.synced_bytes,
                    time=time.time())
        tmp = status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, status)

    write_status({})
    while True:
        with open(fifo) as f:
            for line in f:
                parts = line.split()
                if not parts:
                    continue
                ident = parts[1] if len(parts) > 1 else ""
                if parts[0] == "crash":
                    dropped = ov.crash()
                    write_status({"last": ident, "op": "crash", "dropped": dropped,
                                  "dropped_bytes": sum(d["bytes"] for d in dropped.values())})
                elif parts[0] == "flush":
                    n = ov.sync_all()
                    write_status({"last": ident, "op": "flush", "flushed_bytes": n})
                elif parts[0] == "status":
                    write_status({"last": ident, "op": "status", "unsynced": ov.unsynced()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lwfs", description=__doc__.splitlines()[0])
    p.add_argument("backing")
    p.add_argument("mountpoint")
    p.add_argument("--control", required=True, help="FIFO taking crash/flush/status lines")
    p.add_argument("--status", required=True, help="JSON status file")
    a = p.parse_args(argv)
    import mfusepy as fuse

    ov = Overlay(os.path.abspath(a.backing))
    if not os.path.exists(a.control):
        os.mkfifo(a.control)
    info = {"pid": os.getpid(), "backing": ov.root, "mountpoint": a.mountpoint, "mounted": True}
    threading.Thread(target=serve_control, args=(ov, a.control, a.status, info), daemon=True).start()
    try:
        fuse.FUSE(make_operations(ov), a.mountpoint, foreground=True, nothreads=False, fsname="etcdproof-lwfs",
                  subtype="lwfs", attr_timeout=0, entry_timeout=0, negative_timeout=0)
    finally:
        flushed = ov.sync_all()  # unmounted cleanly: what was written is written, as at a clean shutdown
        info.update(mounted=False, flushed_bytes=flushed, time=time.time())
        with open(a.status + ".tmp", "w") as f:
            json.dump(info, f)
        os.replace(a.status + ".tmp", a.status)
    return 0


if __name__ == "__main__":
    sys.exit(main())
