"""`make demo` / `etcdproof demo`: one real verification on the embedded cluster, then its report.

It runs what a user would type:

    etcdproof test -w register --nemesis partition,kill --time-limit 60 --db reference --nodes local

five network namespaces with their own sshd (built if needed, reused if up), the reference server
installed and started on each over SSH, clients reading, writing and compare-and-setting
registers while the nemesis partitions the network and kills members, then the heal, the final
reads, the linearizability check and the HTML report. Extra flags are passed on to `test`
(e.g. `--db etcd`, `--time-limit 20`). Without root it falls back to loopback nodes and kills
only, and says so.
"""
from __future__ import annotations

import sys

from harness import store
from harness.testcmd import test_main

DEFAULTS = ["-w", "register", "--nemesis", "partition,kill", "--time-limit", "60", "--db", "reference",
            "--nodes", "local", "--nemesis-interval", "8"]


def main(argv: list[str] | None = None) -> int:
    extra = list(argv or [])
    print("etcdproof demo: a 60 s register test of the reference server on the embedded cluster, "
          "under partitions and kills", flush=True)
    code = test_main(DEFAULTS + extra)  # later flags win in argparse, so extra overrides
    latest = store.store_root(_flag(extra, "--store")) / "latest" / store.REPORT
    if latest.exists():
        print(f"report: {latest.resolve()}")
    return code


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
