"""`etcdproof test`, `etcdproof analyze` and `etcdproof report`: run a test, re-check or re-render a run.

    etcdproof test -w register --nemesis partition,kill --time-limit 60 --concurrency 10 \
        --rate 200 --nodes local --db reference --seed 1

Exit codes: 0 valid, 1 invalid, 2 unknown (or the test could not run: the message says why),
130 interrupted (faults healed and servers stopped first).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import store
from harness.runner import Outcome, Runner, TestSpec, run_checkers, run_sync

log = logging.getLogger("etcdproof")
DEFAULT_BASE_DIR = "/var/lib/etcdproof"


def add_inventory_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("nodes")
    g.add_argument("--nodes", default="local",
                   help="local (the embedded cluster, the default), vagrant, or names n1,n2,n3")
    g.add_argument("--nodes-file", help="a TOML file of nodes (hosts, ports, users, keys)")
    g.add_argument("--username", default="root", help="SSH user for --nodes names")
    g.add_argument("--ssh-private-key", help="SSH key for --nodes names")
    g.add_argument("--node-count", type=int, default=5, help="nodes of the embedded cluster")


def add_test_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--workload", default="register", help="workload(s), comma-separated: register")
    p.add_argument("--db", default="reference", choices=["reference", "etcd"], help="the target")
    p.add_argument("--nemesis", default="none", help="faults, comma-separated: partition, kill, pause, clock, disk, "
                   "net, lost-writes, member, admin, auth (needs --auth); all (every class but auth); none")
    p.add_argument("--nemesis-interval", type=float, default=10.0, help="seconds between fault start and stop")
    p.add_argument("--nemesis-concurrent", type=int, default=1,
                   help="fault classes active at once (staggered lanes; default 1)")
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds of the main phase")
    p.add_argument("--concurrency", type=int, default=0, help="workers (default: 2 per node)")
    p.add_argument("--rate", type=float, default=100.0, help="ops/s over all workers (0: unlimited)")
    p.add_argument("--seed", type=int, help="seed of the op and fault schedule (default: random, recorded)")
    p.add_argument("--op-timeout", type=float, default=5.0, help="seconds before an op is given up as info")
    p.add_argument("--auth", action="store_true",
                   help="turn authentication on after setup; workers run as an ordinary user with read-write "
                        "permission on every key, faults' admin requests as root")
    p.add_argument("--etcd-bin", default="/usr/bin/etcd", help="etcd binary on the nodes (--db etcd)")
    p.add_argument("--client-port", type=int, default=2379)
    p.add_argument("--peer-port", type=int, default=2380)
    p.add_argument("--base-dir", default=DEFAULT_BASE_DIR, help="where nodes keep installs and data")
    p.add_argument("--store", help="store root (default $ETCDPROOF_STORE or ./store)")
    p.add_argument("--name", default="", help="test name (default: workload-db-nemesis)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    add_inventory_args(p)


def positive(args: argparse.Namespace) -> str | None:
    for name in ("time_limit", "nemesis_interval", "op_timeout"):
        if getattr(args, name) <= 0:
            return f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}"
    if args.nemesis_concurrent < 1:
        return f"--nemesis-concurrent must be at least 1, not {args.nemesis_concurrent}"
    for name in ("concurrency", "rate"):
        if getattr(args, name) < 0:
            return f"--{name} must not be negative, not {getattr(args, name)}"
    return None


@dataclass
class Display:
    """A live line (rich) on a terminal; plain log lines every 10 s otherwise."""

    live: Any = None
    last: float = 0.0

    def __call__(self, line: str) -> None:
        if self.live is not None:
            from rich.text import Text

            self.live.update(Text(line))
        elif time.monotonic() - self.last >= 10:
            self.last = time.monotonic()
            print(line, file=sys.stderr, flush=True)


def run_one(args: argparse.Namespace, workload_name: str) -> Outcome:
    from harness.db import DBConfig, make_db
    from harness.inventory import resolve
    from nemesis import registry as nemeses
    from workloads import registry as workloads

    spec = TestSpec(workload=workload_name, db=args.db, nemesis=nemeses.parse(args.nemesis), nodes=args.nodes,
                    time_limit=args.time_limit, concurrency=args.concurrency, rate=args.rate, seed=args.seed,
                    nemesis_interval=args.nemesis_interval, nemesis_concurrent=args.nemesis_concurrent,
                    op_timeout=args.op_timeout, auth=args.auth, name=args.name)
    workload = workloads.build(workload_name)
    inv = resolve(args)
    base_dir = args.base_dir
    if inv.kind == "loopback" and base_dir == DEFAULT_BASE_DIR and os.geteuid() != 0:
        base_dir = os.path.expanduser("~/.local/share/etcdproof")  # /var/lib is root's
    cfg = DBConfig(base_dir=base_dir, client_port=args.client_port, peer_port=args.peer_port,
                   etcd_bin=args.etcd_bin)
    db = make_db(args.db, inv.nodes, inv.remotes, cfg)
    run_dir = store.new_run_dir(store.store_root(args.store), spec.test_name())
    print(f"run {spec.test_name()} (seed {spec.seed}) in {run_dir}", file=sys.stderr, flush=True)
    display = Display()
    runner = Runner(spec, inv.nodes, inv.remotes, db, workload, nemeses.build(spec.nemesis), run_dir,
                    can_partition=inv.can_partition, why_not_partition=inv.why_not_partition,
                    control_ip=inv.control_ip,
                    on_progress=None if args.no_progress else display)
    try:
        if not args.no_progress and sys.stderr.isatty():
            from rich.console import Console
            from rich.live import Live

            with Live(console=Console(stderr=True), refresh_per_second=4, transient=True) as live:
                display.live = live
                return run_sync(runner)
        return run_sync(runner)
    finally:
        inv.close()


def summary(o: Outcome) -> str:
    word = {True: "valid", False: "INVALID"}.get(o.valid, "unknown")
    lines = [f"{'interrupted' if o.interrupted else word}: {o.run_dir / store.REPORT}"]
    if o.error:
        lines.append(f"  could not complete: {o.error}")
    for name, r in (o.results.get("checkers") or {}).items():
        lines.append(f"  {name}: {({True: 'valid', False: 'INVALID'}.get(r.get('valid'), 'unknown'))}"
                     f" - {r.get('reason', '')}")
    return "\n".join(lines)


def test_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="etcdproof test", description="Run workloads under faults and check them.")
    add_test_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problem = positive(args)
    if problem:
        p.error(problem)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2**31)
    from harness.db import DBError
    from harness.inventory import InventoryError
    from harness.remote import RemoteError
    from nemesis.registry import NemesisSpecError

    from workloads import registry as workloads

    names = [s.strip() for s in args.workload.split(",") if s.strip()]
    if not names:
        p.error(f"-w {args.workload!r}: no workload named")
    for w in names:  # every name checked before the first run starts
        try:
            workloads.build(w)
        except ValueError as e:
            p.error(str(e))
    codes = []
    for w in names:
        try:
            o = run_one(args, w)
        except (InventoryError, RemoteError, DBError, NemesisSpecError, ValueError) as e:
            print(f"etcdproof test: {e}", file=sys.stderr)
            return 2
        print(summary(o))
        if o.error:
            print(f"etcdproof test: {o.error}", file=sys.stderr)
        codes.append(o.exit_code)
        if o.interrupted:
            break
    return max(codes, key=lambda c: {0: 0, 2: 1, 1: 2, 130: 3}.get(c, 1)) if codes else 2


def analyze_main(argv: list[str]) -> int:
    """Re-run the checkers of a stored run on its history; rewrite results.json and the report."""
    p = argparse.ArgumentParser(prog="etcdproof analyze", description=analyze_main.__doc__)
    p.add_argument("run_dir", help="a run directory (store/<test>/<time>, or store/latest)")
    args = p.parse_args(argv)
    from checker.history import load_history
    from reports.run import render_run
    from workloads import registry

    d = Path(args.run_dir)
    if not (d / store.TEST_JSON).exists() or not (d / store.HISTORY).exists():
        print(f"etcdproof analyze: {d} is not a run directory (no {store.TEST_JSON} or {store.HISTORY})", file=sys.stderr)
        return 2
    try:
        workload = registry.build(store.read_object(d / store.TEST_JSON).get("spec", {}).get("workload", "register"))
        try:
            history = load_history(str(d / store.HISTORY))
        except ValueError as e:
            raise ValueError(f"{d / store.HISTORY}: {e}") from None
        results = run_checkers(workload, history)
        store.write_json(d / store.RESULTS, results)
        out = render_run(d)
    except (OSError, ValueError) as e:
        print(f"etcdproof analyze: {e}", file=sys.stderr)
        return 2
    print(summary(Outcome(d, results["valid"], results)))
    print(f"report: {out}")
    return {True: 0, False: 1}.get(results["valid"], 2)


def report_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="etcdproof report", description="Render a run directory's HTML report again.")
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    from reports.run import render_run

    d = Path(args.run_dir)
    if not (d / store.TEST_JSON).exists():
        print(f"etcdproof report: {d} is not a run directory (no {store.TEST_JSON})", file=sys.stderr)
        return 2
    try:
        print(render_run(d))
    except (OSError, ValueError) as e:
        print(f"etcdproof report: {e}", file=sys.stderr)
        return 2
    return 0
