"""The `etcdproof` command: one line per subcommand, each handled by `main(argv) -> exit code` of its module.

Adding a subcommand is adding a row to COMMANDS; the handler parses its own flags, so
`etcdproof test --help` shows the test's options.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (one-line help, "module:function" taking the remaining argv and returning an exit code)
COMMANDS: dict[str, tuple[str, str]] = {
    "test": ("run workloads under faults on a cluster, check the history, write a report", "harness.testcmd:test_main"),
    "analyze": ("re-run the checkers of a stored run and render its report again", "harness.testcmd:analyze_main"),
    "report": ("render a stored run's HTML report again", "harness.testcmd:report_main"),
    "check": ("check a history file for linearizability (JSONL or Jepsen EDN)", "checker.cli:main"),
    "cluster": ("build, inspect or tear down the embedded cluster (up | down | status)", "harness.embedded:cluster_main"),
    "bench": ("benchmarks: `bench disk` (fio: fdatasync vs etcd's guidance), `bench kv` (puts/s, reads/s vs real etcd)", "bench.__main__:main"),
    "serve": ("browse the store (every run's report) with a local web server", "reports.serve:serve_main"),
    "index": ("regenerate the store's index.html (every run, verdict colours, filters)", "reports.index:index_main"),
    "demo": ("one real verification on the embedded cluster, then where its report is", "harness.demo:main"),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etcdproof", description="Verify and benchmark etcd-compatible stores.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    for name, (what, _) in COMMANDS.items():
        sub.add_parser(name, help=what, add_help=False)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        p = parser()
        if argv and argv[0] not in ("-h", "--help"):
            p.error(f"unknown command {argv[0]!r}: choose from {', '.join(COMMANDS)}")
        p.print_help()
        sys.exit(0 if argv else 2)
    module, func = COMMANDS[argv[0]][1].split(":")
    handler = getattr(importlib.import_module(module), func)
    try:
        code = handler(argv[1:])
    except KeyboardInterrupt:  # finally blocks have run: servers stopped, files closed
        print(f"etcdproof {argv[0]}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
