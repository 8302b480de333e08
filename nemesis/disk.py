"""Disk faults: slow a node's disk for its server alone, so its fsyncs crawl.

- throttle: the server process goes into a blkio cgroup of ours (cgroup v1) whose
  `blkio.throttle.write_iops_device` and/or `write_bps_device` cap writes to the block device under
  its data directory. fsync writes the file's dirty pages from the caller's context, so those
  writes (and the fsync waiting on them) are throttled, which is what etcd's tuning guide warns
  about.
- ionice: every thread of the server gets the idle I/O class while a competing writer (fio, or
  dd) keeps the same device busy; the idle class only waits when there is contention, and only
  with a scheduler that honours priorities (bfq, mq-deadline).
- both at once.

The block device is found from the data directory's mount (findmnt): a partition is throttled on
its disk (blkio refuses partitions), device-mapper and loop devices as themselves, overlayfs by
its upper directory's mount, and a data directory on our lost-writes FUSE filesystem by the FUSE
daemon (the process that really writes) and its backing directory's device. Anything else with
no block device below it (tmpfs, NFS, 9p) is refused with the reason.

Evidence: the device and why it was chosen, the cgroup, the limits read back, the process's
cgroup read back from /proc, the threads' I/O class read back; and the effect measured: a small
`dd oflag=dsync` probe in the same cgroup and I/O class before, during and after (ms per
synchronous 4 KiB write), and the server's own `etcd_disk_wal_fsync_duration_seconds` over the
fault (its /metrics). Undoing moves the process back to the cgroup it came from, removes the
limits and the cgroup, restores every thread's I/O class, and stops the competitor. A server
restarted meanwhile (kill) is a new process outside the cgroup: the evidence at stop says so.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from harness.inventory import Node
from harness.remote import Remote
from nemesis.base import FaultRefused, NemesisContext, choose_targets
from nemesis.nodes import first_line, on_nodes, q

BLKIO = "/sys/fs/cgroup/blkio"
PREFIX = "etcdproof-disk"
MODES = ("throttle", "ionice", "both")
TARGETS = ("one", "minority", "leader")
IOPS = (5, 10, 20)
BPS = (256 * 1024, 1024 * 1024)


class DiskError(Exception):
    """A disk fault could not be applied or undone; one line naming the node."""


@dataclass
class Device:
    """The block device whose writes to throttle, and the path (on it) for probes."""

    majmin: str
    name: str
    why: str
    probe_dir: str


@dataclass
class NodeDisk:
    """What this class did on one node, so stop can undo exactly that."""

    pid: int
    device: Device
    blkio: str = BLKIO  # where this node sees the blkio hierarchy
    cgroup: str = ""
    prev_cgroup: str = ""
    limits: dict[str, int] = field(default_factory=dict)
    ionice: dict[str, str] = field(default_factory=dict)  # tid -> class before
    competitor: str = ""  # its pidfile
    metric_before: tuple[float, float] | None = None


# ---------------------------------------------------------------- pure parts
def parse_findmnt(text: str) -> dict:
    """The innermost mount of findmnt -J output: source, fstype, maj:min, target, options."""
    fs = json.loads(text)["filesystems"]
    m = fs[0]
    while m.get("children"):
        m = m["children"][-1]
    return {"source": m.get("source", ""), "fstype": m.get("fstype", ""), "majmin": m.get("maj:min", ""),
            "target": m.get("target", ""), "options": m.get("options", "")}


def overlay_upper(options: str) -> str | None:
    m = re.search(r"(?:^|,)upperdir=([^,]+)", options)
    return m.group(1) if m else None


def cgroup_name(node_dir: str, node: str) -> str:
    """Our cgroup for a node's server: the prefix, the node, and a digest of its directory (so two
    test sessions with their own node directories never share one)."""
    return f"{PREFIX}-{node}-{hashlib.sha1(node_dir.encode()).hexdigest()[:8]}"


def dd_ms(stderr: str, count: int) -> float | None:
    """Milliseconds per write from dd's summary line ('... copied, 2.27 s, ...')."""
    m = re.search(r"copied, ([0-9.]+) s", stderr)
    return round(float(m.group(1)) * 1000 / count, 3) if m else None


