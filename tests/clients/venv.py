"""The virtualenv the third-party etcd client libraries run in: /work/main/.venv-clients.

Why a separate environment: python-etcd3 and aetcd ship generated protobuf modules with the same
full names (etcdserverpb.*) as the project's stubs, and one process cannot load both. The test
runs the client scripts in tests/clients/ with this environment's python instead.

ensure_client_venv() builds it when missing (pip from the registry, pinned versions) and is cheap
when it exists: a marker file holds the pins it was built with. Safe to call from several pytest
processes at once (a file lock).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("ETCDPROOF_CLIENT_VENV", str(ROOT / ".venv-clients")))

# etcd3 0.12 is old (its generated code needs the pure-Python protobuf runtime, which its script
# selects); aetcd 1.0 wants protobuf > 4 and grpcio > 1.66. These versions satisfy both.
PINS = [
    "etcd3==0.12.0",
    "aetcd==1.0.0",
    "grpcio==1.85.1",
    "protobuf==7.36.2",
    "six==1.17.0",
    "tenacity==9.2.1",
    "typing_extensions==4.16.0",
]
MARKER = "etcdproof-pins.txt"


class ClientVenvError(RuntimeError):
    """The client virtualenv could not be built; the message says why."""


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _run(cmd: list[str], timeout: float) -> None:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClientVenvError(f"{' '.join(cmd[:3])} ... timed out after {timeout:.0f}s") from None
    except OSError as e:
        raise ClientVenvError(f"cannot run {cmd[0]}: {e}") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-5:]
        raise ClientVenvError(f"{' '.join(cmd[:4])} ... failed ({r.returncode}): {' | '.join(tail)}")


def ensure_client_venv(venv: Path = VENV, timeout: float = 240.0) -> Path:
    """The client environment's python, building the environment first if it is missing or stale."""
    try:
        return _ensure(venv, timeout)
    except OSError as e:
        raise ClientVenvError(f"cannot build {venv}: {e}") from None


def _ensure(venv: Path, timeout: float) -> Path:
    wanted = "\n".join(PINS) + "\n"
    marker = venv / MARKER
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = Path(tempfile.gettempdir()) / f"etcdproof-client-venv-{zlib.crc32(str(venv).encode()):08x}.lock"
    with open(lock_path, "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            if marker.exists() and marker.read_text() == wanted and _python(venv).exists():
                return _python(venv)
            shutil.rmtree(venv, ignore_errors=True)
            _run([sys.executable, "-m", "venv", str(venv)], 60)
            _run([str(_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PINS], timeout)
            # each library in a process of its own, as the scripts run them
            pure = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python"
            _run(["env", pure, str(_python(venv)), "-c", "import etcd3"], 120)
            _run([str(_python(venv)), "-c", "import aetcd"], 120)
            marker.write_text(wanted)
            return _python(venv)
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)


if __name__ == "__main__":
    try:
        print(ensure_client_venv())
    except ClientVenvError as e:
        print(f"client virtualenv: {e}", file=sys.stderr)
        raise SystemExit(1)
