"""Lost unsynced writes: the data directory lives on lwfs (nemesis/lwfs.py), a FUSE filesystem that
keeps writes in memory until fsync; the fault kills servers and drops what they had not synced,
as a power cut does to a page cache, then restarts them.

prepare (before the servers first start) gives every node `<node dir>/lw/`:

    backing/       the real files (what has been fsynced)
    mnt/           the lwfs mount; the server's data dir is mnt/data (DB.data_dirs)
    control        a FIFO: `crash <id>`, `flush <id>`, `status <id>`
    status.json    lwfs's answers (dropped files and bytes per crash)
    lwfs.pid/.log  the daemon, run from the node tools venv (nemesis/tools.py: python3 + mfusepy)

and a DB start hook that (re)mounts lwfs before any server starts on it. start SIGKILLs the servers
of one, a minority, a majority or all nodes at once, confirms they are gone, then crashes each of
their filesystems and records what was dropped (files, pages, bytes); stop restarts them (also
what heal does for any member left down). teardown, with the servers stopped, unmounts (lwfs
flushes first, as a clean shutdown would) and removes the hook. Works the same for both targets:
the filesystem is below the process, Go binary or not. Refused where /dev/fuse, python3 or the
node tools are missing.
"""
from __future__ import annotations

import itertools
import json
import time

from harness.inventory import Node
from harness.remote import RemoteError
from nemesis.base import FaultRefused, NemesisContext, choose_targets
from nemesis.nodes import on_nodes, q
from nemesis.process import restart_down
from nemesis.tools import Tools, ToolsError, install

TARGETS = ("one", "minority", "majority", "all")


class LostWritesError(Exception):
    """lwfs could not be mounted, crashed or unmounted; one line naming the node."""


class Layout:
    def __init__(self, node_dir: str) -> None:
        self.dir = f"{node_dir}/lw"
        self.backing = f"{self.dir}/backing"
        self.mnt = f"{self.dir}/mnt"
        self.data = f"{self.mnt}/data"
        self.control = f"{self.dir}/control"
        self.status = f"{self.dir}/status.json"
        self.pidfile = f"{self.dir}/lwfs.pid"
        self.log = f"{self.dir}/lwfs.log"


def unmount_script(mnt: str) -> str:
    """Unmount mnt if anything is mounted there (lazily if busy); prints what is left mounted."""
    return (f"m={q(mnt)}; if findmnt -n $m >/dev/null 2>&1; then fusermount3 -u $m 2>/dev/null || "
            f"fusermount3 -uz $m 2>/dev/null || umount -l $m 2>/dev/null; fi; findmnt -n -o FSTYPE $m || true")


