"""Clock faults: bump (jump a node's wall clock by up to minutes, either way) and strobe (flip it
back and forth quickly), reset at stop.

Two ways to move a node's clock, chosen per node at prepare time:

- `libfaketime`, where the node shares this machine's kernel (the embedded cluster, loopback
  nodes): there is one kernel clock for every node and for the harness, so it must never be set.
  The reference server is started with Debian's libfaketime preloaded and a timestamp file of
  its own (`<node dir>/faketime`, holding an offset such as `+90.5s`), read on every clock call
  (FAKETIME_NO_CACHE) so a change applies at once; monotonic time is left alone
  (FAKETIME_DONT_FAKE_MONOTONIC), so timeouts, elections and lease timers keep running on real
  time and only the wall clock lies, as with a real clock step. Real etcd is a Go binary: Go
  reads the clock through the vDSO and raw syscalls, which a preload cannot intercept, so there
  the fault is refused (permanently, with that reason).
- `settime`, on nodes with a kernel of their own (VMs): time sync daemons are stopped (and
  started again at heal), the clock is stepped with `date -s`, and the node's total offset is
  kept in `<node dir>/clock-offset` so a reset undoes exactly what was done.

Evidence is measured, not assumed: the node's wall clock as a process under the same preload
sees it (a `date` run with the node's timestamp file, bracketed by two real readings), or on a VM
the node's clock against the harness's; for the reference server also the Date header of its own
HTTP gateway, which comes from the server process's idea of the time (whole seconds).
"""
from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass

from harness.inventory import Node
from harness.remote import Remote, RemoteError
from nemesis.base import FaultRefused, NemesisContext, choose_targets
from nemesis.nodes import on_nodes, q, shares_kernel

MODES = ("bump", "strobe")
TARGETS = ("one", "minority", "majority", "all")
LIBFAKETIME = "/usr/lib/*/faketime/libfaketime.so.1"
SYNC_SERVICES = ("systemd-timesyncd", "chrony", "chronyd", "ntp", "ntpsec", "openntpd")
GO_REFUSAL = ("clock faults need libfaketime on nodes that share this machine's kernel clock, and real etcd "
              "is a Go binary that reads the clock through the vDSO and raw syscalls, which libfaketime cannot "
              "intercept (the shared clock itself must not be changed)")


class ClockError(Exception):
    """A clock change could not be applied or measured; one line naming the node."""


