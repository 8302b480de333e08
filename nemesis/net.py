"""Network faults on peer traffic: delay, loss and rate limits, and their combinations.

Only the members' peer traffic leaving a target node is touched (TCP to or from the peer port,
to the other nodes' addresses), so clients, SSH and anything else on the node are left alone.
Delaying a node's outgoing packets by D adds D to every round trip between it and its peers (a
request one way or an acknowledgement the other).

- rate: `tc` on the node's interface: a root htb of ours (handle e7d0:) whose default class
  carries everything else unshaped and whose class e7d0:2 holds peer traffic (u32 filters on the
  peer port, both directions) to the asked rate.
- delay, loss: netem under class e7d0:2 where the kernel has it (VMs, typically). Where it does
  not (this kernel has no sch_netem), the delayer (nemesis/delayer.py, from the node tools venv)
  takes the same packets from an NFQUEUE queue (iptables `mangle` OUTPUT, a chain of ours,
  `--queue-bypass` so packets pass if it is not running) and holds each for the delay (order
  kept), dropping the asked fraction.

Evidence: the method, the rules and qdiscs read back, and the round-trip time measured from the
target node to each peer's peer port (a TCP handshake, or the refusal of one, takes one round
trip), before, during and after; at stop also the shaped class's counters or the delayer's
(packets seen, held, dropped). Undoing removes our qdisc and chain, then stops the delayer (which
first lets every held packet go).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass

from harness.inventory import Node
from harness.remote import Remote
from nemesis.base import FaultRefused, NemesisContext, choose_targets
from nemesis.nodes import iface_of, on_nodes, q
from nemesis.tools import ToolsError, install

HANDLE = "e7d0"
CHAIN = "etcdproof-net"
MODES = ("delay", "loss", "rate", "delay+rate")
TARGETS = ("one", "minority", "all")
NO_NETEM = "this kernel has no netem qdisc (sch_netem)"


class NetError(Exception):
    """A network fault could not be applied or undone; one line naming the node."""


@dataclass
class Shape:
    """What to do to a node's outgoing peer traffic."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0  # fraction 0..1
    rate_kbit: int = 0  # 0: no rate limit

    def describe(self) -> str:
        parts = []
        if self.delay_ms:
            parts.append(f"delay {self.delay_ms:g}ms" + (f" ±{self.jitter_ms:g}ms" if self.jitter_ms else ""))
        if self.loss:
            parts.append(f"loss {self.loss * 100:g}%")
        if self.rate_kbit:
            parts.append(f"rate {self.rate_kbit}kbit")
        return ", ".join(parts) or "nothing"


