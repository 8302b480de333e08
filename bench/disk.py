"""`etcdproof bench disk`: is the disk under each node's data directory fast enough for etcd?

Checks, with fio (bench/fio.py) in a scratch directory on that disk, one node at a time (nodes of
the embedded cluster share this machine's disk, so they must not compete):

- **WAL**: etcd's recommended check: sequential 2300-byte writes, each followed by fdatasync, 22 MiB
  (`fio --rw=write --ioengine=sync --fdatasync=1 --bs=2300 --size=22m`). Every raft Ready that
  carries entries costs etcd one such WAL append + fdatasync before it can acknowledge.
- **random reads**: 4 KiB random reads at queue depth 1 (bbolt reads pages at random), with
  O_DIRECT so the page cache does not answer (buffered, and said so, where O_DIRECT is refused).
- **batched WAL**: the same synced sequential writes in blocks of B entries, for the batch size B
  that the WAL latency says 10,000 writes/s needs; B doubles (at most twice more) until the
  measured rate reaches it.

Verdicts: etcd's guidance (p99 fdatasync under 10 ms; at least 50 sequential IOPS, 500 for a
heavily loaded cluster), and the write target: at the measured p99, one WAL sync stream gives
1/p99 syncs per second, so 10,000 writes/s needs about 10,000 x p99 writes per sync (group commit),
measured, not assumed.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field

from bench.fio import FioError, FioFailed, Job, JobSpec, run as run_fio
from bench.nodes import add_node_args, load_nodes
from harness.remote import Remote, RemoteError

ETCD_P99_FDATASYNC_MS = 10.0
MIN_SEQ_IOPS = 50
HEAVY_SEQ_IOPS = 500
WRITE_TARGET = 10_000
ENTRY_BYTES = 300  # about one WAL record of a put of an 8-byte key and a 256-byte value, with framing
MAX_BATCH = 8192


@dataclass(frozen=True)
class Settings:
    wal_size: str = "22m"
    wal_bs: int = 2300
    read_size: str = "64m"
    read_runtime: float = 10.0
    batch: bool = True
    entry_bytes: int = ENTRY_BYTES
    target: int = WRITE_TARGET


def wal_job(s: Settings) -> JobSpec:
    return JobSpec("wal", "write", s.wal_bs, s.wal_size, "sync", fdatasync=1)


def randread_job(s: Settings, direct: bool = True) -> JobSpec:
    return JobSpec("randread", "randread", "4k", s.read_size, "psync", direct=direct, runtime=s.read_runtime,
                   time_based=True)


def batch_job(s: Settings, batch: int) -> JobSpec:
    """Synced sequential writes of `batch` entries each; enough of them (>= 200, 4-64 MiB) to time."""
    bs = batch * s.entry_bytes
    size = min(64 << 20, max(4 << 20, bs * 200))
    return JobSpec(f"batch{batch}", "write", bs, f"{size // 1024}k", "sync", fdatasync=1)


# ------------------------------------------------------------------ verdicts (pure)
@dataclass(frozen=True)
class Verdict:
    what: str
    value: float
    threshold: float
    ok: bool
    text: str


def guidance(p99_ms: float, seq_iops: float) -> list[Verdict]:
    """etcd's disk guidance against the WAL check's figures."""
    return [
        Verdict("p99 fdatasync", p99_ms, ETCD_P99_FDATASYNC_MS, p99_ms < ETCD_P99_FDATASYNC_MS,
                f"p99 fdatasync {p99_ms:.2f} ms {'<' if p99_ms < ETCD_P99_FDATASYNC_MS else '>='} "
                f"{ETCD_P99_FDATASYNC_MS:g} ms"),
        Verdict("sequential sync IOPS", seq_iops, MIN_SEQ_IOPS, seq_iops >= MIN_SEQ_IOPS,
                f"{seq_iops:,.0f} sequential synced write IOPS {'>=' if seq_iops >= MIN_SEQ_IOPS else '<'} {MIN_SEQ_IOPS}"),
        Verdict("sequential sync IOPS, heavy load", seq_iops, HEAVY_SEQ_IOPS, seq_iops >= HEAVY_SEQ_IOPS,
                f"{seq_iops:,.0f} {'>=' if seq_iops >= HEAVY_SEQ_IOPS else '<'} {HEAVY_SEQ_IOPS} for a heavily loaded cluster"),
    ]


def batch_needed(target: float, p99_ms: float) -> int:
    """Writes per WAL sync needed for `target` writes/s when each sync takes p99_ms (>= 1)."""
    return max(1, math.ceil(target * p99_ms / 1000.0))


@dataclass(frozen=True)
class WritePlan:
    """How the write target relates to this disk's WAL syncs."""

    target: int
    syncs_per_s_p99: float  # 1 / p99 fdatasync: sync rounds per second at the tail latency
    syncs_per_s_mean: float  # 1 / mean
    batch_needed: int  # writes per sync for the target at p99
    measured: list[dict] = field(default_factory=list)  # [{batch, syncs_per_s, writes_per_s, p99_ms}]
    reachable_batch: int | None = None  # smallest measured batch reaching the target

    @property
    def reachable(self) -> bool | None:
        if self.reachable_batch is not None:
            return True
        return False if self.measured else None

    def text(self) -> str:
        base = (f"{self.syncs_per_s_p99:,.0f} WAL syncs/s at p99 ({self.syncs_per_s_mean:,.0f} at the mean): "
                f"{self.target:,} writes/s needs ~{self.batch_needed} writes per sync")
        if self.reachable_batch is not None:
            m = next(x for x in self.measured if x["batch"] == self.reachable_batch)
            return (base + f"; reachable with batching: {m['syncs_per_s']:,.0f} synced {self.reachable_batch}-entry "
                    f"writes/s measured = {m['writes_per_s']:,.0f} writes/s")
        if self.measured:
            best = max(self.measured, key=lambda x: x["writes_per_s"])
            return (base + f"; not reached: the best measured was {best['writes_per_s']:,.0f} writes/s "
                    f"at {best['batch']} per sync")
        return base + " (batches not measured)"


