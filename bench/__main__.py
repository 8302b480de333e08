"""`python -m bench kv [--db reference|etcd|both] ...`: single-member KV benchmark on loopback."""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

from bench import h2load
from bench.nodes import add_node_args, load_nodes
from bench.kv import (TABLE_HEAD, TARGET_READS, TARGET_WRITES, prepare, results_json, run_h2load_load, run_load,
                      wakeup_roundtrip_us)
from harness.localproc import LocalCluster, have_etcd


def kv_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="etcdproof bench kv", description=__doc__)
    p.add_argument("--db", choices=["reference", "etcd", "both"], default="both")
    p.add_argument("--clients", default="1,64", help="comma-separated client counts")
    p.add_argument("--ops", default="put,range,range-serializable", help="comma-separated: put, range, range-serializable")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes (python generator)")
    p.add_argument(
        "--generator", choices=["h2load", "python"], default="h2load" if h2load.available() else "python",
        help="h2load (C, nghttp2-client; default when installed) or python (grpc.aio worker processes)",
    )
    p.add_argument("--cluster-size", type=int, default=None,
                   help="members per cluster (default 1 on loopback, every node with --nodes)")
    p.add_argument("--target", choices=["all", "leader"], default="all",
                   help="spread clients over every member (as etcd's benchmark does) or send all to the leader")
    p.add_argument("--json", help="write results as JSON to this file")
    p.add_argument("--compare", action="store_true",
                   help="the reference server and real etcd in one invocation (--db both), with their ratios")
    p.add_argument("--store", help="store root for the results (default $ETCDPROOF_STORE or ./store)")
    p.add_argument("--no-store", action="store_true", help="print only; keep nothing in the store")
    add_node_args(p, "instead of members on loopback: a fresh cluster on an inventory")
    p.add_argument("--client-port", type=int, default=2379, help="with --nodes")
    p.add_argument("--peer-port", type=int, default=2380, help="with --nodes")
    p.add_argument("--http-port", type=int, default=2378, help="with --nodes: the reference server's HTTP port (metrics)")
    p.add_argument("--etcd-bin", default="/usr/bin/etcd", help="with --nodes: etcd binary on the nodes")
    args = p.parse_args(argv)
    problem = bad_kv_args(args)
    if problem:
        p.error(problem)
    if args.compare:
        args.db = "both"
    started = time.time()
    dbs = ["reference", "etcd"] if args.db == "both" else [args.db]
    try:
        inv = load_nodes(args, "bench kv")
    except SystemExit as e:
        return int(e.code or 2)
    if inv is not None:
        try:
            return _kv_run(args, dbs, started, inv)
        finally:
            inv.close()
    if "etcd" in dbs and not have_etcd():
        print("bench: real etcd not found (install Debian etcd-server)", file=sys.stderr)
        return 2
    return _kv_run(args, dbs, started, None)


KV_OPS = ("put", "range", "range-serializable")


def bad_kv_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the kv flags, found before any server starts; None if nothing."""
    try:
        clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        return f"--clients {args.clients!r}: comma-separated whole numbers"
    if min(clients) < 1:
        return f"--clients {args.clients!r}: each count must be at least 1"
    unknown = [o for o in args.ops.split(",") if o not in KV_OPS]
    if unknown:
        return f"--ops: unknown op {unknown[0]!r}: choose from {', '.join(KV_OPS)}"
    if args.duration <= 0:
        return f"--duration must be positive, not {args.duration:g}"
    for name in ("procs", "cluster_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            return f"--{name.replace('_', '-')} must be at least 1, not {v}"
    return None


def _kv_cluster(db: str, args: argparse.Namespace, tmp: str, inv):
    """Members on loopback (LocalCluster), or a fresh cluster on the inventory's nodes."""
    if inv is None:
        return LocalCluster(db, os.path.join(tmp, db), size=args.cluster_size or 1).start()
    from bench.kvcluster import InventoryCluster
    from harness.db import DBConfig

    cfg = DBConfig(base_dir=args.base_dir, client_port=args.client_port, peer_port=args.peer_port,
                   http_port=args.http_port, etcd_bin=args.etcd_bin)
    cluster = InventoryCluster(db, inv, cfg, size=args.cluster_size)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()  # whatever started is stopped
        raise