# ---------------------------------------------------------------- pure parts
def tc_script(dev: str, ports: list[int], shape: Shape, netem: bool) -> str:
    """The tc commands for shape on dev (root htb of ours, peer traffic in class :2)."""
    rate = f"{shape.rate_kbit}kbit" if shape.rate_kbit else "10gbit"
    burst = max(1600, shape.rate_kbit * 1000 // 8 // 100) if shape.rate_kbit else 1_000_000  # ~10 ms of traffic
    lines = [f"tc qdisc replace dev {dev} root handle {HANDLE}: htb default 1",
             f"tc class replace dev {dev} parent {HANDLE}: classid {HANDLE}:1 htb rate 10gbit",
             f"tc class replace dev {dev} parent {HANDLE}: classid {HANDLE}:2 htb rate {rate} ceil {rate} burst {burst}"]
    for i, port in enumerate(ports):
        for j, field in enumerate(("dport", "sport")):
            lines.append(f"tc filter add dev {dev} parent {HANDLE}: protocol ip prio {1 + 2 * i + j} u32 "
                         f"match ip {field} {port} 0xffff flowid {HANDLE}:2")
    if netem and (shape.delay_ms or shape.loss):
        em = []
        if shape.delay_ms:
            em.append(f"delay {shape.delay_ms:g}ms" + (f" {shape.jitter_ms:g}ms" if shape.jitter_ms else ""))
        if shape.loss:
            em.append(f"loss {shape.loss * 100:g}%")
        lines.append(f"tc qdisc replace dev {dev} parent {HANDLE}:2 handle {int(HANDLE, 16) + 1:x}: netem {' '.join(em)} limit 100000")
    return " && ".join(lines)


def nfqueue_rules(peers: list[str], ports: list[int], queue: int) -> list[str]:
    """iptables -t mangle rules (chain CHAIN) sending outgoing peer traffic to queue."""
    out = []
    for ip in peers:
        for port in ports:
            for field in ("dport", "sport"):
                out.append(f"-A {CHAIN} -d {ip}/32 -p tcp -m tcp --{field} {port} -m comment --comment {CHAIN} "
                           f"-j NFQUEUE --queue-num {queue} --queue-bypass")
    return out


def queue_number(node_dir: str) -> int:
    """The NFQUEUE number for a node's delayer: fixed per node directory (namespaces have their own)."""
    return 1000 + int(hashlib.sha1(node_dir.encode()).hexdigest()[:6], 16) % 60000


def draw_shape(rng, mode: str) -> Shape:
    s = Shape()
    if "delay" in mode:
        s.delay_ms = round(math.exp(rng.uniform(math.log(20), math.log(300))))
        s.jitter_ms = round(s.delay_ms * rng.choice((0, 0.1, 0.25)))
    if mode == "loss":
        s.loss = rng.choice((0.01, 0.05, 0.1, 0.2))
    if "rate" in mode:
        s.rate_kbit = rng.choice((256, 1024, 8192))
    return s


RTT_PROBE = """
import socket, sys, time
out = []
for addr in sys.argv[1:]:
    host, port = addr.rsplit(":", 1)
    best = None
    for _ in range(3):
        s = socket.socket(); s.settimeout(5)
        t = time.monotonic()
        try:
            s.connect((host, int(port)))
        except ConnectionRefusedError:
            pass
        except OSError:
            continue
        finally:
            s.close()
        d = (time.monotonic() - t) * 1000
        best = d if best is None else min(best, d)
    out.append(f"{addr} {best if best is not None else -1:.3f}")
print("\\n".join(out))
"""


def rtt(r: Remote, addrs: list[str]) -> dict[str, float | None]:
    """Best of three TCP handshake times (ms) from the node to each host:port; None if none answered."""
    if not addrs:
        return {}
    out = r.run(f"python3 -c {q(RTT_PROBE)} {' '.join(q(a) for a in addrs)}", timeout=60).out
    got = {}
    for line in out.splitlines():
        a, ms = line.split()
        got[a] = None if float(ms) < 0 else round(float(ms), 2)
    return got


# ---------------------------------------------------------------- the fault
@dataclass
class Applied:
    dev: str
    method: str  # "tc", "tc+netem", "nfqueue", "tc+nfqueue"
    peers: list[str]
    queue: int = 0
    delayer_pid: str = ""  # its pidfile
    status: str = ""


class NetNemesis:
    """`--nemesis net`: delay, loss, a rate limit, or delay and rate, on the peer traffic of one node,
    a minority or all; stop and heal remove it."""

    name = "net"

    def __init__(self, modes: tuple[str, ...] = MODES, delay_by: str = "auto") -> None:
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown net mode {sorted(unknown)[0]!r}: {', '.join(MODES)}")
        if delay_by not in ("auto", "netem", "nfqueue"):
            raise ValueError(f"delay_by must be auto, netem or nfqueue, not {delay_by!r}")
        self.modes = modes
        self.delay_by = delay_by  # auto: netem where the kernel has it, else the NFQUEUE delayer
        self.applied: dict[str, Applied] = {}
        self.netem: dict[str, bool] = {}

    def setup(self, ctx: NemesisContext) -> None:
        self.applied = {}

    def _files(self, ctx: NemesisContext, n: Node) -> tuple[str, str, str]:
        d = ctx.db.node_dir(n)
        return f"{d}/net-delayer.pid", f"{d}/net-delayer.json", f"{d}/net-delayer.log"

    def has_netem(self, r: Remote, dev: str) -> bool:
        """Whether the node's kernel has netem: tried under a throwaway class of our own root qdisc."""
        script = (f"tc qdisc replace dev {dev} root handle {HANDLE}: htb default 1 && "
                  f"tc class replace dev {dev} parent {HANDLE}: classid {HANDLE}:9 htb rate 10gbit && "
                  f"tc qdisc add dev {dev} parent {HANDLE}:9 handle {int(HANDLE, 16) + 9:x}: netem delay 1ms 2>&1; "
                  f"s=$?; tc qdisc del dev {dev} root 2>/dev/null; exit $s")
        return r.run(script, timeout=20, check=False).ok

    def start(self, ctx: NemesisContext) -> dict:
        if not ctx.can_partition:
            raise FaultRefused(f"network faults need nodes with their own network stack: {ctx.why_not_partition}",
                               permanent=True)
        mode = ctx.rng.choice(self.modes)
        targets = choose_targets(ctx, ctx.rng.choice(TARGETS))
        return self.apply(ctx, targets, draw_shape(ctx.rng, mode))

    def apply(self, ctx: NemesisContext, targets: list[Node], shape: Shape, ports: list[int] | None = None) -> dict:
        """Shape the targets' outgoing peer traffic (ports: the peer port unless given)."""
        ports = ports or [ctx.db.cfg.peer_port]

        def one(n: Node) -> dict:
            r = ctx.remotes[n.name]
            dev = iface_of(r, n.ip)
            peers = [p.ip for p in ctx.nodes if p.name != n.name]
            addrs = [f"{ip}:{ports[0]}" for ip in peers]
            before = rtt(r, addrs)
            if n.name not in self.netem:
                self.netem[n.name] = self.has_netem(r, dev)
            netem = self.netem[n.name] and self.delay_by != "nfqueue"
            if self.delay_by == "netem" and not netem and (shape.delay_ms or shape.loss):
                raise FaultRefused(f"{n.name}: {NO_NETEM}; delay and loss need netem here (delay_by=netem)", permanent=True)
            need_queue = bool(shape.delay_ms or shape.loss) and not netem
            method = "+".join(x for x, on in (("tc", bool(shape.rate_kbit) or netem), ("netem", netem and bool(shape.delay_ms or shape.loss)),
                                                ("nfqueue", need_queue)) if on)
            a = Applied(dev, method, peers)
            self.applied[n.name] = a
            ev: dict = {"device": dev, "method": method, "rtt_ms_before": before}
            if shape.rate_kbit or (netem and (shape.delay_ms or shape.loss)):
                r.run(tc_script(dev, ports, shape, netem), timeout=30)
                ev["tc"] = read_tc(r, dev)
                ours = [x for x in ev["tc"]["qdisc"] if f"{HANDLE}:" in x]
                if not ours or (netem and (shape.delay_ms or shape.loss) and not any("netem" in x for x in ours)):
                    raise NetError(f"{n.name}: tc ran but {dev} shows no qdisc of ours"
                                   f"{' with netem' if netem else ''}: {ev['tc']['qdisc']}")
            if need_queue:
                ev.update(self._start_delayer(ctx, n, r, a, shape, ports))
            ev["rtt_ms_during"] = rtt(r, addrs)
            return ev

        refused: list[FaultRefused] = []

        def guarded(n: Node) -> dict:
            try:
                return one(n)
            except FaultRefused as e:
                refused.append(e)
                return {}

        done, errors = on_nodes(targets, guarded)
        if refused:
            self.heal(ctx)
            raise refused[0]
        if errors:
            raise NetError("net fault failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        return {"shape": shape.describe(), "delay_ms": shape.delay_ms, "jitter_ms": shape.jitter_ms, "loss": shape.loss,
                "rate_kbit": shape.rate_kbit, "ports": ports, "nodes": sorted(done), "applied": done,
                "netem": {k: v for k, v in sorted(self.netem.items()) if k in done}}

    def _start_delayer(self, ctx: NemesisContext, n: Node, r: Remote, a: Applied, shape: Shape, ports: list[int]) -> dict:
        try:
            tools = install(r, ctx.db.cfg.base_dir)
        except ToolsError as e:
            raise FaultRefused(f"{NO_NETEM}, and the NFQUEUE delayer cannot run: {e}") from None
        pidfile, status, log = self._files(ctx, n)
        a.queue, a.delayer_pid, a.status = queue_number(ctx.db.node_dir(n)), pidfile, status
        r.signal_daemon(pidfile, 9)
        r.run(f"rm -f {q(status)}", timeout=10)
        argv = [*tools.program("delayer.py"), "--queue", str(a.queue), "--delay-ms", f"{shape.delay_ms:g}",
                "--jitter-ms", f"{shape.jitter_ms:g}", "--loss", f"{shape.loss:g}", "--status", status]
        pid = r.start_daemon(argv, logfile=log, pidfile=pidfile)
        for _ in range(100):
            if r.run(f"test -s {q(status)}", timeout=10, check=False).ok:
                break
            if r.daemon_pid(pidfile) is None:
                raise NetError(f"{n.name}: the delayer exited: {r.run(f'tail -n 3 {q(log)}', timeout=10, check=False).out.strip()}")
            time.sleep(0.05)
        rules = nfqueue_rules(a.peers, ports, a.queue)
        script = "; ".join([f"iptables -w -t mangle -N {CHAIN} 2>/dev/null || iptables -w -t mangle -F {CHAIN}",
                            *(f"iptables -w -t mangle {x}" for x in rules),
                            f"iptables -w -t mangle -C OUTPUT -m comment --comment {CHAIN} -j {CHAIN} 2>/dev/null || "
                            f"iptables -w -t mangle -I OUTPUT 1 -m comment --comment {CHAIN} -j {CHAIN}"])
        r.run(script, timeout=30)
        seen = read_rules(r)
        if len([x for x in seen if "NFQUEUE" in x]) != len(rules):
            raise NetError(f"{n.name}: NFQUEUE rules read back {seen}, wanted {len(rules)}")
        return {"delayer": {"pid": pid, "queue": a.queue}, "rules": seen}

    def _undo(self, ctx: NemesisContext, n: Node, a: Applied | None) -> dict:
        r = ctx.remotes[n.name]
        dev = a.dev if a else iface_of(r, n.ip)
        ev: dict = {}
        tc = read_tc(r, dev)
        if any(f"{HANDLE}:" in x for x in tc["qdisc"]):
            ev["tc_stats"] = class_block(tc["class"], f"{HANDLE}:2")
        r.run(f"tc qdisc show dev {dev} | grep -q 'htb {HANDLE}: root' && tc qdisc del dev {dev} root; "
              f"while iptables -w -t mangle -D OUTPUT -m comment --comment {CHAIN} -j {CHAIN} 2>/dev/null; do :; done; "
              f"iptables -w -t mangle -F {CHAIN} 2>/dev/null; iptables -w -t mangle -X {CHAIN} 2>/dev/null; true", timeout=30)
        pidfile, status, _ = self._files(ctx, n)
        if r.daemon_pid(pidfile) is not None:
            r.signal_daemon(pidfile, 15)  # lets every held packet go, then exits
            for _ in range(100):
                if r.daemon_pid(pidfile) is None:
                    break
                time.sleep(0.05)
            r.signal_daemon(pidfile, 9)
            out = r.run(f"cat {q(status)} 2>/dev/null", timeout=10, check=False).out
            if out.strip():
                ev["delayer"] = json.loads(out)
        left = [x for x in read_tc(r, dev)["qdisc"] if f"{HANDLE}:" in x] + read_rules(r)
        if left:
            raise NetError(f"{n.name}: left after undo: {' | '.join(left)}")
        if a:
            ev["rtt_ms_after"] = rtt(r, [f"{ip}:{ctx.db.cfg.peer_port}" for ip in a.peers])
        return ev

    def stop(self, ctx: NemesisContext) -> dict:
        applied, self.applied = self.applied, {}
        done, errors = on_nodes([ctx.node(k) for k in applied], lambda n: self._undo(ctx, n, applied[n.name]))
        if errors:
            raise NetError("net undo failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        return {"nodes": sorted(done), "undone": done}

    def heal(self, ctx: NemesisContext) -> dict:
        if not ctx.can_partition:
            return {"nodes": [], "skipped": ctx.why_not_partition}
        applied, self.applied = self.applied, {}
        done, errors = on_nodes(ctx.nodes, lambda n: self._undo(ctx, n, applied.get(n.name)))
        if errors:
            raise NetError("net heal failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        return {"nodes": sorted(applied), "undone": done}


def read_tc(r: Remote, dev: str) -> dict[str, list[str]]:
    out = r.run(f"echo '# qdisc'; tc qdisc show dev {dev}; echo '# class'; tc -s class show dev {dev}; "
                f"echo '# filter'; tc filter show dev {dev}", timeout=20).out
    sections: dict[str, list[str]] = {"qdisc": [], "class": [], "filter": []}
    cur = "qdisc"
    for line in out.splitlines():
        if line.startswith("# "):
            cur = line[2:].strip()
        elif line.strip():
            sections[cur].append(line.strip())
    return sections


def class_block(lines: list[str], classid: str) -> list[str]:
    """The lines of `tc -s class show` about one class (its line and the counters after it)."""
    out: list[str] = []
    for line in lines:
        if line.startswith("class "):
            if out:
                break
            if f" {classid} " in line:
                out.append(line)
        elif out:
            out.append(line)
    return out


def read_rules(r: Remote) -> list[str]:
    """Our mangle rules on the node (iptables -S lines)."""
    out = r.run(f"iptables -w -t mangle -S OUTPUT | grep -F -- {CHAIN} || true; "
                f"iptables -w -t mangle -S {CHAIN} 2>/dev/null | grep -v '^-N' || true", timeout=20).out
    return [x for x in out.splitlines() if x.strip()]