class LostWritesNemesis:
    """`--nemesis lost-writes`: crash (drop unsynced writes) + SIGKILL, then restart."""

    name = "lost-writes"

    def __init__(self, targets: tuple[str, ...] = TARGETS) -> None:
        self.targets = targets
        self.layouts: dict[str, Layout] = {}
        self.tools: dict[str, Tools] = {}
        self.refusal = ""
        self.affected: list[Node] = []
        self._ids = itertools.count(1)
        self._hooked = None
        self._remotes = None  # the start hook gets only the node

    # ------------------------------------------------------------ prepare
    def prepare(self, ctx: NemesisContext) -> None:
        self.layouts, self.tools, self.refusal = {}, {}, ""

        def check(n: Node) -> Tools:
            r = ctx.remotes[n.name]
            if r.run("test -c /dev/fuse", timeout=10, check=False).exit != 0:
                raise ValueError(f"{n.name}: no /dev/fuse (FUSE is needed for lost writes)")
            try:
                return install(r, ctx.db.cfg.base_dir)
            except ToolsError as e:
                raise ValueError(str(e)) from None

        tools, errors = on_nodes(ctx.nodes, check)
        if errors:
            self.refusal = "; ".join(errors.values())
            return
        self.tools = tools
        self._remotes = ctx.remotes
        for n in ctx.nodes:
            lay = Layout(ctx.db.node_dir(n))
            self.layouts[n.name] = lay
            r = ctx.remotes[n.name]
            r.signal_daemon(lay.pidfile, 15)
            left = r.run(unmount_script(lay.mnt), timeout=30).out.strip()
            if left:
                raise LostWritesError(f"{n.name}: a stale mount at {lay.mnt} ({left}) cannot be removed")
            r.run(f"rm -rf {q(lay.dir)}", timeout=60)  # a fresh run: nothing synced yet
            ctx.db.data_dirs[n.name] = lay.data
        ctx.extra["lost-writes"] = {k: {"pidfile": v.pidfile, "backing": v.backing} for k, v in self.layouts.items()}
        self._hooked = self.ensure_mounted
        ctx.db.start_hooks.append(self._hooked)

    def ensure_mounted(self, n: Node) -> None:
        """The start hook: lwfs serving the node's mount before its server starts."""
        lay = self.layouts.get(n.name)
        if lay is None or self._remotes is None:
            return None
        r = self._remotes[n.name]
        if r.daemon_pid(lay.pidfile) is not None and self._mounted(r, lay):
            return None
        r.run(unmount_script(lay.mnt), timeout=30)
        r.run(f"mkdir -p {q(lay.backing)} {q(lay.mnt)}; [ -p {q(lay.control)} ] || mkfifo {q(lay.control)}", timeout=20)
        argv = [*self.tools[n.name].program("lwfs.py"), lay.backing, lay.mnt, "--control", lay.control, "--status", lay.status]
        pid = r.start_daemon(argv, logfile=lay.log, pidfile=lay.pidfile)
        for _ in range(100):
            if self._mounted(r, lay):
                return None
            if r.daemon_pid(lay.pidfile) is None:
                break
            time.sleep(0.05)
        raise LostWritesError(f"{n.name}: lwfs (pid {pid}) did not mount {lay.mnt}: "
                              f"{r.run(f'tail -n 3 {q(lay.log)}', timeout=10, check=False).out.strip()[-300:]}")

    def _mounted(self, r, lay: Layout) -> bool:
        return r.run(f"findmnt -n -o FSTYPE {q(lay.mnt)}", timeout=10, check=False).out.strip().startswith("fuse")

    def setup(self, ctx: NemesisContext) -> None:
        self.affected = []

    # ------------------------------------------------------------ the fault
    def control(self, ctx: NemesisContext, n: Node, verb: str) -> dict:
        """Send verb to the node's lwfs and wait for its answer in the status file."""
        lay, r = self.layouts[n.name], ctx.remotes[n.name]
        ident = f"{verb}-{next(self._ids)}-{time.time_ns()}"
        out = r.run(f"echo {q(verb + ' ' + ident)} > {q(lay.control)} && for i in $(seq 200); do "
                    f"grep -q {q(ident)} {q(lay.status)} 2>/dev/null && {{ cat {q(lay.status)}; exit 0; }}; sleep 0.02; done; "
                    f"echo no answer >&2; exit 1", timeout=20).out
        return json.loads(out)

    def start(self, ctx: NemesisContext) -> dict:
        if self.refusal:
            raise FaultRefused(self.refusal, permanent=True)
        if not self.layouts:
            raise FaultRefused("lost writes need prepare() before the servers start", permanent=True)
        mode = ctx.rng.choice(self.targets)
        return self.crash(ctx, choose_targets(ctx, mode), mode)

    def crash(self, ctx: NemesisContext, targets: list[Node], mode: str = "") -> dict:
        """SIGKILL the targets' servers (all first), then drop each one's unsynced writes."""
        pids = {n.name: ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n)) for n in targets}
        running = [n for n in targets if pids[n.name] is not None]
        if not running:
            raise FaultRefused(f"no running server among {', '.join(n.name for n in targets)}")
        killed, errors = on_nodes(running, lambda n: ctx.db.kill(n) and ctx.remotes[n.name].daemon_pid(ctx.db.pid_file(n)) != pids[n.name])
        self.affected.extend(n for n in running if n not in self.affected)
        dropped, errors2 = on_nodes(running, lambda n: self.control(ctx, n, "crash"))
        errors.update(errors2)
        if errors:
            raise LostWritesError("lost-writes crash failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        alive = sorted(k for k, gone in killed.items() if not gone)
        if alive:
            raise LostWritesError(f"SIGKILL sent but the server still holds its pidfile on {', '.join(alive)}")
        ev = {}
        for n in running:
            st = dropped[n.name]
            files = st.get("dropped", {})
            ev[n.name] = {"pid": pids[n.name], "gone": killed[n.name], "crash": st.get("crashes"),
                          "dropped_bytes": st.get("dropped_bytes", 0), "dropped_files": len(files),
                          "files": sorted(files, key=lambda p: -files[p]["bytes"])[:8]}
        return {"mode": mode, "signal": "SIGKILL", "nodes": sorted(ev), "crashed": ev}

    def stop(self, ctx: NemesisContext) -> dict:
        nodes, self.affected = self.affected, []
        return restart_down(ctx, nodes)

    def heal(self, ctx: NemesisContext) -> dict:
        self.affected = []
        if not self.layouts:
            return {"nodes": [], "skipped": self.refusal or "lost writes were not prepared"}
        return restart_down(ctx, ctx.members())

    def teardown(self, ctx: NemesisContext) -> None:
        """With the servers stopped: unmount every lwfs (it flushes first) and drop the hooks."""
        if self._hooked in ctx.db.start_hooks:
            ctx.db.start_hooks.remove(self._hooked)
        self._hooked = None

        def down(n: Node) -> str:
            lay, r = self.layouts[n.name], ctx.remotes[n.name]
            r.signal_daemon(lay.pidfile, 15)
            for _ in range(100):
                if r.daemon_pid(lay.pidfile) is None:
                    break
                time.sleep(0.05)
            r.signal_daemon(lay.pidfile, 9)
            left = r.run(unmount_script(lay.mnt), timeout=30).out.strip()
            if left:
                raise RemoteError(f"{n.name}: still mounted at {lay.mnt}: {left}")
            return "unmounted"

        _, errors = on_nodes([n for n in ctx.nodes if n.name in self.layouts], down)
        for n in ctx.nodes:
            if ctx.db.data_dirs.get(n.name, "").endswith("/lw/mnt/data"):
                del ctx.db.data_dirs[n.name]
        ctx.extra.pop("lost-writes", None)
        if errors:
            raise LostWritesError("lost-writes teardown: " + "; ".join(errors.values()))


def mounts(r) -> list[str]:
    """lwfs mounts on a node (for tests and the interrupt check)."""
    out = r.run("findmnt -n -t fuse.lwfs -o TARGET || true", timeout=10).out
    return [x for x in out.split() if x]
