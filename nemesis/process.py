"""Process faults: kill (SIGKILL, then restart) and pause (SIGSTOP, then SIGCONT).

Evidence is read back from the node, not assumed: the pid signalled and, after a kill, that the
pidfile no longer names that process; after a pause, that the kernel reports the process stopped
(state T in /proc/<pid>/stat); after a restart or resume, the new pid or the running state. A
start whose evidence says otherwise fails (ProcessFaultError), so it is recorded as info and
healed; a server that vanished before its SIGSTOP took (another lane killed it) is skipped.
"""
from __future__ import annotations

import signal
import time

from harness.inventory import Node
from nemesis.base import FaultRefused, NemesisContext, choose_targets

MODES = ("one", "minority", "leader", "all")


class ProcessFaultError(Exception):
    """A signal was sent but the node's own evidence says it did not take; names the nodes.
    Raised after every target was tried, so the schedule records the start as info and heals."""


def proc_state(ctx: NemesisContext, n: Node, pid: int) -> str:
    """The one-letter kernel state of pid on n (R, S, D, T, Z...), or '' if it is gone."""
    r = ctx.remotes[n.name].run(f"cat /proc/{pid}/stat 2>/dev/null", timeout=10, check=False)
    fields = r.out.rsplit(")", 1)
    return fields[1].split()[0] if r.ok and len(fields) == 2 and fields[1].split() else ""


def restart_down(ctx: NemesisContext, nodes: list[Node]) -> dict:
    """Start the server of each of nodes that is down and still a member; evidence: the new pids.
    (A removed node is nemesis/member.py's to bring back.)"""
    started = {}
    for n in nodes:
        with ctx.node_lock(n.name):  # the member fault may be removing or adding it meanwhile
            if n.name in ctx.removed() or ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n)) is not None:
                continue
            started[n.name] = {"pid": ctx.db.start(n)}
    return {"nodes": sorted(started), "started": started}


class _ProcessFault:
    name = "process"

    def __init__(self, modes: tuple[str, ...] = MODES) -> None:
        self.modes = modes
        self.affected: list[Node] = []

    def setup(self, ctx: NemesisContext) -> None:
        self.affected = []

    def _targets(self, ctx: NemesisContext) -> tuple[str, list[Node]]:
        mode = ctx.rng.choice(self.modes)
        return mode, choose_targets(ctx, mode)


class KillNemesis(_ProcessFault):
    """SIGKILL the targets' servers (a crash: nothing flushed); stop restarts them."""

    name = "kill"

    def start(self, ctx: NemesisContext) -> dict:
        mode, targets = self._targets(ctx)
        killed = {}
        for n in targets:
            pid = ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n))
            if pid is None:
                continue  # already down (killed by an earlier fault, or crashed on its own)
            ctx.db.kill(n)
            # gone: the pidfile no longer names that process (empty, or a server another fault
            # class restarted meanwhile: lanes run side by side)
            gone = ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n)) != pid
            killed[n.name] = {"pid": pid, "gone": gone}
            self.affected.append(n)
        if not killed:
            raise FaultRefused(f"no running server among {', '.join(n.name for n in targets)}")
        alive = sorted(k for k, v in killed.items() if not v["gone"])
        if alive:
            raise ProcessFaultError(f"SIGKILL sent but the server still holds its pidfile on {', '.join(alive)}: {killed}")
        return {"mode": mode, "signal": "SIGKILL", "nodes": sorted(killed), "killed": killed}

    def stop(self, ctx: NemesisContext) -> dict:
        return self._restart(ctx, self.affected)

    def heal(self, ctx: NemesisContext) -> dict:
        """Restart every member whose server is not running (whoever stopped it)."""
        return self._restart(ctx, ctx.members())

    def _restart(self, ctx: NemesisContext, nodes: list[Node]) -> dict:
        out = restart_down(ctx, nodes)
        self.affected = []
        return out


class PauseNemesis(_ProcessFault):
    """SIGSTOP the targets' servers (a GC pause, a frozen VM); stop sends SIGCONT."""

    name = "pause"

    def start(self, ctx: NemesisContext) -> dict:
        mode, targets = self._targets(ctx)
        paused = {}
        for n in targets:
            pid = ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n))
            if pid is None:
                continue
            ctx.db.pause(n)
            state = ""
            for _ in range(20):  # SIGSTOP is asynchronous; the state flips within milliseconds
                state = proc_state(ctx, n, pid)
                if state == "T":
                    break
                time.sleep(0.05)
            if state == "":
                continue  # gone meanwhile (another lane's kill or crash): nothing here to pause
            paused[n.name] = {"pid": pid, "state": state}
            self.affected.append(n)
        if not paused:
            raise FaultRefused(f"no running server among {', '.join(n.name for n in targets)}")
        running = sorted(k for k, v in paused.items() if v["state"] != "T")
        if running:
            raise ProcessFaultError(f"SIGSTOP sent but the kernel does not show stopped on {', '.join(running)}: {paused}")
        return {"mode": mode, "signal": "SIGSTOP", "nodes": sorted(paused), "paused": paused}

    def stop(self, ctx: NemesisContext) -> dict:
        nodes, self.affected = self.affected, []
        return self._resume(ctx, nodes)

    def heal(self, ctx: NemesisContext) -> dict:
        self.affected = []
        return self._resume(ctx, ctx.nodes)

    def _resume(self, ctx: NemesisContext, nodes: list[Node]) -> dict:
        resumed = {}
        for n in nodes:
            pid = ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n))
            if pid is None:
                continue
            was = proc_state(ctx, n, pid)
            ctx.remotes[n.name].signal_daemon(ctx.db.pid_file(n), signal.SIGCONT)
            if was == "T":
                resumed[n.name] = {"pid": pid, "state": proc_state(ctx, n, pid)}
        return {"nodes": sorted(resumed), "resumed": resumed}
