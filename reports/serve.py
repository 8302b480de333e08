"""`etcdproof serve [--store DIR] [--port N] [--host 127.0.0.1]`: browse the store over HTTP.

The standard library's threading HTTP server over the store directory, with two additions: the
index page is regenerated whenever the store changed since it was last written, and a run whose
report was never rendered (a runner killed before it got there) gets it rendered on first request.
Raw files are served as they are, histories and logs as text. Loopback by default: the store may
hold node logs that are nobody else's business.
"""
from __future__ import annotations

import argparse
import errno
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from reports.index import BENCH_JSON, render_index

TEXT = "text/plain; charset=utf-8"


def store_signature(root: Path) -> tuple:
    """What the index depends on: each run directory and the mtimes of its files that feed a row."""
    sig = []
    for d in sorted(root.glob("*/*")):
        if not d.is_dir() or d.is_symlink():
            continue
        for name in ("test.json", "results.json", BENCH_JSON, "index.html"):
            try:
                sig.append((d.name, d.parent.name, name, (d / name).stat().st_mtime_ns))
            except OSError:
                pass
    return tuple(sig)


class StoreHandler(SimpleHTTPRequestHandler):
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".jsonl": TEXT, ".log": TEXT, ".edn": TEXT,
                      ".txt": TEXT, ".json": "application/json", ".html": "text/html; charset=utf-8"}

    def __init__(self, *args, store: "Store", **kwargs) -> None:
        self.store = store
        super().__init__(*args, directory=str(store.root), **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.store.prepare(unquote(urlsplit(self.path).path))
        super().do_GET()

    def do_HEAD(self) -> None:  # noqa: N802
        self.store.prepare(unquote(urlsplit(self.path).path))
        super().do_HEAD()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        if self.store.verbose:
            super().log_message(format, *args)


class Store:
    """The served directory: keeps index.html current and renders missing run reports."""

    def __init__(self, root: Path, verbose: bool = False) -> None:
        self.root = root.resolve()
        self.verbose = verbose
        self._lock = threading.Lock()
        self._sig: tuple | None = None

    def prepare(self, path: str) -> None:
        parts = [p for p in path.split("/") if p]
        with self._lock:
            if not parts or parts == ["index.html"]:
                sig = store_signature(self.root)
                if sig != self._sig or not (self.root / "index.html").exists():
                    render_index(self.root)
                    self._sig = store_signature(self.root)
            elif len(parts) in (2, 3) and (len(parts) == 2 or parts[2] == "index.html"):
                run = (self.root / parts[0] / parts[1]).resolve()
                if run.parent.parent == self.root and (run / "test.json").exists() and not (run / "index.html").exists():
                    from reports.run import render_run

                    try:
                        render_run(run)
                    except (OSError, ValueError) as e:  # a malformed run: its files are listed instead
                        print(f"etcdproof serve: no report for {run}: {e}", file=sys.stderr, flush=True)


def make_server(root: str | Path, host: str = "127.0.0.1", port: int = 8080, verbose: bool = False) -> ThreadingHTTPServer:
    store = Store(Path(root), verbose)
    srv = ThreadingHTTPServer((host, port), partial(StoreHandler, store=store))
    srv.daemon_threads = True
    return srv


def serve_main(argv: list[str]) -> int:
    from harness.store import store_root

    p = argparse.ArgumentParser(prog="etcdproof serve", description="Browse the store (every run's report) over HTTP.")
    p.add_argument("--store", help="store root (default $ETCDPROOF_STORE or ./store)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free one)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = p.parse_args(argv)
    root = store_root(args.store)
    if not root.is_dir():
        print(f"etcdproof serve: {root} is not a directory (no run stored yet?)", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"etcdproof serve: --port must be 0..65535, not {args.port}", file=sys.stderr)
        return 2
    try:
        srv = make_server(root, args.host, args.port, args.verbose)
    except OSError as e:
        why = "address already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        print(f"etcdproof serve: cannot listen on {args.host}:{args.port}: {why}", file=sys.stderr)
        return 2
    host, port = srv.server_address[:2]
    print(f"serving {root} at http://{host}:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()
    return 0