def metric_pair(text: str, name: str) -> tuple[float, float] | None:
    """(sum, count) of a Prometheus histogram in a /metrics text."""
    s = re.search(rf"^{name}_sum(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
    c = re.search(rf"^{name}_count(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
    return (float(s.group(1)), float(c.group(1))) if s and c else None


# ---------------------------------------------------------------- on a node
def blkio_root(r: Remote, mount: bool = True) -> tuple[str, str]:
    """Where the node sees the cgroup v1 blkio hierarchy, and a note if we had to mount it.

    A node of the embedded cluster lives in a mount namespace of its own (`ip netns exec` remounts
    /sys), where the host's cgroup mounts are missing: the same hierarchy is then mounted there,
    in that namespace only. '' when the kernel has no v1 blkio hierarchy to offer (v2 only).
    """
    script = (
        "p=$(awk '$3==\"cgroup\" && $4 ~ /(^|,)blkio(,|$)/ {print $2; exit}' /proc/self/mounts); "
        "if [ -n \"$p\" ]; then echo \"$p\"; exit 0; fi; "
        + ("awk '$1==\"blkio\" && $4==1 {f=1} END {exit !f}' /proc/cgroups || exit 0; "
           "mountpoint -q /sys/fs/cgroup || mount -t tmpfs -o mode=755 etcdproof-cgroup /sys/fs/cgroup || exit 0; "
           "mkdir -p /sys/fs/cgroup/blkio && mount -t cgroup -o blkio etcdproof-blkio /sys/fs/cgroup/blkio 2>/dev/null "
           "&& echo /sys/fs/cgroup/blkio mounted" if mount else "true")
    )
    out = r.run(script, timeout=20, check=False).out.split()
    if not out:
        return "", ""
    return out[0], ("mounted the blkio hierarchy in the node's mount namespace" if out[1:] == ["mounted"] else "")


def resolve_device(r: Remote, path: str, lost_writes: dict | None = None, depth: int = 0) -> Device:
    """The whole-disk block device holding path; DiskError with the reason if there is none."""
    if depth > 4:
        raise DiskError(f"{r.node}: {path}: mounts nest too deep to find a block device")
    out = r.run(f"p={q(path)}; while [ ! -e \"$p\" ]; do p=$(dirname \"$p\"); done; findmnt -J --target \"$p\"",
                timeout=10).out
    m = parse_findmnt(out)
    if m["fstype"].startswith("fuse") and lost_writes:
        d = resolve_device(r, lost_writes["backing"], None, depth + 1)
        return Device(d.majmin, d.name, f"lost-writes FUSE at {m['target']}, backed by {d.why}", lost_writes["backing"])
    if m["fstype"] == "overlay":
        upper = overlay_upper(m["options"])
        if not upper:
            raise DiskError(f"{r.node}: {path} is on an overlay without an upper directory")
        d = resolve_device(r, upper, None, depth + 1)
        return Device(d.majmin, d.name, f"overlay upper dir {upper} on {d.why}", path)
    src = re.sub(r"\[.*\]$", "", m["source"])  # btrfs shows /dev/x[/subvolume]
    majmin = m["majmin"]
    if src.startswith("/dev/"):
        st = r.run(f"[ -b {q(src)} ] && stat -L -c '%t %T' {q(src)}", timeout=10, check=False)
        if st.ok and st.out.split():
            majmin = ":".join(str(int(x, 16)) for x in st.out.split()[:2])
    if not majmin or majmin.startswith("0:"):
        raise DiskError(f"{r.node}: {path} is on {m['fstype']} ({m['source']}), with no block device to throttle")
    info = r.run(f"d=/sys/dev/block/{majmin}; n=$(basename $(readlink -f $d)); echo $n; "
                 f"if [ -f $d/partition ]; then cat $(dirname $(readlink -f $d))/dev; echo partition; "
                 f"elif [ -d $d/dm ]; then echo {majmin}; echo dm $(cat $d/dm/name); "
                 f"elif [ -d $d/loop ]; then echo {majmin}; echo loop $(cat $d/loop/backing_file 2>/dev/null); "
                 f"else echo {majmin}; echo disk; fi", timeout=10).out.splitlines()
    if len(info) < 3:
        raise DiskError(f"{r.node}: no /sys/dev/block entry for {majmin} ({src})")
    name, whole, kind = info[0], info[1].strip(), info[2].strip()
    why = {"partition": f"partition {name} of disk {whole}"}.get(kind.split()[0], f"{kind} {name}")
    return Device(whole, name, f"{m['fstype']} on {src or m['source']}: {why} ({whole})", path)


def probe(r: Remote, dev: Device, cgroup: str = "", ionice: str = "", count: int = 4) -> float | None:
    """ms per synchronous 4 KiB write (dd oflag=dsync) beside the data, in cgroup (a path) and I/O class."""
    f = f"{dev.probe_dir.rstrip('/')}/.etcdproof-disk-probe"
    join = f"echo $$ > {q(cgroup + '/cgroup.procs')}; " if cgroup else ""
    nice = f"ionice -c {ionice} " if ionice else ""
    res = r.run(f"mkdir -p {q(dev.probe_dir)}; sh -c {q(join + f'exec {nice}dd if=/dev/zero of={f} bs=4k count={count} oflag=dsync')} "
                f"2>&1; rm -f {q(f)}", timeout=120, check=False)
    return dd_ms(res.out, count)


# ---------------------------------------------------------------- the fault
class DiskNemesis:
    """`--nemesis disk`: throttle, ionice under competition, or both, on one node, a minority or the
    leader; stop and heal undo it all."""

    name = "disk"

    def __init__(self, modes: tuple[str, ...] = MODES, iops: tuple[int, ...] = IOPS, bps: tuple[int, ...] = BPS) -> None:
        unknown = set(modes) - set(MODES)
        if unknown:
            raise ValueError(f"unknown disk mode {sorted(unknown)[0]!r}: {', '.join(MODES)}")
        self.modes, self.iops, self.bps = modes, iops, bps
        self.applied: dict[str, NodeDisk] = {}

    def setup(self, ctx: NemesisContext) -> None:
        self.applied = {}

    # ---------------------------------------------------------------- helpers
    def _metrics_url(self, ctx: NemesisContext, n: Node) -> str:
        port = ctx.db.cfg.http_port if ctx.db.kind == "reference" else ctx.db.cfg.client_port
        return f"http://{n.ip}:{port}/metrics"

    def wal_fsync(self, ctx: NemesisContext, n: Node) -> tuple[float, float] | None:
        out = ctx.remotes[n.name].run(f"curl -s --max-time 3 {q(self._metrics_url(ctx, n))}", timeout=10, check=False).out
        return metric_pair(out, "etcd_disk_wal_fsync_duration_seconds")

    def _io_process(self, ctx: NemesisContext, n: Node) -> tuple[int | None, dict | None]:
        """The pid whose writes reach the disk (the server, or the lost-writes FUSE daemon under it)."""
        r = ctx.remotes[n.name]
        lw = ctx.extra.get("lost-writes", {}).get(n.name)
        if lw:
            return r.daemon_pid(lw["pidfile"]), lw
        return r.daemon_pid(ctx.db.pid_file(n)), None

    def device(self, ctx: NemesisContext, n: Node) -> Device:
        _, lw = self._io_process(ctx, n)
        return resolve_device(ctx.remotes[n.name], ctx.db.data_dir(n), lw)

    # ---------------------------------------------------------------- start
    def start(self, ctx: NemesisContext) -> dict:
        mode = ctx.rng.choice(self.modes)
        targets = choose_targets(ctx, ctx.rng.choice(TARGETS))
        limits = {}
        if mode in ("throttle", "both"):
            kinds = ctx.rng.choice([("iops",), ("bps",), ("iops", "bps")])
            if "iops" in kinds:
                limits["write_iops_device"] = ctx.rng.choice(self.iops)
            if "bps" in kinds:
                limits["write_bps_device"] = ctx.rng.choice(self.bps)
        return self.apply(ctx, targets, limits, ionice=mode in ("ionice", "both"))

    def apply(self, ctx: NemesisContext, targets: list[Node], limits: dict[str, int], ionice: bool) -> dict:
        """Throttle (limits: blkio file suffix -> value) and/or ionice the targets' servers."""
        refusals: dict[str, str] = {}
        roots: dict[str, tuple[str, str]] = {}
        if limits:
            roots, _ = on_nodes(targets, lambda n: blkio_root(ctx.remotes[n.name]))
            missing = sorted(k for k, (root, _) in roots.items() if not root)
            if missing:
                raise FaultRefused(f"{', '.join(missing)}: no cgroup v1 blkio hierarchy (a cgroup v2-only kernel, "
                                   "or blkio disabled): throttling needs blkio.throttle.write_*_device", permanent=True)

        def one(n: Node) -> dict:
            r = ctx.remotes[n.name]
            pid, _ = self._io_process(ctx, n)
            if pid is None:
                refusals[n.name] = "server not running"
                return {}
            try:
                dev = self.device(ctx, n)
            except DiskError as e:
                refusals[n.name] = str(e)
                return {}
            st = NodeDisk(pid, dev, metric_before=self.wal_fsync(ctx, n))
            if limits:
                st.blkio = roots[n.name][0]
            before = probe(r, dev)
            self.applied[n.name] = st
            ev: dict = {"pid": pid, "device": dev.majmin, "device_name": dev.name, "why": dev.why,
                        "probe_ms_before": before}
            if limits:
                ev.update(self._throttle(ctx, n, r, st, limits))
                if roots[n.name][1]:
                    ev["blkio_note"] = roots[n.name][1]
            if ionice:
                ev.update(self._ionice(ctx, n, r, st))
            ev["probe_ms_during"] = probe(r, dev, f"{st.blkio}/{st.cgroup}" if st.cgroup else "", "3" if st.ionice else "")
            return ev

        done, errors = on_nodes(targets, one)
        done = {k: v for k, v in done.items() if v}
        if errors:
            raise DiskError("disk fault failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        if not done:
            raise FaultRefused("; ".join(f"{k}: {v}" for k, v in sorted(refusals.items())))
        return {"mode": "+".join(x for x, on in (("throttle", bool(limits)), ("ionice", ionice)) if on),
                "limits": limits, "nodes": sorted(done), "applied": done, "refused": refusals}

    def _throttle(self, ctx: NemesisContext, n: Node, r: Remote, st: NodeDisk, limits: dict[str, int]) -> dict:
        st.cgroup = cgroup_name(ctx.db.node_dir(n), n.name)
        cg = f"{st.blkio}/{st.cgroup}"
        st.prev_cgroup = r.run(f"sed -n 's/^[0-9]*:blkio://p' /proc/{st.pid}/cgroup", timeout=10).out.strip() or "/"
        writes = "; ".join(f"echo {q(f'{st.device.majmin} {v}')} > {q(cg + '/blkio.throttle.' + k)}" for k, v in limits.items())
        st.limits = dict(limits)
        out = r.run(f"set -e; mkdir -p {q(cg)}; {writes}; echo {st.pid} > {q(cg + '/cgroup.procs')}; "
                    f"for f in {' '.join(limits)}; do echo \"$f: $(cat {q(cg)}/blkio.throttle.$f)\"; done; "
                    f"echo \"cgroup: $(sed -n 's/^[0-9]*:blkio://p' /proc/{st.pid}/cgroup)\"", timeout=20).out
        seen = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
        want = {k: f"{st.device.majmin} {v}" for k, v in limits.items()}
        if any(seen.get(k) != v for k, v in want.items()) or seen.get("cgroup") != f"/{st.cgroup}":
            raise DiskError(f"{n.name}: throttle read back {seen}, wanted {want} in /{st.cgroup}")
        return {"cgroup": st.cgroup, "previous_cgroup": st.prev_cgroup, "read_back": seen}

    def _ionice(self, ctx: NemesisContext, n: Node, r: Remote, st: NodeDisk) -> dict:
        out = r.run(f"for t in /proc/{st.pid}/task/*; do t=${{t##*/}}; echo \"$t $(ionice -p $t)\"; "
                    f"ionice -c 3 -p $t; done; for t in /proc/{st.pid}/task/*; do echo \"after ${{t##*/}} $(ionice -p ${{t##*/}})\"; done",
                    timeout=20).out.splitlines()
        st.ionice = {x.split(" ", 1)[0]: x.split(" ", 1)[1].split(":")[0] for x in out if x and not x.startswith("after ")}
        after = {x.split(" ", 2)[1]: x.split(" ", 2)[2] for x in out if x.startswith("after ")}
        st.competitor = f"{ctx.db.node_dir(n)}/disk-compete.pid"
        f = f"{st.device.probe_dir.rstrip('/')}/.etcdproof-disk-compete"
        fio = r.run("command -v fio", timeout=10, check=False).out.strip()
        # fio with --thread: its job is a thread, so the one process started is all there is to kill
        argv = ([fio, "--name=etcdproof-compete", f"--filename={f}", "--rw=randwrite", "--bs=4k", "--size=64m",
                 "--direct=1", "--ioengine=libaio", "--iodepth=32", "--time_based", "--runtime=3600",
                 "--thread"] if fio else
                ["sh", "-c", f"while :; do dd if=/dev/zero of={f} bs=1M count=64 oflag=direct conv=fsync 2>/dev/null; done"])
        cpid = r.start_daemon(argv, logfile=f"{ctx.db.node_dir(n)}/disk-compete.log", pidfile=st.competitor)
        idle = sum(1 for v in after.values() if v.startswith("idle"))
        if idle != len(after):
            raise DiskError(f"{n.name}: {len(after) - idle} of {len(after)} threads not idle after ionice")
        return {"ionice": {"threads": len(after), "class": "idle", "before": sorted(set(st.ionice.values()))},
                "competitor": {"pid": cpid, "program": "fio" if fio else "dd"}}

    # ---------------------------------------------------------------- undo
    def _undo(self, ctx: NemesisContext, n: Node, st: NodeDisk) -> dict:
        r = ctx.remotes[n.name]
        ev: dict = {}
        alive = r.daemon_pid(ctx.db.pid_file(n)) == st.pid or self._io_process(ctx, n)[0] == st.pid
        ev["pid_changed"] = not alive
        if st.competitor:
            kill_group(r, st.competitor)
            r.run(f"rm -f {q(st.device.probe_dir.rstrip('/') + '/.etcdproof-disk-compete')}", timeout=10, check=False)
        if st.ionice and alive:
            restore = "; ".join(f"[ -d /proc/{st.pid}/task/{t} ] && ionice -c {({'none': 0, 'realtime': 1, 'best-effort': 2}).get(c, 0)} -p {t}"
                                for t, c in st.ionice.items())
            r.run(f"{restore}; for t in /proc/{st.pid}/task/*; do ionice -p ${{t##*/}} | grep -q '^idle' && "
                  f"ionice -c 0 -p ${{t##*/}}; done; true", timeout=20)
            left = r.run(f"for t in /proc/{st.pid}/task/*; do ionice -p ${{t##*/}}; done | grep -c '^idle'",
                         timeout=10, check=False).out.strip()
            ev["idle_threads_left"] = int(left or 0)
        if st.cgroup:
            ev.update(remove_cgroup(r, st.blkio, st.cgroup, st.prev_cgroup))
        after = self.wal_fsync(ctx, n)
        if st.metric_before and after and after[1] > st.metric_before[1]:
            ev["wal_fsync_ms_during"] = round((after[0] - st.metric_before[0]) / (after[1] - st.metric_before[1]) * 1000, 3)
            ev["wal_fsyncs_during"] = int(after[1] - st.metric_before[1])
        ev["probe_ms_after"] = probe(r, st.device)
        return ev

    def stop(self, ctx: NemesisContext) -> dict:
        applied, self.applied = self.applied, {}
        done, errors = on_nodes([ctx.node(k) for k in applied], lambda n: self._undo(ctx, n, applied[n.name]))
        if errors:
            raise DiskError("disk undo failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        return {"nodes": sorted(done), "undone": done}

    def heal(self, ctx: NemesisContext) -> dict:
        """Undo what is recorded, then sweep: our cgroups of these nodes, competitors, idle threads."""
        out = self.stop(ctx) if self.applied else {"nodes": [], "undone": {}}

        def sweep(n: Node) -> dict:
            r = ctx.remotes[n.name]
            kill_group(r, f"{ctx.db.node_dir(n)}/disk-compete.pid")
            root, _ = blkio_root(r, mount=False)
            ev = remove_cgroup(r, root, cgroup_name(ctx.db.node_dir(n), n.name), "/") if root else {"state": "absent"}
            pid = r.daemon_pid(ctx.db.pid_file(n))
            if pid is not None:
                r.run(f"for t in /proc/{pid}/task/*; do ionice -p ${{t##*/}} 2>/dev/null | grep -q '^idle' && "
                      f"ionice -c 0 -p ${{t##*/}}; done; true", timeout=20, check=False)
            return ev

        swept, errors = on_nodes(ctx.nodes, sweep)
        if errors:
            raise DiskError("disk heal failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
        out["swept"] = swept
        return out


def kill_group(r: Remote, pidfile: str) -> None:
    """SIGKILL the competitor and its process group (fio runs its job as a thread, --thread; the dd
    loop's children share the group that start_daemon's setsid made)."""
    pid = r.daemon_pid(pidfile)
    if pid is not None:
        r.run(f"kill -s KILL -- -{pid} 2>/dev/null; kill -s KILL {pid} 2>/dev/null; true", timeout=10)


def remove_cgroup(r: Remote, root: str, name: str, back_to: str) -> dict:
    """Move every task of our cgroup back (to back_to, or the root if that is gone), lift the limits,
    remove it; evidence: whether it existed and that it is gone."""
    cg = f"{root}/{name}"
    dest = f"{root}{back_to if back_to != '/' else ''}"
    out = r.run(f"cg={q(cg)}; [ -d $cg ] || {{ echo absent; exit 0; }}; d={q(dest)}; [ -d $d ] || d={q(root)}; "
                f"for p in $(cat $cg/cgroup.procs); do echo $p > $d/cgroup.procs 2>/dev/null || echo $p > {q(root)}/cgroup.procs; done; "
                f"for f in $cg/blkio.throttle.*_device; do sed 's/ .*/ 0/' $f | while read l; do echo \"$l\" > $f; done; done; "
                f"for i in 1 2 3 4 5; do rmdir $cg 2>/dev/null && break; sleep 0.1; done; "
                f"[ -d $cg ] && echo left || echo removed", timeout=20).out
    state = first_line(out)
    if state == "left":
        raise DiskError(f"{r.node}: cgroup {name} could not be removed")
    return {"cgroup": name, "state": state}


def leftovers(r: Remote) -> list[str]:
    """Our cgroups on a node (for tests and the interrupt check)."""
    root, _ = blkio_root(r, mount=False)
    if not root:
        return []
    out = r.run(f"ls -d {q(root)}/{PREFIX}-* 2>/dev/null || true", timeout=10).out
    return [x for x in out.split() if x]