def plan_writes(target: int, wal: Job, batches: list[tuple[int, Job]]) -> WritePlan:
    """The write plan from the WAL job and the batched jobs run (pure)."""
    sync = wal.sync
    p99 = sync.p99_ms if sync else 0.0
    mean = sync.mean_ms if sync else 0.0
    measured, reach = [], None
    for b, job in batches:
        rate = job.write.iops
        measured.append({"batch": b, "syncs_per_s": rate, "writes_per_s": rate * b,
                         "p99_ms": job.sync.p99_ms if job.sync else None})
        if reach is None and rate * b >= target:
            reach = b
    return WritePlan(target, 1000.0 / p99 if p99 else 0.0, 1000.0 / mean if mean else 0.0,
                     batch_needed(target, p99), measured, reach)


# ------------------------------------------------------------------ one node
@dataclass
class NodeDisk:
    node: str
    directory: str
    fio_version: str
    wal: Job
    randread: Job
    randread_direct: bool
    guidance: list[Verdict]
    plan: WritePlan
    seconds: float

    @property
    def meets(self) -> bool:
        return all(v.ok for v in self.guidance[:2])

    def summary(self) -> str:
        g = self.guidance
        heavy = "meets" if g[2].ok else "below"
        return (f"{self.node}: {'meets' if self.meets else 'BELOW'} etcd's guidance ({g[0].text}; {g[1].text}; "
                f"{heavy} the {HEAVY_SEQ_IOPS} for heavy load); {self.plan.text()}")

    def headline(self) -> str:
        """One short line for the store's index."""
        s = self.wal.sync
        reach = {True: f"reachable at {self.plan.reachable_batch} writes/sync", False: "not reached with batching",
                 None: f"needs ~{self.plan.batch_needed} writes/sync"}[self.plan.reachable]
        return (f"{self.node}: p99 fdatasync {s.p99_ms if s else float('nan'):.2f} ms, {self.wal.write.iops:,.0f} sync "
                f"IOPS, {'meets' if self.meets else 'BELOW'} etcd's guidance; {self.plan.target:,} writes/s {reach}")

    def to_dict(self) -> dict:
        s, rr = self.wal.sync, self.randread.read
        return {
            "node": self.node, "directory": self.directory, "fio_version": self.fio_version,
            "fdatasync_ms": {"p50": s.p50_ms if s else None, "p99": s.p99_ms if s else None,
                             "p99.9": s.p999_ms if s else None, "mean": s.mean_ms if s else None,
                             "max": s.max_ns / 1e6 if s else None, "count": s.n if s else 0,
                             "percentiles": {f"{k:g}": s.percentile_ns(k) / 1e6 for k in s.percentiles} if s else {}},
            "seq_write_iops": self.wal.write.iops, "seq_write_bw_bytes": self.wal.write.bw_bytes,
            "randread": {"iops": rr.iops, "direct": self.randread_direct,
                         "p50_ms": rr.clat.p50_ms if rr.clat else None, "p99_ms": rr.clat.p99_ms if rr.clat else None,
                         "percentiles": {f"{k:g}": rr.clat.percentile_ns(k) / 1e6 for k in rr.clat.percentiles}
                         if rr.clat else {}},
            "guidance": [asdict(v) for v in self.guidance], "meets": self.meets,
            "write_plan": {**asdict(self.plan), "reachable": self.plan.reachable, "text": self.plan.text()},
            "summary": self.summary(), "headline": self.headline(), "seconds": round(self.seconds, 1),
        }


