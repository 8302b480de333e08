"""The `etcdproof` command. Subcommands arrive with their issues; each says plainly what it does now."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="etcdproof", description="Verify and benchmark etcd-compatible stores.")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.add_parser("demo", help="start the reference server, drive it with etcdctl, show it recover from a crash")
    b = sub.add_parser("bench", help="benchmarks: `bench kv` (puts/s, reads/s vs real etcd)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    for name, what in (
        ("test", "run a workload under faults (the harness, issue 4)"),
        ("analyze", "re-check a stored run (issue 4)"),
        ("check", "check a history for linearizability (issue 5)"),
        ("cluster", "build or tear down the embedded cluster (issue 4)"),
        ("serve", "browse stored runs (issue 8)"),
    ):
        sub.add_parser(name, help=what)
    args = p.parse_args(argv)
    if args.cmd is None:
        p.print_help()
        sys.exit(2)
    if args.cmd == "demo":
        from harness.demo import main as demo_main

        sys.exit(demo_main())
    if args.cmd == "bench":
        from bench.__main__ import main as bench_main

        sys.exit(bench_main(args.rest))
    print(f"etcdproof {args.cmd}: not available yet in this version", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
