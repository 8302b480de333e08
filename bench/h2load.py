"""gRPC load from h2load (nghttp2's C HTTP/2 load generator), so the generator is not the bottleneck.

h2load sends one fixed gRPC frame per request (so every put writes the same key, as etcd's own
benchmark does by default with --key-space-size=1) and checks only the HTTP status; gRPC
outcomes are therefore counted from the server's grpc_server_handled_total metric before and
after, and a run whose OK count falls short of h2load's count is reported with its errors.
Latency percentiles come from h2load's per-request log.
"""
from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass

from server.proto.etcdserverpb import rpc_pb2

H2LOAD = shutil.which("h2load") or "/usr/bin/h2load"


def available() -> bool:
    return os.path.exists(H2LOAD)


def grpc_frame(msg) -> bytes:
    body = msg.SerializeToString()
    return b"\x00" + struct.pack(">I", len(body)) + body


def request_for(op: str, key: bytes, value_size: int, read_key: bytes) -> tuple[str, bytes]:
    if op == "put":
        return "/etcdserverpb.KV/Put", grpc_frame(rpc_pb2.PutRequest(key=key, value=b"v" * value_size))
    if op == "range":
        return "/etcdserverpb.KV/Range", grpc_frame(rpc_pb2.RangeRequest(key=read_key))
    if op == "range-serializable":
        return "/etcdserverpb.KV/Range", grpc_frame(rpc_pb2.RangeRequest(key=read_key, serializable=True))
    raise ValueError(op)


_METRIC = re.compile(r'^grpc_server_handled_total\{([^}]*)\}\s+([0-9.e+]+)', re.M)


def handled(metrics_url: str, method: str) -> dict[str, float]:
    """grpc_server_handled_total for one KV method, by code."""
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for labels, val in _METRIC.findall(text):
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if d.get("grpc_method") == method and d.get("grpc_service") == "etcdserverpb.KV":
            out[d.get("grpc_code", "?")] = out.get(d.get("grpc_code", "?"), 0.0) + float(val)
    return out


WARM_UP = 1  # seconds of load before the measured period (h2load counts only the latter)


@dataclass
class H2Result:
    requests: int
    seconds: float  # the measured period (warm-up excluded, as from `requests`)
    latencies_us: list[int]
    cpu_s: float  # the generator's CPU over the whole run, scaled to the measured period
    wall_s: float = 0.0  # the whole run, warm-up included


def run(endpoints: list[str], path: str, frame: bytes, clients: int, duration: float) -> H2Result:
    """Drive `clients` streams spread evenly over endpoints (one h2load process each, as etcd's
    benchmark tool spreads its clients over --endpoints), all at once."""
    endpoints = endpoints[: max(1, min(len(endpoints), clients))]
    share = [clients // len(endpoints) + (1 if i < clients % len(endpoints) else 0) for i in range(len(endpoints))]
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body = os.path.join(tmp, "body")
        with open(body, "wb") as f:
            f.write(frame)
        procs = []
        r0 = os.times()
        t0 = time.monotonic()
        for i, (ep, n) in enumerate(zip(endpoints, share)):
            conns = n if n <= 64 else 64
            streams = max(1, n // conns)
            logf = os.path.join(tmp, f"log{i}")
            cmd = [
                H2LOAD, "-D", str(int(duration)), f"--warm-up-time={WARM_UP}", "-c", str(conns), "-m", str(streams),
                "-d", body, "--log-file", logf,
                "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{ep}{path}",
            ]
            procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), logf))
        total, secs, lats = 0, 0.0, []
        for proc, logf in procs:
            out, err = proc.communicate(timeout=duration + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"h2load failed: {err.strip() or out[-500:]}")
            # "finished in" includes the warm-up, the request counts do not
            m = re.search(r"finished in ([0-9.]+)(m?s)", out)
            total_s = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1) if m else duration + WARM_UP
            secs = max(secs, total_s - WARM_UP)
            with open(logf) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[1] == "200":
                        lats.append(int(parts[2]))
            done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
            total += int(done.group(2)) if done else 0
        r1 = os.times()
        wall = time.monotonic() - t0
    cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    return H2Result(requests=total, seconds=secs, latencies_us=sorted(lats), cpu_s=cpu * secs / wall, wall_s=wall)
