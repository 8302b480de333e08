"""The lock, bank, watch and convergence checkers are pure functions of a history: they import
nothing from the harness, the server, the reports or the workloads, and no clock, socket or
event loop (so `etcdproof analyze` can re-check a stored run anywhere)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECKERS = [ROOT / "checker" / f"{n}.py" for n in ("bank", "lock", "watch", "converge")]
FORBIDDEN = {"harness", "server", "reports", "workloads", "asyncio", "socket", "time", "grpc", "os", "random"}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add((node.module or "").split(".")[0])
    return found


@pytest.mark.parametrize("path", CHECKERS, ids=lambda p: p.name)
def test_checker_imports_only_the_checker_package_and_the_standard_library(path: Path) -> None:
    assert not imports(path) & FORBIDDEN, sorted(imports(path) & FORBIDDEN)


def test_the_scan_sees_a_forbidden_import(tmp_path: Path) -> None:
    p = tmp_path / "x.py"
    p.write_text("def f():\n    from harness.client import EtcdClient\n    import time\n")
    assert imports(p) & FORBIDDEN == {"harness", "time"}
