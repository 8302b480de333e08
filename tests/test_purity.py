"""The pure cores stay pure: no clocks, randomness, threads, sockets, processes or file system.

Why: Raft, the MVCC store, leases, watches, KV semantics and the HTTP/2 connection are written as
pure functions of their inputs so they can be tested exhaustively and replayed deterministically
from the log. One `import time` would quietly break that (a lease deadline read from the wall
clock, a random ID). This scans their source with the ast module, imports anywhere in the file included.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = sorted(
    [*(ROOT / "server" / "mvcc").glob("*.py"), *(ROOT / "server" / "raft").glob("*.py"),
     *(ROOT / "server" / "http2").glob("*.py")]
    + [ROOT / "server" / n for n in ("lease.py", "watch.py", "kvops.py", "validate.py", "entrybatch.py")]
)
FORBIDDEN = frozenset({"asyncio", "socket", "time", "os", "random", "threading", "subprocess"})


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """'line: module' for each import of a forbidden module (or a submodule of one)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports stay inside the package
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            if name.split(".")[0] in FORBIDDEN:
                found.append(f"{node.lineno}: {name}")
    return found


def test_the_pure_module_list_is_complete() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PURE}
    assert {"server/mvcc/store.py", "server/mvcc/keyindex.py", "server/mvcc/revision.py",
            "server/raft/raft.py", "server/raft/log.py", "server/entrybatch.py",
            "server/http2/connection.py"} <= names
    assert all(p.is_file() for p in PURE)


@pytest.mark.parametrize("path", PURE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_pure_core_imports_nothing_impure(path: Path) -> None:
    bad = forbidden_imports(path.read_text(), str(path))
    assert bad == [], f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "import json, random",
        "from threading import Lock",
        "from asyncio.events import get_event_loop",
        "def f():\n    import subprocess\n",
        "try:\n    import socket as s\nexcept ImportError:\n    pass\n",
    ],
)
def test_the_scan_catches_every_import_form(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize(
    "source", ["import timeit", "from osmosis import x", "from . import time", "import heapq"]
)
def test_the_scan_does_not_flag_lookalikes(source: str) -> None:
    assert forbidden_imports(source) == []
