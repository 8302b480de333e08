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


@dataclass
class H2Result:
    requests: int
    seconds: float
    latencies_us: list[int]
    cpu_s: float


def run(endpoint: str, path: str, frame: bytes, clients: int, duration: float, threads: int = 1) -> H2Result:
    conns = clients if clients <= 64 else 64
    streams = max(1, clients // conns)
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body = os.path.join(tmp, "body")
        logf = os.path.join(tmp, "log")
        with open(body, "wb") as f:
            f.write(frame)
        cmd = [
            H2LOAD, "-D", str(int(duration)), "--warm-up-time=1", "-c", str(conns), "-m", str(streams),
            "-t", str(min(threads, conns)), "-d", body, "--log-file", logf,
            "-H", "content-type: application/grpc", "-H", "te: trailers", f"http://{endpoint}{path}",
        ]
        r0 = os.times()
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
        r1 = os.times()
        if p.returncode != 0:
            raise RuntimeError(f"h2load failed: {p.stderr.strip() or p.stdout[-500:]}")
        m = re.search(r"finished in ([0-9.]+)(m?s)", p.stdout)
        secs = float(m.group(1)) / (1000 if m and m.group(2) == "ms" else 1) if m else duration
        lats = []
        with open(logf) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "200":
                    lats.append(int(parts[2]))
        done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", p.stdout)
        n = int(done.group(2)) if done else len(lats)
    return H2Result(requests=n, seconds=secs, latencies_us=sorted(lats),
                    cpu_s=(r1.children_user - r0.children_user) + (r1.children_system - r0.children_system))
