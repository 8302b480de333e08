"""One load-generator process: many concurrent requests over a few gRPC channels (grpc.aio).

Run as `python -m bench.loadworker --endpoint H:P --op put --clients 32 --duration 10`; prints one
JSON line: ops done, errors, elapsed seconds, latencies in microseconds (sampled), CPU seconds.
The parent starts several of these so the generator is not the bottleneck, and reports their CPU.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time

import grpc

from server.proto.etcdserverpb import rpc_pb2, rpc_pb2_grpc

MAX_SAMPLES = 200_000


def _key(i: int, size: int) -> bytes:
    return i.to_bytes(8, "big")[-size:] if size <= 8 else i.to_bytes(8, "big").rjust(size, b"k")


async def _client(stub, args, deadline: float, stats: dict, rng: random.Random) -> None:
    value = os.urandom(args.value_size)
    lat = stats["lat"]
    serializable = args.op == "range-serializable"
    while True:
        now = time.perf_counter()
        if now >= deadline:
            return
        try:
            if args.op == "put":
                k = _key(rng.randrange(args.key_space), args.key_size)
                await stub.Put(rpc_pb2.PutRequest(key=k, value=value), timeout=10)
            else:
                await stub.Range(rpc_pb2.RangeRequest(key=args.read_key.encode(), serializable=serializable), timeout=10)
            stats["ops"] += 1
            if len(lat) < MAX_SAMPLES:
                lat.append(int((time.perf_counter() - now) * 1e6))
        except grpc.aio.AioRpcError as e:
            stats["errors"] += 1
            stats.setdefault("codes", {}).setdefault(e.code().name, 0)
            stats["codes"][e.code().name] += 1


async def run(args) -> dict:
    chans = [grpc.aio.insecure_channel(args.endpoint, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(args.conns)]
    stubs = [rpc_pb2_grpc.KVStub(c) for c in chans]
    for c in chans:
        await asyncio.wait_for(c.channel_ready(), 10)
    stats: dict = {"ops": 0, "errors": 0, "lat": []}
    # all workers start together: the parent passes a wall-clock start time
    delay = args.start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    t0 = time.perf_counter()
    deadline = t0 + args.duration
    rng = random.Random(args.seed)
    await asyncio.gather(*(_client(stubs[i % len(stubs)], args, deadline, stats, rng) for i in range(args.clients)))
    elapsed = time.perf_counter() - t0
    for c in chans:
        await c.close()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    stats["elapsed"] = elapsed
    stats["cpu"] = ru.ru_utime + ru.ru_stime
    return stats


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--op", choices=["put", "range", "range-serializable"], required=True)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--key-size", type=int, default=8)
    p.add_argument("--value-size", type=int, default=256)
    p.add_argument("--key-space", type=int, default=100_000)
    p.add_argument("--read-key", default="benchget")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--start-at", type=float, default=0.0)
    args = p.parse_args()
    stats = asyncio.run(run(args))
    json.dump(stats, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