def check_node(remote: Remote, directory: str, settings: Settings = Settings(), fio: str = "fio",
               name: str | None = None) -> NodeDisk:
    """Run the checks in a scratch directory under `directory` on the node; always removes it."""
    t0 = time.monotonic()
    node = name or remote.node
    where = getattr(remote, "desc", None) or node
    d = shlex.quote(directory)
    probe = remote.run(f"test -d {d} && test -w {d}", timeout=30, check=False)
    if probe.exit != 0:
        raise FioFailed(f"{where}: {directory} is not a writable directory")
    work = f"{directory.rstrip('/')}/etcdproof-fio-{os.getpid()}"
    try:
        remote.run(f"mkdir -p {shlex.quote(work)}", timeout=30)
        res = run_fio(remote, work, [wal_job(settings)], fio=fio)
        wal = res.job("wal")
        direct = True
        try:
            rr = run_fio(remote, work, [randread_job(settings, direct=True)], fio=fio).job("randread")
        except FioFailed as e:  # O_DIRECT refused (tmpfs, some FUSE and overlay setups): buffered, said so
            if "Invalid argument" not in str(e) and "direct" not in str(e).lower():
                raise
            direct = False
            rr = run_fio(remote, work, [randread_job(settings, direct=False)], fio=fio).job("randread")
        batches: list[tuple[int, Job]] = []
        if settings.batch and wal.sync:
            b = batch_needed(settings.target, wal.sync.p99_ms)
            for _ in range(3):
                job = run_fio(remote, work, [batch_job(settings, b)], fio=fio).job(f"batch{b}")
                batches.append((b, job))
                if job.write.iops * b >= settings.target or b * 2 > MAX_BATCH:
                    break
                b *= 2
    except RemoteError as e:
        raise FioFailed(str(e)) from None
    finally:
        try:
            remote.run(f"rm -rf {shlex.quote(work)}", timeout=60, check=False)
        except RemoteError:
            pass
    sync = wal.sync
    g = guidance(sync.p99_ms if sync else float("inf"), wal.write.iops)
    return NodeDisk(node, directory, res.version, wal, rr, direct, g, plan_writes(settings.target, wal, batches),
                    time.monotonic() - t0)


# ------------------------------------------------------------------ CLI
TABLE_HEAD = ("| node | fdatasync p50 ms | p99 ms | p99.9 ms | seq sync IOPS | 4k randread IOPS | randread p99 ms "
              "| etcd guidance | 10k writes/s |\n|---|---|---|---|---|---|---|---|---|")