@dataclass
class NodeClock:
    """How one node's clock is moved: method 'faketime' (lib, timestamp file) or 'settime'."""

    method: str
    node_dir: str
    lib: str = ""

    @property
    def file(self) -> str:
        return f"{self.node_dir}/faketime"

    @property
    def offset_file(self) -> str:
        return f"{self.node_dir}/clock-offset"

    @property
    def strobe_pid(self) -> str:
        return f"{self.node_dir}/clock-strobe.pid"

    def env(self) -> dict[str, str]:
        return {"LD_PRELOAD": self.lib, "FAKETIME_TIMESTAMP_FILE": self.file, "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def probe(self) -> str:
        """faketime: shell printing a real, a faked and a real reading in ns (for offset_from)."""
        env = " ".join(f"{k}={q(v)}" for k, v in self.env().items())
        return f"a=$(date +%s%N); b=$(env {env} date +%s%N); c=$(date +%s%N); echo $a $b $c"

    def write(self, spec: str) -> str:
        """faketime: shell replacing the timestamp file's text (written beside, then renamed: a
        reader never sees half a file)."""
        return f"printf '%s\\n' {q(spec)} > {q(self.file + '.tmp')} && mv -f {q(self.file + '.tmp')} {q(self.file)}"


# ---------------------------------------------------------------- pure parts
def faketime_spec(offset: float) -> str:
    """The timestamp file's text for an offset in seconds: '+90.250s', '-3.000s', '+0'."""
    if abs(offset) < 5e-4:
        return "+0"
    return f"{offset:+.3f}s"


def draw_bump(rng, max_bump: float, min_bump: float = 0.25) -> float:
    """A jump of min..max seconds, log-uniform (small and large ones alike), either direction."""
    mag = math.exp(rng.uniform(math.log(min_bump), math.log(max_bump)))
    return round(mag if rng.random() < 0.5 else -mag, 3)


def offset_from(readings: str) -> dict:
    """'a b c' (real ns, faked ns, real ns) -> offset of the faked reading from the midpoint, and
    the half-width of the bracket as its error, in seconds."""
    a, b, c = (int(x) for x in readings.split()[:3])
    return {"offset": round((b - (a + c) / 2) / 1e9, 4), "error": round((c - a) / 2e9, 4)}


def strobe_script(clock: NodeClock, delta: float, period: float, setter: str = "date -s") -> str:
    """A loop flipping the node's clock by +delta and back every period seconds.

    faketime: it rewrites the timestamp file (NodeClock.write). settime: it steps the clock with
    `setter` and keeps the offset file right, so a reset after the loop is killed undoes exactly
    what is left (`setter` is replaceable for tests).
    """
    if clock.method == "faketime":
        return (f"while :; do {clock.write(faketime_spec(delta))}; sleep {period}; "
                f"{clock.write(faketime_spec(0))}; sleep {period}; done")
    return (f"while :; do {step_script(clock, delta, setter)}; sleep {period}; "
            f"{step_script(clock, -delta, setter)}; sleep {period}; done")


def step_script(clock: NodeClock, delta: float, setter: str = "date -s") -> str:
    """settime: step the node's clock by delta seconds and add delta to its recorded offset."""
    of = q(clock.offset_file)
    return (f"o=$(cat {of} 2>/dev/null || echo 0); "
            f"awk -v o=\"$o\" -v d={delta} 'BEGIN{{printf \"%.6f\\n\", o + d}}' > {of}.tmp && mv -f {of}.tmp {of}; "
            f"t=$(date +%s.%N); {setter} \"@$(awk -v t=\"$t\" -v d={delta} 'BEGIN{{printf \"%.6f\", t + d}}')\" >/dev/null")


def reset_script(clock: NodeClock, setter: str = "date -s") -> str:
    """settime: undo the recorded offset (if any) and record zero."""
    of = q(clock.offset_file)
    return (f"o=$(cat {of} 2>/dev/null || echo 0); "
            f"if [ \"$(awk -v o=\"$o\" 'BEGIN{{print (o != 0)}}')\" = 1 ]; then "
            f"t=$(date +%s.%N); {setter} \"@$(awk -v t=\"$t\" -v o=\"$o\" 'BEGIN{{printf \"%.6f\", t - o}}')\" >/dev/null; fi; "
            f"echo 0 > {of}")


# ---------------------------------------------------------------- the fault
class ClockNemesis:
    """`--nemesis clock`: bump or strobe the wall clocks of one, a minority, a majority or all
    nodes; stop and heal reset every clock this class moved."""

    name = "clock"

    def __init__(self, modes: tuple[str, ...] = MODES, max_bump: float = 240.0,
                 strobe_delta: tuple[float, float] = (0.05, 20.0), strobe_period: tuple[float, float] = (0.01, 0.2)) -> None:
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown clock mode {sorted(unknown)[0]!r}: {', '.join(MODES)}")
        self.modes = modes
        self.max_bump = max_bump
        self.strobe_delta = strobe_delta
        self.strobe_period = strobe_period
        self.clocks: dict[str, NodeClock] = {}
        self.refusal = ""
        self.permanent = False
        self.touched: list[Node] = []
        self._hooked = None

    # ------------------------------------------------------------ prepare
    def prepare(self, ctx: NemesisContext) -> None:
        """Decide per node how its clock moves; for libfaketime, start the servers under it."""
        self.clocks, self.refusal, self.permanent = {}, "", False
        shared = {n.name: shares_kernel(ctx.remotes[n.name]) for n in ctx.nodes}
        if any(shared.values()) and ctx.db.kind != "reference":
            self.refusal, self.permanent = GO_REFUSAL if ctx.db.kind == "etcd" else (
                f"clock faults on nodes sharing this kernel need libfaketime, which works for the reference server, "
                f"not for {ctx.db.kind}"), True
            return

        def setup_node(n: Node) -> NodeClock:
            r = ctx.remotes[n.name]
            node_dir = ctx.db.node_dir(n)
            if not shared[n.name]:
                return NodeClock("settime", node_dir)
            lib = r.run(f"ls {LIBFAKETIME} 2>/dev/null | head -n 1", timeout=10, check=False).out.strip()
            if not lib:
                raise ValueError(f"{n.name}: no libfaketime ({LIBFAKETIME}; Debian package libfaketime)")
            c = NodeClock("faketime", node_dir, lib)
            r.run(f"mkdir -p {q(node_dir)} && printf '+0\\n' > {q(c.file)}", timeout=10)
            return c

        clocks, errors = on_nodes(ctx.nodes, setup_node)
        if errors:
            self.refusal, self.permanent = "; ".join(errors.values()), True
            return
        self.clocks = clocks
        if any(c.method == "faketime" for c in clocks.values()):
            self._hooked = self._start_env
            ctx.db.start_hooks.append(self._hooked)

    def _start_env(self, n: Node) -> dict[str, str] | None:
        c = self.clocks.get(n.name)
        return c.env() if c is not None and c.method == "faketime" else None

    def setup(self, ctx: NemesisContext) -> None:
        self.touched = []

    # ------------------------------------------------------------ measuring
    def measure(self, ctx: NemesisContext, n: Node) -> dict:
        """The node's wall clock offset as its server sees it (seconds, with the error bound)."""
        c = self.clocks[n.name]
        r = ctx.remotes[n.name]
        if c.method == "faketime":
            return offset_from(r.run(c.probe(), timeout=10).out)
        before = time.time_ns()
        out = r.run("date +%s%N", timeout=10).out
        after = time.time_ns()
        return offset_from(f"{before} {out.strip()} {after}")

    def sample(self, ctx: NemesisContext, n: Node, count: int, gap: float) -> list[float]:
        """count readings of the node's clock offset, gap seconds apart, in one round trip.

        faketime: a preloaded `date` bracketed by real ones. settime: the wall clock less the boot
        clock (/proc/uptime, which no clock step moves), so only differences between samples mean
        anything there.
        """
        c = self.clocks[n.name]
        if c.method == "faketime":
            one = c.probe()
        else:
            one = "b=$(date +%s%N); u=$(cut -d' ' -f1 /proc/uptime); echo $u $b"
        out = ctx.remotes[n.name].run(f"for i in $(seq {count}); do {one}; sleep {gap}; done",
                                      timeout=20 + count * gap).out.splitlines()
        if c.method == "faketime":
            return [offset_from(x)["offset"] for x in out if x.strip()]
        return [round(int(b) / 1e9 - float(u), 3) for u, b in (x.split() for x in out if x.strip())]

    def server_offset(self, ctx: NemesisContext, n: Node) -> int | None:
        """Whole seconds between the Date header of the reference server's gateway (the server's own
        clock) and the node's real clock; None where there is no such gateway."""
        if ctx.db.kind != "reference":
            return None
        url = f"http://{n.ip}:{ctx.db.cfg.http_port}/health"
        r = ctx.remotes[n.name].run(f"date +%s; curl -s -o /dev/null -D - --max-time 2 {q(url)} | tr -d '\\r' | "
                                    f"sed -n 's/^[Dd]ate: //p'", timeout=10, check=False)
        lines = r.out.splitlines()
        if len(lines) < 2:
            return None
        try:
            seen = email.utils.parsedate_to_datetime(lines[1]).timestamp()
        except (TypeError, ValueError):
            return None
        return round(seen - int(lines[0]))

    # ------------------------------------------------------------ start/stop
    def _refuse_if_needed(self, ctx: NemesisContext) -> None:
        if self.refusal:
            raise FaultRefused(self.refusal, permanent=self.permanent)
        if not self.clocks:
            raise FaultRefused("clock faults need prepare() before the servers start", permanent=True)

    def start(self, ctx: NemesisContext) -> dict:
        self._refuse_if_needed(ctx)
        mode = ctx.rng.choice(self.modes)
        targets = choose_targets(ctx, ctx.rng.choice(TARGETS))
        self.touched = list(targets)
        if mode == "bump":
            return self.bump(ctx, {n.name: draw_bump(ctx.rng, self.max_bump) for n in targets})
        lo, hi = self.strobe_delta
        delta = round(math.exp(ctx.rng.uniform(math.log(lo), math.log(hi))), 3)
        period = round(ctx.rng.uniform(*self.strobe_period), 3)
        return self.strobe(ctx, [n.name for n in targets], delta, period)

    def bump(self, ctx: NemesisContext, asked: dict[str, float]) -> dict:
        """Jump each named node's clock by its offset (seconds); measured back."""
        nodes = [ctx.node(x) for x in asked]
        self.touched = list({n.name: n for n in [*self.touched, *nodes]}.values())

        def one(n: Node) -> dict:
            c, r = self.clocks[n.name], ctx.remotes[n.name]
            if c.method == "faketime":
                r.run(c.write(faketime_spec(asked[n.name])), timeout=10)
            else:
                base = self.measure(ctx, n)["offset"]
                self._stop_sync(r, c)
                r.run(step_script(c, asked[n.name]), timeout=20)
                m = self.measure(ctx, n)
                return {**m, "offset": round(m["offset"] - base, 4), "baseline": base}
            return self.measure(ctx, n)

        measured, errors = on_nodes(nodes, one)
        if errors:
            raise ClockError("clock bump failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        off = {k: v for k, v in measured.items() if abs(v["offset"] - asked[k]) > max(1.0, 4 * v["error"])}
        if off:
            raise ClockError("clock bump not seen: " + "; ".join(f"{k} asked {asked[k]:+.3f}s, measured {v['offset']:+.3f}s"
                                                                  for k, v in off.items()))
        server = {n.name: self.server_offset(ctx, n) for n in nodes}
        return {"mode": "bump", "method": self._methods(nodes), "nodes": sorted(asked), "asked": asked,
                "measured": measured, "server_offset": {k: v for k, v in server.items() if v is not None}}

    def strobe(self, ctx: NemesisContext, names: list[str], delta: float, period: float) -> dict:
        """Flip the named nodes' clocks by +delta and back every period seconds until reset;
        evidence: the offsets a process on the node saw over a few periods, both sides of the flip
        among them (ClockError if a node's were not)."""
        nodes = [ctx.node(x) for x in names]
        self.touched = list({n.name: n for n in [*self.touched, *nodes]}.values())

        def one(n: Node) -> dict:
            c, r = self.clocks[n.name], ctx.remotes[n.name]
            if c.method == "settime":
                self._stop_sync(r, c)
            base = self.sample(ctx, n, 1, 0)[0] if c.method == "settime" else 0.0
            pid = r.start_daemon(["sh", "-c", strobe_script(c, delta, period)], logfile=f"{c.node_dir}/clock-strobe.log",
                                 pidfile=c.strobe_pid)
            offsets = [round(x - base, 3) for x in self.sample(ctx, n, 16, period / 2)]
            return {"pid": pid, "samples": offsets,
                    "flipped": any(abs(x) < 0.5 * delta for x in offsets) and any(abs(x - delta) < 0.5 * delta for x in offsets)}

        got, errors = on_nodes(nodes, one)
        if errors:
            raise ClockError("clock strobe failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        unseen = [k for k, v in got.items() if not v["flipped"]]
        if unseen:
            raise ClockError(f"clock strobe of {delta:g}s not seen: " + "; ".join(f"{k} measured {got[k]['samples']}"
                                                                               for k in unseen))
        return {"mode": "strobe", "method": self._methods(nodes), "nodes": sorted(names), "delta": delta,
                "period": period, "strobes": got}

    def _methods(self, nodes: list[Node]) -> str:
        return "+".join(sorted({self.clocks[n.name].method for n in nodes}))

    def _stop_sync(self, r: Remote, c: NodeClock) -> None:
        """settime: stop the time sync daemons that run, remembering them for the heal."""
        names = " ".join(SYNC_SERVICES)
        r.run(f"f={q(c.node_dir + '/clock-timesync')}; for s in {names}; do "
              f"systemctl is-active --quiet $s 2>/dev/null && systemctl stop $s && echo $s >> $f; done; true", timeout=60)

    def reset(self, ctx: NemesisContext, nodes: list[Node]) -> dict:
        """Every given node's clock back to real time (strobes killed first); measured back."""

        def one(n: Node) -> dict:
            c, r = self.clocks[n.name], ctx.remotes[n.name]
            r.signal_daemon(c.strobe_pid, 9)
            for _ in range(50):
                if r.daemon_pid(c.strobe_pid) is None:
                    break
                time.sleep(0.02)
            if c.method == "faketime":
                r.run(c.write(faketime_spec(0)), timeout=10)
            else:
                r.run(reset_script(c), timeout=20)
                r.run(f"f={q(c.node_dir + '/clock-timesync')}; [ -f $f ] && {{ sort -u $f | while read s; do "
                      f"systemctl start $s; done; rm -f $f; }}; true", timeout=60)
            return self.measure(ctx, n)

        measured, errors = on_nodes([n for n in nodes if n.name in self.clocks], one)
        if errors:
            raise ClockError("clock reset failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        # faketime offsets are against the real clock, so back means ~0; a settime node's clock
        # is compared with the control node's, which it need not have matched before the fault
        off = {k: v for k, v in measured.items()
               if self.clocks[k].method == "faketime" and abs(v["offset"]) > max(1.0, 4 * v["error"])}
        if off:
            raise ClockError("clock reset not seen: " + "; ".join(f"{k} still {v['offset']:+.3f}s" for k, v in off.items()))
        return {"nodes": sorted(measured), "measured": measured}

    def stop(self, ctx: NemesisContext) -> dict:
        nodes, self.touched = self.touched, []
        return self.reset(ctx, nodes)

    def heal(self, ctx: NemesisContext) -> dict:
        self.touched = []
        if not self.clocks:
            return {"nodes": [], "skipped": self.refusal or "no clock was prepared"}
        return self.reset(ctx, list(ctx.nodes))

    def teardown(self, ctx: NemesisContext) -> None:
        """After the servers stopped: no more preload at start; the timestamp files go."""
        if self._hooked in ctx.db.start_hooks:
            ctx.db.start_hooks.remove(self._hooked)
        self._hooked = None
        for n in ctx.nodes:
            c = self.clocks.get(n.name)
            if c is not None and c.method == "faketime":
                try:
                    ctx.remotes[n.name].signal_daemon(c.strobe_pid, 9)
                    ctx.remotes[n.name].run(f"rm -f {q(c.file)} {q(c.file + '.tmp')}", timeout=10, check=False)
                except RemoteError:
                    pass
