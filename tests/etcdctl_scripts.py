"""Run the same real-etcdctl script against the reference server and against real etcd, compare.

Why: the reference server is meant to encode etcd's observable behaviour, not our reading of it.
Real etcdctl talking to real etcd is the oracle; every step runs on both servers and the outputs
(exit code, stdout, stderr) must be equal once what legitimately differs is normalised:

- identities: each server's member and cluster ID and the lease IDs it hands out are replaced by
  names (<MEMBER>, <CLUSTER>, <LEASE1>, ...), in decimal and hex, per server;
- addresses and ports (each server has its own), client UUIDs and timestamps in etcdctl's logs;
- what is a property of the implementation, not of the API: version strings, database sizes,
  raft indexes (etcd writes configuration entries to its log that the reference does not),
  durations;
- remaining lease TTLs, compared with a tolerance of a second instead of exactly, and the order
  of a lease's keys (etcd lists them from a Go map, in no particular order).

Raft terms, revisions, hashes, error texts and exit codes are compared exactly.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable

from harness.localproc import ETCDCTL_BIN, LocalMember

Sub = tuple["re.Pattern[str]", "str | Callable[[re.Match[str]], str]"]


def _subs(*pairs: tuple[str, "str | Callable[[re.Match[str]], str]"]) -> list[Sub]:
    return [(re.compile(p, re.M), r) for p, r in pairs]


def _sorted_list(sep: str) -> Callable[["re.Match[str]"], str]:
    def sub(mo: "re.Match[str]") -> str:
        items = sorted(x for x in mo.group(2).split(sep) if x)
        return mo.group(1) + sep.join(items) + mo.group(3)
    return sub


# Values that differ between two correct servers run side by side.
VOLATILE: list[Sub] = _subs(
    (r'"ts":("[^"]*"|[0-9.e+-]+)', '"ts":<TS>'),
    (r"client-[0-9a-f]{8}-[0-9a-f-]{27}", "client-<UUID>"),
    (r"\b(127\.0\.0\.1|localhost):\d+", "<ADDR>"),
    (r"took = [0-9.]+[a-zµ]*s", "took = <DUR>"),
    (r'"took":("[^"]*"|[0-9.e+-]+)', '"took":<DUR>'),
    (r'"size":"[^"]*"', '"size":<SIZE>'),
    # a lease's keys come from a Go map in etcd: any order
    (r"(attached keys\(\[)([^\]]*)(\]\))", _sorted_list(" ")),
    (r'("keys":\[)([^\]]*)(\])', _sorted_list(",")),
    # endpoint status -w json
    (r'"version":"[^"]*"', '"version":<VERSION>'),
    (r'"(dbSize|dbSizeInUse|raftIndex|raftAppliedIndex)":\d+', r'"\1":<N>'),
    # endpoint status (simple): endpoint, ID, version, db size, leader, learner, term, index, applied
    (
        r"^(<ADDR>, \S+, )\S+, [0-9.]+ [kMG]?B, (true|false), (true|false), (\d+), \d+, \d+, ",
        r"\1<VERSION>, <SIZE>, \2, \3, \4, <N>, <N>, ",
    ),
)

_CANCELED_BY_STOP: list[Sub] = _subs((r'^\{"level":"warn"[^\n]*desc = context canceled"\}\n', ""))

# Numbers that may differ by a second between the two servers (time passes between the calls).
TTL_TOLERANT = [re.compile(r"remaining\((-?\d+)s\)"), re.compile(r'"ttl":(-?\d+)')]


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def show(self) -> str:
        return f"rc={self.rc}\n--- stdout\n{self.out}--- stderr\n{self.err}"


def _decode(b: bytes) -> str:
    return b.decode("utf-8", errors="backslashreplace")


def etcdctl(m: LocalMember, *args: str, input: str | None = None, timeout: float = 30.0) -> Result:
    """Real etcdctl (API v3) against one member; output kept as bytes until decoded here."""
    env = dict(os.environ, ETCDCTL_API="3")
    p = subprocess.run(
        [ETCDCTL_BIN, f"--endpoints={m.endpoint}", *args],
        input=input.encode() if input is not None else None,
        capture_output=True, timeout=timeout, env=env,
    )
    return Result(p.returncode, _decode(p.stdout), _decode(p.stderr))


class Normaliser:
    """One server's view: its identities become names, then volatile values placeholders."""

    def __init__(self, paths: dict[str, str] | None = None) -> None:
        self.names: dict[str, str] = {}
        self.paths = dict(paths or {})
        self._rx: re.Pattern[str] | None = None

    def name(self, value: int, label: str) -> None:
        for form in (str(value), format(value, "x"), format(value, "016x")):
            self.names[form] = label
        self._rx = re.compile(r"\b(" + "|".join(sorted(map(re.escape, self.names), key=len, reverse=True)) + r")\b")

    def __call__(self, text: str, extra: Iterable[Sub] = ()) -> str:
        for path, label in self.paths.items():
            text = text.replace(path, label)
        if self._rx is not None:
            text = self._rx.sub(lambda mo: self.names[mo.group(1)], text)
        for rx, repl in VOLATILE:
            text = rx.sub(repl, text)
        for rx, repl in extra:
            text = rx.sub(repl, text)
        return text


