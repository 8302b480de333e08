"""KV benchmark: puts/s and range reads/s with latency percentiles, the same load for any target.

The load comes from several worker processes (bench.loadworker) started together; their CPU time
is reported so a saturated generator is visible. Results compare against etcd's classic targets
(2,000 reads/s, 10,000 writes/s) and, run with --db both, against real etcd on the same machine.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import grpc

from server.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

TARGET_READS = 2000
TARGET_WRITES = 10000


def wakeup_roundtrip_us(rounds: int = 2000) -> float | None:
    """Median time for a thread on one CPU to wake a thread on another and be woken back, in µs.

    A request to a server at low concurrency costs a few such cross-CPU wake-ups, so this says
    how fast the machine is at the moment of the run. On this shared 2-vCPU VM it measured
    60-280 µs one evening (about 6 µs when both threads share a CPU), while the 1-client cells
    of both targets ran 3-6 times slower than an hour before. Printed with each benchmark, so
    runs in such a phase can be told apart. None with fewer than two usable CPUs.
    """
    import threading

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()

    def echo() -> None:
        os.sched_setaffinity(0, {cpus[1]})  # this thread only
        for _ in range(rounds):
            os.read(r1, 1)
            os.write(w2, b"x")

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    times = []
    try:
        os.sched_setaffinity(0, {cpus[0]})
        for _ in range(rounds):
            t0 = time.perf_counter()
            os.write(w1, b"x")
            os.read(r2, 1)
            times.append(time.perf_counter() - t0)
        t.join()
    finally:
        os.sched_setaffinity(0, set(cpus))
        for fd in (r1, w1, r2, w2):
            os.close(fd)
    times.sort()
    return round(times[len(times) // 2] * 1e6, 1)


@dataclass
class Result:
    db: str
    op: str
    clients: int
    procs: int
    ops: int
    errors: int
    seconds: float
    rate: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    generator_cpu_s: float
    server_cpu_s: float
    member_cpu_s: list[float] = field(default_factory=list)  # per member, the leader first

    def cpu_per_op(self) -> str:
        """Server CPU per operation in microseconds, member by member (leader first)."""
        per = self.member_cpu_s or [self.server_cpu_s]
        return " / ".join(f"{c / self.ops * 1e6:.0f}" for c in per) if self.ops else "-"

    def row(self) -> str:
        return (
            f"| {self.db} | {self.op} | {self.clients} | {self.rate:,.0f} | {self.p50_ms:.2f} | {self.p99_ms:.2f} "
            f"| {self.errors} | {self.generator_cpu_s / self.seconds:.2f} | {self.server_cpu_s / self.seconds:.2f} "
            f"| {self.cpu_per_op()} |"
        )


def _pct(sorted_vals: list[int], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, int(q * len(sorted_vals)))
    return sorted_vals[i] / 1000.0


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads, from /proc (seconds)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, IndexError, ValueError):
        return 0.0


def prepare(endpoint: str, read_key: str = "benchget", value_size: int = 256) -> None:
    with grpc.insecure_channel(endpoint) as ch:
        rpc_pb2_grpc.KVStub(ch).Put(rpc_pb2.PutRequest(key=read_key.encode(), value=os.urandom(value_size)), timeout=10)


def run_load(
    db: str,
    endpoint: str,
    op: str,
    clients: int,
    duration: float,
    procs: int,
    server_pid: int | None = None,
    key_size: int = 8,
    value_size: int = 256,
) -> Result:
    procs = max(1, min(procs, clients))
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    start_at = time.time() + 1.5
    workers = []
    for i, n in enumerate(per):
        cmd = [
            sys.executable, "-m", "bench.loadworker", "--endpoint", endpoint, "--op", op,
            "--clients", str(n), "--conns", str(max(1, min(n, 8))), "--duration", str(duration),
            "--key-size", str(key_size), "--value-size", str(value_size), "--seed", str(i + 1),
            "--start-at", str(start_at),
        ]
        workers.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    time.sleep(max(0.0, start_at - time.time()))
    cpu0 = proc_cpu_seconds(server_pid) if server_pid else 0.0
    outs = []
    for w in workers:
        out, err = w.communicate(timeout=duration + 60)
        if w.returncode != 0:
            raise RuntimeError(f"load worker failed: {err.strip()[-500:]}")
        outs.append(json.loads(out))
    cpu1 = proc_cpu_seconds(server_pid) if server_pid else 0.0
    lat = sorted(x for o in outs for x in o["lat"])
    return _result(
        db, op, clients, procs, sum(o["ops"] for o in outs), sum(o["errors"] for o in outs),
        max(o["elapsed"] for o in outs), lat, sum(o["cpu"] for o in outs), cpu1 - cpu0,
    )


def _result(
    db: str, op: str, clients: int, procs: int, ops: int, errors: int, secs: float,
    lat_us: list[int], generator_cpu: float, server_cpu: float,
) -> Result:
    """A measurement from its counts and sorted latencies (microseconds)."""
    return Result(
        db=db, op=op, clients=clients, procs=procs, ops=ops, errors=errors,
        seconds=secs, rate=ops / secs if secs else 0.0,
        p50_ms=_pct(lat_us, 0.5), p90_ms=_pct(lat_us, 0.9), p99_ms=_pct(lat_us, 0.99),
        max_ms=(lat_us[-1] / 1000 if lat_us else 0), generator_cpu_s=generator_cpu, server_cpu_s=server_cpu,
    )


def results_json(results: list[Result]) -> str:
    return json.dumps([asdict(r) for r in results], indent=2)


TABLE_HEAD = (
    "| db | op | clients | ops/s | p50 ms | p99 ms | errors | generator CPU (cores) | server CPU (cores) "
    "| server CPU µs/op (leader first) |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def run_h2load_load(
    db: str,
    targets: list[tuple[str, str, int]],
    op: str,
    clients: int,
    duration: float,
    value_size: int = 256,
    members: list[int] | None = None,
) -> Result:
    """The same measurement with h2load as the generator; outcomes checked on the servers' metrics.

    targets: (gRPC endpoint, metrics URL, server pid) per member receiving load; members: the
    pids of every member (CPU is counted over all of them, the leader first), default targets'.
    """
    from bench import h2load

    path, frame = h2load.request_for(op, b"benchput", value_size, b"benchget")  # 8-byte keys, as etcd's benchmark
    method = path.rsplit("/", 1)[1]
    used = targets[: max(1, min(len(targets), clients))]
    before = [h2load.handled(url, method) for _, url, _ in used]
    pids = members or [pid for _, _, pid in targets]
    cpu0 = [proc_cpu_seconds(pid) for pid in pids]
    r = h2load.run([ep for ep, _, _ in used], path, frame, clients, duration)
    cpu1 = [proc_cpu_seconds(pid) for pid in pids]
    # the servers worked through the warm-up too: scale their CPU to the measured period
    scale = r.seconds / r.wall_s if r.wall_s else 1.0
    member_cpu = [(b - a) * scale for a, b in zip(cpu0, cpu1)]
    time.sleep(0.5)  # a server counts a call after answering it
    after = [h2load.handled(url, method) for _, url, _ in used]
    ok = errors = reset = 0.0
    for b, a in zip(before, after):
        delta = {c: a.get(c, 0.0) - b.get(c, 0.0) for c in a}
        ok += delta.get("OK", 0.0)
        # streams still in flight when h2load stops are reset by it: the server counts them as
        # Canceled (ours) or Unknown (grpc-go); at most one per client, and they are not errors
        reset += sum(delta.get(c, 0.0) for c in ("Canceled", "CANCELLED", "Unknown"))
        errors += sum(delta.values()) - delta.get("OK", 0.0)
    errors -= min(float(clients), reset)
    # h2load counts every HTTP 200; gRPC failures are also HTTP 200, so trust the servers' OK count
    good = min(r.requests, int(ok))
    errs = int(errors) + max(0, r.requests - good - int(errors))
    res = _result(db, op, clients, len(used), good, errs, r.seconds, r.latencies_us, r.cpu_s, sum(member_cpu))
    res.member_cpu_s = member_cpu
    return res