def _kv_run(args: argparse.Namespace, dbs: list[str], started: float, inv) -> int:
    from harness.db import DBError
    from harness.remote import RemoteError

    clients = [int(c) for c in args.clients.split(",")]
    ops = args.ops.split(",")
    results = []
    args.wakeup_us = wakeup_roundtrip_us()
    print(f"# {platform.node()} {os.cpu_count()} cpus, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"generator {args.generator}, {args.duration:g} s per cell, "
          f"clients to {'every member' if args.target == 'all' else 'the leader'}, "
          f"cross-CPU wake-up round trip {args.wakeup_us} µs")
    print(TABLE_HEAD)
    with tempfile.TemporaryDirectory(prefix="etcdproof-bench-") as tmp:
        # every target's cluster is up before the first cell and the cells alternate between
        # them (put@1 reference, put@1 etcd, ...): a slow minute of this shared machine then hits
        # both targets alike instead of one, which is what makes their ratio worth reading
        clusters: dict[str, object] = {}
        try:
            for db in dbs:
                try:
                    clusters[db] = _kv_cluster(db, args, tmp, inv)
                except (DBError, RemoteError) as e:
                    print(f"bench kv: {e}", file=sys.stderr)
                    return 2
                prepare(clusters[db].leader().endpoint)
            for op in ops:
                for c in clients:
                    for db in dbs:
                        cluster = clusters[db]
                        m = cluster.leader()
                        size = len(cluster.members)
                        label = db if size == 1 else f"{db} x{size}"
                        if args.generator == "h2load":
                            members = [m] + [x for x in cluster.members if x is not m] if args.target == "all" else [m]
                            targets = [(x.endpoint, x.http_url + "/metrics", x.proc.pid) for x in members]
                            r = run_h2load_load(label, targets, op, c, args.duration)
                        else:
                            r = run_load(label, m.endpoint, op, c, args.duration, args.procs, server_pid=m.proc.pid)
                        results.append(r)
                        print(r.row(), flush=True)
        finally:
            for cluster in clusters.values():
                cluster.stop()
    for r in results:
        if r.clients == max(clients):
            target = TARGET_WRITES if r.op == "put" else TARGET_READS
            verdict = "meets" if r.rate >= target else "below"
            print(f"{r.db} {r.op} at {r.clients} clients: {r.rate:,.0f}/s, {verdict} the {target:,}/s target")
    record = kv_record(results, args, started)
    if inv is not None:
        record["nodes"] = f"{inv.kind}: {', '.join(f'{n.name} ({n.ip})' for n in inv.nodes[: args.cluster_size or None])}"
    for row in record["ratios"]:
        print(f"reference/etcd {row['op']} at {row['clients']} clients: {row['rate_ratio']:.2f}x the throughput, "
              f"{row['p99_ratio']:.2f}x the p99" if row["rate_ratio"] is not None and row["p99_ratio"] is not None
              else f"reference/etcd {row['op']} at {row['clients']} clients: not comparable (a zero)")
    if args.json:
        with open(args.json, "w") as f:
            f.write(results_json(results))
    if not args.no_store:
        from bench.results import save

        print(f"stored: {save('kv', record, args.store) / 'index.html'}")
    return 0


def kv_record(results: list, args: argparse.Namespace, started: float) -> dict:
    """What the store keeps of a KV benchmark (bench.json): every measurement, the verdicts against
    2k reads/s and 10k writes/s (best rate over the client counts), the reference/etcd ratios."""
    from dataclasses import asdict

    from bench.results import kv_verdict_word, kv_verdicts, ratios

    rows = [asdict(r) for r in results]
    verdicts = kv_verdicts(rows)
    return {
        "bench": "kv", "name": "bench-kv", "started": started, "seconds": round(time.time() - started, 1),
        "db": args.db, "nodes": getattr(args, "nodes", None) or f"{args.cluster_size} member(s) on loopback",
        "settings": {"clients": args.clients, "ops": args.ops, "duration": args.duration, "generator": args.generator,
                     "cluster_size": args.cluster_size or 1, "target": args.target, "key_size": 8, "value_size": 256},
        "load_average": list(os.getloadavg()), "cpus": os.cpu_count(), "host": platform.node(),
        "wakeup_roundtrip_us": getattr(args, "wakeup_us", None),
        "verdict": kv_verdict_word(verdicts), "summary": "; ".join(v["text"] for v in verdicts),
        "verdicts": verdicts, "ratios": ratios(rows), "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "checker":
        from bench.checker import main as checker_main

        return checker_main(argv[1:])
    if argv and argv[0] == "disk":
        from bench.disk import disk_main

        return disk_main(argv[1:])
    if not argv or argv[0] not in ("kv",):
        usage = "usage: etcdproof bench kv|disk|checker [options]  (`etcdproof bench kv --help` for its options)"
        if argv and argv[0] in ("-h", "--help"):
            print(usage)
            return 0
        print(usage, file=sys.stderr)
        what = f"unknown benchmark {argv[0]!r}" if argv else "no benchmark named"
        print(f"etcdproof bench: {what}: choose kv, disk or checker", file=sys.stderr)
        return 2
    return kv_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
