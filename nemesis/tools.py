"""Programs some faults run on the nodes themselves, and the small venv they run in.

Two faults need a helper process on the node: the lost-writes FUSE filesystem (nemesis/lwfs.py,
on mfusepy) and the NFQUEUE packet delayer (nemesis/delayer.py, on fnfqueue). Both are standalone
scripts; they are uploaded with a wheelhouse of their dependencies (downloaded once on the
control node through pip, cached by digest) and installed into `<base_dir>/tools/<digest>/venv`
with the node's own python3, offline. The install runs under a flock on the node, so concurrent
installers (the embedded cluster's nodes share one filesystem) do it once.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass

from harness.db import CACHE
from harness.remote import Remote

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGES = ("mfusepy==3.1.1", "fnfqueue==1.1.2")  # see docs/design-choices.md for why these
PROGRAMS = ("lwfs.py", "delayer.py")


class ToolsError(Exception):
    """The node tools could not be built or installed; one line with the reason."""


@dataclass(frozen=True)
class Tools:
    python: str  # the venv's interpreter on the node
    dir: str  # where the programs are

    def program(self, name: str) -> list[str]:
        return [self.python, f"{self.dir}/{name}"]


def digest(pyver: str) -> str:
    h = hashlib.sha256(pyver.encode())
    for p in PACKAGES:
        h.update(p.encode())
    for name in PROGRAMS:
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()[:16]


def wheelhouse(pyver: str) -> str:
    """Wheels of PACKAGES and their dependencies for CPython pyver ('3.11'), cached.

    Several fault lanes (or processes) may ask at once on a fresh machine: one builds under an
    exclusive lock while the others wait for it, then find the cache filled."""
    out = os.path.join(CACHE, f"nodetools-{pyver}-{hashlib.sha256('|'.join(PACKAGES).encode()).hexdigest()[:12]}")
    if os.path.isdir(out) and os.listdir(out):
        return out
    os.makedirs(CACHE, exist_ok=True)
    with open(out + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isdir(out) and os.listdir(out):
            return out
        tmp = f"{out}.tmp-{os.getpid()}"
        subprocess.run(["rm", "-rf", tmp], check=True)
        os.makedirs(tmp)
        mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", tmp, *PACKAGES]
        if pyver != mine:
            cmd[5:5] = ["--python-version", pyver, "--platform", "manylinux2014_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux_2_28_x86_64"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            subprocess.run(["rm", "-rf", tmp], check=False)
            raise ToolsError(f"downloading {', '.join(PACKAGES)} for the nodes failed: {p.stderr.strip()[-400:]}")
        if os.path.isdir(out):  # an empty leftover
            os.rmdir(out)
        os.replace(tmp, out)
    return out


def install(r: Remote, base_dir: str) -> Tools:
    """The node tools on r (installed if missing); ToolsError if the node cannot have them."""
    pyver = r.run("python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'", timeout=20, check=False).out.strip()
    if not pyver:
        raise ToolsError(f"{r.node}: no python3 on the node (the lost-writes and delay helpers need it)")
    d = f"{base_dir}/tools/{digest(pyver)}"
    tools = Tools(f"{d}/venv/bin/python", d)
    if r.run(f"test -f {shlex.quote(d)}/installed", timeout=10, check=False).ok:
        return tools
    with tempfile.TemporaryDirectory() as tmp:
        tgz = os.path.join(tmp, "tools.tar.gz")
        with tarfile.open(tgz, "w:gz") as t:
            t.add(wheelhouse(pyver), arcname="wheelhouse")
            for name in PROGRAMS:
                t.add(os.path.join(HERE, name), arcname=name)
        r.run(f"mkdir -p {shlex.quote(d)}", timeout=20)
        staged = f"{d}/tools-{os.getpid()}-{id(r)}.tar.gz"
        r.upload(tgz, staged)
    q = shlex.quote
    script = (f"cd {q(d)} && flock {q(d + '/.lock')} sh -c "
              + q(f"test -f installed && exit 0; tar -xzf {q(staged)} && rm -rf venv && python3 -m venv venv && "
                  f"venv/bin/pip install -q --no-index --find-links wheelhouse {' '.join(q(p) for p in PACKAGES)} && "
                  f"touch installed")
              + f"; s=$?; rm -f {q(staged)}; exit $s")
    res = r.run(script, timeout=600, check=False)
    if res.exit != 0:
        raise ToolsError(f"{r.node}: installing the node tools failed: {(res.err or res.out).strip()[-400:]}")
    return tools
