"""A packet delayer for kernels without netem: holds every packet of one NFQUEUE queue for a fixed
delay (plus optional jitter, order kept) before letting it go, and can drop a fraction.

Run on a node (by nemesis/net.py, from the node tools venv; fnfqueue is its only dependency):

    python delayer.py --queue 7 --delay-ms 100 [--jitter-ms 20] [--loss 0.05] --status FILE

iptables sends the packets to shape to the queue (`-j NFQUEUE --queue-num 7 --queue-bypass`, so
they pass untouched whenever no delayer listens). Packets are queued with metadata only; each is
accepted unchanged once its time has come. Verdicts come in arrival order, so the delay never
reorders a flow; jitter only stretches gaps. SIGTERM releases every held packet at once before
exiting, so stopping the delay loses nothing; the status file (JSON, rewritten every 0.5 s and at
exit) counts packets seen, released and dropped.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import sys
import threading
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="delayer")
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--loss", type=float, default=0.0, help="fraction of packets dropped (0..1)")
    p.add_argument("--status", required=True)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.delay_ms < 0 or a.jitter_ms < 0 or not 0 <= a.loss < 1:
        p.error("delay and jitter must not be negative, loss must be in [0, 1)")
    import fnfqueue  # only on the node

    conn = fnfqueue.Connection(alloc_size=256, chunk_size=32, packet_size=2048)
    q = conn.bind(a.queue)
    q.set_mode(0, fnfqueue.COPY_META)
    q.set_maxlen(100_000)
    q.fail_open = True  # a full queue lets packets through rather than dropping them
    q.gso = True  # whole GSO packets, not segmented for us (we only hold them)

    held: collections.deque = collections.deque()
    cv = threading.Condition()
    stats = {"queue": a.queue, "delay_ms": a.delay_ms, "jitter_ms": a.jitter_ms, "loss": a.loss,
             "seen": 0, "released": 0, "dropped": 0, "held": 0, "pid": os.getpid(), "running": True}
    stopping = threading.Event()
    rng = random.Random(a.seed)

    def write_status() -> None:
        stats["held"] = len(held)
        tmp = a.status + ".tmp"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, a.status)

    def release() -> None:
        """Verdicts, all from this thread, in arrival order; once stopping, everything at once,
        then the connection closes (which ends the reading loop)."""
        while True:
            with cv:
                if not held:
                    if stopping.is_set():
                        break
                    cv.wait(0.05)
                    continue
                due, pkt = held[0]
                wait = due - time.monotonic()
                if wait > 0 and not stopping.is_set():
                    cv.wait(min(wait, 0.05))
                    continue
                held.popleft()
            try:
                pkt.accept()
                stats["released"] += 1
            except Exception:  # noqa: BLE001 - a packet the kernel no longer holds
                pass
        conn.close()

    def report() -> None:
        while not stopping.wait(0.5):
            write_status()

    def stop(signum, frame) -> None:
        stopping.set()  # only an Event here: the handler may interrupt code holding cv

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    releaser = threading.Thread(target=release, daemon=True)
    releaser.start()
    threading.Thread(target=report, daemon=True).start()
    write_status()
    last = 0.0
    while True:
        try:
            for pkt in conn:
                stats["seen"] += 1
                if a.loss and not stopping.is_set() and rng.random() < a.loss:
                    pkt.drop()
                    stats["dropped"] += 1
                    continue
                now = time.monotonic()
                due = now if stopping.is_set() else now + (a.delay_ms + (rng.uniform(0, a.jitter_ms) if a.jitter_ms else 0)) / 1000
                due = max(due, last)  # never before an earlier packet: no reordering
                last = due
                with cv:
                    held.append((due, pkt))
                    cv.notify()
            break  # the connection was closed by the releaser
        except fnfqueue.BufferOverflowException:
            stats["overflows"] = stats.get("overflows", 0) + 1
            conn.reset()
        except Exception as e:  # noqa: BLE001 - report, then release what is held
            print(f"delayer: {type(e).__name__}: {e}", file=sys.stderr)
            stopping.set()
            break
    releaser.join(5)
    stats["running"] = False
    write_status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