def row(r: NodeDisk) -> str:
    s, rr = r.wal.sync, r.randread.read
    reach = {True: f"yes, {r.plan.reachable_batch}/sync", False: "no", None: f"~{r.plan.batch_needed}/sync (not measured)"}
    heavy = " (heavy load too)" if r.guidance[2].ok else ""
    return (f"| {r.node} | {s.p50_ms:.3f} | {s.p99_ms:.3f} | {s.p999_ms:.3f} | {r.wal.write.iops:,.0f} | "
            f"{rr.iops:,.0f}{'' if r.randread_direct else ' (buffered)'} | {rr.clat.p99_ms if rr.clat else 0:.3f} | "
            f"{'meets' + heavy if r.meets else 'below'} | {reach[r.plan.reachable]} |")


def default_dir(base_dir: str) -> str:
    if os.geteuid() != 0 and base_dir == "/var/lib/etcdproof":
        return os.path.expanduser("~/.local/share/etcdproof")
    return base_dir


def disk_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="etcdproof bench disk", description=__doc__.split("\n\n")[0])
    add_node_args(p, "check each node's data-directory disk; default: this machine")
    p.add_argument("--dir", help="check the disk under this directory instead (on every node)")
    p.add_argument("--wal-size", default="22m", help="bytes written by the WAL check (fio size; default 22m)")
    p.add_argument("--read-size", default="64m", help="file size of the random-read check")
    p.add_argument("--read-runtime", type=float, default=10.0, help="seconds of random reads")
    p.add_argument("--no-batch", action="store_true", help="skip the batched-WAL measurement")
    p.add_argument("--fio", default="fio", help="the fio binary on the nodes")
    p.add_argument("--store", help="store root (default $ETCDPROOF_STORE or ./store)")
    p.add_argument("--no-store", action="store_true", help="print only; keep nothing in the store")
    p.add_argument("--json", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    settings = Settings(wal_size=args.wal_size, read_size=args.read_size, read_runtime=args.read_runtime,
                        batch=not args.no_batch)
    started = time.time()
    try:
        inv = load_nodes(args, "bench disk")
    except SystemExit as e:
        return int(e.code or 2)
    try:
        if inv is not None:
            targets = [(n.name, inv.remotes[n.name], args.dir or f"{args.base_dir}/nodes/{n.name}") for n in inv.nodes]
        else:
            from harness.inventory import Node
            from harness.ssh import LocalRemote

            targets = [(os.uname().nodename, LocalRemote(Node(name=os.uname().nodename, host="127.0.0.1")),
                        args.dir or default_dir(args.base_dir))]
        print(f"# bench disk, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
              f"{os.getloadavg()[0]:.2f} here; WAL check {settings.wal_size} of {settings.wal_bs}-byte synced writes")
        print(TABLE_HEAD, flush=True)
        results = []
        for name, remote, directory in targets:
            try:
                if not args.dir and inv is not None:  # the node's data-directory parent, as the DB lays it out
                    remote.run(f"mkdir -p {shlex.quote(directory)}", timeout=30)
                r = check_node(remote, directory, settings, fio=args.fio, name=name)
            except (FioError, RemoteError) as e:
                print(f"bench disk: {e}", file=sys.stderr)
                return 2
            results.append(r)
            print(row(r), flush=True)
        for r in results:
            print(r.summary())
    finally:
        if inv is not None:
            inv.close()
    data = disk_record(results, settings, started, args.nodes or args.nodes_file or "this machine")
    if args.json:
        from harness.store import write_json
        from pathlib import Path

        write_json(Path(args.json), data)
    if not args.no_store:
        from bench.results import save

        out = save("disk", data, args.store)
        print(f"stored: {out / 'index.html'}")
    return 0 if all(r.meets for r in results) else 1


def disk_record(results: list[NodeDisk], settings: Settings, started: float, nodes: str) -> dict:
    """What the store keeps of a disk benchmark (bench.json)."""
    meets = all(r.meets for r in results)
    return {
        "bench": "disk", "name": "bench-disk", "started": started, "seconds": round(time.time() - started, 1),
        "nodes": nodes, "settings": asdict(settings), "load_average": list(os.getloadavg()),
        "verdict": "meets" if meets else "below",
        "summary": "; ".join(r.headline() for r in results)[:600],
        "results": [r.to_dict() for r in results],
    }
