"""`make demo` / `etcdproof demo`: the reference server, driven by real etcdctl, survives SIGKILL.

Until the real harness exists this is the end-to-end showcase: it starts the reference server on
free loopback ports in a fresh run directory (store/demo/<UTC timestamp>/, or under
$ETCDPROOF_STORE), runs a short etcdctl session (put, get, txn, watch, lease), then lets four
writers put unique keys while the server is killed with SIGKILL and restarted twice, and checks
that every acknowledged put is still there with its value and revision. It leaves a transcript,
the server's log and results.json in the run directory and returns 0 when the run is valid.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import grpc

from harness.localproc import ETCDCTL_BIN, LocalMember
from server.proto.etcdserverpb import rpc_pb2 as pb
from server.proto.etcdserverpb import rpc_pb2_grpc as rpcgrpc

REPO = Path(__file__).resolve().parents[1]
WRITERS = 4
WRITE_SECONDS = 5.0
KILL_AT = (1.5, 3.3)  # seconds into the write phase, jittered a little
PREFIX = b"demo/ack/"
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 300),
]


def store_root() -> Path:
    return Path(os.environ.get("ETCDPROOF_STORE") or REPO / "store")


def new_run_dir(root: Path) -> Path:
    """store/demo/<UTC timestamp>/ (suffixed if taken), with store/demo/latest pointing at it."""
    demo = root / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run = demo / stamp
    n = 1
    while True:
        try:
            run.mkdir()
            break
        except FileExistsError:
            n += 1
            run = demo / f"{stamp}-{n}"
    tmp = demo / f".latest-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(run.name)
    os.replace(tmp, demo / "latest")
    return run


class Transcript:
    """Progress lines to the terminal and, with command outputs, to transcript.txt."""

    def __init__(self, path: Path) -> None:
        self._f: TextIO = open(path, "w", encoding="utf-8")
        self._mu = threading.Lock()

    def say(self, line: str = "") -> None:
        with self._mu:
            print(line, flush=True)
            self._f.write(line + "\n")
            self._f.flush()

    def record(self, text: str) -> None:
        """Into the transcript only (command outputs), indented."""
        with self._mu:
            for line in text.rstrip("\n").splitlines():
                self._f.write("    " + line + "\n")
            self._f.flush()

    def close(self) -> None:
        self._f.close()


# ------------------------------------------------------------- etcdctl session
class Session:
    def __init__(self, m: LocalMember, out: Transcript) -> None:
        self.m = m
        self.out = out
        self.failures: list[str] = []

    def run(self, *args: str, input: str | None = None, expect: str | None = None) -> str:
        """Run etcdctl, show command and output; a non-zero exit or missing text is a failure."""
        shown = " ".join(_quote(a) for a in args)
        self.out.say(f"$ etcdctl {shown}")
        r = self.m.etcdctl(*args, input=input)
        text = (r.stdout + r.stderr).rstrip("\n")
        for line in text.splitlines():
            print("    " + line)
        self.out.record(text)
        if r.returncode != 0:
            self.failures.append(f"etcdctl {shown}: exit {r.returncode}: {r.stderr.strip()}")
        elif expect is not None and expect not in r.stdout:
            self.failures.append(f"etcdctl {shown}: expected {expect!r} in {r.stdout!r}")
        return r.stdout

    def watch(self, key: str, rev: int, live_put: tuple[str, str], want_events: int) -> None:
        """Watch from an old revision (history replays), and see a live put arrive too."""
        args = ["watch", "--prefix", f"--rev={rev}", key]
        self.out.say(f"$ etcdctl {' '.join(args)}   # in the background; then a put arrives live")
        env = dict(os.environ, ETCDCTL_API="3")
        proc = subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints={self.m.endpoint}", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        lines: list[str] = []
        got_all = threading.Event()

        def reader() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if sum(1 for x in lines if x in ("PUT", "DELETE")) >= want_events:
                    got_all.set()

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        time.sleep(0.3)
        self.run("put", *live_put)
        got_all.wait(5)
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        t.join(2)
        self.out.say(f"  (watch output, {want_events} events expected)")
        for line in lines:
            print("    " + line)
        self.out.record("\n".join(lines))
        if not got_all.is_set():
            self.failures.append(f"watch: expected {want_events} events, got output {lines!r}")


def _quote(a: str) -> str:
    return a if a and all(c.isalnum() or c in "-_=/.:,()" for c in a) else json.dumps(a)


def etcdctl_session(m: LocalMember, out: Transcript) -> list[str]:
    s = Session(m, out)
    s.run("put", "demo/greeting", "hello", expect="OK")
    s.run("put", "demo/color", "blue", expect="OK")
    s.run("get", "demo/greeting", expect="hello")
    s.run("get", "--prefix", "demo/", "-w", "json")
    txn = 'value("demo/color") = "blue"\n\nput demo/color green\n\nput demo/color red\n\n'
    out.say('  (txn: if demo/color is "blue" then set it to green, else to red)')
    s.run("txn", input=txn, expect="SUCCESS")
    s.run("get", "demo/color", "--print-value-only", expect="green")
    first = json.loads(s.run("get", "demo/greeting", "-w", "json") or "{}")
    rev = first.get("kvs", [{}])[0].get("mod_revision", 1)
    s.watch("demo/", rev, ("demo/live", "arrived"), want_events=4)
    grant = s.run("lease", "grant", "60", expect="granted")
    parts = grant.split()
    lease_id = parts[1] if len(parts) > 1 else "0"
    s.run("put", f"--lease={lease_id}", "demo/session", "alive", expect="OK")
    s.run("lease", "timetolive", lease_id, "--keys", expect="demo/session")
    s.run("lease", "revoke", lease_id, expect="revoked")
    s.run("get", "--prefix", "demo/", "--keys-only")
    if s.run("get", "demo/session", "--print-value-only").strip():
        s.failures.append("demo/session still exists after its lease was revoked")
    return s.failures


# ------------------------------------------------------------ verification
@dataclass
class Writer:
    """Puts unique keys; remembers which puts were acknowledged (and at which revision)."""

    idx: int
    endpoint: str
    stop: threading.Event
    acked: list[tuple[bytes, bytes, int]] = field(default_factory=list)
    uncertain: dict[bytes, bytes] = field(default_factory=dict)

    def run(self) -> None:
        with grpc.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS) as ch:
            kv = rpcgrpc.KVStub(ch)
            n = 0
            while not self.stop.is_set():
                key = PREFIX + f"w{self.idx}/{n:06d}".encode()
                value = f"w{self.idx}-{n}-{random.getrandbits(32):08x}".encode()
                n += 1
                try:
                    resp = kv.Put(pb.PutRequest(key=key, value=value), timeout=5)
                except grpc.RpcError:
                    self.uncertain[key] = value  # failed or cut off by the crash: may or may not be there
                    time.sleep(0.02)
                    continue
                self.acked.append((key, value, resp.header.revision))


def write_through_crashes(m: LocalMember, out: Transcript, rng: random.Random) -> tuple[list[Writer], list[int]]:
    stop = threading.Event()
    writers = [Writer(i, m.endpoint, stop) for i in range(WRITERS)]
    threads = [threading.Thread(target=w.run, name=f"writer-{w.idx}", daemon=True) for w in writers]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    phases: list[int] = []  # puts acknowledged before each kill, and overall at the end
    try:
        for at in KILL_AT:
            time.sleep(max(0.0, t0 + at + rng.uniform(-0.3, 0.3) - time.monotonic()))
            acked = sum(len(w.acked) for w in writers)
            phases.append(acked)
            out.say(f"  t={time.monotonic() - t0:4.1f}s  {acked} puts acknowledged so far; SIGKILL the server")
            m.kill()
            m.start()
            out.say(f"  t={time.monotonic() - t0:4.1f}s  restarted on the same data dir")
        time.sleep(max(0.0, t0 + WRITE_SECONDS - time.monotonic()))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    phases.append(sum(len(w.acked) for w in writers))
    out.say(f"  t={time.monotonic() - t0:4.1f}s  writers stopped")
    return writers, phases


def check(m: LocalMember, writers: list[Writer], phases: list[int]) -> dict:
    end = PREFIX[:-1] + bytes([PREFIX[-1] + 1])
    with grpc.insecure_channel(m.endpoint) as ch:
        resp = rpcgrpc.KVStub(ch).Range(pb.RangeRequest(key=PREFIX, range_end=end), timeout=10)
    stored = {kv.key: kv for kv in resp.kvs}
    problems: list[str] = []
    for i, (a, b) in enumerate(zip([0, *phases], phases)):
        if b <= a:
            problems.append(f"no put was acknowledged {'before the first kill' if i == 0 else f'after restart {i}'}")
    lost = wrong_value = wrong_rev = out_of_order = 0
    revs: list[int] = []
    for w in writers:
        last = 0
        for key, value, rev in w.acked:
            revs.append(rev)
            if rev <= last:
                out_of_order += 1
                problems.append(f"writer {w.idx}: revision {rev} of {key.decode()} not above the previous {last}")
            last = rev
            kv = stored.get(key)
            if kv is None:
                lost += 1
                problems.append(f"lost: {key.decode()} acknowledged at revision {rev}")
            elif kv.value != value:
                wrong_value += 1
                problems.append(f"wrong value: {key.decode()} is {kv.value!r}, acknowledged {value!r}")
            elif kv.mod_revision != rev:
                wrong_rev += 1
                problems.append(f"wrong revision: {key.decode()} at {kv.mod_revision}, acknowledged {rev}")
    duplicates = len(revs) - len(set(revs))
    if duplicates:
        problems.append(f"{duplicates} acknowledged puts share a revision")
    known = {k: v for w in writers for k, v, _ in w.acked}
    uncertain = {k: v for w in writers for k, v in w.uncertain.items()}
    unexpected = 0
    for key, kv in stored.items():
        want = known.get(key, uncertain.get(key))
        if want is None or kv.value != want:
            unexpected += 1
            problems.append(f"unexpected: {key.decode()} = {kv.value!r} was never written so")
    counts = {
        "acknowledged": len(known),
        "uncertain": len(uncertain),
        "uncertain_present": sum(1 for k in uncertain if k in stored),
        "stored": len(stored),
        "lost": lost,
        "wrong_value": wrong_value,
        "wrong_revision": wrong_rev,
        "revisions_out_of_order": out_of_order,
        "duplicate_revisions": duplicates,
        "unexpected": unexpected,
    }
    return {"counts": counts, "problems": problems}


# ---------------------------------------------------------------------- main
def main() -> int:
    started = time.monotonic()
    run = new_run_dir(store_root())
    out = Transcript(run / "transcript.txt")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    m = LocalMember("reference", str(run))
    results: dict = {"valid": False, "run_dir": str(run), "seed": seed, "server_log": m.log_path}
    try:
        out.say(f"etcdproof demo: run directory {run}")
        m.start()
        out.say(f"reference server up: gRPC {m.endpoint}, HTTP {m.http_url}, data {m.data_dir}")
        results["endpoint"] = m.endpoint
        out.say()
        if shutil.which(ETCDCTL_BIN) or os.access(ETCDCTL_BIN, os.X_OK):
            out.say("== an etcdctl session ==")
            session_failures = etcdctl_session(m, out)
        else:
            out.say(f"etcdctl not found at {ETCDCTL_BIN}; skipping the etcdctl session")
            session_failures = ["etcdctl not installed"]
        for f in session_failures:
            out.say(f"  session problem: {f}")
        out.say()
        out.say(f"== {WRITERS} writers put unique keys for {WRITE_SECONDS:.0f}s; the server is killed twice ==")
        writers, phases = write_through_crashes(m, out, rng)
        kills = len(phases) - 1
        out.say("checking every acknowledged put after the last restart ...")
        verdict = check(m, writers, phases)
        c = verdict["counts"]
        out.say(
            f"  {c['acknowledged']} acknowledged, {c['uncertain']} uncertain (errored or in flight at a crash; "
            f"{c['uncertain_present']} of them present), {c['lost']} lost, {c['wrong_value']} wrong values, "
            f"{c['wrong_revision']} wrong revisions, {c['duplicate_revisions']} duplicate revisions, "
            f"{c['unexpected']} unexpected keys"
        )
        for p in verdict["problems"][:20]:
            out.say(f"  PROBLEM: {p}")
        durable = not verdict["problems"] and c["acknowledged"] > 0
        results.update(
            valid=durable and not session_failures,
            durable=durable,
            session_ok=not session_failures,
            session_failures=session_failures,
            kills=kills,
            restarts=kills,
            writers=WRITERS,
            counts=c,
            acknowledged_before_each_kill_and_at_end=phases,
            problems=verdict["problems"],
        )
    except Exception as e:  # noqa: BLE001 - any failure is reported as an invalid run
        out.say(f"demo failed: {e!r}")
        results["error"] = repr(e)
        tail = m.tail_log()
        if tail:
            out.say("server log tail:")
            out.record(tail)
    finally:
        m.stop(timeout=5)
        results["seconds"] = round(time.monotonic() - started, 1)
        with open(run / "results.json", "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    out.say()
    out.say(f"run directory: {run}  (transcript.txt, results.json, {Path(m.log_path).name})")
    if results["valid"]:
        why = "nothing acknowledged was lost"
    elif results.get("durable"):
        why = "acknowledged writes survived, but the etcdctl session had problems (above)"
    else:
        why = "see the problems above"
    out.say(f"verdict: {'VALID' if results['valid'] else 'INVALID'}: {why}")
    out.close()
    return 0 if results["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