def _tolerate_ttls(a: str, b: str, slack: int = 1) -> tuple[str, str]:
    """Replace remaining-TTL numbers by <TTL> on both sides when they agree within slack."""
    for rx in TTL_TOLERANT:
        na, nb = [int(x) for x in rx.findall(a)], [int(x) for x in rx.findall(b)]
        if len(na) == len(nb) and all(abs(x - y) <= slack for x, y in zip(na, nb)):
            a = rx.sub(lambda mo: mo.group(0).replace(mo.group(1), "<TTL>"), a)
            b = rx.sub(lambda mo: mo.group(0).replace(mo.group(1), "<TTL>"), b)
    return a, b


class Background:
    """A long-running etcdctl (watch) whose output is collected by reader threads."""

    def __init__(self, m: LocalMember, args: tuple[str, ...]) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [ETCDCTL_BIN, f"--endpoints={m.endpoint}", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        self._out = bytearray()
        self._err = bytearray()
        self._mu = threading.Lock()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self._err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, buf: bytearray) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            with self._mu:
                buf.extend(chunk)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def text(self) -> tuple[str, str]:
        with self._mu:
            return _decode(bytes(self._out)), _decode(bytes(self._err))

    def stop(self) -> Result:
        """SIGTERM unless it already exited; rc is the exit code, or -15 if we ended it."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for t in self._threads:
            t.join(5)
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        out, err = self.text()
        return Result(self.proc.returncode, out, err)


@dataclass
class Mismatch:
    step: str
    ref: str
    etcd: str

    def __str__(self) -> str:
        return (
            f"=== step: {self.step}\n"
            f"--- reference server (normalised):\n{self.ref}\n"
            f"--- real etcd (normalised):\n{self.etcd}"
        )


@dataclass
class DiffPair:
    """A reference member and an etcd member, driven in lockstep by the same etcdctl script."""

    ref: LocalMember
    etcd: LocalMember
    mismatches: list[Mismatch] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _background: list[Background] = field(default_factory=list)
    _leases: int = 0

    def __post_init__(self) -> None:
        self.norm = {
            "reference": Normaliser({self.ref.workdir: "<WORKDIR>"}),
            "etcd": Normaliser({self.etcd.workdir: "<WORKDIR>"}),
        }
        self._pool = ThreadPoolExecutor(2)
        for m in (self.ref, self.etcd):
            r = etcdctl(m, "endpoint", "status", "-w", "json")
            assert r.rc == 0, f"{m.kind}: endpoint status failed: {r.show()}"
            h = re.search(r'"cluster_id":(\d+),"member_id":(\d+)', r.out)
            assert h, r.out
            self.norm[m.kind].name(int(h.group(1)), "<CLUSTER>")
            self.norm[m.kind].name(int(h.group(2)), "<MEMBER>")

    @property
    def members(self) -> tuple[LocalMember, LocalMember]:
        return self.ref, self.etcd

    def close(self) -> None:
        for b in self._background:
            b.stop()
        self._pool.shutdown()

    # --------------------------------------------------------------- steps
    def learn(self, pattern: str, ref_text: str, etcd_text: str, label: str = "SESSION") -> None:
        """Name IDs that etcdctl made for itself (a lock's or election's session lease), found
        by pattern (group 1, hex) in both outputs, pairing them by order of appearance."""
        found = [re.findall(pattern, ref_text), re.findall(pattern, etcd_text)]
        for a, b in zip(*found):
            ra, rb = int(a, 16), int(b, 16)
            if format(ra, "x") in self.norm["reference"].names or format(rb, "x") in self.norm["etcd"].names:
                continue
            self._leases += 1
            self.norm["reference"].name(ra, f"<{label}{self._leases}>")
            self.norm["etcd"].name(rb, f"<{label}{self._leases}>")

    def compare(self, step: str, ref: Result, etcd: Result, extra: Iterable[Sub] = (), ttl: bool = False,
                learn: str | None = None) -> bool:
        extra = list(extra)
        if learn is not None:
            self.learn(learn, ref.out + ref.err, etcd.out + etcd.err)
        a = self.norm["reference"](ref.show(), extra)
        b = self.norm["etcd"](etcd.show(), extra)
        if ttl:
            a, b = _tolerate_ttls(a, b)
        if a != b:
            self.mismatches.append(Mismatch(step, a, b))
            return False
        return True

    def run(
        self,
        *args: str,
        input: str | None = None,
        rc: int | None = 0,
        contains: str | None = None,
        extra: Iterable[Sub] = (),
        ttl: bool = False,
        learn: str | None = None,
    ) -> tuple[Result, Result]:
        """Run one etcdctl command on both servers at once and compare the normalised outputs.

        rc / contains also check what real etcd did, so a step that fails the same way on both
        (a typo in the script) does not pass unnoticed.
        """
        fr = self._pool.submit(etcdctl, self.ref, *args, input=input)
        fe = self._pool.submit(etcdctl, self.etcd, *args, input=input)
        ref, etcd = fr.result(), fe.result()
        step = "etcdctl " + " ".join(args) + (f"  <<< {input!r}" if input is not None else "")
        self.compare(step, ref, etcd, extra, ttl, learn)
        if rc is not None and etcd.rc != rc:
            self.failures.append(f"{step}: real etcd exited {etcd.rc}, script expects {rc}\n{etcd.show()}")
        if contains is not None and contains not in etcd.out + etcd.err:
            self.failures.append(f"{step}: real etcd's output lacks {contains!r}\n{etcd.show()}")
        return ref, etcd

    def each(self, fn: Callable[[LocalMember], Result]) -> tuple[Result, Result]:
        fr = self._pool.submit(fn, self.ref)
        fe = self._pool.submit(fn, self.etcd)
        return fr.result(), fe.result()

    def grant(self, ttl: int, expect_ttl: int | None = None) -> tuple[int, int]:
        """lease grant on both; the two new IDs get the same name. Returns (ref id, etcd id)."""
        self._leases += 1
        label = f"<LEASE{self._leases}>"
        ref, etcd = self.each(lambda m: etcdctl(m, "lease", "grant", str(ttl)))
        ids = []
        for m, r in ((self.ref, ref), (self.etcd, etcd)):
            mo = re.match(r"lease ([0-9a-f]+) granted with TTL\((\d+)s\)", r.out)
            if mo is None:
                self.failures.append(f"{m.kind}: lease grant {ttl} failed\n{r.show()}")
                ids.append(0)
                continue
            self.norm[m.kind].name(int(mo.group(1), 16), label)
            ids.append(int(mo.group(1), 16))
            if expect_ttl is not None and m.kind == "etcd" and int(mo.group(2)) != expect_ttl:
                self.failures.append(f"etcd granted TTL {mo.group(2)}, expected {expect_ttl}")
        self.compare(f"etcdctl lease grant {ttl}", ref, etcd)
        return ids[0], ids[1]

    def lease_arg(self, ids: tuple[int, int]) -> dict[str, str]:
        return {"reference": format(ids[0], "x"), "etcd": format(ids[1], "x")}

    def run_each(self, make_args: Callable[[LocalMember], list[str]], step: str, rc: int | None = 0,
                 input: str | None = None, ttl: bool = False) -> tuple[Result, Result]:
        """Like run, with arguments that differ per server (a lease ID, a file path)."""
        ref, etcd = self.each(lambda m: etcdctl(m, *make_args(m), input=input))
        self.compare(step, ref, etcd, ttl=ttl)
        if rc is not None and etcd.rc != rc:
            self.failures.append(f"{step}: real etcd exited {etcd.rc}, script expects {rc}\n{etcd.show()}")
        return ref, etcd

    # --------------------------------------------------------------- watches
    def background(self, *args: str) -> "BackgroundPair":
        ref, etcd = Background(self.ref, args), Background(self.etcd, args)
        self._background += [ref, etcd]
        return BackgroundPair(self, "etcdctl " + " ".join(args), ref, etcd)

    def check(self) -> None:
        """Fail with every mismatch (both outputs shown) and every unexpected etcd result."""
        msgs = [str(m) for m in self.mismatches] + self.failures
        assert not msgs, (
            f"{len(self.mismatches)} step(s) differ between the reference server and real etcd, "
            f"{len(self.failures)} unexpected result(s):\n\n" + "\n\n".join(msgs)
        )


@dataclass
class BackgroundPair:
    pair: DiffPair
    step: str
    ref: Background
    etcd: Background

    def send(self, line: str) -> None:
        self.ref.send(line)
        self.etcd.send(line)

    def wait_for(self, needle: str, count: int = 1, timeout: float = 10.0, stream: str = "out") -> bool:
        """Wait until both outputs hold needle count times (or time out: the compare shows it)."""
        deadline = time.monotonic() + timeout
        idx = 0 if stream == "out" else 1
        while time.monotonic() < deadline:
            if all(b.text()[idx].count(needle) >= count for b in (self.ref, self.etcd)):
                return True
            time.sleep(0.02)
        seen = "\n".join(f"--- {b.args} on {k}: {b.text()}" for k, b in (("reference", self.ref), ("etcd", self.etcd)))
        self.pair.failures.append(f"{self.step}: timed out waiting for {count}x {needle!r}\n{seen}")
        return False

    def finish(self, extra: Iterable[Sub] = (), learn: str | None = None) -> tuple[Result, Result]:
        """Stop both (SIGTERM) and compare everything they printed.

        A request the client had in flight when it was stopped may be logged as canceled; that
        depends on when the signal landed, not on the server, so such lines are dropped.
        """
        ref, etcd = self.ref.stop(), self.etcd.stop()
        extra = [*_CANCELED_BY_STOP, *extra]
        self.pair.compare(self.step, ref, etcd, extra, learn=learn)
        return ref, etcd
